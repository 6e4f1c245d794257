use qbdi_sdk::prelude::*;

#[inst_callback]
fn bare(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(priority = 1, mnemonic = "RET")]
fn keys_only(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(priority)]
fn key_without_value(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

fn main() {}
