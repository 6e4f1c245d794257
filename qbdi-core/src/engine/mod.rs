//! The engine: everything between `Vm`'s API and the guest's instructions running.
//!
//! - [`code_cache`]: the mapping that holds the context, the inline table and the code;
//! - [`context`] and [`context_switch`]: the guest state slots and the host <-> guest switch;
//! - [`translator`] (with [`emitter`]): guest block -> host code;
//! - [`ib_table`]: inline indirect-branch lookup;
//! - [`dispatcher`]: the run loop, block linking;
//! - [`exec_broker`]: handing control to native (uninstrumented) code and back;
//! - [`directory`]: bookkeeping of blocks and exit stubs; [`xstate`]: FP state saving;
//! - [`callbacks`]: the Rust side of callback sites; [`direct_call`]: calling simple
//!   callbacks straight from translated code; [`inline`]: counters and edge maps translated
//!   code updates itself.
//!
//! [`engine`] holds the `Engine` of one Vm: its cache directory (which guest block is where,
//! which stubs are linked) and its invalidation. It never runs guest code itself: the
//! dispatcher does. [`segments`]: the thread's FS/GS bases.

mod callbacks;
mod code_cache;
mod context;
mod context_switch;
mod direct_call;
mod directory;
mod dispatcher;
pub(crate) mod emitter;
mod encode;
#[allow(clippy::module_inception)] // the Engine, named after it
mod engine;
mod exec_broker;
mod ib_table;
pub(crate) mod inline;
mod maps_reader;
mod memory_recording;
mod perf_map;
mod segments;
mod translator;
pub(crate) mod xstate;

pub(crate) use engine::{Engine, NO_STOP};
pub(crate) use segments::{fsgsbase_usable, thread_segment_bases};
