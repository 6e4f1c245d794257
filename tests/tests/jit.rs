//! Code written at run time under `--all-maps`: the jit program's functions (rewritten in
//! place, W^X, read from a file by the kernel) and PCRE2's JIT under `grep -P` run
//! instrumented, with the output of a native run; every rewrite is seen (each version's
//! blocks run under the engine, as many times as the program calls them). The program's
//! patches of its own text are seen under the default ranges too.

use qbdi_tests::cli::{assert_same_bbcount, bbcount_entries, scratch};

const JIT: &str = env!("QBDI_TEST_JIT");

/// bbcount's report as (count, start, end, module) lines.
fn blocks(report: &str) -> Vec<(u64, u64, u64, String)> {
    report
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (s, e) = f.get(1)?.split_once('-')?;
            let hex = |x: &str| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok();
            Some((f[0].parse().ok()?, hex(s)?, hex(e)?, f.get(3)?.to_string()))
        })
        .collect()
}

fn entries_at(report: &str, start: u64) -> u64 {
    blocks(report)
        .iter()
        .filter(|b| b.1 == start)
        .map(|b| b.0)
        .sum()
}

#[test]
fn jit_code_runs_instrumented_and_rewrites_are_seen() {
    let dir = scratch("jit");
    let code_file = dir.join("code.bin");
    let code_file = code_file.to_str().unwrap();
    // Default ranges: the JIT's code is not the program's file: it runs natively. The
    // program's own function that it patches runs instrumented, each version.
    let (q, report) = assert_same_bbcount(&dir, &[], JIT, &[code_file]);
    assert_eq!(q.code, Some(0), "{}", q.stderr);
    assert_eq!(bbcount_entries(&report, "patched"), 4, "{report}");
    assert_eq!(entries_at(&report, 0x1000_0000), 0, "{report}");
    let (q, report) = assert_same_bbcount(&dir, &["--all-maps"], JIT, &[code_file]);
    assert_eq!(q.code, Some(0), "{}", q.stderr);
    // 0x10000000: five versions of `add` called twice each, then `mul` once.
    assert_eq!(entries_at(&report, 0x1000_0000), 11, "{report}");
    // 0x10000040: the loop, twice (10 then 20 iterations: 9 + 19 back edges to 0x47).
    assert_eq!(entries_at(&report, 0x1000_0040), 2, "{report}");
    assert_eq!(entries_at(&report, 0x1000_0047), 28, "{report}");
    // 0x10001000: three W^X versions, then two read(2) from the file.
    assert_eq!(entries_at(&report, 0x1000_1000), 5, "{report}");
    assert_eq!(bbcount_entries(&report, "patched"), 4, "{report}");
}

#[test]
fn pcre2_jit_code_runs_instrumented_under_all_maps() {
    let dir = scratch("jit-grep");
    let input = dir.join("in.txt");
    let text: String = (0..2000)
        .map(|i| format!("line{i} {}\n", if i % 7 == 0 { "abc123" } else { "xyz" }))
        .collect();
    std::fs::write(&input, text).unwrap();
    let (q, report) = assert_same_bbcount(
        &dir,
        &["--all-maps"],
        "grep",
        &["-P", "[a-c]+\\d{2,}", input.to_str().unwrap()],
    );
    assert_eq!(q.code, Some(0), "{}", q.stderr);
    assert_eq!(q.text().lines().count(), 286);
    // PCRE2's compiled pattern: blocks in anonymous memory (no module), run per line.
    let jit: Vec<_> = blocks(&report).into_iter().filter(|b| b.3 == "?").collect();
    assert!(jit.len() >= 5, "{report}");
    assert!(jit.iter().map(|b| b.0).sum::<u64>() >= 2000, "{report}");
}
