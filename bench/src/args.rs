//! A small `--key value` / `--flag` parser: the suite needs nothing more, and a
//! CLI crate would only add compile time on a shared two-core machine.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

/// Parsed options; each accessor removes what it reads so that
/// [`Args::finish`] can reject options nobody asked for.
#[derive(Debug)]
pub(crate) struct Args {
    map: BTreeMap<String, Option<String>>,
}

impl Args {
    pub(crate) fn parse(argv: Vec<String>) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        let mut it = argv.into_iter().peekable();
        while let Some(tok) = it.next() {
            let Some(key) = tok.strip_prefix("--") else {
                return Err(format!(
                    "unexpected argument {tok:?} (options are --key value)"
                ));
            };
            let (key, value) = match key.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => {
                    let value = match it.peek() {
                        Some(next) if !next.starts_with("--") => it.next(),
                        _ => None,
                    };
                    (key.to_string(), value)
                }
            };
            map.insert(key, value);
        }
        Ok(Self { map })
    }

    /// `--key value`, or `default` when absent.
    pub(crate) fn get<T>(&mut self, key: &str, default: T) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.opt(key)?.unwrap_or(default))
    }

    /// `--key value` if present.
    pub(crate) fn opt<T>(&mut self, key: &str) -> Result<Option<T>, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.map.remove(key) {
            None => Ok(None),
            Some(None) => Err(format!("--{key} needs a value")),
            Some(Some(v)) => v
                .parse()
                .map(Some)
                .map_err(|e| format!("--{key} {v:?}: {e}")),
        }
    }

    /// `--key value` that must be present.
    pub(crate) fn req<T>(&mut self, key: &str) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.opt(key)?.ok_or_else(|| format!("--{key} is required"))
    }

    /// `--flag` (no value).
    pub(crate) fn flag(&mut self, key: &str) -> Result<bool, String> {
        match self.map.remove(key) {
            None => Ok(false),
            Some(None) => Ok(true),
            Some(Some(v)) => Err(format!("--{key} takes no value (got {v:?})")),
        }
    }

    /// Fails on any option that no accessor consumed.
    pub(crate) fn finish(self) -> Result<(), String> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(format!("unknown option --{k}")),
        }
    }
}

/// Parses sizes like `64`, `16KiB`, `16k`, `1MiB`, `1m`.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = [("kib", 1024), ("mib", 1 << 20), ("k", 1024), ("m", 1 << 20)]
        .iter()
        .find_map(|(suffix, m)| lower.strip_suffix(suffix).map(|n| (n.to_string(), *m)))
        .unwrap_or((lower.clone(), 1));
    num.trim()
        .parse::<usize>()
        .map(|n| n * mult)
        .map_err(|e| format!("bad size {s:?}: {e}"))
}

/// A size option such as `--size 16KiB`.
pub(crate) fn size_opt(args: &mut Args, key: &str, default: usize) -> Result<usize, String> {
    match args.opt::<String>(key)? {
        None => Ok(default),
        Some(s) => parse_size(&s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_values_flags_and_rejects_leftovers() {
        let mut a = Args::parse(argv("--port 80 --quick --size=1MiB --x 1")).unwrap();
        assert_eq!(a.req::<u16>("port").unwrap(), 80);
        assert!(a.flag("quick").unwrap());
        assert_eq!(size_opt(&mut a, "size", 0).unwrap(), 1 << 20);
        assert!(!a.flag("absent").unwrap());
        assert_eq!(a.finish().unwrap_err(), "unknown option --x");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("16KiB").unwrap(), 16384);
        assert_eq!(parse_size("16k").unwrap(), 16384);
        assert!(parse_size("x").is_err());
    }
}
