use qbdi_sdk::prelude::*;

#[plugin_init(required)]
fn init(_vm: &mut VmRef, _options: &PluginOptions) -> Result<(), String> {
    Ok(())
}

#[plugin_fini(order = 1)]
fn fini() {}

fn main() {}
