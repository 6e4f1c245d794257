//! `VmRef`: the plugin's safe handle on the host's Vm, over the host's function table.
//!
//! It has the names of the engine's `VmRef` (API.md): the analysis and memory-access
//! queries, the instrumentation methods (callbacks as closures, ranges, caches), plus
//! [`symbolize`](VmRef::symbolize) and [`log`](VmRef::log). Closures registered here live
//! in the plugin; the host calls them through a trampoline and frees them through the
//! plugin when their callback is deleted.

use std::ffi::c_void;
use std::marker::PhantomData;

use qbdi_core::{
    AnalysisType, CallbackId, FprState, GprState, InstAnalysis, InstPosition, MemoryAccess,
    MemoryAccessType, Rword, VmAction, VmError, VmEvent, VmState,
};

use crate::abi::{
    HostApi, INVALID_ID, RawAction, RawInstAnalysis, RawInstSpec, RawSymbol, RawVm, StrRef,
    position, range_op, target,
};
use crate::convert;
use crate::inline::{BlockCounter, EdgeHash, EdgeMap, ThreadEdgeMaps};

/// The ABI's form of a block hash.
fn raw_hash(hash: EdgeHash) -> Option<crate::abi::RawBlockHashFn> {
    match hash {
        EdgeHash::Afl => None,
        EdgeHash::Custom(f) => Some(f),
    }
}
use crate::panic::guard;

/// The plugin's handle on the Vm it is attached to, valid for one call from the host (a
/// callback, init).
pub struct VmRef<'a> {
    raw: *const RawVm,
    _call: PhantomData<&'a RawVm>,
}

/// A boxed instruction callback of a plugin.
type InstClosure =
    Box<dyn Fn(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + Send + Sync>;
/// A boxed VM event callback of a plugin.
type EventClosure =
    Box<dyn Fn(&mut VmRef<'_>, &VmState, &mut GprState, &mut FprState) -> VmAction + Send + Sync>;
/// A boxed instrumentation rule of a plugin.
type RuleClosure =
    Box<dyn Fn(&mut VmRef<'_>, &InstAnalysis) -> Vec<InstrRuleCallback> + Send + Sync>;

/// A callback an instrumentation rule attaches to the instruction it was asked about.
pub struct InstrRuleCallback {
    position: InstPosition,
    priority: i32,
    callback: InstClosure,
}

impl InstrRuleCallback {
    /// A callback at `position` with `priority`.
    pub fn new(
        position: InstPosition,
        callback: impl Fn(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction
        + Send
        + Sync
        + 'static,
        priority: i32,
    ) -> InstrRuleCallback {
        InstrRuleCallback {
            position,
            priority,
            callback: Box::new(callback),
        }
    }
}

impl std::fmt::Debug for InstrRuleCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrRuleCallback")
            .field("position", &self.position)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

/// A symbol, as [`VmRef::symbolize`] finds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Symbol {
    /// The symbol's name (`""` when no symbol covers the address).
    pub name: String,
    /// Offset of the address from the symbol's start.
    pub offset: u32,
    /// Basename of the module (`"libc.so.6"`).
    pub module: String,
}

fn pos_raw(p: InstPosition) -> u32 {
    match p {
        InstPosition::PreInst => position::PRE_INST,
        InstPosition::PostInst => position::POST_INST,
    }
}

impl<'a> VmRef<'a> {
    /// Wraps the handle the host passed.
    ///
    /// # Safety
    /// `raw` must be the `RawVm` the host passed into the current call, with a valid
    /// function table, and `'a` must not outlive that call.
    #[inline(always)]
    pub(crate) unsafe fn from_raw(raw: *const RawVm) -> VmRef<'a> {
        VmRef {
            raw,
            _call: PhantomData,
        }
    }

    /// The raw handle (for the SDK's trampolines).
    pub(crate) fn raw_handle(&self) -> *const RawVm {
        self.raw
    }

    /// The host's function table. Read when needed, not in `from_raw`: a callback that
    /// only reads its accesses reads nothing else of its handle (see [`RawVm::accesses`]).
    pub(crate) fn api(&self) -> &'a HostApi {
        // SAFETY: `raw` is the handle of the current call (`from_raw`'s contract), whose
        // function table is valid for the whole run.
        unsafe { &*(*self.raw).api }
    }

    fn last_error(&self) -> VmError {
        let e = (self.api().last_error)();
        // SAFETY: the host keeps its last error alive until its next call on this thread.
        VmError::InvalidArgument(unsafe { e.as_str() }.into_owned())
    }

    fn id(&self, id: u32) -> Result<CallbackId, VmError> {
        if id == INVALID_ID {
            Err(self.last_error())
        } else {
            Ok(id)
        }
    }

    fn ok(&self, ok: bool) -> Result<(), VmError> {
        if ok { Ok(()) } else { Err(self.last_error()) }
    }

    /// The analysis of the instruction the callback runs for.
    ///
    /// # Panics
    /// Outside an instruction callback (init, VM events): use
    /// [`cached_inst_analysis`](Self::cached_inst_analysis) with an address.
    pub fn inst_analysis(&mut self, analysis: AnalysisType) -> &InstAnalysis {
        let mut raw = std::mem::MaybeUninit::<RawInstAnalysis>::uninit();
        assert!(
            (self.api().inst_analysis)(self.raw, analysis.bits(), raw.as_mut_ptr()),
            "inst_analysis() is for instruction callbacks; use cached_inst_analysis(address, ..)"
        );
        // SAFETY: the host filled `raw` (it returned true).
        let raw = unsafe { raw.assume_init() };
        convert::cached(raw.address, analysis.bits(), || {
            // SAFETY: the host's record is valid during this call.
            Some(unsafe { convert::inst_analysis(&raw) })
        })
        .expect("built above")
    }

    /// The analysis of the instrumented instruction at `addr` (`None` if the Vm has none
    /// there).
    pub fn cached_inst_analysis(
        &mut self,
        addr: Rword,
        analysis: AnalysisType,
    ) -> Option<&InstAnalysis> {
        let api = self.api();
        let vm = self.raw;
        convert::cached(addr, analysis.bits(), || {
            let mut raw = std::mem::MaybeUninit::<RawInstAnalysis>::uninit();
            if !(api.cached_inst_analysis)(vm, addr, analysis.bits(), raw.as_mut_ptr()) {
                return None;
            }
            // SAFETY: filled by the host (it returned true), valid during this call.
            Some(unsafe { convert::inst_analysis(&raw.assume_init()) })
        })
    }

    /// The block's accesses, asked of the host (the instruction's are in the handle).
    fn bb_memory(&mut self) -> &[MemoryAccess] {
        let mut ptr = std::ptr::null();
        let mut count = 0;
        (self.api().memory_access)(self.raw, true, &mut ptr, &mut count);
        if ptr.is_null() || count == 0 {
            return &[];
        }
        // SAFETY: the host's recorder holds `count` accesses at `ptr` until the callback
        // returns; the slice borrows `self`, which does not outlive the callback.
        unsafe { std::slice::from_raw_parts(ptr, count) }
    }

    /// The memory accesses of the current instruction: in PreInst its reads, in PostInst
    /// its reads and writes (empty unless recording is on).
    #[inline]
    pub fn inst_memory_access(&mut self) -> &[MemoryAccess] {
        // SAFETY: `raw` is the handle of the current call; the host (ABI 1.3, which this
        // plugin required to be loaded) put there `accesses_len` accesses at `accesses`,
        // valid until the callback returns (the slice borrows `self`, which does not
        // outlive it).
        unsafe {
            let raw = &*self.raw;
            if raw.accesses_len == 0 {
                return &[];
            }
            std::slice::from_raw_parts(raw.accesses, raw.accesses_len)
        }
    }

    /// The memory accesses of the current basic block so far.
    pub fn bb_memory_access(&mut self) -> &[MemoryAccess] {
        self.bb_memory()
    }

    fn add_inst(
        &mut self,
        spec: RawInstSpec,
        cb: InstClosure,
        name: &str,
    ) -> Result<CallbackId, VmError> {
        let data = Box::into_raw(Box::new(cb)) as *mut c_void;
        let id = (self.api().add_inst_cb)(
            self.raw,
            &spec,
            data,
            inst_call,
            inst_drop,
            StrRef::new(name),
        );
        self.id(id)
    }

    fn spec(target: u32, position: InstPosition, priority: i32) -> RawInstSpec {
        RawInstSpec {
            target,
            position: pos_raw(position),
            priority,
            access: 0,
            start: 0,
            end: 0,
            pattern: StrRef::EMPTY,
        }
    }

    /// Adds a callback on every instrumented instruction.
    #[track_caller]
    pub fn add_code_cb(
        &mut self,
        position: InstPosition,
        cb: impl Fn(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + Send + Sync + 'static,
        priority: i32,
    ) -> Result<CallbackId, VmError> {
        let name = caller();
        self.add_inst(
            Self::spec(target::ALL, position, priority),
            Box::new(cb),
            &name,
        )
    }

    /// Adds a callback on the instruction at `addr`.
    #[track_caller]
    pub fn add_code_addr_cb(
        &mut self,
        addr: Rword,
        position: InstPosition,
        cb: impl Fn(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + Send + Sync + 'static,
        priority: i32,
    ) -> Result<CallbackId, VmError> {
        let name = caller();
        let spec = RawInstSpec {
            start: addr,
            ..Self::spec(target::ADDR, position, priority)
        };
        self.add_inst(spec, Box::new(cb), &name)
    }

    /// Adds a callback on the instructions in `[start, end)`.
    #[track_caller]
    pub fn add_code_range_cb(
        &mut self,
        start: Rword,
        end: Rword,
        position: InstPosition,
        cb: impl Fn(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + Send + Sync + 'static,
        priority: i32,
    ) -> Result<CallbackId, VmError> {
        let name = caller();
        let spec = RawInstSpec {
            start,
            end,
            ..Self::spec(target::RANGE, position, priority)
        };
        self.add_inst(spec, Box::new(cb), &name)
    }

    /// Adds a callback on the instructions whose mnemonic matches the glob `pattern`.
    #[track_caller]
    pub fn add_mnemonic_cb(
        &mut self,
        pattern: &str,
        position: InstPosition,
        cb: impl Fn(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + Send + Sync + 'static,
        priority: i32,
    ) -> Result<CallbackId, VmError> {
        let name = caller();
        let spec = RawInstSpec {
            pattern: StrRef::new(pattern),
            ..Self::spec(target::MNEMONIC, position, priority)
        };
        self.add_inst(spec, Box::new(cb), &name)
    }

    /// Adds a callback on every memory access of type `access` (turns recording on).
    #[track_caller]
    pub fn add_mem_access_cb(
        &mut self,
        access: MemoryAccessType,
        cb: impl Fn(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + Send + Sync + 'static,
        priority: i32,
    ) -> Result<CallbackId, VmError> {
        let name = caller();
        let spec = RawInstSpec {
            access: access.bits().into(),
            ..Self::spec(target::MEM_ACCESS, InstPosition::PostInst, priority)
        };
        self.add_inst(spec, Box::new(cb), &name)
    }

    /// Adds a callback on the accesses of type `access` that touch `addr`.
    #[track_caller]
    pub fn add_mem_addr_cb(
        &mut self,
        addr: Rword,
        access: MemoryAccessType,
        cb: impl Fn(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + Send + Sync + 'static,
    ) -> Result<CallbackId, VmError> {
        let name = caller();
        let spec = RawInstSpec {
            access: access.bits().into(),
            start: addr,
            ..Self::spec(target::MEM_ADDR, InstPosition::PostInst, 0)
        };
        self.add_inst(spec, Box::new(cb), &name)
    }

    /// Adds a callback on the accesses of type `access` that touch `[start, end)`.
    #[track_caller]
    pub fn add_mem_range_cb(
        &mut self,
        start: Rword,
        end: Rword,
        access: MemoryAccessType,
        cb: impl Fn(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + Send + Sync + 'static,
    ) -> Result<CallbackId, VmError> {
        let name = caller();
        let spec = RawInstSpec {
            access: access.bits().into(),
            start,
            end,
            ..Self::spec(target::MEM_RANGE, InstPosition::PostInst, 0)
        };
        self.add_inst(spec, Box::new(cb), &name)
    }

    /// Adds a callback on VM events.
    #[track_caller]
    pub fn add_vm_event_cb(
        &mut self,
        events: VmEvent,
        cb: impl Fn(&mut VmRef<'_>, &VmState, &mut GprState, &mut FprState) -> VmAction
        + Send
        + Sync
        + 'static,
    ) -> Result<CallbackId, VmError> {
        let name = caller();
        let cb: EventClosure = Box::new(cb);
        let data = Box::into_raw(Box::new(cb)) as *mut c_void;
        let id = (self.api().add_event_cb)(
            self.raw,
            events.bits(),
            data,
            event_call,
            event_drop,
            StrRef::new(&name),
        );
        self.id(id)
    }

    /// Adds an instrumentation rule over every instrumented instruction.
    #[track_caller]
    pub fn add_instr_rule(
        &mut self,
        rule: impl Fn(&mut VmRef<'_>, &InstAnalysis) -> Vec<InstrRuleCallback> + Send + Sync + 'static,
        analysis: AnalysisType,
    ) -> Result<CallbackId, VmError> {
        self.add_instr_rule_range(0, u64::MAX, rule, analysis)
    }

    /// Adds an instrumentation rule over the instructions in `[start, end)`.
    #[track_caller]
    pub fn add_instr_rule_range(
        &mut self,
        start: Rword,
        end: Rword,
        rule: impl Fn(&mut VmRef<'_>, &InstAnalysis) -> Vec<InstrRuleCallback> + Send + Sync + 'static,
        analysis: AnalysisType,
    ) -> Result<CallbackId, VmError> {
        let name = caller();
        let rule: RuleClosure = Box::new(rule);
        let data = Box::into_raw(Box::new(rule)) as *mut c_void;
        let id = (self.api().add_instr_rule)(
            self.raw,
            start,
            end,
            analysis.bits(),
            data,
            rule_call,
            rule_drop,
            StrRef::new(&name),
        );
        self.id(id)
    }

    /// Removes a callback this plugin registered.
    pub fn delete_instrumentation(&mut self, id: CallbackId) -> Result<(), VmError> {
        if (self.api().delete_instrumentation)(self.raw, id) {
            Ok(())
        } else {
            Err(VmError::InvalidArgument(format!(
                "no instrumentation with id {id}"
            )))
        }
    }

    fn range_op(&mut self, op: u32, start: Rword, end: Rword, name: &str) -> Result<(), VmError> {
        let ok = (self.api().ranges)(self.raw, op, start, end, StrRef::new(name));
        self.ok(ok)
    }

    /// Instruments `[start, end)`.
    pub fn add_instrumented_range(&mut self, start: Rword, end: Rword) -> Result<(), VmError> {
        self.range_op(range_op::ADD_RANGE, start, end, "")
    }

    /// Stops instrumenting `[start, end)`.
    pub fn remove_instrumented_range(&mut self, start: Rword, end: Rword) -> Result<(), VmError> {
        self.range_op(range_op::REMOVE_RANGE, start, end, "")
    }

    /// Instruments the executable mappings of a module (basename or full path).
    pub fn add_instrumented_module(&mut self, name: &str) -> Result<(), VmError> {
        self.range_op(range_op::ADD_MODULE, 0, 0, name)
    }

    /// Stops instrumenting a module.
    pub fn remove_instrumented_module(&mut self, name: &str) -> Result<(), VmError> {
        self.range_op(range_op::REMOVE_MODULE, 0, 0, name)
    }

    /// Instruments the module containing `addr`.
    pub fn add_instrumented_module_from_addr(&mut self, addr: Rword) -> Result<(), VmError> {
        self.range_op(range_op::ADD_MODULE_FROM_ADDR, addr, 0, "")
    }

    /// Stops instrumenting the module containing `addr`.
    pub fn remove_instrumented_module_from_addr(&mut self, addr: Rword) -> Result<(), VmError> {
        self.range_op(range_op::REMOVE_MODULE_FROM_ADDR, addr, 0, "")
    }

    /// Instruments every executable mapping (but the host's and the plugins' own code).
    pub fn instrument_all_executable_maps(&mut self) -> Result<(), VmError> {
        self.range_op(range_op::ALL_MAPS, 0, 0, "")
    }

    /// Stops instrumenting anything.
    pub fn remove_all_instrumented_ranges(&mut self) {
        let _ = self.range_op(range_op::REMOVE_ALL, 0, 0, "");
    }

    /// Drops the translations of `[start, end)` (after the code changed).
    pub fn clear_cache(&mut self, start: Rword, end: Rword) {
        let _ = self.range_op(range_op::CLEAR_CACHE, start, end, "");
    }

    /// Drops every translation.
    pub fn clear_all_cache(&mut self) {
        let _ = self.range_op(range_op::CLEAR_ALL_CACHE, 0, 0, "");
    }

    /// Records the memory accesses of type `access` of every instrumented instruction.
    pub fn record_memory_access(&mut self, access: MemoryAccessType) -> Result<(), VmError> {
        let ok = (self.api().record_memory_access)(self.raw, access.bits().into());
        self.ok(ok)
    }

    /// Counts the executions of every instrumented block inline: translated code adds one
    /// to the block's counter at each entry, with no callback. Every thread's Vm counts
    /// into the same counters; read them with [`BlockCounter::counts`] (at fini, for
    /// instance). Call it from init to count from the first block.
    pub fn add_block_counter(&mut self) -> Result<BlockCounter, VmError> {
        let counter = BlockCounter::new();
        let id = (self.api().add_block_counter)(
            self.raw,
            counter.data(),
            crate::inline::counter_slot,
            crate::inline::keep,
        );
        self.id(id).map(|_| counter)
    }

    /// AFL-style edge coverage, inline: at each block entry translated code does
    /// `map[prev ^ cur] += 1; prev = cur >> 1`, with `cur` the block's `hash` masked to the
    /// map's size (a power of two, up to 2^30 bytes) and `prev` per thread. With
    /// `never_zero`, a count that wraps skips 0 (AFL++'s NeverZero). The map is typically
    /// a fuzzer's shared memory, mapped for the life of the process.
    pub fn add_edge_map(
        &mut self,
        map: EdgeMap,
        hash: EdgeHash,
        never_zero: bool,
    ) -> Result<CallbackId, VmError> {
        let id = (self.api().add_edge_map)(
            self.raw,
            map.as_ptr().cast::<u8>().cast_mut(),
            map.len(),
            raw_hash(hash),
            never_zero,
            std::ptr::null_mut(),
            None,
        );
        self.id(id)
    }

    /// As [`add_edge_map`](Self::add_edge_map), with one map of `size` bytes per thread
    /// (per Vm) instead of one shared map: threads never fight over map lines (a shared map
    /// costs several times more on a program whose threads run at once), and no count is
    /// lost. Read them added up with [`ThreadEdgeMaps::merged`].
    pub fn add_thread_edge_maps(
        &mut self,
        size: usize,
        hash: EdgeHash,
        never_zero: bool,
    ) -> Result<ThreadEdgeMaps, VmError> {
        if !size.is_power_of_two() || size > 1 << 30 {
            return Err(VmError::InvalidArgument(format!(
                "an edge map is a power-of-two number of bytes up to 2^30 (got {size})"
            )));
        }
        let maps = ThreadEdgeMaps::new(size, never_zero);
        let id = (self.api().add_edge_map)(
            self.raw,
            std::ptr::null_mut(),
            size,
            raw_hash(hash),
            never_zero,
            maps.data(),
            Some(crate::inline::lane_map),
        );
        self.id(id).map(|_| maps)
    }

    /// The kernel's id of the thread this callback runs on (`gettid`; the process id for
    /// the main thread). Callbacks run on every thread of the program, concurrently.
    ///
    /// A child made with a raw `clone` without `CLONE_SETTLS` shares its parent's
    /// thread-local storage, where the id is cached: it reads its parent's id.
    #[must_use]
    pub fn thread_id(&self) -> u32 {
        thread_id()
    }

    /// Whether this callback runs on the process's main thread (the one whose id is the
    /// process id), for plugins that mark only other threads' output.
    #[must_use]
    pub fn is_main_thread(&self) -> bool {
        thread_id() == process_id()
    }

    /// The symbol containing `addr`, from the ELF symbol tables of the file mapped there
    /// (`None` if no file is mapped there).
    pub fn symbolize(&self, addr: Rword) -> Option<Symbol> {
        let mut raw = std::mem::MaybeUninit::<RawSymbol>::uninit();
        if !(self.api().symbolize)(addr, raw.as_mut_ptr()) {
            return None;
        }
        // SAFETY: filled by the host (it returned true); its strings live until its next call.
        let raw = unsafe { raw.assume_init() };
        // SAFETY: as above.
        let (name, module) = unsafe {
            (
                raw.name.as_str().into_owned(),
                raw.module.as_str().into_owned(),
            )
        };
        Some(Symbol {
            name,
            offset: raw.offset,
            module,
        })
    }

    /// Writes a line to the host's log (stderr with a `qbdi:` prefix, or the `--log` file).
    pub fn log(&self, message: &str) {
        (self.api().log)(StrRef::new(message));
    }
}

/// `file:line` of the caller, naming closures in messages.
#[track_caller]
fn caller() -> String {
    let l = std::panic::Location::caller();
    format!("closure at {}:{}", l.file(), l.line())
}

extern "C" fn inst_call(
    data: *mut c_void,
    vm: *const RawVm,
    gpr: *mut GprState,
    fpr: *mut FprState,
) -> RawAction {
    guard(vm, "", || {
        // SAFETY: `data` is the InstClosure boxed in `add_inst` (or a rule's push), alive
        // until `inst_drop`; the host passes valid `vm`, `gpr`, `fpr` for this call and no
        // other reference to them exists while it runs.
        let (cb, gpr, fpr) = unsafe { (&*(data as *const InstClosure), &mut *gpr, &mut *fpr) };
        // SAFETY: `vm` is this call's handle.
        let mut vm = unsafe { VmRef::from_raw(vm) };
        cb(&mut vm, gpr, fpr) as RawAction
    })
}

extern "C" fn inst_drop(data: *mut c_void) {
    // SAFETY: `data` came from Box::into_raw of a Box<InstClosure>; the host drops it once.
    drop(unsafe { Box::from_raw(data as *mut InstClosure) });
}

extern "C" fn event_call(
    data: *mut c_void,
    vm: *const RawVm,
    state: *const VmState,
    gpr: *mut GprState,
    fpr: *mut FprState,
) -> RawAction {
    guard(vm, "", || {
        // SAFETY: as in inst_call, for an EventClosure; `state` is valid for the call.
        let (cb, state, gpr, fpr) = unsafe {
            (
                &*(data as *const EventClosure),
                &*state,
                &mut *gpr,
                &mut *fpr,
            )
        };
        // SAFETY: `vm` is this call's handle.
        let mut vm = unsafe { VmRef::from_raw(vm) };
        cb(&mut vm, state, gpr, fpr) as RawAction
    })
}

extern "C" fn event_drop(data: *mut c_void) {
    // SAFETY: as in inst_drop, for an EventClosure.
    drop(unsafe { Box::from_raw(data as *mut EventClosure) });
}

extern "C" fn rule_call(
    data: *mut c_void,
    vm: *const RawVm,
    analysis: *const RawInstAnalysis,
    sink: *mut c_void,
) -> RawAction {
    guard(vm, "", || {
        // SAFETY: as in inst_call, for a RuleClosure.
        let rule = unsafe { &*(data as *const RuleClosure) };
        // SAFETY: the host's record is valid during the call.
        let analysis = unsafe { convert::inst_analysis(&*analysis) };
        // SAFETY: `vm` is this call's handle.
        let mut vm = unsafe { VmRef::from_raw(vm) };
        let produced = rule(&mut vm, &analysis);
        push_rule_callbacks(vm.api(), sink, produced);
        VmAction::Continue as RawAction
    })
}

extern "C" fn rule_drop(data: *mut c_void) {
    // SAFETY: as in inst_drop, for a RuleClosure.
    drop(unsafe { Box::from_raw(data as *mut RuleClosure) });
}

/// Hands what a rule produced to the host (through `sink`, the host's collector).
pub(crate) fn push_rule_callbacks(
    api: &HostApi,
    sink: *mut c_void,
    produced: Vec<InstrRuleCallback>,
) {
    for cb in produced {
        let data = Box::into_raw(Box::new(cb.callback)) as *mut c_void;
        (api.rule_push)(
            sink,
            pos_raw(cb.position),
            cb.priority,
            data,
            inst_call,
            inst_drop,
        );
    }
}

/// Runs an attribute-registered function with a `VmRef` for `vm` (inlined: unused, it is
/// never built).
#[inline(always)]
pub(crate) fn with_vm<R>(vm: *const RawVm, f: impl FnOnce(&mut VmRef<'_>) -> R) -> R {
    // SAFETY: `vm` is the handle of the call the trampoline is in.
    let mut r = unsafe { VmRef::from_raw(vm) };
    f(&mut r)
}

/// Forks seen in this process (a `fork` child's ids are its own): counted from a
/// `pthread_atfork` child handler registered at the first use.
fn fork_generation() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static FORKS: AtomicU32 = AtomicU32::new(0);
    static WATCH: std::sync::Once = std::sync::Once::new();
    unsafe extern "C" {
        fn pthread_atfork(
            prepare: Option<extern "C" fn()>,
            parent: Option<extern "C" fn()>,
            child: Option<extern "C" fn()>,
        ) -> i32;
    }
    extern "C" fn forked() {
        FORKS.fetch_add(1, Relaxed);
    }
    WATCH.call_once(|| {
        // SAFETY: registers a plain extern "C" child handler.
        unsafe { pthread_atfork(None, None, Some(forked)) };
    });
    FORKS.load(Relaxed)
}

/// A system call without arguments that cannot fail (`gettid`, `getpid`).
fn id_syscall(number: u64) -> u32 {
    let id: u64;
    // SAFETY: gettid (186) and getpid (39) take no arguments and have no side effects.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number => id,
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    id as u32
}

/// The calling thread's kernel id, cached per thread (no destructor: see the SDK's notes on
/// thread-locals) and per process.
fn thread_id() -> u32 {
    thread_local! {
        static TID: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
    }
    let forks = fork_generation();
    TID.with(|t| {
        let (tid, seen) = t.get();
        if tid != 0 && seen == forks {
            return tid;
        }
        let tid = id_syscall(186);
        t.set((tid, forks));
        tid
    })
}

/// The process id, cached per process.
fn process_id() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static PID: AtomicU64 = AtomicU64::new(0);
    let forks = fork_generation();
    let cached = PID.load(Relaxed);
    if cached != 0 && (cached >> 32) as u32 == forks {
        return cached as u32;
    }
    let pid = id_syscall(39);
    PID.store(u64::from(forks) << 32 | u64::from(pid), Relaxed);
    pid
}
