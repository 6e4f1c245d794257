//! Plugins in `fork` children.
//!
//! A child made by `fork` stays instrumented (the code cache is copied with the process) and
//! runs its plugins' fini at its own exit. It also inherits everything the parent's plugins
//! had collected, and their open outputs: without care, the parent's buffered trace lines
//! would be written a second time by the child, into the parent's file, and the child's
//! counts would include the parent's. So:
//!
//! - outputs are per process: the default `<plugin>.<pid>.log` takes the writer's pid, and
//!   an explicit `out=PATH` becomes `PATH.<pid>` in a child ([`output`](crate::output));
//! - a plugin registers, at init, what its state needs in a child with [`on_fork_child`]
//!   (a [`Stream`](crate::output::Stream) reopens without writing what the parent had
//!   buffered; counters start again from zero). The functions run in the child, right after
//!   `fork` returns there (glibc's `pthread_atfork` child handlers), before the child's own
//!   code goes on.
//!
//! Not covered: a child made by a raw `fork`/`clone` syscall that bypasses glibc's `fork`
//! (no handler runs), and `vfork` (the child shares the parent's memory until it executes or
//! exits; it runs no fini).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Most functions one plugin registers.
const MAX_HANDLERS: usize = 16;

static HANDLERS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Runs `f` in every `fork` child of this process, right after the fork (see the module
/// docs). Call from init. Each plugin has its own copy of this library, so handlers of
/// different plugins never mix.
pub fn on_fork_child(f: fn()) {
    {
        let mut h = HANDLERS.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() >= MAX_HANDLERS || h.contains(&f) {
            return;
        }
        if h.capacity() == 0 {
            // Never grows later: the child handler must not allocate (the heap's state is
            // copied from the parent mid-operation only if another thread was in it).
            h.reserve_exact(MAX_HANDLERS);
        }
        h.push(f);
    }
    if !REGISTERED.swap(true, Ordering::AcqRel) {
        // SAFETY: pthread_atfork with a valid `extern "C" fn()` child handler and no other
        // handlers; it only records the pointers (the plugin is never unloaded).
        let _ = unsafe { libc::pthread_atfork(None, None, Some(run_child_handlers)) };
    }
}

/// The `pthread_atfork` child handler: runs the registered functions. Only the thread that
/// forked exists in the child; a lock another thread held at the fork stays held, so the
/// list is only tried.
extern "C" fn run_child_handlers() {
    let Ok(handlers) = HANDLERS.try_lock() else {
        return;
    };
    let fns: [Option<fn()>; MAX_HANDLERS] = std::array::from_fn(|i| handlers.get(i).copied());
    drop(handlers);
    for f in fns.into_iter().flatten() {
        // A panic must not unwind into libc's fork.
        let _ = std::panic::catch_unwind(f);
    }
}
