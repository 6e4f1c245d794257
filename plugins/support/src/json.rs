//! JSON text for the machine-readable outputs (`format=jsonl`: one object per line;
//! `format=json`: one document), written by hand: the plugins need objects of strings,
//! integers and booleans, and a dependency would be linked into every plugin.
//!
//! Strings are escaped as RFC 8259 requires (`"`, `\`, control characters); text that is
//! not UTF-8 (a guest's bytes) is written with U+FFFD for each invalid sequence.
//! Addresses are written as strings of hexadecimal (`"0x401000"`): JSON parsers in
//! JavaScript and others lose integers above 2^53.

use std::io::{self, Write};

/// The `format` option of the plugins: `text` (the default), `jsonl` (the traces) or
/// `json` (the reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Text (each plugin documents its lines).
    Text,
    /// One JSON object per line (each plugin documents its fields).
    Jsonl,
    /// One JSON document (each plugin documents its fields).
    Json,
}

impl Format {
    /// The option's value for this format.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Jsonl => "jsonl",
            Format::Json => "json",
        }
    }

    /// Parses the value of `format=` for a trace plugin: `text` or `jsonl` (`None`: absent,
    /// the text form); `plugin` names the plugin in the error.
    pub fn parse(plugin: &str, value: Option<&str>) -> Result<Format, String> {
        Self::parse_among(plugin, value, &[Format::Text, Format::Jsonl])
    }

    /// Parses the value of `format=` among `accepted` (the first is the default, taken when
    /// `value` is `None`); the error names the plugin, the value and the accepted formats.
    pub fn parse_among(
        plugin: &str,
        value: Option<&str>,
        accepted: &[Format],
    ) -> Result<Format, String> {
        let Some(value) = value else {
            return Ok(accepted.first().copied().unwrap_or(Format::Text));
        };
        if let Some(f) = accepted.iter().find(|f| f.name() == value) {
            return Ok(*f);
        }
        let names: Vec<String> = accepted
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let default = if i == 0 { " (the default)" } else { "" };
                format!("format={}{default}", f.name())
            })
            .collect();
        Err(format!(
            "{plugin}: format={value} is not a format: use {}",
            names.join(" or ")
        ))
    }
}

/// Writes `s` as a JSON string (quoted and escaped).
pub fn write_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(b"\"")?;
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f | 0x7f => None,
            _ => continue,
        };
        w.write_all(&bytes[start..i])?;
        match escape {
            Some(e) => w.write_all(e)?,
            None => write!(w, "\\u{b:04x}")?,
        }
        start = i + 1;
    }
    w.write_all(&bytes[start..])?;
    w.write_all(b"\"")
}

/// Writes the last line of a trace the `max=N` budget stopped (the text forms'
/// `# stopped after N ... (max=N)`): `{"event":"stopped","max":N}`.
pub fn write_stopped(w: &mut impl Write, max: u64) -> io::Result<()> {
    Object::new(w)?
        .str("event", "stopped")?
        .int("max", max)?
        .end()?;
    w.write_all(b"\n")
}

/// Writes bytes that should be text as a JSON string (invalid UTF-8 becomes U+FFFD).
pub fn write_bytes_str(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    write_str(w, &String::from_utf8_lossy(bytes))
}

/// A JSON object being written: `{"key":value,...}`. Fields are written in call order;
/// [`Object::end`] closes it (dropping it unclosed leaves invalid JSON).
pub struct Object<'w, W: Write> {
    w: &'w mut W,
    first: bool,
}

impl<'w, W: Write> Object<'w, W> {
    /// Starts an object (writes `{`).
    pub fn new(w: &'w mut W) -> io::Result<Self> {
        w.write_all(b"{")?;
        Ok(Object { w, first: true })
    }

    /// Writes the key and the separator before a value.
    fn key(&mut self, key: &str) -> io::Result<&mut W> {
        if !self.first {
            self.w.write_all(b",")?;
        }
        self.first = false;
        write_str(self.w, key)?;
        self.w.write_all(b":")?;
        Ok(self.w)
    }

    /// A string field.
    pub fn str(&mut self, key: &str, value: &str) -> io::Result<&mut Self> {
        let w = self.key(key)?;
        write_str(w, value)?;
        Ok(self)
    }

    /// An integer field.
    pub fn int(&mut self, key: &str, value: impl Into<i128>) -> io::Result<&mut Self> {
        let v: i128 = value.into();
        write!(self.key(key)?, "{v}")?;
        Ok(self)
    }

    /// An address field: a string of hexadecimal (`"0x401000"`).
    pub fn hex(&mut self, key: &str, value: u64) -> io::Result<&mut Self> {
        write!(self.key(key)?, "\"{value:#x}\"")?;
        Ok(self)
    }

    /// A boolean field.
    pub fn bool(&mut self, key: &str, value: bool) -> io::Result<&mut Self> {
        let w = self.key(key)?;
        w.write_all(if value { b"true" } else { b"false" })?;
        Ok(self)
    }

    /// A `null` field.
    pub fn null(&mut self, key: &str) -> io::Result<&mut Self> {
        self.key(key)?.write_all(b"null")?;
        Ok(self)
    }

    /// A field whose value the caller writes (valid JSON: an array, a nested object...).
    pub fn raw(
        &mut self,
        key: &str,
        value: impl FnOnce(&mut W) -> io::Result<()>,
    ) -> io::Result<&mut Self> {
        value(self.key(key)?)?;
        Ok(self)
    }

    /// Closes the object (writes `}`).
    pub fn end(&mut self) -> io::Result<()> {
        self.w.write_all(b"}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut v = Vec::new();
        f(&mut v).unwrap();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(
            text(|w| write_str(w, "a\"b\\c\nd\u{1}\u{7f}é")),
            r#""a\"b\\c\nd\u0001\u007fé""#
        );
        assert_eq!(text(|w| write_bytes_str(w, b"x\xffy")), "\"x\u{fffd}y\"");
    }

    #[test]
    fn objects_have_their_fields_in_order() {
        let s = text(|w| {
            Object::new(w)?
                .str("name", "puts")?
                .hex("addr", 0x401000)?
                .int("n", -3i64)?
                .bool("ok", true)?
                .null("ret")?
                .raw("args", |w| w.write_all(b"[1,2]"))?
                .end()
        });
        assert_eq!(
            s,
            r#"{"name":"puts","addr":"0x401000","n":-3,"ok":true,"ret":null,"args":[1,2]}"#
        );
    }

    #[test]
    fn formats_parse() {
        assert_eq!(Format::parse("x", None), Ok(Format::Text));
        assert_eq!(Format::parse("x", Some("jsonl")), Ok(Format::Jsonl));
        let e = Format::parse("memtrace", Some("xml")).unwrap_err();
        assert_eq!(
            e,
            "memtrace: format=xml is not a format: use format=text (the default) or format=jsonl"
        );
        let reports = [Format::Text, Format::Json];
        assert_eq!(Format::parse_among("x", None, &reports), Ok(Format::Text));
        assert_eq!(
            Format::parse_among("x", Some("json"), &reports),
            Ok(Format::Json)
        );
        let e = Format::parse_among("bbcount", Some("jsonl"), &reports).unwrap_err();
        assert_eq!(
            e,
            "bbcount: format=jsonl is not a format: use format=text (the default) or format=json"
        );
    }
}
