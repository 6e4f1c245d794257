//! The machine-readable outputs: `memtrace` and `tracer` with `format=jsonl` (one JSON
//! object per line), `bbcount` and `opstats` with `format=json` (one document).
//!
//! Each output is parsed with serde_json, as a user's script would: every documented field
//! is there with its JSON type, and nothing else. Each is then compared with the text form
//! of the same run configuration: the same records with the same values. The runs have
//! address randomisation off (`setarch -R`) and command lines of one length (the run's
//! configuration, in the environment at exec, moves the initial stack), so that both runs
//! see the same addresses; what still differs between two runs (the stack protector's
//! canary and the pointer guard, from the kernel's random bytes) is allowed as a
//! consistent renaming of a few values. A bad `format=` is refused, naming the value.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use qbdi_tests::cli::{listing_dir, qbdi, scratch, under_qbdi};
use serde_json::Value;

const THREADS8: &str = env!("QBDI_TEST_THREADS8");

/// What a run under `setarch -R qbdi run` did.
struct Run {
    stderr: String,
    code: Option<i32>,
}

/// `setarch -R qbdi run -p <spec> -- program args` in `dir`.
fn run(dir: &Path, spec: &str, program: &str, args: &[&str]) -> Run {
    let out = Command::new("setarch")
        .arg("-R")
        .arg(qbdi())
        .args(["run", "-p", spec, "--", program])
        .args(args)
        .current_dir(dir)
        .env_remove("QBDI_PLUGIN_PATH")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("setarch runs qbdi");
    Run {
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

/// Runs `plugin:out=FILE,format=<format><extra>` and returns its output. The output's
/// name is padded so that the option string has one length whatever the format.
fn output(
    dir: &Path,
    plugin: &str,
    format: &str,
    extra: &str,
    program: &str,
    args: &[&str],
) -> String {
    let file: PathBuf = dir.join(format!("o{}.log", "x".repeat(6 - format.len())));
    let _ = std::fs::remove_file(&file);
    let spec = format!("{plugin}:out={},format={format}{extra}", file.display());
    let r = run(dir, &spec, program, args);
    assert_eq!(r.code, Some(0), "{spec}: {}", r.stderr);
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{spec}: no output ({e}); stderr: {}", r.stderr));
    std::fs::remove_file(&file).unwrap();
    text
}

/// The JSON type a documented field has.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A string of hexadecimal, `"0x..."`.
    Hex,
    /// [`Kind::Hex`] or null.
    HexOrNull,
    Str,
    StrOrNull,
    /// A non-negative integer.
    Int,
    IntOrNull,
    Number,
    /// An array of strings.
    Strings,
    Array,
    ObjectOrNull,
}

fn hex(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.strip_prefix("0x")?, 16).ok()
}

/// Asserts that `v` is an object with exactly the fields `fields`, of their kinds.
fn check_fields(v: &Value, fields: &[(&str, Kind)], what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = fields.iter().map(|f| f.0).collect();
    keys.sort_unstable();
    want.sort_unstable();
    assert_eq!(keys, want, "{what}: fields of {v}");
    for &(key, kind) in fields {
        let f = &obj[key];
        let ok = match kind {
            Kind::Hex => hex(f).is_some(),
            Kind::HexOrNull => f.is_null() || hex(f).is_some(),
            Kind::Str => f.is_string(),
            Kind::StrOrNull => f.is_null() || f.is_string(),
            Kind::Int => f.is_u64(),
            Kind::IntOrNull => f.is_null() || f.is_u64(),
            Kind::Number => f.is_number(),
            Kind::Strings => f.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            Kind::Array => f.is_array(),
            Kind::ObjectOrNull => f.is_null() || f.is_object(),
        };
        assert!(ok, "{what}: {key} is not {kind:?} in {v}");
    }
}

/// Each line of `text` parsed as JSON (every line must be one object).
fn json_lines(text: &str, what: &str) -> Vec<Value> {
    assert!(text.ends_with('\n'), "{what}: the last line is complete");
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l:?}"))
        })
        .collect()
}

/// Values that differ between the text run and the JSON run: allowed when each text value
/// always becomes the same JSON value (a random canary or pointer guard, the same in every
/// copy) and when they are few.
#[derive(Default)]
struct Renames {
    map: HashMap<String, String>,
    differing: usize,
    compared: usize,
}

impl Renames {
    fn same(&mut self, text: &str, json: &str, what: &str) {
        self.compared += 1;
        if text == json {
            return;
        }
        self.differing += 1;
        let to = self.map.entry(text.to_owned()).or_insert(json.to_owned());
        assert_eq!(
            to, json,
            "{what}: text {text} is {json} in JSON here, {to} elsewhere"
        );
    }

    fn assert_few(&self, what: &str) {
        assert!(
            self.differing * 50 <= self.compared,
            "{what}: {} of {} values differ between the text and JSON runs",
            self.differing,
            self.compared
        );
    }
}

const ACCESS: [(&str, Kind); 8] = [
    ("event", Kind::Str),
    ("tid", Kind::IntOrNull),
    ("inst", Kind::Hex),
    ("type", Kind::Str),
    ("address", Kind::Hex),
    ("size", Kind::Int),
    ("value", Kind::HexOrNull),
    ("flags", Kind::Strings),
];

const STOPPED: [(&str, Kind); 2] = [("event", Kind::Str), ("max", Kind::Int)];

/// A memtrace text line as `(tid, inst, type, address, size, value, flags)`.
type TextAccess = (
    Option<u64>,
    String,
    String,
    String,
    u64,
    String,
    Vec<String>,
);

fn parse_memtrace_line(l: &str) -> TextAccess {
    let (tid, rest) = match l.strip_prefix("[tid ") {
        Some(r) => {
            let (t, rest) = r.split_once("] ").expect("[tid N] ");
            (Some(t.parse().unwrap()), rest)
        }
        None => (None, l),
    };
    let f: Vec<&str> = rest.split(' ').collect();
    assert!(f.len() == 7 || f.len() == 9, "{l:?}");
    assert_eq!((f[3], f[5]), ("size", "value"), "{l:?}");
    let flags = if f.len() == 9 {
        assert_eq!(f[7], "flags", "{l:?}");
        f[8].split(',').map(str::to_owned).collect()
    } else {
        Vec::new()
    };
    (
        tid,
        f[0].into(),
        f[1].into(),
        f[2].into(),
        f[4].parse().unwrap(),
        f[6].into(),
        flags,
    )
}

/// A memtrace JSON access in the text line's terms (`value ?` for null).
fn memtrace_json_access(v: &Value) -> TextAccess {
    check_fields(v, &ACCESS, "memtrace access");
    assert_eq!(v["event"], "access");
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    assert!(["R", "W", "RW"].contains(&&*s("type")), "{v}");
    (
        v["tid"].as_u64(),
        s("inst"),
        s("type"),
        s("address"),
        v["size"].as_u64().unwrap(),
        v["value"].as_str().unwrap_or("?").to_owned(),
        v["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect(),
    )
}

#[test]
fn memtrace_jsonl_has_the_text_records() {
    let dir = scratch("json-memtrace");
    let input = dir.join("in.txt");
    std::fs::write(&input, "pear\napple\nfig\nbanana\ncherry\n").unwrap();
    let args = [input.to_str().unwrap()];
    let text = output(&dir, "memtrace", "text", "", "sort", &args);
    let jsonl = output(&dir, "memtrace", "jsonl", "", "sort", &args);
    let text: Vec<TextAccess> = text.lines().map(parse_memtrace_line).collect();
    let json: Vec<TextAccess> = json_lines(&jsonl, "memtrace")
        .iter()
        .map(memtrace_json_access)
        .collect();
    assert!(text.len() > 1000, "{} accesses", text.len());
    assert_eq!(text.len(), json.len(), "as many accesses");
    let mut values = Renames::default();
    for (i, (t, j)) in text.iter().zip(&json).enumerate() {
        let (mut t, mut j) = (t.clone(), j.clone());
        values.same(&t.5, &j.5, &format!("access {i}"));
        (t.5, j.5) = (String::new(), String::new());
        assert_eq!(t, j, "access {i}");
    }
    values.assert_few("memtrace");
    assert!(json.iter().any(|a| a.2 == "R") && json.iter().any(|a| a.2 == "W"));

    // max=N: N accesses, then the stopped record (the text's `# stopped ...` line).
    let text = output(&dir, "memtrace", "text", ",max=50", "sort", &args);
    let jsonl = output(&dir, "memtrace", "jsonl", ",max=50", "sort", &args);
    assert_eq!(
        text.lines().last(),
        Some("# stopped after 50 accesses (max=50)")
    );
    let lines = json_lines(&jsonl, "memtrace max=50");
    assert_eq!(lines.len(), 51);
    for l in &lines[..50] {
        memtrace_json_access(l);
    }
    check_fields(&lines[50], &STOPPED, "memtrace stopped");
    assert_eq!(lines[50]["event"], "stopped");
    assert_eq!(lines[50]["max"], 50);
}

/// On eight threads with `out=-`: every line of stderr is JSON, the workers' records carry
/// their thread ids (the text's `[tid N] `), and each thread has as many records as in the
/// text form.
#[test]
fn memtrace_jsonl_marks_threads() {
    let dir = scratch("json-memtrace-threads");
    let per_thread = |format: &str| {
        let r = run(
            &dir,
            &format!("memtrace:out=-,format={format}"),
            THREADS8,
            &[],
        );
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let records: Vec<TextAccess> = if format == "text" {
            r.stderr.lines().map(parse_memtrace_line).collect()
        } else {
            json_lines(&r.stderr, "memtrace out=-")
                .iter()
                .map(memtrace_json_access)
                .collect()
        };
        let mut counts: BTreeMap<Option<u64>, usize> = BTreeMap::new();
        for a in &records {
            *counts.entry(a.0).or_default() += 1;
        }
        let main = counts.remove(&None).unwrap_or(0);
        let mut threads: Vec<usize> = counts.into_values().collect();
        threads.sort_unstable();
        (main, threads)
    };
    let text = per_thread("text");
    let json = per_thread("jsonl");
    assert_eq!(text.1.len(), 8, "eight workers marked: {text:?}");
    assert_eq!(text, json, "(main thread, workers) records");
}

const INSTRUCTION: [(&str, Kind); 5] = [
    ("event", Kind::Str),
    ("tid", Kind::IntOrNull),
    ("address", Kind::Hex),
    ("disassembly", Kind::Str),
    ("regs", Kind::ObjectOrNull),
];

const REGISTERS: [&str; 17] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
    "rbp", "rsp", "eflags",
];

#[test]
fn tracer_jsonl_has_the_text_records() {
    let dir = scratch("json-tracer");
    let input = dir.join("in.txt");
    std::fs::write(&input, "pear\napple\nfig\n").unwrap();
    let args = [input.to_str().unwrap()];
    let text = output(&dir, "tracer", "text", ",regs", "sort", &args);
    let jsonl = output(&dir, "tracer", "jsonl", ",regs", "sort", &args);
    let text: Vec<&str> = text.lines().collect();
    let json = json_lines(&jsonl, "tracer");
    assert!(text.len() > 1000, "{} instructions", text.len());
    assert_eq!(text.len(), json.len(), "as many instructions");
    let reg_fields: Vec<(&str, Kind)> = REGISTERS.iter().map(|&r| (r, Kind::Hex)).collect();
    let mut values = Renames::default();
    for (i, (t, j)) in text.iter().zip(&json).enumerate() {
        check_fields(j, &INSTRUCTION, "tracer instruction");
        assert_eq!(j["event"], "instruction");
        assert!(j["tid"].is_null(), "main thread: {j}");
        let (inst, regs) = t.split_once(" | ").expect("registers after ` | `");
        let (address, disassembly) = inst.split_once(' ').expect("address, disassembly");
        assert_eq!(j["address"], address, "instruction {i}");
        assert_eq!(j["disassembly"], disassembly, "instruction {i}");
        check_fields(&j["regs"], &reg_fields, "tracer regs");
        let text_regs: Vec<(&str, &str)> = regs
            .split(' ')
            .map(|r| r.split_once('=').expect("reg=value"))
            .collect();
        let names: Vec<&str> = text_regs.iter().map(|r| r.0).collect();
        assert_eq!(names, REGISTERS, "the text's registers");
        for (name, value) in text_regs {
            let json = j["regs"][name].as_str().unwrap();
            values.same(value, json, &format!("instruction {i} {name}"));
        }
    }
    values.assert_few("tracer registers");

    // Without `regs`: null; with max=N: N instructions, then the stopped record.
    let text = output(&dir, "tracer", "text", ",max=40", "sort", &args);
    let jsonl = output(&dir, "tracer", "jsonl", ",max=40", "sort", &args);
    let text: Vec<&str> = text.lines().collect();
    assert_eq!(text.len(), 41);
    assert_eq!(text[40], "# stopped after 40 instructions (max=40)");
    let lines = json_lines(&jsonl, "tracer max=40");
    assert_eq!(lines.len(), 41);
    for (t, j) in text.iter().zip(&lines[..40]) {
        check_fields(j, &INSTRUCTION, "tracer instruction");
        assert!(j["regs"].is_null(), "no regs option: {j}");
        let (address, disassembly) = t.split_once(' ').unwrap();
        assert_eq!(
            (j["address"].as_str(), j["disassembly"].as_str()),
            (Some(address), Some(disassembly))
        );
    }
    check_fields(&lines[40], &STOPPED, "tracer stopped");
    assert_eq!(lines[40]["event"], "stopped");
    assert_eq!(lines[40]["max"], 40);
}

const BLOCK: [(&str, Kind); 6] = [
    ("count", Kind::Int),
    ("start", Kind::Hex),
    ("end", Kind::Hex),
    ("symbol", Kind::StrOrNull),
    ("offset", Kind::IntOrNull),
    ("module", Kind::StrOrNull),
];

/// bbcount's text report as (blocks entered, entries, block lines in the JSON's terms:
/// `count start end symbol offset module`, `null` for `?`).
fn parse_bbcount_text(report: &str) -> (u64, u64, Vec<String>) {
    let mut lines = report.lines();
    let header = lines.next().expect("a header");
    let f: Vec<&str> = header.split(' ').collect();
    assert_eq!(
        (f[0], f[2], f[3], f[5]),
        ("#", "blocks", "entered", "times;")
    );
    let blocks = lines
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 4, "{l:?}");
            let (start, end) = f[1].split_once('-').unwrap();
            let (symbol, offset) = match f[2] {
                "?" => ("null".to_owned(), "null".to_owned()),
                s => match s.split_once("+0x") {
                    Some((name, off)) => (
                        format!("{name:?}"),
                        u64::from_str_radix(off, 16).unwrap().to_string(),
                    ),
                    None => (format!("{s:?}"), "0".to_owned()),
                },
            };
            let module = if f[3] == "?" {
                "null".to_owned()
            } else {
                format!("{:?}", f[3])
            };
            format!("{} {start} {end} {symbol} {offset} {module}", f[0])
        })
        .collect();
    (f[1].parse().unwrap(), f[4].parse().unwrap(), blocks)
}

/// bbcount's JSON report, checked, in the same terms as [`parse_bbcount_text`].
fn parse_bbcount_json(report: &str) -> (u64, u64, Vec<String>) {
    assert!(report.ends_with("}\n"), "one document and a newline");
    let v: Value = serde_json::from_str(report).expect("bbcount's report is JSON");
    check_fields(
        &v,
        &[
            ("entered_blocks", Kind::Int),
            ("entries", Kind::Int),
            ("blocks", Kind::Array),
        ],
        "bbcount report",
    );
    let blocks = v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            check_fields(b, &BLOCK, "bbcount block");
            assert_eq!(b["symbol"].is_null(), b["offset"].is_null(), "{b}");
            assert!(hex(&b["start"]) < hex(&b["end"]), "{b}");
            format!(
                "{} {} {} {} {} {}",
                b["count"],
                b["start"].as_str().unwrap(),
                b["end"].as_str().unwrap(),
                b["symbol"],
                b["offset"],
                b["module"]
            )
        })
        .collect();
    (
        v["entered_blocks"].as_u64().unwrap(),
        v["entries"].as_u64().unwrap(),
        blocks,
    )
}

#[test]
fn bbcount_json_has_the_text_report() {
    let dir = scratch("json-bbcount");
    let listing = listing_dir(&dir);
    let args = ["-la", listing.to_str().unwrap()];
    let text = parse_bbcount_text(&output(&dir, "bbcount", "text", "", "ls", &args));
    let json = parse_bbcount_json(&output(&dir, "bbcount", "json", "", "ls", &args));
    assert!(text.2.len() > 100, "{} blocks", text.2.len());
    assert_eq!(
        text.0,
        text.2.len() as u64,
        "without top, every block is listed"
    );
    assert_eq!(text, json, "(blocks entered, entries, blocks)");
    assert!(
        json.2
            .iter()
            .any(|b| b.contains("\"main\"") || b.contains("\"ls\"")),
        "{:?}",
        &json.2[..5]
    );
    // top=N: N blocks listed, the figures still of all.
    let top = parse_bbcount_json(&output(&dir, "bbcount", "json", ",top=7", "ls", &args));
    assert_eq!((top.0, top.1), (json.0, json.1));
    assert_eq!(top.2, json.2[..7]);
    // A program with symbols (ls has none): threads8's step and worker, on eight threads.
    let text = parse_bbcount_text(&output(&dir, "bbcount", "text", "", THREADS8, &[]));
    let json = parse_bbcount_json(&output(&dir, "bbcount", "json", "", THREADS8, &[]));
    assert_eq!(text, json, "threads8: (blocks entered, entries, blocks)");
    for name in ["step", "worker"] {
        assert!(
            json.2
                .iter()
                .any(|b| b.ends_with(&format!(" \"{name}\" 0 \"threads8\""))),
            "a block at {name}: {:?}",
            json.2
        );
    }
    assert!(
        json.2
            .iter()
            .any(|b| b.contains("\"worker\" ") && !b.contains(" 0 \"threads8\"")),
        "a block inside worker, at an offset: {:?}",
        json.2
    );
}

/// opstats' text report as (instructions, `(mnemonic, count, percent)` rows, the last
/// line's `(mnemonics, count, percent)`).
type Stats = (u64, Vec<(String, u64, String)>, Option<(u64, u64, String)>);

fn parse_opstats_text(report: &str) -> Stats {
    let mut lines = report.lines();
    let total = lines
        .next()
        .and_then(|l| l.strip_prefix("instructions "))
        .expect("instructions N")
        .parse()
        .unwrap();
    assert_eq!(lines.next(), Some("# mnemonic count percent"));
    let mut rows = Vec::new();
    let mut other = None;
    for l in lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f[0] == "#" {
            // `# K other mnemonics: N instructions P%`
            assert_eq!((f[2], f[3], f[5]), ("other", "mnemonics:", "instructions"));
            let p = f[6].strip_suffix('%').unwrap().to_owned();
            other = Some((f[1].parse().unwrap(), f[4].parse().unwrap(), p));
        } else {
            assert_eq!(f.len(), 3, "{l:?}");
            let p = f[2].strip_suffix('%').unwrap().to_owned();
            rows.push((f[0].to_owned(), f[1].parse().unwrap(), p));
        }
    }
    (total, rows, other)
}

fn percent(v: &Value) -> String {
    format!("{:.2}", v.as_f64().expect("a number"))
}

fn parse_opstats_json(report: &str) -> Stats {
    assert!(report.ends_with("}\n"), "one document and a newline");
    let v: Value = serde_json::from_str(report).expect("opstats' report is JSON");
    check_fields(
        &v,
        &[
            ("instructions", Kind::Int),
            ("mnemonics", Kind::Array),
            ("other", Kind::ObjectOrNull),
        ],
        "opstats report",
    );
    let rows = v["mnemonics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            check_fields(
                m,
                &[
                    ("mnemonic", Kind::Str),
                    ("count", Kind::Int),
                    ("percent", Kind::Number),
                ],
                "opstats mnemonic",
            );
            (
                m["mnemonic"].as_str().unwrap().to_owned(),
                m["count"].as_u64().unwrap(),
                percent(&m["percent"]),
            )
        })
        .collect();
    let other = (!v["other"].is_null()).then(|| {
        let o = &v["other"];
        check_fields(
            o,
            &[
                ("mnemonics", Kind::Int),
                ("count", Kind::Int),
                ("percent", Kind::Number),
            ],
            "opstats other",
        );
        (
            o["mnemonics"].as_u64().unwrap(),
            o["count"].as_u64().unwrap(),
            percent(&o["percent"]),
        )
    });
    (v["instructions"].as_u64().unwrap(), rows, other)
}

#[test]
fn opstats_json_has_the_text_report() {
    let dir = scratch("json-opstats");
    let listing = listing_dir(&dir);
    let args = ["-la", listing.to_str().unwrap()];
    let text = parse_opstats_text(&output(&dir, "opstats", "text", "", "ls", &args));
    let json = parse_opstats_json(&output(&dir, "opstats", "json", "", "ls", &args));
    assert!(text.0 > 10_000, "{} instructions", text.0);
    assert!(text.2.is_none() && text.1.len() > 20, "{:?}", text.1);
    assert_eq!(text, json, "(instructions, mnemonics, other)");
    assert_eq!(
        json.0,
        json.1.iter().map(|r| r.1).sum::<u64>(),
        "the total adds up"
    );
    let text = parse_opstats_text(&output(&dir, "opstats", "text", ",top=5", "ls", &args));
    let json = parse_opstats_json(&output(&dir, "opstats", "json", ",top=5", "ls", &args));
    assert_eq!(json.1.len(), 5);
    assert!(json.2.is_some());
    assert_eq!(text, json, "top=5");
}

/// A format a plugin does not write is refused at init, naming the plugin, the value and
/// the formats it has.
#[test]
fn a_bad_format_is_refused() {
    let dir = scratch("json-bad-format");
    for (plugin, bad, good) in [
        ("memtrace", "json", "format=jsonl"),
        ("tracer", "xml", "format=jsonl"),
        ("bbcount", "jsonl", "format=json"),
        ("opstats", "csv", "format=json"),
    ] {
        let spec = format!("{plugin}:format={bad}");
        let out = under_qbdi(&dir, &["-p", &spec], "/bin/true", &[], None);
        assert_eq!(out.code, Some(125), "{spec}: {}", out.stderr);
        for needle in [
            &format!("plugin '{plugin}' refused to start"),
            &format!("format={bad} is not a format"),
            "format=text",
            good,
        ] {
            assert!(
                out.stderr.contains(needle),
                "{spec}: {needle:?} in {:?}",
                out.stderr
            );
        }
    }
}
