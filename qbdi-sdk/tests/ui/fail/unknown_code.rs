use qbdi_sdk::prelude::*;

#[inst_callback(preinst, code = "Call_rm65")]
fn typo(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(preinst, code = "CALL_RM64")]
fn case(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

fn main() {}
