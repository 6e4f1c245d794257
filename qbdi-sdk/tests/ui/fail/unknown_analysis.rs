use qbdi_sdk::prelude::*;

#[instr_rule(analysis = OPERAND | SYMBOLS)]
fn typo(_vm: &mut VmRef, _a: &InstAnalysis) -> Vec<InstrRuleCallback> {
    Vec::new()
}

#[instr_rule(OPERANDS)]
fn positional(_vm: &mut VmRef, _a: &InstAnalysis) -> Vec<InstrRuleCallback> {
    Vec::new()
}

#[instr_rule(analysis = "OPERANDS")]
fn string(_vm: &mut VmRef, _a: &InstAnalysis) -> Vec<InstrRuleCallback> {
    Vec::new()
}

fn main() {}
