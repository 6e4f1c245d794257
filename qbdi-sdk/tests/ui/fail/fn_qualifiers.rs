use qbdi_sdk::prelude::*;

#[inst_callback(preinst)]
fn generic<T>(_vm: &mut VmRef, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
    VmAction::Continue
}

#[plugin_init]
async fn init(_vm: &mut VmRef<'_>, _options: &PluginOptions) -> Result<(), String> {
    Ok(())
}

#[plugin_fini]
unsafe fn fini() {}

#[vm_event(SYSCALL_ENTRY)]
extern "C" fn on_syscall(
    _vm: &mut VmRef,
    _s: &VmState,
    _gpr: &mut GprState,
    _fpr: &mut FprState,
) -> VmAction {
    VmAction::Continue
}

fn main() {}
