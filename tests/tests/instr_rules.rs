//! Instrumentation rules: asked once per translated instruction, their callbacks run like
//! any other; a range rule only sees its range; deleting the rule removes its callbacks.

use qbdi_core::*;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;

unsafe extern "C" {
    fn smoke_fib(n: i64) -> i64;
    fn smoke_loop(n: i64) -> i64;
}

fn vm_for(f: u64) -> (Vm, VirtualStack) {
    let mut vm = Vm::new();
    let stack = allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).unwrap();
    vm.add_instrumented_module_from_addr(f).unwrap();
    (vm, stack)
}

#[test]
fn rule_attaches_callbacks_to_the_instructions_it_chooses() {
    let f = smoke_fib as unsafe extern "C" fn(i64) -> i64 as usize as u64;
    let (mut vm, _stack) = vm_for(f);
    let asked = Rc::new(RefCell::new(Vec::new()));
    let calls_by_rule = Rc::new(Cell::new(0u64));
    let (a, c) = (asked.clone(), calls_by_rule.clone());
    vm.add_instr_rule(
        move |_vm, inst| {
            a.borrow_mut().push(inst.address);
            if !inst.is_call {
                return Vec::new();
            }
            let c = c.clone();
            vec![InstrRuleCallback::new(
                InstPosition::PreInst,
                move |vm, _gpr, _fpr| {
                    assert!(vm.inst_analysis(AnalysisType::INSTRUCTION).is_call);
                    c.set(c.get() + 1);
                    VmAction::Continue
                },
                PRIORITY_DEFAULT,
            )]
        },
        AnalysisType::INSTRUCTION,
    )
    .unwrap();
    let calls_by_mnemonic = Rc::new(Cell::new(0u64));
    let m = calls_by_mnemonic.clone();
    vm.add_mnemonic_cb(
        "CALL",
        InstPosition::PreInst,
        move |_vm, _g, _f| {
            m.set(m.get() + 1);
            VmAction::Continue
        },
        PRIORITY_DEFAULT,
    )
    .unwrap();
    // SAFETY: plain integer function.
    let native = unsafe { smoke_fib(12) };
    assert_eq!(vm.call(f, &[12]).unwrap() as i64, native);
    assert!(calls_by_rule.get() > 0);
    assert_eq!(calls_by_rule.get(), calls_by_mnemonic.get());
    // Asked at translation only (an instruction in two overlapping blocks is asked twice):
    // a second run on the warm cache asks nothing, and every instruction was asked about.
    let unique: HashSet<u64> = asked.borrow().iter().copied().collect();
    assert!(unique.contains(&f));
    let before = asked.borrow().len();
    assert_eq!(vm.call(f, &[12]).unwrap() as i64, native);
    assert_eq!(asked.borrow().len(), before);
}

#[test]
fn range_rule_sees_only_its_range_and_deleting_it_removes_its_callbacks() {
    let f = smoke_loop as unsafe extern "C" fn(i64) -> i64 as usize as u64;
    let (mut vm, _stack) = vm_for(f);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let hits = Rc::new(Cell::new(0u64));
    let (s, h) = (seen.clone(), hits.clone());
    let id = vm
        .add_instr_rule_range(
            f,
            f + 8,
            move |_vm, inst| {
                s.borrow_mut().push(inst.address);
                let h = h.clone();
                vec![InstrRuleCallback::new(
                    InstPosition::PostInst,
                    move |_v, _g, _f| {
                        h.set(h.get() + 1);
                        VmAction::Continue
                    },
                    0,
                )]
            },
            AnalysisType::INSTRUCTION,
        )
        .unwrap();
    // SAFETY: plain integer function.
    let native = unsafe { smoke_loop(50) };
    assert_eq!(vm.call(f, &[50]).unwrap() as i64, native);
    assert!(!seen.borrow().is_empty());
    assert!(
        seen.borrow().iter().all(|&a| (f..f + 8).contains(&a)),
        "{:x?}",
        seen.borrow()
    );
    let after_first = hits.get();
    assert!(after_first > 0);
    vm.delete_instrumentation(id).unwrap();
    assert_eq!(vm.call(f, &[50]).unwrap() as i64, native);
    assert_eq!(hits.get(), after_first);
    assert!(
        vm.add_instr_rule_range(f + 8, f, |_v, _i| Vec::new(), AnalysisType::INSTRUCTION)
            .is_err()
    );
}
