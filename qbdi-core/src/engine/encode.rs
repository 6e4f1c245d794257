//! Hand encodings of the instructions the engine builds from decoded guest operands, and of
//! the AVX-512 moves of its context switch. iced's encoder is never built: its tables cost
//! about 0.7 ms at the process's first use, which every `qbdi run` paid at start-up.
//!
//! Each form is checked against iced's decoder in the tests below (every register, every
//! addressing shape).

use super::emitter::Asm;
use iced_x86::Register;

/// A decoded guest memory operand, addressed through general-purpose registers (no RIP or
/// EIP base, no vector index).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemOperand {
    /// FS or GS to keep as a prefix; anything else is none.
    pub segment: Register,
    pub base: Register,
    pub index: Register,
    /// 1, 2, 4 or 8.
    pub scale: u32,
    /// As iced gives it (`memory_displacement64`): sign-extended with 64-bit addressing, the
    /// 32-bit value with 32-bit addressing.
    pub disp: u64,
}

/// `op reg, [mem]` with a one-byte opcode (0x8b: mov, 0x8d: lea), 64-bit operand size if
/// `wide`, `reg` a register number (0-15). Nothing is emitted and false returned for an
/// operand these forms cannot address: RIP or EIP based, a vector or 16-bit register,
/// 32- and 64-bit registers mixed, a 64-bit displacement.
pub(crate) fn reg_mem(a: &mut Asm, opcode: u8, wide: bool, reg: u8, m: &MemOperand) -> bool {
    let gpr = |r: Register| r == Register::None || r.is_gpr64() || r.is_gpr32();
    if !gpr(m.base) || !gpr(m.index) || m.index == Register::RSP || m.index == Register::ESP {
        return false;
    }
    let addr32 = m.base.is_gpr32() || m.index.is_gpr32();
    if (m.base.is_gpr64() || m.index.is_gpr64()) && addr32 {
        return false;
    }
    let disp = if addr32 {
        m.disp as u32 as i32
    } else {
        match i32::try_from(m.disp as i64) {
            Ok(d) => d,
            Err(_) => return false,
        }
    };
    let ss = match m.scale {
        1 => 0u8,
        2 => 1,
        4 => 2,
        8 => 3,
        _ => return false,
    };
    let num = |r: Register| r.number() as u8;
    let (base, index) = (m.base != Register::None, m.index != Register::None);
    let b = if base { num(m.base) } else { 0 };
    let x = if index { num(m.index) } else { 0 };
    match m.segment {
        Register::FS => a.bytes(&[0x64]),
        Register::GS => a.bytes(&[0x65]),
        _ => {}
    }
    if addr32 {
        a.bytes(&[0x67]);
    }
    let rex = (u8::from(wide) << 3) | ((reg >> 3) << 2) | ((x >> 3) << 1) | (b >> 3);
    if rex != 0 {
        a.bytes(&[0x40 | rex]);
    }
    a.bytes(&[opcode]);
    let r = (reg & 7) << 3;
    if !base {
        // [index*scale + disp32] or [disp32]: SIB with no base, always a disp32.
        let sib_index = if index { x & 7 } else { 4 };
        a.bytes(&[r | 4, (ss << 6) | (sib_index << 3) | 5]);
        a.bytes(&disp.to_le_bytes());
        return true;
    }
    // rbp/r13 as base with no displacement would read as RIP-relative or no-base: disp8 0.
    let md = if disp == 0 && b & 7 != 5 {
        0u8
    } else if i8::try_from(disp).is_ok() {
        1
    } else {
        2
    };
    if index || b & 7 == 4 {
        let sib_index = if index { x & 7 } else { 4 };
        a.bytes(&[(md << 6) | r | 4, (ss << 6) | (sib_index << 3) | (b & 7)]);
    } else {
        a.bytes(&[(md << 6) | r | (b & 7)]);
    }
    match md {
        1 => a.bytes(&[disp as i8 as u8]),
        2 => a.bytes(&disp.to_le_bytes()),
        _ => {}
    }
    true
}

/// A VEX- or EVEX-encoded instruction with a ModRM operand: opcode map `map` (1: 0F, 3:
/// 0F3A), implied prefix `pp` (0: none, 1: 66, 2: F3), W, `reg` the ModRM.reg register,
/// `v` the extra source (VEX.vvvv) if any, `rm` a register or a RIP-relative operand, and
/// an 8-bit immediate if any. Registers are numbered in their class (0-31 with EVEX, 0-15
/// with VEX).
#[derive(Clone, Copy)]
struct Form {
    map: u8,
    pp: u8,
    w: bool,
    opcode: u8,
    reg: u8,
    v: Option<u8>,
    rm: Rm,
    imm: Option<u8>,
}

#[derive(Clone, Copy)]
enum Rm {
    Reg(u8),
    Rip(u64),
}

/// The complement of bit `k` of `n` (VEX and EVEX store register bits inverted).
fn inv(n: u8, k: u8) -> u8 {
    ((n >> k) & 1) ^ 1
}

impl Form {
    /// The ModRM.rm register's number (0 for a RIP-relative operand).
    fn rm_reg(&self) -> u8 {
        match self.rm {
            Rm::Reg(n) => n,
            Rm::Rip(_) => 0,
        }
    }

    /// Encoded with EVEX, 512-bit length, no masking.
    fn evex512(self, a: &mut Asm) {
        let (rm, v) = (self.rm_reg(), self.v.unwrap_or(0));
        let p0 = (inv(self.reg, 3) << 7)
            | (inv(rm, 4) << 6)
            | (inv(rm, 3) << 5)
            | (inv(self.reg, 4) << 4)
            | self.map;
        let p1 = (u8::from(self.w) << 7) | ((!v & 0xf) << 3) | 0b100 | self.pp;
        let p2 = 0x40 | (inv(v, 4) << 3); // z 0, L'L 512, b 0, aaa 0
        a.bytes(&[0x62, p0, p1, p2, self.opcode]);
        self.modrm_tail(a);
    }

    /// Encoded with a 3-byte VEX prefix, vector length bit `l`.
    fn vex3(self, a: &mut Asm, l: bool) {
        let (rm, v) = (self.rm_reg(), self.v.unwrap_or(0));
        let b1 = (inv(self.reg, 3) << 7) | (1 << 6) | (inv(rm, 3) << 5) | self.map;
        let b2 = (u8::from(self.w) << 7) | ((!v & 0xf) << 3) | (u8::from(l) << 2) | self.pp;
        a.bytes(&[0xc4, b1, b2, self.opcode]);
        self.modrm_tail(a);
    }

    fn modrm_tail(self, a: &mut Asm) {
        let reg = (self.reg & 7) << 3;
        match self.rm {
            Rm::Reg(n) => a.bytes(&[0xc0 | reg | (n & 7)]),
            Rm::Rip(addr) => {
                a.bytes(&[reg | 5]);
                let d = a.rip_disp(addr, u64::from(self.imm.is_some()));
                a.bytes(&d.to_le_bytes());
            }
        }
        if let Some(i) = self.imm {
            a.bytes(&[i]);
        }
    }
}

/// The vector state the context switch moves by hand, one register at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VectorPart {
    /// Bits 128-255 of ymm0-15: `vextracti128 [m], ymmN, 1` / `vinserti128 ymmN, ymmN, [m], 1`.
    YmmHigh,
    /// Bits 256-511 of zmm0-15: `vextracti64x4 [m], zmmN, 1` / `vinserti64x4 zmmN, zmmN, [m], 1`.
    ZmmHigh,
    /// zmm16-31 whole: `vmovdqu64 [m], zmmN` / `vmovdqu64 zmmN, [m]`.
    Zmm,
    /// k0-7: `kmovq [m], kN` / `kmovq kN, [m]`.
    Mask,
}

/// Stores (`store`) register `n` of `part` (its number in its class: 16-31 for `Zmm`) to
/// `[rip+addr]`, or loads it back.
pub(crate) fn move_vector(a: &mut Asm, part: VectorPart, store: bool, n: u8, addr: u64) {
    // (map, pp, W, store opcode, load opcode, 1 for the upper lane)
    let (map, pp, w, st, ld, lane) = match part {
        VectorPart::YmmHigh => (3, 1, false, 0x39, 0x38, Some(1)),
        VectorPart::ZmmHigh => (3, 1, true, 0x3b, 0x3a, Some(1)),
        VectorPart::Zmm => (1, 2, true, 0x7f, 0x6f, None),
        VectorPart::Mask => (1, 0, true, 0x91, 0x90, None),
    };
    let form = Form {
        map,
        pp,
        w,
        opcode: if store { st } else { ld },
        reg: n,
        // A lane's insert takes the register itself as its other source.
        v: (lane.is_some() && !store).then_some(n),
        rm: Rm::Rip(addr),
        imm: lane,
    };
    match part {
        VectorPart::YmmHigh => form.vex3(a, true),
        VectorPart::Mask => form.vex3(a, false),
        VectorPart::ZmmHigh | VectorPart::Zmm => form.evex512(a),
    }
}

/// `vpxord zmmN, zmmN, zmmN` (zeroes it), N in 0-31.
pub(crate) fn vpxord_self(a: &mut Asm, n: u8) {
    Form {
        map: 1,
        pp: 1,
        w: false,
        opcode: 0xef,
        reg: n,
        v: Some(n),
        rm: Rm::Reg(n),
        imm: None,
    }
    .evex512(a);
}

/// `kxorq kN, kN, kN` (zeroes it), N in 0-7.
pub(crate) fn kxorq_self(a: &mut Asm, n: u8) {
    Form {
        map: 1,
        pp: 0,
        w: true,
        opcode: 0x47,
        reg: n,
        v: Some(n),
        rm: Rm::Reg(n),
        imm: None,
    }
    .vex3(a, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Code, Decoder, DecoderOptions, Instruction};

    const AT: u64 = 0x7f00_1234_0000;

    /// An empty buffer for code at `AT`.
    fn at() -> Asm {
        let mut a = Asm::new();
        a.reset(AT);
        a
    }

    fn decode(a: &Asm) -> Instruction {
        let mut d = Decoder::with_ip(64, &a.buf, AT, DecoderOptions::NONE);
        let i = d.decode();
        assert_eq!(i.len(), a.buf.len(), "one instruction: {:02x?}", a.buf);
        i
    }

    fn regs64() -> impl Iterator<Item = Register> {
        (0..16).map(|n| Register::try_from(Register::RAX as usize + n).unwrap())
    }

    #[test]
    fn every_memory_operand_shape_encodes_as_decoded() {
        let mut bases: Vec<Register> = regs64().collect();
        bases.push(Register::None);
        let mut indexes: Vec<Register> = regs64().filter(|&r| r != Register::RSP).collect();
        indexes.push(Register::None);
        let mut checked = 0;
        for (opcode, wide, code) in [
            (0x8b, true, Code::Mov_r64_rm64),
            (0x8d, true, Code::Lea_r64_m),
            (0x8d, false, Code::Lea_r32_m),
        ] {
            for reg in [0u8, 1, 8, 15] {
                for &base in &bases {
                    for &index in &indexes {
                        for scale in [1, 8] {
                            for disp in [0u64, 0x7f, (-0x80i64) as u64, 0x1234_5678, (-9i64) as u64]
                            {
                                for segment in [Register::None, Register::FS, Register::GS] {
                                    let m = MemOperand {
                                        segment,
                                        base,
                                        index,
                                        scale,
                                        disp,
                                    };
                                    let mut a = at();
                                    assert!(reg_mem(&mut a, opcode, wide, reg, &m));
                                    let i = decode(&a);
                                    assert_eq!(i.code(), code, "{m:?}: {:02x?}", a.buf);
                                    assert_eq!(i.op0_register().number() as u8, reg);
                                    assert_eq!(i.memory_base(), base, "{m:?}: {:02x?}", a.buf);
                                    assert_eq!(i.memory_index(), index, "{m:?}: {:02x?}", a.buf);
                                    if index != Register::None {
                                        assert_eq!(i.memory_index_scale(), scale);
                                    }
                                    assert_eq!(i.memory_displacement64(), disp, "{m:?}");
                                    assert_eq!(i.segment_prefix(), segment);
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000);
    }

    #[test]
    fn thirty_two_bit_addressing_keeps_its_registers_and_wraps() {
        for (base, index, disp) in [
            (Register::EDI, Register::None, 16u64),
            (Register::EBP, Register::None, 0),
            (Register::R13D, Register::EAX, 0xffff_fff8),
            (Register::ESP, Register::R9D, 0x8000_0000),
            (Register::None, Register::ECX, 4),
        ] {
            let m = MemOperand {
                segment: Register::None,
                base,
                index,
                scale: 4,
                disp,
            };
            let mut a = at();
            assert!(reg_mem(&mut a, 0x8d, false, 0, &m));
            let i = decode(&a);
            assert_eq!((i.memory_base(), i.memory_index()), (base, index));
            assert_eq!(i.memory_displacement64(), disp);
        }
    }

    #[test]
    fn operands_out_of_these_forms_are_refused() {
        for m in [
            MemOperand {
                segment: Register::None,
                base: Register::RIP,
                index: Register::None,
                scale: 1,
                disp: 0,
            },
            MemOperand {
                segment: Register::None,
                base: Register::RAX,
                index: Register::XMM1,
                scale: 1,
                disp: 0,
            },
            MemOperand {
                segment: Register::None,
                base: Register::RAX,
                index: Register::ECX,
                scale: 1,
                disp: 0,
            },
            MemOperand {
                segment: Register::None,
                base: Register::None,
                index: Register::None,
                scale: 1,
                disp: 1 << 40,
            },
        ] {
            let mut a = at();
            assert!(!reg_mem(&mut a, 0x8b, true, 1, &m), "{m:?}");
            assert!(a.buf.is_empty());
        }
    }

    #[test]
    fn vector_moves_decode_as_intended() {
        let target = AT + 0x3000;
        let parts = [
            (
                VectorPart::YmmHigh,
                Register::YMM0,
                0u8,
                16u8,
                Code::VEX_Vextracti128_xmmm128_ymm_imm8,
                Code::VEX_Vinserti128_ymm_ymm_xmmm128_imm8,
            ),
            (
                VectorPart::ZmmHigh,
                Register::ZMM0,
                0,
                16,
                Code::EVEX_Vextracti64x4_ymmm256_k1z_zmm_imm8,
                Code::EVEX_Vinserti64x4_zmm_k1z_zmm_ymmm256_imm8,
            ),
            (
                VectorPart::Zmm,
                Register::ZMM0,
                16,
                16,
                Code::EVEX_Vmovdqu64_zmmm512_k1z_zmm,
                Code::EVEX_Vmovdqu64_zmm_k1z_zmmm512,
            ),
            (
                VectorPart::Mask,
                Register::K0,
                0,
                8,
                Code::VEX_Kmovq_m64_kr,
                Code::VEX_Kmovq_kr_km64,
            ),
        ];
        for (part, first, from, count, store_code, load_code) in parts {
            for n in from..from + count {
                let r = Register::try_from(first as usize + n as usize).unwrap();
                for store in [true, false] {
                    let mut a = at();
                    move_vector(&mut a, part, store, n, target);
                    let i = decode(&a);
                    let what = format!("{part:?} {n} store={store}: {:02x?}", a.buf);
                    if store {
                        assert_eq!((i.code(), i.op1_register()), (store_code, r), "{what}");
                    } else {
                        assert_eq!((i.code(), i.op0_register()), (load_code, r), "{what}");
                    }
                    if !store && matches!(part, VectorPart::YmmHigh | VectorPart::ZmmHigh) {
                        assert_eq!(i.op1_register(), r, "{what}");
                    }
                    if matches!(part, VectorPart::YmmHigh | VectorPart::ZmmHigh) {
                        assert_eq!(i.immediate8(), 1, "{what}");
                    }
                    assert_eq!(i.ip_rel_memory_address(), target, "{what}");
                    assert_eq!(i.op_mask(), Register::None, "{what}");
                    assert!(!i.zeroing_masking(), "{what}");
                }
            }
        }
        for n in 0..32u8 {
            let zmm = Register::try_from(Register::ZMM0 as usize + n as usize).unwrap();
            let mut a = at();
            vpxord_self(&mut a, n);
            let i = decode(&a);
            assert_eq!(
                i.code(),
                Code::EVEX_Vpxord_zmm_k1z_zmm_zmmm512b32,
                "{:02x?}",
                a.buf
            );
            assert_eq!(
                (i.op0_register(), i.op1_register(), i.op2_register()),
                (zmm, zmm, zmm),
                "{:02x?}",
                a.buf
            );
            assert_eq!(i.op_mask(), Register::None);
        }
        for n in 0..8u8 {
            let k = Register::try_from(Register::K0 as usize + n as usize).unwrap();
            let mut a = at();
            kxorq_self(&mut a, n);
            let i = decode(&a);
            assert_eq!(i.code(), Code::VEX_Kxorq_kr_kr_kr, "{:02x?}", a.buf);
            assert_eq!(
                (i.op0_register(), i.op1_register(), i.op2_register()),
                (k, k, k)
            );
        }
    }
}
