//! Bad input to the `Vm` gets the right `VmError`, with a message that names the address
//! (in hex) or the module, and the ranges API does what it says (adding libc by basename,
//! removing ranges makes code uninstrumented again).

use qbdi_core::{VirtualStack, Vm, VmError, allocate_virtual_stack, module_names};

unsafe extern "C" {
    safe fn cf_jmp_rel8() -> u64;
    safe static cf_jmp_rel8_end: u8;
    safe fn cf_jmp_rel32() -> u64;
}

fn jmp_rel8() -> u64 {
    cf_jmp_rel8 as *const () as u64
}

fn jmp_rel32() -> u64 {
    cf_jmp_rel32 as *const () as u64
}

fn vm_with_stack() -> (Vm, VirtualStack) {
    let mut vm = Vm::new();
    let stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 16).expect("guest stack");
    (vm, stack)
}

fn assert_mentions(e: &VmError, what: &str) {
    let msg = e.to_string();
    assert!(
        msg.contains(what),
        "the message of {e:?} should mention {what:?}: {msg}"
    );
}

/// An address that is certainly not mapped: a page we map and unmap again.
fn unmapped_address() -> u64 {
    // SAFETY: anonymous mapping with no hint, checked, then unmapped; we never touch it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(libc::munmap(p, 4096), 0);
        p as u64 + 0x10
    }
}

#[test]
fn run_outside_every_instrumented_range_is_not_instrumented() {
    let (mut vm, _stack) = vm_with_stack();
    let f = jmp_rel8();
    let e = vm.run(f, 0x2a).unwrap_err();
    assert_eq!(e, VmError::NotInstrumented(f));
    assert_mentions(&e, &format!("{f:#x}"));
}

#[test]
fn call_outside_every_instrumented_range_is_not_instrumented() {
    let (mut vm, _stack) = vm_with_stack();
    let f = jmp_rel8();
    // Some other range is instrumented, not this one.
    vm.add_instrumented_range(0x1000, 0x2000)
        .expect("a valid range");
    let e = vm.call(f, &[1, 2]).unwrap_err();
    assert_eq!(e, VmError::NotInstrumented(f));
    assert_mentions(&e, &format!("{f:#x}"));
    assert_eq!(vm.precache_basic_block(f), Err(VmError::NotInstrumented(f)));
}

#[test]
fn empty_range_is_invalid() {
    let mut vm = Vm::new();
    let a = jmp_rel8();
    let e = vm.add_instrumented_range(a, a).unwrap_err();
    assert_eq!(e, VmError::InvalidRange { start: a, end: a });
    assert_mentions(&e, &format!("{a:#x}"));
    assert!(
        vm.instrumented_ranges().is_empty(),
        "a rejected range adds nothing"
    );
}

#[test]
fn inverted_range_is_invalid() {
    let mut vm = Vm::new();
    let (start, end) = (jmp_rel8() + 16, jmp_rel8());
    let e = vm.add_instrumented_range(start, end).unwrap_err();
    assert_eq!(e, VmError::InvalidRange { start, end });
    assert_mentions(&e, &format!("{start:#x}"));
    assert_mentions(&e, &format!("{end:#x}"));
    assert!(
        vm.instrumented_ranges().is_empty(),
        "a rejected range adds nothing"
    );
    assert_eq!(
        vm.remove_instrumented_range(start, end),
        Err(VmError::InvalidRange { start, end })
    );
}

#[test]
fn unknown_module_is_module_not_found() {
    let mut vm = Vm::new();
    let e = vm.add_instrumented_module("no-such-module.so").unwrap_err();
    assert_eq!(e, VmError::ModuleNotFound("no-such-module.so".to_string()));
    assert_mentions(&e, "no-such-module.so");
    assert!(vm.instrumented_ranges().is_empty());
}

#[test]
fn call_with_a_zero_stack_pointer_is_no_stack() {
    let mut vm = Vm::new();
    vm.add_instrumented_module_from_addr(jmp_rel8())
        .expect("test executable");
    vm.gpr_state_mut().rsp = 0;
    let e = vm.call(jmp_rel8(), &[]).unwrap_err();
    assert_eq!(e, VmError::NoStack);
    assert_mentions(&e, "allocate_virtual_stack");
}

#[test]
fn module_from_an_unmapped_address_is_address_not_mapped() {
    let mut vm = Vm::new();
    let addr = unmapped_address();
    let e = vm.add_instrumented_module_from_addr(addr).unwrap_err();
    assert_eq!(e, VmError::AddressNotMapped(addr));
    assert_mentions(&e, &format!("{addr:#x}"));
    assert_eq!(
        vm.remove_instrumented_module_from_addr(addr),
        Err(VmError::AddressNotMapped(addr))
    );
    assert!(vm.instrumented_ranges().is_empty());
}

#[test]
fn libc_is_instrumented_by_its_basename() {
    let mut vm = Vm::new();
    vm.add_instrumented_module("libc.so.6")
        .expect("libc.so.6 is mapped in every test");
    assert!(
        module_names().iter().any(|n| n.ends_with("/libc.so.6")),
        "module_names() lists libc by full path: {:?}",
        module_names()
    );
    // SAFETY: dlsym with a NUL-terminated name and the default handle.
    let getpid = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"getpid".as_ptr()) } as u64;
    assert_ne!(getpid, 0);
    assert!(
        vm.instrumented_ranges().contains(getpid),
        "getpid at {getpid:#x} is in libc"
    );
    assert!(
        !vm.instrumented_ranges().contains(jmp_rel8()),
        "only libc was added"
    );
}

#[test]
fn removed_range_is_no_longer_instrumented() {
    let (mut vm, _stack) = vm_with_stack();
    let (f, f_end) = (jmp_rel8(), &cf_jmp_rel8_end as *const u8 as u64);
    vm.add_instrumented_module_from_addr(f)
        .expect("test executable");
    assert_eq!(vm.call(f, &[]), Ok(cf_jmp_rel8()));
    vm.remove_instrumented_range(f, f_end).expect("valid range");
    assert_eq!(vm.call(f, &[]), Err(VmError::NotInstrumented(f)));
    // The rest of the module is still instrumented.
    assert_eq!(vm.call(jmp_rel32(), &[]), Ok(cf_jmp_rel32()));
}

#[test]
fn removed_module_and_all_ranges_are_no_longer_instrumented() {
    let (mut vm, _stack) = vm_with_stack();
    let f = jmp_rel8();
    vm.add_instrumented_module_from_addr(f)
        .expect("test executable");
    assert_eq!(vm.call(f, &[]), Ok(11));
    vm.remove_instrumented_module_from_addr(f)
        .expect("test executable");
    assert_eq!(vm.call(f, &[]), Err(VmError::NotInstrumented(f)));
    assert!(vm.instrumented_ranges().is_empty());

    vm.add_instrumented_module_from_addr(f)
        .expect("test executable");
    assert_eq!(vm.call(f, &[]), Ok(11));
    vm.remove_all_instrumented_ranges();
    assert_eq!(vm.call(f, &[]), Err(VmError::NotInstrumented(f)));
}
