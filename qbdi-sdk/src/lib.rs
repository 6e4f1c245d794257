//! What a plugin crate depends on. For now only the prelude: the engine's public API.
//! The plugin registry, the C ABI and the attribute macros come with issue 4.

/// Everything a plugin author needs, in one import.
pub mod prelude {
    pub use qbdi_core::*;
}
