//! Which FP/vector state components the engine saves, checked against CPUID, and keeping
//! an `FprState` image valid for `xrstor`.

use crate::state::{FprState, xsave_offsets};
use core::arch::x86_64::{__cpuid_count, _xgetbv};

const X87: u64 = 1 << 0;
const SSE: u64 = 1 << 1;
pub(crate) const AVX: u64 = 1 << 2;
pub(crate) const OPMASK: u64 = 1 << 5;
pub(crate) const ZMM_HI256: u64 = 1 << 6;
pub(crate) const HI16_ZMM: u64 = 1 << 7;

/// How guest FP state is saved on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum XSaveKind {
    /// `xsave`/`xrstor` of the components in the mask.
    XSave(u64),
    /// No XSAVE support: `fxsave`/`fxrstor` (x87 and SSE only).
    FxSave,
}

/// The components of `fpr` whose values differ from their initial ones (SSE always: MXCSR
/// is loaded whatever the header says).
fn in_use(fpr: &FprState) -> u64 {
    // An OR over the whole slice (no early exit) compiles to wide vector loads.
    let zero = |b: &[u8]| b.iter().fold(0u8, |acc, &x| acc | x) == 0;
    let bytes = fpr.as_bytes();
    let mut bits = SSE;
    let x87_init = fpr.fcw == 0x37f
        && fpr.fsw == 0
        && fpr.ftw == 0
        && fpr.fop == 0
        && fpr.ip == 0
        && fpr.dp == 0
        && zero(&bytes[32..160]);
    if !x87_init {
        bits |= X87;
    }
    if !zero(&bytes[xsave_offsets::AVX..xsave_offsets::AVX + 256]) {
        bits |= AVX;
    }
    if fpr.k != [0; 8] {
        bits |= OPMASK;
    }
    if !zero(&bytes[xsave_offsets::ZMM_HI256..xsave_offsets::HI16_ZMM]) {
        bits |= ZMM_HI256;
    }
    if !zero(&bytes[xsave_offsets::HI16_ZMM..]) {
        bits |= HI16_ZMM;
    }
    bits
}

impl XSaveKind {
    pub fn detect() -> XSaveKind {
        if !std::arch::is_x86_feature_detected!("xsave") {
            return XSaveKind::FxSave;
        }
        // SAFETY: XSAVE is supported (checked above), so XGETBV with ECX=0 is valid.
        let xcr0 = unsafe { _xgetbv(0) };
        let mut mask = xcr0 & (X87 | SSE | AVX | OPMASK | ZMM_HI256 | HI16_ZMM);
        // The FprState layout hard-codes the standard-format offsets; keep a component only
        // if CPUID agrees (and AVX-512 only as a whole).
        let checks = [
            (AVX, 2, xsave_offsets::AVX),
            (OPMASK, 5, xsave_offsets::OPMASK),
            (ZMM_HI256, 6, xsave_offsets::ZMM_HI256),
            (HI16_ZMM, 7, xsave_offsets::HI16_ZMM),
        ];
        for (bit, leaf, offset) in checks {
            if mask & bit != 0 {
                // SAFETY: CPUID leaf 0xD exists when XSAVE is supported.
                let r = __cpuid_count(0xd, leaf);
                if r.ebx as usize != offset {
                    mask &= !bit;
                }
            }
        }
        if mask & (OPMASK | ZMM_HI256 | HI16_ZMM) != (OPMASK | ZMM_HI256 | HI16_ZMM) {
            mask &= !(OPMASK | ZMM_HI256 | HI16_ZMM);
        }
        if mask & AVX == 0 {
            mask &= !(OPMASK | ZMM_HI256 | HI16_ZMM);
        }
        XSaveKind::XSave(mask)
    }

    /// The saved components that are not SSE (x87, AVX, AVX-512).
    pub fn ext_mask(self) -> u64 {
        match self {
            XSaveKind::XSave(m) => m & !SSE,
            XSaveKind::FxSave => X87,
        }
    }

    /// The components the callback routine's fast path saves and restores with moves
    /// (AVX, AVX-512 registers, and the mask registers if `kmovq` exists); with x87 in use,
    /// it takes the full path.
    pub fn moved_mask(self) -> u64 {
        let XSaveKind::XSave(mask) = self else {
            return 0;
        };
        let mut moved = mask & (AVX | ZMM_HI256 | HI16_ZMM);
        if mask & OPMASK != 0 && std::arch::is_x86_feature_detected!("avx512bw") {
            moved |= OPMASK;
        }
        moved
    }

    /// The components `vzeroupper` does not return to their initial state.
    pub fn sticky_mask(self) -> u64 {
        self.ext_mask() & (X87 | OPMASK | HI16_ZMM)
    }

    /// Whether `xgetbv` with ECX=1 reports which components are in use (XINUSE).
    pub fn has_xinuse(self) -> bool {
        // CPUID leaf 0xD exists when XSAVE is supported.
        matches!(self, XSaveKind::XSave(_)) && __cpuid_count(0xd, 1).eax & (1 << 2) != 0
    }

    /// After a fast save of the components `in_use` (with moves): the header lists what is
    /// in use and, if the image may hold older values of the other components (`stale`),
    /// their initial values are written (the registers hold those).
    pub fn fill_after_fast_save(self, fpr: &mut FprState, in_use: u64, stale: bool) {
        let XSaveKind::XSave(mask) = self else {
            return;
        };
        fpr.xstate_bv = (in_use & mask) | SSE;
        if stale {
            self.fill_absent(fpr);
            fpr.xstate_bv = (in_use & mask) | SSE;
        }
    }

    /// Whether the CPU state includes AVX (so `vzeroupper` exists).
    pub fn has_avx(self) -> bool {
        matches!(self, XSaveKind::XSave(m) if m & AVX != 0)
    }

    /// Makes a user-supplied image loadable as it is: every field counts (the header says all
    /// components are present) and MXCSR has no reserved bit set.
    pub fn prepare_for_restore(self, fpr: &mut FprState) {
        fpr.mxcsr &= 0xffff;
        if let XSaveKind::XSave(mask) = self {
            fpr.xstate_bv = mask & in_use(fpr);
            fpr.xcomp_bv = 0;
            fpr.header_reserved = [0; 48];
        }
    }

    /// After an `xsave`, makes `fpr` a complete image: components the last `xsave` reported
    /// in their initial configuration get their initial values written out, and the header
    /// lists the components whose values are not initial, so a user may edit any field.
    pub fn complete_after_save(self, fpr: &mut FprState) {
        self.fill_absent(fpr);
        if let XSaveKind::XSave(mask) = self {
            // Components holding their initial values are marked absent: `xrstor` then puts
            // them in their initial state, and the CPU keeps reporting them unused (XINUSE),
            // which keeps callbacks on their fast path.
            fpr.xstate_bv = mask & in_use(fpr);
        }
    }

    /// After an `xsave` around a callback: like `complete_after_save`, but the header keeps
    /// what `xsave` said (no scan of the image: this runs per callback). Edits a callback
    /// makes to components the guest had unused are then not applied, as on the fast path.
    pub fn fill_after_callback_save(self, fpr: &mut FprState) {
        let present = fpr.xstate_bv;
        self.fill_absent(fpr);
        // SSE always counts: a callback setting an xmm register must see it applied.
        fpr.xstate_bv = present | SSE;
    }

    /// Writes the initial values of the components the last save reported absent.
    fn fill_absent(self, fpr: &mut FprState) {
        fpr.mxcsr &= 0xffff;
        fpr.mxcsrmask = if fpr.mxcsrmask == 0 {
            0xffff
        } else {
            fpr.mxcsrmask
        };
        let XSaveKind::XSave(mask) = self else {
            return;
        };
        let present = fpr.xstate_bv;
        let missing = mask & !present;
        if missing & X87 != 0 {
            fpr.fcw = 0x37f;
            fpr.fsw = 0;
            fpr.ftw = 0;
            fpr.fop = 0;
            fpr.ip = 0;
            fpr.cs = 0;
            fpr.dp = 0;
            fpr.ds = 0;
            for r in [
                &mut fpr.stmm0,
                &mut fpr.stmm1,
                &mut fpr.stmm2,
                &mut fpr.stmm3,
                &mut fpr.stmm4,
                &mut fpr.stmm5,
                &mut fpr.stmm6,
                &mut fpr.stmm7,
            ] {
                *r = [0; 16];
            }
        }
        if missing & SSE != 0 {
            for n in 0..16 {
                *fpr.xmm_mut(n) = [0; 16];
            }
        }
        if missing & AVX != 0 {
            for n in 0..16 {
                *fpr.ymm_hi_mut(n) = [0; 16];
            }
        }
        if missing & OPMASK != 0 {
            fpr.k = [0; 8];
        }
        if missing & ZMM_HI256 != 0 {
            fpr.zmm_hi256 = [[0; 32]; 16];
        }
        if missing & HI16_ZMM != 0 {
            fpr.hi16_zmm = [[0; 64]; 16];
        }
        fpr.xstate_bv = mask;
        fpr.xcomp_bv = 0;
        fpr.header_reserved = [0; 48];
    }
}
