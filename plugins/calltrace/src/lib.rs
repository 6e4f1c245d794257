//! `calltrace`: the calls the instrumented code makes to code outside it (libc, other
//! libraries), like ltrace: target, first three arguments (rdi, rsi, rdx) and return value
//! (rax), one line per call when it returns (see [`calls`] for nesting).
//!
//! Options: `out=PATH` (default `calltrace.<pid>.log`, `-` for stderr).
//!
//! Calls are EXEC_TRANSFER_CALL events (the Vm leaving the instrumented ranges), returns
//! EXEC_TRANSFER_RETURN events; targets are named with the host's ELF symbols, once per
//! address.

#![warn(missing_docs)]

use std::sync::Mutex;

use qbdi_plugin_support::output::{Output, Stream};
use qbdi_plugin_support::sync::{FINI_WAIT, lock, lock_for_fini};
use qbdi_sdk::prelude::*;

pub mod calls;

use calls::CallTracer;

/// The plugin's name.
const NAME: &str = "calltrace";

qbdi_sdk::plugin!(
    name: "calltrace",
    description: "calls out of the instrumented code with arguments and return values (like ltrace)",
    options: [("out", "file to write (- for stderr)", "calltrace.<pid>.log")],
);

/// The output.
static TRACE: Stream = Stream::new(NAME);
/// Calls in progress and target names. Locked before `TRACE`.
static CALLS: Mutex<CallTracer> = Mutex::new(CallTracer::new());

#[plugin_init]
fn init(_vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    TRACE.open(&Output::from_options(NAME, options)?)
}

#[vm_event(EXEC_TRANSFER_CALL)]
fn on_call(vm: &mut VmRef, _state: &VmState, gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    let target = gpr.rip;
    let mut calls = lock(&CALLS);
    if !calls.knows(target) {
        calls.set_label(target, calls::label(vm.symbolize(target).as_ref(), target));
    }
    TRACE.with(|w| calls.call(w, target, [gpr.rdi, gpr.rsi, gpr.rdx], gpr.rsp));
    VmAction::Continue
}

#[vm_event(EXEC_TRANSFER_RETURN)]
fn on_return(
    _vm: &mut VmRef,
    _state: &VmState,
    gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    let mut calls = lock(&CALLS);
    TRACE.with(|w| calls.ret(w, gpr.rsp, gpr.rax));
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    let calls = lock_for_fini(&CALLS, FINI_WAIT);
    TRACE.finish(|w| match calls {
        Some(mut c) => c.finish(w),
        None => {
            use std::io::Write;
            writeln!(
                w,
                "# calls in progress unknown: a callback was interrupted at exit"
            )
        }
    });
}
