//! The one batched Direct Get client: every message of a subject (wildcards
//! allowed) in a stream, from a stream sequence on, in stream order.
//!
//! A request (ADR-31: `{"seq", "next_by_subj", "batch", "max_bytes"}` on
//! `$JS.API.DIRECT.GET.<stream>`) is answered by up to a batch of messages
//! and an end-of-batch marker (status 204) saying how many are left; the
//! reader asks again from after the last message until none are, so a
//! subject with hundreds of messages costs a few round trips, not hundreds.
//! A server without batch support answers one message per request (no
//! `Nats-Num-Pending`), and is read one message at a time.
//!
//! Each request gets its replies on a fresh inbox subscription, unless the
//! reader was given a [`SharedInbox`]: one wildcard subscription whose
//! replies are routed to their request by the last token of the reply
//! subject, so a caller making many small reads (the export: one per
//! order) does not pay a subscribe and an unsubscribe per request, on the
//! client and on the server.
//!
//! [`last_sequences`] asks, in one request, where the last message of each
//! of up to [`MULTI_LAST_SUBJECTS_MAX`] subjects lies at a snapshot
//! (`multi_last`); the export uses it to know when it has read every
//! delivery record of an order.
//!
//! The reader stops at a stream sequence (`up_to_seq`, a snapshot), after a
//! number of messages (`limit`), or after [`PAGES_MAX`] requests; each reply
//! is awaited at most `reply_timeout`. A request whose connection is
//! re-established while its replies are awaited (a nats-server restart, a
//! dropped connection) is sent again at once from where the replies had
//! got to: the request or its replies may have been lost with the old
//! connection, and a read changes nothing, so asking twice is safe (a late
//! reply to the first asking goes nowhere: each asking has its own reply
//! subject). Without that, a reply lost in a restart failed the read after
//! `reply_timeout`. Used by the export (delivery records
//! of an order), the admin API (an order's events, postings and delivery
//! records), the aggregator (an order's events, when its book is rebuilt)
//! and `registry backfill`. Requests and replies are parsed by pure functions
//! ([`request`], [`classify`]), unit-tested here; the exchange with a server
//! is covered by the export and admin integration tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, Message, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Most messages asked for in one request: a few round trips for an order
/// with hundreds of records, and a reply burst the client buffers easily.
pub const BATCH_MESSAGES: usize = 256;
/// Most requests for one read (× [`BATCH_MESSAGES`] messages): a bound so a
/// corrupt or endlessly growing subject cannot keep a reader busy forever.
pub const PAGES_MAX: usize = 100_000;

/// How often a reader waiting for a reply looks whether its connection
/// was re-established (then it asks again at once).
pub const RECONNECT_CHECK: Duration = Duration::from_secs(1);

/// Header of a reply: the message's stream sequence.
const H_SEQUENCE: &str = "Nats-Sequence";
/// Header of a reply: the message's subject.
const H_SUBJECT: &str = "Nats-Subject";
/// Header of a reply: when the message was stored (RFC 3339).
const H_TIME_STAMP: &str = "Nats-Time-Stamp";
/// Header of a batched reply (and of the end-of-batch marker): how many
/// messages are left after it.
const H_NUM_PENDING: &str = "Nats-Num-Pending";

/// A Direct Get read failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectGetError {
    #[error("cannot subscribe for replies: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("cannot send the request: {0}")]
    Request(#[source] async_nats::PublishError),
    #[error("no reply within {0:?} (is allow_direct on?)")]
    Timeout(Duration),
    #[error("the connection closed")]
    Closed,
    #[error("status {code} {description}")]
    Status { code: u16, description: String },
    #[error("a reply without Nats-Sequence")]
    NoSequence,
    #[error("more than {0} pages of records")]
    TooManyPages(usize),
}

/// One stored message, as a Direct Get reply carries it.
#[derive(Debug, Clone)]
pub struct DirectMessage {
    /// Its stream sequence.
    pub seq: u64,
    message: Message,
}

impl DirectMessage {
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The subject it was stored on (empty if the server did not say).
    pub fn subject(&self) -> &str {
        header(&self.message, H_SUBJECT).unwrap_or("")
    }

    /// When it was stored, if the server said so in RFC 3339.
    pub fn time(&self) -> Option<OffsetDateTime> {
        header(&self.message, H_TIME_STAMP).and_then(|t| {
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    }
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
}

/// The body of one request: up to `batch` messages of `subject` from stream
/// sequence `from_seq` on, and at most `max_bytes` of them when given.
pub fn request(subject: &str, from_seq: u64, batch: usize, max_bytes: Option<usize>) -> Bytes {
    let mut v = serde_json::json!({
        "seq": from_seq,
        "next_by_subj": subject,
        "batch": batch,
    });
    if let Some(max_bytes) = max_bytes {
        v["max_bytes"] = max_bytes.into();
    }
    Bytes::from(v.to_string())
}

/// Most subjects one multi-last request may name: the server answers more
/// with 413 Too Many Results.
pub const MULTI_LAST_SUBJECTS_MAX: usize = 1024;

/// The body of a multi-last request (ADR-31 `multi_last`): the last message
/// at or below stream sequence `up_to_seq` of each of `subjects`, skipping
/// those stored before `from_seq` (to ask for the rest of a cut answer).
pub fn multi_last_request(subjects: &[&str], up_to_seq: u64, from_seq: u64) -> Bytes {
    let mut v = serde_json::json!({
        "multi_last": subjects,
        "up_to_seq": up_to_seq,
        "batch": subjects.len(),
    });
    if from_seq > 1 {
        v["seq"] = from_seq.into();
    }
    Bytes::from(v.to_string())
}

/// The stream sequence of the last message at or below `up_to_seq` (a
/// snapshot) of each of `subjects`, literal subjects, at most
/// [`MULTI_LAST_SUBJECTS_MAX`]: one request, its replies on `inbox` (more
/// requests only when the server cuts the answer at its byte limit).
/// Subjects without a message up to `up_to_seq` are left out. A server
/// before 2.11 (no `multi_last`) answers [`DirectGetError::Status`] 408.
///
/// `up_to_seq` must be a sequence the stream has reached (the export's
/// snapshot is its last sequence when it starts): nats-server 2.15.1
/// answers "404 No Results" for every subject when it lies far beyond the
/// stream's last sequence (seen with `u64::MAX`, and with 400,000 on a
/// stream of 300,000 messages; the last sequence + 1 is still answered).
pub async fn last_sequences(
    client: &Client,
    inbox: &SharedInbox,
    stream: &str,
    subjects: &[&str],
    up_to_seq: u64,
    reply_timeout: Duration,
) -> Result<Vec<(String, u64)>, DirectGetError> {
    let api_subject = format!("$JS.API.DIRECT.GET.{stream}");
    let mut out = Vec::with_capacity(subjects.len());
    let mut from_seq = 1;
    for _ in 0..PAGES_MAX {
        let (reply_subject, registration) = inbox.open();
        let mut replies = Replies::Shared(registration);
        let sent = Sent::now(client);
        client
            .publish_with_reply(
                api_subject.clone(),
                reply_subject,
                multi_last_request(subjects, up_to_seq, from_seq),
            )
            .await
            .map_err(DirectGetError::Request)?;
        loop {
            let Waited::Reply(message) =
                wait_reply(client, &mut replies, sent, reply_timeout).await?
            else {
                // Asked again from after the last subject answered.
                break;
            };
            match classify(&message)? {
                Reply::NotFound => return Ok(out),
                Reply::EndOfBatch { pending: 0 } => return Ok(out),
                Reply::EndOfBatch { .. } => break,
                Reply::Message { seq, .. } => {
                    from_seq = seq.saturating_add(1);
                    if seq <= up_to_seq {
                        let subject = header(&message, H_SUBJECT).unwrap_or("");
                        out.push((subject.to_owned(), seq));
                    }
                }
            }
        }
    }
    Err(DirectGetError::TooManyPages(PAGES_MAX))
}

/// What one reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A stored message; `batched` when the server answers in batches (it
    /// says how many are left), else it answers one message per request.
    Message { seq: u64, batched: bool },
    /// The end of a batch, with how many messages are left after it.
    EndOfBatch { pending: u64 },
    /// Nothing (more) on the subject.
    NotFound,
}

/// Reads one reply's status and headers.
pub fn classify(message: &Message) -> Result<Reply, DirectGetError> {
    match message.status.map(|s| s.as_u16()) {
        Some(404) => Ok(Reply::NotFound),
        Some(204) => Ok(Reply::EndOfBatch {
            pending: header(message, H_NUM_PENDING)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }),
        None | Some(200) => {
            let seq = header(message, H_SEQUENCE)
                .and_then(|v| v.parse().ok())
                .ok_or(DirectGetError::NoSequence)?;
            Ok(Reply::Message {
                seq,
                batched: header(message, H_NUM_PENDING).is_some(),
            })
        }
        Some(code) => Err(DirectGetError::Status {
            code,
            description: message.description.clone().unwrap_or_default(),
        }),
    }
}

/// Requests waiting for replies on a [`SharedInbox`], by id.
type Waiting = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Message>>>>;

fn lock_waiting(
    w: &Waiting,
) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::UnboundedSender<Message>>> {
    // Plain data: valid whatever a panicking holder did.
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// One reply subscription (`<inbox>.*`) shared by many Direct Get reads:
/// request `n` is answered on `<inbox>.<n>` and a task routes each reply
/// to the read waiting for it (a reply for a read that has stopped is
/// dropped). Cheap to clone; the subscription ends with the last clone.
#[derive(Clone, Debug)]
pub struct SharedInbox {
    inner: Arc<InboxInner>,
}

#[derive(Debug)]
struct InboxInner {
    prefix: String,
    next: AtomicU64,
    waiting: Waiting,
    router: tokio::task::JoinHandle<()>,
}

impl Drop for InboxInner {
    fn drop(&mut self) {
        self.router.abort();
    }
}

impl SharedInbox {
    /// Subscribes to a new wildcard inbox on `client`.
    pub async fn new(client: &Client) -> Result<SharedInbox, DirectGetError> {
        let prefix = client.new_inbox();
        let mut replies = client
            .subscribe(format!("{prefix}.*"))
            .await
            .map_err(DirectGetError::Subscribe)?;
        let waiting: Waiting = Arc::default();
        let router = tokio::spawn({
            let waiting = waiting.clone();
            async move {
                while let Some(m) = replies.next().await {
                    let id = m.subject.rsplit('.').next().and_then(|t| t.parse().ok());
                    if let Some(tx) = id.and_then(|id| lock_waiting(&waiting).get(&id).cloned()) {
                        let _ = tx.send(m);
                    }
                }
            }
        });
        Ok(SharedInbox {
            inner: Arc::new(InboxInner {
                prefix,
                next: AtomicU64::new(0),
                waiting,
                router,
            }),
        })
    }

    /// A new reply subject and what arrives on it.
    fn open(&self) -> (String, Registration) {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        lock_waiting(&self.inner.waiting).insert(id, tx);
        (
            format!("{}.{id}", self.inner.prefix),
            Registration {
                id,
                rx,
                inbox: self.clone(),
            },
        )
    }
}

/// The replies of one request on a [`SharedInbox`]; forgotten when dropped.
#[derive(Debug)]
struct Registration {
    id: u64,
    rx: mpsc::UnboundedReceiver<Message>,
    inbox: SharedInbox,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock_waiting(&self.inbox.inner.waiting).remove(&self.id);
    }
}

/// Where the replies of the request in flight arrive.
#[derive(Debug)]
enum Replies {
    Own(Subscriber),
    Shared(Registration),
}

impl Replies {
    async fn next(&mut self) -> Option<Message> {
        match self {
            Replies::Own(s) => s.next().await,
            Replies::Shared(r) => r.rx.recv().await,
        }
    }
}

/// When a request went out: how many times its connection had been
/// established then.
#[derive(Debug, Clone, Copy)]
struct Sent {
    connects: u64,
}

impl Sent {
    fn now(client: &Client) -> Sent {
        Sent {
            connects: connects(client),
        }
    }
}

/// How many times `client`'s connection has been established.
fn connects(client: &Client) -> u64 {
    client.statistics().connects.load(Ordering::Relaxed)
}

/// What waiting for a reply gave.
enum Waited {
    Reply(Message),
    /// The connection was re-established since the request went out: ask
    /// again.
    Reconnected,
}

/// The next reply to the request `sent`, waiting at most `reply_timeout`,
/// and looking every [`RECONNECT_CHECK`] whether the connection was
/// re-established since the request went out.
async fn wait_reply(
    client: &Client,
    replies: &mut Replies,
    sent: Sent,
    reply_timeout: Duration,
) -> Result<Waited, DirectGetError> {
    let deadline = Instant::now() + reply_timeout;
    loop {
        let check = deadline.min(Instant::now() + RECONNECT_CHECK);
        match tokio::time::timeout_at(check, replies.next()).await {
            Ok(Some(message)) => return Ok(Waited::Reply(message)),
            Ok(None) => return Err(DirectGetError::Closed),
            Err(_) if connects(client) != sent.connects => return Ok(Waited::Reconnected),
            Err(_) if Instant::now() >= deadline => {
                return Err(DirectGetError::Timeout(reply_timeout));
            }
            Err(_) => {}
        }
    }
}

/// Reads every message of a subject, page by page: call [`DirectGet::next`]
/// until it answers `None`.
#[derive(Debug)]
pub struct DirectGet {
    client: Client,
    api_subject: String,
    subject: String,
    reply_timeout: Duration,
    max_bytes: Option<usize>,
    up_to_seq: u64,
    limit: usize,
    /// Where the next request starts.
    from_seq: u64,
    /// The replies of the request in flight, and its connection then.
    replies: Option<(Replies, Sent)>,
    /// Where replies arrive, when shared.
    inbox: Option<SharedInbox>,
    /// The last message of the current page.
    page_last_seq: Option<u64>,
    pages: usize,
    read: usize,
    done: bool,
}

impl DirectGet {
    /// Every message of `subject` in `stream` from sequence 1 on, waiting at
    /// most `reply_timeout` for each reply.
    pub fn new(client: &Client, stream: &str, subject: &str, reply_timeout: Duration) -> Self {
        DirectGet {
            client: client.clone(),
            api_subject: format!("$JS.API.DIRECT.GET.{stream}"),
            subject: subject.to_owned(),
            reply_timeout,
            max_bytes: None,
            up_to_seq: u64::MAX,
            limit: usize::MAX,
            from_seq: 1,
            replies: None,
            inbox: None,
            page_last_seq: None,
            pages: 0,
            read: 0,
            done: false,
        }
    }

    /// Asks the server for at most `max_bytes` of messages per request (it
    /// pages the rest), so huge messages cannot flood the connection.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = Some(max_bytes);
        self
    }

    /// Replies arrive on `inbox` instead of a subscription per request.
    pub fn shared_inbox(mut self, inbox: &SharedInbox) -> Self {
        self.inbox = Some(inbox.clone());
        self
    }

    /// Reading starts at stream sequence `seq` (default 1).
    pub fn from_seq(mut self, seq: u64) -> Self {
        self.from_seq = seq.max(1);
        self
    }

    /// Nothing stored after stream sequence `seq` is read.
    pub fn up_to_seq(mut self, seq: u64) -> Self {
        self.up_to_seq = seq;
        self
    }

    /// At most `messages` messages are read (and asked for).
    pub fn limit(mut self, messages: usize) -> Self {
        self.limit = messages;
        self
    }

    /// The next message, in stream order; `None` when there are no more.
    pub async fn next(&mut self) -> Result<Option<DirectMessage>, DirectGetError> {
        loop {
            if self.done || self.read >= self.limit {
                self.finish();
                return Ok(None);
            }
            let (mut replies, sent) = match self.replies.take() {
                Some(in_flight) => in_flight,
                None => self.send_request().await?,
            };
            let waited = wait_reply(&self.client, &mut replies, sent, self.reply_timeout).await?;
            let Waited::Reply(message) = waited else {
                // Asked again from after the last message read.
                if let Some(last) = self.page_last_seq {
                    self.next_page_from(last);
                }
                continue;
            };
            self.replies = Some((replies, sent));
            match classify(&message)? {
                Reply::NotFound => self.finish(),
                Reply::EndOfBatch { pending } => match self.page_last_seq {
                    Some(last) if pending > 0 => self.next_page_from(last),
                    _ => self.finish(),
                },
                Reply::Message { seq, .. } if seq > self.up_to_seq => {
                    // Stored after the snapshot; messages come in stream
                    // order, so nothing after it counts either.
                    self.finish();
                }
                Reply::Message { seq, batched } => {
                    self.read += 1;
                    self.page_last_seq = Some(seq);
                    if !batched {
                        // No batch support: one message per request.
                        self.next_page_from(seq);
                    }
                    return Ok(Some(DirectMessage { seq, message }));
                }
            }
        }
    }

    /// Sends the request of the next page and returns its replies.
    async fn send_request(&mut self) -> Result<(Replies, Sent), DirectGetError> {
        if self.pages == PAGES_MAX {
            return Err(DirectGetError::TooManyPages(PAGES_MAX));
        }
        self.pages += 1;
        let (inbox, replies) = match &self.inbox {
            Some(shared) => {
                let (subject, registration) = shared.open();
                (subject, Replies::Shared(registration))
            }
            None => {
                let inbox = self.client.new_inbox();
                let replies = self
                    .client
                    .subscribe(inbox.clone())
                    .await
                    .map_err(DirectGetError::Subscribe)?;
                (inbox, Replies::Own(replies))
            }
        };
        let batch = BATCH_MESSAGES.min(self.limit - self.read);
        let sent = Sent::now(&self.client);
        self.client
            .publish_with_reply(
                self.api_subject.clone(),
                inbox,
                request(&self.subject, self.from_seq, batch, self.max_bytes),
            )
            .await
            .map_err(DirectGetError::Request)?;
        self.page_last_seq = None;
        Ok((replies, sent))
    }

    fn next_page_from(&mut self, last_seq: u64) {
        self.from_seq = last_seq.saturating_add(1);
        self.replies = None;
    }

    fn finish(&mut self) {
        self.done = true;
        self.replies = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::{HeaderMap, StatusCode};

    fn reply(status: Option<u16>, headers: &[(&str, &str)]) -> Message {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        Message {
            subject: "_INBOX.x".into(),
            reply: None,
            payload: Bytes::from_static(b"{}"),
            headers: Some(map),
            status: status.map(|s| StatusCode::from_u16(s).expect("a valid status")),
            description: status.map(|_| "No Results".to_owned()),
            length: 2,
        }
    }

    #[test]
    fn a_request_names_the_subject_the_start_and_the_page_size() {
        let r: serde_json::Value =
            serde_json::from_slice(&request("ledger.deliveries.r.o", 7, 256, Some(1024))).unwrap();
        assert_eq!(
            r,
            serde_json::json!({"seq": 7, "next_by_subj": "ledger.deliveries.r.o",
                "batch": 256, "max_bytes": 1024})
        );
        let r: serde_json::Value =
            serde_json::from_slice(&request("orders.*", 1, 3, None)).unwrap();
        assert_eq!(
            r,
            serde_json::json!({"seq": 1, "next_by_subj": "orders.*", "batch": 3})
        );
    }

    #[test]
    fn a_multi_last_request_names_the_subjects_the_snapshot_and_where_to_resume() {
        let r: serde_json::Value = serde_json::from_slice(&multi_last_request(
            &["ledger.deliveries.r.a", "ledger.deliveries.r.b"],
            99,
            1,
        ))
        .unwrap();
        assert_eq!(
            r,
            serde_json::json!({"multi_last": ["ledger.deliveries.r.a", "ledger.deliveries.r.b"],
                "up_to_seq": 99, "batch": 2})
        );
        let r: serde_json::Value =
            serde_json::from_slice(&multi_last_request(&["x"], 99, 42)).unwrap();
        assert_eq!(
            r,
            serde_json::json!({"multi_last": ["x"], "up_to_seq": 99, "batch": 1, "seq": 42})
        );
    }

    #[test]
    fn replies_are_messages_ends_of_batch_or_nothing() {
        let m = reply(
            None,
            &[
                ("Nats-Sequence", "42"),
                ("Nats-Num-Pending", "3"),
                ("Nats-Subject", "ledger.postings.r.o"),
                ("Nats-Time-Stamp", "2026-11-22T10:00:00.5Z"),
            ],
        );
        assert_eq!(
            classify(&m).unwrap(),
            Reply::Message {
                seq: 42,
                batched: true
            }
        );
        let dm = DirectMessage {
            seq: 42,
            message: m,
        };
        assert_eq!(dm.subject(), "ledger.postings.r.o");
        assert_eq!(
            dm.time(),
            Some(time::macros::datetime!(2026-11-22 10:00:00.5 UTC))
        );
        assert_eq!(
            classify(&reply(Some(200), &[("Nats-Sequence", "5")])).unwrap(),
            Reply::Message {
                seq: 5,
                batched: false
            },
            "a server without batch support says nothing of what is left"
        );
        assert_eq!(
            classify(&reply(Some(204), &[("Nats-Num-Pending", "12")])).unwrap(),
            Reply::EndOfBatch { pending: 12 }
        );
        assert_eq!(
            classify(&reply(Some(204), &[])).unwrap(),
            Reply::EndOfBatch { pending: 0 }
        );
        assert_eq!(classify(&reply(Some(404), &[])).unwrap(), Reply::NotFound);
    }

    #[test]
    fn a_failed_or_unnumbered_reply_is_an_error() {
        let e = classify(&reply(Some(408), &[])).unwrap_err();
        assert_eq!(e.to_string(), "status 408 No Results");
        let e = classify(&reply(None, &[("Nats-Sequence", "x")])).unwrap_err();
        assert!(matches!(e, DirectGetError::NoSequence), "{e}");
        let dm = DirectMessage {
            seq: 1,
            message: reply(None, &[]),
        };
        assert_eq!((dm.subject(), dm.time()), ("", None));
    }
}
