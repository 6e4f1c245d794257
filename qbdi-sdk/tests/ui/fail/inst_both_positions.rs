use qbdi_sdk::prelude::*;

#[inst_callback(preinst, postinst)]
fn both(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(postinst | preinst)]
fn union(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(preinst, preinst)]
fn twice(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

fn main() {}
