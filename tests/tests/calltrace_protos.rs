//! calltrace's decoded arguments and return values on real programs: the strings `ls`
//! passes to getenv, opendir and strlen (cut after 32 bytes, `NULL`), the string getenv
//! returns, fopen's arguments (`cut`), open, mmap and lseek flags and printf's variadic
//! arguments (the jit test program), doubles (`sleep`'s strtod, gawk's libm calls), and
//! `format=jsonl`: every line a JSON object with the documented fields, listing the same
//! calls as the text form; prototypes read from the DWARF of a called library built with
//! `-g` (`programs/dwarf_lib.c`), whether its calls are bound lazily or at start-up.

use std::path::Path;

use qbdi_tests::cli::{assert_same_env, scratch, under_qbdi, under_qbdi_env};

const JIT: &str = env!("QBDI_TEST_JIT");
const REENTRY: &str = env!("QBDI_TEST_REENTRY");

/// A directory name longer than the 32 bytes a string is shown with.
const LONG_DIR: &str = "a_directory_name_longer_than_32_bytes";
/// An LS_COLORS value longer than 32 bytes (getenv's return is cut).
const LS_COLORS: &str = "di=01;34:ln=01;36:ex=01;32:*.tar=01;31:*.txt=00;33";

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `program args` in `dir` under calltrace with `options` (after `out=`), `env` added;
/// checks the program behaves as natively and returns the trace.
fn trace(
    dir: &Path,
    name: &str,
    options: &str,
    env: &[(&str, &str)],
    program: &str,
    args: &[&str],
) -> String {
    let out = dir.join(name);
    let spec = format!("calltrace:out={}{options}", out.display());
    assert_same_env(dir, env, &["-p", &spec], program, args, None);
    read(&out)
}

/// A text line without its thread mark and indentation.
fn body(line: &str) -> &str {
    let line = match line.strip_prefix("[tid ") {
        Some(rest) => rest.split_once("] ").map_or(rest, |(_, l)| l),
        None => line,
    };
    line.trim_start()
}

/// The calls of a text trace: (function, the rest of the line from its `(`), for the lines
/// that show a call with its arguments.
fn calls(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(body)
        .filter(|l| !l.starts_with("<..."))
        .filter_map(|l| {
            let open = l.find('(')?;
            let function = l[..open].split('@').next().unwrap_or_default();
            Some((function.to_owned(), l[open..].to_owned()))
        })
        .collect()
}

/// Asserts that a call of `function` shows `rest` (its arguments and return, from `(`),
/// or starts with it when `rest` ends with `*`.
fn assert_call(calls: &[(String, String)], function: &str, rest: &str) {
    let found = calls.iter().any(|(f, r)| {
        f == function
            && match rest.strip_suffix('*') {
                Some(prefix) => r.starts_with(prefix),
                None => r == rest,
            }
    });
    if !found {
        let seen: Vec<String> = calls
            .iter()
            .filter(|(f, _)| f == function)
            .map(|(f, r)| format!("{f}{r}"))
            .collect();
        panic!("no {function}{rest} in the trace; its {function} calls: {seen:#?}");
    }
}

/// The directories `ls` lists: `sub` and one with a long name.
fn ls_dirs(dir: &Path) {
    for d in ["sub", LONG_DIR] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        std::fs::write(dir.join(d).join("file.txt"), b"x").unwrap();
    }
}

#[test]
fn ls_shows_the_strings_it_passes_and_gets() {
    let dir = scratch("calltrace_protos_ls");
    ls_dirs(&dir);
    let env = [("COLUMNS", "80"), ("LS_COLORS", LS_COLORS)];
    let text = trace(
        &dir,
        "ls.txt",
        "",
        &env,
        "ls",
        &["-C", "--color=always", "sub", LONG_DIR],
    );
    let calls = calls(&text);
    assert_call(&calls, "getenv", r#"("COLUMNS") = "80""#);
    // A string longer than 32 bytes is cut, with `...` after the quote; a NULL return.
    assert_call(
        &calls,
        "getenv",
        r#"("LS_COLORS") = "di=01;34:ln=01;36:ex=01;32:*.tar"..."#,
    );
    assert_call(&calls, "getenv", r#"("QUOTING_STYLE") = NULL"#);
    assert_call(&calls, "opendir", r#"("sub") = 0x*"#);
    assert_call(
        &calls,
        "opendir",
        r#"("a_directory_name_longer_than_32_"...) = 0x*"#,
    );
    assert_call(&calls, "strlen", r#"("sub") = 3"#);
    assert_call(&calls, "readdir", "(0x*");
    assert_call(&calls, "isatty", "(1) = 0");
    // A function without a prototype keeps three hex registers and a hex return.
    let unknown: Vec<&(String, String)> =
        calls.iter().filter(|(f, _)| f.starts_with("0x")).collect();
    for (f, rest) in unknown {
        let (args, ret) = rest.rsplit_once(" = ").expect("a return");
        assert_eq!(args.matches(", ").count(), 2, "{f}{rest}");
        assert!(ret.starts_with("0x"), "{f}{rest}");
    }

    // ls -l: NULL arguments (dcgettext's domain, setlocale's query) and printf formats
    // with their variadic arguments.
    let text = trace(&dir, "ls-l.txt", "", &[], "ls", &["-l", "sub"]);
    let calls_l = self::calls(&text);
    assert_call(&calls_l, "setlocale", "(LC_TIME, NULL) = \"*");
    assert_call(&calls_l, "dcgettext", "(NULL, \"*");
    assert_call(&calls_l, "statx", "(AT_FDCWD, \"sub\", *");
    let formats: Vec<&String> = calls_l
        .iter()
        .filter(|(f, r)| f.contains("printf_chk") && r.contains("\", \""))
        .map(|(_, r)| r)
        .collect();
    assert!(
        !formats.is_empty(),
        "no printf-like call with a string after its format:\n{text}"
    );
}

/// `ls` never calls fopen (it reads directories, not files): `cut` opens its file with
/// fopen from its own code.
#[test]
fn cut_shows_fopen_arguments() {
    let dir = scratch("calltrace_protos_fopen");
    std::fs::write(dir.join("f.txt"), b"ab\ncd\n").unwrap();
    let text = trace(&dir, "cut.txt", "", &[], "cut", &["-c1", "f.txt"]);
    let calls = calls(&text);
    assert_call(&calls, "fopen", r#"("f.txt", "r") = 0x*"#);
    assert_call(&calls, "fclose", "(0x*");
}

/// The jit test program calls mmap, mprotect, open, write and lseek from its own code.
#[test]
fn flags_constants_and_printf_arguments_are_decoded() {
    let dir = scratch("calltrace_protos_flags");
    let text = trace(&dir, "jit.txt", "", &[], JIT, &["code.bin"]);
    let calls = calls(&text);
    assert_call(
        &calls,
        "mmap",
        "(0x10000000, 8192, PROT_READ|PROT_WRITE|PROT_EXEC, \
         MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE, -1, 0) = 0x10000000",
    );
    assert_call(
        &calls,
        "mprotect",
        "(0x10001000, 4096, PROT_READ|PROT_WRITE) = 0",
    );
    assert_call(
        &calls,
        "open",
        r#"("code.bin", O_RDWR|O_CREAT|O_TRUNC, 0600) = *"#,
    );
    let (_, open) = calls.iter().find(|(f, _)| f == "open").unwrap();
    let fd = open.rsplit_once(" = ").unwrap().1;
    assert!(fd.parse::<i32>().is_ok_and(|n| n >= 0), "{open}");
    // write's buffer is shown over its length (16 bytes of machine code, escaped).
    assert_call(&calls, "write", &format!("({fd}, \"*"));
    let (_, write) = calls.iter().find(|(f, _)| f == "write").unwrap();
    assert!(write.ends_with("\", 16) = 16"), "{write}");
    assert_call(&calls, "lseek", &format!("({fd}, 0, SEEK_SET) = 0"));
    assert_call(&calls, "close", &format!("({fd}) = 0"));
    assert_call(&calls, "printf", r#"("W^X round %d: %ld\n", 1, 16) = 16"#);
    assert_call(
        &calls,
        "printf",
        r#"("read %ld bytes of code: %ld\n", 16, 45) = 26"#,
    );
}

#[test]
fn doubles_come_from_the_xmm_registers() {
    let dir = scratch("calltrace_protos_doubles");
    // coreutils sleep parses its argument with strtod: a double return.
    let text = trace(&dir, "sleep.txt", "", &[], "sleep", &["0.01"]);
    assert_call(&calls(&text), "strtod", r#"("0.01", 0x*"#);
    assert!(
        text.lines()
            .any(|l| l.contains("strtod") && l.ends_with(" = 0.01")),
        "{text}"
    );
    // gawk calls libm with doubles and formats them with snprintf.
    if !Path::new("/usr/bin/gawk").exists() {
        eprintln!("gawk is not installed: its part of the test is skipped");
        return;
    }
    let text = trace(
        &dir,
        "gawk.txt",
        "",
        &[],
        "gawk",
        &["BEGIN { print sin(1), exp(1) }"],
    );
    let calls = calls(&text);
    assert_call(&calls, "sin", "(1.0) = 0.8414709848078965");
    assert_call(&calls, "exp", "(1.0) = 2.718281828459045");
    assert!(
        calls
            .iter()
            .any(|(f, r)| f.contains("printf") && r.contains("\"%*.*g\", 0, 6, 2.718281828459045)")),
        "no snprintf of exp(1):\n{text}"
    );
}

/// The function of each text line (`None` for a target without a symbol), in order.
fn text_functions(text: &str) -> Vec<Option<String>> {
    text.lines()
        .map(body)
        .map(|l| {
            let label = match l.strip_prefix("<... ") {
                Some(rest) => rest.split(' ').next().unwrap_or_default(),
                None => &l[..l.find('(').unwrap_or(l.len())],
            };
            let function = label.split('@').next().unwrap_or_default();
            (!function.starts_with("0x")).then(|| function.to_owned())
        })
        .collect()
}

/// Parses a jsonl trace, checking each line's fields; returns the objects.
fn parse_jsonl(text: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}: {line}", i + 1));
        let o = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        assert!(o["tid"].is_u64(), "{line}");
        assert!(o["depth"].is_u64(), "{line}");
        let event = o["event"].as_str().unwrap_or_default();
        let status = o["status"].as_str().unwrap_or_default();
        assert!(["call", "resumed"].contains(&event), "{line}");
        assert!(
            ["returned", "unfinished", "left", "exit"].contains(&status),
            "{line}"
        );
        assert!(
            o["function"].is_string() || o["function"].is_null(),
            "{line}"
        );
        assert!(o["module"].is_string() || o["module"].is_null(), "{line}");
        assert!(
            o["target"].as_str().is_some_and(|t| t.starts_with("0x")),
            "{line}"
        );
        let value_ok = |v: &serde_json::Value| {
            v["type"].is_string()
                && v["value"].is_string()
                && v["raw"].as_str().is_some_and(|r| r.starts_with("0x"))
        };
        if event == "call" {
            let args = o["args"]
                .as_array()
                .unwrap_or_else(|| panic!("args: {line}"));
            assert!(args.iter().all(value_ok), "{line}");
        } else {
            assert!(!o.contains_key("args"), "{line}");
        }
        if status == "returned" {
            assert!(value_ok(&o["return"]), "{line}");
        } else {
            assert!(o["return"].is_null(), "{line}");
        }
        out.push(v);
    }
    out
}

#[test]
fn jsonl_lines_carry_the_fields_and_the_same_calls_as_text() {
    let dir = scratch("calltrace_protos_jsonl");
    ls_dirs(&dir);
    let env = [("COLUMNS", "80"), ("LS_COLORS", LS_COLORS)];
    let args = ["-C", "--color=always", "sub", LONG_DIR];
    let text = trace(&dir, "ls.txt", "", &env, "ls", &args);
    let jsonl = trace(&dir, "ls.jsonl", ",format=jsonl", &env, "ls", &args);
    let objects = parse_jsonl(&jsonl);
    let json_functions: Vec<Option<String>> = objects
        .iter()
        .map(|o| o["function"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(json_functions, text_functions(&text));
    // The decoded values are the text's.
    let getenv = objects
        .iter()
        .find(|o| o["function"] == "getenv" && o["args"][0]["value"] == "\"COLUMNS\"")
        .expect("getenv(\"COLUMNS\") in the jsonl trace");
    assert_eq!(getenv["args"][0]["type"], "string");
    assert_eq!(getenv["return"]["value"], "\"80\"");
    assert_eq!(getenv["module"], "libc.so.6");
    assert_eq!(getenv["depth"], 0);

    // Nested calls (qsort's comparators call out again), longjmp out of a comparator,
    // threads: unfinished, resumed and left lines.
    let out = dir.join("reentry.jsonl");
    let spec = format!("calltrace:out={},format=jsonl", out.display());
    let run = under_qbdi(&dir, &["-p", &spec], REENTRY, &[], None);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let objects = parse_jsonl(&read(&out));
    let has = |event: &str, status: &str| {
        objects
            .iter()
            .any(|o| o["event"] == event && o["status"] == status)
    };
    assert!(has("call", "unfinished"), "no unfinished call");
    assert!(has("resumed", "returned"), "no resumed call");
    assert!(has("call", "left"), "no call left without returning");
    assert!(
        objects
            .iter()
            .any(|o| o["status"] == "returned" && o["depth"].as_u64() > Some(0)),
        "no nested call"
    );
    let tids: std::collections::BTreeSet<u64> =
        objects.iter().filter_map(|o| o["tid"].as_u64()).collect();
    assert!(tids.len() >= 2, "threads: {tids:?}");
}

#[test]
fn a_bad_format_is_refused_at_init() {
    let dir = scratch("calltrace_protos_format");
    let run = under_qbdi_env(
        &dir,
        &[],
        &["-p", "calltrace:format=xml"],
        "true",
        &[],
        None,
    );
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("format=xml") && run.stderr.contains("format=jsonl"),
        "{}",
        run.stderr
    );
}

/// The program calling into `libdwarf_lib.so` (built with `-g`), bound both ways.
const DWARF_MAINS: [&str; 2] = [
    env!("QBDI_TEST_DWARF_MAIN_LAZY"),
    env!("QBDI_TEST_DWARF_MAIN_NOW"),
];

#[test]
fn prototypes_come_from_the_dwarf_of_a_called_library() {
    let dir = scratch("calltrace_dwarf");
    for (i, program) in DWARF_MAINS.iter().enumerate() {
        let text = trace(&dir, &format!("dwarf{i}.log"), "", &[], program, &[]);
        let c = calls(&text);
        // None of these is in the built-in table: the types are the library's.
        assert_call(&c, "dl_describe", "(\"widget\", -3, 2.5, 255, 'x') = 119");
        assert_call(
            &c,
            "dl_measure",
            "(\"a string that is longer than thi\"...) = 45",
        );
        assert_call(&c, "dl_scale", "(1.5, 4.0) = 6.0");
        assert_call(&c, "dl_touch", "(0x*");
        assert!(
            c.iter()
                .any(|(f, r)| f == "dl_touch" && r.ends_with(") = <void>")),
            "{text}"
        );
        // A structure passed by value in memory: no prototype, the raw registers.
        assert!(
            c.iter()
                .any(|(f, r)| f == "dl_sum_triple" && r.starts_with("(0x") && r.ends_with("= 0x6")),
            "{text}"
        );
        let jsonl = trace(
            &dir,
            &format!("dwarf{i}.jsonl"),
            ",format=jsonl",
            &[],
            program,
            &[],
        );
        let describe: serde_json::Value = jsonl
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .find(|v| v["function"] == "dl_describe")
            .unwrap_or_else(|| panic!("no dl_describe in {jsonl}"));
        let types: Vec<&str> = describe["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a["type"].as_str().expect("a type"))
            .collect();
        assert_eq!(types, ["string", "int", "double", "unsigned long", "char"]);
        assert_eq!(describe["return"]["type"], "long");
    }
}
