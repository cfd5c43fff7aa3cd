//! (f) The ingest flood (issue 13: "a flood of 10,000 requests is
//! answered with bounded memory"): N webhook requests, [`CONCURRENCY`] at
//! a time, to an ingest listener ([`crate::inbound`]) holding
//! [`SOURCES`], a mix of valid events, requests over a source's rate limit
//! and bodies over the size limit ([`shot`]). Every request must be
//! answered: 200 (stored on ORDERS), 429 with `Retry-After`, or 413.
//!
//! [`send`] is the flood itself, against any listener (the integration
//! test aims it at a `ledgerline run` child process); [`run`] is
//! `ledgerline bench --flood N`: a fresh nats-server, the listener in this
//! process, the flood, then requests/s, the answers by status, what
//! ORDERS stored and the peak RSS of this process and of nats-server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::usage;
use super::{BenchError, err};
use crate::inbound::{self, InboundState};
use crate::natsd::NatsServer;
use crate::source::{SOURCE_BODY_MAX_BYTES, SourceConfig};
use crate::streams::ORDERS_STREAM;

/// Requests in flight at once.
pub const CONCURRENCY: usize = 64;
/// Longest one request may take before it counts as unanswered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The flood's source whose valid events are stored (its rate limit is
/// the largest allowed).
pub const SHOP: &str = "flood-shop";
/// The flood's source with a low rate limit: most of its requests are 429.
pub const SLOW: &str = "flood-slow";
/// Requests per second [`SLOW`] takes.
pub const SLOW_RATE_PER_S: u32 = 50;

/// The flood's sources, as `[[source]]` entries of a config file.
pub const SOURCES: &str = "[[source]]\nid = \"flood-shop\"\nkind = \"events\"\nrate_limit_per_s = 10000\n\
     [[source]]\nid = \"flood-slow\"\nkind = \"events\"\nrate_limit_per_s = 50\n";

/// What request `i` of a flood is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shot {
    /// A valid event to [`SHOP`]: stored.
    Valid,
    /// A valid event to [`SLOW`]: mostly over its rate limit (429).
    OverRate,
    /// A body one byte over the limit to [`SHOP`]: 413.
    OverSize,
}

/// Request `i`: one in 20 over-size, one in 4 to the slow source, the
/// rest valid.
pub fn shot(i: usize) -> Shot {
    if i.is_multiple_of(20) {
        Shot::OverSize
    } else if i % 4 == 1 {
        Shot::OverRate
    } else {
        Shot::Valid
    }
}

/// A SPEC 1 `order.confirmed` of one line for order `order`.
fn event(order: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "event_id": format!("{order}-confirmed"),
            "type": "order.confirmed",
            "order_id": order,
            "occurred_at": "2026-11-22T10:00:00Z",
            "order": {
                "version": 1, "currency": "EUR", "prices_include_tax": true,
                "line_items": [{"id": "li-1", "description": "Ticket", "quantity": 1,
                                "unit_price": "11.00", "tax_rate": "0"}],
                "fees": []
            }
        })
        .to_string(),
    )
}

/// How a flood was answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answers {
    /// Requests answered, by HTTP status.
    pub by_status: BTreeMap<u16, usize>,
    /// Requests that got no answer (a transport error or a timeout).
    pub unanswered: usize,
    /// 429s without `Retry-After`.
    pub retry_after_missing: usize,
    /// Answers that do not fit the request (a valid event not 200 or 429,
    /// an over-size body not 413), e.g. `"flood-shop 503"`.
    pub unexpected: Vec<String>,
    pub elapsed: Duration,
}

impl Answers {
    pub fn requests(&self) -> usize {
        self.by_status.values().sum::<usize>() + self.unanswered
    }

    /// Requests answered with `status`.
    pub fn with(&self, status: u16) -> usize {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// "200 ×7125 · 413 ×500 · 429 ×2375".
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .by_status
            .iter()
            .map(|(s, n)| format!("{s} ×{n}"))
            .collect();
        if self.unanswered > 0 {
            parts.push(format!("unanswered ×{}", self.unanswered));
        }
        parts.join(" · ")
    }
}

/// Sends `requests` webhooks ([`shot`] each), [`CONCURRENCY`] at a time,
/// to the ingest listener at `base` (`http://host:port`) holding
/// [`SOURCES`]; orders are named `<order_prefix>-<i>`.
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    requests: usize,
    order_prefix: &str,
) -> Answers {
    let oversize = Bytes::from(vec![b' '; SOURCE_BODY_MAX_BYTES + 1]);
    let started = Instant::now();
    let mut answers = futures::stream::iter(0..requests)
        .map(|i| {
            let kind = shot(i);
            let (source, body) = match kind {
                Shot::Valid => (SHOP, event(&format!("{order_prefix}-{i}"))),
                Shot::OverRate => (SLOW, event(&format!("{order_prefix}-{i}"))),
                Shot::OverSize => (SHOP, oversize.clone()),
            };
            let request = client
                .post(format!("{base}/v1/ingest/{source}"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(REQUEST_TIMEOUT)
                .body(body);
            async move {
                let resp = request.send().await?;
                let status = resp.status().as_u16();
                let retry_after = resp.headers().contains_key(reqwest::header::RETRY_AFTER);
                resp.bytes().await?;
                Ok::<_, reqwest::Error>((kind, source, status, retry_after))
            }
        })
        .buffer_unordered(CONCURRENCY);
    let mut out = Answers::default();
    while let Some(answer) = answers.next().await {
        let Ok((kind, source, status, retry_after)) = answer else {
            out.unanswered += 1;
            continue;
        };
        *out.by_status.entry(status).or_default() += 1;
        if status == 429 && !retry_after {
            out.retry_after_missing += 1;
        }
        let fits = match kind {
            Shot::Valid | Shot::OverRate => status == 200 || status == 429,
            Shot::OverSize => status == 413,
        };
        if !fits {
            out.unexpected.push(format!("{source} {status}"));
        }
    }
    out.elapsed = started.elapsed();
    out
}

/// What `ledgerline bench --flood` measured.
#[derive(Debug, Clone)]
pub struct FloodFigures {
    pub at: time::OffsetDateTime,
    pub cpus: usize,
    pub answers: Answers,
    /// Messages on ORDERS afterwards (each 200 stored one event).
    pub stored: u64,
    /// Peak RSS of this process (the listener and the flood's client).
    pub peak_rss_own: Option<u64>,
    pub peak_rss_nats: Option<u64>,
}

/// `ledgerline bench --flood N`: a fresh nats-server, the ingest listener
/// in this process with [`SOURCES`], then [`send`].
pub async fn run(requests: usize) -> Result<FloodFigures, BenchError> {
    let at = time::OffsetDateTime::now_utc();
    let server = NatsServer::start().await?;
    let client = async_nats::connect(server.url())
        .await
        .map_err(err("connecting to the flood's nats-server"))?;
    let js = async_nats::jetstream::new(client.clone());
    let prefix = "orders";
    // Its own single nats-server: one replica.
    crate::streams::ensure_streams(&js, &prefix.into(), 1).await?;
    let mut sources = Vec::new();
    for text in SOURCES.split("[[source]]\n").filter(|t| !t.is_empty()) {
        let source = toml::from_str::<SourceConfig>(text)
            .map_err(|e| e.message().to_owned())
            .and_then(|c| c.validate().map_err(|e| e.to_string()))
            .map_err(|message| BenchError::Step {
                what: "the flood's sources",
                message,
            })?;
        sources.push(source);
    }
    let (_keep, watch) = watch::channel(Arc::new(sources));
    let bind = err("binding the ingest listener");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(&bind)?;
    let base = format!("http://{}", listener.local_addr().map_err(&bind)?);
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(inbound::serve(
        listener,
        InboundState::new(client.clone(), prefix.into(), watch),
        shutdown.clone(),
    ));
    crate::tls::install_crypto_provider();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .no_proxy()
        .build()
        .map_err(err("building the flood's HTTP client"))?;
    let answers = send(&http, &base, requests, "flood").await;
    let stored = js
        .get_stream(ORDERS_STREAM)
        .await
        .map_err(err("opening ORDERS"))?
        .info()
        .await
        .map_err(err("reading ORDERS"))?
        .state
        .messages;
    let peak_rss_nats = server
        .pid()
        .and_then(usage::of_pid)
        .and_then(|u| u.peak_rss);
    shutdown.cancel();
    // The listener's own result: it stopped, or failed, either way done.
    let _ = serving.await;
    Ok(FloodFigures {
        at,
        cpus: super::cpus(),
        answers,
        stored,
        peak_rss_own: usage::own().peak_rss,
        peak_rss_nats,
    })
}

impl std::fmt::Display for FloodFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.answers;
        let date = self
            .at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        writeln!(f, "ledgerline bench --flood: {date}, {} CPUs", self.cpus)?;
        writeln!(
            f,
            "(f) ingest flood: {} requests, {CONCURRENCY} at a time, to the ingest listener in this process \
             ({SHOP}: valid events; {SLOW}: {SLOW_RATE_PER_S} requests/s allowed; 1 in 20 bodies over {} bytes)",
            a.requests(),
            SOURCE_BODY_MAX_BYTES
        )?;
        writeln!(
            f,
            "    requests/s                {:.0} ({:.2} s)",
            super::raw::rate(a.requests(), a.elapsed),
            a.elapsed.as_secs_f64()
        )?;
        writeln!(f, "    answers                   {}", a.summary())?;
        writeln!(
            f,
            "    stored on ORDERS          {} (200s: {})",
            self.stored,
            a.with(200)
        )?;
        write!(
            f,
            "    peak RSS                  this process (listener and client) {} · nats-server {}",
            super::mib(self.peak_rss_own),
            super::mib(self.peak_rss_nats)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_mixes_valid_over_rate_and_over_size_requests() {
        let shots: Vec<Shot> = (0..10_000).map(shot).collect();
        let count = |k: Shot| shots.iter().filter(|s| **s == k).count();
        assert_eq!(count(Shot::OverSize), 500);
        assert_eq!(count(Shot::OverRate), 2_500);
        assert_eq!(count(Shot::Valid), 7_000);
    }

    #[test]
    fn the_flood_sources_are_valid_and_named_as_the_constants_say() {
        let pieces: Vec<&str> = SOURCES
            .split("[[source]]\n")
            .filter(|t| !t.is_empty())
            .collect();
        let ids: Vec<String> = pieces
            .iter()
            .map(|t| {
                toml::from_str::<SourceConfig>(t)
                    .unwrap()
                    .validate()
                    .unwrap()
            })
            .map(|s| s.id().to_owned())
            .collect();
        assert_eq!(ids, [SHOP, SLOW]);
        let slow: SourceConfig = toml::from_str(pieces[1]).unwrap();
        assert_eq!(slow.rate_limit_per_s, SLOW_RATE_PER_S);
    }
}
