use qbdi_sdk::prelude::*;

#[inst_callback(preinst, mnemonic = "CALLL")]
fn typo(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(preinst, mnemonic = "XYZ*")]
fn no_match(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(preinst, mnemonic = "J[NE]")]
fn not_a_glob(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(preinst, mnemonic = "")]
fn empty(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(preinst, mnemonic = CALL)]
fn not_a_string(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

fn main() {}
