//! The serde-derived reader that `fast`'s hand-written one replaced, kept
//! for the tests only: what serde reads goes through the same checks
//! (`fast::event`), so `fast` must answer as this does for every message
//! `fast` accepts (the differential property in
//! `events::tests::typed_path_differential`).

use serde::Deserialize;

use super::{Event, Str, fast};

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

/// The event `bytes` hold when serde reads them as the known shape and
/// the values pass the same checks as `fast`'s (`fast::event`).
pub(super) fn parse(bytes: &[u8], subject_order_id: Option<&str>) -> Option<Event> {
    // UTF-8 checked once for the whole message, not string by string (as
    // `from_slice` does); a message that is not UTF-8 goes to the tree,
    // which names the fault.
    let text = std::str::from_utf8(bytes).ok()?;
    let raw: RawEvent<'_> = serde_json::from_str(text).ok()?;
    fast::event(raw.as_fast(), subject_order_id)
}

impl RawEvent<'_> {
    /// The same event in `fast`'s borrowed shape.
    fn as_fast(&self) -> fast::RawEvent<'_> {
        fast::RawEvent {
            event_id: Some(&self.event_id.0),
            event_type: Some(&self.event_type.0),
            order_id: Some(&self.order_id.0),
            occurred_at: Some(&self.occurred_at.0),
            order: self.order.as_ref().map(RawSnapshot::as_fast),
            payment: self.payment.as_ref().map(RawPayment::as_fast),
        }
    }
}

impl RawSnapshot<'_> {
    fn as_fast(&self) -> fast::RawSnapshot<'_> {
        fast::RawSnapshot {
            version: self.version,
            currency: &self.currency.0,
            channel: opt(&self.channel),
            prices_include_tax: self.prices_include_tax,
            line_items: self.line_items.iter().map(RawLine::as_fast).collect(),
            fees: self
                .fees
                .as_ref()
                .map(|f| f.iter().map(RawFee::as_fast).collect()),
            payments: self
                .payments
                .as_ref()
                .map(|p| p.iter().map(RawPayment::as_fast).collect()),
        }
    }
}

impl RawLine<'_> {
    fn as_fast(&self) -> fast::RawLine<'_> {
        fast::RawLine {
            id: &self.id.0,
            product_id: opt(&self.product_id),
            option_id: opt(&self.option_id),
            unit_type: opt(&self.unit_type),
            description: &self.description.0,
            quantity: self.quantity,
            unit_price: &self.unit_price.0,
            discount: opt(&self.discount),
            tax_rate: &self.tax_rate.0,
        }
    }
}

impl RawFee<'_> {
    fn as_fast(&self) -> fast::RawFee<'_> {
        fast::RawFee {
            kind: &self.kind.0,
            description: &self.description.0,
            amount: &self.amount.0,
            tax_rate: &self.tax_rate.0,
        }
    }
}

impl RawPayment<'_> {
    fn as_fast(&self) -> fast::RawPayment<'_> {
        fast::RawPayment {
            date: opt(&self.date),
            currency: &self.currency.0,
            payment_id: &self.payment_id.0,
            method: &self.method.0,
            amount: &self.amount.0,
        }
    }
}

fn opt<'a>(s: &'a Option<Str<'_>>) -> Option<&'a str> {
    s.as_ref().map(|s| &*s.0)
}
