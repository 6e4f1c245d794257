//! The private heap never reaches libc's allocator.
//!
//! This program replaces libc's malloc family with counting wrappers around glibc's own
//! implementation (a program may define them; glibc's internal allocations call them too,
//! which the first check shows), installs the private heap as its global allocator, and
//! checks that Rust allocations of every kind and size call libc's allocator zero times and
//! land inside the heap's reservation. No test harness: its threads would allocate.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::io::Write;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use qbdi_heap::{HEAP, PrivateAllocator};

#[global_allocator]
static ALLOCATOR: PrivateAllocator = PrivateAllocator;

/// Calls of libc's allocator (any function of the family).
static LIBC_CALLS: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
}

/// `malloc`, counted.
///
/// # Safety
/// malloc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    LIBC_CALLS.fetch_add(1, SeqCst);
    // SAFETY: glibc's malloc.
    unsafe { __libc_malloc(size) }
}

/// `calloc`, counted.
///
/// # Safety
/// calloc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    LIBC_CALLS.fetch_add(1, SeqCst);
    // SAFETY: glibc's calloc.
    unsafe { __libc_calloc(n, size) }
}

/// `realloc`, counted.
///
/// # Safety
/// realloc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    LIBC_CALLS.fetch_add(1, SeqCst);
    // SAFETY: glibc's realloc, on a block of glibc's malloc.
    unsafe { __libc_realloc(p, size) }
}

/// `free`, counted (but for `free(NULL)`).
///
/// # Safety
/// free's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if !p.is_null() {
        LIBC_CALLS.fetch_add(1, SeqCst);
    }
    // SAFETY: glibc's free, on a block of glibc's malloc.
    unsafe { __libc_free(p) }
}

/// `memalign`, counted.
///
/// # Safety
/// memalign's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    LIBC_CALLS.fetch_add(1, SeqCst);
    // SAFETY: glibc's memalign.
    unsafe { __libc_memalign(align, size) }
}

/// `aligned_alloc`, counted.
///
/// # Safety
/// aligned_alloc's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarded.
    unsafe { memalign(align, size) }
}

/// `posix_memalign`, counted.
///
/// # Safety
/// posix_memalign's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    // SAFETY: forwarded.
    let p = unsafe { memalign(align, size) };
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller's out-parameter.
    unsafe { out.write(p) };
    0
}

fn calls() -> usize {
    LIBC_CALLS.load(SeqCst)
}

fn assert_inside<T: ?Sized>(what: &str, p: *const T) {
    assert!(
        HEAP.contains(p.cast()),
        "{what} at {p:p} is outside the heap {:x?}",
        HEAP.range()
    );
}

thread_local! {
    /// A thread-local that needs no destructor (how the host keeps per-thread buffers).
    static NO_DTOR: RefCell<ManuallyDrop<String>> = const { RefCell::new(ManuallyDrop::new(String::new())) };
}

fn main() {
    // The wrappers see libc's own allocations: strdup mallocs inside libc.
    let before = calls();
    // SAFETY: strdup of a NUL-terminated string; freed with libc's free.
    unsafe { libc::free(libc::strdup(c"interposed?".as_ptr()).cast()) };
    assert_eq!(
        calls(),
        before + 2,
        "the malloc wrappers are not interposed: this test would prove nothing"
    );

    let (start, end) = HEAP.range().expect("the heap reserves its range");
    assert!(end - start >= 64 << 20);
    let before = calls();

    // Collections, strings, formatting, boxes of every size.
    let mut v: Vec<u64> = Vec::new();
    for i in 0..200_000u64 {
        v.push(i);
    }
    assert_inside("a grown Vec", v.as_ptr());
    let mut map: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..20_000usize {
        map.insert(format!("key {i}"), vec![i as u8; i % 3000]);
    }
    for (k, val) in &map {
        assert_inside("a HashMap key", k.as_ptr());
        if !val.is_empty() {
            assert_inside("a HashMap value", val.as_ptr());
        }
    }
    map.retain(|k, _| k.len() % 2 == 0);
    drop(map);
    let boxes: Vec<Box<[u8]>> = (0..64)
        .map(|i| vec![1u8; 1 << (i % 24)].into_boxed_slice())
        .collect();
    for b in &boxes {
        assert_inside("a boxed slice", b.as_ptr());
    }
    drop(boxes);
    // Raw layouts: over-aligned, zeroed, reallocated.
    for align in [1usize, 16, 64, 4096, 1 << 20] {
        for size in [1usize, 100, 5000, 1 << 17, 5 << 20] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size layouts; freed below with the layout they now have.
            unsafe {
                let p = ALLOCATOR.alloc_zeroed(l);
                assert!(!p.is_null() && (p as usize).is_multiple_of(align));
                assert_inside("a zeroed block", p);
                assert_eq!(*p.add(size - 1), 0);
                let q = ALLOCATOR.realloc(p, l, size * 3);
                assert_inside("a reallocated block", q);
                assert_eq!(q as usize % align, 0);
                ALLOCATOR.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
            }
        }
    }
    // std's I/O, locks, time and environment work on Rust buffers, not libc's allocator
    // (unlike std::fs::canonicalize, which calls realpath, and a first access to a
    // thread_local! that needs a destructor, registered through calloc by glibc).
    let maps = std::fs::read_to_string("/proc/self/maps").expect("readable");
    assert!(maps.contains('\n'));
    let _ = std::env::var("PATH");
    let _ = std::env::current_dir();
    let _ = writeln!(std::io::sink(), "{}", maps.len());
    let _ = std::io::stderr().lock().flush();
    let _ = std::io::stdout().lock().flush();
    let file = std::env::temp_dir().join(format!("qbdi-heap-test-{}", std::process::id()));
    std::fs::write(&file, maps.as_bytes()).expect("writable");
    std::fs::remove_file(&file).expect("removable");
    let lock = std::sync::Mutex::new(0);
    *lock.lock().unwrap() += 1;
    let _ = std::time::Instant::now();
    NO_DTOR.with(|s| s.borrow_mut().push_str("per-thread text"));
    assert_eq!(
        calls(),
        before,
        "Rust allocations reached libc's allocator {} times",
        calls() - before
    );
    println!(
        "no_libc_malloc: ok ({} KiB of the heap committed)",
        HEAP.committed_bytes() >> 10
    );
}
