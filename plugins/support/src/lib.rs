//! What the bundled plugins share (linked statically into each plugin's `.so`):
//!
//! - [`output`]: the `out=PATH` option (default `<plugin>.<pid>.log`, `-` for stderr) and
//!   the writer behind it;
//! - [`maps`]: `/proc/self/maps` parsed into mappings and modules;
//! - [`sync`]: locking that recovers from poisoning, and the bounded `try_lock` fini uses
//!   (fini may run from a signal handler that interrupted a callback holding the lock);
//! - [`budget`]: the `max=N` option of the trace plugins;
//! - [`fork`]: what a plugin's state and outputs become in a `fork` child;
//! - [`hash`]: a cheap hasher for maps keyed by code addresses;
//! - [`counts`]: block execution counts, counted inline;
//! - [`json`]: JSON text for the `format=jsonl`/`format=json` outputs.

#![warn(missing_docs)]

pub mod budget;
pub mod counts;
pub mod fork;
pub mod hash;
pub mod json;
pub mod maps;
pub mod output;
pub mod sync;
