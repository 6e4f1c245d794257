//! The `qbdi` host: plugin loading and checking ([`plugin`]), the host side of the plugin
//! ABI ([`host_api`]), sessions of plugins attached to one Vm ([`session`]), and the preload
//! library that runs a whole program from its `main` under the Vm ([`preload`]).
//!
//! Built twice from the same sources: as an rlib for the `qbdi` command, and as the cdylib
//! `libqbdi_host.so` that `qbdi run` injects with `LD_PRELOAD`.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod config;
pub mod elf;
mod host_api;
pub mod log;
pub mod plugin;
pub mod preload;
pub mod session;
mod unwind;
