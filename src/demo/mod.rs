//! `ledgerline demo`: the whole pipeline on one machine, in about a minute.
//!
//! 1. starts the project-installed nats-server on free ports with a temp
//!    store (unless `--nats-url` is given);
//! 2. starts the sample receiver three times, behind three registries: one
//!    signed with a `whsec_` secret, one with OAuth2 against a token
//!    endpoint served beside it, one with an accept rule (`/status` = "1");
//! 3. runs aggregator, dispatcher and admin API in this process;
//! 4. publishes the dataset ([`dataset`]) with live progress, and injects a
//!    burst of receiver failures (503 for half the requests) so retries show;
//! 5. once everything is delivered, sends one more update while the
//!    accept-rule receiver refuses it (`{"status":"0"}`): a dead letter and
//!    its alert; then redelivers it with the same key;
//! 6. writes `out/ledger.csv` and `out/ledger.beancount` (checked with
//!    `bean-check` when the project's tools are installed) and returns a
//!    summary; everything it started is stopped.

pub mod dataset;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream::Stream;
use axum::routing::post;
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::natsd::NatsServer;
use crate::receiver::{FailureMode, Receiver, Served};
use crate::secret::Secret;
use crate::service::{Component, InProcess};
use crate::streams::{self, subjects};

/// The signing secret of the demo's signed registry (not a real secret).
pub const DEMO_SECRET: &str = "whsec_ZGVtby1zZWNyZXQtZm9yLWxlZGdlcmxpbmU=";
/// Longest the demo waits for the pipeline to settle.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(180);

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Orders in the dataset (the full demo: [`dataset::ORDERS`]).
    pub orders: usize,
    /// An existing NATS server instead of starting one.
    pub nats_url: Option<String>,
    /// Where the CSV and beancount files go.
    pub out_dir: PathBuf,
    /// Leave everything running after the summary ([`KeptDemo`]).
    pub keep: bool,
}

/// Live counters, for a progress line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoProgress {
    pub stage: String,
    /// Where the console is and how to log in, once the pipeline runs.
    pub console: Option<String>,
    pub events: u64,
    pub published: u64,
    pub postings: u64,
    pub delivered: u64,
    pub retrying: u64,
    pub rejected: u64,
}

/// Per currency: Σdebit, Σcredit of every posting to the general journal
/// (the unfiltered `journal-signed` registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrencyTotal {
    pub currency: String,
    pub debit: Decimal,
    pub credit: Decimal,
}

/// What the demo did.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub orders: usize,
    pub events: u64,
    pub published: u64,
    pub refused_by_publish: u64,
    /// Sales-channel webhooks accepted by the ingest listener (one of each
    /// source kind).
    pub channel_webhooks: u64,
    pub rejected: u64,
    pub postings: u64,
    pub delivered: u64,
    pub attempts: u64,
    pub retries: u64,
    pub dead_letters: u64,
    pub redelivered: u64,
    pub totals: Vec<CurrencyTotal>,
    /// Every posting of an unfiltered registry balanced.
    pub balanced: bool,
    pub csv: PathBuf,
    pub beancount: PathBuf,
    /// `Some(true)` when bean-check accepted the file, `None` if not run.
    pub bean_check: Option<bool>,
    /// `ledgerline verify` on the demo's streams: every stored posting is
    /// what a replay of ORDERS computes.
    pub verify: crate::verify::VerifyReport,
    /// The console of the demo's admin API (`/console`).
    pub console_url: String,
    /// Its admin token (random per run).
    pub admin_token: String,
    /// Whether the console is still up after the summary (`--keep`).
    pub kept: bool,
    pub elapsed: Duration,
}

/// What a `--keep` demo leaves running: the pipeline (and so the console),
/// the receivers and the nats-server it started.
pub struct KeptDemo {
    pipeline: InProcess,
    stop_receivers: CancellationToken,
    server: Option<NatsServer>,
}

impl KeptDemo {
    /// Waits for `signal` (the CLI's Ctrl-C or SIGTERM), then stops
    /// everything.
    pub async fn stop_after(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        stop_all(self.pipeline, self.stop_receivers, self.server).await;
    }
}

/// Stops the pipeline, the receivers and the nats-server the demo started.
async fn stop_all(
    pipeline: InProcess,
    stop_receivers: CancellationToken,
    server: Option<NatsServer>,
) {
    pipeline.stop().await;
    stop_receivers.cancel();
    if let Some(mut s) = server {
        s.stop().await;
    }
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("starting nats-server: {0}")]
    Nats(#[from] crate::natsd::NatsdError),
    #[error("{0}")]
    Streams(#[from] streams::NatsError),
    #[error("demo configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{what}: {source}")]
    Step {
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
    /// A step ran but did not see what it waited for.
    #[error("{what}: {message}")]
    Unmet { what: &'static str, message: String },
}

/// The error of a demo step, naming it and keeping what failed.
fn step<E: Into<async_nats::Error>>(what: &'static str) -> impl Fn(E) -> DemoError {
    move |e| DemoError::Step {
        what,
        source: e.into(),
    }
}

/// Makes `served` answer `status` to `share` of its requests (`what`
/// names the step).
fn fail_share(
    served: &Served,
    status: u16,
    share: f64,
    what: &'static str,
) -> Result<(), DemoError> {
    let failure = FailureMode {
        status: Some(status),
        share,
        ..FailureMode::default()
    };
    served.receiver.set_failure(failure).map_err(step(what))
}

/// Publishes the NDJSON `text` as `ledgerline publish` does (source
/// `demo`), telling `progress` the running counts; `what` names the step.
async fn publish(
    client: &async_nats::Client,
    prefix: &str,
    text: &str,
    what: &'static str,
    progress: impl FnMut(&crate::publish::PublishSummary),
) -> Result<crate::publish::PublishSummary, DemoError> {
    // The demo's own single nats-server: one replica.
    crate::publish::publish(
        client,
        &prefix.into(),
        1,
        "demo",
        text.as_bytes(),
        |_| {},
        progress,
    )
    .await
    .map_err(step(what))
}

async fn start_receiver(
    secret: Option<&Secret>,
    with_token_endpoint: bool,
    status_reply: bool,
    shutdown: CancellationToken,
) -> Result<Served, DemoError> {
    let receiver = Receiver::new(secret, FailureMode::default())
        .map_err(step("starting the receiver"))?
        .with_status_reply(status_reply);
    let mut router: Router = receiver.router();
    if with_token_endpoint {
        let issued = Arc::new(AtomicU64::new(0));
        router = router.route(
            "/oauth/token",
            post(move || {
                let issued = issued.clone();
                async move {
                    let n = issued.fetch_add(1, Ordering::Relaxed) + 1;
                    Json(json!({"access_token": format!("demo-token-{n}"), "expires_in": 3600, "token_type": "Bearer"}))
                }
            }),
        );
    }
    receiver
        .serve_on_loopback(router, shutdown.cancelled_owned())
        .await
        .map_err(step("binding a receiver port"))
}

fn free_port() -> Result<u16, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(step("finding a free port"))
}

/// The secret of the demo's sales-channel sources (not a real secret).
const DEMO_CHANNEL_SECRET: &str = "demo-channel-secret-0042";
/// The failure burst at the signed receiver lasts at least this long after
/// the dataset is published,
const BURST_MIN: Duration = Duration::from_secs(2);
/// and until it has failed this many requests (so retries show),
const BURST_FAILURES: u64 = 3;
/// but no longer than this (a pipeline that sends nothing for so long has
/// another problem, which the summary shows).
const BURST_MAX: Duration = Duration::from_secs(30);

/// One webhook of each source kind the demo configures, from the reference
/// payloads of `fixtures/inbound`: (source id, topic, body).
const CHANNEL_WEBHOOKS: [(&str, &str, &str); 5] = [
    (
        "shop",
        "",
        include_str!("../../fixtures/inbound/events/order_confirmed.json"),
    ),
    (
        "marketplace",
        "orders/created",
        include_str!("../../fixtures/inbound/marketplace_orders/orders_created.json"),
    ),
    (
        "pos-main",
        "payment/created",
        include_str!("../../fixtures/inbound/pos_payments/payment.json"),
    ),
    (
        "gateway",
        "",
        include_str!("../../fixtures/inbound/gateway/sale_success.json"),
    ),
    (
        "tickets",
        "",
        include_str!("../../fixtures/inbound/jq/booking_confirmed.json"),
    ),
];

/// The demo's jq source program: a ticketing platform ledgerline does not
/// ship, mapped by configuration.
const TICKETS_PROGRAM: &str = include_str!("../../fixtures/inbound/jq/tickets.jq");

/// Posts [`CHANNEL_WEBHOOKS`] to the ingest listener at `base`, as each
/// channel would (its own credentials); each must be answered 2xx, which
/// the listener does only once its events are stored.
async fn post_channel_webhooks(base: &str) -> Result<u64, DemoError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(step("building an HTTP client"))?;
    let mut accepted = 0;
    for (source, topic, body) in CHANNEL_WEBHOOKS {
        let url = match topic {
            "" => format!("{base}/v1/ingest/{source}"),
            t => format!("{base}/v1/ingest/{source}/{t}"),
        };
        let req = client
            .post(url)
            .header("Content-Type", "application/json")
            .body(body);
        let req = match source {
            "marketplace" => req.header("authenticationToken", DEMO_CHANNEL_SECRET),
            "pos-main" => req.bearer_auth(DEMO_CHANNEL_SECRET),
            "gateway" => req.basic_auth("gateway", Some(DEMO_CHANNEL_SECRET)),
            _ => req,
        };
        let resp = req
            .send()
            .await
            .map_err(step("posting a channel webhook"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(DemoError::Unmet {
                what: "posting the sales channels' webhooks",
                message: format!("{source}: {status}: {text}"),
            });
        }
        accepted += 1;
    }
    Ok(accepted)
}

/// The demo's configuration: three registries on loopback.
fn demo_settings(
    nats_url: &str,
    signed: &Served,
    oauth: &Served,
    accept: &Served,
    admin_port: u16,
    ingest_port: u16,
) -> Result<Settings, DemoError> {
    // Random per run: the API is on loopback, but a fixed token is a
    // known one.
    let admin_token = uuid::Uuid::new_v4().simple();
    let text = format!(
        r#"
admin_listen = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"
ingest_listen = "127.0.0.1:{ingest_port}"

[delivery]
retry_schedule = ["200ms", "500ms", "1s", "2s", "3s"]
max_in_flight = 256
breaker_failures = 1000
breaker_cool_down = "1s"

[[registry]]
id = "journal-signed"
name = "General journal (signed)"
url = "http://{signed}/journal"
event_types = ["*"]
group_by = ["currency"]
ledger_codes = [
  {{ entry_type = "cashflow", code = "1000" }},
  {{ entry_type = "receivable", code = "1200" }},
  {{ entry_type = "refund_due", code = "2100" }},
  {{ entry_type = "revenue", code = "4000" }},
  {{ entry_type = "discount", code = "4900" }},
  {{ entry_type = "tax", code = "2200" }},
  {{ entry_type = "fee", code = "4100" }},
  {{ entry_type = "write_off", code = "6900" }},
]
signing_secret = "{DEMO_SECRET}"
query = {{ tenant = "demo" }}

[[registry]]
id = "bi-oauth"
name = "BI feed (OAuth2)"
url = "http://{oauth}/bi"
event_types = ["*"]
group_by = ["currency", "product_id", "payment_method"]
[registry.auth]
type = "oauth2_client_credentials"
token_url = "http://{oauth}/oauth/token"
client_id = "ledgerline-demo"
client_secret = "demo-client-secret"
scope = "ledger"

[[registry]]
id = "erp-accept"
name = "ERP revenue (accept rule)"
url = "http://{accept}/erp"
event_types = ["order.confirmed", "order.updated", "order.cancelled"]
entry_types = ["revenue", "tax"]
posting_mode = "full"
group_by = ["currency", "tax_rate"]
headers = {{ authenticationToken = "demo-api-key" }}
[registry.accept]
json_pointer = "/status"
success_values = ["1"]

# The sales channels' own webhooks in (docs/inbound.md), one of each kind.
[[source]]
id = "shop"
kind = "events"

[[source]]
id = "marketplace"
kind = "marketplace_orders"
currency = "MXN"
[source.auth]
type = "header"
header = "authenticationToken"
value = "{DEMO_CHANNEL_SECRET}"

[[source]]
id = "pos-main"
kind = "pos_payments"
currency = "IDR"
[source.auth]
type = "bearer"
token = "{DEMO_CHANNEL_SECRET}"

[[source]]
id = "gateway"
kind = "gateway"
currency = "USD"
order_id_pointer = "/event_body/object/invoice"
[source.auth]
type = "basic"
username = "gateway"
password = "{DEMO_CHANNEL_SECRET}"

[[source]]
id = "tickets"
kind = "jq"
currency = "EUR"
program = '''
{TICKETS_PROGRAM}'''
"#,
        signed = signed.addr,
        oauth = oauth.addr,
        accept = accept.addr,
    );
    Ok(Settings::on_loopback(nats_url, &text, "demo")?)
}

/// Messages on `filter` in `stream`.
pub async fn count(stream: &Stream, filter: &str) -> u64 {
    match stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
    {
        Ok(mut c) => c.info().await.map(|i| i.num_pending).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Delivery attempt records by outcome.
async fn attempt_outcomes(stream: &Stream) -> BTreeMap<String, u64> {
    use futures::StreamExt;
    let mut out = BTreeMap::new();
    let Ok(mut c) = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::DELIVERIES_ALL.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
    else {
        return out;
    };
    let pending = c.info().await.map(|i| i.num_pending).unwrap_or(0);
    if pending == 0 {
        return out;
    }
    let Ok(mut msgs) = c.messages().await else {
        return out;
    };
    while let Some(Ok(m)) = msgs.next().await {
        if let Ok(r) = serde_json::from_slice::<crate::records::DeliveryRecord>(&m.payload) {
            let k = serde_json::to_value(r.outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            *out.entry(k).or_default() += 1;
        }
        if m.info().map(|i| i.pending).unwrap_or(0) == 0 {
            break;
        }
    }
    out
}

/// Waits until every posting has its registry_data (delivered) and nothing
/// is retrying; reports progress meanwhile.
async fn settle(
    ledger: &Stream,
    progress: &mut impl FnMut(&DemoProgress),
    p: &mut DemoProgress,
) -> Result<(), DemoError> {
    let started = Instant::now();
    let mut stable = 0;
    loop {
        p.postings = count(ledger, subjects::POSTINGS_ALL).await;
        p.delivered = count(ledger, subjects::REGISTRY_DATA_ALL).await;
        p.rejected = count(ledger, subjects::REJECTED_ALL).await;
        progress(p);
        if p.postings > 0 && p.delivered >= p.postings {
            stable += 1;
            if stable >= 3 {
                return Ok(());
            }
        } else {
            stable = 0;
        }
        if started.elapsed() > SETTLE_LIMIT {
            return Err(DemoError::Unmet {
                what: "waiting for deliveries",
                message: format!(
                    "{} of {} postings delivered after {SETTLE_LIMIT:?}",
                    p.delivered, p.postings
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Finds `bean-check` in the project's tools, or on PATH.
fn bean_check() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().map(|a| a.join(".tools/bin")));
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.extend(cwd.ancestors().map(|a| a.join(".tools/bin")));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin"));
    dirs.into_iter()
        .map(|d| d.join("bean-check"))
        .find(|p| p.is_file())
}

/// Runs the demo. `progress` is called often with live counters.
pub async fn run_demo(
    opts: DemoOptions,
    mut progress: impl FnMut(&DemoProgress),
) -> Result<(DemoSummary, Option<KeptDemo>), DemoError> {
    let started = Instant::now();
    let mut p = DemoProgress {
        stage: "starting nats-server".to_owned(),
        ..Default::default()
    };
    progress(&p);
    let server = match &opts.nats_url {
        Some(_) => None,
        None => Some(NatsServer::start().await?),
    };
    let nats_url = opts
        .nats_url
        .clone()
        .or_else(|| server.as_ref().map(NatsServer::url))
        .unwrap_or_default();

    let stop_receivers = CancellationToken::new();
    let secret = Secret::new(DEMO_SECRET);
    let signed = start_receiver(Some(&secret), false, false, stop_receivers.clone()).await?;
    let oauth = start_receiver(None, true, false, stop_receivers.clone()).await?;
    let accept = start_receiver(None, false, true, stop_receivers.clone()).await?;
    let ingest_port = free_port()?;
    let settings = demo_settings(
        &nats_url,
        &signed,
        &oauth,
        &accept,
        free_port()?,
        ingest_port,
    )?;

    p.stage = "starting the pipeline".to_owned();
    progress(&p);
    let components = [
        Component::Aggregator,
        Component::Dispatcher,
        Component::Admin,
        Component::Ingest,
    ];
    let pipeline = InProcess::start(&settings, &components).await?;
    let console_url = format!("http://{}/console", settings.config.admin_listen);
    let admin_token = settings
        .config
        .admin_token
        .as_ref()
        .map(|t| t.expose().to_owned())
        .unwrap_or_default();
    p.console = Some(format!("console {console_url} (admin token {admin_token})"));
    let (client, js, ledger) = (&pipeline.client, &pipeline.js, &pipeline.ledger);

    // Publish, with a burst of failures at the signed receiver a third in.
    let lines = dataset::generate(opts.orders, dataset::SEED);
    p.events = lines.len() as u64;
    p.stage = "publishing".to_owned();
    let third = lines.len() / 3;
    let (first, rest) = lines.split_at(third);
    let first_text: String = first.iter().map(|l| format!("{l}\n")).collect();
    let rest_text: String = rest.iter().map(|l| format!("{l}\n")).collect();
    let prefix = settings.config.subject_prefix.clone();
    let s1 = publish(
        client,
        &prefix,
        &first_text,
        "publishing the dataset",
        |s| {
            p.published = s.lines;
            progress(&p);
        },
    )
    .await?;
    fail_share(&signed, 503, 0.5, "injecting failures")?;
    p.stage = "publishing (receiver failing half the requests)".to_owned();
    let s2 = publish(client, &prefix, &rest_text, "publishing the dataset", |s| {
        p.published = first.len() as u64 + s.lines;
        progress(&p);
    })
    .await?;
    // At least BURST_MIN, and until the burst has struck (on a loaded
    // machine the first deliveries can come later than that), within
    // BURST_MAX.
    let burst = Instant::now();
    tokio::time::sleep(BURST_MIN).await;
    while signed.receiver.stats().failures_injected < BURST_FAILURES && burst.elapsed() < BURST_MAX
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signed
        .receiver
        .set_failure(FailureMode::default())
        .map_err(step("ending the failure burst"))?;

    p.stage = "delivering".to_owned();
    settle(ledger, &mut progress, &mut p).await?;

    // One dead letter, deterministically: one more update while the
    // accept-rule receiver refuses everything, then redeliver it.
    p.stage = "dead letter and redelivery".to_owned();
    progress(&p);
    let alerts_before = count(ledger, "ledger.alerts.>").await;
    fail_share(&accept, 200, 1.0, "refusing at the accept receiver")?;
    let (order_id, extra) = dataset::one_more_update(&lines);
    let extra = format!("{extra}\n");
    publish(
        client,
        &prefix,
        &extra,
        "publishing the extra update",
        |_| {},
    )
    .await?;
    let waited = Instant::now();
    while count(ledger, "ledger.alerts.>").await <= alerts_before {
        if waited.elapsed() > Duration::from_secs(30) {
            return Err(DemoError::Unmet {
                what: "waiting for the dead letter",
                message: "no alert after 30 s".to_owned(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    accept
        .receiver
        .set_failure(FailureMode::default())
        .map_err(step("restoring the accept receiver"))?;
    crate::dispatcher::status::request_redeliver(js, "erp-accept", &order_id)
        .await
        .map_err(step("redelivering"))?;
    p.stage = "delivering the redelivered posting".to_owned();
    settle(ledger, &mut progress, &mut p).await?;

    // The sales channels post their own webhooks: one of each kind.
    p.stage = "webhooks from the sales channels".to_owned();
    progress(&p);
    let channel_webhooks =
        post_channel_webhooks(&format!("http://127.0.0.1:{ingest_port}")).await?;
    settle(ledger, &mut progress, &mut p).await?;

    // Export.
    p.stage = "exporting".to_owned();
    progress(&p);
    std::fs::create_dir_all(&opts.out_dir).map_err(step("creating the output folder"))?;
    let csv = opts.out_dir.join("ledger.csv");
    let beancount = opts.out_dir.join("ledger.beancount");
    let mut export_opts = crate::export::ExportOptions::default();
    let file = std::fs::File::create(&csv).map_err(step("writing ledger.csv"))?;
    let report = crate::export::export(client, &export_opts, std::io::BufWriter::new(file))
        .await
        .map_err(step("exporting CSV"))?;
    export_opts.format = crate::export::Format::Beancount;
    let file = std::fs::File::create(&beancount).map_err(step("writing ledger.beancount"))?;
    crate::export::export(client, &export_opts, std::io::BufWriter::new(file))
        .await
        .map_err(step("exporting beancount"))?;
    let bean_check = match bean_check() {
        Some(bin) => Some(
            tokio::process::Command::new(bin)
                .arg(&beancount)
                .output()
                .await
                .map(|o| o.status.success())
                .unwrap_or(false),
        ),
        None => None,
    };

    // Replay ORDERS with the engine and compare with every stored posting.
    p.stage = "verifying".to_owned();
    progress(&p);
    let verify = crate::verify::verify(client, &settings, |_, _| {})
        .await
        .map_err(step("verifying"))?;

    // Count what happened, from the streams.
    let outcomes = attempt_outcomes(ledger).await;
    let summary = DemoSummary {
        orders: opts.orders,
        events: p.events,
        published: s1.published + s2.published,
        refused_by_publish: s1.refused_total() + s2.refused_total(),
        channel_webhooks,
        rejected: count(ledger, subjects::REJECTED_ALL).await,
        postings: count(ledger, subjects::POSTINGS_ALL).await,
        delivered: count(ledger, subjects::REGISTRY_DATA_ALL).await,
        attempts: outcomes.values().sum(),
        retries: outcomes.get("retrying").copied().unwrap_or(0),
        dead_letters: count(ledger, "ledger.alerts.>").await,
        redelivered: count(ledger, "ledger.control.>").await,
        totals: report
            .summary
            .totals
            .iter()
            .filter(|((r, c), _)| r == "journal-signed" && c.is_some())
            .map(|((_, c), t)| {
                // On the currency's grid, as the export prints them (sums
                // keep the scale of their inputs: 330.0 + 330.00 = 660.0).
                let on_scale = |d: Decimal| c.map_or(d, |c| c.on_scale(d));
                CurrencyTotal {
                    currency: c.map(|c| c.code().to_owned()).unwrap_or_default(),
                    debit: on_scale(t.debit),
                    credit: on_scale(t.credit),
                }
            })
            .collect(),
        balanced: report.summary.is_ok(),
        csv,
        beancount,
        bean_check,
        verify,
        console_url,
        admin_token,
        kept: opts.keep,
        elapsed: started.elapsed(),
    };

    if opts.keep {
        let kept = KeptDemo {
            pipeline,
            stop_receivers,
            server,
        };
        return Ok((summary, Some(kept)));
    }
    // Stop everything we started.
    stop_all(pipeline, stop_receivers, server).await;
    Ok((summary, None))
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "ledgerline demo: done in {:.1}s",
            self.elapsed.as_secs_f64()
        )?;
        let rows: [(&str, String); 12] = [
            ("orders", self.orders.to_string()),
            (
                "events published",
                format!(
                    "{} ({} refused by publish)",
                    self.published, self.refused_by_publish
                ),
            ),
            (
                "channel webhooks",
                format!(
                    "{} accepted (events, marketplace, POS, gateway, jq)",
                    self.channel_webhooks
                ),
            ),
            ("rejected", self.rejected.to_string()),
            ("postings", self.postings.to_string()),
            ("delivered", self.delivered.to_string()),
            ("delivery attempts", self.attempts.to_string()),
            ("retries", self.retries.to_string()),
            ("dead letters", self.dead_letters.to_string()),
            ("redelivered", self.redelivered.to_string()),
            (
                "balanced",
                if self.balanced {
                    "yes, every unfiltered posting".to_owned()
                } else {
                    "NO".to_owned()
                },
            ),
            (
                "verified",
                if self.verify.ok() {
                    format!(
                        "{} postings match a replay of the events",
                        self.verify.matched
                    )
                } else {
                    format!("NO: {} mismatches", self.verify.mismatches.len())
                },
            ),
        ];
        for (k, v) in rows {
            writeln!(f, "  {k:<20} {v}")?;
        }
        let console_state = if self.kept {
            "up until Ctrl-C"
        } else {
            "stopped with the demo; --keep leaves it up"
        };
        writeln!(
            f,
            "  {:<20} {} (admin token {}; {console_state})",
            "console", self.console_url, self.admin_token
        )?;
        writeln!(f, "  {:<20} {:>16} {:>16}", "currency", "debit", "credit")?;
        for t in &self.totals {
            writeln!(f, "  {:<20} {:>16} {:>16}", t.currency, t.debit, t.credit)?;
        }
        writeln!(f, "  {:<20} {}", "audit CSV", self.csv.display())?;
        let check = match self.bean_check {
            Some(true) => " (bean-check: OK)",
            Some(false) => " (bean-check: FAILED)",
            None => "",
        };
        write!(
            f,
            "  {:<20} {}{check}",
            "beancount",
            self.beancount.display()
        )
    }
}
