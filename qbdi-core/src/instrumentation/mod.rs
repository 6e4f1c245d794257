//! What is instrumented and how: the ranges, the registered callbacks, and the callback
//! sites the translator planted in the code cache. `Vm` and `VmRef` (inside callbacks) edit
//! it through the same methods; the engine reads it when translating and when a site runs.
//!
//! A change that affects translated code (a new callback, a removed range) is recorded as a
//! pending flush. `Vm` applies it at once; from inside a callback it applies when the guest
//! next returns to the dispatcher (`VmAction::BreakToVm`, or any cache exit), never while a
//! block is running.

use crate::analysis::{AnalysisType, InstAnalysis};
use crate::callback::{CallbackId, InstPosition, VmEvent, VmState};
use crate::error::VmError;
use crate::maps::{Permission, current_process_maps, map_is_module};
use crate::memory_access::MemoryAccessType;
use crate::memory_access::MemoryRecorder;
use crate::options::Options;
use crate::range::{Range, RangeSet};
use crate::state::Rword;
use callbacks::{InstCallback, InstrRuleCallback, VmCallback};
use direct::DirectCall;
use iced_x86::Instruction;
use vm_ref::{AnalysisCache, VmRef};

pub(crate) mod callbacks;
pub(crate) mod direct;
pub(crate) mod shared;
pub(crate) mod vm_ref;

/// Events whose callbacks run inline, planted in translated code.
pub(crate) const INLINE_EVENTS: VmEvent = VmEvent::SEQUENCE_ENTRY
    .union(VmEvent::SEQUENCE_EXIT)
    .union(VmEvent::BASIC_BLOCK_ENTRY)
    .union(VmEvent::BASIC_BLOCK_EXIT)
    .union(VmEvent::SYSCALL_ENTRY)
    .union(VmEvent::SYSCALL_EXIT);
pub(crate) const ENTRY_EVENTS: VmEvent = VmEvent::SEQUENCE_ENTRY.union(VmEvent::BASIC_BLOCK_ENTRY);
pub(crate) const EXIT_EVENTS: VmEvent = VmEvent::SEQUENCE_EXIT.union(VmEvent::BASIC_BLOCK_EXIT);
pub(crate) const TRANSFER_EVENTS: VmEvent =
    VmEvent::EXEC_TRANSFER_CALL.union(VmEvent::EXEC_TRANSFER_RETURN);

/// Which instructions an instruction callback applies to.
pub(crate) enum Filter {
    All,
    Addr(Rword),
    Range(Range),
    /// One bit per iced `Mnemonic` value.
    Mnemonic(Box<[u64]>),
    /// Instructions that access memory this way: PreInst for reads, PostInst for writes
    /// (an instruction that does both: PostInst). With a range: only when an access of the
    /// running instruction overlaps it (checked at run time).
    MemAccess(MemoryAccessType, Option<Range>),
}

impl Filter {
    fn matches(&self, instr: &Instruction, position: InstPosition, access: (bool, bool)) -> bool {
        match self {
            Filter::MemAccess(t, _) => {
                let (reads, writes) = access;
                let reads = reads && t.contains(MemoryAccessType::READ);
                let writes = writes && t.contains(MemoryAccessType::WRITE);
                match position {
                    InstPosition::PreInst => reads && !writes,
                    InstPosition::PostInst => writes,
                }
            }
            Filter::All => true,
            Filter::Addr(a) => instr.ip() == *a,
            Filter::Range(r) => r.contains(instr.ip()),
            Filter::Mnemonic(bits) => {
                let m = instr.mnemonic() as usize;
                bits.get(m / 64).is_some_and(|w| w & (1 << (m % 64)) != 0)
            }
        }
    }

    /// The guest code whose translation this filter changes.
    fn affected(&self) -> Option<Range> {
        match self {
            Filter::Addr(a) => Some(Range::new(*a, a.saturating_add(1))),
            Filter::Range(r) => Some(*r),
            _ => None,
        }
    }
}

/// An instrumentation rule: asked at translation which callbacks an instruction gets.
pub(crate) type RuleCallback =
    Box<dyn FnMut(&mut VmRef<'_>, &InstAnalysis) -> Vec<InstrRuleCallback>>;

pub(crate) enum Entry {
    Inst {
        filter: Filter,
        position: InstPosition,
        priority: i32,
        cb: Option<InstCallback>,
        direct: Option<DirectCall>,
    },
    Event {
        events: VmEvent,
        cb: Option<VmCallback>,
        direct: Option<DirectCall>,
    },
    Rule {
        range: Option<Range>,
        analysis: AnalysisType,
        rule: Option<RuleCallback>,
    },
    /// Inline instrumentation planted at every block entry (engine/inline.rs).
    Inline(Inline),
}

/// Work translated code does itself at each block entry, without a callback.
pub(crate) enum Inline {
    /// Adds one to the `u64` at the address the closure gives for the block `[start, end)`
    /// (asked once per translation; 0: not counted).
    Counter(Box<dyn FnMut(Rword, Rword) -> u64>),
    /// An AFL-style edge map: `map[prev ^ cur] += 1; prev = cur >> 1`, with
    /// `cur = hash(block start) & mask`.
    Edges {
        map: u64,
        mask: u64,
        hash: Box<dyn Fn(Rword) -> u64>,
        /// Which of the thread's `prev` words it uses (engine/inline.rs).
        index: u32,
        /// Counters skip 0 when they wrap (AFL++'s NeverZero).
        never_zero: bool,
    },
}

/// Most callbacks one site calls directly, one after the other.
pub(crate) const MAX_DIRECT_CHAIN: usize = 4;

/// Ids of callbacks produced by rules carry this bit (index into `produced`).
const PRODUCED: u32 = 1 << 31;

/// A callback a rule attached to one translated instruction.
struct Produced {
    /// The rule that made it (deleting the rule deletes it).
    rule: u32,
    cb: Option<InstCallback>,
}

/// What kind of point a site is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SiteKind {
    Inst(InstPosition),
    /// VM events; for a block entry site, whether BASIC_BLOCK_NEW is still to be reported.
    Events(VmEvent),
}

/// A callback site planted in translated code.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Site {
    pub kind: SiteKind,
    /// The guest instruction it belongs to (entry sites: the block start).
    pub inst_addr: Rword,
    /// The guest basic block, whole (QBDI's: up to its control-flow instruction).
    pub block_start: Rword,
    pub block_end: Rword,
    /// The piece of it this translation holds (the whole block unless the block's host code
    /// had to be split: a "sequence").
    pub seq_start: Rword,
    pub seq_end: Rword,
    /// Host addresses to resume at after SkipInst and SkipPatch (Continue returns to the
    /// site itself).
    pub skip_inst: u64,
    pub skip_patch: u64,
    /// Its callbacks, in call order: `site_cbs[first..first+len]`.
    pub first: u32,
    pub len: u32,
    /// (Entry sites) report BASIC_BLOCK_NEW at the next run of this site.
    pub new_pending: bool,
    /// Memory access descriptors: the instruction's, and the block's up to the end of
    /// this instruction (the whole block for exit sites).
    pub mem_first: u32,
    pub mem_len: u32,
    pub bb_mem_first: u32,
    pub bb_mem_len: u32,
    /// How many of the site's callbacks translated code calls directly, one after the
    /// other (engine/direct_call.rs): all of them (each with an eligible entry), or 0.
    pub direct: u8,
    /// Non-zero while those callbacks exist: a direct site reads it before each call (a
    /// callback may be deleted while translated code still names it).
    pub direct_live: u8,
    /// (Sites whose calls are inlined, once translated) where the copies start and where
    /// the site's general path is, in the cache: a deletion makes the first a jump to the
    /// second ([`unlink_inlined`]).
    pub inline_at: u64,
    pub inline_general: u64,
    /// (Event sites with a direct call) the VmState the callback sees.
    pub state: VmState,
}

/// Makes an inlined site's code (`Site::inline_at`) jump to its general path instead, once
/// one of its callbacks is deleted: the copies have no live byte to check (see
/// `engine::direct_call::emit_inline_site`). The general path then sees the callback gone.
fn unlink_inlined(s: &mut Site) {
    if s.inline_at == 0 {
        return;
    }
    let rel = s.inline_general.wrapping_sub(s.inline_at + 5) as i64;
    let rel = i32::try_from(rel).expect("a site's general path is in its block");
    let mut jmp = [0xe9, 0, 0, 0, 0];
    jmp[1..].copy_from_slice(&rel.to_le_bytes());
    // SAFETY: `inline_at` is the start of the inlined copies of a translated block of this
    // Vm's cache, which is mapped read-write-execute until the cache is reset, and a reset
    // forgets the sites (`reset_sites`). The sequence is at least 5 bytes long and only
    // entered at its start, and no code of this cache runs while the instrumentation is
    // changed (from a callback, the guest is in the callback routine; otherwise it is not
    // running): the processor sees the write as self-modifying code at the next entry.
    unsafe { std::ptr::copy_nonoverlapping(jmp.as_ptr(), s.inline_at as *mut u8, 5) };
    s.inline_at = 0;
}

/// Most sites and callback references the table holds before the cache is reset.
const MAX_SITES: usize = 1 << 19;
const MAX_SITE_CBS: usize = 1 << 21;

/// Cache invalidation waiting for the dispatcher.
#[derive(Default)]
pub(crate) struct PendingFlush {
    pub all: bool,
    pub ranges: Vec<Range>,
}

pub(crate) struct Instrumentation {
    pub ranges: RangeSet,
    pub options: Options,
    /// Registered callbacks; `CallbackId` = index. Deleted entries are None.
    entries: Vec<Option<Entry>>,
    pub sites: Vec<Site>,
    pub site_cbs: Vec<u32>,
    pub flush: PendingFlush,
    /// Union of the events of the registered event callbacks.
    pub events: VmEvent,
    /// A panic caught in a callback, to resume once the guest is out of the cache.
    pub panic: Option<Box<dyn std::any::Any + Send>>,
    scratch: Vec<(i32, u32)>,
    /// Callbacks produced by rules for translated instructions (dropped with the sites).
    produced: Vec<Produced>,
    /// What the rules returned for the instruction being translated: (position, priority,
    /// produced id).
    rule_output: Vec<(InstPosition, i32, u32)>,
    /// Where inline counters without a slot for a block count.
    sink: Box<u64>,
    /// Edge maps registered so far (the next one's `prev` index).
    edge_maps: u32,
    /// Sites whose direct calls can all be inlined are (`Vm::set_call_inlining`).
    pub inline_calls: bool,
}

impl Instrumentation {
    pub fn new(options: Options) -> Instrumentation {
        Instrumentation {
            ranges: RangeSet::new(),
            options,
            entries: Vec::new(),
            sites: Vec::new(),
            site_cbs: Vec::new(),
            flush: PendingFlush::default(),
            events: VmEvent::empty(),
            panic: None,
            scratch: Vec::new(),
            produced: Vec::new(),
            rule_output: Vec::new(),
            sink: Box::new(0),
            edge_maps: 0,
            inline_calls: true,
        }
    }

    /// Whether translation has sites to plant (instruction or inline event callbacks, or
    /// inline instrumentation).
    pub fn has_sites(&self) -> bool {
        self.entries.iter().flatten().any(|e| match e {
            Entry::Inst { .. } | Entry::Rule { .. } | Entry::Inline(_) => true,
            Entry::Event { events, .. } => events.intersects(INLINE_EVENTS),
        })
    }

    /// Whether instruction rules are registered (their callbacks are decided per
    /// instruction when a block is translated).
    pub fn has_rules(&self) -> bool {
        self.entries
            .iter()
            .flatten()
            .any(|e| matches!(e, Entry::Rule { .. }))
    }

    /// Registers inline instrumentation (applies to blocks translated from now on).
    pub fn add_inline(&mut self, inline: Inline) -> CallbackId {
        self.schedule_flush(None);
        self.push_entry(Entry::Inline(inline))
    }

    /// How many inline counters are registered.
    pub fn inline_counters(&self) -> usize {
        self.inline()
            .filter(|(_, i)| matches!(i, Inline::Counter(_)))
            .count()
    }

    /// The `prev` index of the next edge map, if there is one left.
    pub fn next_edge_index(&mut self) -> Option<u32> {
        let i = self.edge_maps;
        if i as usize >= crate::engine::inline::MAX_EDGE_MAPS {
            return None;
        }
        self.edge_maps += 1;
        Some(i)
    }

    /// The inline instrumentation, in registration order, with its id.
    /// The `prev` word indices the edge maps use, a bit each.
    pub fn edge_words(&self) -> u8 {
        self.inline().fold(0, |w, (_, i)| match i {
            Inline::Edges { index, .. } => w | 1 << index,
            Inline::Counter(_) => w,
        })
    }

    pub fn inline(&self) -> impl Iterator<Item = (u32, &Inline)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(id, e)| match e {
                Some(Entry::Inline(i)) => Some((id as u32, i)),
                _ => None,
            })
    }

    /// The counter address inline counter `id` uses for the block `[start, end)`; a sink
    /// that nobody reads if the counter's closure gives none.
    pub fn counter_slot(&mut self, id: u32, start: Rword, end: Rword) -> u64 {
        let slot = match self.entries.get_mut(id as usize) {
            Some(Some(Entry::Inline(Inline::Counter(slot)))) => slot(start, end),
            _ => 0,
        };
        if slot == 0 {
            &raw mut *self.sink as u64
        } else {
            slot
        }
    }

    pub fn add_rule(
        &mut self,
        range: Option<Range>,
        analysis: AnalysisType,
        rule: RuleCallback,
    ) -> CallbackId {
        self.schedule_flush(range);
        self.push_entry(Entry::Rule {
            range,
            analysis,
            rule: Some(rule),
        })
    }

    /// Asks every rule that covers `instr` for its callbacks (kept for `plan_inst_site`).
    pub fn run_rules(
        &mut self,
        instr: &Instruction,
        analyses: &mut AnalysisCache,
        memory: &mut MemoryRecorder,
    ) {
        self.rule_output.clear();
        for id in 0..self.entries.len() {
            let Some(Entry::Rule {
                range,
                analysis,
                rule,
            }) = &mut self.entries[id]
            else {
                continue;
            };
            if range.is_some_and(|r| !r.contains(instr.ip())) {
                continue;
            }
            let analysis = *analysis;
            let Some(mut rule) = rule.take() else {
                continue;
            };
            let inst_analysis = analyses.get(instr.ip(), analysis, self.options).cloned();
            let produced = match &inst_analysis {
                Some(a) => {
                    let mut vm = VmRef {
                        view: &[],
                        inst: self,
                        analyses,
                        memory,
                        slots: &[],
                        site: vm_ref::NO_SITE,
                        current: instr.ip(),
                    };
                    rule(&mut vm, a)
                }
                None => Vec::new(),
            };
            if let Some(Entry::Rule { rule: slot, .. }) = &mut self.entries[id] {
                *slot = Some(rule);
            }
            for p in produced {
                self.produced.push(Produced {
                    rule: id as u32,
                    cb: Some(p.callback),
                });
                let pid = PRODUCED | (self.produced.len() - 1) as u32;
                self.rule_output.push((p.position, p.priority, pid));
            }
        }
    }

    pub(crate) fn schedule_flush(&mut self, affected: Option<Range>) {
        match affected {
            Some(r) if !self.flush.all => self.flush.ranges.push(r),
            _ => {
                self.flush.all = true;
                self.flush.ranges.clear();
            }
        }
    }

    fn push_entry(&mut self, entry: Entry) -> CallbackId {
        if self.sites.capacity() == 0 {
            // Reserved once, so translation never allocates (see engine/directory.rs).
            self.sites.reserve_exact(MAX_SITES);
            self.site_cbs.reserve_exact(MAX_SITE_CBS);
            self.scratch.reserve_exact(1024);
        }
        self.entries.push(Some(entry));
        (self.entries.len() - 1) as CallbackId
    }

    pub fn add_inst(
        &mut self,
        filter: Filter,
        position: InstPosition,
        (cb, direct): (InstCallback, Option<DirectCall>),
        priority: i32,
    ) -> CallbackId {
        self.schedule_flush(filter.affected());
        self.push_entry(Entry::Inst {
            filter,
            position,
            priority,
            cb: Some(cb),
            direct,
        })
    }

    pub fn add_event(
        &mut self,
        events: VmEvent,
        (cb, direct): (VmCallback, Option<DirectCall>),
    ) -> Result<CallbackId, VmError> {
        if events.is_empty() {
            return Err(VmError::InvalidArgument(
                "add_vm_event_cb needs at least one VmEvent (e.g. VmEvent::BASIC_BLOCK_ENTRY)"
                    .into(),
            ));
        }
        if events.intersects(INLINE_EVENTS | TRANSFER_EVENTS) {
            self.schedule_flush(None);
        }
        self.events |= events;
        Ok(self.push_entry(Entry::Event {
            events,
            cb: Some(cb),
            direct,
        }))
    }

    /// Gives callback `id` the compiled entry `func` (convention `abi`) for direct calls:
    /// `Ok(None)` if sites may now call it directly, `Ok(Some(why))` if they may not (the
    /// callback is then left as it was).
    pub fn set_direct_entry(
        &mut self,
        id: CallbackId,
        func: u64,
        abi: direct::EntryAbi,
    ) -> Result<Option<direct::DirectRefusal>, VmError> {
        let refusal = |e: direct::DirectRefusal| Ok(Some(e));
        let (slot, wanted) = match self.entries.get_mut(id as usize) {
            Some(Some(Entry::Inst { direct, .. })) => (direct, direct::EntryAbi::Inst),
            Some(Some(Entry::Event { direct, .. })) => (direct, direct::EntryAbi::Event),
            _ => {
                return Err(VmError::InvalidArgument(format!(
                    "no instruction or event callback has id {id}"
                )));
            }
        };
        if abi != wanted {
            return refusal(
                format!(
                    "callback {id} is an {wanted:?} callback, the entry follows the {abi:?} \
                     convention"
                )
                .into(),
            );
        }
        match direct::analyze(func).and_then(|l| l.direct_call(abi.kind(), func, 0)) {
            Ok(call) => {
                *slot = Some(call);
                // Sites planned before this keep their general path until translated again.
                self.schedule_flush(None);
                Ok(None)
            }
            Err(e) => refusal(e),
        }
    }

    pub fn delete(&mut self, id: CallbackId) -> Result<(), VmError> {
        let entry = self
            .entries
            .get_mut(id as usize)
            .and_then(Option::take)
            .ok_or_else(|| {
                VmError::InvalidArgument(format!(
                    "no instrumentation has id {id} (already deleted?)"
                ))
            })?;
        let affected = match entry {
            Entry::Inst { ref filter, .. } => filter.affected(),
            Entry::Event { .. } => None,
            Entry::Inline(_) => None,
            Entry::Rule { range, .. } => {
                for p in &mut self.produced {
                    if p.rule == id {
                        p.cb = None;
                    }
                }
                range
            }
        };
        // Translated code may still reach the site before the flush applies: its direct
        // calls must not use the freed closure.
        for s in &mut self.sites {
            let ids = &self.site_cbs[s.first as usize..(s.first + s.len) as usize];
            if s.direct > 0 && ids.contains(&id) {
                s.direct_live = 0;
                unlink_inlined(s);
            }
        }
        self.schedule_flush(affected);
        self.recompute_events();
        Ok(())
    }

    pub fn delete_all(&mut self) {
        for s in &mut self.sites {
            s.direct_live = 0;
            unlink_inlined(s);
        }
        self.entries.clear();
        self.events = VmEvent::empty();
        // Every edge map is gone: their `prev` words may serve new ones.
        self.edge_maps = 0;
        self.schedule_flush(None);
    }

    fn recompute_events(&mut self) {
        self.events = self
            .entries
            .iter()
            .flatten()
            .fold(VmEvent::empty(), |acc, e| match e {
                Entry::Event { events, .. } => acc | *events,
                Entry::Inst { .. } | Entry::Rule { .. } | Entry::Inline(_) => acc,
            });
    }

    /// Takes a callback out for a call (its slot stays reserved); see `put_back`.
    pub fn take_inst(&mut self, id: u32) -> Option<InstCallback> {
        if id & PRODUCED != 0 {
            return self.produced.get_mut((id & !PRODUCED) as usize)?.cb.take();
        }
        match self.entries.get_mut(id as usize)? {
            Some(Entry::Inst { cb, .. }) => cb.take(),
            _ => None,
        }
    }

    pub fn take_event(&mut self, id: u32) -> Option<(VmEvent, VmCallback)> {
        match self.entries.get_mut(id as usize)? {
            Some(Entry::Event { events, cb, .. }) => cb.take().map(|c| (*events, c)),
            _ => None,
        }
    }

    /// Puts a callback back after its call, unless it was deleted meanwhile.
    pub fn put_back_inst(&mut self, id: u32, callback: InstCallback) {
        if id & PRODUCED != 0 {
            let rule = self.produced.get((id & !PRODUCED) as usize).map(|p| p.rule);
            let rule_alive = rule.is_some_and(|r| {
                matches!(self.entries.get(r as usize), Some(Some(Entry::Rule { .. })))
            });
            if let (true, Some(p)) = (rule_alive, self.produced.get_mut((id & !PRODUCED) as usize))
            {
                p.cb = Some(callback);
            }
            return;
        }
        if let Some(Some(Entry::Inst { cb, .. })) = self.entries.get_mut(id as usize) {
            *cb = Some(callback);
        }
    }

    pub fn put_back_event(&mut self, id: u32, callback: VmCallback) {
        if let Some(Some(Entry::Event { cb, .. })) = self.entries.get_mut(id as usize) {
            *cb = Some(callback);
        }
    }

    /// The address range a memory callback is restricted to, if `id` is one.
    pub fn mem_range(&self, id: u32) -> Option<(MemoryAccessType, Range)> {
        match self.entries.get(id as usize)? {
            Some(Entry::Inst {
                filter: Filter::MemAccess(t, Some(r)),
                ..
            }) => Some((*t, *r)),
            _ => None,
        }
    }

    /// Event callbacks registered for any of `events`, in registration order.
    pub fn event_ids(&self, events: VmEvent) -> impl Iterator<Item = (u32, VmEvent)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(move |(i, e)| match e {
                Some(Entry::Event { events: ev, .. }) if ev.intersects(events) => {
                    Some((i as u32, *ev))
                }
                _ => None,
            })
    }

    /// Whether the site and callback tables can take one more block's worth.
    pub fn has_room(&self, sites: usize, cbs: usize) -> bool {
        self.sites.len() + sites <= self.sites.capacity()
            && self.site_cbs.len() + cbs <= self.site_cbs.capacity()
    }

    /// Whether instruction callbacks at `position` apply to `instr` (`access` as for
    /// [`plan_inst_site`](Self::plan_inst_site)); they are left in `scratch`, unsorted.
    /// Plans nothing.
    pub fn match_inst(
        &mut self,
        instr: &Instruction,
        position: InstPosition,
        access: (bool, bool),
    ) -> bool {
        self.scratch.clear();
        for (id, e) in self.entries.iter().enumerate() {
            if let Some(Entry::Inst {
                filter,
                position: p,
                priority,
                ..
            }) = e
            {
                let here = match filter {
                    Filter::MemAccess(..) => filter.matches(instr, position, access),
                    _ => *p == position && filter.matches(instr, position, access),
                };
                if here && self.scratch.len() < self.scratch.capacity() {
                    self.scratch.push((-*priority, id as u32));
                }
            }
        }
        for &(p, priority, pid) in &self.rule_output {
            if p == position && self.scratch.len() < self.scratch.capacity() {
                self.scratch.push((-priority, pid));
            }
        }
        !self.scratch.is_empty()
    }

    /// Adds a site for the instruction callbacks at `position` that apply to `instr`, if
    /// any. `access`: whether the instruction's recorded accesses include (reads, writes).
    pub fn plan_inst_site(
        &mut self,
        instr: &Instruction,
        position: InstPosition,
        block: (Rword, Rword),
        access: (bool, bool),
    ) -> Option<u32> {
        if !self.match_inst(instr, position, access) {
            return None;
        }
        // Higher priority first, then registration order; unstable sort allocates nothing.
        self.scratch.sort_unstable();
        let first = self.site_cbs.len() as u32;
        for &(_, id) in &self.scratch {
            self.site_cbs.push(id);
        }
        let site = self.push_site(
            SiteKind::Inst(position),
            instr.ip(),
            block,
            first,
            self.scratch.len() as u32,
        );
        // Callbacks with eligible entries, unless a memory range decides at run time
        // whether one runs.
        let chain = self.scratch.len() <= MAX_DIRECT_CHAIN
            && self.scratch.iter().all(|&(_, id)| {
                matches!(
                    self.entries.get(id as usize),
                    Some(Some(Entry::Inst { filter, direct: Some(_), .. }))
                        if !matches!(filter, Filter::MemAccess(_, Some(_)))
                )
            });
        if chain {
            self.set_direct(site, VmEvent::empty());
        }
        Some(site)
    }

    /// Makes `site` call its callbacks directly (the caller checked that each has an
    /// eligible entry), and sets the VmState they get.
    fn set_direct(&mut self, site: u32, events: VmEvent) {
        // Thread-local storage needs the host's FS and GS, which only the general path loads
        // when the guest has its own.
        let own_fs_gs = self.options.contains(Options::OPT_ENABLE_FS_GS);
        let (first, len) = {
            let s = &self.sites[site as usize];
            (s.first, s.len)
        };
        let fs_gs = (first..first + len)
            .filter_map(|k| self.direct_call(self.site_cbs[k as usize]))
            .any(|d| d.fs_gs);
        let direct = !(fs_gs && own_fs_gs);
        let s = &mut self.sites[site as usize];
        s.direct = if direct { len as u8 } else { 0 };
        s.direct_live = u8::from(direct);
        s.state = VmState {
            event: events,
            basic_block_start: s.block_start,
            basic_block_end: 0,
            sequence_start: s.seq_start,
            sequence_end: 0,
        };
    }

    /// The direct call of callback `id`, if it has one.
    pub fn direct_call(&self, id: u32) -> Option<DirectCall> {
        match self.entries.get(id as usize)? {
            Some(Entry::Inst { direct, .. } | Entry::Event { direct, .. }) => *direct,
            _ => None,
        }
    }

    /// Adds a site for the inline events in `events` that have callbacks.
    pub fn plan_event_site(
        &mut self,
        events: VmEvent,
        inst_addr: Rword,
        block: (Rword, Rword),
    ) -> Option<u32> {
        let wanted = events & self.events;
        if wanted.is_empty() {
            return None;
        }
        let first = self.site_cbs.len() as u32;
        let mut n = 0;
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(Entry::Event { events: ev, .. }) = e
                && ev.intersects(wanted)
            {
                self.site_cbs.push(i as u32);
                n += 1;
            }
        }
        // A basic block is new at its first piece only.
        let new_pending = wanted.intersects(ENTRY_EVENTS)
            && block.0 == block.1
            && self.events.contains(VmEvent::BASIC_BLOCK_NEW);
        let site = self.push_site(SiteKind::Events(wanted), inst_addr, block, first, n);
        self.sites[site as usize].new_pending = new_pending;
        // Callbacks with eligible entries that all see the same events: their VmState is
        // then the same at every run (with a block still to be reported new, it is not).
        let ids = &self.site_cbs[first as usize..(first + n) as usize];
        let seen = |id: u32| match self.entries.get(id as usize) {
            Some(Some(Entry::Event {
                events,
                direct: Some(_),
                ..
            })) => Some(*events & wanted),
            _ => None,
        };
        let common = ids.first().and_then(|&id| seen(id));
        if let Some(events) = common
            && !new_pending
            && n as usize <= MAX_DIRECT_CHAIN
            && ids.iter().all(|&id| seen(id) == Some(events))
        {
            self.set_direct(site, events);
        }
        Some(site)
    }

    fn push_site(
        &mut self,
        kind: SiteKind,
        inst_addr: Rword,
        (block_start, seq_start): (Rword, Rword),
        first: u32,
        len: u32,
    ) -> u32 {
        self.sites.push(Site {
            kind,
            inst_addr,
            block_start,
            block_end: 0,
            seq_start,
            seq_end: 0,
            skip_inst: 0,
            skip_patch: 0,
            first,
            len,
            new_pending: false,
            mem_first: 0,
            mem_len: 0,
            bb_mem_first: 0,
            bb_mem_len: 0,
            direct: 0,
            direct_live: 0,
            inline_at: 0,
            inline_general: 0,
            state: VmState::default(),
        });
        (self.sites.len() - 1) as u32
    }

    /// Forgets every site (no translated code refers to them any more).
    pub fn reset_sites(&mut self) {
        self.sites.clear();
        self.site_cbs.clear();
        self.produced.clear();
    }

    // ---- ranges -------------------------------------------------------------------------

    pub fn add_range(&mut self, start: Rword, end: Rword) -> Result<(), VmError> {
        if end <= start {
            return Err(VmError::InvalidRange { start, end });
        }
        self.ranges.add(Range::new(start, end));
        self.schedule_flush(None);
        Ok(())
    }

    pub fn remove_range(&mut self, start: Rword, end: Rword) -> Result<(), VmError> {
        if end <= start {
            return Err(VmError::InvalidRange { start, end });
        }
        self.ranges.remove(Range::new(start, end));
        self.schedule_flush(None);
        Ok(())
    }

    pub fn add_module(&mut self, name: &str) -> Result<(), VmError> {
        for r in module_exec_maps(name)? {
            self.ranges.add(r);
        }
        self.schedule_flush(None);
        Ok(())
    }

    pub fn remove_module(&mut self, name: &str) -> Result<(), VmError> {
        for r in module_exec_maps(name)? {
            self.ranges.remove(r);
        }
        self.schedule_flush(None);
        Ok(())
    }

    pub fn add_module_from_addr(&mut self, addr: Rword) -> Result<(), VmError> {
        for r in module_exec_maps_from_addr(addr)? {
            self.ranges.add(r);
        }
        self.schedule_flush(None);
        Ok(())
    }

    pub fn remove_module_from_addr(&mut self, addr: Rword) -> Result<(), VmError> {
        for r in module_exec_maps_from_addr(addr)? {
            self.ranges.remove(r);
        }
        self.schedule_flush(None);
        Ok(())
    }

    pub fn add_all_executable_maps(&mut self) {
        for m in current_process_maps(true) {
            if m.permission.contains(Permission::EXEC) && m.name != "[vsyscall]" {
                self.ranges.add(m.range);
            }
        }
        self.schedule_flush(None);
    }

    pub fn remove_all_ranges(&mut self) {
        self.ranges.clear();
        self.schedule_flush(None);
    }

    pub fn clear_cache(&mut self, start: Rword, end: Rword) {
        self.schedule_flush(Some(Range::new(start, end)));
    }

    pub fn clear_all_cache(&mut self) {
        self.schedule_flush(None);
    }
}

/// Builds the filter of a mnemonic pattern: every iced mnemonic the glob matches.
pub(crate) fn mnemonic_filter(pattern: &str) -> Result<Filter, VmError> {
    let names = crate::analysis::mnemonic_names();
    let mut bits = vec![0u64; (names.len() + 1).div_ceil(64)].into_boxed_slice();
    let mut any = false;
    // names[i] is the name of Mnemonic value i + 1 (INVALID, value 0, has none).
    for (i, name) in names.iter().enumerate() {
        if crate::analysis::mnemonic_matches(pattern, name) {
            let m = i + 1;
            bits[m / 64] |= 1 << (m % 64);
            any = true;
        }
    }
    if !any {
        return Err(VmError::InvalidArgument(format!(
            "mnemonic pattern {pattern:?} matches no x86 mnemonic: use iced-x86 mnemonic names such as \"CALL\", \"MOV*\" or \"J*\" (LLVM opcode names like CALL64r do not exist here)"
        )));
    }
    Ok(Filter::Mnemonic(bits))
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
