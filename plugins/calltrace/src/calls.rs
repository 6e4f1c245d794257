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
use qbdi_plugin_support::json::{Format, Object};
use qbdi_sdk::Symbol;

use crate::args::{self, Value};
use crate::protos::{self, Proto};

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

/// What a call target is: its names and its prototype.
#[derive(Clone, Debug, PartialEq)]
pub struct Callee {
    /// How the text lines name it (see [`label`]).
    pub label: String,
    /// The symbol (`malloc`, `f+0x10`); `None` where no symbol covers it.
    pub function: Option<String>,
    /// The module's basename (`libc.so.6`); `None` outside modules.
    pub module: Option<String>,
    /// Its prototype (a symbol's own start named in the table).
    pub proto: Option<&'static Proto>,
}

impl Callee {
    /// The callee at `target`, covered by `symbol`.
    pub fn new(symbol: Option<&Symbol>, target: u64) -> Callee {
        let function = symbol.filter(|s| !s.name.is_empty()).map(|s| {
            if s.offset == 0 {
                s.name.clone()
            } else {
                format!("{}+{:#x}", s.name, s.offset)
            }
        });
        let proto = symbol
            .filter(|s| s.offset == 0 && !s.name.is_empty())
            .and_then(|s| protos::lookup(&s.name));
        Callee {
            label: label(symbol, target),
            function,
            module: symbol.map(|s| s.module.clone()).filter(|m| !m.is_empty()),
            proto,
        }
    }

    /// A lazy call not bound yet: `name@plt`.
    fn plt(name: &str) -> Callee {
        Callee {
            label: format!("{name}@plt"),
            function: Some(name.to_owned()),
            module: None,
            proto: protos::lookup(name),
        }
    }
}

/// A call that has not returned.
#[derive(Clone, Debug)]
struct Frame {
    target: u64,
    args: Vec<Value>,
    rsp: u64,
    lazy: Option<Lazy>,
    /// Its prototype (the return value is decoded by it).
    proto: Option<&'static Proto>,
    /// Its `<unfinished ...>` line was written.
    printed: bool,
}

/// The calls in progress and the names of the targets seen, of one thread.
#[derive(Debug)]
pub struct CallTracer {
    frames: Vec<Frame>,
    callees: AddrMap<u64, Callee>,
    /// What starts each text line (`[tid N] ` for a thread other than the main one).
    prefix: String,
    /// The thread's id (the `tid` field of `format=jsonl`).
    tid: u32,
    format: Format,
}

impl Default for CallTracer {
    fn default() -> Self {
        CallTracer::new()
    }
}

/// How a call ended, or that it has not yet.
#[derive(Clone, Copy, Debug)]
enum Status<'a> {
    Returned(&'a Value),
    Unfinished,
    Left,
    Exit,
}

impl Status<'_> {
    /// The `status` field of `format=jsonl`.
    fn name(self) -> &'static str {
        match self {
            Status::Returned(_) => "returned",
            Status::Unfinished => "unfinished",
            Status::Left => "left",
            Status::Exit => "exit",
        }
    }

    /// How a text line says the call did not return.
    fn text(self) -> &'static str {
        match self {
            Status::Left => "left without returning",
            Status::Exit => "no return before exit",
            Status::Returned(_) | Status::Unfinished => "",
        }
    }
}

impl CallTracer {
    /// An empty tracer writing text (for a `static`).
    pub const fn new() -> CallTracer {
        CallTracer {
            frames: Vec::new(),
            callees: AddrMap::with_hasher(std::hash::BuildHasherDefault::new()),
            prefix: String::new(),
            tid: 0,
            format: Format::Text,
        }
    }

    /// The tracer of thread `tid`, writing in `format`; text lines start with `prefix` (a
    /// thread's, as `strace -f` marks them).
    pub fn for_thread(tid: u32, prefix: String, format: Format) -> CallTracer {
        CallTracer {
            prefix,
            tid,
            format,
            ..CallTracer::new()
        }
    }

    /// Changes the thread (in a `fork` child) and what starts each text line.
    pub fn set_thread(&mut self, tid: u32, prefix: String) {
        self.tid = tid;
        self.prefix = prefix;
    }

    /// Whether `target` is named.
    pub fn knows(&self, target: u64) -> bool {
        self.callees.contains_key(&target)
    }

    /// Names `target`.
    pub fn set_callee(&mut self, target: u64, callee: Callee) {
        self.callees.insert(target, callee);
    }

    /// The prototype of a call to `target` (through the PLT slot of `lazy`, if any).
    pub fn proto(&self, target: u64, lazy: Option<&Lazy>) -> Option<&'static Proto> {
        match lazy {
            // Not bound yet: the table's, or the DWARF of a library that defines the name.
            Some(l) => protos::lookup(&l.name).or_else(|| crate::dwarf::by_name(&l.name)),
            None => self.callees.get(&target).and_then(|c| c.proto),
        }
    }

    /// Calls in progress.
    pub fn depth(&self) -> usize {
        self.frames.len()
    }

    /// What `f` calls: its callee, or `name@plt` for a lazy call.
    fn callee(&self, f: &Frame) -> Cow<'_, Callee> {
        if let Some(l) = &f.lazy {
            return Cow::Owned(Callee::plt(&l.name));
        }
        match self.callees.get(&f.target) {
            Some(c) => Cow::Borrowed(c),
            None => Cow::Owned(Callee::new(None, f.target)),
        }
    }

    fn indent(&self, w: &mut impl Write, depth: usize) -> io::Result<()> {
        w.write_all(self.prefix.as_bytes())?;
        for _ in 0..depth {
            w.write_all(b"  ")?;
        }
        Ok(())
    }

    /// Writes the line of `f`: its call with its arguments (`resumed`: the end of a call
    /// whose `<unfinished ...>` line was written), ending with `status`.
    fn line(
        &self,
        w: &mut impl Write,
        depth: usize,
        f: &Frame,
        callee: &Callee,
        target: u64,
        status: Status<'_>,
    ) -> io::Result<()> {
        let resumed = f.printed;
        if self.format == Format::Jsonl {
            return self.json_line(w, depth, f, callee, target, status);
        }
        self.indent(w, depth)?;
        let label = &callee.label;
        if resumed {
            match status {
                Status::Returned(v) => writeln!(w, "<... {label} resumed> = {}", v.text),
                Status::Unfinished => Ok(()),
                Status::Left | Status::Exit => writeln!(w, "<... {label} {}>", status.text()),
            }
        } else {
            write!(w, "{label}({})", args::join(&f.args))?;
            match status {
                Status::Returned(v) => writeln!(w, " = {}", v.text),
                Status::Unfinished => w.write_all(b" <unfinished ...>\n"),
                Status::Left | Status::Exit => writeln!(w, " = ? ({})", status.text()),
            }
        }
    }

    /// The `format=jsonl` form of [`line`](Self::line) (fields in the crate's docs).
    fn json_line(
        &self,
        w: &mut impl Write,
        depth: usize,
        f: &Frame,
        callee: &Callee,
        target: u64,
        status: Status<'_>,
    ) -> io::Result<()> {
        let opt = |o: &mut Object<'_, _>, key: &str, v: &Option<String>| match v {
            Some(s) => o.str(key, s).map(|_| ()),
            None => o.null(key).map(|_| ()),
        };
        let mut o = Object::new(w)?;
        o.int("tid", self.tid)?
            .int("depth", depth as u64)?
            .str("event", if f.printed { "resumed" } else { "call" })?
            .str("status", status.name())?;
        opt(&mut o, "function", &callee.function)?;
        opt(&mut o, "module", &callee.module)?;
        o.hex("target", target)?;
        if !f.printed {
            o.raw("args", |w| {
                w.write_all(b"[")?;
                for (i, a) in f.args.iter().enumerate() {
                    if i > 0 {
                        w.write_all(b",")?;
                    }
                    json_value(w, a)?;
                }
                w.write_all(b"]")
            })?;
        }
        match status {
            Status::Returned(v) => o.raw("return", |w| json_value(w, v))?,
            _ => o.null("return")?,
        };
        o.end()?;
        w.write_all(b"\n")
    }

    fn end_without_return(
        &self,
        w: &mut impl Write,
        depth: usize,
        f: &Frame,
        status: Status<'_>,
    ) -> io::Result<()> {
        self.line(w, depth, f, &self.callee(f), f.target, status)
    }

    /// Whether `f` calls a function that never returns to its caller: a return that looks
    /// like its own is execution resuming elsewhere (`longjmp` from a shallow callee lands
    /// at `setjmp`'s return site a few words above it).
    fn never_returns(&self, f: &Frame) -> bool {
        let callee = self.callee(f);
        let name = callee.label.split('@').next().unwrap_or_default();
        NORETURN.contains(&name)
    }

    /// A call to `target` with the decoded arguments `args` and the stack pointer `rsp`
    /// (at the callee's entry); `lazy` when it goes through the loader's resolver.
    pub fn call(
        &mut self,
        w: &mut impl Write,
        target: u64,
        args: Vec<Value>,
        rsp: u64,
        lazy: Option<Lazy>,
    ) -> io::Result<()> {
        if let Some(top) = self.frames.last()
            && !top.printed
        {
            let depth = self.frames.len() - 1;
            self.line(
                w,
                depth,
                top,
                &self.callee(top),
                top.target,
                Status::Unfinished,
            )?;
            self.frames.last_mut().expect("checked").printed = true;
        }
        let proto = self.proto(target, lazy.as_ref());
        self.frames.push(Frame {
            target,
            args,
            rsp,
            lazy,
            proto,
            printed: false,
        });
        Ok(())
    }

    /// A return to instrumented code, `rsp` the stack pointer after the return; `value`
    /// decodes the return value by the call's prototype. A return with no call in progress
    /// is ignored. `resolve` names the function a lazy call was bound to, and gives its
    /// address (`None`: it stays `name@plt`).
    pub fn ret(
        &mut self,
        w: &mut impl Write,
        rsp: u64,
        value: impl FnOnce(Option<&'static Proto>) -> Value,
        resolve: impl FnOnce(&Lazy) -> Option<(u64, Callee)>,
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
                self.end_without_return(w, self.frames.len(), &f, Status::Left)?;
            }
            return Ok(());
        }
        let Some(index) = matching.or(self.frames.len().checked_sub(1)) else {
            return Ok(());
        };
        while self.frames.len() > index + 1 {
            let f = self.frames.pop().expect("above index");
            self.end_without_return(w, self.frames.len(), &f, Status::Left)?;
        }
        let f = self.frames.pop().expect("index exists");
        let v = value(f.proto);
        let (target, callee) = match f.lazy.as_ref().and_then(resolve) {
            Some((bound, c)) => (bound, Cow::Owned(c)),
            None => (f.target, self.callee(&f)),
        };
        self.line(w, index, &f, &callee, target, Status::Returned(&v))
    }

    /// Ends the calls still in progress (at exit), innermost first.
    pub fn finish(&mut self, w: &mut impl Write) -> io::Result<()> {
        while let Some(f) = self.frames.pop() {
            self.end_without_return(w, self.frames.len(), &f, Status::Exit)?;
        }
        Ok(())
    }
}

/// An argument or return value in `format=jsonl`: `{"type":..,"value":..,"raw":"0x.."}`.
fn json_value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    Object::new(w)?
        .str("type", v.ty)?
        .str("value", &v.text)?
        .hex("raw", v.raw)?
        .end()
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

    fn hex3(a: u64, b: u64, c: u64) -> Vec<Value> {
        args::unknown_args(&[a, b, c, 0, 0, 0])
    }

    fn tracer(format: Format) -> CallTracer {
        let mut t = CallTracer::for_thread(7, String::new(), format);
        let libc = "libc.so.6";
        t.set_callee(0x100, Callee::new(Some(&sym("malloc", 0, libc)), 0x100));
        t.set_callee(0x200, Callee::new(Some(&sym("qsort", 0, libc)), 0x200));
        t.set_callee(0x300, Callee::new(Some(&sym("strcmp", 0, libc)), 0x300));
        t
    }

    fn run(events: &[Ev]) -> (String, CallTracer) {
        run_as(Format::Text, events)
    }

    fn run_as(format: Format, events: &[Ev]) -> (String, CallTracer) {
        let mut t = tracer(format);
        let mut out = Vec::new();
        for e in events {
            match *e {
                Ev::C(target, rsp) => t.call(&mut out, target, hex3(target >> 8, 0, 0), rsp, None),
                Ev::R(rsp, value) => t.ret(&mut out, rsp, |_| Value::hex(value), |_| None),
                Ev::L(name, rsp) => {
                    let lazy = Lazy {
                        name: name.into(),
                        got: 0x4018,
                        unresolved: 0x1036,
                    };
                    t.call(&mut out, 0x7f00, hex3(0xa, 0xb, 0xc), rsp, Some(lazy))
                }
                Ev::Rr(rsp, value, bound) => t.ret(
                    &mut out,
                    rsp,
                    |_| Value::hex(value),
                    |l| {
                        assert_eq!(l.got, 0x4018);
                        let (name, module) = bound.split_once('@').unwrap();
                        Some((0x7f80, Callee::new(Some(&sym(name, 0, module)), 0x7f80)))
                    },
                ),
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
        let libc = "libc.so.6";
        t.set_callee(0x100, Callee::new(Some(&sym("_setjmp", 0, libc)), 0x100));
        t.set_callee(0x400, Callee::new(Some(&sym("longjmp", 0, libc)), 0x400));
        let mut out = Vec::new();
        t.call(&mut out, 0x100, hex3(1, 0, 0), 0x7000, None)
            .unwrap();
        t.ret(&mut out, 0x7008, |_| Value::hex(0), |_| None)
            .unwrap();
        t.call(&mut out, 0x400, hex3(1, 0x2a, 0), 0x6ff0, None)
            .unwrap();
        t.ret(&mut out, 0x7008, |_| Value::hex(0x2a), |_| None)
            .unwrap();
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

    #[test]
    fn callees_have_their_names_and_prototypes() {
        let c = Callee::new(Some(&sym("getenv", 0, "libc.so.6")), 0x10);
        assert_eq!(c.label, "getenv@libc.so.6");
        assert_eq!(c.function.as_deref(), Some("getenv"));
        assert_eq!(c.module.as_deref(), Some("libc.so.6"));
        assert_eq!(c.proto.map(|p| p.name), Some("getenv"));
        let inside = Callee::new(Some(&sym("getenv", 4, "libc.so.6")), 0x14);
        assert_eq!(inside.function.as_deref(), Some("getenv+0x4"));
        assert!(inside.proto.is_none());
        let anon = Callee::new(Some(&sym("", 0, "libc.so.6")), 0x7f00);
        assert_eq!(
            (anon.label.as_str(), anon.function),
            ("0x7f00@libc.so.6", None)
        );
        let nowhere = Callee::new(None, 0x7f00);
        assert_eq!((nowhere.function, nowhere.module), (None, None));
    }

    #[test]
    fn jsonl_lines_follow_the_text_lines() {
        let events = [
            C(0x200, 0x7000),
            C(0x300, 0x6000),
            R(0x6008, 1),
            R(0x7008, 0),
            L("puts", 0x7000),
            Rr(0x7018, 6, "puts@libc.so.6"),
            C(0x100, 0x7000),
            C(0x300, 0x6000),
        ];
        let (text, mut t) = run_as(Format::Jsonl, &events);
        let mut out = Vec::new();
        t.finish(&mut out).unwrap();
        let text = text + std::str::from_utf8(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                r#"{"tid":7,"depth":0,"event":"call","status":"unfinished","function":"qsort","module":"libc.so.6","target":"0x200","args":[{"type":"hex","value":"0x2","raw":"0x2"},{"type":"hex","value":"0x0","raw":"0x0"},{"type":"hex","value":"0x0","raw":"0x0"}],"return":null}"#,
                r#"{"tid":7,"depth":1,"event":"call","status":"returned","function":"strcmp","module":"libc.so.6","target":"0x300","args":[{"type":"hex","value":"0x3","raw":"0x3"},{"type":"hex","value":"0x0","raw":"0x0"},{"type":"hex","value":"0x0","raw":"0x0"}],"return":{"type":"hex","value":"0x1","raw":"0x1"}}"#,
                r#"{"tid":7,"depth":0,"event":"resumed","status":"returned","function":"qsort","module":"libc.so.6","target":"0x200","return":{"type":"hex","value":"0x0","raw":"0x0"}}"#,
                r#"{"tid":7,"depth":0,"event":"call","status":"returned","function":"puts","module":"libc.so.6","target":"0x7f80","args":[{"type":"hex","value":"0xa","raw":"0xa"},{"type":"hex","value":"0xb","raw":"0xb"},{"type":"hex","value":"0xc","raw":"0xc"}],"return":{"type":"hex","value":"0x6","raw":"0x6"}}"#,
                r#"{"tid":7,"depth":0,"event":"call","status":"unfinished","function":"malloc","module":"libc.so.6","target":"0x100","args":[{"type":"hex","value":"0x1","raw":"0x1"},{"type":"hex","value":"0x0","raw":"0x0"},{"type":"hex","value":"0x0","raw":"0x0"}],"return":null}"#,
                r#"{"tid":7,"depth":1,"event":"call","status":"exit","function":"strcmp","module":"libc.so.6","target":"0x300","args":[{"type":"hex","value":"0x3","raw":"0x3"},{"type":"hex","value":"0x0","raw":"0x0"},{"type":"hex","value":"0x0","raw":"0x0"}],"return":null}"#,
                r#"{"tid":7,"depth":0,"event":"resumed","status":"exit","function":"malloc","module":"libc.so.6","target":"0x100","return":null}"#,
            ]
        );
        // A lazy call not bound: function from the slot, no module.
        let (text, _) = run_as(Format::Jsonl, &[L("free", 0x7000), R(0x7018, 0)]);
        assert!(
            text.contains(r#""function":"free","module":null,"target":"0x7f00""#),
            "{text}"
        );
    }

    #[test]
    fn decoded_values_are_shown() {
        let mut t = tracer(Format::Text);
        let mut out = Vec::new();
        let arg = Value {
            ty: "string",
            text: "\"LS_COLORS\"".into(),
            raw: 0x55,
        };
        t.call(&mut out, 0x100, vec![arg], 0x7000, None).unwrap();
        t.ret(
            &mut out,
            0x7008,
            |p| {
                assert_eq!(p.map(|p| p.name), Some("malloc"));
                Value {
                    ty: "string",
                    text: "NULL".into(),
                    raw: 0,
                }
            },
            |_| None,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "malloc@libc.so.6(\"LS_COLORS\") = NULL\n"
        );
    }
}
