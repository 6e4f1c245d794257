//! Engine options (QBDI's `Options`, same bit values).

bitflags::bitflags! {
    /// Options of a [`Vm`](crate::Vm). Changing them clears the code cache.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Options: u32 {
        /// No option.
        const NO_OPT = 0;
        /// Do not save and restore the guest's FP/vector state when leaving the code cache.
        /// Faster; the guest's XMM/YMM/ZMM, MXCSR and x87 state are then not protected.
        const OPT_DISABLE_FPR = 1 << 0;
        /// Always save and restore the FP state, even where the engine could prove it unneeded.
        const OPT_DISABLE_OPTIONAL_FPR = 1 << 1;
        /// Record memory access addresses but not values.
        const OPT_DISABLE_MEMORYACCESS_VALUE = 1 << 2;
        /// Do not keep the guest's `errno` apart from the host's.
        const OPT_DISABLE_ERRNO_BACKUP = 1 << 3;
        /// Disassemble in AT&T syntax instead of Intel.
        const OPT_ATT_SYNTAX = 1 << 24;
        /// Give the guest FS and GS bases of its own: `GprState::fs`/`gs` (initially this
        /// thread's) are loaded when the guest runs and saved when it stops, and callbacks
        /// run with the host's. Needs the fsgsbase instructions (Linux 5.9 or later on a CPU
        /// that has them); without them the option has no effect and guest and host share
        /// the thread's FS and GS, as they do without the option.
        const OPT_ENABLE_FS_GS = 1 << 25;
    }
}
