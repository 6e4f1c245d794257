//! Block statistics into a mnemonic histogram, and the report (text, or with
//! `format=json` one JSON document: see the crate's doc for the fields).

use std::collections::HashMap;
use std::fmt::Write;
use std::io::{self, Write as _};

use qbdi_plugin_support::json::{Format, Object};

/// The plugin's `format` option: `text` (the default) or `json` (true); the error names the
/// value and the accepted ones.
pub fn parse_format(value: Option<&str>) -> Result<bool, String> {
    Format::parse_among("opstats", value, &[Format::Text, Format::Json]).map(|f| f == Format::Json)
}

/// What the plugin keeps per block: its instructions' mnemonics (computed once, when the
/// block is new) and how many times it was entered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Mnemonic of each instruction, in order.
    pub mnemonics: Vec<&'static str>,
    /// Entries so far.
    pub entries: u64,
}

/// The executed instruction count and `(mnemonic, count)` pairs, highest count first (ties
/// by name); mnemonics never executed are left out.
pub fn histogram<'a>(
    blocks: impl IntoIterator<Item = &'a BlockStats>,
) -> (u64, Vec<(&'static str, u64)>) {
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    for b in blocks {
        if b.entries == 0 {
            continue;
        }
        for &m in &b.mnemonics {
            *counts.entry(m).or_default() += b.entries;
        }
    }
    let total = counts.values().sum();
    let mut rows: Vec<(&'static str, u64)> = counts.into_iter().collect();
    rows.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    (total, rows)
}

/// The report: the total, then one line per mnemonic (`top` lines at most, the rest summed
/// on a last line).
///
/// ```text
/// instructions 1000
/// # mnemonic count percent
/// mov              600  60.00%
/// add              400  40.00%
/// ```
pub fn render(total: u64, rows: &[(&str, u64)], top: Option<usize>) -> String {
    let mut out = format!("instructions {total}\n# mnemonic count percent\n");
    let percent = |n: u64| percent(n, total);
    let shown = top.unwrap_or(usize::MAX).min(rows.len());
    for &(m, n) in &rows[..shown] {
        let _ = writeln!(out, "{m:<12} {n:>12} {:>6.2}%", percent(n));
    }
    let rest = &rows[shown..];
    if !rest.is_empty() {
        let n: u64 = rest.iter().map(|r| r.1).sum();
        let _ = writeln!(
            out,
            "# {} other mnemonics: {n} instructions {:.2}%",
            rest.len(),
            percent(n)
        );
    }
    out
}

/// `n` in percent of `total` (0 when `total` is).
fn percent(n: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        n as f64 * 100.0 / total as f64
    }
}

/// The report as a JSON document (and a newline): the total, the rows [`render`] lists, in
/// its order, and what it sums on its last line.
///
/// ```text
/// {"instructions":10,"mnemonics":[{"mnemonic":"mov","count":6,"percent":60.00}],
///  "other":{"mnemonics":2,"count":4,"percent":40.00}}
/// ```
///
/// (on one line; `"other":null` when every mnemonic is listed).
pub fn render_json(total: u64, rows: &[(&str, u64)], top: Option<usize>) -> String {
    let shown = top.unwrap_or(usize::MAX).min(rows.len());
    let rest = &rows[shown..];
    let pct = |n: u64| move |w: &mut Vec<u8>| write!(w, "{:.2}", percent(n, total));
    let mut out = Vec::new();
    let written: io::Result<()> = (|| {
        let mut o = Object::new(&mut out)?;
        o.int("instructions", total)?.raw("mnemonics", |w| {
            w.write_all(b"[")?;
            for (i, &(m, n)) in rows[..shown].iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                Object::new(w)?
                    .str("mnemonic", m)?
                    .int("count", n)?
                    .raw("percent", pct(n))?
                    .end()?;
            }
            w.write_all(b"]")
        })?;
        if rest.is_empty() {
            o.null("other")?;
        } else {
            let n: u64 = rest.iter().map(|r| r.1).sum();
            o.raw("other", |w| {
                Object::new(w)?
                    .int("mnemonics", rest.len() as u64)?
                    .int("count", n)?
                    .raw("percent", pct(n))?
                    .end()
            })?;
        }
        o.end()?;
        out.push(b'\n');
        Ok(())
    })();
    written.expect("writing to a Vec does not fail");
    String::from_utf8(out).expect("JSON text is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(m: &[&'static str], entries: u64) -> BlockStats {
        BlockStats {
            mnemonics: m.to_vec(),
            entries,
        }
    }

    #[test]
    fn multiplies_block_mnemonics_by_entries() {
        let blocks = [
            block(&["push", "mov", "call"], 1),
            block(&["mov", "add", "cmp", "jne"], 10),
            block(&["xor", "ret"], 0), // translated, never entered
            block(&["mov", "ret"], 3),
        ];
        let (total, rows) = histogram(&blocks);
        assert_eq!(total, 3 + 40 + 6);
        assert_eq!(
            rows,
            [
                ("mov", 14),
                ("add", 10),
                ("cmp", 10),
                ("jne", 10),
                ("ret", 3),
                ("call", 1),
                ("push", 1)
            ]
        );
    }

    #[test]
    fn report_with_and_without_top() {
        let rows = [("mov", 6), ("add", 3), ("ret", 1)];
        assert_eq!(
            render(10, &rows, None),
            "instructions 10\n# mnemonic count percent\n\
             mov                     6  60.00%\n\
             add                     3  30.00%\n\
             ret                     1  10.00%\n"
        );
        assert_eq!(
            render(10, &rows, Some(1)),
            "instructions 10\n# mnemonic count percent\n\
             mov                     6  60.00%\n\
             # 2 other mnemonics: 4 instructions 40.00%\n"
        );
        assert_eq!(
            render(0, &[], Some(5)),
            "instructions 0\n# mnemonic count percent\n"
        );
    }

    #[test]
    fn json_report_with_and_without_top() {
        let rows = [("mov", 6), ("add", 3), ("ret", 1)];
        assert_eq!(
            render_json(10, &rows, None),
            concat!(
                r#"{"instructions":10,"mnemonics":["#,
                r#"{"mnemonic":"mov","count":6,"percent":60.00},"#,
                r#"{"mnemonic":"add","count":3,"percent":30.00},"#,
                r#"{"mnemonic":"ret","count":1,"percent":10.00}],"other":null}"#,
                "\n"
            )
        );
        assert_eq!(
            render_json(10, &rows, Some(1)),
            concat!(
                r#"{"instructions":10,"mnemonics":[{"mnemonic":"mov","count":6,"percent":60.00}],"#,
                r#""other":{"mnemonics":2,"count":4,"percent":40.00}}"#,
                "\n"
            )
        );
        assert_eq!(
            render_json(0, &[], Some(5)),
            "{\"instructions\":0,\"mnemonics\":[],\"other\":null}\n"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(parse_format(None), Ok(false));
        assert_eq!(parse_format(Some("json")), Ok(true));
        let e = parse_format(Some("xml")).unwrap_err();
        assert!(
            e.contains("opstats") && e.contains("format=xml") && e.contains("format=json"),
            "{e}"
        );
    }
}
