//! Inline recording of memory accesses: for each access of an instruction, code before the
//! instruction computes the effective address (and loads the value of a read), code after
//! it loads the value written. Everything goes into the context's slots; the descriptors
//! (size, kind, flags) are kept by `crate::memory_access::MemoryRecorder`. The sequences use
//! rax and rcx, spilled to the context, and touch no flags.

use super::context::off;
use super::emitter::{Asm, Label, RAX, RCX};
use super::encode::{self, MemOperand};
use crate::memory_access::{
    MAX_SLOTS, MemDesc, MemoryAccessFlags, MemoryAccessType, MemoryRecorder,
};
use iced_x86::{
    Instruction, InstructionInfoFactory, MemorySize, Mnemonic, OpAccess, OpKind, Register,
};

/// One access to record, as planned for the instruction being translated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Planned {
    pub slot: u16,
    segment: Register,
    base: Register,
    index: Register,
    scale: u32,
    displacement: u64,
    size: u16,
    write: bool,
    /// Load the value (read: before, write: after).
    value: bool,
    /// `rep` string instruction: the pointer register recorded after it.
    rep: Option<Register>,
    /// `bt`/`bts`/`btr`/`btc` on memory with a register bit offset: the register (its size
    /// is the operand's), which selects the word accessed relative to the operand.
    bit_offset: Option<Register>,
}

impl Planned {
    pub fn is_write(&self) -> bool {
        self.write
    }
}

pub(crate) use crate::memory_access::MAX_PER_INSTRUCTION;

/// Whether the instruction is a string instruction (implicit rsi/rdi operands).
fn is_string(instr: &Instruction) -> bool {
    (0..instr.op_count()).any(|i| {
        matches!(
            instr.op_kind(i),
            OpKind::MemorySegSI
                | OpKind::MemorySegESI
                | OpKind::MemorySegRSI
                | OpKind::MemorySegDI
                | OpKind::MemorySegEDI
                | OpKind::MemorySegRDI
                | OpKind::MemoryESDI
                | OpKind::MemoryESEDI
                | OpKind::MemoryESRDI
        )
    })
}

fn is_xsave_family(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Xsave
            | Mnemonic::Xsave64
            | Mnemonic::Xsavec
            | Mnemonic::Xsavec64
            | Mnemonic::Xsaveopt
            | Mnemonic::Xsaveopt64
            | Mnemonic::Xsaves
            | Mnemonic::Xsaves64
            | Mnemonic::Xrstor
            | Mnemonic::Xrstor64
            | Mnemonic::Xrstors
            | Mnemonic::Xrstors64
    )
}

/// Plans the recorded accesses of `instr` into `out`, pushing their descriptors; `next_slot`
/// is the block's next free slot. Returns false (planning nothing) if the block has no
/// slots left for them (callers check `block_has_room` first).
#[allow(clippy::too_many_arguments)]
/// Whether the block has slots left for one more instruction's accesses.
pub(crate) fn block_has_room(next_slot: u16) -> bool {
    usize::from(next_slot) + MAX_PER_INSTRUCTION <= MAX_SLOTS
}

pub(crate) fn plan(
    instr: &Instruction,
    info: &mut InstructionInfoFactory,
    rec: &mut MemoryRecorder,
    values: bool,
    next_slot: &mut u16,
    out: &mut Vec<Planned>,
) -> bool {
    out.clear();
    let wanted = rec.recorded;
    if wanted.is_empty() {
        return true;
    }
    let info = info.info(instr);
    let string = is_string(instr);
    let rep = string && (instr.has_rep_prefix() || instr.has_repne_prefix());
    let xsave = is_xsave_family(instr.mnemonic());
    let bit_offset = (matches!(
        instr.mnemonic(),
        Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc
    ) && instr.op0_kind() == OpKind::Memory
        && instr.op1_kind() == OpKind::Register
        && std::arch::is_x86_feature_detected!("bmi2"))
    .then(|| instr.op1_register());
    let mut planned: [Option<Planned>; MAX_PER_INSTRUCTION] = [None; MAX_PER_INSTRUCTION];
    let mut n = 0;
    for m in info.used_memory() {
        let kinds: &[bool] = match m.access() {
            OpAccess::Read | OpAccess::CondRead => &[false],
            OpAccess::Write | OpAccess::CondWrite => &[true],
            OpAccess::ReadWrite | OpAccess::ReadCondWrite => &[false, true],
            _ => &[],
        };
        for &write in kinds {
            let kind = if write {
                MemoryAccessType::WRITE
            } else {
                MemoryAccessType::READ
            };
            if !wanted.contains(kind) || n == MAX_PER_INSTRUCTION {
                continue;
            }
            let size = match m.memory_size() {
                _ if string => instr.memory_size().size().max(1),
                MemorySize::Unknown => 0,
                s => s.size(),
            };
            let vsib = m.index().is_vector_register();
            let value = values && !rep && !vsib && matches!(size, 1 | 2 | 4 | 8);
            planned[n] = Some(Planned {
                slot: 0,
                segment: m.segment(),
                base: m.base(),
                index: if vsib { Register::None } else { m.index() },
                scale: m.scale(),
                displacement: m.displacement(),
                size: u16::try_from(size).unwrap_or(u16::MAX),
                write,
                value,
                rep: rep.then(|| m.base()),
                bit_offset,
            });
            n += 1;
        }
    }
    if usize::from(*next_slot) + n > MAX_SLOTS || !rec.has_room() {
        return false;
    }
    for p in planned.iter_mut().take(n).flatten() {
        p.slot = *next_slot;
        *next_slot += 1;
        let mut flags = MemoryAccessFlags::empty();
        if !p.value {
            flags |= MemoryAccessFlags::UNKNOWN_VALUE;
        }
        if xsave {
            flags |= MemoryAccessFlags::MINIMUM_SIZE;
            p.size = p.size.max(576);
        }
        rec.descs.push(MemDesc {
            inst_address: instr.ip(),
            slot: p.slot,
            size: p.size,
            access_type: if p.write {
                MemoryAccessType::WRITE
            } else {
                MemoryAccessType::READ
            },
            flags,
            rep: p.rep.is_some(),
        });
        out.push(*p);
    }
    true
}

/// Most (access, range) pairs [`emit_range_filter`] checks inline (each about 40 bytes).
const MAX_RANGE_CHECKS: usize = 8;

/// Before a site whose callbacks are all memory-range callbacks (`ranges`: their access
/// kinds and ranges): code that skips the site (jumps to `skip`) unless an access of the
/// instruction (`planned`, as recorded in the slots; `pre`: before the instruction, reads
/// only) touches one of the ranges, with the predicate the callback routine applies
/// (`addr < end && start < addr + max(size, 1)`, kinds intersecting). So a watched range
/// costs the instructions that miss it a few compares instead of a callback routine. Emits
/// nothing (the site then always runs) when the accesses cannot be checked so (a `rep`
/// string span, known only after the instruction) or there are too many pairs. Saves rax,
/// rcx and the status flags (as inline instrumentation does) around the compares.
pub(crate) fn emit_range_filter(
    a: &mut Asm,
    ctx: u64,
    planned: &[Planned],
    pre: bool,
    ranges: &[(MemoryAccessType, u64, u64)],
    skip: Label,
) {
    let mut checks = [(0u16, 0u64, 0u64); MAX_RANGE_CHECKS];
    let mut n = 0;
    for p in planned {
        if p.rep.is_some() {
            return;
        }
        if pre && p.write {
            continue; // not recorded yet: the routine does not see it either
        }
        let kind = if p.write {
            MemoryAccessType::WRITE
        } else {
            MemoryAccessType::READ
        };
        for &(k, start, end) in ranges {
            if !k.intersects(kind) {
                continue;
            }
            if n == MAX_RANGE_CHECKS {
                return;
            }
            // start < addr + size  <=>  addr >= start - (size - 1)
            let size = u64::from(p.size.max(1));
            checks[n] = (p.slot, start.saturating_sub(size - 1), end);
            n += 1;
        }
    }
    let spill = ctx + off::INLINE_SPILL;
    let (hit, miss) = (a.new_label(), a.new_label());
    a.store(spill, RAX);
    a.store(spill + 8, RCX);
    a.save_status_flags(spill + 16);
    for &(slot, low, end) in &checks[..n] {
        let next = a.new_label();
        a.load(RAX, slot_addr(ctx, slot));
        a.mov_imm64(RCX, end);
        a.bytes(&[0x48, 0x39, 0xc8]); // cmp rax, rcx
        a.jcc_label(3, next); // jae: at or past the end
        a.mov_imm64(RCX, low);
        a.bytes(&[0x48, 0x39, 0xc8]); // cmp rax, rcx
        a.jcc_label(3, hit); // jae: from the start on
        a.bind(next);
    }
    a.jmp_label(miss);
    for (l, to) in [(miss, Some(skip)), (hit, None)] {
        a.bind(l);
        a.restore_status_flags(spill + 16);
        a.load(RCX, spill + 8);
        a.load(RAX, spill);
        if let Some(to) = to {
            a.jmp_label(to);
        }
    }
}

fn slot_addr(ctx: u64, slot: u16) -> u64 {
    ctx + off::MEM_SLOTS + 16 * u64::from(slot)
}

/// Code before the instruction: every address, and the values of reads.
pub(crate) fn emit_pre(a: &mut Asm, ctx: u64, planned: &[Planned]) {
    if planned.is_empty() {
        return;
    }
    // rcx serves for segment bases and bit offsets only.
    let rcx = planned
        .iter()
        .any(|p| matches!(p.segment, Register::FS | Register::GS) || p.bit_offset.is_some());
    a.store(ctx + off::SPILL, RAX);
    if rcx {
        a.store(ctx + off::SPILL + 8, RCX);
    }
    for (i, p) in planned.iter().enumerate() {
        if i > 0 {
            // The previous access used rax (and rcx): the next address may need the guest's.
            if rcx {
                a.load(RCX, ctx + off::SPILL + 8);
            }
            a.load(RAX, ctx + off::SPILL);
        }
        emit_address(a, p);
        if let Some(reg) = p.bit_offset {
            emit_bit_offset(a, ctx, reg);
        }
        a.store(slot_addr(ctx, p.slot), RAX);
        if p.value && !p.write {
            emit_load_value(a, p.size);
            a.store(slot_addr(ctx, p.slot) + 8, RAX);
        }
    }
    if rcx {
        a.load(RCX, ctx + off::SPILL + 8);
    }
    a.load(RAX, ctx + off::SPILL);
}

/// Whether [`emit_post`] has anything to emit for `planned`.
pub(crate) fn emits_post(planned: &[Planned]) -> bool {
    planned
        .iter()
        .any(|p| p.rep.is_some() || (p.write && p.value))
}

/// Code after the instruction: values written, and where `rep` string pointers ended.
pub(crate) fn emit_post(a: &mut Asm, ctx: u64, planned: &[Planned]) {
    let writes = planned.iter().any(|p| p.write && p.value);
    if writes {
        a.store(ctx + off::SPILL, RAX);
    }
    for p in planned {
        if let Some(reg) = p.rep {
            if let Some(n) = gpr_number(reg) {
                a.store(slot_addr(ctx, p.slot) + 8, n);
            }
        } else if p.write && p.value {
            a.load(RAX, slot_addr(ctx, p.slot));
            emit_load_value(a, p.size);
            a.store(slot_addr(ctx, p.slot) + 8, RAX);
        }
    }
    if writes {
        a.load(RAX, ctx + off::SPILL);
    }
}

/// rax = the effective address (the guest's rax and rcx are still in their registers).
fn emit_address(a: &mut Asm, p: &Planned) {
    let absolute = matches!(p.base, Register::RIP | Register::EIP)
        || (p.base == Register::None && p.index == Register::None);
    if p.index == Register::AL {
        // xlat: [rbx+al]. No lea takes an 8-bit index: zero-extend al into rax first.
        a.bytes(&[0x0f, 0xb6, 0xc0]); // movzx eax, al
        let base = if p.base.is_gpr32() { 0x67 } else { 0x48 };
        // lea rax, [rbx+rax] (or lea eax, [ebx+eax] with 32-bit addressing)
        if base == 0x67 {
            a.bytes(&[0x67, 0x8d, 0x04, 0x03]);
        } else {
            a.bytes(&[0x48, 0x8d, 0x04, 0x03]);
        }
    } else if absolute {
        a.mov_imm64(RAX, p.displacement);
    } else {
        let wide = !(p.base.is_gpr32() || p.index.is_gpr32());
        let mem = MemOperand {
            segment: Register::None,
            base: p.base,
            index: p.index,
            scale: p.scale,
            disp: p.displacement,
        };
        // lea rax, [mem] (lea eax with 32-bit addressing)
        let ok = encode::reg_mem(a, 0x8d, wide, RAX, &mem);
        debug_assert!(ok, "lea of a decoded memory operand encodes: {mem:?}");
        if !ok {
            a.mov_imm64(RAX, 0);
        }
    }
    if p.segment == Register::FS || p.segment == Register::GS {
        // rcx = the segment base, as the guest has it when the access runs.
        if super::fsgsbase_usable() {
            match p.segment {
                Register::FS => a.rdfsbase(RCX),
                _ => a.rdgsbase(RCX),
            }
        } else if p.segment == Register::FS {
            // The TCB's self pointer: fs:[0] is the FS base on x86-64 Linux.
            a.bytes(&[0x64, 0x48, 0x8b, 0x0c, 0x25, 0, 0, 0, 0]); // mov rcx, fs:[0]
        } else {
            // No way to read it without a system call: the base at translation (programs
            // on Linux rarely set one; arch_prctl(ARCH_SET_GS) later is not seen).
            a.mov_imm64(RCX, super::thread_segment_bases().1);
        }
        a.bytes(&[0x48, 0x8d, 0x04, 0x08]); // lea rax, [rax+rcx]
    }
}

/// For `bt`-family instructions with a register bit offset: rax += the offset of the word
/// holding the bit (the signed offset, arithmetically shifted right by log2 of the operand's
/// bits, times its bytes). Flag-free (the guest's flags are live): `sarx`, `lea`. The guest's
/// rax and rcx are in the spill slots; clobbers rcx.
fn emit_bit_offset(a: &mut Asm, ctx: u64, reg: Register) {
    let spill_ea = ctx + off::SPILL + 16;
    a.store(spill_ea, RAX);
    match reg.full_register() {
        Register::RAX => a.load(RCX, ctx + off::SPILL),
        Register::RCX => a.load(RCX, ctx + off::SPILL + 8),
        full => a.mov_rr(RCX, gpr_number(full).unwrap_or(RCX)),
    }
    let (shift, scale_bits) = match reg.size() {
        2 => {
            a.bytes(&[0x48, 0x0f, 0xbf, 0xc9]); // movsx rcx, cx
            (4, 0x40)
        }
        4 => {
            a.bytes(&[0x48, 0x63, 0xc9]); // movsxd rcx, ecx
            (5, 0x80)
        }
        _ => (6, 0xc0),
    };
    a.mov_imm32(RAX, shift);
    a.bytes(&[0xc4, 0xe2, 0xfa, 0xf7, 0xc9]); // sarx rcx, rcx, rax
    a.load(RAX, spill_ea);
    a.bytes(&[0x48, 0x8d, 0x04, scale_bits | (RCX << 3)]); // lea rax, [rax + rcx*bytes]
}

/// rax = the `size`-byte value at [rax], zero-extended.
fn emit_load_value(a: &mut Asm, size: u16) {
    match size {
        1 => a.bytes(&[0x0f, 0xb6, 0x00]), // movzx eax, byte [rax]
        2 => a.bytes(&[0x0f, 0xb7, 0x00]), // movzx eax, word [rax]
        4 => a.bytes(&[0x8b, 0x00]),       // mov eax, [rax]
        _ => a.bytes(&[0x48, 0x8b, 0x00]), // mov rax, [rax]
    }
}

fn gpr_number(r: Register) -> Option<u8> {
    let full = r.full_register();
    full.is_gpr64().then(|| full.number() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Code, Decoder, DecoderOptions};

    fn address_code(base: Register, index: Register, scale: u32, displacement: u64) -> Instruction {
        let mut a = Asm::new();
        a.reset(0x10_0000);
        let p = Planned {
            slot: 0,
            segment: Register::DS,
            base,
            index,
            scale,
            displacement,
            size: 8,
            write: false,
            value: false,
            rep: None,
            bit_offset: None,
        };
        emit_address(&mut a, &p);
        Decoder::with_ip(64, &a.buf, 0x10_0000, DecoderOptions::NONE).decode()
    }

    #[test]
    fn effective_addresses_are_computed_with_lea() {
        for (base, index, scale, disp) in [
            (Register::RDI, Register::None, 1, 0x204u64),
            (Register::RSP, Register::None, 1, (-8i64) as u64),
            (Register::R13, Register::RCX, 8, 0),
            (Register::RBP, Register::R12, 4, 0x7fff_0000),
            (Register::EDI, Register::None, 1, 16),
        ] {
            let i = address_code(base, index, scale, disp);
            assert!(
                matches!(i.code(), Code::Lea_r64_m | Code::Lea_r32_m),
                "{base:?}+{index:?}: {:?}",
                i.code()
            );
            assert_eq!((i.memory_base(), i.memory_index()), (base, index));
            assert_eq!(
                i.memory_displacement64(),
                if base.is_gpr32() {
                    disp as u32 as u64
                } else {
                    disp
                }
            );
        }
    }
}
