//! The export's input: LEDGER's postings and delivery records up to the
//! snapshot, in stream order, read by two ordered consumers at once and
//! merged by stream sequence.
//!
//! One consumer reads the postings' subjects, the other the delivery
//! records'. nats-server delivers a consumer's messages from one goroutine
//! and matches each stored message against the consumer's filters, so one
//! consumer on both kinds was bounded by a single server thread at
//! ≈ 4–5 µs a message (BENCHMARKS, "Export: session 9"). Two consumers are
//! delivered side by side, each with one filter. Each is read by a task of
//! its own, which also decodes the postings, so the server's work, the
//! decoding and the join (in the caller) overlap on the machine's cores.
//!
//! The merge hands the join exactly what one consumer on both filters
//! would: every message of either up to the snapshot, in stream order. It
//! takes the lower of the two heads, so it waits for a message of each
//! side until that side has ended.
//!
//! A side ends at the snapshot: at its first message past it, at its
//! message whose `pending` is 0 (every message of its filters at the
//! snapshot existed when the consumer was created), or at once when the
//! consumer had nothing pending. Memory: at most [`QUEUED_BATCHES`] batches
//! of [`READ_BATCH`] messages per side wait for the caller.
//!
//! A side whose consumer fails (nats-server restarted, the connection was
//! lost: its ephemeral consumer is gone) reads on from a new one that
//! starts after the last message it handed over, so nothing is read twice
//! or skipped; it gives up after [`NEXT_POSTING_TIMEOUT`] of failed
//! attempts. A reader waiting for messages looks every
//! [`RECONNECT_CHECK`] whether its connection was re-established (the
//! client itself would notice the lost consumer only after two missed
//! heartbeats, ≈ 15 s).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::jetstream::stream::Stream;
use futures::{FutureExt, StreamExt};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use tracing::{debug, warn};

use crate::posting::Posting;
use crate::streams::direct::RECONNECT_CHECK;

use super::join;
use super::{CONSUMER_BATCH_BYTES, CONSUMER_BATCH_MESSAGES, ExportError, NEXT_POSTING_TIMEOUT};

/// Messages a reader task hands over at once (those already received).
pub const READ_BATCH: usize = 256;
/// Batches a reader task may have handed over and not yet taken.
pub const QUEUED_BATCHES: usize = 4;
/// First pause before a failed consumer is opened again; it doubles up to
/// [`REOPEN_PAUSE_MAX`], for up to [`NEXT_POSTING_TIMEOUT`] in all.
pub const REOPEN_PAUSE_MIN: Duration = Duration::from_millis(100);
pub const REOPEN_PAUSE_MAX: Duration = Duration::from_secs(2);

/// One message read from LEDGER.
#[derive(Debug)]
pub struct Read {
    pub stream_seq: u64,
    /// Its LEDGER timestamp.
    pub published: OffsetDateTime,
    pub subject: async_nats::Subject,
    pub payload: bytes::Bytes,
    /// For a message on a posting subject of an order, the posting decoded
    /// by the reader task (or why it could not be).
    pub posting: Option<Result<Posting, serde_json::Error>>,
}

type Batch = Result<Vec<Read>, ExportError>;

/// One consumer's messages as its reader task hands them over.
struct Side {
    rx: Option<mpsc::Receiver<Batch>>,
    /// Emptied batches go back to the reader to be filled again (fewer
    /// allocations, and none of them shared between threads).
    spare: Option<mpsc::Sender<Vec<Read>>>,
    queued: VecDeque<Read>,
}

impl Side {
    fn ended() -> Side {
        Side {
            rx: None,
            spare: None,
            queued: VecDeque::new(),
        }
    }

    /// Waits until a message is queued or the side has ended.
    async fn fill(&mut self) -> Result<(), ExportError> {
        while self.queued.is_empty() {
            let Some(rx) = &mut self.rx else {
                return Ok(());
            };
            match rx.recv().await {
                Some(Ok(batch)) => {
                    let emptied = std::mem::replace(&mut self.queued, VecDeque::from(batch));
                    if let Some(spare) = &self.spare {
                        let _ = spare.try_send(Vec::from(emptied));
                    }
                }
                Some(Err(e)) => return Err(e),
                None => self.rx = None,
            }
        }
        Ok(())
    }

    fn head(&self) -> Option<u64> {
        self.queued.front().map(|r| r.stream_seq)
    }
}

/// The postings and delivery records of the export, merged.
pub struct Merged {
    postings: Side,
    records: Side,
    /// Postings at or before the snapshot when the consumers were created
    /// (and any stored since): the progress bar's length.
    pub postings_pending: u64,
    /// The reader tasks, stopped when the merge is dropped (an export that
    /// stops early, at `--to` or on an error).
    _readers: JoinSet<()>,
}

impl Merged {
    /// Creates the two consumers (postings on `posting_filters`, delivery
    /// records on `record_filters`, both from `deliver`), on LEDGER as
    /// opened on the connection each is read by, and starts reading.
    pub async fn open(
        [postings_ledger, records_ledger]: [(&Stream, Arc<async_nats::Statistics>); 2],
        posting_filters: Vec<String>,
        record_filters: Vec<String>,
        deliver: DeliverPolicy,
        snapshot_seq: u64,
    ) -> Result<Merged, ExportError> {
        let mut readers = JoinSet::new();
        let mut start = async |(ledger, connection): (&Stream, _), filters, postings| {
            let source = Source {
                ledger: ledger.clone(),
                connection,
                filters,
                deliver,
            };
            let Some((messages, pending)) = source.open(None).await? else {
                return Ok((Side::ended(), 0));
            };
            let (tx, rx) = mpsc::channel(QUEUED_BATCHES);
            let (spare_tx, spare_rx) = mpsc::channel(QUEUED_BATCHES + 2);
            readers.spawn(read(messages, source, snapshot_seq, postings, tx, spare_rx));
            let side = Side {
                rx: Some(rx),
                spare: Some(spare_tx),
                queued: VecDeque::new(),
            };
            Ok::<_, ExportError>((side, pending))
        };
        let (postings, postings_pending) = start(postings_ledger, posting_filters, true).await?;
        let (records, _) = start(records_ledger, record_filters, false).await?;
        Ok(Merged {
            postings,
            records,
            postings_pending,
            _readers: readers,
        })
    }

    /// The next message in stream order; `None` once both sides have
    /// ended.
    pub async fn next(&mut self) -> Result<Option<Read>, ExportError> {
        self.postings.fill().await?;
        self.records.fill().await?;
        let side = match (self.postings.head(), self.records.head()) {
            (Some(p), Some(r)) if r < p => &mut self.records,
            (Some(_), _) => &mut self.postings,
            (None, Some(_)) => &mut self.records,
            (None, None) => return Ok(None),
        };
        Ok(side.queued.pop_front())
    }
}

/// What one side reads: LEDGER (on the side's connection), its filters,
/// and where it starts.
struct Source {
    ledger: Stream,
    /// The connection's statistics: a reconnection shows in `connects`.
    connection: Arc<async_nats::Statistics>,
    filters: Vec<String>,
    deliver: DeliverPolicy,
}

impl Source {
    /// How many times the side's connection has been established.
    fn connects(&self) -> u64 {
        self.connection.connects.load(Ordering::Relaxed)
    }

    /// An ordered consumer from the start, or after stream sequence
    /// `after`, and how many messages it has pending; `None` when it has
    /// none.
    async fn open(
        &self,
        after: Option<u64>,
    ) -> Result<Option<(consumer::pull::Ordered, u64)>, ExportError> {
        let consumer = self
            .ledger
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subjects: self.filters.clone(),
                deliver_policy: match after {
                    Some(seq) => DeliverPolicy::ByStartSequence {
                        start_sequence: seq + 1,
                    },
                    None => self.deliver,
                },
                max_batch: CONSUMER_BATCH_MESSAGES,
                max_bytes: CONSUMER_BATCH_BYTES,
                ..Default::default()
            })
            .await
            .map_err(|source| ExportError::Consumer { source })?;
        let pending = consumer.cached_info().num_pending;
        if pending == 0 {
            return Ok(None);
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| ExportError::Read { source: e.into() })?;
        Ok(Some((messages, pending)))
    }

    /// After the consumer failed with `failure` (logged: the server
    /// restarted, a connection dropped), a new one after stream sequence
    /// `after`: tried again with a growing pause for up to
    /// [`NEXT_POSTING_TIMEOUT`], then the last attempt's error is returned.
    /// `None` when nothing is left to read.
    async fn reopen(
        &self,
        after: Option<u64>,
        failure: ExportError,
    ) -> Result<Option<consumer::pull::Ordered>, ExportError> {
        warn!(error = %failure, ?after, "export: reading LEDGER failed; resuming on a new consumer");
        let deadline = tokio::time::Instant::now() + NEXT_POSTING_TIMEOUT;
        let mut pause = REOPEN_PAUSE_MIN;
        loop {
            tokio::time::sleep(pause).await;
            match self.open(after).await {
                Ok(opened) => return Ok(opened.map(|(messages, _)| messages)),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => debug!(error = %e, "export: LEDGER not readable yet"),
            }
            pause = (pause * 2).min(REOPEN_PAUSE_MAX);
        }
    }
}

/// Reads one consumer's messages up to the snapshot and hands them over,
/// what has arrived at once (up to [`READ_BATCH`]), decoding postings when
/// `postings`. Batches are taken from `spare` when there are any.
async fn read(
    mut messages: consumer::pull::Ordered,
    source: Source,
    snapshot_seq: u64,
    postings: bool,
    tx: mpsc::Sender<Batch>,
    mut spare: mpsc::Receiver<Vec<Read>>,
) {
    // The stream sequence of the last message handed over.
    let mut last_read = None;
    // The connection's count of connections when the consumer was made.
    let mut connects = source.connects();
    loop {
        let mut waited = Duration::ZERO;
        let first = loop {
            match tokio::time::timeout(RECONNECT_CHECK, messages.next()).await {
                Ok(next) => break next,
                Err(_) if source.connects() != connects => {
                    // Reconnected, maybe to a restarted server that no
                    // longer has the ephemeral consumer: the client would
                    // notice only after two missed heartbeats.
                    break Some(Err(consumer::pull::OrderedError::with_source(
                        consumer::pull::OrderedErrorKind::Other,
                        "the connection to NATS was re-established",
                    )));
                }
                Err(_) if waited >= NEXT_POSTING_TIMEOUT => {
                    let _ = tx
                        .send(Err(ExportError::Stalled(NEXT_POSTING_TIMEOUT)))
                        .await;
                    return;
                }
                Err(_) => waited += RECONNECT_CHECK,
            }
        };
        let Some(first) = first else { return };
        let mut batch = spare.try_recv().unwrap_or_default();
        batch.clear();
        batch.reserve(READ_BATCH);
        let mut end = End::No;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match step(msg, snapshot_seq, postings) {
                Step::Keep(read, last) => {
                    last_read = Some(read.stream_seq);
                    batch.push(read);
                    if last {
                        end = End::Done;
                        break;
                    }
                }
                Step::Past => {
                    end = End::Done;
                    break;
                }
                Step::Broken(e) => {
                    end = End::Broken(e);
                    break;
                }
                Step::Failed(e) => {
                    end = End::Failed(e);
                    break;
                }
            }
            if batch.len() < READ_BATCH {
                // Only what has already arrived: never wait to fill a batch.
                next = messages.next().now_or_never().flatten();
            }
        }
        if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
            return;
        }
        match end {
            End::No => {}
            End::Done => return,
            End::Broken(e) => match source.reopen(last_read, e).await {
                Ok(Some(reopened)) => {
                    messages = reopened;
                    connects = source.connects();
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            },
            End::Failed(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Whether a reader's batch ended its side.
enum End {
    No,
    /// Everything up to the snapshot is read.
    Done,
    /// The consumer failed: read on from a new one.
    Broken(ExportError),
    Failed(ExportError),
}

/// What one message read means for its side.
enum Step {
    /// Keep it; `true` when it is the side's last.
    Keep(Read, bool),
    /// It is past the snapshot: the side has ended before it.
    Past,
    /// The consumer failed (a server restart, a lost connection).
    Broken(ExportError),
    /// The message cannot be read.
    Failed(ExportError),
}

fn step(
    msg: Result<async_nats::jetstream::Message, consumer::pull::OrderedError>,
    snapshot_seq: u64,
    postings: bool,
) -> Step {
    let msg = match msg {
        Ok(m) => m,
        Err(e) => return Step::Broken(ExportError::Read { source: e.into() }),
    };
    let (stream_seq, pending, published) = match msg.info() {
        Ok(i) => (i.stream_sequence, i.pending, i.published),
        Err(source) => return Step::Failed(ExportError::Read { source }),
    };
    if stream_seq > snapshot_seq {
        return Step::Past;
    }
    let posting = match join::order_key(&msg.subject) {
        Some(("postings", _)) if postings => Some(join::decode_posting(&msg.payload)),
        _ => None,
    };
    let msg = msg.message;
    let last = pending == 0 || stream_seq == snapshot_seq;
    Step::Keep(
        Read {
            stream_seq,
            published,
            subject: msg.subject,
            payload: msg.payload,
            posting,
        },
        last,
    )
}
