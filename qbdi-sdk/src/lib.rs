//! The QBDI-rs plugin SDK: what a plugin crate depends on.
//!
//! A plugin is an ordinary crate built as a `cdylib`. Its functions are registered with
//! attributes, checked at compile time, and one [`plugin!`] names the plugin and exports
//! its entry point:
//!
//! ```ignore
//! use qbdi_sdk::prelude::*;
//! use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
//!
//! qbdi_sdk::plugin!(name: "blocks", description: "counts basic blocks");
//!
//! static BLOCKS: AtomicU64 = AtomicU64::new(0);
//!
//! #[vm_event(BASIC_BLOCK_ENTRY)]
//! fn on_block(_vm: &mut VmRef, _s: &VmState, _g: &mut GprState, _f: &mut FprState) -> VmAction {
//!     BLOCKS.fetch_add(1, Relaxed);
//!     VmAction::Continue
//! }
//!
//! #[plugin_fini]
//! fn fini() {
//!     eprintln!("{} blocks", BLOCKS.load(Relaxed));
//! }
//! ```
//!
//! Callbacks run on every thread of the program, concurrently (each thread runs under a Vm
//! of its own, with the same registrations): plugin state lives in `Sync` statics
//! (atomics, `Mutex`, `OnceLock`; per-thread state in a map keyed by
//! [`VmRef::thread_id`](vm_ref::VmRef::thread_id)), no `static mut`, no `unsafe`; closures
//! registered at run time are `Fn + Send + Sync`. Fini runs once per process, after the
//! callbacks in progress on other threads have returned (later ones are skipped). The host (`qbdi run -p PLUGIN`) loads several plugins into one Vm; each
//! plugin has its own registry ([`inventory`](https://docs.rs/inventory), collected per
//! cdylib) and talks to the host only through the `#[repr(C)]` ABI of [`abi`]. A panic in a
//! plugin's code is caught in the plugin and reported: the host stops the run, names the
//! plugin and the function, and still finalises every plugin.
//!
//! A plugin allocates from the host's private heap, not from libc's malloc (see [`heap`]):
//! [`plugin!`] installs the allocator, so a plugin crate must not declare a
//! `#[global_allocator]` of its own.
//!
//! # Compatibility
//!
//! The crate's version follows semantic versioning for the source of plugins (before 1.0,
//! a 0.x bump may break it, a 0.x.y one does not). The plugin ABI ([`abi::ABI_MAJOR`].
//! [`abi::ABI_MINOR`]) is separate: a built plugin records the ABI it was built for, and a
//! host of ABI M.n loads plugins of ABI M.0 to M.n (minor versions only append). A plugin of
//! another major version, or of a newer minor one, is refused at load and by
//! `qbdi plugin install`, with a message saying which. An incompatible ABI change bumps the
//! ABI's major version and the crate's version.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod abi;
mod convert;
pub mod heap;
mod inline;
mod options;
mod panic;
mod registry;
mod vm_ref;

#[doc(hidden)]
pub mod private;

pub use inline::{BlockCount, BlockCounter, EdgeHash, EdgeMap, ThreadEdgeMaps};
pub use options::{PluginOptions, parse_address_range};
pub use qbdi_macros::{inst_callback, instr_rule, mem_access, plugin_fini, plugin_init, vm_event};
pub use vm_ref::{InstrRuleCallback, Symbol, VmRef};

/// Everything a plugin author needs, in one import: the engine's types (states, actions,
/// events, analyses, memory accesses), the SDK's [`VmRef`] and the attribute macros.
pub mod prelude {
    pub use crate::{
        BlockCount, BlockCounter, EdgeHash, EdgeMap, InstrRuleCallback, PluginOptions, Symbol,
        ThreadEdgeMaps, VmRef, inst_callback, instr_rule, mem_access, plugin_fini, plugin_init,
        vm_event,
    };
    pub use qbdi_core::{
        AnalysisType, CallbackId, ConditionType, FprState, GprState, InstAnalysis, InstPosition,
        MemoryAccess, MemoryAccessFlags, MemoryAccessType, OperandAnalysis, OperandFlag,
        OperandType, PRIORITY_DEFAULT, PRIORITY_MEMACCESS_LIMIT, Range, RangeSet,
        RegisterAccessType, Rword, VmAction, VmError, VmEvent, VmState,
    };
}

/// Names the plugin and exports its entry point (once per plugin crate).
///
/// ```ignore
/// qbdi_sdk::plugin!(
///     name: "drcov",
///     description: "basic block coverage in drcov format",
///     options: [
///         ("out", "file to write", "drcov.<program>.<pid>.log"),
///     ],
/// );
/// ```
///
/// The version is the crate's (`CARGO_PKG_VERSION`). Options are `(key, help, default)`;
/// the host refuses any other key before the program starts.
///
/// It also makes [`heap::PluginAllocator`] the crate's `#[global_allocator]` and exports
/// [`abi::HEAP_SYMBOL`], through which the host hands over its heap (so a plugin crate has
/// no global allocator of its own).
#[macro_export]
macro_rules! plugin {
    (
        name: $name:expr,
        description: $description:expr
        $(, options: [ $( ($key:expr, $help:expr, $default:expr) ),* $(,)? ] )?
        $(,)?
    ) => {
        /// The plugin's entry point: its descriptor for the qbdi host.
        #[unsafe(no_mangle)]
        pub extern "C" fn qbdi_plugin_descriptor() -> *const $crate::abi::PluginDescriptor {
            static INFO: $crate::private::PluginInfo = $crate::private::PluginInfo {
                name: $name,
                version: env!("CARGO_PKG_VERSION"),
                description: $description,
                options: &[ $( $( $crate::private::OptionSpec {
                    key: $key,
                    help: $help,
                    default: $default,
                } ),* )? ],
            };
            $crate::private::descriptor(&INFO)
        }

        /// Takes the host's heap: the plugin allocates from it from now on (plugin ABI 1.1).
        ///
        /// # Safety
        /// `table` is null or a host heap table valid for the life of the process.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn qbdi_plugin_set_heap(table: *const $crate::abi::HeapTable) -> u32 {
            // SAFETY: forwarded under the same contract.
            unsafe { $crate::heap::set_heap(table) }
        }

        /// The plugin's allocator: the host's heap once handed over.
        #[global_allocator]
        static __QBDI_PLUGIN_ALLOCATOR: $crate::heap::PluginAllocator = $crate::heap::PluginAllocator;
    };
}
