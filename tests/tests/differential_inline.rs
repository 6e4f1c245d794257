//! Differential suite under inline instrumentation (`Vm::add_block_counter`,
//! `Vm::add_edge_map`): the cases of `differential/cases.rs` with a block counter and an
//! AFL edge map that translated code updates itself at every block entry (every other Vm
//! gets the counter alone, which is emitted differently; every other pair of Vms has two
//! counters whose slots are in the first 2 GiB, which translated code reaches with 32-bit
//! absolute addresses, instead of one on the heap, which it reaches through a register).
//! The guests' results must be the native ones (the inline code keeps every register and flag), and
//! after every call the counts and the map must be exactly what a BASIC_BLOCK_ENTRY
//! callback computed the same way from its VmState.

use qbdi_core::{Vm, VmAction, VmEvent, afl_block_hash};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

#[path = "differential/cases.rs"]
mod cases;

const HEAVY_INPUTS: bool = false;

/// Edge map size (small, so that edges collide and counts wrap as in a fuzzer's map).
const MAP: usize = 1 << 12;

/// What the callback computes: per-block counts, and the edge map.
#[derive(Default)]
struct Expected {
    blocks: HashMap<(u64, u64), u64>,
    map: Vec<u8>,
}

thread_local! {
    /// The edge chain's `prev`: the thread's, shared by every Vm that runs on it, as the
    /// engine's.
    static PREV: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counters by block extent.
type Counters = Rc<RefCell<HashMap<(u64, u64), &'static mut u64>>>;

/// A zeroed page for ever, in the first 2 GiB (`MAP_32BIT`).
fn low_page() -> *mut u8 {
    // SAFETY: a fresh private anonymous page, never unmapped; MAP_32BIT only chooses where.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "a page in the first 2 GiB");
    assert!((p as u64) < 1 << 31);
    p.cast()
}

/// A zeroed u64 for ever: from a page in the first 2 GiB (`MAP_32BIT`) with `low`, from the
/// heap otherwise.
fn new_counter(low: bool) -> &'static mut u64 {
    if !low {
        return Box::leak(Box::new(0u64));
    }
    // SAFETY: the page is zeroed, aligned and this counter's alone.
    unsafe { &mut *low_page().cast::<u64>() }
}

/// A zeroed edge map of `MAP` bytes for ever: in the first 2 GiB with `low` (returns,
/// indirect jumps and indirect calls then count their edges at their site caches), on the
/// heap otherwise.
fn new_map(low: bool) -> *mut u8 {
    const { assert!(MAP <= 4096) };
    if low {
        low_page()
    } else {
        Box::leak(vec![0u8; MAP].into_boxed_slice()).as_mut_ptr()
    }
}

/// A block counter on `vm` whose slots are leaked u64s, found again by extent.
fn add_counter(vm: &mut Vm, low: bool) -> Counters {
    let counters: Counters = Rc::default();
    let slots = Rc::clone(&counters);
    // SAFETY: every counter is leaked (valid forever) and only read between calls.
    unsafe {
        vm.add_block_counter(move |start, end| {
            let mut s = slots.borrow_mut();
            let c = s.entry((start, end)).or_insert_with(|| new_counter(low));
            &raw mut **c
        })
    }
    .expect("a block counter");
    counters
}

fn configure(vm: &mut Vm) -> cases::AfterCall {
    static VMS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = VMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    configure_with(vm, k.is_multiple_of(2), (k / 2).is_multiple_of(2))
}

/// A block counter (two with `low`, in the first 2 GiB), an edge map (in the first 2 GiB
/// with `low`) if `with_edges`, and the callback that computes what they must hold.
fn configure_with(vm: &mut Vm, with_edges: bool, low: bool) -> cases::AfterCall {
    let counters = add_counter(vm, low);
    let second = low.then(|| add_counter(vm, true));
    let map_ptr = new_map(low);
    if with_edges {
        // SAFETY: the map is leaked (valid forever) and only read between calls.
        unsafe { vm.add_edge_map(map_ptr, MAP, afl_block_hash, false) }.expect("an edge map");
    }
    let expected = Rc::new(RefCell::new(Expected {
        map: vec![0; MAP],
        ..Expected::default()
    }));
    let e = Rc::clone(&expected);
    vm.add_vm_event_cb(VmEvent::BASIC_BLOCK_ENTRY, move |_vm, state, _gpr, _fpr| {
        let mut e = e.borrow_mut();
        let (start, end) = (state.basic_block_start, state.basic_block_end);
        *e.blocks.entry((start, end)).or_default() += 1;
        let cur = afl_block_hash(start) & (MAP as u64 - 1);
        let at = (PREV.get() ^ cur) as usize;
        e.map[at] = e.map[at].wrapping_add(1);
        PREV.set(cur >> 1);
        VmAction::Continue
    })
    .expect("a block entry callback");
    Box::new(move |name, _vm| {
        let mut e = expected.borrow_mut();
        assert!(!e.blocks.is_empty(), "{name}: no block entered");
        for counters in std::iter::once(&counters).chain(&second) {
            let counted = counters.borrow();
            for (extent, n) in &e.blocks {
                let inline = counted.get(extent).map_or(0, |c| **c);
                assert_eq!(
                    inline, *n,
                    "{name}: block {:#x}-{:#x} counted {inline} times inline, entered {n} \
                     times (slots low: {low})",
                    extent.0, extent.1
                );
            }
            let total: u64 = counted.values().map(|c| **c).sum();
            let entered: u64 = e.blocks.values().sum();
            assert_eq!(
                total, entered,
                "{name}: inline counts of blocks never entered"
            );
        }
        // SAFETY: the map is not written while no call runs.
        let inline_map = unsafe { std::slice::from_raw_parts(map_ptr, MAP) };
        if with_edges {
            assert!(inline_map == &e.map[..], "{name}: the edge maps differ");
        } else {
            assert!(inline_map.iter().all(|&b| b == 0), "{name}: no edge map");
        }
        // Next call from zero (prev goes on, as in the engine).
        e.blocks.clear();
        e.map.iter_mut().for_each(|b| *b = 0);
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(map_ptr, 0, MAP) };
        for counters in std::iter::once(&counters).chain(&second) {
            counters.borrow_mut().values_mut().for_each(|c| **c = 0);
        }
    })
}

unsafe extern "C" {
    // cf_branches.S
    fn cf_jump_cycle(n: u64, k: u64) -> u64;
}

/// One jump site whose targets come in turn (`cf_jump_cycle`), with an edge map in the
/// first 2 GiB: with one or two targets its site cache answers and counts the edges
/// itself; with three or four it misses at every turn, fills its cache (its lines too)
/// until its countdown (`code_cache::SITE_FILLS`, 256) ends, and then rewrites itself into
/// a plain lookup, whose targets' counting entries count. At every round count, before and
/// well after that, the result must be native and the map the callback's.
#[test]
fn a_jump_site_counts_its_edges_before_and_after_its_cache_stops() {
    let addr = cf_jump_cycle as *const () as u64;
    for k in 1..=4u64 {
        let mut vm = Vm::new();
        let _stack =
            qbdi_core::allocate_virtual_stack(vm.gpr_state_mut(), 1 << 20).expect("guest stack");
        vm.add_instrumented_module_from_addr(addr)
            .expect("the test executable is an executable mapping");
        let mut check = configure_with(&mut vm, true, true);
        for n in [0u64, 1, 7, 255, 256, 257, 600, 2000, 5] {
            // SAFETY: k is in 1..=4, the size of the table.
            let native = unsafe { cf_jump_cycle(n, k) };
            assert_eq!(vm.call(addr, &[n, k]), Ok(native), "k={k} n={n}");
            check(&format!("cf_jump_cycle k={k} n={n}"), &vm);
        }
    }
}

/// A Vm carries at most 32 block counters and 8 edge maps; more are refused with a message
/// (a counter translated code cannot place would count nowhere).
#[test]
fn too_many_counters_or_maps_are_refused() {
    let mut vm = Vm::new();
    let sink: &'static mut u64 = Box::leak(Box::new(0));
    let sink = sink as *mut u64 as usize;
    for _ in 0..32 {
        // SAFETY: a leaked counter, valid forever, that nothing reads.
        unsafe { vm.add_block_counter(move |_, _| sink as *mut u64) }.expect("32 counters");
    }
    // SAFETY: as above (refused anyway).
    let e = unsafe { vm.add_block_counter(move |_, _| sink as *mut u64) }.expect_err("33rd");
    assert!(e.to_string().contains("at most 32"), "{e}");
    let map: &'static mut [u8] = Box::leak(vec![0u8; 64].into_boxed_slice());
    let map = map.as_mut_ptr();
    for _ in 0..8 {
        // SAFETY: a leaked map, valid forever.
        unsafe { vm.add_edge_map(map, 64, afl_block_hash, true) }.expect("8 maps");
    }
    // SAFETY: as above (refused anyway).
    let e = unsafe { vm.add_edge_map(map, 64, afl_block_hash, true) }.expect_err("9th");
    assert!(e.to_string().contains("at most 8"), "{e}");
    // SAFETY: as above (refused: not a power of two).
    assert!(unsafe { Vm::new().add_edge_map(map, 60, afl_block_hash, true) }.is_err());
    // Once every instrumentation is deleted, the limits start over.
    vm.delete_all_instrumentations();
    // SAFETY: as above.
    unsafe { vm.add_edge_map(map, 64, afl_block_hash, true) }.expect("a map again");
    // SAFETY: as above.
    unsafe { vm.add_block_counter(move |_, _| sink as *mut u64) }.expect("a counter again");
}
