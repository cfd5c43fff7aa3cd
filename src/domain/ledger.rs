//! The ledger of an order (SPEC 2): exact decimal math, pure.
//!
//! [`derive()`] turns an [`OrderState`] into its ledger: a list of entries, each
//! a debit or a credit with every dimension a registry may group by. Entries
//! are ordered by entry type (the table of SPEC 2), then by where they come
//! from (line items, fees, payments; tax by rate ascending). The ledger always
//! balances: Σdebit = Σcredit per currency, checked before it is returned.

use std::sync::LazyLock;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::wire::wire_names;
use crate::events::Text;
use crate::events::{Fee, LineItem};
use crate::money::{Currency, DecimalText, Rounding, rate_percent_text};
use crate::order::{OrderState, PaymentKind};

/// The kinds of ledger entry, in the order of SPEC 2's table (which is also
/// the order of entries in a posting body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum EntryType {
    Cashflow,
    Receivable,
    RefundDue,
    Revenue,
    Discount,
    Tax,
    Fee,
    WriteOff,
    DeferredRevenue,
}

wire_names!(EntryType);

impl EntryType {
    pub const ALL: [EntryType; 9] = [
        EntryType::Cashflow,
        EntryType::Receivable,
        EntryType::RefundDue,
        EntryType::Revenue,
        EntryType::Discount,
        EntryType::Tax,
        EntryType::Fee,
        EntryType::WriteOff,
        EntryType::DeferredRevenue,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// How tax is rounded (SPEC 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxRounding {
    /// Each line's tax is rounded on its own.
    #[default]
    PerLine,
    /// Tax is computed once per rate on the summed base, then allocated back
    /// to lines by largest remainder.
    PerRate,
}

/// When a registry recognises a line's revenue (SPEC 2, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum RevenueRecognition {
    /// All of it when the order is confirmed.
    #[default]
    OnConfirmation,
    /// The share of redeemed units; the rest is `deferred_revenue` until
    /// its units are redeemed.
    OnRedemption,
}

wire_names!(RevenueRecognition);

impl RevenueRecognition {
    /// True for the default (what a registry that does not say gets).
    pub fn is_default(&self) -> bool {
        *self == RevenueRecognition::OnConfirmation
    }
}

/// The ledger math options of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub struct LedgerOptions {
    #[serde(default)]
    pub rounding: Rounding,
    #[serde(default)]
    pub tax_rounding: TaxRounding,
}

/// Every attribute of an entry a registry may group by or match a ledger
/// code on. `None` where the attribute does not apply to the entry type.
/// Its texts are borrowed from the order's state the ledger is derived
/// from: a line's entries share them without a reference count each
/// (an atomic operation per copy and per drop, more than the rest of an
/// entry's making).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Dims<'a> {
    pub currency: Option<Currency>,
    pub channel: Option<&'a Text>,
    pub product_id: Option<&'a Text>,
    pub option_id: Option<&'a Text>,
    pub unit_type: Option<&'a Text>,
    pub tax_rate: Option<Decimal>,
    pub payment_method: Option<&'a Text>,
    pub fee_kind: Option<&'a Text>,
}

/// One ledger entry before grouping, borrowing its dimensions from the
/// order's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry<'a> {
    pub entry_type: EntryType,
    /// Shared with the order's state (a line's or fee's own description)
    /// and with the grouped entries made from it.
    pub description: Text,
    /// Revenue: the line's quantity; everything else 0.
    pub quantity: i64,
    /// Signed: a debit is positive, a credit negative.
    pub amount: Decimal,
    pub dims: Dims<'a>,
}

impl Entry<'_> {
    pub fn debit(&self) -> Decimal {
        self.amount.max(Decimal::ZERO)
    }

    pub fn credit(&self) -> Decimal {
        (-self.amount).max(Decimal::ZERO)
    }
}

/// The ledger of an order at one point in time, borrowing from the
/// order's state it is derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger<'a> {
    pub currency: Option<Currency>,
    pub entries: Vec<Entry<'a>>,
    pub totals: Totals,
}

/// The order totals of SPEC 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub revenue: Decimal,
    pub discount: Decimal,
    pub tax: Decimal,
    /// Fees ex tax (their tax is in `tax`).
    pub fees: Decimal,
    /// revenue − discount + tax + fees.
    pub total: Decimal,
    pub paid: Decimal,
    pub written_off: Decimal,
    /// total − paid − written_off.
    pub outstanding: Decimal,
}

/// The ledger failed its invariant: a bug, never a user error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger of order {order_id} does not balance: debits {debit} ≠ credits {credit}")]
pub struct Unbalanced {
    pub order_id: String,
    pub debit: Decimal,
    pub credit: Decimal,
}

/// A taxable item (a line, or a fee as a line of quantity 1) on its way to
/// entries.
struct Taxable {
    /// Amount the tax is computed on, before rounding: exclusive prices
    /// (gross − discount) × r; inclusive prices net_incl × r / (1 + r).
    exact_tax: Decimal,
    rate: Decimal,
    tax: Decimal,
}

/// What a line or a fee comes to in the ledger, before its entries.
struct Amounts {
    /// A line's revenue, a fee's amount: ex tax when prices include it.
    net: Decimal,
    /// A line's discount (ex tax when prices include it); 0 for a fee.
    discount: Decimal,
    /// The units and the share of `net` recognised as revenue: all of them
    /// on confirmation, the redeemed ones' on redemption.
    recognised_units: u64,
    recognised: Decimal,
}

/// Derives the ledger of `state`, revenue recognised on confirmation.
/// Balanced by construction; checked anyway.
pub fn derive<'a>(state: &'a OrderState, opts: &LedgerOptions) -> Result<Ledger<'a>, Unbalanced> {
    derive_with(state, opts, RevenueRecognition::OnConfirmation)
}

/// Derives the ledger of `state` as a registry recognising revenue
/// `recognition` sees it: on redemption, each line's revenue is split into
/// the redeemed units' share (`revenue`) and the rest (`deferred_revenue`),
/// which add up to the line's revenue exactly. Everything else (discount,
/// tax, totals) is the same either way.
pub fn derive_with<'a>(
    state: &'a OrderState,
    opts: &LedgerOptions,
    recognition: RevenueRecognition,
) -> Result<Ledger<'a>, Unbalanced> {
    let Some(currency) = state.currency else {
        return Ok(Ledger {
            currency: None,
            entries: Vec::new(),
            totals: Totals::default(),
        });
    };
    let round = |d: Decimal| currency.round(d, opts.rounding);
    let base = Dims {
        currency: Some(currency),
        channel: state.channel.as_ref(),
        ..Dims::default()
    };
    let incl = state.prices_include_tax;

    // Taxables: the lines first, then the fees, each with its exact tax.
    let items = state.line_items.len() + state.fees.len();
    let mut taxables: Vec<Taxable> = Vec::with_capacity(items);
    for l in &state.line_items {
        let gross = Decimal::from(l.quantity) * l.unit_price;
        let exact = if incl {
            (gross - l.discount) * l.tax_rate / (Decimal::ONE + l.tax_rate)
        } else {
            (gross - l.discount) * l.tax_rate
        };
        taxables.push(Taxable {
            exact_tax: exact,
            rate: l.tax_rate,
            tax: round(exact),
        });
    }
    for f in &state.fees {
        let exact = if incl {
            f.amount * f.tax_rate / (Decimal::ONE + f.tax_rate)
        } else {
            f.amount * f.tax_rate
        };
        taxables.push(Taxable {
            exact_tax: exact,
            rate: f.tax_rate,
            tax: round(exact),
        });
    }
    if opts.tax_rounding == TaxRounding::PerRate {
        allocate_per_rate(&mut taxables, currency, opts.rounding);
    }

    // Each line's and fee's amounts, and the totals, first: the
    // receivable, second in the ledger, needs them all.
    let lines = state.line_items.len();
    let redeeming = recognition == RevenueRecognition::OnRedemption;
    let mut totals = Totals::default();
    let mut amounts: Vec<Amounts> = Vec::with_capacity(items);
    for (l, t) in state.line_items.iter().zip(&taxables) {
        let gross = Decimal::from(l.quantity) * l.unit_price;
        let (rev, disc) = if incl {
            let net_incl = gross - l.discount;
            let disc_ex = round(l.discount / (Decimal::ONE + l.tax_rate));
            (net_incl - t.tax + disc_ex, disc_ex)
        } else {
            (gross, l.discount)
        };
        totals.revenue += rev;
        totals.discount += disc;
        totals.tax += t.tax;
        let (recognised_units, recognised) = if redeeming {
            let redeemed = state.redeemed(&l.id).min(l.quantity);
            (redeemed, recognised_share(rev, redeemed, l.quantity, round))
        } else {
            (l.quantity, rev)
        };
        amounts.push(Amounts {
            net: rev,
            discount: disc,
            recognised_units,
            recognised,
        });
    }
    for (f, t) in state.fees.iter().zip(&taxables[lines..]) {
        let fee_ex = if incl { f.amount - t.tax } else { f.amount };
        totals.fees += fee_ex;
        totals.tax += t.tax;
        amounts.push(Amounts {
            net: fee_ex,
            discount: Decimal::ZERO,
            recognised_units: 0,
            recognised: fee_ex,
        });
    }
    for p in &state.payments {
        match p.kind {
            PaymentKind::Paid => totals.paid += p.amount,
            PaymentKind::WrittenOff => totals.written_off += p.amount,
        }
    }
    // total = Σrevenue − Σdiscount + Σtax + Σfees, with fees ex tax: their
    // tax is already in Σtax.
    totals.total = totals.revenue - totals.discount + totals.tax + totals.fees;
    totals.outstanding = totals.total - totals.paid - totals.written_off;

    let line_dims = |l: &'a LineItem| Dims {
        product_id: l.product_id.as_ref(),
        option_id: l.option_id.as_ref(),
        unit_type: l.unit_type.as_ref(),
        tax_rate: Some(l.tax_rate),
        ..base
    };
    let fee_dims = |f: &'a Fee| Dims {
        tax_rate: Some(f.tax_rate),
        fee_kind: Some(&f.kind),
        ..base
    };
    let payments = |kind: PaymentKind, entry_type: EntryType, description: &'static Text| {
        state
            .payments
            .iter()
            .filter(move |p| p.kind == kind)
            .map(move |p| Entry {
                entry_type,
                description: Text::clone(description),
                quantity: 0,
                amount: p.amount,
                dims: Dims {
                    payment_method: Some(&p.method),
                    ..base
                },
            })
    };
    // Quantities are bounded by QUANTITY_MAX at parse time, far below
    // i64::MAX.
    let quantity = |q: u64| i64::try_from(q).unwrap_or(i64::MAX);

    // Every entry written once, in the ledger's order: cashflow,
    // receivable or refund due, revenue, discount, tax, fees, write-off,
    // deferred revenue.
    let mut entries = Vec::with_capacity(
        state.payments.len()
            + 1
            + 2 * lines
            + items
            + state.fees.len()
            + lines * usize::from(redeeming),
    );
    entries.extend(payments(PaymentKind::Paid, EntryType::Cashflow, &CASHFLOW));
    if totals.outstanding > Decimal::ZERO {
        entries.push(Entry {
            entry_type: EntryType::Receivable,
            description: Text::clone(&RECEIVABLE),
            quantity: 0,
            amount: totals.outstanding,
            dims: base,
        });
    } else if totals.outstanding < Decimal::ZERO {
        entries.push(Entry {
            entry_type: EntryType::RefundDue,
            description: Text::clone(&REFUND_DUE),
            quantity: 0,
            amount: totals.outstanding,
            dims: base,
        });
    }
    for (l, a) in state.line_items.iter().zip(&amounts) {
        entries.push(Entry {
            entry_type: EntryType::Revenue,
            description: Text::clone(&l.description),
            quantity: quantity(a.recognised_units),
            amount: -a.recognised,
            dims: line_dims(l),
        });
    }
    for (l, a) in state.line_items.iter().zip(&amounts) {
        // A zero discount says nothing (dropped below with every empty
        // entry): its description is not even written.
        if !a.discount.is_zero() {
            entries.push(Entry {
                entry_type: EntryType::Discount,
                description: discount_text(&l.description),
                quantity: 0,
                amount: a.discount,
                dims: line_dims(l),
            });
        }
    }
    // One description per rate, shared by its tax entries.
    let mut tax_texts: Vec<(Decimal, Text)> = Vec::new();
    let taxed = state.line_items.iter().map(line_dims);
    let taxed = taxed.chain(state.fees.iter().map(fee_dims));
    let tax_start = entries.len();
    for (dims, t) in taxed.zip(&taxables) {
        entries.push(tax_entry(&mut tax_texts, t.rate, t.tax, dims));
    }
    // Rates ascending; within a rate, lines then fees (a stable sort keeps it).
    entries[tax_start..].sort_by_key(|e| e.dims.tax_rate);
    for (f, a) in state.fees.iter().zip(&amounts[lines..]) {
        entries.push(Entry {
            entry_type: EntryType::Fee,
            description: Text::clone(&f.description),
            quantity: 0,
            amount: -a.net,
            dims: fee_dims(f),
        });
    }
    entries.extend(payments(
        PaymentKind::WrittenOff,
        EntryType::WriteOff,
        &WRITE_OFF,
    ));
    if redeeming {
        for (l, a) in state.line_items.iter().zip(&amounts) {
            entries.push(Entry {
                entry_type: EntryType::DeferredRevenue,
                description: Text::from(format!("Deferred Revenue: {}", l.description)),
                quantity: quantity(l.quantity - a.recognised_units),
                amount: a.recognised - a.net,
                dims: line_dims(l),
            });
        }
    }
    // An entry with no amount and no quantity says nothing.
    entries.retain(|e| !e.amount.is_zero() || e.quantity != 0);

    let ledger = Ledger {
        currency: Some(currency),
        entries,
        totals,
    };
    ledger.check_balanced(state.order_id.as_str())?;
    Ok(ledger)
}

impl Ledger<'_> {
    /// Σdebit and Σcredit.
    pub fn sums(&self) -> (Decimal, Decimal) {
        self.entries
            .iter()
            .fold((Decimal::ZERO, Decimal::ZERO), |(d, c), e| {
                (d + e.debit(), c + e.credit())
            })
    }

    /// The invariant: Σdebit = Σcredit (an order has one currency).
    /// Checked as Σamount = 0, the same (an entry's debit − credit is its
    /// signed amount, and the sums are exact): one addition an entry; the
    /// two sums are made only to report a failure.
    pub fn check_balanced(&self, order_id: &str) -> Result<(), Unbalanced> {
        let sum = self
            .entries
            .iter()
            .fold(Decimal::ZERO, |sum, e| sum + e.amount);
        if sum.is_zero() {
            return Ok(());
        }
        let (debit, credit) = self.sums();
        Err(Unbalanced {
            order_id: order_id.to_owned(),
            debit,
            credit,
        })
    }
}

/// The revenue recognised of a line of `quantity` units with `redeemed`
/// of them redeemed (at most `quantity`): round(revenue × redeemed /
/// quantity), all of it when the line has no units (SPEC 2).
fn recognised_share(
    revenue: Decimal,
    redeemed: u64,
    quantity: u64,
    round: impl Fn(Decimal) -> Decimal,
) -> Decimal {
    if quantity == 0 || redeemed == quantity {
        revenue
    } else if redeemed == 0 {
        Decimal::ZERO
    } else {
        round(revenue * Decimal::from(redeemed) / Decimal::from(quantity))
    }
}

/// The descriptions of the entries that are not a line's or a fee's.
static CASHFLOW: LazyLock<Text> = LazyLock::new(|| Text::from("Cashflow"));
static WRITE_OFF: LazyLock<Text> = LazyLock::new(|| Text::from("Write-off"));
static RECEIVABLE: LazyLock<Text> = LazyLock::new(|| Text::from("Accounts Receivable"));
static REFUND_DUE: LazyLock<Text> = LazyLock::new(|| Text::from("Refund Due"));

/// The tax entry of one line or fee: `tax` at `rate`, a credit. `texts`
/// holds the description of each rate met so far (an order has a few).
fn tax_entry<'a>(
    texts: &mut Vec<(Decimal, Text)>,
    rate: Decimal,
    tax: Decimal,
    dims: Dims<'a>,
) -> Entry<'a> {
    let description = match texts.iter().find(|(r, _)| *r == rate) {
        Some((_, text)) => Text::clone(text),
        None => {
            let text = tax_text(rate);
            texts.push((rate, Text::clone(&text)));
            text
        }
    };
    Entry {
        entry_type: EntryType::Tax,
        description,
        quantity: 0,
        amount: -tax,
        dims,
    }
}

/// `Discount: ` and a line's description, as
/// `format!("Discount: {description}")` writes it, on the stack when it
/// fits (a description of usual length): one allocation, the text's.
fn discount_text(description: &str) -> Text {
    const PREFIX: &str = "Discount: ";
    let mut buf = [0u8; 128];
    let len = PREFIX.len() + description.len();
    if let Some(text) = buf.get_mut(..len) {
        text[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
        text[PREFIX.len()..].copy_from_slice(description.as_bytes());
        // Two texts one after the other: always UTF-8.
        if let Ok(text) = std::str::from_utf8(text) {
            return Text::from(text);
        }
    }
    Text::from(format!("{PREFIX}{description}"))
}

/// `Tax 16%`, `Tax 7.5%`, `Tax 0%`.
pub fn tax_description(rate: Decimal) -> String {
    format!("Tax {}%", rate_percent_text(rate))
}

/// [`tax_description`] as a [`Text`], written on the stack rather than
/// through the formatting machinery: `Tax `, the percent as `Display`
/// prints it normalised ([`rate_percent_text`]), `%`.
fn tax_text(rate: Decimal) -> Text {
    let percent = DecimalText::new((rate * Decimal::ONE_HUNDRED).normalize());
    let percent = percent.as_bytes();
    let mut buf = [0u8; 48];
    let len = 4 + percent.len() + 1;
    if len > buf.len() {
        // Not with a rate of at most 6 decimals below 1 (checked when
        // parsed): a few digits.
        return Text::from(tax_description(rate));
    }
    buf[..4].copy_from_slice(b"Tax ");
    buf[4..len - 1].copy_from_slice(percent);
    buf[len - 1] = b'%';
    match std::str::from_utf8(&buf[..len]) {
        Ok(text) => Text::from(text),
        // ASCII digits, a point and a sign: never.
        Err(_) => Text::from(tax_description(rate)),
    }
}

/// Replaces each taxable's tax by its share of the per-rate total: the total
/// is rounded once per rate, each item gets its exact share rounded toward
/// zero, and the units left over go one each to the largest remainders (ties
/// to the earlier item), so the shares add up to the rounded total exactly.
fn allocate_per_rate(items: &mut [Taxable], currency: Currency, rounding: Rounding) {
    let unit = Decimal::new(1, currency.minor_units());
    let mut rates: Vec<Decimal> = items.iter().map(|t| t.rate).collect();
    rates.sort();
    rates.dedup();
    for rate in rates {
        let idx: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].rate == rate)
            .collect();
        let exact_sum: Decimal = idx.iter().map(|&i| items[i].exact_tax).sum();
        let total = currency.round(exact_sum, rounding);
        let mut shares: Vec<(usize, Decimal, Decimal)> = idx
            .iter()
            .map(|&i| {
                let floor = items[i].exact_tax.trunc_with_scale(currency.minor_units());
                (i, floor, items[i].exact_tax - floor)
            })
            .collect();
        let floors: Decimal = shares.iter().map(|s| s.1).sum();
        // Whole minor units still to hand out; 0 ≤ left < number of items.
        let mut left = ((total - floors) / unit).round();
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by(|&a, &b| shares[b].2.cmp(&shares[a].2).then(a.cmp(&b)));
        for k in order {
            if left <= Decimal::ZERO {
                break;
            }
            shares[k].1 += unit;
            left -= Decimal::ONE;
        }
        for (i, share, _) in shares {
            items[i].tax = share;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discount_texts_are_the_formatted_ones() {
        for len in [0, 1, 100, 117, 118, 119, 200] {
            for unit in ["a", "é", "\"", "🎟"] {
                let description = unit.repeat(len);
                assert_eq!(
                    &*discount_text(&description),
                    format!("Discount: {description}"),
                    "{len} {unit}"
                );
            }
        }
    }
    use crate::events::{OrderId, parse_event};
    use serde_json::json;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn order(
        incl: bool,
        currency: &str,
        lines: serde_json::Value,
        payments: serde_json::Value,
    ) -> OrderState {
        let ev = parse_event(
            json!({"event_id": "e", "type": "order.confirmed", "order_id": "o",
                "occurred_at": "2026-11-22T10:00:00Z",
                "order": {"version": 1, "currency": currency, "prices_include_tax": incl,
                          "line_items": lines, "payments": payments}})
            .to_string()
            .as_bytes(),
            None,
        )
        .unwrap();
        let mut s = OrderState::new(OrderId::parse("o").unwrap());
        s.apply(&ev).unwrap();
        s
    }

    fn line(desc: &str, qty: u64, price: &str, disc: &str, rate: &str) -> serde_json::Value {
        json!({"id": desc, "description": desc, "quantity": qty, "unit_price": price,
               "discount": disc, "tax_rate": rate})
    }

    fn amounts(l: &Ledger, t: EntryType) -> Vec<Decimal> {
        l.entries
            .iter()
            .filter(|e| e.entry_type == t)
            .map(|e| e.amount)
            .collect()
    }

    /// Inclusive prices: the tax is split out exactly and discounts are
    /// booked ex tax. Each case: one line, each `(type, amount)` as that
    /// type's only entry, the order total.
    #[test]
    fn inclusive_prices_split_out_tax_and_book_discounts_ex_tax() {
        let cases: [(_, &[(EntryType, &str)], &str); 2] = [
            // 1 × 11.60 incl. 16%: tax = 11.60 × 0.16 / 1.16 = 1.60, revenue 10.00.
            (
                line("A", 1, "11.60", "0", "0.16"),
                &[
                    (EntryType::Revenue, "-10.00"),
                    (EntryType::Tax, "-1.60"),
                    (EntryType::Receivable, "11.60"),
                ],
                "11.60",
            ),
            // 2 × 10.00 − 2.00 incl. 7.5%: net 18.00, tax round(18 × .075/1.075) = 1.26,
            // discount_ex round(2/1.075) = 1.86, revenue 18 − 1.26 + 1.86 = 18.60.
            (
                line("A", 2, "10.00", "2.00", "0.075"),
                &[
                    (EntryType::Revenue, "-18.60"),
                    (EntryType::Discount, "1.86"),
                    (EntryType::Tax, "-1.26"),
                ],
                "18.00",
            ),
        ];
        for (line, want, total) in cases {
            let s = eur(true, json!([line]));
            let l = derive(&s, &LedgerOptions::default()).unwrap();
            for (t, amount) in want {
                assert_eq!(amounts(&l, *t), vec![dec(amount)], "{t} of {line}");
            }
            assert_eq!(l.totals.total, dec(total), "total of {line}");
        }
    }

    #[test]
    fn exclusive_prices_add_tax_on_the_discounted_base() {
        let s = eur(false, json!([line("A", 3, "9.99", "1.00", "0.16")]));
        let l = derive(&s, &LedgerOptions::default()).unwrap();
        // (29.97 − 1.00) × 0.16 = 4.6352 → 4.64
        assert_eq!(amounts(&l, EntryType::Tax), vec![dec("-4.64")]);
        assert_eq!(l.totals.total, dec("33.61"));
    }

    #[test]
    fn per_rate_allocation_sums_to_the_rounded_rate_total() {
        // Three lines of 0.10 at 5%: per line 0.005 → 0.01 each = 0.03;
        // per rate round(0.015) = 0.02, allocated 0.01, 0.01, 0.00.
        let lines = json!([
            line("A", 1, "0.10", "0", "0.05"),
            line("B", 1, "0.10", "0", "0.05"),
            line("C", 1, "0.10", "0", "0.05")
        ]);
        let s = order(false, "EUR", lines, json!([]));
        let per_line = derive(&s, &LedgerOptions::default()).unwrap();
        assert_eq!(per_line.totals.tax, dec("0.03"));
        let opts = LedgerOptions {
            tax_rounding: TaxRounding::PerRate,
            ..Default::default()
        };
        let per_rate = derive(&s, &opts).unwrap();
        assert_eq!(per_rate.totals.tax, dec("0.02"));
        assert_eq!(
            amounts(&per_rate, EntryType::Tax),
            vec![dec("-0.01"), dec("-0.01")]
        );
    }

    #[test]
    fn half_even_rounding_is_applied_on_request() {
        // 0.125 of tax: half_up 0.13, half_even 0.12.
        let s = order(
            false,
            "EUR",
            json!([line("A", 1, "2.50", "0", "0.05")]),
            json!([]),
        );
        let up = derive(&s, &LedgerOptions::default()).unwrap();
        let even = derive(
            &s,
            &LedgerOptions {
                rounding: Rounding::HalfEven,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(up.totals.tax, dec("0.13"));
        assert_eq!(even.totals.tax, dec("0.12"));
    }

    #[test]
    fn overpayment_becomes_refund_due() {
        let pay =
            json!([{"payment_id": "p", "method": "card", "amount": "30.00", "currency": "EUR"}]);
        let s = order(true, "EUR", json!([line("A", 2, "10.00", "0", "0")]), pay);
        let l = derive(&s, &LedgerOptions::default()).unwrap();
        assert_eq!(amounts(&l, EntryType::RefundDue), vec![dec("-10.00")]);
        assert!(amounts(&l, EntryType::Receivable).is_empty());
    }

    #[test]
    fn tax_descriptions_show_the_percent_without_trailing_zeros() {
        assert_eq!(tax_description(dec("0.16")), "Tax 16%");
        assert_eq!(tax_description(dec("0.075")), "Tax 7.5%");
    }

    /// The tax entries' text is `tax_description`'s.
    #[test]
    fn tax_texts_are_the_tax_descriptions() {
        for r in [
            "0", "0.0", "0.16", "0.160", "0.075", "0.2", "0.05", "0.000001", "0.999999", "0.19",
            "0.5", "0.10", "0.123456",
        ] {
            assert_eq!(&*tax_text(dec(r)), tax_description(dec(r)), "{r}");
        }
    }

    /// A EUR order of `lines`, unpaid.
    fn eur(incl: bool, lines: serde_json::Value) -> OrderState {
        order(incl, "EUR", lines, json!([]))
    }

    /// `state` after `order.redeemed` of `quantity` units of `line`.
    fn redeemed(mut state: OrderState, id: &str, line: &str, quantity: u64) -> OrderState {
        let ev = parse_event(
            json!({"event_id": format!("r-{id}-{quantity}"), "type": "order.redeemed",
                "order_id": "o", "occurred_at": "2026-11-23T10:00:00Z",
                "redemption": {"redemption_id": id, "line_item_id": line,
                               "quantity": quantity, "date": "2026-11-23"}})
            .to_string()
            .as_bytes(),
            None,
        )
        .unwrap();
        state.apply(&ev).unwrap();
        state
    }

    fn deferring(state: &OrderState, rounding: Rounding) -> Ledger<'_> {
        let opts = LedgerOptions {
            rounding,
            ..LedgerOptions::default()
        };
        derive_with(state, &opts, RevenueRecognition::OnRedemption).unwrap()
    }

    /// (quantity, amount) of the entries of type `t`.
    fn of_type(l: &Ledger, t: EntryType) -> Vec<(i64, Decimal)> {
        l.entries
            .iter()
            .filter(|e| e.entry_type == t)
            .map(|e| (e.quantity, e.amount))
            .collect()
    }

    #[test]
    fn on_redemption_revenue_moves_from_deferred_as_units_are_redeemed() {
        // 3 tickets at 10.00, 16 % tax on top: revenue 30.00, tax 4.80.
        let state = eur(false, json!([line("Ticket", 3, "10.00", "0", "0.16")]));
        let l = deferring(&state, Rounding::HalfUp);
        assert_eq!(of_type(&l, EntryType::Revenue), vec![]);
        assert_eq!(
            of_type(&l, EntryType::DeferredRevenue),
            vec![(3, dec("-30.00"))]
        );
        assert_eq!(amounts(&l, EntryType::Tax), vec![dec("-4.80")]);
        let d = l
            .entries
            .iter()
            .find(|e| e.entry_type == EntryType::DeferredRevenue);
        assert_eq!(d.map(|e| &*e.description), Some("Deferred Revenue: Ticket"));
        // The same ledger on confirmation: all revenue, nothing deferred.
        let now = derive(&state, &LedgerOptions::default()).unwrap();
        assert_eq!(of_type(&now, EntryType::Revenue), vec![(3, dec("-30.00"))]);
        assert!(of_type(&now, EntryType::DeferredRevenue).is_empty());

        let state = redeemed(state, "scan-1", "Ticket", 1);
        let l = deferring(&state, Rounding::HalfUp);
        assert_eq!(of_type(&l, EntryType::Revenue), vec![(1, dec("-10.00"))]);
        assert_eq!(
            of_type(&l, EntryType::DeferredRevenue),
            vec![(2, dec("-20.00"))]
        );
        // The entry order of SPEC 2: deferred revenue after everything else.
        assert_eq!(
            l.entries.last().map(|e| e.entry_type),
            Some(EntryType::DeferredRevenue)
        );

        let state = redeemed(state, "scan-2", "Ticket", 2);
        let l = deferring(&state, Rounding::HalfUp);
        assert_eq!(of_type(&l, EntryType::Revenue), vec![(3, dec("-30.00"))]);
        assert!(of_type(&l, EntryType::DeferredRevenue).is_empty());
        assert_eq!(l, derive(&state, &LedgerOptions::default()).unwrap());
    }

    /// With exclusive prices a line's revenue is quantity × unit_price, so
    /// every share is exact; inclusive prices give revenues that split
    /// unevenly (revenue = net_incl − tax + discount_ex).
    #[test]
    fn the_recognised_share_is_rounded_with_the_instances_rounding_and_sums_exactly() {
        // 2 × 1.02 incl. 10 %: tax round(0.1854…) = 0.19, revenue 1.85;
        // one unit of two is 0.925.
        let state = eur(true, json!([line("Pair", 2, "1.02", "0", "0.1")]));
        let state = redeemed(state, "a", "Pair", 1);
        for (rounding, recognised, deferred) in [
            (Rounding::HalfUp, "-0.93", "-0.92"),
            (Rounding::HalfEven, "-0.92", "-0.93"),
        ] {
            let l = deferring(&state, rounding);
            assert_eq!(of_type(&l, EntryType::Revenue), vec![(1, dec(recognised))]);
            assert_eq!(
                of_type(&l, EntryType::DeferredRevenue),
                vec![(1, dec(deferred))]
            );
        }
        // 3 × 1.02 incl. 10 %: tax 0.28, revenue 2.78; a third is 0.9266…,
        // two thirds 1.8533….
        let state = eur(true, json!([line("Trio", 3, "1.02", "0", "0.1")]));
        for (r, recognised, deferred) in [(1, "-0.93", "-1.85"), (2, "-1.85", "-0.93")] {
            let after = redeemed(state.clone(), "a", "Trio", r);
            let l = deferring(&after, Rounding::HalfEven);
            assert_eq!(
                of_type(&l, EntryType::Revenue),
                vec![(r as i64, dec(recognised))]
            );
            assert_eq!(
                of_type(&l, EntryType::DeferredRevenue),
                vec![(3 - r as i64, dec(deferred))]
            );
        }
        // JPY has no minor units: 2 × 102 incl. 10 %: tax 19, revenue 185;
        // one unit of two is 92.5.
        let state = order(
            true,
            "JPY",
            json!([line("Seat", 2, "102", "0", "0.1")]),
            json!([]),
        );
        let state = redeemed(state, "a", "Seat", 1);
        for (rounding, recognised) in [(Rounding::HalfUp, "-93"), (Rounding::HalfEven, "-92")] {
            let l = deferring(&state, rounding);
            assert_eq!(of_type(&l, EntryType::Revenue), vec![(1, dec(recognised))]);
            l.check_balanced("o").unwrap();
        }
    }

    #[test]
    fn discount_tax_and_totals_are_the_same_whichever_the_recognition() {
        let state = order(
            false,
            "EUR",
            json!([
                line("Ticket", 2, "10.00", "4.00", "0.16"),
                line("Free", 0, "0", "0", "0")
            ]),
            json!([{"payment_id": "p", "method": "card", "amount": "18.56", "currency": "EUR"}]),
        );
        let now = derive(&state, &LedgerOptions::default()).unwrap();
        let later = deferring(&state, Rounding::HalfUp);
        for t in [EntryType::Discount, EntryType::Tax, EntryType::Cashflow] {
            assert_eq!(of_type(&later, t), of_type(&now, t), "{t}");
        }
        assert_eq!(later.totals, now.totals);
        assert_eq!(
            of_type(&later, EntryType::DeferredRevenue),
            vec![(2, dec("-20.00"))]
        );
        assert_eq!(of_type(&later, EntryType::Revenue), vec![]);
    }
}
