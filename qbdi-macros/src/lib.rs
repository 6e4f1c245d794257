//! Attribute macros of the QBDI-rs plugin SDK (use them through `qbdi_sdk::prelude`).
//!
//! Each attribute goes on a free function of a plugin crate, keeps the function as it is,
//! checks its signature and arguments at compile time, and registers it with the plugin's
//! registry (`qbdi_sdk::private`): the host finds it in the plugin's descriptor.

use proc_macro::TokenStream;

mod args;
mod errors;
mod expand;
mod kind;
mod names;
mod signature;

use kind::Kind;

/// The source line of `span` (where the compiler says it is).
fn line_of(span: proc_macro2::Span) -> u32 {
    u32::try_from(span.unwrap().line()).unwrap_or(u32::MAX)
}

fn run(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    expand::attribute(kind, args.into(), item.into(), line_of).into()
}

/// Registers an instruction callback: called before (`preinst`) or after (`postinst`)
/// every instrumented instruction, or only those of a mnemonic or an iced-x86 `Code`.
///
/// Arguments, comma-separated:
/// - `preinst` or `postinst` (exactly one, required);
/// - `priority = N` (an `i32`, may be negative; default 0): among callbacks at the same
///   place, higher priorities run first;
/// - `mnemonic = "GLOB"`: only instructions whose mnemonic matches the glob (ignoring case,
///   `*` any run, `?` one character, e.g. `"CALL*"`, `"J??"`); a glob that matches no x86
///   mnemonic is a compile error;
/// - `code = "NAME"`: only instructions of this exact iced-x86 `Code` (`"Call_rm64"`);
///   exclusive with `mnemonic`.
///
/// The function takes `(vm: &mut VmRef, gpr: &mut GprState, fpr: &mut FprState)` and
/// returns `VmAction`.
///
/// ```ignore
/// use qbdi_sdk::prelude::*;
///
/// #[inst_callback(preinst, mnemonic = "CALL*", priority = 10)]
/// fn on_call(vm: &mut VmRef, gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
///     println!("call at {:#x}", gpr.rip);
///     VmAction::Continue
/// }
/// ```
#[proc_macro_attribute]
pub fn inst_callback(args: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Inst, args, item)
}

/// Registers a VM event callback: called on each of the events named, joined with `|`.
///
/// Events: `SEQUENCE_ENTRY`, `SEQUENCE_EXIT`, `BASIC_BLOCK_ENTRY`, `BASIC_BLOCK_EXIT`,
/// `BASIC_BLOCK_NEW`, `EXEC_TRANSFER_CALL`, `EXEC_TRANSFER_RETURN`, `SYSCALL_ENTRY`,
/// `SYSCALL_EXIT` (at least one). No other arguments.
///
/// The function takes `(vm: &mut VmRef, state: &VmState, gpr: &mut GprState,
/// fpr: &mut FprState)` and returns `VmAction`.
///
/// ```ignore
/// use qbdi_sdk::prelude::*;
///
/// #[vm_event(BASIC_BLOCK_ENTRY | BASIC_BLOCK_EXIT)]
/// fn on_block(_vm: &mut VmRef, state: &VmState, _g: &mut GprState, _f: &mut FprState) -> VmAction {
///     println!("{:?} {:#x}..{:#x}", state.event, state.basic_block_start, state.basic_block_end);
///     VmAction::Continue
/// }
/// ```
#[proc_macro_attribute]
pub fn vm_event(args: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Event, args, item)
}

/// Registers a memory access callback: called on each instruction that reads (`read`),
/// writes (`write`) or does either (`read_write`, or `read | write`) memory, before the
/// instruction for reads and after it for writes (and for instructions that do both); the
/// accesses themselves are in `vm.inst_memory_access()`.
///
/// Arguments: the access kind (required), then optionally `priority = N` (an `i32`).
///
/// The function takes `(vm: &mut VmRef, gpr: &mut GprState, fpr: &mut FprState)` and
/// returns `VmAction`.
///
/// ```ignore
/// use qbdi_sdk::prelude::*;
///
/// #[mem_access(write, priority = 5)]
/// fn on_write(vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
///     for access in vm.inst_memory_access() {
///         println!("wrote {} bytes at {:#x}", access.size, access.access_address);
///     }
///     VmAction::Continue
/// }
/// ```
#[proc_macro_attribute]
pub fn mem_access(args: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::MemAccess, args, item)
}

/// Registers an instrumentation rule: called once per instruction as it is first
/// instrumented, with its analysis; returns the callbacks to attach to that instruction.
///
/// Argument: optionally `analysis = NAME | NAME` with `INSTRUCTION`, `DISASSEMBLY`,
/// `OPERANDS`, `SYMBOL` (the parts of the analysis to compute; default `INSTRUCTION`).
///
/// The function takes `(vm: &mut VmRef, analysis: &InstAnalysis)` and returns
/// `Vec<InstrRuleCallback>`.
///
/// ```ignore
/// use qbdi_sdk::prelude::*;
///
/// #[instr_rule(analysis = OPERANDS | SYMBOL)]
/// fn rule(_vm: &mut VmRef, analysis: &InstAnalysis) -> Vec<InstrRuleCallback> {
///     if !analysis.is_call {
///         return Vec::new();
///     }
///     vec![InstrRuleCallback::new(InstPosition::PreInst, |_vm, _gpr, _fpr| VmAction::Continue, 0)]
/// }
/// ```
#[proc_macro_attribute]
pub fn instr_rule(args: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Rule, args, item)
}

/// Registers the plugin's initialisation: called once before the program runs, with the
/// plugin's options; an `Err` stops `qbdi` before the program starts, with its message.
///
/// No arguments. The function takes `(vm: &mut VmRef, options: &PluginOptions)` and
/// returns `Result<(), E>` for any `E: Display`.
///
/// ```ignore
/// use qbdi_sdk::prelude::*;
///
/// #[plugin_init]
/// fn init(vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
///     let module = options.get("module").unwrap_or("libc");
///     vm.add_instrumented_module(module).map_err(|e| e.to_string())
/// }
/// ```
#[proc_macro_attribute]
pub fn plugin_init(args: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Init, args, item)
}

/// Registers the plugin's finalisation: called once when the program exits (also after
/// another plugin failed), to write results.
///
/// No arguments. The function takes no arguments and returns nothing.
///
/// ```ignore
/// use qbdi_sdk::prelude::*;
///
/// #[plugin_fini]
/// fn fini() {
///     eprintln!("done");
/// }
/// ```
#[proc_macro_attribute]
pub fn plugin_fini(args: TokenStream, item: TokenStream) -> TokenStream {
    run(Kind::Fini, args, item)
}
