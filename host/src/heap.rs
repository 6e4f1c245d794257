//! The process's one heap.
//!
//! The host's `#[global_allocator]` (lib.rs) is the private heap of `qbdi-heap`, which never
//! calls libc's allocator: the dispatcher, the translator and callbacks may run while the
//! guest (with `--all-maps`, libc itself) is inside `malloc` or holds a libc lock. Plugins
//! allocate from the same heap through the [`HeapTable`] [`plugin::load`](crate::plugin::load)
//! hands each of them right after loading it.

use std::alloc::Layout;
use std::ptr;
use std::sync::OnceLock;

use qbdi_heap::HEAP;
use qbdi_sdk::abi::HeapTable;

unsafe extern "C" fn alloc(size: usize, align: usize) -> *mut u8 {
    Layout::from_size_align(size, align).map_or(ptr::null_mut(), |l| HEAP.alloc(l))
}

unsafe extern "C" fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    Layout::from_size_align(size, align).map_or(ptr::null_mut(), |l| HEAP.alloc_zeroed(l))
}

unsafe extern "C" fn dealloc(ptr: *mut u8, size: usize, align: usize) {
    if let Ok(l) = Layout::from_size_align(size, align) {
        // SAFETY: the table's contract: a block of this heap with the layout it has.
        unsafe { HEAP.dealloc(ptr, l) }
    }
}

unsafe extern "C" fn realloc(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8 {
    match Layout::from_size_align(size, align) {
        // SAFETY: the table's contract: a block of this heap with the layout it has.
        Ok(l) => unsafe { HEAP.realloc(ptr, l, new_size) },
        Err(_) => ptr::null_mut(),
    }
}

/// The table handed to plugins; `None` if the heap could not reserve its range (the host
/// then allocates from libc's heap, and so do the plugins).
pub fn table() -> Option<&'static HeapTable> {
    static TABLE: OnceLock<Option<HeapTable>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            HEAP.range().map(|(start, end)| HeapTable {
                size: size_of::<HeapTable>(),
                alloc,
                alloc_zeroed,
                dealloc,
                realloc,
                start,
                end,
            })
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_allocates_from_its_heap_and_the_table_covers_it() {
        let t = table().expect("the heap reserved its range");
        let v = vec![7u8; 1000];
        let p = v.as_ptr() as usize;
        assert!(
            (t.start..t.end).contains(&p),
            "{p:#x} outside {:#x}..{:#x}",
            t.start,
            t.end
        );
        // SAFETY: the table's functions, used as a plugin would.
        unsafe {
            let b = (t.alloc)(100, 64);
            assert!(!b.is_null() && (b as usize).is_multiple_of(64));
            assert!((t.start..t.end).contains(&(b as usize)));
            let c = (t.realloc)(b, 100, 64, 10_000);
            (t.dealloc)(c, 10_000, 64);
            let z = (t.alloc_zeroed)(4096, 8);
            assert!(std::slice::from_raw_parts(z, 4096).iter().all(|&x| x == 0));
            (t.dealloc)(z, 4096, 8);
        }
    }
}
