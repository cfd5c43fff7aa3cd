//! Registries in a JetStream KV bucket (SPEC 3 and 7): the one place the
//! registries of a running instance live, read by the aggregator and the
//! dispatcher through a [`RegistryWatch`], written by the admin API, the
//! `registry` CLI and the `[[registry]]` entries of the configuration file
//! (applied at start-up).
//!
//! # Layout
//!
//! Bucket [`BUCKET`], file storage, [`HISTORY`] revisions per key: key =
//! registry id, value = a [`StoredRegistry`] as JSON, the registry with its
//! real secrets (written inside [`reveal_secrets`]: the bucket is
//! ledgerline's own storage, and a dispatcher needs them to sign and
//! authenticate), when it was created and what made the change (`config`,
//! `api`, `cli`). Every change is a new revision; a deletion is a delete
//! marker, so the history of a deleted registry stays readable
//! ([`RegistryStore::history`]).
//!
//! # Rules
//!
//! - Every write is validated against the instance's [`TargetPolicy`] first.
//! - Writes use optimistic concurrency (the expected revision), so two
//!   writers never silently overwrite each other.
//! - Writing what is already stored is a no-op: no new revision
//!   ([`PutOutcome::Unchanged`]), so applying the config at every start-up
//!   is idempotent.
//! - A client that sends back the redaction marker `***` for a secret (what
//!   it read) means "keep the stored secret"; a marker with nothing stored
//!   is refused, naming the field.
//! - A stored secret never follows a registry to another origin (scheme,
//!   host and port): when the origin of `url` changes, every secret sent to
//!   it (`headers` and `query` values, basic and bearer credentials, and the
//!   OAuth2 client secret and token request extras, since the token they
//!   mint is sent to `url`) must be sent again in clear, else the write is
//!   refused naming the field; likewise the OAuth2 secrets when the origin
//!   of `auth.token_url` changes. The signing secrets are kept: they sign,
//!   they are never sent, and a signature does not reveal them. So whoever
//!   holds the admin token cannot redirect a registry to their own server
//!   and collect its credentials.
//! - A stored registry that fails validation when read back (say the policy
//!   became stricter) is logged and left out of the live set; it never
//!   stops the service.
//!
//! # Other items
//!
//! The store is generic over what it keeps ([`Item`]): registries here,
//! inbound sources in [`crate::source_store`] (bucket `ledgerline_sources`,
//! SPEC 10). Every rule above holds for each; what differs per item (its
//! validation, where its secrets are and which of them may be kept, the
//! stored value's JSON shape, the set in force) is the item's [`Item`]
//! implementation. [`RegistryStore`] is `KvStore<RegistryConfig>`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::domain::wire::wire_names;
use crate::registry::{
    AuthConfig, FieldError, Registry, RegistryConfig, RegistrySet, TargetPolicy,
};
use crate::secret::{Secret, reveal_secrets};

pub mod archive;

/// The KV bucket of the registries.
pub const BUCKET: &str = "ledgerline_registries";
/// Revisions kept per registry: the most a KV bucket allows. Older
/// revisions of a registry changed more often than this are dropped.
pub const HISTORY: i64 = 64;
/// Largest stored registry, in bytes. A registry with the maximum of 1,000
/// ledger code rules is about 150 KiB.
pub const VALUE_MAX_BYTES: i32 = 1024 * 1024;
/// Attempts at a write that raced another writer before giving up.
pub const WRITE_RACE_RETRIES: usize = 5;
/// Backoff while the bucket cannot be watched (NATS down): first, cap.
pub const WATCH_RETRY_MIN: Duration = Duration::from_millis(250);
pub const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// What made a change, kept with each revision for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum ChangedBy {
    /// The `[[registry]]` (`[[source]]`) entries of the config file, at
    /// start-up.
    Config,
    /// The admin HTTP API.
    Api,
    /// `ledgerline registry|source apply|delete`.
    Cli,
}

wire_names!(ChangedBy);

/// What a [`KvStore`] keeps: a configured item (a registry, a source) with
/// an id, validated against a policy, holding secrets.
pub trait Item:
    Clone + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The item in messages: `registry`, `source`.
    const KIND: &'static str;
    /// Its plural, for logs: `registries`, `sources`.
    const PLURAL: &'static str;
    /// The KV bucket.
    const BUCKET: &'static str;
    /// The bucket's description.
    const DESCRIPTION: &'static str;
    /// What the item is validated against.
    type Policy: Send + Sync + 'static;
    /// A validated item.
    type Valid: Send + Sync + 'static;
    /// The items in force (by creation, then id), as the readers of the
    /// live watch want them.
    type Set: From<Vec<Self::Valid>> + PartialEq + Send + Sync + 'static;
    /// The value stored under the item's key (its JSON is the KV format).
    type Stored: Clone + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync;

    fn id(&self) -> &str;
    /// Validates every field; the error names the first bad one.
    fn validate(&self, policy: &Self::Policy) -> Result<Self::Valid, FieldError>;
    /// Replaces each redaction marker by the secret stored at the same
    /// place in `old`, or refuses it naming the field.
    fn keep_stored_secrets(&mut self, old: Option<&Self>) -> Result<(), FieldError>;
    /// The stored value of the item.
    fn to_stored(self, created_at: OffsetDateTime, changed_by: ChangedBy) -> Self::Stored;
    /// The item, its creation time and what last changed it.
    fn from_stored(stored: &Self::Stored) -> (&Self, OffsetDateTime, ChangedBy);
    /// The ids of a set, for the log.
    fn set_ids(set: &Self::Set) -> Vec<&str>;
    /// What the owner should know although the item is valid (see
    /// [`registry_warnings`]).
    fn warnings(&self, _store: &KvStore<Self>) -> Vec<FieldError> {
        Vec::new()
    }
}

impl Item for RegistryConfig {
    const KIND: &'static str = "registry";
    const PLURAL: &'static str = "registries";
    const BUCKET: &'static str = BUCKET;
    const DESCRIPTION: &'static str =
        "ledgerline registries: key = registry id; every revision is kept for audit";
    type Policy = TargetPolicy;
    type Valid = Registry;
    type Set = RegistrySet;
    type Stored = StoredRegistry;

    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, policy: &TargetPolicy) -> Result<Registry, FieldError> {
        RegistryConfig::validate(self, policy)
    }
    fn keep_stored_secrets(&mut self, old: Option<&Self>) -> Result<(), FieldError> {
        keep_stored_secrets(self, old)
    }
    fn to_stored(self, created_at: OffsetDateTime, changed_by: ChangedBy) -> StoredRegistry {
        StoredRegistry {
            registry: self,
            created_at,
            changed_by,
        }
    }
    fn from_stored(s: &StoredRegistry) -> (&Self, OffsetDateTime, ChangedBy) {
        (&s.registry, s.created_at, s.changed_by)
    }
    fn set_ids(set: &RegistrySet) -> Vec<&str> {
        set.all().iter().map(|r| r.id()).collect()
    }
    fn warnings(&self, store: &KvStore<Self>) -> Vec<FieldError> {
        registry_warnings(self, store.smtp_configured)
    }
}

/// The value stored under a registry's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRegistry {
    pub registry: RegistryConfig,
    /// When the registry was first created (kept across updates).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub changed_by: ChangedBy,
}

/// An item as stored, with its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<T> {
    pub config: T,
    /// The KV revision of this value (a stream sequence: increases with
    /// every change to any registry).
    pub revision: u64,
    pub created_at: OffsetDateTime,
    /// When this revision was written.
    pub updated_at: OffsetDateTime,
    pub changed_by: ChangedBy,
}

/// A registry as stored, with its revision.
pub type RegistryEntry = Entry<RegistryConfig>;

impl<T: Item> Entry<T> {
    /// Why the item is not in force under `policy`, if it is not.
    pub fn problem(&self, policy: &T::Policy) -> Option<FieldError> {
        self.config.validate(policy).err()
    }
}

/// One revision of an item, for the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry<T: Item = RegistryConfig> {
    pub revision: u64,
    pub at: OffsetDateTime,
    /// `put` or `delete`.
    pub operation: &'static str,
    /// The value written (none for a deletion, or when unreadable).
    pub stored: Option<T::Stored>,
}

/// What a write did.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr, strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum PutOutcome {
    Created,
    Updated,
    /// Identical to what was stored: nothing written.
    Unchanged,
}

wire_names!(PutOutcome);

/// Why a store operation failed (`kind`: `registry`, `source`). The first four are the caller's
/// mistakes (4xx over HTTP, exit 2 or 1 in the CLI); the rest are NATS
/// trouble worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("{kind} {id:?} already exists")]
    Exists { kind: &'static str, id: String },
    #[error("{kind} {id:?} does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id:?} was changed meanwhile: its revision is {actual}, not {expected}")]
    Conflict {
        kind: &'static str,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("cannot open the {kind} bucket {bucket}: {source}")]
    Bucket {
        kind: &'static str,
        bucket: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot read the {kind} bucket: {source}")]
    Read {
        kind: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot write {kind} {id:?}: {source}")]
    Write {
        kind: &'static str,
        id: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("{kind} {key:?} revision {revision} is unreadable: {source}")]
    Corrupt {
        kind: &'static str,
        key: String,
        revision: u64,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// True for the caller's mistakes (as opposed to storage trouble).
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            StoreError::Invalid(_)
                | StoreError::Exists { .. }
                | StoreError::NotFound { .. }
                | StoreError::Conflict { .. }
        )
    }
}

fn read_err<T: Item>(e: impl Into<async_nats::Error>) -> StoreError {
    StoreError::Read {
        kind: T::KIND,
        source: e.into(),
    }
}

/// The bucket configuration of the registries, with `replicas` replicas.
pub fn bucket_config(replicas: usize) -> kv::Config {
    item_bucket_config::<RegistryConfig>(replicas)
}

/// The bucket configuration of an item, with `replicas` replicas.
pub fn item_bucket_config<T: Item>(replicas: usize) -> kv::Config {
    kv::Config {
        num_replicas: replicas.max(1),
        bucket: T::BUCKET.to_owned(),
        description: T::DESCRIPTION.to_owned(),
        history: HISTORY,
        max_value_size: VALUE_MAX_BYTES,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// The items of an instance in their bucket: reads, validated writes, the
/// live watch. Cheap to clone.
pub struct KvStore<T: Item> {
    kv: kv::Store,
    /// Where revisions are archived (LEDGER, [`archive`]).
    js: jetstream::Context,
    policy: Arc<T::Policy>,
    /// Whether this instance can send failure emails (`[smtp]`), for the
    /// warnings of [`registry_warnings`] (registries only).
    smtp_configured: bool,
}

impl<T: Item> Clone for KvStore<T> {
    fn clone(&self) -> Self {
        Self {
            kv: self.kv.clone(),
            js: self.js.clone(),
            policy: self.policy.clone(),
            smtp_configured: self.smtp_configured,
        }
    }
}

/// The registries of an instance: reads, validated writes, the live watch.
pub type RegistryStore = KvStore<RegistryConfig>;

/// The last state of a key: a value (`Some`) or a deletion (`None`).
struct Current<T> {
    revision: u64,
    entry: Option<Entry<T>>,
}

impl<T: Item> KvStore<T> {
    /// The same store, knowing whether the instance has `[smtp]` (what
    /// registries warn about; nothing to other items).
    pub fn with_smtp_configured(mut self, configured: bool) -> Self {
        self.smtp_configured = configured;
        self
    }

    /// Opens the bucket, creating it with `replicas` replicas
    /// (`stream_replicas`) when missing. An existing bucket is not changed;
    /// another replica count is logged.
    pub async fn open(
        js: &jetstream::Context,
        policy: T::Policy,
        replicas: usize,
    ) -> Result<Self, StoreError> {
        let bucket_err = |e: async_nats::Error| StoreError::Bucket {
            kind: T::KIND,
            bucket: T::BUCKET,
            source: e,
        };
        let kv = crate::streams::settings::open_bucket(js, item_bucket_config::<T>(replicas))
            .await
            .map_err(bucket_err)?;
        Ok(Self {
            kv,
            js: js.clone(),
            policy: Arc::new(policy),
            smtp_configured: false,
        })
    }

    /// The rules items are validated against.
    pub fn policy(&self) -> &T::Policy {
        &self.policy
    }

    /// What the owner of a stored item should know although it is in
    /// force ([`registry_warnings`] for this instance).
    pub fn warnings(&self, config: &T) -> Vec<FieldError> {
        config.warnings(self)
    }

    /// The item `id`, if it exists.
    pub async fn get(&self, id: &str) -> Result<Option<Entry<T>>, StoreError> {
        if !valid_key(id) {
            return Ok(None);
        }
        Ok(self.current(id).await?.and_then(|c| c.entry))
    }

    /// Every registry, ordered by creation (then id). Unreadable values are
    /// logged and left out.
    pub async fn list(&self) -> Result<Vec<Entry<T>>, StoreError> {
        let keys = self.keys().await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(Current { entry: Some(e), .. }) = self.current_or_unreadable(&key).await? {
                out.push(e);
            }
        }
        sort_entries(&mut out);
        Ok(out)
    }

    /// Creates a registry; refused when one with the same id exists.
    pub async fn create(&self, config: T, by: ChangedBy) -> Result<Entry<T>, StoreError> {
        let id = config.id().to_owned();
        let current = self.current_for_write(&id).await?;
        if current.as_ref().is_some_and(|c| c.entry.is_some()) {
            return Err(StoreError::Exists { kind: T::KIND, id });
        }
        let mut config = config;
        config.keep_stored_secrets(None)?;
        config.validate(&self.policy)?;
        let revision = current.map_or(0, |c| c.revision);
        match self.write(config, None, revision, by).await {
            Ok((entry, _)) => Ok(entry),
            // Created by someone else in between.
            Err(StoreError::Conflict { .. }) => Err(StoreError::Exists { kind: T::KIND, id }),
            Err(e) => Err(e),
        }
    }

    /// Creates or replaces a registry. With `expected_revision`, refused
    /// (conflict) unless that is the stored revision (0: must not exist).
    /// Writing what is stored already writes nothing.
    pub async fn put(
        &self,
        config: T,
        expected_revision: Option<u64>,
        by: ChangedBy,
    ) -> Result<(Entry<T>, PutOutcome), StoreError> {
        let id = config.id().to_owned();
        let mut attempt = 0;
        loop {
            let current = self.current_for_write(&id).await?;
            let stored = current.as_ref().and_then(|c| c.entry.clone());
            if let Some(expected) = expected_revision {
                let actual = stored.as_ref().map_or(0, |e| e.revision);
                if actual != expected {
                    return Err(StoreError::Conflict {
                        kind: T::KIND,
                        id,
                        expected,
                        actual,
                    });
                }
            }
            let mut config = config.clone();
            config.keep_stored_secrets(stored.as_ref().map(|e| &e.config))?;
            config.validate(&self.policy)?;
            if let Some(s) = &stored
                && s.config == config
            {
                return Ok((s.clone(), PutOutcome::Unchanged));
            }
            let revision = current.as_ref().map_or(0, |c| c.revision);
            match self.write(config, stored.as_ref(), revision, by).await {
                Ok(done) => return Ok(done),
                // Someone else wrote in between: read again and retry,
                // unless the caller pinned a revision.
                Err(StoreError::Conflict { .. })
                    if expected_revision.is_none() && attempt < WRITE_RACE_RETRIES =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes `config` over the key's `revision` (0: none).
    async fn write(
        &self,
        config: T,
        stored: Option<&Entry<T>>,
        revision: u64,
        by: ChangedBy,
    ) -> Result<(Entry<T>, PutOutcome), StoreError> {
        let id = config.id().to_owned();
        let now = OffsetDateTime::now_utc();
        let created_at = stored.map_or(now, |s| s.created_at);
        let value = config.clone().to_stored(created_at, by);
        // The one place secrets are serialised with their values: our own
        // bucket. Synchronous, so the reveal cannot leak across an await.
        let bytes =
            reveal_secrets(|| serde_json::to_vec(&value)).map_err(|e| StoreError::Write {
                kind: T::KIND,
                id: id.clone(),
                source: e.into(),
            })?;
        let new_revision = match self.kv.update(&id, bytes.into(), revision).await {
            Ok(r) => r,
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                let actual = self.current(&id).await?.map_or(0, |c| c.revision);
                return Err(StoreError::Conflict {
                    kind: T::KIND,
                    id,
                    expected: revision,
                    actual,
                });
            }
            Err(e) => {
                return Err(StoreError::Write {
                    kind: T::KIND,
                    id,
                    source: e.into(),
                });
            }
        };
        let outcome = if stored.is_some() {
            PutOutcome::Updated
        } else {
            PutOutcome::Created
        };
        info!(id = %id, revision = new_revision, changed_by = by.as_str(), outcome = outcome.as_str(), "{} stored", T::KIND);
        Ok((
            Entry {
                config,
                revision: new_revision,
                created_at,
                updated_at: now,
                changed_by: by,
            },
            outcome,
        ))
    }

    /// Deletes a registry (a delete marker: its history stays). With
    /// `expected_revision`, refused unless that is the stored revision.
    /// Returns what was deleted.
    pub async fn delete(
        &self,
        id: &str,
        expected_revision: Option<u64>,
    ) -> Result<Entry<T>, StoreError> {
        let not_found = || StoreError::NotFound {
            kind: T::KIND,
            id: id.to_owned(),
        };
        if !valid_key(id) {
            return Err(not_found());
        }
        let current = self.current(id).await?.ok_or_else(not_found)?;
        let entry = current.entry.ok_or_else(not_found)?;
        if let Some(expected) = expected_revision
            && expected != entry.revision
        {
            return Err(StoreError::Conflict {
                kind: T::KIND,
                id: id.to_owned(),
                expected,
                actual: entry.revision,
            });
        }
        self.kv
            .delete_expect_revision(id, Some(entry.revision))
            .await
            .map_err(|e| match e.kind() {
                kv::DeleteErrorKind::WrongLastRevision => StoreError::Conflict {
                    kind: T::KIND,
                    id: id.to_owned(),
                    expected: entry.revision,
                    // Changed by someone else in between; re-read to see.
                    actual: 0,
                },
                _ => StoreError::Write {
                    kind: T::KIND,
                    id: id.to_owned(),
                    source: e.into(),
                },
            })?;
        info!(id = %id, revision = entry.revision, "{} deleted", T::KIND);
        Ok(entry)
    }

    /// Every kept revision of a registry, oldest first (empty when it never
    /// existed).
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry<T>>, StoreError> {
        if !valid_key(id) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut entries = self.kv.history(id).await.map_err(read_err::<T>)?;
        while let Some(e) = entries.next().await {
            let e = e.map_err(read_err::<T>)?;
            let (operation, stored) = match e.operation {
                kv::Operation::Put => ("put", serde_json::from_slice::<T::Stored>(&e.value).ok()),
                kv::Operation::Delete | kv::Operation::Purge => ("delete", None),
            };
            out.push(HistoryEntry {
                revision: e.revision,
                at: e.created,
                operation,
                stored,
            });
        }
        Ok(out)
    }

    /// Every kept revision of every item (deleted ones included), in the
    /// order they were written: `(id, revision)` pairs, for replaying what
    /// was in force when ([`crate::verify`]).
    pub async fn timeline(&self) -> Result<Vec<(String, HistoryEntry<T>)>, StoreError> {
        let mut out = Vec::new();
        let prefix = self.kv.prefix.as_str();
        crate::streams::for_each_message(
            &self.kv.stream,
            &format!("{prefix}>"),
            |m, revision, at| {
                let key = m
                    .subject
                    .strip_prefix(prefix)
                    .unwrap_or_default()
                    .to_owned();
                // A KV deletion or purge is a message with a `KV-Operation` header.
                let removed = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
                let (operation, stored) = if removed {
                    ("delete", None)
                } else {
                    ("put", serde_json::from_slice::<T::Stored>(&m.payload).ok())
                };
                out.push((
                    key,
                    HistoryEntry {
                        revision,
                        at,
                        operation,
                        stored,
                    },
                ));
            },
        )
        .await
        .map_err(read_err::<T>)?;
        Ok(out)
    }

    /// Applies registries (the config file's, or a `registry apply` file):
    /// each written only when it differs from what is stored. Every one is
    /// checked (markers resolved against what is stored, then validated,
    /// no id twice) before any is written; errors name `registry[i]`.
    pub async fn apply(
        &self,
        configs: &[T],
        by: ChangedBy,
    ) -> Result<Vec<(Entry<T>, PutOutcome)>, StoreError> {
        let mut resolved = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            let at = format!("{}[{i}]", T::KIND);
            let mut c = c.clone();
            let stored = match self.current_for_write(c.id()).await {
                Ok(cur) => cur.and_then(|cur| cur.entry),
                Err(StoreError::Invalid(e)) => return Err(e.within(&at).into()),
                Err(e) => return Err(e),
            };
            c.keep_stored_secrets(stored.as_ref().map(|e| &e.config))
                .map_err(|e| e.within(&at))?;
            resolved.push(c);
        }
        check_item_batch(&resolved, &self.policy)?;
        let mut out = Vec::with_capacity(configs.len());
        for c in configs {
            out.push(self.put(c.clone(), None, by).await?);
        }
        Ok(out)
    }

    /// The last state of a key, from the stream (a value, a deletion, or
    /// nothing ever).
    async fn current(&self, key: &str) -> Result<Option<Current<T>>, StoreError> {
        let Some(e) = self.kv.entry(key).await.map_err(read_err::<T>)? else {
            return Ok(None);
        };
        Ok(Some(parse_current::<T>(&e)?))
    }

    /// Like [`Self::current`] for a key about to be written: an invalid id
    /// is the caller's mistake.
    async fn current_for_write(&self, id: &str) -> Result<Option<Current<T>>, StoreError> {
        if !valid_key(id) {
            return Err(
                FieldError::new("id", format!("{id:?} must match [a-z0-9_-]{{1,64}}")).into(),
            );
        }
        self.current(id).await
    }

    /// Starts following the bucket: returns the live [`RegistryWatch`]
    /// (already holding the current set) and the task that keeps it up to
    /// date until `shutdown`. The task survives NATS restarts (it
    /// resubscribes and re-reads the bucket).
    pub async fn watch(&self, shutdown: CancellationToken) -> Result<Watcher<T>, StoreError> {
        let updates = self.kv.watch_all().await.map_err(read_err::<T>)?;
        let known = self.snapshot().await?;
        let (tx, rx) = watch::channel(Arc::new(self.build_set(&known)));
        let healthy = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(follow(
            self.clone(),
            updates,
            known,
            tx,
            healthy.clone(),
            shutdown,
        ));
        Ok(Watcher {
            registries: rx,
            healthy,
            task,
        })
    }

    /// Every key's last state.
    async fn snapshot(&self) -> Result<BTreeMap<String, Current<T>>, StoreError> {
        let keys = self.keys().await?;
        let mut out = BTreeMap::new();
        for key in keys {
            if let Some(c) = self.current_or_unreadable(&key).await? {
                out.insert(key, c);
            }
        }
        Ok(out)
    }

    /// Every key of the bucket.
    async fn keys(&self) -> Result<Vec<String>, StoreError> {
        match self.kv.keys().await {
            Ok(k) => k.try_collect().await.map_err(read_err::<T>),
            Err(e) => Err(read_err::<T>(e)),
        }
    }

    /// [`Self::current`], with a stored registry that cannot be read
    /// logged and kept as its revision without an entry (left out of
    /// what is in force, its revision still known).
    async fn current_or_unreadable(&self, key: &str) -> Result<Option<Current<T>>, StoreError> {
        match self.current(key).await {
            Err(StoreError::Corrupt {
                key,
                revision,
                source,
                ..
            }) => {
                error!(id = %key, revision, error = %source, "stored {} is unreadable; left out", T::KIND);
                Ok(Some(Current {
                    revision,
                    entry: None,
                }))
            }
            other => other,
        }
    }

    /// The registries in force: every stored one that validates, by
    /// creation. One that does not is logged and left out.
    fn build_set(&self, known: &BTreeMap<String, Current<T>>) -> T::Set {
        let mut entries: Vec<Entry<T>> = known.values().filter_map(|c| c.entry.clone()).collect();
        sort_entries(&mut entries);
        let mut valid = Vec::with_capacity(entries.len());
        for e in entries {
            match e.config.validate(&self.policy) {
                Ok(r) => valid.push(r),
                Err(err) => {
                    error!(id = %e.config.id(), revision = e.revision, field = %err.field, error = %err,
                           "stored {} is not valid under this instance's policy; it is not in force until fixed", T::KIND);
                }
            }
        }
        T::Set::from(valid)
    }
}

/// What every long-running command does at start-up: opens the bucket,
/// applies the config file's `[[registry]]` entries (idempotently: only
/// what changed is written), and follows the bucket until `shutdown`.
pub async fn start(
    js: &jetstream::Context,
    settings: &crate::config::Settings,
    shutdown: CancellationToken,
) -> Result<(RegistryStore, RegistryWatcher), StoreError> {
    let store = RegistryStore::open(js, settings.policy.clone(), settings.config.stream_replicas)
        .await?
        .with_smtp_configured(settings.config.smtp.is_some());
    apply_and_watch(store, &settings.config.registry, shutdown).await
}

/// Applies the config file's items to the bucket (idempotently: only what
/// changed is written), then follows the bucket until `shutdown`: the
/// bucket is the one place the items in force come from, so one created
/// over the API or the CLI is in force at once, and a config file entry
/// wins at start-up over what the bucket held under the same id.
pub async fn apply_and_watch<T: Item>(
    store: KvStore<T>,
    configs: &[T],
    shutdown: CancellationToken,
) -> Result<(KvStore<T>, Watcher<T>), StoreError> {
    for (entry, outcome) in store.apply(configs, ChangedBy::Config).await? {
        info!(id = %entry.config.id(), revision = entry.revision,
              outcome = outcome.as_str(), "config {} applied", T::KIND);
    }
    // Every revision on LEDGER too, past the bucket's 64 ([`archive`]).
    store.archive_all_or_warn().await;
    let watcher = store.watch(shutdown).await?;
    Ok((store, watcher))
}

/// What the owner of a registry should know although it is valid: today,
/// `notify_emails` on an instance without `[smtp]` (no email will be sent).
/// Each names the field.
pub fn registry_warnings(config: &RegistryConfig, smtp_configured: bool) -> Vec<FieldError> {
    let mut out = Vec::new();
    if !config.notify_emails.is_empty() && !smtp_configured {
        out.push(FieldError::new(
            "notify_emails",
            format!(
                "no [smtp] section is configured on this instance, so no failure email \
                 will be sent to the {} address(es) listed",
                config.notify_emails.len()
            ),
        ));
    }
    out
}

/// The warnings of every registry in force, with its id: what `ledgerline
/// run` logs at start-up.
pub fn startup_warnings(
    settings: &crate::config::Settings,
    registries: &RegistrySet,
) -> Vec<(String, FieldError)> {
    let smtp = settings.config.smtp.is_some();
    registries
        .all()
        .iter()
        .flat_map(|r| {
            registry_warnings(&r.config, smtp)
                .into_iter()
                .map(|w| (r.id().to_owned(), w))
        })
        .collect()
}

/// Logs [`startup_warnings`] (tracing `warn`), one line each.
pub fn log_startup_warnings(settings: &crate::config::Settings, registries: &RegistrySet) {
    for (registry_id, w) in startup_warnings(settings, registries) {
        warn!(registry_id = %registry_id, field = %w.field, "{}", w.message);
    }
}

/// The live registries and the task that follows the bucket.
pub type RegistryWatcher = Watcher<RegistryConfig>;

/// The live items and the task that follows the bucket.
pub struct Watcher<T: Item> {
    /// The set in force (named for the first item kept this way).
    pub registries: watch::Receiver<Arc<T::Set>>,
    /// False while the bucket cannot be followed (NATS unreachable): the
    /// set in force is then the last one read.
    pub healthy: Arc<AtomicBool>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Keeps `tx` up to date with the bucket until `shutdown`.
async fn follow<T: Item>(
    store: KvStore<T>,
    mut updates: kv::Watch,
    mut known: BTreeMap<String, Current<T>>,
    tx: watch::Sender<Arc<T::Set>>,
    healthy: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut dirty = false;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = updates.next() => next,
        };
        match next {
            Some(Ok(e)) => {
                let stale = known.get(&e.key).is_some_and(|c| c.revision >= e.revision);
                if !stale {
                    match parse_current::<T>(&e) {
                        Ok(c) => {
                            debug!(id = %e.key, revision = e.revision, "{} changed", T::KIND);
                            known.insert(e.key.clone(), c);
                        }
                        Err(err) => {
                            error!(id = %e.key, revision = e.revision, error = %err, "stored {} is unreadable; left out", T::KIND);
                            known.insert(
                                e.key.clone(),
                                Current {
                                    revision: e.revision,
                                    entry: None,
                                },
                            );
                        }
                    }
                    dirty = true;
                    if let Err(err) = store.archive(&e.key).await {
                        warn!(id = %e.key, error = %err, "archiving the {} revision on LEDGER failed; the next start catches up", T::KIND);
                    }
                }
                // Publish once a burst of changes has been read.
                if dirty && e.delta == 0 {
                    publish(&store, &known, &tx);
                    dirty = false;
                }
                continue;
            }
            Some(Err(e)) => {
                warn!(error = %e, "{} watch interrupted; re-reading the bucket", T::KIND);
            }
            None => {
                warn!("{} watch ended; re-reading the bucket", T::KIND);
            }
        }
        // Resubscribe, then re-read everything: nothing missed in between.
        healthy.store(false, Ordering::Relaxed);
        let mut backoff = WATCH_RETRY_MIN;
        loop {
            let attempt = async {
                let u = store.kv.watch_all().await.map_err(read_err::<T>)?;
                let k = store.snapshot().await?;
                Ok::<_, StoreError>((u, k))
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = attempt => r,
            };
            match result {
                Ok((u, k)) => {
                    updates = u;
                    known = k;
                    publish(&store, &known, &tx);
                    dirty = false;
                    healthy.store(true, Ordering::Relaxed);
                    info!("{} watch resumed", T::KIND);
                    break;
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot follow the {} bucket yet", T::KIND);
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(WATCH_RETRY_MAX);
                }
            }
        }
    }
}

/// Sends the set built from `known` when it differs from the one in force.
fn publish<T: Item>(
    store: &KvStore<T>,
    known: &BTreeMap<String, Current<T>>,
    tx: &watch::Sender<Arc<T::Set>>,
) {
    let set = store.build_set(known);
    tx.send_if_modified(|current| {
        if **current == set {
            false
        } else {
            let ids = T::set_ids(&set);
            info!(count = ids.len(), ids = ?ids, "{} in force changed", T::PLURAL);
            *current = Arc::new(set);
            true
        }
    });
}

fn parse_current<T: Item>(e: &kv::Entry) -> Result<Current<T>, StoreError> {
    match e.operation {
        kv::Operation::Delete | kv::Operation::Purge => Ok(Current {
            revision: e.revision,
            entry: None,
        }),
        kv::Operation::Put => {
            let stored: T::Stored =
                serde_json::from_slice(&e.value).map_err(|source| StoreError::Corrupt {
                    kind: T::KIND,
                    key: e.key.clone(),
                    revision: e.revision,
                    source,
                })?;
            let (config, created_at, changed_by) = T::from_stored(&stored);
            Ok(Current {
                revision: e.revision,
                entry: Some(Entry {
                    config: config.clone(),
                    revision: e.revision,
                    created_at,
                    updated_at: e.created,
                    changed_by,
                }),
            })
        }
    }
}

fn sort_entries<T: Item>(entries: &mut [Entry<T>]) {
    entries.sort_by(|a, b| (a.created_at, a.config.id()).cmp(&(b.created_at, b.config.id())));
}

/// A registry id is a valid KV key (and subject token) when it has the
/// registry id shape; anything else cannot be stored.
fn valid_key(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Validates a batch before any of it is written: every registry, and no
/// id twice. Errors name `registry[i].<field>`. Redaction markers must be
/// resolved first ([`keep_stored_secrets`]).
pub fn check_batch(configs: &[RegistryConfig], policy: &TargetPolicy) -> Result<(), FieldError> {
    check_item_batch(configs, policy)
}

/// [`check_batch`] for any item: errors name `<kind>[i].<field>`.
pub fn check_item_batch<T: Item>(configs: &[T], policy: &T::Policy) -> Result<(), FieldError> {
    for (i, c) in configs.iter().enumerate() {
        let at = format!("{}[{i}]", T::KIND);
        c.validate(policy).map_err(|e| e.within(&at))?;
        if configs[..i].iter().any(|o| o.id() == c.id()) {
            return Err(FieldError::new(
                format!("{at}.id"),
                format!(
                    "{:?} is used by another {} in the same file",
                    c.id(),
                    T::KIND
                ),
            ));
        }
    }
    Ok(())
}

fn marker_error(field: String) -> FieldError {
    FieldError::new(
        field,
        "\"***\" is the redaction marker, not a secret: send the secret itself \
         (the marker only means \"keep the stored one\" when one is stored)",
    )
}

/// A destination of secrets that moved to another origin.
struct Moved {
    /// `url` or `auth.token_url`.
    what: &'static str,
    from: String,
    to: String,
}

/// The move of `what` from `old` to `new`, when their origins (scheme, host,
/// port) differ. `None` when nothing was stored, or when `new` is not a URL
/// with an origin (validation refuses it, naming the field).
fn moved(what: &'static str, old: Option<&str>, new: &str) -> Option<Moved> {
    let old = old?;
    let to = url::Url::parse(new).ok()?.origin();
    if !to.is_tuple() {
        return None;
    }
    let from = url::Url::parse(old).ok().map(|u| u.origin());
    if from.as_ref() == Some(&to) {
        return None;
    }
    Some(Moved {
        what,
        from: from
            .filter(url::Origin::is_tuple)
            .map_or_else(|| "an invalid URL".to_owned(), |o| o.ascii_serialization()),
        to: to.ascii_serialization(),
    })
}

fn moved_error(field: String, m: &Moved) -> FieldError {
    FieldError::new(
        field,
        format!(
            "the {}'s origin changed from {} to {}; send the secret again instead of \"***\" \
             (a stored secret never follows a registry to another origin)",
            m.what, m.from, m.to
        ),
    )
}

/// Replaces a redaction marker in `slot` by `stored`, the secret at the same
/// place in what is stored: refused naming the field when nothing is
/// stored there, or (with `moved`) when the secret's destination moved.
fn keep(
    slot: &mut Secret,
    stored: Option<&Secret>,
    moved: Option<&Moved>,
    field: impl FnOnce() -> String,
) -> Result<(), FieldError> {
    if slot.is_redacted_marker() {
        match (stored, moved) {
            (Some(s), None) if !s.is_redacted_marker() => *slot = s.clone(),
            (Some(s), Some(m)) if !s.is_redacted_marker() => {
                return Err(moved_error(field(), m));
            }
            _ => return Err(marker_error(field())),
        }
    }
    Ok(())
}

/// [`keep`] for a secret that is never sent anywhere (it verifies or
/// signs): a marker keeps the stored one wherever the item points.
pub fn keep_secret(
    slot: &mut Secret,
    stored: Option<&Secret>,
    field: impl FnOnce() -> String,
) -> Result<(), FieldError> {
    keep(slot, stored, None, field)
}

/// Replaces each redaction marker in `new` by the secret stored at the same
/// place in `old`; a marker with nothing to keep is refused, and so is a
/// marker for a secret whose destination moved to another origin (see the
/// module's rules).
pub fn keep_stored_secrets(
    new: &mut RegistryConfig,
    old: Option<&RegistryConfig>,
) -> Result<(), FieldError> {
    fn keep_map(
        map: &mut BTreeMap<String, Secret>,
        stored: Option<&BTreeMap<String, Secret>>,
        moved: Option<&Moved>,
        prefix: &str,
    ) -> Result<(), FieldError> {
        for (k, v) in map.iter_mut() {
            keep(v, stored.and_then(|m| m.get(k)), moved, || {
                format!("{prefix}.{k}")
            })?;
        }
        Ok(())
    }
    let url_moved = moved("url", old.map(|o| o.url.as_str()), &new.url);
    let url_moved = url_moved.as_ref();
    // Signing secrets sign; they are never sent, so they may stay.
    if let Some(s) = new.signing_secret.as_mut() {
        keep(s, old.and_then(|o| o.signing_secret.as_ref()), None, || {
            "signing_secret".to_owned()
        })?;
    }
    if let Some(s) = new.signing_secret_previous.as_mut() {
        keep(
            s,
            old.and_then(|o| o.signing_secret_previous.as_ref()),
            None,
            || "signing_secret_previous".to_owned(),
        )?;
    }
    keep_map(
        &mut new.headers,
        old.map(|o| &o.headers),
        url_moved,
        "headers",
    )?;
    keep_map(&mut new.query, old.map(|o| &o.query), url_moved, "query")?;
    let old_auth = old.map(|o| &o.auth);
    match &mut new.auth {
        AuthConfig::None => {}
        AuthConfig::Basic { password, .. } => {
            let stored = match old_auth {
                Some(AuthConfig::Basic { password, .. }) => Some(password),
                _ => None,
            };
            keep(password, stored, url_moved, || "auth.password".to_owned())?;
        }
        AuthConfig::Bearer { token } => {
            let stored = match old_auth {
                Some(AuthConfig::Bearer { token }) => Some(token),
                _ => None,
            };
            keep(token, stored, url_moved, || "auth.token".to_owned())?;
        }
        AuthConfig::Oauth2ClientCredentials {
            token_url,
            client_secret,
            extra_body,
            headers,
            ..
        } => {
            let stored = match old_auth {
                Some(AuthConfig::Oauth2ClientCredentials {
                    token_url,
                    client_secret,
                    extra_body,
                    headers,
                    ..
                }) => Some((token_url, client_secret, extra_body, headers)),
                _ => None,
            };
            // These go to the token endpoint, and the token they mint goes
            // to `url`: a move of either needs them again.
            let token_moved = moved("auth.token_url", stored.map(|s| s.0.as_str()), token_url);
            let m = token_moved.as_ref().or(url_moved);
            keep(client_secret, stored.map(|s| s.1), m, || {
                "auth.client_secret".to_owned()
            })?;
            keep_map(extra_body, stored.map(|s| s.2), m, "auth.extra_body")?;
            keep_map(headers, stored.map(|s| s.3), m, "auth.headers")?;
        }
    }
    Ok(())
}

/// A live view of the registries: `borrow()` for the current set,
/// `changed().await` to wait for the next.
pub type RegistryWatch = tokio::sync::watch::Receiver<std::sync::Arc<RegistrySet>>;

/// A watch that never changes, for fixed registries (config file, tests).
pub fn fixed_registries(registries: Vec<Registry>) -> RegistryWatch {
    let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(RegistrySet::new(registries)));
    // The receiver keeps the last value after the sender is gone.
    drop(tx);
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::config_from_toml as config;

    #[test]
    fn changes_and_outcomes_are_named_alike_everywhere() {
        crate::domain::wire::assert_wire_names_are_serde_names::<ChangedBy>();
        crate::domain::wire::assert_wire_names_are_serde_names::<PutOutcome>();
    }

    #[test]
    fn markers_keep_the_stored_secret_and_are_refused_without_one() {
        let old = config(
            r#"
            id = "a"
            url = "https://x.example"
            signing_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            headers = { "api-key" = "k1" }
            [auth]
            type = "basic"
            username = "u"
            password = "p1"
            "#,
        );
        let mut new = config(
            r#"
            id = "a"
            url = "https://x.example/v2"
            signing_secret = "***"
            headers = { "api-key" = "***", "other" = "k2" }
            [auth]
            type = "basic"
            username = "u"
            password = "***"
            "#,
        );
        keep_stored_secrets(&mut new, Some(&old)).unwrap();
        assert_eq!(new.signing_secret, old.signing_secret);
        assert_eq!(new.headers["api-key"].expose(), "k1");
        assert_eq!(new.headers["other"].expose(), "k2");
        assert!(
            matches!(&new.auth, AuthConfig::Basic { password, .. } if password.expose() == "p1")
        );

        let mut fresh =
            config("id = \"a\"\nurl = \"https://x.example\"\nheaders = { \"x\" = \"***\" }\n");
        assert_eq!(
            keep_stored_secrets(&mut fresh, None).unwrap_err().field,
            "headers.x"
        );
        // A marker for a secret of another auth type has nothing to keep.
        let mut switched = config(
            "id = \"a\"\nurl = \"https://x.example\"\n[auth]\ntype = \"bearer\"\ntoken = \"***\"\n",
        );
        assert_eq!(
            keep_stored_secrets(&mut switched, Some(&old))
                .unwrap_err()
                .field,
            "auth.token"
        );
    }

    #[test]
    fn notify_emails_without_smtp_is_warned_about_naming_the_registry() {
        let text = "[[registry]]\nid = \"mailed\"\nurl = \"https://x.example\"\n\
                    notify_emails = [\"ops@example.com\"]\n\
                    [[registry]]\nid = \"quiet\"\nurl = \"https://y.example\"\n";
        let settings = crate::config::Config::from_toml_with_env(text, "t", [])
            .unwrap()
            .validate()
            .unwrap();
        let set = RegistrySet::new(settings.registries.clone());
        let w = startup_warnings(&settings, &set);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].0, "mailed");
        assert_eq!(w[0].1.field, "notify_emails");
        assert!(w[0].1.message.contains("[smtp]"), "{}", w[0].1);
        let with_smtp =
            format!("[smtp]\nhost = \"127.0.0.1\"\nfrom = \"ledger@example.com\"\n{text}");
        let settings = crate::config::Config::from_toml_with_env(&with_smtp, "t", [])
            .unwrap()
            .validate()
            .unwrap();
        assert!(startup_warnings(&settings, &set).is_empty());
    }

    #[test]
    fn a_batch_names_the_entry_and_refuses_duplicates() {
        let policy = TargetPolicy::default();
        let a = config("id = \"a\"\nurl = \"https://x.example\"\n");
        let bad = config("id = \"b\"\nurl = \"http://x.example\"\n");
        assert_eq!(
            check_batch(&[a.clone(), bad], &policy).unwrap_err().field,
            "registry[1].url"
        );
        assert_eq!(
            check_batch(&[a.clone(), a], &policy).unwrap_err().field,
            "registry[1].id"
        );
    }

    #[test]
    fn stored_values_carry_secrets_only_inside_the_bucket() {
        let c = config(
            "id = \"a\"\nurl = \"https://x.example\"\nheaders = { \"api-key\" = \"real-key\" }\n",
        );
        let v = StoredRegistry {
            registry: c,
            created_at: OffsetDateTime::UNIX_EPOCH,
            changed_by: ChangedBy::Api,
        };
        let stored = reveal_secrets(|| serde_json::to_string(&v).unwrap());
        assert!(stored.contains("real-key"));
        let back: StoredRegistry = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, v);
        assert!(!serde_json::to_string(&v).unwrap().contains("real-key"));
    }
}
