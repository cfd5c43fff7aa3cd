//! The export's footer report: totals per registry and currency, and whether
//! every posting balances (SPEC 5).
//!
//! Each posting is checked on its own: Σdebit = Σcredit, exactly. A posting
//! of a registry that filters entry types (`filtered`) may not balance; that
//! is explained (SPEC 2, the one documented way). Any other unbalanced
//! posting is unexplained and fails the export (exit 1), even when the
//! totals happen to cancel out. Memory: one line per (registry, currency).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use rust_decimal::Decimal;

use crate::money::Currency;
use crate::posting::Posting;

/// An unexplained unbalanced posting, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnbalancedRef {
    pub order_id: String,
    pub seq: u64,
    /// Σdebit − Σcredit.
    pub difference: Decimal,
}

/// Totals of one (registry, currency).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub postings: u64,
    /// Postings with no entries (an event that changed nothing).
    pub empty_postings: u64,
    pub entries: u64,
    pub debit: Decimal,
    pub credit: Decimal,
    /// Filtered postings that do not balance (explained).
    pub filtered_unbalanced: u64,
    /// Unfiltered postings that do not balance (unexplained).
    pub unexplained: u64,
    /// The first unexplained one.
    pub first_unexplained: Option<UnbalancedRef>,
}

impl Totals {
    /// Σdebit − Σcredit.
    pub fn difference(&self) -> Decimal {
        self.debit - self.credit
    }

    /// "balanced", or why not.
    pub fn status(&self, registry_id: &str, currency: Option<Currency>) -> String {
        let fmt = |d: Decimal| currency.map_or_else(|| d.to_string(), |c| c.format(d));
        if let Some(u) = &self.first_unexplained {
            return format!(
                "UNBALANCED: {} posting{} not filtered and not balanced (first: {registry_id}/{}/{}, debit - credit = {})",
                self.unexplained,
                if self.unexplained == 1 {
                    " is"
                } else {
                    "s are"
                },
                u.order_id,
                u.seq,
                fmt(u.difference),
            );
        }
        match (self.difference().is_zero(), self.filtered_unbalanced) {
            (true, 0) => "balanced".to_owned(),
            (true, n) => format!(
                "balanced in total; {n} filtered posting{} unbalanced (explained: entry-type filter)",
                if n == 1 { " is" } else { "s are" }
            ),
            (false, n) => format!(
                "unbalanced by {} (explained: entry-type filter, {n} filtered posting{})",
                fmt(self.difference()),
                if n == 1 { "" } else { "s" }
            ),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// By (registry, currency); postings without a currency (and so without
    /// entries) under `None`.
    pub totals: BTreeMap<(String, Option<Currency>), Totals>,
}

impl Summary {
    /// Adds one posting.
    pub fn add(&mut self, p: &Posting) {
        let t = self
            .totals
            .entry((p.registry_id.clone(), p.currency))
            .or_default();
        t.postings += 1;
        if p.entries.is_empty() {
            t.empty_postings += 1;
        }
        t.entries += p.entries.len() as u64;
        let (debit, credit) = p.debit_credit();
        // Saturating, like each posting's own totals: a stored posting out
        // of range must not stop the export.
        t.debit = t.debit.saturating_add(debit);
        t.credit = t.credit.saturating_add(credit);
        if debit != credit {
            if p.filtered {
                t.filtered_unbalanced += 1;
            } else {
                t.unexplained += 1;
                if t.first_unexplained.is_none() {
                    t.first_unexplained = Some(UnbalancedRef {
                        order_id: p.order_id.to_string(),
                        seq: p.seq,
                        difference: debit - credit,
                    });
                }
            }
        }
    }

    /// Every posting balances, or is explained by entry-type filtering.
    pub fn is_ok(&self) -> bool {
        self.unexplained() == 0
    }

    /// Number of unexplained unbalanced postings.
    pub fn unexplained(&self) -> u64 {
        self.totals.values().map(|t| t.unexplained).sum()
    }

    pub fn postings(&self) -> u64 {
        self.totals.values().map(|t| t.postings).sum()
    }

    pub fn entries(&self) -> u64 {
        self.totals.values().map(|t| t.entries).sum()
    }

    /// Postings without entries: counted here, no row in the CSV.
    pub fn empty_postings(&self) -> u64 {
        self.totals.values().map(|t| t.empty_postings).sum()
    }

    /// The table, one line per (registry, currency), and the verdict.
    pub fn render_table(&self) -> String {
        let head = [
            "registry", "currency", "postings", "entries", "debit", "credit", "status",
        ];
        let mut rows: Vec<[String; 7]> = Vec::with_capacity(self.totals.len());
        for ((registry, currency), t) in &self.totals {
            let fmt = |d: Decimal| currency.map_or_else(|| d.to_string(), |c| c.format(d));
            rows.push([
                registry.clone(),
                currency.map_or_else(|| "-".to_owned(), |c| c.code().to_owned()),
                t.postings.to_string(),
                t.entries.to_string(),
                fmt(t.debit),
                fmt(t.credit),
                t.status(registry, *currency),
            ]);
        }
        let mut width = head.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[&str]| {
            for (i, c) in cells.iter().enumerate() {
                let pad = width[i].saturating_sub(c.chars().count());
                // Numbers right-aligned, text left-aligned; the last column
                // is not padded.
                if (2..=5).contains(&i) {
                    let _ = write!(out, "{}{c}  ", " ".repeat(pad));
                } else if i == cells.len() - 1 {
                    out.push_str(c);
                } else {
                    let _ = write!(out, "{c}{}  ", " ".repeat(pad));
                }
            }
            out.push('\n');
        };
        line(&mut out, &head);
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            line(&mut out, &cells);
        }
        if self.totals.is_empty() {
            out.push_str("(no postings)\n");
        }
        out
    }

    /// The verdict line.
    pub fn verdict(&self) -> String {
        match self.unexplained() {
            0 => "OK: every posting balances or is explained by entry-type filtering".to_owned(),
            n => format!(
                "FAILED: {n} posting{} not balance and {} not filtered by entry type",
                if n == 1 { " does" } else { "s do" },
                if n == 1 { "is" } else { "are" },
            ),
        }
    }
}

/// What an export did, for the footer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStats {
    /// LEDGER was read up to this stream sequence (the snapshot).
    pub snapshot_seq: u64,
    pub postings: u64,
    /// Rows (CSV) or legs (beancount) written: one per entry.
    pub rows: u64,
    pub elapsed: Duration,
    /// Peak resident memory of the process, when the OS tells (Linux).
    pub peak_rss_bytes: Option<u64>,
}

impl RunStats {
    /// Postings per second.
    pub fn rate(&self) -> u64 {
        let ms = self.elapsed.as_millis().max(1);
        (u128::from(self.postings) * 1000 / ms) as u64
    }

    /// One line: what was read, how fast, how much memory.
    pub fn render(&self) -> String {
        let mut s = format!(
            "export: {} postings, {} rows from LEDGER up to stream sequence {} in {:.1} s ({} postings/s)",
            self.postings,
            self.rows,
            self.snapshot_seq,
            self.elapsed.as_secs_f64(),
            self.rate(),
        );
        if let Some(b) = self.peak_rss_bytes {
            let _ = write!(s, ", peak RSS {:.1} MiB", b as f64 / (1024.0 * 1024.0));
        }
        s
    }
}

/// The peak resident set size of this process (`VmHWM` of
/// `/proc/self/status`), where the OS exposes it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventType, OrderId};
    use crate::ledger::EntryType;
    use crate::posting::{Columns, GroupKey, GroupedEntry};
    use crate::registry::PostingMode;
    use time::macros::datetime;
    use uuid::Uuid;

    fn posting(filtered: bool, amounts: &[i64]) -> Posting {
        Posting {
            registry_id: "r".into(),
            order_id: OrderId::parse("o").unwrap(),
            seq: 1,
            idempotency_key: Uuid::nil(),
            event_id: "e".into(),
            event_type: EventType::OrderConfirmed,
            occurred_at: datetime!(2026-11-22 10:00 UTC),
            mode: PostingMode::Delta,
            currency: Some(Currency::parse("EUR").unwrap()),
            filtered,
            entries: amounts
                .iter()
                .map(|a| GroupedEntry {
                    key: GroupKey {
                        entry_type: EntryType::Revenue,
                        ledger_code: None,
                        description: "x".into(),
                        columns: Columns::from([]),
                    }
                    .into(),
                    quantity: 0,
                    amount: Decimal::new(*a, 2),
                })
                .collect(),
            cumulative: vec![],
        }
    }

    #[test]
    fn balanced_postings_pass() {
        let mut s = Summary::default();
        s.add(&posting(false, &[1000, -1000]));
        s.add(&posting(false, &[]));
        assert!(s.is_ok());
        let t = s.totals.values().next().unwrap();
        assert_eq!((t.postings, t.empty_postings, t.entries), (2, 1, 2));
        assert_eq!(t.status("r", None), "balanced");
    }

    #[test]
    fn a_filtered_unbalanced_posting_is_explained() {
        let mut s = Summary::default();
        s.add(&posting(true, &[-850]));
        assert!(s.is_ok());
        let eur = Currency::parse("EUR").ok();
        let st = s.totals.values().next().unwrap().status("r", eur);
        assert!(st.starts_with("unbalanced by -8.50 (explained"), "{st}");
    }

    #[test]
    fn an_unfiltered_unbalanced_posting_fails_even_if_totals_cancel() {
        let mut s = Summary::default();
        s.add(&posting(false, &[1000, -999]));
        s.add(&posting(false, &[-1]));
        assert!(!s.is_ok());
        assert_eq!(s.unexplained(), 2);
        let t = s.totals.values().next().unwrap();
        assert!(t.difference().is_zero());
        assert!(t.status("r", None).starts_with("UNBALANCED: 2 postings"));
        assert!(s.verdict().starts_with("FAILED"));
    }

    /// Each posting's totals saturate at `Decimal::MAX` (a stored posting
    /// out of range, found with the `records` fuzz target); adding two of
    /// them to the totals panicked ("Addition overflowed") and stopped the
    /// export.
    #[test]
    fn totals_out_of_range_do_not_stop_the_export() {
        let mut s = Summary::default();
        for _ in 0..2 {
            let mut p = posting(false, &[0, 0]);
            p.entries[0].amount = Decimal::MAX;
            p.entries[1].amount = Decimal::MIN;
            s.add(&p);
        }
        let t = s.totals.values().next().unwrap();
        assert_eq!((t.debit, t.credit), (Decimal::MAX, Decimal::MAX));
        assert_eq!(t.postings, 2);
    }
}
