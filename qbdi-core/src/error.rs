//! The one error type of the engine. Messages say what happened and what to do.

use crate::state::Rword;
use std::fmt;

/// Everything that can go wrong in the engine's public API.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VmError {
    /// A range whose end is not above its start.
    InvalidRange {
        /// Start of the rejected range.
        start: Rword,
        /// End of the rejected range.
        end: Rword,
    },
    /// No mapped module has this name.
    ModuleNotFound(String),
    /// No executable mapping contains this address.
    AddressNotMapped(Rword),
    /// `run`/`call` was asked to start outside every instrumented range.
    NotInstrumented(Rword),
    /// `call` with a zero stack pointer.
    NoStack,
    /// The guest reached bytes that do not decode as an x86-64 instruction.
    InvalidInstruction(Rword),
    /// The guest reached an instruction the engine refuses to run (far and privileged
    /// control transfers, transactional memory).
    UnsupportedInstruction {
        /// Guest address of the instruction.
        address: Rword,
        /// Its disassembly.
        disassembly: String,
    },
    /// The operating system refused memory the engine needs.
    OutOfMemory(String),
    /// A translated instruction could not be re-encoded.
    Translation {
        /// Guest address of the instruction.
        address: Rword,
        /// What the encoder said.
        reason: String,
    },
    /// A memory allocation request the engine cannot satisfy as asked.
    InvalidArgument(String),
    /// The guest thread made the `exit` system call (only while threads are followed, see
    /// [`crate::threads`]): the Vm's state is at that `syscall`, which has not run. The
    /// embedder ends the thread ([`crate::threads::exit_thread`]).
    ThreadExit {
        /// The exit status the guest passed.
        status: i32,
    },
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::InvalidRange { start, end } => write!(
                f,
                "invalid range [{start:#x}, {end:#x}): the end must be above the start (ranges are half-open)"
            ),
            VmError::ModuleNotFound(name) => write!(
                f,
                "no module named {name:?} is mapped in this process: pass a basename such as \"libc.so.6\" or a full path as listed by module_names()"
            ),
            VmError::AddressNotMapped(addr) => write!(
                f,
                "address {addr:#x} is not in any executable mapping of this process (see current_process_maps())"
            ),
            VmError::NotInstrumented(addr) => write!(
                f,
                "cannot start at {addr:#x}: it is outside every instrumented range; add it with add_instrumented_range or add_instrumented_module_from_addr first"
            ),
            VmError::NoStack => write!(
                f,
                "the guest has no stack (rsp is 0): give it one with allocate_virtual_stack(vm.gpr_state_mut(), size) before call"
            ),
            VmError::InvalidInstruction(addr) => write!(
                f,
                "the guest reached undecodable bytes at {addr:#x}; the run stopped there with the guest state as it was before them"
            ),
            VmError::UnsupportedInstruction {
                address,
                disassembly,
            } => write!(
                f,
                "the guest reached `{disassembly}` at {address:#x}, which the engine does not run (far, privileged or transactional control flow); exclude this code from the instrumented ranges"
            ),
            VmError::OutOfMemory(what) => write!(f, "out of memory: {what}"),
            VmError::Translation { address, reason } => {
                write!(
                    f,
                    "cannot translate the instruction at {address:#x}: {reason}"
                )
            }
            VmError::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            VmError::ThreadExit { status } => write!(
                f,
                "the guest thread made the exit system call (status {status}); end the thread with threads::exit_thread"
            ),
        }
    }
}

impl std::error::Error for VmError {}
