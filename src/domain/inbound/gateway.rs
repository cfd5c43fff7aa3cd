//! `gateway`: the card gateway's transaction events (its signature
//! reference). The body says what happened (`event_type`) and carries the
//! vendor's `event_id`, the message id.
//!
//! | `event_type` | event |
//! |---|---|
//! | `transaction.sale.success`, `transaction.sale.captured`, `transaction.sale.unvoided` | `payment.created` |
//! | `transaction.sale.voided` | `payment.deleted` |
//! | `transaction.refund.success` | `payment.created` with the amount negative (a refund) |
//! | `transaction.refund.voided` | `payment.deleted` of the refund |
//! | anything else | ignored |
//!
//! `payment_id` = `event_body.object.key`, `amount` =
//! `event_body.object.amount_detail.amount`, `method` = `card`, the order
//! id where the source's `order_id_pointer` says, `occurred_at` =
//! `event_triggered` (UTC), `currency` = the source's.

use serde_json::json;

use super::json::{rfc3339, root};
use super::{Plan, event, source_currency};
use crate::events::{RejectReason, Rejection};
use crate::source::Source;

/// The method of every gateway payment.
pub const GATEWAY_METHOD: &str = "card";

pub(super) fn plan(source: &Source, body: &[u8]) -> Result<Plan, Rejection> {
    let o = root(body)?;
    let event_type = o.text("event_type")?;
    let (our_type, refund) = match event_type.as_str() {
        "transaction.sale.success" | "transaction.sale.captured" | "transaction.sale.unvoided" => {
            ("payment.created", false)
        }
        "transaction.sale.voided" => ("payment.deleted", false),
        "transaction.refund.success" => ("payment.created", true),
        "transaction.refund.voided" => ("payment.deleted", true),
        _ => return Ok(Plan::Ignored { topic: event_type }),
    };
    let currency = source_currency(source)?;
    let pointer = source.config.order_id_pointer.as_deref().ok_or_else(|| {
        Rejection::new(
            RejectReason::MissingField,
            "order_id_pointer",
            "the source sets no order_id_pointer",
        )
    })?;
    let msg_id = o.id("event_id")?;
    let occurred = o.timestamp("event_triggered")?;
    let order_id = o.order_id_at(pointer)?;
    let object = o.obj("event_body")?.obj("object")?;
    let payment_id = object.id("key")?;
    let mut amount = object.obj("amount_detail")?.money("amount", currency)?;
    if refund {
        amount = -amount.abs();
    }
    let v = json!({
        "event_id": msg_id,
        "type": our_type,
        "order_id": order_id.as_str(),
        "occurred_at": rfc3339(occurred),
        "payment": {
            "payment_id": payment_id,
            "method": GATEWAY_METHOD,
            "amount": amount.to_string(),
            "currency": currency.code(),
            "date": rfc3339(occurred),
        }
    });
    Ok(Plan::Store(vec![event(order_id, msg_id, &v)]))
}
