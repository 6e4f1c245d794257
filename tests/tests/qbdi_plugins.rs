//! The shipped plugins on real programs (the program's output unchanged, each plugin's
//! output complete), plugins composed in one run, the drcov file read by an independent
//! parser, `qbdi call`, `qbdi plugin info`, and every error of the host with its message.

use std::path::Path;

use qbdi_sdk::abi::{ABI_MAJOR, ABI_MINOR};
use qbdi_tests::cli::{assert_same, qbdi_cmd, report_field, scratch, testkit_reports, under_qbdi};

const PLUGINS: [&str; 6] = [
    "drcov",
    "tracer",
    "calltrace",
    "memtrace",
    "opstats",
    "bbcount",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn each_plugin_leaves_programs_unchanged_and_writes_its_output() {
    let dir = scratch("each");
    // Small inputs: tracer and memtrace call back on every instruction.
    let input: Vec<u8> = (0..4000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
    for plugin in PLUGINS {
        let out = dir.join(format!("{plugin}.out"));
        let spec = format!("{plugin}:out={}", out.display());
        assert_same(&dir, &["-p", &spec], "ls", &["-la", "/usr/share"], None);
        let text = std::fs::read(&out).unwrap();
        assert!(text.len() > 100, "{plugin} wrote {} bytes", text.len());
        std::fs::remove_file(&out).unwrap();
        assert_same(&dir, &["-p", &spec], "gzip", &["-1", "-c"], Some(&input));
        assert!(
            std::fs::metadata(&out).unwrap().len() > 100,
            "{plugin} on gzip"
        );
    }
}

#[test]
fn plugin_outputs_say_what_they_saw() {
    let dir = scratch("outputs");
    let run = |plugin: &str, extra: &str| {
        let out = dir.join(format!("{plugin}.txt"));
        let spec = format!("{plugin}:out={}{extra}", out.display());
        assert_same(&dir, &["-p", &spec], "ls", &["/usr"], None);
        read(&out)
    };
    // calltrace names libc functions ls calls.
    let calls = run("calltrace", "");
    assert!(
        calls.contains("libc.so.6"),
        "{}",
        &calls[..calls.len().min(2000)]
    );
    for f in ["opendir", "readdir", "closedir"] {
        assert!(calls.contains(f), "calltrace names {f}");
    }
    // tracer: one line per instruction, address then disassembly.
    let trace = run("tracer", ",max=1000");
    let lines: Vec<&str> = trace.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 1000);
    assert!(
        lines.iter().all(|l| l.starts_with("0x") && l.contains(' ')),
        "{:?}",
        &lines[..3]
    );
    // opstats counts instructions; its total equals tracer's count without a limit.
    let stats = run("opstats", "");
    let total: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("instructions "))
        .expect("opstats total")
        .trim()
        .parse()
        .unwrap();
    let full_trace = run("tracer", "");
    let traced = full_trace.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(total, traced as u64, "opstats and tracer agree");
    assert!(stats.contains("MOV"));
    // bbcount: hottest first.
    let bb = run("bbcount", "");
    let counts: Vec<u64> = bb
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(
        counts.len() > 50 && counts.windows(2).all(|w| w[0] >= w[1]),
        "{:?}",
        &counts[..5]
    );
    // memtrace: reads and writes.
    let mem = run("memtrace", ",max=5000");
    assert!(mem.lines().any(|l| l.contains(" R ")) && mem.lines().any(|l| l.contains(" W ")));
}

#[test]
fn two_and_three_plugins_compose() {
    let dir = scratch("compose");
    let f = |n: &str| dir.join(n);
    let (a, b, c) = (f("cov.log"), f("ops.txt"), f("tk.txt"));
    let specs = [
        format!("drcov:out={}", a.display()),
        format!("opstats:out={}", b.display()),
        format!("testkit:out={}", c.display()),
    ];
    assert_same(
        &dir,
        &["-p", &specs[0], "-p", &specs[1]],
        "ls",
        &["-la", "/usr"],
        None,
    );
    assert!(drcov::parse(&std::fs::read(&a).unwrap()).blocks.len() > 100);
    assert!(read(&b).starts_with("instructions "));
    std::fs::remove_file(&a).unwrap();
    std::fs::remove_file(&b).unwrap();
    assert_same(
        &dir,
        &["-p", &specs[0], "-p", &specs[1], "-p", &specs[2]],
        "ls",
        &["-la", "/usr"],
        None,
    );
    let cov = drcov::parse(&std::fs::read(&a).unwrap());
    let reports = testkit_reports(&c);
    assert_eq!(reports.len(), 1);
    // Both saw the same program: drcov's distinct blocks are testkit's new blocks.
    assert_eq!(cov.blocks.len() as u64, report_field(&reports[0], "new"));
    assert!(read(&b).starts_with("instructions "));
}

/// An independent reader of drcov version 2 files (the format Lighthouse and bncov read).
mod drcov {
    pub struct Module {
        pub id: u16,
        pub base: u64,
        pub end: u64,
        pub path: String,
    }
    pub struct Coverage {
        pub modules: Vec<Module>,
        pub blocks: Vec<(u32, u16, u16)>,
    }

    fn line<'a>(data: &'a [u8], at: &mut usize) -> &'a str {
        let end = data[*at..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("a text line")
            + *at;
        let s = std::str::from_utf8(&data[*at..end]).expect("text header");
        *at = end + 1;
        s
    }

    pub fn parse(data: &[u8]) -> Coverage {
        let mut at = 0;
        assert_eq!(line(data, &mut at), "DRCOV VERSION: 2");
        assert!(line(data, &mut at).starts_with("DRCOV FLAVOR: "));
        let header = line(data, &mut at);
        let count: usize = header
            .strip_prefix("Module Table: version 2, count ")
            .unwrap_or_else(|| panic!("module table header: {header:?}"))
            .parse()
            .unwrap();
        assert_eq!(
            line(data, &mut at),
            "Columns: id, base, end, entry, checksum, timestamp, path"
        );
        let mut modules = Vec::new();
        for i in 0..count {
            let l = line(data, &mut at);
            let fields: Vec<&str> = l.splitn(7, ',').map(str::trim).collect();
            assert_eq!(fields.len(), 7, "{l:?}");
            let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x").expect("0x"), 16).unwrap();
            let m = Module {
                id: fields[0].parse().unwrap(),
                base: hex(fields[1]),
                end: hex(fields[2]),
                path: fields[6].to_owned(),
            };
            assert_eq!(m.id as usize, i, "ids in order");
            assert!(m.base < m.end, "{l:?}");
            hex(fields[3]);
            hex(fields[4]);
            hex(fields[5]);
            modules.push(m);
        }
        let bb = line(data, &mut at);
        let n: usize = bb
            .strip_prefix("BB Table: ")
            .and_then(|s| s.strip_suffix(" bbs"))
            .unwrap_or_else(|| panic!("bb header {bb:?}"))
            .parse()
            .unwrap();
        assert_eq!(data.len() - at, n * 8, "8 bytes per block, nothing after");
        let blocks = data[at..]
            .chunks_exact(8)
            .map(|c| {
                (
                    u32::from_le_bytes(c[0..4].try_into().unwrap()),
                    u16::from_le_bytes(c[4..6].try_into().unwrap()),
                    u16::from_le_bytes(c[6..8].try_into().unwrap()),
                )
            })
            .collect();
        Coverage { modules, blocks }
    }
}

#[test]
fn drcov_file_is_well_formed_and_covers_main() {
    let dir = scratch("drcov");
    let program = env!("QBDI_TEST_CXX_EXCEPTIONS");
    let out = dir.join("cov.log");
    let spec = format!("drcov:out={}", out.display());
    assert_same(&dir, &["-p", &spec], program, &[], None);
    let cov = drcov::parse(&std::fs::read(&out).unwrap());
    let (main_mod, m) = cov
        .modules
        .iter()
        .enumerate()
        .find(|(_, m)| m.path == program)
        .expect("the program is in the module table");
    for &(start, size, module) in &cov.blocks {
        let m = &cov.modules[module as usize];
        assert!(
            size > 0 && m.base + start as u64 + size as u64 <= m.end,
            "block inside its module"
        );
    }
    // main's offset from the ELF symbol table (nm), relative to the load base (PIE: 0).
    let nm = std::process::Command::new("nm")
        .arg(program)
        .output()
        .unwrap();
    let main_off = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "main").then(|| u64::from_str_radix(f[0], 16).unwrap())
        })
        .expect("main in nm's output");
    assert!(m.end - m.base > main_off);
    assert!(
        cov.blocks
            .iter()
            .any(|&(s, _, id)| id as usize == main_mod && s as u64 == main_off),
        "a block starts at main"
    );
}

#[test]
fn plugin_info_describes_a_plugin() {
    let dir = scratch("info");
    let out = qbdi_cmd(&dir, &["plugin", "info", "drcov"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = out.text();
    let abi = format!("abi:         {ABI_MAJOR}.{ABI_MINOR}");
    for needle in [
        "name:        drcov",
        &abi,
        "heap:        qbdi's private heap",
        "BASIC_BLOCK_NEW",
        "out",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    let out = qbdi_cmd(&dir, &["plugin", "info", "testkit"]);
    let text = out.text();
    for needle in [
        "plugin_init",
        "on_block",
        "mnemonic = \"CALL*\"",
        "plugin_fini",
        "refuse",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
}

#[test]
fn qbdi_call_calls_a_library_function_under_plugins() {
    let dir = scratch("call");
    let report = dir.join("tk.txt");
    let spec = format!("testkit:out={}", report.display());
    let out = qbdi_cmd(
        &dir,
        &[
            "call",
            "-p",
            &spec,
            "libz.so.1",
            "crc32",
            "0",
            "some bytes",
            "10",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // CRC-32 of "some bytes", computed here.
    let mut crc = !0u32;
    for &b in b"some bytes" {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    let expected = (!crc) as u64;
    assert_eq!(out.text(), format!("{expected} ({expected:#x})\n"));
    let lines = testkit_reports(&report);
    assert_eq!(lines.len(), 1);
    assert!(report_field(&lines[0], "blocks") > 3, "{lines:?}");
    let out = qbdi_cmd(&dir, &["call", "--double", "libm.so.6", "cos", "0.0"]);
    assert_eq!(out.text(), "1\n", "{}", out.stderr);
}

/// Runs `ls` under `qbdi run <args>` and expects qbdi to refuse with a message containing
/// every `needle`, and the qbdi failure status.
fn refused(dir: &Path, args: &[&str], needles: &[&str]) {
    let out = under_qbdi(dir, args, "ls", &["/"], None);
    assert_eq!(out.code, Some(125), "{args:?}: {}", out.stderr);
    assert!(out.stdout.is_empty(), "{args:?}: the program did not run");
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "{args:?}: {n:?} in {:?}",
            out.stderr
        );
    }
    assert!(out.stderr.starts_with("qbdi: "), "{:?}", out.stderr);
}

#[test]
fn every_plugin_error_is_named() {
    let dir = scratch("errors");
    let artifacts = qbdi_tests::cli::artifacts();
    // A Python tool with libc instrumented (its interpreter would use libc's malloc in
    // callbacks while the guest may be inside it).
    let tool = dir.join("tool.py");
    std::fs::write(&tool, "def qbdi_init(vm):\n    pass\n").unwrap();
    let tool = tool.to_str().unwrap();
    for opts in [
        ["--all-maps", "-p", tool],
        ["-p", tool, "--module=libc.so.6"],
    ] {
        refused(
            &dir,
            &opts,
            &["tool.py", "Python tool", "libc", "Rust plugin"],
        );
    }
    refused(
        &dir,
        &["-p", "nosuchplugin"],
        &["no plugin 'nosuchplugin'", "QBDI_PLUGIN_PATH"],
    );
    refused(
        &dir,
        &["-p", "/nonexistent/libx.so"],
        &["/nonexistent/libx.so"],
    );
    let text = dir.join("notelf.so");
    std::fs::write(&text, "not a plugin at all\n").unwrap();
    let t = text.to_str().unwrap();
    refused(&dir, &["-p", t], &[t, "not an ELF file"]);
    let host = artifacts.join("libqbdi_host.so");
    let h = host.to_str().unwrap();
    refused(
        &dir,
        &["-p", h],
        &[h, "qbdi_plugin_descriptor", "qbdi_sdk::plugin!"],
    );
    let bad = artifacts.join("libqbdi_plugin_bad_abi.so");
    let b = bad.to_str().unwrap();
    let speaks = format!("speaks {ABI_MAJOR}.{ABI_MINOR}");
    refused(&dir, &["-p", b], &[b, "ABI 99.0", &speaks, "rebuild"]);
    refused(
        &dir,
        &["-p", "testkit:color=red"],
        &["plugin 'testkit'", "unknown option 'color'", "out"],
    );
    refused(
        &dir,
        &["-p", "testkit:refuse=no thanks"],
        &["plugin 'testkit' refused to start: no thanks"],
    );
    refused(
        &dir,
        &["-p", "testkit:panic=init"],
        &["testkit", "panicked", "panics in init"],
    );
    refused(
        &dir,
        &["-p", "testkit", "-p", "testkit:tag=x"],
        &["given twice"],
    );
    // Plugins found through QBDI_PLUGIN_PATH.
    let mut cmd = std::process::Command::new(qbdi_tests::cli::qbdi());
    let out = cmd
        .args(["plugin", "info", "testkit"])
        .env("QBDI_PLUGIN_PATH", &artifacts)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("name:        testkit"));
}

#[test]
fn program_errors_are_named() {
    let dir = scratch("progerr");
    let out = under_qbdi(&dir, &[], "no-such-program-here", &[], None);
    assert_eq!(out.code, Some(125));
    assert!(
        out.stderr
            .contains("no-such-program-here: not found in PATH"),
        "{}",
        out.stderr
    );
    std::fs::write(dir.join("data.txt"), "hello").unwrap();
    let out = under_qbdi(&dir, &[], "./data.txt", &[], None);
    assert_eq!(out.code, Some(125));
    assert!(
        out.stderr.contains("not a 64-bit ELF executable"),
        "{}",
        out.stderr
    );
    if Path::new("/sbin/ldconfig").exists() {
        let out = under_qbdi(&dir, &[], "/sbin/ldconfig", &["-p"], None);
        assert_eq!(out.code, Some(125));
        assert!(out.stderr.contains("statically linked"), "{}", out.stderr);
    }
}

#[test]
fn a_panicking_callback_stops_the_run_and_every_fini_still_runs() {
    let dir = scratch("panic");
    let cov = dir.join("cov.log");
    let tk = dir.join("tk.txt");
    let drcov = format!("drcov:out={}", cov.display());
    let testkit = format!("testkit:out={},panic=block,after=50", tk.display());
    let out = under_qbdi(
        &dir,
        &["-p", &drcov, "-p", &testkit],
        "ls",
        &["-la", "/usr"],
        None,
    );
    assert_eq!(out.code, Some(125), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("plugin 'testkit': callback 'on_block' panicked: testkit panics at block 50"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("(at tests/plugins/testkit/src/lib.rs:"),
        "location: {}",
        out.stderr
    );
    // Both plugins finalised: drcov's coverage so far and testkit's report are there.
    let reports = testkit_reports(&tk);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(report_field(&reports[0], "blocks"), 50);
    let data = std::fs::read(&cov).expect("drcov wrote its file");
    assert!(data.starts_with(b"DRCOV VERSION: 2"));
    // A fini that panics is reported; the program's result stands.
    let testkit = format!("testkit:out={},panic=fini", tk.display());
    let out = under_qbdi(&dir, &["-p", &testkit], "true", &[], None);
    assert_eq!(out.code, Some(0));
    assert!(
        out.stderr.contains("fini 'fini' panicked"),
        "{}",
        out.stderr
    );
}

/// perl's `die` in `eval` and lua's `error` in `pcall` longjmp out of native libc calls
/// (`__longjmp_chk`) to a `setjmp` whose call returned long before: under calltrace the
/// programs behave as natively, and the trace shows the longjmp call as left without
/// returning (never as returning).
#[test]
fn calltrace_shows_longjmp_out_of_native_code_as_not_returning() {
    let dir = scratch("calltrace_longjmp");
    let script = dir.join("p.lua");
    std::fs::write(
        &script,
        "for i = 1, 3 do print(pcall(function() error('boom' .. i) end)) end\n",
    )
    .unwrap();
    let script = script.to_str().unwrap().to_owned();
    let runs: [(&str, Vec<&str>); 2] = [
        (
            "perl",
            vec![
                "-e",
                "for my $i (1..3) { eval { die \"x$i\\n\" }; print \"caught $@\" }",
            ],
        ),
        ("lua5.4", vec![script.as_str()]),
    ];
    for (program, args) in runs {
        let out = dir.join(format!("{program}.calls"));
        let spec = format!("calltrace:out={}", out.display());
        assert_same(&dir, &["-p", &spec], program, &args, None);
        let text = read(&out);
        let longjmps: Vec<&str> = text.lines().filter(|l| l.contains("longjmp")).collect();
        assert!(!longjmps.is_empty(), "{program}: no longjmp traced");
        for l in longjmps {
            assert!(
                l.ends_with("(left without returning)"),
                "{program}: a longjmp shown as returning: {l}"
            );
        }
    }
}

/// The output files in `dir` whose names start with `prefix`, with their contents.
fn outputs(dir: &Path, prefix: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .map(|p| {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect();
    v.sort();
    v
}

/// A `fork` child stays instrumented and writes outputs of its own: the parent's trace
/// lines are not written a second time (by the child, into the parent's file), the child's
/// counts are its own, and an explicit `out=PATH` becomes `PATH.<child pid>` in the child.
#[test]
fn a_fork_child_writes_its_own_outputs_and_not_the_parents_data_again() {
    let dir = scratch("fork_child");
    let forker = env!("QBDI_TEST_FORKER");
    let mt = dir.join("mt.txt");
    let mt_spec = format!("memtrace:out={}", mt.display());
    let out = assert_same(
        &dir,
        &[
            "-p",
            "calltrace",
            "-p",
            "bbcount",
            "-p",
            "drcov",
            "-p",
            &mt_spec,
        ],
        forker,
        &[],
        None,
    );
    assert!(out.text().contains("child exited 7"), "{}", out.text());
    for plugin in ["calltrace.", "bbcount.", "drcov."] {
        assert_eq!(
            outputs(&dir, plugin).len(),
            2,
            "{plugin}: one file per process"
        );
    }
    // calltrace: the child's file starts at fork's return in the child.
    let traces = outputs(&dir, "calltrace.");
    let (child, parent): (Vec<_>, Vec<_>) = traces.iter().partition(|(_, t)| {
        t.lines()
            .any(|l| l.starts_with("fork@") && l.ends_with("= 0x0"))
    });
    let (child, parent) = (&child[0].1, &parent[0].1);
    // Bound printf calls (a lazily bound call's name comes from calltrace's PLT-slot
    // guess, which once named the child's `exit(7)` `printf@plt`).
    let first_printf = |t: &str| t.lines().filter(|l| l.starts_with("printf@libc")).count();
    assert_eq!(first_printf(parent), 2, "parent: its two printfs\n{parent}");
    assert_eq!(
        first_printf(child),
        1,
        "child: its own printf only\n{child}"
    );
    assert!(
        !child.contains("fflush"),
        "the parent's pre-fork calls are not in the child's:\n{child}"
    );
    // bbcount: each process counts what it ran.
    let counts = outputs(&dir, "bbcount.");
    let with = |name: &str| counts.iter().filter(|(_, t)| t.contains(name)).count();
    assert_eq!(with("child_only"), 1, "only the child ran child_only");
    assert_eq!(with("parent_only"), 1, "only the parent ran parent_only");
    // memtrace with an explicit path: PATH for the parent, PATH.<pid> for the child.
    let mts = outputs(&dir, "mt.txt");
    assert_eq!(
        mts.len(),
        2,
        "{:?}",
        mts.iter().map(|m| &m.0).collect::<Vec<_>>()
    );
    assert!(mts.iter().any(|(n, _)| n == "mt.txt"));
    assert!(mts.iter().all(|(_, t)| !t.is_empty()));
}

#[test]
fn exec_transfer_callbacks_survive_longjmp() {
    // With EXEC_TRANSFER callbacks (testkit's counts calls and does nothing else), every
    // native call returns through the engine; a native setjmp records that return address,
    // and a later longjmp to it must resume at setjmp's own return site.
    let dir = scratch("longjmp");
    let program = env!("QBDI_TEST_SETJMP_LONGJMP");
    let tk = dir.join("tk.txt");
    let spec = format!("testkit:out={},transfers", tk.display());
    let out = assert_same(&dir, &["-p", &spec], program, &[], None);
    assert_eq!(out.code, Some(3), "{}", out.text());
    // calltrace: the longjmp call shows with no return, the program is unchanged.
    let calls = dir.join("calls.txt");
    let spec = format!("calltrace:out={}", calls.display());
    assert_same(&dir, &["-p", &spec], program, &[], None);
    let text = read(&calls);
    let longjmps: Vec<&str> = text.lines().filter(|l| l.contains("longjmp")).collect();
    assert_eq!(longjmps.len(), 3, "{text}");
    assert!(
        longjmps
            .iter()
            .all(|l| l.ends_with("= ? (left without returning)")),
        "{longjmps:?}"
    );
    // Perl's die and Lua's error unwind with (sig)longjmp out of the interpreter.
    let perl = "for my $i (1..3) { eval { die \"oops $i\\n\" }; print \"caught: $@\" }";
    assert_same(&dir, &["-p", &spec], "perl", &["-e", perl], None);
    assert!(read(&calls).contains("longjmp"));
    if std::path::Path::new("/usr/bin/lua5.4").exists() {
        let lua = "for i = 1, 3 do print(pcall(error, 'oops ' .. i)) end";
        assert_same(&dir, &["-p", &spec], "lua5.4", &["-e", lua], None);
    }
}
