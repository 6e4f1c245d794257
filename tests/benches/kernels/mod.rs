//! The compute kernels of the overhead benchmark (`tests/guest/bench_kernels.c`), shared by
//! the bench (`benches/overhead.rs`) and its smoke test (`tests/bench_kernels.rs`, which
//! includes this file with `#[path]`).
//!
//! Every kernel is `extern "C" fn(size: u64, seed: u64) -> u64`: it builds its own input
//! from `seed`, does work proportional to `size` and returns a checksum of its result.

unsafe extern "C" {
    fn bench_fib(size: u64, seed: u64) -> u64;
    fn bench_xorshift(size: u64, seed: u64) -> u64;
    fn bench_sort(size: u64, seed: u64) -> u64;
    fn bench_sha256(size: u64, seed: u64) -> u64;
    fn bench_crc32(size: u64, seed: u64) -> u64;
    fn bench_interp(size: u64, seed: u64) -> u64;
    fn bench_fptr(size: u64, seed: u64) -> u64;
    fn bench_libc(size: u64, seed: u64) -> u64;
    fn bench_matmul(size: u64, seed: u64) -> u64;
    fn bench_hashtab(size: u64, seed: u64) -> u64;
}

/// Signature shared by all kernels.
pub type KernelFn = unsafe extern "C" fn(size: u64, seed: u64) -> u64;

/// Seed given to every kernel by the bench.
pub const SEED: u64 = 0x5eed_1234_abcd_0001;

/// One kernel and the sizes it runs at.
pub struct Kernel {
    /// Short name, the first column of the bench's table.
    pub name: &'static str,
    /// The guest function.
    pub func: KernelFn,
    /// Size for the bench: about 50-100 ms natively on a 2020s x86-64 core.
    pub size: u64,
    /// Size for smoke tests and `QBDI_BENCH_QUICK=1`: a few milliseconds at most.
    pub quick_size: u64,
}

impl Kernel {
    /// Address of the guest function, for `Vm::call` and `add_instrumented_module_from_addr`.
    pub fn addr(&self) -> u64 {
        self.func as usize as u64
    }

    /// The size to run at: `quick_size` if `quick`, else `size`.
    pub fn size_for(&self, quick: bool) -> u64 {
        if quick { self.quick_size } else { self.size }
    }

    /// Runs the kernel natively (a direct call) and returns its checksum.
    pub fn run_native(&self, size: u64, seed: u64) -> u64 {
        // SAFETY: the kernels only read their integer arguments, allocate their own buffers
        // (and return 0 for sizes whose buffers could not be computed or allocated) and do
        // not keep any state between calls.
        unsafe { (self.func)(size, seed) }
    }
}

/// All kernels, in table order.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "fib",
        func: bench_fib,
        size: 37,
        quick_size: 20,
    },
    Kernel {
        name: "xorshift",
        func: bench_xorshift,
        size: 40_000_000,
        quick_size: 100_000,
    },
    Kernel {
        name: "sort",
        func: bench_sort,
        size: 1_000_000,
        quick_size: 20_000,
    },
    Kernel {
        name: "sha256",
        func: bench_sha256,
        // 16 passes over a 1 MiB buffer.
        size: 16 << 20,
        // Not a multiple of 64: the padding path runs too.
        quick_size: 100_003,
    },
    Kernel {
        name: "crc32",
        func: bench_crc32,
        // 6 passes over a 4 MiB buffer.
        size: 24 << 20,
        quick_size: 200_001,
    },
    Kernel {
        name: "interp",
        func: bench_interp,
        // 3M iterations of a 13-14 op loop: about 40M bytecode ops.
        size: 3_000_000,
        quick_size: 20_000,
    },
    Kernel {
        name: "fptr",
        func: bench_fptr,
        size: 10_000_000,
        quick_size: 50_000,
    },
    Kernel {
        name: "libc",
        func: bench_libc,
        // Each iteration calls memcpy and strlen once.
        size: 2_000_000,
        quick_size: 10_000,
    },
    Kernel {
        name: "matmul",
        func: bench_matmul,
        size: 560,
        quick_size: 48,
    },
    Kernel {
        name: "hashtab",
        func: bench_hashtab,
        size: 1_000_000,
        quick_size: 10_000,
    },
];
