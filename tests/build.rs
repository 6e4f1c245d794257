//! Builds the guest programs of the tests and benchmarks: every `guest/*.c` and `guest/*.S`
//! file goes into one static library, `libguest.a`, linked into each test and bench; and
//! `programs/cxx_exceptions.cpp` into a program of its own for the `qbdi run` tests
//! (its path in `QBDI_TEST_CXX_EXCEPTIONS`), `programs/forker.c`, `programs/call_plugin.c`,
//! `programs/setjmp_longjmp.c`, `programs/spawner.c`, `programs/threads8.c` and
//! `programs/raw_threads.c` likewise (`QBDI_TEST_FORKER`, `QBDI_TEST_CALL_PLUGIN`,
//! `QBDI_TEST_SETJMP_LONGJMP`, `QBDI_TEST_SPAWNER`, `QBDI_TEST_THREADS8`,
//! `QBDI_TEST_RAW_THREADS`); `programs/dwarf_main.c` with its library `dwarf_lib.c`, built
//! with debug information (`QBDI_TEST_DWARF_MAIN_LAZY`, `QBDI_TEST_DWARF_MAIN_NOW`).

fn main() {
    let mut c_files = Vec::new();
    let mut asm_files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir("guest")
        .expect("tests/guest holds the guest sources")
        .map(|e| e.expect("readable directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        match path.extension().and_then(|e| e.to_str()) {
            Some("c") => c_files.push(path),
            Some("S") => asm_files.push(path),
            Some("h") => println!("cargo:rerun-if-changed={}", path.display()),
            _ => {}
        }
    }
    for f in c_files.iter().chain(&asm_files) {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed=guest");
    cc::Build::new()
        .files(&c_files)
        .files(&asm_files)
        // Guest code is compiled like ordinary distribution code: optimised, PIC, with
        // frame pointers where the compiler wants them. Per-function target attributes
        // select SSE/AVX2/AVX-512 where a test needs them.
        .opt_level(2)
        .flag("-fno-strict-aliasing")
        .flag("-Wno-unused-parameter")
        .warnings(true)
        .cargo_metadata(false)
        .compile("guest");
    // Link the whole archive into every test and bench executable (they declare the guest
    // functions with `extern "C"` and do not go through this package's library crate).
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    for kind in ["tests", "benches"] {
        println!("cargo:rustc-link-arg-{kind}=-Wl,--whole-archive");
        println!("cargo:rustc-link-arg-{kind}={out}/libguest.a");
        println!("cargo:rustc-link-arg-{kind}=-Wl,--no-whole-archive");
    }
    build_cxx_program(&out);
    build_c_program(&out, "forker", "QBDI_TEST_FORKER");
    build_c_program(&out, "call_plugin", "QBDI_TEST_CALL_PLUGIN");
    build_c_program(&out, "setjmp_longjmp", "QBDI_TEST_SETJMP_LONGJMP");
    build_c_program(&out, "spawner", "QBDI_TEST_SPAWNER");
    build_c_program(&out, "threads8", "QBDI_TEST_THREADS8");
    build_c_program(&out, "raw_threads", "QBDI_TEST_RAW_THREADS");
    build_cxx_threads(&out);
    build_c_program(&out, "late_main", "QBDI_TEST_LATE_MAIN");
    build_c_program(&out, "reentry", "QBDI_TEST_REENTRY");
    build_c_program_with(
        &out,
        "reentry",
        "reentry_nopie",
        "QBDI_TEST_REENTRY_NOPIE",
        &["-no-pie", "-fno-pic"],
    );
    build_c_program(&out, "signals", "QBDI_TEST_SIGNALS");
    build_c_program(&out, "signal_storm", "QBDI_TEST_SIGNAL_STORM");
    build_c_program(&out, "blocked_signals", "QBDI_TEST_BLOCKED_SIGNALS");
    build_c_program(&out, "fault_resume", "QBDI_TEST_FAULT_RESUME");
    build_c_program(&out, "jit", "QBDI_TEST_JIT");
    build_c_program(&out, "crash", "QBDI_TEST_CRASH");
    build_c_program(&out, "direct_paths", "QBDI_TEST_DIRECT_PATHS");
    build_shared_library(&out, "late_lib", "QBDI_TEST_LATE_LIB");
    build_dwarf_program(&out);
    build_rust_threads(&out);
}

/// `programs/dwarf_lib.c` into `libdwarf_lib.so` with debug information, and
/// `programs/dwarf_main.c` linked against it (found through its rpath), its calls bound
/// lazily and at start-up: the programs' paths in `QBDI_TEST_DWARF_MAIN_LAZY` and
/// `QBDI_TEST_DWARF_MAIN_NOW`.
fn build_dwarf_program(out: &str) {
    let (lib_src, main_src) = ("programs/dwarf_lib.c", "programs/dwarf_main.c");
    println!("cargo:rerun-if-changed={lib_src}");
    println!("cargo:rerun-if-changed={main_src}");
    let lib = format!("{out}/libdwarf_lib.so");
    let status = std::process::Command::new("gcc")
        .args(["-O1", "-g", "-shared", "-fPIC", "-o", &lib, lib_src])
        .status()
        .expect("gcc runs (the machine image has it)");
    assert!(status.success(), "gcc failed on {lib_src}");
    // Bound lazily (calls enter the dynamic loader's resolver first) and at start-up.
    for (binding, var) in [
        ("lazy", "QBDI_TEST_DWARF_MAIN_LAZY"),
        ("now", "QBDI_TEST_DWARF_MAIN_NOW"),
    ] {
        let exe = format!("{out}/dwarf_main_{binding}");
        let status = std::process::Command::new("gcc")
            .args([
                "-O1",
                "-o",
                &exe,
                main_src,
                &format!("-L{out}"),
                "-ldwarf_lib",
            ])
            .arg(format!("-Wl,-rpath,{out}"))
            .arg(format!("-Wl,-z,{binding}"))
            .status()
            .expect("gcc runs (the machine image has it)");
        assert!(status.success(), "gcc failed on {main_src}");
        println!("cargo:rustc-env={var}={exe}");
    }
}

/// Compiles `programs/<name>.c` into `lib<name>.so`; its path in the environment variable
/// `var` of the tests.
fn build_shared_library(out: &str, name: &str, var: &str) {
    let src = format!("programs/{name}.c");
    println!("cargo:rerun-if-changed={src}");
    let lib = format!("{out}/lib{name}.so");
    let status = std::process::Command::new("gcc")
        .args(["-O1", "-shared", "-fPIC", "-o", &lib, &src])
        .status()
        .expect("gcc runs (the machine image has it)");
    assert!(status.success(), "gcc failed on {src}");
    println!("cargo:rustc-env={var}={lib}");
}

/// Compiles the C++ `std::thread` test program with the system's g++.
fn build_cxx_threads(out: &str) {
    let src = "programs/cxx_threads.cpp";
    println!("cargo:rerun-if-changed={src}");
    let exe = format!("{out}/cxx_threads");
    let status = std::process::Command::new("g++")
        .args(["-O1", "-pthread", "-o", &exe, src])
        .status()
        .expect("g++ runs (the machine image has it)");
    assert!(status.success(), "g++ failed on {src}");
    println!("cargo:rustc-env=QBDI_TEST_CXX_THREADS={exe}");
}

/// Compiles the Rust `std::thread` test program with the compiler building this crate.
fn build_rust_threads(out: &str) {
    let src = "programs/rust_threads.rs";
    println!("cargo:rerun-if-changed={src}");
    let exe = format!("{out}/rust_threads");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = std::process::Command::new(rustc)
        .args(["--edition", "2024", "-O", "-o", &exe, src])
        .status()
        .expect("rustc runs");
    assert!(status.success(), "rustc failed on {src}");
    println!("cargo:rustc-env=QBDI_TEST_RUST_THREADS={exe}");
}

/// Compiles `programs/<name>.c` with the system's gcc; its path in the environment
/// variable `var` of the tests.
fn build_c_program(out: &str, name: &str, var: &str) {
    build_c_program_with(out, name, name, var, &[]);
}

/// As `build_c_program`, into `exe_name`, with extra compiler flags.
fn build_c_program_with(out: &str, name: &str, exe_name: &str, var: &str, flags: &[&str]) {
    let src = format!("programs/{name}.c");
    println!("cargo:rerun-if-changed={src}");
    let exe = format!("{out}/{exe_name}");
    let status = std::process::Command::new("gcc")
        .args(flags)
        .args(["-O1", "-o", &exe, &src, "-ldl", "-lpthread"])
        .status()
        .expect("gcc runs (the machine image has it)");
    assert!(status.success(), "gcc failed on {src}");
    println!("cargo:rustc-env={var}={exe}");
}

/// Compiles the C++ exception test program with the system's g++.
fn build_cxx_program(out: &str) {
    let src = "programs/cxx_exceptions.cpp";
    println!("cargo:rerun-if-changed={src}");
    let exe = format!("{out}/cxx_exceptions");
    let status = std::process::Command::new("g++")
        .args(["-O1", "-o", &exe, src])
        .status()
        .expect("g++ runs (the machine image has it)");
    assert!(status.success(), "g++ failed on {src}");
    println!("cargo:rustc-env=QBDI_TEST_CXX_EXCEPTIONS={exe}");
}
