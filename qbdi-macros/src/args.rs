//! The attributes' arguments: parsed as a comma-separated list of names (`preinst`),
//! flag unions (`BASIC_BLOCK_ENTRY | BASIC_BLOCK_EXIT`) and `key = value` pairs, then checked
//! against what the attribute accepts.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Token, UnOp};

use crate::errors::Errors;
use crate::kind::Kind;
use crate::names::{self, ACCESSES, ANALYSES, EVENTS, POSITIONS};

/// What the arguments say (the defaults where they say nothing).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `postinst` (instruction callbacks).
    pub post_inst: bool,
    /// `priority = N`.
    pub priority: i32,
    /// Event, access or analysis bits.
    pub flags: u32,
    /// `mnemonic = ".."` (`""`: none).
    pub mnemonic: String,
    /// `code = ".."` (`""`: none).
    pub code: String,
}

/// One argument.
enum Arg {
    /// A name or a union of names: `preinst`, `read | write`.
    Names(Vec<Ident>),
    /// `key = value`.
    Key(Ident, Expr),
    /// Anything else (a mistake).
    Other(Expr),
}

/// Parses and checks the arguments of `kind`'s attribute; mistakes go to `errors`, in the
/// order of the arguments.
pub fn parse(kind: Kind, tokens: TokenStream, errors: &mut Errors) -> Config {
    let mut checker = Checker {
        kind,
        config: Config::default(),
        keys: Vec::new(),
        position: None,
        names: 0,
        first_name: None,
        flag_names: Vec::new(),
        mistaken: false,
    };
    if matches!(kind, Kind::Init | Kind::Fini) {
        if !tokens.is_empty() {
            let name = kind.name();
            errors.on(
                &tokens,
                format!("#[{name}] takes no arguments: write `#[{name}]`"),
            );
        }
        return checker.config;
    }
    let exprs = match Punctuated::<Expr, Token![,]>::parse_terminated.parse2(tokens) {
        Ok(exprs) => exprs,
        Err(e) => {
            errors.push(e);
            return checker.config;
        }
    };
    for expr in exprs {
        match classify(expr) {
            Arg::Names(idents) => checker.names(&idents, errors),
            Arg::Key(key, value) => checker.key(key, &value, errors),
            Arg::Other(expr) => {
                checker.mistaken = true;
                let message = match qualified_name(&expr) {
                    Some(last) => format!("write the bare name `{last}`: {}", takes(kind)),
                    None => format!("unexpected argument: {}", takes(kind)),
                };
                errors.on(&expr, message);
            }
        }
    }
    checker.finish(errors)
}

/// What `kind`'s attribute takes, for "unexpected ..." messages.
fn takes(kind: Kind) -> String {
    let keys: Vec<String> = kind.keys().iter().map(|k| format!("`{k} = ..`")).collect();
    let names = match kind {
        Kind::Inst => format!("a position ({})", names::list(POSITIONS)),
        Kind::MemAccess => format!("an access kind ({})", names::list(ACCESSES)),
        Kind::Event => {
            "VM event names joined with `|` (`BASIC_BLOCK_ENTRY | BASIC_BLOCK_EXIT`)".to_owned()
        }
        Kind::Rule | Kind::Init | Kind::Fini => String::new(),
    };
    let name = kind.name();
    match (names.is_empty(), keys.is_empty()) {
        (true, true) => format!("#[{name}] takes no arguments"),
        (true, false) => format!("#[{name}] takes only {}", keys.join(", ")),
        (false, true) => format!("#[{name}] takes {names}"),
        (false, false) => format!("#[{name}] takes {names} and {}", keys.join(", ")),
    }
}

/// Sorts an argument into names, `key = value` and neither.
fn classify(expr: Expr) -> Arg {
    match expr {
        Expr::Assign(assign) => match as_ident(&assign.left) {
            Some(key) => Arg::Key(key, *assign.right),
            None => Arg::Other(Expr::Assign(assign)),
        },
        expr => match name_union(&expr) {
            Some(idents) => Arg::Names(idents),
            None => Arg::Other(expr),
        },
    }
}

/// `expr` as a bare identifier.
fn as_ident(expr: &Expr) -> Option<Ident> {
    match expr {
        Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => p.path.get_ident().cloned(),
        Expr::Group(g) => as_ident(&g.expr),
        _ => None,
    }
}

/// `expr` without the invisible groups around macro_rules fragments (`$glob:literal`).
fn ungroup(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(g) => ungroup(&g.expr),
        expr => expr,
    }
}

/// The last segment of a path of several segments (`VmEvent::SYSCALL_ENTRY`).
fn qualified_name(expr: &Expr) -> Option<&Ident> {
    match expr {
        Expr::Path(p) if p.path.segments.len() > 1 => p.path.segments.last().map(|s| &s.ident),
        Expr::Binary(b) => qualified_name(&b.left).or_else(|| qualified_name(&b.right)),
        Expr::Paren(p) => qualified_name(&p.expr),
        Expr::Group(g) => qualified_name(&g.expr),
        _ => None,
    }
}

/// `A | B | C` as its identifiers.
fn name_union(expr: &Expr) -> Option<Vec<Ident>> {
    match expr {
        Expr::Binary(b) if matches!(b.op, syn::BinOp::BitOr(_)) => {
            let mut left = name_union(&b.left)?;
            left.extend(name_union(&b.right)?);
            Some(left)
        }
        Expr::Paren(p) => name_union(&p.expr),
        Expr::Group(g) => name_union(&g.expr),
        expr => as_ident(expr).map(|i| vec![i]),
    }
}

/// The arguments seen so far.
struct Checker {
    kind: Kind,
    config: Config,
    /// The keys given so far.
    keys: Vec<Ident>,
    /// The position given (`#[inst_callback]`).
    position: Option<Ident>,
    /// How many name arguments (comma-separated) were given.
    names: usize,
    /// The first name given.
    first_name: Option<Ident>,
    /// The flag names given so far (events, access kinds, analyses).
    flag_names: Vec<String>,
    /// Whether a mistaken argument was reported (then no "missing .." on top of it).
    mistaken: bool,
}

impl Checker {
    /// A name argument: a position, access kinds or VM events.
    fn names(&mut self, idents: &[Ident], errors: &mut Errors) {
        if let [ident] = idents
            && self.kind.keys().contains(&ident.to_string().as_str())
        {
            self.mistaken = true;
            errors.at(
                ident.span(),
                format!("`{ident}` needs a value: `{ident} = ..`"),
            );
            return;
        }
        self.names += 1;
        let first = self
            .first_name
            .get_or_insert_with(|| idents[0].clone())
            .clone();
        match self.kind {
            Kind::Inst => {
                for ident in idents {
                    self.position(ident, errors);
                }
            }
            Kind::MemAccess | Kind::Event => {
                let (table, what) = if self.kind == Kind::Event {
                    (EVENTS, "VM event")
                } else {
                    (ACCESSES, "memory access kind")
                };
                if self.names > 1 {
                    errors.at(
                        idents[0].span(),
                        format!("join {what}s with `|`, not `,`: `{first} | {}`", idents[0]),
                    );
                }
                self.config.flags |= self.flags(idents, table, what, errors);
            }
            Kind::Rule => {
                self.mistaken = true;
                for ident in idents {
                    let hint = if names::lookup(ANALYSES, &ident.to_string()).is_some() {
                        format!("write `#[instr_rule(analysis = {ident})]`")
                    } else {
                        takes(self.kind)
                    };
                    errors.at(ident.span(), format!("unexpected `{ident}`: {hint}"));
                }
            }
            Kind::Init | Kind::Fini => unreachable!("takes no arguments"),
        }
    }

    /// One position of `#[inst_callback]`: exactly one of `preinst` and `postinst`.
    fn position(&mut self, ident: &Ident, errors: &mut Errors) {
        let name = ident.to_string();
        let Some(post) = names::lookup(POSITIONS, &name) else {
            self.mistaken = true;
            let hint = names::did_you_mean(&name, POSITIONS.iter().map(|(n, _)| *n));
            errors.at(
                ident.span(),
                format!(
                    "unknown position `{name}`: expected {}{hint}",
                    names::list(POSITIONS)
                ),
            );
            return;
        };
        match &self.position {
            Some(first) if *first == name => {
                errors.at(ident.span(), format!("`{name}` is given twice"));
            }
            Some(first) => errors.at(
                ident.span(),
                format!(
                    "`{name}` and `{first}` exclude each other: a callback has one position \
                     (register a second function for the other)"
                ),
            ),
            None => {
                self.position = Some(ident.clone());
                self.config.post_inst = post;
            }
        }
    }

    /// The union of the flags named by `idents`; unknown and repeated names are errors.
    fn flags(
        &mut self,
        idents: &[Ident],
        table: &[(&str, u32)],
        what: &str,
        errors: &mut Errors,
    ) -> u32 {
        let mut bits = 0;
        for ident in idents {
            let name = ident.to_string();
            match names::lookup(table, &name) {
                Some(b) => {
                    if self.flag_names.contains(&name) {
                        errors.at(ident.span(), format!("`{name}` is listed twice"));
                    }
                    self.flag_names.push(name);
                    bits |= b;
                }
                None => {
                    self.mistaken = true;
                    let hint = names::did_you_mean(&name, table.iter().map(|(n, _)| *n));
                    errors.at(
                        ident.span(),
                        format!(
                            "unknown {what} `{name}`: expected {}{hint}",
                            names::list(table)
                        ),
                    );
                }
            }
        }
        bits
    }

    /// A `key = value` argument.
    fn key(&mut self, key: Ident, value: &Expr, errors: &mut Errors) {
        let value = ungroup(value);
        let kind = self.kind;
        let name = key.to_string();
        if !kind.keys().contains(&name.as_str()) {
            self.mistaken = true;
            let accepted = if kind.keys().is_empty() {
                format!("{}, no `key = value`", takes(kind))
            } else {
                format!(
                    "#[{}] accepts {}",
                    kind.name(),
                    names::or_list(kind.keys().iter().copied())
                )
            };
            let hint = names::did_you_mean(&name, kind.keys().iter().copied());
            errors.at(
                key.span(),
                format!("unknown key `{name}`: {accepted}{hint}"),
            );
            return;
        }
        if self.keys.contains(&key) {
            errors.at(
                key.span(),
                format!("duplicate key `{name}`: it is already given earlier"),
            );
            return;
        }
        let selector = self
            .keys
            .iter()
            .find(|k| *k == "mnemonic" || *k == "code")
            .cloned();
        self.keys.push(key.clone());
        match name.as_str() {
            "priority" => {
                if let Some(p) = priority(value, errors) {
                    self.config.priority = p;
                }
            }
            "mnemonic" | "code" => {
                if let Some(first) = selector {
                    errors.at(
                        key.span(),
                        format!(
                            "`mnemonic` and `code` exclude each other: this callback already \
                             selects instructions by `{first}`"
                        ),
                    );
                    return;
                }
                let Some(s) = string(&name, value, errors) else {
                    return;
                };
                if name == "mnemonic" {
                    if check_mnemonic(&s, errors) {
                        self.config.mnemonic = s.value();
                    }
                } else if check_code(&s, errors) {
                    self.config.code = s.value();
                }
            }
            "analysis" => match name_union(value) {
                Some(idents) => {
                    self.config.flags = self.flags(&idents, ANALYSES, "analysis type", errors);
                }
                None => errors.on(
                    value,
                    format!(
                        "expected analysis types joined with `|` (`analysis = OPERANDS | \
                         SYMBOL`): {}",
                        names::list(ANALYSES)
                    ),
                ),
            },
            _ => unreachable!("every accepted key is handled"),
        }
    }

    /// What is missing once every argument is seen; the configuration.
    fn finish(mut self, errors: &mut Errors) -> Config {
        match self.kind {
            Kind::Inst if self.position.is_none() && !self.mistaken => errors.at(
                Span::call_site(),
                "missing position: write #[inst_callback(preinst)] or \
                 #[inst_callback(postinst)] (then optionally `priority = ..`, \
                 `mnemonic = \"..\"` or `code = \"..\"`)",
            ),
            Kind::MemAccess if self.names == 0 && !self.mistaken => errors.at(
                Span::call_site(),
                "missing access kind: write #[mem_access(read)], #[mem_access(write)] or \
                 #[mem_access(read_write)] (then optionally `priority = ..`)",
            ),
            Kind::Event if self.names == 0 && !self.mistaken => errors.at(
                Span::call_site(),
                "empty event list: name the VM events to be called on, e.g. \
                 #[vm_event(BASIC_BLOCK_ENTRY)] or #[vm_event(BASIC_BLOCK_ENTRY | \
                 BASIC_BLOCK_EXIT)]",
            ),
            Kind::Rule if !self.keys.iter().any(|k| k == "analysis") => {
                self.config.flags = names::lookup(ANALYSES, "INSTRUCTION").unwrap_or(1);
            }
            _ => {}
        }
        self.config
    }
}

/// The integer of `priority = N` (an `i32`, maybe negative).
fn priority(value: &Expr, errors: &mut Errors) -> Option<i32> {
    let (negative, literal) = match value {
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => (true, int_literal(ungroup(&u.expr))),
        value => (false, int_literal(value)),
    };
    let magnitude = literal
        .filter(|i| matches!(i.suffix(), "" | "i32"))
        .and_then(|i| i.base10_parse::<i64>().ok());
    let Some(magnitude) = magnitude else {
        errors.on(
            value,
            "`priority` is an integer (i32, may be negative), e.g. `priority = 10`",
        );
        return None;
    };
    let n = if negative { -magnitude } else { magnitude };
    match i32::try_from(n) {
        Ok(p) => Some(p),
        Err(_) => {
            errors.on(value, format!("`priority = {n}` does not fit in an i32"));
            None
        }
    }
}

/// `expr` as an integer literal.
fn int_literal(expr: &Expr) -> Option<&syn::LitInt> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => Some(i),
        _ => None,
    }
}

/// The string literal of `key = ".."`.
fn string(key: &str, value: &Expr, errors: &mut Errors) -> Option<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s.clone()),
        _ => {
            let example = if key == "mnemonic" {
                "mnemonic = \"CALL*\""
            } else {
                "code = \"Call_rm64\""
            };
            errors.on(
                value,
                format!("`{key}` is a string literal, e.g. `{example}`"),
            );
            None
        }
    }
}

/// Whether the glob of `mnemonic = ".."` matches an x86 mnemonic (else says why not).
fn check_mnemonic(glob: &LitStr, errors: &mut Errors) -> bool {
    let text = glob.value();
    if text.is_empty() {
        errors.at(
            glob.span(),
            "empty mnemonic glob: leave `mnemonic` out to instrument every instruction",
        );
        return false;
    }
    if let Some(c) = text
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && *c != '*' && *c != '?')
    {
        errors.at(
            glob.span(),
            format!(
                "unexpected `{c}` in mnemonic glob \"{text}\": a glob is letters and digits \
                 with `*` (any run) and `?` (one character), e.g. \"CALL*\""
            ),
        );
        return false;
    }
    if names::mnemonic_glob_is_valid(&text) {
        return true;
    }
    let hint = if text.contains(['*', '?']) {
        String::new()
    } else {
        names::did_you_mean(&text, names::mnemonics().iter().map(String::as_str))
    };
    errors.at(
        glob.span(),
        format!(
            "no x86 mnemonic matches \"{text}\" (matched against iced-x86's mnemonics, \
             ignoring case; `*` is any run, `?` one character){hint}"
        ),
    );
    false
}

/// Whether `code = ".."` names an iced-x86 `Code` (else says why not).
fn check_code(code: &LitStr, errors: &mut Errors) -> bool {
    let text = code.value();
    let codes = names::codes();
    if codes.contains(&text) {
        return true;
    }
    let hint = names::did_you_mean(&text, codes.iter().map(String::as_str));
    errors.at(
        code.span(),
        format!(
            "unknown iced-x86 Code \"{text}\": `code` is the exact name of an \
             iced_x86::Code variant, e.g. \"Call_rm64\"{hint}"
        ),
    );
    false
}
