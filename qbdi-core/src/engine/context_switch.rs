//! The context switch and the other shared routines of a code cache, generated once per
//! cache at its start:
//!
//! - `enter`: called from Rust as `extern "C" fn()`. Saves the host's callee-saved state,
//!   loads the guest state from the context and jumps to `ctx.target`.
//! - `exit`: every way out of the cache ends here, with `ctx.exit_id` set. Saves the guest
//!   state into the context (switching to the host stack first: nothing is ever written
//!   below the guest's rsp) and returns from `enter`.
//! - `ib_miss`: the miss path of inline indirect-branch lookups.
//! - `broker`: entered (through the inline table, as the host address of native targets)
//!   for a native target; swaps the return address at [rsp] for its translation so native
//!   code returns straight into the cache.
//! - `stop_return`: native code returning to the run's stop address lands here.
//! - `callback`: a callback site jumps here (guest rax already saved, `ctx.cb_site` set):
//!   saves the guest state into the context, calls the Rust entry point on the host stack,
//!   restores the (possibly changed) state and resumes where the entry point says, or
//!   leaves the cache through `exit_tail`.
//!
//! FP state around callbacks: with XINUSE available and `OPT_DISABLE_OPTIONAL_FPR` unset,
//! when x87 is not in use (nearly always), xmm0-15, MXCSR and those of the AVX, AVX-512
//! and mask components that are in use are saved and restored with moves (a few ns when
//! only SSE is in use; the AVX-512 state glibc's EVEX routines leave in use costs about
//! 60 ns more); state the callback dirtied that the guest had unused gets its initial
//! values back (`vzeroupper`; zmm16-31 and k0-7 zeroed with instructions; x87 by `xrstor`
//! from an all-initial image). Otherwise a full
//! `xsave`/`xrstor`. Either way the callback runs after a `vzeroupper`: host SSE code with
//! dirty upper halves runs several times slower.
//!
//! FS and GS bases: with OPT_ENABLE_FS_GS (and the fsgsbase instructions usable), `enter`
//! loads the guest's from `gpr.fs`/`gpr.gs` after saving the host's, and every way back to
//! host code (`exit`, the callback routine) saves the guest's and reloads the host's.
//! Otherwise guest and host share the thread's, as they share the thread.

use super::context::{
    EXIT_BROKER, EXIT_GROUP, EXIT_IB_MISS, EXIT_STOP, EXIT_THREAD, FP_FAST, FP_FULL, FP_NONE, off,
};
use super::emitter::{Asm, Label, R12, R13, R14, R15, RAX, RBP, RBX, RCX, RDI, RDX, RSP};
use super::encode::{VectorPart, kxorq_self, move_vector, vpxord_self};
use super::ib_table::{ENTRY_PREFIX_LEN, Miss, emit_lookup, emit_restore};
use super::xstate::XSaveKind;

/// Addresses of the shared routines of one code cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Runtime {
    pub enter: u64,
    pub exit: u64,
    /// The miss path of the lookups (the guest's rax, rcx, rdx spilled, `ib_target` set).
    pub ib_miss: u64,
    /// The host address of the table's entry for address 0, which leads to `ib_miss`.
    pub miss_entry: u64,
    /// The host address of the table's entries for native targets.
    pub broker: u64,
    pub stop_return: u64,
    pub callback: u64,
    /// 256 bytes, byte `i` = `i & 1`: lets translated `syscall`s test a flag bit without
    /// touching RFLAGS (see `translator::emit_syscall`).
    pub bit0_table: u64,
    /// Leaves the cache reporting the guest's `exit` system call (`EXIT_THREAD`).
    pub thread_exit: u64,
    /// Leaves the cache reporting the guest's `exit_group` system call (`EXIT_GROUP`).
    pub exit_group: u64,
}

/// How the callback routine protects the guest's FP state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallbackFp {
    /// OPT_DISABLE_FPR: not at all.
    None,
    /// Always a full save.
    Full(XSaveKind),
    /// SSE-only fast path when the other components are unused (see the module docs).
    Optional(XSaveKind),
}

/// RFLAGS bits the callback routine restores without `popfq`: CF, PF, AF, ZF, SF, OF, the
/// always-one bit 1 and IF. Anything else set (DF, TF, AC, ID...) takes the `popfq` path.
const PLAIN_FLAGS: u32 = 0xad7;

const HOST_SAVED: [u8; 6] = [RBP, RBX, R12, R13, R14, R15];

/// Byte `i` is `i & 1` (the `bit0_table` routine data).
const BIT0_TABLE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i & 1) as u8;
        i += 1;
    }
    t
};

/// Emits the routines into `a` (whose base is their final address). `fsgs`: the guest has
/// FS and GS bases of its own (OPT_ENABLE_FS_GS, with the fsgsbase instructions usable).
pub(crate) fn emit_runtime(
    a: &mut Asm,
    ctx: u64,
    table: u64,
    fp: Option<XSaveKind>,
    cb_fp: CallbackFp,
    fsgs: bool,
) -> Runtime {
    let exit = a.here();
    let exit_tail = a.new_label();
    emit_exit(a, ctx, fp, fsgs, exit_tail);
    let enter = a.here();
    emit_enter(a, ctx, fp, fsgs);

    let ib_miss = a.here();
    emit_restore(a, ctx);
    a.store_imm32(ctx + off::EXIT_ID, EXIT_IB_MISS);
    a.jmp_to(exit);
    // Both entries below are reached from a table hit (`emit_hit_jump`) or a site cache's
    // hit, with rdx the guest's: a quiet return spills rdx only on its way to the table
    // (see the translator's `emit_indirect`), so they spill it themselves.
    //
    // The table entry of address 0, the one empty entry a lookup can "hit" (see
    // `ib_table`): rax = 0, the target.
    let miss_entry = a.here();
    a.store(ctx + off::IB_TARGET, RAX);
    a.store(ctx + off::SPILL + 16, RDX);
    a.jmp_to(ib_miss);

    // broker: the table entry of native targets, reached from an indirect branch's hit:
    // rax = the native target, rdx the guest's, the guest's rax and rcx spilled.
    let broker = a.here();
    let broker_miss = a.new_label();
    a.store(ctx + off::IB_TARGET, RAX);
    a.store(ctx + off::SPILL + 16, RDX);
    a.load_rcx_from_stack_top();
    emit_lookup(a, ctx, table, Miss::Label(broker_miss), false);
    a.bytes(&[0x48, 0x8b, 0x42, 0x08]); // mov rax, [rdx+8]: the host entry
    // A hit on a native entry (host = broker) or an empty one (host = miss_entry) is no
    // translation of a return address: treat it as a miss.
    a.lea_rip(RCX, broker);
    a.rcx_diff(RAX);
    a.jrcxz_label(broker_miss);
    a.lea_rip(RCX, miss_entry);
    a.rcx_diff(RAX);
    a.jrcxz_label(broker_miss);
    // The block itself, past its table entry: native code returns there with every
    // register its own.
    a.bytes(&[0x48, 0x8d, 0x40, ENTRY_PREFIX_LEN as u8]); // lea rax, [rax+prefix]
    a.store_rax_to_stack_top();
    emit_restore(a, ctx);
    a.jmp_mem(ctx + off::IB_TARGET);
    a.bind(broker_miss);
    emit_restore(a, ctx);
    a.store_imm32(ctx + off::EXIT_ID, EXIT_BROKER);
    a.jmp_to(exit);

    let stop_return = a.here();
    a.store_imm32(ctx + off::EXIT_ID, EXIT_STOP);
    a.jmp_to(exit);

    let thread_exit = a.here();
    a.store_imm32(ctx + off::EXIT_ID, EXIT_THREAD);
    a.jmp_to(exit);

    let exit_group = a.here();
    a.store_imm32(ctx + off::EXIT_ID, EXIT_GROUP);
    a.jmp_to(exit);

    let callback = a.here();
    emit_callback(a, ctx, cb_fp, fsgs, exit_tail);
    let bit0_table = a.here();
    a.bytes(&BIT0_TABLE);
    a.finish();
    Runtime {
        enter,
        exit,
        ib_miss,
        miss_entry,
        broker,
        stop_return,
        callback,
        bit0_table,
        thread_exit,
        exit_group,
    }
}

/// The callback routine's full save: every component, then x87 and the upper halves in
/// their initial state for the callback (host SSE code runs slower with dirty ones).
fn emit_full_save(a: &mut Asm, ctx: u64, k: XSaveKind) {
    match k {
        XSaveKind::XSave(mask) => {
            a.mov_imm32(RAX, mask as u32);
            a.mov_imm32(RDX, (mask >> 32) as u32);
            a.xsave(ctx + off::XAREA);
        }
        XSaveKind::FxSave => a.fxsave(ctx + off::XAREA),
    }
    // The guest's MXCSR where the host-MXCSR check below reads it.
    a.stmxcsr(ctx + off::MXCSR);
    a.fninit();
    if k.has_avx() {
        a.vzeroupper();
    }
    a.store_byte(ctx + off::FP_MODE, FP_FULL);
}

fn emit_full_restore(a: &mut Asm, ctx: u64, k: XSaveKind) {
    match k {
        XSaveKind::XSave(mask) => {
            a.mov_imm32(RAX, mask as u32);
            a.mov_imm32(RDX, (mask >> 32) as u32);
            a.xrstor(ctx + off::XAREA);
        }
        XSaveKind::FxSave => a.fxrstor(ctx + off::XAREA),
    }
}

/// A component the callback routine's fast path moves: its XINUSE bit, its registers
/// (`count` from `first`, numbered in their class) and their slots in the FP image, and how
/// they are moved (see [`VectorPart`]).
struct Moved {
    bit: u64,
    part: VectorPart,
    first: u8,
    count: u8,
    area: u64,
    stride: u64,
}

/// The fast path's moves of the AVX and AVX-512 components in use (eax = their XINUSE
/// bits): stores into the FP image (`save`) or loads back. xmm0-15 are moved apart; a
/// load rebuilds each zmm0-15 from its 128-bit parts upwards (a VEX.256 insert clears the
/// bits above 255, restored next when in use).
fn emit_vector_moves(a: &mut Asm, ctx: u64, k: XSaveKind, save: bool) {
    use super::xstate::{AVX, HI16_ZMM, OPMASK, ZMM_HI256};
    let components = [
        Moved {
            bit: AVX,
            part: VectorPart::YmmHigh,
            first: 0,
            count: 16,
            area: off::YMM_HI,
            stride: 16,
        },
        Moved {
            bit: ZMM_HI256,
            part: VectorPart::ZmmHigh,
            first: 0,
            count: 16,
            area: off::ZMM_HI256,
            stride: 32,
        },
        Moved {
            bit: HI16_ZMM,
            part: VectorPart::Zmm,
            first: 16,
            count: 16,
            area: off::HI16_ZMM,
            stride: 64,
        },
        Moved {
            bit: OPMASK,
            part: VectorPart::Mask,
            first: 0,
            count: 8,
            area: off::OPMASK,
            stride: 8,
        },
    ];
    for c in components.iter().filter(|c| k.moved_mask() & c.bit != 0) {
        let skip = a.new_label();
        a.test_eax(c.bit as u32);
        a.jcc_label(4, skip); // jz: not in use
        for n in 0..c.count {
            let slot = ctx + c.area + c.stride * u64::from(n);
            move_vector(a, c.part, save, c.first + n, slot);
        }
        a.bind(skip);
    }
}

/// Zeroes zmm16-31 and k0-7 where eax (the components the callback dirtied and the guest
/// had unused) says so, when the fast path moves those components; returns the components
/// it handles. eax is left as it was.
fn emit_zero_dirty(a: &mut Asm, k: XSaveKind) -> u64 {
    use super::xstate::{HI16_ZMM, OPMASK};
    let mut handled = 0;
    type Zero = fn(&mut Asm, u8);
    let parts: [(u64, u8, u8, Zero); 2] =
        [(HI16_ZMM, 16, 16, vpxord_self), (OPMASK, 0, 8, kxorq_self)];
    for (bit, first, count, zero) in parts {
        if k.moved_mask() & bit == 0 {
            continue;
        }
        handled |= bit;
        let skip = a.new_label();
        a.test_eax(bit as u32);
        a.jcc_label(4, skip); // jz
        for n in first..first + count {
            zero(a, n);
        }
        a.bind(skip);
    }
    handled
}

/// What `site_entry` returns to go on right after the site (a `ret` to the site).
pub(crate) const RESUME_AFTER_SITE: u64 = 1;

fn emit_callback(a: &mut Asm, ctx: u64, cb_fp: CallbackFp, fsgs: bool, exit_tail: Label) {
    // The site saved rax and rsp, switched to the host stack and `call`ed us: the return
    // address is on the host stack (so the common way back is a predicted `ret`), and rsp
    // is 16-byte aligned (host_rsp is 8 mod 16).
    a.pushfq();
    a.pop_mem(ctx + off::EFLAGS);
    for r in 1..16u8 {
        if r != RSP {
            a.store(ctx + off::gpr(r), r);
        }
    }
    if fsgs {
        emit_fsgs_to_host(a, ctx);
    }
    // Host flags as the ABI wants them: DF clear, and AC clear (rare: popfq, slow).
    a.bytes(&[0xfc]); // cld
    let no_ac = a.new_label();
    a.test_mem32(ctx + off::EFLAGS, 1 << 18);
    a.jcc_label(4, no_ac); // jz
    a.push_imm8(2);
    a.popfq();
    a.bind(no_ac);
    match cb_fp {
        CallbackFp::None => a.store_byte(ctx + off::FP_MODE, FP_NONE),
        CallbackFp::Full(k) => {
            emit_full_save(a, ctx, k);
        }
        CallbackFp::Optional(k) => {
            let full = a.new_label();
            let saved = a.new_label();
            a.mov_imm32(RCX, 1);
            a.xgetbv();
            a.test_eax((k.ext_mask() & !k.moved_mask()) as u32);
            a.jcc_label(5, full); // jnz: x87 in use
            a.store_eax32(ctx + off::FP_IN_USE);
            for n in 0..16 {
                a.store_xmm(ctx + off::xmm(n), n);
            }
            a.stmxcsr(ctx + off::MXCSR);
            emit_vector_moves(a, ctx, k, true);
            if k.has_avx() {
                // The host's SSE code would run slower with dirty upper halves.
                a.vzeroupper();
            }
            a.store_byte(ctx + off::FP_MODE, FP_FAST);
            a.jmp_label(saved);
            a.bind(full);
            emit_full_save(a, ctx, k);
            a.bind(saved);
        }
    }
    if cb_fp != CallbackFp::None {
        // The host's control words, unless the guest's are the same (ldmxcsr and fldcw
        // cost more than the compares). x87 is in its initial state here (0x37f) unless
        // the full path ran, which leaves it initial too (fninit).
        let same_mxcsr = a.new_label();
        a.load_eax32(ctx + off::MXCSR);
        a.cmp_eax_mem(ctx + off::HOST_MXCSR);
        a.jcc_label(4, same_mxcsr); // je
        a.ldmxcsr(ctx + off::HOST_MXCSR);
        a.bind(same_mxcsr);
        let same_fcw = a.new_label();
        a.cmp_word(ctx + off::HOST_FCW, 0x37f);
        a.jcc_label(4, same_fcw); // je
        a.fldcw(ctx + off::HOST_FCW);
        a.bind(same_fcw);
    }
    a.load(RDI, ctx + off::CB_DATA);
    a.load_esi32(ctx + off::CB_SITE);
    a.call_mem(ctx + off::CB_FN);
    a.store(ctx + off::CB_RESUME, RAX);
    match cb_fp {
        CallbackFp::None => {}
        CallbackFp::Full(k) => emit_full_restore(a, ctx, k),
        CallbackFp::Optional(k) => {
            let full = a.new_label();
            let clean = a.new_label();
            let restored = a.new_label();
            a.cmp_byte(ctx + off::FP_MODE, FP_FAST);
            a.jcc_label(5, full); // jne
            if k.has_avx() {
                a.vzeroupper();
            }
            // Components vzeroupper leaves in use that the callback dirtied and the guest
            // had unused get their initial values back (the others are reloaded below):
            // zmm16-31 and k0-7 by zeroing them (an `xrstor` from the initial image costs
            // about 80 ns a callback, and glibc's AVX-512 memcpy in host code dirties
            // zmm16-31 nearly every time; the registers then stay "in use" at zero, saved
            // and reloaded with moves by later callbacks, until the next exit's `xsave`
            // finds them zero), x87 with that `xrstor`.
            a.mov_imm32(RCX, 1);
            a.xgetbv();
            a.load_ecx32(ctx + off::FP_IN_USE);
            a.bytes(&[0xf7, 0xd1]); // not ecx
            a.bytes(&[0x21, 0xc8]); // and eax, ecx
            a.test_eax(k.sticky_mask() as u32);
            a.jcc_label(4, clean); // jz
            let zeroed = emit_zero_dirty(a, k);
            let rest = k.sticky_mask() & !zeroed;
            if rest != 0 {
                a.and_eax(rest as u32);
                a.jcc_label(4, clean); // jz
                a.mov_imm32(RDX, 0);
                a.xrstor(ctx + off::INIT_IMAGE);
            }
            a.bind(clean);
            for n in 0..16 {
                a.load_xmm(n, ctx + off::xmm(n));
            }
            a.load_eax32(ctx + off::FP_IN_USE);
            emit_vector_moves(a, ctx, k, false);
            // The guest's MXCSR back unless it is what the callback left (which may have
            // raised exception flags: those must not reach the guest).
            let same_mxcsr = a.new_label();
            a.stmxcsr(ctx + off::CUR_MXCSR);
            a.load_eax32(ctx + off::MXCSR);
            a.cmp_eax_mem(ctx + off::CUR_MXCSR);
            a.jcc_label(4, same_mxcsr); // je
            a.ldmxcsr(ctx + off::MXCSR);
            a.bind(same_mxcsr);
            a.jmp_label(restored);
            a.bind(full);
            emit_full_restore(a, ctx, k);
            a.bind(restored);
        }
    }
    // Resume: 0 leaves the cache (BreakToVm, Stop; the state is in the context),
    // RESUME_AFTER_SITE returns to the site, anything else is a host address to jump to.
    let leave = a.new_label();
    let jump = a.new_label();
    a.load(RAX, ctx + off::CB_RESUME);
    a.bytes(&[0x48, 0x85, 0xc0]); // test rax, rax
    a.jcc_label(4, leave); // jz
    a.bytes(&[0x48, 0x83, 0xf8, RESUME_AFTER_SITE as u8]); // cmp rax, 1
    a.jcc_label(5, jump); // jne
    if fsgs {
        emit_fsgs_to_guest(a, ctx);
    }
    emit_reload_guest(a, ctx);
    a.ret(); // the site then reloads rsp
    a.bind(jump);
    if fsgs {
        emit_fsgs_to_guest(a, ctx);
    }
    emit_reload_guest(a, ctx);
    a.load(RSP, ctx + off::gpr(RSP));
    a.jmp_mem(ctx + off::CB_RESUME);
    a.bind(leave);
    a.bytes(&[0x48, 0x83, 0xc4, 0x08]); // add rsp, 8: drop the site's return address
    a.jmp_label(exit_tail);
}

/// Reloads every guest register but rsp from the context, flags last: `sahf` (and an add
/// that sets OF) when only the arithmetic flags matter, `popfq` (slow) otherwise. Runs on
/// the host stack.
pub(crate) fn emit_reload_guest(a: &mut Asm, ctx: u64) {
    for r in 2..16u8 {
        if r != RSP {
            a.load(r, ctx + off::gpr(r));
        }
    }
    let popf = a.new_label();
    let done = a.new_label();
    a.load(RAX, ctx + off::EFLAGS);
    a.test_eax(!PLAIN_FLAGS);
    a.jcc_label(5, popf); // jnz
    emit_restore_plain_flags(a);
    a.jmp_label(done);
    a.bind(popf);
    a.push_mem(ctx + off::EFLAGS);
    a.popfq();
    a.bind(done);
    a.load(RCX, ctx + off::gpr(RCX));
    a.load(RAX, ctx + off::gpr(RAX));
}

/// Sets OF, SF, ZF, AF, PF and CF from the RFLAGS value in rax, without `popfq`; the
/// other flags are left as they are. Clobbers rax and rcx.
pub(crate) fn emit_restore_plain_flags(a: &mut Asm) {
    a.bytes(&[0x89, 0xc1]); // mov ecx, eax
    a.bytes(&[0xc1, 0xe9, 0x0b]); // shr ecx, 11
    a.bytes(&[0x83, 0xe1, 0x01]); // and ecx, 1
    a.bytes(&[0x80, 0xc1, 0x7f]); // add cl, 0x7f: OF = saved OF
    a.bytes(&[0x88, 0xc4]); // mov ah, al
    a.bytes(&[0x9e]); // sahf: SF ZF AF PF CF
}

/// Saves the guest's FS and GS bases into the context and loads the host's (rax is free).
fn emit_fsgs_to_host(a: &mut Asm, ctx: u64) {
    a.rdfsbase(RAX);
    a.store(ctx + off::FS, RAX);
    a.rdgsbase(RAX);
    a.store(ctx + off::GS, RAX);
    a.load(RAX, ctx + off::HOST_FS);
    a.wrfsbase(RAX);
    a.load(RAX, ctx + off::HOST_GS);
    a.wrgsbase(RAX);
}

/// Loads the guest's FS and GS bases from the context (rax is free).
fn emit_fsgs_to_guest(a: &mut Asm, ctx: u64) {
    a.load(RAX, ctx + off::FS);
    a.wrfsbase(RAX);
    a.load(RAX, ctx + off::GS);
    a.wrgsbase(RAX);
}

fn emit_enter(a: &mut Asm, ctx: u64, fp: Option<XSaveKind>, fsgs: bool) {
    for r in HOST_SAVED {
        a.push(r);
    }
    a.store(ctx + off::HOST_RSP, RSP);
    if fsgs {
        a.rdfsbase(RAX);
        a.store(ctx + off::HOST_FS, RAX);
        a.rdgsbase(RAX);
        a.store(ctx + off::HOST_GS, RAX);
        emit_fsgs_to_guest(a, ctx);
    }
    a.stmxcsr(ctx + off::HOST_MXCSR);
    a.fnstcw(ctx + off::HOST_FCW);
    match fp {
        Some(XSaveKind::XSave(mask)) => {
            a.mov_imm32(RAX, mask as u32);
            a.mov_imm32(RDX, (mask >> 32) as u32);
            a.xrstor(ctx + off::XAREA);
        }
        Some(XSaveKind::FxSave) => a.fxrstor(ctx + off::XAREA),
        None => {}
    }
    // Guest flags, through the host stack; nothing after this touches them.
    a.push_mem(ctx + off::EFLAGS);
    a.popfq();
    for r in 0..16u8 {
        if r != RSP {
            a.load(r, ctx + off::gpr(r));
        }
    }
    a.load(RSP, ctx + off::gpr(RSP));
    a.jmp_mem(ctx + off::TARGET);
}

fn emit_exit(a: &mut Asm, ctx: u64, fp: Option<XSaveKind>, fsgs: bool, tail: Label) {
    a.store(ctx + off::gpr(RSP), RSP);
    a.load(RSP, ctx + off::HOST_RSP);
    a.pushfq();
    a.pop_mem(ctx + off::EFLAGS);
    for r in 0..16u8 {
        if r != RSP {
            a.store(ctx + off::gpr(r), r);
        }
    }
    if fsgs {
        emit_fsgs_to_host(a, ctx);
    }
    // The callback routine joins here with the guest state already in the context (and
    // the host's FS and GS bases loaded).
    a.bind(tail);
    // Host flags as the ABI expects them: DF and AC clear.
    a.push_imm8(2);
    a.popfq();
    match fp {
        Some(XSaveKind::XSave(mask)) => {
            a.mov_imm32(RAX, mask as u32);
            a.mov_imm32(RDX, (mask >> 32) as u32);
            a.xsave(ctx + off::XAREA);
        }
        Some(XSaveKind::FxSave) => a.fxsave(ctx + off::XAREA),
        None => {}
    }
    // The host's control words back (callee-saved in the SysV ABI); x87 stack empty.
    if fp.is_some() {
        a.fninit();
    }
    a.fldcw(ctx + off::HOST_FCW);
    a.ldmxcsr(ctx + off::HOST_MXCSR);
    if fp.is_some_and(XSaveKind::has_avx) {
        a.vzeroupper();
    }
    for r in HOST_SAVED.iter().rev() {
        a.pop(*r);
    }
    a.ret();
}
