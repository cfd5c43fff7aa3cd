//! The audit CSV (SPEC 5): RFC 4180, UTF-8, one row per ledger entry.
//!
//! Columns, in this order ([`HEADER`]):
//!
//! `posting_id,posted_at,registry_id,order_id,seq,event_id,event_type,`
//! `entry_type,ledger_code,description,currency,quantity,debit,credit,`
//! `channel,product_id,option_id,unit_type,tax_rate,payment_method,fee_kind,`
//! `delivery_status,delivered_at,attempts,http_status`
//!
//! - `posting_id` is the posting's idempotency key (the `Idempotency-Key` the
//!   receiver saw), unique across registries, orders and seqs.
//! - `posted_at` is the LEDGER timestamp of the posting, RFC 3339 in UTC.
//! - The group columns are every [`Column`] but `currency` (which has its
//!   own column), always, in a fixed order, so the header never depends on
//!   the registries: empty where the registry does not group by the column
//!   or the column does not apply to the entry.
//! - `debit`/`credit` carry the currency's scale (`"38.00"`, JPY `"500"`);
//!   `quantity` is signed (a reversal of 2 tickets is `-2`).
//! - `delivery_status` is `pending` (no attempt yet), else the last
//!   attempt's outcome: `delivered`, `retrying` or `dead`; `delivered_at`
//!   the end of the successful attempt; `attempts` how many were recorded;
//!   `http_status` the last attempt's status (empty without a response).
//!
//! Fields holding commas, quotes or line breaks are quoted, quotes doubled;
//! rows end with CRLF. Every text cell (ids, codes, descriptions, group
//! values) that starts with `=`, `+`, `-`, `@`, a tab, a carriage return
//! or an apostrophe gets one apostrophe in front, so no spreadsheet runs it
//! as a formula; removing one leading apostrophe ([`unescape_text`]) gives
//! the original back exactly. Numbers we write (seq, quantity, amounts,
//! attempts, status) are never prefixed, so `-2` stays a number.

use std::borrow::Cow;
use std::io::Write;
use std::ops::Range;

use rust_decimal::Decimal;

use crate::money;
use crate::registry::Column;

use super::{ExportError, Row, Sink, write_timestamp};

/// The group columns of the CSV, in header order: every column but
/// `currency`, in [`Column::ALL`] order.
pub const GROUP_COLUMNS: [Column; 7] = {
    let [currency, rest @ ..] = Column::ALL;
    assert!(matches!(currency, Column::Currency));
    rest
};
/// The header row.
pub const HEADER: [&str; 25] = [
    "posting_id",
    "posted_at",
    "registry_id",
    "order_id",
    "seq",
    "event_id",
    "event_type",
    "entry_type",
    "ledger_code",
    "description",
    "currency",
    "quantity",
    "debit",
    "credit",
    "channel",
    "product_id",
    "option_id",
    "unit_type",
    "tax_rate",
    "payment_method",
    "fee_kind",
    "delivery_status",
    "delivered_at",
    "attempts",
    "http_status",
];

/// First characters that make a spreadsheet read a cell as a formula (SPEC 5
/// names `=`, `+`, `-`, `@`; tab and CR are in OWASP's list), plus the
/// apostrophe itself so that the escape can always be undone.
const FORMULA_TRIGGERS: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\''];

/// A text cell made safe against formula injection: one apostrophe in front
/// when it starts with a trigger character.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    match s.chars().next() {
        Some(c) if FORMULA_TRIGGERS.contains(&c) => Cow::Owned(format!("'{s}")),
        _ => Cow::Borrowed(s),
    }
}

/// The original text of a cell written by [`escape_text`].
pub fn unescape_text(s: &str) -> &str {
    s.strip_prefix('\'').unwrap_or(s)
}

/// Writes the CSV.
pub struct CsvSink<W: Write> {
    out: ::csv::Writer<W>,
    /// The texts made for the posting at hand, reused from one to the next.
    scratch: Vec<u8>,
}

/// Appends what `write` writes to `s`; returns where it is.
fn put(s: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
    let start = s.len();
    write(s);
    start..s.len()
}

impl<W: Write> CsvSink<W> {
    /// Starts the file: writes the header.
    pub fn new(out: W) -> Result<Self, ExportError> {
        let mut out = ::csv::WriterBuilder::new()
            .terminator(::csv::Terminator::CRLF)
            .quote_style(::csv::QuoteStyle::Necessary)
            .from_writer(out);
        out.write_record(HEADER).map_err(csv_error)?;
        Ok(Self {
            out,
            scratch: Vec::with_capacity(256),
        })
    }

    /// The underlying writer (after [`Sink::finish`]).
    pub fn into_inner(self) -> Result<W, ExportError> {
        self.out
            .into_inner()
            .map_err(|e| ExportError::Io(e.into_error()))
    }
}

fn csv_error(e: ::csv::Error) -> ExportError {
    match e.into_kind() {
        ::csv::ErrorKind::Io(io) => ExportError::Io(io),
        other => ExportError::Io(std::io::Error::other(format!("{other:?}"))),
    }
}

impl<W: Write> Sink for CsvSink<W> {
    fn posting(&mut self, row: &Row<'_>) -> Result<u64, ExportError> {
        let p = row.posting;
        let d = &row.delivery;
        // Every text the export makes for this posting (ids, times,
        // numbers) goes into one reused buffer, its fields borrowed from
        // it: no allocation per posting or row once it has grown.
        let s = &mut self.scratch;
        s.clear();
        // Writing into a Vec cannot fail.
        let posting_id = put(s, |s| {
            let _ = write!(s, "{}", p.idempotency_key);
        });
        let posted_at = put(s, |s| write_timestamp(s, row.posted_at));
        let seq = put(s, |s| money::write_unsigned(s, p.seq));
        let delivered_at = put(s, |s| {
            if let Some(at) = d.delivered_at {
                write_timestamp(s, at);
            }
        });
        let attempts = put(s, |s| money::write_unsigned(s, u64::from(d.attempts)));
        let http_status = put(s, |s| {
            if let Some(status) = d.http_status {
                money::write_unsigned(s, u64::from(status));
            }
        });
        let posting_end = s.len();
        let currency = p.currency.as_ref().map_or("", |c| c.code());
        let registry_id = escape_text(&p.registry_id);
        let order_id = escape_text(p.order_id.as_str());
        let event_id = escape_text(&p.event_id);
        for e in &p.entries {
            s.truncate(posting_end);
            let (debit, credit) = (e.amount.max(Decimal::ZERO), (-e.amount).max(Decimal::ZERO));
            let debit = put(s, |s| p.write_amount(s, debit));
            let credit = put(s, |s| p.write_amount(s, credit));
            let quantity = put(s, |s| money::write_integer(s, e.quantity));
            let groups: [Cow<'_, str>; GROUP_COLUMNS.len()] = GROUP_COLUMNS.map(|c| {
                e.key
                    .columns
                    .iter()
                    .find(|(col, _)| *col == c)
                    .and_then(|(_, v)| v.as_deref())
                    .map(escape_text)
                    .unwrap_or_default()
            });
            let ledger_code = escape_text(e.key.ledger_code.as_deref().unwrap_or(""));
            let description = escape_text(&e.key.description);
            let s: &[u8] = s;
            let head: [&[u8]; 14] = [
                &s[posting_id.clone()],
                &s[posted_at.clone()],
                registry_id.as_bytes(),
                order_id.as_bytes(),
                &s[seq.clone()],
                event_id.as_bytes(),
                p.event_type.as_str().as_bytes(),
                e.key.entry_type.as_str().as_bytes(),
                ledger_code.as_bytes(),
                description.as_bytes(),
                currency.as_bytes(),
                &s[quantity],
                &s[debit],
                &s[credit],
            ];
            let tail: [&[u8]; 4] = [
                d.status.as_str().as_bytes(),
                &s[delivered_at.clone()],
                &s[attempts.clone()],
                &s[http_status.clone()],
            ];
            debug_assert_eq!(head.len() + groups.len() + tail.len(), HEADER.len());
            // One record, its fields borrowed: no vector per entry.
            let record = head
                .into_iter()
                .chain(groups.iter().map(|g| g.as_bytes()))
                .chain(tail);
            self.out.write_record(record).map_err(csv_error)?;
        }
        Ok(p.entries.len() as u64)
    }

    fn finish(&mut self) -> Result<(), ExportError> {
        self.out.flush().map_err(ExportError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_the_spec_columns_with_the_group_columns_in_place() {
        let h = HEADER.join(",");
        assert!(h.starts_with(
            "posting_id,posted_at,registry_id,order_id,seq,event_id,event_type,entry_type,\
             ledger_code,description,currency,quantity,debit,credit,"
        ));
        assert!(h.ends_with(",delivery_status,delivered_at,attempts,http_status"));
        for (i, c) in GROUP_COLUMNS.iter().enumerate() {
            assert_eq!(HEADER[14 + i], c.as_str());
        }
        assert!(!GROUP_COLUMNS.contains(&Column::Currency));
    }

    #[test]
    fn formula_triggers_get_one_apostrophe_and_it_comes_off_again() {
        for s in [
            "=HYPERLINK(\"http://x\",\"y\")",
            "+1",
            "-2",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "'quoted",
            "''",
        ] {
            let e = escape_text(s);
            assert!(e.starts_with('\''), "{s:?} → {e:?}");
            assert_eq!(unescape_text(&e), s);
        }
        for s in ["Museum", "", "a=b", "1,2", "Ünïcode €"] {
            assert_eq!(escape_text(s), s);
            assert_eq!(unescape_text(&escape_text(s)), s);
        }
    }
}
