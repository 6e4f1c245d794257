//! Panics stop at the boundary: every trampoline runs plugin code under `catch_unwind`
//! (a panic unwinding into the host would abort the whole program, each cdylib having its
//! own panic runtime) and reports it to the host, which stops the run and names the plugin
//! and the callback.

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::{PANICKED, RawAction, RawVm, StrRef};

thread_local! {
    /// The message and location of the last panic on this thread, set by the hook. Never
    /// dropped: a thread-local with a destructor is registered with glibc on first use,
    /// which calls libc's `calloc` (a panicking callback may run inside the guest's malloc).
    static LAST_PANIC: RefCell<ManuallyDrop<String>> =
        const { RefCell::new(ManuallyDrop::new(String::new())) };
}

/// Replaces the plugin's panic hook (this cdylib's own std) with one that keeps the message
/// and location for the report instead of printing them.
pub(crate) fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "(a panic with a non-string payload)".to_owned()
        };
        let text = match info.location() {
            Some(l) => format!("{message} (at {}:{})", l.file(), l.line()),
            None => message,
        };
        LAST_PANIC.with(|p| **p.borrow_mut() = text);
    }));
}

/// Runs `f`; a panic becomes [`PANICKED`] after a report to the host naming `what`.
/// Inlined: around code that cannot unwind, the compiler drops the landing pad and the
/// report with it.
#[inline(always)]
pub(crate) fn guard(vm: *const RawVm, what: &str, f: impl FnOnce() -> RawAction) -> RawAction {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(action) => action,
        Err(_) => panicked(vm, what),
    }
}

/// The cold half of [`guard`]: reports the panic on this thread.
#[cold]
#[inline(never)]
fn panicked(vm: *const RawVm, what: &str) -> RawAction {
    let message = LAST_PANIC.with(|p| std::mem::take(&mut **p.borrow_mut()));
    report(vm, what, &message);
    PANICKED
}

/// Tells the host that `what` panicked with `message`.
fn report(vm: *const RawVm, what: &str, message: &str) {
    if vm.is_null() {
        return;
    }
    // SAFETY: the host passes a valid RawVm (with its function table) into every call, valid
    // for the duration of the call we are in.
    let raw = unsafe { &*vm };
    // SAFETY: as above; the table lives as long as the host.
    let api = unsafe { &*raw.api };
    (api.report_panic)(vm, StrRef::new(what), StrRef::new(message));
}
