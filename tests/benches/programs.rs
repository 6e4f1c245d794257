//! `qbdi run` on real programs against the same programs run natively, in the same run:
//! gzip -9 of 3 MB with no plugin and with drcov (issue 4's targets: <= 3x and <= 3.5x),
//! and a few more programs; and with `--all-maps` (libc, the loader and every library
//! instrumented too, no plugin). `pigz -p 2` on 10 copies of the corpus (two compressing
//! threads, each under a Vm of its own) when pigz is installed. Each time is the minimum of several runs; the
//! `--all-maps` column gives the median too (its runs translate far more code, and vary
//! more). A run that fails leaves its `--all-maps` cells empty (NaN). With
//! `GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ` every column,
//! native included, runs the avx2 routines.
//!
//! Under `--all-maps`, the `count` column runs the count test plugin (one BASIC_BLOCK_ENTRY
//! callback doing a `fetch_add`, on the direct path): its time, the blocks the program
//! executed, and the plugin's cost per executed block over the plain `--all-maps` run
//! (`ns/block`). `edges` runs the edges plugin (an inline AFL edge map), `edges_x` is its
//! time over the plain `--all-maps` run; `opstats_x` is opstats (inline block counters)
//! under `--all-maps` over native. sqlite3 runs a SQL script of about 0.3 s, perl a loop,
//! `py import` a python3 one-liner importing json, re, email.parser, decimal, argparse, csv
//! and sqlite3 (mostly translation and start-up). bzip2 and xz compress the corpus.
//! `py shared` runs the python3 loop with the PATH's python3 when that one links libpython
//! (pyenv's) and is not the `python3` row's.
//!
//! Last come `allmaps_geomean=` and `allmaps_max=`: the geometric mean and the largest of
//! the `--all-maps` median ratios (issue 15's targets: at most 1.15 and 1.5).
//!
//! Build the release artifacts first: `cargo build --release --workspace`, then
//! `cargo bench --bench programs`. `QBDI_BENCH_QUICK=1` runs each case once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qbdi_tests::cli::{artifacts, corpus, python, scratch};

fn time_once(dir: &Path, cmd: &[String], stdin: &Path) -> Duration {
    try_time_once(dir, cmd, stdin).unwrap_or_else(|e| panic!("{e}"))
}

fn try_time_once(dir: &Path, cmd: &[String], stdin: &Path) -> Result<Duration, String> {
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
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}"));
    }
    Ok(elapsed)
}

/// The times of `reps` runs, sorted.
fn times(dir: &Path, cmd: &[String], stdin: &Path, reps: usize) -> Vec<f64> {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| time_once(dir, cmd, stdin).as_secs_f64())
        .collect();
    t.sort_by(f64::total_cmp);
    t
}

fn best(dir: &Path, cmd: &[String], stdin: &Path, reps: usize) -> f64 {
    times(dir, cmd, stdin, reps)[0]
}

fn median(t: &[f64]) -> f64 {
    t[t.len() / 2]
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
    let mut cases: Vec<(&str, Vec<String>, &Path)> = vec![
        ("gzip -9", s(&["gzip", "-9", "-c"]), &input),
        ("bzip2 -9", s(&["bzip2", "-9", "-c"]), &input),
        ("xz -6", s(&["xz", "-6", "-T1", "-c"]), &input),
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
        (
            // Short and import-heavy: mostly translation and start-up.
            "py import",
            s(&[
                python.as_str(),
                "-c",
                "import json, re, email.parser, decimal, argparse, csv, sqlite3",
            ]),
            &empty,
        ),
        (
            "perl",
            s(&[
                "perl",
                "-e",
                "my $s = 0; for my $i (1..6000000) { $s += ($i * $i) % 7 } print \"$s\\n\"",
            ]),
            &empty,
        ),
    ];
    // An interpreter in a shared library (pyenv's python3 loads libpython3.x.so), when the
    // PATH's python3 is another one than the row above: its hot code is far from the
    // main executable, and its dispatch targets collide in the inline table.
    if let Some(shared) = shared_python().filter(|p| *p != python) {
        cases.push((
            "py shared",
            vec![
                shared,
                "-c".into(),
                "print(sum(i*i for i in range(2000000)))".into(),
            ],
            &empty,
        ));
    }
    let sql = dir.join("bench.sql");
    std::fs::write(&sql, SQL).unwrap();
    if Path::new("/usr/bin/sqlite3").exists() {
        cases.push(("sqlite3", s(&["sqlite3", ":memory:"]), &sql));
    } else {
        eprintln!("sqlite3 is not installed: no sqlite3 row");
    }
    // pigz compresses 10 copies of the corpus (about 0.6 s natively, as long as the gzip
    // row): on the corpus alone (70 ms) the row measures mostly translation, which each
    // thread does for itself (see docs/architecture.md, "Threads").
    let big_input = dir.join("corpus10.bin");
    std::fs::write(&big_input, corpus().repeat(10)).unwrap();
    if Path::new("/usr/bin/pigz").exists() {
        cases.push(("pigz -p 2", s(&["pigz", "-n", "-p", "2", "-c"]), &big_input));
    } else {
        eprintln!("pigz is not installed: no pigz row (apt-get install pigz)");
    }
    let count_out = dir.join("count.txt");
    let count_spec = format!("count:out={}", count_out.display());
    let edges_spec = format!("edges:out={}", dir.join("edges.map").display());
    let opstats_spec = format!("opstats:out={}", dir.join("opstats.log").display());
    println!(
        "{:<10} {:>10} {:>10} {:>8} {:>10} {:>8} {:>11} {:>8} {:>12} {:>9} {:>12} {:>9} {:>8} {:>8} {:>9}",
        "program",
        "native_s",
        "qbdi_s",
        "ratio",
        "drcov_s",
        "ratio",
        "allmaps_s",
        "ratio",
        "median ratio",
        "count_s",
        "blocks",
        "ns/block",
        "edges_s",
        "edges_x",
        "opstats_x"
    );
    // Median --all-maps ratio of each row that has one, for the summary lines.
    let mut all_maps_ratios: Vec<f64> = Vec::new();
    for (name, cmd, stdin) in cases {
        let native_times = times(&dir, &cmd, stdin, reps);
        let native = native_times[0];
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
        // Every row has an --all-maps column.
        let (all_maps, all_maps_median) = {
            let mut all = vec![qbdi.clone(), "run".into(), "--all-maps".into(), "--".into()];
            all.extend(cmd.iter().cloned());
            // A failing run (see tests/tests/all_maps.rs) leaves the column empty.
            let t: Result<Vec<f64>, String> = (0..reps)
                .map(|_| try_time_once(&dir, &all, stdin).map(|d| d.as_secs_f64()))
                .collect();
            match t {
                Ok(mut t) => {
                    t.sort_by(f64::total_cmp);
                    (t[0], median(&t))
                }
                Err(e) => {
                    eprintln!("--all-maps: {e}");
                    (f64::NAN, f64::NAN)
                }
            }
        };
        // The count, edges and opstats plugins under --all-maps.
        let under_plugin = |spec: &str| {
            let mut c = vec![
                qbdi.clone(),
                "run".into(),
                "--all-maps".into(),
                "-p".into(),
                spec.to_owned(),
                "--".into(),
            ];
            c.extend(cmd.iter().cloned());
            best(&dir, &c, stdin, reps.min(3))
        };
        let (count_time, blocks, edges, opstats) = if all_maps.is_nan() {
            (f64::NAN, 0, f64::NAN, f64::NAN)
        } else {
            let t = under_plugin(&count_spec);
            let blocks = std::fs::read_to_string(&count_out)
                .ok()
                .and_then(|l| l.trim().strip_prefix("blocks=")?.parse::<u64>().ok())
                .unwrap_or(0);
            (
                t,
                blocks,
                under_plugin(&edges_spec),
                under_plugin(&opstats_spec),
            )
        };
        let ns_per_block = (count_time - all_maps) * 1e9 / blocks.max(1) as f64;
        if all_maps_median.is_finite() {
            all_maps_ratios.push(all_maps_median / median(&native_times));
        }
        println!(
            "{name:<10} {native:>10.3} {under:>10.3} {:>8.2} {covered:>10.3} {:>8.2} {all_maps:>11.3} {:>8.2} {:>12.2} {count_time:>9.3} {blocks:>12} {ns_per_block:>9.1} {edges:>8.3} {:>8.2} {:>9.2}",
            under / native,
            covered / native,
            all_maps / native,
            all_maps_median / median(&native_times),
            edges / all_maps,
            opstats / native,
        );
        if name == "gzip -9" {
            println!("gzip_qbdi_ratio={:.2}", under / native);
            println!("gzip_drcov_ratio={:.2}", covered / native);
        }
    }
    // Issue 15's targets: geomean of the --all-maps median ratios at most 1.15, none above
    // 1.5.
    if !all_maps_ratios.is_empty() {
        let geomean = qbdi_tests::geomean(&all_maps_ratios);
        let max = all_maps_ratios.iter().copied().fold(f64::MIN, f64::max);
        println!("allmaps_geomean={geomean:.2}");
        println!("allmaps_max={max:.2}");
    }
}

/// The PATH's python3 (its real executable, not a shim), if it links libpython.
fn shared_python() -> Option<String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, sysconfig; print(sys.executable if sysconfig.get_config_var('Py_ENABLE_SHARED') else '')",
        ])
        .output()
        .ok()?;
    let exe = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!exe.is_empty()).then_some(exe)
}

/// The sqlite3 row's script: about 0.3 s natively.
const SQL: &str = "create table t (id integer primary key, name text, v real);\n\
    with recursive n(i) as (select 1 union all select i + 1 from n where i < 200000)\n\
    insert into t (name, v) select printf('name%06d', i), i * 1.5 from n;\n\
    create index t_v on t (v);\n\
    select count(*), sum(v), min(name), max(name) from t;\n\
    select count(*) from t where v between 1000 and 90000;\n\
    select substr(name, 5, 2) as d, count(*) from t group by d order by d limit 3;\n";
