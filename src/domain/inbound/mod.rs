//! Inbound mapping (SPEC 10): a source's webhook payload (and the topic
//! from its URL) becomes SPEC 1 events, each with its message id. Pure:
//! [`plan`] decides, the listener (`crate::inbound`) stores.
//!
//! One module per kind ([`marketplace`], [`pos`], [`gateway`], and [`jq`]:
//! the user's own jq program); `events` sources send SPEC 1 events as
//! they are. Money is read from the exact
//! text of a JSON number ([`json`]), never through `f64`. Every mapped
//! event is checked by [`crate::events::parse_event`], the aggregator's own
//! parser, before it is stored, so what a vendor is told is accepted will
//! not be rejected later for its shape.
//!
//! Message ids: the vendor's event id where the payload has one
//! (`event_id`), else [`message_id`] (SHA-256 of source, topic and body),
//! so a vendor's retry of the same request is dropped by JetStream and a
//! changed body is stored. One request that maps to several events gives
//! them the ids `<id>:<n>`.

mod gateway;
pub mod jq;
pub(crate) mod json;
mod marketplace;
mod pos;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::events::{OrderId, RejectReason, Rejection, parse_event};
use crate::source::{Source, SourceKind};

/// Longest topic accepted in a URL, in characters.
pub const TOPIC_MAX_CHARS: usize = 64;

/// One SPEC 1 event to store on ORDERS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedEvent {
    pub order_id: OrderId,
    /// `Nats-Msg-Id`, equal to the event's `event_id`.
    pub msg_id: String,
    /// The event, as stored.
    pub payload: Vec<u8>,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Store these events, in this order.
    Store(Vec<MappedEvent>),
    /// `orders/redeemed`: every line of the order as stored is redeemed;
    /// the caller reads the lines, then [`Redeem::events`].
    Redeem(Redeem),
    /// A topic this kind does not turn into events: acknowledged and
    /// counted, nothing stored.
    Ignored { topic: String },
}

/// A marketplace's "digital order redeemed": every unit of every line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeem {
    pub order_id: OrderId,
    pub msg_id: String,
    pub occurred_at: String,
    pub date: String,
}

/// A line of a stored order, as redemptions need it: id and quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRef {
    pub id: String,
    pub quantity: u64,
}

impl Redeem {
    /// One `order.redeemed` per line (SPEC 1's `redemption`), keyed
    /// `redeemed-<line id>` so a replay replaces rather than adds.
    pub fn events(&self, lines: &[LineRef]) -> Vec<MappedEvent> {
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let msg_id = format!("{}:{}", self.msg_id, i + 1);
                let event = serde_json::json!({
                    "event_id": msg_id,
                    "type": "order.redeemed",
                    "order_id": self.order_id.as_str(),
                    "occurred_at": self.occurred_at,
                    "redemption": {
                        "redemption_id": format!("redeemed-{}", line.id),
                        "line_item_id": line.id,
                        "quantity": line.quantity,
                        "date": self.date,
                    }
                });
                MappedEvent {
                    order_id: self.order_id.clone(),
                    msg_id,
                    payload: to_bytes(&event),
                }
            })
            .collect()
    }
}

/// SHA-256 (hex) of source id, topic and body: the message id of a
/// payload that carries no event id of its own.
pub fn message_id(source_id: &str, topic: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(source_id.as_bytes());
    h.update([0]);
    h.update(topic.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a topic from a URL: `orders/created`, `transaction.sale.success`.
pub fn check_topic(topic: &str) -> Result<(), Rejection> {
    let ok = !topic.is_empty()
        && topic.len() <= TOPIC_MAX_CHARS
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(
            RejectReason::InvalidField,
            "topic",
            format!("must be 1 to {TOPIC_MAX_CHARS} characters of [A-Za-z0-9/._-]"),
        ))
    }
}

/// What `body` (sent to `source`, with `topic` from the URL when there is
/// one) asks for, or why it is refused (naming the field).
pub fn plan(source: &Source, topic: Option<&str>, body: &[u8]) -> Result<Plan, Rejection> {
    if let Some(t) = topic {
        check_topic(t)?;
    }
    let plan = match source.kind() {
        SourceKind::MarketplaceOrders => marketplace::plan(source, required(topic)?, body)?,
        SourceKind::PosPayments => pos::plan(source, required(topic)?, body)?,
        SourceKind::Gateway => gateway::plan(source, body)?,
        SourceKind::Jq => match &source.jq {
            Some(program) => jq::plan(source, program, topic, body)?,
            None => {
                return Err(Rejection::new(
                    RejectReason::MissingField,
                    "program",
                    "the source has no compiled program",
                ));
            }
        },
        SourceKind::Events => {
            let ev = parse_event(body, None)?;
            Plan::Store(vec![MappedEvent {
                order_id: ev.order_id,
                msg_id: ev.event_id,
                payload: body.to_vec(),
            }])
        }
    };
    if let Plan::Store(events) = &plan
        && source.kind() != SourceKind::Events
    {
        for e in events {
            parse_event(&e.payload, Some(e.order_id.as_str()))?;
        }
    }
    Ok(plan)
}

/// The source's `currency` (validation requires it for the kinds that
/// call this; still a named refusal rather than a panic).
fn source_currency(source: &Source) -> Result<crate::money::Currency, Rejection> {
    source.currency.ok_or_else(|| {
        Rejection::new(
            RejectReason::MissingField,
            "currency",
            "the source sets no currency",
        )
    })
}

fn required(topic: Option<&str>) -> Result<&str, Rejection> {
    topic.ok_or_else(|| {
        Rejection::new(
            RejectReason::MissingField,
            "topic",
            "this source's payloads do not say what happened: post to /v1/ingest/{source_id}/{topic}, \
             e.g. orders/created",
        )
    })
}

/// The one serialisation of a mapped event.
fn to_bytes(v: &Value) -> Vec<u8> {
    // A Value has string keys only and serialises into memory: no error.
    serde_json::to_vec(v).unwrap_or_else(|_| unreachable!("a JSON value always serialises"))
}

/// One mapped event with `msg_id` as its event id.
fn event(order_id: OrderId, msg_id: String, v: &Value) -> MappedEvent {
    MappedEvent {
        order_id,
        msg_id,
        payload: to_bytes(v),
    }
}
