//! `ledgerline verify`: replay ORDERS through the engine and check that
//! every posting stored in LEDGER is reproduced exactly.
//!
//! The event log is the source of truth: replaying it with the configured
//! registries must give, for every (registry, order, seq), a posting equal
//! in every field (key, event, entries, cumulative) and produced by the same
//! ORDERS message. Anything else is listed: missing (the replay produced it,
//! LEDGER does not have it), unexpected (stored but not produced) and
//! different. Memory holds one 32-byte digest per expected posting.

use std::collections::HashMap;
use std::time::Instant;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, stream::Stream};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::engine::{ApplyError, Engine};
use crate::events::parse_event;
use crate::ledger::LedgerOptions;
use crate::posting::Posting;
use crate::records::StoredPosting;
use crate::registry::Registry;
use crate::streams::{self, LEDGER_STREAM, ORDERS_STREAM, subjects};

/// One posting that does not match the replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub registry_id: String,
    pub order_id: String,
    pub seq: u64,
    pub problem: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} #{}: {}",
            self.registry_id, self.order_id, self.seq, self.problem
        )
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub events: u64,
    pub expected: u64,
    pub stored: u64,
    pub matched: u64,
    pub mismatches: Vec<Mismatch>,
    pub elapsed_ms: u128,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "verify: {} events replayed, {} postings expected, {} stored, {} match, {} mismatches ({} ms)",
            self.events,
            self.expected,
            self.stored,
            self.matched,
            self.mismatches.len(),
            self.elapsed_ms
        )
    }
}

/// Why verify could not run (mismatches are a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Streams(#[from] streams::NatsError),
    #[error("reading {stream}: {source}")]
    Read {
        stream: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

fn digest(p: &Posting, source_seq: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(source_seq.to_be_bytes());
    // Serialising a Posting cannot fail: every field is plain data.
    h.update(serde_json::to_vec(p).unwrap_or_default());
    h.finalize().into()
}

type Key = (String, String, u64);

/// Replays ORDERS and compares with LEDGER.
pub async fn verify(
    client: &async_nats::Client,
    prefix: &str,
    replicas: usize,
    options: LedgerOptions,
    registries: Vec<Registry>,
    mut progress: impl FnMut(&str, u64),
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let js = jetstream::new(client.clone());
    let (orders, ledger) = streams::ensure_streams(&js, prefix, replicas).await?;
    let mut report = VerifyReport::default();
    let mut engine = Engine::new(options, registries);
    let expected = replay(&orders, prefix, &mut engine, &mut report, &mut progress).await?;
    compare(&ledger, expected, &mut engine, &mut report, &mut progress).await?;
    report.elapsed_ms = started.elapsed().as_millis();
    Ok(report)
}

/// Step 1: replays ORDERS through `engine`; the digest of every posting the
/// replay makes, by (registry, order, seq).
async fn replay(
    orders: &async_nats::jetstream::stream::Stream,
    prefix: &str,
    engine: &mut Engine,
    report: &mut VerifyReport,
    progress: &mut impl FnMut(&str, u64),
) -> Result<HashMap<Key, [u8; 32]>, VerifyError> {
    let mut expected: HashMap<Key, [u8; 32]> = HashMap::new();
    let prefix_dot = format!("{prefix}.");
    read_all(
        orders,
        ORDERS_STREAM,
        &format!("{prefix}.>"),
        |subject, seq, payload| {
            report.events += 1;
            progress("replaying ORDERS", report.events);
            let token = subject.strip_prefix(&prefix_dot).unwrap_or(subject);
            let result = parse_event(payload, Some(token))
                .map_err(ApplyError::from)
                .and_then(|ev| engine.process(&ev));
            if let Ok(postings) = result {
                for p in postings {
                    let key = (p.registry_id.clone(), p.order_id.to_string(), p.seq);
                    expected.insert(key, digest(&p, seq));
                }
            }
        },
    )
    .await?;
    report.expected = expected.len() as u64;
    Ok(expected)
}

/// Step 2: compares every stored posting with the replay's; what the replay
/// made and LEDGER lacks is reported missing.
async fn compare(
    ledger: &async_nats::jetstream::stream::Stream,
    mut expected: HashMap<Key, [u8; 32]>,
    engine: &mut Engine,
    report: &mut VerifyReport,
    progress: &mut impl FnMut(&str, u64),
) -> Result<(), VerifyError> {
    let mut seen = 0u64;
    read_all(ledger, LEDGER_STREAM, subjects::POSTINGS_ALL, |subject, _seq, payload| {
        seen += 1;
        progress("checking LEDGER", seen);
        report.stored += 1;
        let stored: StoredPosting = match serde_json::from_slice(payload) {
            Ok(s) => s,
            Err(e) => {
                let (r, o) = subjects::parse_order_subject(subject)
                    .map(|(_, r, o)| (r.to_owned(), o.to_owned()))
                    .unwrap_or_default();
                report.mismatches.push(Mismatch { registry_id: r, order_id: o, seq: 0, problem: format!("unreadable posting: {e}") });
                return;
            }
        };
        let p = &stored.posting;
        let key = (p.registry_id.clone(), p.order_id.to_string(), p.seq);
        match expected.remove(&key) {
            Some(d) if d == digest(p, stored.source_seq) => report.matched += 1,
            Some(_) => report.mismatches.push(Mismatch {
                registry_id: key.0,
                order_id: key.1,
                seq: key.2,
                problem: describe_difference(engine, p),
            }),
            None => report.mismatches.push(Mismatch {
                registry_id: key.0,
                order_id: key.1,
                seq: key.2,
                problem: "stored, but the replay does not produce it (unknown registry, or a posting nobody should have made)".to_owned(),
            }),
        }
    })
    .await?;
    let mut missing: Vec<Mismatch> = expected
        .into_keys()
        .map(|(r, o, s)| Mismatch {
            registry_id: r,
            order_id: o,
            seq: s,
            problem: "missing from LEDGER (the replay produces it)".to_owned(),
        })
        .collect();
    missing.sort_by(|a, b| {
        (&a.registry_id, &a.order_id, a.seq).cmp(&(&b.registry_id, &b.order_id, b.seq))
    });
    report.mismatches.extend(missing);
    Ok(())
}

/// Says what differs between a stored posting and the replay's.
fn describe_difference(engine: &mut Engine, stored: &Posting) -> String {
    let Some(book) = engine.book(&stored.order_id) else {
        return "differs from the replay".to_owned();
    };
    let cursor = book.cursors.get(&stored.registry_id);
    let mut parts = vec!["differs from the replay".to_owned()];
    if let Some(c) = cursor
        && c.seq == stored.seq
        && c.posted != stored.cumulative
    {
        parts.push("its running total does not match the order's ledger".to_owned());
    }
    let (d, c) = stored.debit_credit();
    if !stored.filtered && d != c {
        parts.push(format!("and it does not balance (debit {d}, credit {c})"));
    }
    parts.join(": ")
}

/// Reads every message of `filter` in `stream` in order with an ordered
/// consumer, calling `f(subject, stream_seq, payload)`.
async fn read_all(
    stream: &Stream,
    name: &'static str,
    filter: &str,
    mut f: impl FnMut(&str, u64, &[u8]),
) -> Result<(), VerifyError> {
    let err = |e: async_nats::Error| VerifyError::Read {
        stream: name,
        source: e,
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.into()))?;
    let mut consumer = consumer;
    let pending = consumer
        .info()
        .await
        .map_err(|e| err(e.into()))?
        .num_pending;
    if pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.map_err(|e| err(e.into()))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| err(e.into()))?;
        let info = msg.info().map_err(err)?;
        let (seq, left) = (info.stream_sequence, info.pending);
        f(msg.subject.as_str(), seq, &msg.payload);
        if left == 0 {
            break;
        }
    }
    Ok(())
}
