//! What the attribute macros and [`plugin!`](crate::plugin) expand to call. Not a public API:
//! the expansions are its only users.

pub use inventory;

pub use crate::registry::{OptionSpec, PluginInfo, Registration, Trampoline, descriptor};

use qbdi_core::{FprState, GprState, InstAnalysis, VmAction, VmState};

use crate::abi::{RawAction, RawInstAnalysis, RawKeyValue, RawVm, StrRef};
use crate::options::PluginOptions;
use crate::panic::guard;
use crate::vm_ref::{InstrRuleCallback, VmRef, push_rule_callbacks, with_vm};

/// The signature `#[inst_callback]` and `#[mem_access]` functions have.
pub type InstFn = fn(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction;
/// The signature `#[vm_event]` functions have.
pub type EventFn = fn(&mut VmRef<'_>, &VmState, &mut GprState, &mut FprState) -> VmAction;
/// The signature `#[instr_rule]` functions have.
pub type RuleFn = fn(&mut VmRef<'_>, &InstAnalysis) -> Vec<InstrRuleCallback>;

/// Body of an instruction (or memory access) trampoline.
///
/// Generic and always inlined, as is everything it calls, so that a trampoline whose
/// function is simple compiles to simple code: the engine then calls it straight from
/// translated code (its "direct path"). A `VmRef` that the function does not use is never
/// built, and `catch_unwind` around code that cannot panic leaves no trace.
///
/// # Safety
/// Only for the trampolines the macros generate: every pointer is what the host passed into
/// the current call (valid, and not otherwise referenced, until it returns).
#[inline(always)]
pub unsafe fn call_inst<F>(
    vm: *const RawVm,
    gpr: *mut GprState,
    fpr: *mut FprState,
    name: &str,
    f: F,
) -> RawAction
where
    F: FnOnce(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction,
{
    guard(vm, name, || {
        // SAFETY: the host passes valid, exclusive state pointers for the call.
        let (gpr, fpr) = unsafe { (&mut *gpr, &mut *fpr) };
        with_vm(vm, |vm| f(vm, gpr, fpr) as RawAction)
    })
}

/// Body of a VM event trampoline (inlined as [`call_inst`]).
///
/// # Safety
/// Only for the trampolines the macros generate: every pointer is what the host passed into
/// the current call (valid, and not otherwise referenced, until it returns).
#[inline(always)]
pub unsafe fn call_event<F>(
    vm: *const RawVm,
    state: *const VmState,
    gpr: *mut GprState,
    fpr: *mut FprState,
    name: &str,
    f: F,
) -> RawAction
where
    F: FnOnce(&mut VmRef<'_>, &VmState, &mut GprState, &mut FprState) -> VmAction,
{
    guard(vm, name, || {
        // SAFETY: as in call_inst; `state` is valid for the call.
        let (state, gpr, fpr) = unsafe { (&*state, &mut *gpr, &mut *fpr) };
        with_vm(vm, |vm| f(vm, state, gpr, fpr) as RawAction)
    })
}

/// Body of an instrumentation rule trampoline.
///
/// # Safety
/// Only for the trampolines the macros generate: every pointer is what the host passed into
/// the current call (valid, and not otherwise referenced, until it returns).
pub unsafe fn call_rule(
    vm: *const RawVm,
    analysis: *const RawInstAnalysis,
    sink: *mut std::ffi::c_void,
    name: &str,
    f: RuleFn,
) -> RawAction {
    guard(vm, name, || {
        // SAFETY: the host's record is valid for the call.
        let analysis = unsafe { crate::convert::inst_analysis(&*analysis) };
        with_vm(vm, |vm| {
            let produced = f(vm, &analysis);
            push_rule_callbacks(vm.api(), sink, produced);
        });
        VmAction::Continue as RawAction
    })
}

/// Body of an init trampoline: options in, 0 or an error (reported through the host).
///
/// # Safety
/// Only for the trampolines the macros generate: every pointer is what the host passed into
/// the current call (valid, and not otherwise referenced, until it returns).
pub unsafe fn call_init<E: std::fmt::Display>(
    vm: *const RawVm,
    options: *const RawKeyValue,
    count: usize,
    name: &str,
    f: fn(&mut VmRef<'_>, &PluginOptions) -> Result<(), E>,
) -> u32 {
    let pairs = if options.is_null() || count == 0 {
        Vec::new()
    } else {
        // SAFETY: the host passes `count` pairs at `options`, valid for the call.
        let raw = unsafe { std::slice::from_raw_parts(options, count) };
        raw.iter()
            // SAFETY: host-owned strings, valid for the call.
            .map(|kv| unsafe { (kv.key.as_str().into_owned(), kv.value.as_str().into_owned()) })
            .collect()
    };
    let options = PluginOptions::new(pairs);
    // 0: started; 1: refused (the message is with the host); PANICKED.
    guard(vm, name, || {
        with_vm(vm, |vm| match f(vm, &options) {
            Ok(()) => 0,
            Err(e) => {
                let message = e.to_string();
                (vm.api().set_error)(vm.raw_handle(), StrRef::new(&message));
                1
            }
        })
    })
}

/// Body of a fini trampoline.
///
/// # Safety
/// Only for the trampolines the macros generate: every pointer is what the host passed into
/// the current call (valid, and not otherwise referenced, until it returns).
pub unsafe fn call_fini(vm: *const RawVm, name: &str, f: fn()) -> u32 {
    guard(vm, name, || {
        f();
        0
    })
}
