//! The safety net under the retry schedule: a periodic sweep for orders
//! left `retrying` with their next attempt long past.
//!
//! A retry is backed by the wake-ups the worker hands back with the delay
//! ([`super::worker`]), so this sweep should find nothing. If it does find
//! an order whose next attempt is overdue by more than
//! [`DispatcherOptions::overdue_grace`](super::DispatcherOptions), it wakes
//! it by publishing `ControlRecord::Wake` on `ledger.control.<R>.<O>`, logs a
//! warning and counts `ledgerline_overdue_retries_woken_total{registry}`: a
//! number that should stay at zero, and a bug to report when it does not.
//!
//! It reads the last delivery record of every order of the registry with
//! an ordered consumer (`DeliverPolicy::LastPerSubject` on
//! `ledger.deliveries.<R>.>`), then confirms each candidate against its full
//! [`Progress`] before waking it.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use time::OffsetDateTime;
use tracing::warn;

use super::Shared;
use super::state::{Current, Progress};
use crate::records::{AttemptOutcome, ControlRecord, DeliveryRecord};
use crate::streams::{H_KIND, subjects};

/// Why a sweep could not finish (it is tried again at the next interval).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("cannot read the delivery records of registry {registry_id}: {source}")]
    Read {
        registry_id: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot wake {registry_id}/{order_id}: {source}")]
    Wake {
        registry_id: String,
        order_id: String,
        #[source]
        source: async_nats::Error,
    },
}

/// What one sweep found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Orders whose last delivery record was read.
    pub orders: u64,
    /// Orders found overdue and woken.
    pub woken: u64,
}

/// Sweeps registry `registry_id` once: every order whose next attempt is
/// overdue by more than `grace` at `now` is woken.
pub(crate) async fn sweep_registry(
    shared: &Shared,
    registry_id: &str,
    grace: Duration,
    now: OffsetDateTime,
) -> Result<SweepReport, SweepError> {
    let read_err = |e: async_nats::Error| SweepError::Read {
        registry_id: registry_id.to_owned(),
        source: e,
    };
    let mut consumer = shared
        .ledger
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::deliveries(registry_id, "*"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| read_err(e.into()))?;
    let mut report = SweepReport::default();
    if consumer
        .info()
        .await
        .map_err(|e| read_err(e.into()))?
        .num_pending
        == 0
    {
        return Ok(report);
    }
    let overdue_before = now - grace;
    let mut candidates = Vec::new();
    let mut messages = consumer.messages().await.map_err(|e| read_err(e.into()))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| read_err(e.into()))?;
        let left = msg.info().map_err(read_err)?.pending;
        report.orders += 1;
        // An unreadable record is the dispatcher's to report; skip it here.
        if let Ok(r) = serde_json::from_slice::<DeliveryRecord>(&msg.payload)
            && r.outcome == AttemptOutcome::Retrying
            && r.next_attempt_at.unwrap_or(r.at) < overdue_before
        {
            candidates.push(r.order_id);
        }
        if left == 0 {
            break;
        }
    }
    for order_id in candidates {
        let p = Progress::load(&shared.ledger, registry_id, &order_id)
            .await
            .map_err(|e| read_err(e.into()))?;
        let Current::Retrying {
            next_attempt_at, ..
        } = p.current()
        else {
            continue;
        };
        if next_attempt_at >= overdue_before {
            continue;
        }
        wake(shared, registry_id, &order_id, p.next_seq(), now).await?;
        report.woken += 1;
        metrics::counter!("ledgerline_overdue_retries_woken_total",
            "registry" => registry_id.to_owned())
        .increment(1);
        warn!(registry_id, order_id = %order_id, seq = p.next_seq(),
              overdue_s = (now - next_attempt_at).whole_seconds(),
              "a retry was overdue with nothing scheduled to bring it back; woken (please report this)");
    }
    Ok(report)
}

async fn wake(
    shared: &Shared,
    registry_id: &str,
    order_id: &str,
    seq: u64,
    now: OffsetDateTime,
) -> Result<(), SweepError> {
    let err = |e: async_nats::Error| SweepError::Wake {
        registry_id: registry_id.to_owned(),
        order_id: order_id.to_owned(),
        source: e,
    };
    let record = ControlRecord::Wake {
        registry_id: registry_id.to_owned(),
        order_id: order_id.to_owned(),
        seq,
        at: now,
    };
    let payload = serde_json::to_vec(&record).map_err(|e| err(e.into()))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(H_KIND, "control");
    shared
        .js
        .publish_with_headers(
            subjects::control(registry_id, order_id),
            headers,
            payload.into(),
        )
        .await
        .map_err(|e| err(e.into()))?
        .await
        .map_err(|e| err(e.into()))?;
    Ok(())
}
