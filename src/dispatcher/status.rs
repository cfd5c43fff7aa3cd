//! Operator views and actions over deliveries, for the CLI (`deliveries
//! list`, `redeliver`, `reindex`) and the admin API: read from LEDGER, act
//! by publishing a control record that the dispatcher consumes. Dead and
//! retrying pairs are found through the dead-letter index ([`super::index`])
//! and each checked against LEDGER.

use async_nats::jetstream::{self, stream::Stream};
use futures::TryStreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::index::{DeliveryIndex, INDEXED, IndexError};
use super::state::{Current, OrderDeliveries, Progress, StateError};
use crate::records::{ControlRecord, DeliveryStatus, StoredPosting};
use crate::streams::{H_KIND, LEDGER_STREAM, subjects};

/// Reading or writing LEDGER failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot open the {LEDGER_STREAM} stream: {0}")]
    Stream(#[source] async_nats::jetstream::context::GetStreamError),
    #[error("cannot list the postings subjects: {0}")]
    Subjects(#[source] async_nats::jetstream::stream::InfoError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot publish the redeliver request: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot publish the redeliver request: {0}")]
    Publish(#[source] async_nats::jetstream::context::PublishError),
    #[error("{0:?} is not a valid registry or order id")]
    BadId(String),
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Which (registry, order) pairs to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub registry: Option<String>,
    pub status: Option<DeliveryStatus>,
}

fn valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Every (registry, order) with postings, with its delivery status, in
/// registry then order order. `on_progress(done, total)` is called as
/// orders are read (for a progress bar).
///
/// `dead` and `retrying` come from the dead-letter index (each pair it
/// names checked against LEDGER, so what is shown is what the records
/// say); without an index (no dispatcher has run with one) and for the
/// other statuses, every pair is read.
pub async fn list_deliveries(
    js: &jetstream::Context,
    filter: &ListFilter,
    on_progress: impl FnMut(u64, u64),
) -> Result<Vec<OrderDeliveries>, StatusError> {
    if let Some(r) = &filter.registry
        && !valid_token(r)
    {
        return Err(StatusError::BadId(r.clone()));
    }
    if let Some(status) = filter.status.filter(|s| INDEXED.contains(s))
        && let Some(index) = DeliveryIndex::existing(js).await?
    {
        let pairs = index.pairs(status, filter.registry.as_deref()).await?;
        return check_pairs(js, pairs, Some(status), on_progress).await;
    }
    scan_deliveries(js, filter, on_progress).await
}

async fn ledger_stream(js: &jetstream::Context) -> Result<Stream, StatusError> {
    js.get_stream(LEDGER_STREAM)
        .await
        .map_err(StatusError::Stream)
}

/// [`list_deliveries`] by reading every pair on LEDGER (the index not used).
pub async fn scan_deliveries(
    js: &jetstream::Context,
    filter: &ListFilter,
    mut on_progress: impl FnMut(u64, u64),
) -> Result<Vec<OrderDeliveries>, StatusError> {
    let ledger = ledger_stream(js).await?;
    let subject_filter = match &filter.registry {
        Some(r) if !valid_token(r) => return Err(StatusError::BadId(r.clone())),
        Some(r) => format!("ledger.postings.{r}.*"),
        None => subjects::POSTINGS_ALL.to_owned(),
    };
    let mut pairs: Vec<(String, String, u64)> = ledger
        .info_with_subjects(&subject_filter)
        .await
        .map_err(StatusError::Subjects)?
        .map_ok(|(subject, count)| (subject, count as u64))
        .try_collect::<Vec<_>>()
        .await
        .map_err(StatusError::Subjects)?
        .into_iter()
        .filter_map(|(subject, count)| {
            let (_, r, o) = subjects::parse_order_subject(&subject)?;
            Some((r.to_owned(), o.to_owned(), count))
        })
        .collect();
    pairs.sort();
    let total = pairs.len() as u64;
    let mut out = Vec::new();
    for (i, (r, o, count)) in pairs.into_iter().enumerate() {
        let progress = Progress::load(&ledger, &r, &o).await?;
        // One posting per seq (the aggregator publishes each once), so the
        // count is the last seq.
        let row = OrderDeliveries::new(&progress, count);
        if filter.status.is_none_or(|s| s == row.status) {
            out.push(row);
        }
        on_progress(i as u64 + 1, total);
    }
    Ok(out)
}

/// The delivery status of each of `pairs` read from LEDGER, those of
/// `status` only when given (pairs with no postings left out).
pub async fn check_pairs(
    js: &jetstream::Context,
    pairs: Vec<(String, String)>,
    status: Option<DeliveryStatus>,
    mut on_progress: impl FnMut(u64, u64),
) -> Result<Vec<OrderDeliveries>, StatusError> {
    let ledger = ledger_stream(js).await?;
    let total = pairs.len() as u64;
    let mut out = Vec::new();
    for (i, (r, o)) in pairs.into_iter().enumerate() {
        let progress = Progress::load(&ledger, &r, &o).await?;
        let count = posting_count(&ledger, &r, &o).await?;
        let row = OrderDeliveries::new(&progress, count);
        if count > 0 && status.is_none_or(|s| s == row.status) {
            out.push(row);
        }
        on_progress(i as u64 + 1, total);
    }
    Ok(out)
}

/// What `deliveries reindex` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReindexSummary {
    /// Pairs read on LEDGER.
    pub pairs: u64,
    /// Dead or retrying pairs, each now in the index.
    pub indexed: u64,
    /// Keys removed: their pair is neither dead nor retrying.
    pub removed: u64,
}

/// Rebuilds the dead-letter index from LEDGER: every dead or retrying pair
/// is written, and a key whose pair is neither is removed once a second
/// look at the pair still says so (a dispatcher writes a key just before
/// its record). Safe while the service runs.
pub async fn reindex(
    js: &jetstream::Context,
    replicas: usize,
    on_progress: impl FnMut(u64, u64),
) -> Result<ReindexSummary, StatusError> {
    let index = DeliveryIndex::open(js, replicas).await?;
    let rows = scan_deliveries(js, &ListFilter::default(), on_progress).await?;
    let mut summary = ReindexSummary {
        pairs: rows.len() as u64,
        ..ReindexSummary::default()
    };
    let mut truth = std::collections::BTreeSet::new();
    for row in rows.iter().filter(|r| INDEXED.contains(&r.status)) {
        index
            .mark(
                row.status,
                &row.registry_id,
                &row.order_id,
                row.failing_seq.unwrap_or(row.delivered + 1),
            )
            .await?;
        truth.insert((
            row.status.as_str(),
            row.registry_id.clone(),
            row.order_id.clone(),
        ));
        summary.indexed += 1;
    }
    for status in INDEXED {
        for (r, o) in index.pairs(status, None).await? {
            if truth.contains(&(status.as_str(), r.clone(), o.clone())) {
                continue;
            }
            let now = check_pairs(js, vec![(r.clone(), o.clone())], None, |_, _| {}).await?;
            if now.first().is_none_or(|row| row.status != status) {
                index.clear(&r, &o).await?;
                summary.removed += 1;
            }
        }
    }
    Ok(summary)
}

/// What a redeliver request came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RedeliverOutcome {
    /// The dispatcher will send posting `seq` again (same key, same body),
    /// then the `held` ones after it.
    Requested {
        seq: u64,
        idempotency_key: Uuid,
        held: u64,
    },
    /// Nothing is dead-lettered for this (registry, order).
    NotDead { status: DeliveryStatus },
    /// Posting `seq` is dead-lettered because it cannot be sent at all
    /// (`reason`: missing or unreadable on LEDGER); a redelivery would fail
    /// the same way, so none is requested.
    Unsendable { seq: u64, reason: String },
    /// No postings for this (registry, order).
    Unknown,
}

async fn posting_count(ledger: &Stream, registry: &str, order: &str) -> Result<u64, StatusError> {
    let subject = subjects::postings(registry, order);
    match ledger.direct_get_last_for_subject(subject.as_str()).await {
        // A posting is there even when it cannot be read: count it.
        Ok(m) => Ok(StoredPosting::read_without_cumulative(&m.payload)
            .map(|sp| sp.posting.seq)
            .unwrap_or(1)),
        Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => Ok(0),
        Err(source) => Err(StateError::Read { subject, source }.into()),
    }
}

/// Asks the dispatcher to redeliver the dead-lettered posting of
/// (registry, order): publishes `ControlRecord::Redeliver` on
/// `ledger.control.<R>.<O>`. Idempotent: asking twice for the same dead
/// letter publishes once (message id).
pub async fn request_redeliver(
    js: &jetstream::Context,
    registry: &str,
    order: &str,
) -> Result<RedeliverOutcome, StatusError> {
    for id in [registry, order] {
        if !valid_token(id) {
            return Err(StatusError::BadId(id.to_owned()));
        }
    }
    let ledger = ledger_stream(js).await?;
    let postings = posting_count(&ledger, registry, order).await?;
    if postings == 0 {
        return Ok(RedeliverOutcome::Unknown);
    }
    let progress = Progress::load(&ledger, registry, order).await?;
    let Current::Dead { attempt, .. } = progress.current() else {
        return Ok(RedeliverOutcome::NotDead {
            status: OrderDeliveries::new(&progress, postings).status,
        });
    };
    let seq = progress.next_seq();
    let not_sent = progress
        .last_delivery
        .as_ref()
        .and_then(|d| d.record.error.as_deref())
        .and_then(|e| e.strip_prefix(crate::records::NOT_SENT));
    if let Some(reason) = not_sent {
        return Ok(RedeliverOutcome::Unsendable {
            seq,
            reason: reason.to_owned(),
        });
    }
    let record = ControlRecord::Redeliver {
        registry_id: registry.to_owned(),
        order_id: order.to_owned(),
        seq,
        at: OffsetDateTime::now_utc(),
    };
    let payload = serde_json::to_vec(&record).map_err(StatusError::Encode)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(H_KIND, "control");
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("redeliver:{registry}:{order}:{seq}:{attempt}").as_str(),
    );
    js.publish_with_headers(subjects::control(registry, order), headers, payload.into())
        .await
        .map_err(StatusError::Publish)?
        .await
        .map_err(StatusError::Publish)?;
    Ok(RedeliverOutcome::Requested {
        seq,
        idempotency_key: crate::posting::idempotency_key(registry, order, seq),
        held: postings.saturating_sub(seq),
    })
}
