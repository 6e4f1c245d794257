//! `qbdi run` on real programs no one here wrote (coreutils, gzip, python3, perl, dash)
//! and on a C++ program throwing through native code: the same stdout and exit status as
//! natively, with no plugin and with the test plugin; finalisation exactly once however the
//! program ends; the host's variables gone from the program's environment.

use std::path::Path;

use qbdi_tests::cli::{
    assert_same, corpus, listing_dir, native, python, report_field, scratch, testkit_reports,
    under_qbdi,
};

#[test]
fn ls_la_is_the_same() {
    let dir = scratch("ls");
    let d = listing_dir(&dir);
    let d = d.to_str().unwrap();
    let out = assert_same(&dir, &[], "ls", &["-la", d], None);
    assert!(out.text().contains("b.bin"));
    let report = dir.join("tk.txt");
    let arg = format!("testkit:out={}", report.display());
    assert_same(&dir, &["-p", &arg], "ls", &["-la", d], None);
    let lines = testkit_reports(&report);
    assert_eq!(lines.len(), 1, "{lines:?}");
    // ls's main executable really ran under the Vm: blocks, calls.
    assert!(report_field(&lines[0], "blocks") > 100, "{lines:?}");
    assert!(report_field(&lines[0], "calls") > 10, "{lines:?}");
}

#[test]
fn gzip_gunzip_round_trip() {
    let dir = scratch("gzip");
    let data = corpus();
    let n = native(&dir, "gzip", &["-9", "-c"], Some(&data));
    let q = assert_same(&dir, &[], "gzip", &["-9", "-c"], Some(&data));
    assert_eq!(n.stdout, q.stdout);
    let back = assert_same(&dir, &[], "gunzip", &["-c"], Some(&q.stdout));
    assert!(
        back.stdout == data,
        "gunzip under qbdi gives back the input"
    );
}

#[test]
fn sort_and_sha256sum() {
    let dir = scratch("sort");
    let mut lines = String::new();
    let mut x: u32 = 12345;
    for i in 0..20000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        lines.push_str(&format!("{:08x} line {i}\n", x));
    }
    std::fs::write(dir.join("in.txt"), &lines).unwrap();
    let out = assert_same(&dir, &[], "sort", &["in.txt"], None);
    assert!(out.stdout.starts_with(b"0"));
    assert_same(
        &dir,
        &[],
        "sort",
        &["-r", "-n", "-k", "3"],
        Some(lines.as_bytes()),
    );
    let out = assert_same(&dir, &[], "sha256sum", &["in.txt"], None);
    assert_eq!(out.text().len(), 64 + 2 + "in.txt\n".len());
}

#[test]
fn python3_program() {
    let dir = scratch("python");
    let program = "import json, hashlib\n\
                   d = {str(i): i * i for i in range(2000)}\n\
                   s = json.dumps(d, sort_keys=True)\n\
                   print(len(s), hashlib.sha256(s.encode()).hexdigest())\n\
                   print(sorted(d.values())[-3:], sum(range(10**5)))";
    let out = assert_same(&dir, &[], &python(), &["-c", program], None);
    assert!(out.text().contains("4999950000"), "{}", out.text());
}

#[test]
fn false_exits_1() {
    let dir = scratch("false");
    let out = assert_same(&dir, &[], "false", &[], None);
    assert_eq!(out.code, Some(1));
}

#[test]
fn perl_die_longjmps_out_of_the_interpreter() {
    // Perl's die unwinds with siglongjmp out of the interpreter loop (Debian's perl has the
    // interpreter in its main executable, so the jump lands inside instrumented code).
    let dir = scratch("perl");
    let program = "for my $i (1..3) { eval { die \"oops $i\\n\" }; print \"caught: $@\" } \
                   my @a = sort { $a <=> $b } (5, 3, 9); print \"@a\\n\"; exit 3";
    let out = assert_same(&dir, &[], "perl", &["-e", program], None);
    assert_eq!(out.code, Some(3));
    assert!(out.text().contains("caught: oops 3"));
    // With libc instrumented too (sigsetjmp/siglongjmp themselves run in the Vm).
    assert_same(
        &dir,
        &["--module", "libc.so.6"],
        "perl",
        &["-e", program],
        None,
    );
}

#[test]
fn cxx_exceptions_through_native_code() {
    let dir = scratch("cxx");
    let program = env!("QBDI_TEST_CXX_EXCEPTIONS");
    let out = assert_same(&dir, &[], program, &[], None);
    assert_eq!(out.code, Some(42), "both exceptions caught");
    assert!(out.text().contains("caught: from underflow"));
    assert!(out.text().contains("caught: seven"));
    assert!(out.text().contains("caught again: 10"), "{}", out.text());
}

#[test]
fn environment_is_the_programs_own() {
    let dir = scratch("env");
    let out = assert_same(&dir, &[], "env", &[], None);
    assert!(!out.text().contains("LD_PRELOAD="), "{}", out.text());
    assert!(!out.text().contains("QBDI_RUN_CONFIG"), "{}", out.text());
    // A user's own LD_PRELOAD survives (here: an empty one).
    let mut cmd = std::process::Command::new(qbdi_tests::cli::qbdi());
    let out = cmd
        .args(["run", "--", "env"])
        .env("LD_PRELOAD", "")
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "LD_PRELOAD="), "{text}");
}

/// Runs `program args` under the testkit plugin and returns its reports and outcome.
fn testkit_run(
    dir: &Path,
    extra: &str,
    program: &str,
    args: &[&str],
) -> (Vec<String>, qbdi_tests::cli::Outcome) {
    let report = dir.join(format!("tk-{}.txt", extra.replace([',', '='], "_")));
    let _ = std::fs::remove_file(&report);
    let spec = format!("testkit:out={}{}", report.display(), extra);
    let out = under_qbdi(dir, &["-p", &spec], program, args, None);
    (testkit_reports(&report), out)
}

#[test]
fn fini_runs_exactly_once_however_the_program_ends() {
    let dir = scratch("fini");
    // Return from main.
    let (r, out) = testkit_run(&dir, "", "true", &[]);
    assert_eq!((r.len(), out.code), (1, Some(0)), "{r:?} {}", out.stderr);
    // exit().
    let (r, out) = testkit_run(
        &dir,
        "",
        &python(),
        &["-c", "import sys; print('x'); sys.exit(4)"],
    );
    assert_eq!(
        (r.len(), out.code, out.text().as_str()),
        (1, Some(4), "x\n"),
        "{r:?} {}",
        out.stderr
    );
    // _exit().
    let (r, out) = testkit_run(&dir, "", &python(), &["-c", "import os; os._exit(7)"]);
    assert_eq!((r.len(), out.code), (1, Some(7)), "{r:?} {}", out.stderr);
    // A fatal signal: the program's own status is kept.
    let (r, out) = testkit_run(
        &dir,
        "",
        &python(),
        &[
            "-c",
            "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
        ],
    );
    assert_eq!(
        (r.len(), out.signal),
        (1, Some(libc::SIGTERM)),
        "{r:?} {}",
        out.stderr
    );
    // A shell sets the default action of the signals it was started with (SIGTERM among
    // them) before it kills itself: the finaliser stands for the default all the same.
    for (name, sig) in [("SEGV", libc::SIGSEGV), ("TERM", libc::SIGTERM)] {
        let (r, out) = testkit_run(&dir, "", "sh", &["-c", &format!("kill -{name} $$")]);
        assert_eq!(
            (r.len(), out.signal),
            (1, Some(sig)),
            "{r:?} {}",
            out.stderr
        );
    }
}

/// A program asking for a fatal signal's disposition at start sees the default action
/// (not the finaliser the host put in its place), and one that sets the default and
/// reads it back sees the default again.
#[test]
fn the_finaliser_reads_as_the_default_action() {
    let dir = scratch("fini-default");
    let code = "import ctypes, signal\n\
                print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n\
                signal.signal(signal.SIGTERM, signal.SIG_DFL)\n\
                print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n\
                libc = ctypes.CDLL(None)\n\
                old = (ctypes.c_char * 256)()\n\
                libc.sigaction(signal.SIGTERM, None, old)\n\
                print(int.from_bytes(bytes(old[:8]), 'little'))";
    for all_maps in [false, true] {
        let mut qargs = vec!["-p", "testkit"];
        if all_maps {
            qargs.push("--all-maps");
        }
        let out = under_qbdi(&dir, &qargs, &python(), &["-c", code], None);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(
            out.text(),
            "True\nTrue\n0\n",
            "all_maps={all_maps}: {}",
            out.stderr
        );
    }
}

#[test]
fn follow_exec_instruments_executed_programs() {
    let dir = scratch("follow");
    let report = dir.join("tk.txt");
    let spec = format!("testkit:out={}", report.display());
    let script = "/bin/true; /bin/true; echo done";
    let out = under_qbdi(&dir, &["-p", &spec], "sh", &["-c", script], None);
    assert_eq!(out.text(), "done\n");
    assert_eq!(
        testkit_reports(&report).len(),
        1,
        "without --follow-exec only sh"
    );
    std::fs::remove_file(&report).unwrap();
    let out = under_qbdi(
        &dir,
        &["--follow-exec", "-p", &spec],
        "sh",
        &["-c", script],
        None,
    );
    assert_eq!(out.text(), "done\n");
    let lines = testkit_reports(&report);
    assert_eq!(lines.len(), 3, "sh and both /bin/true: {lines:?}");
    let mut pids: Vec<u64> = lines.iter().map(|l| report_field(l, "pid")).collect();
    pids.dedup();
    assert_eq!(pids.len(), 3, "{lines:?}");
    // bash passes its own copy of the environment, which has the host's variables:
    // without --follow-exec, what it executes runs natively all the same (before, `exec`
    // ran /bin/true instrumented, its report over bash's).
    for (follow, reports) in [(false, 1), (true, 3)] {
        let _ = std::fs::remove_file(&report);
        let mut qargs = vec!["-p", spec.as_str()];
        if follow {
            qargs.insert(0, "--follow-exec");
        }
        let script = "/bin/true; echo done; exec /bin/true";
        let out = under_qbdi(&dir, &qargs, "bash", &["-c", script], None);
        assert_eq!(out.text(), "done\n");
        let lines = testkit_reports(&report);
        assert_eq!(
            lines.len(),
            reports,
            "bash, follow-exec {follow}: {lines:?}"
        );
    }
    // `exec` keeps the pid: the executed program's default output files get the next
    // image number instead of taking the names of the first program's, which are kept.
    let files = scratch("follow-names");
    let out = under_qbdi(
        &files,
        &["--follow-exec", "-p", "edges"],
        "bash",
        &["-c", "exec /bin/true"],
        None,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut names: Vec<String> = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("edges."))
        .collect();
    names.sort();
    let pid = names
        .first()
        .and_then(|n| n.strip_prefix("edges.")?.strip_suffix(".1.log"))
        .unwrap_or_else(|| panic!("{names:?}: {}", out.stderr))
        .to_owned();
    assert_eq!(
        names,
        [format!("edges.{pid}.1.log"), format!("edges.{pid}.log")],
        "{}",
        out.stderr
    );
    let hits = |name: &str| {
        let map = std::fs::read(files.join(name)).unwrap();
        map.iter().filter(|&&b| b != 0).count()
    };
    // bash's map, then /bin/true's (much less code).
    assert!(
        hits(&names[1]) > 4 * hits(&names[0]),
        "{} {}",
        hits(&names[1]),
        hits(&names[0])
    );
}

#[test]
fn exec_transfer_callbacks_added_at_init_see_libc_calls() {
    let dir = scratch("transfers");
    let (r, out) = testkit_run(&dir, ",transfers", "ls", &["/"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(r.len(), 1);
    assert!(report_field(&r[0], "transfers") > 10, "{r:?}");
}

#[test]
fn a_program_of_no_plugin_is_unaffected_by_ranges_options() {
    let dir = scratch("ranges");
    // All executable maps: libc too (only qbdi's and the plugins' own code left out).
    assert_same(&dir, &["--all-maps"], "sha256sum", &["/etc/hostname"], None);
    let d = listing_dir(&dir);
    assert_same(
        &dir,
        &["--module", "libc.so.6"],
        "ls",
        &["-la", d.to_str().unwrap()],
        None,
    );
    assert_same(&dir, &["--exclude", "libc.so.6"], "true", &[], None);
}

#[test]
fn fini_runs_before_the_programs_atexit_handlers() {
    // GNU ls closes stdout and stderr in an atexit handler: a plugin's fini must run first
    // to be able to print, whether main returns or the program calls exit().
    let dir = scratch("atexit");
    let out = under_qbdi(&dir, &["-p", "testkit:stderr"], "ls", &["/"], None);
    assert_eq!(out.code, Some(0));
    assert!(out.stderr.contains("testkit pid="), "{:?}", out.stderr);
    let out = under_qbdi(
        &dir,
        &["-p", "testkit:stderr"],
        "ls",
        &["/no/such/dir"],
        None,
    );
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("testkit pid="), "{:?}", out.stderr);
}

/// `--follow-exec` follows every way libc runs a program: `execl`, `execlp`, `execle`,
/// `execv`, `system`, `popen`, `posix_spawn`, `posix_spawnp` (the spawner starts itself
/// again, which prints what it was started by). Each process is instrumented (one testkit
/// report each: with `system` and `popen`, the shell's too); without the option only the
/// first is. The output is native's.
#[test]
fn follow_exec_follows_every_exec_form() {
    let dir = scratch("follow_forms");
    let spawner = env!("QBDI_TEST_SPAWNER");
    let report = dir.join("tk.txt");
    let spec = format!("testkit:out={}", report.display());
    for (form, processes) in [
        ("execl", 2),
        ("execlp", 2),
        ("execle", 2),
        ("execv", 2),
        ("system", 3),
        ("popen", 3),
        ("posix_spawn", 2),
        ("posix_spawnp", 2),
    ] {
        let out = assert_same(
            &dir,
            &["--follow-exec", "-p", &spec],
            spawner,
            &[form],
            None,
        );
        assert!(
            out.text().contains(&format!("child {form}")),
            "{form}: {}",
            out.text()
        );
        let reports = testkit_reports(&report);
        assert_eq!(reports.len(), processes, "{form}: {reports:?}");
        for r in &reports {
            assert!(report_field(r, "blocks") > 0, "{form}: {r}");
        }
        std::fs::remove_file(&report).unwrap();
        assert_same(&dir, &["-p", &spec], spawner, &[form], None);
        assert_eq!(
            testkit_reports(&report).len(),
            1,
            "{form} without --follow-exec"
        );
        std::fs::remove_file(&report).unwrap();
    }
}

/// A shell sets `_` to the path of the program it starts; under `qbdi run` the program
/// sees its own path there, as natively, not qbdi's (`make -p` prints it, for one). A `_`
/// that names something else (inherited, not set for qbdi) is left alone.
#[test]
fn the_underscore_variable_names_the_program_not_qbdi() {
    let dir = scratch("underscore");
    let qbdi = qbdi_tests::cli::qbdi();
    let printenv = std::process::Command::new("sh")
        .args(["-c", "command -v printenv"])
        .output()
        .unwrap();
    let printenv = String::from_utf8_lossy(&printenv.stdout).into_owned();
    for (underscore, expected) in [
        (qbdi.to_str().unwrap(), printenv.as_str()),
        ("/some/other/program", "/some/other/program\n"),
    ] {
        let out = qbdi_tests::cli::under_qbdi_env(
            &dir,
            &[("_", underscore)],
            &[],
            "printenv",
            &["_"],
            None,
        );
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(out.text(), expected, "with _={underscore}");
    }
}

/// `QBDI_PERF_MAP=1`: every translated block goes to perf's JIT map of the process
/// (`/tmp/perf-<pid>.map`, `host size qbdi:guest` in hex), so the blocks bbcount saw in the
/// same run all have a line, with host ranges that do not overlap.
#[test]
fn perf_map_names_every_block_with_its_guest_address() {
    let dir = scratch("perf-map");
    let report = dir.join("bb.txt");
    let spec = format!("bbcount:out={}", report.display());
    let mut cmd = std::process::Command::new(qbdi_tests::cli::qbdi());
    cmd.args(["run", "-p", &spec, "--", "ls", "-la", "/"])
        .current_dir(&dir)
        .env_remove("QBDI_PLUGIN_PATH")
        .env("XDG_DATA_HOME", qbdi_tests::cli::no_user_plugins())
        .env("QBDI_PERF_MAP", "1")
        .stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("qbdi starts");
    let map = format!("/tmp/perf-{}.map", child.id());
    assert!(child.wait().expect("qbdi ends").success());
    let text = std::fs::read_to_string(&map).expect("the perf map");
    let _ = std::fs::remove_file(&map);
    let hex = |s: &str| u64::from_str_radix(s, 16).unwrap_or_else(|e| panic!("{s:?}: {e}"));
    let mut hosts: Vec<(u64, u64)> = Vec::new();
    let mut guests = std::collections::HashSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "{line:?}");
        let guest = f[2].strip_prefix("qbdi:").expect("named qbdi:<guest>");
        hosts.push((hex(f[0]), hex(f[1])));
        guests.insert(hex(guest));
    }
    hosts.sort_unstable();
    for w in hosts.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlapping blocks {w:x?}");
    }
    let report = std::fs::read_to_string(&report).expect("bbcount's report");
    let starts: Vec<u64> = report
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1)?.split_once('-'))
        .map(|(s, _)| hex(s.trim_start_matches("0x")))
        .collect();
    assert!(starts.len() > 100, "{} blocks", starts.len());
    for s in &starts {
        assert!(
            guests.contains(s),
            "block {s:#x} has no line in the perf map"
        );
    }
}
