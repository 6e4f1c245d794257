//! Inline instrumentation: work translated code does itself at each block entry, with no
//! callback (`Vm::add_block_counter`, `Vm::add_edge_map`). The code keeps every guest
//! register: rax (and rcx) are spilled to the context. When the block may read the
//! arithmetic flags it has on entry ([`status_flags_live`]), counters increment with
//! `mov`/`lea`/`mov`, which leave them alone, and edge maps save them with `lahf`/`seto`
//! (restored by `add al, 0x7f` and `sahf`).
//!
//! - A counter: `mov rax, slot; inc qword [rax]`. Not atomic (a `lock` costs 10-20 cycles
//!   and serialises memory): the slots a Vm's counter gives must be that Vm's own, and a
//!   Vm runs on one thread at a time. The slot depends on the block's extent, known once it
//!   is translated: its `imm64` is patched then ([`InlinePatch`]).
//! - An edge map: `mov rax, [ctx.edge_prev]; mov rcx, [rax + 8i]; mov qword [rax + 8i],
//!   cur >> 1; xor rcx, cur; mov rax, map; add byte [rax + rcx], 1` (and
//!   `adc byte [rax + rcx], 0` for NeverZero), `cur` the block's hash computed at
//!   translation and `i` the map's index. The `prev` words are the thread's
//!   ([`thread_prev`], stored in the context at each run): every Vm running on a thread (a
//!   re-entry's, a signal handler's) continues the thread's edge chain, as AFL's
//!   thread-local `prev` does.
//!
//! Edge counts are not atomic (as AFL's own instrumentation): threads running the same
//! edge at once may lose increments.

use std::cell::Cell;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, Mnemonic, RflagsBits};

use super::context::off;
use super::emitter::{Asm, RAX, RCX};
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

/// Instructions looked at for [`status_flags_live`].
const LOOKAHEAD: usize = 16;

/// Whether the guest may read the arithmetic flags it has at `pc` (the start of a block in
/// `bytes`): false only when the first instructions overwrite all six before any reads one
/// or leaves the block. Shifts and rotates do not count as writes (a zero count keeps the
/// flags).
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
        let conditional = matches!(
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

/// A counter's `imm64` to fill in once the block's extent is known.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InlinePatch {
    /// Offset of the `imm64` in the block's code.
    pub at: u32,
    /// The counter's id.
    pub id: u32,
}

/// Emits the inline instrumentation of the block at `pc`; the counters' slots are left for
/// [`apply_patches`] (listed in `patches`, which has room for them).
pub(crate) fn emit_entry(
    a: &mut Asm,
    ctx: u64,
    inst: &Instrumentation,
    pc: u64,
    flags_live: bool,
    patches: &mut Vec<InlinePatch>,
) {
    let spill = ctx + off::INLINE_SPILL;
    // Edge maps need the flags (xor, add); counters do without when they are live.
    let edges = inst
        .inline()
        .any(|(_, i)| matches!(i, Inline::Edges { .. }));
    let save_flags = flags_live && edges;
    let use_rcx = edges || flags_live;
    a.store(spill, RAX);
    if use_rcx {
        a.store(spill + 8, RCX);
    }
    if save_flags {
        a.save_status_flags(spill + 16);
    }
    for (id, inline) in inst.inline() {
        match inline {
            Inline::Counter(_) => {
                if patches.len() == patches.capacity() {
                    continue; // more counters than MAX_INLINE_COUNTERS: not this one
                }
                a.mov_imm64(RAX, 0);
                patches.push(InlinePatch {
                    at: (a.len() - 8) as u32,
                    id,
                });
                if flags_live && !save_flags {
                    a.bytes(&[0x48, 0x8b, 0x08]); // mov rcx, [rax]
                    a.bytes(&[0x48, 0x8d, 0x49, 0x01]); // lea rcx, [rcx + 1]
                    a.bytes(&[0x48, 0x89, 0x08]); // mov [rax], rcx
                } else {
                    a.bytes(&[0x48, 0xff, 0x00]); // inc qword [rax]
                }
            }
            Inline::Edges {
                map,
                mask,
                hash,
                index,
                never_zero,
            } => {
                let cur = hash(pc) & mask;
                let disp = (index * 8).to_le_bytes();
                a.load(RAX, ctx + off::EDGE_PREV);
                a.bytes(&[0x48, 0x8b, 0x88]); // mov rcx, [rax + disp32]
                a.bytes(&disp);
                a.bytes(&[0x48, 0xc7, 0x80]); // mov qword [rax + disp32], imm32
                a.bytes(&disp);
                a.bytes(&((cur >> 1) as u32).to_le_bytes());
                a.bytes(&[0x48, 0x81, 0xf1]); // xor rcx, imm32
                a.bytes(&(cur as u32).to_le_bytes());
                a.mov_imm64(RAX, *map);
                a.bytes(&[0x80, 0x04, 0x08, 0x01]); // add byte [rax + rcx], 1
                if *never_zero {
                    a.bytes(&[0x80, 0x14, 0x08, 0x00]); // adc byte [rax + rcx], 0
                }
            }
        }
    }
    if save_flags {
        a.restore_status_flags(spill + 16);
    }
    if use_rcx {
        a.load(RCX, spill + 8);
    }
    a.load(RAX, spill);
}

/// Fills in the counters' slots for the block `[start, end)` just translated into `a`.
pub(crate) fn apply_patches(
    a: &mut Asm,
    inst: &mut Instrumentation,
    patches: &[InlinePatch],
    start: u64,
    end: u64,
) {
    for p in patches {
        let slot = inst.counter_slot(p.id, start, end);
        let at = p.at as usize;
        a.buf[at..at + 8].copy_from_slice(&slot.to_le_bytes());
    }
}

/// Most inline counters one block carries (more are not counted).
pub(crate) const MAX_INLINE_COUNTERS: usize = 32;

/// Largest edge map (entries): `cur` and `prev` travel as 32-bit immediates.
pub(crate) const MAX_EDGE_MAP: usize = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

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
        // Bytes that end: live.
        assert!(status_flags_live(&[0x90], 0x1000));
    }
}
