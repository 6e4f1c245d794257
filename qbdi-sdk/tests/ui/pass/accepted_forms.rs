//! Forms the attributes accept besides the plain ones.
use qbdi_sdk::prelude::*;

qbdi_sdk::plugin!(name: "forms", description: "accepted forms");

// Functions named like the trampoline's parameters: the expansion still calls these.
#[inst_callback(preinst, priority = -2147483648)]
fn vm(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[inst_callback(postinst, priority = 7i32, mnemonic = "j??")]
pub fn gpr(_vm: &mut VmRef<'_>, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

// Full paths, lifetimes, a raw identifier, and a trailing comma.
#[inst_callback(preinst, code = "Call_rm64",)]
pub(crate) fn r#fn<'a>(
    _vm: &'a mut qbdi_sdk::VmRef<'_>,
    _gpr: &mut qbdi_sdk::prelude::GprState,
    _fpr: &'a mut FprState,
) -> qbdi_sdk::prelude::VmAction {
    VmAction::Continue
}

#[mem_access(read | write)]
fn state(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[mem_access(read_write, priority = 0)]
const fn fpr(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[vm_event(SEQUENCE_ENTRY | SEQUENCE_EXIT | BASIC_BLOCK_NEW | EXEC_TRANSFER_CALL
    | EXEC_TRANSFER_RETURN | SYSCALL_ENTRY | SYSCALL_EXIT)]
fn events(_vm: &mut VmRef, _s: &VmState, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Stop
}

#[instr_rule]
fn rule(_vm: &mut VmRef, _a: &InstAnalysis) -> std::vec::Vec<InstrRuleCallback> {
    Vec::new()
}

#[instr_rule(analysis = INSTRUCTION | DISASSEMBLY)]
fn rule_disassembly(_vm: &mut VmRef, _a: &InstAnalysis) -> Vec<qbdi_sdk::InstrRuleCallback> {
    Vec::new()
}

// Any error type that implements Display.
#[plugin_init]
fn init(_vm: &mut VmRef, _options: &PluginOptions) -> std::io::Result<()> {
    Ok(())
}

#[plugin_fini]
fn fini() -> () {}

fn main() {
    let descriptor = qbdi_plugin_descriptor();
    // The descriptor installs the plugin's panic hook, which keeps messages for the host:
    // back to the default one, so that a failed assertion here is printed.
    drop(std::panic::take_hook());
    // SAFETY: the descriptor and its arrays are the plugin's leaked statics.
    let registrations = unsafe {
        let d = &*descriptor;
        std::slice::from_raw_parts(d.registrations, d.registration_count)
    };
    assert_eq!(registrations.len(), 10);
}
