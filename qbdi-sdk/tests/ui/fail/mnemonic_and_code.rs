use qbdi_sdk::prelude::*;

#[inst_callback(preinst, mnemonic = "CALL", code = "Call_rm64")]
fn both(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

fn main() {}
