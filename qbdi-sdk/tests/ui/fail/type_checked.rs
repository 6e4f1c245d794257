use qbdi_sdk::prelude::*;

// Signature checks are by name; a lookalike type gets through them and the coercion to the
// SDK's function type reports it, on the function's name.
mod fake {
    pub struct GprState;
}

#[inst_callback(preinst)]
fn lookalike(_vm: &mut VmRef, _gpr: &mut fake::GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

fn main() {}
