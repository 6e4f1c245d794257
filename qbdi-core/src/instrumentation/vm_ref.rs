//! `VmRef`: what a callback gets instead of the `Vm`. It can change the instrumentation
//! (callbacks, ranges, cache) and analyse the current instruction, but cannot `run`, `call`,
//! change options or precache: the borrow checker enforces what QBDI only documents.
//! Changes take effect when the guest next returns to the dispatcher (return
//! `VmAction::BreakToVm` to force it).

use crate::analysis::{AnalysisType, InstAnalysis, analyze};
use crate::callback::{CallbackId, InstPosition, VmAction, VmEvent, VmState};
use crate::error::VmError;
use crate::instrumentation::{Filter, Instrumentation, SiteKind, mnemonic_filter};
use crate::memory_access::{MemoryAccess, MemoryAccessType, MemoryRecorder};
use crate::options::Options;
use crate::state::{FprState, GprState, Rword};
use std::collections::HashMap;

/// The Vm as seen from inside a callback.
///
/// `#[repr(C)]` with the current instruction's accesses first: a callback called directly
/// from translated code (instrumentation/direct.rs) may read them, and only them, through
/// a `VmRef` the site builds in the context.
#[repr(C)]
pub struct VmRef<'a> {
    /// What `inst_memory_access` returns, filled before the site's callbacks run.
    pub(crate) view: &'a [MemoryAccess],
    pub(crate) inst: &'a mut Instrumentation,
    pub(crate) analyses: &'a mut AnalysisCache,
    pub(crate) memory: &'a mut MemoryRecorder,
    /// The recorded (address, value) slots of the running block.
    pub(crate) slots: &'a [[u64; 2]],
    /// The site the callback runs for (NO_SITE for dispatcher events and rules).
    pub(crate) site: u32,
    /// Address of the instruction the callback runs for (0 outside instructions).
    pub(crate) current: Rword,
}

/// `VmRef::site` when the callback runs for no site.
pub(crate) const NO_SITE: u32 = u32::MAX;

/// Analyses computed so far, by address (dropped when the cache is cleared).
#[derive(Default)]
pub(crate) struct AnalysisCache {
    map: HashMap<Rword, InstAnalysis>,
}

impl AnalysisCache {
    /// The analysis of the instruction at `addr` with at least `what`, computing it if
    /// needed. The caller guarantees `addr` holds a decodable instruction in readable memory.
    pub(crate) fn get(
        &mut self,
        addr: Rword,
        what: AnalysisType,
        options: Options,
    ) -> Option<&InstAnalysis> {
        let have = self.map.get(&addr).map(|a| a.analysis_type);
        if have.is_none_or(|t| !t.contains(what)) {
            let all = what | have.unwrap_or(AnalysisType::empty());
            // SAFETY: per the caller, 15 bytes (the longest instruction) from addr are
            // readable code (the engine translated or is running it).
            let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, 15) };
            let a = analyze(bytes, addr, all, options.contains(Options::OPT_ATT_SYNTAX))?;
            self.map.insert(addr, a);
        }
        self.map.get(&addr)
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }
}

macro_rules! instrumentation_methods {
    () => {
        /// Adds a callback on every instrumented instruction.
        pub fn add_code_cb(
            &mut self,
            position: InstPosition,
            cb: impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static,
            priority: i32,
        ) -> Result<CallbackId, VmError> {
            let id = self.inst_mut().add_inst(Filter::All, position, crate::instrumentation::direct::inst_callback(cb), priority);
            self.changed();
            Ok(id)
        }

        /// Adds a callback on the instruction at `addr`.
        pub fn add_code_addr_cb(
            &mut self,
            addr: Rword,
            position: InstPosition,
            cb: impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static,
            priority: i32,
        ) -> Result<CallbackId, VmError> {
            let id = self.inst_mut().add_inst(Filter::Addr(addr), position, crate::instrumentation::direct::inst_callback(cb), priority);
            self.changed();
            Ok(id)
        }

        /// Adds a callback on the instructions in `[start, end)`.
        pub fn add_code_range_cb(
            &mut self,
            start: Rword,
            end: Rword,
            position: InstPosition,
            cb: impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static,
            priority: i32,
        ) -> Result<CallbackId, VmError> {
            if end <= start {
                return Err(VmError::InvalidRange { start, end });
            }
            let filter = Filter::Range(crate::range::Range::new(start, end));
            let id = self.inst_mut().add_inst(filter, position, crate::instrumentation::direct::inst_callback(cb), priority);
            self.changed();
            Ok(id)
        }

        /// Adds a callback on the instructions whose mnemonic matches `pattern`, a
        /// case-insensitive glob over iced-x86's mnemonic names (`"CALL"`, `"MOV*"`, `"J*"`).
        /// A pattern that matches no mnemonic is an error.
        pub fn add_mnemonic_cb(
            &mut self,
            pattern: &str,
            position: InstPosition,
            cb: impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static,
            priority: i32,
        ) -> Result<CallbackId, VmError> {
            let filter = mnemonic_filter(pattern)?;
            let id = self.inst_mut().add_inst(filter, position, crate::instrumentation::direct::inst_callback(cb), priority);
            self.changed();
            Ok(id)
        }

        /// Adds a callback on VM events (any combination of [`VmEvent`] flags).
        pub fn add_vm_event_cb(
            &mut self,
            events: VmEvent,
            cb: impl FnMut(&mut VmRef<'_>, &VmState, &mut GprState, &mut FprState) -> VmAction + 'static,
        ) -> Result<CallbackId, VmError> {
            let id = self.inst_mut().add_event(events, crate::instrumentation::direct::event_callback(cb))?;
            self.changed();
            Ok(id)
        }

        /// Records the memory accesses of every instrumented instruction (inline, no
        /// callback): read them with `inst_memory_access` / `bb_memory_access`.
        pub fn record_memory_access(&mut self, access: MemoryAccessType) -> Result<(), VmError> {
            if access.is_empty() {
                return Err(VmError::InvalidArgument(
                    "record_memory_access needs READ, WRITE or READ_WRITE".into(),
                ));
            }
            let m = self.memory_mut();
            if !m.recorded.contains(access) {
                m.recorded |= access;
                m.reserve();
                self.inst_mut().clear_all_cache();
                self.changed();
            }
            Ok(())
        }

        /// Adds a callback on instructions that access memory as `access` says: PreInst for
        /// reads, PostInst for writes (and for instructions that do both). Records the
        /// accesses, so the callback can read them with `inst_memory_access`.
        pub fn add_mem_access_cb(
            &mut self,
            access: MemoryAccessType,
            cb: impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static,
            priority: i32,
        ) -> Result<CallbackId, VmError> {
            self.record_memory_access(access)?;
            let filter = Filter::MemAccess(access, None);
            let id = self.inst_mut().add_inst(filter, InstPosition::PreInst, crate::instrumentation::direct::inst_callback(cb), priority);
            self.changed();
            Ok(id)
        }

        /// Adds a callback on accesses (as `access` says) touching the byte at `addr`.
        pub fn add_mem_addr_cb(
            &mut self,
            addr: Rword,
            access: MemoryAccessType,
            cb: impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static,
        ) -> Result<CallbackId, VmError> {
            self.add_mem_range_cb(addr, addr.saturating_add(1), access, cb)
        }

        /// Adds a callback on accesses (as `access` says) overlapping `[start, end)`. Every
        /// memory instruction then checks its accesses at run time: costly, as in QBDI.
        pub fn add_mem_range_cb(
            &mut self,
            start: Rword,
            end: Rword,
            access: MemoryAccessType,
            cb: impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static,
        ) -> Result<CallbackId, VmError> {
            if end <= start {
                return Err(VmError::InvalidRange { start, end });
            }
            self.record_memory_access(access)?;
            let filter = Filter::MemAccess(access, Some(crate::range::Range::new(start, end)));
            let id = self.inst_mut().add_inst(filter, InstPosition::PreInst, crate::instrumentation::direct::inst_callback(cb), crate::callback::PRIORITY_DEFAULT);
            self.changed();
            Ok(id)
        }

        /// Adds an instrumentation rule: at translation, `rule` gets the analysis (of the
        /// kinds in `analysis`) of every instrumented instruction and returns the callbacks
        /// to attach to it. It may be asked again for the same instruction (after a cache
        /// flush) and must then answer the same.
        pub fn add_instr_rule(
            &mut self,
            rule: impl FnMut(&mut VmRef<'_>, &InstAnalysis) -> Vec<crate::instrumentation::callbacks::InstrRuleCallback> + 'static,
            analysis: AnalysisType,
        ) -> Result<CallbackId, VmError> {
            let id = self.inst_mut().add_rule(None, analysis, Box::new(rule));
            self.changed();
            Ok(id)
        }

        /// Adds an instrumentation rule for the instructions in `[start, end)` only.
        pub fn add_instr_rule_range(
            &mut self,
            start: Rword,
            end: Rword,
            rule: impl FnMut(&mut VmRef<'_>, &InstAnalysis) -> Vec<crate::instrumentation::callbacks::InstrRuleCallback> + 'static,
            analysis: AnalysisType,
        ) -> Result<CallbackId, VmError> {
            if end <= start {
                return Err(VmError::InvalidRange { start, end });
            }
            let range = crate::range::Range::new(start, end);
            let id = self.inst_mut().add_rule(Some(range), analysis, Box::new(rule));
            self.changed();
            Ok(id)
        }

        /// Lets translated code call callback `id` (an instruction, memory access or VM event
        /// callback) through the compiled entry `func`, without the general save of the
        /// guest state, when `func` is simple enough: a leaf of integer code that does not
        /// read its `vm` or `fpr` argument (see [`direct_call_refusal`](crate::direct_call_refusal)).
        /// Returns `None` if it is, or why it is not (the callback keeps its general path; the
        /// reason's text names the instruction in question, disassembled when displayed).
        /// The plugin host gives every plugin callback the trampoline the SDK generated.
        ///
        /// # Safety
        /// `func` must follow the convention `abi` and behave as the callback `id` does when
        /// called with the same `GprState` (and `VmState`): same effects, same action. It
        /// must stay mapped and unchanged for as long as the callback exists.
        pub unsafe fn set_direct_entry(
            &mut self,
            id: CallbackId,
            func: *const (),
            abi: crate::EntryAbi,
        ) -> Result<Option<crate::DirectRefusal>, VmError> {
            let refusal = self.inst_mut().set_direct_entry(id, func as u64, abi)?;
            self.changed();
            Ok(refusal)
        }

        /// Whether sites whose direct callbacks are all simple enough copy their code into
        /// translated code instead of calling it (on by default): straight-line code that
        /// reads none of its arguments, does not touch the stack and returns `Continue`,
        /// such as a `fetch_add` on a static counter (DynamoRIO's clean-call inlining; see
        /// `docs/architecture.md`). Turning it off (to compare) flushes the cache, so that
        /// code translated from then on calls them.
        pub fn set_call_inlining(&mut self, enabled: bool) {
            let inst = self.inst_mut();
            if inst.inline_calls != enabled {
                inst.inline_calls = enabled;
                inst.schedule_flush(None);
                self.changed();
            }
        }

        /// Counts the executions of every instrumented basic block inline: translated code
        /// adds one to a `u64` at each entry of the block, with no callback. `slot` is asked
        /// once per translation of a block, with its extent `[start, end)`, for the
        /// counter's address (null: this block is not counted). Blocks translated again
        /// (after a cache flush) ask again; give the same counter for the same extent to
        /// keep counting. The increment is not atomic (an atomic one costs 10-20 cycles):
        /// give each Vm counters of its own (other threads' Vms included) and add them up
        /// when reading. Returns an id for `delete_instrumentation`.
        ///
        /// # Safety
        /// Every non-null address `slot` returns must be valid for reads and writes of a
        /// `u64` (8-aligned) for as long as the Vm exists, written by nothing else while the
        /// Vm runs (reading it, even from another thread, may see an older count).
        pub unsafe fn add_block_counter(
            &mut self,
            mut slot: impl FnMut(Rword, Rword) -> *mut u64 + 'static,
        ) -> Result<CallbackId, VmError> {
            let max = crate::engine::inline::MAX_INLINE_COUNTERS;
            if self.inst_ref().inline_counters() >= max {
                return Err(VmError::InvalidArgument(format!(
                    "a Vm carries at most {max} block counters"
                )));
            }
            let slot = move |start, end| slot(start, end) as u64;
            let id = self
                .inst_mut()
                .add_inline(crate::instrumentation::Inline::Counter(Box::new(slot)));
            self.changed();
            Ok(id)
        }

        /// AFL-style edge coverage, inline: at each block entry translated code does
        /// `map[prev ^ cur] += 1; prev = cur >> 1`, where `cur = hash(block start) & (size
        /// - 1)` (computed once, at translation; [`afl_block_hash`](crate::afl_block_hash)
        /// is AFL's QEMU mode's) and `prev` is kept per thread (shared by the Vms that run on
        /// it, as AFL's thread-local), starting at 0; at most 8 edge maps per Vm.
        /// With `never_zero`, a counter that wraps goes from 255 to 1 (AFL++'s NeverZero).
        /// `size` is a power of two up to 2^30. Returns an id for `delete_instrumentation`.
        ///
        /// # Safety
        /// `map` must be valid for reads and writes of `size` bytes for as long as the Vm
        /// exists, and not otherwise accessed but atomically or by this engine.
        pub unsafe fn add_edge_map(
            &mut self,
            map: *mut u8,
            size: usize,
            hash: impl Fn(Rword) -> u64 + 'static,
            never_zero: bool,
        ) -> Result<CallbackId, VmError> {
            if !size.is_power_of_two() || size > crate::engine::inline::MAX_EDGE_MAP || map.is_null() {
                return Err(VmError::InvalidArgument(format!(
                    "an edge map is a non-null power-of-two number of bytes up to 2^30 \
                     (got {size} bytes at {map:p})"
                )));
            }
            let Some(index) = self.inst_mut().next_edge_index() else {
                return Err(VmError::InvalidArgument(format!(
                    "a Vm carries at most {} edge maps",
                    crate::engine::inline::MAX_EDGE_MAPS
                )));
            };
            let id = self.inst_mut().add_inline(crate::instrumentation::Inline::Edges {
                map: map as u64,
                mask: size as u64 - 1,
                hash: Box::new(hash),
                index,
                never_zero,
            });
            self.changed();
            Ok(id)
        }

        /// Removes one callback.
        pub fn delete_instrumentation(&mut self, id: CallbackId) -> Result<(), VmError> {
            self.inst_mut().delete(id)?;
            self.changed();
            Ok(())
        }

        /// Removes every callback.
        pub fn delete_all_instrumentations(&mut self) {
            self.inst_mut().delete_all();
            self.changed();
        }

        /// Instruments `[start, end)`.
        pub fn add_instrumented_range(&mut self, start: Rword, end: Rword) -> Result<(), VmError> {
            self.inst_mut().add_range(start, end)?;
            self.changed();
            Ok(())
        }

        /// Instruments every executable mapping of the module `name` (basename or full path).
        pub fn add_instrumented_module(&mut self, name: &str) -> Result<(), VmError> {
            self.inst_mut().add_module(name)?;
            self.changed();
            Ok(())
        }

        /// Instruments the module (or anonymous executable mapping) containing `addr`.
        pub fn add_instrumented_module_from_addr(&mut self, addr: Rword) -> Result<(), VmError> {
            self.inst_mut().add_module_from_addr(addr)?;
            self.changed();
            Ok(())
        }

        /// Instruments every executable mapping of the process.
        pub fn instrument_all_executable_maps(&mut self) -> Result<(), VmError> {
            self.inst_mut().add_all_executable_maps();
            self.changed();
            Ok(())
        }

        /// Stops instrumenting `[start, end)`.
        pub fn remove_instrumented_range(&mut self, start: Rword, end: Rword) -> Result<(), VmError> {
            self.inst_mut().remove_range(start, end)?;
            self.changed();
            Ok(())
        }

        /// Stops instrumenting the module `name`.
        pub fn remove_instrumented_module(&mut self, name: &str) -> Result<(), VmError> {
            self.inst_mut().remove_module(name)?;
            self.changed();
            Ok(())
        }

        /// Stops instrumenting the module (or anonymous mapping) containing `addr`.
        pub fn remove_instrumented_module_from_addr(&mut self, addr: Rword) -> Result<(), VmError> {
            self.inst_mut().remove_module_from_addr(addr)?;
            self.changed();
            Ok(())
        }

        /// Stops instrumenting anything.
        pub fn remove_all_instrumented_ranges(&mut self) {
            self.inst_mut().remove_all_ranges();
            self.changed();
        }

        /// Drops the translations of code in `[start, end)` (after the guest changed its
        /// code). From a callback, this happens once the running block has left.
        pub fn clear_cache(&mut self, start: Rword, end: Rword) {
            self.inst_mut().clear_cache(start, end);
            self.changed();
        }

        /// Drops every translation (deferred from a callback, as `clear_cache`).
        pub fn clear_all_cache(&mut self) {
            self.inst_mut().clear_all_cache();
            self.changed();
        }

        /// The instrumented ranges.
        #[must_use]
        pub fn instrumented_ranges(&self) -> &crate::range::RangeSet {
            &self.inst_ref().ranges
        }
    };
}
pub(crate) use instrumentation_methods;

impl VmRef<'_> {
    fn inst_mut(&mut self) -> &mut Instrumentation {
        self.inst
    }

    fn memory_mut(&mut self) -> &mut MemoryRecorder {
        self.memory
    }

    /// The memory accesses of the current instruction: in PreInst its reads, in PostInst
    /// its reads and writes (empty unless recording is on for them).
    #[inline]
    pub fn inst_memory_access(&mut self) -> &[MemoryAccess] {
        self.view
    }

    /// The memory accesses of the current basic block so far (the whole block at
    /// SEQUENCE_EXIT / BASIC_BLOCK_EXIT).
    pub fn bb_memory_access(&mut self) -> &[MemoryAccess] {
        let Some(&s) = self.inst.sites.get(self.site as usize) else {
            return &[];
        };
        let pre = (s.kind == SiteKind::Inst(InstPosition::PreInst)).then_some(s.inst_addr);
        self.memory
            .collect(s.bb_mem_first, s.bb_mem_len, self.slots, pre)
    }

    fn inst_ref(&self) -> &Instrumentation {
        self.inst
    }

    /// Changes from a callback wait for the dispatcher.
    fn changed(&mut self) {}

    instrumentation_methods!();

    /// The kernel's id of the thread the callback runs on (`gettid`). Under the `qbdi`
    /// host every thread of the program runs on a Vm of its own (see [`crate::threads`]).
    #[must_use]
    pub fn thread_id(&self) -> u32 {
        crate::threads::current_thread_id()
    }

    /// The address of the instruction the callback runs for (`None` in VM event callbacks
    /// that are not attached to one instruction).
    pub fn current_address(&self) -> Option<Rword> {
        (self.current != 0).then_some(self.current)
    }

    /// The analysis of the instruction the callback runs for.
    ///
    /// # Panics
    /// In a callback not attached to an instruction (a VM event other than
    /// SYSCALL_ENTRY/EXIT): use [`cached_inst_analysis`](Self::cached_inst_analysis) with
    /// an address instead.
    pub fn inst_analysis(&mut self, analysis: AnalysisType) -> &InstAnalysis {
        assert!(
            self.current != 0,
            "inst_analysis() is for instruction callbacks; use cached_inst_analysis(address, ..)"
        );
        let options = self.inst.options;
        self.analyses
            .get(self.current, analysis, options)
            .expect("the engine translated this instruction")
    }

    /// The analysis of a translated instruction at `addr`, if the cache holds one there.
    pub fn cached_inst_analysis(
        &mut self,
        addr: Rword,
        analysis: AnalysisType,
    ) -> Option<&InstAnalysis> {
        if !self.inst.ranges.contains(addr) && addr != self.current {
            return None;
        }
        let options = self.inst.options;
        self.analyses.get(addr, analysis, options)
    }
}
