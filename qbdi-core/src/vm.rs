//! `Vm`: the public face of the engine. It owns the guest state outside runs, the
//! instrumented ranges and the engine (code cache, translator, dispatcher); it turns API
//! calls into engine requests and checks their arguments.

use crate::engine::Engine;
use crate::error::VmError;
use crate::maps::{Permission, current_process_maps, map_is_module};
use crate::memory::simulate_call;
use crate::options::Options;
use crate::range::{Range, RangeSet};
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
    ranges: RangeSet,
    engine: Engine,
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
        let gpr = GprState {
            eflags: DEFAULT_EFLAGS,
            ..GprState::default()
        };
        Vm {
            options,
            gpr,
            fpr: Box::default(),
            errno: 0,
            errno_set: false,
            ranges: RangeSet::new(),
            engine: Engine::new(options),
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
            self.options = options;
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

    /// The instrumented ranges.
    #[must_use]
    pub fn instrumented_ranges(&self) -> &RangeSet {
        &self.ranges
    }

    fn ranges_changed(&mut self) {
        self.engine.ranges_changed();
    }

    /// Instruments `[start, end)`.
    pub fn add_instrumented_range(&mut self, start: Rword, end: Rword) -> Result<(), VmError> {
        if end <= start {
            return Err(VmError::InvalidRange { start, end });
        }
        self.ranges.add(Range::new(start, end));
        self.ranges_changed();
        Ok(())
    }

    /// Instruments every executable mapping of the module `name` (basename or full path).
    pub fn add_instrumented_module(&mut self, name: &str) -> Result<(), VmError> {
        let maps = module_exec_maps(name)?;
        for r in maps {
            self.ranges.add(r);
        }
        self.ranges_changed();
        Ok(())
    }

    /// Instruments the module containing `addr` (all its executable mappings), or the
    /// anonymous executable mapping containing it.
    pub fn add_instrumented_module_from_addr(&mut self, addr: Rword) -> Result<(), VmError> {
        for r in module_exec_maps_from_addr(addr)? {
            self.ranges.add(r);
        }
        self.ranges_changed();
        Ok(())
    }

    /// Instruments every executable mapping of the process.
    pub fn instrument_all_executable_maps(&mut self) -> Result<(), VmError> {
        for m in current_process_maps(true) {
            if m.permission.contains(Permission::EXEC) && m.name != "[vsyscall]" {
                self.ranges.add(m.range);
            }
        }
        self.ranges_changed();
        Ok(())
    }

    /// Stops instrumenting `[start, end)`.
    pub fn remove_instrumented_range(&mut self, start: Rword, end: Rword) -> Result<(), VmError> {
        if end <= start {
            return Err(VmError::InvalidRange { start, end });
        }
        self.ranges.remove(Range::new(start, end));
        self.ranges_changed();
        Ok(())
    }

    /// Stops instrumenting the module `name`.
    pub fn remove_instrumented_module(&mut self, name: &str) -> Result<(), VmError> {
        for r in module_exec_maps(name)? {
            self.ranges.remove(r);
        }
        self.ranges_changed();
        Ok(())
    }

    /// Stops instrumenting the module (or anonymous mapping) containing `addr`.
    pub fn remove_instrumented_module_from_addr(&mut self, addr: Rword) -> Result<(), VmError> {
        for r in module_exec_maps_from_addr(addr)? {
            self.ranges.remove(r);
        }
        self.ranges_changed();
        Ok(())
    }

    /// Stops instrumenting anything.
    pub fn remove_all_instrumented_ranges(&mut self) {
        self.ranges.clear();
        self.ranges_changed();
    }

    /// Runs the guest from `start` until it reaches `stop`, from the current state, and
    /// leaves the final state in the Vm (`rip` = `stop`).
    pub fn run(&mut self, start: Rword, stop: Rword) -> Result<(), VmError> {
        if !self.ranges.contains(start) {
            return Err(VmError::NotInstrumented(start));
        }
        if !self.errno_set {
            // SAFETY: __errno_location returns this thread's errno slot.
            self.errno = unsafe { *libc::__errno_location() };
        }
        self.errno_set = false;
        self.gpr.rip = start;
        let result = self.engine.run(
            &mut self.gpr,
            &mut self.fpr,
            &mut self.errno,
            &self.ranges,
            stop,
        );
        if !self.options.contains(Options::OPT_DISABLE_ERRNO_BACKUP) {
            // The guest's errno is what the thread sees after the run, as after a native call.
            // SAFETY: as above.
            unsafe { *libc::__errno_location() = self.errno };
        }
        result
    }

    /// Calls `function` with the SysV x86-64 convention (any number of integer arguments)
    /// on the current guest stack and returns its `rax`. The stack pointer is restored after
    /// the call, so repeated calls do not creep down the stack.
    pub fn call(&mut self, function: Rword, args: &[Rword]) -> Result<Rword, VmError> {
        if self.gpr.rsp == 0 {
            return Err(VmError::NoStack);
        }
        if !self.ranges.contains(function) {
            return Err(VmError::NotInstrumented(function));
        }
        let saved_rsp = self.gpr.rsp;
        simulate_call(&mut self.gpr, FAKE_RETURN_ADDRESS, args);
        let result = self.run(function, FAKE_RETURN_ADDRESS);
        self.gpr.rsp = saved_rsp;
        result.map(|()| self.gpr.rax)
    }

    /// Translates the basic block at `addr` now. Returns whether it was newly translated
    /// (false: it was already in the cache).
    pub fn precache_basic_block(&mut self, addr: Rword) -> Result<bool, VmError> {
        if !self.ranges.contains(addr) {
            return Err(VmError::NotInstrumented(addr));
        }
        self.engine.precache(addr, &self.ranges)
    }

    /// Drops the translations of code in `[start, end)` (after the guest changed its code).
    pub fn clear_cache(&mut self, start: Rword, end: Rword) {
        self.engine.clear_cache(Range::new(start, end));
    }

    /// Drops every translation.
    pub fn clear_all_cache(&mut self) {
        self.engine.clear_all_cache();
    }
}

fn module_exec_maps(name: &str) -> Result<Vec<Range>, VmError> {
    let ranges: Vec<Range> = current_process_maps(true)
        .into_iter()
        .filter(|m| m.permission.contains(Permission::EXEC) && map_is_module(&m.name, name))
        .map(|m| m.range)
        .collect();
    if ranges.is_empty() {
        return Err(VmError::ModuleNotFound(name.to_string()));
    }
    Ok(ranges)
}

fn module_exec_maps_from_addr(addr: Rword) -> Result<Vec<Range>, VmError> {
    let maps = current_process_maps(true);
    let map = maps
        .iter()
        .find(|m| m.range.contains(addr) && m.permission.contains(Permission::EXEC))
        .ok_or(VmError::AddressNotMapped(addr))?;
    if map.name.starts_with('/') {
        module_exec_maps(&map.name)
    } else {
        Ok(vec![map.range])
    }
}
