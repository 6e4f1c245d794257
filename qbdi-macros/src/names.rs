//! The names the attributes accept: VM events, memory access kinds, analysis types, x86
//! mnemonics (for globs) and iced-x86 `Code` names, with "did you mean" suggestions.

use std::sync::OnceLock;

use iced_x86::{Code, Mnemonic};

/// `VmEvent` flags by name (the values of `qbdi_core::VmEvent`).
pub const EVENTS: &[(&str, u32)] = &[
    ("SEQUENCE_ENTRY", 1),
    ("SEQUENCE_EXIT", 2),
    ("BASIC_BLOCK_ENTRY", 4),
    ("BASIC_BLOCK_EXIT", 8),
    ("BASIC_BLOCK_NEW", 16),
    ("EXEC_TRANSFER_CALL", 32),
    ("EXEC_TRANSFER_RETURN", 64),
    ("SYSCALL_ENTRY", 128),
    ("SYSCALL_EXIT", 256),
];

/// `MemoryAccessType` flags by the names `#[mem_access]` takes.
pub const ACCESSES: &[(&str, u32)] = &[("read", 1), ("write", 2), ("read_write", 3)];

/// `AnalysisType` flags by name.
pub const ANALYSES: &[(&str, u32)] = &[
    ("INSTRUCTION", 1),
    ("DISASSEMBLY", 2),
    ("OPERANDS", 4),
    ("SYMBOL", 8),
];

/// The positions of an instruction callback: `(name, post_inst)`.
pub const POSITIONS: &[(&str, bool)] = &[("preinst", false), ("postinst", true)];

/// The value of `name` in `table`.
pub fn lookup<T: Copy>(table: &[(&str, T)], name: &str) -> Option<T> {
    table.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
}

/// The names of `table`, as "`A`, `B` or `C`".
pub fn list<T>(table: &[(&str, T)]) -> String {
    or_list(table.iter().map(|(n, _)| *n))
}

/// `names` as "`A`, `B` or `C`".
pub fn or_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.into_iter().map(|n| format!("`{n}`")).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Every x86 mnemonic iced-x86 knows, upper case (`"CALL"`, `"JNE"`, `"MOVAPS"`), without
/// `INVALID`: the same list as `qbdi_core::mnemonic_names()`.
pub fn mnemonics() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        Mnemonic::values()
            .filter(|&m| m != Mnemonic::INVALID)
            .map(|m| format!("{m:?}").to_ascii_uppercase())
            .collect()
    })
}

/// Every iced-x86 `Code` name (`"Call_rm64"`), without `INVALID`.
pub fn codes() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        Code::values()
            .filter(|&c| c != Code::INVALID)
            .map(|c| format!("{c:?}"))
            .collect()
    })
}

/// Whether `name` matches the glob `pattern`, ignoring ASCII case: `*` stands for any run
/// of characters (also none), `?` for exactly one, anything else for itself, and the whole
/// name must match.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // matches[j]: whether p[..i] matches n[..j], row by row over i.
    let mut matches = vec![false; n.len() + 1];
    matches[0] = true;
    for &c in p {
        if c == b'*' {
            // A star extends any prefix match to every longer prefix.
            for j in 1..=n.len() {
                matches[j] = matches[j] || matches[j - 1];
            }
        } else {
            for j in (1..=n.len()).rev() {
                matches[j] = matches[j - 1] && (c == b'?' || c.eq_ignore_ascii_case(&n[j - 1]));
            }
            matches[0] = false;
        }
    }
    matches[n.len()]
}

/// Whether the glob `pattern` matches at least one x86 mnemonic.
pub fn mnemonic_glob_is_valid(pattern: &str) -> bool {
    mnemonics().iter().any(|m| glob_matches(pattern, m))
}

/// The candidate closest to `word`, if one is close enough to be a likely typo: equal
/// ignoring case, starting with the word (of 3 characters or more), or within an edit
/// distance of a third of the word's length (at least 1).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    let limit = (word.len() / 3).max(1);
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let candidate_lower = candidate.to_ascii_lowercase();
        let distance = if word.len() >= 3 && candidate_lower.starts_with(&word_lower) {
            0
        } else {
            edit_distance(&word_lower, &candidate_lower)
        };
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// " (did you mean `X`?)" when there is a close candidate, else "".
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match closest(word, candidates) {
        Some(c) => format!(" (did you mean `{c}`?)"),
        None => String::new(),
    }
}

/// Levenshtein distance between two ASCII-ish strings (by bytes).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("CALL*", "CALL"));
        assert!(glob_matches("call*", "CALL"));
        assert!(glob_matches("J*", "JNE"));
        assert!(glob_matches("J??", "JNE"));
        assert!(!glob_matches("J??", "JMP_"));
        assert!(glob_matches("*MOV*", "CMOVNE"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("MOV", "MOVAPS"));
        assert!(!glob_matches("?", ""));
        assert!(glob_matches("M*V*S", "MOVAPS"));
        assert!(!glob_matches("M*V*X", "MOVAPS"));
    }

    #[test]
    fn mnemonic_list() {
        let names = mnemonics();
        for m in ["CALL", "JNE", "MOVAPS", "RET", "SYSCALL"] {
            assert!(names.iter().any(|n| n == m), "{m}");
        }
        assert!(!names.iter().any(|n| n == "INVALID"));
        assert!(mnemonic_glob_is_valid("call*"));
        assert!(mnemonic_glob_is_valid("J?E"));
        assert!(!mnemonic_glob_is_valid("CALLL"));
        assert!(!mnemonic_glob_is_valid("XYZ*"));
    }

    #[test]
    fn code_list() {
        let codes = codes();
        assert!(codes.iter().any(|c| c == "Call_rm64"));
        assert!(codes.iter().any(|c| c == "Retnq"));
        assert!(!codes.iter().any(|c| c == "INVALID"));
    }

    #[test]
    fn suggestions() {
        let positions = POSITIONS.iter().map(|(n, _)| *n);
        assert_eq!(closest("preinstt", positions.clone()), Some("preinst"));
        assert_eq!(closest("PostInst", positions.clone()), Some("postinst"));
        assert_eq!(closest("after", positions.clone()), None);
        assert_eq!(closest("post", positions), Some("postinst"));
        let events = EVENTS.iter().map(|(n, _)| *n);
        assert_eq!(
            closest("BASIC_BLOCK_ENTER", events),
            Some("BASIC_BLOCK_ENTRY")
        );
        assert_eq!(
            closest("Call_rm65", codes().iter().map(String::as_str)),
            Some("Call_rm64")
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(or_list(["a", "b", "c"]), "`a`, `b` or `c`");
        assert_eq!(list(ACCESSES), "`read`, `write` or `read_write`");
    }
}
