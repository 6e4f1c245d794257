//! The expansion: the function unchanged, then an anonymous `const` holding its
//! `extern "C"` trampoline and the `inventory` registration of that trampoline.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::ItemFn;
use syn::ext::IdentExt;

use crate::args::{self, Config};
use crate::errors::Errors;
use crate::kind::Kind;
use crate::signature;

/// Expands `#[kind(args)] item`. `line_of` gives the source line of a span (the compiler's
/// answer in the real macro, a stand-in in unit tests).
pub fn attribute(
    kind: Kind,
    args: TokenStream,
    item: TokenStream,
    line_of: fn(Span) -> u32,
) -> TokenStream {
    let mut errors = Errors::default();
    let config = args::parse(kind, args, &mut errors);
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            errors.on(
                &item,
                format!(
                    "#[{}] registers a function: {}",
                    kind.name(),
                    signature::wanted(kind)
                ),
            );
            return with_errors(item, errors);
        }
    };
    signature::check(kind, &function.sig, &mut errors);
    if !errors.is_empty() {
        return with_errors(item, errors);
    }
    let line = line_of(function.sig.ident.span());
    let registration = registration(kind, &config, &function, line);
    quote! {
        #function
        #registration
    }
}

/// The item as it was, and the errors (so that its uses elsewhere still resolve).
fn with_errors(item: TokenStream, errors: Errors) -> TokenStream {
    let errors = errors.into_error().map(|e| e.to_compile_error());
    quote! {
        #item
        #errors
    }
}

/// The `const _: () = { trampoline; submit! { .. } };` of a checked function.
fn registration(kind: Kind, config: &Config, function: &ItemFn, line: u32) -> TokenStream {
    let ident = &function.sig.ident;
    let name = ident.unraw().to_string();
    // The function, named where the user named it: a type mismatch the syntactic checks
    // missed is reported on the function's name.
    let f = quote_spanned!(ident.span()=> #ident);
    // Parameter names hygienic to this expansion, so that a function named `vm` or `gpr`
    // is still the function inside the trampoline.
    let [vm, gpr, fpr, state, analysis, sink, options, count] = [
        "vm", "gpr", "fpr", "state", "analysis", "sink", "options", "count",
    ]
    .map(|n| syn::Ident::new(n, Span::mixed_site()));
    let sdk = quote!(::qbdi_sdk);
    let raw_vm = quote!(*const #sdk::abi::RawVm);
    let gpr_ty = quote!(*mut #sdk::prelude::GprState);
    let fpr_ty = quote!(*mut #sdk::prelude::FprState);
    // Instruction and event functions are checked against their signature once, as a
    // constant of fn pointer type (a mismatch is reported on the function's name); the
    // trampoline calls that constant, which the compiler resolves and inlines.
    let function_const = match kind {
        Kind::Inst | Kind::MemAccess => {
            quote!(const __QBDI_FUNCTION: #sdk::private::InstFn = #f;)
        }
        Kind::Event => quote!(const __QBDI_FUNCTION: #sdk::private::EventFn = #f;),
        _ => TokenStream::new(),
    };
    let (params, returns, call, variant) = match kind {
        Kind::Inst | Kind::MemAccess => (
            quote!(#vm: #raw_vm, #gpr: #gpr_ty, #fpr: #fpr_ty),
            quote!(#sdk::abi::RawAction),
            quote!(call_inst(#vm, #gpr, #fpr, #name, __QBDI_FUNCTION)),
            if kind == Kind::Inst {
                quote!(Inst)
            } else {
                quote!(MemAccess)
            },
        ),
        Kind::Event => (
            quote!(
                #vm: #raw_vm,
                #state: *const #sdk::prelude::VmState,
                #gpr: #gpr_ty,
                #fpr: #fpr_ty
            ),
            quote!(#sdk::abi::RawAction),
            quote!(call_event(#vm, #state, #gpr, #fpr, #name, __QBDI_FUNCTION)),
            quote!(Event),
        ),
        Kind::Rule => (
            quote!(
                #vm: #raw_vm,
                #analysis: *const #sdk::abi::RawInstAnalysis,
                #sink: *mut ::core::ffi::c_void
            ),
            quote!(#sdk::abi::RawAction),
            quote!(call_rule(#vm, #analysis, #sink, #name, #f)),
            quote!(Rule),
        ),
        Kind::Init => (
            quote!(
                #vm: #raw_vm,
                #options: *const #sdk::abi::RawKeyValue,
                #count: usize
            ),
            quote!(u32),
            quote!(call_init(#vm, #options, #count, #name, #f)),
            quote!(Init),
        ),
        Kind::Fini => (
            quote!(#vm: #raw_vm),
            quote!(u32),
            quote!(call_fini(#vm, #name, #f)),
            quote!(Fini),
        ),
    };
    let post_inst = config.post_inst;
    let priority = config.priority;
    let flags = config.flags;
    let mnemonic = &config.mnemonic;
    let code = &config.code;
    let mut out = TokenStream::new();
    quote! {
        const _: () = {
            #function_const
            extern "C" fn __qbdi_trampoline(#params) -> #returns {
                // SAFETY: called by the qbdi host with the pointers of the current callback.
                unsafe { #sdk::private::#call }
            }
            #sdk::private::inventory::submit! {
                #sdk::private::Registration {
                    name: #name,
                    line: #line,
                    post_inst: #post_inst,
                    priority: #priority,
                    flags: #flags,
                    mnemonic: #mnemonic,
                    code: #code,
                    trampoline: #sdk::private::Trampoline::#variant(__qbdi_trampoline),
                }
            }
        };
    }
    .to_tokens(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(kind: Kind, args: TokenStream, item: TokenStream) -> String {
        attribute(kind, args, item, |_| 7).to_string()
    }

    /// The messages of the `compile_error!`s in an expansion.
    fn errors(kind: Kind, args: TokenStream, item: TokenStream) -> Vec<String> {
        let out = attribute(kind, args, item, |_| 7);
        let mut messages = Vec::new();
        let mut tokens = out.into_iter().peekable();
        while let Some(t) = tokens.next() {
            if t.to_string() == "compile_error" {
                tokens.next(); // `!`
                if let Some(proc_macro2::TokenTree::Group(g)) = tokens.next() {
                    let lit: syn::LitStr = syn::parse2(g.stream()).expect("a message");
                    messages.push(lit.value());
                }
            }
        }
        messages
    }

    fn inst_fn() -> TokenStream {
        quote!(
            fn on_call(vm: &mut VmRef, gpr: &mut GprState, fpr: &mut FprState) -> VmAction {
                VmAction::Continue
            }
        )
    }

    #[test]
    fn inst_expansion_registers_the_function() {
        let out = expand(
            Kind::Inst,
            quote!(postinst, mnemonic = "CALL*", priority = -3),
            inst_fn(),
        );
        assert!(out.starts_with("fn on_call"), "{out}");
        for part in [
            "name : \"on_call\"",
            "line : 7u32",
            "post_inst : true",
            "priority : - 3i32",
            "flags : 0u32",
            "mnemonic : \"CALL*\"",
            "code : \"\"",
            "Trampoline :: Inst (__qbdi_trampoline)",
            "const __QBDI_FUNCTION : :: qbdi_sdk :: private :: InstFn = on_call ;",
            "call_inst (vm , gpr , fpr , \"on_call\" , __QBDI_FUNCTION)",
        ] {
            assert!(out.contains(part), "{part} not in {out}");
        }
    }

    #[test]
    fn flags_of_each_kind() {
        let config = |kind, args| {
            let mut errors = Errors::default();
            let c = args::parse(kind, args, &mut errors);
            assert!(errors.is_empty());
            c
        };
        assert_eq!(
            config(Kind::Event, quote!(BASIC_BLOCK_ENTRY | SYSCALL_EXIT)).flags,
            4 | 256
        );
        assert_eq!(config(Kind::MemAccess, quote!(read | write)).flags, 3);
        assert_eq!(
            config(Kind::MemAccess, quote!(write, priority = 5)).priority,
            5
        );
        assert_eq!(config(Kind::Rule, quote!()).flags, 1);
        assert_eq!(
            config(Kind::Rule, quote!(analysis = OPERANDS | SYMBOL)).flags,
            12
        );
        assert_eq!(
            config(Kind::Inst, quote!(preinst, code = "Call_rm64")).code,
            "Call_rm64"
        );
        assert!(!config(Kind::Inst, quote!(preinst)).post_inst);
    }

    #[test]
    fn every_mistake_is_reported() {
        let messages = errors(
            Kind::Inst,
            quote!(preinstt, priority = "x", prio = 1, mnemonic = "CALLL"),
            quote!(
                async fn f(vm: &mut VmRef, gpr: &GprState, fpr: &mut FprState) {}
            ),
        );
        let expected = [
            "unknown position `preinstt`: expected `preinst` or `postinst` (did you mean `preinst`?)",
            "`priority` is an integer",
            "unknown key `prio`: #[inst_callback] accepts `priority`, `mnemonic` or `code` (did you mean `priority`?)",
            "no x86 mnemonic matches \"CALLL\"",
            "#[inst_callback] cannot be on an `async fn`: an #[inst_callback] function takes (vm: &mut VmRef, gpr: &mut GprState, fpr: &mut FprState) and returns VmAction",
            "expected `&mut GprState` here",
            "missing return type `-> VmAction`",
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (message, start) in messages.iter().zip(expected) {
            assert!(
                message.starts_with(start),
                "{message}\nshould start with\n{start}"
            );
        }
    }

    #[test]
    fn values_from_macro_rules_fragments() {
        // `$glob:literal` and `$p:expr` arrive wrapped in invisible groups.
        let group = |t: TokenStream| {
            proc_macro2::TokenTree::Group(proc_macro2::Group::new(proc_macro2::Delimiter::None, t))
        };
        let (glob, priority) = (group(quote!("CALL*")), group(quote!(-4)));
        let mut errors = Errors::default();
        let config = args::parse(
            Kind::Inst,
            quote!(preinst, mnemonic = #glob, priority = #priority),
            &mut errors,
        );
        assert!(errors.is_empty());
        assert_eq!((config.mnemonic.as_str(), config.priority), ("CALL*", -4));
    }

    #[test]
    fn errors_keep_the_item() {
        let out = expand(
            Kind::Fini,
            quote!(now),
            quote!(
                fn fini() {}
            ),
        );
        assert!(out.starts_with("fn fini () { }"), "{out}");
        assert!(out.contains("takes no arguments"), "{out}");
        assert!(!out.contains("submit"), "{out}");
    }
}
