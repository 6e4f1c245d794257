//! The thread's FS and GS segment bases, and whether the fsgsbase instructions are usable.

/// Whether this thread may use `rdfsbase`/`wrfsbase`/`rdgsbase`/`wrgsbase` (the CPU has
/// them and the kernel, Linux 5.9 or later, enabled them: `HWCAP2_FSGSBASE`).
pub(crate) fn fsgsbase_usable() -> bool {
    const HWCAP2_FSGSBASE: u64 = 1 << 1;
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: getauxval only reads the process's auxiliary vector.
    *USABLE.get_or_init(|| unsafe { libc::getauxval(libc::AT_HWCAP2) } & HWCAP2_FSGSBASE != 0)
}

/// The calling thread's FS and GS bases, from the kernel.
pub(crate) fn thread_segment_bases() -> (u64, u64) {
    // <asm/prctl.h>
    const ARCH_GET_FS: libc::c_int = 0x1003;
    const ARCH_GET_GS: libc::c_int = 0x1004;
    let (mut fs, mut gs) = (0u64, 0u64);
    // SAFETY: ARCH_GET_FS/GS write one u64 at the address given, which is ours.
    unsafe {
        libc::syscall(libc::SYS_arch_prctl, ARCH_GET_FS, &mut fs as *mut u64);
        libc::syscall(libc::SYS_arch_prctl, ARCH_GET_GS, &mut gs as *mut u64);
    }
    (fs, gs)
}
