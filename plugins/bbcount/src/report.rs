//! Block counts into the report: hottest first,
//! `count 0xstart-0xend symbol+0xoffset module`.

use std::fmt::Write;

use qbdi_sdk::Symbol;

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

/// The report of `blocks` (`(start, block)`): a summary line, then the entered blocks,
/// highest count first (ties by address), `top` of them at most.
pub fn render(blocks: &[(u64, &Block)], top: Option<usize>) -> String {
    let mut entered: Vec<&(u64, &Block)> = blocks.iter().filter(|(_, b)| b.count > 0).collect();
    entered.sort_unstable_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
    let total: u64 = entered.iter().map(|(_, b)| b.count).sum();
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
}
