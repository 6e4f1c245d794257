//! Inline instrumentation: work translated code does itself, with no callback
//! (`Vm::add_block_counter`, `Vm::add_edge_map`). The code keeps every guest register
//! (rax, rcx spilled to the context) and the arithmetic flags where the guest may read
//! them ([`status_flags_live`]): counters then increment with `mov`/`lea`/`mov`, edge maps
//! read their line's next count from a 256-byte table (`next_count_table`: `movzx`, `movzx`,
//! `mov`, no flag touched) at counted exits, or save the flags with `lahf`/`seto` (restored
//! by `add al, 0x7f` and `sahf`) at counting entries (whose `xor` writes them) and where
//! the table or the line is out of 32-bit reach.
//!
//! - A counter, at every entry of its block: `inc qword [slot]` for a slot in the first
//!   2 GiB or near the code, `mov rax, slot; inc qword [rax]` otherwise. Not atomic (a
//!   `lock` costs 10-20 cycles and serialises memory): the slots a Vm's counter gives must
//!   be that Vm's own, and a Vm runs on one thread at a time. The slot depends on the
//!   block's extent, known once it is translated: the head is emitted in its longest form
//!   and rewritten then ([`CounterHead`]).
//! - An edge map (AFL's `map[prev ^ cur] += 1; prev = cur >> 1`, `cur` the block's hash,
//!   computed at translation) is counted where the edge is known:
//!   - **at the exits**: a branch from block A to block B, both known at A's translation,
//!     adds to a constant line: `add byte [line], 1` (and `adc byte [line], 0` for
//!     NeverZero; `inc byte [line]` and a `jz` to a rare path, [`NeverZeroFix`], for one
//!     NeverZero map where B's flags are dead), RIP-relative or absolute when the map is
//!     in reach (the SDK places maps in the first 2 GiB), through rax otherwise
//!     ([`emit_counted_exit`]). The exit links to B's **linked entry**, past its counting
//!     code;
//!   - **at a counting entry**, for every other way into B (an indirect branch's table
//!     entry, the dispatcher, a native function returning): `prev` is the thread's word
//!     ([`thread_prev`]): `mov rcx, [ctx.edge_prev]; mov rcx, [rcx + 8i]; xor rcx, cur`,
//!     then the table's next count into `[rcx + map]` for a map in the first 2 GiB
//!     (`inc byte [rcx + map]` and a rare path, [`NeverZeroFix`], for one NeverZero map where
//!     B's flags are dead; `add byte [rax + rcx], 1` with the map's address in rax
//!     otherwise, [`emit_counting`]);
//!   - **at a site cache's hit** of a return, indirect jump or indirect call, for one map
//!     in the first 2 GiB: the pair's line, from the target's header, with the table's
//!     next count ([`emit_counting_hits`]).
//!
//!   Nothing else runs per block: the thread's words are brought up to date only where a
//!   counting entry may come next. An indirect branch and a call of native code store
//!   their block's value ([`emit_sync`]); the dispatcher, at an exit through a stub of a
//!   block or a callback site in it, stores that block's ([`chain_from`]). So every Vm
//!   running on a thread (a re-entry's, a signal handler's) continues the thread's edge
//!   chain, as AFL's thread-local `prev` does, with one difference: a run that starts in
//!   the middle of a block (a signal handler's, one a callback starts) goes on from the
//!   last block that left through one of those ways, not from the interrupted one, whose
//!   next edge goes from itself.
//!
//!   On `sort` under `--all-maps` (145 M blocks, 0.10 s without plugin) the edges plugin
//!   took 0.36 s with the whole edge at each block's head, 0.26 s this way.
//!
//! Edge counts are not atomic (as AFL's own instrumentation): threads running the same
//! edge at once may lose increments.

use std::cell::Cell;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, RflagsBits};

use super::context::off;
use super::emitter::{Asm, Label, RAX, RCX};
use super::ib_table::{ENTRY_PREFIX_LEN, emit_hit_jump};
use super::translator::{emit_pair_fill, emit_pair_tests};
use crate::instrumentation::{Inline, Instrumentation};

/// OF SF ZF AF PF CF.
const STATUS: u32 = RflagsBits::OF
    | RflagsBits::SF
    | RflagsBits::ZF
    | RflagsBits::AF
    | RflagsBits::PF
    | RflagsBits::CF;

/// Most edge maps one Vm carries (each has a `prev` word per thread).
pub(crate) const MAX_EDGE_MAPS: usize = 8;

thread_local! {
    /// This thread's `prev` word of each edge map (by its index). No destructor: never
    /// registered with libc.
    static PREV: [Cell<u64>; MAX_EDGE_MAPS] = const { [const { Cell::new(0) }; MAX_EDGE_MAPS] };
}

/// The address of this thread's `prev` words (stable for the thread's life).
pub(crate) fn thread_prev() -> u64 {
    PREV.with(|p| p.as_ptr() as u64)
}

/// The thread's `prev` words become those of the basic block at `bb_start`: the block a
/// way out of the cache left (the dispatcher calls it at exits whose block is known: a stub
/// of the block, a callback site in it), for what runs next on the thread (a counting
/// entry, another Vm).
pub(crate) fn chain_from(inst: &Instrumentation, bb_start: u64) {
    PREV.with(|p| {
        for (_, i) in inst.inline() {
            if let Inline::Edges {
                mask, hash, index, ..
            } = i
            {
                p[*index as usize].set((hash(bb_start) & mask) >> 1);
            }
        }
    });
}

/// The next value of a map line, by its value: 256 bytes with NeverZero (255 goes to 1),
/// then 256 that wrap (255 goes to 0). Read-only, in the first 2 GiB, so that generated
/// code indexes it with a 32-bit absolute address: `movzx eax, byte [line]; movzx eax,
/// byte [rax + table]; mov [line], al` counts an edge without touching the flags, where
/// `add`/`adc` would have them saved and restored. None if no memory could be had there
/// (the code saves the flags then).
fn next_count_table() -> Option<u64> {
    static TABLE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TABLE.get_or_init(|| {
        // SAFETY: a fresh private mapping, filled before it is made read-only and never
        // unmapped (generated code may read it for the life of the process).
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            );
            if p == libc::MAP_FAILED || !is_abs32(p as u64 + 512) {
                return None;
            }
            let t = std::slice::from_raw_parts_mut(p.cast::<u8>(), 512);
            for v in 0..256usize {
                t[v] = if v == 255 { 1 } else { v as u8 + 1 };
                t[256 + v] = (v as u8).wrapping_add(1);
            }
            libc::mprotect(p, 4096, libc::PROT_READ);
            Some(p as u64)
        }
    })
}

/// `movzx eax, byte [rax + disp32]` with the next-count table of `m` (NeverZero or not).
fn next_count(a: &mut Asm, table: u64, never_zero: bool) {
    let t = table + if never_zero { 0 } else { 256 };
    a.bytes(&[0x0f, 0xb6, 0x80]);
    a.bytes(&(t as u32).to_le_bytes());
}

/// Instructions looked at for [`status_flags_live`].
const LOOKAHEAD: usize = 16;

/// Bytes enough for [`status_flags_live`]'s instructions, mostly (fewer instructions fit
/// when they are long: the flags count as live).
pub(crate) const FLAGS_LOOKAHEAD_BYTES: u64 = 96;

/// Whether the guest may read the arithmetic flags it has at `pc` (the start of a block in
/// `bytes`): false only when the first instructions overwrite all six before any reads one
/// or leaves the block. Shifts, rotates and `rep` string instructions do not count as
/// writes (a zero count keeps the flags).
pub(crate) fn status_flags_live(bytes: &[u8], pc: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, bytes, pc, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut pending = STATUS;
    for _ in 0..LOOKAHEAD {
        if !decoder.can_decode() {
            return true;
        }
        decoder.decode_out(&mut instr);
        if instr.is_invalid() || instr.rflags_read() & pending != 0 {
            return true;
        }
        // A zero count writes nothing: a shift or rotate by it, a `rep` string
        // instruction (`repe cmpsb` with rcx = 0).
        let conditional = instr.has_rep_prefix()
            || instr.has_repne_prefix()
            || matches!(
                instr.mnemonic(),
                Mnemonic::Shl
                    | Mnemonic::Shr
                    | Mnemonic::Sal
                    | Mnemonic::Sar
                    | Mnemonic::Rol
                    | Mnemonic::Ror
                    | Mnemonic::Rcl
                    | Mnemonic::Rcr
                    | Mnemonic::Shld
                    | Mnemonic::Shrd
            );
        if !conditional {
            pending &= !instr.rflags_modified();
        }
        if pending == 0 {
            return false;
        }
        if instr.flow_control() != FlowControl::Next {
            return true;
        }
    }
    true
}

/// An edge map as one translation counts it (a copy of its [`Inline::Edges`] entry).
#[derive(Clone, Copy)]
pub(crate) struct EdgeMap {
    map: u64,
    mask: u64,
    /// The map's hash: the entry's closure, alive for the translation (the entries of an
    /// `Instrumentation` do not change while a block is translated).
    hash: *const (dyn Fn(u64) -> u64 + 'static),
    index: u32,
    never_zero: bool,
}

impl EdgeMap {
    /// `cur` of the block at `pc`: its hash, masked.
    fn cur(&self, pc: u64) -> u64 {
        // SAFETY: see `hash`: the closure outlives the translation using this copy.
        (unsafe { &*self.hash })(pc) & self.mask
    }
}

/// The edge maps of `inst`, into `out` (room for `MAX_EDGE_MAPS` reserved).
pub(crate) fn edge_maps(inst: &Instrumentation, out: &mut Vec<EdgeMap>) {
    out.clear();
    for (_, i) in inst.inline() {
        if let Inline::Edges {
            map,
            mask,
            hash,
            index,
            never_zero,
        } = i
            && out.len() < out.capacity()
        {
            let hash: &(dyn Fn(u64) -> u64 + 'static) = &**hash;
            out.push(EdgeMap {
                map: *map,
                mask: *mask,
                hash: hash as *const _,
                index: *index,
                never_zero: *never_zero,
            });
        }
    }
}

/// The **counting entry** of the block at `pc` (every way in but a counted exit's link): for
/// each edge map, `map[prev ^ cur] += 1` with `prev` the thread's word, which every way of
/// reaching such an entry has set (see [`emit_sync`]). The block's [`emit_head`] follows.
/// rax and rcx go to the indirect branches' spill slots (`ctx.spill`), where an indirect
/// branch that enters through the table has them already: when both are spilled, returns
/// the offset past their stores, where the block's table entry may jump (see the
/// translator), skipping its reloads and these stores.
///
/// One NeverZero map in the first 2 GiB and the flags dead: `inc byte [rcx + map]` and a
/// `jz` to a [`NeverZeroFix`] the caller emits out of the way (rcx alone spilled, no
/// next-count table), as counted exits do.
pub(crate) fn emit_counting(
    a: &mut Asm,
    ctx: u64,
    maps: &[EdgeMap],
    pc: u64,
    flags_live: bool,
) -> (Option<usize>, Option<NeverZeroFix>) {
    if maps.is_empty() {
        return (None, None);
    }
    // Maps in the first 2 GiB take their line as `[rcx + map]`: rcx alone does the work,
    // and rax the count when the next-count table is there too. The `xor` that makes the
    // line writes the flags: they are saved where the block may read them, table or not.
    let low = maps.iter().all(|m| is_abs32(m.map + m.mask));
    let inc = low && !flags_live && matches!(maps, [m] if m.never_zero);
    let table = next_count_table().filter(|_| low && !inc);
    let spill = ctx + off::INLINE_SPILL;
    let regs = ctx + off::SPILL;
    let use_rax = !low || flags_live || table.is_some();
    if use_rax {
        a.store(regs, RAX);
    }
    a.store(regs + 8, RCX);
    let past_spills = use_rax.then(|| a.len());
    if flags_live {
        a.save_status_flags(spill + 16);
    }
    let mut fix = None;
    for m in maps {
        let cur = m.cur(pc);
        let slot = (m.index * 8).to_le_bytes();
        if low {
            a.load(RCX, ctx + off::EDGE_PREV);
            a.bytes(&[0x48, 0x8b, 0x89]); // mov rcx, [rcx + disp32]
            a.bytes(&slot);
            a.bytes(&[0x48, 0x81, 0xf1]); // xor rcx, imm32
            a.bytes(&(cur as u32).to_le_bytes());
            let map = (m.map as u32).to_le_bytes();
            if inc {
                a.bytes(&[0xfe, 0x81]); // inc byte [rcx + disp32]
                a.bytes(&map);
                fix = Some(NeverZeroFix::jump_after_inc(a, FixLine::Rcx(m.map as u32)));
                continue;
            }
            if let Some(t) = table {
                a.bytes(&[0x0f, 0xb6, 0x81]); // movzx eax, byte [rcx + disp32]
                a.bytes(&map);
                next_count(a, t, m.never_zero);
                a.bytes(&[0x88, 0x81]); // mov [rcx + disp32], al
                a.bytes(&map);
                continue;
            }
            a.bytes(&[0x80, 0x81]); // add byte [rcx + disp32], 1
            a.bytes(&map);
            a.bytes(&[0x01]);
            if m.never_zero {
                a.bytes(&[0x80, 0x91]); // adc byte [rcx + disp32], 0
                a.bytes(&map);
                a.bytes(&[0x00]);
            }
        } else {
            a.load(RAX, ctx + off::EDGE_PREV);
            a.bytes(&[0x48, 0x8b, 0x88]); // mov rcx, [rax + disp32]
            a.bytes(&slot);
            a.bytes(&[0x48, 0x81, 0xf1]); // xor rcx, imm32
            a.bytes(&(cur as u32).to_le_bytes());
            a.mov_imm64(RAX, m.map);
            a.bytes(&[0x80, 0x04, 0x08, 0x01]); // add byte [rax + rcx], 1
            if m.never_zero {
                a.bytes(&[0x80, 0x14, 0x08, 0x00]); // adc byte [rax + rcx], 0
            }
        }
    }
    if flags_live {
        a.restore_status_flags(spill + 16);
    }
    a.load(RCX, regs + 8);
    if use_rax {
        a.load(RAX, regs);
    }
    (past_spills, fix)
}

/// The counters of a block's head (its **linked entry**, where counted exits go, runs them
/// too): emitted by [`emit_head`] in their longest form, rewritten by [`apply_patches`] once
/// the block's extent, and so each counter's slot, is known.
pub(crate) struct CounterHead {
    /// Offset of the head in the block's code, and the bytes reserved for it.
    at: usize,
    len: usize,
    flags_live: bool,
    /// The counters' ids (room for `MAX_INLINE_COUNTERS`).
    ids: Vec<u32>,
    /// Their slots, once asked.
    slots: Vec<u64>,
    /// Where the final code is assembled (at the head's address).
    scratch: Asm,
}

impl CounterHead {
    pub(crate) fn new() -> CounterHead {
        CounterHead {
            at: 0,
            len: 0,
            flags_live: false,
            ids: Vec::with_capacity(MAX_INLINE_COUNTERS),
            slots: Vec::with_capacity(MAX_INLINE_COUNTERS),
            scratch: Asm::with_capacity(HEAD_MAX_BYTES),
        }
    }

    /// No counters (a new translation).
    pub(crate) fn clear(&mut self) {
        self.ids.clear();
        self.slots.clear();
    }
}

/// The longest head: per counter, `mov rax, imm64` and its increment (20 bytes), plus the
/// spills.
const HEAD_MAX_BYTES: usize = MAX_INLINE_COUNTERS * 20 + 64;

/// Emits the block's counters (none: nothing), in the form that takes any slot; the slots
/// are left for [`apply_patches`], which records their ids in `head`.
pub(crate) fn emit_head(
    a: &mut Asm,
    ctx: u64,
    inst: &Instrumentation,
    flags_live: bool,
    head: &mut CounterHead,
) {
    head.clear();
    for (id, i) in inst.inline() {
        if matches!(i, Inline::Counter(_)) && head.ids.len() < head.ids.capacity() {
            head.ids.push(id); // more than MAX_INLINE_COUNTERS: not counted
            head.slots.push(0);
        }
    }
    if head.ids.is_empty() {
        return;
    }
    head.at = a.len();
    head.flags_live = flags_live;
    head_code(a, ctx, &head.slots, flags_live, false);
    head.len = a.len() - head.at;
}

/// The counters' code for `slots`. The long form (`short` false, or a slot out of reach)
/// takes any address: `mov rax, slot; inc qword [rax]` (a load, `lea` and a store with the
/// flags live, rcx spilled). The short one, for slots every instruction of it reaches with
/// a 32-bit absolute or RIP-relative address (the SDK places its counters in the first
/// 2 GiB): `inc qword [slot]`, or with the flags live `mov rax, [slot]; lea rax, [rax + 1];
/// mov [slot], rax`.
fn head_code(a: &mut Asm, ctx: u64, slots: &[u64], flags_live: bool, short: bool) {
    let spill = ctx + off::INLINE_SPILL;
    let here = a.here();
    if short && slots.iter().all(|&s| reach_from(here, s) != Reach::Rax) {
        // REX.W, `opcode` with rax (or /0) and `qword [slot]`.
        let mem = |a: &mut Asm, opcode: u8, s: u64| {
            a.bytes(&[0x48, opcode]);
            mem_operand(a, reach_from(here, s), 0, s, 0);
        };
        if flags_live {
            a.store(spill, RAX);
            for &s in slots {
                mem(a, 0x8b, s); // mov rax, [slot]
                a.bytes(&[0x48, 0x8d, 0x40, 0x01]); // lea rax, [rax + 1]
                mem(a, 0x89, s); // mov [slot], rax
            }
            a.load(RAX, spill);
        } else {
            for &s in slots {
                mem(a, 0xff, s); // inc qword [slot]
            }
        }
        return;
    }
    a.store(spill, RAX);
    if flags_live {
        a.store(spill + 8, RCX);
    }
    for &s in slots {
        a.mov_imm64(RAX, s);
        if flags_live {
            a.bytes(&[0x48, 0x8b, 0x08]); // mov rcx, [rax]
            a.bytes(&[0x48, 0x8d, 0x49, 0x01]); // lea rcx, [rcx + 1]
            a.bytes(&[0x48, 0x89, 0x08]); // mov [rax], rcx
        } else {
            a.bytes(&[0x48, 0xff, 0x00]); // inc qword [rax]
        }
    }
    if flags_live {
        a.load(RCX, spill + 8);
    }
    a.load(RAX, spill);
}

/// `n` bytes that do nothing: multi-byte NOPs (the forms Intel's manual recommends), or a
/// jump over them when they are many.
fn pad(a: &mut Asm, mut n: usize) {
    const NOPS: [&[u8]; 9] = [
        &[0x90],
        &[0x66, 0x90],
        &[0x0f, 0x1f, 0x00],
        &[0x0f, 0x1f, 0x40, 0x00],
        &[0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
        &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    ];
    if n > 3 * NOPS.len() {
        // jmp rel8 or rel32 over the rest (never executed: int3).
        if n - 2 <= 127 {
            a.bytes(&[0xeb, (n - 2) as u8]);
            n -= 2;
        } else {
            a.bytes(&[0xe9]);
            a.bytes(&((n - 5) as u32).to_le_bytes());
            n -= 5;
        }
        for _ in 0..n {
            a.bytes(&[0xcc]);
        }
        return;
    }
    while n > 0 {
        let k = n.min(NOPS.len());
        a.bytes(NOPS[k - 1]);
        n -= k;
    }
}

/// The rare path of a NeverZero `inc byte [line]` ([`emit_counted_exit`],
/// [`emit_counting`]): the line wrapped to 0 and becomes 1, then back after the `jz` that
/// led here. The caller emits it where no path falls into it.
#[must_use]
pub(crate) struct NeverZeroFix {
    line: FixLine,
    label: Label,
    back: Label,
}

/// The line of a [`NeverZeroFix`].
enum FixLine {
    /// A constant line (a counted exit's), RIP-relative or absolute.
    At(u64),
    /// `[rcx + map]` (a counting entry's, rcx as the entry left it).
    Rcx(u32),
}

impl NeverZeroFix {
    /// The `jz` after an `inc` of `line`, to the fix.
    fn jump_after_inc(a: &mut Asm, line: FixLine) -> NeverZeroFix {
        let (label, back) = (a.new_label(), a.new_label());
        a.jcc_label(0x4, label); // jz: it wrapped
        a.bind(back);
        NeverZeroFix { line, label, back }
    }

    /// `mov byte [line], 1`, then a jump back.
    pub(crate) fn emit(self, a: &mut Asm) {
        a.bind(self.label);
        match self.line {
            FixLine::At(line) => {
                let reach = reach_from(a.here(), line);
                assert!(
                    reach != Reach::Rax,
                    "a line in reach of its exit is in reach here"
                );
                a.bytes(&[0xc6]); // mov byte [line], 1
                mem_operand(a, reach, 0, line, 1);
            }
            FixLine::Rcx(map) => {
                a.bytes(&[0xc6, 0x81]); // mov byte [rcx + disp32], 1
                a.bytes(&map.to_le_bytes());
            }
        }
        a.bytes(&[1]);
        a.jmp_label(self.back);
    }
}

/// A **counted exit** from the basic block at `src` to the one at `target`: both are known,
/// so each map's line is a constant and `map[line] += 1` is one instruction (two with
/// NeverZero) on the line's address, RIP-relative or absolute when it is in reach, through
/// rax otherwise. With `flags_live` (the target may read the flags it gets) they are saved
/// and restored around it.
///
/// One NeverZero map in reach and the flags dead: `inc byte [line]` and a `jz` not taken
/// but when the line wraps, to a [`NeverZeroFix`] the caller emits after the exit's jump
/// (which follows the `jz`, where the fix comes back):
/// one read-modify-write of the line instead of `add` then `adc` (a loop's back edge
/// counted again and again waits for the previous count through memory twice per turn).
pub(crate) fn emit_counted_exit(
    a: &mut Asm,
    ctx: u64,
    maps: &[EdgeMap],
    src: u64,
    target: u64,
    flags_live: bool,
) -> Option<NeverZeroFix> {
    let spill = ctx + off::INLINE_SPILL;
    let line = |m: &EdgeMap| m.map + ((m.cur(src) >> 1) ^ m.cur(target));
    let here = a.here();
    let reach = |addr: u64| reach_from(here, addr);
    if let [m] = maps
        && m.never_zero
        && !flags_live
        && reach(line(m)) != Reach::Rax
        && reach_from(here + 4096, line(m)) != Reach::Rax
    {
        let l = line(m);
        a.bytes(&[0xfe]); // inc byte [line]
        mem_operand(a, reach(l), 0, l, 0);
        return Some(NeverZeroFix::jump_after_inc(a, FixLine::At(l)));
    }
    let rax_spilled = flags_live || maps.iter().any(|m| reach(line(m)) == Reach::Rax);
    if rax_spilled {
        a.store(spill, RAX);
    }
    // With the flags live, lines in reach go through the next-count table: no flags to save.
    let table = next_count_table()
        .filter(|_| flags_live && maps.iter().all(|m| reach(line(m)) != Reach::Rax));
    if let Some(t) = table {
        for m in maps {
            let l = line(m);
            a.bytes(&[0x0f, 0xb6]); // movzx eax, byte [line]
            mem_operand(a, reach(l), 0, l, 0);
            next_count(a, t, m.never_zero);
            a.bytes(&[0x88]); // mov [line], al
            mem_operand(a, reach(l), 0, l, 0);
        }
        a.load(RAX, spill);
        return None;
    }
    if flags_live {
        a.save_status_flags(spill + 16);
    }
    for m in maps {
        let l = line(m);
        let r = reach(l);
        add_byte(a, r, l, 0, 1); // add byte [line], 1
        if m.never_zero {
            add_byte(a, r, l, 2, 0); // adc byte [line], 0
        }
    }
    if flags_live {
        a.restore_status_flags(spill + 16);
    }
    if rax_spilled {
        a.load(RAX, spill);
    }
    None
}

/// How generated code addresses a map line or a counter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// RIP-relative.
    Rip,
    /// An absolute 32-bit address.
    Abs,
    /// Through rax (spilled).
    Rax,
}

/// How code emitted from `here` on (well under 1 KiB of it) reaches `addr`.
fn reach_from(here: u64, addr: u64) -> Reach {
    if is_abs32(addr) {
        Reach::Abs
    } else if rip_disp(here, addr, 8).is_some() && rip_disp(here + 1024, addr, 8).is_some() {
        Reach::Rip
    } else {
        Reach::Rax
    }
}

/// The ModRM (and SIB) and disp32 of the operand `[addr]`, absolute or RIP-relative as
/// `reach` says, with `reg` the ModRM reg field and `tail` the instruction's bytes after
/// the displacement (an immediate).
fn mem_operand(a: &mut Asm, reach: Reach, reg: u8, addr: u64, tail: u64) {
    match reach {
        Reach::Abs => {
            // ModRM 00 reg 100, SIB 00 100 101 (no base, no index), disp32.
            a.bytes(&[(reg << 3) | 0x04, 0x25]);
            a.bytes(&(addr as u32).to_le_bytes());
        }
        Reach::Rip => {
            // ModRM 00 reg 101, disp32 relative to the instruction's end.
            a.bytes(&[(reg << 3) | 0x05]);
            let d = rip_disp(a.here(), addr, 4 + tail).expect("judged in reach");
            a.bytes(&d.to_le_bytes());
        }
        Reach::Rax => unreachable!("a register operand is emitted by the caller"),
    }
}

/// Sets the thread's `prev` words to the block at `src` before a way out that may reach a
/// counting entry (an indirect branch's lookup, a call of native code): rax must be free
/// (spilled by the caller).
pub(crate) fn emit_sync(a: &mut Asm, ctx: u64, maps: &[EdgeMap], src: u64) {
    if maps.is_empty() {
        return;
    }
    a.load(RAX, ctx + off::EDGE_PREV);
    for m in maps {
        store_prev(a, m.index, (m.cur(src) >> 1) as u32);
    }
}

/// `mov qword [rax + 8 * index], prev`: map `index`'s word among the thread's `prev` words
/// (their address in rax).
fn store_prev(a: &mut Asm, index: u32, prev: u32) {
    a.bytes(&[0x48, 0xc7, 0x80]); // mov qword [rax + disp32], imm32
    a.bytes(&(index * 8).to_le_bytes());
    a.bytes(&prev.to_le_bytes());
}

/// A block's header (see `ib_table::ENTRY_HEADER_LEN`): its `cur` in the one edge map of
/// its Vm and the offset of its linked entry from its table entry, when it has counting
/// code for exactly one map and a linked entry past it (`linked`, as `Translated::linked`,
/// not 0); zeros otherwise (a site cache then goes through its table entry).
pub(crate) fn entry_header(maps: &[EdgeMap], pc: u64, continuation: bool, linked: u64) -> [u8; 8] {
    let mut h = [0u8; 8];
    if let [m] = maps
        && !continuation
        && linked != 0
    {
        h[..4].copy_from_slice(&(m.cur(pc) as u32).to_le_bytes());
        h[4..].copy_from_slice(&((ENTRY_PREFIX_LEN + linked) as u32).to_le_bytes());
    }
    h
}

/// How a return, indirect jump or indirect call (a **site**) counts its edge at its site
/// cache ([`emit_counting_hits`], [`emit_counting_fill`]): its Vm has one edge map, in the
/// first 2 GiB, and the next-count table exists.
#[derive(Clone, Copy)]
pub(crate) struct SiteCounting {
    /// The site's block's `prev` (its `cur` shifted right once).
    prev: u32,
    /// The map's index (its word among the thread's `prev` words).
    index: u32,
    map: u32,
    /// The next-count table, NeverZero or not as the map.
    table: u32,
}

impl SiteCounting {
    /// The counting of a site in the basic block at `src`, if its maps allow it.
    pub(crate) fn of(maps: &[EdgeMap], src: u64) -> Option<SiteCounting> {
        let [m] = maps else {
            return None;
        };
        let table = next_count_table().filter(|_| is_abs32(m.map + m.mask))?;
        Some(SiteCounting {
            prev: (m.cur(src) >> 1) as u32,
            index: m.index,
            map: m.map as u32,
            table: (table + if m.never_zero { 0 } else { 256 }) as u32,
        })
    }

    /// Sets the thread's `prev` word to the site's block (rax free; no flag touched), as
    /// [`emit_sync`] does.
    pub(crate) fn emit_sync(&self, a: &mut Asm, ctx: u64) {
        a.load(RAX, ctx + off::EDGE_PREV);
        store_prev(a, self.index, self.prev);
    }
}

/// Where a site cache `e` (64 bytes, see `code_cache::SITE_ENTRY_BYTES`) keeps,
/// for its pair `k`, the map line of the edge to the pair's target and where to go after
/// counting it (the target's linked entry).
fn line_slot(e: u64, k: u64) -> u64 {
    e + 32 + 16 * k
}

/// A site cache check when the site counts its edge there: as the translator's
/// `emit_site_check` (target in rcx; rax and rcx spilled; falls through with rcx = the
/// target on a miss), but a hit counts the pair's line (`movzx`, `movzx`, `mov`: no flag
/// touched), puts rax and rcx back and jumps past the target's counting entry. The
/// thread's `prev` word is left as it is: nothing a linked entry leads to reads it before
/// its own way out sets it. Returns the two pairs' **sync stubs**, where a pair whose
/// target has no linked entry goes after its (spare) count: they set `prev` and go on to
/// the pair's table entry, whose counting entry counts the edge.
pub(crate) fn emit_counting_hits(a: &mut Asm, ctx: u64, e: u64, c: SiteCounting) -> [u64; 2] {
    let (first, second, miss) = (a.new_label(), a.new_label(), a.new_label());
    emit_pair_tests(a, e, first, second);
    a.jmp_label(miss);
    for (k, l) in [(0, first), (1, second)] {
        a.bind(l);
        let slot = line_slot(e, k);
        a.load(RAX, slot);
        a.bytes(&[0x0f, 0xb6, 0x08]); // movzx ecx, byte [rax]
        a.bytes(&[0x0f, 0xb6, 0x89]); // movzx ecx, byte [rcx + table]
        a.bytes(&c.table.to_le_bytes());
        a.bytes(&[0x88, 0x08]); // mov [rax], cl
        a.load(RAX, ctx + off::SPILL);
        a.load(RCX, ctx + off::SPILL + 8);
        a.jmp_mem(slot + 8);
    }
    // As a table hit: rax = the guest address (the broker, a native target's host, takes
    // it from there); a table entry reloads rax and rcx from the spill slots.
    let mut stubs = [0; 2];
    for (k, stub) in stubs.iter_mut().enumerate() {
        *stub = a.here();
        c.emit_sync(a, ctx);
        a.load(RAX, e + 16 * k as u64);
        a.jmp_mem(e + 8 + 16 * k as u64);
    }
    a.bind(miss);
    stubs
}

/// After a hit of the table at a site that counts its edge at its site cache `e`: the
/// table's pair goes first in the cache (the first pair second, with its line; a pair
/// going to pair 0's sync stub goes to pair 1's), its line and where a hit goes after
/// counting are read from the target's header, then on to the table's entry as
/// `emit_hit_jump` (whose counting entry counts this time's edge from the thread's `prev`,
/// set before the lookup). A target without a header (a shared routine, below
/// `code_start`) or with a zero one gets a line no map has and pair 0's sync stub
/// (`stubs`, from [`emit_counting_hits`]). Runs with rax = the guest address and rdx = the
/// table entry (rcx free), and leaves rax as it found it; the flags are saved around it.
pub(crate) fn emit_counting_fill(
    a: &mut Asm,
    ctx: u64,
    e: u64,
    c: SiteCounting,
    code_start: u64,
    stubs: [u64; 2],
) {
    let spill = ctx + off::INLINE_SPILL;
    let (keep, none, done) = (a.new_label(), a.new_label(), a.new_label());
    a.store(spill, RAX);
    a.save_status_flags(spill + 16);
    // Pair 0's line becomes pair 1's (pair 0's sync stub pair 1's), as the pairs below.
    a.load(RCX, line_slot(e, 0));
    a.store(line_slot(e, 1), RCX);
    a.load(RCX, line_slot(e, 0) + 8);
    a.mov_imm64(RAX, stubs[0]);
    a.bytes(&[0x48, 0x39, 0xc1]); // cmp rcx, rax
    a.jcc_label(0x5, keep); // jne
    a.mov_imm64(RCX, stubs[1]);
    a.bind(keep);
    a.store(line_slot(e, 1) + 8, RCX);
    a.load(RAX, spill);
    emit_pair_fill(a, e); // rcx = the table's host
    a.mov_imm64(RAX, code_start);
    a.bytes(&[0x48, 0x39, 0xc1]); // cmp rcx, rax
    a.jcc_label(0x2, none); // jb: a shared routine
    a.bytes(&[0x8b, 0x41, 0xfc]); // mov eax, [rcx-4]: the linked entry's offset
    a.test_eax_eax();
    a.jcc_label(0x4, none); // jz: no linked entry past one map's counting
    a.bytes(&[0x48, 0x01, 0xc8]); // add rax, rcx
    a.store(line_slot(e, 0) + 8, RAX);
    a.bytes(&[0x8b, 0x41, 0xf8]); // mov eax, [rcx-8]: the target's cur
    a.bytes(&[0x35]); // xor eax, prev
    a.bytes(&c.prev.to_le_bytes());
    a.bytes(&[0x48, 0x05]); // add rax, map
    a.bytes(&c.map.to_le_bytes());
    a.store(line_slot(e, 0), RAX);
    a.jmp_label(done);
    a.bind(none);
    a.mov_imm64(RAX, stubs[0]);
    a.store(line_slot(e, 0) + 8, RAX);
    a.mov_imm64(RAX, spare_line());
    a.store(line_slot(e, 0), RAX);
    a.bind(done);
    a.restore_status_flags(spill + 16);
    // rax = the guest address again, as a table hit leaves it: the broker (a native
    // target's host) takes it from there.
    a.load(RAX, spill);
    emit_hit_jump(a, ctx);
}

/// A byte no map has, counted by sites going to targets whose edge their table entry counts.
fn spare_line() -> u64 {
    static SPARE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    SPARE.as_ptr() as u64
}

/// `op byte [addr], imm8` with `op` the group-1 operation (`0`: add, `2`: adc), addressed
/// as `reach` says.
fn add_byte(a: &mut Asm, reach: Reach, addr: u64, op: u8, imm: u8) {
    if reach == Reach::Rax {
        a.mov_imm64(RAX, addr);
        a.bytes(&[0x80, op << 3, imm]); // op byte [rax], imm8
        return;
    }
    a.bytes(&[0x80]);
    mem_operand(a, reach, op, addr, 1);
    a.bytes(&[imm]);
}

/// The displacement reaching `target` from an instruction of `len` bytes at `at`.
fn rip_disp(at: u64, target: u64, len: u64) -> Option<i32> {
    i32::try_from(target.wrapping_sub(at + len) as i64).ok()
}

/// Whether `addr` is an absolute 32-bit address (sign-extended, as x86 takes it).
fn is_abs32(addr: u64) -> bool {
    addr < 1 << 31
}

/// Writes the counters of `head` for the block `[start, end)` just translated into `a`: each
/// counter's slot is asked now, and the head's code takes its short form where they are
/// in reach (padded to the bytes reserved).
pub(crate) fn apply_patches(
    a: &mut Asm,
    ctx: u64,
    inst: &mut Instrumentation,
    head: &mut CounterHead,
    start: u64,
    end: u64,
) {
    if head.ids.is_empty() {
        return;
    }
    for (slot, &id) in head.slots.iter_mut().zip(&head.ids) {
        *slot = inst.counter_slot(id, start, end);
    }
    head.scratch.reset(a.base + head.at as u64);
    head_code(&mut head.scratch, ctx, &head.slots, head.flags_live, true);
    let used = head.scratch.len();
    assert!(
        used <= head.len,
        "a short head is never longer than the long one"
    );
    pad(&mut head.scratch, head.len - used);
    a.buf[head.at..head.at + head.len].copy_from_slice(&head.scratch.buf);
}

/// Most inline counters one block carries (more are not counted).
pub(crate) const MAX_INLINE_COUNTERS: usize = 32;

/// Largest edge map (entries): `cur` and `prev` travel as 32-bit immediates.
pub(crate) const MAX_EDGE_MAP: usize = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    /// A return's site cache with edge counting, run for real: the first return to a block
    /// sets the thread's `prev`, fills a pair from the table and the block's header (line
    /// and linked entry) and goes on to its table entry; later ones count the line
    /// themselves (NeverZero), leave `prev` alone and go to the linked entry; targets
    /// without a usable header (a shared routine, a zero header) count a spare byte and go
    /// through a sync stub (which sets `prev`) to their table entry; the flags are the
    /// guest's throughout.
    #[test]
    fn returns_count_their_edge_at_their_site_cache() {
        use super::super::emitter::{RWX, install_test_fn, test_mapping};
        use super::super::ib_table::{IbTable, Miss, TABLE_BYTES, emit_lookup};
        const CTX: usize = 4 * 4096;
        const LEN: usize = TABLE_BYTES + CTX + 4 * 4096;
        const MISS: u64 = 1;
        // All six status flags set, and bit 1 (always set).
        const FLAGS: u64 = 0x8d7;
        const LINKED_MARK: u64 = 1 << 40;
        let Some(_) = next_count_table() else {
            return; // no memory in the first 2 GiB: returns count at the table's entry
        };
        // SAFETY: fresh private mappings (table, context, code, site entry and hosts; the map
        // in the first 2 GiB), unmapped at the end; the generated function is called as a
        // System V function (rdi in, rax out) and touches only them and the stack it was
        // given (pushfq in its hosts).
        unsafe {
            let region = test_mapping(LEN, RWX, 0).cast::<libc::c_void>();
            let map_page = test_mapping(4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_32BIT);
            let map = map_page as u64;
            assert!(is_abs32(map + 4095));
            let table_at = region as u64;
            let ctx = table_at + TABLE_BYTES.next_multiple_of(4096) as u64;
            let code = ctx + CTX as u64;
            let e = code + 4096 - 64;
            (e as *mut [u64; 8]).write([u64::MAX, 0, 0, 0, u64::MAX, 0, 0, 0]);
            // Hosts: `pushfq; pop rax; ret` (the flags), the linked entries the same with
            // the mark (`bts rax, 40`), after a header.
            let hosts = code + 4096;
            let flags_host = [0x9c, 0x58, 0xc3];
            let linked_host = [0x9c, 0x58, 0x48, 0x0f, 0xba, 0xe8, 40, 0xc3];
            let routine = hosts; // a shared routine: below code_start
            let block = hosts + 256; // a block: header [cur, 64]
            let zero = hosts + 512; // a block with a zero header
            let code_start = hosts + 128;
            let cur: u32 = 0x1234 & 0xfff;
            for h in [block, zero] {
                std::ptr::copy_nonoverlapping(flags_host.as_ptr(), h as *mut u8, 3);
            }
            // The shared routine (the broker, for a native target) takes the guest address
            // from rax: it keeps it (`mov [rip+57], rax`, at routine + 64) before the flags.
            let routine_host = [0x48, 0x89, 0x05, 57, 0, 0, 0, 0x9c, 0x58, 0xc3];
            std::ptr::copy_nonoverlapping(routine_host.as_ptr(), routine as *mut u8, 10);
            let routine_rax = || ((routine + 64) as *const u64).read_volatile();
            (block as *mut u32).sub(2).write(cur);
            (block as *mut u32).sub(1).write(64);
            (zero as *mut [u32; 2]).sub(1).write([0, 0]);
            std::ptr::copy_nonoverlapping(linked_host.as_ptr(), (block + 64) as *mut u8, 8);
            let c = SiteCounting {
                prev: 0x0abc,
                index: 0,
                map: map as u32,
                table: next_count_table().unwrap() as u32,
            };
            let line = map + u64::from(c.prev ^ cur);
            // The thread's `prev` words: map 0's.
            let prev_words = (hosts + 2048) as *mut u64;
            let prev_word = || prev_words.read_volatile();
            ((ctx + off::EDGE_PREV) as *mut u64).write(prev_words as u64);
            let table = IbTable::new(table_at, 0);
            let mut a = Asm::with_capacity(1024);
            a.reset(code);
            a.bytes(&[0x48, 0x89, 0xf9]); // mov rcx, rdi
            a.bytes(&[0x68, FLAGS as u8, (FLAGS >> 8) as u8, 0, 0]); // push FLAGS
            a.bytes(&[0x9d]); // popfq
            let stubs = emit_counting_hits(&mut a, ctx, e, c);
            c.emit_sync(&mut a, ctx);
            let miss = a.new_label();
            emit_lookup(&mut a, ctx, table_at, Miss::Label(miss), false);
            emit_counting_fill(&mut a, ctx, e, c, code_start, stubs);
            a.bind(miss);
            a.mov_imm64(RAX, MISS);
            a.bytes(&[0xc3]);
            let ret = install_test_fn(&mut a, 4096 - 64);
            let (g, r, z) = (
                0x5555_1234_5678u64,
                0x5555_1234_9000u64,
                0x5555_4321_0000u64,
            );
            let entry = || *(e as *const [u64; 8]);
            let line_count = || *(line as *const u8);
            let flags = |v: u64| v & FLAGS;
            assert_eq!(ret(g), MISS);
            table.insert_block(g, block + super::ENTRY_PREFIX_LEN);
            // The fill: on to the table's entry (no mark), the flags as they were.
            let v = ret(g);
            assert_eq!((flags(v), v & LINKED_MARK), (FLAGS, 0));
            assert_eq!(entry()[..2], [g, block]);
            assert_eq!(entry()[4..6], [line, block + 64], "line and linked entry");
            assert_eq!(line_count(), 0, "the table's entry counts the first time");
            assert_eq!(prev_word(), u64::from(c.prev), "set for the table's entry");
            table.clear();
            // Hits: counted here, `prev` left alone, on to the linked entry.
            prev_words.write_volatile(7);
            for n in 1..=3u8 {
                let v = ret(g);
                assert_eq!((flags(v), v & LINKED_MARK), (FLAGS, LINKED_MARK));
                assert_eq!(line_count(), n);
            }
            assert_eq!(prev_word(), 7);
            (line as *mut u8).write(255);
            ret(g);
            assert_eq!(line_count(), 1, "NeverZero: 255 goes to 1");
            // A shared routine and a zero header: a spare line, their table entry.
            table.insert_block(r, routine + super::ENTRY_PREFIX_LEN);
            table.insert_block(z, zero + super::ENTRY_PREFIX_LEN);
            assert_eq!(flags(ret(r)), FLAGS);
            assert_eq!(routine_rax(), r, "the fill leaves rax = the guest address");
            let spare = spare_line();
            assert_eq!(
                entry(),
                [r, routine, g, block, spare, stubs[0], line, block + 64]
            );
            assert_eq!(flags(ret(z)), FLAGS);
            assert_eq!(
                entry(),
                [z, zero, r, routine, spare, stubs[0], spare, stubs[1]]
            );
            table.clear();
            let before = std::slice::from_raw_parts(map as *const u8, 4096).to_vec();
            for _ in 0..2 {
                prev_words.write_volatile(7);
                let vz = ret(z);
                assert_eq!(prev_word(), u64::from(c.prev), "set by pair 0's stub");
                prev_words.write_volatile(7);
                ((routine + 64) as *mut u64).write_volatile(0);
                let vr = ret(r);
                assert_eq!(prev_word(), u64::from(c.prev), "set by pair 1's stub");
                assert_eq!(routine_rax(), r, "the stub leaves rax = the guest address");
                assert_eq!((flags(vz), vz & LINKED_MARK), (FLAGS, 0));
                assert_eq!((flags(vr), vr & LINKED_MARK), (FLAGS, 0));
            }
            assert_eq!(
                std::slice::from_raw_parts(map as *const u8, 4096),
                &before[..],
                "no map line counted for them"
            );
            assert_eq!(ret(g), MISS, "g left the cache");
            libc::munmap(region, LEN);
            libc::munmap(map_page.cast(), 4096);
        }
    }

    /// A return counts at its site cache with its map's next-count table (NeverZero or
    /// wrapping) and its block's `prev`; not with two maps or a map out of 32-bit reach.
    #[test]
    fn returns_count_with_their_maps_table() {
        let fx = Fixture::new();
        let Some(t) = next_count_table() else {
            return; // no memory in the first 2 GiB: returns count at the table's entry
        };
        let src = 0x100u64;
        for (never_zero, offset) in [(true, 0), (false, 256)] {
            let m = fx.map(fx.low(), 3, never_zero);
            let c = SiteCounting::of(&[m], src).expect("one map in the first 2 GiB");
            assert_eq!(u64::from(c.table), t + offset);
            assert_eq!(u64::from(c.prev), ((src * 7) & 0xfff) >> 1);
            assert_eq!((c.index, u64::from(c.map)), (3, fx.low()));
        }
        let m = fx.map(fx.low(), 0, true);
        assert!(SiteCounting::of(&[m, m], src).is_none());
        assert!(SiteCounting::of(&[fx.map(fx.far(), 0, true)], src).is_none());
    }

    #[test]
    fn flags_are_dead_only_when_overwritten_before_being_read() {
        // cmp rdi, rsi; ret: cmp writes all six first.
        assert!(!status_flags_live(&[0x48, 0x39, 0xf7, 0xc3], 0x1000));
        // mov eax, 1; add eax, ebx: a move then a full write.
        assert!(!status_flags_live(&[0xb8, 1, 0, 0, 0, 0x01, 0xd8], 0x1000));
        // jz +0: reads ZF.
        assert!(status_flags_live(&[0x74, 0x00], 0x1000));
        // adc eax, ebx: reads CF.
        assert!(status_flags_live(&[0x11, 0xd8], 0x1000));
        // inc eax (keeps CF); then jc: live.
        assert!(status_flags_live(&[0xff, 0xc0, 0x72, 0x00], 0x1000));
        // shl eax, cl: a zero count keeps the flags; then sub: dead, but jb first reads CF.
        assert!(status_flags_live(&[0xd3, 0xe0, 0x72, 0x00], 0x1000));
        assert!(!status_flags_live(&[0xd3, 0xe0, 0x29, 0xd8], 0x1000));
        // ret before any write: live (the flags go back to the caller).
        assert!(status_flags_live(&[0xc3], 0x1000));
        // repe cmpsb with rcx = 0 writes nothing: live; cmpsb alone writes all six.
        assert!(status_flags_live(&[0xf3, 0xa6, 0x72, 0x00], 0x1000));
        assert!(!status_flags_live(&[0xa6, 0x72, 0x00], 0x1000));
        // Bytes that end: live.
        assert!(status_flags_live(&[0x90], 0x1000));
    }

    /// A code page, a context (16 KiB), a map page RIP-relative code reaches and the
    /// thread's `prev` words, in one read-write-execute mapping; a map page in the first
    /// 2 GiB and one anywhere. Unmapped on drop.
    struct Fixture {
        region: *mut u8,
        low: *mut u8,
        far: Box<[u8]>,
        hash: Box<dyn Fn(u64) -> u64>,
    }

    const FIXTURE_LEN: usize = 8 * 4096;

    impl Fixture {
        fn new() -> Fixture {
            use super::super::emitter::{RWX, test_mapping};
            const {
                assert!(
                    off::INLINE_SPILL + 24 <= 5 * 4096
                        && off::SPILL + 24 <= 5 * 4096
                        && off::EDGE_PREV + 8 <= 5 * 4096
                )
            };
            Fixture {
                region: test_mapping(FIXTURE_LEN, RWX, 0),
                low: test_mapping(4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_32BIT),
                far: vec![0u8; 4096].into_boxed_slice(),
                hash: Box::new(|pc| pc * 7),
            }
        }

        fn code(&self) -> u64 {
            self.region as u64
        }

        fn ctx(&self) -> u64 {
            self.region as u64 + 4096
        }

        fn near(&self) -> u64 {
            self.region as u64 + 6 * 4096
        }

        fn prev_words(&self) -> u64 {
            self.region as u64 + 7 * 4096
        }

        fn low(&self) -> u64 {
            self.low as u64
        }

        fn far(&self) -> u64 {
            self.far.as_ptr() as u64
        }

        fn map(&self, map: u64, index: u32, never_zero: bool) -> EdgeMap {
            EdgeMap {
                map,
                mask: 0xfff,
                hash: &*self.hash as *const _,
                index,
                never_zero,
            }
        }

        /// Runs what `emit` generates 300 times with known rax, rcx and status flags (CF
        /// PF AF ZF SF OF all set, and the reserved bit 1), and checks after each run that
        /// `line` counted it (255 wraps to 1 with NeverZero, to 0 without), that rax and
        /// rcx are kept and, with `flags_live`, the flags. `line` is cleared at the end.
        fn check_counts(
            &self,
            emit: impl FnOnce(&mut Asm),
            line: u64,
            never_zero: bool,
            flags_live: bool,
        ) {
            use super::super::emitter::RDX;
            let out = self.ctx() + 1024;
            let mut a = Asm::with_capacity(512);
            a.reset(self.code());
            a.bytes(&[0x56, 0x9d]); // push rsi; popfq: the guest's flags
            a.bytes(&[0x48, 0x89, 0xf8]); // mov rax, rdi
            a.bytes(&[0x48, 0x89, 0xd1]); // mov rcx, rdx
            emit(&mut a);
            a.bytes(&[0x9c, 0x5a]); // pushfq; pop rdx
            a.store(out, RDX);
            a.store(out + 8, RCX);
            a.ret();
            a.finish();
            let line = line as *mut u8;
            let guest = 0x8d7u64;
            // SAFETY: the code fits the fixture's code page and is a leaf (System V: rdi,
            // rsi, rdx in, rax out) that only touches the fixture's memory; `out` and
            // `line` are in it.
            unsafe {
                std::ptr::copy_nonoverlapping(a.buf.as_ptr(), self.region, a.len());
                let f: extern "C" fn(u64, u64, u64) -> u64 = std::mem::transmute(self.region);
                for i in 1..=300u64 {
                    let rax = f(0x1234_5678_9abc, guest, 0x0fed_cba9_8765);
                    assert_eq!(rax, 0x1234_5678_9abc, "rax kept");
                    assert_eq!(*((out + 8) as *const u64), 0x0fed_cba9_8765, "rcx kept");
                    let expected = if never_zero {
                        (i - 1) % 255 + 1
                    } else {
                        i % 256
                    };
                    assert_eq!(
                        u64::from(*line),
                        expected,
                        "line {line:?}, count {i}, NeverZero {never_zero}"
                    );
                    if flags_live {
                        let flags = *(out as *const u64);
                        assert_eq!(flags & 0x8d5, guest & 0x8d5, "flags kept");
                    }
                }
                *line = 0;
            }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            // SAFETY: the fixture's own mappings, no longer used.
            unsafe {
                libc::munmap(self.region.cast(), FIXTURE_LEN);
                libc::munmap(self.low.cast(), 4096);
            }
        }
    }

    /// A counted exit adds to its constant line, with NeverZero or wrapping, wherever the
    /// map is (near the code, in the first 2 GiB, far: the three ways it addresses a line),
    /// with the flags live (the next-count table where the line is in reach) or not, and
    /// keeps rax and, when asked, the flags.
    #[test]
    fn counted_exits_count_and_keep_registers_and_flags() {
        let fx = Fixture::new();
        for (map, flags_live, never_zero) in [
            (fx.near(), true, true),
            (fx.near(), false, true),
            (fx.near(), true, false),
            (fx.low(), true, true),
            (fx.low(), true, false),
            (fx.low(), false, false),
            (fx.far(), false, true),
            (fx.far(), true, true),
        ] {
            let m = fx.map(map, 0, never_zero);
            let ctx = fx.ctx();
            let line = map + ((((0x100 * 7) & 0xfff) >> 1) ^ ((0x234 * 7) & 0xfff));
            fx.check_counts(
                |a| {
                    // The exit's jump, as the translator places it: the NeverZero fix after
                    // it comes back to it.
                    let fix = emit_counted_exit(a, ctx, &[m], 0x100, 0x234, flags_live);
                    let done = a.new_label();
                    a.jmp_label(done);
                    if let Some(fix) = fix {
                        fix.emit(a);
                    }
                    a.bind(done);
                },
                line,
                never_zero,
                flags_live,
            );
        }
    }

    /// A counting entry adds to the line of the thread's `prev` and its block, with
    /// NeverZero or wrapping, for a map in the first 2 GiB (the next-count table) or
    /// anywhere, and keeps rax, rcx and, when asked, the flags (its `xor` writes them).
    #[test]
    fn counting_entries_count_and_keep_registers_and_flags() {
        let fx = Fixture::new();
        let ctx = fx.ctx();
        // The thread came from the block at 0x100 (prev words: index 1).
        let prev = ((0x100 * 7) & 0xfff) >> 1;
        // SAFETY: the context and the prev words are the fixture's memory.
        unsafe {
            *((ctx + off::EDGE_PREV) as *mut u64) = fx.prev_words();
            *((fx.prev_words() + 8) as *mut u64) = prev;
        }
        for (map, flags_live, never_zero) in [
            (fx.low(), true, true),
            (fx.low(), false, true),
            (fx.low(), true, false),
            (fx.far(), true, true),
            (fx.far(), false, false),
        ] {
            let m = fx.map(map, 1, never_zero);
            let line = map + (prev ^ ((0x234 * 7) & 0xfff));
            fx.check_counts(
                |a| {
                    let (_, fix) = emit_counting(a, ctx, &[m], 0x234, flags_live);
                    // The rare path out of the way, as the translator places it.
                    if let Some(fix) = fix {
                        let done = a.new_label();
                        a.jmp_label(done);
                        fix.emit(a);
                        a.bind(done);
                    }
                },
                line,
                never_zero,
                flags_live,
            );
            if map == fx.low() && !flags_live && never_zero {
                // The `inc` form spills rcx alone: no way in past the spills.
                continue;
            }
            // The way in of the block's table entry: rax and rcx already in the spill
            // slots, the registers anything; the jump goes past the entry's stores.
            fx.check_counts(
                |a| {
                    a.store(ctx + off::SPILL, RAX);
                    a.store(ctx + off::SPILL + 8, RCX);
                    a.mov_imm64(RAX, 0xdead);
                    a.mov_imm64(RCX, 0xbeef);
                    let jump = a.len();
                    a.bytes(&[0xe9, 0, 0, 0, 0]); // jmp rel32, patched below
                    let (to, fix) = emit_counting(a, ctx, &[m], 0x234, flags_live);
                    assert!(fix.is_none(), "no inc form with rax spilled");
                    let to = to.expect("rax and rcx spilled");
                    let rel = i32::try_from(to - (jump + 5)).unwrap();
                    a.buf[jump + 1..jump + 5].copy_from_slice(&rel.to_le_bytes());
                },
                line,
                never_zero,
                flags_live,
            );
        }
    }
}
