//! The serde-derived typed path that `fast`'s hand-written reader
//! replaced, kept for the tests only: `fast` must answer as it does for
//! every message `fast` accepts (the differential property in
//! `events::tests::typed_path_differential`).

use rust_decimal::Decimal;
use serde::Deserialize;

use super::{
    Event, EventBody, EventType, FEES_MAX, Fee, LineItem, OrderSnapshot, Payment, Str,
    check_discount, check_len, check_line_count, check_payment_currencies, currency_of, id_of,
    money_of, occurred_at_of, order_id_of, quantity_of, rate_of, text_of,
};
use crate::money::{Currency, parse_decimal_str};

/// An event as sent: the envelope, with `order` or `payment` by type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "'de: 'a"))]
struct RawEvent<'a> {
    event_id: Str<'a>,
    #[serde(rename = "type")]
    event_type: Str<'a>,
    order_id: Str<'a>,
    occurred_at: Str<'a>,
    order: Option<RawSnapshot<'a>>,
    payment: Option<RawPayment<'a>>,
}

/// `order`: a snapshot as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "'de: 'a"))]
struct RawSnapshot<'a> {
    version: u64,
    currency: Str<'a>,
    channel: Option<Str<'a>>,
    prices_include_tax: bool,
    line_items: Vec<RawLine<'a>>,
    fees: Option<Vec<RawFee<'a>>>,
    payments: Option<Vec<RawPayment<'a>>>,
}

/// `order.line_items[i]` as sent; money and rates still text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "'de: 'a"))]
struct RawLine<'a> {
    id: Str<'a>,
    product_id: Option<Str<'a>>,
    option_id: Option<Str<'a>>,
    unit_type: Option<Str<'a>>,
    description: Str<'a>,
    quantity: u64,
    unit_price: Str<'a>,
    discount: Option<Str<'a>>,
    tax_rate: Str<'a>,
}

/// `order.fees[i]` as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "'de: 'a"))]
struct RawFee<'a> {
    kind: Str<'a>,
    description: Str<'a>,
    amount: Str<'a>,
    tax_rate: Str<'a>,
}

/// `payment`, or `order.payments[i]`, as sent; a missing `date`
/// and a `null` one are both `None`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "'de: 'a"))]
struct RawPayment<'a> {
    date: Option<Str<'a>>,
    currency: Str<'a>,
    payment_id: Str<'a>,
    method: Str<'a>,
    amount: Str<'a>,
}

/// The event `bytes` hold when they are a valid event of the known shape;
/// `None` for anything else (the tree then decides).
pub(super) fn parse(bytes: &[u8], subject_order_id: Option<&str>) -> Option<Event> {
    // UTF-8 checked once for the whole message, not string by string (as
    // `from_slice` does); a message that is not UTF-8 goes to the tree,
    // which names the fault.
    let text = std::str::from_utf8(bytes).ok()?;
    let raw: RawEvent<'_> = serde_json::from_str(text).ok()?;
    let event_type = super::event_type_of(&raw.event_type.0).ok()?;
    let body = match event_type {
        EventType::OrderConfirmed | EventType::OrderUpdated => {
            EventBody::Snapshot(snapshot(raw.order?)?)
        }
        EventType::OrderCancelled => EventBody::Cancel(match raw.order {
            Some(o) => Some(snapshot(o)?),
            None => None,
        }),
        EventType::PaymentDeleted => EventBody::PaymentDeleted(payment(raw.payment?)?),
        EventType::PaymentCreated | EventType::PaymentUpdated | EventType::PaymentWrittenOff => {
            EventBody::Payment(payment(raw.payment?)?)
        }
        // Rare next to snapshots and payments: the tree reads it.
        EventType::OrderRedeemed => return None,
    };
    Some(Event {
        event_id: id_of(&raw.event_id.0, no_path).ok()?,
        event_type,
        order_id: order_id_of(&raw.order_id.0, subject_order_id).ok()?,
        occurred_at: occurred_at_of(&raw.occurred_at.0).ok()?,
        body,
    })
}

/// The path of a field the typed path refuses: never shown (the tree
/// names it when it reads the message again).
fn no_path() -> String {
    String::new()
}

fn snapshot(raw: RawSnapshot<'_>) -> Option<OrderSnapshot> {
    let currency = currency_of(&raw.currency.0, no_path).ok()?;
    check_line_count(raw.line_items.len(), no_path).ok()?;
    let line_items = raw
        .line_items
        .iter()
        .map(|l| line(l, currency))
        .collect::<Option<Vec<_>>>()?;
    let fees = match raw.fees {
        Some(fees) => {
            check_len(fees.len(), FEES_MAX, no_path).ok()?;
            fees.iter()
                .map(|f| fee(f, currency))
                .collect::<Option<Vec<_>>>()?
        }
        None => Vec::new(),
    };
    let payments = match raw.payments {
        Some(payments) => {
            check_len(payments.len(), FEES_MAX, no_path).ok()?;
            payments
                .into_iter()
                .map(payment)
                .collect::<Option<Vec<_>>>()?
        }
        None => Vec::new(),
    };
    check_payment_currencies(&payments, currency, no_path).ok()?;
    Some(OrderSnapshot {
        version: raw.version,
        currency,
        channel: opt_text(raw.channel.as_ref())?,
        prices_include_tax: raw.prices_include_tax,
        line_items,
        fees,
        payments,
    })
}

fn line(raw: &RawLine<'_>, currency: Currency) -> Option<LineItem> {
    let quantity = quantity_of(raw.quantity, no_path).ok()?;
    let unit_price = money(&raw.unit_price, currency, false)?;
    let discount = match &raw.discount {
        Some(d) => money(d, currency, false)?,
        None => Decimal::ZERO,
    };
    check_discount(quantity, unit_price, discount, currency, no_path).ok()?;
    Some(LineItem {
        id: id_of(&raw.id.0, no_path).ok()?,
        product_id: opt_id(raw.product_id.as_ref())?,
        option_id: opt_id(raw.option_id.as_ref())?,
        unit_type: opt_id(raw.unit_type.as_ref())?,
        description: text_of(&raw.description.0, no_path).ok()?,
        quantity,
        unit_price,
        discount,
        tax_rate: rate(&raw.tax_rate)?,
    })
}

fn fee(raw: &RawFee<'_>, currency: Currency) -> Option<Fee> {
    Some(Fee {
        kind: id_of(&raw.kind.0, no_path).ok()?,
        description: text_of(&raw.description.0, no_path).ok()?,
        amount: money(&raw.amount, currency, false)?,
        tax_rate: rate(&raw.tax_rate)?,
    })
}

fn payment(raw: RawPayment<'_>) -> Option<Payment> {
    let currency = currency_of(&raw.currency.0, no_path).ok()?;
    Some(Payment {
        payment_id: id_of(&raw.payment_id.0, no_path).ok()?,
        method: id_of(&raw.method.0, no_path).ok()?,
        amount: money(&raw.amount, currency, true)?,
        currency,
        date: opt_text(raw.date.as_ref())?,
    })
}

/// `Some(None)` when absent, `None` when present and refused.
fn opt_id<'a, T: From<&'a str>>(s: Option<&'a Str<'_>>) -> Option<Option<T>> {
    s.map(|s| id_of(&s.0, no_path)).transpose().ok()
}

fn opt_text<'a, T: From<&'a str>>(s: Option<&'a Str<'_>>) -> Option<Option<T>> {
    s.map(|s| text_of(&s.0, no_path)).transpose().ok()
}

fn money(s: &Str<'_>, currency: Currency, signed: bool) -> Option<Decimal> {
    let d = parse_decimal_str(&s.0).ok()?;
    money_of(d, currency, signed, no_path).ok()
}

fn rate(s: &Str<'_>) -> Option<Decimal> {
    rate_of(parse_decimal_str(&s.0).ok()?, no_path).ok()
}
