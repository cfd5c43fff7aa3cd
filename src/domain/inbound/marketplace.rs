//! `marketplace_orders`: the subscription reference's order payloads.
//!
//! | topic | event |
//! |---|---|
//! | `orders/created` | `order.confirmed` (snapshot) |
//! | `orders/updated` | `order.updated` (snapshot) |
//! | `orders/cancelled` | `order.cancelled` with a snapshot of no lines |
//! | `orders/redeemed` | `order.redeemed` for every line ([`super::Redeem`]) |
//! | anything else | ignored |
//!
//! The snapshot's `version` is `dateModified` in Unix seconds: a newer
//! snapshot wins, a replayed or older one is stale (SPEC 1).

use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::json::{Obj, rfc3339, root};
use super::{Plan, Redeem, event, message_id};
use crate::events::{LINE_ITEMS_MAX, RejectReason, Rejection};
use crate::money::Currency;
use crate::source::Source;

pub(super) fn plan(source: &Source, topic: &str, body: &[u8]) -> Result<Plan, Rejection> {
    let event_type = match topic {
        "orders/created" => "order.confirmed",
        "orders/updated" => "order.updated",
        "orders/cancelled" => "order.cancelled",
        "orders/redeemed" => return redeem(source, topic, body),
        other => {
            return Ok(Plan::Ignored {
                topic: other.to_owned(),
            });
        }
    };
    let o = root(body)?;
    let msg_id = message_id(source.id(), topic, body);
    let order_id = o.order_id("orderId")?;
    let modified = o.timestamp("dateModified")?;
    let version = u64::try_from(modified.unix_timestamp())
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidField,
                "dateModified",
                "must be after 1970-01-01: it orders the order's snapshots",
            )
        })?;
    let currency = match o.opt_text("currency")? {
        Some(code) => Currency::parse(&code).map_err(|e| {
            Rejection::new(RejectReason::UnknownCurrency, "currency", e.to_string())
        })?,
        None => source.currency.ok_or_else(|| {
            Rejection::new(
                RejectReason::MissingField,
                "currency",
                "is required: the payload has none and the source sets no default",
            )
        })?,
    };
    let tax_rate = match o.opt("tax") {
        Some(_) => o.decimal("tax")?.normalize(),
        None => Decimal::ZERO,
    };
    let total = o.money("total", currency)?;
    let items = o.objects("items", LINE_ITEMS_MAX)?;
    let mut lines = Vec::with_capacity(items.len());
    let mut sum = Decimal::ZERO;
    for (i, item) in items.iter().enumerate() {
        let (line, gross) = line(item, i, currency, tax_rate)?;
        sum += gross;
        lines.push(line);
    }
    let mut fees = Vec::new();
    if source.config.shipping_as_fee
        && let Some(shipping) = o.opt("shipping").map(|_| o.obj("shipping")).transpose()?
        && shipping.opt("shippingCost").is_some()
    {
        let cost = shipping.money("shippingCost", currency)?;
        sum += cost;
        fees.push(json!({
            "kind": "shipping",
            "description": "Shipping",
            "amount": cost.to_string(),
            "tax_rate": tax_rate.to_string(),
        }));
    }
    if sum != total {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            "total",
            format!(
                "{total} differs from the sum of the items' itemQuantity × price{} = {sum}",
                if fees.is_empty() {
                    ""
                } else {
                    " plus shippingCost"
                }
            ),
        ));
    }
    let mut payments = Vec::new();
    if o.opt_text("orderStatus")?.as_deref() == Some("paid") {
        payments.push(payment(&o, order_id.as_str(), total, currency, &modified)?);
    }
    if event_type == "order.cancelled" {
        // Everything is gone; the version moves on so an older update that
        // arrives late is stale rather than reinstating the order.
        lines.clear();
        fees.clear();
    }
    let mut order = json!({
        "version": version,
        "currency": currency.code(),
    });
    if let Some(channel) = o.opt_text("channel")? {
        order["channel"] = Value::String(channel);
    }
    order["prices_include_tax"] = Value::Bool(source.config.prices_include_tax);
    order["line_items"] = Value::Array(lines);
    order["fees"] = Value::Array(fees);
    if !payments.is_empty() {
        order["payments"] = Value::Array(payments);
    }
    let v = json!({
        "event_id": msg_id,
        "type": event_type,
        "order_id": order_id.as_str(),
        "occurred_at": rfc3339(modified),
        "order": order,
    });
    Ok(Plan::Store(vec![event(order_id, msg_id, &v)]))
}

/// One item as a SPEC 1 line, and its gross (quantity × price).
fn line(
    item: &Obj<'_>,
    i: usize,
    currency: Currency,
    tax_rate: Decimal,
) -> Result<(Value, Decimal), Rejection> {
    let quantity = item.count("itemQuantity")?;
    let price = item.money("price", currency)?;
    if price.is_sign_negative() && !price.is_zero() {
        return Err(Rejection::new(
            RejectReason::NegativeValue,
            item.path("price"),
            format!("{price} is negative"),
        ));
    }
    let id = item
        .opt_id("itemExternalId")?
        .unwrap_or_else(|| format!("item-{}", i + 1));
    let mut line = json!({ "id": id });
    if let Some(sku) = item.opt_id("sku")? {
        line["product_id"] = Value::String(sku);
    }
    if let Some(variation) = item.opt_id("variationId")? {
        line["option_id"] = Value::String(variation);
    }
    let description = match item.opt_text("title")? {
        Some(t) if !t.is_empty() => t,
        _ => line["id"].as_str().unwrap_or_default().to_owned(),
    };
    line["description"] = Value::String(description);
    line["quantity"] = Value::from(quantity);
    line["unit_price"] = Value::String(price.to_string());
    line["discount"] = Value::String("0".to_owned());
    line["tax_rate"] = Value::String(tax_rate.to_string());
    Ok((line, Decimal::from(quantity) * price))
}

/// The payment of a paid order: `total`, by `paymentMethods[0]`.
fn payment(
    o: &Obj<'_>,
    order_id: &str,
    total: Decimal,
    currency: Currency,
    at: &time::OffsetDateTime,
) -> Result<Value, Rejection> {
    let methods = o.objects("paymentMethods", crate::events::FEES_MAX)?;
    let (payment_id, method) = match methods.first() {
        Some(m) => (
            m.opt_id("externalId")?
                .unwrap_or_else(|| format!("payment-{order_id}")),
            m.opt_id("paymentMethod")?
                .unwrap_or_else(|| "marketplace".to_owned()),
        ),
        None => (format!("payment-{order_id}"), "marketplace".to_owned()),
    };
    Ok(json!({
        "payment_id": payment_id,
        "method": method,
        "amount": total.to_string(),
        "currency": currency.code(),
        "date": rfc3339(*at),
    }))
}

/// `orders/redeemed`: `{orderId, redeemDate}`.
fn redeem(source: &Source, topic: &str, body: &[u8]) -> Result<Plan, Rejection> {
    let o = root(body)?;
    let order_id = o.order_id("orderId")?;
    let at = o.timestamp("redeemDate")?;
    Ok(Plan::Redeem(Redeem {
        order_id,
        msg_id: message_id(source.id(), topic, body),
        occurred_at: rfc3339(at),
        date: rfc3339(at),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::MappedEvent;
    use crate::source::SourceConfig;

    const ORDER: &str = r#"{"orderId": "A-1", "dateModified": "2024-01-02T03:04:05",
        "currency": "EUR", "tax": 0.19, "total": 30.1, "orderStatus": "pending",
        "items": [{"price": 10.05, "itemQuantity": 2, "title": "Mug"}],
        "shipping": {"shippingCost": 10}}"#;

    fn source(shipping_as_fee: bool) -> Source {
        let mut c: SourceConfig =
            toml::from_str("id = \"m\"\nkind = \"marketplace_orders\"").unwrap();
        c.shipping_as_fee = shipping_as_fee;
        c.validate().unwrap()
    }

    fn stored(plan: Plan) -> Vec<serde_json::Value> {
        let Plan::Store(events) = plan else {
            panic!("expected events, got {plan:?}")
        };
        events
            .iter()
            .map(|e: &MappedEvent| serde_json::from_slice(&e.payload).unwrap())
            .collect()
    }

    #[test]
    fn shipping_is_a_fee_only_when_the_source_says_so_and_the_total_must_agree() {
        let with_fee = stored(plan(&source(true), "orders/created", ORDER.as_bytes()).unwrap());
        assert_eq!(
            with_fee[0]["order"]["fees"],
            json!([{"kind": "shipping", "description": "Shipping", "amount": "10", "tax_rate": "0.19"}])
        );
        assert_eq!(with_fee[0]["order"]["line_items"][0]["unit_price"], "10.05");
        assert_eq!(with_fee[0]["order"]["line_items"][0]["id"], "item-1");
        assert!(with_fee[0]["order"].get("payments").is_none(), "not paid");
        // Without the fee the lines (20.10) do not reach the total (30.1).
        let e = plan(&source(false), "orders/created", ORDER.as_bytes()).unwrap_err();
        assert_eq!(
            (e.reason, e.field.as_str()),
            (RejectReason::InvalidField, "total")
        );
    }

    #[test]
    fn a_later_modification_is_a_higher_version() {
        let v = |date: &str| {
            let body = ORDER.replace("2024-01-02T03:04:05", date);
            stored(plan(&source(true), "orders/updated", body.as_bytes()).unwrap())[0]["order"]
                ["version"]
                .as_u64()
                .unwrap()
        };
        assert!(v("2024-01-02T03:04:06") > v("2024-01-02T03:04:05"));
        assert_eq!(v("2024-01-02T03:04:05"), v("2024-01-02T03:04:05"));
    }
}
