//! `Vm`: the public face of the engine. It owns the guest state outside runs, the shared
//! instrumentation state (ranges, callbacks, analyses, memory recording) and the engine
//! (code cache, translator, dispatcher); it turns API calls into engine requests and checks
//! their arguments.

use crate::analysis::{AnalysisType, InstAnalysis};
use crate::callback::{CallbackId, InstPosition, VmAction, VmEvent, VmState};
use crate::engine::Engine;
use crate::error::VmError;
use crate::instrumentation::shared::Shared;
use crate::instrumentation::vm_ref::{AnalysisCache, VmRef, instrumentation_methods};
use crate::instrumentation::{Filter, Instrumentation, mnemonic_filter};
use crate::memory::simulate_call;
use crate::memory_access::{MAX_PER_INSTRUCTION, MemoryAccessType, MemoryRecorder};
use crate::options::Options;
use crate::state::{DEFAULT_EFLAGS, FprState, GprState, Rword};

/// The return address `call` pushes: never code, so returning to it ends the run.
pub const FAKE_RETURN_ADDRESS: Rword = 0x2a;

/// A dynamic binary instrumentation virtual machine: runs guest code of this process from a
/// code cache, with the instrumented ranges translated and everything else run natively.
///
/// One `Vm` runs on one thread at a time.
pub struct Vm {
    options: Options,
    gpr: GprState,
    fpr: Box<FprState>,
    errno: i32,
    errno_set: bool,
    /// Owned (from `Box::into_raw`, freed in `drop`); the engine and callbacks reach it
    /// through this pointer.
    shared: *mut Shared,
    engine: Engine,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // SAFETY: `shared` came from Box::into_raw in `with_options` and is freed once here;
        // the engine (dropped after) never touches it in its own drop.
        drop(unsafe { Box::from_raw(self.shared) });
    }
}

impl Default for Vm {
    fn default() -> Self {
        Vm::new()
    }
}

impl Vm {
    /// A Vm with no instrumented range and default options.
    #[must_use]
    pub fn new() -> Vm {
        Vm::with_options(Options::NO_OPT)
    }

    /// A Vm with the given options.
    #[must_use]
    pub fn with_options(options: Options) -> Vm {
        let mut gpr = GprState {
            eflags: DEFAULT_EFLAGS,
            ..GprState::default()
        };
        own_segment_bases(options, &mut gpr);
        let shared = Box::into_raw(Box::new(Shared {
            inst: Instrumentation::new(options),
            analyses: AnalysisCache::default(),
            memory: MemoryRecorder::default(),
            view: Vec::with_capacity(MAX_PER_INSTRUCTION),
        }));
        Vm {
            options,
            gpr,
            fpr: Box::default(),
            errno: 0,
            errno_set: false,
            shared,
            engine: Engine::new(options, shared),
        }
    }

    /// The current options.
    #[must_use]
    pub fn options(&self) -> Options {
        self.options
    }

    /// Changes the options; a change clears the code cache.
    pub fn set_options(&mut self, options: Options) {
        if options != self.options {
            own_segment_bases(options, &mut self.gpr);
            self.options = options;
            self.inst_mut().options = options;
            self.engine.set_options(options);
        }
    }

    /// The guest's general purpose registers (as left by the last run).
    #[must_use]
    pub fn gpr_state(&self) -> &GprState {
        &self.gpr
    }

    /// The guest's general purpose registers, to change before a run.
    pub fn gpr_state_mut(&mut self) -> &mut GprState {
        &mut self.gpr
    }

    /// Replaces the guest's general purpose registers.
    pub fn set_gpr_state(&mut self, gpr: &GprState) {
        self.gpr = *gpr;
    }

    /// The guest's FP and vector registers.
    #[must_use]
    pub fn fpr_state(&self) -> &FprState {
        &self.fpr
    }

    /// The guest's FP and vector registers, to change before a run.
    pub fn fpr_state_mut(&mut self) -> &mut FprState {
        &mut self.fpr
    }

    /// Replaces the guest's FP and vector registers.
    pub fn set_fpr_state(&mut self, fpr: &FprState) {
        *self.fpr = *fpr;
    }

    /// The guest's `errno` as the last run left it.
    #[must_use]
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// Sets the `errno` the guest sees when the next run starts. Without it, a run starts
    /// with the thread's current `errno`.
    pub fn set_errno(&mut self, errno: i32) {
        self.errno = errno;
        self.errno_set = true;
    }

    fn inst_mut(&mut self) -> &mut Instrumentation {
        // SAFETY: `shared` is owned by this Vm; `&mut self` excludes any other use (the
        // engine uses it only inside Vm methods, callbacks only inside `run`).
        unsafe { &mut (*self.shared).inst }
    }

    fn inst_ref(&self) -> &Instrumentation {
        // SAFETY: as in inst_mut, shared access.
        unsafe { &(*self.shared).inst }
    }

    fn memory_mut(&mut self) -> &mut MemoryRecorder {
        // SAFETY: as in inst_mut.
        unsafe { &mut (*self.shared).memory }
    }

    /// Applies what the last change invalidated, now (no guest code runs).
    fn changed(&mut self) {
        self.engine.apply_flush();
    }

    instrumentation_methods!();

    /// The analysis of the translated instruction at `addr` (`None` if no instrumented
    /// instruction is there).
    pub fn cached_inst_analysis(
        &mut self,
        addr: Rword,
        analysis: AnalysisType,
    ) -> Option<&InstAnalysis> {
        if !self.inst_ref().ranges.contains(addr) {
            return None;
        }
        let options = self.options;
        // SAFETY: as in inst_mut.
        let shared = unsafe { &mut *self.shared };
        shared.analyses.get(addr, analysis, options)
    }

    /// How many callback sites of the code cache call their callback directly from
    /// translated code (a diagnostic: simple callbacks, such as counters, run without the
    /// general save of the guest state; see docs/architecture.md).
    #[must_use]
    pub fn direct_call_sites(&self) -> usize {
        let inst = self.inst_ref();
        inst.sites.iter().filter(|s| s.direct_live != 0).count()
    }

    /// How many times translated code has come back to the dispatcher since the Vm was
    /// made (a diagnostic: each is a full context switch; a warm cache running code it has
    /// seen leaves it only for what it cannot do inline, such as a new block, a callback's
    /// general path or an instrumented-code boundary).
    #[must_use]
    pub fn cache_exits(&self) -> u64 {
        self.engine.exits
    }

    /// How many of the [`direct_call_sites`](Self::direct_call_sites) copy their callbacks'
    /// code instead of calling it (see [`set_call_inlining`](Self::set_call_inlining)).
    #[must_use]
    pub fn inlined_call_sites(&self) -> usize {
        let inst = self.inst_ref();
        if !inst.inline_calls {
            return 0;
        }
        inst.sites
            .iter()
            .filter(|s| {
                let mut calls = (s.first..s.first + u32::from(s.direct))
                    .map(|k| inst.direct_call(inst.site_cbs[k as usize]));
                s.direct_live != 0 && calls.all(|c| c.is_some_and(|c| c.inline.is_some()))
            })
            .count()
    }

    /// Runs the guest from `start` until it reaches `stop`, from the current state, and
    /// leaves the final state in the Vm (`rip` = `stop`).
    pub fn run(&mut self, start: Rword, stop: Rword) -> Result<(), VmError> {
        if !self.inst_ref().ranges.contains(start) {
            return Err(VmError::NotInstrumented(start));
        }
        if !self.errno_set {
            // SAFETY: __errno_location returns this thread's errno slot.
            self.errno = unsafe { *libc::__errno_location() };
        }
        self.errno_set = false;
        self.gpr.rip = start;
        let result = self
            .engine
            .run(&mut self.gpr, &mut self.fpr, &mut self.errno, stop);
        if !self.options.contains(Options::OPT_DISABLE_ERRNO_BACKUP) {
            // The guest's errno is what the thread sees after the run, as after a native call.
            // SAFETY: as above.
            unsafe { *libc::__errno_location() = self.errno };
        }
        if let Some(panic) = self.inst_mut().panic.take() {
            // A callback panicked; the guest state is back in the Vm. Let it unwind on.
            std::panic::resume_unwind(panic);
        }
        result
    }

    /// Where a run goes when the guest reaches code outside the instrumented ranges with no
    /// return address to come back through (a `ret` or `jmp` out of instrumented code that
    /// was entered from native code): by default it instruments that code too (QBDI's
    /// behaviour); with `leave` set, the run ends there instead, with `rip` = that address,
    /// so the caller can resume it natively.
    pub fn set_leave_at_native(&mut self, leave: bool) {
        self.engine.leave_at_native = leave;
    }

    /// Calls `function` with the SysV x86-64 convention (any number of integer arguments)
    /// on the current guest stack and returns its `rax`. The stack pointer is restored after
    /// the call, so repeated calls do not creep down the stack.
    pub fn call(&mut self, function: Rword, args: &[Rword]) -> Result<Rword, VmError> {
        if self.gpr.rsp == 0 {
            return Err(VmError::NoStack);
        }
        if !self.inst_ref().ranges.contains(function) {
            return Err(VmError::NotInstrumented(function));
        }
        let saved_rsp = self.gpr.rsp;
        simulate_call(&mut self.gpr, FAKE_RETURN_ADDRESS, args);
        let result = self.run(function, FAKE_RETURN_ADDRESS);
        self.gpr.rsp = saved_rsp;
        result.map(|()| self.gpr.rax)
    }

    /// Rewrites, in the stack words of `[lo, hi)`, every return address that the exec broker
    /// redirected into the code cache (when the guest called native code) back to the
    /// guest's own return address. Returns how many words it rewrote.
    ///
    /// For unwinders that must see the program's own addresses (C++ exceptions thrown
    /// through native code, `backtrace()`): the code cache has no unwind tables. A native
    /// function whose return address was restored returns to the guest code natively, so
    /// the rest of that guest call runs uninstrumented.
    ///
    /// # Safety
    /// `vm` must point at a live Vm; `[lo, hi)` must be readable and writable memory of the
    /// current thread's stack; call it only from native code the guest called (the Vm is
    /// suspended in `run`/`call` on this thread) or when no run is in progress, never
    /// concurrently with another use of the Vm.
    pub unsafe fn restore_return_addresses(vm: *const Vm, lo: Rword, hi: Rword) -> usize {
        // SAFETY: the caller guarantees the Vm is alive and not used concurrently; only the
        // engine's cache and directory are read (no reference to the Vm's other state).
        unsafe { (*std::ptr::addr_of!((*vm).engine)).restore_return_addresses(lo, hi) }
    }

    /// The guest's view of a fault at host address `pc` of the Vm at `vm`'s code cache (a
    /// signal's context pc): the guest instruction, and the register its translation
    /// borrowed, if any, with the guest's value of it. `None` outside translated
    /// instructions that can fault (instrumentation code, exits).
    ///
    /// # Safety
    /// As [`Vm::guest_block_at`]; the Vm's thread is suspended at `pc` (in a signal handler).
    pub unsafe fn guest_fault_at(vm: *const Vm, pc: Rword) -> Option<GuestFault> {
        // SAFETY: the caller's contract; the directory and the context are only read.
        unsafe { (*std::ptr::addr_of!((*vm).engine)).fault_point(pc) }
    }

    /// Prepares the Vm at `vm`, suspended in its code cache by a signal, to go on at guest
    /// address `target`: returns the host address the signal's context must resume at (the
    /// guest's registers as they are then, the scratch register of a [`GuestFault`] holding
    /// its guest value).
    ///
    /// # Safety
    /// As [`Vm::guest_fault_at`].
    pub unsafe fn resume_interrupted_at(vm: *const Vm, target: Rword) -> Option<Rword> {
        // SAFETY: the caller's contract; only the context's exit fields are written.
        unsafe { (*std::ptr::addr_of!((*vm).engine)).redirect_to(target) }
    }

    /// Sets the guest's value of the register a [`GuestFault`] borrowed, before its context
    /// resumes at `host_pc` (the translation reloads it from there).
    ///
    /// # Safety
    /// As [`Vm::guest_fault_at`].
    pub unsafe fn set_fault_scratch(vm: *const Vm, value: Rword) {
        // SAFETY: the caller's contract.
        unsafe { (*std::ptr::addr_of!((*vm).engine)).set_spill_far(value) }
    }

    /// Applies the range changes published with `late_code` to the Vm at `vm` now (drops
    /// its translations there), instead of at its next dispatcher round: for the thread's
    /// own Vm, suspended in a native call (an interposed function) that published them, so
    /// that the guest does not run a linked translation of them once more.
    ///
    /// # Safety
    /// `vm` must point at a live Vm of the calling thread whose run, if any, is suspended in
    /// native code this thread runs (no translated code of it runs, and its dispatcher is
    /// not in the middle of an update).
    pub unsafe fn sync_published_ranges(vm: *mut Vm) {
        // SAFETY: the caller's contract: nothing else touches the Vm's engine meanwhile;
        // the invalidation patches blocks' first bytes only, so the block that made the
        // native call returns into the rest of its old code.
        unsafe { (*std::ptr::addr_of_mut!((*vm).engine)).sync_published_ranges() }
    }

    /// Whether `pc` is in the code cache of the Vm at `vm` (its translated code runs there).
    ///
    /// # Safety
    /// As [`Vm::guest_block_at`].
    pub unsafe fn code_cache_contains(vm: *const Vm, pc: Rword) -> bool {
        // SAFETY: the caller guarantees the Vm is alive; only the cache's bounds are read.
        unsafe { (*std::ptr::addr_of!((*vm).engine)).cache_contains(pc) }
    }

    /// The guest basic block whose translation contains the host address `pc` (a pc of the
    /// code cache, as a signal's context shows it), or `None` if `pc` is not in this Vm's
    /// translated blocks. For crash reports.
    ///
    /// # Safety
    /// `vm` must point at a live Vm that no other thread uses meanwhile (a signal handler on
    /// the Vm's own thread is fine: the directory is only read).
    pub unsafe fn guest_block_at(vm: *const Vm, pc: Rword) -> Option<crate::Range> {
        // SAFETY: the caller guarantees the Vm is alive; only the engine's cache and
        // directory are read.
        unsafe { (*std::ptr::addr_of!((*vm).engine)).guest_block_at(pc) }
    }

    /// Translates the basic block at `addr` now. Returns whether it was newly translated
    /// (false: it was already in the cache).
    pub fn precache_basic_block(&mut self, addr: Rword) -> Result<bool, VmError> {
        if !self.inst_ref().ranges.contains(addr) {
            return Err(VmError::NotInstrumented(addr));
        }
        self.engine.precache(addr)
    }
}

/// With OPT_ENABLE_FS_GS the guest runs with the FS and GS bases of its `GprState`: unless
/// the caller set them, it starts with this thread's (so its thread-local storage works).
fn own_segment_bases(options: Options, gpr: &mut GprState) {
    if options.contains(Options::OPT_ENABLE_FS_GS) && gpr.fs == 0 && gpr.gs == 0 {
        (gpr.fs, gpr.gs) = crate::engine::thread_segment_bases();
    }
}

/// A fault in translated code, in the guest's terms (see [`Vm::guest_fault_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFault {
    /// The guest instruction that faulted.
    pub guest_pc: Rword,
    /// Where its translation starts (resuming there runs it again).
    pub host_pc: Rword,
    /// The register its translation borrowed (hardware number: 0 = rax, 1 = rcx, ...,
    /// 15 = r15) and the guest's value of it; the context holds a host address there.
    pub scratch: Option<(u8, Rword)>,
}
