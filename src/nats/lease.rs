//! One active instance: a lease in a JetStream KV bucket that fences every
//! other `ledgerline run` into a hot standby (SPEC 9).
//!
//! Two instances sharing the aggregator's and the dispatchers' durable
//! consumers would interleave an order's events across processes and send
//! postings twice. So the aggregator and the dispatcher run only in the
//! instance that holds the lease:
//!
//! - **Acquire**: `create` the component's key (`aggregator`,
//!   `dispatcher`) in the bucket `ledgerline_lease` (fails while another
//!   instance holds it). One lease per component, so `--only aggregator`
//!   and `--only dispatcher` in separate processes each hold their own. The bucket's `max_age` is the
//!   lease's TTL, so a key that is not renewed disappears by itself.
//! - **Renew** every TTL/3 with `update` at the last revision: a revision
//!   check, so an instance that lost the lease can never renew it again.
//! - **Fence**: the holder counts its lease valid until the *start* of its
//!   last successful renewal plus TTL minus [`SAFETY_MARGIN`]; every write of
//!   the aggregator and the dispatcher checks [`Fence::check`] first. The
//!   server expires the key no earlier than TTL after that renewal was
//!   stored, so the holder has stopped writing before anyone else can
//!   acquire. When a renewal is refused or the deadline passes, the holder
//!   stops its components and becomes a standby itself.
//! - **Release** at a clean shutdown (`delete` at the held revision), so the
//!   standby takes over at once instead of after the TTL.
//!
//! A standby polls every TTL/4 and takes over within about the TTL of the
//! active instance dying. The admin API runs in every instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub mod shares;

/// The lease bucket.
pub const BUCKET: &str = "ledgerline_lease";
/// How long a lease lives without renewal (the bucket's `max_age`).
pub const TTL_DEFAULT: Duration = Duration::from_secs(10);
/// Fraction of the TTL kept as margin: the holder stops writing this long
/// before the server could let anyone else acquire.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(2);

/// Why the lease could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot open the {BUCKET} bucket: {0}")]
    Bucket(#[source] async_nats::Error),
    #[error("the lease TTL {ttl:?} is too short: it must be at least {min:?}")]
    TtlTooShort { ttl: Duration, min: Duration },
}

/// Who holds the lease (the key's value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub instance: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// A unique name for this process: host, pid and a random suffix.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// What every write of the active components checks: is the lease still
/// ours? Cheap (one atomic load and a clock read).
#[derive(Debug, Clone)]
pub struct Fence {
    valid_until: watch::Receiver<Option<Instant>>,
    lost: Arc<AtomicBool>,
}

/// A write was refused because this instance no longer holds the lease.
#[derive(Debug, Clone, thiserror::Error)]
#[error("this instance no longer holds its lease in {BUCKET}; another instance is active")]
pub struct Fenced;

impl Fence {
    /// A fence that always passes (tests and tools that run one component
    /// without `run`).
    pub fn open() -> Self {
        let (_tx, rx) = watch::channel(None);
        // No deadline and not lost: never fenced.
        Fence {
            valid_until: rx,
            lost: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `Ok` while this instance holds the lease.
    pub fn check(&self) -> Result<(), Fenced> {
        if self.lost.load(Ordering::Acquire) {
            return Err(Fenced);
        }
        match *self.valid_until.borrow() {
            Some(until) if Instant::now() >= until => Err(Fenced),
            _ => Ok(()),
        }
    }
}

/// A held lease: keeps it renewed until it is lost or released.
pub struct Lease {
    kv: kv::Store,
    key: String,
    instance: String,
    revision: u64,
    ttl: Duration,
    valid_until: watch::Sender<Option<Instant>>,
    lost: Arc<AtomicBool>,
}

/// Opens (or creates) the lease bucket.
pub async fn bucket(
    js: &jetstream::Context,
    ttl: Duration,
    replicas: usize,
) -> Result<kv::Store, LeaseError> {
    let min = SAFETY_MARGIN * 2;
    if ttl < min {
        return Err(LeaseError::TtlTooShort { ttl, min });
    }
    let config = kv::Config {
        bucket: BUCKET.to_owned(),
        description: "ledgerline: which instance is active (fencing lease)".to_owned(),
        history: 1,
        max_age: ttl,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    };
    crate::streams::settings::open_bucket(js, config)
        .await
        .map_err(LeaseError::Bucket)
}

impl Lease {
    /// Waits as a standby until this instance holds the lease; `None` if
    /// `shutdown` fires first. `on_standby` is called once, with the holder,
    /// when another instance is found active.
    pub async fn acquire(
        store: kv::Store,
        key: &str,
        instance: &str,
        ttl: Duration,
        shutdown: &CancellationToken,
        mut on_standby: impl FnMut(Option<Holder>),
    ) -> Option<Lease> {
        let mut told = false;
        loop {
            match Self::try_acquire(&store, key, instance, ttl).await {
                Ok(lease) => return Some(lease),
                Err(e) => {
                    if !told {
                        let holder = match store.get(key).await {
                            Ok(Some(b)) => serde_json::from_slice::<Holder>(&b).ok(),
                            _ => None,
                        };
                        info!(instance, lease = key, holder = ?holder.as_ref().map(|h| &h.instance), error = %e,
                              "another instance is active; waiting as a standby");
                        on_standby(holder);
                        told = true;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(ttl / 4) => {}
            }
        }
    }

    /// One attempt at the lease: it is ours if the key does not exist
    /// (`create`), else the error says why not (held by another instance,
    /// or NATS unreachable).
    pub async fn try_acquire(
        store: &kv::Store,
        key: &str,
        instance: &str,
        ttl: Duration,
    ) -> Result<Lease, kv::CreateError> {
        let value = Holder {
            instance: instance.to_owned(),
            since: OffsetDateTime::now_utc(),
        };
        let started = Instant::now();
        // Serialising a plain struct cannot fail.
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        let revision = store.create(key, bytes.into()).await?;
        info!(
            instance,
            lease = key,
            revision,
            "lease acquired: this instance is active"
        );
        let (valid_until, _) = watch::channel(Some(started + ttl - SAFETY_MARGIN));
        Ok(Lease {
            kv: store.clone(),
            key: key.to_owned(),
            instance: instance.to_owned(),
            revision,
            ttl,
            valid_until,
            lost: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The fence the active components check before each write.
    pub fn fence(&self) -> Fence {
        Fence {
            valid_until: self.valid_until.subscribe(),
            lost: self.lost.clone(),
        }
    }

    /// Renews the lease until `stop` fires (then releases it) or it is
    /// lost; in both cases `lost_tx` (the active components' token) is
    /// cancelled. Returns whether the lease was lost (rather than released).
    pub async fn keep(mut self, stop: CancellationToken, active: CancellationToken) -> bool {
        let every = self.ttl / 3;
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    self.release().await;
                    active.cancel();
                    return false;
                }
                _ = tokio::time::sleep(every) => {}
            }
            let started = Instant::now();
            let value = Holder {
                instance: self.instance.clone(),
                since: OffsetDateTime::now_utc(),
            };
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            match tokio::time::timeout(
                every,
                self.kv.update(&self.key, bytes.into(), self.revision),
            )
            .await
            {
                Ok(Ok(revision)) => {
                    self.revision = revision;
                    self.valid_until
                        .send_replace(Some(started + self.ttl - SAFETY_MARGIN));
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    warn!(instance = %self.instance, lease = %self.key, "lease taken by another instance; stopping");
                    return self.lose(&active);
                }
                Ok(Err(e)) => {
                    warn!(instance = %self.instance, error = %e, "cannot renew the lease yet")
                }
                Err(_) => warn!(instance = %self.instance, "renewing the lease timed out"),
            }
            let expired = self
                .valid_until
                .borrow()
                .is_some_and(|u| Instant::now() >= u);
            if expired {
                warn!(instance = %self.instance, "lease not renewed in time; stopping (fenced)");
                return self.lose(&active);
            }
        }
    }

    fn lose(&self, active: &CancellationToken) -> bool {
        self.lost.store(true, Ordering::Release);
        metrics::counter!("ledgerline_lease_lost_total").increment(1);
        active.cancel();
        true
    }

    async fn release(&self) {
        self.lost.store(true, Ordering::Release);
        match self
            .kv
            .delete_expect_revision(&self.key, Some(self.revision))
            .await
        {
            Ok(()) => info!(instance = %self.instance, lease = %self.key, "lease released"),
            Err(e) => warn!(instance = %self.instance, error = %e,
                            "could not release the lease; the standby takes over when it expires"),
        }
    }
}
