//! The types of instrumentation callbacks: what they return, where they run, and what VM
//! events report (QBDI's `VMAction`, `InstPosition`, `VMEvent`, `VMState`).

use crate::state::Rword;

/// What a callback asks the engine to do next. When several callbacks run at one point,
/// the largest action wins (the order of the variants).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum VmAction {
    /// Go on.
    #[default]
    Continue = 0,
    /// (PreInst only) do not execute the instruction, nor the remaining PreInst callbacks;
    /// PostInst callbacks still run.
    SkipInst = 1,
    /// Skip the rest of this instruction's callbacks (and, from PreInst, the instruction
    /// itself); continue with the next instruction.
    SkipPatch = 2,
    /// Return to the dispatcher, which re-reads the state: a changed `rip` takes effect,
    /// added or removed callbacks and ranges and cleared caches apply. From a PreInst
    /// callback with `rip` unchanged, the instruction's PreInst callbacks run again.
    BreakToVm = 3,
    /// End the run now; the state is kept in the Vm.
    Stop = 4,
}

/// Where an instruction callback runs relative to its instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InstPosition {
    /// Before the instruction: `gpr.rip` is the instruction's address.
    PreInst,
    /// After it: `gpr.rip` is the next address (the branch target for a taken branch).
    PostInst,
}

bitflags::bitflags! {
    /// VM events (QBDI's values).
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VmEvent: u32 {
        /// A sequence (here: a basic block) starts executing.
        const SEQUENCE_ENTRY = 1;
        /// A sequence finished executing (after its last instruction).
        const SEQUENCE_EXIT = 1 << 1;
        /// A basic block starts executing.
        const BASIC_BLOCK_ENTRY = 1 << 2;
        /// A basic block finished executing: `gpr.rip` is where the guest goes next.
        const BASIC_BLOCK_EXIT = 1 << 3;
        /// A basic block was translated (once per translation).
        const BASIC_BLOCK_NEW = 1 << 4;
        /// The guest calls code outside the instrumented ranges (`gpr.rip` = target).
        const EXEC_TRANSFER_CALL = 1 << 5;
        /// Native code returns to the instrumented ranges (`gpr.rip` = return address).
        const EXEC_TRANSFER_RETURN = 1 << 6;
        /// Before a `syscall` instruction.
        const SYSCALL_ENTRY = 1 << 7;
        /// After a `syscall` instruction.
        const SYSCALL_EXIT = 1 << 8;
    }
}

/// What a VM event callback is told about the event (`#[repr(C)]`: plugins receive it as
/// is).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VmState {
    /// The events that happened (all the ones this callback registered for that coincide).
    pub event: VmEvent,
    /// The current basic block `[start, end)` (for exec transfers: the target, twice).
    pub basic_block_start: Rword,
    /// End (exclusive) of the current basic block.
    pub basic_block_end: Rword,
    /// The current sequence; a sequence is a whole basic block in this engine.
    pub sequence_start: Rword,
    /// End (exclusive) of the current sequence.
    pub sequence_end: Rword,
}

/// Identifies a registered callback, for [`delete_instrumentation`](crate::Vm::delete_instrumentation).
pub type CallbackId = u32;

/// Default callback priority.
pub const PRIORITY_DEFAULT: i32 = 0;
/// Callbacks that read memory accesses must have a priority at most this (memory recording
/// runs above it).
pub const PRIORITY_MEMACCESS_LIMIT: i32 = 0x0100_0000;
