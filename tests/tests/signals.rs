//! Signal handlers run under the engine (libc not instrumented): SIGUSR1 by `raise` and by
//! `kill` from another thread, SIGALRM from `setitimer`, SIGCHLD (`SA_SIGINFO`), a SIGSEGV
//! probe on a `sigaltstack` leaving by `siglongjmp` twenty times, a blocked then unblocked
//! signal. Output and status as native; every handler's blocks counted exactly.

use qbdi_tests::cli::{assert_same, scratch};

const SIGNALS: &str = env!("QBDI_TEST_SIGNALS");

/// The count bbcount's report gives the block that starts at `symbol`, or 0.
fn bbcount_of(report: &str, symbol: &str) -> u64 {
    report
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[2] == symbol).then(|| f[0].parse::<u64>().unwrap_or(0))
        })
        .sum()
}

#[test]
fn handlers_run_under_the_vm() {
    let dir = scratch("signals");
    for round in 0..3 {
        let out = dir.join(format!("bb{round}.txt"));
        let spec = format!("bbcount:out={}", out.display());
        let q = assert_same(&dir, &["-p", &spec], SIGNALS, &[], None);
        assert_eq!(q.code, Some(0), "{}", q.stderr);
        let report = std::fs::read_to_string(&out).unwrap();
        for (handler, count) in [
            ("on_usr1", 2),
            ("on_alrm", 1),
            ("on_chld", 1),
            ("on_segv", 20),
            ("on_usr2", 1),
        ] {
            assert_eq!(
                bbcount_of(&report, handler),
                count,
                "entries of {handler} (run {round}):\n{report}"
            );
        }
    }
}

#[test]
fn handlers_run_as_natively_with_libc_instrumented() {
    let dir = scratch("signals-all-maps");
    let log = dir.join("cov.drcov");
    let spec = format!("drcov:out={}", log.display());
    let q = assert_same(&dir, &["--all-maps", "-p", &spec], SIGNALS, &[], None);
    assert_eq!(q.code, Some(0), "{}", q.stderr);
}
