use qbdi_sdk::prelude::*;

#[inst_callback(preinst)]
fn shared_gpr(_vm: &mut VmRef, _gpr: &GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[vm_event(BASIC_BLOCK_ENTRY)]
fn swapped(_vm: &mut VmRef, _s: &VmState, _fpr: &mut FprState, _gpr: &mut GprState) -> VmAction {
    VmAction::Continue
}

#[instr_rule]
fn by_value(_vm: VmRef, _a: InstAnalysis) -> Vec<InstrRuleCallback> {
    Vec::new()
}

#[plugin_init]
fn init(_vm: &mut VmRef, _options: &mut PluginOptions) -> Result<(), String> {
    Ok(())
}

fn main() {}
