//! Translation speed and start-up cost of the engine.
//!
//! **Translation**: large code is translated without being run. For each module (libc, and
//! python3: `libpython` when the `python3` binary links it dynamically, loaded with
//! `dlopen`; otherwise the binary itself, whose executable segments are mapped read-only
//! at their link addresses (a PIE: anywhere), never run nor relocated, which translation
//! does not need), every function start of its ELF symbol tables (`.dynsym` and
//! `.symtab`, `STT_FUNC` and `STT_GNU_IFUNC`, inside its executable segments) is handed to
//! `Vm::precache_basic_block` in address order, in a fresh `Vm` instrumenting the module's
//! executable segments (so nothing is cached: the code cache is created and filled by the
//! timed loop). The Vm cannot say how many blocks it holds: a call that returned `Ok(true)`
//! translated exactly one block, and those are counted. One untimed repetition first (the
//! module's pages resident), then 9 timed ones.
//!
//! The table gives, per module: the loop's median and fastest time; the median time of its
//! first call (`first_ms`: the Vm creates its code cache, inline table and directory there,
//! then translates one block); blocks per second at the median (`blocks/s`), and the same
//! after the first call (`after_first/s`: the per-block cost alone). Each Vm then drops its
//! translations (`clear_all_cache`) and translates the same blocks again: `warm/s` is that
//! second loop's rate, its first call (which applies the flush) excluded, with the
//! directory's map and the inline table already in memory (new code still goes to fresh
//! pages of the cache). glibc's mmap threshold is pinned (`mallopt`), so that every Vm's
//! large tables are fresh memory from the kernel, as the host's heap hands them out under
//! `qbdi run`, not the previous Vm's memory cleared with `memset`.
//!
//! Before the table: the time of the process's first `Vm::new` (it builds iced-x86's
//! decoder and encoder tables, as every `qbdi run` does once) and of a second one.
//!
//! **Start-up**: `qbdi run -- /usr/bin/true` against `/usr/bin/true`, interleaved (native,
//! qbdi, native, ...), 30 times each after one untimed run of each, spawned the same way
//! (`std::process::Command`, output to /dev/null, no user plugin: `XDG_DATA_HOME` is an
//! empty directory, as in the tests); medians and fastest times in milliseconds.
//!
//! Last come the figures: `vm_new_first_ms=`, `vm_new_ms=`, then per module
//! `translate_blocks_<module>=`, `translate_first_call_ms_<module>=`,
//! `translate_blocks_per_s_after_first_<module>=`, `translate_blocks_per_s_warm_<module>=`
//! and `translate_blocks_per_s_<module>=` (the whole first loop, median), then
//! `startup_native_ms=`, `startup_qbdi_ms=` (medians) and `startup_overhead_ms=` (their
//! difference). The targets: at least 2 M blocks/s, at most 2 ms of start-up.
//!
//! Build the release artifacts first: `cargo build --release --workspace`, then
//! `cargo bench --bench translation [-- NAME...]`, NAME among `libc`, `python3`, `startup`
//! (default: all). `QBDI_BENCH_QUICK=1` times one repetition of each; `QBDI_BENCH_REPS=N`
//! sets the timed repetitions of the translation part (more samples under `perf record`).

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use object::elf;
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol, SymbolKind};
use qbdi_core::Vm;
use qbdi_tests::cli::{artifacts, no_user_plugins, python};

/// Timed repetitions of the translation of a module.
const TRANSLATE_REPS: usize = 9;
/// Timed runs of each start-up command.
const STARTUP_REPS: usize = 30;
const PAGE: u64 = 4096;

/// Code to translate: its executable ranges and its function starts, as loaded here.
struct Module {
    /// Short name used in the figures (`libc`, `python3`).
    key: &'static str,
    /// What was loaded, and how.
    what: String,
    exec: Vec<(u64, u64)>,
    starts: Vec<u64>,
}

fn fatal(msg: &str) -> ! {
    eprintln!("translation bench: {msg}");
    std::process::exit(1);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

/// A loaded object: its path, load bias and executable PT_LOAD ranges.
type Loaded = (PathBuf, u64, Vec<(u64, u64)>);

/// The loaded object whose file name contains `needle`, from `dl_iterate_phdr`.
fn loaded_object(needle: &str) -> Option<Loaded> {
    struct Search<'a> {
        needle: &'a str,
        found: Option<Loaded>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr's arguments: `info` describes one loaded object (its
        // program headers and name live as long as it is loaded); `data` is our `Search`.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search<'_>>()) };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: a NUL-terminated name owned by the loader.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy();
        let file = name.rsplit('/').next().unwrap_or_default();
        if !file.contains(search.needle) {
            return 0;
        }
        // SAFETY: `dlpi_phnum` program headers at `dlpi_phdr`.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        let exec = phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_LOAD && p.p_flags & libc::PF_X != 0)
            .map(|p| {
                (
                    info.dlpi_addr + p.p_vaddr,
                    info.dlpi_addr + p.p_vaddr + p.p_memsz,
                )
            })
            .collect();
        search.found = Some((PathBuf::from(name.into_owned()), info.dlpi_addr, exec));
        1
    }
    let mut search = Search {
        needle,
        found: None,
    };
    // SAFETY: `each` only reads what the loader hands it and writes `search`.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut search).cast()) };
    search.found
}

/// Defined function symbols (`.dynsym` and `.symtab`) of the ELF file `data`, plus `bias`,
/// inside `exec`, sorted and without duplicates (aliases).
fn function_starts(data: &[u8], bias: u64, exec: &[(u64, u64)]) -> Vec<u64> {
    let file = object::File::parse(data).unwrap_or_else(|e| fatal(&format!("ELF: {e}")));
    let mut starts: Vec<u64> = file
        .dynamic_symbols()
        .chain(file.symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.address() != 0)
        .map(|s| bias + s.address())
        .filter(|a| exec.iter().any(|&(lo, hi)| (lo..hi).contains(a)))
        .collect();
    starts.sort_unstable();
    starts.dedup();
    starts
}

/// libc as this process loaded it.
fn libc_module() -> Module {
    let (path, bias, exec) =
        loaded_object("libc.so").unwrap_or_else(|| fatal("libc is not among the loaded objects"));
    let data = std::fs::read(&path).unwrap_or_else(|e| fatal(&format!("{path:?}: {e}")));
    Module {
        key: "libc",
        what: format!("{} (loaded)", path.display()),
        starts: function_starts(&data, bias, &exec),
        exec,
    }
}

/// The libraries an ELF file needs (DT_NEEDED).
fn needed(elf: &ElfFile64<'_, Endianness>, data: &[u8]) -> Vec<String> {
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let Ok(Some((dyns, link))) = sections.dynamic(endian, data) else {
        return Vec::new();
    };
    let Ok(strings) = sections.strings(endian, data, link) else {
        return Vec::new();
    };
    dyns.iter()
        .filter(|d| d.tag32(endian) == Some(elf::DT_NEEDED))
        .filter_map(|d| d.string(endian, strings).ok())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// python3's code: its libpython (dlopen) if it links one, else the binary's executable
/// segments mapped, not run.
fn python_module() -> Module {
    let exe = std::fs::canonicalize(python()).unwrap_or_else(|e| fatal(&format!("python3: {e}")));
    let data = std::fs::read(&exe).unwrap_or_else(|e| fatal(&format!("{exe:?}: {e}")));
    let elf =
        ElfFile64::<Endianness>::parse(&*data).unwrap_or_else(|e| fatal(&format!("{exe:?}: {e}")));
    if let Some(lib) = needed(&elf, &data)
        .into_iter()
        .find(|n| n.starts_with("libpython"))
    {
        let c = CString::new(lib.clone()).expect("a library name");
        // SAFETY: loads a shared library (its constructors run; none of its code is
        // translated or called here).
        if unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) }.is_null() {
            fatal(&format!(
                "{} links {lib}, which dlopen cannot load",
                exe.display()
            ));
        }
        let (path, bias, exec) =
            loaded_object(&lib).unwrap_or_else(|| fatal(&format!("{lib} loaded, not found")));
        let lib_data = std::fs::read(&path).unwrap_or_else(|e| fatal(&format!("{path:?}: {e}")));
        return Module {
            key: "python3",
            what: format!("{} (python3's libpython, dlopen)", path.display()),
            starts: function_starts(&lib_data, bias, &exec),
            exec,
        };
    }
    let (bias, exec) = map_code(&exe, &elf);
    let kind = if bias == 0 {
        "at its link addresses"
    } else {
        "anywhere (PIE)"
    };
    Module {
        key: "python3",
        what: format!(
            "{} (python3 links no libpython: its executable segments mapped {kind}, not run)",
            exe.display()
        ),
        starts: function_starts(&data, bias, &exec),
        exec,
    }
}

/// Maps the executable PT_LOAD segments of `path` read+exec, private, never unmapped:
/// for ET_EXEC at their addresses, for ET_DYN at a base the kernel picks. Returns the bias
/// and the executable ranges.
fn map_code(path: &Path, elf: &ElfFile64<'_, Endianness>) -> (u64, Vec<(u64, u64)>) {
    let endian = elf.endian();
    let loads: Vec<_> = elf
        .elf_program_headers()
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD)
        .collect();
    let lo = loads.iter().map(|p| p.p_vaddr(endian)).min().unwrap_or(0) & !(PAGE - 1);
    let hi = loads
        .iter()
        .map(|p| p.p_vaddr(endian) + p.p_memsz(endian))
        .max()
        .unwrap_or(0);
    let bias = if elf.elf_header().e_type(endian) == elf::ET_EXEC {
        0
    } else {
        // A span of address space for the whole image; the segments go inside it.
        // SAFETY: a fresh anonymous reservation.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (hi - lo) as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            fatal("cannot reserve address space for python3's image");
        }
        p as u64 - lo
    };
    let file = std::fs::File::open(path).unwrap_or_else(|e| fatal(&format!("{path:?}: {e}")));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut exec = Vec::new();
    for p in loads.iter().filter(|p| p.p_flags(endian) & elf::PF_X != 0) {
        let start = bias + p.p_vaddr(endian);
        let at = start & !(PAGE - 1);
        let offset = p.p_offset(endian) & !(PAGE - 1);
        let len = start + p.p_filesz(endian) - at;
        let fixed = if bias == 0 {
            libc::MAP_FIXED_NOREPLACE
        } else {
            libc::MAP_FIXED
        };
        // SAFETY: maps file pages at `at`: free address space (NOREPLACE), or inside our
        // own reservation.
        let m = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                len as usize,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | fixed,
                fd,
                offset as libc::off_t,
            )
        };
        if m as u64 != at {
            fatal(&format!(
                "cannot map {}'s code at {at:#x}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        exec.push((start, start + p.p_filesz(endian)));
    }
    (bias, exec)
}

/// One translation of every function start of `m` in a fresh Vm, then a second one in the
/// same Vm after `clear_all_cache`.
struct Pass {
    /// The whole first loop.
    total: Duration,
    /// Its first call: the code cache and directory created, one block translated.
    first: Duration,
    /// The second loop but its first call (which applies the flush).
    warm: Duration,
    blocks: usize,
    errors: usize,
    first_error: Option<String>,
}

/// Precaches every start of `m`: (blocks translated, errors, first error, time of the first
/// call, time of the whole loop).
fn precache_all(vm: &mut Vm, m: &Module) -> (usize, usize, Option<String>, Duration, Duration) {
    let (mut blocks, mut errors, mut first_error) = (0, 0, None);
    let mut first = Duration::ZERO;
    let start = Instant::now();
    for (i, &a) in m.starts.iter().enumerate() {
        match vm.precache_basic_block(a) {
            Ok(true) => blocks += 1,
            Ok(false) => {}
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{a:#x}: {e}"));
            }
        }
        if i == 0 {
            first = start.elapsed();
        }
    }
    (blocks, errors, first_error, first, start.elapsed())
}

fn translate_once(m: &Module) -> Pass {
    let mut vm = Vm::new();
    for &(lo, hi) in &m.exec {
        vm.add_instrumented_range(lo, hi)
            .unwrap_or_else(|e| fatal(&format!("instrument {lo:#x}-{hi:#x}: {e}")));
    }
    let (blocks, errors, first_error, first, total) = precache_all(&mut vm, m);
    vm.clear_all_cache();
    let (again, _, _, flush, total_again) = precache_all(&mut vm, m);
    assert_eq!(
        again, blocks,
        "the second pass translates every block again"
    );
    drop(vm);
    Pass {
        total,
        first,
        warm: total_again - flush,
        blocks,
        errors,
        first_error,
    }
}

/// What the figures of a module are made of.
struct Rates {
    blocks: usize,
    /// Blocks per second, the whole first loop (median).
    rate: f64,
    /// Median time of the first call (ms).
    first_ms: f64,
    /// Blocks per second after the first call (median of the loop minus median of the
    /// first call).
    rate_after_first: f64,
    /// Blocks per second of the second loop (its first call excluded), median.
    rate_warm: f64,
}

/// Times `reps` translations of `m`; prints its row.
fn bench_module(m: &Module, reps: usize) -> Rates {
    let warm = translate_once(m);
    if let Some(e) = &warm.first_error {
        eprintln!("{}: {} precache errors, the first: {e}", m.key, warm.errors);
    }
    let blocks = warm.blocks;
    let (mut totals, mut firsts, mut warms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let p = translate_once(m);
        assert_eq!(
            p.blocks, blocks,
            "every repetition translates the same blocks"
        );
        totals.push(p.total.as_secs_f64());
        firsts.push(p.first.as_secs_f64());
        warms.push(p.warm.as_secs_f64());
    }
    for t in [&mut totals, &mut firsts, &mut warms] {
        t.sort_by(f64::total_cmp);
    }
    let (total, first) = (median(&totals), median(&firsts));
    let r = Rates {
        blocks,
        rate: blocks as f64 / total,
        first_ms: first * 1e3,
        rate_after_first: blocks.saturating_sub(1) as f64 / (total - first),
        rate_warm: blocks.saturating_sub(1) as f64 / median(&warms),
    };
    println!(
        "{:<10} {:>8} {:>7} {:>10.3} {:>10.3} {:>10.3} {:>12.0} {:>14.0} {:>12.0} {:>10.3}",
        m.key,
        blocks,
        warm.errors,
        total * 1e3,
        totals[0] * 1e3,
        r.first_ms,
        r.rate,
        r.rate_after_first,
        r.rate_warm,
        total * 1e6 / blocks.max(1) as f64,
    );
    r
}

/// How long `cmd` takes to spawn, run and be reaped.
fn time_command(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let status = cmd
        .status()
        .unwrap_or_else(|e| fatal(&format!("{cmd:?}: {e}")));
    let elapsed = start.elapsed();
    if !status.success() {
        fatal(&format!("{cmd:?} failed: {status}"));
    }
    ms(elapsed)
}

/// Medians of (native, qbdi) start-up times, interleaved runs.
fn bench_startup(reps: usize) -> (f64, f64) {
    let qbdi = artifacts().join("qbdi");
    // The programs start as from a shell: without the `LD_LIBRARY_PATH` cargo gives the
    // bench (the build's and the toolchain's directories), which the loader searches for
    // every library of both processes, libgcc_s and libc among them (about 0.1 ms more
    // for `qbdi run`, 0.05 ms more natively).
    let quiet = |cmd: &mut Command| {
        cmd.env_remove("LD_LIBRARY_PATH")
            .env_remove("QBDI_PLUGIN_PATH")
            .env("XDG_DATA_HOME", no_user_plugins())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let mut native = Command::new("/usr/bin/true");
    quiet(&mut native);
    let mut under = Command::new(&qbdi);
    under.args(["run", "--", "/usr/bin/true"]);
    quiet(&mut under);
    time_command(&mut native);
    time_command(&mut under);
    let (mut n, mut q) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        n.push(time_command(&mut native));
        q.push(time_command(&mut under));
    }
    n.sort_by(f64::total_cmp);
    q.sort_by(f64::total_cmp);
    println!("{:<24} {:>10} {:>10}", "start-up", "median_ms", "min_ms");
    println!(
        "{:<24} {:>10.3} {:>10.3}",
        "/usr/bin/true",
        median(&n),
        n[0]
    );
    println!(
        "{:<24} {:>10.3} {:>10.3}",
        "qbdi run -- /usr/bin/true",
        median(&q),
        q[0]
    );
    (median(&n), median(&q))
}

fn main() {
    let quick = std::env::var("QBDI_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let reps = std::env::var("QBDI_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { TRANSLATE_REPS })
        .max(1);
    // `cargo bench` passes `--bench`; other arguments select parts by name.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));

    // Large blocks (a Vm's directory tables) always fresh from the kernel, as the host's
    // heap hands them out under `qbdi run`: otherwise glibc raises its mmap threshold after
    // the first Vm is dropped, serves the next Vm's tables from its heap and clears them
    // with memset (8 MiB for the directory's map), which no real run does.
    // SAFETY: a plain malloc tuning call, before any thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
    let mut figures = Vec::new();
    // The first Vm of the process builds iced-x86's decoder and encoder tables (what every
    // `qbdi run` pays once); later ones do not.
    let vm_new = || {
        let start = Instant::now();
        let vm = Vm::new();
        let t = ms(start.elapsed());
        drop(vm);
        t
    };
    let (first_vm, next_vm) = (vm_new(), vm_new());
    println!("# Vm::new: first of the process {first_vm:.3} ms, then {next_vm:.3} ms");
    figures.push(format!("vm_new_first_ms={first_vm:.3}"));
    figures.push(format!("vm_new_ms={next_vm:.3}"));
    let mut modules = Vec::new();
    if wanted("libc") {
        modules.push(libc_module());
    }
    if wanted("python3") {
        modules.push(python_module());
    }
    for m in &modules {
        let code: u64 = m.exec.iter().map(|&(lo, hi)| hi - lo).sum();
        println!(
            "# {}: {}: {} function starts in {:.1} MiB of code",
            m.key,
            m.what,
            m.starts.len(),
            code as f64 / (1 << 20) as f64
        );
    }
    if !modules.is_empty() {
        println!(
            "{:<10} {:>8} {:>7} {:>10} {:>10} {:>10} {:>12} {:>14} {:>12} {:>10}",
            "module",
            "blocks",
            "errors",
            "median_ms",
            "min_ms",
            "first_ms",
            "blocks/s",
            "after_first/s",
            "warm/s",
            "us/block"
        );
    }
    for m in &modules {
        let r = bench_module(m, reps);
        let k = m.key;
        figures.push(format!("translate_blocks_{k}={}", r.blocks));
        figures.push(format!("translate_first_call_ms_{k}={:.3}", r.first_ms));
        figures.push(format!(
            "translate_blocks_per_s_after_first_{k}={:.0}",
            r.rate_after_first
        ));
        figures.push(format!(
            "translate_blocks_per_s_warm_{k}={:.0}",
            r.rate_warm
        ));
        figures.push(format!("translate_blocks_per_s_{k}={:.0}", r.rate));
    }
    if wanted("startup") {
        let (native, under) = bench_startup(if quick { 3 } else { STARTUP_REPS });
        figures.push(format!("startup_native_ms={native:.3}"));
        figures.push(format!("startup_qbdi_ms={under:.3}"));
        figures.push(format!("startup_overhead_ms={:.3}", under - native));
    }
    for f in figures {
        println!("{f}");
    }
}
