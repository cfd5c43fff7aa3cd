//! `ledgerline export` (SPEC 5): the audit trail of LEDGER as CSV or a
//! beancount ledger, with each posting's delivery state, and a report that
//! fails on an unexplained imbalance.
//!
//! How it reads, in constant memory:
//!
//! 1. **Snapshot.** The LEDGER stream's last sequence is read first; nothing
//!    written after it is exported, postings or delivery records, so an
//!    export taken while the pipeline runs is still one consistent instant.
//! 2. **Postings and delivery records, in order** ([`read`]). Two ordered
//!    consumers (ephemeral, no acks, flow controlled by the client), read
//!    side by side, one on `ledger.postings.>` and one on
//!    `ledger.deliveries.>` (or `ledger.{postings,deliveries}.<R>.>` per
//!    `--registry`), from the start or from `--from` by start time; their
//!    messages are merged back into stream order, which is posting order.
//!    `posted_at` is each posting message's LEDGER timestamp. Reading stops
//!    at the snapshot, when nothing is pending, or at `--to` (half open:
//!    `from <= posted_at < to`).
//! 3. **Join** ([`join`]). Every delivery record of a posting is stored
//!    after it, so each posting waits in a bounded window while its
//!    order's records pass by and are folded; it goes, in stream order,
//!    once the consumer has passed its order's last record at the
//!    snapshot (where that is, is asked of the server for up to
//!    [`ASK_BATCH`] orders at once, [`ASKS_IN_FLIGHT`] requests in
//!    flight). When the window is full of postings whose records lie
//!    beyond it, or after `--to`, the oldest incomplete orders' records
//!    are read on their own ([`delivery`]: one batched Direct Get per
//!    order, [`FALLBACK_ORDERS`] at once).
//! 4. **Write** each posting as CSV rows ([`csv`]) or a beancount transaction
//!    ([`beancount`]) and add it to the [`summary`].
//!
//! What is in memory at once: each consumer's batch and what its reader has
//! handed over ([`read::QUEUED_BATCHES`]), the join's window
//! ([`JoinLimits`]: postings held, and one small fold per order of them),
//! the answers in flight and one line per (registry, currency): bounded by
//! constants, never by the size of the stream.

pub mod beancount;
pub mod csv;
pub mod delivery;
pub mod join;
pub mod read;
pub mod summary;
pub mod verify;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::posting::Posting;
use crate::records::{DeliveryRecordView, SeqDelivery};
use crate::streams::direct::{self, SharedInbox};
use crate::streams::{LEDGER_STREAM, subjects};

use delivery::DIRECT_GET_TIMEOUT;
pub use join::JoinLimits;
use join::{Front, Join, Joined};
use summary::{RunStats, Summary};

/// How long to wait for the next posting while the server says more are
/// pending, before calling the export stalled.
pub const NEXT_POSTING_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest batch each ordered consumer asks for at once, in messages.
pub const CONSUMER_BATCH_MESSAGES: i64 = 1024;
/// Largest batch each ordered consumer asks for at once, in bytes.
pub const CONSUMER_BATCH_BYTES: i64 = 8 * 1024 * 1024;

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
    /// A second connection to the same server, for the delivery records'
    /// consumer: its messages are then received and parsed beside the
    /// postings' (about a tenth faster on two cores). `None`: both on the
    /// export's one connection.
    pub records_connection: Option<async_nats::Client>,
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
    #[error("a delivery lookup of the export stopped: {source}")]
    Task {
        #[source]
        source: tokio::task::JoinError,
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

/// Appends [`timestamp`]`(t)` to `out`, without a `String`.
pub fn write_timestamp(out: &mut Vec<u8>, t: OffsetDateTime) {
    let start = out.len();
    if t.to_offset(time::UtcOffset::UTC)
        .format_into(out, &Rfc3339)
        .is_err()
    {
        // As timestamp(): never expected (see there).
        out.truncate(start);
        out.extend_from_slice(t.unix_timestamp().to_string().as_bytes());
    }
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
    export_within(client, opts, JoinLimits::DEFAULT, out).await
}

/// [`export`], holding at most what `limits` allows while joining
/// postings with their delivery records (smaller in tests, to see the
/// window fill).
pub async fn export_within(
    client: &async_nats::Client,
    opts: &ExportOptions,
    limits: JoinLimits,
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
    let records_ledger = match &opts.records_connection {
        Some(c) => Some(
            jetstream::new(c.clone())
                .get_stream(LEDGER_STREAM)
                .await
                .map_err(|source| ExportError::NoLedger { source })?,
        ),
        None => None,
    };
    let input = Input {
        client,
        ledger: &ledger,
        records_ledger: records_ledger.as_ref().unwrap_or(&ledger),
        opts,
        limits,
        snapshot_seq,
    };
    let mut report = match opts.format {
        Format::Csv => {
            let mut sink = csv::CsvSink::new(out)?;
            let r = run(&input, &mut sink).await?;
            sink.into_inner()?.flush()?;
            r
        }
        Format::Beancount => {
            let mut sink = beancount::BeancountSink::new(out, &header)?;
            let r = run(&input, &mut sink).await?;
            sink.into_inner().flush()?;
            r
        }
    };
    report.stats.elapsed = started.elapsed();
    report.stats.peak_rss_bytes = summary::peak_rss_bytes();
    Ok(report)
}

/// What one export reads.
struct Input<'a> {
    client: &'a async_nats::Client,
    ledger: &'a stream::Stream,
    /// LEDGER on the connection of the delivery records' consumer.
    records_ledger: &'a stream::Stream,
    opts: &'a ExportOptions,
    limits: JoinLimits,
    snapshot_seq: u64,
}

impl Input<'_> {
    /// The subjects the export reads: the postings and the delivery records
    /// of every registry, or of those asked for.
    fn filter_subjects(&self) -> Vec<String> {
        if self.opts.registries.is_empty() {
            return vec![
                subjects::POSTINGS_ALL.to_owned(),
                subjects::DELIVERIES_ALL.to_owned(),
            ];
        }
        self.opts
            .registries
            .iter()
            .flat_map(|r| {
                [
                    format!("ledger.postings.{r}.>"),
                    format!("ledger.deliveries.{r}.>"),
                ]
            })
            .collect()
    }

    fn deliver_policy(&self) -> consumer::DeliverPolicy {
        match self.opts.from {
            Some(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
            None => consumer::DeliverPolicy::All,
        }
    }
}

/// Delivery records' last sequences asked for in one request.
pub const ASK_BATCH: usize = direct::MULTI_LAST_SUBJECTS_MAX;
/// Such requests in flight at once.
pub const ASKS_IN_FLIGHT: usize = 4;
/// Orders whose records are read on their own at once, when the window is
/// full of postings whose records lie beyond it.
pub const FALLBACK_ORDERS: usize = 64;

/// Whether the consumer still reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Open,
    /// Everything up to the snapshot is read: every order is complete.
    AllRead,
    /// Past `--to`: no more postings to export; what is held is completed
    /// by asking and by reading orders on their own.
    Stopped,
}

/// The answer to one multi-last request: the orders asked about and the
/// last sequence of their delivery subjects.
type Answer = (
    Vec<Box<str>>,
    Result<Vec<(String, u64)>, crate::streams::direct::DirectGetError>,
);

/// One export's reading and joining.
struct Joiner<'a> {
    input: &'a Input<'a>,
    messages: read::Merged,
    join: Join,
    inbox: SharedInbox,
    asks: tokio::task::JoinSet<Answer>,
    /// False once the server turned a multi-last request down (before
    /// 2.11): held postings are then completed by per-order reads.
    can_ask: bool,
    reading: Reading,
}

impl Joiner<'_> {
    /// The next posting to write, with its delivery state; `None` when the
    /// export is complete.
    async fn next(&mut self) -> Result<Option<Joined>, ExportError> {
        loop {
            if let Some(j) = self.join.pop()? {
                return Ok(Some(j));
            }
            if self.reading != Reading::Open && self.join.is_empty() {
                return Ok(None);
            }
            while let Some(answer) = self.asks.try_join_next() {
                self.answered(answer)?;
            }
            self.ask();
            if self.reading == Reading::Open && !self.join.is_full() {
                self.read_one().await?;
                continue;
            }
            // The oldest posting blocks: the window is full, or nothing
            // more is read.
            match self.join.front() {
                Front::Empty | Front::Ready => {}
                Front::Unasked | Front::Asked if !self.asks.is_empty() => {
                    if let Some(answer) = self.asks.join_next().await {
                        self.answered(answer)?;
                    }
                }
                Front::Unasked | Front::Asked | Front::Ahead => self.read_stuck_orders().await?,
            }
        }
    }

    /// Asks where the last delivery records of the held orders lie, a
    /// batch at a time, keeping one request in flight whenever there is
    /// anything to ask, once the window is a quarter full or the consumer
    /// has stopped reading ([`Join::should_ask`]).
    fn ask(&mut self) {
        // While the consumer reads and the window has room, most postings
        // go by their own `delivered` record: nothing to ask yet.
        if self.reading == Reading::Open && !self.join.should_ask() {
            return;
        }
        while self.can_ask
            && self.asks.len() < ASKS_IN_FLIGHT
            && (self.join.unasked() >= ASK_BATCH
                || (self.asks.is_empty() && self.join.unasked() > 0))
        {
            let keys = self.join.questions(ASK_BATCH);
            if keys.is_empty() {
                // Every order to ask about has a held posting past the
                // questions' cursor, so this does not happen; if it did,
                // the per-order reads would still complete the window.
                break;
            }
            let client = self.input.client.clone();
            let inbox = self.inbox.clone();
            let snapshot_seq = self.input.snapshot_seq;
            self.asks.spawn(async move {
                let subjects: Vec<String> = keys
                    .iter()
                    .map(|k| format!("ledger.deliveries.{k}"))
                    .collect();
                let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
                let r = direct::last_sequences(
                    &client,
                    &inbox,
                    LEDGER_STREAM,
                    &subjects,
                    snapshot_seq,
                    DIRECT_GET_TIMEOUT,
                )
                .await;
                (keys, r)
            });
        }
    }

    fn answered(
        &mut self,
        answer: Result<Answer, tokio::task::JoinError>,
    ) -> Result<(), ExportError> {
        let (keys, lasts) = answer.map_err(|source| ExportError::Task { source })?;
        match lasts {
            Ok(lasts) => {
                let lasts: HashMap<&str, u64> = lasts
                    .iter()
                    .filter_map(|(subject, seq)| Some((join::order_key(subject)?.1, *seq)))
                    .collect();
                self.join.answer(&keys, |k| lasts.get(k).copied());
                Ok(())
            }
            Err(direct::DirectGetError::Status { code: 408, .. }) => {
                // No multi-last on this server: per-order reads only.
                self.can_ask = false;
                Ok(())
            }
            Err(source) => Err(ExportError::DirectGet {
                subject: keys
                    .first()
                    .map(|k| format!("ledger.deliveries.{k}"))
                    .unwrap_or_default(),
                source,
            }),
        }
    }

    /// Reads the records of the oldest incomplete orders on their own, a
    /// few at once.
    async fn read_stuck_orders(&mut self) -> Result<(), ExportError> {
        // The front posting's order is incomplete (else it would have
        // gone), so this is never empty.
        let keys = self.join.stuck(FALLBACK_ORDERS);
        let reads = keys.iter().map(|k| {
            let (r, o) = join::split_key(k);
            delivery::fetch_order_via(
                self.input.client,
                &self.inbox,
                r,
                o,
                self.input.snapshot_seq,
            )
        });
        let found = futures::future::try_join_all(reads).await?;
        for (k, d) in keys.iter().zip(found) {
            self.join.resolve(k, d);
        }
        Ok(())
    }

    /// Reads one message and hands it to the join.
    async fn read_one(&mut self) -> Result<(), ExportError> {
        let Some(msg) = self.messages.next().await? else {
            self.all_read();
            return Ok(());
        };
        let (stream_seq, at) = (msg.stream_seq, msg.published);
        if self.input.opts.to.is_some_and(|to| at >= to) {
            // LEDGER timestamps grow with the sequence (JetStream's own
            // start-time lookups rely on it): no posting after this one
            // is before --to.
            self.reading = Reading::Stopped;
            return Ok(());
        }
        let subject = msg.subject.as_str();
        match join::order_key(subject) {
            Some(("postings", key)) => {
                let posting = msg
                    .posting
                    .unwrap_or_else(|| join::decode_posting(&msg.payload));
                self.join
                    .posting(key, stream_seq, at, msg.payload.len(), posting)
            }
            Some(("deliveries", key)) => {
                let record = if self.join.wants(key) {
                    Some(decode_record(&msg.payload, subject, key, stream_seq)?)
                } else {
                    None
                };
                self.join.record_view(key, stream_seq, record.as_ref());
            }
            _ if subject.starts_with("ledger.postings.") => {
                // Not an order's subject: what it holds says whose it is.
                let posting =
                    join::decode_posting(&msg.payload).map_err(|source| ExportError::Decode {
                        stream_seq,
                        subject: subject.to_owned(),
                        source,
                    })?;
                return Err(ExportError::Integrity {
                    stream_seq,
                    message: format!(
                        "posting {}/{}/{} stored on {subject}",
                        posting.registry_id, posting.order_id, posting.seq
                    ),
                });
            }
            _ => self.join.skipped(stream_seq),
        }
        Ok(())
    }

    fn all_read(&mut self) {
        self.join.read_all();
        self.reading = Reading::AllRead;
    }
}

/// A delivery record of order `key` read at `stream_seq` on `subject`.
fn decode_record<'a>(
    payload: &'a [u8],
    subject: &str,
    key: &str,
    stream_seq: u64,
) -> Result<DeliveryRecordView<'a>, ExportError> {
    let record: DeliveryRecordView<'a> =
        serde_json::from_slice(payload).map_err(|source| ExportError::Decode {
            stream_seq,
            subject: subject.to_owned(),
            source,
        })?;
    let (r, o) = join::split_key(key);
    if record.registry_id != r || record.order_id != o {
        return Err(ExportError::Integrity {
            stream_seq,
            message: format!(
                "delivery record for {}/{} stored on {subject}",
                record.registry_id, record.order_id
            ),
        });
    }
    Ok(record)
}

async fn run(input: &Input<'_>, sink: &mut dyn Sink) -> Result<ExportReport, ExportError> {
    let mut summary = Summary::default();
    let mut stats = RunStats {
        snapshot_seq: input.snapshot_seq,
        postings: 0,
        rows: 0,
        elapsed: Duration::ZERO,
        peak_rss_bytes: None,
    };
    if input.snapshot_seq > 0 {
        let (posting_filters, record_filters) = input
            .filter_subjects()
            .into_iter()
            .partition(|s| s.starts_with("ledger.postings."));
        let messages = read::Merged::open(
            [
                (input.ledger, input.client.statistics()),
                (
                    input.records_ledger,
                    input
                        .opts
                        .records_connection
                        .as_ref()
                        .unwrap_or(input.client)
                        .statistics(),
                ),
            ],
            posting_filters,
            record_filters,
            input.deliver_policy(),
            input.snapshot_seq,
        )
        .await?;
        let pending = messages.postings_pending;
        let bar = if input.opts.progress && pending > 0 {
            progress_bar(pending)
        } else {
            indicatif::ProgressBar::hidden()
        };
        if pending > 0 {
            let inbox =
                SharedInbox::new(input.client)
                    .await
                    .map_err(|source| ExportError::DirectGet {
                        subject: subjects::DELIVERIES_ALL.to_owned(),
                        source,
                    })?;
            let mut joiner = Joiner {
                input,
                messages,
                join: Join::new(input.limits),
                inbox,
                asks: tokio::task::JoinSet::new(),
                can_ask: true,
                reading: Reading::Open,
            };
            while let Some(j) = joiner.next().await? {
                let row = Row {
                    posting: &j.posting,
                    posted_at: j.posted_at,
                    stream_seq: j.stream_seq,
                    delivery: j.delivery,
                };
                stats.rows += sink.posting(&row)?;
                stats.postings += 1;
                summary.add(&j.posting);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
    }
    sink.finish()?;
    Ok(ExportReport { summary, stats })
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
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
                let decoded = join::decode_posting(&stored).unwrap();
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
