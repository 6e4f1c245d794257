use qbdi_sdk::prelude::*;

#[plugin_fini]
struct Fini;

#[inst_callback(preinst)]
static COUNT: u32 = 0;

fn main() {
    let _ = (Fini, COUNT);
}
