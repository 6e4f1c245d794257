//! Real code no one here wrote: glibc and libm themselves instrumented, their functions
//! called under the Vm and compared with native calls. On this machine glibc picks its
//! AVX2/EVEX/AVX-512 string routines, so these also run vector code from the cache.

use qbdi_core::{Vm, allocate_virtual_stack};
use std::ffi::{CStr, c_char, c_int, c_void};

fn libc_vm() -> (Vm, qbdi_core::VirtualStack) {
    let mut vm = Vm::new();
    let stack = allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).unwrap();
    vm.add_instrumented_module("libc.so.6").unwrap();
    (vm, stack)
}

fn addr<T>(f: T) -> u64
where
    T: Copy,
{
    assert_eq!(std::mem::size_of::<T>(), 8);
    // SAFETY: T is a function pointer (checked size); its bits are its address.
    unsafe { std::mem::transmute_copy::<T, u64>(&f) }
}

#[test]
fn string_functions_of_instrumented_libc_match_native() {
    let (mut vm, _stack) = libc_vm();
    let strlen_fn = addr(libc::strlen as unsafe extern "C" fn(*const c_char) -> usize);
    let mut text = Vec::new();
    for len in [0usize, 1, 7, 15, 16, 31, 32, 63, 64, 65, 200, 4095, 10_000] {
        text.clear();
        text.extend((0..len).map(|i| b'a' + (i % 23) as u8));
        text.push(0);
        for offset in [0usize, 1, 3] {
            if offset > len {
                continue;
            }
            let p = text[offset..].as_ptr();
            // SAFETY: p is NUL-terminated.
            let native = unsafe { libc::strlen(p.cast()) };
            assert_eq!(
                vm.call(strlen_fn, &[p as u64]).unwrap() as usize,
                native,
                "strlen of {len} at +{offset}"
            );
        }
    }
    let memchr_fn =
        addr(libc::memchr as unsafe extern "C" fn(*const c_void, c_int, usize) -> *mut c_void);
    let hay: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    for needle in [0u8, 1, 17, 250, 255] {
        // SAFETY: hay is valid for its length.
        let native = unsafe { libc::memchr(hay.as_ptr().cast(), needle.into(), hay.len()) } as u64;
        let got = vm
            .call(
                memchr_fn,
                &[hay.as_ptr() as u64, needle.into(), hay.len() as u64],
            )
            .unwrap();
        assert_eq!(got, native, "memchr {needle}");
    }
    let strcmp_fn =
        addr(libc::strcmp as unsafe extern "C" fn(*const c_char, *const c_char) -> c_int);
    for (a, b) in [
        ("abc", "abd"),
        ("", ""),
        (
            "same string here, quite long indeed",
            "same string here, quite long indeed",
        ),
        ("zz", "z"),
    ] {
        let (a, b) = (
            std::ffi::CString::new(a).unwrap(),
            std::ffi::CString::new(b).unwrap(),
        );
        // SAFETY: both strings are NUL-terminated.
        let native = unsafe { libc::strcmp(a.as_ptr(), b.as_ptr()) };
        let got = vm
            .call(strcmp_fn, &[a.as_ptr() as u64, b.as_ptr() as u64])
            .unwrap() as c_int;
        assert_eq!(got.signum(), native.signum(), "strcmp({a:?}, {b:?})");
    }
}

#[test]
fn memcpy_and_memset_of_instrumented_libc_copy_the_same_bytes() {
    let (mut vm, _stack) = libc_vm();
    let memcpy_fn = addr(
        libc::memcpy as unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> *mut c_void,
    );
    let memset_fn =
        addr(libc::memset as unsafe extern "C" fn(*mut c_void, c_int, usize) -> *mut c_void);
    let src: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for len in [0usize, 1, 8, 33, 64, 127, 256, 1000, 4096, 65_537, 99_990] {
        let mut native = vec![0u8; len + 16];
        let mut guest = vec![0u8; len + 16];
        // SAFETY: both buffers hold len + 16 bytes; src holds at least len + 3.
        unsafe {
            libc::memcpy(
                native[3..].as_mut_ptr().cast(),
                src[3..].as_ptr().cast(),
                len,
            )
        };
        vm.call(
            memcpy_fn,
            &[
                guest[3..].as_mut_ptr() as u64,
                src[3..].as_ptr() as u64,
                len as u64,
            ],
        )
        .unwrap();
        assert_eq!(native, guest, "memcpy of {len}");
        // SAFETY: as above.
        unsafe { libc::memset(native.as_mut_ptr().cast(), 0x5a, len) };
        vm.call(memset_fn, &[guest.as_mut_ptr() as u64, 0x5a, len as u64])
            .unwrap();
        assert_eq!(native, guest, "memset of {len}");
    }
}

extern "C" fn compare_u32(a: *const c_void, b: *const c_void) -> c_int {
    // SAFETY: qsort passes pointers to elements of the u32 array being sorted.
    let (a, b) = unsafe { (*(a as *const u32), *(b as *const u32)) };
    a.cmp(&b) as c_int
}

#[test]
fn instrumented_qsort_calls_a_native_comparator_and_sorts() {
    let (mut vm, _stack) = libc_vm();
    let qsort_fn = addr(
        libc::qsort
            as unsafe extern "C" fn(
                *mut c_void,
                usize,
                usize,
                Option<unsafe extern "C" fn(*const c_void, *const c_void) -> c_int>,
            ),
    );
    let mut v: Vec<u32> = (0..20_000u32)
        .map(|i| i.wrapping_mul(2654435761) % 100_000)
        .collect();
    let mut expected = v.clone();
    expected.sort();
    vm.call(
        qsort_fn,
        &[
            v.as_mut_ptr() as u64,
            v.len() as u64,
            4,
            compare_u32 as extern "C" fn(*const c_void, *const c_void) -> c_int as usize as u64,
        ],
    )
    .unwrap();
    assert_eq!(v, expected);
}

#[test]
fn instrumented_snprintf_formats_like_native() {
    let (mut vm, _stack) = libc_vm();
    // snprintf is variadic: doubles go in xmm registers and al counts them.
    let f = addr(
        libc::snprintf as unsafe extern "C" fn(*mut c_char, usize, *const c_char, ...) -> c_int,
    );
    let fmt = c"%d|%5.2f|%e|%s|%x|%g";
    let word = c"word";
    let mut native = [0u8; 128];
    // SAFETY: the format matches the arguments; the buffer holds 128 bytes.
    let n = unsafe {
        libc::snprintf(
            native.as_mut_ptr().cast(),
            128,
            fmt.as_ptr(),
            -42,
            1.23456f64,
            6.02e23f64,
            word.as_ptr(),
            0xbeefu32,
            1e-5f64,
        )
    };
    let mut guest = [0u8; 128];
    let fpr = vm.fpr_state_mut();
    fpr.xmm0[..8].copy_from_slice(&1.23456f64.to_le_bytes());
    fpr.xmm1[..8].copy_from_slice(&6.02e23f64.to_le_bytes());
    fpr.xmm2[..8].copy_from_slice(&1e-5f64.to_le_bytes());
    vm.gpr_state_mut().rax = 3;
    let args = [
        guest.as_mut_ptr() as u64,
        128,
        fmt.as_ptr() as u64,
        (-42i64) as u64,
        word.as_ptr() as u64,
        0xbeef,
    ];
    // vm.call sets the integer registers; rax (the vector count) must survive: use simulate_call + run.
    let gpr = vm.gpr_state_mut();
    let saved_rsp = gpr.rsp;
    qbdi_core::simulate_call(gpr, qbdi_core::FAKE_RETURN_ADDRESS, &args);
    vm.run(f, qbdi_core::FAKE_RETURN_ADDRESS).unwrap();
    let got = vm.gpr_state().rax as c_int;
    vm.gpr_state_mut().rsp = saved_rsp;
    assert_eq!(got, n);
    let a = CStr::from_bytes_until_nul(&native).unwrap();
    let b = CStr::from_bytes_until_nul(&guest).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        a.to_str().unwrap(),
        "-42| 1.23|6.020000e+23|word|beef|1e-05"
    );
}

#[test]
fn instrumented_strtol_sets_errno_like_native() {
    let (mut vm, _stack) = libc_vm();
    let f = addr(
        libc::strtol
            as unsafe extern "C" fn(*const c_char, *mut *mut c_char, c_int) -> libc::c_long,
    );
    for (text, base) in [
        (c"12345", 10),
        (c"-0x7fff", 16),
        (c"99999999999999999999999", 10),
        (c"zz", 36),
    ] {
        // SAFETY: the text is NUL-terminated; errno is this thread's.
        let (native, native_errno) = unsafe {
            *libc::__errno_location() = 0;
            let v = libc::strtol(text.as_ptr(), std::ptr::null_mut(), base);
            (v, *libc::__errno_location())
        };
        vm.set_errno(0);
        let got = vm.call(f, &[text.as_ptr() as u64, 0, base as u64]).unwrap() as libc::c_long;
        assert_eq!(
            (got, vm.errno()),
            (native, native_errno),
            "strtol({text:?}, {base})"
        );
    }
}

#[test]
fn instrumented_libm_sin_and_pow_match_native() {
    let mut vm = Vm::new();
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).unwrap();
    let sin_fn = addr(libm_sin as extern "C" fn(f64) -> f64);
    // The libm function itself, not our wrapper.
    let sin_addr = resolve("sin");
    vm.add_instrumented_module_from_addr(sin_addr).unwrap();
    let _ = sin_fn;
    for x in [0.0f64, 0.5, 1.0, -2.5, std::f64::consts::PI, 1e6, 1e-300] {
        vm.fpr_state_mut().xmm0[..8].copy_from_slice(&x.to_le_bytes());
        vm.call(sin_addr, &[]).unwrap();
        let got = f64::from_le_bytes(vm.fpr_state().xmm0[..8].try_into().unwrap());
        assert_eq!(got.to_bits(), libm_sin(x).to_bits(), "sin({x})");
    }
}

extern "C" fn libm_sin(x: f64) -> f64 {
    x.sin()
}

fn resolve(name: &str) -> u64 {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: dlopen of the system libm and dlsym of a symbol name; the handle is kept.
    unsafe {
        let h = libc::dlopen(c"libm.so.6".as_ptr(), libc::RTLD_NOW);
        assert!(!h.is_null(), "libm.so.6 loads");
        let p = libc::dlsym(h, name.as_ptr());
        assert!(!p.is_null(), "{name:?} is in libm");
        p as u64
    }
}

#[test]
fn instrumented_malloc_and_free_do_not_deadlock_with_the_dispatcher() {
    // The first calls translate blocks while the guest holds malloc's arena lock: the
    // dispatcher must not allocate from the same heap then.
    let (mut vm, _stack) = libc_vm();
    let malloc_fn = addr(libc::malloc as unsafe extern "C" fn(usize) -> *mut c_void);
    let free_fn = addr(libc::free as unsafe extern "C" fn(*mut c_void));
    let mut held = Vec::new();
    for size in (0..2000usize).map(|i| (i * 97) % 70_000 + 1) {
        let p = vm.call(malloc_fn, &[size as u64]).unwrap();
        assert_ne!(p, 0, "malloc({size})");
        // SAFETY: p is a fresh allocation of `size` bytes.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0xab, size) };
        held.push(p);
        if held.len() > 50 {
            vm.call(free_fn, &[held.remove(0)]).unwrap();
        }
    }
    for p in held {
        vm.call(free_fn, &[p]).unwrap();
    }
}

extern "C" fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

#[test]
fn libc_far_from_the_code_cache_runs_with_rewritten_rip_relative_operands() {
    // The cache is placed near the first code run: this test binary. libc is mapped far
    // away (more than 2 GiB), so its RIP-relative operands cannot stay RIP-relative and
    // go through a scratch register instead.
    let mut vm = Vm::new();
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).unwrap();
    let square_fn = square as extern "C" fn(u64) -> u64 as usize as u64;
    vm.add_instrumented_module_from_addr(square_fn).unwrap();
    assert_eq!(vm.call(square_fn, &[12]).unwrap(), 144);
    let strtol_fn = addr(
        libc::strtol
            as unsafe extern "C" fn(*const c_char, *mut *mut c_char, c_int) -> libc::c_long,
    );
    let distance = strtol_fn.abs_diff(square_fn);
    assert!(
        distance > 1 << 31,
        "libc is {distance:#x} bytes from the test binary: not far enough for this test"
    );
    vm.add_instrumented_module("libc.so.6").unwrap();
    let snprintf_fn = addr(
        libc::snprintf as unsafe extern "C" fn(*mut c_char, usize, *const c_char, ...) -> c_int,
    );
    let fmt = c"[%s] %ld %08x %-6d|";
    let word = c"far";
    let mut native = [0u8; 64];
    // SAFETY: the format matches the arguments.
    unsafe {
        libc::snprintf(
            native.as_mut_ptr().cast(),
            64,
            fmt.as_ptr(),
            word.as_ptr(),
            -7i64,
            0x1234u32,
            42,
        )
    };
    let mut guest = [0u8; 64];
    vm.gpr_state_mut().rax = 0;
    let args = [
        guest.as_mut_ptr() as u64,
        64,
        fmt.as_ptr() as u64,
        word.as_ptr() as u64,
        (-7i64) as u64,
        0x1234,
        42,
    ];
    let saved_rsp = vm.gpr_state().rsp;
    qbdi_core::simulate_call(vm.gpr_state_mut(), qbdi_core::FAKE_RETURN_ADDRESS, &args);
    vm.run(snprintf_fn, qbdi_core::FAKE_RETURN_ADDRESS).unwrap();
    vm.gpr_state_mut().rsp = saved_rsp;
    assert_eq!(
        CStr::from_bytes_until_nul(&guest).unwrap(),
        CStr::from_bytes_until_nul(&native).unwrap()
    );
    for text in [c"123", c"-99999", c"0x10"] {
        // SAFETY: NUL-terminated text.
        let native = unsafe { libc::strtol(text.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(
            vm.call(strtol_fn, &[text.as_ptr() as u64, 0, 0]).unwrap() as libc::c_long,
            native
        );
    }
}

unsafe extern "C" {
    fn thr_pthreads(n: u32) -> u64;
    fn thr_raw_clone(k: u64) -> u64;
    fn thr_fork_vfork(k: u64) -> u64;
}

/// A Vm instrumenting libc and this test executable (the guest functions of threads.c).
fn libc_and_guest_vm() -> (Vm, qbdi_core::VirtualStack) {
    let (mut vm, stack) = libc_vm();
    vm.add_instrumented_module_from_addr(thr_pthreads as *const () as u64)
        .unwrap();
    (vm, stack)
}

/// pthread_create, glibc's clone with CLONE_VM and a fork and a vfork, all from guest code
/// with libc instrumented (their syscalls run in translated code): every child runs (the
/// threads natively, from the instruction after the syscall; the fork child instrumented),
/// and the parent goes on under the Vm with the results it would have natively.
#[test]
fn threads_and_children_made_from_instrumented_libc_run_and_the_parent_goes_on() {
    let (mut vm, _stack) = libc_and_guest_vm();
    let blocks = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let b = blocks.clone();
    vm.add_vm_event_cb(qbdi_core::VmEvent::BASIC_BLOCK_ENTRY, move |_, _, _, _| {
        b.set(b.get() + 1);
        qbdi_core::VmAction::Continue
    })
    .unwrap();
    for n in [1u32, 4] {
        // SAFETY: plain C function.
        let native = unsafe { thr_pthreads(n) };
        assert_ne!(native, !0, "native pthreads");
        let got = vm
            .call(thr_pthreads as *const () as u64, &[n.into()])
            .unwrap();
        assert_eq!(got, native, "{n} pthreads under the Vm");
    }
    for k in [3u64, 77] {
        // SAFETY: plain C function.
        let native = unsafe { thr_raw_clone(k) };
        let got = vm.call(thr_raw_clone as *const () as u64, &[k]).unwrap();
        assert_eq!(got, native, "clone(CLONE_VM) under the Vm");
        // SAFETY: plain C function.
        let native = unsafe { thr_fork_vfork(k) };
        let got = vm.call(thr_fork_vfork as *const () as u64, &[k]).unwrap();
        assert_eq!(got, native, "fork and vfork under the Vm");
    }
    assert!(
        blocks.get() > 1000,
        "the parent ran instrumented: {} blocks",
        blocks.get()
    );
}

/// Set in the test processes [`every_test_here_passes_under_each_glibc_string_routine_choice`]
/// starts, so they do not start more.
const CHILD_VAR: &str = "QBDI_TEST_GLIBC_SETTING";

/// glibc picks its string routines once, at start-up, by CPU (`qbdi_tests::glibc`): this
/// process runs whichever this CPU gets. So every other test of this file runs again in a
/// process of its own under each `GLIBC_TUNABLES` setting (the other AVX-512 preference,
/// AVX-512 off), whatever the CPU; and the settings are checked to select different
/// `memmove` routines (the address `dlsym` resolves).
#[test]
fn every_test_here_passes_under_each_glibc_string_routine_choice() {
    if std::env::var_os(CHILD_VAR).is_some() {
        return;
    }
    let settings = qbdi_tests::glibc::settings();
    if settings.len() == 1 {
        eprintln!("skipped: no AVX-512 on this CPU, glibc has one choice of string routines");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut memmoves = Vec::new();
    for (name, tunables) in settings {
        let mut cmd = std::process::Command::new(&exe);
        cmd.env(CHILD_VAR, name)
            .args(["--test-threads=1", "--nocapture"]);
        match tunables {
            Some(t) => cmd.env("GLIBC_TUNABLES", t),
            None => cmd.env_remove("GLIBC_TUNABLES"),
        };
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "under GLIBC_TUNABLES={tunables:?} ({name}):\n{text}\n{err}"
        );
        assert!(text.contains("test result: ok"), "{name}: {text}");
        let memmove = err
            .lines()
            .find_map(|l| l.strip_prefix("memmove at libc+"))
            .unwrap_or_else(|| panic!("{name}: the child reports its memmove:\n{err}"))
            .to_owned();
        memmoves.push((name, memmove));
    }
    let mut distinct: Vec<&String> = memmoves.iter().map(|(_, m)| m).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        memmoves.len(),
        "each setting selects another memmove: {memmoves:?}"
    );
}

/// Reports (on stderr) where the `memmove` glibc selected for this process lies in libc,
/// for [`every_test_here_passes_under_each_glibc_string_routine_choice`].
#[test]
fn report_the_selected_memmove() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    // SAFETY: dlsym with a NUL-terminated name on the global namespace (which runs the
    // IFUNC resolver, as relocations do); dladdr on the address it returned.
    let (addr, base) = unsafe {
        let addr = libc::dlsym(libc::RTLD_DEFAULT, c"memmove".as_ptr());
        let mut info: libc::Dl_info = std::mem::zeroed();
        assert_ne!(libc::dladdr(addr, &mut info), 0);
        (addr as u64, info.dli_fbase as u64)
    };
    eprintln!("memmove at libc+{:#x}", addr - base);
}
