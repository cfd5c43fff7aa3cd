//! The JSON Schema of the input events (SPEC 1), for producers in any
//! language: published as `docs/schema/events.schema.json` (kept equal to
//! [`events_schema`] by a test) and served as `GET /v1/schema/events`.
//!
//! It is generated with `schemars` from the types below, which mirror the
//! wire shape that [`crate::events::parse_event`] reads (that parser works
//! on a borrowed JSON tree, not on serde derives, so these types are only a
//! description; the limits are the parser's own constants). An event the
//! parser accepts is valid under the schema; an event the schema refuses
//! the parser rejects. The parser checks more: the rules that need
//! arithmetic, another field or the order's history (decimals per currency,
//! a discount within the line, a payment in the order's currency, the
//! subject, stale versions, duplicates), listed in `docs/schema.md`.

use std::borrow::Cow;
use std::sync::LazyLock;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use crate::events::{FEES_MAX, ID_MAX_CHARS, LINE_ITEMS_MAX, QUANTITY_MAX, TEXT_MAX_CHARS};
use crate::money::{Currency, DECIMAL_STRING_MAX_CHARS};

/// The schema's `$id` (published as `docs/schema/events.schema.json`).
pub const EVENTS_SCHEMA_ID: &str = "urn:ledgerline:schema:events";

/// No control character (Rust's `char::is_control`: C0, DEL and C1).
const NO_CONTROL: &str = r"[^\u0000-\u001F\u007F-\u009F]";

/// An input event: one of the eight types, by `type`. Fields not named
/// here are allowed and ignored (forward compatibility).
#[derive(JsonSchema)]
#[serde(tag = "type")]
#[schemars(
    title = "ledgerline input event",
    description = "One JSON object per message on orders.<order_id> (SPEC 1). Fields not named here are ignored."
)]
#[allow(dead_code)] // a description of the wire, never built
enum InputEvent {
    /// A new order: its full snapshot.
    #[serde(rename = "order.confirmed")]
    OrderConfirmed {
        #[serde(flatten)]
        envelope: Envelope,
        order: OrderSnapshot,
    },
    /// A changed order: its full snapshot, with a higher version.
    #[serde(rename = "order.updated")]
    OrderUpdated {
        #[serde(flatten)]
        envelope: Envelope,
        order: OrderSnapshot,
    },
    /// A cancelled order, with an optional final snapshot (a cancellation
    /// fee line); without one, every line and fee is gone.
    #[serde(rename = "order.cancelled")]
    OrderCancelled {
        #[serde(flatten)]
        envelope: Envelope,
        order: Option<OrderSnapshot>,
    },
    /// A payment, kept by `payment_id`.
    #[serde(rename = "payment.created")]
    PaymentCreated {
        #[serde(flatten)]
        envelope: Envelope,
        payment: Payment,
    },
    /// A payment replaced, by `payment_id`.
    #[serde(rename = "payment.updated")]
    PaymentUpdated {
        #[serde(flatten)]
        envelope: Envelope,
        payment: Payment,
    },
    /// A payment removed, by `payment_id` (an unknown id changes nothing).
    #[serde(rename = "payment.deleted")]
    PaymentDeleted {
        #[serde(flatten)]
        envelope: Envelope,
        payment: Payment,
    },
    /// `amount` of the outstanding balance written off as bad debt.
    #[serde(rename = "payment.written_off")]
    PaymentWrittenOff {
        #[serde(flatten)]
        envelope: Envelope,
        payment: Payment,
    },
    /// Units of a line used (a ticket scanned), kept by `redemption_id`.
    #[serde(rename = "order.redeemed")]
    OrderRedeemed {
        #[serde(flatten)]
        envelope: Envelope,
        redemption: Redemption,
    },
}

/// The fields of every event.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Envelope {
    /// Unique per event; the `Nats-Msg-Id` of its message.
    event_id: Id,
    /// The order, as in the subject `orders.<order_id>`.
    order_id: OrderId,
    /// When it happened, RFC 3339.
    occurred_at: Timestamp,
}

/// An order's full snapshot.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct OrderSnapshot {
    /// Strictly increases per order; a lower or equal one is stale.
    version: Version,
    /// The order's currency: every amount is in it.
    currency: CurrencyCode,
    /// The sales channel.
    channel: Option<Text>,
    /// True when unit prices and fee amounts include tax.
    prices_include_tax: bool,
    line_items: LineItems,
    fees: Option<Fees>,
    /// Payments known when the snapshot was taken, applied like
    /// `payment.created`/`updated` (a snapshot never deletes one).
    payments: Option<Payments>,
}

/// One line of an order.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct LineItem {
    id: Id,
    product_id: Option<Id>,
    option_id: Option<Id>,
    unit_type: Option<Id>,
    description: Text,
    quantity: Quantity,
    unit_price: Money,
    /// Off the line's quantity × unit_price (at most that); default 0.
    discount: Option<Money>,
    tax_rate: TaxRate,
}

/// A fee of an order (shipping, service…).
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Fee {
    kind: Id,
    description: Text,
    amount: Money,
    tax_rate: TaxRate,
}

/// A payment: of a `payment.*` event or in a snapshot's `payments`.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Payment {
    payment_id: Id,
    method: Id,
    /// Negative: a refund paid out.
    amount: SignedMoney,
    /// The order's currency.
    currency: CurrencyCode,
    date: Option<Text>,
}

/// A redemption of an `order.redeemed` event: `quantity` units of the
/// line `line_item_id` (at most the line's quantity with the order's other
/// redemptions). A later one with the same `redemption_id` replaces it.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct Redemption {
    redemption_id: Id,
    /// A line of the order as it is now.
    line_item_id: Id,
    quantity: Quantity,
    date: Option<Text>,
}

/// Implements `JsonSchema` for a marker type with a fixed schema.
/// (The generator is named for the arrays, whose items refer to a type.)
macro_rules! fixed_schema {
    ($name:ident, |$generator:pat_param| $schema:expr) => {
        #[allow(dead_code)]
        struct $name;
        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema($generator: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

fixed_schema!(Id, |_| json_schema!({
    "description": "An identifier: not blank, no control characters.",
    "type": "string",
    "minLength": 1,
    "maxLength": ID_MAX_CHARS,
    "pattern": format!(r"^{NO_CONTROL}*[^\s\u0000-\u001F\u007F-\u009F]{NO_CONTROL}*$"),
}));

fixed_schema!(OrderId, |_| json_schema!({
    "description": "An order id, a safe subject token.",
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]{1,128}$",
}));

fixed_schema!(Text, |_| json_schema!({
    "description": "Free text (may be empty), no control characters.",
    "type": "string",
    "maxLength": TEXT_MAX_CHARS,
    "pattern": format!("^{NO_CONTROL}*$"),
}));

fixed_schema!(Timestamp, |_| json_schema!({
    "description": "An RFC 3339 timestamp, e.g. 2026-11-22T10:00:00Z.",
    "type": "string",
    "format": "date-time",
}));

fixed_schema!(
    Version,
    |_| json_schema!({ "type": "integer", "minimum": 0 })
);

fixed_schema!(Quantity, |_| json_schema!({
    "description": "Units of the line, a whole number written without a decimal point.",
    "type": "integer",
    "minimum": 0,
    "maximum": QUANTITY_MAX,
}));

/// A decimal in a JSON string, as `money::parse_decimal_str` reads it.
fn decimal_string(description: &str, pattern: &str) -> Schema {
    json_schema!({
        "description": description,
        "type": "string",
        "maxLength": DECIMAL_STRING_MAX_CHARS,
        "pattern": pattern,
    })
}

fixed_schema!(Money, |_| decimal_string(
    "A non-negative decimal amount as a JSON string (\"11.00\"), never a number; at most the currency's minor units of significant decimals.",
    r"^([0-9]+(\.[0-9]+)?|-0+(\.0+)?)$",
));

fixed_schema!(SignedMoney, |_| decimal_string(
    "A decimal amount as a JSON string (\"-5.00\"), never a number; at most the currency's minor units of significant decimals.",
    r"^-?[0-9]+(\.[0-9]+)?$",
));

fixed_schema!(TaxRate, |_| decimal_string(
    "A tax rate in [0, 1) as a decimal string (16% is \"0.16\"), at most 6 significant decimals.",
    r"^(0+(\.[0-9]{1,6}0*)?|-0+(\.0+)?)$",
));

fixed_schema!(CurrencyCode, |_| json_schema!({
    "description": "An active ISO 4217 currency code.",
    "type": "string",
    "enum": currency_codes(),
}));

fixed_schema!(LineItems, |g| json_schema!({
    "type": "array",
    "maxItems": LINE_ITEMS_MAX,
    "items": g.subschema_for::<LineItem>(),
}));

fixed_schema!(Fees, |g| json_schema!({
    "type": "array",
    "maxItems": FEES_MAX,
    "items": g.subschema_for::<Fee>(),
}));

fixed_schema!(Payments, |g| json_schema!({
    "type": "array",
    "maxItems": FEES_MAX,
    "items": g.subschema_for::<Payment>(),
}));

/// Every code [`Currency::parse`] accepts, in alphabetical order.
fn currency_codes() -> Vec<String> {
    let letters = b'A'..=b'Z';
    let mut codes = Vec::new();
    for a in letters.clone() {
        for b in letters.clone() {
            for c in letters.clone() {
                let code = String::from_utf8_lossy(&[a, b, c]).into_owned();
                if Currency::parse(&code).is_ok() {
                    codes.push(code);
                }
            }
        }
    }
    codes
}

/// The schema of the input events (JSON Schema 2020-12), built once.
pub fn events_schema() -> &'static Value {
    static SCHEMA: LazyLock<Value> = LazyLock::new(|| {
        let mut schema = SchemaGenerator::default().into_root_schema_for::<InputEvent>();
        schema.insert("$id".to_owned(), Value::from(EVENTS_SCHEMA_ID));
        schema.to_value()
    });
    &SCHEMA
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set `UPDATE_SCHEMA=1` to rewrite the published file from the types.
    #[test]
    fn the_published_schema_is_the_generated_one() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/schema/events.schema.json"
        );
        let generated = format!(
            "{}\n",
            serde_json::to_string_pretty(events_schema()).expect("a schema serialises")
        );
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(path, &generated).expect("docs/schema is writable");
        }
        let published = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            published == generated,
            "{path} is not the generated schema: run `UPDATE_SCHEMA=1 cargo test --lib schema`"
        );
    }
}
