//! What the parts can do alone on this machine: (a) JetStream async
//! publish and pull consume + ack of messages of the postings' sizes, and
//! (b) HTTP POSTs of the postings' bodies from reqwest to a minimal axum
//! receiver. Together they give the limit the pipeline is compared with.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use axum::Json;
use axum::routing::post;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;

use super::{BenchError, err};
use crate::natsd::NatsServer;

/// Publish acks awaited at once by the raw publisher (as `publish` does).
pub const PUBLISH_WINDOW: usize = 256;
/// Messages per pull request of the raw consumer (as the dispatcher).
pub const PULL_BATCH: usize = 256;
/// Subjects the raw messages are spread over (like orders).
const SUBJECTS: usize = 1024;

/// Raw JetStream rates.
#[derive(Debug, Clone, PartialEq)]
pub struct JetStreamFigures {
    pub messages: usize,
    pub mean_bytes: usize,
    /// Async publish, [`PUBLISH_WINDOW`] acks outstanding, messages/s.
    pub publish_per_s: f64,
    /// Pull consume + explicit ack, messages/s.
    pub consume_per_s: f64,
    /// Async publish as the pipeline writes: each message with a unique
    /// `Nats-Msg-Id` and `Nats-Expected-Last-Subject-Sequence` = its
    /// subject's last sequence, messages/s. Not in the limit (the issue
    /// defines it by the plain figures); it shows what the guards cost.
    pub guarded_publish_per_s: f64,
}

/// Raw HTTP rate.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpFigures {
    pub requests: usize,
    pub concurrency: usize,
    pub mean_bytes: usize,
    pub per_s: f64,
}

/// `n` per second of `d`.
pub(super) fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// (a): `count` messages cycling through `sizes` (bytes), published to a
/// file-stored stream on a fresh nats-server, then consumed and acked.
pub async fn jetstream(sizes: &[usize], count: usize) -> Result<JetStreamFigures, BenchError> {
    let sizes: Vec<usize> = if sizes.is_empty() {
        vec![700]
    } else {
        sizes.to_vec()
    };
    let mut server = NatsServer::start().await?;
    let client = async_nats::connect(server.url())
        .await
        .map_err(err("connecting to the raw nats-server"))?;
    let js = jetstream::new(client.clone());
    let bench = file_stream(&js, "BENCH", "bench.>").await?;
    let payloads: Vec<Bytes> = sizes.iter().map(|&n| Bytes::from(vec![b'x'; n])).collect();
    let subjects: Vec<String> = (0..SUBJECTS).map(|i| format!("bench.{i}")).collect();

    let started = Instant::now();
    let mut window: VecDeque<PublishAckFuture> = VecDeque::with_capacity(PUBLISH_WINDOW);
    for i in 0..count {
        if window.len() >= PUBLISH_WINDOW
            && let Some(ack) = window.pop_front()
        {
            ack.await.map_err(err("raw publish ack"))?;
        }
        let ack = js
            .publish(
                subjects[i % SUBJECTS].clone(),
                payloads[i % payloads.len()].clone(),
            )
            .await
            .map_err(err("raw publish"))?;
        window.push_back(ack);
    }
    for ack in window {
        ack.await.map_err(err("raw publish ack"))?;
    }
    let publish_took = started.elapsed();
    let guarded_publish_per_s = guarded_publish(&js, &payloads, count).await?;

    let consumer: consumer::PullConsumer = bench
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".to_owned()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await
        .map_err(err("creating the raw consumer"))?;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .messages()
        .await
        .map_err(err("raw pull"))?;
    let mut consumed = 0;
    while consumed < count {
        match messages.next().await {
            Some(Ok(m)) => {
                m.ack().await.map_err(err("raw ack"))?;
                consumed += 1;
            }
            Some(Err(e)) => return Err(err("raw pull")(e)),
            None => break,
        }
    }
    let consume_took = started.elapsed();
    drop(messages);
    let _ = client.flush().await;
    drop(client);
    server.stop().await;
    Ok(JetStreamFigures {
        messages: count,
        mean_bytes: sizes.iter().sum::<usize>() / sizes.len(),
        publish_per_s: rate(count, publish_took),
        consume_per_s: rate(consumed, consume_took),
        guarded_publish_per_s,
    })
}

/// A file-stored stream `name` of `subjects`, on the raw nats-server.
async fn file_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
) -> Result<stream::Stream, BenchError> {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![subjects.to_owned()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(err("creating a raw stream"))
}

/// `count` async publishes of `payloads` to a stream of their own, over
/// [`SUBJECTS`] subjects, each guarded as the pipeline guards its writes:
/// `Nats-Expected-Last-Subject-Sequence` = the subject's last sequence on
/// each (known: the ack of a subject's previous message, [`SUBJECTS`]
/// publishes back, is awaited before, as the window is smaller), and a
/// unique `Nats-Msg-Id` (the server's duplicate window checks it) on one in
/// three, as on a posting and not on its registry_data and delivery
/// records.
async fn guarded_publish(
    js: &jetstream::Context,
    payloads: &[Bytes],
    count: usize,
) -> Result<f64, BenchError> {
    const _: () = assert!(PUBLISH_WINDOW < SUBJECTS);
    file_stream(js, "BENCH_GUARDED", "guarded.>").await?;
    let subjects: Vec<String> = (0..SUBJECTS).map(|i| format!("guarded.{i}")).collect();
    let mut last_seq = vec![0u64; SUBJECTS];
    let started = Instant::now();
    let mut window: VecDeque<(usize, PublishAckFuture)> = VecDeque::with_capacity(PUBLISH_WINDOW);
    for i in 0..count {
        if window.len() >= PUBLISH_WINDOW
            && let Some((s, ack)) = window.pop_front()
        {
            last_seq[s] = ack.await.map_err(err("guarded publish ack"))?.sequence;
        }
        let s = i % SUBJECTS;
        let mut headers = async_nats::HeaderMap::new();
        if i % 3 == 0 {
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("raw-{i}").as_str(),
            );
        }
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            last_seq[s].to_string().as_str(),
        );
        let ack = js
            .publish_with_headers(
                subjects[s].clone(),
                headers,
                payloads[i % payloads.len()].clone(),
            )
            .await
            .map_err(err("guarded publish"))?;
        window.push_back((s, ack));
    }
    for (_, ack) in window {
        ack.await.map_err(err("guarded publish ack"))?;
    }
    Ok(rate(count, started.elapsed()))
}

/// A minimal receiver on loopback: every POST to `/hooks` is counted and
/// answered with the same small JSON object (registry_data), at once. It
/// keeps nothing, so its memory does not grow with what it receives.
pub(super) struct Minimal {
    pub url: String,
    accepted: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Minimal {
    pub async fn start() -> Result<Minimal, BenchError> {
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let router = axum::Router::new().route(
            "/hooks",
            post(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                async { Json(json!({"journal_id": "J-1", "revision": 1})) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(err("binding the minimal receiver"))?;
        let url = format!(
            "http://{}/hooks",
            listener
                .local_addr()
                .map_err(err("binding the minimal receiver"))?
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
            }
        });
        Ok(Minimal {
            url,
            accepted,
            stop,
            server,
        })
    }

    /// POSTs answered so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The count behind [`Minimal::accepted`], for a task of its own.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.accepted.clone()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
    }
}

/// (b): `count` POSTs cycling through `bodies`, `concurrency` at once,
/// from one reqwest client (pooled keep-alive connections) to an axum
/// receiver on loopback that answers a small JSON object at once.
pub async fn http(
    bodies: &[Bytes],
    count: usize,
    concurrency: usize,
) -> Result<HttpFigures, BenchError> {
    let bodies: Vec<Bytes> = if bodies.is_empty() {
        vec![Bytes::from(vec![b' '; 700])]
    } else {
        bodies.to_vec()
    };
    let concurrency = concurrency.max(1);
    let receiver = Minimal::start().await?;
    let url = receiver.url.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .no_proxy()
        .build()
        .map_err(err("building the raw HTTP client"))?;
    let started = Instant::now();
    let mut results = futures::stream::iter(0..count)
        .map(|i| {
            let request = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bodies[i % bodies.len()].clone());
            async move {
                let resp = request.send().await?;
                let status = resp.status();
                resp.bytes().await?;
                Ok::<_, reqwest::Error>(status)
            }
        })
        .buffer_unordered(concurrency);
    let mut ok = 0;
    while let Some(r) = results.next().await {
        match r {
            Ok(s) if s.is_success() => ok += 1,
            Ok(s) => {
                return Err(BenchError::Step {
                    what: "raw HTTP",
                    message: format!("the raw receiver answered {s}"),
                });
            }
            Err(e) => return Err(err("raw HTTP")(e)),
        }
    }
    let took = started.elapsed();
    receiver.stop().await;
    Ok(HttpFigures {
        requests: ok,
        concurrency,
        mean_bytes: bodies.iter().map(Bytes::len).sum::<usize>() / bodies.len(),
        per_s: rate(ok, took),
    })
}
