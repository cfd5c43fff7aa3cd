//! Inbound sources in a JetStream KV bucket (SPEC 10): the registry store
//! ([`crate::registry_store`]) keeping [`SourceConfig`]s instead, so a
//! source is configured like a registry: `[[source]]` in the config file
//! (applied to the bucket at start-up), or the bucket through
//! `ledgerline source apply|list|show|delete` and `/v1/sources` on the
//! admin API. The live watch of the bucket is the
//! [`crate::inbound::SourceWatch`] of the ingest listener: a source
//! written by the API is served, changed or gone at once, without a
//! restart.
//!
//! # Layout
//!
//! Bucket [`BUCKET`], the registries' history and value limits: key =
//! source id, value = a [`StoredSource`] as JSON (the source with its real
//! secrets: the listener needs them to check credentials), when it was
//! created and what made the change.
//!
//! # Rules
//!
//! The registries' rules ([`crate::registry_store`]): validated,
//! optimistic and idempotent writes, history kept, `***` for a secret keeps
//! the stored one (refused naming the field when nothing is stored at that
//! place, e.g. after a change of `auth.type`). A source's secrets verify
//! what vendors send and are never sent anywhere, so there is no origin for
//! them to follow: a marker keeps them whatever else changes.
//!
//! File and bucket: like registries, the config file's sources are written
//! to the bucket at start-up (so at start-up a `[[source]]` wins over the
//! bucket's source of the same id), and the bucket is what is served.
//!
//! A `jq` source's `program_file` is read when the file that names it is
//! loaded ([`read_program_files`]: the config file, or a file given to
//! `source apply`), relative to that file's folder: its text becomes the
//! source's `program`, which is what the bucket stores, so every instance
//! runs the same program whatever files it has.

use std::io::Read;
use std::path::{Path, PathBuf};

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::mapping::jq::JQ_PROGRAM_MAX_BYTES;
use crate::registry::FieldError;
use crate::registry_store::{
    ChangedBy, Entry, HistoryEntry, Item, KvStore, StoreError, Watcher, apply_and_watch,
    keep_secret,
};
use crate::secret::Secret;
use crate::source::{Source, SourceAuth, SourceConfig};

/// The KV bucket of the sources.
pub const BUCKET: &str = "ledgerline_sources";

/// The sources of an instance: reads, validated writes, the live watch.
pub type SourceStore = KvStore<SourceConfig>;
/// A source as stored, with its revision.
pub type SourceEntry = Entry<SourceConfig>;
/// One revision of a source.
pub type SourceHistoryEntry = HistoryEntry<SourceConfig>;
/// The live sources and the task that follows the bucket.
pub type SourceWatcher = Watcher<SourceConfig>;

/// The value stored under a source's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSource {
    pub source: SourceConfig,
    /// When the source was first created (kept across updates).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub changed_by: ChangedBy,
}

impl Item for SourceConfig {
    const KIND: &'static str = "source";
    const PLURAL: &'static str = "sources";
    const BUCKET: &'static str = BUCKET;
    const DESCRIPTION: &'static str =
        "ledgerline inbound sources: key = source id; every revision is kept for audit";
    /// Sources need nothing of the instance to be validated.
    type Policy = ();
    type Valid = Source;
    type Set = Vec<Source>;
    type Stored = StoredSource;

    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, _: &()) -> Result<Source, FieldError> {
        SourceConfig::validate(self)
    }
    fn keep_stored_secrets(&mut self, old: Option<&Self>) -> Result<(), FieldError> {
        keep_source_secrets(self, old)
    }
    fn to_stored(self, created_at: OffsetDateTime, changed_by: ChangedBy) -> StoredSource {
        StoredSource {
            source: self,
            created_at,
            changed_by,
        }
    }
    fn from_stored(s: &StoredSource) -> (&Self, OffsetDateTime, ChangedBy) {
        (&s.source, s.created_at, s.changed_by)
    }
    fn set_ids(set: &Vec<Source>) -> Vec<&str> {
        set.iter().map(Source::id).collect()
    }
}

/// Replaces each redaction marker in `new` by the secret stored at the
/// same place in `old` (same auth type); a marker with nothing to keep is
/// refused, naming the field.
pub fn keep_source_secrets(
    new: &mut SourceConfig,
    old: Option<&SourceConfig>,
) -> Result<(), FieldError> {
    if let Some(s) = new.signing_secret.as_mut() {
        keep_secret(s, old.and_then(|o| o.signing_secret.as_ref()), || {
            "signing_secret".to_owned()
        })?;
    }
    let (slot, field): (&mut Secret, &str) = match &mut new.auth {
        SourceAuth::None => return Ok(()),
        SourceAuth::Basic { password, .. } => (password, "password"),
        SourceAuth::Bearer { token } => (token, "token"),
        SourceAuth::Header { value, .. } => (value, "value"),
        SourceAuth::Oauth2 { client_secret, .. } => (client_secret, "client_secret"),
        SourceAuth::Signature { secret, .. } => (secret, "secret"),
    };
    let stored = old
        .and_then(|o| auth_secret(&o.auth))
        .filter(|(f, _)| *f == field)
        .map(|(_, s)| s);
    keep_secret(slot, stored, || format!("auth.{field}"))
}

/// The secret of an auth, with its field name (under `auth.`).
fn auth_secret(auth: &SourceAuth) -> Option<(&'static str, &Secret)> {
    match auth {
        SourceAuth::None => None,
        SourceAuth::Basic { password, .. } => Some(("password", password)),
        SourceAuth::Bearer { token } => Some(("token", token)),
        SourceAuth::Header { value, .. } => Some(("value", value)),
        SourceAuth::Oauth2 { client_secret, .. } => Some(("client_secret", client_secret)),
        SourceAuth::Signature { secret, .. } => Some(("secret", secret)),
    }
}

/// Why a source's `program_file` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProgramFileError {
    #[error("source[{index}].program_file: cannot read {path}: {source}")]
    Io {
        index: usize,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("source[{index}].program_file: {path} is larger than {JQ_PROGRAM_MAX_BYTES} bytes")]
    TooLarge { index: usize, path: PathBuf },
    #[error("source[{index}].program: set program or program_file, not both")]
    Both { index: usize },
}

/// Reads each source's `program_file` (relative to `base`, the folder of
/// the file that names it) into its `program`, and clears `program_file`.
pub fn read_program_files(
    sources: &mut [SourceConfig],
    base: &Path,
) -> Result<(), ProgramFileError> {
    for (index, source) in sources.iter_mut().enumerate() {
        let Some(file) = source.program_file.take() else {
            continue;
        };
        if source.program.is_some() {
            return Err(ProgramFileError::Both { index });
        }
        let path = base.join(file);
        let io = |source| ProgramFileError::Io {
            index,
            path: path.clone(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(&path)
            .map_err(io)?
            .take(JQ_PROGRAM_MAX_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() > JQ_PROGRAM_MAX_BYTES {
            return Err(ProgramFileError::TooLarge { index, path });
        }
        source.program = Some(text);
    }
    Ok(())
}

/// What `ledgerline run` does at start-up when it serves inbound webhooks:
/// opens the bucket, applies the config file's `[[source]]` entries
/// (idempotently), and follows the bucket until `shutdown`.
pub async fn start(
    js: &jetstream::Context,
    settings: &crate::config::Settings,
    shutdown: CancellationToken,
) -> Result<(SourceStore, SourceWatcher), StoreError> {
    let store = SourceStore::open(js, (), settings.config.stream_replicas).await?;
    apply_and_watch(store, &settings.config.source, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> SourceConfig {
        toml::from_str(text).expect("a valid source")
    }

    #[test]
    fn markers_keep_the_stored_secret_of_the_same_place_only() {
        let old = config(
            "id = \"g\"\nkind = \"gateway\"\ncurrency = \"IDR\"\n\
             [auth]\ntype = \"signature\"\nsecret = \"s3cr3t-old\"\n",
        );
        let mut new = config(
            "id = \"g\"\nkind = \"gateway\"\ncurrency = \"USD\"\n\
             [auth]\ntype = \"signature\"\nsecret = \"***\"\n",
        );
        keep_source_secrets(&mut new, Some(&old)).expect("kept");
        assert_eq!(new.auth, old.auth);
        assert_eq!(new.currency.as_deref(), Some("USD"));

        // Another auth type: nothing stored at auth.token.
        let mut switched = config(
            "id = \"g\"\nkind = \"gateway\"\ncurrency = \"IDR\"\n\
             [auth]\ntype = \"bearer\"\ntoken = \"***\"\n",
        );
        let e = keep_source_secrets(&mut switched, Some(&old)).unwrap_err();
        assert_eq!(e.field, "auth.token");
        // Nothing stored at all.
        let mut fresh = config("id = \"e\"\nkind = \"events\"\nsigning_secret = \"***\"\n");
        let e = keep_source_secrets(&mut fresh, None).unwrap_err();
        assert_eq!(e.field, "signing_secret");
    }

    #[test]
    fn stored_values_carry_secrets_only_inside_the_bucket() {
        let v = StoredSource {
            source: config(
                "id = \"b\"\nkind = \"events\"\n[auth]\ntype = \"bearer\"\ntoken = \"real-token\"\n",
            ),
            created_at: OffsetDateTime::UNIX_EPOCH,
            changed_by: ChangedBy::Api,
        };
        let stored = crate::secret::reveal_secrets(|| serde_json::to_string(&v)).expect("json");
        assert!(stored.contains("real-token"));
        let back: StoredSource = serde_json::from_str(&stored).expect("read back");
        assert_eq!(back, v);
        assert!(
            !serde_json::to_string(&v)
                .expect("json")
                .contains("real-token")
        );
    }
}
