//! The same postings as a beancount ledger (`--format beancount`).
//!
//! One transaction per posting, dated by the day (UTC) the event
//! occurred, the business date the receiver books. Its metadata carries
//! `posting_id` (the idempotency key, also written as `idempotency_key`),
//! `registry_id`, `order_id`, `seq`, `event_id`, `event_type`,
//! `occurred_at`, `posted_at` and the delivery columns; the flag is `*` for a
//! delivered posting and `!` for one still pending, retrying or dead.
//!
//! Each entry is one leg, its amount signed as beancount wants it (debit
//! positive, credit negative) in the posting's currency, with metadata
//! `entry_type`, `description`, `quantity`, `ledger_code` and the group
//! columns the registry chose. Accounts ([`account`]):
//!
//! | entry type | account |
//! |---|---|
//! | cashflow | `Assets:<R>:Cashflow[:<code>]` |
//! | receivable | `Assets:<R>:Receivable[:<code>]` |
//! | refund_due | `Liabilities:<R>:RefundDue[:<code>]` |
//! | revenue | `Income:<R>:Revenue[:<code>]` |
//! | discount | `Expenses:<R>:Discounts[:<code>]` |
//! | tax | `Liabilities:<R>:Tax[:<code>]` |
//! | fee | `Income:<R>:Fees[:<code>]` |
//! | write_off | `Expenses:<R>:WriteOff[:<code>]` |
//! | deferred_revenue | `Liabilities:<R>:DeferredRevenue[:<code>]` |
//! | (balancing leg of a filtered posting) | `Equity:<R>:Unposted` |
//!
//! `<R>` is the registry id and `<code>` the entry's ledger code, made valid
//! account components by [`component`]. The registry sits right under the
//! root so that each registry's view of an order stays in its own subtree:
//! two registries receiving the same order never add up in one account.
//!
//! A posting of a registry that filters entry types may not balance (SPEC
//! 2); it gets one more leg on `Equity:<R>:Unposted` for the difference and
//! the metadata `filtered: TRUE`, so the file still balances and that
//! account's balance is exactly what the filters left out.
//!
//! A posting that should balance and does not (a bug, never expected) is
//! balanced the same way on `Equity:<R>:Unexplained`, flagged `!` with
//! `unexplained_imbalance: TRUE`: the export fails (exit 1) but the file
//! still loads, to investigate.
//!
//! `open` directives for every account used come at the end of the file
//! (beancount orders directives by date, not by position), dated on the
//! earliest transaction date, so the transactions stream out in constant
//! memory; only the set of accounts is kept.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use time::{Date, OffsetDateTime};

use crate::ledger::EntryType;
use crate::registry::Column;

use super::{ExportError, Row, Sink, write_timestamp};
use crate::records::DeliveryStatus;

/// The account root and name of an entry type.
pub fn account_base(t: EntryType) -> (&'static str, &'static str) {
    match t {
        EntryType::Cashflow => ("Assets", "Cashflow"),
        EntryType::Receivable => ("Assets", "Receivable"),
        EntryType::RefundDue => ("Liabilities", "RefundDue"),
        EntryType::Revenue => ("Income", "Revenue"),
        EntryType::Discount => ("Expenses", "Discounts"),
        EntryType::Tax => ("Liabilities", "Tax"),
        EntryType::Fee => ("Income", "Fees"),
        EntryType::WriteOff => ("Expenses", "WriteOff"),
        EntryType::DeferredRevenue => ("Liabilities", "DeferredRevenue"),
    }
}

/// True when `s` is a valid beancount account component as written here:
/// an ASCII upper-case letter or digit, then ASCII letters, digits and `-`.
fn is_component(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A text made a valid account component.
///
/// Valid components stay as they are (`"200"`, `"Sales"`). Anything else
/// has each disallowed character replaced by `-`, its first letter
/// upper-cased (or `X` put in front), and `-` plus the first 8 hex digits of
/// the SHA-256 of the original appended, so that texts that differ only in
/// the replaced characters still get different accounts:
/// `"4000.01"` → `"4000-01-…"`, `"sales"` → `"Sales-…"`.
pub fn component(s: &str) -> String {
    if is_component(s) {
        return s.to_owned();
    }
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    match out.chars().next() {
        Some(c) if c.is_ascii_lowercase() => {
            out.replace_range(..1, &c.to_ascii_uppercase().to_string());
        }
        Some(c) if c.is_ascii_uppercase() || c.is_ascii_digit() => {}
        _ => out.insert(0, 'X'),
    }
    let digest = Sha256::digest(s.as_bytes());
    out.push('-');
    for b in &digest[..4] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The account component of a registry id (`[a-z0-9_-]{1,64}`): the id with
/// its first letter upper-cased (`xero-eu` → `Xero-eu`), which is one-to-one
/// on such ids; ids with `_` or a leading `-` go through [`component`].
pub fn registry_component(id: &str) -> String {
    let mut chars = id.chars();
    match chars.next() {
        Some(c)
            if (c.is_ascii_lowercase() || c.is_ascii_digit())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
        {
            let mut s = id.to_owned();
            s.replace_range(..1, &c.to_ascii_uppercase().to_string());
            s
        }
        _ => component(id),
    }
}

/// The account of an entry.
pub fn account(registry_id: &str, t: EntryType, ledger_code: Option<&str>) -> String {
    let (root, name) = account_base(t);
    let mut a = format!("{root}:{}:{name}", registry_component(registry_id));
    if let Some(code) = ledger_code {
        a.push(':');
        a.push_str(&component(code));
    }
    a
}

/// The account of the balancing leg of a filtered posting.
pub fn unposted_account(registry_id: &str) -> String {
    format!("Equity:{}:Unposted", registry_component(registry_id))
}

/// The account of the balancing leg of a posting that should have balanced
/// and did not (the export fails; the file stays loadable).
pub fn unexplained_account(registry_id: &str) -> String {
    format!("Equity:{}:Unexplained", registry_component(registry_id))
}

/// A beancount string literal: quotes and backslashes escaped, line breaks
/// and tabs as C escapes (beancount unescapes them), other control
/// characters replaced by U+FFFD.
pub fn quote(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    push_quoted(&mut out, s);
    // Only whole UTF-8 characters and ASCII were appended.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends [`quote`]`(s)` to `out`, without a `String`.
fn push_quoted(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        // Printable ASCII without a quote or a backslash: as it is.
        out.extend_from_slice(s.as_bytes());
    } else {
        let mut utf8 = [0u8; 4];
        for c in s.chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if c.is_control() => out.extend_from_slice("\u{FFFD}".as_bytes()),
                c => out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes()),
            }
        }
    }
    out.push(b'"');
}

/// Appends a metadata line: `name` and the quoted `value`.
fn meta(t: &mut Vec<u8>, name: &str, value: &str) {
    t.extend_from_slice(name.as_bytes());
    push_quoted(t, value);
    t.push(b'\n');
}

/// Appends a metadata line: `name` and the quoted [`timestamp`](super::timestamp) of `at`
/// (its characters never need escaping).
fn meta_time(t: &mut Vec<u8>, name: &str, at: OffsetDateTime) {
    t.extend_from_slice(name.as_bytes());
    t.push(b'"');
    write_timestamp(t, at);
    t.extend_from_slice(b"\"\n");
}

/// Who an account was made for: two different sources must never share one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AccountSource {
    registry_id: String,
    kind: &'static str,
    ledger_code: Option<String>,
}

/// Writes the beancount file.
pub struct BeancountSink<W: Write> {
    out: W,
    accounts: BTreeMap<String, AccountSource>,
    /// The account of each (registry, entry type, ledger code) met so far,
    /// checked against [`Self::accounts`] when first made: one per account,
    /// like it.
    made: HashMap<String, RegistryAccounts>,
    first_date: Option<Date>,
    /// The transaction being written, reused from posting to posting.
    buf: Vec<u8>,
    /// Its narration, likewise.
    narration: String,
}

/// The accounts made for one registry's entries.
#[derive(Debug, Default)]
struct RegistryAccounts {
    /// Of entries without a ledger code, by entry type.
    plain: HashMap<EntryType, String>,
    /// Of entries with one, by entry type and code.
    coded: HashMap<EntryType, HashMap<String, String>>,
}

impl RegistryAccounts {
    fn get(&self, t: EntryType, ledger_code: Option<&str>) -> Option<&str> {
        match ledger_code {
            None => self.plain.get(&t),
            Some(c) => self.coded.get(&t).and_then(|m| m.get(c)),
        }
        .map(String::as_str)
    }
}

impl<W: Write> BeancountSink<W> {
    /// Starts the file with a title and what it was made from.
    pub fn new(mut out: W, header_comment: &str) -> Result<Self, ExportError> {
        writeln!(out, "option \"title\" \"ledgerline export\"")?;
        for line in header_comment.lines() {
            writeln!(out, "; {line}")?;
        }
        writeln!(out)?;
        Ok(Self {
            out,
            accounts: BTreeMap::new(),
            made: HashMap::new(),
            first_date: None,
            buf: Vec::with_capacity(1024),
            narration: String::new(),
        })
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    /// Appends the [`account`] of an entry, made (and checked by
    /// [`Self::use_account`]) the first time it is met.
    fn push_account(
        &mut self,
        out: &mut Vec<u8>,
        registry_id: &str,
        t: EntryType,
        ledger_code: Option<&str>,
    ) -> Result<(), ExportError> {
        if let Some(acc) = self
            .made
            .get(registry_id)
            .and_then(|r| r.get(t, ledger_code))
        {
            out.extend_from_slice(acc.as_bytes());
            return Ok(());
        }
        let acc = account(registry_id, t, ledger_code);
        self.use_account(
            &acc,
            AccountSource {
                registry_id: registry_id.to_owned(),
                kind: t.as_str(),
                ledger_code: ledger_code.map(str::to_owned),
            },
        )?;
        out.extend_from_slice(acc.as_bytes());
        let made = self.made.entry(registry_id.to_owned()).or_default();
        match ledger_code {
            None => {
                made.plain.insert(t, acc);
            }
            Some(c) => {
                made.coded.entry(t).or_default().insert(c.to_owned(), acc);
            }
        }
        Ok(())
    }

    fn use_account(&mut self, account: &str, source: AccountSource) -> Result<(), ExportError> {
        match self.accounts.get(account) {
            Some(s) if *s == source => Ok(()),
            Some(s) => Err(ExportError::AccountCollision {
                account: account.to_owned(),
                first: format!("{s:?}"),
                second: format!("{source:?}"),
            }),
            None => {
                self.accounts.insert(account.to_owned(), source);
                Ok(())
            }
        }
    }
}

impl<W: Write> Sink for BeancountSink<W> {
    fn posting(&mut self, row: &Row<'_>) -> Result<u64, ExportError> {
        let p = row.posting;
        let date = p.occurred_at.to_offset(time::UtcOffset::UTC).date();
        self.first_date = Some(self.first_date.map_or(date, |d| d.min(date)));
        let currency = match (p.currency, p.entries.is_empty()) {
            (Some(c), _) => Some(c),
            (None, true) => None,
            (None, false) => {
                return Err(ExportError::Integrity {
                    stream_seq: row.stream_seq,
                    message: format!(
                        "posting {}/{}/{} has entries but no currency",
                        p.registry_id, p.order_id, p.seq
                    ),
                });
            }
        };
        let d = &row.delivery;
        let unexplained = !p.filtered && !p.sum().is_zero();
        let flag = if d.status == DeliveryStatus::Delivered && !unexplained {
            '*'
        } else {
            '!'
        };
        // The transaction is written into one buffer reused from posting
        // to posting (no allocation per line or field once it has grown).
        // Writing into a Vec cannot fail.
        let mut t = std::mem::take(&mut self.buf);
        t.clear();
        let mut narration = std::mem::take(&mut self.narration);
        narration.clear();
        {
            use std::fmt::Write as _;
            let _ = write!(
                narration,
                "{} of order {}, posting {}",
                p.event_type.as_str(),
                p.order_id,
                p.seq
            );
        }
        let _ = write!(t, "{date} {flag} ");
        push_quoted(&mut t, &narration);
        t.push(b'\n');
        self.narration = narration;
        let _ = writeln!(t, "  posting_id: \"{}\"", p.idempotency_key);
        let _ = writeln!(t, "  idempotency_key: \"{}\"", p.idempotency_key);
        meta(&mut t, "  registry_id: ", &p.registry_id);
        meta(&mut t, "  order_id: ", p.order_id.as_str());
        let _ = writeln!(t, "  seq: {}", p.seq);
        meta(&mut t, "  event_id: ", &p.event_id);
        meta(&mut t, "  event_type: ", p.event_type.as_str());
        meta_time(&mut t, "  occurred_at: ", p.occurred_at);
        meta_time(&mut t, "  posted_at: ", row.posted_at);
        meta(&mut t, "  delivery_status: ", d.status.as_str());
        if let Some(at) = d.delivered_at {
            meta_time(&mut t, "  delivered_at: ", at);
        }
        let _ = writeln!(t, "  attempts: {}", d.attempts);
        if let Some(s) = d.http_status {
            let _ = writeln!(t, "  http_status: {s}");
        }
        if p.filtered {
            t.extend_from_slice(b"  filtered: TRUE\n");
        }
        if unexplained {
            t.extend_from_slice(b"  unexplained_imbalance: TRUE\n");
        }
        let code = currency.as_ref().map_or("", |c| c.code());
        for e in &p.entries {
            t.extend_from_slice(b"  ");
            self.push_account(
                &mut t,
                &p.registry_id,
                e.key.entry_type,
                e.key.ledger_code.as_deref(),
            )?;
            t.extend_from_slice(b"  ");
            p.write_amount(&mut t, e.amount);
            let _ = writeln!(t, " {code}");
            meta(&mut t, "    entry_type: ", e.key.entry_type.as_str());
            meta(&mut t, "    description: ", &e.key.description);
            let _ = writeln!(t, "    quantity: {}", e.quantity);
            if let Some(c) = &e.key.ledger_code {
                meta(&mut t, "    ledger_code: ", c);
            }
            // Group columns; currency is already on the amount.
            for (col, v) in e.key.columns.iter() {
                if let (false, Some(v)) = (*col == Column::Currency, v) {
                    let _ = write!(t, "    {}: ", col.as_str());
                    push_quoted(&mut t, v);
                    t.push(b'\n');
                }
            }
        }
        let sum: Decimal = p.sum();
        if !sum.is_zero() {
            // A filtered posting's documented difference, or (never
            // expected) an unexplained one: the summary fails the export
            // for it, and the file stays loadable to investigate.
            let (acc, kind) = if p.filtered {
                (unposted_account(&p.registry_id), "unposted")
            } else {
                (unexplained_account(&p.registry_id), "unexplained")
            };
            self.use_account(
                &acc,
                AccountSource {
                    registry_id: p.registry_id.clone(),
                    kind,
                    ledger_code: None,
                },
            )?;
            let _ = write!(t, "  {acc}  ");
            p.write_amount(&mut t, -sum);
            let _ = writeln!(t, " {code}");
        }
        t.push(b'\n');
        let written = self.out.write_all(&t);
        self.buf = t;
        written?;
        Ok(p.entries.len() as u64)
    }

    fn finish(&mut self) -> Result<(), ExportError> {
        if let Some(date) = self.first_date
            && !self.accounts.is_empty()
        {
            writeln!(
                self.out,
                "; Accounts, opened on the earliest transaction date."
            )?;
            for a in self.accounts.keys() {
                writeln!(self.out, "{date} open {a}")?;
            }
        }
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_components_are_kept_and_others_are_made_valid_and_distinct() {
        assert_eq!(component("200"), "200");
        assert_eq!(component("Sales"), "Sales");
        let a = component("4000.01");
        let b = component("4000_01");
        assert_eq!(a, "4000-01-4e422640");
        assert_ne!(a, b);
        assert!(is_component(&a) && is_component(&b));
        for s in ["sales", "-x", "_", "", "ü", "a b", "=1"] {
            let c = component(s);
            assert!(is_component(&c), "{s:?} → {c:?}");
        }
    }

    #[test]
    fn registry_ids_read_naturally_and_stay_distinct() {
        assert_eq!(registry_component("xero-eu"), "Xero-eu");
        assert_eq!(registry_component("9lives"), "9lives");
        let (a, b) = (registry_component("sap_de"), registry_component("sap-de"));
        assert_ne!(a, b);
        assert!(is_component(&a) && is_component(&b));
        assert!(is_component(&registry_component("-x")));
    }

    #[test]
    fn accounts_follow_the_documented_table() {
        assert_eq!(
            account("xero-eu", EntryType::Revenue, Some("200")),
            "Income:Xero-eu:Revenue:200"
        );
        assert_eq!(
            account("xero-eu", EntryType::Cashflow, None),
            "Assets:Xero-eu:Cashflow"
        );
        assert_eq!(unposted_account("xero-eu"), "Equity:Xero-eu:Unposted");
        for t in EntryType::ALL {
            let (root, _) = account_base(t);
            assert!(["Assets", "Liabilities", "Income", "Expenses"].contains(&root));
        }
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_line_breaks() {
        assert_eq!(
            quote("a \"b\"\\c\nd\te\u{1}"),
            "\"a \\\"b\\\"\\\\c\\nd\\te\u{FFFD}\""
        );
    }
}
