//! JetStream layout: connection, streams, subjects and headers.
//!
//! Two streams hold everything (SPEC diagram):
//!
//! | stream | subjects | written by |
//! |---|---|---|
//! | `ORDERS` | `<prefix>.<order_id>` | producers, `ledgerline publish` |
//! | `LEDGER` | `ledger.postings.<R>.<O>` | aggregator |
//! |          | `ledger.registry_data.<R>.<O>` | dispatcher (each success) |
//! | | `ledger.deliveries.<R>.<O>` | dispatcher (each attempt) |
//! | | `ledger.rejected.<reason>` | aggregator, `publish` |
//! | | `ledger.alerts.<R>` | dispatcher (dead letters) |
//! | | `ledger.control.<R>.<O>` | `redeliver` (operator actions) |
//! | | `ledger.history.<kind>.<id>` | every revision of a registry or source, secrets as `***` ([`crate::registry_store::archive`]) |
//!
//! Both are file-backed with `limits` retention and **no age or size limit**:
//! they are the system of record (every input, posting, response and failure),
//! so nothing is dropped behind an auditor's back; archiving is an operator's
//! decision (see docs/operations.md). Duplicate windows are 10 minutes, well
//! above the 2-minute minimum, to cover a producer retrying through a short
//! outage. `allow_direct` is on so the last message of a subject (the last
//! posting of an order) is one cheap request, and every message of a
//! subject a few batched ones ([`direct`]).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};

use crate::config::Config;

pub mod direct;
pub mod orders;
pub mod settings;

pub use orders::OrderSubjects;

/// A consumer message handed back when a component stops (or is stopped
/// for a registry) comes back after this delay, not at once: at once, the
/// server hands it straight back to the stopping component's pull request,
/// still open, where it would wait out the whole ack wait before anyone
/// else could have it.
pub const HAND_BACK_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Name of the input stream.
pub const ORDERS_STREAM: &str = "ORDERS";
/// Name of the ledger stream.
pub const LEDGER_STREAM: &str = "LEDGER";
/// JetStream duplicate window of both streams.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Largest message the streams accept, in bytes. Inputs over 1 MiB are
/// rejected by the aggregator (SPEC 1) but must reach it to be rejected with
/// a reason; the server's own `max_payload` (1 MB by default) still applies,
/// and bigger rejected messages are stored truncated (see [`rejected_body`]).
pub const STREAM_MAX_MSG_BYTES: i32 = 8 * 1024 * 1024;

/// Header: the reason slug of a rejected message.
pub const H_REASON: &str = "Ledgerline-Reason";
/// Header: the field a rejection names (JSON path).
pub const H_FIELD: &str = "Ledgerline-Field";
/// Header: the human-readable reason.
pub const H_MESSAGE: &str = "Ledgerline-Message";
/// Header: the event id, when known.
pub const H_EVENT_ID: &str = "Ledgerline-Event-Id";
/// Header: where a rejected message came from (`orders.<id>#<seq>` or
/// `publish:<file>:<line>`).
pub const H_SOURCE: &str = "Ledgerline-Source";
/// Header: size in bytes of the original message.
pub const H_ORIGINAL_SIZE: &str = "Ledgerline-Original-Size";
/// Header: `true` when the stored body is a prefix of the original.
pub const H_TRUNCATED: &str = "Ledgerline-Truncated";
/// Header: SHA-256 (hex) of the original message.
pub const H_ORIGINAL_SHA256: &str = "Ledgerline-Original-Sha256";
/// Header: the record kind on LEDGER subjects (`posting`, `delivery`, …).
pub const H_KIND: &str = "Ledgerline-Kind";

/// Backoff between tries of a start-up step while NATS is unreachable:
/// first, cap.
pub const START_RETRY_MIN: Duration = Duration::from_millis(250);
pub const START_RETRY_MAX: Duration = Duration::from_secs(5);

/// Runs a start-up `step` until it succeeds, waiting [`START_RETRY_MIN`]
/// (doubling up to [`START_RETRY_MAX`]) after each failure, which is logged
/// with `what`; `None` once `shutdown` is cancelled. A component that
/// (re)starts while NATS is away waits for it instead of failing the whole
/// process.
pub async fn until_ready<T, E, F, Fut>(
    what: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    mut step: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = START_RETRY_MIN;
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = step() => r,
        };
        match result {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "{what} failed (NATS unreachable?); retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(START_RETRY_MAX);
            }
        }
    }
}

/// Every message of `stream` on `filter` as it stands now, in stream order,
/// through an ordered consumer: `f(message, stream sequence, stored at)`.
/// Messages stored after the call starts may or may not be seen.
pub async fn for_each_message(
    stream: &stream::Stream,
    filter: &str,
    mut f: impl FnMut(&jetstream::Message, u64, time::OffsetDateTime),
) -> Result<(), async_nats::Error> {
    use futures::StreamExt;
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    if consumer.info().await?.num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let info = msg.info()?;
        let (seq, left, at) = (info.stream_sequence, info.pending, info.published);
        f(&msg, seq, at);
        if left == 0 {
            break;
        }
    }
    Ok(())
}

/// The first message on `subject` at or after stream sequence `from` (one
/// Direct Get), or `None` when there is none.
pub async fn next_on_subject(
    stream: &stream::Stream,
    subject: &str,
    from: u64,
) -> Result<Option<jetstream::message::StreamMessage>, stream::DirectGetError> {
    match stream
        .direct_get_next_for_subject(subject, Some(from))
        .await
    {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Subjects of the LEDGER stream.
pub mod subjects {
    /// Every subject of the LEDGER stream.
    pub const LEDGER_ALL: &str = "ledger.>";
    /// Every posting.
    pub const POSTINGS_ALL: &str = "ledger.postings.>";
    /// Every delivery attempt record.
    pub const DELIVERIES_ALL: &str = "ledger.deliveries.>";
    /// Every registry_data record.
    pub const REGISTRY_DATA_ALL: &str = "ledger.registry_data.>";
    /// Every rejected input.
    pub const REJECTED_ALL: &str = "ledger.rejected.>";

    pub fn postings(registry: &str, order: &str) -> String {
        format!("ledger.postings.{registry}.{order}")
    }
    pub fn registry_data(registry: &str, order: &str) -> String {
        format!("ledger.registry_data.{registry}.{order}")
    }
    pub fn deliveries(registry: &str, order: &str) -> String {
        format!("ledger.deliveries.{registry}.{order}")
    }
    pub fn control(registry: &str, order: &str) -> String {
        format!("ledger.control.{registry}.{order}")
    }
    pub fn rejected(reason: &str) -> String {
        format!("ledger.rejected.{reason}")
    }
    pub fn alerts(registry: &str) -> String {
        format!("ledger.alerts.{registry}")
    }
    /// `(kind, registry, order)` of a `ledger.<kind>.<R>.<O>` subject.
    pub fn parse_order_subject(subject: &str) -> Option<(&str, &str, &str)> {
        let mut it = subject.split('.');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ledger"), Some(kind), Some(r), Some(o), None) => Some((kind, r, o)),
            _ => None,
        }
    }
}

/// Why talking to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot read NATS credentials {path}: {source}")]
    Creds {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create stream {stream}: {source}")]
    Stream {
        stream: &'static str,
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    #[error("cannot read stream {stream}: {source}")]
    GetStream {
        stream: &'static str,
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    #[error(
        "stream {stream} exists with settings ledgerline cannot run on ({problems}); \
         ledgerline never changes an existing stream: fix it with `nats stream edit {stream}` \
         or your deployment's stream definition"
    )]
    StreamSettings {
        stream: &'static str,
        problems: String,
    },
}

/// Connects with the credentials, token and TLS settings of `config`.
///
/// With retry_on_initial_connect this returns at once and the client keeps
/// connecting in the background: a long-running service outlives a NATS
/// restart or a late start. One-shot commands use [`connect_once`].
pub async fn connect(config: &Config) -> Result<async_nats::Client, NatsError> {
    let opts = connect_options(config)
        .await?
        .retry_on_initial_connect()
        .max_reconnects(None);
    open(config, opts).await
}

/// Connects without retrying the first connection: for one-shot commands
/// (publish, export, verify) where an unreachable server is an error now.
pub async fn connect_once(config: &Config) -> Result<async_nats::Client, NatsError> {
    let opts = connect_options(config)
        .await?
        .connection_timeout(Duration::from_secs(5));
    open(config, opts).await
}

/// Name, credentials, token and TLS roots: what both connection kinds share.
async fn connect_options(config: &Config) -> Result<async_nats::ConnectOptions, NatsError> {
    crate::tls::install_crypto_provider();
    let mut opts =
        async_nats::ConnectOptions::new().name(concat!("ledgerline/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &config.nats_creds {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| NatsError::Creds {
                path: path.display().to_string(),
                source,
            })?;
    }
    if let Some(token) = &config.nats_token {
        opts = opts.token(token.expose().to_owned());
    }
    if let Some(ca) = &config.nats_tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(opts)
}

async fn open(
    config: &Config,
    opts: async_nats::ConnectOptions,
) -> Result<async_nats::Client, NatsError> {
    let (urls, credentials) = split_url_credentials(&config.nats_url);
    let opts = match credentials {
        Some(UrlCredentials::UserPassword { user, password }) => {
            opts.user_and_password(user, password)
        }
        Some(UrlCredentials::Token(token)) => opts.token(token),
        None => opts,
    };
    // Each server of the list on its own: async-nats parses a single
    // string as one URL (a comma-separated list would be "invalid port").
    let servers: Vec<&str> = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    opts.connect(servers)
        .await
        .map_err(|source| NatsError::Connect {
            url: redact_url(&config.nats_url),
            source,
        })
}

/// Credentials written in a NATS URL.
#[derive(Debug, PartialEq, Eq)]
enum UrlCredentials {
    /// `nats://user:password@host`
    UserPassword { user: String, password: String },
    /// `nats://token@host`
    Token(String),
}

/// Takes credentials out of a (comma-separated) NATS URL: the URLs without
/// them, and the first credentials found (percent-decoded), for the
/// connect options. The client never sees them in a URL: async-nats logs
/// its server URLs at debug level, and does not read credentials there.
fn split_url_credentials(urls: &str) -> (String, Option<UrlCredentials>) {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut found = None;
    let bare: Vec<String> = urls
        .split(',')
        .map(|one| {
            let one = one.trim();
            let Ok(mut u) = url::Url::parse(one) else {
                return one.to_owned();
            };
            if u.username().is_empty() && u.password().is_none() {
                return one.to_owned();
            }
            let credentials = match u.password() {
                Some(p) => UrlCredentials::UserPassword {
                    user: decode(u.username()),
                    password: decode(p),
                },
                None => UrlCredentials::Token(decode(u.username())),
            };
            found.get_or_insert(credentials);
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        })
        .collect();
    (bare.join(","), found)
}

/// `url` with any user name and password replaced by `***`, for errors and
/// logs (`nats://user:pass@host` must never be printed).
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| match url::Url::parse(one.trim()) {
            Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
                let _ = u.set_username("***");
                let _ = u.set_password(None);
                u.to_string()
            }
            Ok(_) => one.trim().to_owned(),
            Err(_) => "<unparseable url>".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The ORDERS stream configuration for its subjects (with the partitions'
/// subject transform when there are partitions), with `replicas` replicas.
pub fn orders_stream_config(orders: &OrderSubjects, replicas: usize) -> stream::Config {
    stream::Config {
        subject_transform: orders.transform(),
        ..stream_config(
            ORDERS_STREAM,
            "ledgerline input events, one subject per order",
            orders.all(),
            replicas,
        )
    }
}

/// The LEDGER stream configuration, with `replicas` replicas.
pub fn ledger_stream_config(replicas: usize) -> stream::Config {
    stream_config(
        LEDGER_STREAM,
        "ledgerline postings, responses, delivery attempts, rejections, alerts",
        subjects::LEDGER_ALL.to_owned(),
        replicas,
    )
}

/// What ORDERS and LEDGER share: file storage kept by limits, the
/// duplicate window, the message size limit and Direct Get.
fn stream_config(
    name: &str,
    description: &str,
    subjects: String,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        num_replicas: replicas.max(1),
        name: name.to_owned(),
        description: Some(description.to_owned()),
        subjects: vec![subjects],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_message_size: STREAM_MAX_MSG_BYTES,
        allow_direct: true,
        ..Default::default()
    }
}

/// Opens both streams, creating a missing one with `replicas` replicas
/// (`stream_replicas`, SPEC 7). An existing stream is never updated: its
/// settings are the operator's, reviewed by [`settings::review`]; what
/// ledgerline cannot run on fails here, the rest is logged as a warning.
/// Safe to run at every start-up.
pub async fn ensure_streams(
    js: &jetstream::Context,
    orders: &OrderSubjects,
    replicas: usize,
) -> Result<(stream::Stream, stream::Stream), NatsError> {
    let orders = ensure_stream(js, ORDERS_STREAM, orders_stream_config(orders, replicas)).await?;
    let ledger = ensure_stream(js, LEDGER_STREAM, ledger_stream_config(replicas)).await?;
    Ok((orders, ledger))
}

/// Opens the stream `name`, or creates it with `config` when it does not
/// exist; an existing one is reviewed against `config`, not changed.
async fn ensure_stream(
    js: &jetstream::Context,
    name: &'static str,
    config: stream::Config,
) -> Result<stream::Stream, NatsError> {
    let get_err = |source| NatsError::GetStream {
        stream: name,
        source,
    };
    let stream = match js.get_stream(name).await {
        Ok(stream) => stream,
        Err(e) if is_not_found(&e) => match js.create_stream(config.clone()).await {
            Ok(_) => return js.get_stream(name).await.map_err(get_err),
            // Another process may have created it meanwhile: review theirs.
            Err(source) => js.get_stream(name).await.map_err(|_| NatsError::Stream {
                stream: name,
                source,
            })?,
        },
        Err(e) => return Err(get_err(e)),
    };
    let existing = &stream.cached_info().config;
    let review = settings::review(existing, &config);
    for d in &review.warned {
        tracing::warn!(stream = name, setting = d.setting, "{d}");
    }
    if !review.refused.is_empty() {
        return Err(NatsError::StreamSettings {
            stream: name,
            problems: review
                .refused
                .iter()
                .map(|d| format!("{}: {}", d.setting, d.message))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(stream)
}

/// True when `e` says the stream does not exist (JetStream error 10059).
fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// How long a pull request of the aggregator's and the dispatchers'
/// consumers lives. A pull request can be lost (sent while a clustered
/// consumer has no leader yet, or dropped with a leader that died); the
/// client notices only when it should have expired (plus 5 s) and then
/// asks again, so this bounds how long a consumer can sit idle with work
/// pending: ≈ 10 s instead of the client's default 30 (+5) s. An idle
/// consumer asks again this often (one small request).
pub const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The idle heartbeat of those pull requests (under half their expiry).
pub const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// How long the server waits for an ack before handing a message out
/// again, for the aggregator's and the dispatchers' consumers, unless
/// `ack_wait` says otherwise. Held messages are progress-acked, so it only
/// matters after a crash: that is how long a crashed process's in-flight
/// events and postings wait before they are picked up again.
pub const ACK_WAIT_DEFAULT: Duration = Duration::from_secs(30);

/// How often a publish answered "in process" ([`is_duplicate_in_process`])
/// is sent again, and how long apart.
const IN_PROCESS_RETRIES: u32 = 50;
const IN_PROCESS_PAUSE: Duration = Duration::from_millis(20);
/// How often a publish that found no stream is sent again, and how long
/// apart: a cluster answers so for a moment after a stream is created
/// (until every server knows its subjects) and while its leader changes.
const NO_STREAM_RETRIES: u32 = 30;
const NO_STREAM_PAUSE: Duration = Duration::from_millis(100);

/// Whether a publish was refused because a message with the same
/// `Nats-Msg-Id` is being stored at this very moment: a clustered stream
/// answers so (409, error code 10158) when two publishes of one id meet,
/// where a single server answers the second with a duplicate ack. It is a
/// duplicate in the making, not yet a definitive answer.
pub fn is_duplicate_in_process(e: &jetstream::context::PublishError) -> bool {
    e.kind() == jetstream::context::PublishErrorKind::Other
        && std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|j| {
                j.error_code() == jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
            })
}

/// Awaits `ack`, the ack of `message` published on `subject`; while it is
/// a duplicate in process ([`is_duplicate_in_process`]), or no stream
/// answered (a cluster's stream just created or changing leader), publishes
/// the same message again a moment later, until the stream answers for
/// good: stored, or a duplicate of the message that was in process then
/// (or, after [`NO_STREAM_RETRIES`], that there is no stream).
pub async fn ack_resolving_in_process(
    js: &jetstream::Context,
    subject: &str,
    message: &jetstream::message::PublishMessage,
    ack: jetstream::context::PublishAckFuture,
) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
    let mut result = ack.await;
    let (mut in_process, mut no_stream) = (0, 0);
    loop {
        let pause = match &result {
            Err(e) if is_duplicate_in_process(e) && in_process < IN_PROCESS_RETRIES => {
                in_process += 1;
                IN_PROCESS_PAUSE
            }
            Err(e)
                if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                    && no_stream < NO_STREAM_RETRIES =>
            {
                no_stream += 1;
                NO_STREAM_PAUSE
            }
            _ => return result,
        };
        tokio::time::sleep(pause).await;
        result = match js.send_publish(subject.to_owned(), message.clone()).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
    }
}

/// A JetStream publish with our own headers plus a `Nats-Msg-Id` (and,
/// optionally, `Nats-Expected-Last-Subject-Sequence`).
///
/// Always build publishes through this: async-nats' `PublishMessage::headers`
/// *replaces* the header map, so calling it after `message_id` silently drops
/// the deduplication and concurrency guards.
pub fn guarded_message(
    headers: HeaderMap,
    msg_id: &str,
    expected_last_subject_seq: Option<u64>,
    payload: bytes::Bytes,
) -> async_nats::jetstream::message::PublishMessage {
    let mut m = async_nats::jetstream::message::PublishMessage::build()
        .headers(headers)
        .message_id(msg_id);
    if let Some(seq) = expected_last_subject_seq {
        m = m.expected_last_subject_sequence(seq);
    }
    m.payload(payload)
}

/// A header value made safe: no CR/LF, at most 1,000 characters.
pub fn header_value(s: &str) -> String {
    const MAX: usize = 1_000;
    s.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .take(MAX)
        .collect()
}

/// The body and headers to store for a rejected message: the original bytes
/// when they fit under `max_bytes`, else a prefix, marked truncated, with the
/// original size and SHA-256 so it can still be matched to its source.
pub fn rejected_body(original: &[u8], max_bytes: usize) -> (bytes::Bytes, HeaderMap) {
    use sha2::{Digest, Sha256};
    let mut h = HeaderMap::new();
    h.insert(H_ORIGINAL_SIZE, original.len().to_string().as_str());
    let hex: String = Sha256::digest(original)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    h.insert(H_ORIGINAL_SHA256, hex.as_str());
    if original.len() <= max_bytes {
        (bytes::Bytes::copy_from_slice(original), h)
    } else {
        h.insert(H_TRUNCATED, "true");
        (bytes::Bytes::copy_from_slice(&original[..max_bytes]), h)
    }
}

/// Room left for headers when storing a rejected message under the server's
/// `max_payload`.
pub const REJECTED_HEADER_ROOM_BYTES: usize = 8 * 1024;

/// Largest rejected body to store given the server's `max_payload`.
pub fn rejected_max_bytes(client: &async_nats::Client) -> usize {
    let max_payload = client.server_info().max_payload;
    max_payload
        .saturating_sub(REJECTED_HEADER_ROOM_BYTES)
        .clamp(1024, STREAM_MAX_MSG_BYTES as usize)
}

/// Largest LEDGER record the dispatcher stores, given the server's
/// `max_payload` (1 MiB assumed before the first connection).
pub fn record_max_bytes(client: &async_nats::Client) -> usize {
    let max_payload = match client.server_info().max_payload {
        0 => 1024 * 1024,
        n => n,
    };
    max_payload
        .saturating_sub(REJECTED_HEADER_ROOM_BYTES)
        .min(STREAM_MAX_MSG_BYTES as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_go_to_the_options_not_the_url() {
        assert_eq!(
            split_url_credentials("nats://a.example:4222, nats://us%40r:p%3Ass@b.example:4222"),
            (
                "nats://a.example:4222,nats://b.example:4222".to_owned(),
                Some(UrlCredentials::UserPassword {
                    user: "us@r".into(),
                    password: "p:ss".into()
                })
            )
        );
        assert_eq!(
            split_url_credentials("tls://s3cr3t@c.example:4222"),
            (
                "tls://c.example:4222".to_owned(),
                Some(UrlCredentials::Token("s3cr3t".into()))
            )
        );
        assert_eq!(
            split_url_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".to_owned(), None)
        );
    }

    #[test]
    fn order_subjects_round_trip() {
        let s = subjects::postings("xero-eu", "o-1");
        assert_eq!(s, "ledger.postings.xero-eu.o-1");
        assert_eq!(
            subjects::parse_order_subject(&s),
            Some(("postings", "xero-eu", "o-1"))
        );
        assert_eq!(subjects::parse_order_subject("ledger.alerts.x"), None);
    }

    #[test]
    fn oversized_rejections_are_stored_truncated_with_their_hash() {
        let big = vec![b'x'; 5000];
        let (body, h) = rejected_body(&big, 1000);
        assert_eq!(body.len(), 1000);
        assert_eq!(h.get(H_TRUNCATED).map(|v| v.as_str()), Some("true"));
        assert_eq!(h.get(H_ORIGINAL_SIZE).map(|v| v.as_str()), Some("5000"));
        let (body, h) = rejected_body(b"{}", 1000);
        assert_eq!(&body[..], b"{}");
        assert!(h.get(H_TRUNCATED).is_none());
    }

    #[test]
    fn header_values_never_break_lines() {
        assert_eq!(header_value("a\r\nb"), "a  b");
    }
}
