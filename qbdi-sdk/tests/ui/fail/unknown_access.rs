use qbdi_sdk::prelude::*;

#[mem_access(reads)]
fn typo(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[mem_access(READ_WRITE)]
fn case(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[mem_access(priority = 3)]
fn missing(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[mem_access(write, priority)]
fn no_value(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

fn main() {}
