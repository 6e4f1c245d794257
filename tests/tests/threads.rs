//! Threads followed: every thread the program creates runs under the engine, not only the
//! one that runs `main`. Each program runs natively and under `qbdi run` (default ranges:
//! the main executable) and `qbdi run --all-maps`, and must give the same stdout, stderr
//! and exit status; then the coverage says whether the threads' code ran under the Vm
//! (before the feature, worker threads ran natively: their code was silently uncovered):
//!
//! - `programs/threads8.c`: 8 pthreads, worker i calls `step` 1000*(i+1)+i times, main
//!   never calls it: drcov lists blocks at `worker` and `step`, bbcount's count of the
//!   block at `step` is the sum over all threads (36,028);
//! - `programs/raw_threads.c`: a raw `clone` and a raw `clone3` (no CLONE_SETTLS) whose
//!   child runs `clone_work`/`clone3_work`; `vfork` + execve; `fork` while 4 threads run;
//!   `exit` while 4 threads run; 200 rounds of 64 short threads (`churn_step` counted
//!   exactly by bbcount); 16 threads reaching 64 never-run functions while others exit
//!   (each function's count exact);
//! - real programs under `--all-maps -p drcov -p bbcount`: `xz -T4`, `zstd -T4`, `pigz -p 4`,
//!   `sort --parallel=4` and Python's `threading`/`ThreadPoolExecutor`
//!   (`programs/py_threads.py`): output equal to native, and drcov lists the block at the
//!   thread start routine the program passes to `pthread_create` (found in its code with
//!   objdump, checked against gdb's `$rdx` at pthread_create on Debian 12); with bbcount,
//!   that routine's block was entered, and for the compressors the compressing module's
//!   blocks were entered at least once per input byte (measured single-threaded under
//!   bbcount: liblzma 181 per byte at xz's default preset, zstd 7, libz 38 for pigz; with
//!   the threads native, the main thread of a threaded run enters them a few thousand
//!   times in all). The few-MB inputs run under drcov alone, smaller ones under drcov and
//!   bbcount (bbcount calls back on every block, about 140 ns a call: xz takes 94 s on
//!   3 MB single-threaded). Output is compared with native for each, and the compressors'
//!   output decompresses (natively) to the input. `sort` runs with `LC_ALL=C`.
//!
//! threads8 and translate_race also run under `--all-maps` with each glibc choice of
//! string routines (`qbdi_tests::glibc::settings`, as in all_maps.rs): the threads run
//! libc's start-up code and its string routines.
//!
//! Every run is killed after [`TIMEOUT`] (a hang fails the test, it does not block the
//! suite). Offsets of the test programs' functions come from `nm`, module-relative like
//! drcov's (PIE: the symbol's value).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use qbdi_tests::cli::{self, Outcome, corpus, python, qbdi, scratch};

const THREADS8: &str = env!("QBDI_TEST_THREADS8");
const RAW: &str = env!("QBDI_TEST_RAW_THREADS");
const PY_THREADS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/programs/py_threads.py");

/// How long one run may take before it is killed and the test fails as hung.
const TIMEOUT: Duration = Duration::from_secs(120);

/// threads8: worker i calls `step` 1000*(i+1)+i times.
const THREADS8_STEPS: u64 = {
    let mut s = 0;
    let mut i = 0;
    while i < 8 {
        s += 1000 * (i + 1) + i;
        i += 1;
    }
    s
};

/// raw_threads churn: rounds x 64 threads x 10 calls of churn_step.
const CHURN_ROUNDS: u64 = 200;

// ---- running -------------------------------------------------------------------------

/// Runs `program args` in `dir` with `env` added and `stdin` as input: natively when
/// `qbdi_args` is `None`, else under `qbdi run <qbdi_args> --`. Killed after [`TIMEOUT`]
/// (then the test fails, naming the run).
fn run(
    dir: &Path,
    env: &[(&str, &str)],
    qbdi_args: Option<&[&str]>,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Outcome {
    let mut cmd = match qbdi_args {
        None => Command::new(program),
        Some(q) => {
            let mut c = Command::new(qbdi());
            c.arg("run").args(q).arg("--").arg(program);
            c
        }
    };
    cmd.args(args).envs(env.iter().copied()).current_dir(dir);
    let r = cli::run_with_timeout(&mut cmd, stdin, TIMEOUT);
    assert!(
        !r.hung,
        "{program} {args:?} under {}: hung (killed after {} s)",
        describe(qbdi_args),
        TIMEOUT.as_secs()
    );
    let outcome = Outcome {
        stdout: r.stdout,
        stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        code: r.code,
        signal: r.signal,
    };
    eprintln!(
        "{:>7.2}s  {program} {} under {}",
        r.seconds,
        args.join(" "),
        describe(qbdi_args)
    );
    outcome
}

fn describe(qbdi_args: Option<&[&str]>) -> String {
    match qbdi_args {
        None => "native".into(),
        Some(q) => format!("qbdi run {}", q.join(" ")),
    }
}

/// Where two outputs first differ, for a failure message.
fn difference(a: &[u8], b: &[u8]) -> String {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let show = |v: &[u8]| {
        let from = at.saturating_sub(40);
        String::from_utf8_lossy(&v[from.min(v.len())..(at + 200).min(v.len())]).into_owned()
    };
    format!(
        "native {} bytes, qbdi {} bytes, first difference at byte {at}\n--- native (from there) ---\n{}\n--- qbdi ---\n{}",
        a.len(),
        b.len(),
        show(a),
        show(b)
    )
}

/// Asserts that `q` (a run under `qbdi run <qbdi_args>`) did what the native run `n` did:
/// the same exit status or signal, stdout and stderr.
fn assert_like_native(what: &str, qbdi_args: &[&str], n: &Outcome, q: &Outcome) {
    assert_eq!(
        (q.code, q.signal),
        (n.code, n.signal),
        "{what} under qbdi run {qbdi_args:?}: exit status differs from native\nqbdi stderr:\n{}\nqbdi stdout (head):\n{}",
        q.stderr,
        head(&q.text(), 20)
    );
    assert!(
        q.stdout == n.stdout,
        "{what} under qbdi run {qbdi_args:?}: stdout differs from native: {}\nqbdi stderr:\n{}",
        difference(&n.stdout, &q.stdout),
        q.stderr
    );
    assert!(
        q.stderr == n.stderr,
        "{what} under qbdi run {qbdi_args:?}: stderr differs from native\n--- native ---\n{}\n--- qbdi ---\n{}",
        n.stderr,
        q.stderr
    );
}

/// Runs the program natively and expects it to exit 0 (else the test program, not the
/// engine, is at fault).
fn native_ok(
    dir: &Path,
    env: &[(&str, &str)],
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Outcome {
    let n = run(dir, env, None, program, args, stdin);
    assert_eq!(
        (n.code, n.signal),
        (Some(0), None),
        "{program} {args:?} natively: {}",
        n.stderr
    );
    n
}

/// Runs the program under `qbdi run <qbdi_args>` and asserts it behaves as natively (`n`).
fn like_native(
    dir: &Path,
    env: &[(&str, &str)],
    qbdi_args: &[&str],
    n: &Outcome,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Outcome {
    let q = run(dir, env, Some(qbdi_args), program, args, stdin);
    let what = format!("{program} {}", args.join(" "));
    assert_like_native(&what, qbdi_args, n, &q);
    q
}

fn head(text: &str, lines: usize) -> String {
    text.lines().take(lines).collect::<Vec<_>>().join("\n")
}

// ---- binaries: symbols, segments, thread start routines --------------------------------

fn tool(program: &str, args: &[&str], binary: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .arg(binary)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (binutils): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} {}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("text")
}

/// The lowest virtual address of `binary`'s loadable segments: drcov's module base is where
/// that lands (offsets are module-relative).
fn first_load_vaddr(binary: &Path) -> u64 {
    tool("objdump", &["-p"], binary)
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.position(|x| x == "vaddr")?;
            u64::from_str_radix(w.next()?.strip_prefix("0x")?, 16).ok()
        })
        .min()
        .unwrap_or_else(|| panic!("no LOAD segment in {}", binary.display()))
}

/// The module offset of the global function `name` of `binary` (from nm; the table of each
/// binary read once).
fn symbol_offset(binary: &Path, name: &str) -> u64 {
    static TABLES: Mutex<Vec<(PathBuf, HashMap<String, u64>)>> = Mutex::new(Vec::new());
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    if !tables.iter().any(|(p, _)| p == binary) {
        let base = first_load_vaddr(binary);
        let table = tool("nm", &[], binary)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3 && f[1] == "T").then(|| {
                    (
                        f[2].to_owned(),
                        u64::from_str_radix(f[0], 16).unwrap() - base,
                    )
                })
            })
            .collect();
        tables.push((binary.to_owned(), table));
    }
    let (_, table) = tables.iter().find(|(p, _)| p == binary).unwrap();
    *table
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not a global function of {}", binary.display()))
}

/// `%rdx` and `%edx`, `%r13` and `%r13d`: the names a write to the 64-bit register takes.
fn register_names(reg: &str) -> [String; 2] {
    let low = match reg {
        "%rax" | "%rbx" | "%rcx" | "%rdx" | "%rsi" | "%rdi" | "%rbp" | "%rsp" => {
            format!("%e{}", &reg[2..])
        }
        _ => format!("{reg}d"),
    };
    [reg.to_owned(), low]
}

/// The start routines `binary` passes to `pthread_create` (third argument, `rdx`), as
/// module offsets: for each call, the nearest instruction before it (in address order,
/// within 60 instructions) that sets rdx (or the register copied into rdx) from a
/// RIP-relative `lea` or an immediate address. Call sites where that is not found are
/// skipped.
fn thread_start_routines(binary: &Path) -> Vec<u64> {
    let text = tool("objdump", &["-d", "--no-show-raw-insn"], binary);
    let lines: Vec<&str> = text.lines().collect();
    // (mnemonic, operands, the address in objdump's `# addr <symbol>` comment)
    let parse = |l: &str| -> Option<(String, String, Option<u64>)> {
        let (_, rest) = l.split_once(":\t")?;
        let (code, comment) = match rest.split_once('#') {
            Some((c, m)) => (c, Some(m)),
            None => (rest, None),
        };
        let mut parts = code.trim().splitn(2, char::is_whitespace);
        let mnemonic = parts.next()?.to_owned();
        let operands = parts.next().unwrap_or("").trim().to_owned();
        let target =
            comment.and_then(|m| u64::from_str_radix(m.split_whitespace().next()?, 16).ok());
        Some((mnemonic, operands, target))
    };
    let mut routines = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if !(l.contains("call") && l.ends_with("<pthread_create@plt>")) {
            continue;
        }
        let mut reg = "%rdx".to_owned();
        for prev in lines[..i].iter().rev().take(60) {
            if prev.is_empty() || prev.ends_with(">:") {
                break; // the start of the function
            }
            let Some((mnemonic, operands, target)) = parse(prev) else {
                continue;
            };
            // (Jumps are walked over: a loop around the call starts with one.)
            let callee_saved = ["%rbx", "%rbp", "%r12", "%r13", "%r14", "%r15"];
            if mnemonic.starts_with("ret")
                || (mnemonic.starts_with("call") && !callee_saved.contains(&reg.as_str()))
            {
                break;
            }
            let Some((src, dst)) = operands.rsplit_once(',') else {
                continue;
            };
            if !register_names(&reg).iter().any(|r| r == dst) {
                continue;
            }
            if mnemonic == "lea" && src.ends_with("(%rip)") {
                routines.extend(target);
            } else if mnemonic == "mov" && src.starts_with("$0x") {
                routines.extend(u64::from_str_radix(&src[3..], 16).ok());
            } else if mnemonic == "mov" && src.starts_with("%r") && !src.contains('(') {
                reg = src.to_owned();
                continue;
            }
            break;
        }
    }
    let base = first_load_vaddr(binary);
    routines.sort_unstable();
    routines.dedup();
    routines.into_iter().map(|a| a - base).collect()
}

// ---- plugin outputs --------------------------------------------------------------------

/// A drcov (version 2) file: modules `(id, base, path)` and blocks `(offset, size, module)`.
struct Coverage {
    modules: Vec<(u16, u64, String)>,
    blocks: Vec<(u32, u16, u16)>,
}

fn read_drcov(path: &Path) -> Coverage {
    let data = std::fs::read(path)
        .unwrap_or_else(|e| panic!("drcov wrote no file {}: {e}", path.display()));
    assert!(
        data.starts_with(b"DRCOV VERSION: 2\n"),
        "{}: not a drcov file",
        path.display()
    );
    let table = data
        .windows(10)
        .position(|w| w == b"BB Table: ")
        .unwrap_or_else(|| panic!("{}: no BB Table", path.display()));
    let header = String::from_utf8_lossy(&data[..table]);
    let modules = header
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.splitn(7, ',').map(str::trim).collect();
            if f.len() != 7 {
                return None;
            }
            let id = f[0].parse().ok()?;
            let base = u64::from_str_radix(f[1].strip_prefix("0x")?, 16).ok()?;
            Some((id, base, f[6].to_owned()))
        })
        .collect();
    let nl = table
        + data[table..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("BB Table line");
    let count: usize = String::from_utf8_lossy(&data[table + 10..nl])
        .trim_end_matches(" bbs")
        .parse()
        .expect("block count");
    let records = &data[nl + 1..];
    assert_eq!(
        records.len(),
        count * 8,
        "{}: 8 bytes a block",
        path.display()
    );
    let blocks = records
        .chunks_exact(8)
        .map(|r| {
            (
                u32::from_le_bytes(r[0..4].try_into().unwrap()),
                u16::from_le_bytes(r[4..6].try_into().unwrap()),
                u16::from_le_bytes(r[6..8].try_into().unwrap()),
            )
        })
        .collect();
    Coverage { modules, blocks }
}

/// Whether two paths name the same file (drcov may give a library's path through a link).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

impl Coverage {
    /// The module table entries of `module`: `(id, base)`.
    fn entries(&self, module: &Path) -> Vec<(u16, u64)> {
        self.modules
            .iter()
            .filter(|(_, _, p)| same_file(Path::new(p), module))
            .map(|&(id, base, _)| (id, base))
            .collect()
    }

    /// The first module whose file name starts with `prefix` (`liblzma.so`).
    fn module_named(&self, prefix: &str) -> Option<PathBuf> {
        self.modules
            .iter()
            .map(|(_, _, p)| PathBuf::from(p))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
    }

    /// Whether a block of `module` starts at `offset`.
    fn has_block(&self, module: &Path, offset: u64) -> bool {
        let ids: Vec<u16> = self.entries(module).iter().map(|e| e.0).collect();
        assert!(
            !ids.is_empty(),
            "{} is not in drcov's module table: {:?}",
            module.display(),
            self.modules.iter().map(|m| &m.2).collect::<Vec<_>>()
        );
        self.blocks
            .iter()
            .any(|&(o, _, m)| ids.contains(&m) && u64::from(o) == offset)
    }

    /// The load address of `module` (its first entry's base).
    fn base(&self, module: &Path) -> u64 {
        self.entries(module)
            .first()
            .unwrap_or_else(|| panic!("{} not in drcov's module table", module.display()))
            .1
    }

    fn blocks_of(&self, module: &Path) -> usize {
        let ids: Vec<u16> = self.entries(module).iter().map(|e| e.0).collect();
        self.blocks.iter().filter(|b| ids.contains(&b.2)).count()
    }
}

/// One line of bbcount's report: `count 0xstart-0xend symbol module`.
struct BbLine {
    count: u64,
    start: u64,
    symbol: String,
    module: String,
}

fn read_bbcount(path: &Path) -> Vec<BbLine> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("bbcount wrote no file {}: {e}", path.display()));
    assert!(
        text.starts_with("# "),
        "{}: not a bbcount report: {}",
        path.display(),
        head(&text, 3)
    );
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "bbcount line {l:?}");
            let (start, _) = f[1].split_once('-').expect("start-end");
            BbLine {
                count: f[0].parse().expect("count"),
                start: u64::from_str_radix(start.trim_start_matches("0x"), 16).expect("start"),
                symbol: f[2].to_owned(),
                module: f[3].to_owned(),
            }
        })
        .collect()
}

/// The count of the block that starts at the function `symbol` of the executable `exe`,
/// by address: the load base from the block at `main` (which the main thread enters under
/// the Vm), so the count does not depend on bbcount naming the threads' blocks.
fn bb_count_of(lines: &[BbLine], exe: &Path, symbol: &str) -> u64 {
    let module = file_name(exe);
    let main = lines
        .iter()
        .find(|l| l.symbol == "main" && l.module == module)
        .unwrap_or_else(|| panic!("bbcount lists no block at main of {module}"));
    let base = main.start - symbol_offset(exe, "main");
    bb_count_at(lines, base + symbol_offset(exe, symbol))
}

/// The count of the block that starts at `address`.
fn bb_count_at(lines: &[BbLine], address: u64) -> u64 {
    lines
        .iter()
        .filter(|l| l.start == address)
        .map(|l| l.count)
        .sum()
}

/// Block entries in the module whose file name is `module` (or one of its names).
fn bb_entries_in(lines: &[BbLine], names: &[String]) -> u64 {
    lines
        .iter()
        .filter(|l| names.contains(&l.module))
        .map(|l| l.count)
        .sum()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// The names bbcount may give `module`: its file name and its real file's.
fn module_names(module: &Path) -> Vec<String> {
    let mut v = vec![file_name(module)];
    if let Ok(real) = std::fs::canonicalize(module) {
        v.push(file_name(&real));
    }
    v
}

fn show_hottest(lines: &[BbLine]) -> String {
    lines
        .iter()
        .take(8)
        .map(|l| format!("  {} {:#x} {} {}", l.count, l.start, l.symbol, l.module))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- threads8 -------------------------------------------------------------------------

#[test]
fn threads8_runs_as_natively() {
    let dir = scratch("threads8-same");
    let n = native_ok(&dir, &[], THREADS8, &[], None);
    assert!(n.text().contains("worker 7: 8007 steps"), "{}", n.text());
    like_native(&dir, &[], &[], &n, THREADS8, &[], None);
    // libc's thread start-up and the workers' code under the Vm, under each glibc choice
    // of string routines.
    for (name, tunables) in qbdi_tests::glibc::settings() {
        let env: Vec<(&str, &str)> = tunables
            .map(|t| ("GLIBC_TUNABLES", t))
            .into_iter()
            .collect();
        let n = native_ok(&dir, &env, THREADS8, &[], None);
        let q = run(&dir, &env, Some(&["--all-maps"]), THREADS8, &[], None);
        assert_like_native(&format!("threads8 ({name})"), &["--all-maps"], &n, &q);
    }
}

#[test]
fn threads8_drcov_lists_the_workers_blocks() {
    let dir = scratch("threads8-drcov");
    let exe = Path::new(THREADS8);
    let n = native_ok(&dir, &[], THREADS8, &[], None);
    for (i, ranges) in [&[][..], &["--all-maps"][..]].into_iter().enumerate() {
        let out = dir.join(format!("cov{i}.log"));
        let spec = format!("drcov:out={}", out.display());
        let mut args = ranges.to_vec();
        args.extend(["-p", &spec]);
        like_native(&dir, &[], &args, &n, THREADS8, &[], None);
        let cov = read_drcov(&out);
        assert!(
            cov.has_block(exe, symbol_offset(exe, "main")),
            "{args:?}: main's block (the main thread ran under the Vm)"
        );
        for f in ["worker", "step"] {
            assert!(
                cov.has_block(exe, symbol_offset(exe, f)),
                "{args:?}: drcov lists no block at {f} (offset {:#x}): the worker threads ran \
                 natively ({} blocks of threads8 listed)",
                symbol_offset(exe, f),
                cov.blocks_of(exe)
            );
        }
    }
}

#[test]
fn threads8_bbcount_counts_every_step_of_every_thread() {
    let dir = scratch("threads8-bbcount");
    let n = native_ok(&dir, &[], THREADS8, &[], None);
    for (i, ranges) in [&[][..], &["--all-maps"][..]].into_iter().enumerate() {
        let out = dir.join(format!("bb{i}.txt"));
        let spec = format!("bbcount:out={}", out.display());
        let mut args = ranges.to_vec();
        args.extend(["-p", &spec]);
        like_native(&dir, &[], &args, &n, THREADS8, &[], None);
        let lines = read_bbcount(&out);
        assert_eq!(
            bb_count_of(&lines, Path::new(THREADS8), "step"),
            THREADS8_STEPS,
            "{args:?}: entries of the block at step (all 8 threads merged); hottest:\n{}",
            show_hottest(&lines)
        );
        assert_eq!(
            bb_count_of(&lines, Path::new(THREADS8), "worker"),
            8,
            "{args:?}: entries of the block at worker (one per thread)"
        );
    }
}

/// C++ `std::thread` (started by libstdc++, which calls the lambda: under the default
/// ranges libstdc++ is not instrumented, so the start routine's own function is, on the
/// thread) and Rust `std::thread`: each worker's calls to the step function are counted
/// exactly, under the default ranges and `--all-maps`.
#[test]
fn cxx_and_rust_std_threads_are_followed() {
    let dir = scratch("std-threads");
    for (exe, step) in [
        (env!("QBDI_TEST_CXX_THREADS"), "cxx_step"),
        (env!("QBDI_TEST_RUST_THREADS"), "rs_step"),
    ] {
        let n = native_ok(&dir, &[], exe, &[], None);
        for (i, ranges) in [&[][..], &["--all-maps"][..]].into_iter().enumerate() {
            let out = dir.join(format!("{step}{i}.txt"));
            let spec = format!("bbcount:out={}", out.display());
            let mut args = ranges.to_vec();
            args.extend(["-p", &spec]);
            like_native(&dir, &[], &args, &n, exe, &[], None);
            let lines = read_bbcount(&out);
            assert_eq!(
                bb_count_of(&lines, Path::new(exe), step),
                4000,
                "{exe} {args:?}: entries of {step} (4 threads x 1000); hottest:\n{}",
                show_hottest(&lines)
            );
        }
    }
}

// ---- raw_threads ----------------------------------------------------------------------

/// Runs `raw_threads <args>` natively, under the default ranges and under `--all-maps`,
/// each time with drcov; returns the native outcome and the two coverages (default,
/// all-maps).
fn raw_threads_everywhere(dir: &Path, args: &[&str]) -> (Outcome, [Coverage; 2]) {
    let n = native_ok(dir, &[], RAW, args, None);
    // Without plugins first (the program alone), then with drcov.
    like_native(dir, &[], &[], &n, RAW, args, None);
    like_native(dir, &[], &["--all-maps"], &n, RAW, args, None);
    let covs = [&[][..], &["--all-maps"][..]].map(|ranges| {
        let out = dir.join(format!(
            "{}-{}.drcov",
            args[0],
            if ranges.is_empty() { "default" } else { "all" }
        ));
        let spec = format!("drcov:out={}", out.display());
        let mut q = ranges.to_vec();
        q.extend(["-p", &spec]);
        like_native(dir, &[], &q, &n, RAW, args, None);
        read_drcov(&out)
    });
    (n, covs)
}

fn raw_clone_case(mode: &str, work: &str) {
    let dir = scratch(&format!("raw-{mode}"));
    let exe = Path::new(RAW);
    let (n, covs) = raw_threads_everywhere(&dir, &[mode]);
    if n.text().contains("unavailable") {
        eprintln!("{mode} is not available on this kernel: only the output was compared");
        return;
    }
    assert!(n.text().contains("(right)"), "{}", n.text());
    let child = format!("{mode}_child");
    for (cov, ranges) in covs.iter().zip(["default ranges", "--all-maps"]) {
        for f in [child.as_str(), work] {
            assert!(
                cov.has_block(exe, symbol_offset(exe, f)),
                "{mode} under {ranges}: drcov lists no block at {f}: the {mode} child ran \
                 natively"
            );
        }
    }
}

#[test]
fn raw_clone_child_runs_under_the_vm() {
    raw_clone_case("clone", "clone_work");
}

#[test]
fn raw_clone3_child_runs_under_the_vm() {
    raw_clone_case("clone3", "clone3_work");
}

#[test]
fn vfork_child_execs_as_natively() {
    let dir = scratch("raw-vfork");
    let (n, _) = raw_threads_everywhere(&dir, &["vfork"]);
    assert_eq!(n.text(), "from-vfork-child\nvfork: child exited 0\n");
}

/// The drcov files in `dir` whose names start with `prefix`, by name.
fn drcov_files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| file_name(p).starts_with(prefix))
        .collect();
    v.sort();
    v
}

#[test]
fn fork_while_threads_run() {
    let dir = scratch("raw-fork-mt");
    let exe = Path::new(RAW);
    let n = native_ok(&dir, &[], RAW, &["fork_mt"], None);
    assert_eq!(
        n.text(),
        "fork_mt child: sum 1499500\nfork_mt parent: child exited 0, 4 threads joined\n"
    );
    like_native(&dir, &[], &[], &n, RAW, &["fork_mt"], None);
    like_native(&dir, &[], &["--all-maps"], &n, RAW, &["fork_mt"], None);
    for (i, ranges) in [&[][..], &["--all-maps"][..]].into_iter().enumerate() {
        let out = dir.join(format!("fork{i}.drcov"));
        let spec = format!("drcov:out={}", out.display());
        let mut q = ranges.to_vec();
        q.extend(["-p", &spec]);
        like_native(&dir, &[], &q, &n, RAW, &["fork_mt"], None);
        // The parent writes PATH, the child PATH.<pid>.
        let files = drcov_files(&dir, &format!("fork{i}.drcov"));
        assert_eq!(
            files.len(),
            2,
            "{q:?}: one drcov file per process: {files:?}"
        );
        let parent = read_drcov(&out);
        let child = read_drcov(files.iter().find(|f| **f != out).unwrap());
        assert!(
            child.has_block(exe, symbol_offset(exe, "fork_child_work")),
            "{q:?}: the fork child ran its own code under the Vm"
        );
        assert!(
            parent.has_block(exe, symbol_offset(exe, "spin_step")),
            "{q:?}: drcov lists no block at spin_step: the spinning threads ran natively"
        );
    }
}

#[test]
fn exit_while_threads_run() {
    let dir = scratch("raw-exit-running");
    let exe = Path::new(RAW);
    let (n, covs) = raw_threads_everywhere(&dir, &["exit_running"]);
    assert_eq!(n.text(), "exit_running: exiting with 4 threads running\n");
    for (cov, ranges) in covs.iter().zip(["default ranges", "--all-maps"]) {
        assert!(
            cov.has_block(exe, symbol_offset(exe, "spin_step")),
            "exit_running under {ranges}: drcov lists no block at spin_step: the spinning \
             threads ran natively"
        );
    }
}

#[test]
fn thread_churn_with_a_callback_on_every_block() {
    let dir = scratch("raw-churn");
    let rounds = CHURN_ROUNDS.to_string();
    let args = ["churn", rounds.as_str()];
    let n = native_ok(&dir, &[], RAW, &args, None);
    let calls = CHURN_ROUNDS * 64 * 10;
    assert_eq!(
        n.text(),
        format!("churn: {CHURN_ROUNDS} rounds of 64 threads, total {calls} (right)\n")
    );
    like_native(&dir, &[], &["--all-maps"], &n, RAW, &args, None);
    for (i, ranges) in [&[][..], &["--all-maps"][..]].into_iter().enumerate() {
        let out = dir.join(format!("bb{i}.txt"));
        let spec = format!("bbcount:out={}", out.display());
        let mut q = ranges.to_vec();
        q.extend(["-p", &spec]);
        like_native(&dir, &[], &q, &n, RAW, &args, None);
        let lines = read_bbcount(&out);
        assert_eq!(
            bb_count_of(&lines, Path::new(RAW), "churn_step"),
            calls,
            "{q:?}: entries of the block at churn_step ({} threads x 10); hottest:\n{}",
            CHURN_ROUNDS * 64,
            show_hottest(&lines)
        );
    }
}

/// The peak resident memory (KiB) of `qbdi run --all-maps -- raw_threads churn <rounds>`.
// The child is reaped by wait4 (for its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn churn_peak_rss_kib(dir: &Path, rounds: u64) -> i64 {
    let child = std::process::Command::new(qbdi_tests::cli::qbdi())
        .args(["run", "--all-maps", "--", RAW, "churn", &rounds.to_string()])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qbdi starts");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child just spawned (not waited for elsewhere).
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "churn {rounds}: status {status:#x}"
    );
    usage.ru_maxrss
}

/// Creating and joining threads does not grow memory with their number: a thread's Vm and
/// host stack go back to a pool when it ends (10x the threads, about the same peak).
#[test]
fn thread_churn_memory_stays_bounded() {
    let dir = scratch("raw-churn-rss");
    let small = churn_peak_rss_kib(&dir, 20);
    let large = churn_peak_rss_kib(&dir, 200);
    assert!(
        large < small + 48 * 1024,
        "peak RSS {large} KiB for 12,800 threads against {small} KiB for 1,280"
    );
}

/// translate_race: how many times thread t calls each function (see raw_threads.c).
fn race_expected_counts() -> [u64; 64] {
    let mut counts = [0; 64];
    for t in 0..16u64 {
        for j in 0..4 + 3 * t {
            counts[((4 * t + j) % 64) as usize] += 20 * (t + 1);
        }
    }
    counts
}

#[test]
fn threads_translating_new_code_at_once() {
    let dir = scratch("raw-race");
    let exe = Path::new(RAW);
    let n = native_ok(&dir, &[], RAW, &["translate_race"], None);
    like_native(&dir, &[], &[], &n, RAW, &["translate_race"], None);
    for (name, tunables) in qbdi_tests::glibc::settings() {
        let env: Vec<(&str, &str)> = tunables
            .map(|t| ("GLIBC_TUNABLES", t))
            .into_iter()
            .collect();
        let q = run(
            &dir,
            &env,
            Some(&["--all-maps"]),
            RAW,
            &["translate_race"],
            None,
        );
        assert_like_native(&format!("translate_race ({name})"), &["--all-maps"], &n, &q);
    }
    let expected = race_expected_counts();
    assert!(expected.iter().all(|&c| c > 0));
    // The race differs every run: a few runs, each with coverage and exact counts.
    for round in 0..4 {
        let ranges: &[&str] = if round % 2 == 0 { &["--all-maps"] } else { &[] };
        let cov_out = dir.join(format!("race{round}.drcov"));
        let bb_out = dir.join(format!("race{round}.bb"));
        let (c, b) = (
            format!("drcov:out={}", cov_out.display()),
            format!("bbcount:out={}", bb_out.display()),
        );
        let mut q = ranges.to_vec();
        q.extend(["-p", &c, "-p", &b]);
        like_native(&dir, &[], &q, &n, RAW, &["translate_race"], None);
        let cov = read_drcov(&cov_out);
        let lines = read_bbcount(&bb_out);
        let mut missing = Vec::new();
        let mut wrong = Vec::new();
        for (i, &want) in expected.iter().enumerate() {
            let f = format!("race_fn_{i}");
            if !cov.has_block(exe, symbol_offset(exe, &f)) {
                missing.push(f.clone());
            }
            let got = bb_count_of(&lines, exe, &f);
            if got != want {
                wrong.push(format!("{f}: {got} (want {want})"));
            }
        }
        assert!(
            missing.is_empty(),
            "{q:?}: drcov lists no block at {} of the 64 functions the threads ran: {missing:?}",
            missing.len()
        );
        assert!(
            wrong.is_empty(),
            "{q:?}: bbcount's counts of the functions' first blocks: {}",
            wrong.join(", ")
        );
    }
}

// ---- real programs --------------------------------------------------------------------

/// A threaded real program: `program args` on `input` natively and under `--all-maps`
/// with `plugins` (drcov always, into `<tag>.drcov`; with bbcount, into `<tag>.bb`).
/// Asserts the output is native's, and that drcov lists a block at one of the start
/// routines `starter` (the binary calling pthread_create; a module file name prefix)
/// passes to pthread_create. Returns the qbdi outcome, the coverage and bbcount's lines.
struct RealRun<'a> {
    dir: &'a Path,
    env: &'a [(&'a str, &'a str)],
    program: &'a str,
    args: &'a [&'a str],
    input: Option<&'a [u8]>,
    starter: &'a str,
}

impl RealRun<'_> {
    fn run(&self, tag: &str, bbcount: bool) -> (Outcome, Coverage, Vec<BbLine>) {
        let cov_out = self.dir.join(format!("{tag}.drcov"));
        let bb_out = self.dir.join(format!("{tag}.bb"));
        let c = format!("drcov:out={}", cov_out.display());
        let b = format!("bbcount:out={}", bb_out.display());
        let mut q = vec!["--all-maps", "-p", &c];
        if bbcount {
            q.extend(["-p", &b]);
        }
        let n = native_ok(self.dir, self.env, self.program, self.args, self.input);
        let out = like_native(
            self.dir,
            self.env,
            &q,
            &n,
            self.program,
            self.args,
            self.input,
        );
        let cov = read_drcov(&cov_out);
        let module = cov.module_named(self.starter).unwrap_or_else(|| {
            panic!(
                "{}: no module {}* in drcov's table",
                self.program, self.starter
            )
        });
        let real = std::fs::canonicalize(&module).unwrap();
        let routines = thread_start_routines(&real);
        assert!(
            !routines.is_empty(),
            "no pthread_create start routine found in {} (objdump)",
            real.display()
        );
        assert!(
            routines.iter().any(|&r| cov.has_block(&module, r)),
            "{} {:?} under {q:?}: drcov lists no block at the thread start routine{} {:x?} of \
             {}: the threads ran natively ({} blocks of it listed)",
            self.program,
            self.args,
            if routines.len() > 1 { "s" } else { "" },
            routines,
            real.display(),
            cov.blocks_of(&module)
        );
        let lines = if bbcount {
            let lines = read_bbcount(&bb_out);
            let base = cov.base(&module);
            assert!(
                routines.iter().any(|&r| bb_count_at(&lines, base + r) > 0),
                "{} under {q:?}: bbcount counts no entry of the thread start routine",
                self.program
            );
            lines
        } else {
            Vec::new()
        };
        (out, cov, lines)
    }
}

/// Asserts that the module `prefix*` of `cov` had at least `min` block entries.
fn assert_work_in(cov: &Coverage, lines: &[BbLine], prefix: &str, min: u64, what: &str) {
    let module = cov
        .module_named(prefix)
        .unwrap_or_else(|| panic!("no module {prefix}* in drcov's table"));
    let entries = bb_entries_in(lines, &module_names(&module));
    assert!(
        entries >= min,
        "{what}: {entries} block entries in {prefix}, expected at least {min} (one per input \
         byte: the compression ran natively on the threads); hottest:\n{}",
        show_hottest(lines)
    );
}

/// Decompresses `data` natively with `program args` and expects `original`.
fn assert_round_trip(dir: &Path, program: &str, args: &[&str], data: &[u8], original: &[u8]) {
    let d = native_ok(dir, &[], program, args, Some(data));
    assert!(
        d.stdout == original,
        "{program} {args:?} of the output under qbdi: {} bytes, not the {} input bytes",
        d.stdout.len(),
        original.len()
    );
}

#[test]
fn xz_threads_under_all_maps() {
    let dir = scratch("real-xz");
    let big = corpus();
    // 3 MB in 512 KiB blocks: 6 blocks for 4 threads (xz's default block is 24 MiB at -6).
    let args = ["-T4", "--block-size=512KiB", "-c"];
    let real = RealRun {
        dir: &dir,
        env: &[],
        program: "xz",
        args: &args,
        input: Some(&big),
        starter: "liblzma.so",
    };
    let (out, ..) = real.run("big", false);
    assert_round_trip(&dir, "xz", &["-d", "-c"], &out.stdout, &big);
    // With bbcount: 64 KiB in 16 KiB blocks (about 12 million block entries).
    let small = &big[..64 << 10];
    let args = ["-T4", "--block-size=16KiB", "-c"];
    let real = RealRun {
        args: &args,
        input: Some(small),
        ..real
    };
    let (out, cov, lines) = real.run("small", true);
    assert_round_trip(&dir, "xz", &["-d", "-c"], &out.stdout, small);
    assert_work_in(&cov, &lines, "liblzma.so", small.len() as u64, "xz -T4");
}

#[test]
fn zstd_threads_under_all_maps() {
    let dir = scratch("real-zstd");
    let big = corpus();
    let args = ["-T4", "-B512KiB", "-c"];
    let real = RealRun {
        dir: &dir,
        env: &[],
        program: "zstd",
        args: &args,
        input: Some(&big),
        starter: "zstd",
    };
    let (out, ..) = real.run("big", false);
    assert_round_trip(&dir, "zstd", &["-d", "-c"], &out.stdout, &big);
    // With bbcount: 2 MB, 4 jobs of 512 KiB (zstd's smallest job).
    let small = &big[..2 << 20];
    let real = RealRun {
        input: Some(small),
        ..real
    };
    let (out, cov, lines) = real.run("small", true);
    assert_round_trip(&dir, "zstd", &["-d", "-c"], &out.stdout, small);
    // zstd links libzstd statically: the work is in the executable.
    assert_work_in(&cov, &lines, "zstd", small.len() as u64, "zstd -T4");
}

#[test]
fn pigz_threads_under_all_maps() {
    let dir = scratch("real-pigz");
    if !Path::new("/usr/bin/pigz").exists() {
        eprintln!("NOTE: /usr/bin/pigz is missing (.ci/run installs it): pigz not tested");
        return;
    }
    let big = corpus();
    let args = ["-n", "-p", "4", "-c"];
    let real = RealRun {
        dir: &dir,
        env: &[],
        program: "/usr/bin/pigz",
        args: &args,
        input: Some(&big),
        starter: "pigz",
    };
    let (out, ..) = real.run("big", false);
    assert_round_trip(&dir, "gzip", &["-d", "-c"], &out.stdout, &big);
    // With bbcount: 256 KiB in 32 KiB blocks.
    let small = &big[..256 << 10];
    let args = ["-n", "-p", "4", "-b", "32", "-c"];
    let real = RealRun {
        args: &args,
        input: Some(small),
        ..real
    };
    let (out, cov, lines) = real.run("small", true);
    assert_round_trip(&dir, "gzip", &["-d", "-c"], &out.stdout, small);
    assert_work_in(&cov, &lines, "libz.so", small.len() as u64, "pigz -p 4");
}

/// `n` lines `hash index`, the same every run.
fn lines(n: u32) -> String {
    (0..n)
        .map(|i| format!("{:08x} {i}\n", i.wrapping_mul(2_654_435_761)))
        .collect()
}

#[test]
fn sort_parallel_under_all_maps() {
    let dir = scratch("real-sort");
    // GNU sort gives a subsort its own thread from 128 Ki lines on (SUBTHREAD_LINES_HEURISTIC):
    // 300,000 lines (4.5 MB) make 3 threads besides main; 140,000 one (under bbcount).
    let env = [("LC_ALL", "C")];
    for (tag, n, bbcount) in [("big", 300_000, false), ("small", 140_000, true)] {
        let file = dir.join(format!("{tag}.txt"));
        std::fs::write(&file, lines(n)).unwrap();
        let path = file.display().to_string();
        let args = ["--parallel=4", path.as_str()];
        let real = RealRun {
            dir: &dir,
            env: &env,
            program: "sort",
            args: &args,
            input: None,
            starter: "sort",
        };
        let (out, ..) = real.run(tag, bbcount);
        assert_eq!(out.text().lines().count(), n as usize);
    }
}

#[test]
fn python_threads_under_all_maps() {
    let dir = scratch("real-python");
    let python = python();
    let real = RealRun {
        dir: &dir,
        env: &[],
        program: &python,
        args: &[PY_THREADS],
        input: None,
        starter: "python3",
    };
    let (out, ..) = real.run("py", true);
    let text = out.text();
    assert!(text.contains("counter: 1200 threads alive: 1"), "{text}");
}
