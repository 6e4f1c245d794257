//! Libraries loaded after the run started: `dlopen` and `dlclose`, interposed.
//!
//! A library `dlopen` maps is instrumented when it matches the run's range options
//! (`--all-maps`: every library but qbdi's own and the plugins; `--module NAME`: that one;
//! `--exclude NAME` wins), on every thread's Vm: its executable ranges are published with
//! `qbdi_core::late_code`, and each Vm takes them at its next dispatcher round, before
//! the program reaches the library's functions. Its constructors ran natively, inside
//! `dlopen`. The ranges of a library `dlclose` unmaps are withdrawn.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use qbdi_core::{Permission, Range, current_process_maps};

use crate::preload::next_fn;

/// What decides whether a late library is instrumented.
struct Policy {
    all_maps: bool,
    modules: Vec<String>,
    exclude: Vec<String>,
    /// Full paths never instrumented: the plugins and qbdi's own library.
    own: Vec<String>,
}

static POLICY: OnceLock<Policy> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Instruments libraries loaded from now on as the run's options say.
pub(crate) fn enable(all_maps: bool, modules: &[String], exclude: &[String], own: Vec<String>) {
    let _ = POLICY.set(Policy {
        all_maps,
        modules: modules.to_vec(),
        exclude: exclude.to_vec(),
        own,
    });
    ENABLED.store(true, Ordering::SeqCst);
}

/// Whether `name` (a file's full path) is `module` (a basename or a full path).
fn is_module(name: &str, module: &str) -> bool {
    name == module || name.rsplit('/').next() == Some(module)
}

impl Policy {
    fn wants(&self, name: &str) -> bool {
        if name.is_empty() || name.starts_with('[') || self.own.iter().any(|o| o == name) {
            return false;
        }
        if self.exclude.iter().any(|e| is_module(name, e)) {
            return false;
        }
        self.all_maps || self.modules.iter().any(|m| is_module(name, m))
    }
}

/// The executable file mappings of the process: (range, full path).
fn exec_maps() -> Vec<(Range, String)> {
    current_process_maps(true)
        .into_iter()
        .filter(|m| m.permission.contains(Permission::EXEC) && m.name.starts_with('/'))
        .map(|m| (m.range, m.name))
        .collect()
}

/// Ranges of `after` not in `before`.
fn new_ranges(before: &[(Range, String)], after: &[(Range, String)]) -> Vec<(Range, String)> {
    after
        .iter()
        .filter(|(r, n)| !before.iter().any(|(b, bn)| b == r && bn == n))
        .cloned()
        .collect()
}

type DlopenFn = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;
type DlcloseFn = unsafe extern "C" fn(*mut c_void) -> c_int;

/// `dlopen`, interposed (see the module docs).
///
/// # Safety
/// dlopen's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlopen(file: *const c_char, mode: c_int) -> *mut c_void {
    static REAL: OnceLock<usize> = OnceLock::new();
    // SAFETY: DlopenFn is dlopen's type.
    let Some(real) = (unsafe { next_fn::<DlopenFn>(&REAL, c"dlopen") }) else {
        return std::ptr::null_mut();
    };
    let Some(policy) = POLICY.get().filter(|_| ENABLED.load(Ordering::SeqCst)) else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { real(file, mode) };
    };
    let before = exec_maps();
    // SAFETY: forwarding the caller's arguments.
    let handle = unsafe { real(file, mode) };
    if !handle.is_null() {
        let added: Vec<Range> = new_ranges(&before, &exec_maps())
            .into_iter()
            .filter(|(_, name)| policy.wants(name))
            .map(|(r, _)| r)
            .collect();
        if !added.is_empty() {
            qbdi_core::late_code::publish_ranges(&added, &[]);
        }
    }
    handle
}

/// `dlclose`, interposed: the ranges of what it unmapped are withdrawn.
///
/// # Safety
/// dlclose's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    static REAL: OnceLock<usize> = OnceLock::new();
    // SAFETY: DlcloseFn is dlclose's type.
    let Some(real) = (unsafe { next_fn::<DlcloseFn>(&REAL, c"dlclose") }) else {
        return -1;
    };
    if !ENABLED.load(Ordering::SeqCst) {
        // SAFETY: forwarding the caller's argument.
        return unsafe { real(handle) };
    }
    let before = exec_maps();
    // SAFETY: forwarding the caller's argument.
    let r = unsafe { real(handle) };
    let gone: Vec<Range> = new_ranges(&exec_maps(), &before)
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    if !gone.is_empty() {
        qbdi_core::late_code::publish_ranges(&[], &gone);
    }
    r
}
