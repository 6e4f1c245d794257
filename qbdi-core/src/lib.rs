//! qbdi-core: a dynamic binary instrumentation engine for x86-64 Linux.
//!
//! Guest code of the current process runs natively from a cache of translated basic blocks;
//! blocks are linked to each other and indirect branches are resolved inside the cache, so an
//! uninstrumented run costs little more than native. The API follows QBDI's, in Rust
//! (`../shared/API.md` is the contract): create a [`Vm`], add instrumented ranges, give the
//! guest a stack, and [`Vm::call`] or [`Vm::run`].
//!
//! ```no_run
//! use qbdi_core::{Vm, allocate_virtual_stack};
//! extern "C" fn square(x: u64) -> u64 { x * x }
//! let mut vm = Vm::new();
//! let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).unwrap();
//! vm.add_instrumented_module_from_addr(square as usize as u64).unwrap();
//! assert_eq!(vm.call(square as usize as u64, &[7]).unwrap(), 49);
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod analysis;
mod callback;
mod engine;
mod error;
pub mod exec_guard;
mod instrumentation;
pub mod late_code;
mod maps;
mod memory;
mod memory_access;
mod options;
mod range;
mod regs;
mod state;
mod symbols;
pub mod threads;
mod vm;

pub use analysis::{
    AnalysisType, ConditionType, InstAnalysis, OperandAnalysis, OperandFlag, OperandType,
    RegisterAccessType, analyze, mnemonic_matches, mnemonic_names, mnemonic_pattern_is_valid,
};
pub use callback::{
    CallbackId, InstPosition, PRIORITY_DEFAULT, PRIORITY_MEMACCESS_LIMIT, VmAction, VmEvent,
    VmState,
};
pub use error::VmError;
pub use instrumentation::callbacks::{InstCallback, InstrRuleCallback, VmCallback};
pub use instrumentation::direct::{
    DirectRefusal, EntryAbi, direct_call_inlined, direct_call_refusal,
};

/// The block hash of AFL's QEMU mode, `(addr >> 4) ^ (addr << 8)`, for
/// [`Vm::add_edge_map`] (which masks it to the map's size).
pub fn afl_block_hash(addr: Rword) -> u64 {
    (addr >> 4) ^ (addr << 8)
}
pub use instrumentation::vm_ref::VmRef;
pub use maps::{
    MemoryMap, Permission, current_process_maps, module_names, process_maps, with_maps_snapshot,
};
pub use memory::{AlignedBuf, VirtualStack, aligned_alloc, allocate_virtual_stack, simulate_call};
pub use memory_access::{MemoryAccess, MemoryAccessFlags, MemoryAccessType};
pub use options::Options;
pub use range::{Range, RangeSet};
pub use state::{DEFAULT_EFLAGS, FprState, GPR_NAMES, GprState, MmstReg, Rword};
pub use symbols::{function_extent, symbolize};
pub use vm::{FAKE_RETURN_ADDRESS, GuestFault, Vm};

/// One line describing how the engine saves FP and vector state on this CPU: the vendor, the
/// XSAVE components saved and their offsets in the CPU's own image as CPUID reports them
/// (for logs and bug reports; `FprState` keeps one layout whatever the CPU's).
#[must_use]
pub fn fp_state_layout() -> String {
    engine::xstate::describe(engine::xstate::XLayout::current())
}
