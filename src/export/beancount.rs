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

use std::collections::BTreeMap;
use std::io::Write;

use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use time::Date;

use crate::ledger::EntryType;
use crate::registry::Column;

use super::{ExportError, Row, Sink, timestamp};
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
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
    first_date: Option<Date>,
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
            first_date: None,
        })
    }

    pub fn into_inner(self) -> W {
        self.out
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
        let narration = format!(
            "{} of order {}, posting {}",
            p.event_type.as_str(),
            p.order_id,
            p.seq
        );
        let mut t = String::with_capacity(512 + 256 * p.entries.len());
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = writeln!(t, "{date} {flag} {}", quote(&narration));
        let key = quote(&p.idempotency_key.to_string());
        let _ = writeln!(t, "  posting_id: {key}");
        let _ = writeln!(t, "  idempotency_key: {key}");
        let _ = writeln!(t, "  registry_id: {}", quote(&p.registry_id));
        let _ = writeln!(t, "  order_id: {}", quote(p.order_id.as_str()));
        let _ = writeln!(t, "  seq: {}", p.seq);
        let _ = writeln!(t, "  event_id: {}", quote(&p.event_id));
        let _ = writeln!(t, "  event_type: {}", quote(p.event_type.as_str()));
        let _ = writeln!(t, "  occurred_at: {}", quote(&timestamp(p.occurred_at)));
        let _ = writeln!(t, "  posted_at: {}", quote(&timestamp(row.posted_at)));
        let _ = writeln!(t, "  delivery_status: {}", quote(d.status.as_str()));
        if let Some(at) = d.delivered_at {
            let _ = writeln!(t, "  delivered_at: {}", quote(&timestamp(at)));
        }
        let _ = writeln!(t, "  attempts: {}", d.attempts);
        if let Some(s) = d.http_status {
            let _ = writeln!(t, "  http_status: {s}");
        }
        if p.filtered {
            let _ = writeln!(t, "  filtered: TRUE");
        }
        if unexplained {
            let _ = writeln!(t, "  unexplained_imbalance: TRUE");
        }
        let code = currency.map(|c| c.code().to_owned()).unwrap_or_default();
        for e in &p.entries {
            let acc = account(
                &p.registry_id,
                e.key.entry_type,
                e.key.ledger_code.as_deref(),
            );
            self.use_account(
                &acc,
                AccountSource {
                    registry_id: p.registry_id.clone(),
                    kind: e.key.entry_type.as_str(),
                    ledger_code: e.key.ledger_code.as_deref().map(str::to_owned),
                },
            )?;
            let _ = writeln!(t, "  {acc}  {} {code}", p.format(e.amount));
            let _ = writeln!(t, "    entry_type: {}", quote(e.key.entry_type.as_str()));
            let _ = writeln!(t, "    description: {}", quote(&e.key.description));
            let _ = writeln!(t, "    quantity: {}", e.quantity);
            if let Some(c) = &e.key.ledger_code {
                let _ = writeln!(t, "    ledger_code: {}", quote(c));
            }
            // Group columns; currency is already on the amount.
            for (col, v) in &e.key.columns {
                if let (false, Some(v)) = (*col == Column::Currency, v) {
                    let _ = writeln!(t, "    {}: {}", col.as_str(), quote(v));
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
            let _ = writeln!(t, "  {acc}  {} {code}", p.format(-sum));
        }
        t.push('\n');
        self.out.write_all(t.as_bytes())?;
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
