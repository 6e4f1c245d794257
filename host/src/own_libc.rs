//! libc's `getenv` for the host's own calls, whatever the program defines.
//!
//! A program may define `getenv` itself (bash does): the loader then binds every object's
//! calls of `getenv` to the program's, the host's included (Rust's `std::env::var`). Without
//! `--all-maps` the program's code is guarded (see `reentry`), so such a call from the host
//! faults into a re-entry, whose new Vm reads an environment variable again... and `qbdi
//! run -- bash -c ...` died of the recursion. This object defines a hidden `getenv`: every
//! call from the host's code (std's, qbdi-core's) binds to it at link time, and it calls
//! libc's, found past this library (`RTLD_NEXT`). Not exported: the program and the
//! libraries keep the `getenv` the loader gives them.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

std::arch::global_asm!(
    ".globl getenv",
    ".hidden getenv",
    ".type getenv, @function",
    "getenv:",
    "jmp {own}",
    own = sym own_getenv,
);

type GetenvFn = unsafe extern "C" fn(*const c_char) -> *mut c_char;

/// libc's `getenv` of `name`.
extern "C" fn own_getenv(name: *const c_char) -> *mut c_char {
    static REAL: AtomicUsize = AtomicUsize::new(0);
    let mut f = REAL.load(Ordering::Relaxed);
    if f == 0 {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT searches the objects loaded
        // after this one (libc, for the host library and for `qbdi`).
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"getenv".as_ptr()) } as usize;
        REAL.store(f, Ordering::Relaxed);
    }
    if f == 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: `f` is libc's getenv (GetenvFn is its type); `name` is the caller's
    // NUL-terminated string, as getenv requires.
    unsafe { std::mem::transmute::<*mut c_void, GetenvFn>(f as *mut c_void)(name) }
}
