//! Pairing native calls with their returns, and their lines (in the manner of ltrace).
//!
//! A call out of the instrumented code is printed when it returns:
//! `malloc@libc.so.6(0x10, 0x0, 0x0) = 0x55d0c1e5e2a0`. When the callee calls back into
//! instrumented code that calls out again before it returns (qsort's comparator calling
//! strcmp), the outer call is printed as `qsort@libc.so.6(..) <unfinished ...>`, the nested
//! calls follow indented, and the outer one ends with `<... qsort@libc.so.6 resumed> = 0x0`.
//!
//! Returns are matched by stack pointer: the call whose return-address slot is just below
//! the stack pointer after the return. Calls above it on the stack (left by `longjmp` or an
//! exception) are reported as left without returning. A return that matches no call but
//! lands above the innermost ones (a second return from `setjmp` after `longjmp`: the
//! `longjmp` call itself never returns) ends those calls the same way and prints nothing
//! for itself.

use std::borrow::Cow;
use std::io::{self, Write};

use qbdi_plugin_support::hash::AddrMap;
use qbdi_sdk::Symbol;

/// How far above the stack pointer at the call the stack pointer after the return may be:
/// the return address is within the first three words (the lazy-binding resolver is
/// entered with two words pushed above it), popped by the return.
const MAX_RETURN_DISTANCE: u64 = 32;

/// Functions that never return to their caller (they jump elsewhere or end the thread).
const NORETURN: [&str; 11] = [
    "longjmp",
    "_longjmp",
    "siglongjmp",
    "__longjmp_chk",
    "__libc_longjmp",
    "__libc_siglongjmp",
    "exit",
    "_exit",
    "_Exit",
    "abort",
    "pthread_exit",
];

/// A lazily bound call (see [`lazy`](crate::lazy)): its target is the dynamic loader's
/// resolver, which binds a PLT slot and jumps to the function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lazy {
    /// The slot's symbol (`puts`).
    pub name: String,
    /// Address of the GOT slot the resolver writes.
    pub got: u64,
    /// The slot's value before the call.
    pub unresolved: u64,
}

/// A call that has not returned.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Frame {
    target: u64,
    args: [u64; 3],
    rsp: u64,
    lazy: Option<Lazy>,
    /// Its `<unfinished ...>` line was written.
    printed: bool,
}

/// The calls in progress and the names of the targets seen.
#[derive(Debug, Default)]
pub struct CallTracer {
    frames: Vec<Frame>,
    labels: AddrMap<u64, String>,
    /// What starts each line (`[tid N] ` for a thread other than the main one).
    prefix: String,
}

/// How a call that did not return ended.
#[derive(Clone, Copy)]
enum NoReturn {
    Left,
    Exit,
}

impl NoReturn {
    fn text(self) -> &'static str {
        match self {
            NoReturn::Left => "left without returning",
            NoReturn::Exit => "no return before exit",
        }
    }
}

impl CallTracer {
    /// An empty tracer (for a `static`).
    pub const fn new() -> CallTracer {
        CallTracer {
            frames: Vec::new(),
            labels: AddrMap::with_hasher(std::hash::BuildHasherDefault::new()),
            prefix: String::new(),
        }
    }

    /// A tracer whose lines start with `prefix` (a thread's, as `strace -f` marks them).
    pub fn with_prefix(prefix: String) -> CallTracer {
        CallTracer {
            prefix,
            ..CallTracer::new()
        }
    }

    /// Changes what starts each line.
    pub fn set_prefix(&mut self, prefix: String) {
        self.prefix = prefix;
    }

    /// Whether `target` has a label.
    pub fn knows(&self, target: u64) -> bool {
        self.labels.contains_key(&target)
    }

    /// Names `target` (see [`label`]).
    pub fn set_label(&mut self, target: u64, label: String) {
        self.labels.insert(target, label);
    }

    /// Calls in progress.
    pub fn depth(&self) -> usize {
        self.frames.len()
    }

    /// The name of `f`'s target: its label, or `name@plt` for a lazy call.
    fn label(&self, f: &Frame) -> Cow<'_, str> {
        if let Some(l) = &f.lazy {
            return Cow::Owned(format!("{}@plt", l.name));
        }
        match self.labels.get(&f.target) {
            Some(l) => Cow::Borrowed(l),
            None => Cow::Owned(format!("{:#x}", f.target)),
        }
    }

    fn indent(&self, w: &mut impl Write, depth: usize) -> io::Result<()> {
        w.write_all(self.prefix.as_bytes())?;
        for _ in 0..depth {
            w.write_all(b"  ")?;
        }
        Ok(())
    }

    fn head(&self, w: &mut impl Write, depth: usize, f: &Frame, label: &str) -> io::Result<()> {
        self.indent(w, depth)?;
        let [a, b, c] = f.args;
        write!(w, "{label}({a:#x}, {b:#x}, {c:#x})")
    }

    fn end(
        &self,
        w: &mut impl Write,
        depth: usize,
        f: &Frame,
        label: &str,
        value: u64,
    ) -> io::Result<()> {
        if f.printed {
            self.indent(w, depth)?;
            writeln!(w, "<... {label} resumed> = {value:#x}")
        } else {
            self.head(w, depth, f, label)?;
            writeln!(w, " = {value:#x}")
        }
    }

    fn end_without_return(
        &self,
        w: &mut impl Write,
        depth: usize,
        f: &Frame,
        why: NoReturn,
    ) -> io::Result<()> {
        let label = self.label(f);
        if f.printed {
            self.indent(w, depth)?;
            writeln!(w, "<... {label} {}>", why.text())
        } else {
            self.head(w, depth, f, &label)?;
            writeln!(w, " = ? ({})", why.text())
        }
    }

    /// Whether `f` calls a function that never returns to its caller: a return that looks
    /// like its own is execution resuming elsewhere (`longjmp` from a shallow callee lands
    /// at `setjmp`'s return site a few words above it).
    fn never_returns(&self, f: &Frame) -> bool {
        let label = self.label(f);
        let name = label.split('@').next().unwrap_or_default();
        NORETURN.contains(&name)
    }

    /// A call to `target` with the argument registers `args` and the stack pointer `rsp`
    /// (at the callee's entry); `lazy` when it goes through the loader's resolver.
    pub fn call(
        &mut self,
        w: &mut impl Write,
        target: u64,
        args: [u64; 3],
        rsp: u64,
        lazy: Option<Lazy>,
    ) -> io::Result<()> {
        if let Some(top) = self.frames.last()
            && !top.printed
        {
            self.head(w, self.frames.len() - 1, top, &self.label(top))?;
            w.write_all(b" <unfinished ...>\n")?;
            self.frames.last_mut().expect("checked").printed = true;
        }
        self.frames.push(Frame {
            target,
            args,
            rsp,
            lazy,
            printed: false,
        });
        Ok(())
    }

    /// A return to instrumented code with `value` in rax and `rsp` the stack pointer after
    /// the return. A return with no call in progress is ignored. `resolve` names the
    /// function a lazy call was bound to (`None`: it stays `name@plt`).
    pub fn ret(
        &mut self,
        w: &mut impl Write,
        rsp: u64,
        value: u64,
        resolve: impl FnOnce(&Lazy) -> Option<String>,
    ) -> io::Result<()> {
        let matching = self.frames.iter().rposition(|f| {
            f.rsp < rsp && rsp - f.rsp <= MAX_RETURN_DISTANCE && !self.never_returns(f)
        });
        if matching.is_none()
            && let Some(top) = self.frames.last()
            && top.rsp < rsp
        {
            // The stack went back above the innermost calls without their returns: they
            // were unwound (longjmp); the return belongs to none of them.
            while self.frames.last().is_some_and(|f| f.rsp < rsp) {
                let f = self.frames.pop().expect("checked");
                self.end_without_return(w, self.frames.len(), &f, NoReturn::Left)?;
            }
            return Ok(());
        }
        let Some(index) = matching.or(self.frames.len().checked_sub(1)) else {
            return Ok(());
        };
        while self.frames.len() > index + 1 {
            let f = self.frames.pop().expect("above index");
            self.end_without_return(w, self.frames.len(), &f, NoReturn::Left)?;
        }
        let f = self.frames.pop().expect("index exists");
        let label = match f.lazy.as_ref().and_then(resolve) {
            Some(l) => Cow::Owned(l),
            None => self.label(&f),
        };
        self.end(w, index, &f, &label, value)
    }

    /// Ends the calls still in progress (at exit), innermost first.
    pub fn finish(&mut self, w: &mut impl Write) -> io::Result<()> {
        while let Some(f) = self.frames.pop() {
            self.end_without_return(w, self.frames.len(), &f, NoReturn::Exit)?;
        }
        Ok(())
    }
}

/// The name of a call target: `name@module`, `name+0x10@module` inside a symbol,
/// `0x7f..@module` in a module without a covering symbol, `0x7f..` elsewhere.
pub fn label(symbol: Option<&Symbol>, target: u64) -> String {
    let Some(s) = symbol else {
        return format!("{target:#x}");
    };
    let mut l = if s.name.is_empty() {
        format!("{target:#x}")
    } else if s.offset == 0 {
        s.name.clone()
    } else {
        format!("{}+{:#x}", s.name, s.offset)
    };
    if !s.module.is_empty() {
        l.push('@');
        l.push_str(&s.module);
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, offset: u32, module: &str) -> Symbol {
        Symbol {
            name: name.into(),
            offset,
            module: module.into(),
        }
    }

    #[test]
    fn labels() {
        let libc = "libc.so.6";
        assert_eq!(label(Some(&sym("malloc", 0, libc)), 1), "malloc@libc.so.6");
        assert_eq!(label(Some(&sym("f", 0x10, libc)), 1), "f+0x10@libc.so.6");
        assert_eq!(label(Some(&sym("", 0, libc)), 0x7f00), "0x7f00@libc.so.6");
        assert_eq!(label(Some(&sym("g", 0, "")), 0x7f00), "g");
        assert_eq!(label(None, 0x7f00), "0x7f00");
    }

    /// Events: `C(target, rsp)` calls with args (target >> 8, 0, 0), `R(rsp, value)`
    /// returns, `L(name, rsp)` a lazy call through the resolver, `Rr(rsp, value, bound)` a
    /// return whose lazy call resolves to `bound`.
    enum Ev {
        C(u64, u64),
        R(u64, u64),
        L(&'static str, u64),
        Rr(u64, u64, &'static str),
    }

    fn run(events: &[Ev]) -> (String, CallTracer) {
        let mut t = CallTracer::new();
        t.set_label(0x100, "malloc@libc.so.6".into());
        t.set_label(0x200, "qsort@libc.so.6".into());
        t.set_label(0x300, "strcmp@libc.so.6".into());
        let mut out = Vec::new();
        for e in events {
            match *e {
                Ev::C(target, rsp) => t.call(&mut out, target, [target >> 8, 0, 0], rsp, None),
                Ev::R(rsp, value) => t.ret(&mut out, rsp, value, |_| None),
                Ev::L(name, rsp) => {
                    let lazy = Lazy {
                        name: name.into(),
                        got: 0x4018,
                        unresolved: 0x1036,
                    };
                    t.call(&mut out, 0x7f00, [0xa, 0xb, 0xc], rsp, Some(lazy))
                }
                Ev::Rr(rsp, value, bound) => t.ret(&mut out, rsp, value, |l| {
                    assert_eq!(l.got, 0x4018);
                    Some(bound.to_owned())
                }),
            }
            .unwrap();
        }
        (String::from_utf8(out).unwrap(), t)
    }

    use Ev::{C, L, R, Rr};

    #[test]
    fn lazy_calls_are_named_by_their_plt_slot_then_by_what_it_bound() {
        let (text, t) = run(&[
            L("puts", 0x7000),
            Rr(0x7018, 6, "puts@libc.so.6"),
            L("free", 0x7000),
            R(0x7018, 0),
            L("exit", 0x7000),
        ]);
        assert_eq!(
            text,
            "puts@libc.so.6(0xa, 0xb, 0xc) = 0x6\n\
             free@plt(0xa, 0xb, 0xc) = 0x0\n"
        );
        let mut out = Vec::new();
        let mut t = t;
        t.finish(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "exit@plt(0xa, 0xb, 0xc) = ? (no return before exit)\n"
        );
    }

    #[test]
    fn flat_calls_print_at_return() {
        let (text, t) = run(&[
            C(0x100, 0x7000),
            R(0x7008, 0xabc),
            C(0x999, 0x7000),
            R(0x7008, 0),
        ]);
        assert_eq!(
            text,
            "malloc@libc.so.6(0x1, 0x0, 0x0) = 0xabc\n0x999(0x9, 0x0, 0x0) = 0x0\n"
        );
        assert_eq!(t.depth(), 0);
    }

    #[test]
    fn nested_calls_are_unfinished_then_resumed() {
        let (text, _) = run(&[
            C(0x200, 0x7000),
            C(0x300, 0x6000),
            R(0x6008, 1),
            C(0x300, 0x6000),
            R(0x6008, 2),
            R(0x7008, 0),
        ]);
        assert_eq!(
            text,
            "qsort@libc.so.6(0x2, 0x0, 0x0) <unfinished ...>\n\
             \x20 strcmp@libc.so.6(0x3, 0x0, 0x0) = 0x1\n\
             \x20 strcmp@libc.so.6(0x3, 0x0, 0x0) = 0x2\n\
             <... qsort@libc.so.6 resumed> = 0x0\n"
        );
    }

    #[test]
    fn lazy_binding_return_is_three_words_up() {
        // Entered through the resolver: two words pushed above the return address.
        let (text, t) = run(&[C(0x100, 0x7000), R(0x7018, 5)]);
        assert_eq!(text, "malloc@libc.so.6(0x1, 0x0, 0x0) = 0x5\n");
        assert_eq!(t.depth(), 0);
    }

    #[test]
    fn longjmp_over_nested_calls_ends_them() {
        let (text, t) = run(&[
            C(0x200, 0x7000),
            C(0x300, 0x6000),
            C(0x100, 0x5000),
            // The comparator longjmps out; qsort's own return comes next.
            R(0x7008, 9),
        ]);
        assert_eq!(
            text,
            "qsort@libc.so.6(0x2, 0x0, 0x0) <unfinished ...>\n\
             \x20 strcmp@libc.so.6(0x3, 0x0, 0x0) <unfinished ...>\n\
             \x20   malloc@libc.so.6(0x1, 0x0, 0x0) = ? (left without returning)\n\
             \x20 <... strcmp@libc.so.6 left without returning>\n\
             <... qsort@libc.so.6 resumed> = 0x9\n"
        );
        assert_eq!(t.depth(), 0);
    }

    #[test]
    fn longjmp_back_to_a_setjmp_site_ends_the_longjmp_call() {
        // setjmp (0x100 here) returns once; later longjmp (0x300), called deeper, never
        // returns: execution resumes at setjmp's return site with setjmp's stack pointer.
        let (text, t) = run(&[
            C(0x100, 0x7000),
            R(0x7008, 0),
            C(0x300, 0x5000),
            R(0x7008, 1),
        ]);
        assert_eq!(
            text,
            "malloc@libc.so.6(0x1, 0x0, 0x0) = 0x0\n\
             strcmp@libc.so.6(0x3, 0x0, 0x0) = ? (left without returning)\n"
        );
        assert_eq!(t.depth(), 0);
    }

    #[test]
    fn a_longjmp_from_a_shallow_callee_is_no_return_of_longjmp() {
        // longjmp's entry is 24 bytes below setjmp's return: within a return's reach, but
        // longjmp never returns.
        let mut t = CallTracer::new();
        t.set_label(0x100, "_setjmp@libc.so.6".into());
        t.set_label(0x400, "longjmp@libc.so.6".into());
        let mut out = Vec::new();
        t.call(&mut out, 0x100, [1, 0, 0], 0x7000, None).unwrap();
        t.ret(&mut out, 0x7008, 0, |_| None).unwrap();
        t.call(&mut out, 0x400, [1, 0x2a, 0], 0x6ff0, None).unwrap();
        t.ret(&mut out, 0x7008, 0x2a, |_| None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "_setjmp@libc.so.6(0x1, 0x0, 0x0) = 0x0\n\
             longjmp@libc.so.6(0x1, 0x2a, 0x0) = ? (left without returning)\n"
        );
        assert_eq!(t.depth(), 0);
    }

    #[test]
    fn unmatched_return_pops_the_innermost_and_stray_return_is_ignored() {
        // A return on another stack (no frame just below): the innermost call ends.
        let (text, t) = run(&[C(0x100, 0x7000), R(0x1000, 3), R(0x7008, 4)]);
        assert_eq!(text, "malloc@libc.so.6(0x1, 0x0, 0x0) = 0x3\n");
        assert_eq!(t.depth(), 0);
    }

    #[test]
    fn finish_ends_calls_in_progress() {
        let (mut text, mut t) = run(&[C(0x200, 0x7000), C(0x100, 0x6000)]);
        let mut out = Vec::new();
        t.finish(&mut out).unwrap();
        text.push_str(std::str::from_utf8(&out).unwrap());
        assert_eq!(
            text,
            "qsort@libc.so.6(0x2, 0x0, 0x0) <unfinished ...>\n\
             \x20 malloc@libc.so.6(0x1, 0x0, 0x0) = ? (no return before exit)\n\
             <... qsort@libc.so.6 no return before exit>\n"
        );
        assert_eq!(t.depth(), 0);
    }
}
