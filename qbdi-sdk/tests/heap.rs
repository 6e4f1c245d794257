//! A plugin's allocator (what `plugin!` installs): the system's until the host hands over
//! its heap, then the host's; blocks from before are freed by the system's allocator and
//! moved into the host's heap when they grow. The host here is a stand-in: a `qbdi-heap`
//! heap of its own behind a `HeapTable`, as the real host builds it.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ptr;
use std::sync::OnceLock;

use qbdi_heap::Heap;
use qbdi_sdk::abi::HeapTable;
use qbdi_sdk::heap::{host_heap_range, in_host_heap};

qbdi_sdk::plugin!(name: "heaptest", description: "allocates, to see from where");

/// The stand-in host's heap.
static HOST: Heap = Heap::with_reserve(1 << 30);

unsafe extern "C" fn alloc(size: usize, align: usize) -> *mut u8 {
    Layout::from_size_align(size, align).map_or(ptr::null_mut(), |l| HOST.alloc(l))
}

unsafe extern "C" fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    Layout::from_size_align(size, align).map_or(ptr::null_mut(), |l| HOST.alloc_zeroed(l))
}

unsafe extern "C" fn dealloc(p: *mut u8, size: usize, align: usize) {
    // SAFETY: the table's contract: a block of HOST with its layout.
    unsafe { HOST.dealloc(p, Layout::from_size_align(size, align).unwrap()) }
}

unsafe extern "C" fn realloc(p: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8 {
    // SAFETY: the table's contract: a block of HOST with its layout.
    unsafe { HOST.realloc(p, Layout::from_size_align(size, align).unwrap(), new_size) }
}

fn table(heap: &Heap) -> HeapTable {
    let (start, end) = heap.range().expect("a reservation");
    HeapTable {
        size: size_of::<HeapTable>(),
        alloc,
        alloc_zeroed,
        dealloc,
        realloc,
        start,
        end,
    }
}

fn inside<T>(p: *const T) -> bool {
    in_host_heap(p.cast())
}

#[test]
fn allocations_move_to_the_host_heap_once_it_is_handed_over() {
    // Before: the system's heap.
    let early_box = Box::new([7u64; 64]);
    let mut early_vec: Vec<u32> = Vec::with_capacity(4);
    early_vec.extend([1, 2, 3]);
    let early_string = String::from("allocated before the handover");
    assert!(host_heap_range().is_none());
    assert!(!inside(early_box.as_ptr()) && !inside(early_vec.as_ptr()));

    static TABLE: OnceLock<HeapTable> = OnceLock::new();
    let t = TABLE.get_or_init(|| table(&HOST));
    // SAFETY: a table valid for the life of the process (a static).
    assert_eq!(unsafe { qbdi_plugin_set_heap(t) }, 0);
    assert_eq!(host_heap_range(), HOST.range());

    // After: everything from the host's heap, whatever its size or alignment.
    let v = vec![1u8; 1000];
    assert!(inside(v.as_ptr()));
    let s = format!("{early_string}, formatted after");
    assert!(inside(s.as_ptr()));
    let mut map = HashMap::new();
    for i in 0..10_000u64 {
        map.insert(i, vec![i; (i % 50) as usize]);
    }
    assert!(
        map.values()
            .filter(|v| !v.is_empty())
            .all(|v| inside(v.as_ptr()))
    );
    let big = vec![0u8; 8 << 20];
    assert!(inside(big.as_ptr()) && big.iter().all(|&b| b == 0));
    let l = Layout::from_size_align(100, 4096).unwrap();
    // SAFETY: a non-zero size layout, freed right after.
    unsafe {
        let p = std::alloc::alloc(l);
        assert!(inside(p) && (p as usize).is_multiple_of(4096));
        std::alloc::dealloc(p, l);
    }
    let from_thread = std::thread::spawn(|| {
        let b = Box::new([3u8; 100]);
        inside(b.as_ptr())
    });
    assert!(from_thread.join().unwrap());

    // Blocks from before: freed by the system's allocator, moved when they grow.
    drop(early_box);
    early_vec.extend(0..100_000);
    assert!(inside(early_vec.as_ptr()));
    assert_eq!(&early_vec[..4], &[1, 2, 3, 0]);
    assert_eq!(early_vec.len(), 100_003);
    drop(early_string);

    // The same heap again is accepted; another one is refused (the first stays).
    // SAFETY: as above.
    assert_eq!(unsafe { qbdi_plugin_set_heap(t) }, 0);
    static OTHER_HEAP: Heap = Heap::with_reserve(64 << 20);
    static OTHER: OnceLock<HeapTable> = OnceLock::new();
    let other = OTHER.get_or_init(|| table(&OTHER_HEAP));
    // SAFETY: as above.
    assert_eq!(unsafe { qbdi_plugin_set_heap(other) }, 1);
    // SAFETY: null is refused.
    assert_eq!(unsafe { qbdi_plugin_set_heap(ptr::null()) }, 1);
    assert_eq!(host_heap_range(), HOST.range());
}
