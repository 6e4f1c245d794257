//! The guest's register state as the engine and callbacks see it.
//!
//! Both structs are `#[repr(C)]` plain integers (every bit pattern is valid), so they can be
//! handed out as `&mut` and later cross the plugin ABI unchanged. `FprState` has one layout
//! on every CPU: the standard (non-compacted) XSAVE image of x87, SSE, AVX and AVX-512 state
//! as Intel CPUs with MPX lay it out. CPUs that place components elsewhere (AMD Zen 4 has no
//! MPX area) are handled by the engine, which converts between its own save area, laid out
//! as CPUID says, and this struct.

/// A machine word of the guest: addresses, register values.
pub type Rword = u64;

/// General purpose registers, in QBDI's `GPRState` order.
///
/// `fs` and `gs` are the segment bases; they are only meaningful with
/// [`Options::OPT_ENABLE_FS_GS`](crate::Options::OPT_ENABLE_FS_GS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub struct GprState {
    pub rax: Rword,
    pub rbx: Rword,
    pub rcx: Rword,
    pub rdx: Rword,
    pub rsi: Rword,
    pub rdi: Rword,
    pub r8: Rword,
    pub r9: Rword,
    pub r10: Rword,
    pub r11: Rword,
    pub r12: Rword,
    pub r13: Rword,
    pub r14: Rword,
    pub r15: Rword,
    pub rbp: Rword,
    pub rsp: Rword,
    pub rip: Rword,
    pub eflags: Rword,
    pub fs: Rword,
    pub gs: Rword,
}

/// Names of the `GprState` fields, in layout order (index = offset / 8).
pub const GPR_NAMES: [&str; 20] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rbp", "rsp", "rip", "eflags", "fs", "gs",
];

impl GprState {
    /// The registers as an array, in layout order (see [`GPR_NAMES`]).
    #[must_use]
    pub fn as_array(&self) -> [Rword; 20] {
        [
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
            self.rbp,
            self.rsp,
            self.rip,
            self.eflags,
            self.fs,
            self.gs,
        ]
    }
}

/// The value `eflags` has in a fresh `Vm`: only the always-one bit 1 (and IF, as Linux
/// user code always runs with interrupts enabled).
pub const DEFAULT_EFLAGS: Rword = 0x202;

/// One x87 / MMX register slot of the FXSAVE image: 80 bits of value, 48 reserved.
pub type MmstReg = [u8; 16];

/// Floating point and vector registers: the standard-format XSAVE image.
///
/// The first 512 bytes are the FXSAVE legacy area (field names as QBDI's `FPRState`); then
/// the XSAVE header, the upper halves of YMM0-15 (`ymm0..ymm15`, as in QBDI), and the
/// AVX-512 state (`k`, `zmm_hi256`, `hi16_zmm`). Fields of components the CPU does not
/// have are kept but ignored. The engine keeps the header consistent; do not edit it.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct FprState {
    pub fcw: u16,
    pub fsw: u16,
    pub ftw: u8,
    pub rsrv1: u8,
    pub fop: u16,
    pub ip: u32,
    pub cs: u16,
    pub rsrv2: u16,
    pub dp: u32,
    pub ds: u16,
    pub rsrv3: u16,
    pub mxcsr: u32,
    pub mxcsrmask: u32,
    pub stmm0: MmstReg,
    pub stmm1: MmstReg,
    pub stmm2: MmstReg,
    pub stmm3: MmstReg,
    pub stmm4: MmstReg,
    pub stmm5: MmstReg,
    pub stmm6: MmstReg,
    pub stmm7: MmstReg,
    pub xmm0: [u8; 16],
    pub xmm1: [u8; 16],
    pub xmm2: [u8; 16],
    pub xmm3: [u8; 16],
    pub xmm4: [u8; 16],
    pub xmm5: [u8; 16],
    pub xmm6: [u8; 16],
    pub xmm7: [u8; 16],
    pub xmm8: [u8; 16],
    pub xmm9: [u8; 16],
    pub xmm10: [u8; 16],
    pub xmm11: [u8; 16],
    pub xmm12: [u8; 16],
    pub xmm13: [u8; 16],
    pub xmm14: [u8; 16],
    pub xmm15: [u8; 16],
    pub reserved: [u8; 96],
    /// XSAVE header: which components the image holds. Managed by the engine.
    pub xstate_bv: u64,
    /// XSAVE header: always 0 (standard format). Managed by the engine.
    pub xcomp_bv: u64,
    pub header_reserved: [u8; 48],
    pub ymm0: [u8; 16],
    pub ymm1: [u8; 16],
    pub ymm2: [u8; 16],
    pub ymm3: [u8; 16],
    pub ymm4: [u8; 16],
    pub ymm5: [u8; 16],
    pub ymm6: [u8; 16],
    pub ymm7: [u8; 16],
    pub ymm8: [u8; 16],
    pub ymm9: [u8; 16],
    pub ymm10: [u8; 16],
    pub ymm11: [u8; 16],
    pub ymm12: [u8; 16],
    pub ymm13: [u8; 16],
    pub ymm14: [u8; 16],
    pub ymm15: [u8; 16],
    /// Where Intel's image has the MPX state (bytes 832..1088); ignored (MPX is not saved,
    /// and AMD's image has no such area).
    pub mpx_reserved: [u8; 256],
    /// AVX-512 opmask registers k0-k7.
    pub k: [u64; 8],
    /// Bits 256..511 of ZMM0-15.
    pub zmm_hi256: [[u8; 32]; 16],
    /// ZMM16-31, whole.
    pub hi16_zmm: [[u8; 64]; 16],
}

/// Byte offsets of the XSAVE components inside [`FprState`] (the CPU's own offsets, read
/// from CPUID, may differ: engine/xstate.rs converts).
pub(crate) mod xsave_offsets {
    pub const AVX: usize = 576;
    pub const OPMASK: usize = 1088;
    pub const ZMM_HI256: usize = 1152;
    pub const HI16_ZMM: usize = 1664;
}

const _: () = assert!(core::mem::size_of::<GprState>() == 160);
const _: () = assert!(core::mem::size_of::<FprState>() == 2688);
const _: () = assert!(core::mem::offset_of!(FprState, xmm0) == 160);
const _: () = assert!(core::mem::offset_of!(FprState, xstate_bv) == 512);
const _: () = assert!(core::mem::offset_of!(FprState, ymm0) == xsave_offsets::AVX);
const _: () = assert!(core::mem::offset_of!(FprState, k) == xsave_offsets::OPMASK);
const _: () = assert!(core::mem::offset_of!(FprState, zmm_hi256) == xsave_offsets::ZMM_HI256);
const _: () = assert!(core::mem::offset_of!(FprState, hi16_zmm) == xsave_offsets::HI16_ZMM);

impl Default for FprState {
    /// The state of a fresh thread: x87 control word 0x37F, MXCSR 0x1F80, every register 0.
    fn default() -> Self {
        // SAFETY: FprState is plain integers and arrays of integers: all-zero is valid.
        let mut s: FprState = unsafe { core::mem::zeroed() };
        s.fcw = 0x37f;
        s.mxcsr = 0x1f80;
        s.mxcsrmask = 0xffff;
        s
    }
}

impl FprState {
    /// XMM register `n` (0..16) as bytes.
    #[must_use]
    pub fn xmm(&self, n: usize) -> &[u8; 16] {
        assert!(n < 16, "there are 16 xmm registers, asked for xmm{n}");
        // SAFETY: xmm0..xmm15 are 16 consecutive [u8; 16] fields of a repr(C) struct.
        unsafe { &*(&self.xmm0 as *const [u8; 16]).add(n) }
    }

    /// XMM register `n` (0..16), mutable.
    pub fn xmm_mut(&mut self, n: usize) -> &mut [u8; 16] {
        assert!(n < 16, "there are 16 xmm registers, asked for xmm{n}");
        // SAFETY: as in `xmm`, and we hold `&mut self`.
        unsafe { &mut *(&mut self.xmm0 as *mut [u8; 16]).add(n) }
    }

    /// Upper half (bits 128..255) of YMM register `n` (0..16).
    #[must_use]
    pub fn ymm_hi(&self, n: usize) -> &[u8; 16] {
        assert!(n < 16, "there are 16 ymm registers, asked for ymm{n}");
        // SAFETY: ymm0..ymm15 are 16 consecutive [u8; 16] fields of a repr(C) struct.
        unsafe { &*(&self.ymm0 as *const [u8; 16]).add(n) }
    }

    /// Upper half of YMM register `n`, mutable.
    pub fn ymm_hi_mut(&mut self, n: usize) -> &mut [u8; 16] {
        assert!(n < 16, "there are 16 ymm registers, asked for ymm{n}");
        // SAFETY: as in `ymm_hi`, and we hold `&mut self`.
        unsafe { &mut *(&mut self.ymm0 as *mut [u8; 16]).add(n) }
    }

    /// x87/MMX register slot `n` (0..8).
    #[must_use]
    pub fn stmm(&self, n: usize) -> &MmstReg {
        assert!(n < 8, "there are 8 x87 registers, asked for st{n}");
        // SAFETY: stmm0..stmm7 are 8 consecutive [u8; 16] fields of a repr(C) struct.
        unsafe { &*(&self.stmm0 as *const MmstReg).add(n) }
    }

    /// The whole image as bytes (for comparisons and dumps).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 2688] {
        // SAFETY: FprState is 2688 bytes of plain integers with no padding.
        unsafe { &*(self as *const FprState as *const [u8; 2688]) }
    }
}
