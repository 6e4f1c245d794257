//! Differential suite with memory access recording: the cases of `differential/cases.rs`,
//! with `record_memory_access(READ_WRITE)` and an `add_mem_access_cb(READ_WRITE)` callback on
//! every guest instruction that accesses memory. The guest's results must still be the
//! native ones.
//!
//! The callback checks the recorded values against memory: before an instruction that only
//! reads (the callback then runs in PreInst), every read of 1, 2, 4 or 8 bytes with a value
//! must hold what memory holds at that address at that moment (the instruction has not run
//! yet, nothing else ran since the value was recorded). After an instruction that writes
//! (PostInst), every such write must hold what memory holds now (the value after the
//! instruction). It also counts accesses: every call must have recorded some (each guest
//! function at least returns, reading the stack), and checked some read values.

use qbdi_core::{MemoryAccessFlags, MemoryAccessType, PRIORITY_DEFAULT, Vm, VmAction};
use std::cell::RefCell;
use std::rc::Rc;

#[path = "differential/cases.rs"]
mod cases;

/// Each input costs a callback per memory instruction: the largest are left to the plain
/// suite.
const HEAVY_INPUTS: bool = false;

/// What the callback saw since the last call ended.
#[derive(Default)]
struct Seen {
    accesses: u64,
    checked: u64,
    /// The first few mismatches.
    errors: Vec<String>,
}

/// The `size`-byte value at `addr`, zero-extended.
///
/// # Safety
/// `[addr, addr + size)` must be readable.
unsafe fn load(addr: u64, size: u16) -> u64 {
    // SAFETY: per the caller.
    unsafe {
        match size {
            1 => u64::from(std::ptr::read_unaligned(addr as *const u8)),
            2 => u64::from(std::ptr::read_unaligned(addr as *const u16)),
            4 => u64::from(std::ptr::read_unaligned(addr as *const u32)),
            _ => std::ptr::read_unaligned(addr as *const u64),
        }
    }
}

fn configure(vm: &mut Vm) -> cases::AfterCall {
    let seen = Rc::new(RefCell::new(Seen::default()));
    vm.record_memory_access(MemoryAccessType::READ_WRITE)
        .expect("record reads and writes");
    let s = Rc::clone(&seen);
    vm.add_mem_access_cb(
        MemoryAccessType::READ_WRITE,
        move |vm, gpr, _fpr| {
            let accesses = vm.inst_memory_access();
            let mut seen = s.borrow_mut();
            seen.accesses += accesses.len() as u64;
            let Some(first) = accesses.first() else {
                if seen.errors.len() < 8 {
                    seen.errors
                        .push(format!("memory callback at rip {:#x} with no access", gpr.rip));
                }
                return VmAction::Continue;
            };
            // Only-reading instructions get the callback in PreInst (rip still on them).
            let before = gpr.rip == first.inst_address
                && accesses
                    .iter()
                    .all(|a| a.access_type == MemoryAccessType::READ);
            // Before: the reads (all there is). After: the writes (the reads' values are
            // from before the instruction, which may have changed them).
            let checked_type = if before {
                MemoryAccessType::READ
            } else {
                MemoryAccessType::WRITE
            };
            for a in accesses {
                if a.access_type != checked_type
                    || a.flags.contains(MemoryAccessFlags::UNKNOWN_VALUE)
                    || !matches!(a.size, 1 | 2 | 4 | 8)
                {
                    continue;
                }
                // SAFETY: a recorded value (UNKNOWN_VALUE absent) was loaded from these very
                // bytes by the engine's inline code just before this callback (before the
                // instruction for a read, after it for a write), on this thread, with no
                // guest code in between: they are mapped and readable.
                let now = unsafe { load(a.access_address, a.size) };
                if now == a.value {
                    seen.checked += u64::from(before);
                } else if seen.errors.len() < 8 {
                    seen.errors.push(format!(
                        "instruction {:#x}: {:?} of {} bytes at {:#x}: recorded value {:#x}, memory holds {now:#x}",
                        a.inst_address, a.access_type, a.size, a.access_address, a.value
                    ));
                }
            }
            VmAction::Continue
        },
        PRIORITY_DEFAULT,
    )
    .expect("a memory callback");
    Box::new(move |name, _vm| {
        let seen = std::mem::take(&mut *seen.borrow_mut());
        assert!(
            seen.errors.is_empty(),
            "{name}: recorded values differ from memory:\n{}",
            seen.errors.join("\n")
        );
        assert!(seen.accesses > 0, "{name}: no memory access recorded");
        assert!(
            seen.checked > 0,
            "{name}: no recorded read value could be checked"
        );
    })
}
