//! `ledgerline publish FILE.ndjson`: put producer events on ORDERS.
//!
//! Each line is checked only enough to route it (a JSON object with an
//! `event_id` and a valid `order_id`); the aggregator does the full check.
//! A routable line goes to `<prefix>.<order_id>` with `Nats-Msg-Id` =
//! `event_id`, so JetStream drops a line published twice. Acks are awaited
//! in a sliding window, not one round trip per message. A line that cannot be
//! routed is reported with its line number and recorded on
//! `ledger.rejected.<reason>` like any other rejected input.

use std::collections::{BTreeMap, VecDeque};
use std::io::BufRead;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self};
use serde_json::Value;

use crate::events::{MESSAGE_MAX_BYTES, OrderId, RejectReason};
use crate::streams::{self, H_KIND, H_MESSAGE, H_REASON, H_SOURCE, OrderSubjects, subjects};

/// Publishes awaiting their ack at once: enough to fill the pipe, bounded so
/// a slow server pushes back.
pub const ACK_WINDOW: usize = 256;

/// What a publish run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishSummary {
    /// Lines read (blank lines are skipped and not counted).
    pub lines: u64,
    /// Stored as new messages.
    pub published: u64,
    /// Already in the stream (same event_id within the duplicate window).
    pub duplicates: u64,
    /// Not routable, by reason.
    pub refused: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl PublishSummary {
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

impl std::fmt::Display for PublishSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "publish: {} lines, {} published, {} duplicates, {} refused",
            self.lines,
            self.published,
            self.duplicates,
            self.refused_total()
        )?;
        if !self.refused.is_empty() {
            let reasons: Vec<String> = self
                .refused
                .iter()
                .map(|(r, n)| format!("{r}: {n}"))
                .collect();
            write!(f, " ({})", reasons.join(", "))?;
        }
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            write!(f, " in {secs:.1}s ({:.0} msg/s)", self.lines as f64 / secs)?;
        }
        Ok(())
    }
}

/// Why publishing stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("reading line {line}: {source}")]
    Read {
        line: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("publishing line {line} to {subject}: {source}")]
    Nats {
        line: u64,
        subject: String,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    #[error(transparent)]
    Streams(#[from] streams::NatsError),
}

/// A line that cannot be routed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: u64,
    pub reason: RejectReason,
    pub message: String,
}

/// Why an event id is refused.
const INVALID_EVENT_ID: &str = "event_id must be a non-empty string of at most 128 characters";

/// A line refused for `reason`, saying `why`.
fn refused(reason: RejectReason, why: &str) -> (RejectReason, String) {
    (reason, why.to_owned())
}

/// Checks a line enough to route it: its order id and event id.
pub fn route(line: &[u8]) -> Result<(OrderId, String), (RejectReason, String)> {
    if line.len() > MESSAGE_MAX_BYTES {
        return Err((
            RejectReason::TooLarge,
            format!(
                "{} bytes, over the {MESSAGE_MAX_BYTES} byte limit",
                line.len()
            ),
        ));
    }
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| (RejectReason::MalformedJson, format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or((RejectReason::MalformedJson, "not a JSON object".to_owned()))?;
    let event_id = match obj.get("event_id") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 128 => s.clone(),
        Some(_) => return Err(refused(RejectReason::InvalidField, INVALID_EVENT_ID)),
        None => return Err(refused(RejectReason::MissingField, "event_id is required")),
    };
    let order_id = match obj.get("order_id") {
        Some(Value::String(s)) => OrderId::parse(s).ok_or((
            RejectReason::InvalidOrderId,
            format!("order_id {s:?} does not match [A-Za-z0-9_-]{{1,128}}"),
        ))?,
        Some(_) => {
            return Err(refused(
                RejectReason::InvalidOrderId,
                "order_id must be a string",
            ));
        }
        None => return Err(refused(RejectReason::MissingField, "order_id is required")),
    };
    Ok((order_id, event_id))
}

/// Publishes every line of `input`. `source` names it in rejection records
/// (a file name or `stdin`); `progress` is called after each line with the
/// running summary.
pub async fn publish(
    client: &async_nats::Client,
    orders: &OrderSubjects,
    replicas: usize,
    source: &str,
    input: impl BufRead,
    mut on_refused: impl FnMut(&Refusal),
    mut progress: impl FnMut(&PublishSummary),
) -> Result<PublishSummary, PublishError> {
    let started = Instant::now();
    let js = jetstream::new(client.clone());
    streams::ensure_streams(&js, orders, replicas).await?;
    let rejected_max = streams::rejected_max_bytes(client);
    let mut summary = PublishSummary::default();
    let mut window: VecDeque<Pending> = VecDeque::with_capacity(ACK_WINDOW);

    for (i, line) in input.split(b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let mut line = line.map_err(|source| PublishError::Read {
            line: line_no,
            source,
        })?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.lines += 1;
        let (subject, publish) = match route(&line) {
            Ok((order_id, event_id)) => (
                orders.publish(order_id.as_str()),
                PublishMessage::build()
                    .message_id(event_id)
                    .payload(line.into()),
            ),
            Err((reason, message)) => {
                let refusal = Refusal {
                    line: line_no,
                    reason,
                    message,
                };
                on_refused(&refusal);
                *summary
                    .refused
                    .entry(reason.as_str().to_owned())
                    .or_default() += 1;
                let (body, mut headers) = streams::rejected_body(&line, rejected_max);
                record_refusal(&mut headers, source, &refusal);
                // Publishing the same file twice records it once.
                let id = format!("refused:{source}:{line_no}:{}", header_sha(&headers));
                (
                    subjects::rejected(reason.as_str()),
                    streams::guarded_message(headers, &id, None, body),
                )
            }
        };
        let ack = js
            .send_publish(subject.clone(), publish.clone())
            .await
            .map_err(|source| PublishError::Nats {
                line: line_no,
                subject: subject.clone(),
                source,
            })?;
        window.push_back(Pending {
            line: line_no,
            subject,
            message: publish,
            ack,
        });
        if window.len() >= ACK_WINDOW {
            settle(&js, window.pop_front(), &mut summary).await?;
        }
        progress(&summary);
    }
    while let Some(item) = window.pop_front() {
        settle(&js, Some(item), &mut summary).await?;
        progress(&summary);
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn header_sha(h: &HeaderMap) -> String {
    h.get(streams::H_ORIGINAL_SHA256)
        .map(|v| v.as_str().chars().take(16).collect())
        .unwrap_or_default()
}

fn record_refusal(headers: &mut HeaderMap, source: &str, r: &Refusal) {
    headers.insert(H_REASON, r.reason.as_str());
    headers.insert(
        H_MESSAGE,
        streams::header_value(&format!("line {}: {}", r.line, r.message)).as_str(),
    );
    headers.insert(
        H_SOURCE,
        streams::header_value(&format!("publish:{source}:{}", r.line)).as_str(),
    );
    headers.insert(H_KIND, "rejected");
}

/// A message sent, its ack not yet awaited.
struct Pending {
    line: u64,
    subject: String,
    message: PublishMessage,
    ack: PublishAckFuture,
}

async fn settle(
    js: &jetstream::Context,
    item: Option<Pending>,
    summary: &mut PublishSummary,
) -> Result<(), PublishError> {
    let Some(Pending {
        line,
        subject,
        message,
        ack,
    }) = item
    else {
        return Ok(());
    };
    // Two lines with one event_id in one window, on a cluster: the second
    // is answered "in process" until the first is stored.
    let ack = streams::ack_resolving_in_process(js, &subject, &message, ack)
        .await
        .map_err(|source| PublishError::Nats {
            line,
            subject: subject.clone(),
            source,
        })?;
    // Refusals are counted when found; only input subjects count here.
    if !subject.starts_with("ledger.") {
        if ack.duplicate {
            summary.duplicates += 1;
        } else {
            summary.published += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_routed_by_order_id_and_event_id() {
        let (o, e) = route(br#"{"event_id":"e1","order_id":"o-1","type":"x"}"#).unwrap();
        assert_eq!((o.as_str(), e.as_str()), ("o-1", "e1"));
        assert_eq!(route(b"nope").unwrap_err().0, RejectReason::MalformedJson);
        assert_eq!(
            route(br#"{"order_id":"o"}"#).unwrap_err().0,
            RejectReason::MissingField
        );
        assert_eq!(
            route(br#"{"event_id":"e","order_id":"a b"}"#)
                .unwrap_err()
                .0,
            RejectReason::InvalidOrderId
        );
        let big = vec![b' '; MESSAGE_MAX_BYTES + 1];
        assert_eq!(route(&big).unwrap_err().0, RejectReason::TooLarge);
    }
}
