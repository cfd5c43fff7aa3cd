//! Reading a vendor's JSON payload without losing a digit.
//!
//! Objects are read one level at a time as raw members
//! ([`serde_json::value::RawValue`]): a number stays the text the vendor
//! wrote, so money becomes a [`Decimal`] from that text, never through
//! `f64`. Every error names the field by its path in the payload
//! (`items[1].price`) with the reason slug of SPEC 1's rejections.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use crate::events::{
    AMOUNT_MAX_ABS, ID_MAX_CHARS, OrderId, QUANTITY_MAX, RejectReason, Rejection, TEXT_MAX_CHARS,
};
use crate::money::{Currency, parse_decimal_str};

/// Longest number text read as money or a quantity, in characters.
const NUMBER_MAX_CHARS: usize = 40;

/// A JSON object of the payload at `path`: its members, raw.
pub(crate) struct Obj<'a> {
    members: BTreeMap<String, &'a RawValue>,
    path: String,
}

fn invalid(path: String, message: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::InvalidField, path, message)
}

/// The payload as an object, or `malformed_json`. Its size is bounded by
/// the listener, and every event mapped from it is checked against
/// [`crate::events::MESSAGE_MAX_BYTES`] by the event parser.
pub(crate) fn root(body: &[u8]) -> Result<Obj<'_>, Rejection> {
    let members: BTreeMap<String, &RawValue> = serde_json::from_slice(body).map_err(|e| {
        Rejection::new(
            RejectReason::MalformedJson,
            "",
            format!("not a JSON object: {e}"),
        )
    })?;
    Ok(Obj {
        members,
        path: String::new(),
    })
}

/// What kind of JSON value a raw text is, from its first character.
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "string",
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

impl<'a> Obj<'a> {
    /// The path of member `key`, for errors.
    pub(crate) fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Member `key`, `None` when absent or null.
    pub(crate) fn opt(&self, key: &str) -> Option<&'a RawValue> {
        self.members.get(key).copied().filter(|v| v.get() != "null")
    }

    fn req(&self, key: &str) -> Result<&'a RawValue, Rejection> {
        self.opt(key).ok_or_else(|| {
            Rejection::new(RejectReason::MissingField, self.path(key), "is required")
        })
    }

    /// Member `key` as an object.
    pub(crate) fn obj(&self, key: &str) -> Result<Obj<'a>, Rejection> {
        let raw = self.req(key)?;
        as_obj(raw, self.path(key))
    }

    /// Member `key` as an array of objects (absent or null: empty).
    pub(crate) fn objects(&self, key: &str, max: usize) -> Result<Vec<Obj<'a>>, Rejection> {
        let Some(raw) = self.opt(key) else {
            return Ok(Vec::new());
        };
        let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| {
            invalid(
                self.path(key),
                format!("must be an array, not a {}", kind(raw)),
            )
        })?;
        if items.len() > max {
            return Err(Rejection::new(
                RejectReason::TooManyLineItems,
                self.path(key),
                format!("{} entries, over the limit of {max}", items.len()),
            ));
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| as_obj(item, format!("{}[{i}]", self.path(key))))
            .collect()
    }

    /// Member `key` as a string (any length up to [`TEXT_MAX_CHARS`]).
    pub(crate) fn text(&self, key: &str) -> Result<String, Rejection> {
        let raw = self.req(key)?;
        let s: String = serde_json::from_str(raw.get()).map_err(|_| {
            invalid(
                self.path(key),
                format!("must be a string, not a {}", kind(raw)),
            )
        })?;
        if s.chars().count() > TEXT_MAX_CHARS {
            return Err(invalid(
                self.path(key),
                format!("is longer than {TEXT_MAX_CHARS} characters"),
            ));
        }
        Ok(s)
    }

    pub(crate) fn opt_text(&self, key: &str) -> Result<Option<String>, Rejection> {
        match self.opt(key) {
            Some(_) => self.text(key).map(Some),
            None => Ok(None),
        }
    }

    /// Member `key` as an identifier: a non-empty string, or an integer
    /// written as a number (`"orderId": 1234` is the id `"1234"`).
    pub(crate) fn id(&self, key: &str) -> Result<String, Rejection> {
        let raw = self.req(key)?;
        raw_id(raw, &self.path(key))
    }

    pub(crate) fn opt_id(&self, key: &str) -> Result<Option<String>, Rejection> {
        match self.opt(key) {
            Some(raw) => raw_id(raw, &self.path(key)).map(Some),
            None => Ok(None),
        }
    }

    /// Member `key` as an order id (`[A-Za-z0-9_-]{1,128}`).
    pub(crate) fn order_id(&self, key: &str) -> Result<OrderId, Rejection> {
        let raw = self.req(key)?;
        raw_order_id(raw, &self.path(key))
    }

    /// Member `key` as money in `currency`: a JSON number or a decimal
    /// string, read from its exact text.
    pub(crate) fn money(&self, key: &str, currency: Currency) -> Result<Decimal, Rejection> {
        let path = self.path(key);
        let amount = self.decimal(key)?;
        if amount.abs() > AMOUNT_MAX_ABS {
            return Err(invalid(path, format!("{amount} is out of range")));
        }
        if !currency.fits(amount) {
            return Err(Rejection::new(
                RejectReason::TooManyDecimals,
                path,
                format!(
                    "{amount} has more decimals than {currency} allows ({})",
                    currency.minor_units()
                ),
            ));
        }
        Ok(amount)
    }

    /// Member `key` as an exact decimal, from a JSON number's text or a
    /// decimal string.
    pub(crate) fn decimal(&self, key: &str) -> Result<Decimal, Rejection> {
        let raw = self.req(key)?;
        let path = self.path(key);
        let text = raw.get();
        if text.starts_with('"') {
            let s: String = serde_json::from_str(text)
                .map_err(|e| invalid(path.clone(), format!("is not a string: {e}")))?;
            return parse_decimal_str(&s).map_err(|e| invalid(path, e.to_string()));
        }
        if kind(raw) != "number" {
            return Err(invalid(
                path,
                format!("must be a number, not a {}", kind(raw)),
            ));
        }
        number_text(text, &path)
    }

    /// Member `key` as a quantity: a whole number from 0 to
    /// [`QUANTITY_MAX`] (so quantity × price cannot overflow).
    pub(crate) fn count(&self, key: &str) -> Result<u64, Rejection> {
        let d = self.decimal(key)?;
        let path = self.path(key);
        if d.is_sign_negative() && !d.is_zero() {
            return Err(Rejection::new(
                RejectReason::NegativeValue,
                path,
                format!("{d} is negative"),
            ));
        }
        if d.fract() != Decimal::ZERO {
            return Err(invalid(path, format!("{d} is not a whole number")));
        }
        u64::try_from(d.trunc())
            .ok()
            .filter(|q| *q <= QUANTITY_MAX)
            .ok_or_else(|| invalid(path, format!("{d} is over {QUANTITY_MAX}")))
    }

    /// Member `key` as a timestamp: RFC 3339, or a date and time without
    /// an offset (`2018-10-29T00:00:00`, `2021-04-07 15:14:26`, taken as
    /// UTC), or a date (midnight UTC).
    pub(crate) fn timestamp(&self, key: &str) -> Result<OffsetDateTime, Rejection> {
        let s = self.text(key)?;
        parse_timestamp(&s).ok_or_else(|| {
            invalid(
                self.path(key),
                format!("{s:?} is not a date or a timestamp like \"2018-10-29T00:00:00\""),
            )
        })
    }

    /// The value at an RFC 6901 `pointer` below this object, as an order id.
    pub(crate) fn order_id_at(&self, pointer: &str) -> Result<OrderId, Rejection> {
        let tokens: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        let shown = tokens.join(".");
        let missing = || {
            Rejection::new(
                RejectReason::MissingField,
                shown.clone(),
                format!("the order id is required here (order_id_pointer {pointer:?})"),
            )
        };
        let (last, parents) = tokens.split_last().ok_or_else(missing)?;
        let mut here: Obj<'a> = Obj {
            members: self.members.clone(),
            path: self.path.clone(),
        };
        for t in parents {
            if here.opt(t).is_none() {
                return Err(missing());
            }
            here = here.obj(t)?;
        }
        let raw = here.opt(last).ok_or_else(missing)?;
        raw_order_id(raw, &shown)
    }
}

fn as_obj(raw: &RawValue, path: String) -> Result<Obj<'_>, Rejection> {
    let members: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get()).map_err(|_| {
        invalid(
            path.clone(),
            format!("must be an object, not a {}", kind(raw)),
        )
    })?;
    Ok(Obj { members, path })
}

fn raw_id(raw: &RawValue, path: &str) -> Result<String, Rejection> {
    let text = raw.get();
    let s = if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .map_err(|e| invalid(path.to_owned(), format!("is not a string: {e}")))?
    } else if kind(raw) == "number" && text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        text.to_owned()
    } else {
        return Err(invalid(
            path.to_owned(),
            format!("must be a string or an integer, not a {}", kind(raw)),
        ));
    };
    if s.trim().is_empty() {
        return Err(invalid(path.to_owned(), "must not be empty"));
    }
    if s.chars().count() > ID_MAX_CHARS {
        return Err(invalid(
            path.to_owned(),
            format!("is longer than {ID_MAX_CHARS} characters"),
        ));
    }
    Ok(s)
}

fn raw_order_id(raw: &RawValue, path: &str) -> Result<OrderId, Rejection> {
    let s = raw_id(raw, path)?;
    OrderId::parse(&s).ok_or_else(|| {
        Rejection::new(
            RejectReason::InvalidOrderId,
            path,
            format!("{s:?} does not match [A-Za-z0-9_-]{{1,128}}"),
        )
    })
}

/// A JSON number's text as an exact decimal: `660.0`, `100000`, `1.5e2`.
pub(crate) fn number_text(text: &str, path: &str) -> Result<Decimal, Rejection> {
    if text.len() > NUMBER_MAX_CHARS {
        return Err(invalid(path.to_owned(), "the number is too long"));
    }
    let parsed = if text.contains(['e', 'E']) {
        Decimal::from_scientific(text)
    } else {
        Decimal::from_str_exact(text)
    };
    parsed.map_err(|_| invalid(path.to_owned(), format!("{text} is out of range")))
}

/// A vendor's timestamp, in the formats the references use, in UTC; `None`
/// when unreadable or outside the years 1 to 9999 (which RFC 3339 cannot
/// write).
pub(crate) fn parse_timestamp(s: &str) -> Option<OffsetDateTime> {
    let local = [
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]"),
        format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"),
    ];
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .or_else(|| {
            local
                .iter()
                .find_map(|f| PrimitiveDateTime::parse(s, f).ok())
                .map(PrimitiveDateTime::assume_utc)
        })
        .or_else(|| {
            Date::parse(s, format_description!("[year]-[month]-[day]"))
                .ok()
                .map(|d| d.midnight().assume_utc())
        })?
        .checked_to_offset(time::UtcOffset::UTC)?;
    (1..=9999).contains(&t.year()).then_some(t)
}

/// A timestamp from [`parse_timestamp`] as SPEC 1's `occurred_at` text.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| unreachable!("parse_timestamp keeps UTC times in years 1 to 9999"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn money_in_json_numbers_keeps_its_exact_text() {
        let body = br#"{"a": 0.1, "b": 0.2, "c": 12345678901234.56, "d": "5.00", "e": 660.0, "f": 1.5e2, "g": 100000}"#;
        let o = root(body).unwrap();
        let got: Vec<String> = ["a", "b", "c", "d", "e", "f", "g"]
            .iter()
            .map(|k| o.money(k, eur()).unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            [
                "0.1",
                "0.2",
                "12345678901234.56",
                "5.00",
                "660.0",
                "150",
                "100000"
            ]
        );
        let sum = o.money("a", eur()).unwrap() + o.money("b", eur()).unwrap();
        assert_eq!(sum.to_string(), "0.3");
    }

    #[test]
    fn money_with_too_many_decimals_or_the_wrong_type_names_the_field() {
        let o = root(br#"{"a": 0.105, "b": true, "c": {"d": "1.2.3"}, "z": 0.100}"#).unwrap();
        let e = o.money("a", eur()).unwrap_err();
        assert_eq!(
            (e.reason, e.field.as_str()),
            (RejectReason::TooManyDecimals, "a")
        );
        let e = o.money("b", eur()).unwrap_err();
        assert_eq!(
            (e.reason, e.field.as_str()),
            (RejectReason::InvalidField, "b")
        );
        let e = o.obj("c").unwrap().money("d", eur()).unwrap_err();
        assert_eq!(e.field, "c.d");
        let e = o.money("missing", eur()).unwrap_err();
        assert_eq!(e.reason, RejectReason::MissingField);
        assert_eq!(o.money("z", eur()).unwrap().to_string(), "0.100");
        let far =
            root(br#"{"big": 1e400, "small": 1e-400, "wide": 99999999999999999999999999999999}"#)
                .unwrap();
        for k in ["big", "small", "wide"] {
            assert!(far.money(k, eur()).is_err(), "{k}");
        }
        let q =
            root(br#"{"ok": 3, "half": 1.5, "huge": 18446744073709551615, "neg": -1}"#).unwrap();
        assert_eq!(q.count("ok").unwrap(), 3);
        assert_eq!(
            q.count("half").unwrap_err().reason,
            RejectReason::InvalidField
        );
        assert_eq!(
            q.count("huge").unwrap_err().reason,
            RejectReason::InvalidField
        );
        assert_eq!(
            q.count("neg").unwrap_err().reason,
            RejectReason::NegativeValue
        );
    }

    #[test]
    fn ids_may_be_integers_and_pointers_find_nested_ids() {
        let o = root(br#"{"orderId": 1234, "x": {"a/b": {"inv": "INV-7"}}, "f": 1.5}"#).unwrap();
        assert_eq!(o.order_id("orderId").unwrap().as_str(), "1234");
        assert_eq!(o.order_id_at("/x/a~1b/inv").unwrap().as_str(), "INV-7");
        let e = o.order_id_at("/x/nope").unwrap_err();
        assert_eq!(
            (e.reason, e.field.as_str()),
            (RejectReason::MissingField, "x.nope")
        );
        assert_eq!(o.id("f").unwrap_err().reason, RejectReason::InvalidField);
    }

    #[test]
    fn vendor_timestamps_are_read_as_utc() {
        for (s, want) in [
            ("2018-10-29T00:00:00", "2018-10-29T00:00:00Z"),
            ("2021-04-07 15:14:26", "2021-04-07T15:14:26Z"),
            ("2020-07-01", "2020-07-01T00:00:00Z"),
            ("2020-03-04T12:36:24-05:00", "2020-03-04T17:36:24Z"),
        ] {
            assert_eq!(rfc3339(parse_timestamp(s).unwrap()), want, "{s}");
        }
        assert!(parse_timestamp("yesterday").is_none());
        // Past the last year RFC 3339 can write once in UTC: refused, not a panic.
        assert!(parse_timestamp("9999-12-31T23:59:59-01:00").is_none());
    }
}
