//! The engine calls no heap allocator between entering the guest and leaving the run
//! (docs/architecture.md, "No allocation between entering and leaving the guest"): the
//! dispatcher and the translator may run while the guest holds malloc's state half
//! updated (instrumented libc, a new block reached inside `_int_malloc`), and glibc's
//! malloc is not reentrant. This test binary counts the allocations of its own thread
//! while libc's malloc and free run under a Vm, first translated, then from the cache.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use qbdi_core::{Vm, allocate_virtual_stack};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Relaxed);
    }
}

// SAFETY: forwards to the system allocator; counting has no effect on the allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count();
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The allocations `f` makes on this thread.
fn allocations_of(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Relaxed) - before
}

/// A function of this executable: run first, it places the code cache near this
/// executable (as `qbdi run` places it near the program's `main`), far from libc.
#[inline(never)]
extern "C" fn first(x: u64) -> u64 {
    std::hint::black_box(x) + 1
}

#[test]
fn translating_and_running_libc_malloc_allocates_nothing() {
    let mut vm = Vm::new();
    let _stack = allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).unwrap();
    let here = first as extern "C" fn(u64) -> u64 as usize as u64;
    vm.add_instrumented_module_from_addr(here).unwrap();
    assert_eq!(vm.call(here, &[41]).unwrap(), 42);
    vm.add_instrumented_module("libc.so.6").unwrap();
    let malloc = libc::malloc as unsafe extern "C" fn(usize) -> *mut libc::c_void as usize as u64;
    let free = libc::free as unsafe extern "C" fn(*mut libc::c_void) as usize as u64;
    let round = |vm: &mut Vm| {
        for size in [24u64, 100, 1000, 5000, 200_000] {
            let p = vm.call(malloc, &[size]).unwrap();
            assert_ne!(p, 0);
            vm.call(free, &[p]).unwrap();
        }
    };
    // Run once, then clear the cache, so the next round translates every block again
    // (libc's RIP-relative operands are out of the cache's rel32 reach: each is rewritten
    // through a scratch register).
    round(&mut vm);
    vm.clear_all_cache();
    let translating = allocations_of(|| round(&mut vm));
    let cached = allocations_of(|| round(&mut vm));
    assert_eq!(
        (translating, cached),
        (0, 0),
        "allocations while translating, then while running from the cache"
    );
}
