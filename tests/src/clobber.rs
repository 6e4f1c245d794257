//! Host code that dirties the guest-visible vector state the way real host code does (for
//! the tests of callbacks that must leave no trace).

/// Fills zmm16-31 and k1-k7 with `seed`'s bytes, if the CPU has AVX-512 F and BW (as glibc's
/// AVX-512 `memcpy` in host code does). Returns whether it did.
pub fn clobber_avx512(seed: u64) -> bool {
    if !(std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw"))
    {
        return false;
    }
    // SAFETY: the CPU has AVX-512 F and BW (checked above).
    unsafe { clobber_avx512_unchecked(seed) };
    true
}

#[target_feature(enable = "avx512f,avx512bw")]
fn clobber_avx512_unchecked(seed: u64) {
    // SAFETY: writes only the declared registers; AVX-512 F/BW are enabled for this function.
    unsafe {
        std::arch::asm!(
            "vpbroadcastq zmm16, {s}",
            "vmovdqa64 zmm17, zmm16", "vmovdqa64 zmm18, zmm16", "vmovdqa64 zmm19, zmm16",
            "vmovdqa64 zmm20, zmm16", "vmovdqa64 zmm21, zmm16", "vmovdqa64 zmm22, zmm16",
            "vmovdqa64 zmm23, zmm16", "vmovdqa64 zmm24, zmm16", "vmovdqa64 zmm25, zmm16",
            "vmovdqa64 zmm26, zmm16", "vmovdqa64 zmm27, zmm16", "vmovdqa64 zmm28, zmm16",
            "vmovdqa64 zmm29, zmm16", "vmovdqa64 zmm30, zmm16", "vmovdqa64 zmm31, zmm16",
            "kmovq k1, {s}", "kmovq k2, {s}", "kmovq k3, {s}", "kmovq k4, {s}",
            "kmovq k5, {s}", "kmovq k6, {s}", "kmovq k7, {s}",
            s = in(reg) seed,
            out("zmm16") _, out("zmm17") _, out("zmm18") _, out("zmm19") _,
            out("zmm20") _, out("zmm21") _, out("zmm22") _, out("zmm23") _,
            out("zmm24") _, out("zmm25") _, out("zmm26") _, out("zmm27") _,
            out("zmm28") _, out("zmm29") _, out("zmm30") _, out("zmm31") _,
            out("k1") _, out("k2") _, out("k3") _, out("k4") _,
            out("k5") _, out("k6") _, out("k7") _,
            options(nostack),
        );
    }
}
