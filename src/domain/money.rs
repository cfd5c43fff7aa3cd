//! Money at the edges: ISO 4217 currencies, decimal strings, rounding.
//!
//! Every amount in ledgerline is a [`Decimal`]. This module owns the three
//! places where decimals meet the outside world:
//! - parsing a JSON string into a decimal (never a float, never more decimals
//!   than the currency has minor units),
//! - rounding to a currency's minor units (half away from zero or half even),
//! - formatting an amount with exactly the currency's scale (`"38.00"`, JPY `"500"`).

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// An active ISO 4217 currency with its number of minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: [u8; 3],
    minor_units: u8,
}

/// Why a currency code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    #[error("{0:?} is not an ISO 4217 currency code (three upper-case letters, e.g. \"EUR\")")]
    Malformed(String),
    #[error("{0:?} is not an active ISO 4217 currency")]
    Unknown(String),
}

impl Currency {
    /// Parses an active ISO 4217 alphabetic code. Funds, precious metals and
    /// superseded codes (which have no minor units or are no longer legal
    /// tender) are refused, so every currency here has a definite scale.
    pub fn parse(code: &str) -> Result<Self, CurrencyError> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(CurrencyError::Malformed(code.to_owned()));
        }
        let iso = iso_currency::Currency::from_code(code)
            .ok_or_else(|| CurrencyError::Unknown(code.to_owned()))?;
        if iso.is_superseded().is_some() || iso.is_fund() {
            return Err(CurrencyError::Unknown(code.to_owned()));
        }
        let minor_units = iso
            .exponent()
            .and_then(|e| u8::try_from(e).ok())
            .ok_or_else(|| CurrencyError::Unknown(code.to_owned()))?;
        Ok(Self {
            code: [bytes[0], bytes[1], bytes[2]],
            minor_units,
        })
    }

    /// The three-letter code.
    pub fn code(&self) -> &str {
        // The bytes were checked to be ASCII upper-case letters in `parse`,
        // so they are always valid UTF-8.
        std::str::from_utf8(&self.code).unwrap_or("XXX")
    }

    /// The currency as one number: equal for equal currencies only.
    pub fn as_u32(&self) -> u32 {
        u32::from_le_bytes([self.code[0], self.code[1], self.code[2], self.minor_units])
    }

    /// Number of decimal places of the minor unit (EUR 2, JPY 0, BHD 3).
    pub fn minor_units(&self) -> u32 {
        u32::from(self.minor_units)
    }

    /// Rounds `amount` to this currency's minor units.
    pub fn round(&self, amount: Decimal, rounding: Rounding) -> Decimal {
        round_dp(amount, self.minor_units(), rounding)
    }

    /// Formats `amount` with exactly this currency's scale: `38` → `"38.00"`.
    ///
    /// The amount must already be on the minor-unit grid; every amount the
    /// ledger produces is (inputs are checked, derived amounts rounded).
    pub fn format(&self, amount: Decimal) -> String {
        self.on_scale(amount).to_string()
    }

    /// `amount` with exactly this currency's scale and no negative zero:
    /// what [`Currency::format`] prints, for writing without a `String`.
    pub fn on_scale(&self, amount: Decimal) -> Decimal {
        let mut a = amount;
        a.rescale(self.minor_units());
        if a.is_zero() {
            // Avoid "-0.00".
            a.set_sign_positive(true);
        }
        a
    }

    /// True when `amount` has no more decimals than the minor unit allows.
    pub fn fits(&self, amount: Decimal) -> bool {
        // Normalising only ever lowers the scale.
        amount.scale() <= self.minor_units() || amount.normalize().scale() <= self.minor_units()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The text a [`Decimal`] prints (its `Display`, `to_string()`), rendered
/// on the stack: amounts are written into a body without a `String` or
/// the formatting machinery. `-` for any negative sign (negative zero
/// included, as `Display` prints it), then the mantissa's digits with a
/// point `scale` digits from the right (at least one digit before it).
pub struct DecimalText {
    /// Filled from the end: `buf[start..]` is the text.
    buf: [u8; DecimalText::CAPACITY],
    start: usize,
}

impl DecimalText {
    /// A sign, 29 digits (a 96-bit mantissa), a point and a leading zero
    /// fit with room to spare.
    const CAPACITY: usize = 40;

    pub fn new(d: Decimal) -> Self {
        let mut t = Self {
            buf: [0; Self::CAPACITY],
            start: Self::CAPACITY,
        };
        let mut m = d.mantissa().unsigned_abs();
        for _ in 0..d.scale() {
            t.push(next_digit(&mut m));
        }
        if d.scale() > 0 {
            t.push(b'.');
        }
        loop {
            t.push(next_digit(&mut m));
            if m == 0 {
                break;
            }
        }
        if d.is_sign_negative() {
            t.push(b'-');
        }
        t
    }

    fn push(&mut self, b: u8) {
        // At most 1 + 29 + 1 + 1 bytes are pushed (scale ≤ 28 < 29 digits).
        self.start -= 1;
        self.buf[self.start] = b;
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits, '.' and '-' were written.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }

    /// The text as bytes (no UTF-8 check, for writing into a buffer).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Appends what `Currency::on_scale(amount)` prints for a currency of
/// `minor_units` (its `Display`: `38` → `"38.00"`, no negative zero), the
/// bytes of [`Currency::format`] without a `String`. An amount whose scale
/// is at most `minor_units` and whose mantissa on that scale fits in 64 bits
/// (every amount of an order) is written from its mantissa directly; any
/// other (one to round, a huge one) goes through `rescale` and
/// [`DecimalText`].
pub fn write_on_scale(out: &mut Vec<u8>, amount: Decimal, minor_units: u32) {
    // A zero (half of a body's amounts: the side an entry is not on) on
    // any scale is `0` with `minor_units` zeros after the point, unsigned.
    if amount.is_zero() && minor_units <= 4 {
        // Each a copy of known length (no call to copy the bytes).
        match minor_units {
            0 => out.push(b'0'),
            1 => out.extend_from_slice(b"0.0"),
            2 => out.extend_from_slice(b"0.00"),
            3 => out.extend_from_slice(b"0.000"),
            _ => out.extend_from_slice(b"0.0000"),
        }
        return;
    }
    let scale = amount.scale();
    if scale <= minor_units && minor_units <= Decimal::MAX_SCALE {
        let m = u64::try_from(amount.mantissa().unsigned_abs()).ok();
        let factor = POW10.get((minor_units - scale) as usize).copied();
        if let Some(m) = m.zip(factor).and_then(|(m, f)| m.checked_mul(f)) {
            // `rescale` multiplies the mantissa by the same factor (it
            // fits), and a zero loses its sign.
            write_fixed(out, amount.is_sign_negative() && m != 0, m, minor_units);
            return;
        }
    }
    let mut a = amount;
    a.rescale(minor_units);
    if a.is_zero() {
        a.set_sign_positive(true);
    }
    out.extend_from_slice(DecimalText::new(a).as_bytes());
}

/// 10⁰ … 10¹⁹, every power of ten a `u64` holds.
const POW10: [u64; 20] = {
    let mut p = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// Appends an integer as `Decimal::from(n)` prints it.
pub fn write_integer(out: &mut Vec<u8>, n: i64) {
    match u8::try_from(n) {
        // One digit (most quantities of a body): the digit alone.
        Ok(digit @ 0..=9) => out.push(b'0' + digit),
        _ => write_fixed(out, n < 0, n.unsigned_abs(), 0),
    }
}

/// Appends an unsigned integer as its `Display` prints it.
pub fn write_unsigned(out: &mut Vec<u8>, n: u64) {
    write_fixed(out, false, n, 0);
}

/// Appends `-` when `negative`, then the digits of `mantissa` with a point
/// `scale` digits from the right and at least one digit before it: what
/// `Decimal`'s `Display` prints for that sign, mantissa and scale. Digits
/// are written two at a time (one division by 100 for two).
fn write_fixed(out: &mut Vec<u8>, negative: bool, mantissa: u64, scale: u32) {
    // A sign, 28 decimals, a point and the 20 digits of a u64.
    let mut buf = [0u8; 56];
    let mut start = buf.len();
    let mut m = mantissa;
    // The two digits of `n` (< 100) before `start`.
    let pair = |buf: &mut [u8; 56], start: &mut usize, n: u64| {
        // n < 100: its two digits are at 2n in the table.
        let at = 2 * n as usize;
        *start -= 2;
        buf[*start..*start + 2].copy_from_slice(&DIGIT_PAIRS[at..at + 2]);
    };
    let mut decimals = scale;
    while decimals >= 2 {
        pair(&mut buf, &mut start, m % 100);
        m /= 100;
        decimals -= 2;
    }
    if decimals == 1 {
        start -= 1;
        // m % 10 < 10.
        buf[start] = b'0' + (m % 10) as u8;
        m /= 10;
    }
    if scale > 0 {
        start -= 1;
        buf[start] = b'.';
    }
    while m >= 100 {
        pair(&mut buf, &mut start, m % 100);
        m /= 100;
    }
    if m >= 10 {
        pair(&mut buf, &mut start, m);
    } else {
        start -= 1;
        // m < 10.
        buf[start] = b'0' + m as u8;
    }
    if negative {
        start -= 1;
        buf[start] = b'-';
    }
    out.extend_from_slice(&buf[start..]);
}

/// `00` … `99`: the two digits of each number below 100, at twice it.
const DIGIT_PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut n = 0;
    while n < 100 {
        t[2 * n] = b'0' + (n / 10) as u8;
        t[2 * n + 1] = b'0' + (n % 10) as u8;
        n += 1;
    }
    t
};

/// The lowest decimal digit of `m` as ASCII, dividing `m` by ten (in 64
/// bits when it fits: every amount of an order does).
fn next_digit(m: &mut u128) -> u8 {
    let digit = match u64::try_from(*m) {
        Ok(small) => {
            *m = u128::from(small / 10);
            small % 10
        }
        Err(_) => {
            let digit = (*m % 10) as u64;
            *m /= 10;
            digit
        }
    };
    // digit < 10.
    b'0' + digit as u8
}

/// How a derived amount is rounded to minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Half away from zero (commercial rounding): 0.125 → 0.13, −0.125 → −0.13.
    #[default]
    HalfUp,
    /// Half to even (banker's rounding): 0.125 → 0.12, 0.135 → 0.14.
    HalfEven,
}

impl Rounding {
    fn strategy(self) -> RoundingStrategy {
        match self {
            Rounding::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            Rounding::HalfEven => RoundingStrategy::MidpointNearestEven,
        }
    }
}

/// `amount.round_dp_with_strategy(dp, rounding.strategy())`, the same
/// value, scale and sign (a test holds them equal), with the mantissa
/// divided once as a `u128` rather than nine digits at a time: the tax of
/// every line is rounded from a quotient's 28-digit scale.
pub fn round_dp(amount: Decimal, dp: u32, rounding: Rounding) -> Decimal {
    let scale = amount.scale();
    if scale <= dp || amount.is_zero() {
        // Returned as it is, or a zero (its sign kept) at scale `dp`.
        return amount.round_dp_with_strategy(dp, rounding.strategy());
    }
    // At most 96 bits; 10^28 fits a u128 with room to spare.
    let m = amount.mantissa().unsigned_abs();
    let unit = 10u128.pow(scale - dp);
    let (q, r) = (m / unit, m % unit);
    // `unit` is a power of ten of at least 10: its half is exact.
    let half = unit / 2;
    let up = match rounding {
        Rounding::HalfUp => r >= half,
        Rounding::HalfEven => r > half || (r == half && q & 1 == 1),
    };
    // q < 2^96 / 10, so q + 1 fits i128 and the 96 bits of a mantissa; a
    // zero result is a positive zero, as `from_parts` makes it.
    let q = q + u128::from(up);
    let signed = match i128::try_from(q) {
        Ok(q) if amount.is_sign_negative() => -q,
        Ok(q) => q,
        Err(_) => return amount.round_dp_with_strategy(dp, rounding.strategy()),
    };
    Decimal::try_from_i128_with_scale(signed, dp)
        .unwrap_or_else(|_| amount.round_dp_with_strategy(dp, rounding.strategy()))
}

/// Why a decimal string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("must be a decimal string like \"11.00\", not a JSON {0}")]
    NotAString(&'static str),
    #[error("{0:?} is not a plain decimal (digits, an optional leading '-', one optional '.')")]
    Malformed(String),
    #[error("{0:?} is out of range")]
    OutOfRange(String),
}

/// Longest decimal string accepted, in characters. Far beyond any real amount
/// (Decimal holds 28 significant digits); a bound so hostile input stays cheap.
pub const DECIMAL_STRING_MAX_CHARS: usize = 40;

/// Parses a strict decimal string: `-?[0-9]+(\.[0-9]+)?`. No exponent, no
/// `+`, no spaces, no thousands separators: what a producer sends is exactly
/// the number it means.
pub fn parse_decimal_str(s: &str) -> Result<Decimal, DecimalError> {
    if s.len() > DECIMAL_STRING_MAX_CHARS {
        return Err(DecimalError::OutOfRange(truncate(s)));
    }
    let bytes = s.as_bytes();
    let negative = bytes.first() == Some(&b'-');
    // One pass: the digits as one integer (while it fits 19 digits), the
    // place of the point, and whether the text is `-?[0-9]+(\.[0-9]+)?`.
    let mut mantissa: u64 = 0;
    let (mut digits, mut int_digits, mut point) = (0usize, 0usize, None);
    for (i, &b) in bytes.iter().enumerate().skip(usize::from(negative)) {
        match b {
            b'0'..=b'9' => {
                if digits < 19 {
                    mantissa = mantissa * 10 + u64::from(b - b'0');
                }
                digits += 1;
            }
            b'.' if point.is_none() => {
                point = Some(i);
                int_digits = digits;
            }
            _ => return Err(DecimalError::Malformed(truncate(s))),
        }
    }
    let frac_digits = match point {
        Some(_) => digits - int_digits,
        None => {
            int_digits = digits;
            0
        }
    };
    if int_digits == 0 || point.is_some() && frac_digits == 0 {
        return Err(DecimalError::Malformed(truncate(s)));
    }
    // At most 19 digits: the mantissa fits a `u64` (10^19 − 1 < 2^64) and
    // the scale is at most 19, so the decimal is the digits as one integer
    // on the fraction's scale, sign kept (a zero's too), as
    // `from_str_exact` makes it (a property test holds the two equal).
    if digits <= 19 {
        return Ok(Decimal::from_parts(
            mantissa as u32,
            (mantissa >> 32) as u32,
            0,
            negative,
            frac_digits as u32,
        ));
    }
    Decimal::from_str_exact(s).map_err(|_| DecimalError::OutOfRange(truncate(s)))
}

/// A tax rate as text without trailing zeros: `0.160` → `"0.16"`, `0` → `"0"`.
pub fn rate_text(rate: Decimal) -> String {
    rate.normalize().to_string()
}

/// A tax rate as a percent without trailing zeros: `0.075` → `"7.5"`.
pub fn rate_percent_text(rate: Decimal) -> String {
    (rate * Decimal::ONE_HUNDRED).normalize().to_string()
}

fn truncate(s: &str) -> String {
    s.chars().take(DECIMAL_STRING_MAX_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    /// `round_dp` is `round_dp_with_strategy`: value, scale and sign (the
    /// bits), for mantissas of every size, every scale, both roundings,
    /// midpoints and negative zeros included.
    #[test]
    fn round_dp_is_round_dp_with_strategy() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut values = Vec::new();
        for scale in 0..=28u32 {
            for m in [
                0i128, 1, 4, 5, 6, 15, 25, 35, 49, 50, 51, 125, 135, 5000, 4999, 5001,
            ] {
                values.push((m, scale));
            }
            for _ in 0..400 {
                let bits = next() % 97;
                let m = ((i128::from(next()) << 64) | i128::from(next())) & ((1i128 << bits) - 1);
                values.push((m, scale));
                // A midpoint at every digit below the point.
                let k = next() % 28 + 1;
                let m5 = (m % 1_000_000) * 10i128.pow(k as u32) + 5 * 10i128.pow(k as u32 - 1);
                values.push((m5, scale));
            }
        }
        for (m, scale) in values {
            for negative in [false, true] {
                let Ok(mut d) = Decimal::try_from_i128_with_scale(m, scale) else {
                    continue;
                };
                d.set_sign_negative(negative);
                for dp in 0..=4 {
                    for rounding in [Rounding::HalfUp, Rounding::HalfEven] {
                        let want = d.round_dp_with_strategy(dp, rounding.strategy());
                        let got = round_dp(d, dp, rounding);
                        assert_eq!(
                            got.serialize(),
                            want.serialize(),
                            "{d:?} to {dp} {rounding:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn currencies_know_their_minor_units() {
        assert_eq!(Currency::parse("EUR").unwrap().minor_units(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().minor_units(), 0);
        assert_eq!(Currency::parse("BHD").unwrap().minor_units(), 3);
        assert_eq!(Currency::parse("CLF").map(|c| c.minor_units()).ok(), None);
    }

    #[test]
    fn unknown_or_malformed_currencies_are_refused() {
        for code in ["EURO", "eur"] {
            let parsed = Currency::parse(code);
            assert!(
                matches!(parsed, Err(CurrencyError::Malformed(_))),
                "{code}: {parsed:?}"
            );
        }
        for code in ["ABC", "XAU"] {
            let parsed = Currency::parse(code);
            assert!(
                matches!(parsed, Err(CurrencyError::Unknown(_))),
                "{code}: {parsed:?}"
            );
        }
    }

    #[test]
    fn decimal_texts_read_as_display_prints_them() {
        let mut cases: Vec<Decimal> = [
            "0",
            "-0",
            "0.00",
            "-0.00",
            "0.05",
            "-0.05",
            "1",
            "38.00",
            "-12.34",
            "1000000",
            "0.0000000000000000000000000001",
            "123.456",
            "-7.5",
        ]
        .iter()
        .map(|s| dec(s))
        .collect();
        cases.extend([
            Decimal::MAX,
            Decimal::MIN,
            Decimal::new(-1, 28),
            Decimal::new(5, 3),
        ]);
        for scale in 0..=28 {
            cases.push(Decimal::from_i128_with_scale(
                79_228_162_514_264_337_593_543_950_335,
                scale,
            ));
            cases.push(Decimal::from_i128_with_scale(
                -(u64::MAX as i128) - 1,
                scale,
            ));
            cases.push(Decimal::from_i128_with_scale(u64::MAX as i128, scale));
            cases.push(Decimal::from_i128_with_scale(7, scale));
        }
        for d in cases {
            assert_eq!(DecimalText::new(d).as_str(), d.to_string(), "{d:?}");
        }
    }

    /// `write_on_scale` writes the bytes of `Currency::format`, and
    /// `write_integer` those of `Decimal::from(n).to_string()`.
    /// `write_on_scale`'s text.
    fn written(d: Decimal, minor_units: u32) -> String {
        let mut out = Vec::new();
        write_on_scale(&mut out, d, minor_units);
        String::from_utf8(out).unwrap()
    }

    /// The oracle: rust_decimal's own rescale and `to_string` (no "-0").
    fn formatted(d: Decimal, minor_units: u32) -> String {
        let mut want = d;
        want.rescale(minor_units);
        if want.is_zero() {
            want.set_sign_positive(true);
        }
        want.to_string()
    }

    #[test]
    fn written_amounts_are_the_formatted_ones() {
        let mut cases: Vec<Decimal> = ["0", "-0", "-0.000", "0.05", "-0.05", "38", "-12.345"]
            .iter()
            .map(|s| dec(s))
            .collect();
        cases.extend([Decimal::MAX, Decimal::MIN, Decimal::new(-1, 28)]);
        for scale in 0..=28 {
            for m in [
                1,
                7,
                10,
                u64::MAX as i128,
                u64::MAX as i128 + 1,
                i128::from(i64::MAX),
            ] {
                cases.push(Decimal::from_i128_with_scale(m, scale));
                cases.push(Decimal::from_i128_with_scale(-m, scale));
            }
        }
        for d in cases {
            for minor_units in 0..=4 {
                assert_eq!(written(d, minor_units), formatted(d, minor_units), "{d:?}");
            }
        }
        for code in ["EUR", "JPY", "BHD"] {
            let c = Currency::parse(code).unwrap();
            let mut out = Vec::new();
            write_on_scale(&mut out, dec("-0.5"), c.minor_units());
            assert_eq!(String::from_utf8(out).unwrap(), c.format(dec("-0.5")));
        }
        // Every number of digits, odd and even (digits go two at a time),
        // on every scale.
        for k in 0..20 {
            let p = 10u64.pow(k);
            for n in [p - 1, p, p + 1, p.saturating_mul(10) - 1] {
                let mut out = Vec::new();
                write_unsigned(&mut out, n);
                assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
                for minor_units in 0..=4 {
                    for d in [Decimal::from(n), -Decimal::from(n)] {
                        for scale in 0..=minor_units {
                            let mut d = d;
                            d.set_scale(scale).unwrap();
                            assert_eq!(written(d, minor_units), formatted(d, minor_units), "{d:?}");
                        }
                    }
                }
            }
        }
        for n in [0, 1, -1, 9, 10, -10, 1234, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_integer(&mut out, n);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                Decimal::from(n).to_string()
            );
        }
    }

    proptest::proptest! {
        /// A decimal string is read as `from_str_exact` reads it: the same
        /// mantissa, scale and sign (of a zero too), or the same refusal.
        #[test]
        fn decimal_strings_are_read_as_from_str_exact(
            s in "-?[0-9]{0,22}(\\.[0-9]{0,22})?|-?0{1,3}(\\.0{0,20})?|-?[0-9]{19,20}|[0-9.\\-]{0,6}",
        ) {
            let want = if s.len() > DECIMAL_STRING_MAX_CHARS {
                Err(())
            } else {
                let digits = s.strip_prefix('-').unwrap_or(&s);
                let strict = digits.split('.').count() <= 2
                    && digits.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                if strict { Decimal::from_str_exact(&s).map_err(|_| ()) } else { Err(()) }
            };
            let got = parse_decimal_str(&s);
            proptest::prop_assert_eq!(
                got.as_ref().map(|d| (d.mantissa(), d.scale(), d.is_sign_negative(), d.to_string())).map_err(|_| ()),
                want.map(|d| (d.mantissa(), d.scale(), d.is_sign_negative(), d.to_string()))
            );
        }

        /// Any decimal (mantissa, scale, sign) on any scale a currency may
        /// have, and any integer.
        #[test]
        fn written_amounts_are_the_formatted_ones_for_any_decimal(
            mantissa in proptest::prop_oneof![
                -1_000_000_000i128..1_000_000_000,
                -(1i128 << 96) + 1..(1i128 << 96),
            ],
            scale in 0u32..=28,
            minor_units in 0u32..=4,
            n: i64,
        ) {
            let d = Decimal::from_i128_with_scale(mantissa, scale);
            proptest::prop_assert_eq!(written(d, minor_units), formatted(d, minor_units));
            let mut out = Vec::new();
            write_integer(&mut out, n);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), Decimal::from(n).to_string());
            let mut out = Vec::new();
            write_unsigned(&mut out, n.unsigned_abs());
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), n.unsigned_abs().to_string());
        }
    }

    #[test]
    fn amounts_are_formatted_with_the_currency_scale() {
        let eur = Currency::parse("EUR").unwrap();
        let jpy = Currency::parse("JPY").unwrap();
        let bhd = Currency::parse("BHD").unwrap();
        assert_eq!(eur.format(dec("38")), "38.00");
        assert_eq!(eur.format(dec("-0.00")), "0.00");
        assert_eq!(jpy.format(dec("500")), "500");
        assert_eq!(bhd.format(dec("1.5")), "1.500");
    }

    #[test]
    fn rounding_modes_differ_only_on_midpoints() {
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(eur.round(dec("0.125"), Rounding::HalfUp), dec("0.13"));
        assert_eq!(eur.round(dec("0.125"), Rounding::HalfEven), dec("0.12"));
        assert_eq!(eur.round(dec("-0.125"), Rounding::HalfUp), dec("-0.13"));
        assert_eq!(eur.round(dec("0.1251"), Rounding::HalfEven), dec("0.13"));
    }

    #[test]
    fn decimal_strings_are_strict() {
        assert_eq!(parse_decimal_str("11.00").unwrap(), dec("11.00"));
        assert_eq!(parse_decimal_str("-3.5").unwrap(), dec("-3.5"));
        for bad in [
            "", "1e3", "+1", " 1", "1.", ".5", "1,00", "NaN", "--1", "1.2.3",
        ] {
            assert!(parse_decimal_str(bad).is_err(), "{bad:?} accepted");
        }
        let huge = "9".repeat(39);
        assert!(matches!(
            parse_decimal_str(&huge),
            Err(DecimalError::OutOfRange(_))
        ));
    }

    #[test]
    fn rates_print_without_trailing_zeros() {
        assert_eq!(rate_text(dec("0.160")), "0.16");
        assert_eq!(rate_text(dec("0")), "0");
        assert_eq!(rate_percent_text(dec("0.075")), "7.5");
        assert_eq!(rate_percent_text(dec("0.16")), "16");
        assert_eq!(rate_percent_text(dec("0")), "0");
    }
}
