//! The `qbdi` host: plugin loading and checking ([`plugin`]), the host side of the plugin
//! ABI ([`host_api`]), sessions of plugins attached to one Vm ([`session`]), and the preload
//! library that runs a whole program from its `main` under the Vm ([`preload`]).
//!
//! Built twice from the same sources: as an rlib for the `qbdi` command, and as the cdylib
//! `libqbdi_host.so` that `qbdi run` injects with `LD_PRELOAD`. Both allocate from the
//! private heap of `qbdi-heap`, never from libc's malloc ([`heap`]).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod config;
pub mod elf;
pub mod heap;
mod host_api;
mod late;
pub mod log;
mod own_libc;
pub mod plugin;
pub mod preload;
mod reentry;
pub mod session;
mod signals;
mod threads;
mod unwind;

/// The process's allocator, in `qbdi` and in `libqbdi_host.so`: the private heap, which never
/// calls libc's malloc (host code runs while the guest may be inside it). Plugins reach the
/// same heap through the plugin ABI ([`heap::table`]).
#[global_allocator]
static ALLOCATOR: qbdi_heap::PrivateAllocator = qbdi_heap::PrivateAllocator;
