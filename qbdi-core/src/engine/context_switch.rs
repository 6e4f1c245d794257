//! The context switch and the other shared routines of a code cache, generated once per
//! cache at its start:
//!
//! - `enter`: called from Rust as `extern "C" fn()`. Saves the host's callee-saved state,
//!   loads the guest state from the context and jumps to `ctx.target`.
//! - `exit`: every way out of the cache ends here, with `ctx.exit_id` set. Saves the guest
//!   state into the context (switching to the host stack first: nothing is ever written
//!   below the guest's rsp) and returns from `enter`.
//! - `ib_miss`: the miss path of inline indirect-branch lookups.
//! - `broker`: entered (through the inline table) for a native target; swaps the return
//!   address at [rsp] for its translation so native code returns straight into the cache.
//! - `stop_return`: native code returning to the run's stop address lands here.

use super::context::{EXIT_BROKER, EXIT_IB_MISS, EXIT_STOP, off};
use super::emitter::{Asm, R12, R13, R14, R15, RAX, RBP, RBX, RCX, RDX, RSP};
use super::ib_table::{Miss, emit_lookup, emit_restore, emit_spill};
use super::xstate::XSaveKind;

/// Addresses of the shared routines of one code cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Runtime {
    pub enter: u64,
    pub exit: u64,
    pub ib_miss: u64,
    pub broker: u64,
    pub stop_return: u64,
}

const HOST_SAVED: [u8; 6] = [RBP, RBX, R12, R13, R14, R15];

/// Emits the routines into `a` (whose base is their final address).
pub(crate) fn emit_runtime(a: &mut Asm, ctx: u64, table: u64, fp: Option<XSaveKind>) -> Runtime {
    let exit = a.here();
    emit_exit(a, ctx, fp);
    let enter = a.here();
    emit_enter(a, ctx, fp);

    let ib_miss = a.here();
    emit_restore(a, ctx);
    a.store_imm32(ctx + off::EXIT_ID, EXIT_IB_MISS);
    a.jmp_to(exit);

    // broker: the registers are the guest's; ctx.ib_target is the native target.
    let broker = a.here();
    let broker_miss = a.new_label();
    emit_spill(a, ctx);
    a.load_rcx_from_stack_top();
    emit_lookup(a, ctx, table, Miss::Label(broker_miss), false);
    // A hit on a native entry (host = broker) or an empty one (host = ib_miss) is no
    // translation of a return address: treat it as a miss.
    a.lea_rip(RCX, broker);
    a.rcx_diff(RAX);
    a.jrcxz_label(broker_miss);
    a.lea_rip(RCX, ib_miss);
    a.rcx_diff(RAX);
    a.jrcxz_label(broker_miss);
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
    a.finish();
    Runtime {
        enter,
        exit,
        ib_miss,
        broker,
        stop_return,
    }
}

fn emit_enter(a: &mut Asm, ctx: u64, fp: Option<XSaveKind>) {
    for r in HOST_SAVED {
        a.push(r);
    }
    a.store(ctx + off::HOST_RSP, RSP);
    a.stmxcsr(ctx + off::HOST_MXCSR);
    a.fnstcw(ctx + off::HOST_FCW);
    match fp {
        Some(XSaveKind::XSave(mask)) => {
            a.mov_imm32(RAX, mask as u32);
            a.mov_imm32(RDX, (mask >> 32) as u32);
            a.xrstor(ctx + off::FPR);
        }
        Some(XSaveKind::FxSave) => a.fxrstor(ctx + off::FPR),
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

fn emit_exit(a: &mut Asm, ctx: u64, fp: Option<XSaveKind>) {
    a.store(ctx + off::gpr(RSP), RSP);
    a.load(RSP, ctx + off::HOST_RSP);
    a.pushfq();
    a.pop_mem(ctx + off::EFLAGS);
    for r in 0..16u8 {
        if r != RSP {
            a.store(ctx + off::gpr(r), r);
        }
    }
    // Host flags as the ABI expects them: DF and AC clear.
    a.push_imm8(2);
    a.popfq();
    match fp {
        Some(XSaveKind::XSave(mask)) => {
            a.mov_imm32(RAX, mask as u32);
            a.mov_imm32(RDX, (mask >> 32) as u32);
            a.xsave(ctx + off::FPR);
        }
        Some(XSaveKind::FxSave) => a.fxsave(ctx + off::FPR),
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
