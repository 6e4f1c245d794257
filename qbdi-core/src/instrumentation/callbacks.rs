//! The boxed callbacks the instrumentation keeps: what `Vm` and `VmRef` registration
//! methods take, called with a [`VmRef`].

use super::vm_ref::VmRef;
use crate::callback::{InstPosition, VmAction, VmState};
use crate::state::{FprState, GprState};

/// An instruction callback, boxed.
pub type InstCallback = Box<dyn FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction>;
/// A VM event callback, boxed.
pub type VmCallback =
    Box<dyn FnMut(&mut VmRef<'_>, &VmState, &mut GprState, &mut FprState) -> VmAction>;

/// A callback an instrumentation rule attaches to the instruction it was asked about.
pub struct InstrRuleCallback {
    pub(crate) position: InstPosition,
    pub(crate) callback: InstCallback,
    pub(crate) priority: i32,
}

impl InstrRuleCallback {
    /// A callback at `position` with `priority`.
    pub fn new(
        position: InstPosition,
        callback: impl FnMut(&mut VmRef<'_>, &mut GprState, &mut FprState) -> VmAction + 'static,
        priority: i32,
    ) -> InstrRuleCallback {
        InstrRuleCallback {
            position,
            callback: Box::new(callback),
            priority,
        }
    }
}

impl std::fmt::Debug for InstrRuleCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrRuleCallback")
            .field("position", &self.position)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}
