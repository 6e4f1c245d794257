//! Code mapped after the run started: libraries loaded with `dlopen` are instrumented when
//! the range options name them (`--module NAME`, `--all-maps`), on every thread, including
//! after `dlclose` and a second `dlopen`; Python's extension modules under `--all-maps`.
//! Outputs are compared with native runs, coverage with what the programs do.

use std::path::Path;

use qbdi_tests::cli::{
    assert_same, assert_same_bbcount, bbcount_entries, drcov_blocks_by_module, python, scratch,
};

const MAIN: &str = env!("QBDI_TEST_LATE_MAIN");
const LIB: &str = env!("QBDI_TEST_LATE_LIB");

#[test]
fn a_dlopened_library_is_instrumented_when_the_options_name_it() {
    let dir = scratch("late-dlopen");
    let lib_name = Path::new(LIB).file_name().unwrap().to_str().unwrap();
    // Default ranges: the library runs natively; the program's own callback, called from
    // it, runs under the engine (re-entry from native code).
    let (q, report) = assert_same_bbcount(&dir, &[], MAIN, &[LIB]);
    assert_eq!(q.code, Some(0), "{}", q.stderr);
    assert_eq!(bbcount_entries(&report, "lib_step"), 0, "{report}");
    assert_eq!(bbcount_entries(&report, "main_cb"), 2000, "{report}");
    for options in [&["--module", lib_name][..], &["--all-maps"][..]] {
        let (_, report) = assert_same_bbcount(&dir, options, MAIN, &[LIB]);
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
    let modules: Vec<String> = drcov_blocks_by_module(&log)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    for m in ["_json", "_decimal"] {
        assert!(
            modules
                .iter()
                .any(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with(m))),
            "no block of the extension module {m} (loaded with dlopen) in {modules:?}"
        );
    }
}
