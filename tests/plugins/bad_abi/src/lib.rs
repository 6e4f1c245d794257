//! A plugin built for a future plugin ABI (major 99): the host must refuse it by its
//! version, naming the file, before reading anything else of it.

use qbdi_sdk::abi::{PLUGIN_MAGIC, PluginDescriptor, StrRef};

/// The descriptor of a plugin from the future.
struct Descriptor(PluginDescriptor);

// SAFETY: immutable static data only.
unsafe impl Sync for Descriptor {}

static DESCRIPTOR: Descriptor = Descriptor(PluginDescriptor {
    magic: PLUGIN_MAGIC,
    abi_major: 99,
    abi_minor: 0,
    size: size_of::<PluginDescriptor>() as u32,
    name: StrRef::new("bad_abi"),
    version: StrRef::new("0.0.0"),
    sdk_version: StrRef::new("99.0.0"),
    description: StrRef::new("built for ABI 99"),
    registrations: std::ptr::null(),
    registration_count: 0,
    options: std::ptr::null(),
    option_count: 0,
});

/// The entry point, returning the future descriptor.
#[unsafe(no_mangle)]
pub extern "C" fn qbdi_plugin_descriptor() -> *const PluginDescriptor {
    &DESCRIPTOR.0
}
