use qbdi_sdk::prelude::*;

#[inst_callback(preinst, priority = 1, priority = 2)]
fn inst(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[instr_rule(analysis = OPERANDS, analysis = SYMBOL)]
fn rule(_vm: &mut VmRef, _a: &InstAnalysis) -> Vec<InstrRuleCallback> {
    Vec::new()
}

fn main() {}
