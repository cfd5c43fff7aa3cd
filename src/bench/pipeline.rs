//! (c): the whole pipeline in this process, as `ledgerline run` runs it
//! (`service::run_with_listener`, aggregator and dispatcher), against a
//! fresh nats-server and two lean receivers (one signed, [`BenchReceiver`]): the demo
//! dataset published, then waited for until every posting is delivered
//! with its registry_data stored.
//!
//! Two phases on the same pipeline: a burst (every event published at
//! once: postings/s, CPU, RSS, and the latency of a backlog), then, when
//! asked, a paced run at half the median burst rate of this and the
//! earlier rounds' bursts (the latency a steady load sees; one lucky fast
//! burst alone would pace it near saturation).
//!
//! Latency is per posting, from the moment its event was published to the
//! moment the receiver accepted it: the event is found by the posting's
//! `source_seq` (its ORDERS sequence), the posting by its idempotency key.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream::Stream};
use bytes::Bytes;
use futures::StreamExt;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::usage::{self, Usage};
use super::{BenchError, BenchProgress, err};
use crate::config::{Config, Settings};
use crate::demo::{count, dataset};
use crate::natsd::{MessageCounts, NatsServer};
use crate::records::StoredPosting;
use crate::secret::Secret;
use crate::service::{Component, InProcess};
use crate::streams::{LEDGER_STREAM, ORDERS_STREAM, subjects};

/// The signing secret of the bench's signed registry (not a real secret).
pub const BENCH_SECRET: &str = "whsec_YmVuY2gtc2VjcmV0LWZvci1sZWRnZXJsaW5lISE=";
/// Registries the pipeline delivers to.
pub const REGISTRIES: usize = 2;
/// Publish acks awaited at once (as `ledgerline publish`).
pub const PUBLISH_WINDOW: usize = 256;
/// Request bodies kept for the raw HTTP run.
const BODIES_KEPT: usize = 2_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub orders: usize,
    /// `[delivery] max_in_flight` (per registry).
    pub max_in_flight: usize,
    /// How long the paced phase publishes (zero: no paced phase).
    pub paced: Duration,
    /// Burst postings/s of earlier rounds: the paced phase runs at half
    /// the median of these and this round's burst.
    pub earlier_bursts: Vec<f64>,
    /// Longest wait for a phase to be delivered.
    pub settle_limit: Duration,
}

/// p50 / p99 / p99.9 of a set of durations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles of `v` (sorted here).
    pub fn of(mut v: Vec<Duration>) -> Self {
        v.sort_unstable();
        let at = |q: f64| -> Duration {
            if v.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1]
        };
        Self {
            samples: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
        }
    }
}

/// The paced phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Paced {
    pub events_per_s: f64,
    pub postings_per_s: f64,
    pub latency: Percentiles,
}

/// What the pipeline did.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineFigures {
    pub orders: usize,
    pub events: usize,
    pub postings: u64,
    pub elapsed: Duration,
    pub postings_per_s: f64,
    pub burst_latency: Percentiles,
    pub paced: Option<Paced>,
    /// CPU of this process (pipeline, receivers and publisher) in the burst.
    pub cpu_own: Duration,
    /// CPU of nats-server in the burst (`None` if it cannot be read).
    pub cpu_nats: Option<Duration>,
    /// Messages nats-server received and sent in the burst (`None` if its
    /// monitoring port did not answer).
    pub nats_messages: Option<MessageCounts>,
    pub peak_rss_own: Option<u64>,
    pub peak_rss_nats: Option<u64>,
    /// Sizes of the stored postings (bytes), for the raw JetStream run.
    pub posting_sizes: Vec<usize>,
    /// Request bodies as sent, for the raw HTTP run.
    pub bodies: Vec<Bytes>,
}

impl PipelineFigures {
    /// CPU seconds (this process + nats-server) per 1,000 postings.
    pub fn cpu_per_1000(&self) -> f64 {
        let cpu = self.cpu_own + self.cpu_nats.unwrap_or_default();
        cpu.as_secs_f64() * 1000.0 / (self.postings.max(1) as f64)
    }
}

/// A receiver of the pipeline run: what an accounting webhook does for
/// each posting, and nothing more. It checks the Standard Webhooks
/// signature (when it has a secret, within the 5-minute tolerance), reads
/// the posting's `order_id`, `idempotency_key` and `registry_data`, books
/// it in the order's journal (answer: the journal's id and next revision; a
/// repeated key gets its first answer again), counts a chain break when
/// `registry_data` is not its last answer for the order, and notes when
/// each key was accepted (the latency) and the first [`BODIES_KEPT`] bodies
/// (the raw HTTP run). Unlike the sample receiver (`ledgerline receiver`,
/// [`crate::receiver`]), it does not keep every request with its headers
/// and body: that is for tests and the demo, and cost the bench ≈ 10 % of
/// its CPU and memory growing with the burst.
#[derive(Clone)]
pub(super) struct BenchReceiver {
    inner: Arc<BenchReceiverInner>,
}

struct BenchReceiverInner {
    key: Option<Vec<u8>>,
    books: Mutex<Books>,
    /// (idempotency key, when accepted) of every accepted request.
    receipts: Mutex<Vec<(String, OffsetDateTime)>>,
    bodies: Mutex<Vec<Bytes>>,
    accepted: AtomicU64,
    refused: AtomicU64,
    chain_breaks: AtomicU64,
}

#[derive(Default)]
struct Books {
    /// Order → (journal number, last revision).
    journals: HashMap<String, (u64, u64)>,
    /// Idempotency key → (journal number, revision) answered.
    answers: HashMap<String, (u64, u64)>,
}

/// What the receiver reads of a posting's body.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(borrow)]
    order_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    idempotency_key: std::borrow::Cow<'a, str>,
    #[serde(default)]
    registry_data: Chain,
}

/// A posting's registry_data as this receiver answers it (`{}` first).
#[derive(serde::Deserialize, Default, PartialEq)]
struct Chain {
    journal_id: Option<String>,
    revision: Option<u64>,
}

fn journal_id(n: u64) -> String {
    format!("J-{n:06}")
}

impl BenchReceiver {
    pub(super) fn new(secret: Option<&Secret>) -> Result<Self, BenchError> {
        let key = secret
            .map(crate::signing::decode_secret)
            .transpose()
            .map_err(|message| BenchError::Step {
                what: "the bench receiver's secret",
                message,
            })?;
        Ok(Self {
            inner: Arc::new(BenchReceiverInner {
                key,
                books: Mutex::new(Books::default()),
                receipts: Mutex::new(Vec::new()),
                bodies: Mutex::new(Vec::new()),
                accepted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                chain_breaks: AtomicU64::new(0),
            }),
        })
    }

    /// Serves `path` on a free loopback port until `stop`.
    pub(super) async fn serve(
        &self,
        path: &str,
        stop: CancellationToken,
    ) -> Result<SocketAddr, BenchError> {
        let router = axum::Router::new()
            .route(path, axum::routing::post(bench_webhook))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(err("binding a receiver port"))?;
        let addr = listener
            .local_addr()
            .map_err(err("binding a receiver port"))?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(addr)
    }

    pub(super) fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// When the last request was accepted.
    pub(super) fn last_receipt(&self) -> Option<OffsetDateTime> {
        lock(&self.inner.receipts).iter().map(|(_, at)| *at).max()
    }

    /// Postings that did not carry the registry_data answered to the one
    /// before.
    pub(super) fn chain_breaks(&self) -> u64 {
        self.inner.chain_breaks.load(Ordering::Relaxed)
    }

    fn signature_ok(&self, headers: &axum::http::HeaderMap, body: &[u8]) -> bool {
        use crate::receiver::{SignatureCheck, check_signature};
        matches!(
            check_signature(self.inner.key.as_deref(), headers, body),
            SignatureCheck::Valid | SignatureCheck::NotChecked
        )
    }

    /// Books `posting`: its answer (journal number, revision).
    fn book(&self, posting: &Incoming<'_>) -> (u64, u64) {
        let mut books = lock(&self.inner.books);
        if let Some(answer) = books.answers.get(posting.idempotency_key.as_ref()) {
            return *answer;
        }
        let next_journal = 123 + books.journals.len() as u64;
        let (journal, revision) = books
            .journals
            .entry(posting.order_id.as_ref().to_owned())
            .or_insert((next_journal, 0));
        let last = if *revision == 0 {
            Chain::default()
        } else {
            Chain {
                journal_id: Some(journal_id(*journal)),
                revision: Some(*revision),
            }
        };
        if posting.registry_data != last {
            self.inner.chain_breaks.fetch_add(1, Ordering::Relaxed);
        }
        *revision += 1;
        let answer = (*journal, *revision);
        books
            .answers
            .insert(posting.idempotency_key.as_ref().to_owned(), answer);
        answer
    }

    /// Bodies kept, receipts and chain breaks, once the receiver is done.
    fn take(&self) -> (Vec<Bytes>, Vec<(String, OffsetDateTime)>) {
        (
            std::mem::take(&mut *lock(&self.inner.bodies)),
            std::mem::take(&mut *lock(&self.inner.receipts)),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: valid whatever a panicking holder did.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn bench_webhook(
    axum::extract::State(rx): axum::extract::State<BenchReceiver>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let refuse = |status: axum::http::StatusCode| {
        rx.inner.refused.fetch_add(1, Ordering::Relaxed);
        status.into_response()
    };
    if !rx.signature_ok(&headers, &body) {
        return refuse(axum::http::StatusCode::UNAUTHORIZED);
    }
    let Ok(posting) = serde_json::from_slice::<Incoming<'_>>(&body) else {
        return refuse(axum::http::StatusCode::BAD_REQUEST);
    };
    let (journal, revision) = rx.book(&posting);
    let at = OffsetDateTime::now_utc();
    lock(&rx.inner.receipts).push((posting.idempotency_key.into_owned(), at));
    {
        let mut bodies = lock(&rx.inner.bodies);
        if bodies.len() < BODIES_KEPT {
            bodies.push(body.clone());
        }
    }
    rx.inner.accepted.fetch_add(1, Ordering::Relaxed);
    axum::Json(serde_json::json!({"journal_id": journal_id(journal), "revision": revision}))
        .into_response()
}

/// One `[[registry]]` of a bench configuration: every event type, no
/// rate limit to speak of (its maximum), `extra` TOML lines appended.
pub(super) fn registry_toml(id: &str, url: &str, group_by: &[&str], extra: &str) -> String {
    let url = toml::Value::String(url.to_owned());
    let group_by = toml::Value::Array(
        group_by
            .iter()
            .map(|g| toml::Value::String((*g).to_owned()))
            .collect(),
    );
    format!(
        "\n[[registry]]\nid = \"{id}\"\nurl = {url}\nevent_types = [\"*\"]\ngroup_by = {group_by}\nrate_limit_per_s = {}\n{extra}",
        crate::registry::RATE_LIMIT_PER_S_MAX
    )
}

/// The configuration of a bench pipeline: nats-server at `nats_url`,
/// receivers on loopback over plain HTTP, `max_in_flight`, and
/// `registries` (from [`registry_toml`]).
pub(super) fn bench_config(
    nats_url: &str,
    max_in_flight: usize,
    registries: &[String],
) -> Result<Settings, BenchError> {
    bench_config_with(nats_url, max_in_flight, "", registries)
}

/// [`bench_config`] with `top` (TOML lines of top-level keys) added.
pub(super) fn bench_config_with(
    nats_url: &str,
    max_in_flight: usize,
    top: &str,
    registries: &[String],
) -> Result<Settings, BenchError> {
    let nats_url = toml::Value::String(nats_url.to_owned());
    let text = format!(
        "nats_url = {nats_url}\nallow_insecure_http = true\n\
         allow_private_targets = [\"127.0.0.0/8\"]\n{top}\n\
         [delivery]\nmax_in_flight = {max_in_flight}\n{}",
        registries.concat()
    );
    Config::from_toml_with_env(&text, "bench", std::iter::empty())
        .map_err(err("bench configuration"))?
        .validate()
        .map_err(err("bench configuration"))
}

fn bench_settings(
    nats_url: &str,
    journal: SocketAddr,
    detail: SocketAddr,
    max_in_flight: usize,
) -> Result<Settings, BenchError> {
    let journal = registry_toml(
        "journal",
        &format!("http://{journal}/journal"),
        &["currency"],
        &format!("signing_secret = \"{BENCH_SECRET}\"\n"),
    );
    let detail = registry_toml(
        "detail",
        &format!("http://{detail}/detail"),
        &["currency", "product_id", "payment_method"],
        "",
    );
    bench_config(nats_url, max_in_flight, &[journal, detail])
}

/// Publishes `lines` (NDJSON events; unroutable ones skipped; `total` of
/// them, for progress), at most `pace` events/s when given, with
/// [`PUBLISH_WINDOW`] acks awaited at once; `on_ack` learns when each ORDERS
/// sequence was sent.
#[allow(clippy::too_many_arguments)]
pub(super) async fn publish_events(
    js: &jetstream::Context,
    prefix: &str,
    lines: impl Iterator<Item = String>,
    total: usize,
    pace: Option<f64>,
    mut on_ack: impl FnMut(OffsetDateTime, u64),
    progress: &mut dyn FnMut(&BenchProgress),
    stage: &str,
) -> Result<usize, BenchError> {
    let started = tokio::time::Instant::now();
    let mut window: VecDeque<(OffsetDateTime, String, PublishMessage, PublishAckFuture)> =
        VecDeque::with_capacity(PUBLISH_WINDOW);
    let mut published = 0;
    for (i, line) in lines.enumerate() {
        let Ok((order_id, event_id)) = crate::publish::route(line.as_bytes()) else {
            continue;
        };
        let subject = format!("{prefix}.{order_id}");
        let message = PublishMessage::build().message_id(event_id);
        if let Some(rate) = pace {
            tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        }
        if window.len() >= PUBLISH_WINDOW
            && let Some((sent, subject, message, ack)) = window.pop_front()
        {
            let ack = crate::streams::ack_resolving_in_process(js, &subject, &message, ack);
            on_ack(sent, ack.await.map_err(err("publishing events"))?.sequence);
        }
        let sent = OffsetDateTime::now_utc();
        let message = message.payload(Bytes::from(line));
        let ack = js
            .send_publish(subject.clone(), message.clone())
            .await
            .map_err(err("publishing events"))?;
        window.push_back((sent, subject, message, ack));
        published += 1;
        if published % 500 == 0 {
            progress(&BenchProgress {
                stage: stage.to_owned(),
                done: published as u64,
                total: total as u64,
            });
        }
    }
    for (sent, subject, message, ack) in window {
        let ack = crate::streams::ack_resolving_in_process(js, &subject, &message, ack);
        on_ack(sent, ack.await.map_err(err("publishing events"))?.sequence);
    }
    Ok(published)
}

/// Publishes `lines` as [`publish_events`] does, recording in `sent_at`
/// when each ORDERS sequence was sent.
async fn publish_lines(
    js: &jetstream::Context,
    prefix: &str,
    lines: &[String],
    pace: Option<f64>,
    sent_at: &mut HashMap<u64, OffsetDateTime>,
    progress: &mut dyn FnMut(&BenchProgress),
    stage: &str,
) -> Result<usize, BenchError> {
    let on_ack = |sent: OffsetDateTime, seq: u64| {
        sent_at.entry(seq).or_insert(sent);
    };
    publish_events(
        js,
        prefix,
        lines.iter().cloned(),
        lines.len(),
        pace,
        on_ack,
        progress,
        stage,
    )
    .await
}

/// Whether `consumer` on `stream` has nothing pending and nothing un-acked.
async fn consumer_idle(js: &jetstream::Context, stream: &str, consumer: &str) -> bool {
    match js
        .get_consumer_from_stream::<pull::Config, _, _>(consumer, stream)
        .await
    {
        Ok(mut c) => c
            .info()
            .await
            .map(|i| i.num_pending == 0 && i.num_ack_pending == 0)
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The aggregator's consumers on ORDERS: `aggregator`, or one per order
/// partition.
pub(super) fn aggregator_consumers(partitions: u32) -> Vec<String> {
    match partitions {
        0 => vec![crate::aggregator::CONSUMER.to_owned()],
        p => (0..p).map(crate::aggregator::partition_consumer).collect(),
    }
}

/// Waits until the aggregator has handled every event (`aggregators`: its
/// consumers on ORDERS, [`aggregator_consumers`]) and every posting has its
/// registry_data stored. Polled cheaply (consumer infos, the
/// receivers' count of accepted postings, `accepted`) so the measured CPU is
/// the pipeline's; LEDGER is counted once everything looks idle.
#[allow(clippy::too_many_arguments)]
pub(super) async fn settle(
    js: &jetstream::Context,
    ledger: &Stream,
    aggregators: &[String],
    registries: &[&str],
    accepted: &dyn Fn() -> u64,
    limit: Duration,
    progress: &mut dyn FnMut(&BenchProgress),
    stage: &str,
) -> Result<u64, BenchError> {
    let started = Instant::now();
    loop {
        let mut idle = true;
        for a in aggregators {
            idle = idle && consumer_idle(js, ORDERS_STREAM, a).await;
        }
        for r in registries {
            let name = format!("{}{r}", crate::dispatcher::CONSUMER_PREFIX);
            idle = idle && consumer_idle(js, LEDGER_STREAM, &name).await;
        }
        progress(&BenchProgress {
            stage: stage.to_owned(),
            done: accepted(),
            total: 0,
        });
        if idle {
            let postings = count(ledger, subjects::POSTINGS_ALL).await;
            let delivered = count(ledger, subjects::REGISTRY_DATA_ALL).await;
            progress(&BenchProgress {
                stage: stage.to_owned(),
                done: delivered,
                total: postings,
            });
            if postings > 0 && delivered >= postings {
                return Ok(postings);
            }
        }
        if started.elapsed() > limit {
            let postings = count(ledger, subjects::POSTINGS_ALL).await;
            let delivered = count(ledger, subjects::REGISTRY_DATA_ALL).await;
            return Err(BenchError::Step {
                what: "waiting for deliveries",
                message: format!("{delivered} of {postings} postings delivered after {limit:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every stored posting: idempotency key → (ORDERS seq of its event, size).
async fn read_postings(ledger: &Stream) -> Result<HashMap<String, (u64, usize)>, BenchError> {
    let mut out = HashMap::new();
    let mut c = ledger
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::POSTINGS_ALL.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(err("reading the postings"))?;
    if c.info().await.map(|i| i.num_pending).unwrap_or(0) == 0 {
        return Ok(out);
    }
    let mut msgs = c.messages().await.map_err(err("reading the postings"))?;
    while let Some(m) = msgs.next().await {
        let m = m.map_err(err("reading the postings"))?;
        if let Ok(sp) = StoredPosting::read_without_cumulative(&m.payload) {
            out.insert(
                sp.posting.idempotency_key.to_string(),
                (sp.source_seq, m.payload.len()),
            );
        }
        if m.info().map(|i| i.pending).unwrap_or(0) == 0 {
            break;
        }
    }
    Ok(out)
}

/// The service (aggregator and dispatcher) running in this process
/// against its own nats-server, as `ledgerline run` runs it.
pub(super) struct Running {
    server: NatsServer,
    pub js: jetstream::Context,
    pub ledger: Stream,
    pub prefix: String,
    /// `None` once stopped.
    pipeline: Option<InProcess>,
}

impl Running {
    /// Creates the streams on `server`, starts the service with `settings`
    /// and waits until the aggregator and the consumers of `registries`
    /// exist.
    pub async fn start(
        server: NatsServer,
        settings: Settings,
        registries: &[&str],
    ) -> Result<Running, BenchError> {
        let components = [Component::Aggregator, Component::Dispatcher];
        let pipeline = InProcess::start(&settings, &components).await?;
        let running = Running {
            server,
            js: pipeline.js.clone(),
            ledger: pipeline.ledger.clone(),
            prefix: settings.config.subject_prefix.clone(),
            pipeline: Some(pipeline),
        };
        let ready_since = Instant::now();
        loop {
            let agg = running
                .js
                .get_consumer_from_stream::<pull::Config, _, _>(
                    crate::aggregator::CONSUMER,
                    ORDERS_STREAM,
                )
                .await
                .is_ok();
            let mut disp = true;
            for r in registries {
                let name = format!("{}{r}", crate::dispatcher::CONSUMER_PREFIX);
                disp &= running
                    .ledger
                    .get_consumer::<pull::Config>(&name)
                    .await
                    .is_ok();
            }
            if agg && disp {
                return Ok(running);
            }
            if ready_since.elapsed() > Duration::from_secs(30)
                || running.pipeline.as_ref().is_none_or(|p| p.is_finished())
            {
                running.stop().await;
                return Err(BenchError::Step {
                    what: "starting the pipeline",
                    message: "the aggregator and dispatcher did not start within 30 s".to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The nats-server's message counts so far.
    pub async fn nats_messages(&self) -> Option<MessageCounts> {
        self.server.message_counts().await
    }

    /// The nats-server's pid, for its CPU and memory.
    pub fn nats_pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// The nats-server's URL.
    pub fn nats_url(&self) -> String {
        self.server.url()
    }

    /// Stops the service and starts it again with `settings` on the same
    /// nats-server: every in-memory state (caches, consumers' pulls) is
    /// gone, as after a restart of `ledgerline run`.
    pub async fn restart_service(&mut self, settings: &Settings) -> Result<(), BenchError> {
        self.stop_service().await;
        let components = [Component::Aggregator, Component::Dispatcher];
        let pipeline = InProcess::start(settings, &components).await?;
        self.js = pipeline.js.clone();
        self.ledger = pipeline.ledger.clone();
        self.pipeline = Some(pipeline);
        Ok(())
    }

    /// Stops the service (the nats-server keeps running).
    pub async fn stop_service(&mut self) {
        if let Some(pipeline) = self.pipeline.take() {
            pipeline.stop().await;
        }
    }

    /// Stops the service, then the nats-server.
    pub async fn stop(mut self) {
        self.stop_service().await;
        self.server.stop().await;
    }
}

/// Runs (c). `progress` is called often.
pub async fn run(
    opts: &PipelineOptions,
    progress: &mut dyn FnMut(&BenchProgress),
) -> Result<PipelineFigures, BenchError> {
    progress(&BenchProgress::stage(
        "(c) starting nats-server and the pipeline",
    ));
    let server = NatsServer::start().await?;
    let stop_receivers = CancellationToken::new();
    let secret = Secret::new(BENCH_SECRET);
    let journal = BenchReceiver::new(Some(&secret))?;
    let detail = BenchReceiver::new(None)?;
    let journal_addr = journal.serve("/journal", stop_receivers.clone()).await?;
    let detail_addr = detail.serve("/detail", stop_receivers.clone()).await?;
    let settings = bench_settings(&server.url(), journal_addr, detail_addr, opts.max_in_flight)?;
    let running = Running::start(server, settings, &["journal", "detail"]).await?;
    let (js, ledger, prefix) = (&running.js, &running.ledger, running.prefix.as_str());

    // Burst.
    let lines = dataset::generate(opts.orders, dataset::SEED);
    let mut sent_at: HashMap<u64, OffsetDateTime> = HashMap::new();
    let before_own = usage::own();
    let before_nats = running.nats_pid().and_then(usage::of_pid);
    let before_msgs = running.nats_messages().await;
    let burst_started = OffsetDateTime::now_utc();
    let events = publish_lines(
        js,
        prefix,
        &lines,
        None,
        &mut sent_at,
        progress,
        "(c) publishing the burst",
    )
    .await?;
    let receivers = [&journal, &detail];
    let accepted = || -> u64 { receivers.iter().map(|r| r.accepted()).sum() };
    let delivered = async |progress: &mut dyn FnMut(&BenchProgress), stage: &'static str| {
        settle(
            js,
            ledger,
            &aggregator_consumers(0),
            &["journal", "detail"],
            &accepted,
            opts.settle_limit,
            progress,
            stage,
        )
        .await
    };
    let postings = delivered(progress, "(c) delivering the burst").await?;
    let after_own = usage::own();
    let after_nats = running.nats_pid().and_then(usage::of_pid);
    let after_msgs = running.nats_messages().await;
    let burst_last_seq = sent_at.keys().copied().max().unwrap_or(0);
    let burst_end = receivers
        .iter()
        .filter_map(|r| lock(&r.inner.receipts).iter().map(|(_, at)| *at).max())
        .max()
        .unwrap_or_else(OffsetDateTime::now_utc);
    let elapsed = (burst_end - burst_started).unsigned_abs();
    let postings_per_s = postings as f64 / elapsed.as_secs_f64().max(1e-9);

    // Paced, at half the median burst rate.
    let mut paced_rate = None;
    if !opts.paced.is_zero() && postings > 0 {
        let events_per_posting = events as f64 / postings as f64;
        let mut bursts = opts.earlier_bursts.clone();
        bursts.push(postings_per_s);
        let rate = (median(&mut bursts) / 2.0 * events_per_posting).max(1.0);
        let wanted_events = (rate * opts.paced.as_secs_f64()).ceil() as usize;
        let events_per_order = (events as f64 / opts.orders.max(1) as f64).max(1.0);
        let orders = ((wanted_events as f64 / events_per_order).ceil() as usize).max(1);
        let lines: Vec<String> = dataset::generate(orders, dataset::SEED + 1)
            .into_iter()
            .map(|l| l.replace("\"ord-", "\"paced-ord-"))
            .collect();
        let published = publish_lines(
            js,
            prefix,
            &lines,
            Some(rate),
            &mut sent_at,
            progress,
            "(c) publishing at half the rate",
        )
        .await?;
        delivered(progress, "(c) delivering the paced run").await?;
        paced_rate = Some((rate, published));
    }

    // Latencies, sizes, bodies.
    progress(&BenchProgress::stage("(c) reading what was delivered"));
    let stored = read_postings(ledger).await?;
    let mut burst_lat = Vec::new();
    let mut paced_lat = Vec::new();
    let mut paced_first: Option<OffsetDateTime> = None;
    let mut paced_last: Option<OffsetDateTime> = None;
    let mut first_receipt: BTreeMap<String, OffsetDateTime> = BTreeMap::new();
    let mut bodies = Vec::new();
    let mut chain_breaks = 0;
    for r in receivers {
        let (kept, receipts) = r.take();
        bodies.extend(kept);
        for (key, at) in receipts {
            first_receipt
                .entry(key)
                .and_modify(|t| *t = (*t).min(at))
                .or_insert(at);
        }
        chain_breaks += r.inner.chain_breaks.load(Ordering::Relaxed);
    }
    bodies.truncate(BODIES_KEPT);
    if chain_breaks > 0 {
        return Err(BenchError::Step {
            what: "checking the deliveries",
            message: format!(
                "{chain_breaks} postings did not carry the registry_data answered to the one before"
            ),
        });
    }
    for (key, at) in &first_receipt {
        let Some((source_seq, _)) = stored.get(key) else {
            continue;
        };
        let Some(sent) = sent_at.get(source_seq) else {
            continue;
        };
        let latency = (*at - *sent).max(time::Duration::ZERO).unsigned_abs();
        if *source_seq <= burst_last_seq {
            burst_lat.push(latency);
        } else {
            paced_lat.push(latency);
            paced_first = Some(paced_first.map_or(*sent, |t| t.min(*sent)));
            paced_last = Some(paced_last.map_or(*at, |t| t.max(*at)));
        }
    }
    let paced = paced_rate.map(|(rate, _)| {
        let span = match (paced_first, paced_last) {
            (Some(a), Some(b)) => (b - a).unsigned_abs().as_secs_f64(),
            _ => 0.0,
        };
        Paced {
            events_per_s: rate,
            postings_per_s: paced_lat.len() as f64 / span.max(1e-9),
            latency: Percentiles::of(std::mem::take(&mut paced_lat)),
        }
    });

    let own = Usage {
        cpu: after_own.cpu.saturating_sub(before_own.cpu),
        peak_rss: after_own.peak_rss,
    };
    let nats_cpu = match (before_nats, after_nats) {
        (Some(b), Some(a)) => Some(a.cpu.saturating_sub(b.cpu)),
        _ => None,
    };
    let figures = PipelineFigures {
        orders: opts.orders,
        events,
        postings,
        elapsed,
        postings_per_s,
        burst_latency: Percentiles::of(burst_lat),
        paced,
        cpu_own: own.cpu,
        cpu_nats: nats_cpu,
        nats_messages: match (before_msgs, after_msgs) {
            (Some(b), Some(a)) => Some(MessageCounts {
                received: a.received.saturating_sub(b.received),
                sent: a.sent.saturating_sub(b.sent),
            }),
            _ => None,
        },
        peak_rss_own: own.peak_rss,
        peak_rss_nats: running
            .nats_pid()
            .and_then(usage::of_pid)
            .and_then(|u| u.peak_rss),
        posting_sizes: stored.values().map(|(_, size)| *size).collect(),
        bodies,
    };

    progress(&BenchProgress::stage("(c) stopping the pipeline"));
    stop_receivers.cancel();
    running.stop().await;
    Ok(figures)
}

/// The median of `v` (the mean of the middle two for an even count; 0
/// when empty).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_unstable_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [7.0]), 7.0);
        assert_eq!(median(&mut [9.0, 1.0, 4.0]), 4.0);
        assert_eq!(median(&mut [9.0, 1.0, 4.0, 2.0]), 3.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let p = Percentiles::of(v);
        assert_eq!(p.samples, 1000);
        assert_eq!(p.p50, Duration::from_millis(500));
        assert_eq!(p.p99, Duration::from_millis(990));
        assert_eq!(p.p999, Duration::from_millis(999));
        assert_eq!(Percentiles::of(Vec::new()).p99, Duration::ZERO);
    }
}
