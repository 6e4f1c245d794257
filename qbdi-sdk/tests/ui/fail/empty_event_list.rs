use qbdi_sdk::prelude::*;

#[vm_event]
fn bare(_vm: &mut VmRef, _s: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[vm_event()]
fn empty(_vm: &mut VmRef, _s: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

fn main() {}
