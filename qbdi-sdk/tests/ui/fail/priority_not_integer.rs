use qbdi_sdk::prelude::*;

#[inst_callback(preinst, priority = "high")]
fn string(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[mem_access(read, priority = 1.5)]
fn float(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(postinst, priority = 3_000_000_000)]
fn too_big(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(postinst, priority = 1u8)]
fn suffix(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(postinst, priority = PRIORITY_DEFAULT)]
fn constant(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

fn main() {}
