//! Random vector and x87 instruction sequences, run natively and under the Vm from the same
//! state, with the whole FP/vector state compared at the end.
//!
//! The generator draws instructions from iced-x86's tables rather than from a hand-written
//! list: every x87, SSE-SSE4.2, AVX/AVX2/FMA and AVX-512 (F, BW, DQ, VL) instruction, plus
//! those of the extensions this CPU has (F16C, AES, PCLMULQDQ, GFNI, VAES, VPCLMULQDQ, the
//! other AVX-512 subsets), that is not control flow, privileged or a state save/restore,
//! with its operands filled at random: xmm/ymm/zmm registers (16-31 for EVEX), k0-k7,
//! general registers, x87 stack registers, imm8, and memory operands. EVEX forms get opmask
//! merge-masking `{k}` and zero-masking `{k}{z}`, embedded broadcast `{1toN}`, embedded
//! rounding (`{rn-sae}` ..) and `{sae}` on the 512-bit and scalar register forms. Memory
//! operands are `[rdi + disp]` (aligned displacements, so that EVEX mostly encodes them as
//! compressed disp8*N), `[rdi + index*scale + disp]` after a `mov` that sets the index, and
//! RIP-relative into a data area placed right after the code in the same mapping (always
//! within rel32 of the code; under the Vm the translated code reaches it re-encoded, or
//! through a scratch register if the cache is placed out of reach). Instructions that load
//! a control word get valid values from a `mov` just before (`ldmxcsr`/`vldmxcsr` with every
//! exception masked and random rounding, FTZ, DAZ and sticky flags; `fldcw` with every
//! exception masked and random precision and rounding). The generator follows the x87 stack
//! depth and mostly redraws instructions that would read an empty register or push onto a
//! full stack (about 30% of the x87+SSE sequences still fault, compared like the rest). Mask
//! instructions (kmov, kand/kor/kxor/knot/kshift/kortest/ktest ..) and compares into a mask
//! (vpcmp*, vcmpp*, vptestm*, vfpclass*) have their own share; a few integer instructions
//! move values and flags between the units.
//!
//! Sequences are cut into blocks by `jmp`/`jcc` to the next instruction and `jcc` over one
//! instruction (reading the flags that comis, fcomi, ptest and kortest set), and call a
//! native function (a `call rel32`, or `call reg` after a RIP-relative `lea`) placed just
//! after the code outside the instrumented range, so the exec broker runs it with the
//! guest's registers: a short random sequence of the same mix. Every first execution of a
//! block is a dispatcher round trip (the cache is cleared for every sequence).
//!
//! Each sequence runs natively through `guest/rand_vec_harness.S` (`xrstor` of the initial
//! state, `xsave` of the final one) and under one reused `Vm` from the same general
//! registers, flags, MXCSR (random but valid: rounding, FTZ, DAZ, sticky flags, every
//! exception masked; often exactly the host's, which is 0x1f80 when the Vm runs), x87 state
//! (control word, status word with TOP and sticky flags, tag word, 80-bit registers
//! including denormals and invalid encodings), xmm/ymm/zmm0-31, k0-k7, data buffer,
//! RIP-relative area and stack content. At the end every general register, the masked
//! flags, MXCSR, FCW, FSW, the abridged tag word, st0-7 as 80 bits, the vector registers at
//! the campaign's width, k0-k7, the data buffer, the RIP-relative area and the red zone
//! under the stack pointer must be equal. The x87 instruction and data pointers are not
//! compared (they are addresses).
//!
//! Campaigns: x87 + SSE, + AVX2/FMA (if the CPU and OS have them), + AVX-512 (if the CPU
//! has avx512f/bw/dq/vl and XCR0 enables opmask, ZMM_Hi256 and Hi16_ZMM); each without
//! callbacks, with callbacks that do nothing on every instruction (a direct-call one and a
//! general-path one, block entry/exit events, memory recording), with callbacks that work
//! like ordinary Rust code (libc `memcpy`/`strlen`, the x87 stack with an exception flag
//! raised) on every instruction and at block entry and exit, and with callbacks that also
//! compute with f64 in ways that raise MXCSR exception flags. A campaign the machine cannot
//! run prints a line saying so. A state transfer check (store every vector and mask
//! register, load them all) and the reduced reproducers of engine bugs the campaigns found
//! come last.
//!
//! `rdi` holds the data buffer's middle and is never written nor read as a value; `rsp` is
//! only moved by balanced push/pop pairs and calls. Set `QBDI_TEST_SEED` (decimal or 0x-hex)
//! to replay or vary a campaign; a failure prints the seed, the campaign, the sequence
//! index, the disassembly (and the native function's), the initial state, the differences
//! and a reduced sequence that still fails (after an engine panic, reduced on a new Vm).

#[path = "random/common.rs"]
mod common;
use common::*;

use iced_x86::{
    Code, CpuidFeature, Decoder, DecoderOptions, Encoder, EncodingKind, FlowControl, IcedError,
    Instruction, InstructionInfoFactory, MemoryOperand, Mnemonic, OpAccess, OpCodeOperandKind,
    OpKind, Register, RoundingControl,
};
use qbdi_core::{
    FAKE_RETURN_ADDRESS, FprState, GprState, InstPosition, MemoryAccessType, MmstReg,
    PRIORITY_DEFAULT, Vm, VmAction, VmEvent, VmRef, simulate_call,
};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

// ---------------------------------------------------------------------------------------
// XSAVE components and the CPU's layout of them.
// ---------------------------------------------------------------------------------------

const X87: u64 = 1 << 0;
const SSE: u64 = 1 << 1;
const AVX: u64 = 1 << 2;
const OPMASK: u64 = 1 << 5;
const ZMM_HI256: u64 = 1 << 6;
const HI16_ZMM: u64 = 1 << 7;
const AVX512_STATE: u64 = OPMASK | ZMM_HI256 | HI16_ZMM;

/// Where this CPU's standard-format XSAVE image keeps each component (CPUID leaf 0xD).
#[derive(Debug)]
struct XLayout {
    /// The components the harness loads and stores: XCR0 restricted to the ones above.
    rfbm: u64,
    avx: usize,
    opmask: usize,
    zmm_hi256: usize,
    hi16_zmm: usize,
}

/// The size of the harness's XSAVE area (the components saved must fit; checked).
const XSAVE_AREA: usize = 4096;

fn xcr0() -> u64 {
    if !is_x86_feature_detected!("xsave") {
        return 0;
    }
    // SAFETY: the CPU has XSAVE and the OS enabled it (std checks OSXSAVE), so XGETBV with
    // ECX=0 is valid.
    unsafe { core::arch::x86_64::_xgetbv(0) }
}

fn layout() -> Option<&'static XLayout> {
    static LAYOUT: OnceLock<Option<XLayout>> = OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let xcr0 = xcr0();
            if xcr0 & (X87 | SSE) != X87 | SSE {
                return None;
            }
            let offset = |leaf: u32| core::arch::x86_64::__cpuid_count(0xd, leaf).ebx as usize;
            let lay = XLayout {
                rfbm: xcr0 & (X87 | SSE | AVX | AVX512_STATE),
                avx: offset(2),
                opmask: offset(5),
                zmm_hi256: offset(6),
                hi16_zmm: offset(7),
            };
            // Only these components are saved (not AMX or PKRU): their ends must fit.
            let ends = [
                (AVX, lay.avx + 256),
                (OPMASK, lay.opmask + 64),
                (ZMM_HI256, lay.zmm_hi256 + 512),
                (HI16_ZMM, lay.hi16_zmm + 1024),
            ];
            for (bit, end) in ends {
                assert!(
                    lay.rfbm & bit == 0 || end <= XSAVE_AREA,
                    "XSAVE component {bit:#x} ends at {end}, past the harness's area"
                );
            }
            Some(lay)
        })
        .as_ref()
}

// ---------------------------------------------------------------------------------------
// The state compared, and its two images (the harness's XSAVE area, the Vm's FprState).
// ---------------------------------------------------------------------------------------

/// Registers of one run, independent of where they are kept.
#[derive(Clone, Copy)]
struct VState {
    /// In hardware order: rax rcx rdx rbx rsp rbp rsi rdi r8 .. r15.
    gpr: [u64; 16],
    rflags: u64,
    mxcsr: u32,
    fcw: u16,
    fsw: u16,
    /// Abridged (FXSAVE) tag word: bit n set if physical register n is valid.
    ftw: u8,
    /// ST(0)..ST(7) in stack order (as FXSAVE stores them), 80 bits each.
    st: [[u8; 10]; 8],
    /// zmm0-31; only the campaign's width counts (xmm: 16 bytes, ymm: 32, zmm: 64).
    zmm: [[u8; 64]; 32],
    k: [u64; 8],
}

impl VState {
    fn zeroed() -> VState {
        VState {
            gpr: [0; 16],
            rflags: 0,
            mxcsr: 0,
            fcw: 0,
            fsw: 0,
            ftw: 0,
            st: [[0; 10]; 8],
            zmm: [[0; 64]; 32],
            k: [0; 8],
        }
    }

    /// The standard-format XSAVE image of this state; components outside `comps` are marked
    /// initial in the header (so `xrstor` puts them in their initial state).
    fn write_xsave(&self, lay: &XLayout, comps: u64, area: &mut [u8; XSAVE_AREA]) {
        area.fill(0);
        area[0..2].copy_from_slice(&self.fcw.to_le_bytes());
        area[2..4].copy_from_slice(&self.fsw.to_le_bytes());
        area[4] = self.ftw;
        area[24..28].copy_from_slice(&self.mxcsr.to_le_bytes());
        for i in 0..8 {
            area[32 + 16 * i..42 + 16 * i].copy_from_slice(&self.st[i]);
        }
        for i in 0..16 {
            area[160 + 16 * i..176 + 16 * i].copy_from_slice(&self.zmm[i][..16]);
        }
        let present = lay.rfbm & (comps | SSE);
        area[512..520].copy_from_slice(&present.to_le_bytes());
        if present & AVX != 0 {
            for i in 0..16 {
                let at = lay.avx + 16 * i;
                area[at..at + 16].copy_from_slice(&self.zmm[i][16..32]);
            }
        }
        if present & OPMASK != 0 {
            for i in 0..8 {
                let at = lay.opmask + 8 * i;
                area[at..at + 8].copy_from_slice(&self.k[i].to_le_bytes());
            }
        }
        if present & ZMM_HI256 != 0 {
            for i in 0..16 {
                let at = lay.zmm_hi256 + 32 * i;
                area[at..at + 32].copy_from_slice(&self.zmm[i][32..]);
            }
        }
        if present & HI16_ZMM != 0 {
            for i in 0..16 {
                let at = lay.hi16_zmm + 64 * i;
                area[at..at + 64].copy_from_slice(&self.zmm[16 + i]);
            }
        }
    }

    /// The FP/vector part of an `xsave` image; components the header reports initial get
    /// their initial values.
    fn read_xsave(&mut self, lay: &XLayout, area: &[u8; XSAVE_AREA]) {
        let u16_at = |at: usize| u16::from_le_bytes([area[at], area[at + 1]]);
        let present = u64::from_le_bytes(area[512..520].try_into().expect("8 bytes"));
        self.mxcsr = u32::from_le_bytes(area[24..28].try_into().expect("4 bytes"));
        if present & X87 != 0 {
            self.fcw = u16_at(0);
            self.fsw = u16_at(2);
            self.ftw = area[4];
            for i in 0..8 {
                self.st[i].copy_from_slice(&area[32 + 16 * i..42 + 16 * i]);
            }
        } else {
            self.fcw = 0x37f;
            self.fsw = 0;
            self.ftw = 0;
            self.st = [[0; 10]; 8];
        }
        self.zmm = [[0; 64]; 32];
        self.k = [0; 8];
        if present & SSE != 0 {
            for i in 0..16 {
                self.zmm[i][..16].copy_from_slice(&area[160 + 16 * i..176 + 16 * i]);
            }
        }
        if present & AVX != 0 {
            for i in 0..16 {
                let at = lay.avx + 16 * i;
                self.zmm[i][16..32].copy_from_slice(&area[at..at + 16]);
            }
        }
        if present & OPMASK != 0 {
            for i in 0..8 {
                let at = lay.opmask + 8 * i;
                self.k[i] = u64::from_le_bytes(area[at..at + 8].try_into().expect("8 bytes"));
            }
        }
        if present & ZMM_HI256 != 0 {
            for i in 0..16 {
                let at = lay.zmm_hi256 + 32 * i;
                self.zmm[i][32..].copy_from_slice(&area[at..at + 32]);
            }
        }
        if present & HI16_ZMM != 0 {
            for i in 0..16 {
                let at = lay.hi16_zmm + 64 * i;
                self.zmm[16 + i].copy_from_slice(&area[at..at + 64]);
            }
        }
    }

    /// Sets the Vm's FP state to this state (components outside `comps` initial).
    fn write_fpr(&self, comps: u64, f: &mut FprState) {
        f.fcw = self.fcw;
        f.fsw = self.fsw;
        f.ftw = self.ftw;
        f.fop = 0;
        f.ip = 0;
        f.cs = 0;
        f.dp = 0;
        f.ds = 0;
        f.mxcsr = self.mxcsr;
        for i in 0..8 {
            let slot = stmm_mut(f, i);
            *slot = [0; 16];
            slot[..10].copy_from_slice(&self.st[i]);
        }
        for i in 0..16 {
            f.xmm_mut(i).copy_from_slice(&self.zmm[i][..16]);
            let hi: [u8; 16] = if comps & AVX != 0 {
                self.zmm[i][16..32].try_into().expect("16 bytes")
            } else {
                [0; 16]
            };
            *f.ymm_hi_mut(i) = hi;
        }
        let avx512 = comps & AVX512_STATE != 0;
        for i in 0..16 {
            f.zmm_hi256[i] = if avx512 {
                self.zmm[i][32..].try_into().expect("32 bytes")
            } else {
                [0; 32]
            };
            f.hi16_zmm[i] = if avx512 { self.zmm[16 + i] } else { [0; 64] };
        }
        f.k = if avx512 { self.k } else { [0; 8] };
    }

    fn read_fpr(&mut self, f: &FprState) {
        self.fcw = f.fcw;
        self.fsw = f.fsw;
        self.ftw = f.ftw;
        self.mxcsr = f.mxcsr;
        for i in 0..8 {
            self.st[i].copy_from_slice(&f.stmm(i)[..10]);
        }
        for i in 0..16 {
            self.zmm[i][..16].copy_from_slice(f.xmm(i));
            self.zmm[i][16..32].copy_from_slice(f.ymm_hi(i));
            self.zmm[i][32..].copy_from_slice(&f.zmm_hi256[i]);
            self.zmm[16 + i] = f.hi16_zmm[i];
        }
        self.k = f.k;
    }
}

fn stmm_mut(f: &mut FprState, i: usize) -> &mut MmstReg {
    match i {
        0 => &mut f.stmm0,
        1 => &mut f.stmm1,
        2 => &mut f.stmm2,
        3 => &mut f.stmm3,
        4 => &mut f.stmm4,
        5 => &mut f.stmm5,
        6 => &mut f.stmm6,
        _ => &mut f.stmm7,
    }
}

// ---------------------------------------------------------------------------------------
// The native harness.
// ---------------------------------------------------------------------------------------

/// The block `guest/rand_vec_harness.S` loads and stores.
#[repr(C, align(64))]
struct Harness {
    gpr: [u64; 16],
    rflags: u64,
    host_rsp: u64,
    xsave_mask: u64,
    pad: [u64; 5],
    xsave: [u8; XSAVE_AREA],
}

const _: () = assert!(std::mem::offset_of!(Harness, rflags) == 128);
const _: () = assert!(std::mem::offset_of!(Harness, host_rsp) == 136);
const _: () = assert!(std::mem::offset_of!(Harness, xsave_mask) == 144);
const _: () = assert!(std::mem::offset_of!(Harness, xsave) == 192);

impl Harness {
    fn boxed() -> Box<Harness> {
        Box::new(Harness {
            gpr: [0; 16],
            rflags: 0,
            host_rsp: 0,
            xsave_mask: 0,
            pad: [0; 5],
            xsave: [0; XSAVE_AREA],
        })
    }
}

unsafe extern "C" {
    /// Runs `code` with the state of `input`, stores the final state to `output`.
    fn vec_run_native(input: *const Harness, output: *mut Harness, code: *const u8);
}

// ---------------------------------------------------------------------------------------
// Pseudo-random numbers (as random_sequences.rs).
// ---------------------------------------------------------------------------------------

impl Rng {
    fn small_f64(&mut self) -> f64 {
        (self.below(4001) as f64 - 2000.0) / (1 + self.below(16)) as f64
    }

    fn special_f64(&mut self) -> f64 {
        self.pick(&[
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001), // signalling NaN
            f64::from_bits(1),                     // smallest subnormal
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE / 3.0, // subnormal
            f64::MAX,
            1.0,
            -1.0,
            0.5,
            1e300,
            1e-300,
            (1u64 << 53) as f64,
        ])
    }

    fn special_f32(&mut self) -> f32 {
        self.pick(&[
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(1),
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE / 3.0,
            f32::MAX,
            1.0,
            -1.0,
            65504.0,
            1e-40,
        ])
    }

    /// Eight bytes of a vector: raw bits, integers, one f64 or two f32, moderate or special.
    fn vector_lane(&mut self) -> u64 {
        match self.below(9) {
            0 | 1 => self.next_u64(),
            2 => self.small_f64().to_bits(),
            3 => {
                let lo = u64::from((self.small_f64() as f32).to_bits());
                let hi = u64::from((self.small_f64() as f32).to_bits());
                lo | (hi << 32)
            }
            4 => self.special_f64().to_bits(),
            5 => {
                let lo = u64::from(self.special_f32().to_bits());
                let hi = u64::from((self.small_f64() as f32).to_bits());
                if self.chance(50) {
                    lo | (hi << 32)
                } else {
                    hi | (lo << 32)
                }
            }
            6 => {
                let lo = u64::from(self.interesting() as u32);
                lo | (u64::from(self.interesting() as u32) << 32)
            }
            _ => self.interesting(),
        }
    }

    /// An x87 register value: from f64 (normal, special, integral), or an 80-bit
    /// denormal, pseudo-denormal, unnormal or other invalid encoding.
    fn x87_value(&mut self) -> [u8; 10] {
        match self.below(12) {
            0..=3 => f64_to_f80(self.small_f64()),
            4 => f64_to_f80(self.special_f64()),
            5 => f64_to_f80(self.interesting() as i64 as f64),
            6 => f64_to_f80(f64::from_bits(self.next_u64())),
            7 => {
                // Denormal (or pseudo-denormal with the J bit set).
                let mant = self.next_u64() >> self.below(3);
                f80(self.chance(50), 0, mant)
            }
            8 => {
                // Unnormal (J clear, exponent not 0): an invalid operand.
                let exp = 1 + self.below(0x7ffe) as u16;
                f80(self.chance(50), exp, self.next_u64() >> 1)
            }
            9 => {
                // Near 1, full 64-bit mantissa.
                let exp = 0x3fff - 40 + self.below(80) as u16;
                f80(self.chance(50), exp, self.next_u64() | 1 << 63)
            }
            10 => f80(
                self.chance(50),
                0x7fff,
                (1 << 63) | (self.next_u64() >> self.below(2)),
            ),
            _ => {
                let mut v = [0u8; 10];
                v[..8].copy_from_slice(&self.next_u64().to_le_bytes());
                v[8..].copy_from_slice(&(self.next_u64() as u16).to_le_bytes());
                v
            }
        }
    }
}

fn f80(sign: bool, exp: u16, mant: u64) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[..8].copy_from_slice(&mant.to_le_bytes());
    v[8..].copy_from_slice(&((exp & 0x7fff) | (u16::from(sign) << 15)).to_le_bytes());
    v
}

/// The 80-bit extended value of `x` (exact).
fn f64_to_f80(x: f64) -> [u8; 10] {
    let bits = x.to_bits();
    let sign = bits >> 63 != 0;
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1 << 52) - 1);
    let (e, mant) = match exp {
        0 if frac == 0 => (0, 0),
        0 => {
            let shift = frac.leading_zeros() - 11;
            ((16383 - 1022 - shift as i32) as u16, (frac << shift) << 11)
        }
        0x7ff => (0x7fff, (1 << 63) | (frac << 11)),
        _ => ((exp - 1023 + 16383) as u16, (1 << 63) | (frac << 11)),
    };
    f80(sign, e, mant)
}

// ---------------------------------------------------------------------------------------
// Campaigns and what the CPU can run.
// ---------------------------------------------------------------------------------------

/// Which instruction mix and which state a campaign uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Campaign {
    /// x87 and SSE-SSE4.2 (+ a few integer instructions).
    X87Sse = 0,
    /// `X87Sse` plus AVX, AVX2, FMA, F16C on xmm and ymm (upper halves compared).
    Avx2 = 1,
    /// `Avx2` plus AVX-512 (zmm0-31 at full width, k0-k7 compared).
    Avx512 = 2,
}

impl Campaign {
    /// The XSAVE components whose state the campaign sets and compares.
    fn comps(self) -> u64 {
        match self {
            Campaign::X87Sse => X87 | SSE,
            Campaign::Avx2 => X87 | SSE | AVX,
            Campaign::Avx512 => X87 | SSE | AVX | AVX512_STATE,
        }
    }

    /// Why the machine cannot run this campaign, if it cannot.
    fn unavailable(self) -> Option<String> {
        let xcr0 = xcr0();
        if layout().is_none() {
            return Some(format!(
                "no XSAVE with x87 and SSE state (XCR0 {xcr0:#x}): the native harness needs it"
            ));
        }
        match self {
            Campaign::X87Sse => None,
            Campaign::Avx2 => {
                let cpu = is_x86_feature_detected!("avx")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma");
                if !cpu || xcr0 & AVX == 0 {
                    Some(format!(
                        "AVX/AVX2/FMA not available (cpu features: {cpu}, XCR0 {xcr0:#x})"
                    ))
                } else {
                    None
                }
            }
            Campaign::Avx512 => {
                if let Some(why) = Campaign::Avx2.unavailable() {
                    return Some(why);
                }
                let cpu = is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl");
                if !cpu || xcr0 & AVX512_STATE != AVX512_STATE {
                    Some(format!(
                        "AVX-512 F/BW/DQ/VL not available (cpu features: {cpu}, XCR0 {xcr0:#x}, \
                         bits 5-7 needed)"
                    ))
                } else {
                    None
                }
            }
        }
    }
}

/// CPUID features of instructions the generator may use on this CPU, per unit.
struct Features {
    x87: Vec<CpuidFeature>,
    sse: Vec<CpuidFeature>,
    avx: Vec<CpuidFeature>,
    avx512: Vec<CpuidFeature>,
}

/// Bit `bit` of register `reg` (0 eax, 1 ebx, 2 ecx, 3 edx) of CPUID `leaf`/`sub`.
fn cpuid_bit(leaf: u32, sub: u32, reg: usize, bit: u32) -> bool {
    if leaf > core::arch::x86_64::__cpuid(0).eax {
        return false;
    }
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    ([r.eax, r.ebx, r.ecx, r.edx][reg] >> bit) & 1 != 0
}

/// The units' base features, and the extensions this CPU has (read from CPUID: the
/// detection macro's names for some of them are newer than the workspace's Rust version).
/// The campaigns check the base features and the OS state before drawing from a pool.
fn allowed_features() -> Features {
    use CpuidFeature as F;
    let x87 = vec![F::FPU, F::FPU387, F::CMOV, F::SSE3];
    let mut sse = vec![F::SSE, F::SSE2, F::SSE3, F::SSSE3, F::SSE4_1, F::SSE4_2];
    let mut avx = vec![F::AVX, F::AVX2, F::FMA];
    let mut avx512 = vec![F::AVX512F, F::AVX512BW, F::AVX512DQ, F::AVX512VL];
    let every_unit = [
        (cpuid_bit(1, 0, 2, 1), F::PCLMULQDQ),
        (cpuid_bit(1, 0, 2, 25), F::AES),
        (cpuid_bit(7, 0, 2, 8), F::GFNI),
    ];
    let vex_units = [
        (cpuid_bit(1, 0, 2, 29), F::F16C),
        (cpuid_bit(7, 0, 2, 9), F::VAES),
        (cpuid_bit(7, 0, 2, 10), F::VPCLMULQDQ),
    ];
    let evex_unit = [
        (cpuid_bit(7, 0, 1, 28), F::AVX512CD),
        (cpuid_bit(7, 0, 1, 21), F::AVX512_IFMA),
        (cpuid_bit(7, 0, 2, 1), F::AVX512_VBMI),
        (cpuid_bit(7, 0, 2, 6), F::AVX512_VBMI2),
        (cpuid_bit(7, 0, 2, 11), F::AVX512_VNNI),
        (cpuid_bit(7, 0, 2, 12), F::AVX512_BITALG),
        (cpuid_bit(7, 0, 2, 14), F::AVX512_VPOPCNTDQ),
        (cpuid_bit(7, 1, 0, 5), F::AVX512_BF16),
    ];
    for (has, f) in every_unit {
        if has {
            sse.push(f);
            avx.push(f);
            avx512.push(f);
        }
    }
    for (has, f) in vex_units {
        if has {
            avx.push(f);
            avx512.push(f);
        }
    }
    for (has, f) in evex_unit {
        if has {
            avx512.push(f);
        }
    }
    Features {
        x87,
        sse,
        avx,
        avx512,
    }
}

// ---------------------------------------------------------------------------------------
// Instruction tables, from iced-x86's.
// ---------------------------------------------------------------------------------------

/// Codes of one unit, grouped by mnemonic (the generator draws a mnemonic, then a form).
#[derive(Default)]
struct Pool {
    mnemonics: Vec<(Mnemonic, Vec<Code>)>,
}

impl Pool {
    fn from_codes(codes: Vec<Code>) -> Pool {
        let mut by: BTreeMap<u16, (Mnemonic, Vec<Code>)> = BTreeMap::new();
        for c in codes {
            let m = c.mnemonic();
            by.entry(m as u16)
                .or_insert_with(|| (m, Vec::new()))
                .1
                .push(c);
        }
        Pool {
            mnemonics: by.into_values().collect(),
        }
    }

    fn pick(&self, rng: &mut Rng) -> Code {
        let (_, codes) = &self.mnemonics[rng.below(self.mnemonics.len() as u64) as usize];
        rng.pick(codes)
    }

    fn len(&self) -> usize {
        self.mnemonics.iter().map(|(_, c)| c.len()).sum()
    }
}

struct Tables {
    x87: Pool,
    sse: Pool,
    avx: Pool,
    /// VEX-encoded mask instructions (kmov, kand, kortest, kshift ..).
    kmask: Pool,
    /// EVEX instructions that write a mask register (compares, vptestm, vfpclass, vpmov*2m).
    kcmp: Pool,
    /// Every other EVEX instruction.
    evex: Pool,
}

/// Operand kinds the filler knows.
fn supported_operand(kind: OpCodeOperandKind) -> bool {
    use OpCodeOperandKind as K;
    matches!(
        kind,
        K::mem
            | K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::r64_or_mem
            | K::xmm_or_mem
            | K::ymm_or_mem
            | K::zmm_or_mem
            | K::k_or_mem
            | K::r8_reg
            | K::r16_reg
            | K::r16_rm
            | K::r32_reg
            | K::r32_rm
            | K::r32_reg_mem
            | K::r64_reg
            | K::r64_rm
            | K::r64_reg_mem
            | K::k_reg
            | K::k_rm
            | K::k_vvvv
            | K::xmm_reg
            | K::xmm_rm
            | K::xmm_vvvv
            | K::xmm_is4
            | K::ymm_reg
            | K::ymm_rm
            | K::ymm_vvvv
            | K::ymm_is4
            | K::zmm_reg
            | K::zmm_rm
            | K::zmm_vvvv
            | K::st0
            | K::sti_opcode
            | K::al
            | K::ax
            | K::eax
            | K::rax
            | K::imm8
            | K::seg_rDI
    )
}

/// Mnemonics the generic filler must not produce: control words and environments loaded
/// from memory (the filler cannot make their values valid; `fldcw` and `ldmxcsr` have
/// their own groups), environment stores (they hold the x87 instruction pointer, an
/// address that differs under the Vm), and the undocumented x87 aliases.
const EXCLUDED: [Mnemonic; 12] = [
    Mnemonic::Ldmxcsr,
    Mnemonic::Vldmxcsr,
    Mnemonic::Fldcw,
    Mnemonic::Fldenv,
    Mnemonic::Frstor,
    Mnemonic::Fnsave,
    Mnemonic::Fsave,
    Mnemonic::Fnstenv,
    Mnemonic::Fstenv,
    Mnemonic::Fxsave,
    Mnemonic::Fxrstor,
    Mnemonic::Fstpnce,
];

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let Features {
            x87: x87_f,
            sse: sse_f,
            avx: avx_f,
            avx512: avx512_f,
        } = allowed_features();
        let within = |feats: &[CpuidFeature], allowed: &[CpuidFeature]| {
            !feats.is_empty() && feats.iter().all(|f| allowed.contains(f))
        };
        let (mut x87, mut sse, mut avx, mut kmask, mut kcmp, mut evex) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for code in Code::values() {
            let oc = code.op_code();
            if !oc.is_instruction()
                || !oc.mode64()
                || oc.is_privileged()
                || oc.is_save_restore()
                || oc.is_stack_instruction()
                || oc.is_input_output()
                || oc.is_reserved_nop()
                || oc.requires_unique_reg_nums()
                || EXCLUDED.contains(&code.mnemonic())
                || !oc.op_kinds().iter().all(|&k| supported_operand(k))
            {
                continue;
            }
            // Aliases of other codes (a different opcode for the same instruction).
            let name = format!("{code:?}");
            if name.starts_with('F')
                && ["_DC", "_DD", "_DE", "_DF"]
                    .iter()
                    .any(|a| name.contains(a))
            {
                continue;
            }
            let mut probe = Instruction::default();
            probe.set_code(code);
            if probe.flow_control() != FlowControl::Next {
                continue;
            }
            let feats = probe.cpuid_features();
            let m = format!("{:?}", code.mnemonic());
            match oc.encoding() {
                EncodingKind::Legacy if m.starts_with('F') && within(feats, &x87_f) => {
                    x87.push(code)
                }
                EncodingKind::Legacy if !m.starts_with('F') && within(feats, &sse_f) => {
                    sse.push(code)
                }
                EncodingKind::VEX if within(feats, &avx_f) => avx.push(code),
                EncodingKind::VEX if m.starts_with('K') && within(feats, &avx512_f) => {
                    kmask.push(code)
                }
                EncodingKind::EVEX if within(feats, &avx512_f) => {
                    if oc.op_kind(0) == OpCodeOperandKind::k_reg {
                        kcmp.push(code)
                    } else {
                        evex.push(code)
                    }
                }
                _ => {}
            }
        }
        Tables {
            x87: Pool::from_codes(x87),
            sse: Pool::from_codes(sse),
            avx: Pool::from_codes(avx),
            kmask: Pool::from_codes(kmask),
            kcmp: Pool::from_codes(kcmp),
            evex: Pool::from_codes(evex),
        }
    })
}

// ---------------------------------------------------------------------------------------
// The generator.
// ---------------------------------------------------------------------------------------

/// One generator decision; the reducer removes whole items.
#[derive(Clone)]
enum Item {
    /// Instructions that belong together (an index `mov` and its user, a control word and
    /// its load, a native call and the stack scrub after it ..).
    Plain(Vec<Instruction>),
    /// `jmp`/`jcc` (this code) to the instruction that follows it.
    JumpNext(Code),
    /// `jcc` (this code) over the one instruction that follows it.
    JccSkip(Code, Instruction),
}

/// The data buffer; rdi points at its middle so displacements go both ways.
const DATA_LEN: usize = 4096;
const RDI_OFFSET: usize = DATA_LEN / 2;
/// The RIP-relative data area (after the code and the native function, same mapping).
const RIP_DATA_LEN: usize = 1024;
const CODE_LEN: usize = 8192;
const STUB_LEN: usize = 4096;
const REGION_LEN: usize = CODE_LEN + STUB_LEN + 4096;
const DEFAULT_SEED: u64 = 0x5eed_0bd1_2025_0a5e;

/// iced's `Code` by its name (`"Add_rm64_r64"`).
fn code(name: &str) -> Code {
    static CODES: OnceLock<std::collections::HashMap<String, Code>> = OnceLock::new();
    let map = CODES.get_or_init(|| Code::values().map(|c| (format!("{c:?}"), c)).collect());
    *map.get(name)
        .unwrap_or_else(|| panic!("iced-x86 has no Code::{name}"))
}

/// The register `n` places after `first` in iced's numbering (classes are contiguous).
fn reg_at(first: Register, n: usize) -> Register {
    Register::try_from(first as usize + n).expect("a register of the class")
}

/// The 32/16/8-bit register of a 64-bit one.
fn sub_reg(r64: Register, bits: u32) -> Register {
    let n = r64 as usize - Register::RAX as usize;
    match bits {
        32 => reg_at(Register::EAX, n),
        16 => reg_at(Register::AX, n),
        8 if n < 4 => reg_at(Register::AL, n),
        // iced numbers AL..BL, AH..BH, SPL..DIL, R8L..R15L.
        8 => reg_at(Register::SPL, n - 4),
        _ => r64,
    }
}

/// Memory operands that must be aligned to their size.
fn needs_alignment(encoding: EncodingKind, mnemonic: Mnemonic, size: usize) -> bool {
    use Mnemonic as M;
    match encoding {
        EncodingKind::Legacy => {
            size >= 16 && !matches!(mnemonic, M::Movdqu | M::Movups | M::Movupd | M::Lddqu)
        }
        _ => matches!(
            mnemonic,
            M::Vmovaps
                | M::Vmovapd
                | M::Vmovdqa
                | M::Vmovdqa32
                | M::Vmovdqa64
                | M::Vmovntps
                | M::Vmovntpd
                | M::Vmovntdq
                | M::Vmovntdqa
        ),
    }
}

struct Generator<'a> {
    rng: &'a mut Rng,
    campaign: Campaign,
    tables: &'static Tables,
    code_base: u64,
    stub: u64,
    rip_data: u64,
    /// The generator's idea of the x87 stack depth (pushes and pops it drew).
    x87_depth: i32,
    encoder: Encoder,
    info: InstructionInfoFactory,
}

impl Generator<'_> {
    fn gpr(&mut self) -> Register {
        self.rng.pick(&GPR64)
    }

    fn vreg(&mut self, first: Register, evex: bool) -> Register {
        let n = if evex && self.rng.chance(40) {
            16 + self.rng.below(16)
        } else {
            self.rng.below(16)
        };
        reg_at(first, n as usize)
    }

    fn imm8(&mut self) -> u8 {
        match self.rng.below(5) {
            0 => 0,
            1 => 0xff,
            2 => self.rng.below(8) as u8,
            _ => self.rng.next_u64() as u8,
        }
    }

    /// An in-buffer offset for `size` bytes aligned to `align`, as a displacement from rdi.
    fn data_disp(&mut self, size: usize, align: usize) -> i64 {
        let slots = (DATA_LEN - size) / align + 1;
        (self.rng.below(slots as u64) as usize * align) as i64 - RDI_OFFSET as i64
    }

    fn rip_target(&mut self, size: usize, align: usize) -> u64 {
        let slots = (RIP_DATA_LEN - size) / align + 1;
        self.rip_data + self.rng.below(slots as u64) * align as u64
    }

    /// `code` with random operands (None if this draw cannot be encoded); any instruction
    /// that sets a memory index comes first.
    fn fill(&mut self, code: Code) -> Option<Vec<Instruction>> {
        use OpCodeOperandKind as K;
        let oc = code.op_code();
        let evex = oc.encoding() == EncodingKind::EVEX;
        let mut ins = Instruction::default();
        ins.set_code(code);
        let mut mem_op = None;
        for i in 0..oc.op_count() {
            let kind = oc.op_kind(i);
            let reg = match kind {
                K::mem | K::seg_rDI => {
                    mem_op = Some(i);
                    None
                }
                K::xmm_or_mem
                | K::ymm_or_mem
                | K::zmm_or_mem
                | K::r8_or_mem
                | K::r16_or_mem
                | K::r32_or_mem
                | K::r64_or_mem
                | K::k_or_mem
                    if self.rng.chance(40) =>
                {
                    mem_op = Some(i);
                    None
                }
                K::xmm_or_mem | K::xmm_reg | K::xmm_rm | K::xmm_vvvv => {
                    Some(self.vreg(Register::XMM0, evex))
                }
                K::ymm_or_mem | K::ymm_reg | K::ymm_rm | K::ymm_vvvv => {
                    Some(self.vreg(Register::YMM0, evex))
                }
                K::zmm_or_mem | K::zmm_reg | K::zmm_rm | K::zmm_vvvv => {
                    Some(self.vreg(Register::ZMM0, evex))
                }
                K::xmm_is4 => Some(self.vreg(Register::XMM0, false)),
                K::ymm_is4 => Some(self.vreg(Register::YMM0, false)),
                K::k_or_mem | K::k_reg | K::k_rm | K::k_vvvv => {
                    Some(reg_at(Register::K0, self.rng.below(8) as usize))
                }
                K::r8_or_mem | K::r8_reg => {
                    let r = self.gpr();
                    Some(sub_reg(r, 8))
                }
                K::r16_or_mem | K::r16_reg | K::r16_rm => {
                    let r = self.gpr();
                    Some(sub_reg(r, 16))
                }
                K::r32_or_mem | K::r32_reg | K::r32_rm | K::r32_reg_mem => {
                    let r = self.gpr();
                    Some(sub_reg(r, 32))
                }
                K::r64_or_mem | K::r64_reg | K::r64_rm | K::r64_reg_mem => Some(self.gpr()),
                K::st0 => Some(Register::ST0),
                K::sti_opcode => {
                    // Mostly a register that holds a value (see `draw_from`).
                    let valid = self.x87_depth.max(1) as u64;
                    let n = if self.rng.chance(85) { valid } else { 8 };
                    Some(reg_at(Register::ST0, self.rng.below(n) as usize))
                }
                K::al => Some(Register::AL),
                K::ax => Some(Register::AX),
                K::eax => Some(Register::EAX),
                K::rax => Some(Register::RAX),
                K::imm8 => {
                    ins.set_op_kind(i, OpKind::Immediate8);
                    let v = self.imm8();
                    ins.set_immediate8(v);
                    None
                }
                _ => return None,
            };
            if let Some(r) = reg {
                ins.set_op_kind(i, OpKind::Register);
                ins.set_op_register(i, r);
            }
        }
        // EVEX decorations.
        if oc.can_use_op_mask_register() && (oc.require_op_mask_register() || self.rng.chance(55)) {
            ins.set_op_mask(reg_at(Register::K1, self.rng.below(7) as usize));
            if oc.can_use_zeroing_masking() && mem_op != Some(0) && self.rng.chance(50) {
                ins.set_zeroing_masking(true);
            }
        }
        let full_width = oc.is_lig() || oc.l() == 2;
        if mem_op.is_none() && evex && full_width {
            if oc.can_use_rounding_control() && self.rng.chance(35) {
                ins.set_rounding_control(self.rng.pick(&[
                    RoundingControl::RoundToNearest,
                    RoundingControl::RoundDown,
                    RoundingControl::RoundUp,
                    RoundingControl::RoundTowardZero,
                ]));
            } else if oc.can_suppress_all_exceptions()
                && !oc.can_use_rounding_control()
                && self.rng.chance(35)
            {
                ins.set_suppress_all_exceptions(true);
            }
        }
        let mut pre = Vec::new();
        if let Some(i) = mem_op {
            if oc.op_kind(i) == K::seg_rDI {
                ins.set_op_kind(i, OpKind::MemorySegRDI);
            } else {
                ins.set_op_kind(i, OpKind::Memory);
                if oc.can_broadcast() && self.rng.chance(35) {
                    ins.set_is_broadcast(true);
                }
                let size = ins.memory_size().size().max(1);
                let natural = 1usize << size.trailing_zeros().min(6);
                let align = if needs_alignment(oc.encoding(), code.mnemonic(), size)
                    || self.rng.chance(80)
                {
                    natural.max(if size >= 16 { 16 } else { 1 }).min(64)
                } else {
                    1
                };
                ins.set_memory_displ_size(1);
                match self.rng.below(10) {
                    0 => {
                        let target = self.rip_target(size, align);
                        ins.set_memory_base(Register::RIP);
                        ins.set_memory_displacement64(target);
                    }
                    1 => {
                        let index = self.gpr();
                        let value = self.rng.below(16) as i64;
                        let scale = self.rng.pick(&[1u32, 2, 4, 8]);
                        let disp = self.data_disp(size, align) - value * i64::from(scale);
                        pre.push(
                            Instruction::with2(
                                Code::Mov_r32_imm32,
                                sub_reg(index, 32),
                                value as u32,
                            )
                            .ok()?,
                        );
                        ins.set_memory_base(Register::RDI);
                        ins.set_memory_index(index);
                        ins.set_memory_index_scale(scale);
                        ins.set_memory_displacement64(disp as u64);
                    }
                    _ => {
                        let disp = self.data_disp(size, align);
                        ins.set_memory_base(Register::RDI);
                        ins.set_memory_displacement64(disp as u64);
                    }
                }
            }
        }
        pre.push(ins);
        Some(pre)
    }

    /// One instruction of a pool (redrawn until it encodes), keeping the x87 stack
    /// roughly balanced.
    fn draw_from(&mut self, pool: &Pool) -> Option<Vec<Instruction>> {
        let code = pool.pick(self.rng);
        let group = self.fill(code)?;
        let last = group.last()?;
        if code.mnemonic() == Mnemonic::Fninit {
            self.x87_depth = 0;
            return Some(group);
        }
        // x87: the deepest stack register read must hold a value, and a push must find
        // room (most of the time: stack faults are deterministic too, but an x87 unit full
        // of indefinite NaNs tests little).
        let needed = self
            .info
            .info(last)
            .used_registers()
            .iter()
            .filter(|u| u.register().is_st() && u.access() != OpAccess::Write)
            .map(|u| u.register() as i32 - Register::ST0 as i32 + 1)
            .max()
            .unwrap_or(0);
        let inc = last.fpu_stack_increment_info().increment();
        let depth = self.x87_depth - inc; // a push decrements TOP: increment -1
        if (self.x87_depth < needed || !(0..=8).contains(&depth)) && self.rng.chance(97) {
            return None;
        }
        self.x87_depth = depth.clamp(0, 8);
        Some(group)
    }

    /// A valid MXCSR value stored and loaded (`ldmxcsr`/`vldmxcsr`), or stored.
    fn mxcsr_group(&mut self) -> Gen {
        let disp = self.data_disp(4, 4);
        let m = MemoryOperand::with_base_displ(Register::RDI, disp);
        if self.rng.chance(25) {
            let store = if self.campaign == Campaign::X87Sse || self.rng.chance(50) {
                Code::Stmxcsr_m32
            } else {
                Code::VEX_Vstmxcsr_m32
            };
            return Ok(vec![Instruction::with1(store, m)?]);
        }
        let value = random_mxcsr(self.rng);
        let load = if self.campaign == Campaign::X87Sse || self.rng.chance(50) {
            Code::Ldmxcsr_m32
        } else {
            Code::VEX_Vldmxcsr_m32
        };
        Ok(vec![
            Instruction::with2(Code::Mov_rm32_imm32, m, value)?,
            Instruction::with1(load, m)?,
        ])
    }

    /// A valid x87 control word loaded with `fldcw` (or the current one stored and
    /// loaded back).
    fn fcw_group(&mut self) -> Gen {
        let disp = self.data_disp(2, 2);
        let m = MemoryOperand::with_base_displ(Register::RDI, disp);
        if self.rng.chance(20) {
            return Ok(vec![
                Instruction::with1(Code::Fnstcw_m2byte, m)?,
                Instruction::with1(Code::Fldcw_m2byte, m)?,
            ]);
        }
        let value = random_fcw(self.rng);
        Ok(vec![
            Instruction::with2(Code::Mov_rm16_imm16, m, u32::from(value))?,
            Instruction::with1(Code::Fldcw_m2byte, m)?,
        ])
    }

    /// A few integer instructions: values and flags moving between the units.
    fn int_group(&mut self) -> Gen {
        let alu = ["Add", "Sub", "Xor", "And", "Or", "Cmp", "Adc", "Sbb"];
        Ok(match self.rng.below(10) {
            0 => vec![Instruction::with2(
                Code::Mov_r64_imm64,
                self.gpr(),
                self.rng.interesting(),
            )?],
            1 => {
                let op = self.rng.pick(&alu);
                vec![Instruction::with2(
                    code(&format!("{op}_rm64_r64")),
                    self.gpr(),
                    self.gpr(),
                )?]
            }
            2 => {
                let op = self.rng.pick(&alu);
                let r = self.gpr();
                vec![Instruction::with2(
                    code(&format!("{op}_rm32_imm32")),
                    sub_reg(r, 32),
                    self.rng.interesting() as u32,
                )?]
            }
            3 => vec![Instruction::with2(
                Code::Test_rm64_r64,
                self.gpr(),
                self.gpr(),
            )?],
            4 => {
                let cc = self.rng.pick(&CONDITIONS);
                let r = self.gpr();
                vec![Instruction::with1(
                    code(&format!("Set{cc}_rm8")),
                    sub_reg(r, 8),
                )?]
            }
            5 => {
                let cc = self.rng.pick(&CONDITIONS);
                vec![Instruction::with2(
                    code(&format!("Cmov{cc}_r64_rm64")),
                    self.gpr(),
                    self.gpr(),
                )?]
            }
            6 => {
                let m = MemoryOperand::with_base_displ(Register::RDI, self.data_disp(8, 8));
                if self.rng.chance(50) {
                    vec![Instruction::with2(Code::Mov_r64_rm64, self.gpr(), m)?]
                } else {
                    vec![Instruction::with2(Code::Mov_rm64_r64, m, self.gpr())?]
                }
            }
            7 => vec![
                Instruction::with(Code::Pushfq),
                Instruction::with1(Code::Pop_r64, self.gpr())?,
            ],
            8 => {
                // All status flags from data: scratch = src & STATUS_FLAGS; push; popfq.
                let scratch = self.gpr();
                vec![
                    Instruction::with2(Code::Mov_r64_rm64, scratch, self.gpr())?,
                    Instruction::with2(Code::And_rm64_imm32, scratch, STATUS_FLAGS as i32)?,
                    Instruction::with1(Code::Push_r64, scratch)?,
                    Instruction::with(Code::Popfq),
                ]
            }
            _ => {
                let op = self.rng.pick(&["Inc", "Dec", "Neg", "Not"]);
                let r = self.gpr();
                vec![Instruction::with1(
                    code(&format!("{op}_rm32")),
                    sub_reg(r, 32),
                )?]
            }
        })
    }

    /// A call of the native function: `call rel32`, or `call reg` after a RIP-relative
    /// `lea`; then `push rax; pop rax` overwrites the return address left below rsp (under
    /// the Vm it is the translated return site the exec broker put there).
    fn native_call(&mut self) -> Gen {
        let mut group = if self.rng.chance(50) {
            vec![Instruction::with_branch(Code::Call_rel32_64, self.stub)?]
        } else {
            let r = self.gpr();
            vec![
                Instruction::with2(
                    Code::Lea_r64_m,
                    r,
                    MemoryOperand::with_base_displ(Register::RIP, self.stub as i64),
                )?,
                Instruction::with1(Code::Call_rm64, r)?,
            ]
        };
        group.push(Instruction::with1(Code::Push_r64, Register::RAX)?);
        group.push(Instruction::with1(Code::Pop_r64, Register::RAX)?);
        Ok(group)
    }

    /// One group of instructions from the mix of this campaign (never a branch).
    fn group(&mut self) -> Vec<Instruction> {
        let t = self.tables;
        for _ in 0..10_000 {
            let pick = self.rng.below(100);
            let group = match (self.campaign, pick) {
                (_, 0..=8) => self.int_group().ok(),
                (_, 9..=10) => self.mxcsr_group().ok(),
                (_, 11..=12) => self.fcw_group().ok(),
                (Campaign::X87Sse, 13..=55) => self.draw_from(&t.x87),
                (Campaign::X87Sse, _) => self.draw_from(&t.sse),
                (Campaign::Avx2, 13..=30) => self.draw_from(&t.x87),
                (Campaign::Avx2, 31..=45) => self.draw_from(&t.sse),
                (Campaign::Avx2, _) => self.draw_from(&t.avx),
                (Campaign::Avx512, 13..=20) => self.draw_from(&t.x87),
                (Campaign::Avx512, 21..=26) => self.draw_from(&t.sse),
                (Campaign::Avx512, 27..=38) => self.draw_from(&t.avx),
                (Campaign::Avx512, 39..=53) => self.draw_from(&t.kmask),
                (Campaign::Avx512, 54..=66) => self.draw_from(&t.kcmp),
                (Campaign::Avx512, _) => self.draw_from(&t.evex),
            };
            if let Some(group) = group {
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
            self.campaign
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
        let cc = self.rng.pick(&CONDITIONS);
        code(&format!(
            "J{cc}_{}",
            if rel32 { "rel32_64" } else { "rel8_64" }
        ))
    }

    /// A sequence of `10..=60` instructions (the final `ret` not counted).
    fn sequence(&mut self) -> Vec<Item> {
        let target = self.rng.range(10, 60) as usize;
        let mut items = Vec::new();
        let mut count = 0;
        while count < target {
            let roll = self.rng.below(100);
            if roll < 10 {
                items.push(Item::JumpNext(self.jump_code(true)));
                count += 1;
            } else if roll < 15 {
                let code = self.jump_code(false);
                let skipped = loop {
                    let g = self.group();
                    if g.len() == 1 {
                        break g[0];
                    }
                };
                items.push(Item::JccSkip(code, skipped));
                count += 2;
            } else if roll < 18 {
                let g = self.native_call().expect("native call group");
                count += g.len();
                items.push(Item::Plain(g));
            } else {
                let g = self.group();
                count += g.len();
                items.push(Item::Plain(g));
            }
        }
        items
    }

    /// The native function: 0-5 groups of the same mix, then `ret`.
    fn stub(&mut self) -> Vec<Instruction> {
        let mut out = Vec::new();
        for _ in 0..self.rng.below(6) {
            out.extend(self.group());
        }
        out.push(Instruction::with(Code::Retnq));
        out
    }
}

fn random_mxcsr(rng: &mut Rng) -> u32 {
    if rng.chance(30) {
        return 0x1f80;
    }
    let mut m = 0x1f80 | ((rng.below(4) as u32) << 13);
    if rng.chance(50) {
        m |= rng.next_u64() as u32 & 0x3f;
    }
    if rng.chance(25) {
        m |= 0x8000; // FTZ
    }
    if rng.chance(25) {
        m |= 0x40; // DAZ
    }
    m
}

/// Every exception masked; random precision (24, 53, 64 bits) and rounding.
fn random_fcw(rng: &mut Rng) -> u16 {
    if rng.chance(30) {
        return 0x37f;
    }
    let pc = rng.pick(&[0u16, 2, 3]);
    let rc = rng.below(4) as u16;
    0x7f | (pc << 8) | (rc << 10) | if rng.chance(10) { 1 << 12 } else { 0 }
}

/// Encodes `items` at `base`, then `ret`.
fn encode(items: &[Item], base: u64) -> Result<Vec<u8>, IcedError> {
    let mut enc = Encoder::new(64);
    let mut out = Vec::new();
    let emit = |enc: &mut Encoder, ins: &Instruction, out: &mut Vec<u8>| {
        enc.encode(ins, base + out.len() as u64)?;
        out.extend_from_slice(&enc.take_buffer());
        Ok::<(), IcedError>(())
    };
    // Length of a branch of this code (independent of the target for a fixed code).
    let branch_len = |code: Code| -> Result<usize, IcedError> {
        let mut e = Encoder::new(64);
        e.encode(&Instruction::with_branch(code, base)?, base)
    };
    for item in items {
        match item {
            Item::Plain(group) => {
                for ins in group {
                    emit(&mut enc, ins, &mut out)?;
                }
            }
            Item::JumpNext(code) => {
                let ip = base + out.len() as u64;
                let len = branch_len(*code)? as u64;
                emit(
                    &mut enc,
                    &Instruction::with_branch(*code, ip + len)?,
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
                    &mut out,
                )?;
                emit(&mut enc, skipped, &mut out)?;
            }
        }
    }
    emit(&mut enc, &Instruction::with(Code::Retnq), &mut out)?;
    Ok(out)
}

fn encode_plain(ins: &[Instruction], base: u64) -> Result<Vec<u8>, IcedError> {
    let mut enc = Encoder::new(64);
    let mut out = Vec::new();
    for i in ins {
        enc.encode(i, base + out.len() as u64)?;
        out.extend_from_slice(&enc.take_buffer());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Initial states.
// ---------------------------------------------------------------------------------------

/// Everything a sequence starts from, independent of where the buffers are.
struct Case {
    /// rdi and rsp are filled in per run.
    state: VState,
    data: Vec<u8>,
    rip_data: Vec<u8>,
    stack: Vec<u8>,
    /// Valid x87 registers at the start (the generator's starting depth).
    x87_depth: i32,
}

fn random_case(rng: &mut Rng, comps: u64) -> Case {
    let mut s = VState::zeroed();
    for g in &mut s.gpr {
        *g = rng.interesting();
    }
    s.rflags = 0x202 | (rng.next_u64() & STATUS_FLAGS);
    s.mxcsr = random_mxcsr(rng);
    let mut depth = 0;
    if rng.chance(20) {
        // x87 in its initial state (callbacks then take the engine's fast path).
        s.fcw = 0x37f;
    } else {
        s.fcw = random_fcw(rng);
        depth = rng.below(9) as i32;
        let top = rng.below(8) as u16;
        let mut fsw = top << 11;
        if rng.chance(50) {
            fsw |= rng.next_u64() as u16 & 0x4700; // C0-C3
        }
        if rng.chance(30) {
            fsw |= rng.next_u64() as u16 & 0x3f; // sticky exception flags (masked)
        }
        s.fsw = fsw;
        for i in 0..8 {
            let physical = (top as usize + i) % 8;
            if (i as i32) < depth {
                s.ftw |= 1 << physical;
                s.st[i] = rng.x87_value();
            } else if rng.chance(50) {
                s.st[i] = rng.x87_value();
            }
        }
    }
    let (ymm_init, zmm_hi_init, hi16_init) = (rng.chance(15), rng.chance(15), rng.chance(15));
    for (i, z) in s.zmm.iter_mut().enumerate() {
        for (l, lane) in z.chunks_exact_mut(8).enumerate() {
            let keep = match (i, l) {
                (16.., _) => comps & HI16_ZMM != 0 && !hi16_init,
                (_, 0..=1) => true,
                (_, 2..=3) => comps & AVX != 0 && !ymm_init,
                _ => comps & ZMM_HI256 != 0 && !zmm_hi_init,
            };
            if keep {
                lane.copy_from_slice(&rng.vector_lane().to_le_bytes());
            }
        }
    }
    if comps & OPMASK != 0 && !rng.chance(15) {
        for k in &mut s.k {
            *k = rng.interesting();
        }
    }
    let mut fill = |len: usize| {
        let mut v = vec![0u8; len];
        for chunk in v.chunks_exact_mut(16) {
            match rng.below(4) {
                0 => chunk[..10].copy_from_slice(&rng.x87_value()),
                1 => {
                    chunk[..8].copy_from_slice(&rng.interesting().to_le_bytes());
                    chunk[8..].copy_from_slice(&rng.interesting().to_le_bytes());
                }
                _ => {
                    chunk[..8].copy_from_slice(&rng.vector_lane().to_le_bytes());
                    chunk[8..].copy_from_slice(&rng.vector_lane().to_le_bytes());
                }
            }
        }
        v
    };
    let data = fill(DATA_LEN);
    let rip_data = fill(RIP_DATA_LEN);
    let stack = fill(STACK_INIT);
    Case {
        state: s,
        data,
        rip_data,
        stack,
        x87_depth: depth,
    }
}

fn describe_case(case: &Case, comps: u64) -> String {
    let s = &case.state;
    let mut out = String::new();
    for (i, name) in GPR_NAMES_HW.iter().enumerate() {
        if i != RDI && i != RSP {
            let _ = write!(out, "{name}={:#x} ", s.gpr[i]);
        }
    }
    let _ = write!(
        out,
        "\n  rflags={:#x} mxcsr={:#x} fcw={:#x} fsw={:#x} (top {}) ftw={:#04x}",
        s.rflags,
        s.mxcsr,
        s.fcw,
        s.fsw,
        (s.fsw >> 11) & 7,
        s.ftw
    );
    for (i, st) in s.st.iter().enumerate() {
        let _ = write!(
            out,
            "{}st{i}={}",
            if i % 4 == 0 { "\n  " } else { " " },
            hex_f80(st)
        );
    }
    if comps & OPMASK != 0 {
        let _ = write!(out, "\n  k0-7:");
        for k in &s.k {
            let _ = write!(out, " {k:#x}");
        }
    }
    out.push_str("\n  (vector registers, buffers: random from the seed)");
    out
}

// ---------------------------------------------------------------------------------------
// The two runs.
// ---------------------------------------------------------------------------------------

#[repr(C, align(64))]
struct DataBuf([u8; DATA_LEN]);

impl StackBuf {
    /// The stack pointer the code is called with (16-byte aligned).
    fn test_rsp(&self) -> u64 {
        (self.0.as_ptr() as u64 + (STACK_LEN - STACK_TOP_RESERVE) as u64) & !15
    }

    fn below_rsp(&mut self) -> &mut [u8] {
        let end = (self.test_rsp() - self.0.as_ptr() as u64) as usize;
        &mut self.0[end - STACK_INIT..end]
    }

    /// `[test_rsp - 8 - 128, test_rsp - 8)`: the red zone of the called code.
    fn red_zone(&self) -> Vec<u8> {
        let end = (self.test_rsp() - 8 - self.0.as_ptr() as u64) as usize;
        self.0[end - 128..end].to_vec()
    }
}

/// One RWX mapping: the code (instrumented), the native function (not), the RIP-relative
/// data area.
struct Region(*mut u8);

impl Region {
    fn new() -> Region {
        // SAFETY: anonymous private mapping, no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REGION_LEN,
                libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap of an RWX region: {}",
            std::io::Error::last_os_error()
        );
        Region(p.cast())
    }

    fn code(&self) -> u64 {
        self.0 as u64
    }

    fn stub(&self) -> u64 {
        self.code() + CODE_LEN as u64
    }

    fn rip_data(&self) -> u64 {
        self.stub() + STUB_LEN as u64
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is REGION_LEN bytes, writable, owned by self; nothing executes
        // it while we write (single thread per region).
        unsafe { std::slice::from_raw_parts_mut(self.0, REGION_LEN) }
    }

    fn write(&mut self, offset: usize, len: usize, bytes: &[u8]) {
        assert!(bytes.len() <= len, "{} bytes do not fit {len}", bytes.len());
        let area = &mut self.bytes()[offset..offset + len];
        area.fill(0xcc);
        area[..bytes.len()].copy_from_slice(bytes);
    }

    fn set_rip_data(&mut self, data: &[u8]) {
        let at = CODE_LEN + STUB_LEN;
        self.bytes()[at..at + RIP_DATA_LEN].copy_from_slice(data);
    }

    fn get_rip_data(&mut self) -> Vec<u8> {
        let at = CODE_LEN + STUB_LEN;
        self.bytes()[at..at + RIP_DATA_LEN].to_vec()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: mapped by Region::new with this length, unmapped once.
        unsafe { libc::munmap(self.0.cast(), REGION_LEN) };
    }
}

/// The final state of one run, rdi and rsp made relative to their buffers.
struct Outcome {
    state: VState,
    data: Vec<u8>,
    rip_data: Vec<u8>,
    red_zone: Vec<u8>,
}

/// Callbacks a campaign runs under.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hooks {
    None = 0,
    /// A do-nothing callback before every instruction (direct-call path) and after every
    /// instruction (general path: it reads its FprState), block entry/exit events, and
    /// memory recording with a callback on every access.
    Noop = 1,
    /// Before every instruction and at block entry and exit: libc memcpy/strlen on host
    /// buffers and the x87 stack (an invalid-operation flag raised and left in the FSW).
    HostWork = 2,
    /// `HostWork` plus f64 computations raising MXCSR flags (invalid, divide-by-zero,
    /// underflow, precision).
    HostMxcsrFlags = 3,
}

/// Calls of `HostWork::run`, all campaigns together (a campaign checks that it made some).
static HOST_WORK_CALLS: AtomicU64 = AtomicU64::new(0);

/// What a callback does to look like ordinary Rust code.
struct HostWork {
    src: Vec<u8>,
    dst: Vec<u8>,
    text: Vec<u8>,
    calls: usize,
    raise_mxcsr_flags: bool,
}

impl HostWork {
    fn new(raise_mxcsr_flags: bool) -> HostWork {
        let mut text = vec![b'q'; 1000];
        text.push(0);
        HostWork {
            src: (0..4096u32).map(|i| i as u8).collect(),
            dst: vec![0; 4096],
            text,
            calls: 0,
            raise_mxcsr_flags,
        }
    }

    fn run(&mut self) {
        self.calls += 1;
        HOST_WORK_CALLS.fetch_add(1, Ordering::Relaxed);
        let len = [7usize, 64, 200, 1000, 4096][self.calls % 5];
        // SAFETY: both buffers are 4096 bytes and do not overlap; `text` is NUL-terminated.
        let n = unsafe {
            libc::memcpy(self.dst.as_mut_ptr().cast(), self.src.as_ptr().cast(), len);
            libc::strlen(self.text.as_ptr().cast())
        };
        black_box((n, self.dst[len - 1]));
        let mut out = 0f64;
        // SAFETY: pushes two values on the x87 stack and pops both (the stack is empty
        // before and after, as the ABI wants); writes one f64 to `out`.
        unsafe {
            std::arch::asm!(
                "fld1",
                "fstp st(0)",
                "fldz",
                "fdiv st(0), st(0)", // 0/0: invalid operation, IE stays set in the FSW
                "fstp qword ptr [{out}]",
                out = in(reg) &mut out,
                out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
                out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
                options(nostack),
            );
        }
        black_box(out);
        if self.raise_mxcsr_flags {
            let tiny = black_box(1e-300f64) * black_box(1e-300f64); // underflow, precision
            let third = black_box(1.0f64) / black_box(3.0f64); // precision
            let inf = black_box(1.0f64) / black_box(0.0f64); // divide by zero
            let nan = black_box(-1.0f64).sqrt(); // invalid
            black_box((tiny, third, inf, nan));
        }
    }
}

fn install_hooks(vm: &mut Vm, hooks: Hooks) {
    match hooks {
        Hooks::None => {}
        Hooks::Noop => {
            vm.add_code_cb(
                InstPosition::PreInst,
                |_vm: &mut VmRef<'_>, _g: &mut GprState, _f: &mut FprState| VmAction::Continue,
                PRIORITY_DEFAULT,
            )
            .expect("pre callback");
            vm.add_code_cb(
                InstPosition::PostInst,
                |_vm: &mut VmRef<'_>, _g: &mut GprState, f: &mut FprState| {
                    black_box(f.mxcsr);
                    VmAction::Continue
                },
                PRIORITY_DEFAULT,
            )
            .expect("post callback");
            vm.add_vm_event_cb(
                VmEvent::BASIC_BLOCK_ENTRY | VmEvent::BASIC_BLOCK_EXIT,
                |_v, _s, _g, _f| VmAction::Continue,
            )
            .expect("block callback");
            vm.add_mem_access_cb(
                MemoryAccessType::READ_WRITE,
                |vm, _g, _f| {
                    black_box(vm.inst_memory_access().len());
                    VmAction::Continue
                },
                PRIORITY_DEFAULT,
            )
            .expect("memory callback");
        }
        Hooks::HostWork | Hooks::HostMxcsrFlags => {
            let flags = hooks == Hooks::HostMxcsrFlags;
            let mut work = HostWork::new(flags);
            vm.add_code_cb(
                InstPosition::PreInst,
                move |_vm: &mut VmRef<'_>, _g: &mut GprState, _f: &mut FprState| {
                    work.run();
                    VmAction::Continue
                },
                PRIORITY_DEFAULT,
            )
            .expect("pre callback");
            let mut work = HostWork::new(flags);
            vm.add_vm_event_cb(
                VmEvent::BASIC_BLOCK_ENTRY | VmEvent::BASIC_BLOCK_EXIT,
                move |_v, _s, _g, _f| {
                    work.run();
                    VmAction::Continue
                },
            )
            .expect("block callback");
        }
    }
}

struct Runner {
    campaign: Campaign,
    hooks: Hooks,
    comps: u64,
    lay: &'static XLayout,
    vm: Vm,
    region: Region,
    native_data: Box<DataBuf>,
    vm_data: Box<DataBuf>,
    native_stack: Box<StackBuf>,
    vm_stack: Box<StackBuf>,
    input: Box<Harness>,
    output: Box<Harness>,
}

impl Runner {
    fn new(campaign: Campaign, hooks: Hooks) -> Runner {
        let region = Region::new();
        let vm = Runner::fresh_vm(&region, hooks);
        Runner {
            campaign,
            hooks,
            comps: campaign.comps(),
            lay: layout().expect("campaigns run only with XSAVE"),
            vm,
            region,
            native_data: Box::new(DataBuf([0; DATA_LEN])),
            vm_data: Box::new(DataBuf([0; DATA_LEN])),
            native_stack: Box::new(StackBuf([0; STACK_LEN])),
            vm_stack: Box::new(StackBuf([0; STACK_LEN])),
            input: Harness::boxed(),
            output: Harness::boxed(),
        }
    }

    fn fresh_vm(region: &Region, hooks: Hooks) -> Vm {
        let mut vm = Vm::new();
        vm.add_instrumented_range(region.code(), region.code() + CODE_LEN as u64)
            .expect("instrument the code");
        install_hooks(&mut vm, hooks);
        vm
    }

    /// Replaces the Vm by a new one (after the engine panicked, the old one is not trusted).
    fn reset_vm(&mut self) {
        self.vm = Runner::fresh_vm(&self.region, self.hooks);
    }

    fn generator<'a>(&self, rng: &'a mut Rng, x87_depth: i32) -> Generator<'a> {
        Generator {
            rng,
            campaign: self.campaign,
            tables: tables(),
            code_base: self.region.code(),
            stub: self.region.stub(),
            rip_data: self.region.rip_data(),
            x87_depth,
            encoder: Encoder::new(64),
            info: InstructionInfoFactory::new(),
        }
    }

    /// Writes the code and the native function, and drops the Vm's translations.
    fn load(&mut self, code: &[u8], stub: &[u8]) {
        self.region.write(0, CODE_LEN, code);
        self.region.write(CODE_LEN, STUB_LEN, stub);
        let base = self.region.code();
        self.vm.clear_cache(base, base + CODE_LEN as u64);
    }

    /// Runs the loaded code natively (`alternate`: with the Vm's buffers, to check that
    /// nothing depends on where they are).
    fn run_native(&mut self, case: &Case, alternate: bool) -> Outcome {
        let (data, stack) = if alternate {
            (&mut self.vm_data, &mut self.vm_stack)
        } else {
            (&mut self.native_data, &mut self.native_stack)
        };
        data.0.copy_from_slice(&case.data);
        stack.below_rsp().copy_from_slice(&case.stack);
        self.region.set_rip_data(&case.rip_data);
        let data_base = data.0.as_ptr() as u64;
        let rsp = stack.test_rsp();
        let input = &mut self.input;
        input.gpr = case.state.gpr;
        input.gpr[RDI] = data_base + RDI_OFFSET as u64;
        input.gpr[RSP] = rsp;
        input.rflags = case.state.rflags;
        input.xsave_mask = self.lay.rfbm;
        case.state
            .write_xsave(self.lay, self.comps, &mut input.xsave);
        self.output.xsave.fill(0);
        self.output.xsave_mask = self.lay.rfbm;
        set_phase(Phase::Native);
        // SAFETY: the harness saves and restores the host's callee-saved registers, stack
        // pointer, MXCSR and x87 control word; the image it loads has a valid header and
        // MXCSR; the code only accesses the data buffer through rdi, the region
        // RIP-relatively and the test stack through balanced pushes and calls, then returns.
        unsafe {
            vec_run_native(&*self.input, &mut *self.output, self.region.0);
        }
        set_phase(Phase::Idle);
        let mut state = VState::zeroed();
        state.gpr = self.output.gpr;
        state.gpr[RDI] = state.gpr[RDI].wrapping_sub(data_base);
        state.gpr[RSP] = state.gpr[RSP].wrapping_sub(rsp);
        state.rflags = self.output.rflags;
        state.read_xsave(self.lay, &self.output.xsave);
        let (data, stack) = if alternate {
            (&self.vm_data, &self.vm_stack)
        } else {
            (&self.native_data, &self.native_stack)
        };
        Outcome {
            state,
            data: data.0.to_vec(),
            rip_data: self.region.get_rip_data(),
            red_zone: stack.red_zone(),
        }
    }

    fn run_vm(&mut self, case: &Case) -> Result<Outcome, String> {
        self.vm_data.0.copy_from_slice(&case.data);
        self.vm_stack.below_rsp().copy_from_slice(&case.stack);
        self.region.set_rip_data(&case.rip_data);
        let data_base = self.vm_data.0.as_ptr() as u64;
        let rsp = self.vm_stack.test_rsp();
        let mut gpr = case.state.gpr;
        gpr[RDI] = data_base + RDI_OFFSET as u64;
        gpr[RSP] = rsp;
        {
            let g = self.vm.gpr_state_mut();
            gprs_to_vm(&gpr, g);
            g.eflags = case.state.rflags;
            simulate_call(g, FAKE_RETURN_ADDRESS, &[]);
        }
        case.state.write_fpr(self.comps, self.vm.fpr_state_mut());
        // The host's MXCSR carries whatever flags the test's own f64 code raised; start every
        // run from the same one (the engine compares the guest's with it).
        set_host_mxcsr(HOST_MXCSR);
        set_phase(Phase::Vm);
        let code = self.region.code();
        let vm = &mut self.vm;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            vm.run(code, FAKE_RETURN_ADDRESS)
        }));
        set_phase(Phase::Idle);
        match result {
            Err(panic) => return Err(format!("{ENGINE_PANIC}: {}", panic_message(&*panic))),
            Ok(Err(e)) => return Err(format!("vm.run failed: {e} ({e:?})")),
            Ok(Ok(())) => {}
        }
        let mut state = VState::zeroed();
        state.gpr = gprs_from_vm(self.vm.gpr_state());
        state.gpr[RDI] = state.gpr[RDI].wrapping_sub(data_base);
        state.gpr[RSP] = state.gpr[RSP].wrapping_sub(rsp);
        state.rflags = self.vm.gpr_state().eflags;
        state.read_fpr(self.vm.fpr_state());
        Ok(Outcome {
            state,
            data: self.vm_data.0.to_vec(),
            rip_data: self.region.get_rip_data(),
            red_zone: self.vm_stack.red_zone(),
        })
    }

    /// Runs the loaded code both ways; the differences, empty when equal.
    fn differences(&mut self, case: &Case) -> Vec<String> {
        let native = self.run_native(case, false);
        match self.run_vm(case) {
            Ok(vm) => compare(self.comps, &native, &vm, "vm"),
            Err(e) => vec![e],
        }
    }

    fn check(&mut self, items: &[Item], stub: &[u8], case: &Case) -> Vec<String> {
        let bytes = encode(items, self.region.code()).expect("generated sequences encode");
        self.load(&bytes, stub);
        self.differences(case)
    }
}

/// How `run_vm` reports a panic of the engine.
const ENGINE_PANIC: &str = "the engine panicked in vm.run";

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(not a string)".to_string()
    }
}

/// The host MXCSR during Vm runs: a fresh thread's (so a third of the cases start with the
/// guest's equal to it).
const HOST_MXCSR: u32 = 0x1f80;

fn set_host_mxcsr(value: u32) {
    // SAFETY: loads a valid MXCSR (every exception masked) from a local.
    unsafe {
        std::arch::asm!("ldmxcsr [{}]", in(reg) &value, options(nostack, readonly));
    }
}

fn compare(comps: u64, native: &Outcome, other: &Outcome, what: &str) -> Vec<String> {
    let (n, v) = (&native.state, &other.state);
    let mut diffs = Vec::new();
    for (i, name) in GPR_NAMES_HW.iter().enumerate() {
        if n.gpr[i] != v.gpr[i] {
            let rel = match i {
                RDI => " (relative to the data buffer)",
                RSP => " (relative to the initial rsp)",
                _ => "",
            };
            diffs.push(format!(
                "{name}{rel}: native {:#018x}, {what} {:#018x}",
                n.gpr[i], v.gpr[i]
            ));
        }
    }
    if n.rflags & FLAGS_MASK != v.rflags & FLAGS_MASK {
        diffs.push(format!(
            "rflags & {FLAGS_MASK:#x}: native {:#x}, {what} {:#x}",
            n.rflags & FLAGS_MASK,
            v.rflags & FLAGS_MASK
        ));
    }
    if n.mxcsr != v.mxcsr {
        diffs.push(format!(
            "mxcsr: native {:#x}, {what} {:#x} (xor {:#x})",
            n.mxcsr,
            v.mxcsr,
            n.mxcsr ^ v.mxcsr
        ));
    }
    if n.fcw != v.fcw {
        diffs.push(format!("x87 fcw: native {:#x}, {what} {:#x}", n.fcw, v.fcw));
    }
    if n.fsw != v.fsw {
        diffs.push(format!(
            "x87 fsw: native {:#x}, {what} {:#x} (xor {:#x})",
            n.fsw,
            v.fsw,
            n.fsw ^ v.fsw
        ));
    }
    if n.ftw != v.ftw {
        diffs.push(format!(
            "x87 ftw (abridged): native {:#04x}, {what} {:#04x}",
            n.ftw, v.ftw
        ));
    }
    let top = ((n.fsw >> 11) & 7) as usize;
    for i in 0..8 {
        if n.st[i] != v.st[i] {
            let valid = n.ftw & (1 << ((top + i) % 8)) != 0;
            diffs.push(format!(
                "st{i}{}: native {}, {what} {}",
                if valid { "" } else { " (empty)" },
                hex_f80(&n.st[i]),
                hex_f80(&v.st[i])
            ));
        }
    }
    let (width, count, reg) = if comps & AVX512_STATE != 0 {
        (64, 32, "zmm")
    } else if comps & AVX != 0 {
        (32, 16, "ymm")
    } else {
        (16, 16, "xmm")
    };
    for i in 0..count {
        let (a, b) = (&n.zmm[i][..width], &v.zmm[i][..width]);
        if a != b {
            let mut parts = Vec::new();
            for (lo, hi, name) in [
                (0, 16, "bits 0-127"),
                (16, 32, "128-255"),
                (32, 64, "256-511"),
            ] {
                if hi <= width && a[lo..hi] != b[lo..hi] {
                    parts.push(name);
                }
            }
            diffs.push(format!(
                "{reg}{i} (differs in {}): native {}, {what} {}",
                parts.join(", "),
                hex_le(a),
                hex_le(b)
            ));
        }
    }
    if comps & OPMASK != 0 {
        for i in 0..8 {
            if n.k[i] != v.k[i] {
                diffs.push(format!(
                    "k{i}: native {:#018x}, {what} {:#018x}",
                    n.k[i], v.k[i]
                ));
            }
        }
    }
    let areas = [
        (
            "data",
            &native.data,
            &other.data,
            -(RDI_OFFSET as i64),
            "rdi",
        ),
        ("rip data", &native.rip_data, &other.rip_data, 0, "area"),
        ("red zone", &native.red_zone, &other.red_zone, -136, "rsp"),
    ];
    for (name, a, b, base, rel) in areas {
        for (off, (x, y)) in a.chunks(8).zip(b.chunks(8)).enumerate() {
            if x != y {
                diffs.push(format!(
                    "{name} at {rel}{:+}: native {}, {what} {}",
                    off as i64 * 8 + base,
                    hex_le(x),
                    hex_le(y)
                ));
            }
        }
    }
    diffs
}

fn hex_f80(v: &[u8; 10]) -> String {
    format!(
        "{:04x}_{:016x}",
        u16::from_le_bytes([v[8], v[9]]),
        u64::from_le_bytes(v[..8].try_into().expect("8 bytes"))
    )
}

// ---------------------------------------------------------------------------------------
// Crash reporting: a fatal signal while a campaign runs names the seed and the sequence.
// ---------------------------------------------------------------------------------------

/// One slot per (campaign, hooks) test; a thread runs one test at a time.
const SLOTS: usize = 16;
static SLOT_SEED: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static SLOT_INDEX: [AtomicU64; SLOTS] = [const { AtomicU64::new(u64::MAX) }; SLOTS];
static SLOT_PHASE: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

thread_local! {
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(SLOTS - 1) };
}

fn slot_of(campaign: Campaign, hooks: Hooks) -> usize {
    campaign as usize * 4 + hooks as usize
}

fn slot_name(slot: usize) -> &'static [u8] {
    const NAMES: [&[u8]; 12] = [
        b"X87Sse",
        b"X87Sse+noop callbacks",
        b"X87Sse+host-work callbacks",
        b"X87Sse+mxcsr-flag callbacks",
        b"Avx2",
        b"Avx2+noop callbacks",
        b"Avx2+host-work callbacks",
        b"Avx2+mxcsr-flag callbacks",
        b"Avx512",
        b"Avx512+noop callbacks",
        b"Avx512+host-work callbacks",
        b"Avx512+mxcsr-flag callbacks",
    ];
    NAMES.get(slot).copied().unwrap_or(b"generator check")
}

fn set_phase(phase: Phase) {
    let slot = SLOT.with(|s| s.get());
    SLOT_PHASE[slot].store(phase as u64, Ordering::SeqCst);
}

extern "C" fn on_fatal_signal(sig: libc::c_int) {
    let mut buf = [0u8; 18];
    let mut dec = [0u8; 20];
    for slot in 0..SLOTS {
        let index = SLOT_INDEX[slot].load(Ordering::SeqCst);
        if index == u64::MAX {
            continue;
        }
        write_stderr(b"\nrandom_vector: fatal signal ");
        write_stderr(dec_into(&mut dec, sig as u64));
        write_stderr(b" in campaign ");
        write_stderr(slot_name(slot));
        write_stderr(b", QBDI_TEST_SEED=");
        write_stderr(hex_into(&mut buf, SLOT_SEED[slot].load(Ordering::SeqCst)));
        write_stderr(b", sequence index ");
        write_stderr(dec_into(&mut dec, index));
        write_stderr(match SLOT_PHASE[slot].load(Ordering::SeqCst) {
            1 => b" (native run)\n".as_slice(),
            2 => b" (vm run)\n",
            _ => b" (between runs)\n",
        });
    }
    let old = OLD_ACTIONS[sig as usize].load(Ordering::SeqCst) as *const libc::sigaction;
    // SAFETY: `old` is a leaked sigaction saved at installation (or null); sigaction is
    // async-signal-safe. Returning re-executes the faulting instruction under it.
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

fn sequence_seed(base: u64, campaign: Campaign, index: u64) -> u64 {
    splitmix64(base ^ splitmix64(index.wrapping_mul(5).wrapping_add(campaign as u64 + 0x100)))
}

/// Everything one sequence is made of.
struct Sequence {
    case: Case,
    items: Vec<Item>,
    stub: Vec<u8>,
}

fn make_sequence(runner: &Runner, seed: u64, index: u64) -> Sequence {
    let mut rng = Rng::new(sequence_seed(seed, runner.campaign, index));
    let case = random_case(&mut rng, runner.comps);
    let mut generator = runner.generator(&mut rng, case.x87_depth);
    let items = generator.sequence();
    let stub_ins = generator.stub();
    let stub = encode_plain(&stub_ins, runner.region.stub()).expect("the native function encodes");
    Sequence { case, items, stub }
}

/// Removes items one at a time while the sequence still fails; the native function is
/// emptied if it does not matter.
fn reduce(runner: &mut Runner, seq: &Sequence) -> (Vec<Item>, Vec<u8>) {
    let ret =
        encode_plain(&[Instruction::with(Code::Retnq)], runner.region.stub()).expect("ret encodes");
    let mut stub = seq.stub.clone();
    if !runner.check(&seq.items, &ret, &seq.case).is_empty() {
        stub = ret;
    }
    let mut items = seq.items.clone();
    let mut i = items.len();
    while i > 0 {
        i -= 1;
        let mut candidate = items.clone();
        candidate.remove(i);
        if !runner.check(&candidate, &stub, &seq.case).is_empty() {
            items = candidate;
        }
    }
    (items, stub)
}

fn run_campaign(campaign: Campaign, hooks: Hooks, count: u64) {
    if let Some(why) = campaign.unavailable() {
        eprintln!("random_vector: campaign {campaign:?} with {hooks:?} callbacks SKIPPED: {why}");
        return;
    }
    install_crash_reporter(on_fatal_signal);
    let slot = slot_of(campaign, hooks);
    SLOT.with(|s| s.set(slot));
    let seed = base_seed(DEFAULT_SEED);
    SLOT_SEED[slot].store(seed, Ordering::SeqCst);
    let mut runner = Runner::new(campaign, hooks);
    let started = std::time::Instant::now();
    let host_work_calls = HOST_WORK_CALLS.load(Ordering::Relaxed);
    for index in 0..count {
        SLOT_INDEX[slot].store(index, Ordering::SeqCst);
        let seq = make_sequence(&runner, seed, index);
        let bytes = encode(&seq.items, runner.region.code()).expect("generated sequences encode");
        runner.load(&bytes, &seq.stub);
        let diffs = runner.differences(&seq.case);
        if diffs.is_empty() {
            continue;
        }
        let code = runner.region.code();
        let mut report = format!(
            "random vector sequence {index} of campaign {campaign:?} with {hooks:?} callbacks \
             differs (QBDI_TEST_SEED={seed:#x}; set it to replay)\ninitial state (rdi = data \
             buffer + {RDI_OFFSET:#x}, rsp = test stack):\n  {}\ncode at {code:#x}:\n{}native \
             function at {:#x}:\n{}differences:\n",
            describe_case(&seq.case, runner.comps),
            disassemble(&bytes, code),
            runner.region.stub(),
            disassemble(&seq.stub, runner.region.stub()),
        );
        for d in &diffs {
            let _ = writeln!(report, "  {d}");
        }
        if diffs.iter().any(|d| d.starts_with(ENGINE_PANIC)) {
            let _ = writeln!(
                report,
                "the engine panicked: the sequence is reduced on a new Vm (a failure that needs \
                 the old Vm's history will not reproduce there)"
            );
            runner.reset_vm();
        }
        let (reduced, stub) = reduce(&mut runner, &seq);
        let reduced_bytes = encode(&reduced, code).expect("reduced sequences encode");
        let reduced_diffs = runner.check(&reduced, &stub, &seq.case);
        let _ = write!(
            report,
            "reduced sequence (same initial state):\n{}",
            disassemble(&reduced_bytes, code)
        );
        if stub.len() > 1 {
            let _ = writeln!(report, "with the native function above (it matters)");
        }
        if reduced_diffs.is_empty() {
            let _ = writeln!(
                report,
                "the reduced sequence no longer differs when run again: the failure depends on \
                 what the Vm ran before"
            );
        } else {
            let _ = writeln!(report, "differences of the reduced sequence:");
            for d in &reduced_diffs {
                let _ = writeln!(report, "  {d}");
            }
        }
        SLOT_INDEX[slot].store(u64::MAX, Ordering::SeqCst);
        panic!("{report}");
    }
    SLOT_INDEX[slot].store(u64::MAX, Ordering::SeqCst);
    if hooks == Hooks::Noop {
        assert!(
            runner.vm.direct_call_sites() > 0,
            "the no-op callback before each instruction is called directly (both callback \
             paths are tested)"
        );
    }
    if matches!(hooks, Hooks::HostWork | Hooks::HostMxcsrFlags) {
        assert!(
            HOST_WORK_CALLS.load(Ordering::Relaxed) > host_work_calls + count,
            "the host-work callbacks did not run"
        );
    }
    eprintln!(
        "random_vector: campaign {campaign:?} with {hooks:?} callbacks: {count} sequences in \
         {:.1?}",
        started.elapsed()
    );
}

#[test]
fn random_x87_sse_sequences_match_native_execution() {
    run_campaign(Campaign::X87Sse, Hooks::None, 12_000);
}

#[test]
fn random_avx2_fma_sequences_match_native_execution() {
    run_campaign(Campaign::Avx2, Hooks::None, 12_000);
}

#[test]
fn random_avx512_sequences_match_native_execution() {
    run_campaign(Campaign::Avx512, Hooks::None, 12_000);
}

#[test]
fn random_x87_sse_sequences_match_native_execution_with_noop_callbacks() {
    run_campaign(Campaign::X87Sse, Hooks::Noop, 2000);
}

#[test]
fn random_avx2_fma_sequences_match_native_execution_with_noop_callbacks() {
    run_campaign(Campaign::Avx2, Hooks::Noop, 2000);
}

#[test]
fn random_avx512_sequences_match_native_execution_with_noop_callbacks() {
    run_campaign(Campaign::Avx512, Hooks::Noop, 2000);
}

#[test]
fn random_x87_sse_sequences_match_native_execution_with_host_work_in_callbacks() {
    run_campaign(Campaign::X87Sse, Hooks::HostWork, 2000);
}

#[test]
fn random_avx2_fma_sequences_match_native_execution_with_host_work_in_callbacks() {
    run_campaign(Campaign::Avx2, Hooks::HostWork, 2000);
}

#[test]
fn random_avx512_sequences_match_native_execution_with_host_work_in_callbacks() {
    run_campaign(Campaign::Avx512, Hooks::HostWork, 2000);
}

#[test]
fn random_x87_sse_sequences_match_native_execution_with_callbacks_raising_mxcsr_flags() {
    run_campaign(Campaign::X87Sse, Hooks::HostMxcsrFlags, 2000);
}

#[test]
fn random_avx2_fma_sequences_match_native_execution_with_callbacks_raising_mxcsr_flags() {
    run_campaign(Campaign::Avx2, Hooks::HostMxcsrFlags, 2000);
}

#[test]
fn random_avx512_sequences_match_native_execution_with_callbacks_raising_mxcsr_flags() {
    run_campaign(Campaign::Avx512, Hooks::HostMxcsrFlags, 2000);
}

#[test]
#[ignore = "long campaign (50k sequences per campaign): run with --ignored"]
fn random_vector_long_campaign_matches_native_execution() {
    for campaign in [Campaign::X87Sse, Campaign::Avx2, Campaign::Avx512] {
        run_campaign(campaign, Hooks::None, 50_000);
    }
}

/// The generator and the harness, independent of the engine: every campaign's sequences
/// encode and decode back, use rdi only as a memory base and rsp only through balanced
/// pairs and calls, keep memory operands inside their buffers, cover the features the file
/// promises (masking, zeroing, broadcast, rounding, SAE, compressed disp8, RIP-relative,
/// zmm16-31, mask registers written and read, the x87 and SSE instructions listed), and run
/// natively twice, with buffers at different addresses, to the same final state.
#[test]
fn random_vector_generator_covers_its_mix_and_native_runs_are_stable() {
    let mut info = InstructionInfoFactory::new();
    let mut seen: HashSet<Mnemonic> = HashSet::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ran = Vec::new();
    for campaign in [Campaign::X87Sse, Campaign::Avx2, Campaign::Avx512] {
        if let Some(why) = campaign.unavailable() {
            eprintln!("random_vector: generator check of {campaign:?} SKIPPED: {why}");
            continue;
        }
        ran.push(campaign);
        let mut runner = Runner::new(campaign, Hooks::None);
        let (code, stub_base, rip) = (
            runner.region.code(),
            runner.region.stub(),
            runner.region.rip_data(),
        );
        for index in 0..400 {
            let seq = make_sequence(&runner, DEFAULT_SEED, index);
            let bytes = encode(&seq.items, code).expect("encode");
            let listing = disassemble(&bytes, code);
            let mut decoded: Vec<Instruction> =
                Decoder::with_ip(64, &bytes, code, DecoderOptions::NONE)
                    .into_iter()
                    .collect();
            assert!(decoded.iter().all(|i| !i.is_invalid()), "{listing}");
            assert_eq!(
                decoded.last().map(|i| i.code()),
                Some(Code::Retnq),
                "{listing}"
            );
            decoded.extend(Decoder::with_ip(
                64,
                &seq.stub,
                stub_base,
                DecoderOptions::NONE,
            ));
            for ins in &decoded {
                seen.insert(ins.mnemonic());
                let mut count = |what: &'static str| *counts.entry(what).or_default() += 1;
                let evex = ins.encoding() == EncodingKind::EVEX;
                if evex {
                    count("evex");
                }
                if ins.op_mask() != Register::None {
                    count("merge or zero masking");
                }
                if ins.zeroing_masking() {
                    count("zero masking");
                }
                if ins.is_broadcast() {
                    count("broadcast");
                }
                if ins.rounding_control() != RoundingControl::None {
                    count("embedded rounding");
                }
                if ins.suppress_all_exceptions() {
                    count("sae");
                }
                let is_stack_op = matches!(
                    ins.mnemonic(),
                    Mnemonic::Push | Mnemonic::Pop | Mnemonic::Pushfq | Mnemonic::Popfq
                ) || ins.is_call_near()
                    || ins.is_call_near_indirect()
                    || ins.mnemonic() == Mnemonic::Ret;
                for op in 0..ins.op_count() {
                    match ins.op_kind(op) {
                        OpKind::Register => {
                            let r = ins.op_register(op);
                            let full = r.full_register();
                            assert!(
                                full != Register::RDI && full != Register::RSP,
                                "{ins} names rdi/rsp:\n{listing}"
                            );
                            if r.is_vector_register() && r.number() >= 16 {
                                count("zmm16-31 (any width)");
                            }
                            if r.is_k() {
                                count(if op == 0 { "k written" } else { "k read" });
                            }
                        }
                        OpKind::Memory if ins.mnemonic() == Mnemonic::Lea => {
                            assert!(ins.is_ip_rel_memory_operand(), "{ins}");
                        }
                        OpKind::Memory => {
                            let size = ins.memory_size().size() as u64;
                            if ins.is_ip_rel_memory_operand() {
                                count("rip-relative");
                                let t = ins.ip_rel_memory_address();
                                assert!(t >= rip && t + size <= rip + RIP_DATA_LEN as u64, "{ins}");
                                continue;
                            }
                            assert_eq!(ins.memory_base(), Register::RDI, "{ins}:\n{listing}");
                            let disp = ins.memory_displacement64() as i64;
                            if ins.memory_index() != Register::None {
                                count("base + index memory");
                            } else {
                                let at = disp + RDI_OFFSET as i64;
                                assert!(
                                    at >= 0 && at as u64 + size <= DATA_LEN as u64,
                                    "{ins} leaves the data buffer:\n{listing}"
                                );
                            }
                            if evex && ins.memory_displ_size() == 1 && !(-128..=127).contains(&disp)
                            {
                                count("compressed disp8*N");
                            }
                        }
                        _ => {}
                    }
                }
                if ins.op_mask() != Register::None {
                    count("k read");
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
                if ins.is_jcc_short_or_near() || ins.is_jmp_short_or_near() {
                    count("branches");
                }
                if ins.is_call_near() || ins.is_call_near_indirect() {
                    count("native calls");
                }
            }
            // Twice natively, with the buffers at other addresses the second time.
            runner.load(&bytes, &seq.stub);
            let first = runner.run_native(&seq.case, false);
            let second = runner.run_native(&seq.case, true);
            let diffs = compare(runner.comps, &first, &second, "second native run");
            assert!(
                diffs.is_empty(),
                "{campaign:?} sequence {index}: two native runs differ:\n{listing}{}",
                diffs.join("\n")
            );
            assert_eq!(first.state.gpr[RSP], 0, "rsp is back:\n{listing}");
            assert_eq!(
                first.state.gpr[RDI], RDI_OFFSET as u64,
                "rdi is untouched:\n{listing}"
            );
        }
    }
    eprintln!("random_vector: generator check counts: {counts:?}");
    assert!(!ran.is_empty(), "no campaign can run here");
    let t = tables();
    eprintln!(
        "random_vector: instruction forms: x87 {}, sse {}, avx {}, mask {}, compare-into-mask \
         {}, other evex {}",
        t.x87.len(),
        t.sse.len(),
        t.avx.len(),
        t.kmask.len(),
        t.kcmp.len(),
        t.evex.len()
    );
    use Mnemonic as M;
    let mut expected = vec![
        M::Fld,
        M::Fstp,
        M::Fst,
        M::Fadd,
        M::Faddp,
        M::Fmul,
        M::Fdiv,
        M::Fxch,
        M::Fild,
        M::Fistp,
        M::Fisttp,
        M::Fcom,
        M::Fcomp,
        M::Fucomi,
        M::Fcomip,
        M::Fnstsw,
        M::Fldcw,
        M::Fnstcw,
        M::Fabs,
        M::Fchs,
        M::Fsqrt,
        M::Fcmovb,
        M::Fldpi,
        M::Ffree,
        M::Fninit,
        M::Ldmxcsr,
        M::Stmxcsr,
        M::Addps,
        M::Mulpd,
        M::Ucomisd,
        M::Cvtsi2sd,
        M::Pshufb,
        M::Ptest,
        M::Roundsd,
        M::Movdqa,
    ];
    let mut thresholds = vec![
        ("branches", 1000),
        ("native calls", 100),
        ("rip-relative", 100),
        ("base + index memory", 100),
    ];
    if ran.contains(&Campaign::Avx2) {
        expected.extend([
            M::Vfmadd231ps,
            M::Vfmadd132sd,
            M::Vpermq,
            M::Vpshufb,
            M::Vzeroupper,
            M::Vzeroall,
            M::Vptest,
            M::Vcvtph2ps,
            M::Vbroadcastss,
            M::Vldmxcsr,
            M::Vmaskmovps,
        ]);
    }
    if ran.contains(&Campaign::Avx512) {
        expected.extend([
            M::Kmovw,
            M::Kmovq,
            M::Kandw,
            M::Korb,
            M::Kxord,
            M::Knotq,
            M::Kshiftlw,
            M::Kortestw,
            M::Ktestq,
            M::Vpcmpd,
            M::Vpcmpuq,
            M::Vpcmpeqb,
            M::Vptestmd,
            M::Vptestnmq,
            M::Vcmpps,
            M::Vfpclasspd,
            M::Vpternlogd,
            M::Vpcompressd,
            M::Vaddps,
            M::Vscalefps,
            M::Vmovdqu8,
            M::Vmovdqu64,
            M::Vpbroadcastd,
        ]);
        thresholds.extend([
            ("evex", 3000),
            ("merge or zero masking", 1000),
            ("zero masking", 300),
            ("broadcast", 200),
            ("embedded rounding", 50),
            ("sae", 50),
            ("compressed disp8*N", 200),
            ("zmm16-31 (any width)", 1000),
            ("k written", 500),
            ("k read", 1000),
        ]);
    }
    let missing: Vec<Mnemonic> = expected.into_iter().filter(|m| !seen.contains(m)).collect();
    assert!(
        missing.is_empty(),
        "the generator never produced {missing:?}"
    );
    for (what, min) in thresholds {
        let n = counts.get(what).copied().unwrap_or(0);
        assert!(n >= min, "only {n} instructions with {what} (want {min})");
    }
}

/// The vector registers the Vm starts from reach the guest, and those the guest leaves
/// come back to the Vm's FprState, without any other instruction in between: the guest
/// stores every vector register of the campaign's width (and k0-k7) to the data buffer,
/// then loads all of them from other data. One sequence per campaign, on a fresh Vm; the
/// first thing to look at when a campaign loses vector state.
#[test]
fn random_vector_state_reaches_the_guest_and_comes_back() {
    let mut failures = Vec::new();
    for campaign in [Campaign::X87Sse, Campaign::Avx2, Campaign::Avx512] {
        if let Some(why) = campaign.unavailable() {
            eprintln!("random_vector: state transfer check of {campaign:?} SKIPPED: {why}");
            continue;
        }
        let mut runner = Runner::new(campaign, Hooks::None);
        let case = random_case(&mut Rng::new(DEFAULT_SEED ^ 0x5747), runner.comps);
        let m = |disp: i64| MemoryOperand::with_base_displ(Register::RDI, disp);
        let (store, load, first, count, width) = match campaign {
            Campaign::X87Sse => (
                Code::Movdqu_xmmm128_xmm,
                Code::Movdqu_xmm_xmmm128,
                Register::XMM0,
                16,
                16,
            ),
            Campaign::Avx2 => (
                Code::VEX_Vmovdqu_ymmm256_ymm,
                Code::VEX_Vmovdqu_ymm_ymmm256,
                Register::YMM0,
                16,
                32,
            ),
            Campaign::Avx512 => (
                Code::EVEX_Vmovdqu64_zmmm512_k1z_zmm,
                Code::EVEX_Vmovdqu64_zmm_k1z_zmmm512,
                Register::ZMM0,
                32,
                64,
            ),
        };
        let mut group = Vec::new();
        for i in 0..count {
            let at = -(RDI_OFFSET as i64) + (width * i) as i64;
            let r = reg_at(first, i);
            group.push(Instruction::with2(store, m(at), r).expect("store"));
        }
        if campaign == Campaign::Avx512 {
            for i in 0..8 {
                let k = reg_at(Register::K0, i);
                group.push(
                    Instruction::with2(Code::VEX_Kmovq_m64_kr, m(8 * i as i64), k).expect("kmovq"),
                );
            }
        }
        for i in 0..count {
            let r = reg_at(first, i);
            group.push(Instruction::with2(load, r, m(64 + (width * i) as i64 / 2)).expect("load"));
        }
        if campaign == Campaign::Avx512 {
            for i in 0..8 {
                let k = reg_at(Register::K0, i);
                group.push(
                    Instruction::with2(Code::VEX_Kmovq_kr_km64, k, m(1024 + 8 * i as i64))
                        .expect("kmovq"),
                );
            }
        }
        let ret = encode_plain(&[Instruction::with(Code::Retnq)], runner.region.stub())
            .expect("ret encodes");
        let items = [Item::Plain(group)];
        let diffs = runner.check(&items, &ret, &case);
        if !diffs.is_empty() {
            let bytes = encode(&items, runner.region.code()).expect("encode");
            failures.push(format!(
                "{campaign:?} (data at rdi-0x800.. = registers as the guest found them):\n{}  {}",
                disassemble(&bytes, runner.region.code()),
                diffs.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Reduced reproducers of engine bugs the campaigns above found.
// ---------------------------------------------------------------------------------------

/// MXCSR exception flags raised by a callback reach the guest when the guest's MXCSR equals
/// the host's (found by the `HostMxcsrFlags` campaigns, reduced): the callback routine's
/// fast path skips `ldmxcsr` before and after the callback when the two values are equal,
/// so the flags the callback's f64 code raises (here invalid, divide-by-zero, underflow,
/// precision: 0x35) stay in the MXCSR the guest goes on with. The guest is only `ret`, its
/// x87 state initial (fast path).
#[test]
fn mxcsr_flags_raised_by_a_callback_stay_out_of_the_guest() {
    if let Some(why) = Campaign::X87Sse.unavailable() {
        eprintln!("random_vector: MXCSR reproducer SKIPPED: {why}");
        return;
    }
    let mut runner = Runner::new(Campaign::X87Sse, Hooks::HostMxcsrFlags);
    let mut case = random_case(&mut Rng::new(DEFAULT_SEED), runner.comps);
    case.state.mxcsr = HOST_MXCSR;
    // x87 initial: the callback routine takes its fast path (with x87 in use it takes the
    // full xsave/xrstor path, which restores MXCSR).
    case.state.fcw = 0x37f;
    case.state.fsw = 0;
    case.state.ftw = 0;
    case.state.st = [[0; 10]; 8];
    let ret =
        encode_plain(&[Instruction::with(Code::Retnq)], runner.region.stub()).expect("ret encodes");
    let diffs = runner.check(&[], &ret, &case);
    assert!(
        diffs.is_empty(),
        "guest `ret` with MXCSR {HOST_MXCSR:#x} (the host's), a callback computing with f64 \
         before it:\n  {}",
        diffs.join("\n  ")
    );
}

/// The code cache filling up while the dispatcher translates the target of an exit it is
/// about to link (found by the `Noop` campaigns after some 6,000 sequences on one Vm, when
/// the callback site table fills, and without callbacks after some 42,000, when the code
/// area or the directory does; reduced): `translate` resets the cache and the directory,
/// then the dispatcher links the stub id it kept from before the reset, which indexes the
/// new, nearly empty stub table (`index out of bounds` in directory.rs; a small enough id
/// would patch an unrelated new stub instead). The guest: 40 blocks of 60 `inc rax` chained
/// by `jmp` to the next instruction, a no-op callback before every instruction, the cache
/// cleared before every run (sites are only reclaimed by a reset): the site table fills
/// after about 180 runs.
#[test]
fn a_run_survives_the_cache_filling_up_between_an_exit_and_its_link() {
    const BLOCKS: usize = 40;
    const INCS: usize = 60;
    let mut region = Region::new();
    let code = region.code();
    let mut items = vec![Item::Plain(vec![
        Instruction::with2(Code::Xor_r32_rm32, Register::EAX, Register::EAX).expect("xor"),
    ])];
    for _ in 0..BLOCKS {
        let inc = Instruction::with1(Code::Inc_rm64, Register::RAX).expect("inc");
        items.push(Item::Plain(vec![inc; INCS]));
        items.push(Item::JumpNext(Code::Jmp_rel8_64));
    }
    let bytes = encode(&items, code).expect("encode");
    region.write(0, CODE_LEN, &bytes);
    let (mut vm, _stack) =
        qbdi_tests::vm_over(qbdi_core::Options::empty(), code, code + CODE_LEN as u64);
    vm.add_code_cb(
        InstPosition::PreInst,
        |_vm: &mut VmRef<'_>, _g: &mut GprState, _f: &mut FprState| VmAction::Continue,
        PRIORITY_DEFAULT,
    )
    .expect("callback");
    for run in 0..500 {
        vm.clear_cache(code, code + CODE_LEN as u64);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.call(code, &[])));
        match result {
            Err(panic) => panic!(
                "run {run}: {ENGINE_PANIC}: {} (the cache filled up between an exit and the \
                 link of its stub)",
                panic_message(&*panic)
            ),
            Ok(r) => assert_eq!(
                r.expect("vm.call"),
                (BLOCKS * INCS) as u64,
                "run {run}: rax counts every inc"
            ),
        }
    }
}
