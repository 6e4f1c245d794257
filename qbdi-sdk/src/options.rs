//! The options a plugin receives in its init (`-p drcov:out=cov.log,module=libz.so.1`).

use std::str::FromStr;

/// The `key=value` options given to a plugin on the command line, in order. The host has
/// already refused keys the plugin does not declare in [`plugin!`](crate::plugin).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginOptions {
    pairs: Vec<(String, String)>,
}

impl PluginOptions {
    /// Options from `(key, value)` pairs.
    pub fn new(pairs: Vec<(String, String)>) -> PluginOptions {
        PluginOptions { pairs }
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for `key` (a key may repeat: `module=a,module=b`).
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is on: given bare (`-p tracer:regs`) or with a value other than `0`,
    /// `false`, `no`, `off`.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| !matches!(v, "0" | "false" | "no" | "off"))
    }

    /// The value of `key` parsed as `T`; `Ok(None)` if absent, an error naming the key and
    /// the value if it does not parse.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| format!("option {key}={v}: {e}")),
        }
    }

    /// Every `(key, value)` pair, in command-line order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Parses an address or an address range option: `0x401000`, `4198400`, or
/// `0x401000-0x402000` (end exclusive).
pub fn parse_address_range(s: &str) -> Result<(u64, u64), String> {
    fn addr(s: &str) -> Result<u64, String> {
        let s = s.trim();
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        parsed.map_err(|_| format!("'{s}' is not an address (write 0x401000 or 4198400)"))
    }
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (addr(a)?, addr(b)?);
            if b <= a {
                return Err(format!(
                    "range '{s}' is empty: its end must be above its start"
                ));
            }
            Ok((a, b))
        }
        None => {
            let a = addr(s)?;
            Ok((a, a + 1))
        }
    }
}
