use qbdi_sdk::prelude::*;

struct Tool;

impl Tool {
    #[inst_callback(preinst)]
    fn on_inst(&self, _gpr: &mut GprState, _fpr: &mut FprState) -> VmAction {
        VmAction::Continue
    }
}

fn main() {
    let _ = Tool;
}
