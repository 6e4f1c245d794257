//! Block counts into the report: hottest first,
//! `count 0xstart-0xend symbol+0xoffset module`; with `format=json`, the same as one JSON
//! document (see the crate's doc for the fields).

use std::fmt::Write;
use std::io::{self, Write as _};

use qbdi_plugin_support::json::{Format, Object};
use qbdi_sdk::Symbol;

/// The plugin's `format` option: `text` (the default) or `json` (true); the error names the
/// value and the accepted ones.
pub fn parse_format(value: Option<&str>) -> Result<bool, String> {
    Format::parse_among("bbcount", value, &[Format::Text, Format::Json]).map(|f| f == Format::Json)
}

/// What the plugin keeps per block start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Block {
    /// End of the block (exclusive; the last one seen for this start).
    pub end: u64,
    /// Entries.
    pub count: u64,
    /// The symbol of the start, resolved when the block was new.
    pub symbol: Option<Symbol>,
}

/// `name+0xoff module`, with `?` for what is unknown.
fn location(symbol: Option<&Symbol>) -> String {
    let Some(s) = symbol else {
        return "? ?".to_owned();
    };
    let name = if s.name.is_empty() { "?" } else { &s.name };
    let module = if s.module.is_empty() { "?" } else { &s.module };
    if s.offset == 0 || s.name.is_empty() {
        format!("{name} {module}")
    } else {
        format!("{name}+{:#x} {module}", s.offset)
    }
}

/// The entered blocks of `blocks`, highest count first (ties by address), and the sum of
/// their counts.
fn entered<'a>(blocks: &'a [(u64, &'a Block)]) -> (Vec<&'a (u64, &'a Block)>, u64) {
    let mut entered: Vec<&(u64, &Block)> = blocks.iter().filter(|(_, b)| b.count > 0).collect();
    entered.sort_unstable_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
    let total: u64 = entered.iter().map(|(_, b)| b.count).sum();
    (entered, total)
}

/// The report of `blocks` (`(start, block)`): a summary line, then the entered blocks,
/// highest count first (ties by address), `top` of them at most.
pub fn render(blocks: &[(u64, &Block)], top: Option<usize>) -> String {
    let (entered, total) = entered(blocks);
    let mut out = format!(
        "# {} blocks entered {total} times; count start-end symbol module\n",
        entered.len()
    );
    for (start, b) in entered.iter().take(top.unwrap_or(usize::MAX)) {
        let _ = writeln!(
            out,
            "{} {start:#x}-{:#x} {}",
            b.count,
            b.end,
            location(b.symbol.as_ref())
        );
    }
    out
}

/// The report of `blocks` as a JSON document (and a newline): the summary's figures, then
/// the blocks [`render`] lists, in its order.
///
/// ```text
/// {"entered_blocks":2,"entries":105,"blocks":[
///  {"count":100,"start":"0x401010","end":"0x401030","symbol":"main","offset":16,"module":"prog"},
///  {"count":5,"start":"0x2000","end":"0x2010","symbol":null,"offset":null,"module":null}]}
/// ```
///
/// (on one line).
pub fn render_json(blocks: &[(u64, &Block)], top: Option<usize>) -> String {
    let (entered, total) = entered(blocks);
    let mut out = Vec::new();
    let written: io::Result<()> = (|| {
        Object::new(&mut out)?
            .int("entered_blocks", entered.len() as u64)?
            .int("entries", total)?
            .raw("blocks", |w| {
                w.write_all(b"[")?;
                for (i, (start, b)) in entered.iter().take(top.unwrap_or(usize::MAX)).enumerate() {
                    if i > 0 {
                        w.write_all(b",")?;
                    }
                    let mut o = Object::new(w)?;
                    o.int("count", b.count)?
                        .hex("start", *start)?
                        .hex("end", b.end)?;
                    let s = b.symbol.as_ref();
                    match s.filter(|s| !s.name.is_empty()) {
                        Some(s) => o.str("symbol", &s.name)?.int("offset", s.offset)?,
                        None => o.null("symbol")?.null("offset")?,
                    };
                    match s.filter(|s| !s.module.is_empty()) {
                        Some(s) => o.str("module", &s.module)?,
                        None => o.null("module")?,
                    };
                    o.end()?;
                }
                w.write_all(b"]")
            })?
            .end()?;
        out.push(b'\n');
        Ok(())
    })();
    written.expect("writing to a Vec does not fail");
    String::from_utf8(out).expect("JSON text is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, offset: u32, module: &str) -> Option<Symbol> {
        Some(Symbol {
            name: name.into(),
            offset,
            module: module.into(),
        })
    }

    fn block(end: u64, count: u64, symbol: Option<Symbol>) -> Block {
        Block { end, count, symbol }
    }

    #[test]
    fn hottest_first_with_symbols() {
        let a = block(0x401010, 5, sym("main", 0, "prog"));
        let b = block(0x401030, 100, sym("main", 0x10, "prog"));
        let c = block(0x7f0000000040, 5, sym("", 0, "libc.so.6"));
        let d = block(0x2010, 1, None);
        let never = block(0x5010, 0, None);
        let blocks = [
            (0x401000, &a),
            (0x401010, &b),
            (0x7f0000000000, &c),
            (0x2000, &d),
            (0x5000, &never),
        ];
        assert_eq!(
            render(&blocks, None),
            "# 4 blocks entered 111 times; count start-end symbol module\n\
             100 0x401010-0x401030 main+0x10 prog\n\
             5 0x401000-0x401010 main prog\n\
             5 0x7f0000000000-0x7f0000000040 ? libc.so.6\n\
             1 0x2000-0x2010 ? ?\n"
        );
        assert_eq!(
            render(&blocks, Some(1)),
            "# 4 blocks entered 111 times; count start-end symbol module\n\
             100 0x401010-0x401030 main+0x10 prog\n"
        );
    }

    #[test]
    fn json_report() {
        let a = block(0x401030, 100, sym("main", 0x10, "prog"));
        let b = block(0x401010, 5, sym("main", 0, "prog"));
        let c = block(0x7f0000000040, 5, sym("", 0, "libc.so.6"));
        let d = block(0x2010, 1, None);
        let never = block(0x5010, 0, None);
        let blocks = [
            (0x401010, &a),
            (0x401000, &b),
            (0x7f0000000000, &c),
            (0x2000, &d),
            (0x5000, &never),
        ];
        assert_eq!(
            render_json(&blocks, None),
            concat!(
                r#"{"entered_blocks":4,"entries":111,"blocks":["#,
                r#"{"count":100,"start":"0x401010","end":"0x401030","symbol":"main","offset":16,"module":"prog"},"#,
                r#"{"count":5,"start":"0x401000","end":"0x401010","symbol":"main","offset":0,"module":"prog"},"#,
                r#"{"count":5,"start":"0x7f0000000000","end":"0x7f0000000040","symbol":null,"offset":null,"module":"libc.so.6"},"#,
                r#"{"count":1,"start":"0x2000","end":"0x2010","symbol":null,"offset":null,"module":null}]}"#,
                "\n"
            )
        );
        assert_eq!(
            render_json(&blocks, Some(0)),
            "{\"entered_blocks\":4,\"entries\":111,\"blocks\":[]}\n"
        );
        assert_eq!(
            render_json(&[], None),
            "{\"entered_blocks\":0,\"entries\":0,\"blocks\":[]}\n"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(parse_format(None), Ok(false));
        assert_eq!(parse_format(Some("text")), Ok(false));
        assert_eq!(parse_format(Some("json")), Ok(true));
        let e = parse_format(Some("jsonl")).unwrap_err();
        assert!(
            e.contains("bbcount") && e.contains("format=jsonl") && e.contains("format=json"),
            "{e}"
        );
    }
}
