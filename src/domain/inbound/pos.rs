//! `pos_payments`: the payment webhooks reference (`Payment Created`,
//! `Updated`, `Deleted`, `Write Off`), money as JSON numbers.
//!
//! | topic | event |
//! |---|---|
//! | `payment/created` | `payment.created` |
//! | `payment/updated` | `payment.updated` |
//! | `payment/deleted` | `payment.deleted` |
//! | `payment/written_off` | `payment.written_off` |
//! | anything else | ignored |
//!
//! `order_id` = `InvoiceID`, `payment_id` = `ID`, `method` = `Method`,
//! `amount` = `Amount` (exact text), `date` = `Date`, `currency` = the
//! source's; `occurred_at` = `Created` (a date is midnight UTC).

use serde_json::json;

use super::json::{rfc3339, root};
use super::{Plan, event, message_id, source_currency};
use crate::events::Rejection;
use crate::source::Source;

pub(super) fn plan(source: &Source, topic: &str, body: &[u8]) -> Result<Plan, Rejection> {
    let event_type = match topic {
        "payment/created" => "payment.created",
        "payment/updated" => "payment.updated",
        "payment/deleted" => "payment.deleted",
        "payment/written_off" => "payment.written_off",
        other => {
            return Ok(Plan::Ignored {
                topic: other.to_owned(),
            });
        }
    };
    let currency = source_currency(source)?;
    let o = root(body)?;
    let order_id = o.order_id("InvoiceID")?;
    let payment_id = o.id("ID")?;
    let method = o.id("Method")?;
    let amount = o.money("Amount", currency)?;
    let date = o.text("Date")?;
    let created = match o.opt("Created") {
        Some(_) => o.timestamp("Created")?,
        None => o.timestamp("Date")?,
    };
    let msg_id = message_id(source.id(), topic, body);
    let v = json!({
        "event_id": msg_id,
        "type": event_type,
        "order_id": order_id.as_str(),
        "occurred_at": rfc3339(created),
        "payment": {
            "payment_id": payment_id,
            "method": method,
            "amount": amount.to_string(),
            "currency": currency.code(),
            "date": date,
        }
    });
    Ok(Plan::Store(vec![event(order_id, msg_id, &v)]))
}
