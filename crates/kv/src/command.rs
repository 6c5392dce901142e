//! The command table: every command's name, arity, flags and handler.
//!
//! A data-type module exports `pub(crate) const COMMANDS: &[CommandSpec]`
//! and is listed in [`MODULES`]; that is the whole registration. Data
//! handlers get a [`Txn`] (write or read, per the `WRITE` flag) and the full
//! argument vector (`args[0]` is the command name); connection-level
//! commands (MULTI, AUTH, CLIENT, ...) are `Handler::Session` and run in
//! `session.rs`.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::error::CmdError;
use crate::resp::Reply;
use crate::txn::Txn;

/// A data command: runs inside one transaction overlay.
pub type DataFn = fn(&mut Txn<'_>, &[Bytes]) -> Result<Reply, CmdError>;

#[derive(Clone, Copy)]
pub enum Handler {
    Data(DataFn),
    /// Handled by the session (connection state or server-wide state).
    Session,
    /// A blocking list command (see `blocking.rs`): tried like a write
    /// command, then parked on the connection task until it can be served.
    Blocking(&'static crate::blocking::BlockOps),
}

/// Modifies data: runs in a write txn, rejected on RO, marks WATCHed keys.
pub const WRITE: u32 = 1;
pub const READONLY: u32 = 1 << 1;
/// O(1)/O(log n): reported as `fast` by COMMAND.
pub const FAST: u32 = 1 << 2;
pub const ADMIN: u32 = 1 << 3;
/// Allowed before AUTH (AUTH, HELLO, QUIT).
pub const NO_AUTH: u32 = 1 << 4;
/// May grow memory: reported as `denyoom`.
pub const DENYOOM: u32 = 1 << 5;
/// Connection commands that never touch the keyspace.
pub const CONN: u32 = 1 << 6;

/// One command's static description, in Redis's `COMMAND INFO` shape.
pub struct CommandSpec {
    /// Lower case.
    pub name: &'static str,
    /// Redis convention: `n > 0` exactly n args (including the name), `-n`
    /// at least n.
    pub arity: i32,
    pub flags: u32,
    pub first_key: i32,
    pub last_key: i32,
    pub step: i32,
    pub handler: Handler,
    /// For COMMAND DOCS: `string`, `hash`, `generic`, `server`, ...
    pub group: &'static str,
    pub summary: &'static str,
}

/// The table entry of a data command in `group`: keys are the arguments
/// `keys.0..=keys.1` every `keys.2` (Redis's first/last/step); each type's
/// module wraps it with its group and usual key shape.
pub(crate) const fn data_spec(
    group: &'static str,
    name: &'static str,
    arity: i32,
    flags: u32,
    keys: (i32, i32, i32),
    f: DataFn,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        handler: Handler::Data(f),
        group,
        summary,
    }
}

impl CommandSpec {
    pub fn is_write(&self) -> bool {
        self.flags & WRITE != 0
    }

    /// Checks the argument count against the arity.
    ///
    /// # Errors
    /// `CmdError::Arity` with Redis's text.
    pub fn check_arity(&self, n: usize) -> Result<(), CmdError> {
        let ok = if self.arity >= 0 {
            n == self.arity as usize
        } else {
            n >= (-self.arity) as usize
        };
        if ok {
            Ok(())
        } else {
            Err(CmdError::Arity(self.name.to_string()))
        }
    }

    /// The flag names COMMAND INFO reports.
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.flags & WRITE != 0 {
            f.push("write");
        }
        if self.flags & READONLY != 0 {
            f.push("readonly");
        }
        if self.flags & DENYOOM != 0 {
            f.push("denyoom");
        }
        if self.flags & ADMIN != 0 {
            f.push("admin");
        }
        if self.flags & NO_AUTH != 0 {
            f.push("no_auth");
        }
        if self.flags & FAST != 0 {
            f.push("fast");
        }
        f
    }

    /// Indices (into args) of the keys this command names.
    pub fn key_indices(&self, nargs: usize) -> Vec<usize> {
        if self.first_key <= 0 {
            return Vec::new();
        }
        let last = if self.last_key < 0 {
            nargs as i32 + self.last_key
        } else {
            self.last_key
        };
        let step = self.step.max(1);
        let mut v = Vec::new();
        let mut i = self.first_key;
        while i <= last && (i as usize) < nargs {
            v.push(i as usize);
            i += step;
        }
        v
    }
}

/// Every module's command list. Add a data type's `COMMANDS` here.
pub const MODULES: &[&[CommandSpec]] = &[
    crate::keyspace::COMMANDS,
    crate::string::COMMANDS,
    crate::hash::COMMANDS,
    crate::list::COMMANDS,
    crate::set::COMMANDS,
    crate::zset::COMMANDS,
    crate::session::COMMANDS,
    crate::blocking::COMMANDS,
];

/// The table by lower-case name.
pub fn table() -> &'static HashMap<&'static str, &'static CommandSpec> {
    static TABLE: OnceLock<HashMap<&'static str, &'static CommandSpec>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut m = HashMap::new();
        for module in MODULES {
            for spec in module.iter() {
                let dup = m.insert(spec.name, spec);
                assert!(dup.is_none(), "command {} registered twice", spec.name);
            }
        }
        m
    })
}

/// Looks up a command by its (any-case) name.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    table().get(lower.as_str()).copied()
}

/// The `ERR unknown command` reply for `args`.
pub fn unknown_command(args: &[Bytes]) -> CmdError {
    let name = String::from_utf8_lossy(&args[0]).into_owned();
    let rest: Vec<String> = args[1..]
        .iter()
        .take(20)
        .map(|a| format!("'{}'", String::from_utf8_lossy(a)))
        .collect();
    CmdError::UnknownCommand {
        name,
        args: format!("{} ", rest.join(" ")).trim_start().to_string(),
    }
}

// ---- argument parsing shared by all modules ----

/// Redis's `string2ll`: optional `-`, digits, no spaces or `+`, no leading
/// zeros (except `0`), in i64 range.
///
/// # Errors
/// `NotInteger`.
pub fn parse_i64(b: &[u8]) -> Result<i64, CmdError> {
    let s = std::str::from_utf8(b).map_err(|_| CmdError::NotInteger)?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || !digits.bytes().all(|c| c.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || s == "-0"
    {
        return Err(CmdError::NotInteger);
    }
    s.parse().map_err(|_| CmdError::NotInteger)
}

/// Parses a non-negative count/index argument.
///
/// # Errors
/// `NotInteger` for garbage; `msg` when negative.
pub fn parse_u64_arg(b: &[u8], negative_msg: &str) -> Result<u64, CmdError> {
    let v = parse_i64(b)?;
    if v < 0 {
        return Err(CmdError::msg(negative_msg));
    }
    Ok(v as u64)
}

/// Redis's `string2ld` for float arguments: no spaces, no NaN.
///
/// # Errors
/// `NotFloat`.
pub fn parse_f64(b: &[u8]) -> Result<f64, CmdError> {
    let s = std::str::from_utf8(b).map_err(|_| CmdError::NotFloat)?;
    if s.is_empty() || s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
        return Err(CmdError::NotFloat);
    }
    let v: f64 = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => s.parse().map_err(|_| CmdError::NotFloat)?,
    };
    if v.is_nan() {
        return Err(CmdError::NotFloat);
    }
    Ok(v)
}

/// Formats a float reply the way Redis does for INCRBYFLOAT/HINCRBYFLOAT:
/// the shortest decimal that round-trips, no exponent, no trailing `.0`.
pub fn format_f64(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = format!("{v}");
    if s.contains('e') || s.contains('E') {
        // Rust's Display never uses exponents for f64; kept for safety.
        return format!("{v:.17}");
    }
    match s.strip_suffix(".0") {
        Some(t) => t.to_string(),
        None => s,
    }
}

/// Case-insensitive keyword comparison.
pub fn is(arg: &[u8], kw: &str) -> bool {
    arg.eq_ignore_ascii_case(kw.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_parse_like_redis() {
        assert_eq!(parse_i64(b"-12").unwrap(), -12);
        assert_eq!(parse_i64(b"9223372036854775807").unwrap(), i64::MAX);
        assert_eq!(parse_i64(b"-9223372036854775808").unwrap(), i64::MIN);
        for bad in [
            &b""[..],
            b" 1",
            b"1 ",
            b"+1",
            b"01",
            b"1.0",
            b"9223372036854775808",
            b"-0",
            b"-",
        ] {
            assert!(
                parse_i64(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn floats_parse_and_format_like_redis() {
        assert_eq!(parse_f64(b"1.5e3").unwrap(), 1500.0);
        assert!(parse_f64(b"nan").is_err());
        assert!(parse_f64(b" 1").is_err());
        assert_eq!(format_f64(10.5 + 0.1), "10.6");
        assert_eq!(format_f64(5000.0 + 200.0), "5200");
        assert_eq!(format_f64(-0.0), "0");
    }

    #[test]
    fn table_has_unique_lowercase_names_and_sane_arity() {
        for (name, spec) in table() {
            assert_eq!(*name, name.to_ascii_lowercase());
            assert_ne!(spec.arity, 0, "{name}");
            assert!(
                !(spec.is_write() && spec.flags & READONLY != 0),
                "{name} both write and readonly"
            );
        }
        assert!(lookup(b"GeT").is_some());
    }

    #[test]
    fn key_indices_follow_first_last_step() {
        let mset = lookup(b"mset").unwrap();
        assert_eq!(mset.key_indices(5), vec![1, 3]);
        let del = lookup(b"del").unwrap();
        assert_eq!(del.key_indices(4), vec![1, 2, 3]);
    }
}
