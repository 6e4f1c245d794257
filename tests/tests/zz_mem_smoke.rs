use qbdi_core::*;
use std::cell::RefCell;
use std::rc::Rc;
unsafe extern "C" {
    fn smoke_fill(out: *mut i64, n: i64);
    fn smoke_sum(inp: *const i64, n: i64) -> i64;
}
#[test]
fn mem() {
    let mut vm = Vm::new();
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).unwrap();
    vm.add_instrumented_module_from_addr(smoke_fill as usize as u64)
        .unwrap();
    let writes = Rc::new(RefCell::new(Vec::new()));
    let w = writes.clone();
    vm.add_mem_access_cb(
        MemoryAccessType::WRITE,
        move |vm, _g, _f| {
            for a in vm.inst_memory_access() {
                if a.access_type == MemoryAccessType::WRITE {
                    w.borrow_mut().push(*a);
                }
            }
            VmAction::Continue
        },
        PRIORITY_DEFAULT,
    )
    .unwrap();
    let mut buf = vec![0i64; 20];
    vm.call(smoke_fill as usize as u64, &[buf.as_mut_ptr() as u64, 20])
        .unwrap();
    let ws = writes.borrow();
    let base = buf.as_ptr() as u64;
    let mine: Vec<_> = ws
        .iter()
        .filter(|a| a.access_address >= base && a.access_address < base + 160)
        .collect();
    eprintln!(
        "{} writes, {} in buf; first {:?}",
        ws.len(),
        mine.len(),
        mine.first()
    );
    assert_eq!(mine.len(), 20);
    for (i, a) in mine.iter().enumerate() {
        assert_eq!(a.access_address, base + 8 * i as u64);
        assert_eq!(a.value, (i * 3 + 1) as u64);
        assert_eq!(a.size, 8);
    }
    let reads = Rc::new(RefCell::new(Vec::new()));
    let r = reads.clone();
    vm.add_mem_range_cb(
        base + 16,
        base + 24,
        MemoryAccessType::READ,
        move |vm, _g, _f| {
            r.borrow_mut()
                .extend(vm.inst_memory_access().iter().copied());
            VmAction::Continue
        },
    )
    .unwrap();
    let s = vm
        .call(smoke_sum as usize as u64, &[buf.as_ptr() as u64, 20])
        .unwrap();
    assert_eq!(s as i64, unsafe { smoke_sum(buf.as_ptr(), 20) });
    eprintln!("range reads {:?}", reads.borrow());
    assert!(
        reads
            .borrow()
            .iter()
            .any(|a| a.access_address == base + 16 && a.value == 7)
    );
}
