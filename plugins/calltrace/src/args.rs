//! Decoding arguments and return values by their [`Ty`], and showing them as ltrace does.
//!
//! - integers: `int`, `long` in signed decimal, `unsigned`, `size_t` in decimal (an `int`
//!   is the register's low 32 bits);
//! - pointers in hexadecimal, `NULL` for 0;
//! - strings quoted with C escapes (`\n`, `\"`, `\033` in octal for other bytes that are
//!   not printable ASCII), cut after [`MAX_STRING`] bytes with `...` after the closing
//!   quote; a pointer that cannot be read is shown as a pointer;
//! - buffers with a length (`write`'s) the same way, over their length;
//! - characters as `'c'`, flags by name (`O_RDONLY|O_CLOEXEC`, unknown bits in hex), named
//!   constants by name (`SEEK_SET`, `SIGINT`), modes in octal;
//! - `double` and `float` from the xmm registers, as Rust prints them (`1.5`, `2.0`);
//! - a `printf` format's variadic arguments by its conversions (`%d`, `%s`, `%f`...),
//!   from the registers left, then from the stack, at most [`MAX_VARARGS`] of them.
//!
//! Strings are read at the call (arguments) or at the return (a returned `char *`), with
//! one bounded read each (see [`crate::mem`]).

use std::fmt::Write as _;

use crate::mem::Memory;
use crate::protos::{EnumSet, FlagSet, OPEN_WITH_MODE, Proto, Ty};

/// Bytes of a string shown before it is cut.
pub const MAX_STRING: usize = 32;
/// Bytes of a `printf` format read to find its conversions.
const MAX_FORMAT: usize = 256;
/// Variadic arguments decoded from a format.
pub const MAX_VARARGS: usize = 12;
/// Argument words on the stack read for variadic arguments.
const STACK_WORDS: usize = 16;

/// A decoded argument or return value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// Its type's name (see [`Ty::name`]).
    pub ty: &'static str,
    /// How it is shown (`"LS_COLORS"`, `O_RDONLY`, `NULL`, `12`).
    pub text: String,
    /// The register or stack word it came from (a `double`'s bits).
    pub raw: u64,
}

impl Value {
    /// A word shown in hexadecimal (a function without a prototype).
    pub fn hex(raw: u64) -> Value {
        Value {
            ty: Ty::Hex.name(),
            text: format!("{raw:#x}"),
            raw,
        }
    }
}

/// The argument registers at a call.
#[derive(Clone, Debug, Default)]
pub struct Regs {
    /// rdi, rsi, rdx, rcx, r8, r9.
    pub gp: [u64; 6],
    /// xmm0..xmm7.
    pub xmm: [[u8; 16]; 8],
    /// Where the arguments passed on the stack start (the first one above the return
    /// address).
    pub stack: u64,
}

/// The three first argument registers in hexadecimal: what a function without a prototype
/// shows.
pub fn unknown_args(gp: &[u64; 6]) -> Vec<Value> {
    gp[..3].iter().map(|&r| Value::hex(r)).collect()
}

/// Decodes the arguments of a call to a function with prototype `proto` (`None`: not in the
/// table, see [`unknown_args`]).
pub fn decode_args(proto: Option<&Proto>, regs: &Regs, mem: &impl Memory) -> Vec<Value> {
    let Some(proto) = proto else {
        return unknown_args(&regs.gp);
    };
    let mut out = Vec::with_capacity(proto.args.len());
    // The raw words of the integer arguments, by argument index (for Buf and OpenMode).
    let mut raws = [0u64; 8];
    let (mut gi, mut xi) = (0, 0);
    for (i, &ty) in proto.args.iter().enumerate() {
        if ty.is_float() {
            let x = regs.xmm.get(xi).copied().unwrap_or_default();
            xi += 1;
            out.push(float_value(ty, x));
            continue;
        }
        let raw = regs.gp.get(gi).copied().unwrap_or_default();
        gi += 1;
        if let Some(r) = raws.get_mut(i) {
            *r = raw;
        }
        let text = match ty {
            Ty::OpenMode => {
                let flags = i.checked_sub(1).map(|j| raws[j]).unwrap_or_default() as u32;
                if flags & OPEN_WITH_MODE == 0 {
                    continue;
                }
                octal(raw as u32)
            }
            Ty::Buf(n) => {
                let len = regs.gp.get(usize::from(n)).copied().unwrap_or_default();
                buffer(raw, len, mem)
            }
            Ty::Items => {
                let size = regs.gp.get(gi).copied().unwrap_or_default();
                let count = regs.gp.get(gi + 1).copied().unwrap_or_default();
                buffer(raw, size.saturating_mul(count), mem)
            }
            Ty::Format | Ty::ScanFormat => {
                let (text, fmt) = format_string(raw, mem);
                out.push(Value {
                    ty: ty.name(),
                    text,
                    raw,
                });
                if let Some(fmt) = fmt {
                    let mut va = VarArgs {
                        regs,
                        mem,
                        gi,
                        xi,
                        si: 0,
                        stack: None,
                    };
                    if ty == Ty::Format {
                        printf_args(&fmt, &mut va, &mut out);
                    } else {
                        scanf_args(&fmt, &mut va, &mut out);
                    }
                }
                break;
            }
            _ => show(ty, raw, mem),
        };
        out.push(Value {
            ty: ty.name(),
            text,
            raw,
        });
    }
    out
}

/// Decodes a return value: `rax` for integers and pointers, `xmm0` for floating point.
/// `ret` is the prototype's return type (`None`: no prototype, rax in hexadecimal).
pub fn decode_return(ret: Option<Ty>, rax: u64, xmm0: [u8; 16], mem: &impl Memory) -> Value {
    match ret {
        None => Value::hex(rax),
        Some(Ty::Void) => Value {
            ty: Ty::Void.name(),
            text: "<void>".into(),
            raw: rax,
        },
        Some(ty) if ty.is_float() => float_value(ty, xmm0),
        Some(ty) => Value {
            ty: ty.name(),
            text: show(ty, rax, mem),
            raw: rax,
        },
    }
}

fn float_value(ty: Ty, x: [u8; 16]) -> Value {
    let bits = u64::from_le_bytes(x[..8].try_into().expect("8 bytes"));
    let text = if ty == Ty::Float {
        format!("{:?}", f32::from_bits(bits as u32))
    } else {
        format!("{:?}", f64::from_bits(bits))
    };
    Value {
        ty: ty.name(),
        text,
        raw: if ty == Ty::Float {
            bits & 0xffff_ffff
        } else {
            bits
        },
    }
}

/// Shows a word of integer type `ty` (not a floating-point one, nor `Buf`/`Items`).
pub fn show(ty: Ty, raw: u64, mem: &impl Memory) -> String {
    match ty {
        Ty::Int | Ty::Fd => (raw as i32).to_string(),
        Ty::DirFd => match raw as i32 {
            -100 => "AT_FDCWD".into(),
            fd => fd.to_string(),
        },
        Ty::Uint => (raw as u32).to_string(),
        Ty::Long => (raw as i64).to_string(),
        Ty::Ulong | Ty::Size => raw.to_string(),
        Ty::Ptr => pointer(raw),
        Ty::Str | Ty::Format | Ty::ScanFormat => string(raw, mem),
        Ty::Char => char_literal(raw as i32),
        Ty::Mode | Ty::OpenMode => octal(raw as u32),
        Ty::Flags(set) => flags(set, raw as u32),
        Ty::Enum(set) => constant(set, raw),
        Ty::Void | Ty::Hex | Ty::Double | Ty::Float | Ty::Buf(_) | Ty::Items => {
            format!("{raw:#x}")
        }
    }
}

/// A mode in C's octal: `0644`.
pub fn octal(mode: u32) -> String {
    if mode == 0 {
        "0".into()
    } else {
        format!("0{mode:o}")
    }
}

/// A pointer: hexadecimal, `NULL` for 0.
pub fn pointer(raw: u64) -> String {
    if raw == 0 {
        "NULL".into()
    } else {
        format!("{raw:#x}")
    }
}

/// The string at `addr`, quoted and cut (see the module docs); `NULL`, or the address when
/// nothing can be read there.
pub fn string(addr: u64, mem: &impl Memory) -> String {
    if addr == 0 {
        return "NULL".into();
    }
    let mut buf = [0u8; MAX_STRING + 1];
    let n = mem.read(addr, &mut buf);
    if n == 0 {
        return format!("{addr:#x}");
    }
    let bytes = &buf[..n];
    match bytes.iter().position(|&b| b == 0) {
        Some(end) => quote(&bytes[..end], false),
        // No terminator within what was read: longer than shown, or unreadable past it.
        None => quote(&bytes[..n.min(MAX_STRING)], true),
    }
}

/// `len` bytes at `addr` shown as a string (at most [`MAX_STRING`] of them).
fn buffer(addr: u64, len: u64, mem: &impl Memory) -> String {
    if addr == 0 {
        return "NULL".into();
    }
    let want = len.min(MAX_STRING as u64) as usize;
    let mut buf = [0u8; MAX_STRING];
    let n = if want == 0 {
        0
    } else {
        mem.read(addr, &mut buf[..want])
    };
    if n == 0 && want > 0 {
        return format!("{addr:#x}");
    }
    quote(&buf[..n], (n as u64) < len)
}

/// `bytes` quoted with C escapes; `...` after the closing quote when `cut`.
pub fn quote(bytes: &[u8], cut: bool) -> String {
    let mut s = String::with_capacity(bytes.len() + 5);
    s.push('"');
    for &b in bytes {
        escape(b, b'"', &mut s);
    }
    s.push('"');
    if cut {
        s.push_str("...");
    }
    s
}

/// Appends byte `b` as it is written in a C literal delimited by `delim`.
fn escape(b: u8, delim: u8, s: &mut String) {
    match b {
        b'\n' => s.push_str("\\n"),
        b'\t' => s.push_str("\\t"),
        b'\r' => s.push_str("\\r"),
        0x07 => s.push_str("\\a"),
        0x08 => s.push_str("\\b"),
        0x0b => s.push_str("\\v"),
        0x0c => s.push_str("\\f"),
        b'\\' => s.push_str("\\\\"),
        _ if b == delim => {
            s.push('\\');
            s.push(char::from(b));
        }
        0x20..=0x7e => s.push(char::from(b)),
        _ => {
            let _ = write!(s, "\\{b:03o}");
        }
    }
}

/// A character passed as an `int`: `'a'`, `'\n'`; `EOF` for -1, a number outside a byte.
pub fn char_literal(c: i32) -> String {
    match c {
        -1 => "EOF".into(),
        0..=255 => {
            let mut s = String::from("'");
            escape(c as u8, b'\'', &mut s);
            s.push('\'');
            s
        }
        _ => c.to_string(),
    }
}

/// Bit flags by name: the field's value first, then the flags, then unknown bits in hex.
pub fn flags(set: &FlagSet, value: u32) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut rest = value;
    if let Some((mask, names)) = set.field {
        let v = value & mask;
        if let Some((_, name)) = names.iter().find(|(n, _)| *n == v) {
            parts.push((*name).into());
            rest &= !mask;
        }
    }
    for &(bits, name) in set.bits {
        if rest & bits == bits && bits != 0 {
            parts.push(name.into());
            rest &= !bits;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        set.zero.into()
    } else {
        parts.join("|")
    }
}

/// A named constant, or the number.
pub fn constant(set: &EnumSet, raw: u64) -> String {
    let v = if set.wide {
        raw as i64
    } else {
        i64::from(raw as i32)
    };
    match set.values.iter().find(|(n, _)| *n == v) {
        Some((_, name)) => (*name).into(),
        None if set.hex && set.wide => format!("{raw:#x}"),
        None if set.hex => format!("{:#x}", raw as u32),
        None => v.to_string(),
    }
}

/// A format's text (quoted and cut) and its bytes up to the terminator (`None`: not
/// readable, or longer than [`MAX_FORMAT`]: the variadic arguments are not decoded).
fn format_string(addr: u64, mem: &impl Memory) -> (String, Option<Vec<u8>>) {
    if addr == 0 {
        return ("NULL".into(), None);
    }
    let mut buf = vec![0u8; MAX_FORMAT];
    let n = mem.read(addr, &mut buf);
    if n == 0 {
        return (format!("{addr:#x}"), None);
    }
    buf.truncate(n);
    match buf.iter().position(|&b| b == 0) {
        Some(end) => {
            buf.truncate(end);
            let text = quote(&buf[..end.min(MAX_STRING)], end > MAX_STRING);
            (text, Some(buf))
        }
        None => (quote(&buf[..n.min(MAX_STRING)], true), None),
    }
}

/// Where the next variadic arguments come from.
struct VarArgs<'a, M: Memory> {
    regs: &'a Regs,
    mem: &'a M,
    /// Next integer register, next xmm register, next stack word.
    gi: usize,
    xi: usize,
    si: usize,
    /// The stack's argument words, read on first use (`None`: not yet).
    stack: Option<Vec<u64>>,
}

impl<M: Memory> VarArgs<'_, M> {
    fn stack_word(&mut self) -> Option<u64> {
        let (mem, base) = (self.mem, self.regs.stack);
        let words = self.stack.get_or_insert_with(|| {
            let mut buf = [0u8; STACK_WORDS * 8];
            let n = mem.read(base, &mut buf);
            buf[..n - n % 8]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        });
        let w = words.get(self.si).copied();
        self.si += 1;
        w
    }

    /// The next integer-class argument.
    fn int(&mut self) -> Option<u64> {
        if let Some(&r) = self.regs.gp.get(self.gi) {
            self.gi += 1;
            return Some(r);
        }
        self.stack_word()
    }

    /// The next floating-point argument (as the low 8 bytes of an xmm register).
    fn float(&mut self) -> Option<[u8; 16]> {
        if let Some(&x) = self.regs.xmm.get(self.xi) {
            self.xi += 1;
            return Some(x);
        }
        let w = self.stack_word()?;
        let mut x = [0u8; 16];
        x[..8].copy_from_slice(&w.to_le_bytes());
        Some(x)
    }
}

/// One conversion of a format: what it takes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Conv {
    /// `*` width or precision, `%c`, `%d` without `l`: an `int`.
    Int,
    /// `%d` with `l`, `ll`, `j`, `z`, `t`.
    Long,
    /// `%u` (`unsigned`, or `unsigned long` with a long modifier).
    Unsigned(bool),
    /// `%x`, `%X`, `%o` (long or not).
    Hex(bool),
    /// `%c`.
    Char,
    /// `%s`.
    Str,
    /// `%p`, `%n`, `%ls`: a pointer.
    Ptr,
    /// `%f` and the others: a double.
    Double,
}

/// The conversions of a `printf` format, in order; `None` at the end when the rest cannot
/// be decoded (positional arguments, `long double`, an unknown conversion).
fn conversions(fmt: &[u8]) -> Vec<Option<Conv>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < fmt.len() {
        if fmt[i] != b'%' {
            i += 1;
            continue;
        }
        i += 1;
        if fmt.get(i) == Some(&b'%') {
            i += 1;
            continue;
        }
        // Flags, width, precision.
        while i < fmt.len() && b"-+ #0'I".contains(&fmt[i]) {
            i += 1;
        }
        let mut stars = 0;
        let mut spec = |i: &mut usize| {
            if fmt.get(*i) == Some(&b'*') {
                stars += 1;
                *i += 1;
            } else {
                while fmt.get(*i).is_some_and(u8::is_ascii_digit) {
                    *i += 1;
                }
            }
        };
        spec(&mut i);
        if fmt.get(i) == Some(&b'$') {
            out.push(None);
            return out;
        }
        if fmt.get(i) == Some(&b'.') {
            i += 1;
            spec(&mut i);
        }
        out.extend(std::iter::repeat_n(Some(Conv::Int), stars));
        // Length modifiers.
        let mut long = false;
        let mut long_double = false;
        while let Some(&c) = fmt.get(i) {
            match c {
                b'h' => {}
                b'l' | b'j' | b'z' | b'Z' | b't' | b'q' => long = true,
                b'L' => long_double = true,
                _ => break,
            }
            i += 1;
        }
        let Some(&c) = fmt.get(i) else {
            break;
        };
        i += 1;
        let conv = match c {
            b'd' | b'i' if long => Conv::Long,
            b'd' | b'i' => Conv::Int,
            b'u' => Conv::Unsigned(long),
            b'x' | b'X' | b'o' => Conv::Hex(long),
            b'c' if long => Conv::Int,
            b'c' => Conv::Char,
            b's' if long => Conv::Ptr,
            b's' => Conv::Str,
            b'p' | b'n' | b'S' => Conv::Ptr,
            b'C' => Conv::Int,
            b'm' => continue,
            b'f' | b'F' | b'e' | b'E' | b'g' | b'G' | b'a' | b'A' if !long_double => Conv::Double,
            _ => {
                out.push(None);
                return out;
            }
        };
        out.push(Some(conv));
    }
    out
}

/// Appends the variadic arguments of a `printf` format.
fn printf_args<M: Memory>(fmt: &[u8], va: &mut VarArgs<'_, M>, out: &mut Vec<Value>) {
    for (n, conv) in conversions(fmt).into_iter().enumerate() {
        let Some(conv) = conv.filter(|_| n < MAX_VARARGS) else {
            out.push(more());
            return;
        };
        let v = if conv == Conv::Double {
            va.float().map(|x| float_value(Ty::Double, x))
        } else {
            va.int().map(|raw| {
                let (ty, text) = match conv {
                    Conv::Int => (Ty::Int, show(Ty::Int, raw, va.mem)),
                    Conv::Long => (Ty::Long, show(Ty::Long, raw, va.mem)),
                    Conv::Unsigned(false) => (Ty::Uint, show(Ty::Uint, raw, va.mem)),
                    Conv::Unsigned(true) => (Ty::Ulong, show(Ty::Ulong, raw, va.mem)),
                    Conv::Hex(false) => (Ty::Hex, format!("{:#x}", raw as u32)),
                    Conv::Hex(true) => (Ty::Hex, format!("{raw:#x}")),
                    Conv::Char => (Ty::Char, char_literal(raw as i32)),
                    Conv::Str => (Ty::Str, string(raw, va.mem)),
                    Conv::Ptr | Conv::Double => (Ty::Ptr, pointer(raw)),
                };
                Value {
                    ty: ty.name(),
                    text,
                    raw,
                }
            })
        };
        match v {
            Some(v) => out.push(v),
            None => {
                out.push(more());
                return;
            }
        }
    }
}

/// Appends the variadic arguments of a `scanf` format: one pointer per conversion that
/// stores (not `%%`, not `%*d`).
fn scanf_args<M: Memory>(fmt: &[u8], va: &mut VarArgs<'_, M>, out: &mut Vec<Value>) {
    let mut count = 0;
    let mut i = 0;
    while i < fmt.len() {
        if fmt[i] == b'%' {
            match fmt.get(i + 1) {
                Some(b'%') => i += 1,
                Some(b'*') => {}
                Some(_) => count += 1,
                None => {}
            }
        }
        i += 1;
    }
    for n in 0..count {
        match va.int().filter(|_| n < MAX_VARARGS) {
            Some(raw) => out.push(Value {
                ty: Ty::Ptr.name(),
                text: pointer(raw),
                raw,
            }),
            None => {
                out.push(more());
                return;
            }
        }
    }
}

/// The mark of variadic arguments not decoded: `...`.
fn more() -> Value {
    Value {
        ty: "more",
        text: "...".into(),
        raw: 0,
    }
}

/// The argument list as the text lines show it: `a, b, c`.
pub fn join(args: &[Value]) -> String {
    let mut s = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&a.text);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protos::{self, lookup};

    /// Guest memory for the tests: a few regions.
    struct Fake(Vec<(u64, Vec<u8>)>);

    impl Memory for Fake {
        fn read(&self, addr: u64, buf: &mut [u8]) -> usize {
            for (base, bytes) in &self.0 {
                if addr >= *base && addr < base + bytes.len() as u64 {
                    let from = &bytes[(addr - base) as usize..];
                    let n = from.len().min(buf.len());
                    buf[..n].copy_from_slice(&from[..n]);
                    return n;
                }
            }
            0
        }
    }

    fn cstr(s: &[u8]) -> Vec<u8> {
        let mut v = s.to_vec();
        v.push(0);
        v
    }

    fn texts(v: &[Value]) -> Vec<&str> {
        v.iter().map(|a| a.text.as_str()).collect()
    }

    fn regs(gp: &[u64]) -> Regs {
        let mut r = Regs::default();
        r.gp[..gp.len()].copy_from_slice(gp);
        r
    }

    #[test]
    fn strings_are_escaped_and_cut() {
        let long = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mem = Fake(vec![
            (0x1000, cstr(b"LS_COLORS")),
            (0x2000, cstr(b"a\"b\\c\n\t\x1b\xc3\xa9'")),
            (0x3000, cstr(long)),
            (0x4000, cstr(&long[..32])),
            // No terminator before an unreadable page.
            (0x5000, b"abc".to_vec()),
        ]);
        assert_eq!(string(0x1000, &mem), r#""LS_COLORS""#);
        assert_eq!(string(0x2000, &mem), r#""a\"b\\c\n\t\033\303\251'""#);
        assert_eq!(
            string(0x3000, &mem),
            r#""0123456789abcdefghijklmnopqrstuv"..."#
        );
        assert_eq!(
            string(0x4000, &mem),
            r#""0123456789abcdefghijklmnopqrstuv""#
        );
        assert_eq!(string(0x5000, &mem), r#""abc"..."#);
        assert_eq!(string(0, &mem), "NULL");
        assert_eq!(string(0xdead, &mem), "0xdead");
    }

    #[test]
    fn chars_and_integers() {
        let mem = Fake(vec![]);
        assert_eq!(char_literal(i32::from(b'a')), "'a'");
        assert_eq!(char_literal(i32::from(b'\'')), r"'\''");
        assert_eq!(char_literal(i32::from(b'"')), "'\"'");
        assert_eq!(char_literal(0), r"'\000'");
        assert_eq!(char_literal(-1), "EOF");
        assert_eq!(show(Ty::Int, 0xffff_ffff_ffff_fffa, &mem), "-6");
        // The upper half of an int's register is not its value.
        assert_eq!(show(Ty::Int, 0xdead_0000_0005, &mem), "5");
        assert_eq!(show(Ty::Long, u64::MAX, &mem), "-1");
        assert_eq!(show(Ty::Size, 4096, &mem), "4096");
        assert_eq!(show(Ty::Ptr, 0, &mem), "NULL");
        assert_eq!(show(Ty::Ptr, 0x7f00, &mem), "0x7f00");
        assert_eq!(show(Ty::DirFd, (-100i64) as u64, &mem), "AT_FDCWD");
        assert_eq!(show(Ty::Mode, 0o644, &mem), "0644");
    }

    #[test]
    fn flags_and_constants_by_name() {
        let open = &protos::OPEN_FLAGS;
        assert_eq!(flags(open, 0), "O_RDONLY");
        assert_eq!(flags(open, 0o2000000), "O_RDONLY|O_CLOEXEC");
        assert_eq!(
            flags(open, 0o1 | 0o100 | 0o1000),
            "O_WRONLY|O_CREAT|O_TRUNC"
        );
        assert_eq!(flags(open, 0o4010002), "O_RDWR|O_SYNC");
        assert_eq!(flags(open, 0o20200002), "O_RDWR|O_TMPFILE");
        assert_eq!(
            flags(open, 0o200000 | 0o40000000),
            "O_RDONLY|O_DIRECTORY|0x800000"
        );
        assert_eq!(flags(&protos::PROT_FLAGS, 0), "PROT_NONE");
        assert_eq!(flags(&protos::PROT_FLAGS, 3), "PROT_READ|PROT_WRITE");
        assert_eq!(flags(&protos::MAP_FLAGS, 0x22), "MAP_PRIVATE|MAP_ANONYMOUS");
        assert_eq!(flags(&protos::MAP_FLAGS, 0x11), "MAP_SHARED|MAP_FIXED");
        assert_eq!(flags(&protos::ACCESS_MODE, 0), "F_OK");
        assert_eq!(flags(&protos::ACCESS_MODE, 6), "R_OK|W_OK");
        assert_eq!(constant(&protos::SIGNAL, 2), "SIGINT");
        assert_eq!(constant(&protos::SIGNAL, 40), "40");
        assert_eq!(constant(&protos::SIG_HANDLER, u64::MAX), "SIG_ERR");
        assert_eq!(constant(&protos::SIG_HANDLER, 0x401000), "0x401000");
        assert_eq!(constant(&protos::LOCALE_CATEGORY, 6), "LC_ALL");
        assert_eq!(constant(&protos::NL_ITEM, 0x2000e), "0x2000e");
    }

    #[test]
    fn doubles_come_from_xmm() {
        let mem = Fake(vec![]);
        let mut r = Regs::default();
        r.xmm[0][..8].copy_from_slice(&2.0f64.to_le_bytes());
        r.xmm[1][..8].copy_from_slice(&0.5f64.to_le_bytes());
        r.gp[0] = 7;
        let pow = decode_args(lookup("pow"), &r, &mem);
        assert_eq!(texts(&pow), ["2.0", "0.5"]);
        assert_eq!(pow[0].ty, "double");
        assert_eq!(pow[0].raw, 2.0f64.to_bits());
        let ldexp = decode_args(lookup("ldexp"), &r, &mem);
        assert_eq!(texts(&ldexp), ["2.0", "7"]);
        let mut x = [0u8; 16];
        x[..8].copy_from_slice(&std::f64::consts::SQRT_2.to_le_bytes());
        let v = decode_return(Some(Ty::Double), 0, x, &mem);
        assert_eq!(v.text, "1.4142135623730951");
        let mut f = [0u8; 16];
        f[..4].copy_from_slice(&1.5f32.to_le_bytes());
        assert_eq!(decode_return(Some(Ty::Float), 0, f, &mem).text, "1.5");
        assert_eq!(
            decode_return(Some(Ty::Double), 0, [0; 16], &mem).text,
            "0.0"
        );
    }

    #[test]
    fn prototypes_decode_arguments_and_returns() {
        let mem = Fake(vec![
            (0x1000, cstr(b"/etc/passwd")),
            (0x2000, cstr(b"r")),
            (0x3000, b"hello\nworld".to_vec()),
        ]);
        let open = decode_args(lookup("open"), &regs(&[0x1000, 0o2000000, 0x77]), &mem);
        assert_eq!(texts(&open), [r#""/etc/passwd""#, "O_RDONLY|O_CLOEXEC"]);
        let creat = decode_args(
            lookup("openat"),
            &regs(&[-100i64 as u64, 0x1000, 0o101, 0o644]),
            &mem,
        );
        assert_eq!(
            texts(&creat),
            ["AT_FDCWD", r#""/etc/passwd""#, "O_WRONLY|O_CREAT", "0644"]
        );
        let fopen = decode_args(lookup("fopen"), &regs(&[0x1000, 0x2000]), &mem);
        assert_eq!(texts(&fopen), [r#""/etc/passwd""#, r#""r""#]);
        assert_eq!(fopen[0].ty, "string");
        assert_eq!(fopen[0].raw, 0x1000);
        let write = decode_args(lookup("write"), &regs(&[1, 0x3000, 6]), &mem);
        assert_eq!(texts(&write), ["1", r#""hello\n""#, "6"]);
        let fwrite = decode_args(lookup("fwrite"), &regs(&[0x3000, 1, 11, 0x9000]), &mem);
        assert_eq!(texts(&fwrite)[0], r#""hello\nworld""#);
        let mmap = decode_args(
            lookup("mmap"),
            &regs(&[0, 8192, 3, 0x22, u64::from(u32::MAX), 0]),
            &mem,
        );
        assert_eq!(
            texts(&mmap),
            [
                "NULL",
                "8192",
                "PROT_READ|PROT_WRITE",
                "MAP_PRIVATE|MAP_ANONYMOUS",
                "-1",
                "0"
            ]
        );
        let getenv = lookup("getenv").map(|p| p.ret);
        assert_eq!(decode_return(getenv, 0, [0; 16], &mem).text, "NULL");
        assert_eq!(decode_return(getenv, 0x2000, [0; 16], &mem).text, r#""r""#);
        let free = lookup("free").map(|p| p.ret);
        assert_eq!(decode_return(free, 0, [0; 16], &mem).text, "<void>");
        // Without a prototype: three registers and rax in hex.
        let unknown = decode_args(None, &regs(&[1, 2, 3, 4]), &mem);
        assert_eq!(texts(&unknown), ["0x1", "0x2", "0x3"]);
        assert_eq!(decode_return(None, 10, [0; 16], &mem).text, "0xa");
    }

    #[test]
    fn printf_arguments_follow_the_format() {
        let fmt = b"%s: %5d %-lu %x %c %.*s %p %f%% %g\n";
        let mut r = Regs {
            stack: 0x7000,
            ..Regs::default()
        };
        // __fprintf_chk(stream, flag, fmt, ...): 3 of the 6 registers left.
        r.gp = [0x9000, 1, 0x1000, 0x2000, (-3i64) as u64, 42];
        r.xmm[0][..8].copy_from_slice(&1.5f64.to_le_bytes());
        r.xmm[1][..8].copy_from_slice(&0.25f64.to_le_bytes());
        let mut stack = Vec::new();
        for w in [0xffu64, u64::from(b'Z'), 2, 0x3000, 0x4000] {
            stack.extend_from_slice(&w.to_le_bytes());
        }
        let mem = Fake(vec![
            (0x1000, cstr(fmt)),
            (0x2000, cstr(b"ls")),
            (0x3000, cstr(b"abcdef")),
            (0x7000, stack),
        ]);
        let args = decode_args(lookup("__fprintf_chk"), &r, &mem);
        assert_eq!(
            texts(&args),
            [
                "0x9000",
                "1",
                // 35 bytes: cut in the text, decoded whole.
                r#""%s: %5d %-lu %x %c %.*s %p %f%% "..."#,
                r#""ls""#,
                "-3",
                "42",
                "0xff",
                "'Z'",
                "2",
                r#""abcdef""#,
                "0x4000",
                "1.5",
                "0.25",
            ]
        );
        assert_eq!(args[4].ty, "int");
        assert_eq!(args[11].ty, "double");
        // A long format is cut in the text but still decoded; an unknown conversion stops.
        let stack: Vec<u8> = (6..20u64).flat_map(u64::to_le_bytes).collect();
        let mem = Fake(vec![
            (
                0x1000,
                cstr(b"%d %d %d %d %d %d %d %d %d %d %d %d %d %d %Lf"),
            ),
            (0x7000, stack),
        ]);
        let mut r = regs(&[0x1000, 1, 2, 3, 4, 5]);
        r.stack = 0x7000;
        let args = decode_args(lookup("printf"), &r, &mem);
        assert!(args[0].text.ends_with("\"..."), "{}", args[0].text);
        assert_eq!(args.len(), 1 + MAX_VARARGS + 1);
        assert_eq!(args[6].text, "6", "the first stack argument");
        assert_eq!(args.last().unwrap().text, "...");
    }

    #[test]
    fn scanf_arguments_are_pointers() {
        let mem = Fake(vec![
            (0x1000, cstr(b"%d %*s %%%s")),
            (0x2000, cstr(b"1 x %y")),
        ]);
        let args = decode_args(
            lookup("__isoc99_sscanf"),
            &regs(&[0x2000, 0x1000, 0xa, 0xb]),
            &mem,
        );
        assert_eq!(
            texts(&args),
            [r#""1 x %y""#, r#""%d %*s %%%s""#, "0xa", "0xb"]
        );
    }

    #[test]
    fn bad_pointers_are_shown_as_addresses() {
        let mem = Fake(vec![]);
        let args = decode_args(lookup("strcmp"), &regs(&[0x10, 0]), &mem);
        assert_eq!(texts(&args), ["0x10", "NULL"]);
        let args = decode_args(lookup("printf"), &regs(&[0x10, 1]), &mem);
        assert_eq!(texts(&args), ["0x10"]);
        let args = decode_args(lookup("write"), &regs(&[1, 0x10, 5]), &mem);
        assert_eq!(texts(&args), ["1", "0x10", "5"]);
        let args = decode_args(lookup("write"), &regs(&[1, 0x10, 0]), &mem);
        assert_eq!(texts(&args), ["1", r#""""#, "0"]);
    }
}
