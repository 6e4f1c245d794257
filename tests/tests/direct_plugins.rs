//! Plugin callbacks on the engine's direct path (called straight from translated code, see
//! `Vm::set_direct_entry`) behave as on the general path: the `direct` test plugin's counts,
//! its register change and its `SkipInst` are the same with and without `QBDI_NO_DIRECT=1`
//! (which keeps every plugin callback on the general path), and `qbdi plugin info` says
//! which path each callback takes.

use std::path::Path;
use std::process::Command;

use qbdi_tests::cli::{artifacts, qbdi, qbdi_cmd, scratch};

const PROGRAM: &str = env!("QBDI_TEST_DIRECT_PATHS");

fn plugin() -> String {
    artifacts()
        .join("libqbdi_plugin_direct.so")
        .to_string_lossy()
        .into_owned()
}

/// `setarch -R qbdi run <args> -p direct -- <program>` (with `tunables` as GLIBC_TUNABLES)
/// with `QBDI_NO_DIRECT` set to
/// `no_direct` (set either way: the guest's environment is the same size in both runs),
/// address randomisation off (glibc's string routines take other paths by alignment);
/// returns (stdout, the plugin's report, status).
fn run(
    dir: &Path,
    no_direct: bool,
    qbdi_args: &[&str],
    program: &str,
    args: &[&str],
    tunables: Option<&str>,
) -> (String, String, Option<i32>) {
    // Names of one length: the run's configuration (in the environment at exec) moves the
    // initial stack, and glibc's string routines take other paths by alignment.
    let report = dir.join(format!("report-{}", u8::from(no_direct)));
    let _ = std::fs::remove_file(&report);
    let option = format!("out={}", report.display());
    let out = Command::new("setarch")
        .arg("-R")
        .arg(qbdi())
        .arg("run")
        .args(qbdi_args)
        .args(["-p", &format!("{}:{option}", plugin()), "--", program])
        .args(args)
        .env("QBDI_NO_DIRECT", if no_direct { "1" } else { "0" })
        .envs(tunables.map(|t| ("GLIBC_TUNABLES", t)))
        .current_dir(dir)
        .output()
        .expect("setarch runs qbdi");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report from the plugin ({e}); stderr:\n{stderr}"));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        report.trim().to_owned(),
        out.status.code(),
    )
}

fn field(report: &str, key: &str) -> u64 {
    report
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {report}"))
}

#[test]
fn plugin_info_says_the_callbacks_are_called_directly() {
    let dir = scratch("direct-info");
    let info = qbdi_cmd(&dir, &["plugin", "info", &plugin()]);
    assert_eq!(info.code, Some(0), "{}", info.stderr);
    let text = info.text();
    // on_access reads its memory accesses, the one thing of its VmRef a direct site gives.
    for name in ["on_block", "on_call", "on_marker", "on_ud2", "on_access"] {
        let line = text
            .lines()
            .skip_while(|l| !l.contains(name))
            .nth(1)
            .unwrap_or_else(|| panic!("{name} not listed:\n{text}"));
        assert!(
            line.contains("directly from translated code"),
            "{name}: {line}\n{text}"
        );
    }
    // A callback that reads its VmRef (testkit's on_block asks the Vm for options).
    let testkit = artifacts().join("libqbdi_plugin_testkit.so");
    let info = qbdi_cmd(&dir, &["plugin", "info", testkit.to_str().unwrap()]);
    assert!(
        info.text().contains("through the general path: "),
        "{}",
        info.text()
    );
}

#[test]
fn direct_and_general_paths_give_the_same_results() {
    let dir = scratch("direct-paths");
    const N: u64 = 1000;
    let expected_sum: u64 = (0..N).map(|i| 3 * i + 1).sum();
    let direct = run(&dir, false, &[], PROGRAM, &["trap"], None);
    let general = run(&dir, true, &[], PROGRAM, &["trap"], None);
    assert_eq!(
        direct.0,
        format!("sum={expected_sum}\nsurvived=10\n"),
        "the marker's callback changed rax and every ud2 was skipped: {direct:?}"
    );
    assert_eq!(direct.2, Some(0), "{direct:?}");
    assert_eq!(direct, general, "direct path vs general path");
    let report = &direct.1;
    assert_eq!(field(report, "markers"), N, "{report}");
    assert_eq!(field(report, "skipped"), 10, "{report}");
    // main calls marker N times and trap 10 times, plus printf and fflush.
    assert!(field(report, "calls") >= N + 10, "{report}");
    assert!(field(report, "blocks") >= 2 * N, "{report}");
    assert!(field(report, "accesses") >= 2 * N, "{report}");
}

#[test]
fn real_programs_count_the_same_on_both_paths_under_all_maps() {
    let dir = scratch("direct-real");
    let input = dir.join("in.txt");
    let text: String = (0..3000)
        .map(|i| format!("line {} {}\n", (i * 7919) % 3001, i))
        .collect();
    std::fs::write(&input, text).unwrap();
    let input = input.to_str().unwrap();
    // Under each choice of libc's string routines glibc has here (GLIBC_TUNABLES).
    let settings = qbdi_tests::glibc::settings();
    let runs = settings.iter().flat_map(|&(_, tunables)| {
        [
            ("sort", vec!["-n", "-k2", input], tunables),
            ("gzip", vec!["-c", input], tunables),
            (
                "sed",
                vec!["-e", "s/line \\([0-9]*\\)/\\1 enil/", input],
                tunables,
            ),
        ]
    });
    for (program, args, tunables) in runs {
        let direct = run(&dir, false, &["--all-maps"], program, &args, tunables);
        let general = run(&dir, true, &["--all-maps"], program, &args, tunables);
        assert_eq!(direct.2, Some(0), "{program}: {direct:?}");
        assert!(
            field(&direct.1, "blocks") > 10_000,
            "{program}: {}",
            direct.1
        );
        assert!(
            direct.0 == general.0,
            "{program}: outputs differ between the paths"
        );
        // Every field but the values' hash: libc reads the environment, which differs.
        let without_values = |r: &str| {
            r.split_whitespace()
                .filter(|f| !f.starts_with("access_hash="))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            (without_values(&direct.1), direct.2),
            (without_values(&general.1), general.2),
            "{program}: direct path vs general path"
        );
    }
}

/// Two plugins with a BASIC_BLOCK_ENTRY callback each (direct's counter, edgecheck's edge
/// map): translated code calls both directly, one after the other; the results are those
/// of the general path.
#[test]
fn two_plugins_at_one_point_are_both_called_directly() {
    let dir = scratch("direct-two");
    let edgecheck = artifacts().join("libqbdi_plugin_edgecheck.so");
    let info = qbdi_cmd(&dir, &["plugin", "info", edgecheck.to_str().unwrap()]);
    assert!(
        info.text().contains("directly from translated code"),
        "{}",
        info.text()
    );
    let mut results = Vec::new();
    for no_direct in [false, true] {
        let map = dir.join(format!("map-{}", u8::from(no_direct)));
        let spec = format!("{}:out={}", edgecheck.display(), map.display());
        let (stdout, report, code) = run(&dir, no_direct, &["-p", &spec], PROGRAM, &["trap"], None);
        assert_eq!(code, Some(0), "{stdout}");
        let map = std::fs::read(&map).expect("edgecheck's map");
        assert!(map.iter().filter(|&&b| b != 0).count() > 5);
        results.push((stdout, report, map));
    }
    assert!(
        results[0] == results[1],
        "direct path vs general path:\n{:?}\n{:?}",
        (&results[0].0, &results[0].1),
        (&results[1].0, &results[1].1)
    );
}

/// The count test plugin's callback (a `fetch_add` on a static) is inlined: translated code
/// holds its code, with no call. Its block count under `--all-maps` (libc's blocks and its
/// string routines included) is the same inlined, called (`QBDI_NO_INLINE=1`) and on the
/// general path (`QBDI_NO_DIRECT=1`), under each of glibc's string-routine choices.
#[test]
fn the_count_plugin_is_inlined_and_counts_what_the_other_paths_count() {
    let dir = scratch("direct-count");
    let count = artifacts().join("libqbdi_plugin_count.so");
    let info = qbdi_cmd(&dir, &["plugin", "info", count.to_str().unwrap()]);
    assert!(info.text().contains("inlined"), "{}", info.text());
    // Under each of glibc's string-routine choices (libc's code runs under the Vm).
    for (name, tunables) in qbdi_tests::glibc::settings() {
        let mut counts = Vec::new();
        for (no_direct, no_inline) in [("0", "0"), ("0", "1"), ("1", "0")] {
            let out_file = dir.join(format!("count-{name}-{no_direct}{no_inline}"));
            let out = Command::new("setarch")
                .arg("-R")
                .arg(qbdi())
                .args(["run", "--all-maps", "-p"])
                .arg(format!("{}:out={}", count.display(), out_file.display()))
                .args(["--", PROGRAM])
                .env("QBDI_NO_DIRECT", no_direct)
                .env("QBDI_NO_INLINE", no_inline)
                .envs(tunables.map(|t| ("GLIBC_TUNABLES", t)))
                .current_dir(&dir)
                .output()
                .expect("setarch runs qbdi");
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), "sum=499500\n");
            let report = std::fs::read_to_string(&out_file).expect("the plugin's report");
            counts.push(field(&report, "blocks"));
        }
        assert!(
            counts[0] > 1_000,
            "{name}: libc's start-up and exit: {counts:?}"
        );
        assert_eq!(counts[0], counts[2], "{name}: inlined vs general path");
        assert_eq!(counts[1], counts[2], "{name}: called vs general path");
    }
}
