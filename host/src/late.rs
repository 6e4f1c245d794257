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

use qbdi_core::Range;

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

/// One object the loader has loaded: where, its file as the loader named it, and its
/// executable segments (page-aligned, as they are mapped) with whether each is writable too.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Loaded {
    base: u64,
    name: String,
    exec: Vec<(Range, bool)>,
}

/// The loaded objects, from the loader's own list (`dl_iterate_phdr`: no system call, where
/// `/proc/self/maps` costs about 100 us to read and parse on a program with a hundred
/// mappings, twice for every `dlopen` of a Python extension).
fn loaded_objects() -> Vec<Loaded> {
    extern "C" fn each(info: *mut libc::dl_phdr_info, _: usize, data: *mut c_void) -> c_int {
        // SAFETY: dl_iterate_phdr's arguments: `info` describes one loaded object (its
        // program headers valid during the call); `data` is the Vec below.
        unsafe {
            let objects = &mut *(data as *mut Vec<Loaded>);
            let info = &*info;
            let name = if info.dlpi_name.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(info.dlpi_name)
                    .to_string_lossy()
                    .into_owned()
            };
            let mut exec = Vec::new();
            for i in 0..info.dlpi_phnum as usize {
                let ph = &*info.dlpi_phdr.add(i);
                if ph.p_type != libc::PT_LOAD || ph.p_flags & libc::PF_X == 0 {
                    continue;
                }
                let start = info.dlpi_addr.wrapping_add(ph.p_vaddr) & !0xfff;
                let end = (info.dlpi_addr.wrapping_add(ph.p_vaddr + ph.p_memsz) + 0xfff) & !0xfff;
                if start < end {
                    exec.push((Range::new(start, end), ph.p_flags & libc::PF_W != 0));
                }
            }
            objects.push(Loaded {
                base: info.dlpi_addr,
                name,
                exec,
            });
        }
        0
    }
    let mut objects: Vec<Loaded> = Vec::new();
    // SAFETY: `each` matches the callback type and only reads what the loader passes.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut objects).cast()) };
    objects
}

/// Objects of `after` not in `before`.
fn new_objects<'a>(before: &[Loaded], after: &'a [Loaded]) -> impl Iterator<Item = &'a Loaded> {
    after.iter().filter(move |o| !before.contains(o))
}

/// The executable ranges of objects `dlopen` added that the policy instruments: (range,
/// whether it is writable too). Names are the files' real paths, as the process maps (and
/// so `--all-maps` at start-up, `--module` and `--exclude`) name them.
fn added_code(policy: &Policy, before: &[Loaded], after: &[Loaded]) -> Vec<(Range, bool)> {
    let mut added = Vec::new();
    for o in new_objects(before, after) {
        // The program (no name) and the vDSO (not a path) are not libraries dlopen maps.
        if !o.name.starts_with('/') || o.exec.is_empty() {
            continue;
        }
        let path = std::fs::canonicalize(&o.name)
            .map_or_else(|_| o.name.clone(), |p| p.to_string_lossy().into_owned());
        if policy.wants(&path) {
            added.extend(o.exec.iter().copied());
        }
    }
    added
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
    let before = loaded_objects();
    // SAFETY: forwarding the caller's arguments.
    let handle = unsafe { real(file, mode) };
    if !handle.is_null() {
        let added = added_code(policy, &before, &loaded_objects());
        // Code of a file mapped read-only: every Vm may take it as readable memory without
        // reading the process maps again.
        let (plain, writable): (Vec<_>, Vec<_>) = added.into_iter().partition(|&(_, w)| !w);
        let plain: Vec<Range> = plain.into_iter().map(|(r, _)| r).collect();
        let writable: Vec<Range> = writable.into_iter().map(|(r, _)| r).collect();
        if !plain.is_empty() {
            qbdi_core::late_code::publish_mapped_code(&plain);
        }
        if !writable.is_empty() {
            qbdi_core::late_code::publish_ranges(&writable, &[]);
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
    let before = loaded_objects();
    // SAFETY: forwarding the caller's argument.
    let r = unsafe { real(handle) };
    let after = loaded_objects();
    let gone: Vec<Range> = new_objects(&after, &before)
        .flat_map(|o| o.exec.iter().map(|&(r, _)| r))
        .collect();
    if !gone.is_empty() {
        qbdi_core::late_code::publish_ranges(&[], &gone);
    }
    r
}
