//! Code mapped after the run started: libraries loaded with `dlopen` are instrumented when
//! the range options name them (`--module NAME`, `--all-maps`), on every thread, including
//! after `dlclose` and a second `dlopen`; Python's extension modules under `--all-maps`.
//! Outputs are compared with native runs, coverage with what the programs do.

use std::path::Path;

use qbdi_tests::cli::{assert_same, bbcount_entries, python, scratch};

const MAIN: &str = env!("QBDI_TEST_LATE_MAIN");
const LIB: &str = env!("QBDI_TEST_LATE_LIB");

/// The modules (paths) of a drcov log that have at least one block in its BB table.
fn drcov_modules_with_blocks(path: &Path) -> Vec<String> {
    let data = std::fs::read(path).expect("drcov log");
    let at = data
        .windows(9)
        .position(|w| w == b"BB Table:")
        .expect("a BB table");
    let header = String::from_utf8_lossy(&data[..at]).into_owned();
    let modules: Vec<(u16, String)> = header
        .lines()
        .filter_map(|l| {
            let (id, rest) = l.trim().split_once(',')?;
            let id = id.trim().parse::<u16>().ok()?;
            Some((id, rest.rsplit(',').next()?.trim().to_owned()))
        })
        .collect();
    let body_start = at + data[at..].iter().position(|&b| b == b'\n').expect("line") + 1;
    let mut used: Vec<u16> = data[body_start..]
        .chunks_exact(8)
        .map(|e| u16::from_le_bytes([e[6], e[7]]))
        .collect();
    used.sort_unstable();
    used.dedup();
    modules
        .into_iter()
        .filter(|(id, _)| used.contains(id))
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn a_dlopened_library_is_instrumented_when_the_options_name_it() {
    let dir = scratch("late-dlopen");
    let lib_name = Path::new(LIB).file_name().unwrap().to_str().unwrap();
    // Default ranges: the library runs natively; the program's own callback, called from
    // it, runs under the engine (re-entry from native code).
    let out = dir.join("default.txt");
    let spec = format!("bbcount:out={}", out.display());
    let q = assert_same(&dir, &["-p", &spec], MAIN, &[LIB], None);
    assert_eq!(q.code, Some(0), "{}", q.stderr);
    let report = std::fs::read_to_string(&out).unwrap();
    assert_eq!(bbcount_entries(&report, "lib_step"), 0, "{report}");
    assert_eq!(bbcount_entries(&report, "main_cb"), 2000, "{report}");
    for options in [&["--module", lib_name][..], &["--all-maps"][..]] {
        let out = dir.join("bb.txt");
        let spec = format!("bbcount:out={}", out.display());
        let mut args = options.to_vec();
        args.extend(["-p", &spec]);
        assert_same(&dir, &args, MAIN, &[LIB], None);
        let report = std::fs::read_to_string(&out).unwrap();
        // Two rounds of dlopen, 1000 calls, dlclose: the second load is instrumented too.
        assert_eq!(
            bbcount_entries(&report, "lib_step"),
            2000,
            "{options:?}:\n{report}"
        );
        // The program's callback, called by the library, runs under the Vm.
        assert_eq!(
            bbcount_entries(&report, "main_cb"),
            2000,
            "{options:?}:\n{report}"
        );
    }
}

#[test]
fn python_extension_modules_are_instrumented_under_all_maps() {
    let dir = scratch("late-python");
    let py = python();
    let script = "import json, decimal; print(json.dumps({'a': [1, 2]}), decimal.Decimal(1) / 7)";
    let log = dir.join("py.drcov");
    let spec = format!("drcov:out={}", log.display());
    let q = assert_same(
        &dir,
        &["--all-maps", "-p", &spec],
        &py,
        &["-c", script],
        None,
    );
    assert_eq!(q.code, Some(0), "{}", q.stderr);
    let modules = drcov_modules_with_blocks(&log);
    for m in ["_json", "_decimal"] {
        assert!(
            modules
                .iter()
                .any(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with(m))),
            "no block of the extension module {m} (loaded with dlopen) in {modules:?}"
        );
    }
}
