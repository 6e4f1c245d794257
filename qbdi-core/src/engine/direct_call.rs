//! Direct sites: translated code calling a site's simple callbacks straight, one after the
//! other, without the general save of the guest state (DynamoRIO's "clean call" optimisation). Which callbacks qualify
//! and why is decided at registration (`instrumentation::direct`); this file emits the
//! sites.

use super::context::off;
use super::context_switch::{emit_reload_guest, emit_restore_plain_flags};
use super::emitter::{Asm, Label, RAX, RSP};
use super::translator::Rip;
use crate::instrumentation::direct::{DirectCall, EntryKind};
use crate::memory_access::{MemoryAccess, ViewEntry, slice_layout};
use std::mem::{offset_of, size_of};

/// RFLAGS bits that send a direct site to the general path: DF (the callback's code may
/// assume it clear) and AC (its unaligned accesses would fault).
const UNUSUAL_FLAGS: u32 = (1 << 10) | (1 << 18);

/// A site planted with direct calls.
pub(crate) struct DirectSite<'a> {
    /// The site's callbacks' direct calls, in call order (all `Some`).
    pub calls: &'a [Option<DirectCall>],
    /// The guest overwrites the arithmetic flags before it reads them, after the site: the
    /// fast path leaves them as the callbacks left them.
    pub flags_dead: bool,
    pub site: u32,
    /// A byte that is non-zero while the callback exists (`Site::direct_live`).
    pub live_flag: u64,
    /// The VmState an event callback sees (`Site::state`).
    pub state: u64,
    /// Where the guest's `rip` is, for the context.
    pub rip: Rip,
    /// The callback routine of the cache (the general path's).
    pub routine: u64,
    /// The general path of this site, and where both paths go on.
    pub general: Label,
    pub after: Label,
    /// The accesses of the site's instruction as `inst_memory_access` gives them (built in
    /// the context for calls that read them; none is a `rep` span, which only the general
    /// path computes).
    pub view: &'a [ViewEntry],
}

/// What the calls of a site save and pass, together: the union of their saved registers
/// (a call that reads its `GprState` saves all of them already), and whether one reads it.
fn union(calls: &[Option<DirectCall>]) -> (u16, bool) {
    calls.iter().flatten().fold((0, false), |(saves, gpr), c| {
        (saves | c.saves, gpr | c.gpr_arg)
    })
}

/// The paths of a direct site its fast path rarely takes (unusual flags or a deleted
/// callback, another action than Continue), emitted apart by [`emit_direct_cold`]: at the
/// block's end, so that the fast path falls through to what follows instead of jumping
/// over them (a taken jump at every call).
#[derive(Clone, Copy)]
pub(crate) struct DirectCold {
    /// The unusual-flags-or-deleted path and the other-action path of a called site; none
    /// for an inlined one ([`emit_inline_site`]), which has only its general path.
    paths: Option<(Label, Label)>,
    /// Where the site's general path must be, and where the site goes on.
    pub general: Label,
    pub after: Label,
    pub site: u32,
    pub rip: Rip,
    routine: u64,
    saves: u16,
    gpr_arg: bool,
    calls: usize,
}

impl DirectCold {
    fn new(d: &DirectSite<'_>, paths: Option<(Label, Label)>, saves: u16, gpr_arg: bool) -> Self {
        DirectCold {
            paths,
            general: d.general,
            after: d.after,
            site: d.site,
            rip: d.rip,
            routine: d.routine,
            saves,
            gpr_arg,
            calls: d.calls.len(),
        }
    }
}

/// Where an inlined site keeps the guest's status flags.
const INLINE_FLAGS: u64 = off::INLINE_SPILL + 16;

/// Most bytes [`emit_direct_cold`] emits for one site.
pub(crate) const DIRECT_COLD_MAX: usize = 384;

/// Emits the fast path of a direct site, which falls through when done; it goes to
/// `general` when it cannot handle the call. The calls run one after the other; before
/// each, the number of callbacks called so far plus one goes to `ctx.cb_pending_next`, so
/// that when one returns another action than Continue, the general routine applies it and
/// runs the remaining callbacks itself. The rest is for [`emit_direct_cold`].
pub(crate) fn emit_direct_site(a: &mut Asm, ctx: u64, d: &DirectSite<'_>) -> DirectCold {
    let slow = a.new_label();
    let action = a.new_label();
    let (saves, gpr_arg) = union(d.calls);
    a.store(ctx + off::gpr(RSP), RSP);
    a.load(RSP, ctx + off::HOST_RSP);
    // host_rsp is 8 mod 16: after pushfq the call is aligned as the ABI wants.
    a.pushfq();
    a.store(ctx + off::gpr(RAX), RAX);
    a.test_stack_top32(UNUSUAL_FLAGS);
    a.jcc_label(5, slow); // jnz
    a.mov_imm64(RAX, d.live_flag);
    a.cmp_byte_at_rax(0);
    a.jcc_label(4, slow); // je: deleted
    for r in 1..16u8 {
        if r != RSP && saves & (1 << r) != 0 {
            a.store(ctx + off::gpr(r), r);
        }
    }
    if gpr_arg {
        a.load_rax_from_stack_top();
        a.store(ctx + off::EFLAGS, RAX);
        d.rip.emit(a, ctx);
        a.store(ctx + off::RIP, RAX);
    }
    if d.calls.iter().flatten().any(|c| c.view_arg) {
        emit_view(a, ctx, d.view);
    }
    for (k, c) in d.calls.iter().flatten().enumerate() {
        let (data_reg, vm_reg, state_reg, gpr_reg, _) = c.kind.args();
        if d.calls.len() > 1 {
            a.store_imm32(ctx + off::CB_PENDING_NEXT, k as u32 + 1);
        }
        if let Some(r) = data_reg.filter(|&r| c.saves & (1 << r) != 0) {
            a.mov_imm64(r, c.data);
        }
        if let Some(s) = state_reg.filter(|_| c.state_arg) {
            a.mov_imm64(s, d.state);
        }
        if c.gpr_arg {
            a.mov_imm64(gpr_reg, ctx + off::GPR);
        }
        if c.view_arg {
            // A closure's `VmRef` starts with the view, a plugin's `RawVm` 16 bytes before.
            let closure = matches!(c.kind, EntryKind::Inst | EntryKind::Event);
            let at = if closure { off::VM_VIEW } else { off::RAW_VM };
            a.lea_rip(vm_reg, ctx + at);
        }
        a.mov_imm64(RAX, c.func);
        a.call_rax();
        a.test_eax_eax();
        a.jcc_label(5, action); // jnz: not Continue
    }
    if d.flags_dead && !gpr_arg {
        // DF is still clear (the ABI's callbacks return it so) and AC as it was.
        emit_restore_registers(a, ctx, saves);
    } else {
        emit_restore(a, ctx, saves, gpr_arg);
    }
    a.load(RSP, ctx + off::gpr(RSP));
    DirectCold::new(d, Some((slow, action)), saves, gpr_arg)
}

/// Whether every call of a site can be inlined ([`emit_inline_site`]).
pub(crate) fn inlinable(calls: &[Option<DirectCall>]) -> bool {
    calls.iter().all(|c| c.is_some_and(|c| c.inline.is_some()))
}

/// Emits a site whose calls are all inlined (each `DirectCall::inline`): their bodies
/// copied one after the other, between saves and restores of the registers they write and
/// of the status flags (unless dead after the site), on the guest's stack, which the
/// bodies do not touch. No call, no stack switch, no action to check (each body returns
/// `Continue`), and no flags check: the bodies use no string instruction (DF) and make no
/// access the guest's AC could fault (a guest running with AC set and the kernel's
/// alignment checking on would fault in its own code first). No live byte either: a
/// deletion rewrites the sequence's first bytes into a jump to the site's general path
/// (`Site::inline_at`), so the sequence starts with at least 5 bytes (a save, or a
/// multi-byte `nop`).
pub(crate) fn emit_inline_site(a: &mut Asm, ctx: u64, d: &DirectSite<'_>) -> DirectCold {
    let start = a.len();
    let saves = d
        .calls
        .iter()
        .flatten()
        .filter_map(|c| c.inline)
        .fold(0u16, |s, b| s | b.saves);
    let flags = !d.flags_dead;
    // rax takes the flags.
    let rax = flags || saves & (1 << RAX) != 0;
    if rax {
        a.store(ctx + off::gpr(RAX), RAX);
    }
    if flags {
        a.save_status_flags(ctx + INLINE_FLAGS);
    }
    for r in 1..16u8 {
        if r != RSP && saves & (1 << r) != 0 {
            a.store(ctx + off::gpr(r), r);
        }
    }
    if a.len() - start < 5 {
        a.bytes(&[0x0f, 0x1f, 0x44, 0x00, 0x00]); // nop dword [rax+rax]: room for the jump
    }
    for body in d.calls.iter().flatten().filter_map(|c| c.inline) {
        a.bytes(body.code());
    }
    for r in 1..16u8 {
        if r != RSP && saves & (1 << r) != 0 {
            a.load(r, ctx + off::gpr(r));
        }
    }
    if flags {
        a.restore_status_flags(ctx + INLINE_FLAGS);
    }
    if rax {
        a.load(RAX, ctx + off::gpr(RAX));
    }
    DirectCold::new(d, None, saves, false)
}

/// The rarely taken paths of a direct site (see [`DirectCold`]); they go on at the site's
/// general path, or after the site.
pub(crate) fn emit_direct_cold(a: &mut Asm, ctx: u64, c: &DirectCold) {
    let start = a.len();
    let Some((slow, action)) = c.paths else {
        return; // an inlined site: only the general path, which the caller emits
    };
    // Unusual flags or deleted callback: nothing changed yet but rax and the flags.
    a.bind(slow);
    a.load(RAX, ctx + off::gpr(RAX));
    a.popfq();
    a.load(RSP, ctx + off::gpr(RSP));
    a.jmp_label(c.general);

    // Another action: the general routine applies it (`ctx.cb_pending`) with the guest
    // state as it is now (a callback reading the GprState may have changed `rip`).
    a.bind(action);
    a.store_eax32(ctx + off::CB_PENDING);
    if c.calls == 1 {
        a.store_imm32(ctx + off::CB_PENDING_NEXT, 1);
    }
    if !c.gpr_arg {
        c.rip.emit(a, ctx);
        a.store(ctx + off::RIP, RAX);
    }
    a.store_imm32(ctx + off::CB_SITE, c.site);
    emit_restore(a, ctx, c.saves, c.gpr_arg);
    a.store(ctx + off::gpr(RAX), RAX);
    a.lea_rsp(8); // back to host_rsp, as the general path calls the routine
    a.call_to(c.routine);
    a.load(RSP, ctx + off::gpr(RSP));
    a.jmp_label(c.after);
    debug_assert!(a.len() - start <= DIRECT_COLD_MAX);
}

/// Builds the accesses of `view` in `ctx.accesses` from the recorded slots, and stores how
/// many in `ctx.vm_view`, the slice a closure's `VmRef` starts with and a plugin's `RawVm`
/// ends with (the dispatcher set its pointer). Uses rax.
fn emit_view(a: &mut Asm, ctx: u64, view: &[ViewEntry]) {
    const SIZE: u64 = size_of::<MemoryAccess>() as u64;
    const INST: u64 = offset_of!(MemoryAccess, inst_address) as u64;
    const ADDR: u64 = offset_of!(MemoryAccess, access_address) as u64;
    const VALUE: u64 = offset_of!(MemoryAccess, value) as u64;
    const META: u64 = offset_of!(MemoryAccess, size) as u64;
    // size, access_type and flags: one dword.
    const _: () = assert!(offset_of!(MemoryAccess, access_type) as u64 == META + 2);
    const _: () = assert!(offset_of!(MemoryAccess, flags) as u64 == META + 3);
    let at = |j: usize| ctx + off::ACCESSES + SIZE * j as u64;
    let mut inst = None;
    for (j, e) in view.iter().enumerate() {
        if inst != Some(e.access.inst_address) {
            a.mov_imm64(RAX, e.access.inst_address);
            inst = Some(e.access.inst_address);
        }
        a.store(at(j) + INST, RAX);
    }
    for (j, e) in view.iter().enumerate() {
        let slot = ctx + off::MEM_SLOTS + 16 * u64::from(e.slot);
        let meta = u32::from(e.access.size)
            | u32::from(e.access.access_type.bits()) << 16
            | u32::from(e.access.flags.bits()) << 24;
        a.store_imm32(at(j) + META, meta);
        a.load(RAX, slot);
        a.store(at(j) + ADDR, RAX);
        if e.value {
            a.load(RAX, slot + 8);
            a.store(at(j) + VALUE, RAX);
        } else {
            a.store_imm32_sx64(at(j) + VALUE, 0);
        }
    }
    // The pointer is set before every run (`ctx.accesses`, see the dispatcher).
    let (_, len) = slice_layout();
    a.store_imm32_sx64(ctx + off::VM_VIEW + len, view.len() as u32);
}

/// Puts the guest registers and flags back after the call (still on the host stack, the
/// guest flags at its top).
fn emit_restore(a: &mut Asm, ctx: u64, saves: u16, gpr_arg: bool) {
    if gpr_arg {
        // The callback may have changed any register or flag in the context.
        emit_reload_guest(a, ctx);
        return;
    }
    a.load_rax_from_stack_top();
    emit_restore_plain_flags(a);
    emit_restore_registers(a, ctx, saves);
}

/// Puts the saved guest registers back (rax always).
fn emit_restore_registers(a: &mut Asm, ctx: u64, saves: u16) {
    a.load(RAX, ctx + off::gpr(RAX));
    for r in 1..16u8 {
        if r != RSP && saves & (1 << r) != 0 {
            a.load(r, ctx + off::gpr(r));
        }
    }
}
