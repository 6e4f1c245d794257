//! The trace's lines: `0x<address> <disassembly>`, and with `regs` the general-purpose
//! registers before the instruction; with `format=jsonl`, the same as one JSON object per
//! line (see the crate's doc for the fields).

use std::io::{self, Write};

use qbdi_plugin_support::json::Object;
use qbdi_sdk::prelude::GprState;

/// The registers `regs` shows, in the order of the line.
fn registers(g: &GprState) -> [(&'static str, u64); 17] {
    [
        ("rax", g.rax),
        ("rbx", g.rbx),
        ("rcx", g.rcx),
        ("rdx", g.rdx),
        ("rsi", g.rsi),
        ("rdi", g.rdi),
        ("r8", g.r8),
        ("r9", g.r9),
        ("r10", g.r10),
        ("r11", g.r11),
        ("r12", g.r12),
        ("r13", g.r13),
        ("r14", g.r14),
        ("r15", g.r15),
        ("rbp", g.rbp),
        ("rsp", g.rsp),
        ("eflags", g.eflags),
    ]
}

/// Writes the line of the instruction at `address`; with `regs`, appends
/// ` | rax=0x.. rbx=0x.. ... rsp=0x.. eflags=0x..`.
pub fn write_line(
    w: &mut impl Write,
    address: u64,
    disassembly: &str,
    regs: Option<&GprState>,
) -> io::Result<()> {
    write!(w, "{address:#x} {disassembly}")?;
    if let Some(g) = regs {
        write!(
            w,
            " | rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} r8={:#x} r9={:#x} \
             r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x} rbp={:#x} rsp={:#x} \
             eflags={:#x}",
            g.rax,
            g.rbx,
            g.rcx,
            g.rdx,
            g.rsi,
            g.rdi,
            g.r8,
            g.r9,
            g.r10,
            g.r11,
            g.r12,
            g.r13,
            g.r14,
            g.r15,
            g.rbp,
            g.rsp,
            g.eflags
        )?;
    }
    w.write_all(b"\n")
}

/// Writes the JSON line of the instruction at `address`: `tid` is the thread of a line the
/// text form marks `[tid N] ` (`None`: not marked), `regs` the registers with `regs`
/// (`None`: `"regs":null`).
pub fn write_line_json(
    w: &mut impl Write,
    tid: Option<u32>,
    address: u64,
    disassembly: &str,
    regs: Option<&GprState>,
) -> io::Result<()> {
    let mut o = Object::new(w)?;
    o.str("event", "instruction")?;
    match tid {
        Some(t) => o.int("tid", t)?,
        None => o.null("tid")?,
    };
    o.hex("address", address)?.str("disassembly", disassembly)?;
    match regs {
        Some(g) => o.raw("regs", |w| {
            let mut r = Object::new(w)?;
            for (name, value) in registers(g) {
                r.hex(name, value)?;
            }
            r.end()
        })?,
        None => o.null("regs")?,
    };
    o.end()?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_line() {
        let mut out = Vec::new();
        write_line(&mut out, 0x401000, "mov rax, rbx", None).unwrap();
        assert_eq!(out, b"0x401000 mov rax, rbx\n");
    }

    #[test]
    fn line_with_registers() {
        let g = GprState {
            rax: 1,
            rdi: 0x7ffd_0000,
            r15: 0xf,
            rsp: 0x7ffc_fff0,
            eflags: 0x246,
            ..GprState::default()
        };
        let mut out = Vec::new();
        write_line(&mut out, 0x10, "ret", Some(&g)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0x10 ret | rax=0x1 rbx=0x0 rcx=0x0 rdx=0x0 rsi=0x0 rdi=0x7ffd0000 r8=0x0 r9=0x0 \
             r10=0x0 r11=0x0 r12=0x0 r13=0x0 r14=0x0 r15=0xf rbp=0x0 rsp=0x7ffcfff0 eflags=0x246\n"
        );
    }

    #[test]
    fn json_lines() {
        let mut out = Vec::new();
        write_line_json(&mut out, None, 0x401000, "mov rax, \"x\"", None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"event":"instruction","tid":null,"address":"0x401000","disassembly":"mov rax, \"x\"","regs":null}"#
                .to_owned()
                + "\n"
        );
        let g = GprState {
            rax: 1,
            eflags: 0x246,
            ..GprState::default()
        };
        let mut out = Vec::new();
        write_line_json(&mut out, Some(7), 0x10, "ret", Some(&g)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"event":"instruction","tid":7,"address":"0x10","disassembly":"ret","regs":{"rax":"0x1","rbx":"0x0","rcx":"0x0","rdx":"0x0","rsi":"0x0","rdi":"0x0","r8":"0x0","r9":"0x0","r10":"0x0","r11":"0x0","r12":"0x0","r13":"0x0","r14":"0x0","r15":"0x0","rbp":"0x0","rsp":"0x0","eflags":"0x246"}}"#
                .to_owned()
                + "\n"
        );
        let mut out = Vec::new();
        qbdi_plugin_support::json::write_stopped(&mut out, 5).unwrap();
        assert_eq!(out, b"{\"event\":\"stopped\",\"max\":5}\n");
    }
}
