//! Smoke test of the overhead benchmark's kernels (`tests/guest/bench_kernels.c`): each one
//! runs at a small size natively and under the Vm and must give the same checksum, so CI
//! checks the kernels without running the bench. A few kernels are also checked against
//! known answers or a Rust reference, so that a kernel broken natively is caught too.

#[path = "../benches/kernels/mod.rs"]
mod kernels;

use kernels::{KERNELS, SEED};
use qbdi_core::{VirtualStack, Vm, allocate_virtual_stack};

unsafe extern "C" {
    fn bench_sha256_of(data: *const u8, len: u64) -> u64;
    fn bench_crc32_of(data: *const u8, len: u64) -> u64;
}

/// A Vm with an 8 MiB stack instrumenting the test binary (where the kernels are).
fn bench_vm() -> (Vm, VirtualStack) {
    let mut vm = Vm::new();
    let stack = allocate_virtual_stack(vm.gpr_state_mut(), 8 << 20).expect("virtual stack");
    vm.add_instrumented_module_from_addr(KERNELS[0].addr())
        .expect("instrument the test binary");
    (vm, stack)
}

#[test]
fn every_kernel_returns_the_native_checksum_under_the_vm() {
    let (mut vm, _stack) = bench_vm();
    for kernel in KERNELS {
        for seed in [SEED, 7] {
            let size = kernel.size_for(true);
            let native = kernel.run_native(size, seed);
            let instrumented = vm
                .call(kernel.addr(), &[size, seed])
                .unwrap_or_else(|e| panic!("kernel {} under the Vm: {e}", kernel.name));
            assert_eq!(
                instrumented, native,
                "kernel {} (size {size}, seed {seed:#x}): Vm {instrumented:#x}, native {native:#x}",
                kernel.name
            );
        }
    }
}

/// Every kernel, run a second time from a warm cache, returns the native checksum and
/// stays in the cache: its blocks, the returns and indirect branches between them, its
/// native calls and their returns are all answered inline. The `libc` kernel makes 20,000
/// native calls (`memcpy`, `strlen`: libc is not instrumented) through the PLT; when their
/// return sites were missing from the inline table (where the broker looks them up),
/// every one came back to the dispatcher (sort ran 10x slower).
#[test]
fn second_call_of_each_kernel_from_a_warm_cache_returns_the_native_checksum_in_the_cache() {
    let (mut vm, _stack) = bench_vm();
    for kernel in KERNELS {
        let size = kernel.size_for(true);
        let native = kernel.run_native(size, SEED);
        for round in 0..2 {
            let before = vm.cache_exits();
            let instrumented = vm
                .call(kernel.addr(), &[size, SEED])
                .unwrap_or_else(|e| panic!("kernel {} under the Vm: {e}", kernel.name));
            assert_eq!(
                instrumented, native,
                "kernel {} call {round}: Vm {instrumented:#x}, native {native:#x}",
                kernel.name
            );
            let exits = vm.cache_exits() - before;
            assert!(
                round == 0 || exits < 10,
                "kernel {}: {exits} exits",
                kernel.name
            );
        }
    }
}

#[test]
fn kernels_produce_different_checksums_for_different_seeds() {
    // A checksum that ignores its input would make the native/Vm comparison vacuous.
    for kernel in KERNELS {
        let size = kernel.size_for(true);
        assert_ne!(
            kernel.run_native(size, SEED),
            kernel.run_native(size, SEED ^ 0xff00),
            "kernel {}",
            kernel.name
        );
    }
}

fn kernel(name: &str) -> &'static kernels::Kernel {
    KERNELS
        .iter()
        .find(|k| k.name == name)
        .expect("kernel exists")
}

#[test]
fn fib_kernel_computes_fibonacci_numbers() {
    let fib = kernel("fib");
    let (mut a, mut b) = (0u64, 1u64);
    for n in 0..=25 {
        assert_eq!(fib.run_native(n, 0), a, "fib({n})");
        assert_eq!(fib.run_native(n, 0xabc), a ^ 0xabc, "fib({n}) ^ seed");
        (a, b) = (b, a + b);
    }
}

/// Same LCG, sort and checksum as `bench_sort`, written independently in Rust.
fn reference_sort_checksum(size: u64, seed: u64) -> u64 {
    let mut s = seed;
    let mut v: Vec<u32> = (0..size)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 32) as u32
        })
        .collect();
    v.sort_unstable();
    v.iter().fold(size, |h, &x| {
        h ^ (u64::from(x))
            .wrapping_add(0x9e3779b97f4a7c15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2)
    })
}

#[test]
fn sort_kernel_matches_a_rust_sort_of_the_same_numbers() {
    let sort = kernel("sort");
    for (size, seed) in [(0, 1), (1, 2), (17, 3), (1000, SEED), (20_000, 99)] {
        assert_eq!(
            sort.run_native(size, seed),
            reference_sort_checksum(size, seed),
            "size {size} seed {seed}"
        );
    }
}

/// The loop of `bench_interp`'s bytecode program, in Rust.
fn reference_interp(iterations: u64, seed: u64) -> u64 {
    if iterations == 0 {
        return 0;
    }
    let mut state = seed | 1;
    let mut acc = seed;
    for _ in 0..iterations {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if state & 1 == 0 {
            acc = acc.wrapping_mul(0x2545F491);
        }
        acc = acc.wrapping_add(state);
    }
    acc ^ state
}

#[test]
fn interp_kernel_matches_its_program_written_in_rust() {
    let interp = kernel("interp");
    for (iterations, seed) in [(0, 5), (1, 5), (2, 6), (1000, SEED), (20_000, 3)] {
        assert_eq!(
            interp.run_native(iterations, seed),
            reference_interp(iterations, seed),
            "{iterations} iterations, seed {seed}"
        );
    }
}

fn sha256_prefix_native(data: &[u8]) -> u64 {
    // SAFETY: the kernel reads exactly `data.len()` bytes from `data`.
    unsafe { bench_sha256_of(data.as_ptr(), data.len() as u64) }
}

fn crc32_native(data: &[u8]) -> u64 {
    // SAFETY: the kernel reads exactly `data.len()` bytes from `data`.
    unsafe { bench_crc32_of(data.as_ptr(), data.len() as u64) }
}

/// FIPS 180-2 test vectors (first 64 bits of the digests).
const SHA256_VECTORS: &[(&[u8], u64)] = &[
    (b"", 0xe3b0c44298fc1c14),
    (b"abc", 0xba7816bf8f01cfea),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        0x248d6a61d20638b8,
    ),
];

#[test]
fn sha256_kernel_matches_the_standard_test_vectors() {
    for (data, prefix) in SHA256_VECTORS {
        assert_eq!(sha256_prefix_native(data), *prefix, "{data:?}");
    }
    // One million 'a': a long input of many blocks.
    assert_eq!(
        sha256_prefix_native(&vec![b'a'; 1_000_000]),
        0xcdc76e5c9914fb92
    );
}

#[test]
fn crc32_kernel_matches_the_standard_check_value() {
    assert_eq!(crc32_native(b"123456789"), 0xcbf43926);
    assert_eq!(crc32_native(b""), 0);
    assert_eq!(
        crc32_native(b"The quick brown fox jumps over the lazy dog"),
        0x414fa339
    );
}

#[test]
fn sha256_and_crc32_of_host_buffers_are_the_same_under_the_vm() {
    let (mut vm, _stack) = bench_vm();
    let long = vec![b'a'; 100_000];
    let inputs: [&[u8]; 4] = [b"", b"abc", b"123456789", &long];
    for data in inputs {
        let sha = vm
            .call(
                bench_sha256_of as *const () as u64,
                &[data.as_ptr() as u64, data.len() as u64],
            )
            .expect("sha256 under the Vm");
        assert_eq!(
            sha,
            sha256_prefix_native(data),
            "sha256 of {} bytes",
            data.len()
        );
        let crc = vm
            .call(
                bench_crc32_of as *const () as u64,
                &[data.as_ptr() as u64, data.len() as u64],
            )
            .expect("crc32 under the Vm");
        assert_eq!(crc, crc32_native(data), "crc32 of {} bytes", data.len());
    }
}
