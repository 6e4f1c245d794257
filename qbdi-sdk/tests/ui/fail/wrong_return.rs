use qbdi_sdk::prelude::*;

#[inst_callback(preinst)]
fn missing(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) {}

#[mem_access(write)]
fn wrong(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> u32 {
    0
}

#[instr_rule]
fn rule(_vm: &mut VmRef, _a: &InstAnalysis) -> Vec<VmAction> {
    Vec::new()
}

#[plugin_init]
fn init(_vm: &mut VmRef, _options: &PluginOptions) -> bool {
    true
}

#[plugin_fini]
fn fini() -> u32 {
    0
}

fn main() {}
