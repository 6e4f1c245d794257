//! `calltrace`: the calls the instrumented code makes to code outside it (libc, other
//! libraries), like ltrace: target, first three arguments (rdi, rsi, rdx) and return value
//! (rax), one line per call when it returns (see [`calls`] for nesting).
//!
//! Options: `out=PATH` (default `calltrace.<pid>.log`, `-` for stderr).
//!
//! Calls are EXEC_TRANSFER_CALL events (the Vm leaving the instrumented ranges), returns
//! EXEC_TRANSFER_RETURN events; targets are named with the host's ELF symbols, once per
//! address. A first call through a lazily bound PLT slot enters the dynamic loader's
//! resolver, not the function: it is named after the slot's symbol, then after the function
//! the slot was bound to (see [`lazy`]).

#![warn(missing_docs)]

use std::hash::BuildHasherDefault;
use std::sync::Mutex;

use qbdi_plugin_support::hash::AddrMap;

use qbdi_plugin_support::output::{Output, Stream};
use qbdi_plugin_support::sync::{FINI_WAIT, lock, lock_for_fini};
use qbdi_sdk::prelude::*;

pub mod calls;
pub mod elf;
pub mod lazy;

use calls::CallTracer;
use lazy::LazyResolver;

/// The plugin's name.
const NAME: &str = "calltrace";

qbdi_sdk::plugin!(
    name: "calltrace",
    description: "calls out of the instrumented code with arguments and return values (like ltrace)",
    options: [("out", "file to write (- for stderr)", "calltrace.<pid>.log")],
);

/// The output.
static TRACE: Stream = Stream::new(NAME);
/// Calls in progress and target names, per thread. Locked before `LAZY`, which is before
/// `TRACE`.
static CALLS: Mutex<AddrMap<u32, CallTracer>> =
    Mutex::new(AddrMap::with_hasher(BuildHasherDefault::new()));

/// The tracer of the thread `vm` runs on; lines of threads other than the process's main
/// one start with `[tid N] ` (as `strace -f` marks them).
fn tracer<'a>(calls: &'a mut AddrMap<u32, CallTracer>, vm: &VmRef) -> &'a mut CallTracer {
    let (tid, main) = (vm.thread_id(), vm.is_main_thread());
    calls.entry(tid).or_insert_with(|| {
        if main {
            CallTracer::new()
        } else {
            CallTracer::with_prefix(format!("[tid {tid}] "))
        }
    })
}
/// Naming of lazily bound calls.
static LAZY: Mutex<LazyResolver> = Mutex::new(LazyResolver::new());

#[plugin_init]
fn init(_vm: &mut VmRef, options: &PluginOptions) -> Result<(), String> {
    TRACE.open(&Output::from_options(NAME, options)?)?;
    // A fork child traces into a file of its own (the calls in progress, fork's included,
    // are the child's too).
    qbdi_plugin_support::fork::on_fork_child(|| {
        TRACE.reopen_in_fork_child();
        // The child's only thread is the one that forked: if that was the parent's main
        // thread, its calls in progress go on as the child's main thread's.
        if let Ok(mut all) = CALLS.try_lock() {
            let parent = std::os::unix::process::parent_id();
            let forked = all.remove(&parent);
            all.clear();
            if let Some(mut t) = forked {
                t.set_prefix(String::new());
                all.insert(std::process::id(), t);
            }
        }
    });
    Ok(())
}

/// The label of `target` (see [`calls::label`]); when the host has no symbol there,
/// `slot_name` (the PLT slot the call went through) names it.
fn name_target(vm: &VmRef, target: u64, slot_name: impl FnOnce() -> Option<String>) -> String {
    let symbol = vm.symbolize(target);
    if let Some(s) = &symbol
        && s.name.is_empty()
        && let Some(name) = slot_name()
    {
        let named = Symbol {
            name,
            offset: 0,
            module: s.module.clone(),
        };
        return calls::label(Some(&named), target);
    }
    calls::label(symbol.as_ref(), target)
}

#[vm_event(EXEC_TRANSFER_CALL)]
fn on_call(vm: &mut VmRef, _state: &VmState, gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    let (target, rsp) = (gpr.rip, gpr.rsp);
    let mut all = lock(&CALLS);
    let calls = tracer(&mut all, vm);
    let mut lazy = lock(&LAZY);
    if !calls.knows(target) {
        let label = name_target(vm, target, || lazy.slot_name(target, rsp));
        calls.set_label(target, label);
    }
    let pending = lazy.pending(target, rsp);
    drop(lazy);
    TRACE.with(|w| calls.call(w, target, [gpr.rdi, gpr.rsi, gpr.rdx], rsp, pending));
    VmAction::Continue
}

#[vm_event(EXEC_TRANSFER_RETURN)]
fn on_return(
    vm: &mut VmRef,
    _state: &VmState,
    gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    let mut all = lock(&CALLS);
    let calls = tracer(&mut all, vm);
    let resolve = |l: &calls::Lazy| {
        let bound = lock(&LAZY).resolved(l)?;
        Some(name_target(vm, bound, || Some(l.name.clone())))
    };
    TRACE.with(|w| calls.ret(w, gpr.rsp, gpr.rax, resolve));
    VmAction::Continue
}

#[plugin_fini]
fn fini() {
    let calls = lock_for_fini(&CALLS, FINI_WAIT);
    TRACE.finish(|w| match calls {
        Some(mut all) => {
            let mut tids: Vec<u32> = all.keys().copied().collect();
            tids.sort_unstable();
            for tid in tids {
                all.get_mut(&tid).expect("listed").finish(w)?;
            }
            Ok(())
        }
        None => {
            use std::io::Write;
            writeln!(
                w,
                "# calls in progress unknown: a callback was interrupted at exit"
            )
        }
    });
}
