//! Signal handlers run under the engine (libc not instrumented): SIGUSR1 by `raise` and by
//! `kill` from another thread, SIGALRM from `setitimer`, SIGCHLD (`SA_SIGINFO`), a SIGSEGV
//! probe on a `sigaltstack` leaving by `siglongjmp` twenty times, a blocked then unblocked
//! signal. Output and status as native; every handler's blocks counted exactly. A program
//! that dies of SIGSEGV: same status, complete coverage, a message naming the guest code.

use qbdi_tests::cli::{assert_same, bbcount_entries, native, scratch, under_qbdi};

const SIGNALS: &str = env!("QBDI_TEST_SIGNALS");

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
                bbcount_entries(&report, handler),
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

#[test]
fn a_fatal_fault_is_native_and_named_in_guest_terms() {
    let dir = scratch("signals-crash");
    let program = env!("QBDI_TEST_CRASH");
    let n = native(&dir, program, &[], None);
    assert_eq!(n.signal, Some(libc::SIGSEGV), "native: {n:?}");
    for ranges in [&[][..], &["--all-maps"][..]] {
        let log = dir.join("crash.drcov");
        let _ = std::fs::remove_file(&log);
        let spec = format!("drcov:out={}", log.display());
        let mut args = ranges.to_vec();
        args.extend(["-p", &spec]);
        let q = under_qbdi(&dir, &args, program, &[], None);
        assert_eq!(
            (q.code, q.signal),
            (n.code, n.signal),
            "{args:?}: {}",
            q.stderr
        );
        assert_eq!(q.stdout, n.stdout, "{args:?}");
        assert!(
            q.stderr.contains("in the guest's basic block at")
                && q.stderr.contains("crash_here+0x0 in crash"),
            "{args:?}: the message names the guest function: {}",
            q.stderr
        );
        let cov = std::fs::read(&log).expect("drcov written before the process died");
        assert!(
            cov.windows(9).any(|w| w == b"BB Table:"),
            "{args:?}: a complete drcov file"
        );
    }
}
