//! Re-entry from native code: instrumented code that native code calls runs under the
//! engine. The reentry program's comparators are called by libc's `qsort` and `bsearch`
//! (nested, on four threads, one leaving with `longjmp`, one setting errno, one on a page
//! the program `mprotect`s), its atexit handler and destructor by libc's `exit`, and its
//! callback (a double in, a double out) by a dlopen'ed library. Output as native, and every
//! one of those functions entered exactly as many times as the program counted.

use std::path::Path;

use qbdi_tests::cli::{
    assert_same, assert_same_bbcount, bbcount_entries, drcov_blocks_by_module, scratch,
};

const REENTRY: &str = env!("QBDI_TEST_REENTRY");
/// The same program built as a non-PIE executable: the addresses of the functions it
/// imports are its PLT stubs, which native code then calls.
const REENTRY_NOPIE: &str = env!("QBDI_TEST_REENTRY_NOPIE");
const LIB: &str = env!("QBDI_TEST_LATE_LIB");

/// The counts the program prints from its atexit handler: (value, row) comparisons.
fn counted(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("atexit: "))
        .unwrap_or_else(|| panic!("no atexit line in:\n{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[1].parse().unwrap(), words[4].parse().unwrap())
}

fn check_coverage(report: &str, stdout: &str, what: &str) {
    let (values, rows) = counted(stdout);
    assert!(values > 20_000, "{stdout}");
    for (function, entries) in [
        ("by_value", values),
        ("by_median", rows),
        ("escaping", 50),
        ("setting_errno", 545),
        ("worker", 4),
        ("twice_plus", 2),
        ("at_exit_handler", 1),
        ("destructor", 1),
    ] {
        assert_eq!(
            bbcount_entries(report, function),
            entries,
            "entries of {function} ({what}):\n{report}"
        );
    }
}

#[test]
fn code_called_from_native_code_runs_under_the_engine() {
    let dir = scratch("reentry");
    let lib_name = Path::new(LIB).file_name().unwrap().to_str().unwrap();
    for (program, options) in [
        (REENTRY, &[][..]),
        (REENTRY_NOPIE, &[][..]),
        (REENTRY, &["--module", lib_name][..]),
        (REENTRY, &["--all-maps"][..]),
    ] {
        let (q, report) = assert_same_bbcount(&dir, options, program, &[LIB]);
        assert_eq!(q.code, Some(0), "{}", q.stderr);
        check_coverage(&report, &q.text(), &format!("{program} {options:?}"));
        // The library itself: covered when the options name it.
        let lib_entries = bbcount_entries(&report, "lib_apply");
        assert_eq!(
            lib_entries,
            if options.is_empty() { 0 } else { 1 },
            "{options:?}:\n{report}"
        );
    }
}

#[test]
fn coverage_tools_see_the_main_executable_as_code() {
    // The guarded pages lose their execute permission; drcov's module table (read from
    // /proc/self/maps) still lists the executable, and its blocks are in the BB table.
    let dir = scratch("reentry-drcov");
    let log = dir.join("cov.drcov");
    let spec = format!("drcov:out={}", log.display());
    assert_same(&dir, &["-p", &spec], REENTRY, &[], None);
    let blocks = drcov_blocks_by_module(&log)
        .into_iter()
        .find(|(m, _)| m == REENTRY)
        .map_or(0, |(_, n)| n);
    assert!(blocks > 50, "{blocks} blocks of the executable");
}

#[test]
fn native_callbacks_run_natively_when_asked() {
    // `--native-callbacks`: what native code calls runs natively (QBDI's way), unseen.
    let dir = scratch("reentry-native");
    let (q, report) = assert_same_bbcount(&dir, &["--native-callbacks"], REENTRY, &[LIB]);
    assert_eq!(q.code, Some(0), "{}", q.stderr);
    // (by_value is also called by an inline bsearch in main.)
    for function in [
        "setting_errno",
        "escaping",
        "twice_plus",
        "at_exit_handler",
        "destructor",
    ] {
        assert_eq!(
            bbcount_entries(&report, function),
            0,
            "{function}:\n{report}"
        );
    }
    // main's own direct calls are still seen.
    assert_eq!(bbcount_entries(&report, "by_median"), 39, "{report}");
}

/// The FP/vector state crosses every re-entry (a double in, a double out of the library's
/// callback): also with glibc's AVX-512 routines off, whatever this CPU picks by default.
#[test]
fn reentry_keeps_the_vector_state_with_either_glibc_routine_set() {
    let dir = scratch("reentry-tunables");
    let out = dir.join("bb.txt");
    let spec = format!("bbcount:out={}", out.display());
    let tunables = [(
        "GLIBC_TUNABLES",
        "glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ",
    )];
    let q =
        qbdi_tests::cli::assert_same_env(&dir, &tunables, &["-p", &spec], REENTRY, &[LIB], None);
    assert_eq!(q.code, Some(0), "{}", q.stderr);
    let report = std::fs::read_to_string(&out).unwrap();
    check_coverage(&report, &q.text(), "AVX-512 routines off");
}

/// A program that defines `getenv` itself (bash does): the host's own reads of the
/// environment must not call it. Without `--all-maps` the program's code is guarded, and
/// such a call from the host re-entered the program, whose new Vm read the environment
/// again, until the nesting limit (`qbdi run -- bash -c ...` died with SIGSEGV).
#[test]
fn a_program_defining_getenv_runs_without_all_maps() {
    let dir = scratch("reentry-getenv");
    let script = "for i in 3 1 2; do echo \"$i $HOME\"; done | sort -r; echo ${#PATH}";
    for options in [&[][..], &["--all-maps"][..]] {
        let q = assert_same(&dir, options, "bash", &["-c", script], None);
        assert_eq!(q.code, Some(0), "{options:?}: {}", q.stderr);
        let stdout = String::from_utf8_lossy(&q.stdout);
        assert_eq!(stdout.lines().count(), 4, "{options:?}: {stdout}");
    }
}

/// A program that blocks every signal, on its main thread and on another, then has `qsort`
/// call its comparator: re-entry's `SIGSEGV` stays unblocked in the kernel's mask (blocked,
/// the kernel killed the process at the first call back), and the masks the program reads
/// back are the ones it set. Under bbcount, the comparator's blocks are counted.
#[test]
fn a_program_that_blocks_every_signal_is_reentered() {
    let dir = scratch("blocked-signals");
    let program = env!("QBDI_TEST_BLOCKED_SIGNALS");
    let (q, report) = assert_same_bbcount(&dir, &[], program, &[]);
    assert_eq!(q.code, Some(0), "{}", q.stderr);
    for line in [
        "thread, all blocked: 12345, SIGSEGV blocked 1",
        "thread, mask inherited: 12345, SIGSEGV blocked 1",
    ] {
        assert!(q.text().contains(line), "{}", q.text());
    }
    assert!(
        bbcount_entries(&report, "cmp") > 0,
        "the comparator ran under the engine:\n{report}"
    );
}
