//! `qbdi run` on real programs against the same programs run natively, in the same run:
//! gzip -9 of 3 MB with no plugin and with drcov (issue 4's targets: <= 3x and <= 3.5x),
//! and a few more programs. Each time is the minimum of several runs.
//!
//! Build the release artifacts first: `cargo build --release --workspace`, then
//! `cargo bench --bench programs`. `QBDI_BENCH_QUICK=1` runs each case once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qbdi_tests::cli::{artifacts, corpus, python, scratch};

fn time_once(dir: &Path, cmd: &[String], stdin: &Path) -> Duration {
    let start = Instant::now();
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .current_dir(dir)
        .stdin(std::fs::File::open(stdin).expect("input"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("runs");
    let elapsed = start.elapsed();
    assert!(status.success(), "{cmd:?} failed: {status}");
    elapsed
}

fn best(dir: &Path, cmd: &[String], stdin: &Path, reps: usize) -> f64 {
    (0..reps)
        .map(|_| time_once(dir, cmd, stdin).as_secs_f64())
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let quick = std::env::var_os("QBDI_BENCH_QUICK").is_some();
    let reps = if quick { 1 } else { 5 };
    let qbdi = artifacts().join("qbdi").display().to_string();
    let dir = scratch("bench-programs");
    let input = dir.join("corpus.bin");
    std::fs::write(&input, corpus()).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let lines: String = (0..200_000u32)
        .map(|i| format!("{:08x} {}\n", i.wrapping_mul(2_654_435_761), i))
        .collect();
    let sort_input = dir.join("lines.txt");
    std::fs::write(&sort_input, lines).unwrap();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // The real interpreter, not a shell shim in front of it (pyenv's).
    let python = python();
    let cov = dir.join("cov.log").display().to_string();
    let drcov = format!("drcov:out={cov}");
    let cases: Vec<(&str, Vec<String>, &Path)> = vec![
        ("gzip -9", s(&["gzip", "-9", "-c"]), &input),
        (
            "sha256sum",
            s(&["sha256sum", input.to_str().unwrap()]),
            &empty,
        ),
        ("sort", s(&["sort", sort_input.to_str().unwrap()]), &empty),
        (
            "python3",
            s(&[
                python.as_str(),
                "-c",
                "print(sum(i*i for i in range(2000000)))",
            ]),
            &empty,
        ),
    ];
    println!(
        "{:<10} {:>10} {:>10} {:>8} {:>10} {:>8}",
        "program", "native_s", "qbdi_s", "ratio", "drcov_s", "ratio"
    );
    for (name, cmd, stdin) in cases {
        let native = best(&dir, &cmd, stdin, reps);
        let mut plain = vec![qbdi.clone(), "run".into(), "--".into()];
        plain.extend(cmd.iter().cloned());
        let under = best(&dir, &plain, stdin, reps);
        let mut with_drcov = vec![
            qbdi.clone(),
            "run".into(),
            "-p".into(),
            drcov.clone(),
            "--".into(),
        ];
        with_drcov.extend(cmd.iter().cloned());
        let covered = best(&dir, &with_drcov, stdin, reps);
        println!(
            "{name:<10} {native:>10.3} {under:>10.3} {:>8.2} {covered:>10.3} {:>8.2}",
            under / native,
            covered / native
        );
        if name == "gzip -9" {
            println!("gzip_qbdi_ratio={:.2}", under / native);
            println!("gzip_drcov_ratio={:.2}", covered / native);
        }
    }
}
