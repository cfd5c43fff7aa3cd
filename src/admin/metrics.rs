//! Prometheus metrics (`GET /metrics`, text format 0.0.4).
//!
//! One recorder per process ([`install`]); the components record with the
//! `metrics` macros. Names follow `ledgerline_<what>_<unit>`, counters end
//! in `_total`, and a retry is counted as a retry, never as a loss:
//!
//! | metric | type | labels | recorded by |
//! |---|---|---|---|
//! | `ledgerline_events_applied_total` | counter | | aggregator |
//! | `ledgerline_events_rejected_total` | counter | `reason` | aggregator |
//! | `ledgerline_postings_total` | counter | `registry` | aggregator |
//! | `ledgerline_deliveries_total` | counter | `registry`, `outcome` (`delivered`, `retrying` = a retry, `dead` = a dead letter) | dispatcher |
//! | `ledgerline_delivery_attempt_duration_seconds` | histogram | `registry` | dispatcher |
//! | `ledgerline_admin_requests_total` | counter | `route` (pattern, or `unmatched`), `method` (GET … PATCH, or `other`), `status` | admin API |
//! | `ledgerline_admin_request_duration_seconds` | histogram | `route`, `method` | admin API |
//! | `ledgerline_consumer_pending_messages` | gauge | `stream`, `consumer` | lag sampler: messages not yet delivered to the consumer (its lag) |
//! | `ledgerline_consumer_ack_pending_messages` | gauge | `stream`, `consumer` | lag sampler: delivered, not yet acknowledged |
//! | `ledgerline_stream_messages` | gauge | `stream` | lag sampler |
//! | `ledgerline_registries` | gauge | `state` (`enabled`, `disabled`) | lag sampler |
//!
//! The gauges are sampled every [`LAG_SAMPLE_INTERVAL`] and again at each
//! scrape, so a scrape always shows the current lag.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::registry_store::RegistryWatch;
use crate::streams::{LEDGER_STREAM, ORDERS_STREAM};

/// How often consumer lag and stream sizes are sampled into gauges.
pub const LAG_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Longest one sample waits for NATS, so a slow server cannot pile up
/// samplers.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a scrape waits for a fresh sample before rendering.
pub const SCRAPE_SAMPLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Histogram buckets of every `_seconds` metric: from a fast local call
/// (1 ms) to the longest webhook timeout worth telling apart (30 s).
pub const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Most dispatcher consumers sampled (one per registry).
pub const CONSUMERS_SAMPLED_MAX: usize = 1_000;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return
/// the same handle). `None` when another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_owned()),
                    &LATENCY_BUCKETS_SECONDS,
                )
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "ledgerline_events_applied_total",
        "Order events applied (each produces its postings)"
    );
    describe_counter!(
        "ledgerline_events_rejected_total",
        "Input events rejected, by reason (published to ledger.rejected.<reason>)"
    );
    describe_counter!(
        "ledgerline_postings_total",
        "Postings stored on LEDGER, by registry"
    );
    describe_counter!(
        "ledgerline_deliveries_total",
        "Delivery attempts by registry and outcome: delivered, retrying (a retry is scheduled), dead (dead-lettered)"
    );
    describe_histogram!(
        "ledgerline_delivery_attempt_duration_seconds",
        Unit::Seconds,
        "Duration of one webhook delivery attempt"
    );
    describe_counter!(
        "ledgerline_admin_requests_total",
        "Admin API requests by route, method and status"
    );
    describe_histogram!(
        "ledgerline_admin_request_duration_seconds",
        Unit::Seconds,
        "Admin API request latency by route and method"
    );
    describe_gauge!(
        "ledgerline_consumer_pending_messages",
        "Messages not yet delivered to a durable consumer: its lag"
    );
    describe_gauge!(
        "ledgerline_consumer_ack_pending_messages",
        "Messages delivered to a durable consumer and not yet acknowledged"
    );
    describe_gauge!("ledgerline_stream_messages", "Messages in a stream");
    describe_gauge!("ledgerline_registries", "Registries in force, by state");
    // Present from the start, so a dashboard sees 0 rather than nothing.
    metrics::counter!("ledgerline_events_applied_total").increment(0);
}

/// The `route` label of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The `method` label: one of a fixed set, `other` for anything else, so an
/// unauthenticated client sending made-up methods cannot create series.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Middleware: counts and times every admin request by its route pattern
/// (never the raw path, so order ids do not explode the label set; every
/// unmatched path is [`UNMATCHED_ROUTE`]) and its [`method_label`]. Both
/// labels come from fixed sets, whoever sends the request.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |m| m.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    metrics::histogram!("ledgerline_admin_request_duration_seconds",
        "route" => route.clone(), "method" => method)
    .record(elapsed.as_secs_f64());
    metrics::counter!("ledgerline_admin_requests_total",
        "route" => route.clone(), "method" => method, "status" => status.to_string())
    .increment(1);
    debug!(method = %method, route = %route, status, duration_ms = elapsed.as_millis() as u64, "admin request");
    resp
}

/// Samples consumer lag, stream sizes and registry counts every
/// [`LAG_SAMPLE_INTERVAL`] until `shutdown`; runs the recorder's upkeep.
pub async fn sample_lag(
    js: jetstream::Context,
    registries: RegistryWatch,
    handle: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) {
    let mut ticks = Ticks::new(LAG_SAMPLE_INTERVAL, shutdown);
    while ticks.next().await {
        if tokio::time::timeout(SAMPLE_TIMEOUT, sample_once(&js, &registries))
            .await
            .is_err()
        {
            debug!("lag sample timed out; gauges keep their last values");
        }
        if let Some(h) = &handle {
            h.run_upkeep();
        }
    }
}

/// What a sampler loops on: a tick every `period` (the first at once; a
/// late one delays the next rather than bunching them) until `shutdown`.
pub(super) struct Ticks {
    tick: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Ticks {
    pub(super) fn new(period: Duration, shutdown: CancellationToken) -> Ticks {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { tick, shutdown }
    }

    /// Waits for the next tick: `false` once `shutdown` is cancelled.
    pub(super) async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = self.tick.tick() => true,
        }
    }
}

/// One sample of every gauge. NATS errors leave the gauges as they were
/// (logged at debug: readiness reports NATS trouble).
pub async fn sample_once(js: &jetstream::Context, registries: &RegistryWatch) {
    let (enabled, disabled) = {
        let set = registries.borrow();
        let enabled = set.all().iter().filter(|r| r.config.enabled).count();
        (enabled, set.all().len() - enabled)
    };
    metrics::gauge!("ledgerline_registries", "state" => "enabled").set(enabled as f64);
    metrics::gauge!("ledgerline_registries", "state" => "disabled").set(disabled as f64);

    let lag = lag_snapshot(js).await;
    for (stream, messages) in &lag.streams {
        metrics::gauge!("ledgerline_stream_messages", "stream" => *stream).set(*messages as f64);
    }
    for c in lag.consumers {
        metrics::gauge!("ledgerline_consumer_pending_messages",
            "stream" => c.stream, "consumer" => c.consumer.clone())
        .set(c.pending as f64);
        metrics::gauge!("ledgerline_consumer_ack_pending_messages",
            "stream" => c.stream, "consumer" => c.consumer)
        .set(c.ack_pending as f64);
    }
}

/// One durable consumer's lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerLag {
    pub stream: &'static str,
    pub consumer: String,
    /// Messages not yet delivered to it.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
}

/// The streams' sizes and our consumers' lag at one moment (what the
/// gauges and the console's overview show).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LagSnapshot {
    /// (stream, messages), for the streams that answered.
    pub streams: Vec<(&'static str, u64)>,
    /// The aggregator's consumer and every dispatcher consumer, by stream.
    pub consumers: Vec<ConsumerLag>,
}

/// Reads the sizes of ORDERS and LEDGER and the lag of our durable
/// consumers on them (at most [`CONSUMERS_SAMPLED_MAX`] dispatcher ones).
/// What NATS does not answer is left out (logged at debug).
pub async fn lag_snapshot(js: &jetstream::Context) -> LagSnapshot {
    let mut out = LagSnapshot::default();
    for stream_name in [ORDERS_STREAM, LEDGER_STREAM] {
        let mut stream = match js.get_stream(stream_name).await {
            Ok(s) => s,
            Err(e) => {
                debug!(stream = stream_name, error = %e, "lag sample: stream unavailable");
                continue;
            }
        };
        if let Ok(info) = stream.info().await {
            out.streams.push((stream_name, info.state.messages));
        }
        // The aggregator's (`aggregator`, or `aggregator-p<k>` with order
        // partitions) on ORDERS, the dispatchers' on LEDGER.
        let ours: fn(&str) -> bool = if stream_name == ORDERS_STREAM {
            |n| n.starts_with(crate::aggregator::CONSUMER)
        } else {
            |n| n.starts_with(crate::dispatcher::CONSUMER_PREFIX)
        };
        let mut names: Vec<String> = stream
            .consumer_names()
            .take(CONSUMERS_SAMPLED_MAX)
            .filter_map(|n| async move { n.ok() })
            .filter(|n| {
                let ours = ours(n);
                async move { ours }
            })
            .collect()
            .await;
        names.sort();
        for name in names {
            match stream.consumer_info(&name).await {
                Ok(info) => out.consumers.push(ConsumerLag {
                    stream: stream_name,
                    consumer: name,
                    pending: info.num_pending,
                    ack_pending: info.num_ack_pending as u64,
                }),
                Err(e) => debug!(consumer = %name, error = %e, "lag sample: consumer unavailable"),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_a_fixed_set() {
        for (m, label) in [
            ("GET", "GET"),
            ("PATCH", "PATCH"),
            ("OPTIONS", "OPTIONS"),
            ("FOOBAR", "other"),
            ("get", "other"),
            ("CONNECT", "other"),
        ] {
            assert_eq!(
                method_label(&Method::from_bytes(m.as_bytes()).unwrap()),
                label
            );
        }
    }
}
