//! The program's threads under the engine.
//!
//! Each thread runs on a `Vm` of its own (its own code cache, context and host stack; see
//! docs/architecture.md, "Threads"), made like the session's: the same instrumented ranges
//! (as the plugins' inits left them) and the same callbacks, registered in the same order
//! so that callback ids are the same on every thread. A thread's Vm goes back to a pool when
//! the thread ends, and the next thread takes it with its translations.
//!
//! Threads start under the engine two ways:
//! - created from translated code (libc instrumented, or a raw `clone` in instrumented
//!   code): the engine sends the child to [`on_clone_child`] (`qbdi_core::threads`);
//! - created by native code (`pthread_create` in an uninstrumented libc): the preload
//!   interposes `pthread_create` and runs the start routine under a Vm
//!   ([`start_routine`]).

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use qbdi_core::threads::{self, HostStack, ThreadStart};
use qbdi_core::{FprState, GprState, Range, Vm, VmError};

use crate::preload::next_fn;
use crate::{log, session, unwind};

/// A Vm that may move between threads: it only ever runs on one at a time, and its
/// callbacks (the plugins') are `Send + Sync`.
struct Owned(Box<Vm>);
// SAFETY: see above; the host's callbacks are built from `Send + Sync` parts.
unsafe impl Send for Owned {}

static ENABLED: AtomicBool = AtomicBool::new(false);
static RANGES: OnceLock<Vec<Range>> = OnceLock::new();
static POOL: Mutex<Vec<Owned>> = Mutex::new(Vec::new());
/// The Vm of a `vfork` child, by its parent's code cache (one per parent: the parent is
/// suspended while its child runs).
static VFORK_VMS: Mutex<Vec<(usize, Owned)>> = Mutex::new(Vec::new());
/// A pthread key whose destructor gives back the Vm of a thread that ended without
/// returning through [`start_routine`] (`pthread_exit`, cancellation).
static CLEANUP_KEY: OnceLock<libc::pthread_key_t> = OnceLock::new();

/// Never the guest's address: a thread's run ends at its exit system call.
pub(crate) const NO_STOP: u64 = u64::MAX - 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Follows the program's threads from now on, with Vms made like `vm` (after the plugins'
/// inits).
pub(crate) fn enable(vm: &Vm) {
    let _ = RANGES.set(vm.instrumented_ranges().ranges().to_vec());
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: creates a key with a plain extern "C" destructor.
    if unsafe { libc::pthread_key_create(&mut key, Some(thread_ended)) } == 0 {
        let _ = CLEANUP_KEY.set(key);
    }
    threads::follow_threads(on_clone_child);
    ENABLED.store(true, Ordering::SeqCst);
}

/// The parts of `[start, end)` in the instrumented ranges the threads start with.
pub(crate) fn instrumented_parts(start: u64, end: u64) -> Vec<Range> {
    RANGES.get().map_or_else(Vec::new, |ranges| {
        ranges
            .iter()
            .filter(|r| r.start < end && start < r.end)
            .map(|r| Range::new(r.start.max(start), r.end.min(end)))
            .collect()
    })
}

pub(crate) fn instrumented(addr: u64) -> bool {
    RANGES
        .get()
        .is_some_and(|r| r.iter().any(|r| r.contains(addr)))
}

fn new_vm() -> Box<Vm> {
    let mut vm = Box::new(Vm::new());
    for r in RANGES.get().map_or(&[][..], Vec::as_slice) {
        let _ = vm.add_instrumented_range(r.start, r.end);
    }
    if let Err(e) = session::register_again(&mut vm) {
        log::line(&format!("a thread's Vm misses a plugin callback: {e}"));
    }
    vm
}

pub(crate) fn take_vm() -> Box<Vm> {
    lock(&POOL).pop().map_or_else(new_vm, |o| o.0)
}

/// `vm` without the range a start routine added to it.
fn without(mut vm: Box<Vm>, extra: Option<Range>) -> Box<Vm> {
    if let Some(r) = extra {
        let _ = vm.remove_instrumented_range(r.start, r.end);
    }
    vm
}

/// Vms kept for signal handlers (see `signals`): taken without blocking, since the
/// interrupted code may hold the lock of the threads' pool or be making a Vm.
static SIGNAL_POOL: Mutex<Vec<Owned>> = Mutex::new(Vec::new());

/// A Vm for a signal handler, if one is free and its pool is not locked.
pub(crate) fn try_take_signal_vm() -> Option<Box<Vm>> {
    SIGNAL_POOL.try_lock().ok()?.pop().map(|o| o.0)
}

/// Gives back a signal handler's Vm.
pub(crate) fn give_back_signal_vm(vm: Box<Vm>) {
    lock(&SIGNAL_POOL).push(Owned(vm));
}

/// Gives back a signal handler's Vm if the pool is not locked (from a handler that may have
/// interrupted the pool's holder on this thread); else hands it back.
pub(crate) fn try_give_back_signal_vm(vm: Box<Vm>) -> Result<(), Box<Vm>> {
    match SIGNAL_POOL.try_lock() {
        Ok(mut pool) => {
            pool.push(Owned(vm));
            Ok(())
        }
        Err(_) => Err(vm),
    }
}

/// Makes `n` Vms for signal handlers (outside signal handlers).
pub(crate) fn fill_signal_pool(n: usize) {
    for _ in 0..n {
        give_back_signal_vm(new_vm());
    }
}

pub(crate) fn give_back(vm: Box<Vm>) {
    lock(&POOL).push(Owned(vm));
}

fn vfork_vm(parent: usize) -> *mut Vm {
    let mut vms = lock(&VFORK_VMS);
    if let Some((_, o)) = vms.iter_mut().find(|(p, _)| *p == parent) {
        return &mut *o.0;
    }
    vms.push((parent, Owned(new_vm())));
    &mut *vms.last_mut().expect("just pushed").1.0
}

/// A fresh thread's FP state: initial registers, the control words it inherited.
fn fresh_fpr(mxcsr: u32, fcw: u16) -> FprState {
    FprState {
        mxcsr,
        fcw,
        ..FprState::default()
    }
}

/// Runs a thread's Vm from `rip` until the thread's exit system call; its exit status.
fn run_thread(vm: &mut Vm, rip: u64) -> i32 {
    match vm.run(rip, NO_STOP) {
        Err(VmError::ThreadExit { status }) => status,
        Ok(()) => {
            if let Some(f) = session::failure() {
                fail(&format!("{f}; the run stopped"));
            }
            // A callback said Stop: the thread ends there.
            0
        }
        Err(e) => fail(&format!("running a thread under the Vm failed: {e}")),
    }
}

/// A thread cannot go on: finalise and end the process, as the main thread would.
fn fail(why: &str) -> ! {
    log::line(why);
    session::fini_all();
    // SAFETY: ends the process.
    unsafe { libc::_exit(crate::preload::QBDI_FAILURE_STATUS) }
}

/// Where a thread created from translated code starts (on its host stack).
fn on_clone_child(start: ThreadStart) -> ! {
    let tid = threads::current_thread_id();
    let vm: *mut Vm = if start.vfork {
        vfork_vm(start.parent)
    } else {
        Box::into_raw(take_vm())
    };
    // SAFETY: a Vm of this thread alone (a pool Vm taken out of the pool, or the vfork Vm
    // of a parent that is suspended until this child is gone).
    let vm_ref = unsafe { &mut *vm };
    unwind::register_thread(tid, vm, start.stack.map(|s| s.bounds()));
    vm_ref.set_gpr_state(&start.gpr);
    vm_ref.set_fpr_state(&fresh_fpr(start.mxcsr, start.fcw));
    let status = run_thread(vm_ref, start.gpr.rip);
    unwind::unregister_thread(tid);
    if !start.vfork {
        // SAFETY: from Box::into_raw above; no longer used.
        give_back(unsafe { Box::from_raw(vm) });
        // (A vfork child shares its parent's thread-local storage.)
        crate::reentry::thread_ends();
    }
    threads::exit_thread(status, start.stack)
}

type StartFn = extern "C" fn(*mut c_void) -> *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut libc::pthread_t,
    *const libc::pthread_attr_t,
    StartFn,
    *mut c_void,
) -> c_int;

/// What a thread created through `pthread_create` or `clone` runs.
#[derive(Clone, Copy)]
struct Job {
    start: StartFn,
    arg: *mut c_void,
    /// The start routine's own function, when it is outside the instrumented ranges (C++
    /// `std::thread` starts in libstdc++): instrumented on this thread's Vm for the run, so
    /// that what it calls in instrumented code runs under the Vm.
    extra: Option<Range>,
    /// Whether the creating thread wished `SIGSEGV` blocked (a thread inherits its
    /// creator's mask; see `signals::change_mask`).
    segv_blocked: bool,
}

/// `pthread_create`, interposed: while threads are followed, the start routine runs under a
/// Vm of the new thread's own.
///
/// # Safety
/// pthread_create's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    start: StartFn,
    arg: *mut c_void,
) -> c_int {
    static REAL: OnceLock<usize> = OnceLock::new();
    // SAFETY: CreateFn is pthread_create's type.
    let Some(real) = (unsafe { next_fn::<CreateFn>(&REAL, c"pthread_create") }) else {
        return libc::ENOSYS;
    };
    let start_addr = start as usize as u64;
    let extra = if instrumented(start_addr) {
        None
    } else {
        qbdi_core::function_extent(start_addr)
    };
    if !ENABLED.load(Ordering::SeqCst) || (!instrumented(start_addr) && extra.is_none()) {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(thread, attr, start, arg) };
    }
    let job = Box::into_raw(Box::new(Job {
        start,
        arg,
        extra,
        segv_blocked: crate::signals::segv_blocked(),
    }));
    // SAFETY: forwarding, with our start routine and its job.
    let r = unsafe { real(thread, attr, start_routine, job.cast()) };
    if r != 0 {
        // SAFETY: the thread was not created: the job is still ours.
        drop(unsafe { Box::from_raw(job) });
    }
    r
}

/// What a thread's Vm, host stack and id are, while it runs under them (the cleanup key's
/// value).
struct Running {
    vm: *mut Vm,
    stack: HostStack,
    tid: u32,
    extra: Option<Range>,
}

/// The state `run_start` works on, on the host stack.
struct StartRun {
    vm: *mut Vm,
    job: Job,
    guest_sp: u64,
    result: Result<u64, VmError>,
}

/// The start routine of threads created through the interposed `pthread_create`.
extern "C" fn start_routine(job: *mut c_void) -> *mut c_void {
    // SAFETY: the Job pthread_create boxed for this thread.
    let job = *unsafe { Box::from_raw(job as *mut Job) };
    crate::signals::set_segv_blocked(job.segv_blocked);
    match run_job(job, true) {
        Some(value) => value as *mut c_void,
        None => (job.start)(job.arg),
    }
}

/// Runs `job` under a Vm of this thread's own (its start routine on this thread's stack, the
/// host's code on a pool stack) and returns its value; `None` (nothing run) when no host
/// stack can be had. `cleanup_key`: a thread that ends without coming back here
/// (`pthread_exit`) gives its Vm back from the key's destructor. A thread that makes the
/// `exit` system call ends here.
fn run_job(job: Job, cleanup_key: bool) -> Option<u64> {
    let Some(stack) = HostStack::acquire() else {
        log::line("no memory for a thread's host stack: the thread runs natively");
        return None;
    };
    let tid = threads::current_thread_id();
    let vm = Box::into_raw(take_vm());
    if let Some(r) = job.extra {
        // SAFETY: the Vm taken above is this thread's alone.
        let _ = unsafe { (*vm).add_instrumented_range(r.start, r.end) };
    }
    unwind::register_thread(tid, vm, Some(stack.bounds()));
    let key = CLEANUP_KEY.get().copied().filter(|_| cleanup_key);
    let running = Box::into_raw(Box::new(Running {
        vm,
        stack,
        tid,
        extra: job.extra,
    }));
    if let Some(key) = key {
        // SAFETY: a key of ours; the value is freed by thread_ended or below.
        unsafe { libc::pthread_setspecific(key, running.cast()) };
    }
    let (mxcsr, fcw) = threads::control_words();
    // SAFETY: the Vm taken above is this thread's alone.
    unsafe { (*vm).set_fpr_state(&fresh_fpr(mxcsr, fcw)) };
    let mut run = StartRun {
        vm,
        job,
        guest_sp: (crate::preload::current_sp() - 1024) & !0xf,
        result: Ok(0),
    };
    stack.run(run_start, (&raw mut run).cast());
    if let Some(key) = key {
        // SAFETY: clears our key's value.
        unsafe { libc::pthread_setspecific(key, std::ptr::null()) };
    }
    // SAFETY: `running` is ours again (the key no longer holds it).
    drop(unsafe { Box::from_raw(running) });
    unwind::unregister_thread(tid);
    // SAFETY: from Box::into_raw above; the run is over.
    give_back(without(unsafe { Box::from_raw(vm) }, job.extra));
    stack.release();
    crate::reentry::thread_ends();
    match run.result {
        Ok(value) => Some(value),
        Err(VmError::ThreadExit { status }) => threads::exit_thread(status, None),
        Err(e) => fail(&format!("running a thread under the Vm failed: {e}")),
    }
}

extern "C" fn run_start(run: *mut c_void) {
    // SAFETY: the StartRun of start_routine, alive across HostStack::run.
    let run = unsafe { &mut *(run as *mut StartRun) };
    // SAFETY: the thread's own Vm (see start_routine).
    let vm = unsafe { &mut *run.vm };
    vm.set_gpr_state(&GprState {
        rsp: run.guest_sp,
        eflags: qbdi_core::DEFAULT_EFLAGS,
        ..GprState::default()
    });
    run.result = vm.call(run.job.start as usize as u64, &[run.job.arg as u64]);
}

/// The cleanup key's destructor: the thread ended without coming back to `start_routine`
/// (`pthread_exit` unwinds past it natively, then libc runs this): its Vm and host stack
/// are free.
extern "C" fn thread_ended(running: *mut c_void) {
    // SAFETY: the Running start_routine boxed; libc calls this once, with the value set.
    let r = *unsafe { Box::from_raw(running as *mut Running) };
    unwind::unregister_thread(r.tid);
    // SAFETY: from Box::into_raw in start_routine; that run was abandoned.
    give_back(without(unsafe { Box::from_raw(r.vm) }, r.extra));
    r.stack.release();
    crate::reentry::thread_ends();
}

type CloneFn = extern "C" fn(*mut c_void) -> c_int;
type RealClone = unsafe extern "C" fn(
    CloneFn,
    *mut c_void,
    c_int,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
) -> c_int;

/// `clone`, interposed: while threads are followed, a child sharing the memory (`CLONE_VM`,
/// not `CLONE_VFORK`) runs its function under a Vm of its own. The variadic tail (parent
/// tid, TLS, child tid) is read as three fixed arguments: libc reads them only when the
/// flags say so, and forwards them the same way.
///
/// # Safety
/// clone's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn clone(
    f: CloneFn,
    stack: *mut c_void,
    flags: c_int,
    arg: *mut c_void,
    ptid: *mut c_void,
    tls: *mut c_void,
    ctid: *mut c_void,
) -> c_int {
    static REAL: OnceLock<usize> = OnceLock::new();
    // SAFETY: RealClone is clone's type (its variadic tail read as three words).
    let Some(real) = (unsafe { next_fn::<RealClone>(&REAL, c"clone") }) else {
        // SAFETY: sets this thread's errno.
        unsafe { *libc::__errno_location() = libc::ENOSYS };
        return -1;
    };
    let follow = ENABLED.load(Ordering::SeqCst)
        && flags & libc::CLONE_VM != 0
        && flags & libc::CLONE_VFORK == 0
        && instrumented(f as usize as u64);
    if !follow {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(f, stack, flags, arg, ptid, tls, ctid) };
    }
    let job = Box::into_raw(Box::new(Job {
        // SAFETY: same ABI for the call (one pointer argument, the result in rax, of which
        // the caller reads eax).
        start: unsafe { std::mem::transmute::<CloneFn, StartFn>(f) },
        arg,
        extra: None,
        segv_blocked: crate::signals::segv_blocked(),
    }));
    // SAFETY: forwarding, with our function and its job.
    let r = unsafe { real(clone_child, stack, flags, job.cast(), ptid, tls, ctid) };
    if r < 0 {
        // SAFETY: no child: the job is still ours.
        drop(unsafe { Box::from_raw(job) });
    }
    r
}

/// The function of children created through the interposed `clone` (on the child's stack,
/// possibly with its parent's TLS: no `CLONE_SETTLS`).
extern "C" fn clone_child(job: *mut c_void) -> c_int {
    // SAFETY: the Job clone boxed for this child.
    let job = *unsafe { Box::from_raw(job as *mut Job) };
    crate::signals::set_segv_blocked(job.segv_blocked);
    match run_job(job, false) {
        // The child's function returns an int: its low half.
        Some(value) => value as c_int,
        None => (job.start)(job.arg) as usize as c_int,
    }
}
