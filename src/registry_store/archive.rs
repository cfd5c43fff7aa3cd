//! Every revision of every registry (and source), kept on LEDGER for as
//! long as LEDGER keeps anything: the bucket keeps 64 revisions per item,
//! the audit trail needs them all.
//!
//! Each revision is archived as one record on `ledger.history.<kind>.<id>`
//! (`kind` is `registry` or `source`), with its secrets as `***`: a
//! secret never outlives its item in clear. The running service archives
//! what the bucket holds at start-up and each change it sees; what was
//! changed while no instance ran is archived at the next start (up to the
//! bucket's 64 revisions per item). Records carry a message id of kind, id
//! and revision, and an item's last archived revision is looked up before
//! writing, so archiving twice writes nothing.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::{debug, warn};

use super::{HistoryEntry, Item, KvStore, StoreError};
use crate::streams::{self, H_KIND, LEDGER_STREAM};

/// The LEDGER subject of item `id`'s archived revisions.
pub fn subject(kind: &str, id: &str) -> String {
    format!("ledger.history.{kind}.{id}")
}

/// One archived revision (secrets as `***`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedRevision<S> {
    pub id: String,
    /// The bucket's revision (its stream sequence).
    pub revision: u64,
    /// When the revision was written.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `put` or `delete`.
    pub operation: String,
    /// The value written (none for a deletion; a missing field reads as
    /// none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<S>,
}

fn nats_err<T: Item>(e: impl Into<async_nats::Error>) -> StoreError {
    StoreError::Read {
        kind: T::KIND,
        source: e.into(),
    }
}

impl<T: Item> KvStore<T> {
    /// Archives the kept revisions of `id` not archived yet; how many were.
    pub async fn archive(&self, id: &str) -> Result<usize, StoreError> {
        let history = self.history(id).await?;
        self.archive_revisions(id, &history).await
    }

    /// Archives every kept revision of every item not archived yet.
    pub async fn archive_all(&self) -> Result<usize, StoreError> {
        let mut by_id: BTreeMap<String, Vec<HistoryEntry<T>>> = BTreeMap::new();
        for (id, entry) in self.timeline().await? {
            by_id.entry(id).or_default().push(entry);
        }
        let mut written = 0;
        for (id, history) in &by_id {
            written += self.archive_revisions(id, history).await?;
        }
        Ok(written)
    }

    async fn archive_revisions(
        &self,
        id: &str,
        history: &[HistoryEntry<T>],
    ) -> Result<usize, StoreError> {
        let subject = subject(T::KIND, id);
        let ledger = self
            .js
            .get_stream(LEDGER_STREAM)
            .await
            .map_err(nats_err::<T>)?;
        let last = match ledger.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => serde_json::from_slice::<ArchivedRevision<serde::de::IgnoredAny>>(&m.payload)
                .map_or(0, |a| a.revision),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(nats_err::<T>(e)),
        };
        let mut written = 0;
        for h in history.iter().filter(|h| h.revision > last) {
            let record = ArchivedRevision {
                id: id.to_owned(),
                revision: h.revision,
                at: h.at,
                operation: h.operation.to_owned(),
                stored: h.stored.clone(),
            };
            // Outside `reveal_secrets`: every secret serialises as `***`.
            let payload = serde_json::to_vec(&record).map_err(nats_err::<T>)?;
            let mut headers = HeaderMap::new();
            headers.insert(H_KIND, "history");
            let msg = streams::guarded_message(
                headers,
                &format!("{}:{id}:{}", T::KIND, h.revision),
                None,
                payload.into(),
            );
            self.js
                .send_publish(subject.clone(), msg)
                .await
                .map_err(nats_err::<T>)?
                .await
                .map_err(nats_err::<T>)?;
            written += 1;
        }
        if written > 0 {
            debug!(id = %id, written, "{} revisions archived", T::KIND);
        }
        Ok(written)
    }

    /// [`Self::archive_all`], logging instead of failing: archiving is
    /// caught up at the next start.
    pub async fn archive_all_or_warn(&self) {
        if let Err(e) = self.archive_all().await {
            warn!(error = %e, "archiving {} revisions on LEDGER failed; the next start catches up", T::KIND);
        }
    }

    /// Every archived revision of every item, in revision order.
    pub async fn archived(&self) -> Result<Vec<(String, HistoryEntry<T>)>, StoreError> {
        let ledger = self
            .js
            .get_stream(LEDGER_STREAM)
            .await
            .map_err(nats_err::<T>)?;
        let mut out = Vec::new();
        crate::streams::for_each_message(&ledger, &subject(T::KIND, "*"), |m, _, _| {
            if let Ok(a) = serde_json::from_slice::<ArchivedRevision<T::Stored>>(&m.payload) {
                let operation = if a.operation == "delete" {
                    "delete"
                } else {
                    "put"
                };
                out.push((
                    a.id,
                    HistoryEntry {
                        revision: a.revision,
                        at: a.at,
                        operation,
                        stored: a.stored,
                    },
                ));
            }
        })
        .await
        .map_err(nats_err::<T>)?;
        out.sort_by_key(|(_, h)| h.revision);
        Ok(out)
    }
}
