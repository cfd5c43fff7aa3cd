//! The dead-letter index: which (registry, order) pairs are `dead` or
//! `retrying`, so that `deliveries list --status dead|retrying` and the
//! admin API answer from a handful of keys instead of reading every pair
//! on LEDGER.
//!
//! A KV bucket, [`BUCKET`], with one key per pair and status:
//! `<status>.<registry>.<order>`. It is derived data; the delivery records
//! on LEDGER stay the truth, and the index only ever holds a superset of it:
//!
//! - the dispatcher writes a pair's key **before** the `retrying` or `dead`
//!   record it stands for (a crash in between leaves a key with no record
//!   behind it, never a record without its key);
//! - it removes the keys **after** the pair's posting is delivered (a crash
//!   in between leaves a stale key);
//! - readers check every key against the pair's records on LEDGER and show
//!   only what those say ([`super::status::list_deliveries`]), so a stale key
//!   costs one lookup and is never shown.
//!
//! The delivered path writes nothing here unless the posting had failed
//! before: a posting delivered at its first attempt costs no extra write.
//! Keys are removed by purging their subject on the bucket's stream, so a
//! removed pair leaves no marker behind and listing a status reads only the
//! subjects that hold a key. `ledgerline deliveries reindex` rebuilds the
//! index from LEDGER (after an upgrade from a version without it, or to drop
//! stale keys).

use async_nats::jetstream::{self, kv, stream::Stream};
use futures::TryStreamExt;

use crate::records::DeliveryStatus;

/// The bucket's name.
pub const BUCKET: &str = "ledgerline_delivery_index";

/// The statuses the index holds.
pub const INDEXED: [DeliveryStatus; 2] = [DeliveryStatus::Dead, DeliveryStatus::Retrying];

/// The index could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("cannot open the {BUCKET} bucket: {0}")]
    Open(#[source] async_nats::Error),
    #[error("cannot open the {BUCKET} bucket's stream: {0}")]
    Stream(#[source] async_nats::jetstream::context::GetStreamError),
    #[error("cannot write {key} to {BUCKET}: {source}")]
    Put {
        key: String,
        #[source]
        source: kv::PutError,
    },
    #[error("cannot remove {subject} from {BUCKET}: {source}")]
    Purge {
        subject: String,
        #[source]
        source: async_nats::jetstream::stream::PurgeError,
    },
    #[error("cannot list {BUCKET}: {0}")]
    List(#[source] async_nats::jetstream::stream::InfoError),
    #[error("{0} is not a status the index holds (dead, retrying)")]
    NotIndexed(&'static str),
}

/// The index, open.
#[derive(Clone, Debug)]
pub struct DeliveryIndex {
    kv: kv::Store,
    stream: Stream,
}

/// A pair the index names: (registry, order).
pub type Pair = (String, String);

impl DeliveryIndex {
    /// Opens the bucket, creating it (with `replicas`) when it is missing;
    /// an existing bucket's settings are never changed.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, IndexError> {
        let config = kv::Config {
            bucket: BUCKET.to_owned(),
            description: "ledgerline: (registry, order) pairs dead or retrying".to_owned(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas.max(1),
            ..Default::default()
        };
        let kv = crate::streams::settings::open_bucket(js, config)
            .await
            .map_err(IndexError::Open)?;
        Self::with(js, kv).await
    }

    /// The index when its bucket exists (`None`: no dispatcher with an
    /// index has run on these streams yet).
    pub async fn existing(js: &jetstream::Context) -> Result<Option<Self>, IndexError> {
        match js.get_key_value(BUCKET).await {
            Ok(kv) => Self::with(js, kv).await.map(Some),
            Err(_) => Ok(None),
        }
    }

    async fn with(js: &jetstream::Context, kv: kv::Store) -> Result<Self, IndexError> {
        let stream = js
            .get_stream(format!("KV_{BUCKET}"))
            .await
            .map_err(IndexError::Stream)?;
        Ok(Self { kv, stream })
    }

    /// Records that (registry, order) is `status` (dead or retrying) at
    /// posting `seq`, and no longer the other indexed status.
    pub async fn mark(
        &self,
        status: DeliveryStatus,
        registry: &str,
        order: &str,
        seq: u64,
    ) -> Result<(), IndexError> {
        let marked = key(status, registry, order)?;
        self.kv
            .put(marked.as_str(), seq.to_string().into())
            .await
            .map_err(|source| IndexError::Put {
                key: marked,
                source,
            })?;
        for other in INDEXED.into_iter().filter(|s| *s != status) {
            self.purge(&key(other, registry, order)?).await?;
        }
        Ok(())
    }

    /// Records that (registry, order) is neither dead nor retrying.
    pub async fn clear(&self, registry: &str, order: &str) -> Result<(), IndexError> {
        for status in INDEXED {
            self.purge(&key(status, registry, order)?).await?;
        }
        Ok(())
    }

    async fn purge(&self, key: &str) -> Result<(), IndexError> {
        let subject = format!("$KV.{BUCKET}.{key}");
        self.stream
            .purge()
            .filter(subject.as_str())
            .await
            .map(drop)
            .map_err(|source| IndexError::Purge { subject, source })
    }

    /// The pairs indexed as `status`, of `registry` only when given, in
    /// registry then order order. A superset of the truth: check each.
    pub async fn pairs(
        &self,
        status: DeliveryStatus,
        registry: Option<&str>,
    ) -> Result<Vec<Pair>, IndexError> {
        let status = indexed(status)?;
        let filter = match registry {
            Some(r) => format!("$KV.{BUCKET}.{status}.{r}.*"),
            None => format!("$KV.{BUCKET}.{status}.*.*"),
        };
        let mut pairs: Vec<Pair> = self
            .stream
            .info_with_subjects(filter)
            .await
            .map_err(IndexError::List)?
            .map_err(IndexError::List)
            .try_filter_map(|(subject, _)| async move {
                let mut parts = subject.rsplitn(3, '.');
                Ok(match (parts.next(), parts.next()) {
                    (Some(o), Some(r)) => Some((r.to_owned(), o.to_owned())),
                    _ => None,
                })
            })
            .try_collect()
            .await?;
        pairs.sort();
        Ok(pairs)
    }
}

fn indexed(status: DeliveryStatus) -> Result<&'static str, IndexError> {
    match status {
        DeliveryStatus::Dead | DeliveryStatus::Retrying => Ok(status.as_str()),
        other => Err(IndexError::NotIndexed(other.as_str())),
    }
}

fn key(status: DeliveryStatus, registry: &str, order: &str) -> Result<String, IndexError> {
    Ok(format!("{}.{registry}.{order}", indexed(status)?))
}
