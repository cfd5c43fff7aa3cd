//! `ledgerline export` (SPEC 5): the audit trail of LEDGER as CSV or a
//! beancount ledger, with each posting's delivery state, and a report that
//! fails on an unexplained imbalance.
//!
//! How it reads, in constant memory:
//!
//! 1. **Snapshot.** The LEDGER stream's last sequence is read first; nothing
//!    written after it is exported, postings or delivery records, so an
//!    export taken while the pipeline runs is still one consistent instant.
//! 2. **Postings, in order.** An ordered consumer (ephemeral, no acks, flow
//!    controlled by the client) reads `ledger.postings.>` (or
//!    `ledger.postings.<R>.>` per `--registry`) from the start, or from
//!    `--from` by start time, in stream order, which is posting order.
//!    `posted_at` is each message's LEDGER timestamp. It stops at the
//!    snapshot, at `--to` (half open: `from <= posted_at < to`), or when
//!    nothing is pending.
//! 3. **Join.** Each posting's delivery columns come from the delivery
//!    records of its (registry, order) ([`delivery`]): one batched Direct Get
//!    per order, folded into a per-seq summary, kept in a bounded cache.
//!    Up to [`LOOKAHEAD_POSTINGS`] lookups run at once while rows are
//!    still written in posting order.
//! 4. **Write** each posting as CSV rows ([`csv`]) or a beancount transaction
//!    ([`beancount`]) and add it to the [`summary`].
//!
//! What is in memory at once: the consumer's batch, the lookahead window,
//! the delivery cache and one line per (registry, currency): bounded by
//! constants, never by the size of the stream.

pub mod beancount;
pub mod csv;
pub mod delivery;
pub mod summary;
pub mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::posting::Posting;
use crate::records::StoredPosting;
use crate::streams::{LEDGER_STREAM, subjects};

use crate::records::SeqDelivery;
use delivery::DeliveryLookup;
use summary::{RunStats, Summary};

/// Delivery lookups in flight while rows are written in order: enough to
/// hide a network round trip per order, few enough to bound memory (each
/// holds one decoded posting).
pub const LOOKAHEAD_POSTINGS: usize = 64;
/// How long to wait for the next posting while the server says more are
/// pending, before calling the export stalled.
pub const NEXT_POSTING_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest batch the ordered consumer asks for at once, in messages.
pub const CONSUMER_BATCH_MESSAGES: i64 = 256;
/// Largest batch the ordered consumer asks for at once, in bytes.
pub const CONSUMER_BATCH_BYTES: i64 = 4 * 1024 * 1024;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Csv,
    Beancount,
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Registries to export; empty for all.
    pub registries: Vec<String>,
    /// Only postings with `posted_at >= from`.
    pub from: Option<OffsetDateTime>,
    /// Only postings with `posted_at < to`.
    pub to: Option<OffsetDateTime>,
    pub format: Format,
    /// Draw a progress bar on standard error.
    pub progress: bool,
}

/// Why an export failed (an unbalanced ledger is not an error: it is in the
/// [`Summary`]).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0:?} is not a registry id ([a-z0-9_-]{{1,64}})")]
    BadRegistry(String),
    #[error("--from {from} is not before --to {to}")]
    BadRange { from: String, to: String },
    #[error("cannot read stream {LEDGER_STREAM} (is this the right server?): {source}")]
    NoLedger {
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    #[error("cannot read the state of stream {LEDGER_STREAM}: {source}")]
    StreamInfo {
        #[source]
        source: async_nats::jetstream::stream::InfoError,
    },
    #[error("cannot create the ordered consumer on {LEDGER_STREAM}: {source}")]
    Consumer {
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
    #[error("cannot read postings from {LEDGER_STREAM}: {source}")]
    Read {
        #[source]
        source: async_nats::Error,
    },
    #[error("no posting arrived for {0:?} while more were pending")]
    Stalled(Duration),
    #[error("reading delivery records on {subject}: {source}")]
    DirectGet {
        subject: String,
        #[source]
        source: crate::streams::direct::DirectGetError,
    },
    #[error("{LEDGER_STREAM} message {stream_seq} on {subject} cannot be read: {source}")]
    Decode {
        stream_seq: u64,
        subject: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{LEDGER_STREAM} message {stream_seq}: {message}")]
    Integrity { stream_seq: u64, message: String },
    #[error("two different sources map to beancount account {account}: {first} and {second}")]
    AccountCollision {
        account: String,
        first: String,
        second: String,
    },
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
}

/// One posting, ready to write.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    pub posting: &'a Posting,
    /// The LEDGER timestamp of the posting message.
    pub posted_at: OffsetDateTime,
    /// Its LEDGER stream sequence.
    pub stream_seq: u64,
    pub delivery: SeqDelivery,
}

/// A writer of one output format.
pub trait Sink {
    /// Writes one posting; returns the rows (entries) written.
    fn posting(&mut self, row: &Row<'_>) -> Result<u64, ExportError>;
    /// Writes what comes after the last posting and flushes.
    fn finish(&mut self) -> Result<(), ExportError>;
}

/// A timestamp as the export writes it: RFC 3339 in UTC, with as many
/// fractional digits as the time has (none for whole seconds).
pub fn timestamp(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        // Every UTC time between years 0 and 9999 formats; LEDGER and
        // delivery times are server clock readings, well inside.
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// True for a valid registry id (what may appear in a subject token).
fn is_registry_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Result of an export.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub summary: Summary,
    pub stats: RunStats,
}

impl ExportReport {
    /// The footer: the stats line, the table, the verdict.
    pub fn render(&self) -> String {
        let empty = match self.summary.empty_postings() {
            0 => String::new(),
            n => format!(
                "{n} posting{} without entries (an event that changed nothing): counted, no rows\n",
                if n == 1 { "" } else { "s" }
            ),
        };
        format!(
            "{}\n{}{empty}{}\n",
            self.stats.render(),
            self.summary.render_table(),
            self.summary.verdict()
        )
    }
}

/// A stored posting as the export needs it: every field but `cumulative`
/// (left empty, skipped unparsed: about half the decoding time of an export).
fn decode_posting(payload: &[u8]) -> Result<Posting, serde_json::Error> {
    StoredPosting::read_without_cumulative(payload).map(|sp| sp.posting)
}

/// A decoded posting with where it sits in LEDGER.
struct Fetched {
    posting: Posting,
    posted_at: OffsetDateTime,
    stream_seq: u64,
}

impl ExportOptions {
    /// Checks the caller's input: registry ids, and `from` before `to`.
    pub fn validate(&self) -> Result<(), ExportError> {
        for r in &self.registries {
            if !is_registry_id(r) {
                return Err(ExportError::BadRegistry(r.clone()));
            }
        }
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from >= to
        {
            return Err(ExportError::BadRange {
                from: timestamp(from),
                to: timestamp(to),
            });
        }
        Ok(())
    }
}

/// Exports LEDGER, as `opts` says, into `out`.
pub async fn export(
    client: &async_nats::Client,
    opts: &ExportOptions,
    out: impl Write,
) -> Result<ExportReport, ExportError> {
    opts.validate()?;
    let started = Instant::now();
    let js = jetstream::new(client.clone());
    let mut ledger = js
        .get_stream(LEDGER_STREAM)
        .await
        .map_err(|source| ExportError::NoLedger { source })?;
    let snapshot_seq = ledger
        .info()
        .await
        .map_err(|source| ExportError::StreamInfo { source })?
        .state
        .last_sequence;
    let header = format!(
        "ledgerline {} export of {LEDGER_STREAM} up to stream sequence {snapshot_seq}, taken {}",
        env!("CARGO_PKG_VERSION"),
        timestamp(OffsetDateTime::now_utc()),
    );
    let mut report = match opts.format {
        Format::Csv => {
            let mut sink = csv::CsvSink::new(out)?;
            let r = run(client, &ledger, opts, snapshot_seq, &mut sink).await?;
            sink.into_inner()?.flush()?;
            r
        }
        Format::Beancount => {
            let mut sink = beancount::BeancountSink::new(out, &header)?;
            let r = run(client, &ledger, opts, snapshot_seq, &mut sink).await?;
            sink.into_inner().flush()?;
            r
        }
    };
    report.stats.elapsed = started.elapsed();
    report.stats.peak_rss_bytes = summary::peak_rss_bytes();
    Ok(report)
}

async fn run(
    client: &async_nats::Client,
    ledger: &stream::Stream,
    opts: &ExportOptions,
    snapshot_seq: u64,
    sink: &mut dyn Sink,
) -> Result<ExportReport, ExportError> {
    let mut summary = Summary::default();
    let mut stats = RunStats {
        snapshot_seq,
        postings: 0,
        rows: 0,
        elapsed: Duration::ZERO,
        peak_rss_bytes: None,
    };
    if snapshot_seq > 0 {
        let consumer = ledger
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subjects: if opts.registries.is_empty() {
                    vec![subjects::POSTINGS_ALL.to_owned()]
                } else {
                    opts.registries
                        .iter()
                        .map(|r| format!("ledger.postings.{r}.>"))
                        .collect()
                },
                deliver_policy: match opts.from {
                    Some(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
                    None => consumer::DeliverPolicy::All,
                },
                max_batch: CONSUMER_BATCH_MESSAGES,
                max_bytes: CONSUMER_BATCH_BYTES,
                ..Default::default()
            })
            .await
            .map_err(|source| ExportError::Consumer { source })?;
        let pending = consumer.cached_info().num_pending;
        let bar = progress_bar(opts.progress, pending);
        if pending > 0 {
            let messages = consumer
                .messages()
                .await
                .map_err(|e| ExportError::Read { source: e.into() })?;
            let lookup = DeliveryLookup::new(client.clone(), snapshot_seq).await?;
            let postings = futures::stream::unfold(Some(messages), move |state| async move {
                let mut messages = state?;
                match next_posting(&mut messages, snapshot_seq, opts.to).await {
                    Ok(Some((f, more))) => Some((Ok(f), more.then_some(messages))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            });
            let joined = postings
                .map(|r| {
                    let lookup = lookup.clone();
                    async move {
                        let f = r?;
                        let p = &f.posting;
                        let d = lookup
                            .state(&p.registry_id, p.order_id.as_str(), p.seq)
                            .await?;
                        Ok::<_, ExportError>((f, d))
                    }
                })
                .buffered(LOOKAHEAD_POSTINGS);
            let mut joined = std::pin::pin!(joined);
            while let Some(item) = joined.next().await {
                let (f, delivery) = item?;
                let row = Row {
                    posting: &f.posting,
                    posted_at: f.posted_at,
                    stream_seq: f.stream_seq,
                    delivery,
                };
                stats.rows += sink.posting(&row)?;
                stats.postings += 1;
                summary.add(&f.posting);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
    }
    sink.finish()?;
    Ok(ExportReport { summary, stats })
}

/// The next posting to export, and whether more may follow; `None` when the
/// export is complete.
async fn next_posting(
    messages: &mut consumer::pull::Ordered,
    snapshot_seq: u64,
    to: Option<OffsetDateTime>,
) -> Result<Option<(Fetched, bool)>, ExportError> {
    let msg = match tokio::time::timeout(NEXT_POSTING_TIMEOUT, messages.next()).await {
        Err(_) => return Err(ExportError::Stalled(NEXT_POSTING_TIMEOUT)),
        Ok(None) => return Ok(None),
        Ok(Some(Err(e))) => return Err(ExportError::Read { source: e.into() }),
        Ok(Some(Ok(m))) => m,
    };
    let info = msg.info().map_err(|source| ExportError::Read { source })?;
    let (stream_seq, pending, posted_at) = (info.stream_sequence, info.pending, info.published);
    if stream_seq > snapshot_seq || to.is_some_and(|to| posted_at >= to) {
        // Past the snapshot, or past --to: LEDGER timestamps grow with the
        // sequence (JetStream's own start-time lookups rely on it).
        return Ok(None);
    }
    let subject = msg.subject.as_str();
    let posting = decode_posting(&msg.payload).map_err(|source| ExportError::Decode {
        stream_seq,
        subject: subject.to_owned(),
        source,
    })?;
    match subjects::parse_order_subject(subject) {
        Some(("postings", r, o)) if r == posting.registry_id && o == posting.order_id.as_str() => {}
        _ => {
            return Err(ExportError::Integrity {
                stream_seq,
                message: format!(
                    "posting {}/{}/{} stored on {subject}",
                    posting.registry_id, posting.order_id, posting.seq
                ),
            });
        }
    }
    let more = pending > 0 && stream_seq < snapshot_seq;
    Ok(Some((
        Fetched {
            posting,
            posted_at,
            stream_seq,
        },
        more,
    )))
}

fn progress_bar(enabled: bool, len: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} postings ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Where an export goes: standard output; a new or regular file, which
/// appears complete or not at all (written beside it under a temporary name,
/// renamed at the end); or anything else that exists (a device like
/// `/dev/null`, a pipe, a symlink), written in place, never replaced.
pub struct Output {
    target: Target,
}

enum Target {
    Stdout,
    InPlace(std::fs::File),
    Atomic(PathBuf, tempfile::NamedTempFile),
}

/// True when `path` must be written in place rather than replaced: it
/// exists and is not a plain regular file (a device, a pipe, a symlink).
fn writes_in_place(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) => !m.file_type().is_file(),
        Err(_) => false,
    }
}

impl Output {
    /// `-` for standard output, else a file path.
    pub fn create(path: &Path) -> std::io::Result<Output> {
        if path.as_os_str() == "-" {
            return Ok(Output {
                target: Target::Stdout,
            });
        }
        if writes_in_place(path) {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)?;
            return Ok(Output {
                target: Target::InPlace(f),
            });
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".ledgerline-export-")
            .tempfile_in(dir)?;
        Ok(Output {
            target: Target::Atomic(path.to_owned(), tmp),
        })
    }

    /// A buffered writer to the output.
    pub fn writer(&self) -> std::io::Result<Box<dyn Write>> {
        Ok(match &self.target {
            Target::Stdout => Box::new(std::io::BufWriter::new(std::io::stdout())),
            Target::InPlace(f) => Box::new(std::io::BufWriter::new(f.try_clone()?)),
            Target::Atomic(_, tmp) => Box::new(std::io::BufWriter::new(tmp.reopen()?)),
        })
    }

    /// Puts the finished file in place (nothing to do for the others).
    pub fn commit(self) -> std::io::Result<()> {
        if let Target::Atomic(path, tmp) = self.target {
            tmp.as_file().sync_all()?;
            tmp.persist(&path).map_err(|e| e.error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(
            timestamp(datetime!(2026-11-22 11:00:00 +01:00)),
            "2026-11-22T10:00:00Z"
        );
        assert_eq!(
            timestamp(datetime!(2026-11-22 10:00:00.123456789 UTC)),
            "2026-11-22T10:00:00.123456789Z"
        );
    }

    #[test]
    fn a_stored_posting_decodes_to_the_posting_without_its_cumulative() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/golden/ledger_codes/config.toml"
        ))
        .unwrap();
        let settings = crate::config::Config::from_toml_with_env(&text, "t", std::iter::empty())
            .unwrap()
            .validate()
            .unwrap();
        let events = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/golden/ledger_codes/events.ndjson"
        ))
        .unwrap();
        let mut engine = crate::engine::Engine::new(settings.ledger, settings.registries);
        let mut checked = 0;
        for line in events.lines() {
            let ev = crate::events::parse_event(line.as_bytes(), None).unwrap();
            for p in engine.process(&ev).unwrap() {
                // A stored record: the posting flattened, plus its own fields.
                let mut stored = serde_json::to_value(&p).unwrap();
                stored["source_seq"] = 7.into();
                let stored = serde_json::to_vec(&stored).unwrap();
                let record: crate::records::StoredPosting =
                    serde_json::from_slice(&stored).unwrap();
                assert_eq!(record.posting, p);
                assert!(!p.cumulative.is_empty());
                let decoded = decode_posting(&stored).unwrap();
                assert_eq!(
                    decoded,
                    Posting {
                        cumulative: Vec::new(),
                        ..p
                    }
                );
                checked += 1;
            }
        }
        assert!(checked >= 4);
    }

    #[test]
    fn devices_and_symlinks_are_written_in_place_never_replaced() {
        assert!(writes_in_place(Path::new("/dev/null")));
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.csv");
        assert!(!writes_in_place(&real));
        std::fs::write(&real, "old").unwrap();
        assert!(!writes_in_place(&real));
        #[cfg(unix)]
        {
            let link = dir.path().join("link.csv");
            std::os::unix::fs::symlink(&real, &link).unwrap();
            assert!(writes_in_place(&link));
            let out = Output::create(&link).unwrap();
            out.writer().unwrap().write_all(b"new").unwrap();
            out.commit().unwrap();
            assert!(
                std::fs::symlink_metadata(&link)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
            assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
        }
    }

    #[test]
    fn a_regular_file_appears_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.csv");
        let out = Output::create(&path).unwrap();
        out.writer().unwrap().write_all(b"rows").unwrap();
        assert!(!path.exists());
        out.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "rows");
        // Dropped without commit: nothing left behind.
        let other = dir.path().join("other.csv");
        drop(Output::create(&other).unwrap());
        assert!(!other.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn registry_filters_cannot_smuggle_subject_wildcards() {
        assert!(is_registry_id("xero-eu"));
        for bad in ["*", ">", "a.b", "", "Xero"] {
            assert!(!is_registry_id(bad), "{bad}");
        }
    }
}
