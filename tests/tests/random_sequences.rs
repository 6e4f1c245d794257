//! Random instruction sequences, run natively and under the Vm from the same state.
//!
//! A seeded generator builds straight-line sequences of 10-80 instructions from a wide mix
//! (integer ALU in every width, shifts and rotates, multiplies, bit scans and bit tests,
//! cmovcc/setcc, lea, xchg, bswap, extensions, flag instructions, push/pop pairs, SSE/SSE2,
//! AVX2 in the third test) and cuts them into several basic blocks with `jmp`/`jcc` to the
//! next instruction and `jcc` over one instruction. Each sequence runs twice from the same
//! registers, flags, MXCSR, vector registers, data buffer and stack content: natively through
//! the assembly harness of `guest/rand_harness.S`, and under one reused `Vm` from an RWX code
//! buffer that is rewritten for every sequence (so `clear_cache` is exercised as well). Every
//! register, the masked flags, MXCSR, the vector registers, the data buffer and the red zone
//! under the stack pointer must end equal.
//!
//! `rdi` holds the data buffer's address and is never written nor read as a value (only as
//! the base of memory operands); `rsp` is only moved by balanced push/pop pairs. Everything
//! else is random. Set `QBDI_TEST_SEED` (decimal or 0x-hex) to replay or vary a campaign; a
//! failure prints the seed, the sequence index, the disassembly, the initial state, the
//! differences and a reduced sequence that still fails.

#[path = "random/common.rs"]
mod common;
use common::*;

use iced_x86::{
    Code, Decoder, DecoderOptions, Encoder, IcedError, Instruction, MemoryOperand, Register,
};
use qbdi_core::{
    FAKE_RETURN_ADDRESS, FprState, GprState, InstPosition, MemoryAccessType, PRIORITY_DEFAULT, Vm,
    VmAction, VmEvent, VmRef, simulate_call,
};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

// ---------------------------------------------------------------------------------------
// The native harness and the state it exchanges.
// ---------------------------------------------------------------------------------------

/// The state the harness loads and stores (layout documented in `guest/rand_harness.S`).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct RandState {
    /// In hardware order: rax rcx rdx rbx rsp rbp rsi rdi r8 .. r15.
    gpr: [u64; 16],
    rflags: u64,
    host_rsp: u64,
    mxcsr: u32,
    pad: [u32; 3],
    /// xmm in bytes 0..16, the ymm upper half in bytes 16..32.
    vec: [[u8; 32]; 16],
}

const _: () = assert!(std::mem::offset_of!(RandState, rflags) == 128);
const _: () = assert!(std::mem::offset_of!(RandState, host_rsp) == 136);
const _: () = assert!(std::mem::offset_of!(RandState, mxcsr) == 144);
const _: () = assert!(std::mem::offset_of!(RandState, vec) == 160);

impl RandState {
    fn zeroed() -> RandState {
        RandState {
            gpr: [0; 16],
            rflags: 0,
            host_rsp: 0,
            mxcsr: 0,
            pad: [0; 3],
            vec: [[0; 32]; 16],
        }
    }
}

unsafe extern "C" {
    /// Runs `code` with the registers of `input` (xmm0-15), stores them to `output`.
    fn rand_run_native(input: *const RandState, output: *mut RandState, code: *const u8);
    /// As `rand_run_native`, with the full ymm0-15 (needs AVX).
    fn rand_run_native_avx(input: *const RandState, output: *mut RandState, code: *const u8);
}

// ---------------------------------------------------------------------------------------
// Pseudo-random numbers.
// ---------------------------------------------------------------------------------------

impl Rng {
    /// A vector lane of 8 bytes: raw bits, or one f64, or two f32 of moderate magnitude.
    fn vector_lane(&mut self) -> u64 {
        let small = |r: &mut Rng| (r.below(4001) as f64 - 2000.0) / (1 + r.below(16)) as f64;
        match self.below(4) {
            0 | 1 => self.next_u64(),
            2 => small(self).to_bits(),
            _ => {
                let lo = u64::from((small(self) as f32).to_bits());
                let hi = u64::from((small(self) as f32).to_bits());
                lo | (hi << 32)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The generator.
// ---------------------------------------------------------------------------------------

/// Which instruction mix a campaign draws from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Everything: integer ALU in every width, flags, stack pairs, SSE/SSE2.
    Full,
    /// Flags written only by 8/16-bit forms and by sahf/popfq; high-byte registers.
    Partial,
    /// `Full` plus AVX2 on ymm registers.
    Avx2,
}

/// One generator decision; the reducer removes whole items.
#[derive(Clone)]
enum Item {
    /// Instructions that belong together (push/pop pairs and the like).
    Plain(Vec<Instruction>),
    /// `jmp`/`jcc` (this code) to the instruction that follows it.
    JumpNext(Code),
    /// `jcc` (this code) over the one instruction that follows it.
    JccSkip(Code, Instruction),
}

const BUF_LEN: usize = 1024;
const CODE_LEN: usize = 4096;
const DEFAULT_SEED: u64 = 0x5eed_0bd1_2024_0001;

const GPR32: [Register; 14] = [
    Register::EAX,
    Register::ECX,
    Register::EDX,
    Register::EBX,
    Register::EBP,
    Register::ESI,
    Register::R8D,
    Register::R9D,
    Register::R10D,
    Register::R11D,
    Register::R12D,
    Register::R13D,
    Register::R14D,
    Register::R15D,
];
const GPR16: [Register; 14] = [
    Register::AX,
    Register::CX,
    Register::DX,
    Register::BX,
    Register::BP,
    Register::SI,
    Register::R8W,
    Register::R9W,
    Register::R10W,
    Register::R11W,
    Register::R12W,
    Register::R13W,
    Register::R14W,
    Register::R15W,
];
/// High-byte registers are listed twice as often: they are the interesting partial case.
const GPR8: [Register; 18] = [
    Register::AL,
    Register::CL,
    Register::DL,
    Register::BL,
    Register::AH,
    Register::CH,
    Register::DH,
    Register::BH,
    Register::AH,
    Register::CH,
    Register::DH,
    Register::BH,
    Register::BPL,
    Register::SIL,
    Register::R8L,
    Register::R11L,
    Register::R12L,
    Register::R15L,
];
const XMM: [Register; 16] = [
    Register::XMM0,
    Register::XMM1,
    Register::XMM2,
    Register::XMM3,
    Register::XMM4,
    Register::XMM5,
    Register::XMM6,
    Register::XMM7,
    Register::XMM8,
    Register::XMM9,
    Register::XMM10,
    Register::XMM11,
    Register::XMM12,
    Register::XMM13,
    Register::XMM14,
    Register::XMM15,
];
const YMM: [Register; 16] = [
    Register::YMM0,
    Register::YMM1,
    Register::YMM2,
    Register::YMM3,
    Register::YMM4,
    Register::YMM5,
    Register::YMM6,
    Register::YMM7,
    Register::YMM8,
    Register::YMM9,
    Register::YMM10,
    Register::YMM11,
    Register::YMM12,
    Register::YMM13,
    Register::YMM14,
    Register::YMM15,
];
const ALU_OPS: [&str; 8] = ["Add", "Or", "Adc", "Sbb", "And", "Sub", "Xor", "Cmp"];
const SHIFT_OPS: [&str; 7] = ["Rol", "Ror", "Rcl", "Rcr", "Shl", "Shr", "Sar"];

/// iced's `Code` by its name (`"Add_rm64_r64"`).
fn code(name: &str) -> Code {
    static CODES: OnceLock<HashMap<String, Code>> = OnceLock::new();
    let map = CODES.get_or_init(|| Code::values().map(|c| (format!("{c:?}"), c)).collect());
    *map.get(name)
        .unwrap_or_else(|| panic!("iced-x86 has no Code::{name}"))
}

/// A register or memory operand of a generated instruction.
#[derive(Clone, Copy)]
enum Rm {
    Reg(Register),
    Mem(MemoryOperand),
}

macro_rules! with_rm1 {
    ($code:expr, $rm:expr) => {
        match $rm {
            Rm::Reg(r) => Instruction::with1($code, r),
            Rm::Mem(m) => Instruction::with1($code, m),
        }
    };
}

/// `rm` as first operand.
macro_rules! with_rm2 {
    ($code:expr, $rm:expr, $b:expr) => {
        match $rm {
            Rm::Reg(r) => Instruction::with2($code, r, $b),
            Rm::Mem(m) => Instruction::with2($code, m, $b),
        }
    };
}

/// `rm` as second operand.
macro_rules! with_r_rm {
    ($code:expr, $a:expr, $rm:expr) => {
        match $rm {
            Rm::Reg(r) => Instruction::with2($code, $a, r),
            Rm::Mem(m) => Instruction::with2($code, $a, m),
        }
    };
}

/// `rm` as second operand of three.
macro_rules! with_r_rm_c {
    ($code:expr, $a:expr, $rm:expr, $c:expr) => {
        match $rm {
            Rm::Reg(r) => Instruction::with3($code, $a, r, $c),
            Rm::Mem(m) => Instruction::with3($code, $a, m, $c),
        }
    };
}

struct Generator<'a> {
    rng: &'a mut Rng,
    mode: Mode,
    code_base: u64,
    encoder: Encoder,
}

impl Generator<'_> {
    fn reg(&mut self, bits: u32) -> Register {
        match bits {
            8 => self.rng.pick(&GPR8),
            16 => self.rng.pick(&GPR16),
            32 => self.rng.pick(&GPR32),
            _ => self.rng.pick(&GPR64),
        }
    }

    fn xmm(&mut self) -> Register {
        self.rng.pick(&XMM)
    }

    fn ymm(&mut self) -> Register {
        self.rng.pick(&YMM)
    }

    /// `[rdi + disp]` covering `size` bytes inside the data buffer, aligned to `align`.
    fn mem(&mut self, size: usize, align: usize) -> MemoryOperand {
        let slots = (BUF_LEN - size) / align + 1;
        let disp = self.rng.below(slots as u64) as usize * align;
        MemoryOperand::with_base_displ(Register::RDI, disp as i64)
    }

    /// A register of `bits` or, one time in four, `[rdi + disp]`.
    fn rm(&mut self, bits: u32) -> Rm {
        if self.rng.chance(25) {
            Rm::Mem(self.mem(bits as usize / 8, 1))
        } else {
            Rm::Reg(self.reg(bits))
        }
    }

    fn int_bits(&mut self) -> u32 {
        if self.mode == Mode::Partial {
            self.rng.pick(&[8, 16])
        } else {
            self.rng.pick(&[8, 16, 32, 64])
        }
    }

    fn wide_bits(&mut self) -> u32 {
        if self.mode == Mode::Partial {
            16
        } else {
            self.rng.pick(&[16, 32, 64])
        }
    }

    /// An immediate that fits a `bits`-wide immediate field (sign-extended).
    fn imm(&mut self, bits: u32) -> i32 {
        let v = self.rng.interesting();
        match bits {
            8 => v as i8 as i32,
            16 => v as i16 as i32,
            _ => v as i32,
        }
    }

    fn shift_count(&mut self, bits: u32) -> u32 {
        match self.rng.below(6) {
            0 => self.rng.below(256) as u32,
            1 => bits - 1,
            2 => 0,
            _ => self.rng.below(u64::from(bits)) as u32,
        }
    }

    fn cond(&mut self) -> &'static str {
        self.rng.pick(&CONDITIONS)
    }

    fn alu(&mut self) -> Gen {
        let op = self.rng.pick(&ALU_OPS);
        let b = self.int_bits();
        let ib = b.min(32);
        let ins = match self.rng.below(7) {
            0 => Instruction::with2(code(&format!("{op}_rm{b}_r{b}")), self.reg(b), self.reg(b))?,
            1 => {
                let rm = self.rm(b);
                with_r_rm!(code(&format!("{op}_r{b}_rm{b}")), self.reg(b), rm)?
            }
            2 => Instruction::with2(
                code(&format!("{op}_rm{b}_r{b}")),
                self.mem(b as usize / 8, 1),
                self.reg(b),
            )?,
            3 => {
                let rm = self.rm(b);
                with_rm2!(code(&format!("{op}_rm{b}_imm{ib}")), rm, self.imm(ib))?
            }
            4 if b > 8 => {
                let rm = self.rm(b);
                with_rm2!(code(&format!("{op}_rm{b}_imm8")), rm, self.imm(8))?
            }
            5 => {
                let (acc, name) = match b {
                    8 => (Register::AL, format!("{op}_AL_imm8")),
                    16 => (Register::AX, format!("{op}_AX_imm16")),
                    32 => (Register::EAX, format!("{op}_EAX_imm32")),
                    _ => (Register::RAX, format!("{op}_RAX_imm32")),
                };
                Instruction::with2(code(&name), acc, self.imm(ib))?
            }
            _ => Instruction::with2(code(&format!("{op}_r{b}_rm{b}")), self.reg(b), self.reg(b))?,
        };
        Ok(vec![ins])
    }

    fn test(&mut self) -> Gen {
        let b = self.int_bits();
        let ib = b.min(32);
        let ins = match self.rng.below(3) {
            0 => {
                let rm = self.rm(b);
                with_rm2!(code(&format!("Test_rm{b}_r{b}")), rm, self.reg(b))?
            }
            1 => {
                let rm = self.rm(b);
                with_rm2!(code(&format!("Test_rm{b}_imm{ib}")), rm, self.imm(ib))?
            }
            _ => {
                let (acc, name) = match b {
                    8 => (Register::AL, "Test_AL_imm8"),
                    16 => (Register::AX, "Test_AX_imm16"),
                    32 => (Register::EAX, "Test_EAX_imm32"),
                    _ => (Register::RAX, "Test_RAX_imm32"),
                };
                Instruction::with2(code(name), acc, self.imm(ib))?
            }
        };
        Ok(vec![ins])
    }

    fn unary(&mut self) -> Gen {
        let op = self.rng.pick(&["Inc", "Dec", "Neg", "Not"]);
        let b = self.int_bits();
        let rm = self.rm(b);
        Ok(vec![with_rm1!(code(&format!("{op}_rm{b}")), rm)?])
    }

    fn shift(&mut self) -> Gen {
        let op = self.rng.pick(&SHIFT_OPS);
        let b = self.int_bits();
        let rm = self.rm(b);
        let ins = match self.rng.below(3) {
            0 => with_rm2!(code(&format!("{op}_rm{b}_imm8")), rm, self.shift_count(b))?,
            1 => with_rm2!(code(&format!("{op}_rm{b}_1")), rm, 1u32)?,
            _ => with_rm2!(code(&format!("{op}_rm{b}_CL")), rm, Register::CL)?,
        };
        Ok(vec![ins])
    }

    fn multiply(&mut self) -> Gen {
        let ins = match self.rng.below(3) {
            0 => {
                let b = self.wide_bits();
                let rm = self.rm(b);
                with_r_rm!(code(&format!("Imul_r{b}_rm{b}")), self.reg(b), rm)?
            }
            1 => {
                let b = self.wide_bits();
                let rm = self.rm(b);
                if self.rng.chance(50) {
                    with_r_rm_c!(
                        code(&format!("Imul_r{b}_rm{b}_imm8")),
                        self.reg(b),
                        rm,
                        self.imm(8)
                    )?
                } else {
                    let ib = b.min(32);
                    with_r_rm_c!(
                        code(&format!("Imul_r{b}_rm{b}_imm{ib}")),
                        self.reg(b),
                        rm,
                        self.imm(ib)
                    )?
                }
            }
            _ => {
                let op = self.rng.pick(&["Mul", "Imul"]);
                let b = self.int_bits();
                let rm = self.rm(b);
                with_rm1!(code(&format!("{op}_rm{b}")), rm)?
            }
        };
        Ok(vec![ins])
    }

    fn bit_scan(&mut self) -> Gen {
        let op = self.rng.pick(&["Bsf", "Bsr", "Popcnt", "Lzcnt", "Tzcnt"]);
        let b = self.wide_bits();
        let rm = self.rm(b);
        Ok(vec![with_r_rm!(
            code(&format!("{op}_r{b}_rm{b}")),
            self.reg(b),
            rm
        )?])
    }

    /// bt/bts/btr/btc; a register bit offset only with a register destination (with memory it
    /// would address bits far outside the buffer).
    fn bit_test(&mut self) -> Gen {
        let op = self.rng.pick(&["Bt", "Bts", "Btr", "Btc"]);
        let b = self.wide_bits();
        let ins = if self.rng.chance(50) {
            Instruction::with2(code(&format!("{op}_rm{b}_r{b}")), self.reg(b), self.reg(b))?
        } else {
            let rm = self.rm(b);
            with_rm2!(
                code(&format!("{op}_rm{b}_imm8")),
                rm,
                self.rng.below(256) as u32
            )?
        };
        Ok(vec![ins])
    }

    fn cmov(&mut self) -> Gen {
        let cc = self.cond();
        let b = self.wide_bits();
        let rm = self.rm(b);
        Ok(vec![with_r_rm!(
            code(&format!("Cmov{cc}_r{b}_rm{b}")),
            self.reg(b),
            rm
        )?])
    }

    fn setcc(&mut self) -> Gen {
        let cc = self.cond();
        let rm = self.rm(8);
        Ok(vec![with_rm1!(code(&format!("Set{cc}_rm8")), rm)?])
    }

    /// lea with base + index * scale + disp (64- or 32-bit addressing), or rip-relative.
    fn lea(&mut self) -> Gen {
        let b = self.wide_bits();
        let dst = self.reg(b);
        let disp = match self.rng.below(3) {
            0 => 0,
            1 => self.imm(8) as i64,
            _ => self.imm(32) as i64,
        };
        let scale = self.rng.pick(&[1, 2, 4, 8]);
        let m = match self.rng.below(8) {
            0 => MemoryOperand::with_base_displ(
                Register::RIP,
                (self.code_base + self.rng.below(CODE_LEN as u64)) as i64,
            ),
            1 => {
                // 32-bit address size (0x67 prefix): base and index are 32-bit registers.
                let base = self.reg(32);
                let index = self.reg(32);
                MemoryOperand::with_base_index_scale_displ_size(
                    base,
                    index,
                    scale,
                    disp as i32 as i64,
                    1,
                )
            }
            2 => MemoryOperand::with_index_scale_displ_size(
                self.reg(64),
                scale,
                disp as i32 as i64,
                4,
            ),
            3 => MemoryOperand::with_base_displ(self.reg(64), disp),
            _ => {
                let base = self.reg(64);
                let index = self.reg(64);
                MemoryOperand::with_base_index_scale_displ_size(base, index, scale, disp, 1)
            }
        };
        Ok(vec![Instruction::with2(
            code(&format!("Lea_r{b}_m")),
            dst,
            m,
        )?])
    }

    fn xchg(&mut self) -> Gen {
        let b = self.int_bits();
        let rm = self.rm(b);
        Ok(vec![with_rm2!(
            code(&format!("Xchg_rm{b}_r{b}")),
            rm,
            self.reg(b)
        )?])
    }

    fn bswap(&mut self) -> Gen {
        let b = self.rng.pick(&[32, 64]);
        Ok(vec![Instruction::with1(
            code(&format!("Bswap_r{b}")),
            self.reg(b),
        )?])
    }

    fn extend(&mut self) -> Gen {
        let op = self.rng.pick(&["Movzx", "Movsx"]);
        let ins = match self.rng.below(3) {
            0 => {
                let b = self.wide_bits();
                let rm = self.rm(8);
                with_r_rm!(code(&format!("{op}_r{b}_rm8")), self.reg(b), rm)?
            }
            1 if self.mode != Mode::Partial => {
                let b = self.rng.pick(&[32, 64]);
                let rm = self.rm(16);
                with_r_rm!(code(&format!("{op}_r{b}_rm16")), self.reg(b), rm)?
            }
            1 => {
                let b = self.rng.pick(&[32, 64]);
                let rm = self.rm(8);
                with_r_rm!(code(&format!("{op}_r{b}_rm8")), self.reg(b), rm)?
            }
            _ if self.mode != Mode::Partial => {
                let rm = self.rm(32);
                with_r_rm!(code("Movsxd_r64_rm32"), self.reg(64), rm)?
            }
            _ => {
                let rm = self.rm(16);
                with_r_rm!(code(&format!("{op}_r32_rm16")), self.reg(32), rm)?
            }
        };
        Ok(vec![ins])
    }

    fn convert(&mut self) -> Gen {
        let names: &[&str] = if self.mode == Mode::Partial {
            &["Cbw", "Cwd"]
        } else {
            &["Cbw", "Cwde", "Cdqe", "Cwd", "Cdq", "Cqo"]
        };
        Ok(vec![Instruction::with(code(self.rng.pick(names)))])
    }

    fn flag_op(&mut self) -> Gen {
        let names: &[&str] = if self.mode == Mode::Partial {
            &["Lahf", "Sahf"]
        } else {
            &["Lahf", "Sahf", "Clc", "Stc", "Cmc"]
        };
        Ok(vec![Instruction::with(code(self.rng.pick(names)))])
    }

    fn mov(&mut self) -> Gen {
        let b = self.int_bits();
        let ins = match self.rng.below(4) {
            0 if b == 64 => {
                Instruction::with2(code("Mov_r64_imm64"), self.reg(64), self.rng.interesting())?
            }
            0 => Instruction::with2(code(&format!("Mov_r{b}_imm{b}")), self.reg(b), self.imm(b))?,
            1 => {
                let rm = self.rm(b);
                with_r_rm!(code(&format!("Mov_r{b}_rm{b}")), self.reg(b), rm)?
            }
            2 => Instruction::with2(
                code(&format!("Mov_rm{b}_r{b}")),
                self.mem(b as usize / 8, 1),
                self.reg(b),
            )?,
            _ => {
                // A load from the code buffer itself, rip-relative: the same bytes in both runs.
                let target = self.code_base + self.rng.below((CODE_LEN - 8) as u64);
                let m = MemoryOperand::with_base_displ(Register::RIP, target as i64);
                let b = self.wide_bits();
                Instruction::with2(code(&format!("Mov_r{b}_rm{b}")), self.reg(b), m)?
            }
        };
        Ok(vec![ins])
    }

    /// Balanced stack pairs; values pushed are never rdi or rsp.
    fn stack_pair(&mut self) -> Gen {
        let choice = self
            .rng
            .below(if self.mode == Mode::Partial { 4 } else { 7 });
        Ok(match choice {
            0 => vec![
                Instruction::with(Code::Pushfq),
                Instruction::with(Code::Popfq),
            ],
            1 => vec![
                Instruction::with(Code::Pushfq),
                Instruction::with1(Code::Pop_r64, self.reg(64))?,
            ],
            2 => vec![
                Instruction::with1(Code::Push_r16, self.reg(16))?,
                Instruction::with1(Code::Pop_r16, self.reg(16))?,
            ],
            3 => vec![
                Instruction::with1(Code::Push_r64, self.reg(64))?,
                Instruction::with1(Code::Pop_r64, self.reg(64))?,
            ],
            4 => vec![
                Instruction::with1(Code::Push_rm64, self.mem(8, 1))?,
                Instruction::with1(Code::Pop_rm64, self.mem(8, 1))?,
            ],
            5 => vec![
                Instruction::with1(Code::Pushq_imm32, self.imm(32))?,
                Instruction::with1(Code::Pop_r64, self.reg(64))?,
            ],
            _ => {
                // All status flags from data: scratch = src & STATUS_FLAGS; push; popfq.
                let scratch = self.reg(64);
                vec![
                    Instruction::with2(Code::Mov_r64_rm64, scratch, self.reg(64))?,
                    Instruction::with2(Code::And_rm64_imm32, scratch, STATUS_FLAGS as i32)?,
                    Instruction::with1(Code::Push_r64, scratch)?,
                    Instruction::with(Code::Popfq),
                ]
            }
        })
    }

    fn sse(&mut self) -> Gen {
        const PACKED: [&str; 11] = [
            "Paddd_xmm_xmmm128",
            "Psubq_xmm_xmmm128",
            "Pxor_xmm_xmmm128",
            "Pand_xmm_xmmm128",
            "Por_xmm_xmmm128",
            "Punpcklbw_xmm_xmmm128",
            "Addps_xmm_xmmm128",
            "Mulpd_xmm_xmmm128",
            "Minps_xmm_xmmm128",
            "Maxpd_xmm_xmmm128",
            "Sqrtpd_xmm_xmmm128",
        ];
        let ins = match self.rng.below(9) {
            0..=2 => {
                // Legacy SSE memory operands of 16 bytes must be 16-byte aligned.
                let src = if self.rng.chance(20) {
                    Rm::Mem(self.mem(16, 16))
                } else {
                    Rm::Reg(self.xmm())
                };
                with_r_rm!(code(self.rng.pick(&PACKED)), self.xmm(), src)?
            }
            3 => {
                let src = if self.rng.chance(20) {
                    Rm::Mem(self.mem(8, 1))
                } else {
                    Rm::Reg(self.xmm())
                };
                with_r_rm!(code("Subsd_xmm_xmmm64"), self.xmm(), src)?
            }
            4 => {
                let src = if self.rng.chance(20) {
                    Rm::Mem(self.mem(16, 16))
                } else {
                    Rm::Reg(self.xmm())
                };
                with_r_rm_c!(
                    code("Pshufd_xmm_xmmm128_imm8"),
                    self.xmm(),
                    src,
                    self.rng.below(256) as u32
                )?
            }
            5 => {
                let b = self.rng.pick(&[32, 64]);
                let rm = self.rm(b);
                with_r_rm!(code(&format!("Cvtsi2sd_xmm_rm{b}")), self.xmm(), rm)?
            }
            6 => {
                let b = self.rng.pick(&[32, 64]);
                let src = if self.rng.chance(20) {
                    Rm::Mem(self.mem(8, 1))
                } else {
                    Rm::Reg(self.xmm())
                };
                with_r_rm!(code(&format!("Cvttsd2si_r{b}_xmmm64")), self.reg(b), src)?
            }
            7 => Instruction::with2(Code::Movaps_xmm_xmmm128, self.xmm(), self.xmm())?,
            _ => {
                if self.rng.chance(50) {
                    Instruction::with2(Code::Movdqu_xmm_xmmm128, self.xmm(), self.mem(16, 1))?
                } else {
                    Instruction::with2(Code::Movdqu_xmmm128_xmm, self.mem(16, 1), self.xmm())?
                }
            }
        };
        Ok(vec![ins])
    }

    fn avx2(&mut self) -> Gen {
        let ops = [
            "VEX_Vpaddd_ymm_ymm_ymmm256",
            "VEX_Vpxor_ymm_ymm_ymmm256",
            "VEX_Vpshufb_ymm_ymm_ymmm256",
        ];
        let ins = match self.rng.below(5) {
            0..=2 => {
                let src = if self.rng.chance(20) {
                    Rm::Mem(self.mem(32, 1))
                } else {
                    Rm::Reg(self.ymm())
                };
                let (a, b) = (self.ymm(), self.ymm());
                match src {
                    Rm::Reg(r) => Instruction::with3(code(self.rng.pick(&ops)), a, b, r)?,
                    Rm::Mem(m) => Instruction::with3(code(self.rng.pick(&ops)), a, b, m)?,
                }
            }
            3 => Instruction::with2(Code::VEX_Vmovdqu_ymm_ymmm256, self.ymm(), self.mem(32, 1))?,
            _ => Instruction::with2(Code::VEX_Vmovdqu_ymmm256_ymm, self.mem(32, 1), self.ymm())?,
        };
        Ok(vec![ins])
    }

    /// One group of instructions from the mix of this mode.
    fn group(&mut self) -> Vec<Instruction> {
        for _ in 0..10_000 {
            let pick = self.rng.below(100);
            let group = match (self.mode, pick) {
                (_, 0..=17) => self.alu(),
                (_, 18..=22) => self.test(),
                (_, 23..=28) => self.unary(),
                (_, 29..=37) => self.shift(),
                (_, 38..=42) => self.multiply(),
                (_, 43..=46) => self.bit_scan(),
                (_, 47..=50) => self.bit_test(),
                (_, 51..=55) => self.cmov(),
                (_, 56..=59) => self.setcc(),
                (Mode::Partial, 60..=63) => self.mov(),
                (_, 60..=63) => self.lea(),
                (_, 64..=66) => self.xchg(),
                (Mode::Partial, 67..=68) => self.mov(),
                (_, 67..=68) => self.bswap(),
                (_, 69..=71) => self.extend(),
                (_, 72..=73) => self.convert(),
                (Mode::Partial, 74..=79) => self.flag_op(),
                (_, 74..=76) => self.flag_op(),
                (_, 77..=79) => self.mov(),
                (_, 80..=84) => self.stack_pair(),
                (Mode::Partial, _) => self.mov(),
                (Mode::Avx2, 85..=91) => self.avx2(),
                _ => self.sse(),
            };
            // Invalid combinations (ah with a REX prefix, ...) are drawn again.
            if let Ok(group) = group {
                let valid = group
                    .iter()
                    .all(|i| self.encoder.encode(i, self.code_base).is_ok());
                let _ = self.encoder.take_buffer();
                if valid {
                    return group;
                }
            }
        }
        panic!(
            "the {:?} generator produced no encodable group in 10000 draws",
            self.mode
        )
    }

    fn jump_code(&mut self, allow_jmp: bool) -> Code {
        let rel32 = self.rng.chance(25);
        if allow_jmp && self.rng.chance(30) {
            return if rel32 {
                Code::Jmp_rel32_64
            } else {
                Code::Jmp_rel8_64
            };
        }
        let cc = self.cond();
        code(&format!(
            "J{cc}_{}",
            if rel32 { "rel32_64" } else { "rel8_64" }
        ))
    }

    /// A sequence of `10..=80` instructions (the final `ret` not counted).
    fn sequence(&mut self) -> Vec<Item> {
        let target = self.rng.range(10, 80) as usize;
        let mut items = Vec::new();
        let mut count = 0;
        while count < target {
            let roll = self.rng.below(100);
            if roll < 12 {
                items.push(Item::JumpNext(self.jump_code(true)));
                count += 1;
            } else if roll < 17 {
                let code = self.jump_code(false);
                let skipped = loop {
                    let g = self.group();
                    if g.len() == 1 {
                        break g[0];
                    }
                };
                items.push(Item::JccSkip(code, skipped));
                count += 2;
            } else if roll < 19 && self.mode != Mode::Partial {
                // DF set across a block exit, read back with pushfq, cleared again.
                let jump = self.jump_code(true);
                let dst = self.reg(64);
                items.push(Item::Plain(vec![Instruction::with(Code::Std)]));
                items.push(Item::JumpNext(jump));
                items.push(Item::Plain(vec![
                    Instruction::with(Code::Pushfq),
                    Instruction::with1(Code::Pop_r64, dst).expect("pop r64"),
                ]));
                items.push(Item::Plain(vec![Instruction::with(Code::Cld)]));
                count += 5;
            } else {
                let g = self.group();
                count += g.len();
                items.push(Item::Plain(g));
            }
        }
        items
    }
}

/// Encodes `items` at `base`, then `ret`.
fn encode(items: &[Item], base: u64) -> Result<Vec<u8>, IcedError> {
    fn emit(
        enc: &mut Encoder,
        ins: &Instruction,
        base: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), IcedError> {
        enc.encode(ins, base + out.len() as u64)?;
        out.extend_from_slice(&enc.take_buffer());
        Ok(())
    }
    let mut enc = Encoder::new(64);
    let mut out = Vec::new();
    // Length of a branch of this code (independent of the target for a fixed code).
    let branch_len = |code: Code| -> Result<usize, IcedError> {
        let mut e = Encoder::new(64);
        e.encode(&Instruction::with_branch(code, base)?, base)
    };
    for item in items {
        match item {
            Item::Plain(group) => {
                for ins in group {
                    emit(&mut enc, ins, base, &mut out)?;
                }
            }
            Item::JumpNext(code) => {
                let ip = base + out.len() as u64;
                let len = branch_len(*code)? as u64;
                emit(
                    &mut enc,
                    &Instruction::with_branch(*code, ip + len)?,
                    base,
                    &mut out,
                )?;
            }
            Item::JccSkip(code, skipped) => {
                let ip = base + out.len() as u64;
                let len = branch_len(*code)? as u64;
                let mut e = Encoder::new(64);
                let skipped_len = e.encode(skipped, ip + len)? as u64;
                emit(
                    &mut enc,
                    &Instruction::with_branch(*code, ip + len + skipped_len)?,
                    base,
                    &mut out,
                )?;
                emit(&mut enc, skipped, base, &mut out)?;
            }
        }
    }
    emit(&mut enc, &Instruction::with(Code::Retnq), base, &mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Initial states and the two runs.
// ---------------------------------------------------------------------------------------

#[repr(C, align(64))]
struct DataBuf([u8; BUF_LEN]);

impl StackBuf {
    /// The stack pointer the code is called with (16-byte aligned).
    fn test_rsp(&self) -> u64 {
        (self.0.as_ptr() as u64 + (STACK_LEN - STACK_TOP_RESERVE) as u64) & !15
    }

    /// The bytes `[test_rsp - STACK_INIT, test_rsp)`.
    fn below_rsp(&mut self) -> &mut [u8] {
        let end = (self.test_rsp() - self.0.as_ptr() as u64) as usize;
        &mut self.0[end - STACK_INIT..end]
    }
}

/// Everything a sequence starts from, independent of where the buffers are.
struct Case {
    /// rdi and rsp are filled in per run.
    state: RandState,
    data: [u8; BUF_LEN],
    stack: [u8; STACK_INIT],
}

fn random_case(rng: &mut Rng) -> Case {
    let mut state = RandState::zeroed();
    for g in &mut state.gpr {
        *g = rng.interesting();
    }
    state.rflags = 0x202 | (rng.next_u64() & STATUS_FLAGS);
    let mut mxcsr = 0x1f80 | (rng.next_u64() as u32 & 0x3f);
    if rng.chance(25) {
        mxcsr |= (rng.below(4) as u32) << 13;
    }
    if rng.chance(10) {
        mxcsr |= 0x8040;
    }
    state.mxcsr = mxcsr;
    for v in &mut state.vec {
        for lane in v.chunks_exact_mut(8) {
            lane.copy_from_slice(&rng.vector_lane().to_le_bytes());
        }
    }
    let mut data = [0u8; BUF_LEN];
    for chunk in data.chunks_exact_mut(8) {
        let v = if rng.chance(50) {
            rng.interesting()
        } else {
            rng.vector_lane()
        };
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    let mut stack = [0u8; STACK_INIT];
    for chunk in stack.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    Case { state, data, stack }
}

/// The final state of one run, with rdi and rsp made relative to their buffers.
struct Outcome {
    state: RandState,
    data: [u8; BUF_LEN],
    /// `[test_rsp - 8 - 128, test_rsp - 8)`: the red zone of the called code.
    red_zone: [u8; 128],
}

/// An RWX page for the generated code.
struct CodePage(*mut u8);

impl CodePage {
    fn new() -> CodePage {
        // SAFETY: anonymous private mapping, no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CODE_LEN,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap of an RWX code page: {}",
            std::io::Error::last_os_error()
        );
        CodePage(p.cast())
    }

    fn addr(&self) -> u64 {
        self.0 as u64
    }

    fn write(&mut self, bytes: &[u8]) {
        assert!(
            bytes.len() <= CODE_LEN,
            "a sequence of {} bytes does not fit the code page",
            bytes.len()
        );
        // SAFETY: the page is CODE_LEN bytes, mapped writable, and owned by self; nothing
        // executes it while we write (single thread).
        let page = unsafe { std::slice::from_raw_parts_mut(self.0, CODE_LEN) };
        page.fill(0xcc);
        page[..bytes.len()].copy_from_slice(bytes);
    }
}

impl Drop for CodePage {
    fn drop(&mut self) {
        // SAFETY: mapped by CodePage::new with this length, unmapped once.
        unsafe { libc::munmap(self.0.cast(), CODE_LEN) };
    }
}

struct Runner {
    mode: Mode,
    vm: Vm,
    code: CodePage,
    native_data: Box<DataBuf>,
    vm_data: Box<DataBuf>,
    native_stack: Box<StackBuf>,
    vm_stack: Box<StackBuf>,
}

impl Runner {
    fn new(mode: Mode) -> Runner {
        Runner::with_setup(mode, |_| {})
    }

    /// A runner whose Vm is configured by `setup` (callbacks) after its range is added.
    fn with_setup(mode: Mode, setup: impl FnOnce(&mut Vm)) -> Runner {
        let code = CodePage::new();
        let mut vm = Vm::new();
        vm.add_instrumented_range(code.addr(), code.addr() + CODE_LEN as u64)
            .expect("instrument the code page");
        setup(&mut vm);
        Runner {
            mode,
            vm,
            code,
            native_data: Box::new(DataBuf([0; BUF_LEN])),
            vm_data: Box::new(DataBuf([0; BUF_LEN])),
            native_stack: Box::new(StackBuf([0; STACK_LEN])),
            vm_stack: Box::new(StackBuf([0; STACK_LEN])),
        }
    }

    fn load_code(&mut self, bytes: &[u8]) {
        self.code.write(bytes);
        self.vm
            .clear_cache(self.code.addr(), self.code.addr() + CODE_LEN as u64);
    }

    fn red_zone(stack: &StackBuf) -> [u8; 128] {
        let end = (stack.test_rsp() - 8 - stack.0.as_ptr() as u64) as usize;
        stack.0[end - 128..end].try_into().expect("128 bytes")
    }

    fn run_native(&mut self, case: &Case) -> Outcome {
        self.native_data.0 = case.data;
        self.native_stack.below_rsp().copy_from_slice(&case.stack);
        let mut input = case.state;
        let data = self.native_data.0.as_ptr() as u64;
        let rsp = self.native_stack.test_rsp();
        input.gpr[RDI] = data;
        input.gpr[RSP] = rsp;
        let mut output = RandState::zeroed();
        set_phase(self.mode, Phase::Native);
        // SAFETY: the harness saves and restores the host's callee-saved registers, stack
        // pointer and MXCSR; the code page holds a sequence that only accesses the data buffer
        // through rdi, the code page rip-relatively, and the test stack through balanced
        // pushes, then returns. AVX is only used when the CPU has AVX2.
        unsafe {
            if self.mode == Mode::Avx2 {
                rand_run_native_avx(&input, &mut output, self.code.0);
            } else {
                rand_run_native(&input, &mut output, self.code.0);
            }
        }
        output.gpr[RDI] = output.gpr[RDI].wrapping_sub(data);
        output.gpr[RSP] = output.gpr[RSP].wrapping_sub(rsp);
        Outcome {
            state: output,
            data: self.native_data.0,
            red_zone: Self::red_zone(&self.native_stack),
        }
    }

    fn run_vm(&mut self, case: &Case) -> Result<Outcome, String> {
        self.vm_data.0 = case.data;
        self.vm_stack.below_rsp().copy_from_slice(&case.stack);
        let data = self.vm_data.0.as_ptr() as u64;
        let rsp = self.vm_stack.test_rsp();
        let mut gpr = case.state.gpr;
        gpr[RDI] = data;
        gpr[RSP] = rsp;
        {
            let g = self.vm.gpr_state_mut();
            gprs_to_vm(&gpr, g);
            g.eflags = case.state.rflags;
            simulate_call(g, FAKE_RETURN_ADDRESS, &[]);
        }
        {
            let f = self.vm.fpr_state_mut();
            f.mxcsr = case.state.mxcsr;
            for (i, v) in case.state.vec.iter().enumerate() {
                f.xmm_mut(i).copy_from_slice(&v[..16]);
                f.ymm_hi_mut(i).copy_from_slice(&v[16..]);
            }
        }
        set_phase(self.mode, Phase::Vm);
        let result = self.vm.run(self.code.addr(), FAKE_RETURN_ADDRESS);
        set_phase(self.mode, Phase::Idle);
        result.map_err(|e| format!("vm.run failed: {e} ({e:?})"))?;
        let g = self.vm.gpr_state();
        let f = self.vm.fpr_state();
        let mut state = RandState::zeroed();
        state.gpr = gprs_from_vm(g);
        state.gpr[RDI] = state.gpr[RDI].wrapping_sub(data);
        state.gpr[RSP] = state.gpr[RSP].wrapping_sub(rsp);
        state.rflags = g.eflags;
        state.mxcsr = f.mxcsr;
        for (i, v) in state.vec.iter_mut().enumerate() {
            v[..16].copy_from_slice(f.xmm(i));
            v[16..].copy_from_slice(f.ymm_hi(i));
        }
        Ok(Outcome {
            state,
            data: self.vm_data.0,
            red_zone: Self::red_zone(&self.vm_stack),
        })
    }

    /// Runs `bytes` (already loaded) both ways; the differences, empty when equal.
    fn differences(&mut self, case: &Case) -> Vec<String> {
        let native = self.run_native(case);
        let vm = match self.run_vm(case) {
            Ok(vm) => vm,
            Err(e) => return vec![e],
        };
        compare(self.mode, &native, &vm)
    }

    /// Loads and runs one item list; the differences.
    fn check(&mut self, items: &[Item], case: &Case) -> Vec<String> {
        let bytes = encode(items, self.code.addr()).expect("generated sequences encode");
        self.load_code(&bytes);
        self.differences(case)
    }
}

fn compare(mode: Mode, native: &Outcome, vm: &Outcome) -> Vec<String> {
    let mut diffs = Vec::new();
    for (i, name) in GPR_NAMES_HW.iter().enumerate() {
        let (n, v) = (native.state.gpr[i], vm.state.gpr[i]);
        if n != v {
            let what = match i {
                RDI => " (relative to the data buffer)",
                RSP => " (relative to the initial rsp)",
                _ => "",
            };
            diffs.push(format!("{name}{what}: native {n:#018x}, vm {v:#018x}"));
        }
    }
    let (n, v) = (
        native.state.rflags & FLAGS_MASK,
        vm.state.rflags & FLAGS_MASK,
    );
    if n != v {
        diffs.push(format!(
            "rflags & {FLAGS_MASK:#x}: native {n:#x}, vm {v:#x} (full: native {:#x}, vm {:#x})",
            native.state.rflags, vm.state.rflags
        ));
    }
    if native.state.mxcsr != vm.state.mxcsr {
        diffs.push(format!(
            "mxcsr: native {:#x}, vm {:#x}",
            native.state.mxcsr, vm.state.mxcsr
        ));
    }
    let vec_len = if mode == Mode::Avx2 { 32 } else { 16 };
    let reg = if mode == Mode::Avx2 { "ymm" } else { "xmm" };
    for i in 0..16 {
        let (n, v) = (&native.state.vec[i][..vec_len], &vm.state.vec[i][..vec_len]);
        if n != v {
            diffs.push(format!("{reg}{i}: native {}, vm {}", hex_le(n), hex_le(v)));
        }
    }
    for (off, (n, v)) in native.data.chunks(8).zip(vm.data.chunks(8)).enumerate() {
        if n != v {
            diffs.push(format!(
                "data[{:#x}..+8]: native {}, vm {}",
                off * 8,
                hex_le(n),
                hex_le(v)
            ));
        }
    }
    for (off, (n, v)) in native
        .red_zone
        .chunks(8)
        .zip(vm.red_zone.chunks(8))
        .enumerate()
    {
        if n != v {
            diffs.push(format!(
                "stack at rsp{:+} (red zone): native {}, vm {}",
                off as i64 * 8 - 136,
                hex_le(n),
                hex_le(v)
            ));
        }
    }
    diffs
}

// ---------------------------------------------------------------------------------------
// Crash reporting: a fatal signal while a campaign runs names the seed and the sequence.
// ---------------------------------------------------------------------------------------

const MODES: usize = 3;
static CAMPAIGN_SEED: [AtomicU64; MODES] = [const { AtomicU64::new(0) }; MODES];
static CAMPAIGN_INDEX: [AtomicU64; MODES] = [const { AtomicU64::new(u64::MAX) }; MODES];
static CAMPAIGN_PHASE: [AtomicU64; MODES] = [const { AtomicU64::new(0) }; MODES];

fn set_phase(mode: Mode, phase: Phase) {
    CAMPAIGN_PHASE[mode as usize].store(phase as u64, Ordering::SeqCst);
}

extern "C" fn on_fatal_signal(sig: libc::c_int) {
    let mut buf = [0u8; 18];
    let mut dec = [0u8; 20];
    for mode in 0..MODES {
        let index = CAMPAIGN_INDEX[mode].load(Ordering::SeqCst);
        if index == u64::MAX {
            continue;
        }
        write_stderr(b"\nrandom_sequences: fatal signal ");
        write_stderr(dec_into(&mut dec, sig as u64));
        write_stderr(match mode {
            0 => b" in campaign Full".as_slice(),
            1 => b" in campaign Partial",
            _ => b" in campaign Avx2",
        });
        write_stderr(b", QBDI_TEST_SEED=");
        write_stderr(hex_into(
            &mut buf,
            CAMPAIGN_SEED[mode].load(Ordering::SeqCst),
        ));
        write_stderr(b", sequence index ");
        write_stderr(dec_into(&mut dec, index));
        write_stderr(match CAMPAIGN_PHASE[mode].load(Ordering::SeqCst) {
            1 => b" (native run)\n".as_slice(),
            2 => b" (vm run)\n",
            _ => b" (between runs)\n",
        });
    }
    // Give the signal back to whoever had it (Rust's stack-overflow handler or the default
    // action); returning re-executes the faulting instruction.
    let old = OLD_ACTIONS[sig as usize].load(Ordering::SeqCst) as *const libc::sigaction;
    // SAFETY: `old` is a leaked sigaction saved at installation (or null); sigaction is
    // async-signal-safe.
    unsafe {
        if old.is_null() {
            libc::signal(sig, libc::SIG_DFL);
        } else {
            libc::sigaction(sig, old, std::ptr::null_mut());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Campaigns.
// ---------------------------------------------------------------------------------------

fn sequence_seed(base: u64, mode: Mode, index: u64) -> u64 {
    splitmix64(base ^ splitmix64(index.wrapping_mul(3).wrapping_add(mode as u64)))
}

fn describe_case(case: &Case) -> String {
    let mut s = String::new();
    for (i, name) in GPR_NAMES_HW.iter().enumerate() {
        if i != RDI && i != RSP {
            let _ = write!(s, "{name}={:#x} ", case.state.gpr[i]);
        }
    }
    let _ = write!(
        s,
        "\n  rflags={:#x} mxcsr={:#x}",
        case.state.rflags, case.state.mxcsr
    );
    s
}

/// Removes items one at a time while the sequence still fails.
fn reduce(runner: &mut Runner, items: &[Item], case: &Case) -> Vec<Item> {
    let mut items = items.to_vec();
    let mut i = items.len();
    while i > 0 {
        i -= 1;
        let mut candidate = items.clone();
        candidate.remove(i);
        if !runner.check(&candidate, case).is_empty() {
            items = candidate;
        }
    }
    items
}

fn run_campaign(mode: Mode, count: u64) {
    run_campaign_with(mode, count, Runner::new(mode));
}

fn run_campaign_with(mode: Mode, count: u64, mut runner: Runner) {
    install_crash_reporter(on_fatal_signal);
    let seed = base_seed(DEFAULT_SEED);
    CAMPAIGN_SEED[mode as usize].store(seed, Ordering::SeqCst);
    for index in 0..count {
        CAMPAIGN_INDEX[mode as usize].store(index, Ordering::SeqCst);
        let mut rng = Rng::new(sequence_seed(seed, mode, index));
        let case = random_case(&mut rng);
        let items = Generator {
            rng: &mut rng,
            mode,
            code_base: runner.code.addr(),
            encoder: Encoder::new(64),
        }
        .sequence();
        let bytes = encode(&items, runner.code.addr()).expect("generated sequences encode");
        runner.load_code(&bytes);
        let diffs = runner.differences(&case);
        if diffs.is_empty() {
            continue;
        }
        let mut report = format!(
            "random sequence {index} of campaign {mode:?} differs (QBDI_TEST_SEED={seed:#x}; \
             set it to replay)\ninitial state (rdi = data buffer, rsp = test stack):\n  {}\n\
             code at {:#x}:\n{}differences:\n",
            describe_case(&case),
            runner.code.addr(),
            disassemble(&bytes, runner.code.addr())
        );
        for d in &diffs {
            let _ = writeln!(report, "  {d}");
        }
        let reduced = reduce(&mut runner, &items, &case);
        let reduced_bytes = encode(&reduced, runner.code.addr()).expect("reduced sequences encode");
        runner.load_code(&reduced_bytes);
        let reduced_diffs = runner.differences(&case);
        let _ = write!(
            report,
            "reduced sequence (same initial state):\n{}",
            disassemble(&reduced_bytes, runner.code.addr())
        );
        if reduced_diffs.is_empty() {
            let _ = writeln!(
                report,
                "the reduced sequence no longer differs when run again: the failure depends on \
                 what the Vm ran before (state left from earlier runs, stale cache)"
            );
        } else {
            let _ = writeln!(report, "differences of the reduced sequence:");
            for d in &reduced_diffs {
                let _ = writeln!(report, "  {d}");
            }
        }
        CAMPAIGN_INDEX[mode as usize].store(u64::MAX, Ordering::SeqCst);
        panic!("{report}");
    }
    CAMPAIGN_INDEX[mode as usize].store(u64::MAX, Ordering::SeqCst);
}

#[test]
fn random_sequences_match_native_execution() {
    run_campaign(Mode::Full, 8000);
}

/// Callbacks on every instruction (before and after), block entry and exit events, and
/// memory recording: none of them may change what the guest computes (registers, flags,
/// vector registers, memory).
fn every_hook(vm: &mut Vm) {
    let noop = |_vm: &mut VmRef<'_>, _g: &mut GprState, _f: &mut FprState| VmAction::Continue;
    vm.add_code_cb(InstPosition::PreInst, noop, PRIORITY_DEFAULT)
        .expect("pre callback");
    vm.add_code_cb(InstPosition::PostInst, noop, PRIORITY_DEFAULT)
        .expect("post callback");
    vm.add_vm_event_cb(
        VmEvent::BASIC_BLOCK_ENTRY | VmEvent::BASIC_BLOCK_EXIT,
        |_v, _s, _g, _f| VmAction::Continue,
    )
    .expect("block callback");
    vm.add_mem_access_cb(
        MemoryAccessType::READ_WRITE,
        |vm, _g, _f| {
            std::hint::black_box(vm.inst_memory_access().len());
            VmAction::Continue
        },
        PRIORITY_DEFAULT,
    )
    .expect("memory callback");
}

#[test]
fn random_sequences_match_native_execution_with_callbacks_everywhere() {
    run_campaign_with(Mode::Full, 3000, Runner::with_setup(Mode::Full, every_hook));
}

#[test]
fn random_partial_register_flag_sequences_match_native_execution() {
    run_campaign(Mode::Partial, 4000);
}

#[test]
fn random_avx2_sequences_match_native_execution_including_upper_halves() {
    if !is_x86_feature_detected!("avx2") {
        eprintln!("AVX2 not available: the AVX2 random sequences are skipped");
        return;
    }
    run_campaign(Mode::Avx2, 4000);
}

/// The first run of a fresh Vm starts from exactly the registers the user set (GPRs, flags,
/// MXCSR, xmm0-15 and, with AVX2, the ymm upper halves): the sequence is only `ret`.
#[test]
fn random_state_set_before_a_fresh_vm_first_run_reaches_the_guest() {
    let modes: &[Mode] = if is_x86_feature_detected!("avx2") {
        &[Mode::Full, Mode::Avx2]
    } else {
        &[Mode::Full]
    };
    for &mode in modes {
        let mut runner = Runner::new(mode);
        let case = random_case(&mut Rng::new(DEFAULT_SEED));
        let diffs = runner.check(&[], &case);
        assert!(
            diffs.is_empty(),
            "{mode:?}: `ret` alone on a fresh Vm changed the state:\n{}",
            diffs.join("\n")
        );
    }
}

#[test]
#[ignore = "long campaign (100k + 30k + 30k sequences): run with --ignored"]
fn random_sequences_long_campaign_matches_native_execution() {
    run_campaign(Mode::Full, 100_000);
    run_campaign(Mode::Partial, 30_000);
    if is_x86_feature_detected!("avx2") {
        run_campaign(Mode::Avx2, 30_000);
    }
}

/// The generator and the harness, independent of the engine: every mode produces sequences
/// that encode and decode back (plus `ret`), use rdi only as the base of in-buffer memory
/// operands and rsp only through balanced stack pairs, cover the whole instruction mix, and
/// run natively through the harness with rdi and rsp back where they started.
#[test]
fn random_generator_sequences_run_natively_and_respect_reserved_registers() {
    use iced_x86::{InstructionInfoFactory, Mnemonic, OpAccess, OpKind};
    use std::collections::HashSet;
    let avx2 = is_x86_feature_detected!("avx2");
    let modes: &[Mode] = if avx2 {
        &[Mode::Full, Mode::Partial, Mode::Avx2]
    } else {
        &[Mode::Full, Mode::Partial]
    };
    let mut code = CodePage::new();
    let mut info = InstructionInfoFactory::new();
    let mut seen: HashSet<String> = HashSet::new();
    let (mut rip_relative, mut address_size_32, mut blocks) = (0, 0, 0);
    for &mode in modes {
        for index in 0..300 {
            let mut rng = Rng::new(sequence_seed(DEFAULT_SEED, mode, index));
            let case = random_case(&mut rng);
            let items = Generator {
                rng: &mut rng,
                mode,
                code_base: code.addr(),
                encoder: Encoder::new(64),
            }
            .sequence();
            let bytes = encode(&items, code.addr()).expect("encode");
            let listing = disassemble(&bytes, code.addr());
            let decoded: Vec<Instruction> =
                Decoder::with_ip(64, &bytes, code.addr(), DecoderOptions::NONE)
                    .into_iter()
                    .collect();
            assert!(decoded.iter().all(|i| !i.is_invalid()), "{listing}");
            assert_eq!(
                decoded.last().map(|i| i.code()),
                Some(Code::Retnq),
                "{listing}"
            );
            let n = decoded.len() - 1;
            assert!((10..=84).contains(&n), "{n} instructions:\n{listing}");
            for ins in &decoded {
                seen.insert(format!("{:?}", ins.mnemonic()));
                let is_stack_op = matches!(
                    ins.mnemonic(),
                    Mnemonic::Push
                        | Mnemonic::Pop
                        | Mnemonic::Pushfq
                        | Mnemonic::Popfq
                        | Mnemonic::Ret
                );
                let is_lea = ins.mnemonic() == Mnemonic::Lea;
                blocks += usize::from(ins.is_jmp_short_or_near() || ins.is_jcc_short_or_near());
                for op in 0..ins.op_count() {
                    match ins.op_kind(op) {
                        OpKind::Register => {
                            let r = ins.op_register(op).full_register();
                            assert!(
                                r != Register::RDI && r != Register::RSP,
                                "{ins} names rdi/rsp:\n{listing}"
                            );
                        }
                        OpKind::Memory if is_lea => {
                            for r in [ins.memory_base(), ins.memory_index()] {
                                let r = r.full_register();
                                assert!(
                                    r != Register::RDI && r != Register::RSP,
                                    "{ins}:\n{listing}"
                                );
                            }
                            address_size_32 += usize::from(ins.memory_base().is_gpr32());
                        }
                        OpKind::Memory => {
                            assert_eq!(ins.memory_index(), Register::None, "{ins}");
                            let size = ins.memory_size().size() as u64;
                            if ins.is_ip_rel_memory_operand() {
                                rip_relative += 1;
                                let target = ins.ip_rel_memory_address();
                                assert!(
                                    target >= code.addr()
                                        && target + size <= code.addr() + CODE_LEN as u64,
                                    "{ins}"
                                );
                            } else {
                                assert_eq!(ins.memory_base(), Register::RDI, "{ins}:\n{listing}");
                                assert!(
                                    ins.memory_displacement64() + size <= BUF_LEN as u64,
                                    "{ins}"
                                );
                            }
                        }
                        _ => {}
                    }
                }
                for r in info.info(ins).used_registers() {
                    let full = r.register().full_register();
                    if full == Register::RDI {
                        assert_eq!(r.access(), OpAccess::Read, "{ins} writes rdi");
                    }
                    if full == Register::RSP {
                        assert!(is_stack_op, "{ins} uses rsp:\n{listing}");
                    }
                }
            }
            code.write(&bytes);
            let mut stack = Box::new(StackBuf([0; STACK_LEN]));
            let mut data = Box::new(DataBuf(case.data));
            stack.below_rsp().copy_from_slice(&case.stack);
            let mut input = case.state;
            input.gpr[RDI] = data.0.as_mut_ptr() as u64;
            input.gpr[RSP] = stack.test_rsp();
            let mut output = RandState::zeroed();
            // SAFETY: as in Runner::run_native.
            unsafe {
                if mode == Mode::Avx2 {
                    rand_run_native_avx(&input, &mut output, code.0);
                } else {
                    rand_run_native(&input, &mut output, code.0);
                }
            }
            assert_eq!(
                output.gpr[RSP], input.gpr[RSP],
                "rsp is back where it started:\n{listing}"
            );
            assert_eq!(
                output.gpr[RDI], input.gpr[RDI],
                "rdi is untouched:\n{listing}"
            );
        }
    }
    let mut expected = vec![
        "Add",
        "Sub",
        "Adc",
        "Sbb",
        "And",
        "Or",
        "Xor",
        "Cmp",
        "Test",
        "Inc",
        "Dec",
        "Neg",
        "Not",
        "Shl",
        "Shr",
        "Sar",
        "Rol",
        "Ror",
        "Rcl",
        "Rcr",
        "Imul",
        "Mul",
        "Bsf",
        "Bsr",
        "Popcnt",
        "Lzcnt",
        "Tzcnt",
        "Bt",
        "Bts",
        "Btr",
        "Btc",
        "Cmove",
        "Cmovne",
        "Cmovb",
        "Cmovg",
        "Sete",
        "Setb",
        "Setle",
        "Lea",
        "Xchg",
        "Bswap",
        "Movzx",
        "Movsx",
        "Movsxd",
        "Cbw",
        "Cwd",
        "Cdq",
        "Cqo",
        "Cdqe",
        "Cwde",
        "Lahf",
        "Sahf",
        "Clc",
        "Stc",
        "Cmc",
        "Std",
        "Cld",
        "Pushfq",
        "Popfq",
        "Push",
        "Pop",
        "Mov",
        "Jmp",
        "Je",
        "Jne",
        "Jb",
        "Jl",
        "Paddd",
        "Psubq",
        "Pxor",
        "Pand",
        "Por",
        "Pshufd",
        "Punpcklbw",
        "Addps",
        "Mulpd",
        "Subsd",
        "Minps",
        "Maxpd",
        "Cvtsi2sd",
        "Cvttsd2si",
        "Sqrtpd",
        "Movaps",
        "Movdqu",
    ];
    if avx2 {
        expected.extend(["Vpaddd", "Vpxor", "Vpshufb", "Vmovdqu"]);
    }
    let missing: Vec<&str> = expected
        .into_iter()
        .filter(|m| !seen.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "the generator never produced {missing:?}"
    );
    assert!(
        rip_relative > 0 && address_size_32 > 0,
        "rip-relative {rip_relative}, 32-bit lea {address_size_32}"
    );
    assert!(blocks > 1000, "only {blocks} branches in 600+ sequences");
}
