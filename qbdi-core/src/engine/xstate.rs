//! Which FP/vector state components the engine saves, where this CPU's XSAVE image puts
//! them (read from CPUID), the conversion between that image and [`FprState`], and keeping
//! an image valid for `xrstor`.
//!
//! `FprState` has one fixed layout, the standard-format image of Intel CPUs with MPX (AVX at
//! 576, opmask at 1088, ZMM_Hi256 at 1152, Hi16_ZMM at 1664). Other CPUs place components
//! elsewhere: AMD Zen 4 has no MPX area and puts opmask at 832, ZMM_Hi256 at 896 and
//! Hi16_ZMM at 1408. So the engine never `xsave`s into an `FprState`: the generated code
//! saves into and restores from a native area of the context (`Context::xarea`), laid out as
//! CPUID leaf 0xD says, and the Rust side converts with [`XLayout::native_into_fpr`] and
//! [`XLayout::fpr_into_native`] when it needs the `FprState` (the dispatcher around each entry
//! into the cache, the callback routine's full-save path). The same code runs on every CPU;
//! only the offsets differ.

use crate::state::{FprState, xsave_offsets};
use core::arch::x86_64::{__cpuid_count, _xgetbv};
use std::sync::OnceLock;

const X87: u64 = 1 << 0;
const SSE: u64 = 1 << 1;
pub(crate) const AVX: u64 = 1 << 2;
pub(crate) const OPMASK: u64 = 1 << 5;
pub(crate) const ZMM_HI256: u64 = 1 << 6;
pub(crate) const HI16_ZMM: u64 = 1 << 7;

/// Bytes reserved in the context for the CPU's own XSAVE image of the saved components.
/// Every known CPU needs at most 2688 (Intel's standard format up to Hi16_ZMM); a component
/// that CPUID places beyond this is not saved (and AVX-512 only as a whole).
pub(crate) const XAREA_BYTES: usize = 4096;

/// The extended components the engine saves, with their XCR0 bit, CPUID sub-leaf, place in
/// `FprState` and size (the size is architectural; CPUID must agree).
const EXTENDED: [(u64, u32, usize, usize); 4] = [
    (AVX, 2, xsave_offsets::AVX, 256),
    (OPMASK, 5, xsave_offsets::OPMASK, 64),
    (ZMM_HI256, 6, xsave_offsets::ZMM_HI256, 512),
    (HI16_ZMM, 7, xsave_offsets::HI16_ZMM, 1024),
];

/// The legacy region (FXSAVE image, 512 bytes) and the XSAVE header (64 bytes) have the
/// same place on every CPU.
const LEGACY_AND_HEADER: usize = 576;
const LEGACY: usize = 512;

/// Where this CPU's standard-format XSAVE image puts the components the engine saves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct XLayout {
    /// The XCR0 bits saved: x87 and SSE always (when XSAVE exists), and the extended
    /// components enabled by the OS whose CPUID size is the architectural one and whose
    /// area fits in [`XAREA_BYTES`]; AVX-512 only with AVX, and only as a whole.
    pub mask: u64,
    /// `(offset, size)` in the CPU's image of each component by XCR0 bit number (2 and
    /// 5-7 are used; 0 when not saved).
    pub area: [(u32, u32); 8],
    /// No XSAVE: `fxsave`/`fxrstor` of the 512-byte legacy image.
    pub fxsave_only: bool,
}

impl XLayout {
    /// The layout for an OS-enabled component mask `xcr0` and CPUID leaf 0xD answers
    /// (`leaf(i)` = (EAX: size, EBX: offset) of sub-leaf `i`). Pure, so both vendors'
    /// layouts can be tested on any CPU.
    pub fn from_cpuid(xcr0: u64, leaf: impl Fn(u32) -> (u32, u32)) -> XLayout {
        let mut mask = xcr0 & (X87 | SSE | AVX | OPMASK | ZMM_HI256 | HI16_ZMM) | X87 | SSE;
        let mut area = [(0u32, 0u32); 8];
        for (bit, sub, _, size) in EXTENDED {
            if mask & bit == 0 {
                continue;
            }
            let (csize, offset) = leaf(sub);
            let fits = (offset as usize)
                .checked_add(csize as usize)
                .is_some_and(|end| end <= XAREA_BYTES);
            if csize as usize == size && offset as usize >= LEGACY_AND_HEADER && fits {
                area[sub as usize] = (offset, csize);
            } else {
                mask &= !bit;
            }
        }
        let avx512 = OPMASK | ZMM_HI256 | HI16_ZMM;
        if mask & avx512 != avx512 || mask & AVX == 0 {
            mask &= !avx512;
        }
        for (bit, sub, _, _) in EXTENDED {
            if mask & bit == 0 {
                area[sub as usize] = (0, 0);
            }
        }
        XLayout {
            mask,
            area,
            fxsave_only: false,
        }
    }

    /// The layout of a CPU without XSAVE (x87 and SSE through `fxsave`).
    pub const FXSAVE: XLayout = XLayout {
        mask: X87 | SSE,
        area: [(0, 0); 8],
        fxsave_only: true,
    };

    /// This CPU's layout (read once).
    pub fn current() -> &'static XLayout {
        static LAYOUT: OnceLock<XLayout> = OnceLock::new();
        LAYOUT.get_or_init(|| {
            if !std::arch::is_x86_feature_detected!("xsave") {
                return XLayout::FXSAVE;
            }
            // SAFETY: XSAVE is supported (checked above), so XGETBV with ECX=0 is valid.
            let xcr0 = unsafe { _xgetbv(0) };
            XLayout::from_cpuid(xcr0, |sub| {
                // CPUID leaf 0xD exists when XSAVE is supported.
                let r = __cpuid_count(0xd, sub);
                (r.eax, r.ebx)
            })
        })
    }

    /// Whether this is the layout `FprState` has (Intel's): conversion is then a copy.
    pub fn is_fpr_layout(&self) -> bool {
        EXTENDED.iter().all(|&(bit, sub, fpr_off, _)| {
            self.mask & bit == 0 || self.area[sub as usize].0 as usize == fpr_off
        })
    }

    /// Converts the CPU's image `native` (as `xsave` wrote it) into `fpr`: the legacy
    /// region, the header, and each saved component moved to its `FprState` place. Fields
    /// of components not saved are left as they are.
    pub fn native_into_fpr(&self, native: &[u8; XAREA_BYTES], fpr: &mut FprState) {
        let bytes = fpr_bytes_mut(fpr);
        let head = if self.fxsave_only {
            LEGACY
        } else {
            LEGACY_AND_HEADER
        };
        bytes[..head].copy_from_slice(&native[..head]);
        for (bit, sub, fpr_off, size) in EXTENDED {
            if self.mask & bit != 0 {
                let off = self.area[sub as usize].0 as usize;
                bytes[fpr_off..fpr_off + size].copy_from_slice(&native[off..off + size]);
            }
        }
    }

    /// Converts `fpr` into the CPU's image `native`, ready for `xrstor` (the header is
    /// copied as it is: callers keep it valid).
    pub fn fpr_into_native(&self, fpr: &FprState, native: &mut [u8; XAREA_BYTES]) {
        let bytes = fpr.as_bytes();
        let head = if self.fxsave_only {
            LEGACY
        } else {
            LEGACY_AND_HEADER
        };
        native[..head].copy_from_slice(&bytes[..head]);
        for (bit, sub, fpr_off, size) in EXTENDED {
            if self.mask & bit != 0 {
                let off = self.area[sub as usize].0 as usize;
                native[off..off + size].copy_from_slice(&bytes[fpr_off..fpr_off + size]);
            }
        }
    }
}

/// One line naming the CPU and the components saved with their offsets (for logs: .ci/run
/// prints it).
pub(crate) fn describe(l: &XLayout) -> String {
    let vendor = {
        let r = __cpuid_count(0, 0);
        let mut v = Vec::with_capacity(12);
        for w in [r.ebx, r.edx, r.ecx] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        String::from_utf8_lossy(&v).into_owned()
    };
    if l.fxsave_only {
        return format!("{vendor}: no XSAVE, fxsave of x87 and SSE");
    }
    let names = [
        (AVX, 2, "AVX"),
        (OPMASK, 5, "opmask"),
        (ZMM_HI256, 6, "ZMM_Hi256"),
        (HI16_ZMM, 7, "Hi16_ZMM"),
    ];
    let parts: Vec<String> = names
        .iter()
        .filter(|(bit, _, _)| l.mask & bit != 0)
        .map(|&(_, sub, name)| format!("{name}@{}", l.area[sub].0))
        .collect();
    format!(
        "{vendor}: XSAVE mask {:#x}, x87+SSE@0 {} ({})",
        l.mask,
        parts.join(" "),
        if l.is_fpr_layout() {
            "FprState's layout"
        } else {
            "converted to FprState's layout"
        }
    )
}

/// `fpr` as mutable bytes.
fn fpr_bytes_mut(fpr: &mut FprState) -> &mut [u8; 2688] {
    // SAFETY: FprState is 2688 bytes of plain integers with no padding (asserted in
    // state.rs); every byte pattern is a valid value, and we hold `&mut`.
    unsafe { &mut *(fpr as *mut FprState as *mut [u8; 2688]) }
}

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
        let layout = XLayout::current();
        if layout.fxsave_only {
            XSaveKind::FxSave
        } else {
            XSaveKind::XSave(layout.mask)
        }
    }

    /// Converts the image the generated code saved (`xsave`/`fxsave` into `native`) into
    /// `fpr`.
    pub fn native_to_fpr(self, native: &[u8; XAREA_BYTES], fpr: &mut FprState) {
        XLayout::current().native_into_fpr(native, fpr);
    }

    /// Converts `fpr` into the image the generated code restores (`xrstor`/`fxrstor`).
    pub fn fpr_to_native(self, fpr: &FprState, native: &mut [u8; XAREA_BYTES]) {
        XLayout::current().fpr_into_native(fpr, native);
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

#[cfg(test)]
mod tests {
    use super::*;

    const XCR0_AVX512: u64 = X87 | SSE | AVX | OPMASK | ZMM_HI256 | HI16_ZMM | (1 << 9);

    /// CPUID leaf 0xD of Intel CPUs with AVX-512 (Skylake-SP to Sapphire Rapids): the
    /// standard format with the MPX area (960..1088) in place.
    fn intel(sub: u32) -> (u32, u32) {
        match sub {
            2 => (256, 576),
            3 => (64, 960),
            4 => (64, 1024),
            5 => (64, 1088),
            6 => (512, 1152),
            7 => (1024, 1664),
            9 => (8, 2688),
            _ => (0, 0),
        }
    }

    /// CPUID leaf 0xD of AMD Zen 4: no MPX area, AVX-512 right after AVX.
    fn amd_zen4(sub: u32) -> (u32, u32) {
        match sub {
            2 => (256, 576),
            5 => (64, 832),
            6 => (512, 896),
            7 => (1024, 1408),
            9 => (8, 2432),
            _ => (0, 0),
        }
    }

    /// An `FprState` whose every saved byte is distinct from its neighbours' (MPX area 0).
    fn patterned() -> FprState {
        let mut f = FprState::default();
        let bytes = fpr_bytes_mut(&mut f);
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        bytes[832..1088].fill(0);
        f.xcomp_bv = 0;
        f
    }

    #[test]
    fn intel_and_amd_layouts_are_read_from_cpuid_values() {
        let i = XLayout::from_cpuid(XCR0_AVX512, intel);
        assert_eq!(i.mask, X87 | SSE | AVX | OPMASK | ZMM_HI256 | HI16_ZMM);
        assert_eq!(i.area[5], (1088, 64));
        assert!(i.is_fpr_layout());
        let a = XLayout::from_cpuid(XCR0_AVX512, amd_zen4);
        assert_eq!(a.mask, i.mask, "AMD's AVX-512 components are saved too");
        assert_eq!(a.area[2], (576, 256));
        assert_eq!(a.area[5], (832, 64));
        assert_eq!(a.area[6], (896, 512));
        assert_eq!(a.area[7], (1408, 1024));
        assert!(!a.is_fpr_layout());
    }

    #[test]
    fn components_cpuid_does_not_describe_as_expected_are_not_saved() {
        // No AVX-512 enabled by the OS.
        let l = XLayout::from_cpuid(X87 | SSE | AVX, amd_zen4);
        assert_eq!(l.mask, X87 | SSE | AVX);
        assert_eq!(l.area[7], (0, 0));
        // A size that is not the architectural one drops AVX-512 as a whole.
        let odd = |sub| if sub == 6 { (500, 896) } else { amd_zen4(sub) };
        assert_eq!(XLayout::from_cpuid(XCR0_AVX512, odd).mask, X87 | SSE | AVX);
        // An area beyond the context's room is not saved.
        let far = |sub| if sub == 7 { (1024, 4000) } else { intel(sub) };
        assert_eq!(XLayout::from_cpuid(XCR0_AVX512, far).mask, X87 | SSE | AVX);
        // Without AVX, no AVX-512.
        assert_eq!(
            XLayout::from_cpuid(X87 | SSE | OPMASK | ZMM_HI256 | HI16_ZMM, intel).mask,
            X87 | SSE
        );
    }

    /// Converting to each CPU's image puts every register's bytes where that CPU's
    /// `xrstor` reads them, and converting back gives the same `FprState`.
    #[test]
    fn conversion_places_each_component_at_the_cpus_offset_and_round_trips() {
        let f = patterned();
        let fb = f.as_bytes();
        for (name, leaf) in [("intel", intel as fn(u32) -> (u32, u32)), ("amd", amd_zen4)] {
            let l = XLayout::from_cpuid(XCR0_AVX512, leaf);
            let mut native = [0xeeu8; XAREA_BYTES];
            l.fpr_into_native(&f, &mut native);
            assert_eq!(native[..576], fb[..576], "{name}: legacy area and header");
            for (sub, fpr_off, size) in [
                (2, 576, 256),
                (5, 1088, 64),
                (6, 1152, 512),
                (7, 1664, 1024),
            ] {
                let (sz, off) = leaf(sub);
                assert_eq!(sz as usize, size);
                let off = off as usize;
                assert_eq!(
                    native[off..off + size],
                    fb[fpr_off..fpr_off + size],
                    "{name}: component {sub} at {off}"
                );
            }
            let mut back = FprState::default();
            l.native_into_fpr(&native, &mut back);
            assert_eq!(back, f, "{name}: round trip");
        }
        // On AMD, k0 (FprState offset 1088) is at 832 and zmm16 (1664) at 1408.
        let l = XLayout::from_cpuid(XCR0_AVX512, amd_zen4);
        let mut f = FprState::default();
        f.k[0] = 0x1122_3344_5566_7788;
        f.hi16_zmm[0][63] = 0xab;
        f.zmm_hi256[15][31] = 0xcd;
        let mut native = [0u8; XAREA_BYTES];
        l.fpr_into_native(&f, &mut native);
        assert_eq!(native[832..840], 0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(native[1408 + 63], 0xab);
        assert_eq!(native[896 + 15 * 32 + 31], 0xcd);
    }

    #[test]
    fn fxsave_layout_converts_the_legacy_area_only() {
        let f = patterned();
        let mut native = [0u8; XAREA_BYTES];
        XLayout::FXSAVE.fpr_into_native(&f, &mut native);
        assert_eq!(native[..512], f.as_bytes()[..512]);
        assert!(native[512..].iter().all(|&b| b == 0));
        let mut back = FprState::default();
        XLayout::FXSAVE.native_into_fpr(&native, &mut back);
        assert_eq!(back.as_bytes()[..512], f.as_bytes()[..512]);
        assert_eq!(
            back.as_bytes()[512..],
            FprState::default().as_bytes()[512..]
        );
    }

    /// The layout this CPU reports is one the engine can use, and printed for the log.
    #[test]
    fn this_cpus_layout() {
        let l = XLayout::current();
        eprintln!("{}", describe(l));
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert_ne!(l.mask & HI16_ZMM, 0, "AVX-512 state must be saved: {l:?}");
        }
    }
}
