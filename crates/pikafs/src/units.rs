//! Human units on the command line: sizes and durations.
//!
//! Sizes are integers with an optional suffix, case-insensitive:
//! - none or `B`: bytes (`4096`);
//! - `K`, `M`, `G`, `T`, `P` and `KiB`, `MiB`, `GiB`, `TiB`, `PiB`: powers of
//!   1024 (`1G` = `1GiB` = 2^30), because volumes and chunks are binary;
//! - `KB`, `MB`, `GB`, `TB`, `PB`: powers of 1000 (`1GB` = 10^9), as disk
//!   vendors and `fio` mean them.
//!
//! Durations use `humantime` (`500ms`, `10s`, `1m 30s`).

use std::time::Duration;

/// Parses a size such as `64MiB`, `10GiB`, `4096`, `1G` or `1GB`.
///
/// # Errors
/// An empty, negative, fractional or overflowing number, or an unknown
/// suffix; the message says which.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let num: String = num.chars().filter(|c| *c != '_').collect();
    if num.is_empty() {
        return Err(format!(
            "{s:?} is not a size: expected a number like 4096 or 64MiB"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|e| format!("{s:?} is not a size: {e}"))?;
    let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "p" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown size suffix {other:?} (use K/M/G/T/P or KiB..PiB for 1024s, KB..PB for 1000s)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} does not fit in 64 bits"))
}

/// Parses a duration such as `500ms` or `10s`.
///
/// # Errors
/// Whatever `humantime` rejects.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration: {e}"))
}

/// Formats bytes in binary units for tables (`1.5 GiB`).
pub fn fmt_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KB"), Ok(4000));
        assert_eq!(parse_size("100TiB"), Ok(100 << 40));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("1_000"), Ok(1000));
        assert_eq!(parse_size(" 2 MiB "), Ok(2 << 20));
    }

    #[test]
    fn bad_sizes() {
        for bad in ["", "MiB", "-1", "1.5G", "10XB", "99999999999P", "0x10"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(fmt_size(512), "512 B");
        assert_eq!(fmt_size(10 << 30), "10 GiB");
        assert_eq!(fmt_size(3 << 29), "1.5 GiB");
    }
}
