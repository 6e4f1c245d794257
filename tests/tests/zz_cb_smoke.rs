use qbdi_core::*;
use std::cell::Cell;
use std::rc::Rc;
unsafe extern "C" {
    fn smoke_fib(n: i64) -> i64;
    fn smoke_loop(n: i64) -> i64;
    fn smoke_libc(n: i64) -> i64;
}
#[test]
fn counts() {
    for (f, a) in [(smoke_fib as unsafe extern "C" fn(i64) -> i64, 15i64), (smoke_loop, 1000), (smoke_libc, 50)] {
        let mut vm = Vm::new();
        let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).unwrap();
        vm.add_instrumented_module_from_addr(f as usize as u64).unwrap();
        let pre = Rc::new(Cell::new(0u64));
        let post = Rc::new(Cell::new(0u64));
        let bbs = Rc::new(Cell::new(0u64));
        let calls = Rc::new(Cell::new(0u64));
        let p = pre.clone();
        vm.add_code_cb(InstPosition::PreInst, move |_vm, _g, _f| { p.set(p.get() + 1); VmAction::Continue }, PRIORITY_DEFAULT).unwrap();
        let p = post.clone();
        vm.add_code_cb(InstPosition::PostInst, move |_vm, _g, _f| { p.set(p.get() + 1); VmAction::Continue }, PRIORITY_DEFAULT).unwrap();
        let b = bbs.clone();
        vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, move |_vm, _s, _g, _f| { b.set(b.get() + 1); VmAction::Continue }).unwrap();
        let c = calls.clone();
        vm.add_mnemonic_cb("CALL*", InstPosition::PreInst, move |vm, _g, _f| { let a = vm.inst_analysis(AnalysisType::INSTRUCTION | AnalysisType::DISASSEMBLY); assert!(a.is_call, "{a:?}"); c.set(c.get() + 1); VmAction::Continue }, PRIORITY_DEFAULT).unwrap();
        let native = unsafe { f(a) };
        let got = vm.call(f as usize as u64, &[a as u64]).unwrap() as i64;
        assert_eq!(got, native);
        eprintln!("pre {} post {} bbs {} calls {}", pre.get(), post.get(), bbs.get(), calls.get());
        assert_eq!(pre.get(), post.get());
        assert!(pre.get() > 0 && bbs.get() > 0);
    }
}
