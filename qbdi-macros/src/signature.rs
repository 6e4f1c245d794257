//! Syntactic checks of the registered function's signature, so that a wrong signature is
//! reported on the offending token with the signature the attribute wants. The types are
//! matched by the last segment of their path (`VmRef`, `qbdi_sdk::VmRef`); the coercion to
//! the SDK's function pointer type in the expansion catches whatever passes here wrongly.

use syn::{FnArg, GenericArgument, PathArguments, ReturnType, Signature, Type, TypePath};

use crate::errors::Errors;
use crate::kind::Kind;

/// A parameter the attribute wants: `&T` or `&mut T` for a type named `T`.
struct Param {
    /// The conventional name, for messages.
    name: &'static str,
    /// `&mut` (true) or `&` (false).
    mutable: bool,
    /// Last segment of the referenced type's path.
    ty: &'static str,
}

impl Param {
    const fn new(name: &'static str, mutable: bool, ty: &'static str) -> Param {
        Param { name, mutable, ty }
    }

    /// `&mut GprState`.
    fn ty_text(&self) -> String {
        format!("&{}{}", if self.mutable { "mut " } else { "" }, self.ty)
    }
}

/// What a function must return.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Returns {
    /// `VmAction`.
    VmAction,
    /// `Vec<InstrRuleCallback>`.
    RuleCallbacks,
    /// `Result<(), E>`.
    InitResult,
    /// Nothing (or `()`).
    Nothing,
}

impl Returns {
    fn text(self) -> &'static str {
        match self {
            Returns::VmAction => "VmAction",
            Returns::RuleCallbacks => "Vec<InstrRuleCallback>",
            Returns::InitResult => "Result<(), E>",
            Returns::Nothing => "nothing",
        }
    }
}

const VM: Param = Param::new("vm", true, "VmRef");
const GPR: Param = Param::new("gpr", true, "GprState");
const FPR: Param = Param::new("fpr", true, "FprState");
const STATE: Param = Param::new("state", false, "VmState");
const ANALYSIS: Param = Param::new("analysis", false, "InstAnalysis");
const OPTIONS: Param = Param::new("options", false, "PluginOptions");

/// The parameters and return of `kind`'s functions.
fn expected(kind: Kind) -> (&'static [Param], Returns) {
    match kind {
        Kind::Inst | Kind::MemAccess => (&[VM, GPR, FPR], Returns::VmAction),
        Kind::Event => (&[VM, STATE, GPR, FPR], Returns::VmAction),
        Kind::Rule => (&[VM, ANALYSIS], Returns::RuleCallbacks),
        Kind::Init => (&[VM, OPTIONS], Returns::InitResult),
        Kind::Fini => (&[], Returns::Nothing),
    }
}

/// "an #[inst_callback] function takes (vm: &mut VmRef, ..) and returns VmAction".
pub fn wanted(kind: Kind) -> String {
    let (params, returns) = expected(kind);
    let takes = if params.is_empty() {
        "takes no arguments".to_owned()
    } else {
        let list: Vec<String> = params
            .iter()
            .map(|p| format!("{}: {}", p.name, p.ty_text()))
            .collect();
        format!("takes ({})", list.join(", "))
    };
    let returns = match returns {
        Returns::Nothing => "returns nothing".to_owned(),
        Returns::InitResult => format!("returns {} with E: Display", returns.text()),
        r => format!("returns {}", r.text()),
    };
    format!("{} function {takes} and {returns}", kind.a())
}

/// Checks `sig` against what `kind` wants; mistakes go to `errors`.
pub fn check(kind: Kind, sig: &Signature, errors: &mut Errors) {
    let attr = format!("#[{}]", kind.name());
    let wanted = wanted(kind);
    // A `const fn` coerces to a fn pointer like any other: accepted.
    if let Some(a) = &sig.asyncness {
        errors.on(a, format!("{attr} cannot be on an `async fn`: {wanted}"));
    }
    if let Some(u) = &sig.unsafety {
        errors.on(
            u,
            format!("{attr} cannot be on an `unsafe fn` (plugins call no unsafe code): {wanted}"),
        );
    }
    if let Some(abi) = &sig.abi {
        errors.on(
            abi,
            format!(
                "{attr} functions are plain Rust functions, without `extern`: the attribute \
                 generates the `extern \"C\"` trampoline the host calls"
            ),
        );
    }
    let generics = &sig.generics;
    if generics.type_params().next().is_some()
        || generics.const_params().next().is_some()
        || generics.where_clause.is_some()
    {
        errors.on(
            generics,
            format!("{attr} functions cannot be generic: {wanted}"),
        );
    }
    if let Some(v) = &sig.variadic {
        errors.on(v, format!("{attr} functions cannot be variadic: {wanted}"));
    }
    let (params, returns) = expected(kind);
    let mut receiver = false;
    for input in &sig.inputs {
        if let FnArg::Receiver(r) = input {
            receiver = true;
            errors.on(
                r,
                format!("{attr} is for free functions, not methods (no `self`): {wanted}"),
            );
        }
    }
    if !receiver {
        check_params(params, sig, &wanted, errors);
    }
    check_return(returns, sig, &wanted, errors);
}

/// Checks the number and the types of the parameters.
fn check_params(params: &[Param], sig: &Signature, wanted: &str, errors: &mut Errors) {
    let found = sig.inputs.len();
    if found != params.len() {
        let message = format!(
            "expected {} parameter{}, found {found}: {wanted}",
            params.len(),
            if params.len() == 1 { "" } else { "s" },
        );
        if found > params.len() {
            // Point at the parameters too many.
            let extra: Vec<&FnArg> = sig.inputs.iter().skip(params.len()).collect();
            errors.on(quote::quote!(#(#extra),*), message);
        } else {
            errors.at(sig.paren_token.span.join(), message);
        }
        return;
    }
    for (input, param) in sig.inputs.iter().zip(params) {
        let FnArg::Typed(typed) = input else {
            continue;
        };
        let ok = match strip(&typed.ty) {
            Type::Reference(r) => {
                r.mutability.is_some() == param.mutable && last_ident_is(&r.elem, param.ty)
            }
            _ => false,
        };
        if !ok {
            errors.on(
                &typed.ty,
                format!("expected `{}` here: {wanted}", param.ty_text()),
            );
        }
    }
}

/// Checks the return type.
fn check_return(returns: Returns, sig: &Signature, wanted: &str, errors: &mut Errors) {
    let ty = match &sig.output {
        ReturnType::Default => {
            if returns != Returns::Nothing {
                errors.at(
                    sig.paren_token.span.close(),
                    format!("missing return type `-> {}`: {wanted}", returns.text()),
                );
            }
            return;
        }
        ReturnType::Type(_, ty) => strip(ty),
    };
    let ok = match returns {
        Returns::VmAction => last_ident_is(ty, "VmAction"),
        Returns::RuleCallbacks => last_segment(ty).is_some_and(|s| {
            s.ident == "Vec"
                && first_type_arg(&s.arguments)
                    .is_some_and(|t| last_ident_is(t, "InstrRuleCallback"))
        }),
        Returns::InitResult => last_segment(ty).is_some_and(|s| {
            s.ident == "Result"
                && match &s.arguments {
                    PathArguments::None => true,
                    arguments => first_type_arg(arguments).is_some_and(is_unit),
                }
        }),
        Returns::Nothing => is_unit(ty),
    };
    if !ok {
        let expected = match returns {
            Returns::Nothing => "no return type".to_owned(),
            r => format!("return type `{}`", r.text()),
        };
        errors.on(ty, format!("expected {expected}: {wanted}"));
    }
}

/// `ty` without invisible groups and parentheses.
fn strip(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => strip(&g.elem),
        Type::Paren(p) => strip(&p.elem),
        ty => ty,
    }
}

/// The last segment of a plain type path.
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match strip(ty) {
        Type::Path(TypePath { qself: None, path }) => path.segments.last(),
        _ => None,
    }
}

/// Whether the last segment of `ty`'s path is `name`.
fn last_ident_is(ty: &Type, name: &str) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == name)
}

/// The first type in `<..>`.
fn first_type_arg(arguments: &PathArguments) -> Option<&Type> {
    match arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().find_map(|arg| match arg {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

/// Whether `ty` is `()`.
fn is_unit(ty: &Type) -> bool {
    matches!(strip(ty), Type::Tuple(t) if t.elems.is_empty())
}
