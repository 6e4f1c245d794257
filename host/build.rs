//! Link options of the `qbdi` launcher and the preload library, for start-up time (`cargo
//! bench --bench translation`, "start-up": `qbdi run -- /usr/bin/true` against
//! `/usr/bin/true`).
//!
//! - Both: relative relocations packed (`DT_RELR`, glibc 2.36 and binutils 2.38 or later):
//!   the loader reads a 2 KiB table instead of 200 KiB of `.rela.dyn` in each process.
//! - The launcher, which runs for a moment and executes the program: a position-dependent
//!   executable (no relocation of its 150 KiB of `.data.rel.ro`) whose symbols bind when
//!   first called (it calls few of them). 163 page faults to 120; with `#![no_main]` (see
//!   `main.rs`), `qbdi --version` went from 1.33 to 1.03 ms (medians of 200 runs).

fn main() {
    println!("cargo:rustc-link-arg=-Wl,-z,pack-relative-relocs");
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,lazy");
}
