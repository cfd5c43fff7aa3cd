//! Stream settings are the operator's once a stream exists (SPEC 7, 9).
//!
//! ledgerline creates ORDERS, LEDGER and its buckets with the settings of the
//! configuration (`stream_replicas`, file storage, no limits) when they are
//! missing, and never updates an existing one: an operator who moved a stream
//! to three replicas, added `max_age` to LEDGER or placed it on tagged
//! servers keeps that across every restart. What exists is compared with
//! what ledgerline would create, and each difference is sorted by what it
//! means:
//!
//! - **refused**: ledgerline cannot work correctly on it (a subject it writes
//!   is not captured, retention that deletes messages once consumed, no
//!   Direct Get, messages smaller than its records): start-up fails and says
//!   what to change;
//! - **warned**: it works, with a consequence the operator should know
//!   (another replica count than configured, age or size limits that make
//!   old records unavailable to `verify` and `export`, a shorter duplicate
//!   window).

use std::fmt;

use async_nats::jetstream::stream;

/// One way an existing stream differs from what ledgerline would create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The stream (or bucket stream, `KV_<bucket>`).
    pub stream: String,
    /// The setting, as JetStream names it (`num_replicas`, `max_age`, …).
    pub setting: &'static str,
    /// What the difference means and what to do.
    pub message: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stream {} {}: {}",
            self.stream, self.setting, self.message
        )
    }
}

/// The differences of an existing stream, sorted by what they mean.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Review {
    /// ledgerline cannot run on the stream as it is.
    pub refused: Vec<Difference>,
    /// It runs; the operator should know.
    pub warned: Vec<Difference>,
}

impl Review {
    fn refuse(&mut self, stream: &str, setting: &'static str, message: String) {
        self.refused.push(Difference {
            stream: stream.to_owned(),
            setting,
            message,
        });
    }

    fn warn(&mut self, stream: &str, setting: &'static str, message: String) {
        self.warned.push(Difference {
            stream: stream.to_owned(),
            setting,
            message,
        });
    }
}

/// Compares the stream that exists with the one ledgerline would create.
/// Settings ledgerline leaves at the server's default (placement, compression,
/// …) are the operator's and not compared.
pub fn review(existing: &stream::Config, wanted: &stream::Config) -> Review {
    let mut r = Review::default();
    let name = existing.name.as_str();
    for subject in &wanted.subjects {
        if !existing.subjects.iter().any(|s| s == subject) {
            r.refuse(
                name,
                "subjects",
                format!(
                    "does not list `{subject}` (it has {:?}); ledgerline reads and writes that subject: add it",
                    existing.subjects
                ),
            );
        }
    }
    if existing.subject_transform != wanted.subject_transform {
        let show = |t: &Option<stream::SubjectTransform>| match t {
            Some(t) => format!("`{}` → `{}`", t.source, t.destination),
            None => "none".to_owned(),
        };
        r.refuse(
            name,
            "subject_transform",
            format!(
                "is {}, and order_partitions wants {}: the partitions of a stream are fixed when it is created \
                 (set order_partitions to what the stream has, or move the events to a new stream)",
                show(&existing.subject_transform),
                show(&wanted.subject_transform)
            ),
        );
    }
    if existing.retention != stream::RetentionPolicy::Limits {
        r.refuse(
            name,
            "retention",
            format!(
                "is {:?}; a record of the ledger must outlive its consumers (replay, verify, export): use limits",
                existing.retention
            ),
        );
    }
    if wanted.allow_direct && !existing.allow_direct {
        r.refuse(
            name,
            "allow_direct",
            "is off; ledgerline reads an order's last records with Direct Get: turn it on"
                .to_owned(),
        );
    }
    if existing.max_message_size > 0 && existing.max_message_size < wanted.max_message_size {
        r.refuse(
            name,
            "max_msg_size",
            format!(
                "is {} bytes, below the {} ledgerline needs to keep rejected inputs and postings of large orders",
                existing.max_message_size, wanted.max_message_size
            ),
        );
    }
    if existing.num_replicas.max(1) != wanted.num_replicas.max(1) {
        r.warn(
            name,
            "num_replicas",
            format!(
                "is {}, stream_replicas is {}: the stream is left as it is (change one or the other to silence this)",
                existing.num_replicas.max(1),
                wanted.num_replicas.max(1)
            ),
        );
    }
    if existing.storage != wanted.storage {
        r.warn(
            name,
            "storage",
            format!(
                "is {:?}, not {:?}: its messages do not survive a restart of the server that holds them",
                existing.storage, wanted.storage
            ),
        );
    }
    if !existing.max_age.is_zero() && wanted.max_age.is_zero() {
        r.warn(
            name,
            "max_age",
            format!(
                "is {:?}: older messages are deleted, and `verify`/`export` see only what is left",
                existing.max_age
            ),
        );
    }
    for (setting, value) in [
        ("max_bytes", existing.max_bytes),
        ("max_msgs", existing.max_messages),
        ("max_msgs_per_subject", existing.max_messages_per_subject),
    ] {
        if value > 0 {
            r.warn(
                name,
                setting,
                format!(
                    "is {value}: the oldest messages are deleted beyond it, and `verify`/`export` see only what is left"
                ),
            );
        }
    }
    if existing.duplicate_window < wanted.duplicate_window {
        r.warn(
            name,
            "duplicate_window",
            format!(
                "is {:?}, below the {:?} ledgerline sets: a producer retrying later than that can store an event twice",
                existing.duplicate_window, wanted.duplicate_window
            ),
        );
    }
    r
}

/// Opens the KV bucket `config.bucket`, creating it with `config` when it
/// is missing. An existing bucket is used as it is (the operator's
/// settings), with a warning when its replica count is not
/// `config.num_replicas` ([`warn_bucket_replicas`]).
pub async fn open_bucket(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> Result<async_nats::jetstream::kv::Store, async_nats::Error> {
    use async_nats::jetstream::context::KeyValueErrorKind;
    match js.get_key_value(config.bucket.as_str()).await {
        Ok(kv) => {
            warn_bucket_replicas(&kv, config.num_replicas).await;
            Ok(kv)
        }
        Err(e) if e.kind() == KeyValueErrorKind::GetBucket => {
            Ok(js.create_key_value(config).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Logs a bucket kept with another replica count than `stream_replicas`
/// (it is left as it is: the operator's setting).
async fn warn_bucket_replicas(kv: &async_nats::jetstream::kv::Store, replicas: usize) {
    if let Ok(status) = kv.status().await {
        let has = status.info.config.num_replicas.max(1);
        if has != replicas.max(1) {
            tracing::warn!(
                bucket = %status.bucket,
                "bucket {} has {has} replicas, stream_replicas is {replicas}: the bucket is left as it is",
                status.bucket
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wanted() -> stream::Config {
        crate::streams::ledger_stream_config(3)
    }

    #[test]
    fn the_stream_ledgerline_creates_has_no_difference() {
        let w = wanted();
        assert_eq!(review(&w, &w), Review::default());
    }

    #[test]
    fn another_replica_count_or_limits_are_warned_not_refused() {
        let w = wanted();
        let existing = stream::Config {
            num_replicas: 1,
            max_age: Duration::from_secs(86_400 * 400),
            max_bytes: 1 << 40,
            ..w.clone()
        };
        let r = review(&existing, &w);
        assert!(r.refused.is_empty(), "{r:?}");
        let settings: Vec<_> = r.warned.iter().map(|d| d.setting).collect();
        assert_eq!(settings, ["num_replicas", "max_age", "max_bytes"]);
        assert_eq!(
            r.warned[0].to_string(),
            "stream LEDGER num_replicas: is 1, stream_replicas is 3: the stream is left as it is (change one or the other to silence this)"
        );
    }

    #[test]
    fn what_ledgerline_cannot_run_on_is_refused_and_named() {
        let w = wanted();
        let existing = stream::Config {
            subjects: vec!["ledger.postings.>".to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            allow_direct: false,
            max_message_size: 1024,
            ..w.clone()
        };
        let r = review(&existing, &w);
        let settings: Vec<_> = r.refused.iter().map(|d| d.setting).collect();
        assert_eq!(
            settings,
            ["subjects", "retention", "allow_direct", "max_msg_size"]
        );
        assert!(r.refused[0].message.contains("`ledger.>`"), "{r:?}");
    }

    #[test]
    fn a_shorter_duplicate_window_or_memory_storage_is_warned() {
        let w = wanted();
        let existing = stream::Config {
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::Memory,
            ..w.clone()
        };
        let r = review(&existing, &w);
        assert!(r.refused.is_empty());
        let settings: Vec<_> = r.warned.iter().map(|d| d.setting).collect();
        assert_eq!(settings, ["storage", "duplicate_window"]);
    }
}
