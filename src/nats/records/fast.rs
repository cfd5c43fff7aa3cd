//! The dispatcher's read of a stored posting without its `cumulative`
//! ([`StoredPosting::read_without_cumulative`]), for every wake-up it
//! takes: straight from the bytes into the posting with the typed reader
//! (`domain::json_reader`), no serde visitor per field.
//!
//! It answers only for a record it reads whole as serde would: every
//! field once (a missing `previous_subject_seq` is 0, as serde's default),
//! no key it does not know, no string with an escape, each value through
//! the same parse serde's `Deserialize` uses (`OrderId::parse`,
//! `Uuid`'s `FromStr`, RFC 3339, `Currency::parse`, `Decimal`'s
//! `FromStr`), `cumulative` skipped as serde skips it (`IgnoredAny`), and
//! nothing but whitespace after the object. Anything else gives `None`
//! and the record is read by serde, which also names what is wrong. The
//! tests hold the two reads equal on generated records and on records
//! mutated byte by byte.

use std::str::FromStr;
use std::sync::Arc;

use rust_decimal::Decimal;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::StoredPosting;
use crate::domain::json_reader::{Keys, Reader, first};
use crate::events::{EventType, OrderId, Text};
use crate::ledger::EntryType;
use crate::money::Currency;
use crate::posting::{Columns, GroupKey, GroupedEntry, Posting};
use crate::registry::{Column, PostingMode};

const STORED_KEYS: Keys<14> = Keys::new([
    "source_seq",
    "previous_subject_seq",
    "registry_id",
    "order_id",
    "seq",
    "idempotency_key",
    "event_id",
    "event_type",
    "occurred_at",
    "mode",
    "currency",
    "filtered",
    "entries",
    "cumulative",
]);

const ENTRY_KEYS: Keys<6> = Keys::new([
    "entry_type",
    "ledger_code",
    "description",
    "columns",
    "quantity",
    "amount",
]);

/// Every field of a stored posting but `previous_subject_seq` (serde's
/// default is 0), as bits of `seen`.
const REQUIRED: u16 = 0x3fff & !2;

/// Every field of an entry.
const ENTRY_FIELDS: u16 = 0x3f;

/// Most entries read in one posting: a posting has at most a few
/// thousand (it fits `MAX_POSTING_BYTES`); more is serde's to read.
const ENTRIES_MAX: usize = 100_000;

/// A grouping's columns: at most one of each.
const COLUMNS_MAX: usize = Column::ALL.len();

/// The stored posting `payload` holds, read without its `cumulative`, when
/// it is one this reader takes; `None` for anything else.
pub(super) fn read_without_cumulative(payload: &[u8]) -> Option<StoredPosting> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut r = Reader::new(text);
    let mut seen = 0u16;
    let (mut source_seq, mut previous_subject_seq, mut seq) = (0, 0, 0);
    let (mut registry_id, mut order_id, mut key, mut event_id) = (None, None, None, None);
    let (mut event_type, mut occurred_at, mut mode) = (None, None, None);
    let (mut currency, mut filtered, mut entries) = (None, false, Vec::new());
    r.object(&STORED_KEYS, |r, name| {
        match name {
            "source_seq" => {
                first(&mut seen, 1)?;
                source_seq = r.u64()?;
            }
            "previous_subject_seq" => {
                first(&mut seen, 2)?;
                previous_subject_seq = r.u64()?;
            }
            "registry_id" => {
                first(&mut seen, 4)?;
                registry_id = Some(r.str()?.to_owned());
            }
            "order_id" => {
                first(&mut seen, 8)?;
                order_id = Some(OrderId::parse(r.str()?)?);
            }
            "seq" => {
                first(&mut seen, 16)?;
                seq = r.u64()?;
            }
            "idempotency_key" => {
                first(&mut seen, 32)?;
                key = Some(Uuid::from_str(r.str()?).ok()?);
            }
            "event_id" => {
                first(&mut seen, 64)?;
                event_id = Some(r.str()?.to_owned());
            }
            "event_type" => {
                first(&mut seen, 128)?;
                event_type = Some(EventType::parse(r.str()?)?);
            }
            "occurred_at" => {
                first(&mut seen, 256)?;
                occurred_at = Some(OffsetDateTime::parse(r.str()?, &Rfc3339).ok()?);
            }
            "mode" => {
                first(&mut seen, 512)?;
                mode = Some(match r.str()? {
                    "delta" => PostingMode::Delta,
                    "full" => PostingMode::Full,
                    _ => return None,
                });
            }
            "currency" => {
                first(&mut seen, 1024)?;
                currency = match r.opt_str()? {
                    Some(code) => Some(Currency::parse(code).ok()?),
                    None => None,
                };
            }
            "filtered" => {
                first(&mut seen, 2048)?;
                filtered = r.bool()?;
            }
            "entries" => {
                first(&mut seen, 4096)?;
                let mut last: Option<Columns> = None;
                entries = r.array(ENTRIES_MAX, |r| entry(r, &mut last))?;
            }
            "cumulative" => {
                first(&mut seen, 8192)?;
                r.skip_value()?;
            }
            _ => return None,
        }
        Some(())
    })?;
    if seen & REQUIRED != REQUIRED || !r.at_end() {
        return None;
    }
    Some(StoredPosting {
        source_seq,
        previous_subject_seq,
        posting: Posting {
            registry_id: registry_id?,
            order_id: order_id?,
            seq,
            idempotency_key: key?,
            event_id: event_id?,
            event_type: event_type?,
            occurred_at: occurred_at?,
            mode: mode?,
            currency,
            filtered,
            entries,
            cumulative: Vec::new(),
        },
    })
}

/// One grouped entry. Its columns are the entry before's list when they
/// are equal (a grouping's entries mostly share theirs), so an equal list
/// is not allocated again.
fn entry(r: &mut Reader<'_>, last: &mut Option<Columns>) -> Option<GroupedEntry> {
    let mut seen = 0u16;
    let (mut entry_type, mut ledger_code, mut description) = (None, None, None);
    let (mut columns, mut quantity, mut amount) = (None, 0, None);
    r.object(&ENTRY_KEYS, |r, name| {
        match name {
            "entry_type" => {
                first(&mut seen, 1)?;
                entry_type = Some(EntryType::parse(r.str()?)?);
            }
            "ledger_code" => {
                first(&mut seen, 2)?;
                ledger_code = r.opt_str()?.map(Text::from);
            }
            "description" => {
                first(&mut seen, 4)?;
                description = Some(Text::from(r.str()?));
            }
            "columns" => {
                first(&mut seen, 8)?;
                let pairs = r.array(COLUMNS_MAX, |r| {
                    r.eat(b'[')?;
                    let column = Column::parse(r.str()?)?;
                    r.eat(b',')?;
                    let value = r.opt_str()?;
                    r.eat(b']')?;
                    Some((column, value))
                })?;
                let same = last.as_ref().is_some_and(|l| {
                    l.len() == pairs.len()
                        && l.iter()
                            .zip(&pairs)
                            .all(|((c, v), (pc, pv))| c == pc && v.as_deref() == *pv)
                });
                columns = if same {
                    last.clone()
                } else {
                    let list: Columns = pairs
                        .into_iter()
                        .map(|(c, v)| (c, v.map(Text::from)))
                        .collect();
                    *last = Some(list.clone());
                    Some(list)
                };
            }
            "quantity" => {
                first(&mut seen, 16)?;
                quantity = r.i64()?;
            }
            "amount" => {
                first(&mut seen, 32)?;
                amount = Some(Decimal::from_str(r.str()?).ok()?);
            }
            _ => return None,
        }
        Some(())
    })?;
    if seen != ENTRY_FIELDS {
        return None;
    }
    Some(GroupedEntry {
        key: Arc::new(GroupKey {
            entry_type: entry_type?,
            ledger_code,
            description: description?,
            columns: columns?,
        }),
        quantity,
        amount: amount?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posting::idempotency_key;
    use crate::records::StoredPostingRef;

    fn entry_of(i: usize, text: &str) -> GroupedEntry {
        GroupedEntry {
            key: GroupKey {
                entry_type: EntryType::ALL[i % EntryType::ALL.len()],
                ledger_code: i
                    .is_multiple_of(2)
                    .then(|| Text::from(format!("{i}-{text}"))),
                description: Text::from(format!("{text} {i}")),
                // Runs of equal lists (shared by the reader), then others.
                columns: Column::ALL
                    .iter()
                    .take(i / 3 % 4)
                    .map(|&c| (c, (i % 3 != 1).then(|| Text::from("EUR"))))
                    .collect(),
            }
            .into(),
            quantity: [0, -3, 7, i64::MIN, i64::MAX][i % 5],
            amount: [
                Decimal::new(-2200, 2),
                Decimal::ZERO,
                Decimal::new(123_456_789, 7),
                Decimal::MAX,
                Decimal::MIN,
            ][i % 5],
        }
    }

    fn stored(text: &str, entries: usize) -> StoredPosting {
        let all: Vec<GroupedEntry> = (0..entries).map(|i| entry_of(i, text)).collect();
        StoredPosting {
            source_seq: 42,
            previous_subject_seq: u64::MAX,
            posting: Posting {
                registry_id: format!("r-{text}"),
                order_id: OrderId::parse("o-1_A").unwrap(),
                seq: 3,
                idempotency_key: idempotency_key("r", "o-1_A", 3),
                event_id: format!("e-{text}"),
                event_type: EventType::OrderUpdated,
                occurred_at: time::macros::datetime!(2026-11-29 10:43:32.5 +05:30),
                mode: PostingMode::Full,
                currency: Currency::parse("BHD").ok(),
                filtered: true,
                entries: all.clone(),
                cumulative: all.into_iter().rev().collect(),
            },
        }
    }

    fn json(sp: &StoredPosting) -> Vec<u8> {
        StoredPostingRef {
            source_seq: sp.source_seq,
            previous_subject_seq: sp.previous_subject_seq,
            posting: &sp.posting,
        }
        .to_json()
        .unwrap()
    }

    fn without_cumulative(mut sp: StoredPosting) -> StoredPosting {
        sp.posting.cumulative.clear();
        sp
    }

    /// What the aggregator writes is read here (not by serde), as serde
    /// reads it: every field, entries with and without codes, columns and
    /// currency, shared and separate column lists, every sign and size.
    #[test]
    fn the_aggregators_records_are_read_here_as_serde_reads_them() {
        for entries in [0, 1, 2, 13] {
            for text in ["Ticket A", "Käse ✓ 10 €", ""] {
                let sp = stored(text, entries);
                let bytes = json(&sp);
                let read = read_without_cumulative(&bytes).expect("read here");
                assert_eq!(read, without_cumulative(sp.clone()));
                assert_eq!(
                    read,
                    StoredPosting::read_without_cumulative_by_serde(&bytes).unwrap()
                );
            }
        }
        // No currency, delta, not filtered, no previous posting given.
        let mut sp = stored("x", 2);
        sp.posting.currency = None;
        sp.posting.mode = PostingMode::Delta;
        sp.posting.filtered = false;
        let bytes = json(&sp);
        let read = read_without_cumulative(&bytes).expect("read here");
        assert_eq!(read, without_cumulative(sp.clone()));
        let text = String::from_utf8(bytes).unwrap();
        let without = text.replace(&format!(",\"previous_subject_seq\":{}", u64::MAX), "");
        let read = read_without_cumulative(without.as_bytes()).expect("read here");
        assert_eq!(read.previous_subject_seq, 0);
        assert_eq!(
            read,
            StoredPosting::read_without_cumulative_by_serde(without.as_bytes()).unwrap()
        );
        // Whitespace between tokens and keys in another order.
        let spaced = text
            .replacen("{\"source_seq\":42,", "\n{ \"source_seq\" : 42 ,\t", 1)
            .replacen(",\"mode\":\"delta\"", "", 1)
            .replacen("{", "{\"mode\":\"delta\",", 1);
        let read = read_without_cumulative(spaced.as_bytes());
        assert_eq!(
            read.as_ref(),
            StoredPosting::read_without_cumulative_by_serde(spaced.as_bytes())
                .ok()
                .as_ref()
        );
    }

    /// What this reader leaves to serde: escapes, unknown or repeated
    /// keys, another number or value shape, trailing bytes.
    #[test]
    fn anything_else_is_left_to_serde() {
        let text = String::from_utf8(json(&stored("x", 2))).unwrap();
        for other in [
            text.replacen("\"r-x\"", "\"r-\\u0078\"", 1),
            text.replacen("{", "{\"extra\":1,", 1),
            text.replacen("{", "{\"seq\":3,", 1),
            text.replacen("\"seq\":3", "\"seq\":3.0", 1),
            text.replacen("\"quantity\":0", "\"quantity\":-0", 1),
            text.replacen("\"amount\":\"-22.00\"", "\"amount\":-22", 1),
            format!("{text} x"),
            text.replacen(",\"event_id\":\"e-x\"", "", 1),
        ] {
            assert_eq!(read_without_cumulative(other.as_bytes()), None, "{other}");
        }
    }

    /// Whatever a record's bytes, reading it here first gives what serde
    /// gives: every byte of a record replaced by each of a few bytes that
    /// matter to JSON, removed, or doubled.
    #[test]
    fn every_mutated_record_reads_as_serde_reads_it() {
        let bytes = json(&stored("Tï", 3));
        let check = |b: &[u8]| {
            let mine = StoredPosting::read_without_cumulative(b);
            let serde = StoredPosting::read_without_cumulative_by_serde(b);
            match (mine, serde) {
                (Ok(m), Ok(s)) => assert_eq!(m, s, "{}", String::from_utf8_lossy(b)),
                (Err(_), Err(_)) => {}
                (m, s) => panic!("{m:?} against {s:?} for {}", String::from_utf8_lossy(b)),
            }
        };
        for i in 0..bytes.len() {
            for r in [
                b'"', b'\\', b',', b':', b'}', b']', b'0', b'-', b' ', b'x', 0xff,
            ] {
                let mut m = bytes.clone();
                m[i] = r;
                check(&m);
            }
            let mut m = bytes.clone();
            m.remove(i);
            check(&m);
            let mut m = bytes.clone();
            m.insert(i, bytes[i]);
            check(&m);
        }
    }
}
