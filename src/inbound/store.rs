//! Storing what an inbound request maps to: its events on ORDERS, a
//! refused body on `ledger.rejected.<reason>`, and reading a stored order's
//! lines (for `orders/redeemed`). Every publish is awaited to its JetStream
//! ack before the request is answered.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;

use super::InboundState;
use crate::events::{OrderId, Rejection, parse_event};
use crate::mapping::{LineRef, MappedEvent, message_id};
use crate::order::OrderState;
use crate::source::Source;
use crate::streams::direct::{DirectGet, DirectGetError};
use crate::streams::{
    self, H_FIELD, H_KIND, H_MESSAGE, H_REASON, H_SOURCE, ORDERS_STREAM, subjects,
};

/// Longest a Direct Get reply may take while reading an order's events.
pub const DIRECT_GET_TIMEOUT: Duration = Duration::from_secs(5);
/// Most events of one order read to find its lines: far beyond a real
/// order's history, a bound on what one request can make us read.
pub const ORDER_EVENTS_MAX: usize = 10_000;

/// Why a request's events could not be stored: the vendor is answered 503
/// and retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("publishing to {subject}: {source}")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    #[error("reading the events of order {order_id}: {source}")]
    Read {
        order_id: String,
        #[source]
        source: DirectGetError,
    },
}

/// What a publish stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// New messages on ORDERS.
    pub new: usize,
    /// Already there (the same message id within the duplicate window).
    pub duplicates: usize,
}

fn source_header(source: &Source) -> String {
    format!("inbound:{}", source.id())
}

/// Publishes `events` to `<prefix>.<order_id>` (all sent, then every ack
/// awaited): `Ok` only when JetStream has stored each one.
pub(super) async fn publish(
    st: &InboundState,
    source: &Source,
    events: &[MappedEvent],
) -> Result<Stored, StoreError> {
    let mut pending: Vec<(String, PublishMessage, PublishAckFuture)> =
        Vec::with_capacity(events.len());
    for e in events {
        let subject = st.inner.orders.publish(e.order_id.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(H_SOURCE, source_header(source).as_str());
        let message = streams::guarded_message(headers, &e.msg_id, None, e.payload.clone().into());
        let ack = st
            .inner
            .js
            .send_publish(subject.clone(), message.clone())
            .await
            .map_err(|source| StoreError::Publish {
                subject: subject.clone(),
                source,
            })?;
        pending.push((subject, message, ack));
    }
    let mut stored = Stored::default();
    for (subject, message, ack) in pending {
        // A vendor's retry racing its first attempt on a cluster: the
        // answer "in process" is settled before replying.
        let ack = streams::ack_resolving_in_process(&st.inner.js, &subject, &message, ack)
            .await
            .map_err(|source| StoreError::Publish { subject, source })?;
        if ack.duplicate {
            stored.duplicates += 1;
        } else {
            stored.new += 1;
        }
    }
    Ok(stored)
}

/// Keeps a refused request's raw body on `ledger.rejected.<reason>` with
/// why (headers as every rejection has them), awaited to its ack. A retry
/// of the same request is recorded once.
pub(super) async fn reject(
    st: &InboundState,
    source: &Source,
    topic: &str,
    body: &[u8],
    rejection: &Rejection,
) -> Result<(), StoreError> {
    let (payload, mut headers) =
        streams::rejected_body(body, streams::rejected_max_bytes(&st.inner.client));
    headers.insert(H_REASON, rejection.reason.as_str());
    headers.insert(H_FIELD, streams::header_value(&rejection.field).as_str());
    headers.insert(
        H_MESSAGE,
        streams::header_value(&rejection.message).as_str(),
    );
    headers.insert(
        H_SOURCE,
        streams::header_value(&format!("{}:{topic}", source_header(source))).as_str(),
    );
    headers.insert(H_KIND, "rejected");
    let id = format!("rejected:{}", message_id(source.id(), topic, body));
    let subject = subjects::rejected(rejection.reason.as_str());
    let message = streams::guarded_message(headers, &id, None, payload);
    let publish_err = |source| StoreError::Publish {
        subject: subject.clone(),
        source,
    };
    st.inner
        .js
        .send_publish(subject.clone(), message)
        .await
        .map_err(publish_err)?
        .await
        .map_err(publish_err)?;
    Ok(())
}

/// The lines of order `order_id` as stored now: its events on ORDERS
/// folded as the aggregator folds them (refused ones skipped).
pub(super) async fn order_lines(
    client: &async_nats::Client,
    orders: &crate::streams::OrderSubjects,
    order_id: &OrderId,
) -> Result<Vec<LineRef>, StoreError> {
    let subject = orders.stored(order_id.as_str());
    let mut reader =
        DirectGet::new(client, ORDERS_STREAM, &subject, DIRECT_GET_TIMEOUT).limit(ORDER_EVENTS_MAX);
    let mut state = OrderState::new(order_id.clone());
    while let Some(m) = reader.next().await.map_err(|source| StoreError::Read {
        order_id: order_id.to_string(),
        source,
    })? {
        if let Ok(event) = parse_event(m.payload(), Some(order_id.as_str())) {
            // A refused event changes nothing, as in the aggregator.
            let _ = state.apply(&event);
        }
    }
    Ok(state
        .line_items
        .iter()
        .map(|l| LineRef {
            id: l.id.to_string(),
            quantity: l.quantity,
        })
        .collect())
}
