//! Sorted-set scores and ranges: the order-preserving score encoding used in
//! zset row keys, Redis's score formatting, and the parsers of score ranges
//! (`(1.5`, `-inf`) and lex ranges (`[a`, `(b`, `-`, `+`).
//!
//! Invariant: `encode_score(a) < encode_score(b)` (bytewise) iff `a < b`
//! numerically, for every non-NaN score; `-0.0` encodes as `0.0` so the two
//! zeros, equal for Redis, are one row position.

use crate::error::CmdError;

/// The big-endian, order-preserving 8-byte form of a score.
pub fn encode_score(v: f64) -> [u8; 8] {
    // -0.0 == 0.0 numerically: give them one encoding so range seeks at 0
    // find both.
    let v = if v == 0.0 { 0.0 } else { v };
    let bits = v.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits ^ (1 << 63)
    };
    ordered.to_be_bytes()
}

/// Inverse of [`encode_score`].
pub fn decode_score(b: [u8; 8]) -> f64 {
    let ordered = u64::from_be_bytes(b);
    let bits = if ordered >> 63 == 1 {
        ordered ^ (1 << 63)
    } else {
        !ordered
    };
    f64::from_bits(bits)
}

/// Decodes a stored 8-byte score value.
///
/// # Errors
/// `Corrupt` when the value is not 8 bytes.
pub fn decode_score_slice(b: &[u8]) -> Result<f64, CmdError> {
    let arr: [u8; 8] = b
        .try_into()
        .map_err(|_| CmdError::Corrupt(crate::error::DecodeError::Truncated))?;
    Ok(decode_score(arr))
}

/// Formats a score as Redis 7.2 replies it (`fpconv_dtoa`): the shortest
/// decimal that round-trips, plain notation for moderate exponents,
/// `1e+20`-style scientific notation otherwise, `inf` / `-inf`.
pub fn format_score(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    // Rust's `{:e}` is the shortest round-trip form: `d.ddddde<exp>`.
    let sci = format!("{:e}", v.abs());
    let (mant, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let nd = digits.len() as i32;
    // fpconv's `K`: value = digits * 10^k.
    let k = exp - (nd - 1);
    let absexp = (k + nd - 1).abs();
    let mut out = String::new();
    if v < 0.0 {
        out.push('-');
    }
    if k >= 0 && absexp < nd + 7 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', k as usize));
    } else if k < 0 && (k > -7 || absexp < 4) {
        let offset = nd + k;
        if offset <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-offset) as usize));
            out.push_str(&digits);
        } else {
            out.push_str(&digits[..offset as usize]);
            out.push('.');
            out.push_str(&digits[offset as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if nd > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&exp.abs().to_string());
    }
    out
}

/// Parses a score argument (ZADD, ZINCRBY, WEIGHTS): Redis's `strtod` rules
/// with `inf`/`-inf`, NaN refused.
///
/// # Errors
/// `NotFloat`.
pub fn parse_score(b: &[u8]) -> Result<f64, CmdError> {
    crate::command::parse_f64(b)
}

/// One end of a score range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreBound {
    pub value: f64,
    pub exclusive: bool,
}

/// A `min max` score range (ZRANGEBYSCORE, ZCOUNT, ...).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreRange {
    pub min: ScoreBound,
    pub max: ScoreBound,
}

fn parse_score_bound(b: &[u8]) -> Result<ScoreBound, CmdError> {
    let bad = || CmdError::msg("ERR min or max is not a float");
    let (exclusive, num) = match b.split_first() {
        Some((b'(', rest)) => (true, rest),
        _ => (false, b),
    };
    let value = crate::command::parse_f64(num).map_err(|_| bad())?;
    Ok(ScoreBound { value, exclusive })
}

impl ScoreRange {
    /// Parses `min` and `max` (already swapped by the caller for the REV
    /// forms).
    ///
    /// # Errors
    /// `ERR min or max is not a float`.
    pub fn parse(min: &[u8], max: &[u8]) -> Result<ScoreRange, CmdError> {
        Ok(ScoreRange {
            min: parse_score_bound(min)?,
            max: parse_score_bound(max)?,
        })
    }

    pub fn above_min(&self, v: f64) -> bool {
        if self.min.exclusive {
            v > self.min.value
        } else {
            v >= self.min.value
        }
    }

    pub fn below_max(&self, v: f64) -> bool {
        if self.max.exclusive {
            v < self.max.value
        } else {
            v <= self.max.value
        }
    }

    pub fn contains(&self, v: f64) -> bool {
        self.above_min(v) && self.below_max(v)
    }

    /// Whether no score can be in the range (Redis's `zslIsInRange` check).
    pub fn is_empty(&self) -> bool {
        self.min.value > self.max.value
            || (self.min.value == self.max.value && (self.min.exclusive || self.max.exclusive))
    }
}

/// One end of a lex range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LexBound {
    /// `-`
    NegInf,
    /// `+`
    PosInf,
    /// `[x` (inclusive) or `(x` (exclusive).
    Value { v: Vec<u8>, exclusive: bool },
}

/// A `min max` lex range (ZRANGEBYLEX, ZLEXCOUNT, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexRange {
    pub min: LexBound,
    pub max: LexBound,
}

fn parse_lex_bound(b: &[u8]) -> Result<LexBound, CmdError> {
    match b.split_first() {
        Some((b'-', [])) => Ok(LexBound::NegInf),
        Some((b'+', [])) => Ok(LexBound::PosInf),
        Some((b'[', rest)) => Ok(LexBound::Value {
            v: rest.to_vec(),
            exclusive: false,
        }),
        Some((b'(', rest)) => Ok(LexBound::Value {
            v: rest.to_vec(),
            exclusive: true,
        }),
        _ => Err(CmdError::msg("ERR min or max not valid string range item")),
    }
}

impl LexRange {
    /// # Errors
    /// `ERR min or max not valid string range item`.
    pub fn parse(min: &[u8], max: &[u8]) -> Result<LexRange, CmdError> {
        Ok(LexRange {
            min: parse_lex_bound(min)?,
            max: parse_lex_bound(max)?,
        })
    }

    pub fn above_min(&self, m: &[u8]) -> bool {
        match &self.min {
            LexBound::NegInf => true,
            LexBound::PosInf => false,
            LexBound::Value { v, exclusive } => {
                if *exclusive {
                    m > v.as_slice()
                } else {
                    m >= v.as_slice()
                }
            }
        }
    }

    pub fn below_max(&self, m: &[u8]) -> bool {
        match &self.max {
            LexBound::NegInf => false,
            LexBound::PosInf => true,
            LexBound::Value { v, exclusive } => {
                if *exclusive {
                    m < v.as_slice()
                } else {
                    m <= v.as_slice()
                }
            }
        }
    }

    pub fn contains(&self, m: &[u8]) -> bool {
        self.above_min(m) && self.below_max(m)
    }

    /// The smallest member the range can hold, for seeking (`None`: from
    /// the start).
    pub fn seek_min(&self) -> Option<&[u8]> {
        match &self.min {
            LexBound::Value { v, .. } => Some(v),
            _ => None,
        }
    }

    /// The largest member the range can hold, for reverse seeking.
    pub fn seek_max(&self) -> Option<&[u8]> {
        match &self.max {
            LexBound::Value { v, .. } => Some(v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_encoding_preserves_order_including_signs_zeros_and_infinities() {
        let vals = [
            f64::NEG_INFINITY,
            f64::MIN,
            -1e300,
            -2.5,
            -1.0,
            -f64::MIN_POSITIVE,
            -5e-324,
            0.0,
            5e-324,
            f64::MIN_POSITIVE,
            1.0,
            1.5,
            2.0,
            1e300,
            f64::MAX,
            f64::INFINITY,
        ];
        for w in vals.windows(2) {
            assert!(
                encode_score(w[0]) < encode_score(w[1]),
                "{} !< {}",
                w[0],
                w[1]
            );
        }
        for v in vals {
            assert_eq!(decode_score(encode_score(v)), v);
        }
        assert_eq!(encode_score(-0.0), encode_score(0.0));
        assert_eq!(decode_score(encode_score(-0.0)).to_bits(), 0.0f64.to_bits());
    }

    #[test]
    fn scores_format_like_redis_7_2() {
        assert_eq!(format_score(1.0), "1");
        assert_eq!(format_score(-3.0), "-3");
        assert_eq!(format_score(0.0), "0");
        assert_eq!(format_score(-0.0), "0");
        assert_eq!(format_score(1.5), "1.5");
        assert_eq!(format_score(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_score(f64::INFINITY), "inf");
        assert_eq!(format_score(f64::NEG_INFINITY), "-inf");
        assert_eq!(format_score(1e20), "1e+20");
        assert_eq!(format_score(123456789.0), "123456789");
        assert_eq!(format_score(0.001), "0.001");
        assert_eq!(format_score(1.5e-10), "1.5e-10");
        assert_eq!(format_score(-1.25e-7), "-1.25e-7");
        assert_eq!(format_score(10_000_000.0), "10000000");
        assert_eq!(format_score(1e8), "1e+8");
        assert_eq!(format_score(3.0e15), "3e+15");
    }

    #[test]
    fn score_ranges_parse_bounds_and_reject_garbage() {
        let r = ScoreRange::parse(b"(1", b"+inf").unwrap();
        assert!(r.min.exclusive && !r.max.exclusive);
        assert!(!r.contains(1.0) && r.contains(1.0001) && r.contains(f64::INFINITY));
        let r = ScoreRange::parse(b"-inf", b"(5").unwrap();
        assert!(r.contains(f64::NEG_INFINITY) && !r.contains(5.0));
        assert!(ScoreRange::parse(b"(3", b"3").unwrap().is_empty());
        assert!(!ScoreRange::parse(b"3", b"3").unwrap().is_empty());
        assert!(ScoreRange::parse(b"5", b"1").unwrap().is_empty());
        for bad in [&b"abc"[..], b"((1", b"nan", b"", b"("] {
            let e = ScoreRange::parse(bad, b"1").unwrap_err();
            assert_eq!(e.to_string(), "ERR min or max is not a float");
        }
    }

    #[test]
    fn lex_ranges_parse_bounds_and_reject_garbage() {
        let r = LexRange::parse(b"[b", b"(d").unwrap();
        assert!(!r.contains(b"a") && r.contains(b"b") && r.contains(b"c\xff") && !r.contains(b"d"));
        let r = LexRange::parse(b"-", b"+").unwrap();
        assert!(r.contains(b"") && r.contains(b"\xff\xff"));
        let r = LexRange::parse(b"+", b"-").unwrap();
        assert!(!r.contains(b"m"));
        assert_eq!(r.seek_min(), None);
        for bad in [&b"a"[..], b"", b"-a", b"+x"] {
            let e = LexRange::parse(bad, b"+").unwrap_err();
            assert_eq!(e.to_string(), "ERR min or max not valid string range item");
        }
    }
}
