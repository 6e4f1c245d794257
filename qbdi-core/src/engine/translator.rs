//! The translator: decodes one guest basic block with iced-x86 and emits its host code.
//!
//! A block ends at the first instruction that may change the instruction pointer (QBDI's
//! definition), at a size limit, at the end of the instrumented range, or before the run's
//! stop address. Straight-line instructions are copied byte for byte, except those with a
//! RIP-relative operand, which are re-encoded for their new address (or rewritten through a
//! scratch register when the operand is out of rel32 reach). Every control-flow
//! instruction is replaced by code that keeps the guest's view intact:
//!
//! | guest | host |
//! | --- | --- |
//! | `jcc rel` | `jcc rel32` + `jmp rel32`, each to an exit stub (later linked) |
//! | `loop*`, `jrcxz`, `jecxz` | the same instruction (rel8) over a `jmp rel32` fall-through, then `jmp rel32` taken |
//! | `jmp rel` | `jmp rel32` to an exit stub (later linked) |
//! | `call rel`, target instrumented | push the guest return address, `jmp rel32` |
//! | `call rel`, target native | push a return stub of this block, absolute `jmp` to the target |
//! | `jmp r/m`, `call r/m`, `ret`, `ret imm16` | compute the target, (push the guest return address), inline table lookup |
//! | far and transactional forms | an exit that reports `UnsupportedInstruction` |
//! | undecodable bytes | an exit that reports `InvalidInstruction` |
//!
//! Nothing emitted touches RFLAGS or writes below the guest's rsp.

use super::context::off;
use super::context_switch::Runtime;
use super::direct_call::{
    DIRECT_COLD_MAX, DirectCold, DirectSite, emit_direct_cold, emit_direct_site, emit_inline_site,
    inlinable,
};
use super::directory::{ExitKind, FaultPoint, NO_SCRATCH};
use super::emitter::{Asm, Label, R11, RAX, RCX, RDX, RSP, is_simm32};
use super::encode::{self, MemOperand};
use super::ib_table::{
    ENTRY_HEADER_LEN, ENTRY_PREFIX_LEN, Miss, emit_entry_prefix, emit_hit_jump, emit_lookup,
    emit_restore, emit_spill,
};
use super::inline::{self, CounterHead, EdgeMap};
use super::memory_recording::{self, MAX_PER_INSTRUCTION, Planned, block_has_room, emit_post};
use crate::callback::{InstPosition, VmEvent, VmState};
use crate::error::VmError;
use crate::instrumentation::vm_ref::AnalysisCache;
use crate::instrumentation::{
    ENTRY_EVENTS, EXIT_EVENTS, Instrumentation, MAX_DIRECT_CHAIN, Site, SiteKind,
};
use crate::memory_access::{MemoryAccessType, MemoryRecorder, ViewEntry};
use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Formatter, Instruction, InstructionInfoFactory,
    IntelFormatter, Mnemonic, OpKind, Register,
};

/// Bytes reserved for the paths of a direct site emitted at the block's end: its rarely
/// taken paths, its general path and a jump back.
const COLD_SITE_BYTES: usize = DIRECT_COLD_MAX + 128;

/// At most this many guest instructions per block.
pub(crate) const MAX_BLOCK_INSTRUCTIONS: usize = 128;
/// Host bytes one callback site takes at most: a direct call that passes the whole guest
/// state through the context (saves, restores on two paths), then the general path.
const MAX_SITE_HOST_BYTES: usize = 1024;
/// Host bytes one guest instruction can take with everything around it: its body (40
/// bytes when rewritten through a scratch register), recording of up to 8 memory accesses
/// before and after it, and its PreInst, PostInst and two syscall sites.
const MAX_INST_HOST_BYTES: usize = 4 * MAX_SITE_HOST_BYTES + 1024;
/// What a block's end can add after its last instruction's budget: PostInst and exit
/// sites on its paths (taken, not taken, skipped), and the exit stubs.
const MAX_TAIL_HOST_BYTES: usize = 6 * MAX_SITE_HOST_BYTES + 1024;
/// Host bytes a block can need at most. A block ends early rather than outgrow it, so a
/// block is translated into a buffer that never grows and always fits the cache's room.
pub(crate) const MAX_BLOCK_HOST_BYTES: u64 = 64 << 10;

/// A block has at most this many exit stubs (two branch paths and its reentry stub).
pub(crate) const MAX_BLOCK_STUBS: usize = 4;
/// A block has at most this many callback sites (pre, post and two syscall sites per
/// instruction, an entry site, post and exit sites on three paths).
pub(crate) const MAX_BLOCK_SITES: usize = MAX_BLOCK_INSTRUCTIONS * 4 + 8;

/// What the translator needs to know about the place a block goes.
pub(crate) struct Env<'a> {
    pub ctx: u64,
    pub table: u64,
    pub runtime: Runtime,
    /// Is this guest address instrumented?
    pub in_range: &'a dyn Fn(u64) -> bool,
    /// Guest instructions must start below this address.
    pub limit: u64,
    /// Bytes may be read up to here (page end of `limit`, or the mapping end).
    pub readable_end: u64,
    /// The run's stop address: a block never contains it past its first instruction.
    pub boundary: u64,
    /// Id the first exit stub of this block gets.
    pub first_stub_id: u32,
    /// Whether direct calls to native code may jump there straight (false when the
    /// dispatcher must report EXEC_TRANSFER events).
    pub inline_broker: bool,
    /// The guest bytes may change (writable or anonymous memory): the block checks them
    /// at each entry.
    pub check_bytes: bool,
    /// The 8 bytes at an address, if they are readable now (a `jmp [rip+slot]`'s slot).
    pub read_word: &'a dyn Fn(u64) -> Option<u64>,
    /// For a block that may start at an address: whether it may read the arithmetic flags
    /// it gets (`inline::status_flags_live`), if its bytes are readable and do not change
    /// (no byte check); None otherwise.
    pub flags_live_at: &'a dyn Fn(u64) -> Option<bool>,
    /// Whether BASIC_BLOCK_NEW is reported: a PLT entry's block is skipped only once it
    /// is translated (reported) then, which the engine tells by entering it in the table.
    pub new_blocks_reported: bool,
    /// The 16 bytes at an address, if they are readable now and do not change (no byte
    /// check): a PLT entry's.
    pub code_bytes: &'a dyn Fn(u64) -> Option<[u8; 16]>,
    /// A free entry of the site caches (`code_cache::SITE_ENTRIES`) and its countdown, for
    /// the indirect branch (or the call to a PLT entry) this block may end with;
    /// `Translated::site_entry` says whether it took it.
    pub site_entry: Option<(u64, u64)>,
    /// Where the cache's blocks start: the table's hosts below it are shared routines, with
    /// no header (`ib_table::ENTRY_HEADER_LEN`).
    pub code_start: u64,
}

/// An exit the block was emitted with, in stub-id order.
pub(crate) struct EmittedExit {
    pub target: u64,
    pub site: u64,
    pub stub: u64,
    pub kind: ExitKind,
    /// The path counted its edge already (`inline::emit_counted_exit`): it goes to the
    /// target's linked entry.
    pub counted: bool,
    /// The block is the last one of its edge chains when it leaves here (false for the
    /// return from a native callee: the chains went on in the Vms it called back).
    pub chained: bool,
}

pub(crate) struct Translated {
    pub guest_end: u64,
    /// Index in `exits` of the reentry stub.
    pub reentry: usize,
    /// The basic block goes on at `guest_end` in another translation: this one was cut for
    /// room (instructions, host bytes or memory slots), not by the block's end.
    pub cut: bool,
    /// End of the whole basic block (`guest_end` unless this translation is a piece).
    pub block_end: u64,
    /// Offset of the block's linked entry from its entry (0: the same; see
    /// `inline::emit_counting`).
    pub linked: u64,
    /// The block's indirect branch (or call to a PLT entry) took `Env::site_entry`.
    pub site_entry: bool,
}

pub(crate) struct Translator {
    pub asm: Asm,
    info: InstructionInfoFactory,
    pub exits: Vec<EmittedExit>,
    pending: Vec<(Label, u64, u64, ExitKind, bool, bool)>,
    /// Callback sites planted in this block and their skip labels (skip_inst,
    /// skip_patch), resolved to addresses in `site_addrs` by `translate`. Continue needs
    /// no address: the routine returns to the site.
    site_labels: Vec<(u32, Label, Label)>,
    pub site_addrs: Vec<(u32, u64, u64)>,
    /// Inlined sites: (site, start of the copies, general path), resolved to addresses in
    /// `inline_addrs` by `translate` (see `Site::inline_at`).
    inline_labels: Vec<(u32, Label, Label)>,
    pub inline_addrs: Vec<(u32, u64, u64)>,
    /// The rarely taken paths of the block's direct sites, emitted after its instructions
    /// (see `DirectCold`), and the bytes reserved for them.
    cold: Vec<DirectCold>,
    cold_bytes: usize,
    /// This translation's indirect branch (or call to a PLT entry) took `Env::site_entry`.
    site_entry_taken: bool,
    /// The counting entry's NeverZero rare path, emitted after the block's code.
    entry_fix: Option<inline::NeverZeroFix>,
    /// Memory accesses of the instruction being translated, and the block's next slot.
    planned: Vec<Planned>,
    mem: MemInfo,
    next_slot: u16,
    bb_mem_first: u32,
    /// The block's instructions that can fault (see `directory::FaultPoint`).
    pub faults: Vec<FaultPoint>,
    /// The block's inline counters, filled in once its extent is known.
    counter_head: CounterHead,
    /// The edge maps this translation counts, and the basic block its exits leave (the
    /// edges' source).
    edge_maps: Vec<EdgeMap>,
    edge_src: u64,
    /// Where the displacement of the instruction just decoded is in its bytes, when it is
    /// RIP-relative with a 4-byte displacement (iced's constant offsets): the copy placed
    /// elsewhere gets its displacement rewritten there, without re-encoding.
    rip_disp_offset: Option<usize>,
    /// 8-byte constants the block reads RIP-relative (return addresses its calls push),
    /// emitted after its stubs.
    literals: Vec<(Label, u64)>,
}

/// Most memory-range callbacks at one site whose ranges are checked inline.
const MAX_FILTERED_RANGES: usize = 4;

/// Where a callback site finds the guest's `rip`.
#[derive(Clone, Copy)]
pub(crate) enum Rip {
    Imm(u64),
    /// In `ctx.ib_target` (an indirect branch's target).
    IbTarget,
}

impl Rip {
    /// Loads the guest's `rip` into rax.
    pub fn emit(self, a: &mut Asm, ctx: u64) {
        match self {
            Rip::Imm(v) => a.mov_imm64(RAX, v),
            Rip::IbTarget => a.load(RAX, ctx + off::IB_TARGET),
        }
    }
}

/// The instrumentation to plant while translating one block, if any.
pub(crate) struct Hooks<'a> {
    pub inst: &'a mut Instrumentation,
    pub mem: &'a mut MemoryRecorder,
    pub analyses: &'a mut AnalysisCache,
    /// Whether recorded accesses include values.
    pub values: bool,
    /// Start of the guest basic block this translation belongs to; `seq_start` is where
    /// this translation starts (the block start, or where an earlier piece of the block was
    /// cut: a continuation).
    pub block_start: u64,
    pub seq_start: u64,
    /// Events planted inline for this Vm (entry, exit, syscall).
    pub events: VmEvent,
}

impl Hooks<'_> {
    /// Plants a site for `instr`'s callbacks at `position`, with its memory accesses.
    fn inst_site(
        &mut self,
        instr: &Instruction,
        position: InstPosition,
        mem: MemInfo,
    ) -> Option<u32> {
        let site = self.inst.plan_inst_site(
            instr,
            position,
            (self.block_start, self.seq_start),
            mem.access,
        )?;
        let s = &mut self.inst.sites[site as usize];
        s.mem_first = mem.first;
        s.mem_len = mem.len;
        s.bb_mem_first = mem.bb_first;
        s.bb_mem_len = mem.first + mem.len - mem.bb_first;
        // A direct site builds the accesses its callbacks read, but not a `rep` span.
        let (first, len) = (s.first, s.direct as u32);
        let reads_view = (first..first + len).any(|k| {
            let id = self.inst.site_cbs[k as usize];
            self.inst.direct_call(id).is_some_and(|c| c.view_arg)
        });
        if reads_view && site_view(self.mem, &self.inst.sites[site as usize]).any(|e| e.rep_span) {
            let s = &mut self.inst.sites[site as usize];
            s.direct = 0;
            s.direct_live = 0;
        }
        Some(site)
    }
}

/// What `inst_memory_access` gives at site `s`, as known at translation.
fn site_view<'a>(mem: &'a MemoryRecorder, s: &Site) -> impl Iterator<Item = ViewEntry> + 'a {
    let pre = (s.kind == SiteKind::Inst(InstPosition::PreInst)).then_some(s.inst_addr);
    MemoryRecorder::plan_view(&mem.descs, s.mem_first, s.mem_len, pre)
}

/// The memory accesses recorded for the instruction being translated.
#[derive(Clone, Copy, Default)]
struct MemInfo {
    first: u32,
    len: u32,
    bb_first: u32,
    /// (reads, writes)
    access: (bool, bool),
}

impl Translator {
    pub fn new() -> Translator {
        // Every buffer is sized for the largest block now: translation must not allocate
        // (see `directory`).
        let mut info = InstructionInfoFactory::new();
        // Let the factory size its internal buffers on an instruction with many operands.
        let mut warm = Decoder::with_ip(
            64,
            &[0x62, 0xf2, 0x7d, 0x49, 0x90, 0x04, 0x88],
            0,
            DecoderOptions::NONE,
        );
        let _ = info.info(&warm.decode()).used_registers().len();
        Translator {
            asm: Asm::with_capacity(MAX_BLOCK_HOST_BYTES as usize),
            info,
            exits: Vec::with_capacity(MAX_BLOCK_STUBS),
            pending: Vec::with_capacity(MAX_BLOCK_STUBS),
            site_labels: Vec::with_capacity(MAX_BLOCK_SITES),
            site_addrs: Vec::with_capacity(MAX_BLOCK_SITES),
            inline_labels: Vec::with_capacity(MAX_BLOCK_SITES),
            inline_addrs: Vec::with_capacity(MAX_BLOCK_SITES),
            cold: Vec::with_capacity(MAX_BLOCK_SITES),
            cold_bytes: 0,
            site_entry_taken: false,
            entry_fix: None,
            planned: Vec::with_capacity(MAX_PER_INSTRUCTION),
            mem: MemInfo::default(),
            next_slot: 0,
            bb_mem_first: 0,
            faults: Vec::with_capacity(MAX_BLOCK_INSTRUCTIONS + 1),
            counter_head: CounterHead::new(),
            edge_maps: Vec::with_capacity(inline::MAX_EDGE_MAPS),
            edge_src: 0,
            rip_disp_offset: None,
            literals: Vec::with_capacity(4),
        }
    }

    /// Translates the block at `pc` into `self.asm` (base = `host`); `self.exits` lists the
    /// stubs it ends with. Its header is at `host`, its inline table's entry
    /// `ENTRY_HEADER_LEN` bytes further, the block itself `ENTRY_PREFIX_LEN` bytes after
    /// that (see [`emit_entry_prefix`]).
    pub fn translate(
        &mut self,
        pc: u64,
        host: u64,
        env: &Env<'_>,
        mut hooks: Option<Hooks<'_>>,
    ) -> Result<Translated, VmError> {
        self.asm.reset(host);
        self.literals.clear();
        self.exits.clear();
        self.faults.clear();
        self.pending.clear();
        self.site_labels.clear();
        self.site_addrs.clear();
        self.inline_labels.clear();
        self.inline_addrs.clear();
        self.cold.clear();
        self.cold_bytes = 0;
        self.site_entry_taken = false;
        self.entry_fix = None;
        self.next_slot = 0;
        self.mem = MemInfo::default();
        self.bb_mem_first = hooks.as_ref().map_or(0, |h| h.mem.descs.len() as u32);
        self.planned.clear();
        // The header (written last), the table's entry (indirect branches land there), then
        // the block itself.
        self.asm.bytes(&[0; ENTRY_HEADER_LEN as usize]);
        emit_entry_prefix(&mut self.asm, env.ctx);
        // Blocks of memory that may change start with a jump to their byte check, emitted
        // after the block (its extent is known then).
        let check = env.check_bytes.then(|| {
            let check = self.asm.new_label();
            self.asm.jmp_label(check);
            let body = self.asm.new_label();
            self.asm.bind(body);
            (check, body)
        });
        let len = env.readable_end.saturating_sub(pc) as usize;
        // SAFETY: the caller guarantees [pc, readable_end) is mapped readable memory.
        let bytes = unsafe { std::slice::from_raw_parts(pc as *const u8, len) };
        self.edge_maps.clear();
        self.counter_head.clear();
        // Inline work counts basic blocks (and edges between them): the first piece only;
        // the exits of every piece count their edges (from the basic block's start).
        let continuation = hooks.as_ref().is_some_and(|h| h.seq_start != h.block_start);
        let entry_at = self.asm.len();
        let mut linked = 0;
        if let Some(h) = hooks.as_ref() {
            inline::edge_maps(h.inst, &mut self.edge_maps);
            self.edge_src = h.block_start;
            if !continuation && h.inst.inline().next().is_some() {
                let live = inline::status_flags_live(bytes, pc);
                let (past_spills, fix) =
                    inline::emit_counting(&mut self.asm, env.ctx, &self.edge_maps, pc, live);
                self.entry_fix = fix;
                // A block that checks its bytes is entered at its check only: no linked
                // entry (its ways in are never counted exits, see `exit_to`).
                if check.is_none() {
                    linked = (self.asm.len() - entry_at) as u64;
                    // The table entry's way in has rax and rcx in the spill slots already:
                    // instead of reloading them for the counting entry to store them back,
                    // it jumps past those stores.
                    if let Some(to) = past_spills {
                        let at = ENTRY_HEADER_LEN as usize;
                        let rel = i8::try_from(to - (at + 2)).expect("a short jump");
                        let prefix = &mut self.asm.buf[at..at + ENTRY_PREFIX_LEN as usize];
                        prefix.fill(0xcc);
                        prefix[..2].copy_from_slice(&[0xeb, rel as u8]);
                    }
                }
                inline::emit_head(&mut self.asm, env.ctx, h.inst, live, &mut self.counter_head);
            }
        }
        let entry = if continuation {
            VmEvent::SEQUENCE_ENTRY
        } else {
            ENTRY_EVENTS
        };
        self.event_site(env, &mut hooks, entry, pc, Rip::Imm(pc), Some(pc));
        let mut decoder = Decoder::with_ip(64, bytes, pc, DecoderOptions::NONE);
        let mut instr = Instruction::default();
        let mut count = 0usize;
        let mut ip = pc;
        let mut cut = false;
        loop {
            let full = count > 0
                && (count >= MAX_BLOCK_INSTRUCTIONS
                    || self.asm.len()
                        + self.cold_bytes
                        + MAX_INST_HOST_BYTES
                        + MAX_TAIL_HOST_BYTES
                        + check_bytes_len(env, ip - pc + 16)
                        > MAX_BLOCK_HOST_BYTES as usize
                    || !block_has_room(self.next_slot));
            let ends_here = count > 0 && (ip >= env.limit || ip == env.boundary);
            if ends_here || !decoder.can_decode() && count > 0 {
                self.exit_events(env, &mut hooks, EXIT_EVENTS, ip, Rip::Imm(ip));
                self.exit_to(env, ip, ExitKind::Branch, true);
                break;
            }
            if full {
                // Out of room: the basic block goes on in another translation (a sequence
                // ends, not the block).
                cut = true;
                self.exit_events(env, &mut hooks, VmEvent::SEQUENCE_EXIT, ip, Rip::Imm(ip));
                // The same basic block goes on: no edge.
                self.exit_uncounted(ip, ExitKind::Branch, true, false, true);
                break;
            }
            if !decoder.can_decode() {
                self.exit_to(env, ip, ExitKind::Invalid, false);
                break;
            }
            decoder.decode_out(&mut instr);
            // RIP- or EIP-relative (`emit_body` rewrites them).
            self.rip_disp_offset = instr
                .is_ip_rel_memory_operand()
                .then(|| decoder.get_constant_offsets(&instr))
                .filter(|o| o.has_displacement() && o.displacement_size() == 4)
                .map(|o| o.displacement_offset());
            if instr.is_invalid() {
                // Translate up to the bad bytes; reaching them is an exit of its own.
                if count > 0 {
                    self.exit_events(env, &mut hooks, EXIT_EVENTS, ip, Rip::Imm(ip));
                    self.exit_to(env, ip, ExitKind::Branch, true);
                } else {
                    self.exit_to(env, ip, ExitKind::Invalid, false);
                }
                break;
            }
            count += 1;
            if self.emit_hooked(&instr, bytes, pc, env, &mut hooks)? {
                break;
            }
            ip = instr.next_ip();
        }
        let guest_end = if count == 0 {
            pc + 1
        } else {
            instr.next_ip().max(ip)
        };
        // The reentry stub: where an invalidated block's entry will jump.
        let reentry_label = self.asm.new_label();
        self.pending
            .push((reentry_label, pc, 0, ExitKind::Reentry, false, false));
        let reentry = self.pending.len() - 1;
        self.emit_cold_sites(env);
        if let Some(fix) = self.entry_fix.take() {
            fix.emit(&mut self.asm);
        }
        self.emit_stubs(env);
        if !self.literals.is_empty() {
            self.asm.align(8);
            for &(label, value) in &self.literals {
                self.asm.bind(label);
                self.asm.bytes(&value.to_le_bytes());
            }
        }
        if let Some((check, body)) = check {
            self.asm.bind(check);
            self.emit_byte_check(env, pc, guest_end, body);
        }
        // The whole block's end: scanned ahead only for a piece of one.
        let block_end = if cut || continuation {
            basic_block_end(bytes, pc, env.limit, env.boundary).max(guest_end)
        } else {
            guest_end
        };
        if let Some(h) = hooks.as_mut() {
            let start = h.block_start;
            inline::apply_patches(
                &mut self.asm,
                env.ctx,
                h.inst,
                &mut self.counter_head,
                start,
                block_end,
            );
        }
        let header = inline::entry_header(&self.edge_maps, pc, continuation, linked);
        self.asm.buf[..ENTRY_HEADER_LEN as usize].copy_from_slice(&header);
        self.asm.finish();
        debug_assert!(self.asm.len() <= MAX_BLOCK_HOST_BYTES as usize);
        for &(site, skip_inst, skip_patch) in &self.site_labels {
            let a = &self.asm;
            self.site_addrs
                .push((site, a.label_addr(skip_inst), a.label_addr(skip_patch)));
        }
        for &(site, start, general) in &self.inline_labels {
            let a = &self.asm;
            self.inline_addrs
                .push((site, a.label_addr(start), a.label_addr(general)));
        }
        Ok(Translated {
            guest_end,
            reentry,
            cut,
            block_end,
            linked,
            site_entry: self.site_entry_taken,
        })
    }

    /// Emits a call of callback site `site`: saves rax, sets `gpr.rip`, names the site, and
    /// calls the callback routine on the host stack, which returns right after the call
    /// (Continue) or jumps to one of the two skip labels. A site with a direct call
    /// (`direct_call`) tries that first and falls back to this general path. `next` is the
    /// instruction of this block the guest runs right after the site, if it is known: a
    /// direct site leaves the arithmetic flags as its callbacks left them when that
    /// instruction overwrites them before reading them.
    #[allow(clippy::too_many_arguments)]
    fn site_call(
        &mut self,
        env: &Env<'_>,
        inst: &Instrumentation,
        mem: &MemoryRecorder,
        site: u32,
        rip: Rip,
        skip_inst: Label,
        skip_patch: Label,
        next: Option<u64>,
    ) {
        let ctx = env.ctx;
        let start = self.asm.len();
        let s = &inst.sites[site as usize];
        let after = self.asm.new_label();
        // Memory-range callbacks alone: the instruction's accesses are compared with their
        // ranges inline, and the site is skipped when none is touched.
        if let SiteKind::Inst(position) = s.kind
            && s.direct == 0
            && s.len as usize <= MAX_FILTERED_RANGES
        {
            let mut ranges = [(MemoryAccessType::empty(), 0, 0); MAX_FILTERED_RANGES];
            let cbs = &inst.site_cbs[s.first as usize..(s.first + s.len) as usize];
            let all = cbs.iter().zip(ranges.iter_mut()).all(|(&id, slot)| {
                inst.mem_range(id).is_some_and(|(k, r)| {
                    *slot = (k, r.start, r.end);
                    true
                })
            });
            if all && !cbs.is_empty() {
                memory_recording::emit_range_filter(
                    &mut self.asm,
                    ctx,
                    &self.planned,
                    position == InstPosition::PreInst,
                    &ranges[..cbs.len()],
                    after,
                );
            }
        }
        // The site's direct calls, in call order (the callbacks' order).
        let mut calls = [None; MAX_DIRECT_CHAIN];
        for (k, c) in calls.iter_mut().enumerate().take(s.direct as usize) {
            *c = inst.direct_call(inst.site_cbs[s.first as usize + k]);
        }
        let n = s.direct as usize;
        if n > 0 && calls[..n].iter().all(Option::is_some) {
            let general = self.asm.new_label();
            let mut view = [ViewEntry::default(); MAX_PER_INSTRUCTION];
            let mut view_len = 0;
            if calls[..n].iter().flatten().any(|c| c.view_arg) {
                for (slot, e) in view.iter_mut().zip(site_view(mem, s)) {
                    *slot = e;
                    view_len += 1;
                }
            }
            // Bytes that may change are only known up to the block's check.
            let flags_dead = next.filter(|_| !env.check_bytes).is_some_and(|at| {
                // SAFETY: `at` is an instruction of the block being translated, in
                // [pc, readable_end), which the caller of `translate` guarantees readable.
                let bytes = unsafe {
                    std::slice::from_raw_parts(at as *const u8, (env.readable_end - at) as usize)
                };
                !inline::status_flags_live(bytes, at)
            });
            let d = DirectSite {
                calls: &calls[..n],
                flags_dead,
                site,
                live_flag: &s.direct_live as *const u8 as u64,
                state: &s.state as *const VmState as u64,
                rip,
                routine: env.runtime.callback,
                general,
                after,
                view: &view[..view_len],
            };
            // The fast path falls through; the rest goes after the block's instructions
            // (`cold` has room for every site a block can have, `MAX_BLOCK_SITES`).
            let cold = if inst.inline_calls && inlinable(d.calls) {
                let start = self.asm.new_label();
                self.asm.bind(start);
                self.inline_labels.push((site, start, general));
                emit_inline_site(&mut self.asm, ctx, &d)
            } else {
                emit_direct_site(&mut self.asm, ctx, &d)
            };
            self.cold.push(cold);
            self.cold_bytes += COLD_SITE_BYTES;
            self.asm.bind(after);
            self.site_labels.push((site, skip_inst, skip_patch));
            return;
        }
        self.emit_general_path(env, site, rip);
        self.asm.bind(after);
        debug_assert!(self.asm.len() - start <= MAX_SITE_HOST_BYTES);
        self.site_labels.push((site, skip_inst, skip_patch));
    }

    /// The general path of callback site `site`: calls the callback routine, which returns
    /// right after the call (Continue) or goes elsewhere.
    fn emit_general_path(&mut self, env: &Env<'_>, site: u32, rip: Rip) {
        let ctx = env.ctx;
        self.asm.store(ctx + off::gpr(RAX), RAX);
        rip.emit(&mut self.asm, ctx);
        self.asm.store(ctx + off::RIP, RAX);
        self.asm.store_imm32(ctx + off::CB_SITE, site);
        // call the routine on the host stack: its `ret` comes back here (predicted).
        self.asm.store(ctx + off::gpr(RSP), RSP);
        self.asm.load(RSP, ctx + off::HOST_RSP);
        self.asm.call_to(env.runtime.callback);
        self.asm.load(RSP, ctx + off::gpr(RSP));
    }

    /// Emits the rarely taken paths of the block's direct sites, each with its general
    /// path, going on after its site.
    fn emit_cold_sites(&mut self, env: &Env<'_>) {
        for k in 0..self.cold.len() {
            let c = self.cold[k];
            let start = self.asm.len();
            emit_direct_cold(&mut self.asm, env.ctx, &c);
            self.asm.bind(c.general);
            self.emit_general_path(env, c.site, c.rip);
            self.asm.jmp_label(c.after);
            debug_assert!(self.asm.len() - start <= COLD_SITE_BYTES);
        }
    }

    /// Whether [`path_hooks`](Self::path_hooks) emits nothing for `instr`: no PostInst
    /// callback, no block-exit event, no access left to complete.
    fn quiet_paths(&mut self, hooks: &mut Option<Hooks<'_>>, instr: &Instruction) -> bool {
        let Some(h) = hooks.as_mut() else {
            return true;
        };
        !memory_recording::emits_post(&self.planned)
            && (EXIT_EVENTS & h.events & h.inst.events).is_empty()
            && !h
                .inst
                .match_inst(instr, InstPosition::PostInst, self.mem.access)
    }

    /// Whether the paths leaving the block by `instr` run nothing before their exit: quiet
    /// ([`quiet_paths`](Self::quiet_paths)) and no edge to count. A conditional branch then
    /// goes straight to its taken exit, as without hooks.
    fn bare_paths(&mut self, hooks: &mut Option<Hooks<'_>>, instr: &Instruction) -> bool {
        self.edge_maps.is_empty() && self.quiet_paths(hooks, instr)
    }

    /// PostInst callbacks of `instr` and block-exit events, on a path leaving the block
    /// towards `rip`.
    fn path_hooks(
        &mut self,
        env: &Env<'_>,
        hooks: &mut Option<Hooks<'_>>,
        instr: &Instruction,
        rip: Rip,
    ) {
        let Some(h) = hooks.as_mut() else {
            return;
        };
        emit_post(&mut self.asm, env.ctx, &self.planned);
        if let Some(site) = h.inst_site(instr, InstPosition::PostInst, self.mem) {
            let after = self.asm.new_label();
            self.site_call(env, h.inst, h.mem, site, rip, after, after, None);
            self.asm.bind(after);
        }
        self.exit_events(env, hooks, EXIT_EVENTS, instr.ip(), rip);
    }

    /// Block-exit events on a path leaving the block towards `rip`; they see the whole
    /// block's memory accesses.
    fn exit_events(
        &mut self,
        env: &Env<'_>,
        hooks: &mut Option<Hooks<'_>>,
        events: VmEvent,
        inst_addr: u64,
        rip: Rip,
    ) {
        let Some(site) = self.event_site(env, hooks, events, inst_addr, rip, None) else {
            return;
        };
        if let Some(h) = hooks.as_mut() {
            let s = &mut h.inst.sites[site as usize];
            s.bb_mem_first = self.bb_mem_first;
            s.bb_mem_len = h.mem.descs.len() as u32 - self.bb_mem_first;
        }
    }

    /// A site for the inline `events` that have callbacks, if any; `next` as for
    /// [`site_call`](Self::site_call).
    fn event_site(
        &mut self,
        env: &Env<'_>,
        hooks: &mut Option<Hooks<'_>>,
        events: VmEvent,
        inst_addr: u64,
        rip: Rip,
        next: Option<u64>,
    ) -> Option<u32> {
        let h = hooks.as_mut()?;
        let site =
            h.inst
                .plan_event_site(events & h.events, inst_addr, (h.block_start, h.seq_start))?;
        let after = self.asm.new_label();
        self.site_call(env, h.inst, h.mem, site, rip, after, after, next);
        self.asm.bind(after);
        Some(site)
    }

    /// One guest instruction with its callbacks around it.
    fn emit_hooked(
        &mut self,
        instr: &Instruction,
        bytes: &[u8],
        pc: u64,
        env: &Env<'_>,
        hooks: &mut Option<Hooks<'_>>,
    ) -> Result<bool, VmError> {
        let Some(h) = hooks.as_mut() else {
            return self.emit_instruction(instr, bytes, pc, env, hooks);
        };
        h.inst.run_rules(instr, h.analyses, h.mem);
        let first = h.mem.descs.len() as u32;
        memory_recording::plan(
            instr,
            &mut self.info,
            h.mem,
            h.values,
            &mut self.next_slot,
            &mut self.planned,
        );
        self.mem = MemInfo {
            first,
            len: self.planned.len() as u32,
            bb_first: self.bb_mem_first,
            access: (
                self.planned.iter().any(|p| !p.is_write()),
                self.planned.iter().any(|p| p.is_write()),
            ),
        };
        memory_recording::emit_pre(&mut self.asm, env.ctx, &self.planned);
        let pre = h.inst_site(instr, InstPosition::PreInst, self.mem);
        let terminator = is_terminator(instr);
        let skipped = self.asm.new_label();
        let skipped_nopost = self.asm.new_label();
        let next = self.asm.new_label();
        if let Some(site) = pre {
            let skip_patch = if terminator { skipped_nopost } else { next };
            self.site_call(
                env,
                h.inst,
                h.mem,
                site,
                Rip::Imm(instr.ip()),
                skipped,
                skip_patch,
                Some(instr.ip()),
            );
        }
        if terminator {
            let ended = self.emit_instruction(instr, bytes, pc, env, hooks)?;
            if pre.is_some() {
                // SkipInst / SkipPatch on a control-flow instruction: go on at the next one.
                self.asm.bind(skipped);
                self.path_hooks(env, hooks, instr, Rip::Imm(instr.next_ip()));
                self.exit_to(env, instr.next_ip(), ExitKind::Branch, true);
                self.asm.bind(skipped_nopost);
                self.exit_events(
                    env,
                    hooks,
                    EXIT_EVENTS,
                    instr.ip(),
                    Rip::Imm(instr.next_ip()),
                );
                self.exit_to(env, instr.next_ip(), ExitKind::Branch, true);
            }
            return Ok(ended);
        }
        let syscall = instr.code() == Code::Syscall;
        if syscall {
            self.event_site(
                env,
                hooks,
                VmEvent::SYSCALL_ENTRY,
                instr.ip(),
                Rip::Imm(instr.ip()),
                None,
            );
        }
        let ended = self.emit_instruction(instr, bytes, pc, env, hooks)?;
        debug_assert!(!ended);
        emit_post(&mut self.asm, env.ctx, &self.planned);
        if syscall {
            self.event_site(
                env,
                hooks,
                VmEvent::SYSCALL_EXIT,
                instr.ip(),
                Rip::Imm(instr.next_ip()),
                None,
            );
        }
        self.asm.bind(skipped);
        self.asm.bind(skipped_nopost);
        if let Some(h) = hooks.as_mut()
            && let Some(site) = h.inst_site(instr, InstPosition::PostInst, self.mem)
        {
            self.site_call(
                env,
                h.inst,
                h.mem,
                site,
                Rip::Imm(instr.next_ip()),
                next,
                next,
                None,
            );
        }
        self.asm.bind(next);
        Ok(false)
    }

    /// Emits one guest instruction. Returns true when it ended the block.
    fn emit_instruction(
        &mut self,
        instr: &Instruction,
        bytes: &[u8],
        pc: u64,
        env: &Env<'_>,
        hooks: &mut Option<Hooks<'_>>,
    ) -> Result<bool, VmError> {
        let ip = instr.ip();
        let next = instr.next_ip();
        let code = instr.code();
        if is_unsupported(code) {
            self.unsupported(instr);
            return Ok(true);
        }
        if code == Code::Syscall {
            self.emit_syscall(ip, next, env);
            return Ok(false);
        }
        match instr.flow_control() {
            FlowControl::Next | FlowControl::XbeginXabortXend => {
                self.emit_body(instr, bytes, pc, env)?;
                Ok(false)
            }
            FlowControl::Interrupt | FlowControl::Exception => {
                // int3, int n, ud2...: run as they are (same fault as native), then go on.
                let start = (ip - pc) as usize;
                let host = self.asm.here();
                self.asm.bytes(&bytes[start..start + instr.len()]);
                self.note_fault(host, ip, NO_SCRATCH);
                self.path_hooks(env, hooks, instr, Rip::Imm(next));
                self.exit_to(env, next, ExitKind::Branch, true);
                Ok(true)
            }
            FlowControl::UnconditionalBranch => {
                let target = instr.near_branch_target();
                self.path_hooks(env, hooks, instr, Rip::Imm(target));
                self.exit_to(env, target, ExitKind::Branch, true);
                Ok(true)
            }
            FlowControl::ConditionalBranch => {
                let taken = instr.near_branch_target();
                let bare = self.bare_paths(hooks, instr);
                if instr.is_jcc_short_or_near() && bare {
                    let cc = instr.condition_code() as u8 - 1;
                    let l = self.asm.new_label();
                    let site = self.asm.jcc_label(cc, l);
                    self.pending
                        .push((l, taken, site, ExitKind::Branch, false, true));
                    self.exit_to(env, next, ExitKind::Branch, true);
                    return Ok(true);
                }
                let taken_path = self.asm.new_label();
                if instr.is_jcc_short_or_near() {
                    let cc = instr.condition_code() as u8 - 1;
                    self.asm.jcc_label(cc, taken_path);
                } else {
                    // loop/loope/loopne/jrcxz/jecxz exist only as rel8: keep the
                    // instruction, aimed over a 5-byte jump (fall-through) at another
                    // (taken).
                    let start = (ip - pc) as usize;
                    let mut raw = [0u8; 15];
                    raw[..instr.len()].copy_from_slice(&bytes[start..start + instr.len()]);
                    raw[instr.len() - 1] = 5;
                    self.asm.bytes(&raw[..instr.len()]);
                    if bare {
                        self.exit_to(env, next, ExitKind::Branch, true);
                        self.exit_to(env, taken, ExitKind::Branch, true);
                        return Ok(true);
                    }
                    let fall_path = self.asm.new_label();
                    self.asm.jmp_label(fall_path);
                    self.asm.jmp_label(taken_path);
                    self.asm.bind(fall_path);
                }
                self.path_hooks(env, hooks, instr, Rip::Imm(next));
                self.exit_to(env, next, ExitKind::Branch, true);
                self.asm.bind(taken_path);
                self.path_hooks(env, hooks, instr, Rip::Imm(taken));
                self.exit_to(env, taken, ExitKind::Branch, true);
                Ok(true)
            }
            FlowControl::Call => {
                let target = instr.near_branch_target();
                if (env.in_range)(target) || target == env.boundary || !env.inline_broker {
                    // Native targets go through the dispatcher when it must report them.
                    // A real call skips the call's own paths: only when they are quiet.
                    let quiet = self.quiet_paths(hooks, instr);
                    if quiet && let Some(slot) = self.native_slot_call(env, hooks, target) {
                        self.emit_native_slot_call(env, target, slot, next);
                    }
                    self.push_guest_address(next);
                    if quiet && let Some(call) = self.counted_slot_call(env, hooks, target) {
                        self.emit_counted_slot_call(env, target, call);
                    }
                    self.path_hooks(env, hooks, instr, Rip::Imm(target));
                    self.exit_to(env, target, ExitKind::Branch, true);
                } else if self.quiet_paths(hooks, instr) {
                    // Native callee, nothing to run after the call: a real `call`, whose
                    // return the CPU predicts, into the exit to `next` (the return address
                    // the callee sees is that exit's jump, see `return_site_target`).
                    // Code the native callee calls back runs under other Vms, which go on
                    // from this block's edges; the return goes on from theirs.
                    self.sync_edges(env);
                    self.call_native(target);
                    self.exit_uncounted(next, ExitKind::Branch, true, false, false);
                } else {
                    // Native callee: it returns into a stub of ours that continues at `next`
                    // (pushed from a literal: one 8-byte store, see `push_guest_address`).
                    let stub_literal = self.asm.new_label();
                    self.asm.push_mem_label(stub_literal);
                    self.path_hooks(env, hooks, instr, Rip::Imm(target));
                    self.sync_edges(env);
                    self.asm.jmp_abs(target);
                    self.literals.push((stub_literal, self.asm.here()));
                    self.exit_uncounted(next, ExitKind::Branch, true, false, false);
                }
                Ok(true)
            }
            FlowControl::IndirectBranch | FlowControl::IndirectCall | FlowControl::Return => {
                self.emit_indirect(instr, env, hooks)?;
                Ok(true)
            }
        }
    }

    /// `call target`: rel32 when it reaches, else through a literal.
    fn call_native(&mut self, target: u64) {
        // rel32 counts from the end of the 5-byte call, one byte past the field's end.
        if self.asm.rel32_to(target.wrapping_sub(1)).is_some() {
            self.asm.call_to(target);
        } else {
            let l = self.asm.new_label();
            self.asm.call_mem_label(l);
            self.literals.push((l, target));
        }
    }

    /// The GOT slot of a call to a PLT entry (`jmp [rip+slot]`, after `endbr64`, with or
    /// without `bnd`) that may be called for real when the slot holds a native target:
    /// when the entry's bytes do not change, the block may use the site caches' entry, no
    /// transfer event is reported, and the entry's block would run nothing
    /// ([`plt_block_quiet`](Self::plt_block_quiet)). With new blocks reported, the site
    /// skips that block only once it ran (see `emit_native_slot_call`).
    fn native_slot_call(
        &self,
        env: &Env<'_>,
        hooks: &mut Option<Hooks<'_>>,
        target: u64,
    ) -> Option<u64> {
        if !env.inline_broker || env.site_entry.is_none() {
            return None;
        }
        let bytes = (env.code_bytes)(target)?;
        let slot = plt_slot(&bytes, target)?;
        // A slot bound to an instrumented target already: the PLT block's jump expects it
        // (`slot_target`) and goes straight there; this site would add to that.
        if let Some(now) = (env.read_word)(slot)
            && (env.in_range)(now)
            && !lazy_stub(env, now)
        {
            return None;
        }
        let quiet = hooks
            .as_mut()
            .is_none_or(|h| Self::plt_block_quiet(h, &bytes, target));
        quiet.then_some(slot)
    }

    /// A call to a PLT entry whose edges this block can count (see
    /// [`CountedSlotCall`]), when this block counts edges and the entry's block would count
    /// its edges and nothing else (no block event, no counter, no memory recording, no
    /// instruction rule or callback on its instructions) and is not reported as new.
    fn counted_slot_call(
        &self,
        env: &Env<'_>,
        hooks: &mut Option<Hooks<'_>>,
        target: u64,
    ) -> Option<CountedSlotCall> {
        if self.edge_maps.is_empty()
            || env.new_blocks_reported
            || !(env.in_range)(target)
            || target == env.boundary
        {
            return None;
        }
        let bytes = (env.code_bytes)(target)?;
        let slot = plt_slot(&bytes, target)?;
        let bound = (env.read_word)(slot)?;
        if !(env.in_range)(bound) || bound == env.boundary || lazy_stub(env, bound) {
            return None;
        }
        let bound_flags_live = (env.flags_live_at)(bound)?;
        let h = hooks.as_mut()?;
        let only_edges = h
            .inst
            .inline()
            .all(|(_, i)| matches!(i, crate::instrumentation::Inline::Edges { .. }));
        (only_edges && Self::plt_block_quiet_but_inline(h, &bytes, target)).then_some(
            CountedSlotCall {
                slot,
                bound,
                bound_flags_live,
            },
        )
    }

    /// A call to the PLT entry `plt` (`call`), after its return address is pushed: when the
    /// slot still holds the target it held at translation, both edges (this block to the
    /// entry, the entry to `bound`) are counted here and the call goes on to `bound`'s
    /// linked entry, the entry's block skipped; otherwise it falls through, every register
    /// as it was, to the plain exit to the entry. Counting at the entry's exit instead
    /// took the flag-keeping form (a PLT entry leaves without writing the flags, so they
    /// count as live there), where `bound`'s first instructions mostly overwrite them.
    fn emit_counted_slot_call(&mut self, env: &Env<'_>, plt: u64, call: CountedSlotCall) {
        let ctx = env.ctx;
        let CountedSlotCall {
            slot,
            bound,
            bound_flags_live: live,
        } = call;
        let (hit, miss) = (self.asm.new_label(), self.asm.new_label());
        let a = &mut self.asm;
        a.store(ctx + off::SPILL, RAX);
        a.store(ctx + off::SPILL + 8, RCX);
        load_rax_from(a, slot);
        a.mov_imm64(RCX, bound);
        a.rcx_diff(RAX); // rcx = slot - bound: 0 iff still bound there
        a.load(RAX, ctx + off::SPILL);
        a.jrcxz_label(hit);
        a.load(RCX, ctx + off::SPILL + 8);
        a.jmp_label(miss);
        a.bind(hit);
        a.load(RCX, ctx + off::SPILL + 8);
        let to_plt = inline::emit_counted_exit(a, ctx, &self.edge_maps, self.edge_src, plt, live);
        let to_bound = inline::emit_counted_exit(a, ctx, &self.edge_maps, plt, bound, live);
        self.exit_uncounted(bound, ExitKind::Branch, true, true, true);
        for fix in [to_plt, to_bound].into_iter().flatten() {
            fix.emit(&mut self.asm);
        }
        self.asm.bind(miss);
    }

    /// Whether the block of the PLT entry at `at` (its first bytes) would run nothing: no
    /// block entry or exit event, no inline work (counters, edges count every block), no
    /// memory recording (its jump reads the slot), no instruction rule, no instruction
    /// callback on its instructions.
    fn plt_block_quiet(h: &mut Hooks<'_>, bytes: &[u8; 16], at: u64) -> bool {
        h.inst.inline().next().is_none() && Self::plt_block_quiet_but_inline(h, bytes, at)
    }

    /// [`plt_block_quiet`](Self::plt_block_quiet), inline work aside.
    fn plt_block_quiet_but_inline(h: &mut Hooks<'_>, bytes: &[u8; 16], at: u64) -> bool {
        if h.events.intersects(ENTRY_EVENTS | EXIT_EVENTS)
            || h.inst.has_rules()
            || !h.mem.recorded.is_empty()
        {
            return false;
        }
        let mut d = Decoder::with_ip(64, bytes, at, DecoderOptions::NONE);
        loop {
            let i = d.decode();
            if i.is_invalid() {
                return false;
            }
            for position in [InstPosition::PreInst, InstPosition::PostInst] {
                if h.inst.match_inst(&i, position, (false, false)) {
                    return false;
                }
            }
            if i.flow_control() != FlowControl::Next {
                return true;
            }
        }
    }

    /// Before the plain path of a call to a PLT entry whose GOT slot is `slot`, the site's
    /// cache entry holds two pairs: a native target and the `broker` (as the inline table
    /// enters native targets), and an instrumented target and its table entry.
    /// - The slot holds the native one: a real `call` of it, which returns into the exit to
    ///   `next`. The PLT block, the broker's lookups, its shared indirect jump and a `ret`
    ///   no `call` matched are skipped.
    /// - The slot holds the instrumented one: the guest return address pushed, a jump to
    ///   the target's table entry (the PLT block and its lookup skipped).
    /// - Otherwise the slot's value is looked up in the inline table: a hit fills the pair
    ///   of its kind and takes it (unless a partial flush stopped this, `ctx.native_refill`
    ///   0, or new blocks are reported and the PLT entry's block, `plt`, is not in the
    ///   table yet: the engine enters it when it translates it, which reports it); a miss
    ///   takes the plain path, every register as it was.
    ///
    /// No flag is touched.
    fn emit_native_slot_call(&mut self, env: &Env<'_>, plt: u64, slot: u64, next: u64) {
        let ctx = env.ctx;
        let (e, _) = env.site_entry.expect("checked by native_slot_call");
        self.site_entry_taken = true;
        let (native, instrumented, miss, fill_native, plain) = (
            self.asm.new_label(),
            self.asm.new_label(),
            self.asm.new_label(),
            self.asm.new_label(),
            self.asm.new_label(),
        );
        let a = &mut self.asm;
        a.store(ctx + off::SPILL, RAX);
        a.store(ctx + off::SPILL + 8, RCX);
        load_rcx_from(a, slot, true);
        a.load(RAX, e);
        a.rcx_diff(RAX);
        a.jrcxz_label(native);
        a.rcx_diff(RAX); // rcx = the slot's value again
        a.load(RAX, e + 16);
        a.rcx_diff(RAX);
        a.jrcxz_label(instrumented);
        a.jmp_label(miss);
        a.bind(native);
        a.load(RAX, ctx + off::SPILL);
        a.load(RCX, ctx + off::SPILL + 8);
        a.call_mem(e);
        self.exit_uncounted(next, ExitKind::Branch, true, false, false);
        self.asm.bind(instrumented);
        self.push_guest_address(next);
        // The table entry's prefix restores rax and rcx from the spill slots.
        self.asm.jmp_mem(e + 24);
        let a = &mut self.asm;
        a.bind(miss);
        a.store(ctx + off::SPILL + 16, RDX);
        a.load(RCX, ctx + off::NATIVE_REFILL);
        a.jrcxz_far_label(plain);
        if env.new_blocks_reported {
            a.mov_imm64(RCX, plt);
            emit_lookup(a, ctx, env.table, Miss::Label(plain), false);
        }
        load_rcx_from(a, slot, true);
        emit_lookup(a, ctx, env.table, Miss::Label(plain), false);
        // A hit: rax = the target, rdx = its entry.
        a.bytes(&[0x48, 0x8b, 0x52, 0x08]); // mov rdx, [rdx+8]: its host
        a.load(RCX, ctx + off::NATIVE_REFILL); // the broker
        a.rcx_diff(RDX); // 0 iff native
        a.jrcxz_label(fill_native);
        a.store(e + 16, RAX);
        a.store(e + 24, RDX);
        a.load(RDX, ctx + off::SPILL + 16);
        a.jmp_label(instrumented);
        a.bind(fill_native);
        a.store(e, RAX);
        a.store(e + 8, RDX);
        a.load(RDX, ctx + off::SPILL + 16);
        a.jmp_label(native);
        a.bind(plain);
        emit_restore(a, ctx);
    }

    /// Pushes a guest return address with one 8-byte store: `push imm32` when it is one
    /// sign-extended, else `push qword [rip+literal]`. (`push imm32; mov dword [rsp+4], hi`
    /// made two stores, so the `ret`'s 8-byte load of the slot, soon after in short calls,
    /// could not be forwarded from them and waited for both to reach the cache.)
    fn push_guest_address(&mut self, value: u64) {
        if is_simm32(value) {
            self.asm.push_simm32(value);
        } else {
            let l = self.asm.new_label();
            self.asm.push_mem_label(l);
            self.literals.push((l, value));
        }
    }

    fn unsupported(&mut self, instr: &Instruction) {
        self.exit_uncounted(instr.ip(), ExitKind::Unsupported, false, false, false);
    }

    /// A straight-line instruction: copied, or re-encoded if RIP-relative.
    /// A guest `syscall`, run in place (the kernel returns to the next instruction), with
    /// rcx set afterwards to the guest address the kernel would have put there. A `clone`
    /// or `clone3` with CLONE_VM, or a `vfork`, makes a thread (or a process) sharing this
    /// Vm's memory and context, which must not run translated code on them: its child goes
    /// on natively at the next guest instruction, with exactly the registers the kernel
    /// gave it. Other children (fork) are copies of the whole process and stay
    /// instrumented. The checks use rcx and r11 only (the syscall clobbers both) and never
    /// touch RFLAGS (the kernel saves them into r11 at the syscall).
    fn emit_syscall(&mut self, ip: u64, next: u64, env: &Env<'_>) {
        const CLONE: i32 = 56;
        const VFORK: i32 = 58;
        const CLONE3: i32 = 435;
        const EXIT_GROUP: i32 = 231;
        let follow = crate::threads::following();
        let exit_group_hook = crate::threads::exit_group_hook().is_some();
        let a = &mut self.asm;
        let (clone, clone3, vfork, plain, done, exit, group) = (
            a.new_label(),
            a.new_label(),
            a.new_label(),
            a.new_label(),
            a.new_label(),
            a.new_label(),
            a.new_label(),
        );
        // The kernel takes the syscall number from eax.
        let lea_ecx_rax_minus = |a: &mut Asm, n: i32| {
            a.bytes(&[0x8d, 0x88]); // lea ecx, [rax + disp32]
            a.bytes(&(-n).to_le_bytes());
        };
        if follow {
            lea_ecx_rax_minus(a, crate::threads::SYS_EXIT as i32);
            a.jrcxz_far_label(exit);
        }
        if exit_group_hook {
            lea_ecx_rax_minus(a, EXIT_GROUP);
            a.jrcxz_far_label(group);
        }
        lea_ecx_rax_minus(a, CLONE);
        a.jrcxz_far_label(clone);
        lea_ecx_rax_minus(a, CLONE3);
        a.jrcxz_far_label(clone3);
        lea_ecx_rax_minus(a, VFORK);
        a.jrcxz_far_label(vfork);
        a.bind(plain);
        a.bytes(&[0x0f, 0x05]); // syscall
        a.mov_imm64(RCX, next);
        a.jmp_label(done);
        // clone: flags in rdi; clone3: flags in the first word of the struct at rdi.
        let bit0 = env.runtime.bit0_table;
        let test_vm = |a: &mut Asm| {
            a.bytes(&[0x0f, 0xb6, 0xcd]); // movzx ecx, ch: CLONE_VM (0x100) is its bit 0
            a.lea_rip(R11, bit0);
            a.bytes(&[0x41, 0x0f, 0xb6, 0x0c, 0x0b]); // movzx ecx, byte [r11 + rcx]
            a.jrcxz_far_label(plain);
        };
        let child = |a: &mut Asm, kind: i8| {
            a.bytes(&[0x0f, 0x05]); // syscall
            a.bytes(&[0x48, 0x89, 0xc1]); // mov rcx, rax
            let child = a.new_label();
            a.jrcxz_label(child);
            a.mov_imm64(RCX, next);
            a.jmp_label(done);
            a.bind(child);
            a.mov_imm64(RCX, next);
            if follow {
                // To the thread-start handler (threads::qbdi_thread_child), below the red
                // zone: [rsp] = next, [rsp+8] = kind, [rsp+16] = this cache's context,
                // [rsp+24] = the host stack pointer its `enter` saved (the parent is in
                // this syscall, its host stack below that is free for a vfork child).
                a.bytes(&[0x48, 0x8d, 0x64, 0x24, 0x80]); // lea rsp, [rsp-128]
                const _: () = assert!(crate::threads::CHILD_RED_ZONE == 128);
                a.load(RCX, env.ctx + off::HOST_RSP);
                a.bytes(&[0x51]); // push rcx
                a.lea_rip(RCX, env.ctx);
                a.bytes(&[0x51]); // push rcx
                a.push_imm8(kind);
                a.mov_imm64(RCX, next);
                a.bytes(&[0x51]); // push rcx
                a.jmp_abs(crate::threads::child_routine());
            } else {
                a.bytes(&[0xff, 0xe1]); // jmp rcx: the child runs natively
            }
        };
        a.bind(clone3);
        a.bytes(&[0x8b, 0x0f]); // mov ecx, [rdi]
        test_vm(a);
        child(a, crate::threads::CHILD_CLONE3);
        a.bind(clone);
        a.bytes(&[0x89, 0xf9]); // mov ecx, edi
        test_vm(a);
        child(a, crate::threads::CHILD_CLONE);
        a.bind(vfork);
        child(a, crate::threads::CHILD_VFORK);
        a.bind(exit);
        if follow {
            // The thread ends: leave the cache with the syscall's address (the dispatcher
            // returns ThreadExit; the embedder makes the system call).
            a.mov_imm64(RCX, ip);
            a.store(env.ctx + off::IB_TARGET, RCX);
            a.jmp_to(env.runtime.thread_exit);
        }
        a.bind(group);
        if exit_group_hook {
            // The process ends: leave the cache (the dispatcher calls the hook, which ends
            // it with the guest's rdi as status).
            a.mov_imm64(RCX, ip);
            a.store(env.ctx + off::IB_TARGET, RCX);
            a.jmp_to(env.runtime.exit_group);
        }
        a.bind(done);
    }

    fn emit_body(
        &mut self,
        instr: &Instruction,
        bytes: &[u8],
        pc: u64,
        env: &Env<'_>,
    ) -> Result<(), VmError> {
        let host = self.asm.here();
        if !instr.is_ip_rel_memory_operand() {
            let start = (instr.ip() - pc) as usize;
            self.asm.bytes(&bytes[start..start + instr.len()]);
            self.note_fault(host, instr.ip(), NO_SCRATCH);
            return Ok(());
        }
        let target = instr.ip_rel_memory_address();
        let at = self
            .rip_disp_offset
            .filter(|&at| at >= 1 && at + 4 <= instr.len())
            .ok_or_else(|| VmError::Translation {
                address: instr.ip(),
                reason: "a RIP-relative operand without a 32-bit displacement".into(),
            })?;
        let start = (instr.ip() - pc) as usize;
        let guest = &bytes[start..start + instr.len()];
        if instr.memory_base() == Register::RIP {
            // The same bytes, their displacement now relative to the copy's end.
            let disp = target.wrapping_sub(host + instr.len() as u64) as i64;
            if let Ok(disp) = i32::try_from(disp) {
                self.asm.bytes(guest);
                let d = self.asm.len() - instr.len() + at;
                self.asm.buf[d..d + 4].copy_from_slice(&disp.to_le_bytes());
                self.note_fault(host, instr.ip(), NO_SCRATCH);
                return Ok(());
            }
        }
        // A `lea` of a RIP-relative address computes a constant: load it (no spill).
        if instr.mnemonic() == Mnemonic::Lea
            && instr.memory_base() == Register::RIP
            && instr.op0_kind() == OpKind::Register
        {
            let r = instr.op0_register();
            let n = r.full_register().number() as u8;
            let done = match r.size() {
                8 => {
                    self.asm.mov_imm64(n, target);
                    true
                }
                4 => {
                    self.asm.mov_imm32(n, target as u32);
                    true
                }
                _ => false,
            };
            if done {
                self.note_fault(host, instr.ip(), NO_SCRATCH);
                return Ok(());
            }
        }
        // A load that writes a whole register (32 or 64 bits) addresses through it: the
        // guest's value is spilled only for a fault to put it back, and nothing is reloaded.
        if matches!(
            instr.mnemonic(),
            Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd
        ) && instr.op0_kind() == OpKind::Register
            && instr.op1_kind() == OpKind::Memory
            && matches!(instr.op0_register().size(), 4 | 8)
        {
            let n = instr.op0_register().full_register().number() as u8;
            if let Some(raw) = rebase_ip_relative(guest, at, instr, n) {
                self.asm.store(env.ctx + off::SPILL_FAR, n);
                self.asm.mov_imm64(n, target);
                let host = self.asm.here();
                self.asm.bytes(&raw[..guest.len()]);
                self.note_fault(host, instr.ip(), n);
                return Ok(());
            }
        }
        // Out of rel32 reach (or EIP-relative, which wraps at 4 GiB): the same bytes, the
        // operand now `[scratch + 0]` (ModRM mod 10, disp32 0) with scratch = the target, a
        // register the instruction does not use, spilled to the context. A RIP-relative
        // ModRM is followed by its displacement at once.
        let unrewritable = |why: &str| VmError::Translation {
            address: instr.ip(),
            reason: format!("a far RIP-relative operand: {why}"),
        };
        let n = self
            .free_register(instr)
            .ok_or_else(|| unrewritable("no free register to address it through"))?;
        let raw = rebase_ip_relative(guest, at, instr, n)
            .ok_or_else(|| unrewritable("its encoding does not take a base register"))?;
        self.asm.store(env.ctx + off::SPILL_FAR, n);
        self.asm.mov_imm64(n, target);
        let host = self.asm.here();
        self.asm.bytes(&raw[..guest.len()]);
        self.note_fault(host, instr.ip(), n);
        self.asm.load(n, env.ctx + off::SPILL_FAR);
        Ok(())
    }

    /// The byte check of a block of changing memory (its size: [`check_bytes_len`]): compares the guest bytes
    /// `[start, end)` with what they were at translation, 8 at a time (flags untouched:
    /// `rcx_diff` and `jrcxz`), then goes on at `body`; on a difference, leaves the cache
    /// with `EXIT_STALE` (the block is translated again).
    fn emit_byte_check(&mut self, env: &Env<'_>, start: u64, end: u64, body: Label) {
        let ctx = env.ctx;
        let a = &mut self.asm;
        let stale = a.new_label();
        a.store(ctx + off::SPILL, RAX);
        a.store(ctx + off::SPILL + 8, RCX);
        let word = |a: &mut Asm, w: u64| {
            // SAFETY: [w, w+8) is readable guest memory (inside the block, or below
            // `readable_end`).
            let expected = unsafe { (w as *const u64).read_unaligned() };
            a.bytes(&[0x48, 0xa1]); // mov rax, [moffs64]
            a.bytes(&w.to_le_bytes());
            a.mov_imm64(RCX, expected);
            a.rcx_diff(RAX);
            let same = a.new_label();
            a.jrcxz_label(same);
            a.jmp_label(stale);
            a.bind(same);
        };
        // Whole words; the last one ends at `end` (overlapping the one before it), or, in a
        // block shorter than a word, starts at `start` when the memory reaches that far.
        let mut at = start;
        while at + 8 <= end {
            word(a, at);
            at += 8;
        }
        if at < end {
            if end >= start + 8 {
                word(a, end - 8);
            } else if start + 8 <= env.readable_end {
                word(a, start);
            }
        }
        a.load(RAX, ctx + off::SPILL);
        a.load(RCX, ctx + off::SPILL + 8);
        a.jmp_label(body);
        a.bind(stale);
        a.mov_imm64(RCX, start);
        a.store(ctx + off::IB_TARGET, RCX);
        a.load(RAX, ctx + off::SPILL);
        a.load(RCX, ctx + off::SPILL + 8);
        a.store_imm32(ctx + off::EXIT_ID, super::context::EXIT_STALE);
        a.jmp_to(env.runtime.exit);
    }

    /// Records that the host code from `host` to here is guest instruction `guest`, which
    /// may fault (with `scratch` borrowed, or NO_SCRATCH).
    fn note_fault(&mut self, host: u64, guest: u64, scratch: u8) {
        let len = (self.asm.here() - host) as u8;
        if self.faults.len() < self.faults.capacity() {
            self.faults.push(FaultPoint {
                host,
                guest,
                len,
                scratch,
            });
        }
    }

    /// The number of a 64-bit register the instruction does not touch, one that a ModRM
    /// byte names without a REX prefix and as a plain base (not rsp, rbp).
    fn free_register(&mut self, instr: &Instruction) -> Option<u8> {
        const CANDIDATES: [Register; 6] = [
            Register::RAX,
            Register::RCX,
            Register::RDX,
            Register::RBX,
            Register::RSI,
            Register::RDI,
        ];
        let info = self.info.info(instr);
        CANDIDATES
            .into_iter()
            .find(|&c| {
                info.used_registers()
                    .iter()
                    .all(|u| u.register().full_register() != c)
            })
            .map(|c| c.number() as u8)
    }

    /// `jmp r/m`, `call r/m`, `ret`, `ret imm16`: target into rcx, then the inline lookup.
    fn emit_indirect(
        &mut self,
        instr: &Instruction,
        env: &Env<'_>,
        hooks: &mut Option<Hooks<'_>>,
    ) -> Result<(), VmError> {
        let ctx = env.ctx;
        let ret = instr.flow_control() == FlowControl::Return;
        let quiet = self.quiet_paths(hooks, instr);
        // The target a jump or call through a slot (a PLT's) will most likely take.
        let expected = if ret {
            None
        } else {
            self.slot_target(instr, env)
        };
        // A quiet return spills rdx only on its way to the table: its site cache's hits
        // leave rdx alone. So does a quiet branch with an expected target: its way there
        // (and its site cache's hits) leave rdx alone too.
        let late_rdx = quiet && (ret || expected.is_some());
        if late_rdx {
            self.asm.store(ctx + off::SPILL, RAX);
            self.asm.store(ctx + off::SPILL + 8, RCX);
        } else {
            emit_spill(&mut self.asm, ctx);
        }
        match instr.flow_control() {
            FlowControl::Return => {
                self.asm.load_rcx_from_stack_top();
                let pop = 8 + if instr.op_count() > 0 {
                    i32::from(instr.immediate16())
                } else {
                    0
                };
                self.asm.lea_rsp(pop);
            }
            _ => {
                match expected {
                    // The slot into rax: the check of the expected target below makes the
                    // difference in rcx.
                    Some(_) => load_rax_from(&mut self.asm, instr.ip_rel_memory_address()),
                    None => self.load_branch_target(instr)?,
                }
                if instr.flow_control() == FlowControl::IndirectCall {
                    self.push_guest_address(instr.next_ip());
                }
                if let Some(expected) = expected {
                    self.emit_expected_target(instr, env, hooks, expected, late_rdx);
                }
            }
        }
        if !quiet {
            // Callbacks see the guest registers and the target as rip: park the target,
            // run them, then look it up. A path with none (inline work only, or callbacks
            // elsewhere in the block) keeps the target in rcx.
            self.asm.store(ctx + off::IB_TARGET, RCX);
            emit_restore(&mut self.asm, ctx);
            self.path_hooks(env, hooks, instr, Rip::IbTarget);
            emit_spill(&mut self.asm, ctx);
            self.asm.load(RCX, ctx + off::IB_TARGET);
        }
        // A return or indirect jump first tries the targets it last went to from here (its
        // site cache). A return always fills its cache from the table; a jump does so
        // `SITE_FILLS` times, then stops using it (a switch's jump). An indirect call has
        // one only where it counts its edge there: the cache alone did not pay (a
        // polymorphic call, perl's run loop's, was slower with one). A site whose Vm has
        // one edge map counts the edge at its site cache's hits.
        let site_counting = inline::SiteCounting::of(&self.edge_maps, self.edge_src);
        let cached = env.site_entry.filter(|_| {
            instr.flow_control() != FlowControl::IndirectCall || site_counting.is_some()
        });
        let counting = cached.and(site_counting);
        // The target's counting entry (or the dispatcher) goes on from this block: the
        // thread's `prev` is set before the site cache, or after it (for the table alone)
        // when the cache's hits count the edge.
        if !self.edge_maps.is_empty() && counting.is_none() {
            inline::emit_sync(&mut self.asm, ctx, &self.edge_maps, self.edge_src);
        }
        let check = self.asm.len();
        let mut stubs = None;
        if let Some((e, _)) = cached {
            self.site_entry_taken = true;
            match counting {
                Some(c) => stubs = Some(inline::emit_counting_hits(&mut self.asm, ctx, e, c)),
                None => emit_site_check(&mut self.asm, e),
            }
        }
        // Where a jump's site goes once it stops using its cache: what follows the check
        // (the sync of a counting site, then the lookup).
        let past_check = self.asm.len();
        if let Some(c) = counting {
            c.emit_sync(&mut self.asm, ctx);
        }
        if late_rdx {
            self.asm.store(ctx + off::SPILL + 16, RDX);
        }
        emit_lookup(
            &mut self.asm,
            ctx,
            env.table,
            Miss::Addr(env.runtime.ib_miss),
            true,
        );
        let Some((e, countdown)) = cached else {
            emit_hit_jump(&mut self.asm, ctx);
            return Ok(());
        };
        let code_start = env.code_start;
        let fill = |a: &mut Asm| match (counting, stubs) {
            (Some(c), Some(stubs)) => inline::emit_counting_fill(a, ctx, e, c, code_start, stubs),
            _ => emit_site_fill(a, ctx, e),
        };
        if ret {
            fill(&mut self.asm);
        } else {
            emit_counted_fill(&mut self.asm, ctx, countdown, check, past_check, fill);
        }
        Ok(())
    }

    /// The target a `jmp`/`call [rip+slot]` (a PLT's jump, a `-fno-plt` call) will most
    /// likely take: the slot's value now, when it is an instrumented address that is not a
    /// lazy-binding stub (`push imm32` or `endbr64; push imm32`: the slot changes at the
    /// first call, after this translation).
    fn slot_target(&self, instr: &Instruction, env: &Env<'_>) -> Option<u64> {
        if !(instr.op0_kind() == OpKind::Memory
            && instr.is_ip_rel_memory_operand()
            && instr.memory_base() == Register::RIP
            && instr.segment_prefix() == Register::None)
        {
            return None;
        }
        let target = (env.read_word)(instr.ip_rel_memory_address())?;
        if !(env.in_range)(target) || target == env.boundary || lazy_stub(env, target) {
            return None;
        }
        Some(target)
    }

    /// After rax = the target of an indirect branch through a slot (rax and rcx spilled,
    /// rdx too unless `late_rdx`): when it is `expected`, the branch goes on as a direct
    /// one (its exit stub is linked to the target's block: no table lookup, a direct
    /// jump); otherwise rcx = the target, and the site cache and the lookup follow. No
    /// flag is touched.
    fn emit_expected_target(
        &mut self,
        instr: &Instruction,
        env: &Env<'_>,
        hooks: &mut Option<Hooks<'_>>,
        expected: u64,
        late_rdx: bool,
    ) {
        let (hit, miss) = (self.asm.new_label(), self.asm.new_label());
        self.asm.mov_imm64(RCX, expected);
        self.asm.rcx_diff(RAX); // rcx = target - expected: 0 iff the expected one
        self.asm.jrcxz_label(hit);
        self.asm.jmp_label(miss);
        self.asm.bind(hit);
        if late_rdx {
            self.asm.load(RAX, env.ctx + off::SPILL);
            self.asm.load(RCX, env.ctx + off::SPILL + 8);
        } else {
            emit_restore(&mut self.asm, env.ctx);
        }
        self.path_hooks(env, hooks, instr, Rip::Imm(expected));
        self.exit_to(env, expected, ExitKind::Branch, true);
        self.asm.bind(miss);
        self.asm.mov_rr(RCX, RAX);
    }

    /// rcx = the target of `jmp/call r/m64` (the guest's rax, rcx, rdx are still in place).
    fn load_branch_target(&mut self, instr: &Instruction) -> Result<(), VmError> {
        match instr.op0_kind() {
            OpKind::Register => {
                let reg = instr.op0_register();
                let n = reg_number(reg).ok_or_else(|| VmError::Translation {
                    address: instr.ip(),
                    reason: format!("branch through {reg:?}"),
                })?;
                self.asm.mov_rr(RCX, n);
                Ok(())
            }
            OpKind::Memory => {
                if instr.is_ip_rel_memory_operand() {
                    // CS, DS, ES and SS prefixes (`notrack` among them) mean nothing in
                    // 64-bit mode; FS and GS would add a base.
                    if matches!(instr.segment_prefix(), Register::FS | Register::GS) {
                        return Err(VmError::Translation {
                            address: instr.ip(),
                            reason: "a branch through an FS/GS-relative RIP-relative slot".into(),
                        });
                    }
                    // A PLT's `jmp [rip+slot]`; an EIP-relative slot through its address.
                    let rip = instr.memory_base() == Register::RIP;
                    load_rcx_from(&mut self.asm, instr.ip_rel_memory_address(), rip);
                    return Ok(());
                }
                let mem = MemOperand {
                    segment: instr.segment_prefix(),
                    base: instr.memory_base(),
                    index: instr.memory_index(),
                    scale: instr.memory_index_scale(),
                    disp: instr.memory_displacement64(),
                };
                if encode::reg_mem(&mut self.asm, 0x8b, true, RCX, &mem) {
                    Ok(())
                } else {
                    Err(VmError::Translation {
                        address: instr.ip(),
                        reason: format!("a branch through the operand {mem:?}"),
                    })
                }
            }
            _ => Err(VmError::Translation {
                address: instr.ip(),
                reason: "indirect branch without a register or memory operand".into(),
            }),
        }
    }

    /// Ends the block (or one path of it) with a jump to an exit stub for `target`. With
    /// edge maps, a branch to an instrumented block counts its edge on the way
    /// (`inline::emit_counted_exit`) and links to the target's linked entry; a target
    /// whose bytes may change or cannot be read now is reached through its counting entry,
    /// the thread's `prev` words set first.
    fn exit_to(&mut self, env: &Env<'_>, target: u64, kind: ExitKind, linkable: bool) {
        let mut counted = false;
        let mut fix = None;
        if !self.edge_maps.is_empty()
            && kind == ExitKind::Branch
            && linkable
            && target != env.boundary
        {
            match (env.flags_live_at)(target).filter(|_| (env.in_range)(target)) {
                Some(live) => {
                    fix = inline::emit_counted_exit(
                        &mut self.asm,
                        env.ctx,
                        &self.edge_maps,
                        self.edge_src,
                        target,
                        live,
                    );
                    counted = true;
                }
                None => self.sync_edges(env),
            }
        }
        self.exit_uncounted(target, kind, linkable, counted, true);
        // A NeverZero count's rare path, out of the way of the usual one: it comes back to
        // the exit's jump, just after its `jz`.
        if let Some(fix) = fix {
            fix.emit(&mut self.asm);
        }
    }

    /// An exit whose edge is not counted here: the target's counting entry counts it (with
    /// the thread's `prev` words as they are) or none (`counted` says the caller did).
    /// `chained`: see [`EmittedExit::chained`].
    fn exit_uncounted(
        &mut self,
        target: u64,
        kind: ExitKind,
        linkable: bool,
        counted: bool,
        chained: bool,
    ) {
        let l = self.asm.new_label();
        let site = self.asm.jmp_label(l);
        self.pending.push((
            l,
            target,
            if linkable { site } else { 0 },
            kind,
            counted,
            chained,
        ));
    }

    /// Sets the thread's `prev` words to this block before a way out that reaches a
    /// counting entry (a lookup, a native call, an uncounted branch); keeps every register.
    fn sync_edges(&mut self, env: &Env<'_>) {
        if self.edge_maps.is_empty() {
            return;
        }
        let spill = env.ctx + off::INLINE_SPILL;
        self.asm.store(spill, RAX);
        inline::emit_sync(&mut self.asm, env.ctx, &self.edge_maps, self.edge_src);
        self.asm.load(RAX, spill);
    }

    /// Emits the stubs: `mov dword [ctx.exit_id], id; jmp exit`.
    fn emit_stubs(&mut self, env: &Env<'_>) {
        for (i, (label, target, site, kind, counted, chained)) in self.pending.drain(..).enumerate()
        {
            self.asm.bind(label);
            let stub = self.asm.here();
            self.asm
                .store_imm32(env.ctx + off::EXIT_ID, env.first_stub_id + i as u32);
            self.asm.jmp_to(env.runtime.exit);
            self.exits.push(EmittedExit {
                target,
                site,
                stub,
                kind,
                counted,
                chained,
            });
        }
    }
}

/// `guest` (the bytes of `instr`, RIP- or EIP-relative, its 32-bit displacement at `at`)
/// with its memory operand turned into `[reg + 0]` (`reg` in 0-3, 6, 7: named by ModRM
/// alone; its 32-bit form under an address-size prefix): ModRM mod 10 and rm `reg`, the
/// displacement 0 (a RIP-relative ModRM is followed by its displacement at once). None if
/// the result does not decode as the same instruction on that base (a REX, VEX or EVEX B
/// bit, meaningless RIP-relative, would name another register).
fn rebase_ip_relative(guest: &[u8], at: usize, instr: &Instruction, reg: u8) -> Option<[u8; 15]> {
    if at == 0 || at + 4 > guest.len() || matches!(reg, 4 | 5) || reg > 7 {
        return None;
    }
    let mut raw = [0u8; 15];
    raw[..guest.len()].copy_from_slice(guest);
    let modrm = raw[at - 1];
    if modrm & 0xc7 != 0x05 {
        return None;
    }
    raw[at - 1] = 0x80 | (modrm & 0x38) | reg;
    raw[at..at + 4].fill(0);
    let first = if instr.memory_base() == Register::EIP {
        Register::EAX
    } else {
        Register::RAX
    };
    let base = Register::try_from(first as usize + usize::from(reg)).ok()?;
    let check = Decoder::with_ip(64, &raw[..guest.len()], 0, DecoderOptions::NONE).decode();
    (!check.is_invalid()
        && check.len() == guest.len()
        && check.code() == instr.code()
        && check.memory_base() == base
        && check.memory_index() == Register::None
        && check.memory_displacement64() == 0)
        .then_some(raw)
}

/// The check of a return's site cache `e` (two pairs of guest address and host entry),
/// with the target in rcx (rax, rcx, rdx spilled): when it is one of the guest addresses,
/// jumps to its host entry (a table entry, as a hit of the table gives it: rax = the guest
/// address, rdx untouched); otherwise goes on with rcx = the target. Two pairs: a function
/// called from two places by turns (`__errno_location` around `strcoll` in sort's compare,
/// fib's two recursive calls) hits both.
fn emit_site_check(a: &mut Asm, e: u64) {
    let first = a.new_label();
    let second = a.new_label();
    emit_pair_tests(a, e, first, second);
    a.bytes(&[0xeb, 0x0c]); // jmp rel8 over the two hits' jumps (6 bytes each)
    let at = a.len();
    a.bind(first);
    a.jmp_mem(e + 8);
    a.bind(second);
    a.jmp_mem(e + 24);
    debug_assert_eq!(a.len() - at, 12);
}

/// The two compares of a site cache `e` with the target in rcx (rax free): to `first` or
/// `second` when the target is that pair's guest address (rcx = 0), on with rcx = the
/// target otherwise. No flag touched.
pub(crate) fn emit_pair_tests(a: &mut Asm, e: u64, first: Label, second: Label) {
    a.load(RAX, e);
    a.rcx_diff(RAX);
    a.jrcxz_label(first);
    a.rcx_diff(RAX);
    a.load(RAX, e + 16);
    a.rcx_diff(RAX);
    a.jrcxz_label(second);
    a.rcx_diff(RAX);
}

/// After a hit of the table at a jump whose site cache check starts at offset `check` of
/// the block: a two-byte jump to the fill, then the plain hit jump. The fill counts down at
/// `countdown` (flags untouched) and fills the cache (`fill`, which ends in the jump to the
/// target); its last time (a switch's jump, whose targets are too many for the cache), it
/// makes the site a plain lookup: the check's first bytes become a jump to offset `to` (what
/// follows the check: a counting site's sync, then the lookup), and the jump to the fill a
/// two-byte `nop`, so that hits fall into the plain hit jump. The block is this thread's
/// code: the writes are self-modifying code, which the processor sees at once.
fn emit_counted_fill(
    a: &mut Asm,
    ctx: u64,
    countdown: u64,
    check: usize,
    to: usize,
    fill: impl FnOnce(&mut Asm),
) {
    // jmp rel8 over the plain hit jump (13 bytes) to the fill.
    const HIT_JUMP: u8 = 13;
    let slot = a.len();
    let last = a.new_label();
    a.bytes(&[0xeb, HIT_JUMP]);
    emit_hit_jump(a, ctx);
    debug_assert_eq!(a.len(), slot + 2 + usize::from(HIT_JUMP));
    a.bytes(&[0x8b, 0x0d]); // mov ecx, [rip+countdown]
    let d = a.rip_disp(countdown, 0);
    a.u32(d);
    a.bytes(&[0x8d, 0x49, 0xff]); // lea ecx, [rcx-1]
    a.bytes(&[0x89, 0x0d]); // mov [rip+countdown], ecx
    let d = a.rip_disp(countdown, 0);
    a.u32(d);
    let filling = a.new_label();
    a.jrcxz_label(last);
    a.jmp_label(filling);
    a.bind(last);
    let at = a.base + check as u64;
    match u8::try_from(to - check - 2).ok().filter(|r| *r < 0x80) {
        Some(rel) => {
            a.bytes(&[0x66, 0xc7, 0x05]); // mov word [rip+check], (jmp rel8 to `to`)
            let d = a.rip_disp(at, 2);
            a.u32(d);
            a.bytes(&[0xeb, rel]);
        }
        None => {
            // The check's first instruction (a 7-byte load) becomes `jmp rel32`: its
            // first four bytes, then its fifth.
            let rel = u32::try_from(to - check - 5).expect("a site check is short");
            let r = rel.to_le_bytes();
            a.bytes(&[0xc7, 0x05]); // mov dword [rip+check], (e9 and rel's low 3 bytes)
            let d = a.rip_disp(at, 4);
            a.u32(d);
            a.bytes(&[0xe9, r[0], r[1], r[2]]);
            a.bytes(&[0xc6, 0x05]); // mov byte [rip+check+4], rel's high byte
            let d = a.rip_disp(at + 4, 1);
            a.u32(d);
            a.bytes(&[r[3]]);
        }
    }
    a.bytes(&[0x66, 0xc7, 0x05]); // mov word [rip+slot], (66 90: nop)
    let d = a.rip_disp(a.base + slot as u64, 2);
    a.u32(d);
    a.bytes(&[0x66, 0x90]);
    emit_hit_jump(a, ctx);
    a.bind(filling);
    fill(a);
}

/// After a hit of the table at a site with cache `e`: the pair goes first in the
/// site's cache, the first pair second (the second forgotten), then on as
/// [`emit_hit_jump`].
fn emit_site_fill(a: &mut Asm, ctx: u64, e: u64) {
    emit_pair_fill(a, e);
    a.load(RDX, ctx + off::SPILL + 16);
    a.bytes(&[0xff, 0xe1]); // jmp rcx
}

/// After a hit of the table (rax = the guest address, rdx = the entry): site cache `e`'s
/// first pair becomes its second (the second forgotten) and the table's pair its first.
/// Leaves rcx = the table's host; no flag touched.
pub(crate) fn emit_pair_fill(a: &mut Asm, e: u64) {
    a.load(RCX, e);
    a.store(e + 16, RCX);
    a.load(RCX, e + 8);
    a.store(e + 24, RCX);
    a.store(e, RAX);
    a.bytes(&[0x48, 0x8b, 0x4a, 0x08]); // mov rcx, [rdx+8]
    a.store(e + 8, RCX);
}

/// `endbr64`'s bytes.
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// Whether the code at `at` is a lazy-binding stub (`push imm32`, or `endbr64; push imm32`:
/// its slot changes at the first call), or cannot be read now.
fn lazy_stub(env: &Env<'_>, at: u64) -> bool {
    (env.read_word)(at).is_none_or(|w| {
        let head = w.to_le_bytes();
        head[0] == 0x68 || (head[..4] == ENDBR64 && head[4] == 0x68)
    })
}

/// The GOT slot a PLT entry at `at` jumps through, from its first bytes: `jmp [rip+d]`,
/// `bnd jmp [rip+d]`, either after `endbr64`.
pub(crate) fn plt_slot(bytes: &[u8; 16], at: u64) -> Option<u64> {
    let mut i = 0;
    if bytes[..4] == ENDBR64 {
        i = 4;
    }
    if bytes[i] == 0xf2 {
        i += 1;
    }
    if bytes[i..i + 2] != [0xff, 0x25] {
        return None;
    }
    let d = i32::from_le_bytes(bytes[i + 2..i + 6].try_into().expect("4 bytes"));
    Some((at + i as u64 + 6).wrapping_add(d as i64 as u64))
}

/// A call to a PLT entry whose slot held an instrumented target at translation
/// ([`Translator::counted_slot_call`]).
#[derive(Clone, Copy)]
struct CountedSlotCall {
    /// The entry's GOT slot.
    slot: u64,
    /// What it held (not a lazy-binding stub).
    bound: u64,
    /// Whether `bound`'s block may read the flags it gets.
    bound_flags_live: bool,
}

/// `mov rax, [slot]`: RIP-relative when in reach, else `mov rax, [moffs64]` (one
/// instruction, where rcx takes two).
fn load_rax_from(a: &mut Asm, slot: u64) {
    if i32::try_from(slot.wrapping_sub(a.here() + 7) as i64).is_ok() {
        a.load(RAX, slot);
    } else {
        a.bytes(&[0x48, 0xa1]); // mov rax, [moffs64]
        a.bytes(&slot.to_le_bytes());
    }
}

/// `mov rcx, [slot]`: RIP-relative when `rip_relative` allows it and it reaches, else
/// through the slot's address.
fn load_rcx_from(a: &mut Asm, slot: u64, rip_relative: bool) {
    if rip_relative && i32::try_from(slot.wrapping_sub(a.here() + 7) as i64).is_ok() {
        a.load(RCX, slot);
    } else {
        a.mov_imm64(RCX, slot);
        a.bytes(&[0x48, 0x8b, 0x09]); // mov rcx, [rcx]
    }
}

/// Disassembly of the instruction at `address` (for error messages).
pub(crate) fn disassemble_at(address: u64) -> String {
    // SAFETY: only called for an address the translator decoded before, so at least one
    // instruction's bytes (15 at most, within the mapping it read) are readable.
    let bytes = unsafe { std::slice::from_raw_parts(address as *const u8, 15) };
    let instr = Decoder::with_ip(64, bytes, address, DecoderOptions::NONE).decode();
    let mut text = String::new();
    IntelFormatter::new().format(&instr, &mut text);
    text
}

/// Most instructions [`basic_block_end`] looks at.
const MAX_BASIC_BLOCK_SCAN: usize = 16 * MAX_BLOCK_INSTRUCTIONS;

/// The end of the guest basic block at `pc` in `bytes` (which start at `pc`): after its
/// control-flow instruction, or where translation would stop whatever the room (the range's
/// `limit`, the run's `boundary`, bytes that do not decode). What QBDI calls the basic
/// block, however many translations (sequences) its host code takes.
fn basic_block_end(bytes: &[u8], pc: u64, limit: u64, boundary: u64) -> u64 {
    let mut decoder = Decoder::with_ip(64, bytes, pc, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut ip = pc;
    for count in 0..MAX_BASIC_BLOCK_SCAN {
        if count > 0 && (ip >= limit || ip == boundary) || !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        ip = instr.next_ip();
        if is_terminator(&instr) {
            break;
        }
    }
    ip.max(pc + 1)
}

/// Whether the instruction ends a block (may change rip), as opposed to running in place.
fn is_terminator(instr: &Instruction) -> bool {
    instr.code() != Code::Syscall
        && !matches!(
            instr.flow_control(),
            FlowControl::Next | FlowControl::XbeginXabortXend
        )
}

/// Far, transactional and 16-bit control flow: refused with a clear error.
fn is_unsupported(code: Code) -> bool {
    matches!(
        code,
        Code::Jmp_ptr1616
            | Code::Jmp_ptr1632
            | Code::Jmp_m1616
            | Code::Jmp_m1632
            | Code::Jmp_m1664
            | Code::Call_ptr1616
            | Code::Call_ptr1632
            | Code::Call_m1616
            | Code::Call_m1632
            | Code::Call_m1664
            | Code::Retfw
            | Code::Retfw_imm16
            | Code::Retfd
            | Code::Retfd_imm16
            | Code::Retfq
            | Code::Retfq_imm16
            | Code::Iretw
            | Code::Iretd
            | Code::Iretq
            | Code::Retnw
            | Code::Retnw_imm16
            | Code::Call_rel16
            | Code::Call_rm16
            | Code::Jmp_rm16
            | Code::Jmp_rel16
            | Code::Xbegin_rel16
            | Code::Xbegin_rel32
            | Code::Sysenter
            | Code::Sysexitd
            | Code::Sysexitq
            | Code::Sysretd
            | Code::Sysretq
    )
}

/// Encoding number of a 64-bit general purpose register.
fn reg_number(r: Register) -> Option<u8> {
    let n = r.number();
    (r.is_gpr64()).then_some(n as u8)
}

/// Host bytes of the byte check of a block of `guest_bytes` (see `emit_byte_check`): two
/// spills, two reloads and the exit (at most 64 bytes), and 35 bytes a word.
fn check_bytes_len(env: &Env<'_>, guest_bytes: u64) -> usize {
    if env.check_bytes {
        64 + 35 * (guest_bytes as usize / 8 + 2)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `bytes` at a guest address, rebases its operand on `reg` and returns the
    /// result decoded.
    fn rebased(bytes: &[u8], reg: u8) -> Option<Instruction> {
        let ip = 0x5555_0000_1000;
        let mut d = Decoder::with_ip(64, bytes, ip, DecoderOptions::NONE);
        let i = d.decode();
        assert!(i.is_ip_rel_memory_operand(), "{bytes:02x?}");
        let at = d.get_constant_offsets(&i).displacement_offset();
        let raw = rebase_ip_relative(bytes, at, &i, reg)?;
        let r = Decoder::with_ip(64, &raw[..i.len()], 0, DecoderOptions::NONE).decode();
        // Everything but the memory operand is kept: operands, immediates, prefixes.
        assert_eq!(r.code(), i.code());
        assert_eq!(r.op_count(), i.op_count());
        for k in 0..i.op_count() {
            if i.op_kind(k) == OpKind::Register {
                assert_eq!(r.op_register(k), i.op_register(k), "{bytes:02x?}");
            }
        }
        assert_eq!(r.immediate8(), i.immediate8(), "{bytes:02x?}");
        assert_eq!(r.segment_prefix(), i.segment_prefix());
        Some(r)
    }

    #[test]
    fn far_ip_relative_operands_are_rebased_on_a_register() {
        for bytes in [
            &[0x48, 0x8b, 0x05, 0x10, 0x20, 0x30, 0x00][..], // mov rax, [rip+..]
            &[0x4c, 0x8b, 0x3d, 0x10, 0x20, 0x30, 0x00],     // mov r15, [rip+..]
            &[0x80, 0x3d, 0x10, 0x20, 0x30, 0x00, 0x7f],     // cmp byte [rip+..], 0x7f
            &[0x66, 0x0f, 0x70, 0x05, 0x10, 0x20, 0x30, 0x00, 0x1b], // pshufd xmm0, [rip+..], 0x1b
            &[0xc5, 0xfd, 0x6f, 0x0d, 0x10, 0x20, 0x30, 0x00], // vmovdqa ymm1, [rip+..]
            &[0x62, 0xe1, 0xfe, 0x48, 0x6f, 0x05, 0x10, 0x20, 0x30, 0x00], // vmovdqu64 zmm16, [rip+..]
            &[0x62, 0xf2, 0x7d, 0x48, 0x58, 0x05, 0x10, 0x20, 0x30, 0x00], // vpbroadcastd zmm0, [rip+..]
            &[0x64, 0x48, 0x8b, 0x05, 0x10, 0x20, 0x30, 0x00],             // mov rax, fs:[rip+..]
            &[0x67, 0x8b, 0x05, 0x10, 0x20, 0x30, 0x00],                   // mov eax, [eip+..]
        ] {
            for reg in [0u8, 1, 2, 3, 6, 7] {
                let r = rebased(bytes, reg).unwrap_or_else(|| panic!("{bytes:02x?} on {reg}"));
                assert_eq!(r.memory_base().number(), usize::from(reg), "{bytes:02x?}");
            }
        }
    }

    /// A return's site cache, as a return emits it (site check, table lookup, fill), run
    /// over a table and an entry in fresh memory: targets the table knows fill the entry's
    /// two pairs; both then answer alone (the table emptied); another target goes to the
    /// table.
    #[test]
    fn a_return_site_cache_fills_from_the_table_and_answers_alone() {
        use super::super::emitter::{RWX, install_test_fn, test_mapping};
        use super::super::ib_table::{ENTRY_PREFIX_LEN, IbTable, TABLE_BYTES};
        const CTX: usize = 4 * 4096;
        const LEN: usize = TABLE_BYTES + CTX + 2 * 4096;
        const MISS: u64 = 1;
        // SAFETY: a fresh private mapping (table, context, code and entry), unmapped at the
        // end; the generated function is a leaf (System V: rdi in, rax out) touching only
        // the mapping.
        unsafe {
            let region = test_mapping(LEN, RWX, 0).cast::<libc::c_void>();
            let table_at = region as u64;
            let ctx = table_at + TABLE_BYTES.next_multiple_of(4096) as u64;
            const { assert!(off::SPILL + 24 <= CTX as u64) };
            let code = ctx + CTX as u64;
            let entry = code + 4096 - 32;
            (entry as *mut [[u64; 2]; 2]).write([[u64::MAX, 0]; 2]);
            let table = IbTable::new(table_at, 0);
            // The host every hit lands on: `ret` (rax = the guest address, as on a hit).
            let host = code + 2048;
            (host as *mut u8).write(0xc3);
            let mut a = Asm::with_capacity(512);
            a.reset(code);
            a.bytes(&[0x48, 0x89, 0xf9]); // mov rcx, rdi
            emit_site_check(&mut a, entry);
            let miss = a.new_label();
            emit_lookup(&mut a, ctx, table_at, Miss::Label(miss), false);
            emit_site_fill(&mut a, ctx, entry);
            a.bind(miss);
            a.mov_imm64(RAX, MISS);
            a.bytes(&[0xc3]);
            let ret = install_test_fn(&mut a, 2048);
            let (g, h, other) = (
                0x5555_1234_5678u64,
                0x5555_1234_9000u64,
                0x7fff_0000_1000u64,
            );
            let pairs = || *(entry as *const [[u64; 2]; 2]);
            assert_eq!(ret(g), MISS);
            table.insert_block(g, host + ENTRY_PREFIX_LEN);
            table.insert_block(h, host + ENTRY_PREFIX_LEN);
            assert_eq!(ret(g), g, "found in the table");
            assert_eq!(pairs()[0], [g, host], "the site's cache filled");
            assert_eq!(ret(h), h);
            assert_eq!(
                pairs(),
                [[h, host], [g, host]],
                "the first pair moved second"
            );
            table.clear();
            // Both answer alone, by turns, and stay where they are.
            for _ in 0..3 {
                assert_eq!((ret(g), ret(h)), (g, h), "the site's cache alone");
            }
            assert_eq!(pairs(), [[h, host], [g, host]]);
            assert_eq!(ret(other), MISS);
            libc::munmap(region, LEN);
        }
    }

    /// PLT entries as linkers write them, with and without `endbr64` and `bnd`; anything
    /// else is not one.
    #[test]
    fn plt_entries_give_their_slot() {
        let at = 0x5555_0000_1000u64;
        let entry = |head: &[u8]| {
            let mut b = [0x90u8; 16];
            b[..head.len()].copy_from_slice(head);
            b
        };
        // disp32 0x2ff0 from the end of the jump.
        let jmp = [0xff, 0x25, 0xf0, 0x2f, 0, 0];
        let cases: [(&[u8], Option<u64>); 6] = [
            (&jmp, Some(at + 6 + 0x2ff0)),
            (&[&[0xf2][..], &jmp].concat(), Some(at + 7 + 0x2ff0)),
            (
                &[&[0xf3, 0x0f, 0x1e, 0xfa][..], &jmp].concat(),
                Some(at + 10 + 0x2ff0),
            ),
            (
                &[&[0xf3, 0x0f, 0x1e, 0xfa, 0xf2][..], &jmp].concat(),
                Some(at + 11 + 0x2ff0),
            ),
            // A negative displacement.
            (&[0xff, 0x25, 0xf0, 0xff, 0xff, 0xff], Some(at + 6 - 0x10)),
            // jmp rax, a lazy-binding stub's push: not PLT jumps through a slot.
            (&[0xff, 0xe0], None),
        ];
        for (head, slot) in cases {
            assert_eq!(plt_slot(&entry(head), at), slot, "{head:02x?}");
        }
        assert_eq!(plt_slot(&entry(&[0x68, 1, 0, 0, 0]), at), None);
    }

    #[test]
    fn encodings_whose_b_bit_would_name_another_register_are_refused() {
        // mov rax, [rip+..] with REX.B set (meaningless RIP-relative): [r8+0] after rebasing.
        assert!(rebased(&[0x49, 0x8b, 0x05, 0x10, 0x20, 0x30, 0x00], 0).is_none());
        // rsp and rbp cannot be named by ModRM alone.
        assert!(rebased(&[0x48, 0x8b, 0x05, 0x10, 0x20, 0x30, 0x00], 4).is_none());
        assert!(rebased(&[0x48, 0x8b, 0x05, 0x10, 0x20, 0x30, 0x00], 5).is_none());
    }
}
