//! The program's signal handlers under the engine.
//!
//! The preload interposes `sigaction` and the `signal` family (`signal`, `bsd_signal`,
//! `sysv_signal`; the program's calls reach them through its PLT, with libc instrumented or
//! not). A handler in the instrumented ranges is
//! installed behind a wrapper (same mask and flags, plus `SA_SIGINFO`); `oldact` reports
//! the program's own handler. When the signal comes, the wrapper runs the handler under a
//! Vm of its own, taken from a pool kept for handlers, on the stack the kernel gave the
//! handler (the thread's, or its `sigaltstack`), with the host's code on a pool host stack.
//! The interrupted code, guest or host, is left as it is: its Vm is not touched.
//!
//! - A handler that returns gives the Vm back; the kernel's `sigreturn` resumes the
//!   interrupted code.
//! - A handler that leaves with a native `siglongjmp` (libc not instrumented) resumes the
//!   interrupted Vm's code where `sigsetjmp` returned; a jump to native code the handler
//!   cannot come back from ends its run there and that code runs natively. The handler's
//!   Vm is taken back by the next signal on the thread, which finds that handler's frame
//!   gone (its stack pointer below the new one).
//! - A handler that leaves with a translated `siglongjmp` (libc instrumented) goes on in
//!   its own Vm: the program continues there. The next signal finds the interrupted pc in
//!   that Vm's cache with its handler frame gone: the Vm it had interrupted, if one of
//!   ours, is taken back.
//! - A signal that interrupts a plugin callback on the thread, or a translation (which runs
//!   plugin code: inline counters' slot lookups, rules), waits until the callback returns
//!   or the translation ends (the plugin may hold a lock the handler's own translation
//!   would take): its handler then runs with a blank `ucontext`. Faults are never deferred.
//! - The handler runs natively when no pooled Vm or host stack is free.
//!
//! With re-entry on (`reentry`), the kernel's `SIGSEGV` handler is re-entry's, and the
//! program's `SIGSEGV` disposition is kept here ([`forward_segv`]).

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

use qbdi_core::threads::{self, HostStack};
use qbdi_core::{Vm, VmError};

use crate::{log, session};

const NSIG: usize = 65;
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The program's handler of each signal that we wrap (0: not wrapped).
static APP: [AtomicUsize; NSIG] = [const { AtomicUsize::new(0) }; NSIG];
/// Whether the program asked for `SA_SIGINFO` (three arguments) for it.
static SIGINFO: [AtomicBool; NSIG] = [const { AtomicBool::new(false) }; NSIG];
/// Whether the disposition goes back to the default after one delivery (`SA_RESETHAND`).
static RESETHAND: [AtomicBool; NSIG] = [const { AtomicBool::new(false) }; NSIG];

/// Whether the kernel's `SIGSEGV` handler is re-entry's (see `reentry`): the program's
/// disposition of `SIGSEGV` is then kept here, and applied by [`forward_segv`].
static SEGV_TAKEN: AtomicBool = AtomicBool::new(false);
/// The program's `SIGSEGV` handler (`SIG_DFL`, `SIG_IGN` or a function), flags and mask
/// (signals 1-64).
static SEGV_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static SEGV_FLAGS: AtomicI32 = AtomicI32::new(0);
static SEGV_MASK: AtomicU64 = AtomicU64::new(0);

/// Runs the program's signal handlers under the engine from now on.
pub(crate) fn enable() {
    // Vms for handlers (two: a handler interrupted by another signal).
    crate::threads::fill_signal_pool(2);
    // Signals that came during a translation are delivered when it ends.
    qbdi_core::threads::set_safe_point_hook(run_deferred);
    ENABLED.store(true, Ordering::SeqCst);
}

type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

fn real_sigaction() -> Option<SigactionFn> {
    static REAL: OnceLock<usize> = OnceLock::new();
    // SAFETY: SigactionFn is sigaction's type.
    unsafe { crate::preload::next_fn::<SigactionFn>(&REAL, c"sigaction") }
}

/// `sigaction`, interposed (see the module docs).
///
/// # Safety
/// sigaction's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let Some(real) = real_sigaction() else {
        // SAFETY: sets this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    };
    let index = sig as usize;
    if !ENABLED.load(Ordering::SeqCst) || sig <= 0 || index >= NSIG {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(sig, act, old) };
    }
    if sig == libc::SIGSEGV && SEGV_TAKEN.load(Ordering::SeqCst) {
        // SAFETY: `act` and `old`, when not null, are the caller's.
        unsafe { segv_action(act, old) };
        return 0;
    }
    let (prev_app, prev_siginfo, prev_reset) = (
        APP[index].load(Ordering::SeqCst),
        SIGINFO[index].load(Ordering::SeqCst),
        RESETHAND[index].load(Ordering::SeqCst),
    );
    // SAFETY: `act`, when not null, points at the caller's sigaction.
    let requested = (!act.is_null()).then(|| unsafe { *act });
    let mut wrapped = None;
    if let Some(a) = requested {
        let h = a.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN && crate::threads::instrumented(h as u64) {
            let mut ours = a;
            ours.sa_sigaction = wrapper as *const () as usize;
            ours.sa_flags |= libc::SA_SIGINFO;
            // Known before the kernel can deliver through the wrapper.
            APP[index].store(h, Ordering::SeqCst);
            SIGINFO[index].store(a.sa_flags & libc::SA_SIGINFO != 0, Ordering::SeqCst);
            RESETHAND[index].store(a.sa_flags & libc::SA_RESETHAND != 0, Ordering::SeqCst);
            wrapped = Some(ours);
        }
    }
    // What the kernel gets: our wrapper, the program's handler, or for a default action
    // the finaliser that stood for it (`preload::default_action`). While re-entry has the
    // kernel's SIGSEGV handler, no handler blocks SIGSEGV (see `change_mask`).
    let default = requested
        .filter(|a| a.sa_sigaction == libc::SIG_DFL)
        .and_then(|_| crate::preload::default_action(sig));
    let mut forwarded = wrapped.or(default).or(requested);
    if SEGV_TAKEN.load(Ordering::SeqCst)
        && let Some(a) = forwarded.as_mut()
    {
        // SAFETY: our copy of the set.
        unsafe { libc::sigdelset(&mut a.sa_mask, libc::SIGSEGV) };
    }
    let act_ptr = forwarded
        .as_ref()
        .map_or(act, |a| a as *const libc::sigaction);
    // SAFETY: forwarding, with our wrapper in place of the program's handler.
    let r = unsafe { real(sig, act_ptr, old) };
    if r != 0 {
        APP[index].store(prev_app, Ordering::SeqCst);
        SIGINFO[index].store(prev_siginfo, Ordering::SeqCst);
        RESETHAND[index].store(prev_reset, Ordering::SeqCst);
        return r;
    }
    if !old.is_null() {
        // SAFETY: the kernel filled the caller's `old`.
        let o = unsafe { &mut *old };
        if o.sa_sigaction == wrapper as *const () as usize {
            o.sa_sigaction = prev_app;
            if !prev_siginfo {
                o.sa_flags &= !libc::SA_SIGINFO;
            }
        } else if crate::preload::is_finaliser(o.sa_sigaction) {
            // The default action, as far as the program knows.
            o.sa_sigaction = libc::SIG_DFL;
            o.sa_flags = 0;
            // SAFETY: the caller's sigaction's mask.
            unsafe { libc::sigemptyset(&mut o.sa_mask) };
        }
    }
    if requested.is_some() && wrapped.is_none() {
        APP[index].store(0, Ordering::SeqCst);
    }
    r
}

fn mask_word(set: &libc::sigset_t) -> u64 {
    (1..=64)
        // SAFETY: sigismember reads the set.
        .filter(|&sig| unsafe { libc::sigismember(set, sig) } == 1)
        .fold(0, |m, sig| m | 1 << (sig - 1))
}

fn mask_set(word: u64) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset adds valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in 1..=64 {
            if word & 1 << (sig - 1) != 0 {
                libc::sigaddset(&mut set, sig);
            }
        }
        set
    }
}

/// `sigaction(SIGSEGV, ..)` while re-entry has the kernel's handler: records the program's
/// disposition (reported back as it was given) without changing the kernel's.
///
/// # Safety
/// `act` and `old` are null or valid.
unsafe fn segv_action(act: *const libc::sigaction, old: *mut libc::sigaction) {
    let index = libc::SIGSEGV as usize;
    if !old.is_null() {
        // SAFETY: the caller's `old`; an all-zero sigaction is valid.
        unsafe {
            let mut o: libc::sigaction = std::mem::zeroed();
            o.sa_sigaction = SEGV_HANDLER.load(Ordering::SeqCst);
            o.sa_flags = SEGV_FLAGS.load(Ordering::SeqCst);
            o.sa_mask = mask_set(SEGV_MASK.load(Ordering::SeqCst));
            *old = o;
        }
    }
    if act.is_null() {
        return;
    }
    // SAFETY: the caller's `act`.
    let a = unsafe { *act };
    let h = a.sa_sigaction;
    let wrapped =
        h != libc::SIG_DFL && h != libc::SIG_IGN && crate::threads::instrumented(h as u64);
    APP[index].store(if wrapped { h } else { 0 }, Ordering::SeqCst);
    SIGINFO[index].store(a.sa_flags & libc::SA_SIGINFO != 0, Ordering::SeqCst);
    RESETHAND[index].store(a.sa_flags & libc::SA_RESETHAND != 0, Ordering::SeqCst);
    SEGV_MASK.store(mask_word(&a.sa_mask), Ordering::SeqCst);
    SEGV_FLAGS.store(a.sa_flags, Ordering::SeqCst);
    SEGV_HANDLER.store(h, Ordering::SeqCst);
}

/// Makes `handler` the kernel's `SIGSEGV` handler for good (re-entry's), keeping what the
/// program had as its disposition for [`forward_segv`]. The host's own fatal-signal
/// finaliser counts as the default action.
pub(crate) fn take_segv(handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void)) {
    let Some(real) = real_sigaction() else {
        return;
    };
    // SAFETY: reads the current disposition, then installs `handler` (SA_SIGINFO).
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        real(libc::SIGSEGV, std::ptr::null(), &mut old);
        if old.sa_sigaction == crate::preload::fatal_signal_handler() {
            old.sa_sigaction = libc::SIG_DFL;
            old.sa_flags = 0;
        }
        SEGV_HANDLER.store(old.sa_sigaction, Ordering::SeqCst);
        SEGV_FLAGS.store(old.sa_flags, Ordering::SeqCst);
        SEGV_MASK.store(mask_word(&old.sa_mask), Ordering::SeqCst);
        SEGV_TAKEN.store(true, Ordering::SeqCst);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        real(libc::SIGSEGV, &sa, std::ptr::null_mut());
    }
}

/// Sets the kernel's disposition of `sig` to the default, past the interposer.
pub(crate) fn set_default_action(sig: c_int) {
    if sig == libc::SIGSEGV {
        SEGV_TAKEN.store(false, Ordering::SeqCst);
    }
    let Some(real) = real_sigaction() else {
        return;
    };
    // SAFETY: an all-zero sigaction with SIG_DFL is the default disposition.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        real(sig, &sa, std::ptr::null_mut());
    }
}

thread_local! {
    /// Whether the program asked for `SIGSEGV` blocked on this thread while re-entry has
    /// the kernel's handler (which keeps it unblocked, see [`sigprocmask`]).
    static SEGV_BLOCKED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the program wishes `SIGSEGV` blocked on this thread (see [`change_mask`]).
pub(crate) fn segv_blocked() -> bool {
    SEGV_BLOCKED.with(Cell::get)
}

/// Sets [`segv_blocked`] for this thread (a new thread inherits its creator's wish).
pub(crate) fn set_segv_blocked(blocked: bool) {
    SEGV_BLOCKED.with(|b| b.set(blocked));
}

type SigmaskFn = unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int;

/// A signal mask change: while re-entry has the kernel's `SIGSEGV` handler, `SIGSEGV` stays
/// unblocked in the kernel's mask (native code calling instrumented code faults into it:
/// blocked, the kernel would kill the process at the first such call, as it did a program
/// that blocked every signal and called `qsort`), and the program's own wish is kept per
/// thread and shown in the old masks it reads.
///
/// # Safety
/// sigprocmask's contract; `real` is libc's function of that contract.
unsafe fn change_mask(
    real: SigmaskFn,
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    if !SEGV_TAKEN.load(Ordering::SeqCst) {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(how, set, old) };
    }
    let was = SEGV_BLOCKED.with(Cell::get);
    let mut ours = None;
    if !set.is_null() {
        // SAFETY: the caller's set.
        let mut copy = unsafe { *set };
        // SAFETY: our copy; sigismember and sigdelset read and edit it.
        let segv = unsafe { libc::sigismember(&copy, libc::SIGSEGV) } == 1;
        unsafe { libc::sigdelset(&mut copy, libc::SIGSEGV) };
        let now = match how {
            libc::SIG_BLOCK => was || segv,
            libc::SIG_UNBLOCK => was && !segv,
            libc::SIG_SETMASK => segv,
            _ => was,
        };
        ours = Some((copy, now));
    }
    let set_ptr = ours
        .as_ref()
        .map_or(set, |(c, _)| c as *const libc::sigset_t);
    // SAFETY: forwarding, with SIGSEGV out of the set.
    let r = unsafe { real(how, set_ptr, old) };
    if r == 0 {
        if let Some((_, now)) = ours {
            SEGV_BLOCKED.with(|b| b.set(now));
        }
        if was && !old.is_null() {
            // SAFETY: the kernel filled the caller's `old`.
            unsafe { libc::sigaddset(old, libc::SIGSEGV) };
        }
    }
    r
}

/// `sigprocmask`, interposed (see [`change_mask`]).
///
/// # Safety
/// sigprocmask's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigprocmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    static REAL: OnceLock<usize> = OnceLock::new();
    // SAFETY: SigmaskFn is sigprocmask's type.
    match unsafe { crate::preload::next_fn::<SigmaskFn>(&REAL, c"sigprocmask") } {
        // SAFETY: the caller's contract.
        Some(real) => unsafe { change_mask(real, how, set, old) },
        None => {
            // SAFETY: sets this thread's errno.
            unsafe { *libc::__errno_location() = libc::ENOSYS };
            -1
        }
    }
}

fn real_pthread_sigmask() -> Option<SigmaskFn> {
    static REAL: OnceLock<usize> = OnceLock::new();
    // SAFETY: SigmaskFn is pthread_sigmask's type.
    unsafe { crate::preload::next_fn::<SigmaskFn>(&REAL, c"pthread_sigmask") }
}

/// libc's `pthread_sigmask`, past the interposer: for the host's own mask changes, which
/// are not the program's.
pub(crate) fn host_sigmask(how: c_int, set: &libc::sigset_t, old: *mut libc::sigset_t) {
    if let Some(real) = real_pthread_sigmask() {
        // SAFETY: libc's pthread_sigmask, with valid arguments.
        unsafe { real(how, set, old) };
    }
}

/// `pthread_sigmask`, interposed (see [`change_mask`]; it returns the error number).
///
/// # Safety
/// pthread_sigmask's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    match real_pthread_sigmask() {
        // SAFETY: the caller's contract.
        Some(real) => unsafe { change_mask(real, how, set, old) },
        None => libc::ENOSYS,
    }
}

/// A `SIGSEGV` that is not a re-entry: what the program's disposition says (its mask
/// applied, `SA_RESETHAND` honoured; the kernel restores the mask at `sigreturn`). A fault
/// while the program has `SIGSEGV` blocked kills it, as the kernel would.
pub(crate) fn forward_segv(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    let h = SEGV_HANDLER.load(Ordering::SeqCst);
    let flags = SEGV_FLAGS.load(Ordering::SeqCst);
    // SAFETY: `info`, when not null, is the kernel's siginfo of this delivery.
    let sent = !info.is_null() && unsafe { (*info).si_code } <= 0;
    if !sent && SEGV_BLOCKED.with(Cell::get) {
        crate::preload::fatal_signal(sig, info, uctx);
        return;
    }
    if h == libc::SIG_IGN && sent {
        // Sent by a process, ignored. (A fault the kernel raised cannot be ignored.)
        return;
    }
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        crate::preload::fatal_signal(sig, info, uctx);
        return;
    }
    if flags & libc::SA_RESETHAND != 0 {
        SEGV_HANDLER.store(libc::SIG_DFL, Ordering::SeqCst);
    }
    let mut mask = SEGV_MASK.load(Ordering::SeqCst);
    if flags & libc::SA_NODEFER == 0 {
        mask |= 1 << (sig - 1);
    }
    let set = mask_set(mask);
    // SAFETY: blocks the program's handler mask on this thread.
    host_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    if APP[sig as usize].load(Ordering::SeqCst) != 0 {
        wrapper(sig, info, uctx);
    } else {
        call_natively(sig, h, flags & libc::SA_SIGINFO != 0, info, uctx);
    }
}

/// `signal`, interposed: glibc's BSD semantics (`SA_RESTART`, the signal blocked in its
/// handler) through [`sigaction`].
///
/// # Safety
/// signal's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: the caller's contract.
    unsafe { install(sig, handler, libc::SA_RESTART, true) }
}

/// `bsd_signal`, interposed: as [`signal`].
///
/// # Safety
/// bsd_signal's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bsd_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: the caller's contract.
    unsafe { install(sig, handler, libc::SA_RESTART, true) }
}

/// `sysv_signal`, interposed: System V semantics (the disposition back to the default at
/// delivery, the signal not blocked in its handler, no restart) through [`sigaction`].
///
/// # Safety
/// sysv_signal's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sysv_signal(
    sig: c_int,
    handler: libc::sighandler_t,
) -> libc::sighandler_t {
    // SAFETY: the caller's contract.
    unsafe { install(sig, handler, libc::SA_RESETHAND | libc::SA_NODEFER, false) }
}

/// `__sysv_signal` (what `signal` means in strict ISO C), interposed: as [`sysv_signal`].
///
/// # Safety
/// sysv_signal's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __sysv_signal(
    sig: c_int,
    handler: libc::sighandler_t,
) -> libc::sighandler_t {
    // SAFETY: the caller's contract.
    unsafe { install(sig, handler, libc::SA_RESETHAND | libc::SA_NODEFER, false) }
}

/// The `signal` family through [`sigaction`]: `flags`, and the signal blocked in its
/// handler if `block_self`. Returns the previous handler, or `SIG_ERR`.
///
/// # Safety
/// signal's contract.
unsafe fn install(
    sig: c_int,
    handler: libc::sighandler_t,
    flags: c_int,
    block_self: bool,
) -> libc::sighandler_t {
    // SAFETY: an all-zero sigaction is valid; the set functions get our own set.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = handler;
        act.sa_flags = flags;
        libc::sigemptyset(&mut act.sa_mask);
        if block_self && sig > 0 && (sig as usize) < NSIG {
            libc::sigaddset(&mut act.sa_mask, sig);
        }
        let mut old: libc::sigaction = std::mem::zeroed();
        if sigaction(sig, &act, &mut old) != 0 {
            return libc::SIG_ERR;
        }
        old.sa_sigaction
    }
}

/// A handler run of this thread: its Vm, its host stack, the stack pointer of the wrapper's
/// frame, the record of the handler run it interrupted (if its Vm is one of ours), and
/// whether the program now goes on in this run's Vm (its handler left with a `siglongjmp`
/// translated in the Vm: libc instrumented).
#[derive(Clone, Copy)]
struct Run {
    vm: usize,
    stack: HostStack,
    sp: u64,
    interrupted: Option<usize>,
    escaped: bool,
}

/// Handler runs of this thread in progress (or abandoned, or escaped).
const RECORDS: usize = 8;
thread_local! {
    static RUNS: [Cell<Option<Run>>; RECORDS] = const { [const { Cell::new(None) }; RECORDS] };
}

/// Takes back the Vms of handler runs that are over without having returned, as a new
/// signal at stack pointer `sp` interrupting `pc` finds them, and returns the record of the
/// run whose Vm `pc` is in (the program goes on in it), if any:
/// - a run whose frame is gone (at or below `sp`) and whose Vm does not run the
///   interrupted code: its handler left with a native `siglongjmp`;
/// - the run a handler's run interrupted, once that handler's frame is gone and the
///   program goes on in its Vm (a `siglongjmp` translated in it).
///
/// When `pc` is native code (a host interposer such as `sigprocmask`, called from
/// translated code), the run it belongs to is the one whose cache holds the nearest return
/// address above the interrupted stack pointer `isp` (see [`return_addresses`]).
fn reclaim_abandoned(sp: u64, pc: u64, isp: u64) -> Option<usize> {
    RUNS.with(|runs| {
        let holding = |addr: u64| {
            runs.iter().position(|r| {
                // SAFETY: a recorded Vm is alive (owned by its record); only its cache's
                // bounds are read.
                r.get()
                    .is_some_and(|r| unsafe { Vm::code_cache_contains(r.vm as *const Vm, addr) })
            })
        };
        let live = holding(pc).or_else(|| {
            let mut words = [0u64; SCANNED_WORDS];
            let n = return_addresses(isp, &mut words);
            words[..n].iter().find_map(|&w| holding(w))
        });
        let mut doomed = [false; RECORDS];
        if let Some(l) = live
            && let Some(mut r) = runs[l].get()
            && r.sp <= sp
        {
            if let Some(j) = r.interrupted.take() {
                doomed[j] = true;
            }
            r.escaped = true;
            runs[l].set(Some(r));
        }
        for (i, slot) in runs.iter().enumerate() {
            let Some(r) = slot.get() else { continue };
            let gone = r.sp <= sp && !r.escaped && Some(i) != live;
            if !(gone || doomed[i]) {
                continue;
            }
            // SAFETY: the Vm of a handler run that is over: no longer used.
            let vm = unsafe { Box::from_raw(r.vm as *mut Vm) };
            match crate::threads::try_give_back_signal_vm(vm) {
                Ok(()) => {
                    slot.set(None);
                    r.stack.release();
                    for other in runs {
                        if let Some(mut o) = other.get()
                            && o.interrupted == Some(i)
                        {
                            o.interrupted = None;
                            other.set(Some(o));
                        }
                    }
                }
                // The pool is locked by the code this signal interrupted: next time.
                Err(vm) => {
                    let _ = Box::into_raw(vm);
                }
            }
        }
        live
    })
}

/// How many words above the interrupted stack pointer [`reclaim_abandoned`] looks at.
const SCANNED_WORDS: usize = 64;

/// Reads the words at `isp` into `out` (as many as are mapped: `process_vm_readv` on this
/// process faults nowhere); returns how many.
fn return_addresses(isp: u64, out: &mut [u64; SCANNED_WORDS]) -> usize {
    if isp == 0 || !isp.is_multiple_of(8) {
        return 0;
    }
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: size_of_val(out),
    };
    let remote = libc::iovec {
        iov_base: isp as *mut c_void,
        iov_len: size_of_val(out),
    };
    // SAFETY: reads this process's memory into `out` (its size given); unmapped memory
    // ends the read with a short count or an error instead of a fault.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n < 0 { 0 } else { n as usize / 8 }
}

/// Records a handler run; `None` if every record is taken.
fn record(run: Run) -> Option<usize> {
    RUNS.with(|runs| {
        let i = runs.iter().position(|r| r.get().is_none())?;
        runs[i].set(Some(run));
        Some(i)
    })
}

fn unrecord(i: usize) {
    RUNS.with(|runs| runs[i].set(None));
}

/// What `run_handler` does on the host stack.
struct HandlerRun {
    vm: *mut Vm,
    handler: u64,
    args: [u64; 3],
    guest_sp: u64,
    result: Result<(), VmError>,
}

extern "C" fn run_handler(run: *mut c_void) {
    // SAFETY: the HandlerRun of `wrapper`, alive across HostStack::run.
    let run = unsafe { &mut *(run as *mut HandlerRun) };
    // SAFETY: a pooled Vm taken by `wrapper` for this run alone.
    let vm = unsafe { &mut *run.vm };
    let (mxcsr, fcw) = threads::control_words();
    vm.set_fpr_state(&qbdi_core::FprState {
        mxcsr,
        fcw,
        ..qbdi_core::FprState::default()
    });
    let mut gpr = qbdi_core::GprState {
        rsp: run.guest_sp,
        eflags: qbdi_core::DEFAULT_EFLAGS,
        ..qbdi_core::GprState::default()
    };
    qbdi_core::simulate_call(&mut gpr, qbdi_core::FAKE_RETURN_ADDRESS, &run.args);
    vm.set_gpr_state(&gpr);
    // A jump out to native code it cannot come back from (a tail call of libc's
    // `siglongjmp`) ends the run there, and that code runs natively.
    vm.set_leave_at_native(true);
    run.result = vm.run(run.handler, qbdi_core::FAKE_RETURN_ADDRESS);
    let left = vm.gpr_state().rip;
    if run.result.is_ok() && left != qbdi_core::FAKE_RETURN_ADDRESS {
        // The handler left for native code for good: go on there. The record stays; the
        // next signal on the thread takes the Vm back.
        let (gpr, fpr) = (*vm.gpr_state(), *vm.fpr_state());
        // SAFETY: the run ended at a jump or return to native code, with the guest's state
        // at that point (the slot below rsp is no longer the handler's).
        unsafe { qbdi_core::exec_guard::resume_native(&gpr, &fpr) }
    }
}

thread_local! {
    /// Signals that came during a plugin callback on this thread, to deliver after it (bit
    /// `sig - 1` for signal `sig`), and their siginfo.
    static DEFERRED: Cell<u64> = const { Cell::new(0) };
    static DEFERRED_INFO: [Cell<Option<libc::siginfo_t>>; NSIG] =
        const { [const { Cell::new(None) }; NSIG] };
}

/// Calls the program's handler natively.
fn call_natively(
    sig: c_int,
    handler: usize,
    siginfo: bool,
    info: *mut libc::siginfo_t,
    uctx: *mut c_void,
) {
    if siginfo {
        // SAFETY: the program's three-argument handler, with the kernel's arguments.
        let f = unsafe {
            std::mem::transmute::<usize, extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void)>(
                handler,
            )
        };
        f(sig, info, uctx);
    } else {
        // SAFETY: the program's one-argument handler.
        let f = unsafe { std::mem::transmute::<usize, extern "C" fn(c_int)>(handler) };
        f(sig);
    }
}

/// Where a handler runs: the top of its guest stack, the wrapper's stack pointer, and the
/// record of the handler run the signal interrupted (see [`Run`]).
struct Frame {
    guest_top: u64,
    sp: u64,
    interrupted: Option<usize>,
}

/// Runs the program's `handler` for `sig` under a Vm of its own, with its guest stack
/// below `guest_top`; natively when no Vm or host stack is free.
fn deliver(
    sig: c_int,
    handler: usize,
    siginfo: bool,
    info: *mut libc::siginfo_t,
    uctx: *mut c_void,
    at: Frame,
) {
    let Frame {
        guest_top,
        sp: frame_sp,
        interrupted,
    } = at;
    let Some(stack) = HostStack::acquire() else {
        return call_natively(sig, handler, siginfo, info, uctx);
    };
    let Some(vm) = crate::threads::try_take_signal_vm() else {
        stack.release();
        return call_natively(sig, handler, siginfo, info, uctx);
    };
    let vm = Box::into_raw(vm);
    let Some(slot) = record(Run {
        vm: vm as usize,
        stack,
        sp: frame_sp,
        interrupted,
        escaped: false,
    }) else {
        // SAFETY: from Box::into_raw just above; unused.
        crate::threads::give_back_signal_vm(unsafe { Box::from_raw(vm) });
        stack.release();
        return call_natively(sig, handler, siginfo, info, uctx);
    };
    let mut run = HandlerRun {
        vm,
        handler: handler as u64,
        args: [sig as u64, info as u64, uctx as u64],
        guest_sp: (guest_top - 512) & !0xf,
        result: Ok(()),
    };
    stack.run(run_handler, (&raw mut run).cast());
    unrecord(slot);
    // SAFETY: from Box::into_raw above; the run is over.
    crate::threads::give_back_signal_vm(unsafe { Box::from_raw(vm) });
    stack.release();
    match run.result {
        Ok(()) => {}
        Err(VmError::ThreadExit { status }) => threads::exit_thread(status, None),
        Err(e) => {
            log::line(&format!("a signal handler stopped under the Vm: {e}"));
            session::fini_all();
            // SAFETY: ends the process.
            unsafe { libc::_exit(crate::preload::QBDI_FAILURE_STATUS) }
        }
    }
}

/// Delivers the signals that came during the plugin callback that just ended on this
/// thread (a safe point: no plugin code in progress), each with itself blocked, on a
/// guest stack of its own, with a blank `ucontext` (the interrupted state was host code's).
pub(crate) fn run_deferred() {
    let bits = DEFERRED.with(Cell::get);
    if bits == 0 {
        return;
    }
    DEFERRED.with(|d| d.set(0));
    for sig in 1..NSIG {
        if bits & (1 << (sig - 1)) == 0 {
            continue;
        }
        let handler = APP[sig].load(Ordering::SeqCst);
        if handler == 0 {
            continue;
        }
        let Some(mut info) = DEFERRED_INFO.with(|i| i[sig].take()) else {
            continue;
        };
        let siginfo = SIGINFO[sig].load(Ordering::SeqCst);
        // SAFETY: an all-zero ucontext is a valid blank one; the mask calls get our sets.
        unsafe {
            let mut uc: libc::ucontext_t = std::mem::zeroed();
            let mut fp: libc::_libc_fpstate = std::mem::zeroed();
            uc.uc_mcontext.fpregs = &mut fp;
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut prev: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig as c_int);
            host_sigmask(libc::SIG_BLOCK, &set, &mut prev);
            match HostStack::acquire() {
                Some(guest) => {
                    let top = guest.bounds().1;
                    deliver(
                        sig as c_int,
                        handler,
                        siginfo,
                        &mut info,
                        (&raw mut uc).cast(),
                        Frame {
                            guest_top: top,
                            sp: top,
                            interrupted: None,
                        },
                    );
                    guest.release();
                }
                None => call_natively(
                    sig as c_int,
                    handler,
                    siginfo,
                    &mut info,
                    (&raw mut uc).cast(),
                ),
            }
            host_sigmask(libc::SIG_SETMASK, &prev, std::ptr::null_mut());
        }
    }
}

/// The handler the kernel calls for wrapped signals.
extern "C" fn wrapper(sig: c_int, info: *mut libc::siginfo_t, uctx: *mut c_void) {
    let index = sig as usize;
    let handler = APP[index].load(Ordering::SeqCst);
    if handler == 0 {
        return;
    }
    if RESETHAND[index].load(Ordering::SeqCst) {
        APP[index].store(0, Ordering::SeqCst);
    }
    let siginfo = SIGINFO[index].load(Ordering::SeqCst);
    let sp = crate::preload::current_sp();
    let pc = if uctx.is_null() {
        0
    } else {
        // SAFETY: the kernel's ucontext of this delivery.
        let rip = unsafe {
            (*(uctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize]
        };
        rip as u64
    };
    let isp = if uctx.is_null() {
        0
    } else {
        // SAFETY: the kernel's ucontext of this delivery.
        let rsp = unsafe {
            (*(uctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RSP as usize]
        };
        rsp as u64
    };
    let interrupted = reclaim_abandoned(sp, pc, isp);
    // A fault in translated code: the handler sees the guest's instruction and registers.
    // SAFETY: the kernel's siginfo and ucontext of this delivery.
    let fault = unsafe { guest_view(sig, info, uctx, pc, interrupted) };
    let synchronous = fault.is_some()
        || (SYNC.contains(&sig)
            // SAFETY: the kernel's siginfo of this delivery, when not null.
            && !info.is_null()
            && unsafe { (*info).si_code } > 0);
    let translating = qbdi_core::threads::translating();
    if (session::in_callback() || translating) && !synchronous {
        // A safe point comes when the callback returns, or the translation ends
        // (`run_deferred`): the handler's own Vm would translate code, and the plugin code
        // this interrupted (a callback, an inline counter's slot lookup) may hold a lock
        // the handler's translation takes.
        if translating {
            qbdi_core::threads::want_safe_point();
        }
        // SAFETY: the kernel's siginfo for this delivery.
        let copy = unsafe { *info };
        DEFERRED_INFO.with(|i| i[index].set(Some(copy)));
        DEFERRED.with(|d| d.set(d.get() | 1 << (index - 1)));
        return;
    }
    let at = Frame {
        guest_top: sp,
        sp,
        interrupted,
    };
    deliver(sig, handler, siginfo, info, uctx, at);
    if let Some(f) = fault {
        // SAFETY: as above; the handler returned, its edits are in the ucontext.
        unsafe { back_to_host_view(&f, uctx) };
    }
}

/// Signals a fault raises (synchronous when the kernel sent them: `si_code > 0`).
const SYNC: [c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
];

/// A fault in a Vm's translated code, shown to the handler in the guest's terms.
struct Translated {
    vm: usize,
    fault: qbdi_core::GuestFault,
    /// The host's value of the borrowed register, while the handler sees the guest's.
    host_scratch: i64,
}

/// The hardware register number -> `ucontext` register index.
const UC_REG: [c_int; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

/// For a synchronous fault at `pc` in translated code: rewrites the ucontext (and, for
/// SIGFPE, SIGILL and SIGTRAP, `si_addr`) to the guest's instruction and registers.
///
/// # Safety
/// `info` and `uctx` are the kernel's for this delivery (or null / blank).
unsafe fn guest_view(
    sig: c_int,
    info: *mut libc::siginfo_t,
    uctx: *mut c_void,
    pc: u64,
    interrupted: Option<usize>,
) -> Option<Translated> {
    // SAFETY: the caller's contract.
    if uctx.is_null() || info.is_null() || !SYNC.contains(&sig) || unsafe { (*info).si_code } <= 0 {
        return None;
    }
    let vm = interrupted
        .and_then(|i| RUNS.with(|r| r[i].get()).map(|r| r.vm))
        .or_else(|| crate::unwind::thread_vm_running_at(pc))?;
    // SAFETY: a Vm of this thread, suspended at `pc` by this fault.
    let fault = unsafe { Vm::guest_fault_at(vm as *const Vm, pc) }?;
    // SAFETY: the caller's contract.
    let g = unsafe { &mut (*(uctx as *mut libc::ucontext_t)).uc_mcontext.gregs };
    let mut host_scratch = 0;
    if let Some((reg, guest)) = fault.scratch {
        let r = UC_REG[reg as usize] as usize;
        host_scratch = g[r];
        g[r] = guest as i64;
    }
    g[libc::REG_RIP as usize] = fault.guest_pc as i64;
    if [libc::SIGFPE, libc::SIGILL, libc::SIGTRAP].contains(&sig) {
        // The address of the faulting instruction (the first field after the header).
        // SAFETY: siginfo's union starts with si_addr for these signals.
        unsafe {
            let fields = (info as *mut u8).add(16) as *mut u64;
            if *fields == pc {
                *fields = fault.guest_pc;
            }
        }
    }
    Some(Translated {
        vm,
        fault,
        host_scratch,
    })
}

/// After the handler returned: the ucontext back in the host's terms. The same guest
/// instruction runs its translation again; another guest address is reached through the
/// Vm's dispatcher.
///
/// # Safety
/// As [`guest_view`], which made `t`.
unsafe fn back_to_host_view(t: &Translated, uctx: *mut c_void) {
    // SAFETY: the caller's contract.
    let g = unsafe { &mut (*(uctx as *mut libc::ucontext_t)).uc_mcontext.gregs };
    let rip = g[libc::REG_RIP as usize] as u64;
    if rip == t.fault.guest_pc {
        if let Some((reg, _)) = t.fault.scratch {
            let r = UC_REG[reg as usize] as usize;
            // SAFETY: the Vm is suspended at the fault; its spill slot is reloaded later.
            unsafe { Vm::set_fault_scratch(t.vm as *const Vm, g[r] as u64) };
            g[r] = t.host_scratch;
        }
        g[libc::REG_RIP as usize] = t.fault.host_pc as i64;
    } else if let Some(host) =
        // SAFETY: as above.
        unsafe { Vm::resume_interrupted_at(t.vm as *const Vm, rip) }
    {
        g[libc::REG_RIP as usize] = host as i64;
    }
}
