//! The per-Vm context: the guest state while it is outside registers, and the slots the
//! generated code uses. It sits at the start of the code cache region so that every piece
//! of generated code reaches it RIP-relative, without a register.

use crate::memory_access::{MAX_PER_INSTRUCTION, MemoryAccess};
use crate::state::{FprState, GprState};
use core::mem::offset_of;

/// Exit reasons below this are special; stub ids start here.
pub(crate) const FIRST_STUB_ID: u32 = 16;
/// An indirect branch target was not in the inline table (target in `ib_target`).
pub(crate) const EXIT_IB_MISS: u32 = 0;
/// A native function was entered but its return address was not translatable inline
/// (target in `ib_target`).
pub(crate) const EXIT_BROKER: u32 = 1;
/// Native code returned to the run's stop address.
pub(crate) const EXIT_STOP: u32 = 2;
/// A callback asked for `BreakToVm` or `Stop`, or panicked (details in the instrumentation).
pub(crate) const EXIT_CALLBACK: u32 = 3;
/// The guest made the `exit` system call (threads followed): the thread ends; the
/// `syscall`'s address is in `ib_target`.
pub(crate) const EXIT_THREAD: u32 = 4;
/// A block translated from memory that may change found its guest bytes changed (start in
/// `ib_target`): translate it again.
pub(crate) const EXIT_STALE: u32 = 5;
/// The guest made the `exit_group` system call with an exit-group hook set
/// (`threads::set_exit_group_hook`): the hook ends the process.
pub(crate) const EXIT_GROUP: u32 = 6;

/// How the callback routine saved the guest's FP state (`Context::fp_mode`).
pub(crate) const FP_NONE: u8 = 0;
/// xmm0-15, MXCSR and the AVX/AVX-512 components in use (`fp_in_use`) were saved with
/// moves; x87 was in its initial state.
pub(crate) const FP_FAST: u8 = 1;
/// `xsave` of every component.
pub(crate) const FP_FULL: u8 = 2;

#[repr(C, align(64))]
pub(crate) struct Context {
    /// Guest FP/vector state as the Rust side sees it (converted from and to `xarea`).
    pub fpr: FprState,
    /// Guest FP/vector state in this CPU's own XSAVE layout: what the generated code's
    /// `xsave`/`xrstor` (or `fxsave`/`fxrstor`) write and read (engine/xstate.rs).
    pub xarea: XArea,
    /// Guest general purpose registers while the guest is out of the cache.
    pub gpr: GprState,
    /// Host stack pointer saved by `enter`, restored by the common exit.
    pub host_rsp: u64,
    /// Host code address `enter` jumps to.
    pub target: u64,
    /// Why the guest left the cache: an `EXIT_*` constant or a stub id.
    pub exit_id: u32,
    pub host_mxcsr: u32,
    pub host_fcw: u16,
    pub _pad: [u16; 3],
    /// The host's FS and GS bases while the guest runs with its own (OPT_ENABLE_FS_GS).
    pub host_fs: u64,
    pub host_gs: u64,
    /// Guest target of the last indirect branch.
    pub ib_target: u64,
    /// Scratch spills of the indirect branch sequence (rax, rcx, rdx).
    pub spill: [u64; 3],
    /// Spill slot for far RIP-relative rewriting.
    pub spill_far: u64,
    /// Spills of inline instrumentation at block entry (rax, rcx, flags).
    pub inline_spill: [u64; 3],
    /// The running thread's edge-map `prev` words (`inline::thread_prev`), set at each run.
    pub edge_prev: u64,
    /// The `broker` routine's address while calls to PLT entries may cache their native
    /// targets, 0 once a partial flush stopped them (see `CodeCache::stop_native_calls`).
    pub native_refill: u64,
    /// Callback sites: the Rust entry point, its environment, the site being run, and the
    /// host address to resume at.
    pub cb_fn: u64,
    pub cb_data: u64,
    pub cb_resume: u64,
    pub cb_site: u32,
    /// A `VmAction` a direct site's callback already returned (0: none): the routine then
    /// applies it instead of calling the site's callbacks, and calls those after it.
    pub cb_pending: u32,
    /// How many of the site's callbacks the direct site called (the one that returned
    /// `cb_pending` included).
    pub cb_pending_next: u32,
    /// FP_NONE / FP_FAST / FP_FULL: how the callback routine saved FP state.
    pub fp_mode: u8,
    /// Whether the non-SSE parts of `fpr` may hold values other than their initial ones
    /// (written by a full save); a fast save must then reset them before a callback looks.
    pub ext_dirty: u8,
    /// Whether the callback that exited asked to stop the run.
    pub cb_stop: u8,
    pub _pad2: u8,
    /// (FP_FAST) the XSAVE components in use (XINUSE) when the callback routine saved them.
    pub fp_in_use: u32,
    /// MXCSR as a callback left it (the fast path compares it with the guest's).
    pub cur_mxcsr: u32,
    /// An XSAVE image whose header is all zero: `xrstor` from it puts components in their
    /// initial state.
    pub init_image: InitImage,
    /// Memory access recording: (address, value) of each access of the running block.
    pub mem_slots: [[u64; 2]; crate::memory_access::MAX_SLOTS],
    /// What a direct site passes as a plugin's `RawVm` (qbdi-sdk's ABI) when its callback
    /// reads its accesses: this, whose `api` and `ctx` it never reads, then `vm_view`
    /// (its `accesses` and `accesses_len`).
    pub raw_vm_head: [u64; 2],
    /// The `VmRef` a direct site passes to callbacks that read their instruction's memory
    /// accesses: only its first field, `VmRef::view`, a `&[MemoryAccess]` of `accesses`
    /// (engine/direct_call.rs).
    pub vm_view: [u64; 2],
    /// The instruction's accesses as `inst_memory_access` gives them, built by that site.
    pub accesses: [MemoryAccess; MAX_PER_INSTRUCTION],
}

#[repr(C, align(64))]
pub(crate) struct InitImage(pub [u8; 576]);

/// The CPU's XSAVE image, 64-byte aligned as `xsave` requires.
#[repr(C, align(64))]
pub(crate) struct XArea(pub [u8; super::xstate::XAREA_BYTES]);

/// Byte offsets of the context fields the generated code addresses.
pub(crate) mod off {
    use super::*;
    pub const FPR: u64 = offset_of!(Context, fpr) as u64;
    pub const XAREA: u64 = offset_of!(Context, xarea) as u64;
    pub const GPR: u64 = offset_of!(Context, gpr) as u64;
    pub const HOST_RSP: u64 = offset_of!(Context, host_rsp) as u64;
    pub const TARGET: u64 = offset_of!(Context, target) as u64;
    pub const EXIT_ID: u64 = offset_of!(Context, exit_id) as u64;
    pub const HOST_MXCSR: u64 = offset_of!(Context, host_mxcsr) as u64;
    pub const HOST_FCW: u64 = offset_of!(Context, host_fcw) as u64;
    pub const IB_TARGET: u64 = offset_of!(Context, ib_target) as u64;
    pub const SPILL: u64 = offset_of!(Context, spill) as u64;
    pub const SPILL_FAR: u64 = offset_of!(Context, spill_far) as u64;
    pub const INLINE_SPILL: u64 = offset_of!(Context, inline_spill) as u64;
    pub const EDGE_PREV: u64 = offset_of!(Context, edge_prev) as u64;
    pub const NATIVE_REFILL: u64 = offset_of!(Context, native_refill) as u64;
    pub const CB_FN: u64 = offset_of!(Context, cb_fn) as u64;
    pub const CB_DATA: u64 = offset_of!(Context, cb_data) as u64;
    pub const CB_RESUME: u64 = offset_of!(Context, cb_resume) as u64;
    pub const CB_SITE: u64 = offset_of!(Context, cb_site) as u64;
    pub const CB_PENDING: u64 = offset_of!(Context, cb_pending) as u64;
    pub const CB_PENDING_NEXT: u64 = offset_of!(Context, cb_pending_next) as u64;
    pub const FP_MODE: u64 = offset_of!(Context, fp_mode) as u64;
    pub const FP_IN_USE: u64 = offset_of!(Context, fp_in_use) as u64;
    pub const CUR_MXCSR: u64 = offset_of!(Context, cur_mxcsr) as u64;
    pub const INIT_IMAGE: u64 = offset_of!(Context, init_image) as u64;
    pub const MEM_SLOTS: u64 = offset_of!(Context, mem_slots) as u64;
    pub const VM_VIEW: u64 = offset_of!(Context, vm_view) as u64;
    pub const RAW_VM: u64 = offset_of!(Context, raw_vm_head) as u64;
    pub const ACCESSES: u64 = offset_of!(Context, accesses) as u64;
    pub const RIP: u64 = GPR + offset_of!(GprState, rip) as u64;
    pub const MXCSR: u64 = FPR + offset_of!(FprState, mxcsr) as u64;
    pub const YMM_HI: u64 = FPR + offset_of!(FprState, ymm0) as u64;
    pub const OPMASK: u64 = FPR + offset_of!(FprState, k) as u64;
    pub const ZMM_HI256: u64 = FPR + offset_of!(FprState, zmm_hi256) as u64;
    pub const HI16_ZMM: u64 = FPR + offset_of!(FprState, hi16_zmm) as u64;
    /// Offset of xmm register `n` in the FP image.
    pub const fn xmm(n: u8) -> u64 {
        FPR + offset_of!(FprState, xmm0) as u64 + 16 * n as u64
    }

    /// Offset of general purpose register `reg` (emitter numbering: 0 = rax .. 15 = r15).
    pub const fn gpr(reg: u8) -> u64 {
        // GprState order: rax rbx rcx rdx rsi rdi r8..r15 rbp rsp; encoding order:
        // rax rcx rdx rbx rsp rbp rsi rdi r8..r15.
        let field = match reg {
            0 => 0,
            1 => 2,
            2 => 3,
            3 => 1,
            4 => 15,
            5 => 14,
            6 => 4,
            7 => 5,
            r => r as u64 - 2,
        };
        GPR + field * 8
    }
    pub const EFLAGS: u64 = GPR + offset_of!(GprState, eflags) as u64;
    pub const FS: u64 = GPR + offset_of!(GprState, fs) as u64;
    pub const GS: u64 = GPR + offset_of!(GprState, gs) as u64;
    pub const HOST_FS: u64 = offset_of!(Context, host_fs) as u64;
    pub const HOST_GS: u64 = offset_of!(Context, host_gs) as u64;
}

const _: () = assert!(core::mem::size_of::<Context>() <= 16384);
const _: () = assert!(off::RAW_VM + 16 == off::VM_VIEW);
const _: () = assert!(off::gpr(4) == off::GPR + offset_of!(GprState, rsp) as u64);
const _: () = assert!(off::gpr(13) == off::GPR + offset_of!(GprState, r13) as u64);
const _: () = assert!(off::gpr(3) == off::GPR + offset_of!(GprState, rbx) as u64);
