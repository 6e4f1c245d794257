//! glibc's choice of string routines (`memcpy`, `strlen`, ...), which depends on the CPU:
//! among `*_avx2`, `*_evex` (EVEX encodings on ymm16-31) and `*_avx512` (zmm) variants, Intel
//! gets the evex ones by default (glibc sets `Prefer_No_AVX512` there) and AMD the avx512
//! ones. Tests that run libc's code under the Vm run under each choice, whatever the CPU,
//! by setting `GLIBC_TUNABLES` in a process they start.

/// The CPU vendor string (CPUID leaf 0: ebx, edx, ecx).
pub fn cpu_vendor() -> [u8; 12] {
    // SAFETY: CPUID leaf 0 exists on every x86-64 CPU (safe to call in newer Rust).
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid(0) };
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..12].copy_from_slice(&r.ecx.to_le_bytes());
    v
}

/// Whether glibc has AVX-512 variants to choose on this CPU (else every setting selects the
/// same routines).
pub fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// `GLIBC_TUNABLES` that selects the AVX-512 variant glibc does not pick by default on this
/// CPU: the avx512 ones on Intel, the evex ones elsewhere.
pub fn other_avx512_preference() -> &'static str {
    if cpu_vendor() == *b"GenuineIntel" {
        "glibc.cpu.hwcaps=-Prefer_No_AVX512"
    } else {
        "glibc.cpu.hwcaps=Prefer_No_AVX512"
    }
}

/// `GLIBC_TUNABLES` that turns glibc's AVX-512 routines off (the avx2 ones everywhere).
pub const AVX512_OFF: &str = "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ";

/// The settings to run libc's code under: (name, `GLIBC_TUNABLES`, `None` for unset). Only
/// the default where the CPU has no AVX-512 (the others would select the same routines).
pub fn settings() -> Vec<(&'static str, Option<&'static str>)> {
    let mut v = vec![("default", None)];
    if has_avx512() {
        v.push(("other", Some(other_avx512_preference())));
        v.push(("off", Some(AVX512_OFF)));
    }
    v
}
