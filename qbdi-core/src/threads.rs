//! Following the threads the guest creates.
//!
//! A `Vm` runs on one thread. When translated code creates a thread (a `clone` or `clone3`
//! system call with `CLONE_VM`, or a `vfork`), the child starts at the guest instruction
//! after the `syscall`, with the registers the kernel gave it. Without a handler it runs
//! natively from there (not instrumented). With a handler set by [`follow_threads`], the
//! child saves its registers on its own stack, moves to a host stack of its own and calls
//! the handler with a [`ThreadStart`]: the handler runs the child under a `Vm` of its own
//! (`Vm::run` from `start.gpr.rip`), which returns [`VmError::ThreadExit`] when the thread
//! makes the `exit` system call; the handler then ends the thread with [`exit_thread`].
//!
//! Threads that native code creates (`pthread_create` in an uninstrumented libc) start
//! natively; an embedder catches them at their start routine and runs it with
//! [`HostStack::run`] and a `Vm` of its own (the `qbdi` host interposes
//! `pthread_create`).
//!
//! [`VmError::ThreadExit`]: crate::VmError::ThreadExit

use crate::state::{DEFAULT_EFLAGS, GprState, Rword};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// What a thread-start handler gets: the child's state at its first instruction.
#[derive(Clone, Copy, Debug)]
pub struct ThreadStart {
    /// The child's registers (`rip`: the guest instruction after the `syscall`; `rax`: 0).
    pub gpr: GprState,
    /// The child's MXCSR and x87 control word (inherited from its parent).
    pub mxcsr: u32,
    /// See `mxcsr`.
    pub fcw: u16,
    /// A `vfork` child (or `clone` with `CLONE_VFORK`): its parent is suspended until it
    /// executes a program or exits, and it runs on a part of the parent's host stack.
    pub vfork: bool,
    /// An identifier of the parent's code cache (the same for every child of one `Vm`).
    pub parent: usize,
    /// The host stack the handler runs on (`None` for a `vfork` child).
    pub stack: Option<HostStack>,
}

/// Runs a created thread under the engine; never returns (see the module docs).
pub type ThreadHandler = fn(ThreadStart) -> !;

static HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Makes threads created from translated code start under `handler` instead of natively.
/// Process-wide; takes effect for code translated from then on (set it before the first
/// run).
pub fn follow_threads(handler: ThreadHandler) {
    HANDLER.store(handler as usize, Ordering::SeqCst);
}

/// Whether a thread-start handler is set (translated `syscall`s then check for `exit` and
/// send thread children to it).
pub(crate) fn following() -> bool {
    HANDLER.load(Ordering::Relaxed) != 0
}

/// Address of the routine a thread child jumps to (see `translator::emit_syscall`).
pub(crate) fn child_routine() -> u64 {
    qbdi_thread_child as *const () as u64
}

/// Host stacks handed to threads: 8 MiB each (reserved, committed as touched), reused after
/// the thread that had one exits.
const STACK_BYTES: usize = 8 << 20;
const POOL: usize = 4096;
static BASES: [AtomicU64; POOL] = [const { AtomicU64::new(0) }; POOL];
static BUSY: [AtomicBool; POOL] = [const { AtomicBool::new(false) }; POOL];

/// A host stack for one thread's engine and callbacks, from a pool (see [`exit_thread`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostStack {
    slot: usize,
    base: u64,
}

impl HostStack {
    /// A free stack of the pool (mapped on first use). `None` if the system refuses memory.
    #[must_use]
    pub fn acquire() -> Option<HostStack> {
        for slot in 0..POOL {
            if BUSY[slot].load(Ordering::Relaxed) || BUSY[slot].swap(true, Ordering::Acquire) {
                continue;
            }
            let mut base = BASES[slot].load(Ordering::Relaxed);
            if base == 0 {
                let Some(mapped) = map_stack() else {
                    BUSY[slot].store(false, Ordering::Release);
                    return None;
                };
                base = mapped;
                BASES[slot].store(base, Ordering::Relaxed);
            }
            return Some(HostStack { slot, base });
        }
        // Every slot is taken: a stack of its own, never reused.
        map_stack().map(|base| HostStack { slot: POOL, base })
    }

    /// The lowest and highest address of the stack.
    #[must_use]
    pub fn bounds(&self) -> (u64, u64) {
        (self.base, self.base + STACK_BYTES as u64)
    }

    /// The initial stack pointer (16-byte aligned).
    fn top(&self) -> u64 {
        (self.base + STACK_BYTES as u64 - 64) & !0xf
    }

    /// Gives the stack back to the pool. The caller no longer runs on it.
    pub fn release(self) {
        if self.slot < POOL {
            BUSY[self.slot].store(false, Ordering::Release);
        }
    }

    /// Calls `f(arg)` on this stack and comes back to the caller's.
    pub fn run(&self, f: extern "C" fn(*mut c_void), arg: *mut c_void) {
        // SAFETY: switches rsp to the top of this (unused, 16-byte aligned) stack, calls
        // f(arg) there and switches back; r12 (callee-saved) keeps the old rsp across the
        // call.
        unsafe {
            std::arch::asm!(
                "mov r12, rsp",
                "mov rsp, {top}",
                "call {f}",
                "mov rsp, r12",
                top = in(reg) self.top(),
                f = in(reg) f,
                in("rdi") arg,
                out("r12") _,
                clobber_abi("C"),
            );
        }
    }
}

fn map_stack() -> Option<u64> {
    // SAFETY: a fresh private anonymous mapping; its first page becomes a guard.
    unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            STACK_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
            -1,
            0,
        );
        if base == libc::MAP_FAILED {
            return None;
        }
        libc::mprotect(base, 4096, libc::PROT_NONE);
        Some(base as u64)
    }
}

/// Ends the calling thread with the `exit` system call, after giving `stack` (the one it
/// may be running on) back to the pool: nothing touches the stack after the release.
pub fn exit_thread(status: i32, stack: Option<HostStack>) -> ! {
    let busy = match stack {
        Some(s) if s.slot < POOL => std::ptr::from_ref(&BUSY[s.slot]) as u64,
        // A byte nobody reads.
        _ => std::ptr::from_ref(&SINK) as u64,
    };
    // SAFETY: the release is one byte store (x86 stores are release-ordered), then the exit
    // system call, with no memory access in between: another thread may take the stack as
    // soon as the store lands.
    unsafe {
        std::arch::asm!(
            "mov byte ptr [{busy}], 0",
            "syscall",
            "ud2",
            busy = in(reg) busy,
            in("rax") libc::SYS_exit,
            in("rdi") status,
            options(noreturn, nostack),
        );
    }
}

static SINK: AtomicBool = AtomicBool::new(false);

/// What the child path of a translated `syscall` leaves on the child's stack (lowest
/// address first), then `qbdi_thread_child` pushes the registers below it.
#[repr(C)]
#[derive(Clone, Copy)]
struct ChildFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    flags: u64,
    /// The guest instruction after the `syscall`.
    next: u64,
    /// 0: `clone` (flags in rdi), 1: `clone3` (flags at [rdi]), 2: `vfork`.
    kind: u64,
    /// The parent's context (its code cache's base).
    parent: u64,
    /// The host stack pointer the parent's `enter` saved.
    parent_host_rsp: u64,
}

/// Bytes the child path skips below the child's stack pointer before pushing (its red
/// zone: a `vfork` child shares its parent's stack).
pub(crate) const CHILD_RED_ZONE: u64 = 128;
/// `ChildFrame::kind` values.
pub(crate) const CHILD_CLONE: i8 = 0;
pub(crate) const CHILD_CLONE3: i8 = 1;
pub(crate) const CHILD_VFORK: i8 = 2;

unsafe extern "C" {
    fn qbdi_thread_child();
}

// The child path of a translated syscall jumps here with [rsp] = next, [rsp+8] = kind,
// [rsp+16] = parent context, [rsp+24] = the parent's host stack pointer; every other
// register is the child's.
std::arch::global_asm!(
    ".globl qbdi_thread_child",
    ".hidden qbdi_thread_child",
    ".type qbdi_thread_child, @function",
    "qbdi_thread_child:",
    "pushfq",
    "push rax",
    "push rbx",
    "push rcx",
    "push rdx",
    "push rsi",
    "push rdi",
    "push rbp",
    "push r8",
    "push r9",
    "push r10",
    "push r11",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "cld",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {entry}",
    "ud2",
    entry = sym thread_child_entry,
);

/// The Rust half of `qbdi_thread_child`, on the child's own (guest) stack: reads the
/// child's state, moves to a host stack and calls the handler there.
extern "C" fn thread_child_entry(frame: *const ChildFrame) -> ! {
    // SAFETY: `frame` is what qbdi_thread_child just pushed on this stack.
    let f = unsafe { *frame };
    let clone_flags = match f.kind as i8 {
        CHILD_CLONE => f.rdi,
        // SAFETY: clone3's first argument points at its clone_args, whose first word is
        // the flags; the child shares its parent's memory (CLONE_VM), where it still is.
        CHILD_CLONE3 => unsafe { *(f.rdi as *const u64) },
        _ => libc::CLONE_VFORK as u64,
    };
    let vfork = clone_flags & libc::CLONE_VFORK as u64 != 0;
    let (mxcsr, fcw) = control_words();
    let gpr = GprState {
        rax: f.rax,
        rbx: f.rbx,
        rcx: f.rcx,
        rdx: f.rdx,
        rsi: f.rsi,
        rdi: f.rdi,
        r8: f.r8,
        r9: f.r9,
        r10: f.r10,
        r11: f.r11,
        r12: f.r12,
        r13: f.r13,
        r14: f.r14,
        r15: f.r15,
        rbp: f.rbp,
        rsp: frame as u64 + size_of::<ChildFrame>() as u64 + CHILD_RED_ZONE,
        rip: f.next,
        eflags: if f.flags == 0 {
            DEFAULT_EFLAGS
        } else {
            f.flags
        },
        fs: 0,
        gs: 0,
    };
    let handler = HANDLER.load(Ordering::SeqCst);
    let (stack, top) = if vfork {
        // The parent is suspended in its `syscall` until this child executes a program or
        // exits: the part of its host stack below the frames of its dispatcher is free.
        (None, (f.parent_host_rsp - 4096) & !0xf)
    } else {
        match HostStack::acquire() {
            Some(s) => (Some(s), s.top()),
            None => fatal(b"qbdi: no memory for a new thread's host stack\n"),
        }
    };
    let job = Box::into_raw(Box::new((
        handler,
        ThreadStart {
            gpr,
            mxcsr,
            fcw,
            vfork,
            parent: f.parent as usize,
            stack,
        },
    )));
    // SAFETY: switches to the host stack (16-byte aligned) and calls start_on_host_stack,
    // which never returns.
    unsafe {
        std::arch::asm!(
            "mov rsp, {top}",
            "call {f}",
            "ud2",
            top = in(reg) top,
            f = sym start_on_host_stack,
            in("rdi") job,
            options(noreturn),
        );
    }
}

extern "C" fn start_on_host_stack(job: *mut (usize, ThreadStart)) -> ! {
    // SAFETY: the box thread_child_entry made.
    let (handler, start) = *unsafe { Box::from_raw(job) };
    // SAFETY: HANDLER only ever holds a ThreadHandler (follow_threads), and translated
    // code sends children here only while one is set.
    let handler: ThreadHandler = unsafe { std::mem::transmute::<usize, ThreadHandler>(handler) };
    handler(start)
}

/// The calling thread's MXCSR and x87 control word (what a new thread inherits).
#[must_use]
pub fn control_words() -> (u32, u16) {
    let mut mxcsr = 0u32;
    let mut fcw = 0u16;
    // SAFETY: stores MXCSR and the x87 control word into the locals.
    unsafe {
        std::arch::asm!(
            "stmxcsr [{m}]",
            "fnstcw [{c}]",
            m = in(reg) &mut mxcsr,
            c = in(reg) &mut fcw,
            options(nostack),
        );
    }
    (mxcsr, fcw)
}

fn fatal(message: &[u8]) -> ! {
    // SAFETY: writes to stderr and ends the process.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(125)
    }
}

/// The kernel's id of the calling thread.
#[must_use]
pub fn current_thread_id() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// What ends the process in place of a guest's `exit_group` system call (0: none), see
/// [`set_exit_group_hook`].
static EXIT_GROUP_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Makes the guest's `exit_group` system call, in code translated from now on by any Vm of
/// the process, leave the cache and call `hook` with its status instead: `hook` must end
/// the process as the system call would (the status is the guest's `rdi`). An embedder
/// finalises its tools there, after the last guest code of the process has run under the
/// engine: with libc instrumented, its `exit` goes on after the `atexit` handlers (the other
/// libraries' finalisers, its stdio flush, `_exit`), and a program may make
/// the system call itself, without `exit` (a raw `syscall`, a Go runtime). Set it before
/// the first translation: blocks translated before keep the plain system call.
pub fn set_exit_group_hook(hook: fn(i32) -> !) {
    EXIT_GROUP_HOOK.store(hook as usize, Ordering::SeqCst);
}

/// The hook set by [`set_exit_group_hook`], if any.
pub(crate) fn exit_group_hook() -> Option<fn(i32) -> !> {
    let h = EXIT_GROUP_HOOK.load(Ordering::SeqCst);
    // SAFETY: a non-zero value was stored from a `fn(i32) -> !` by set_exit_group_hook.
    (h != 0).then(|| unsafe { std::mem::transmute::<usize, fn(i32) -> !>(h) })
}

/// `Rword` of the guest's `exit` system call.
pub(crate) const SYS_EXIT: Rword = libc::SYS_exit as Rword;

thread_local! {
    /// Whether this thread is translating a block (the translator calls plugin code that
    /// may hold locks: inline counters' slot lookups, instruction rules).
    static TRANSLATING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether something asked for [`set_safe_point_hook`]'s hook after the translation in
    /// progress on this thread.
    static SAFE_POINT_WANTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The function the end of a translation calls when asked (0: none; see [`Translating`]).
static SAFE_POINT_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Whether this thread is translating a block. Async-signal-safe: a signal handler that
/// would translate code itself (under another Vm) must not run now, since the translation
/// it interrupted may hold a plugin's lock; it can ask for a safe point
/// ([`want_safe_point`]) instead.
#[must_use]
pub fn translating() -> bool {
    TRANSLATING.with(std::cell::Cell::get)
}

/// Asks for the safe point hook to run on this thread once the translation in progress
/// ends. Async-signal-safe.
pub fn want_safe_point() {
    SAFE_POINT_WANTED.with(|w| w.set(true));
}

/// Sets the function run on a thread when its translation ends after
/// [`want_safe_point`] (a signal handler's deferred work; no lock of the translation is
/// held then).
pub fn set_safe_point_hook(hook: fn()) {
    SAFE_POINT_HOOK.store(hook as usize, Ordering::SeqCst);
}

/// Marks a translation in progress on this thread for as long as the guard lives; when it
/// ends, runs the safe point hook if it was asked for.
pub(crate) struct Translating(bool);

impl Translating {
    pub(crate) fn start() -> Translating {
        Translating(TRANSLATING.with(|t| t.replace(true)))
    }
}

impl Drop for Translating {
    fn drop(&mut self) {
        TRANSLATING.with(|t| t.set(self.0));
        if !self.0 && SAFE_POINT_WANTED.with(|w| w.replace(false)) {
            let hook = SAFE_POINT_HOOK.load(Ordering::SeqCst);
            if hook != 0 {
                // SAFETY: set from a `fn()` by `set_safe_point_hook`.
                let f = unsafe { std::mem::transmute::<usize, fn()>(hook) };
                f();
            }
        }
    }
}
