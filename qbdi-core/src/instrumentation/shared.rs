//! What a Vm, its engine and its callbacks (through `VmRef`) share.

use super::Instrumentation;
use super::vm_ref::AnalysisCache;
use crate::memory_access::{MemoryAccess, MemoryRecorder};

/// What the Vm, its engine and the callbacks (through `VmRef`) share: the instrumentation
/// and the analyses computed so far. Heap-allocated once; the engine keeps its address.
pub(crate) struct Shared {
    pub inst: Instrumentation,
    pub analyses: AnalysisCache,
    pub memory: MemoryRecorder,
    /// The accesses of the instruction whose callbacks run on the general path
    /// (`VmRef::inst_memory_access`), filled before they run (capacity: one instruction's).
    pub view: Vec<MemoryAccess>,
}
