//! Smallest end-to-end checks of the engine: a few C functions, native vs under the Vm.

use qbdi_core::{Vm, allocate_virtual_stack};

unsafe extern "C" {
    fn smoke_fib(n: i64) -> i64;
    fn smoke_loop(n: i64) -> i64;
    fn smoke_libc(n: i64) -> i64;
    fn smoke_qsort(n: i64) -> i64;
}

fn check(f: unsafe extern "C" fn(i64) -> i64, args: &[i64]) {
    let mut vm = Vm::new();
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).unwrap();
    vm.add_instrumented_module_from_addr(f as usize as u64)
        .unwrap();
    for &a in args {
        // SAFETY: the guest functions take and return plain integers.
        let native = unsafe { f(a) };
        let got = vm.call(f as usize as u64, &[a as u64]).unwrap() as i64;
        assert_eq!(got, native, "arg {a}");
    }
}

#[test]
fn recursive_fib_matches_native() {
    check(smoke_fib, &[0, 1, 2, 10, 20]);
}

#[test]
fn loop_matches_native() {
    check(smoke_loop, &[0, 1, 1000, 100000]);
}

#[test]
fn libc_calls_match_native() {
    check(smoke_libc, &[0, 1, 100]);
}

#[test]
fn qsort_with_guest_comparator_matches_native() {
    check(smoke_qsort, &[1, 10, 1000]);
}
