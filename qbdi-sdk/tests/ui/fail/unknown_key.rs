use qbdi_sdk::prelude::*;

#[inst_callback(preinst, prio = 1)]
fn inst(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[vm_event(BASIC_BLOCK_ENTRY, priority = 1)]
fn event(_vm: &mut VmRef, _s: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[mem_access(read, mnemonic = "MOV")]
fn access(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[instr_rule(analyse = OPERANDS)]
fn rule(_vm: &mut VmRef, _a: &InstAnalysis) -> Vec<InstrRuleCallback> {
    Vec::new()
}

fn main() {}
