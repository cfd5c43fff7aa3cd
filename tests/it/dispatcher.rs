//! The dispatcher against a real nats-server and real HTTP receivers on
//! loopback: the sample receiver (`ledgerline::receiver`), and a scripted
//! HTTP/1.1 server written here that can answer anything, hang, or reset
//! the connection. Postings are built with the engine from event JSON and
//! published to `ledger.postings.<R>.<O>` directly, so these tests do not
//! depend on the aggregator.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::header::HeaderName;
use async_nats::jetstream;
use ledgerline::config::Settings;
use ledgerline::dispatcher::index::DeliveryIndex;
use ledgerline::dispatcher::status::{ListFilter, list_deliveries, request_redeliver};
use ledgerline::dispatcher::{DispatchError, DispatcherOptions, run_dispatcher};
use ledgerline::posting::Posting;
use ledgerline::receiver::{FailureMode, Receiver, SignatureCheck};
use ledgerline::records::DeliveryStatus as Status;
use ledgerline::records::{
    AlertRecord, AttemptOutcome, DeliveryRecord, RegistryDataRecord, StoredPosting,
};
use ledgerline::registry::TargetPolicy;
use ledgerline::secret::Secret;
use ledgerline::streams::{next_on_subject, subjects};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::config::TestConfig;
use crate::support::engine::{self, ticket_event};
use crate::support::process::{signal, stop_process};
use crate::support::scripted::{Reply, Scripted, reply};
use crate::support::{self, Nats, process};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PREVIOUS_SECRET: &str = "whsec_c2VjcmV0LW9mLXRoZS1wcmV2aW91cy1rZXk=";

// ---------------------------------------------------------------- helpers

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Settings of one registry, `books`, at `url`.
fn books(nats: &Nats, url: &str) -> Settings {
    TestConfig::new()
        .registry("books", url, "")
        .settings(&nats.server)
}

/// Publishes `record` on `subject` with message id `msg_id` and `guard`
/// (one more header, when given); waits for the ack and returns the stream
/// sequence.
async fn publish_acked(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    guard: Option<(HeaderName, u64)>,
    record: &impl serde::Serialize,
) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    if let Some((name, value)) = guard {
        headers.insert(name, value.to_string().as_str());
    }
    let payload = serde_json::to_vec(record).unwrap();
    let ack = js
        .publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    ack.sequence
}

/// Stores registry_data for `posting` as another dispatcher would (`{"by":
/// "the other dispatcher"}`, with the message id older dispatchers gave
/// it), with `guard`.
async fn store_theirs(nats: &Nats, posting: &Posting, guard: (HeaderName, u64)) {
    let theirs = RegistryDataRecord {
        registry_id: posting.registry_id.clone(),
        order_id: posting.order_id.as_str().to_owned(),
        seq: posting.seq,
        idempotency_key: posting.idempotency_key,
        registry_data: json!({"by": "the other dispatcher"}),
        received_at: time::OffsetDateTime::now_utc(),
    };
    let subject = subjects::registry_data(&posting.registry_id, posting.order_id.as_str());
    let id = format!("registry_data:{}", posting.idempotency_key);
    publish_acked(&nats.js, &subject, &id, Some(guard), &theirs).await;
}

/// Stores registry_data for `posting` as another dispatcher would
/// ([`store_theirs`]), next on its subject (guarded by the last record's
/// sequence); returns the subject.
async fn store_theirs_next(nats: &Nats, posting: &Posting) -> String {
    let rd_subject = subjects::registry_data(&posting.registry_id, posting.order_id.as_str());
    store_theirs(nats, posting, next_on(nats, &rd_subject).await).await;
    rd_subject
}

/// The guard of a write next on `subject`: the expected last subject
/// sequence, its last message's.
async fn next_on(nats: &Nats, subject: &str) -> (HeaderName, u64) {
    let ledger = nats.js.get_stream("LEDGER").await.unwrap();
    let last = ledger
        .direct_get_last_for_subject(subject)
        .await
        .unwrap()
        .sequence;
    (
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        last,
    )
}

/// The dispatcher's consumer of `books`, created (or updated) with
/// `ack_wait`.
async fn books_consumer(nats: &Nats, ack_wait: Duration) -> jetstream::consumer::PullConsumer {
    nats.js
        .get_stream("LEDGER")
        .await
        .unwrap()
        .create_consumer(ledgerline::dispatcher::consumer_config("books", ack_wait))
        .await
        .unwrap()
}

/// Publishes postings as the aggregator stores them.
struct Publisher {
    js: jetstream::Context,
    last: HashMap<String, u64>,
}

impl Publisher {
    fn new(nats: &Nats) -> Self {
        Self {
            js: nats.js.clone(),
            last: HashMap::new(),
        }
    }

    async fn publish(&mut self, postings: &[Posting]) {
        for p in postings {
            let subject = subjects::postings(&p.registry_id, p.order_id.as_str());
            let previous = self.last.get(&subject).copied().unwrap_or(0);
            let stored = StoredPosting {
                source_seq: 0,
                previous_subject_seq: previous,
                posting: p.clone(),
            };
            let id = p.idempotency_key.to_string();
            let seq = publish_acked(&self.js, &subject, &id, None, &stored).await;
            self.last.insert(subject, seq);
        }
    }
}

/// Every record on `subject` (wildcards allowed), oldest first.
async fn stored<T: DeserializeOwned>(nats: &Nats, subject: &str) -> Vec<T> {
    stored_raw(nats, subject)
        .await
        .into_iter()
        .map(|(_, payload)| serde_json::from_slice(&payload).unwrap())
        .collect()
}

async fn stored_raw(nats: &Nats, subject: &str) -> Vec<(String, Vec<u8>)> {
    let stream = nats.js.get_stream("LEDGER").await.unwrap();
    let mut out = Vec::new();
    let mut from = 1;
    while let Some(m) = next_on_subject(&stream, subject, from)
        .await
        .unwrap_or_else(|e| panic!("reading {subject}: {e}"))
    {
        from = m.sequence + 1;
        out.push((format!("{:?}", m.headers), m.payload.to_vec()));
    }
    out
}

/// Publishes the postings of `events` under `settings` and starts a
/// dispatcher (its options changed by `tweak`); returns the postings.
async fn dispatch(
    nats: &Nats,
    settings: &Settings,
    events: &[String],
    tweak: impl FnOnce(&mut DispatcherOptions),
) -> (Vec<Posting>, Dispatcher) {
    let postings = engine::postings(settings, events);
    Publisher::new(nats).publish(&postings).await;
    (postings, start(nats, settings, tweak))
}

/// The sample receiver answering after 0 to `jitter_ms` ms.
async fn jittery_receiver(jitter_ms: u64) -> (Receiver, String) {
    let failure = FailureMode {
        jitter_ms,
        ..FailureMode::default()
    };
    support::receiver(None, failure).await
}

/// Each posting's idempotency key → its order and seq.
fn seq_of(postings: &[Posting]) -> HashMap<String, (String, u64)> {
    let place = |p: &Posting| (p.order_id.as_str().to_owned(), p.seq);
    postings
        .iter()
        .map(|p| (p.idempotency_key.to_string(), place(p)))
        .collect()
}

/// Versions 1 to `n` of a ticket order, version `v` for `v` adults.
fn versions(order: &str, n: u64) -> Vec<String> {
    (1..=n).map(|v| ticket_event(order, v, v as u32)).collect()
}

/// The first version of a ticket order for each of `orders`.
fn first_tickets(orders: impl Iterator<Item = String>) -> Vec<String> {
    orders.map(|o| ticket_event(&o, 1, 1)).collect()
}

/// Every order's delivery row.
async fn all_deliveries(nats: &Nats) -> Vec<ledgerline::dispatcher::state::OrderDeliveries> {
    list_deliveries(&nats.js, &ListFilter::default(), |_, _| {})
        .await
        .expect("deliveries list reads every order")
}

/// Waits (failing after `limit_s` s) until each order of `want` has its
/// status in `deliveries list`.
async fn until_statuses(nats: &Nats, want: &[(&str, Status)], limit_s: u64) {
    let what = format!("the statuses {want:?}");
    support::eventually(&what, Duration::from_secs(limit_s), || async {
        let rows = all_deliveries(nats).await;
        let has = |(order, status): &(&str, Status)| {
            rows.iter()
                .any(|r| r.order_id == *order && r.status == *status)
        };
        want.iter().all(has)
    })
    .await;
}

/// Waits (naming `what`, failing after `limit_s` s) until `rx` has accepted
/// every one of `postings`; returns every request it received.
async fn every_key_received(
    rx: &Receiver,
    postings: &[Posting],
    what: &str,
    limit_s: u64,
) -> Vec<ledgerline::receiver::Received> {
    let total = postings.len() as u64;
    support::eventually(what, Duration::from_secs(limit_s), || async {
        rx.stats().distinct_keys == total
    })
    .await;
    rx.received()
}

/// A dispatcher running in this process.
struct Dispatcher {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DispatchError>>,
}

fn start(
    nats: &Nats,
    settings: &Settings,
    tweak: impl FnOnce(&mut DispatcherOptions),
) -> Dispatcher {
    let mut options = DispatcherOptions::from_settings(settings).unwrap();
    options.ack_wait = Duration::from_secs(5);
    tweak(&mut options);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_dispatcher(
        nats.client.clone(),
        options,
        support::watch(settings),
        shutdown.clone(),
    ));
    Dispatcher { shutdown, task }
}

impl Dispatcher {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the dispatcher stops when asked")
            .unwrap()
            .unwrap();
    }
}

/// A local SMTP sink (`aiosmtpd`, installed by `make tools`) writing a
/// Maildir.
struct SmtpSink {
    _child: tokio::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl SmtpSink {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(repo().join(".tools/bin/aiosmtpd"))
            .args(["-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("mail"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("aiosmtpd runs (run `make tools`)");
        support::eventually(
            "the SMTP sink to listen",
            Duration::from_secs(15),
            || async { TcpStream::connect(("127.0.0.1", port)).await.is_ok() },
        )
        .await;
        Self {
            _child: child,
            dir,
            port,
        }
    }

    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("mail/new")) else {
            return vec![];
        };
        entries
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .collect()
    }
}

/// Every message of LEDGER (headers and payload) as text.
async fn ledger_text(nats: &Nats) -> String {
    stored_raw(nats, "ledger.>")
        .await
        .into_iter()
        .map(|(h, p)| format!("{h}\n{}\n", String::from_utf8_lossy(&p)))
        .collect()
}

fn assert_no_secret(haystack: &str, secrets: &[&str], where_: &str) {
    for s in secrets {
        assert!(
            !haystack.contains(s),
            "secret {s:?} found in {where_}:\n{}",
            &haystack[haystack.find(s).unwrap().saturating_sub(200)..]
                .chars()
                .take(400)
                .collect::<String>()
        );
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_example_reaches_the_receiver_byte_exact_with_every_header() {
    let nats = support::nats().await;
    let (rx, url) = support::receiver(Some(SECRET), FailureMode::default()).await;
    let settings = TestConfig::new()
        .registry(
            "reference",
            &format!("{url}/hooks/orders"),
            &format!(
                "signing_secret = \"{SECRET}\"\n\
                 headers = {{ \"authenticationToken\" = \"api-key-7f3a9c\" }}\n\
                 query = {{ \"tenant\" = \"eu\" }}"
            ),
        )
        .settings(&nats.server);
    let dir = repo().join("fixtures/golden/reference");
    let events: Vec<String> = std::fs::read_to_string(dir.join("events.ndjson"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let (postings, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    assert_eq!(postings.len(), 1);
    // Received, and its attempt and reply stored (written after the reply).
    support::eventually(
        "the posting and its records",
        Duration::from_secs(10),
        || async {
            let attempts: Vec<DeliveryRecord> =
                stored(&nats, "ledger.deliveries.reference.>").await;
            let replies: Vec<RegistryDataRecord> =
                stored(&nats, "ledger.registry_data.reference.>").await;
            !rx.received().is_empty() && !attempts.is_empty() && !replies.is_empty()
        },
    )
    .await;

    // The body: exactly the hand-written expected bytes of the contract.
    let line = std::fs::read_to_string(dir.join("expected.ndjson")).unwrap();
    let line = line.trim_end();
    let start_at = line.find(r#""body":"#).unwrap() + r#""body":"#.len();
    let want_body = &line[start_at..line.len() - 1];
    let got = &rx.received()[0];
    assert_eq!(got.body, want_body);

    let key = "15fc94bd-8742-5f9f-9164-322f921a9d18";
    assert_eq!(got.path, "/hooks/orders");
    assert_eq!(got.query.as_deref(), Some("tenant=eu"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("idempotency-key"), Some(key));
    assert_eq!(
        got.header("user-agent"),
        Some(concat!("ledgerline/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(got.header("x-ledger-event-type"), Some("order.confirmed"));
    assert_eq!(got.header("authenticationtoken"), Some("api-key-7f3a9c"));
    assert_eq!(got.header("authorization"), None);
    assert_eq!(got.header("webhook-id"), Some(key));
    let ts: i64 = got.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!((time::OffsetDateTime::now_utc().unix_timestamp() - ts).abs() < 60);
    let sig = got.header("webhook-signature").unwrap();
    assert!(sig.starts_with("v1,") && !sig.contains(' '), "{sig}");
    let k = ledgerline::signing::decode_secret(&Secret::new(SECRET)).unwrap();
    assert!(ledgerline::signing::verify(
        &k,
        key,
        ts,
        got.body.as_bytes(),
        sig
    ));
    assert_eq!(got.signature, SignatureCheck::Valid);

    // What LEDGER keeps: the attempt and the reply as registry_data.
    let deliveries: Vec<DeliveryRecord> = stored(&nats, "ledger.deliveries.reference.>").await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].outcome, AttemptOutcome::Delivered);
    assert_eq!(
        (deliveries[0].attempt, deliveries[0].http_status),
        (1, Some(200))
    );
    let rd: Vec<RegistryDataRecord> = stored(&nats, "ledger.registry_data.reference.>").await;
    assert_eq!(
        rd[0].registry_data,
        json!({"journal_id": "J-000123", "revision": 1})
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_posting_carries_the_registry_data_the_previous_reply_returned() {
    let nats = support::nats().await;
    let (rx, url) = support::receiver(None, FailureMode::default()).await;
    let settings = books(&nats, &format!("{url}/hook"));
    let events = vec![
        ticket_event("o-chain", 1, 2),
        ticket_event("o-chain", 2, 3),
        ticket_event("o-chain", 3, 1),
    ];
    let (postings, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    assert_eq!(postings.len(), 3);
    support::eventually("3 postings", Duration::from_secs(10), || async {
        rx.received().len() == 3
    })
    .await;
    let got = rx.received();
    let mut registry_data = json!({});
    for (i, (req, posting)) in got.iter().zip(&postings).enumerate() {
        let want = serde_json::to_string(&posting.body(&registry_data)).unwrap();
        assert_eq!(req.body, want, "posting {}", i + 1);
        assert_eq!(req.chain_ok, Some(true));
        registry_data = json!({"journal_id": "J-000123", "revision": i + 1});
    }
    let rd: Vec<RegistryDataRecord> = stored(&nats, "ledger.registry_data.books.o-chain").await;
    let seqs: Vec<u64> = rd.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(rd[2].registry_data["revision"], 3);
    // The order's own records are guarded by their subject's last
    // sequence alone: no entry of theirs in nats-server's duplicate window.
    let ledger = nats.js.get_stream("LEDGER").await.unwrap();
    for subject in [
        "ledger.registry_data.books.o-chain",
        "ledger.deliveries.books.o-chain",
    ] {
        let (mut from, mut records) = (1, 0);
        while let Some(m) = next_on_subject(&ledger, subject, from).await.unwrap() {
            from = m.sequence + 1;
            records += 1;
            let id = m.headers.get(async_nats::header::NATS_MESSAGE_ID);
            assert_eq!(id, None, "{subject} #{}", m.sequence);
        }
        assert_eq!(records, 3, "{subject}");
    }
    let rows = all_deliveries(&nats).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].status, rows[0].postings, rows[0].delivered),
        (Status::Delivered, 3, 3)
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_orders_in_flight_stay_in_order_while_replies_come_back_shuffled() {
    const ORDERS: usize = 200;
    const PER_ORDER: u64 = 3;
    let nats = support::nats().await;
    let (rx, url) = jittery_receiver(25).await;
    let settings = TestConfig::new()
        .registry("books", &format!("{url}/hook"), "rate_limit_per_s = 10000")
        .settings(&nats.server);
    // Interleaved: posting 1 of every order, then every 2, then every 3.
    let mut events = Vec::new();
    for v in 1..=PER_ORDER {
        for o in 0..ORDERS {
            events.push(ticket_event(&format!("o-{o:03}"), v, v as u32 + 1));
        }
    }
    let postings = engine::postings(&settings, &events);
    let seq_of = seq_of(&postings);
    let d = start(&nats, &settings, |o| o.max_in_flight = 256);
    let started = Instant::now();
    Publisher::new(&nats).publish(&postings).await;
    let total = ORDERS * PER_ORDER as usize;
    support::eventually("every posting", Duration::from_secs(60), || async {
        rx.stats().accepted as usize >= total
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!(
        "{total} postings of {ORDERS} orders delivered in {elapsed:?} ({:.0}/s, replies delayed 0-25 ms)",
        total as f64 / elapsed.as_secs_f64()
    );
    let got = rx.received();
    assert_eq!(got.len(), total, "each posting sent exactly once");
    let mut per_order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &got {
        let (order, seq) = &seq_of[r.idempotency_key.as_deref().unwrap()];
        per_order.entry(order.clone()).or_default().push(*seq);
        assert_eq!(r.chain_ok, Some(true), "registry_data chain of {order}");
    }
    assert_eq!(per_order.len(), ORDERS);
    for (order, seqs) in per_order {
        assert_eq!(seqs, vec![1, 2, 3], "FIFO for {order}");
    }
    // Many orders really were in flight at once: replies interleave.
    let first_orders: std::collections::HashSet<_> =
        got.iter().take(50).map(|r| r.order_id.clone()).collect();
    assert!(
        first_orders.len() > 20,
        "orders were delivered concurrently"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_a_timeout_a_reset_and_a_429_are_retried_with_the_same_key_and_body() {
    let nats = support::nats().await;
    let server = Scripted::start(|req, history| {
        let earlier = history.iter().filter(|r| r.key() == req.key()).count();
        if earlier > 0 {
            return reply(200, json!({"ok": true, "attempts": earlier + 1}));
        }
        match req.order().as_str() {
            "o-500" => reply(500, json!({"message": "database is down"})),
            "o-timeout" => Reply::Respond {
                status: 200,
                headers: vec![],
                body: b"{}".to_vec(),
                delay: Duration::from_secs(3),
            },
            "o-reset" => Reply::Reset,
            "o-429" => Reply::Respond {
                status: 429,
                headers: vec![("Retry-After", "1".into())],
                body: b"{}".to_vec(),
                delay: Duration::ZERO,
            },
            _ => reply(200, json!({})),
        }
    })
    .await;
    let settings = TestConfig::new()
        .delivery(r#"retry_schedule = ["100ms", "200ms"]"#)
        .registry("books", &server.url("/hook"), "timeout_ms = 500")
        .settings(&nats.server);
    let orders = ["o-500", "o-timeout", "o-reset", "o-429"];
    let events: Vec<String> = orders.iter().map(|o| ticket_event(o, 1, 2)).collect();
    let (_, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    support::eventually("every order delivered", Duration::from_secs(15), || async {
        let rd: Vec<RegistryDataRecord> = stored(&nats, "ledger.registry_data.books.>").await;
        rd.len() == orders.len()
    })
    .await;
    for (order, want_error) in [
        ("o-500", "HTTP 500"),
        ("o-timeout", "timed out"),
        ("o-reset", "connection failed"),
        ("o-429", "HTTP 429"),
    ] {
        let reqs = server.requests_for(order);
        assert_eq!(reqs.len(), 2, "{order}: one failure, one success");
        assert_eq!(reqs[0].key(), reqs[1].key(), "{order}: same key");
        assert_eq!(reqs[0].body, reqs[1].body, "{order}: same body");
        let records: Vec<DeliveryRecord> =
            stored(&nats, &subjects::deliveries("books", order)).await;
        let outcomes: Vec<(u32, AttemptOutcome)> =
            records.iter().map(|r| (r.attempt, r.outcome)).collect();
        assert_eq!(
            outcomes,
            vec![
                (1, AttemptOutcome::Retrying),
                (2, AttemptOutcome::Delivered)
            ],
            "{order}"
        );
        let error = records[0].error.as_deref().unwrap_or("");
        assert!(error.contains(want_error), "{order}: {error}");
        assert!(records[0].next_attempt_at.is_some());
    }
    // Retry-After: 1 beats the 100 ms schedule.
    let r429 = server.requests_for("o-429");
    let gap = r429[1].at - r429[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After honoured: {gap:?}"
    );
    let r500 = server.requests_for("o-500");
    let gap = r500[1].at - r500[0].at;
    assert!(
        gap >= Duration::from_millis(75) && gap < Duration::from_millis(2000),
        "the schedule's 100 ms ± 20 % (plus scheduling), not a default: {gap:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_dead_letters_holds_later_postings_alerts_emails_and_redeliver_releases_them() {
    let nats = support::nats().await;
    let smtp = SmtpSink::start().await;
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let is_fixed = fixed.clone();
    let server = Scripted::start(move |req, history| {
        let is_second = req.order() == "o-dead"
            && history
                .iter()
                .filter(|r| r.order() == "o-dead" && r.key() != req.key())
                .count()
                == 1;
        if is_second && !is_fixed.load(std::sync::atomic::Ordering::SeqCst) {
            // Echoes what it was sent, secrets included, as some do.
            let echo: Vec<String> = req
                .headers
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            return reply(
                422,
                json!({"status": "0", "message": "Unknown ledger account 4000", "echo": echo}),
            );
        }
        reply(200, json!({"journal": req.order(), "n": history.len()}))
    })
    .await;
    let toml = TestConfig::new()
        .smtp(smtp.port)
        .delivery(r#"retry_schedule = ["100ms"]"#)
        .registry(
            "books",
            &server.url("/hook"),
            &format!(
                r#"name = "Books EU"
notify_emails = ["ops@example.com", "accounting@example.com"]
signing_secret = "{SECRET}"
headers = {{ "authenticationToken" = "tok-header-secret-1" }}"#
            ),
        )
        .basic_auth("shop", "basic-password-secret-2")
        .text();
    let settings = support::settings(&nats.server, &toml);
    let events = [versions("o-dead", 3), versions("o-ok", 2)].concat();
    let (postings, d) = dispatch(&nats, &settings, &events, |_| {}).await;

    // o-dead: 1 delivered, 2 dead at once, 3 held; o-ok goes on.
    let want = [("o-dead", Status::Dead), ("o-ok", Status::Delivered)];
    until_statuses(&nats, &want, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = server.requests_for("o-dead");
    assert_eq!(sent.len(), 2, "posting 2 tried once, posting 3 held");
    let rows = list_deliveries(
        &nats.js,
        &ListFilter {
            registry: Some("books".into()),
            status: Some(Status::Dead),
        },
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].held, rows[0].failing_seq, rows[0].http_status),
        (1, Some(2), Some(422))
    );

    let alerts: Vec<AlertRecord> = stored(&nats, "ledger.alerts.books").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].seq, alerts[0].http_status), (2, Some(422)));
    assert_eq!(
        alerts[0].receiver_message.as_deref(),
        Some("Unknown ledger account 4000")
    );
    support::eventually("the failure email", Duration::from_secs(10), || async {
        !smtp.messages().is_empty()
    })
    .await;
    let mail = smtp.messages().remove(0);
    for want in [
        "ops@example.com",
        "accounting@example.com",
        "Books EU (books): order o-dead not delivered",
        "Unknown ledger account 4000",
        "ledgerline redeliver --registry books --order o-dead",
    ] {
        assert!(
            mail.contains(want),
            "{want} missing from the email:\n{mail}"
        );
    }

    // The CLI: list, then redeliver once the receiver is fixed.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "nats_url = \"{}\"\nallow_insecure_http = true\nallow_private_targets = [\"127.0.0.0/8\"]\n{toml}",
            nats.server.url()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline"))
            .args(args)
            .arg("--config")
            .arg(config.path())
            .output()
            .unwrap()
    };
    let out = cli(&["deliveries", "list", "--status", "dead", "--json"]);
    process::assert_succeeded(&out);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["order_id"], "o-dead");
    assert_eq!(listed["held"], 1);
    let out = cli(&["redeliver", "--registry", "books", "--order", "o-ok"]);
    assert_eq!(out.status.code(), Some(1), "nothing dead for o-ok");

    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = cli(&["redeliver", "--registry", "books", "--order", "o-dead"]);
    process::assert_succeeded(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("redelivery of posting 2"));
    support::eventually("o-dead released", Duration::from_secs(10), || async {
        let rd: Vec<RegistryDataRecord> =
            stored(&nats, &subjects::registry_data("books", "o-dead")).await;
        rd.len() == 3
    })
    .await;
    let sent = server.requests_for("o-dead");
    assert_eq!(sent.len(), 4);
    assert_eq!(
        sent[1].key(),
        sent[2].key(),
        "redelivered with the same key"
    );
    assert_eq!(sent[1].body, sent[2].body, "and the same body");
    assert_eq!(sent[3].key(), postings[2].idempotency_key.to_string());
    let records: Vec<DeliveryRecord> =
        stored(&nats, &subjects::deliveries("books", "o-dead")).await;
    let outcomes: Vec<(u64, u32, AttemptOutcome)> = records
        .iter()
        .map(|r| (r.seq, r.attempt, r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (1, 1, AttemptOutcome::Delivered),
            (2, 1, AttemptOutcome::Dead),
            (2, 2, AttemptOutcome::Delivered),
            (3, 1, AttemptOutcome::Delivered),
        ]
    );
    // The receiver echoed the credentials; LEDGER must not have kept them.
    let echoed = String::from_utf8_lossy(&sent[1].body).into_owned();
    assert!(!echoed.is_empty());
    assert!(
        records[1]
            .response_excerpt
            .as_deref()
            .unwrap_or("")
            .contains("***")
    );
    assert_no_secret(
        &ledger_text(&nats).await,
        &[
            "tok-header-secret-1",
            "basic-password-secret-2",
            "c2hvcDpiYXNpYy1wYXNzd29yZC1zZWNyZXQtMg",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ],
        "LEDGER",
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_token_serves_100_deliveries_and_is_refreshed_after_a_401_and_on_expiry() {
    #[derive(Default)]
    struct Tokens {
        issued: Vec<String>,
        forms: Vec<String>,
        revoked: Vec<String>,
        next_expires_in: u64,
        unauthorized: usize,
    }
    let nats = support::nats().await;
    let state = Arc::new(Mutex::new(Tokens {
        next_expires_in: 3600,
        ..Tokens::default()
    }));
    let s = state.clone();
    let server = Scripted::start(move |req, _| {
        let mut s = s.lock().unwrap();
        if req.path.starts_with("/oauth/token") {
            let token = format!("tok-{}", s.issued.len() + 1);
            s.issued.push(token.clone());
            s.forms.push(format!(
                "{} {} x-tenant={}",
                req.path,
                String::from_utf8_lossy(&req.body),
                req.header("x-tenant").unwrap_or("")
            ));
            return reply(
                200,
                json!({"auth_token": token, "expires_in": s.next_expires_in}),
            );
        }
        let valid = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .filter(|t| s.issued.iter().any(|i| i == t) && !s.revoked.iter().any(|r| r == t));
        if valid.is_none() {
            s.unauthorized += 1;
            return reply(401, json!({"message": "bad token"}));
        }
        reply(200, json!({}))
    })
    .await;
    let settings = TestConfig::new()
        .registry(
            "bi",
            &server.url("/hook"),
            &format!(
                r#"rate_limit_per_s = 10000
[registry.auth]
type = "oauth2_client_credentials"
token_url = "{token_url}"
client_id = "ledgerline"
client_secret = "client-secret-value-3"
scope = "ledger"
token_field = "auth_token"
expires_field = "expires_in"
token_type = "Bearer"
extra_body = {{ audience = "books" }}
headers = {{ "X-Tenant" = "eu" }}
params = {{ region = "west" }}"#,
                token_url = server.url("/oauth/token")
            ),
        )
        .settings(&nats.server);
    let d = start(&nats, &settings, |_| {});
    let mut publisher = Publisher::new(&nats);
    let events = first_tickets((0..100).map(|i| format!("o-{i:03}")));
    let postings = engine::postings(&settings, &events);
    publisher.publish(&postings).await;
    let delivered = |n: usize| {
        let nats = &nats;
        async move {
            let rd: Vec<RegistryDataRecord> = stored(nats, "ledger.registry_data.bi.>").await;
            rd.len() >= n
        }
    };
    support::eventually("100 deliveries", Duration::from_secs(20), || delivered(100)).await;
    {
        let s = state.lock().unwrap();
        assert_eq!(s.issued, vec!["tok-1"], "one token for 100 deliveries");
        assert_eq!(s.unauthorized, 0);
        let form = &s.forms[0];
        for want in [
            "/oauth/token?region=west",
            "grant_type=client_credentials",
            "client_id=ledgerline",
            "client_secret=client-secret-value-3",
            "scope=ledger",
            "audience=books",
            "x-tenant=eu",
        ] {
            assert!(
                form.contains(want),
                "{want} missing from the token request {form}"
            );
        }
    }
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.path == "/hook")
            .all(|r| r.header("authorization") == Some("Bearer tok-1"))
    );

    // Revoked: the next delivery gets a 401, refreshes once, succeeds.
    {
        let mut s = state.lock().unwrap();
        s.revoked.push("tok-1".into());
        s.next_expires_in = 1;
    }
    let more: Vec<String> = (100..102)
        .map(|i| ticket_event(&format!("o-{i:03}"), 1, 1))
        .collect();
    let all: Vec<String> = events.iter().chain(&more).cloned().collect();
    let postings = engine::postings(&settings, &all);
    publisher.publish(&postings[100..101]).await;
    support::eventually(
        "the delivery after the 401",
        Duration::from_secs(10),
        || delivered(101),
    )
    .await;
    {
        let s = state.lock().unwrap();
        assert_eq!(s.issued, vec!["tok-1", "tok-2"]);
        assert_eq!(s.unauthorized, 1, "one 401, one refresh");
    }
    // tok-2 lives 1 s: after it, a new token is fetched without a 401.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    publisher.publish(&postings[101..102]).await;
    support::eventually("the delivery after expiry", Duration::from_secs(10), || {
        delivered(102)
    })
    .await;
    {
        let s = state.lock().unwrap();
        assert_eq!(s.issued, vec!["tok-1", "tok-2", "tok-3"]);
        assert_eq!(
            s.unauthorized, 1,
            "refreshed before expiry, not after a 401"
        );
    }
    assert_no_secret(
        &ledger_text(&nats).await,
        &["client-secret-value-3", "tok-1", "tok-2", "tok-3"],
        "LEDGER",
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_pass_the_standardwebhooks_package_with_both_keys_during_a_rotation() {
    let nats = support::nats().await;
    let (rx, url) = support::receiver(None, FailureMode::default()).await;
    let future = (time::OffsetDateTime::now_utc() + Duration::from_secs(3600))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let past = (time::OffsetDateTime::now_utc() - Duration::from_secs(60))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let rotation = |until: &str| {
        format!(
            "signing_secret = \"{SECRET}\"\n\
             signing_secret_previous = \"{PREVIOUS_SECRET}\"\n\
             signing_secret_previous_until = \"{until}\""
        )
    };
    let settings = TestConfig::new()
        .registry("rotating", &format!("{url}/rotating"), &rotation(&future))
        .registry("rotated", &format!("{url}/rotated"), &rotation(&past))
        .settings(&nats.server);
    let events: Vec<String> = (1..=3)
        .map(|v| ticket_event("o-sig", v, v as u32))
        .collect();
    let (_, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    support::eventually("6 postings", Duration::from_secs(10), || async {
        rx.received().len() == 6
    })
    .await;
    d.stop().await;
    let requests: Vec<Value> = rx
        .received()
        .iter()
        .map(|r| {
            json!({
                "path": r.path,
                "body": r.body,
                "headers": {
                    "webhook-id": r.header("webhook-id"),
                    "webhook-timestamp": r.header("webhook-timestamp"),
                    "webhook-signature": r.header("webhook-signature"),
                }
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.json");
    std::fs::write(&file, serde_json::to_vec(&requests).unwrap()).unwrap();
    // An independent verifier: the Standard Webhooks reference package.
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
current, previous = sys.argv[2], sys.argv[3]
for r in json.load(open(sys.argv[1])):
    def ok(secret):
        try:
            Webhook(secret).verify(r["body"], r["headers"])
            return True
        except WebhookVerificationError:
            return False
    n = len(r["headers"]["webhook-signature"].split(" "))
    print(r["path"], n, ok(current), ok(previous))
"#;
    let out = std::process::Command::new(repo().join(".tools/bin/python"))
        .args(["-c", script])
        .arg(&file)
        .args([SECRET, PREVIOUS_SECRET])
        .output()
        .expect(".tools/bin/python runs (run `make tools`)");
    process::assert_succeeded(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    for l in lines {
        match l.split(' ').next() {
            // Both keys sign during the window; each verifies alone.
            Some("/rotating") => assert_eq!(l, "/rotating 2 True True"),
            // After it, only the current key.
            Some("/rotated") => assert_eq!(l, "/rotated 1 True False"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_0_reply_is_refused_by_the_accept_rule_and_its_message_kept() {
    let nats = support::nats().await;
    let server = Scripted::start(|req, _| match req.order().as_str() {
        "o-refused" => reply(
            200,
            json!({"status": "0", "message": "Customer 42 is blocked"}),
        ),
        _ => reply(200, json!({"status": "1", "message": "Order synchronised"})),
    })
    .await;
    let settings = TestConfig::new()
        .delivery(r#"retry_schedule = ["100ms"]"#)
        .registry(
            "komet",
            &server.url("/webhook"),
            r#"[registry.accept]
json_pointer = "/status"
success_values = ["1", 1, true, "success"]"#,
        )
        .settings(&nats.server);
    let events = vec![
        ticket_event("o-refused", 1, 1),
        ticket_event("o-fine", 1, 1),
    ];
    let (_, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    support::eventually("both settled", Duration::from_secs(10), || async {
        let r: Vec<DeliveryRecord> = stored(&nats, "ledger.deliveries.komet.>").await;
        r.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let records: Vec<DeliveryRecord> = stored(&nats, "ledger.deliveries.komet.>").await;
    assert_eq!(records.len(), 2, "a refusal is not retried");
    let refused = records.iter().find(|r| r.order_id == "o-refused").unwrap();
    assert_eq!(refused.outcome, AttemptOutcome::Dead);
    let error = refused.error.as_deref().unwrap();
    assert!(error.contains("refused by the receiver"), "{error}");
    assert!(error.contains("Customer 42 is blocked"), "{error}");
    let fine = records.iter().find(|r| r.order_id == "o-fine").unwrap();
    assert_eq!(fine.outcome, AttemptOutcome::Delivered);
    let alerts: Vec<AlertRecord> = stored(&nats, "ledger.alerts.komet").await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].receiver_message.as_deref(),
        Some("Customer 42 is blocked")
    );
    assert_eq!(server.requests_for("o-refused").len(), 1);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_foreign_redirects_and_oversized_replies_are_failures() {
    let nats = support::nats().await;
    let (rx, url) = support::receiver(None, FailureMode::default()).await;
    let port = url.rsplit(':').next().unwrap().to_owned();
    let server = Scripted::start(|req, _| match req.order().as_str() {
        "o-redirect" => Reply::Respond {
            status: 307,
            headers: vec![("Location", "http://127.0.0.2:9/elsewhere".into())],
            body: vec![],
            delay: Duration::ZERO,
        },
        "o-huge" => Reply::Respond {
            status: 200,
            headers: vec![],
            body: vec![b' '; 300 * 1024],
            delay: Duration::ZERO,
        },
        _ => reply(200, json!({})),
    })
    .await;
    // Validated with loopback allowed, dispatched with it refused: the
    // guard acts when connecting, on the resolved address.
    let settings = TestConfig::new()
        .delivery(r#"retry_schedule = ["10s"]"#)
        .registry("by-name", &format!("http://localhost:{port}/hook"), "")
        .registry("by-ip", &format!("{url}/hook"), "")
        .registry("scripted", &server.url("/hook"), "")
        .settings(&nats.server);
    let strict = TargetPolicy {
        allow_insecure_http: true,
        allow_private_targets: vec![],
    };
    let d = start(&nats, &settings, |o| o.policy = strict);
    let mut by_registry = engine::postings(&settings, &[ticket_event("o-guard", 1, 1)]);
    by_registry.retain(|p| p.registry_id != "scripted");
    let mut publisher = Publisher::new(&nats);
    publisher.publish(&by_registry).await;
    support::eventually("both refused", Duration::from_secs(10), || async {
        let a: Vec<AlertRecord> = stored(&nats, "ledger.alerts.by-name").await;
        let b: Vec<AlertRecord> = stored(&nats, "ledger.alerts.by-ip").await;
        !a.is_empty() && !b.is_empty()
    })
    .await;
    assert!(
        rx.received().is_empty(),
        "nothing reached a private address"
    );
    for r in ["by-name", "by-ip"] {
        let alerts: Vec<AlertRecord> = stored(&nats, &format!("ledger.alerts.{r}")).await;
        assert!(
            alerts[0].reason.contains("private or loopback"),
            "{r}: {}",
            alerts[0].reason
        );
    }
    d.stop().await;

    // Loopback allowed: a redirect to another host is not followed, an
    // oversized reply is a failed (retried) attempt.
    let d = start(&nats, &settings, |_| {});
    let postings = engine::postings(
        &settings,
        &[
            ticket_event("o-redirect", 1, 1),
            ticket_event("o-huge", 1, 1),
        ],
    );
    let scripted: Vec<Posting> = postings
        .into_iter()
        .filter(|p| p.registry_id == "scripted")
        .collect();
    publisher.publish(&scripted).await;
    support::eventually("both attempted", Duration::from_secs(10), || async {
        let r: Vec<DeliveryRecord> = stored(&nats, "ledger.deliveries.scripted.>").await;
        r.len() == 2
    })
    .await;
    let records: Vec<DeliveryRecord> = stored(&nats, "ledger.deliveries.scripted.>").await;
    let of = |order: &str| records.iter().find(|r| r.order_id == order).unwrap();
    for (order, outcome, says) in [
        ("o-redirect", AttemptOutcome::Dead, "another host"),
        ("o-huge", AttemptOutcome::Retrying, "over 256 KiB"),
    ] {
        assert_eq!(of(order).outcome, outcome, "{order}");
        let error = of(order).error.as_deref().unwrap();
        assert!(error.contains(says), "{order}: {error}");
    }
    let huge = of("o-huge");
    assert!(huge.response_excerpt.as_deref().unwrap().len() <= 1024);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_registry_trips_its_breaker_and_is_probed_not_hammered() {
    let nats = support::nats().await;
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healthy.clone();
    let server = Scripted::start(move |_, _| {
        if h.load(std::sync::atomic::Ordering::SeqCst) {
            reply(200, json!({}))
        } else {
            reply(503, json!({"message": "maintenance"}))
        }
    })
    .await;
    let settings = TestConfig::new()
        .delivery("retry_schedule = [\"100ms\"]\nbreaker_failures = 3\nbreaker_cool_down = \"1s\"")
        .registry("flaky", &server.url("/hook"), "max_attempts = 100")
        .settings(&nats.server);
    let events = first_tickets((0..10).map(|i| format!("o-{i}")));
    let (_, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = server.requests().len();
    // Without the breaker: 10 orders retrying every ~100 ms ≈ 250 requests.
    // With it: the first wave, then about one probe per cool-down.
    assert!(
        during <= 20,
        "{during} requests while the registry was down"
    );
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    support::eventually("recovery", Duration::from_secs(10), || async {
        let rd: Vec<RegistryDataRecord> = stored(&nats, "ledger.registry_data.flaky.>").await;
        rd.len() == 10
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_rate_limit_spaces_its_requests() {
    let nats = support::nats().await;
    let server = Scripted::start(|_, _| reply(200, json!({}))).await;
    let settings = TestConfig::new()
        .registry("slow", &server.url("/hook"), "rate_limit_per_s = 10")
        .settings(&nats.server);
    let events = first_tickets((0..20).map(|i| format!("o-{i:02}")));
    let (_, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    support::eventually("20 deliveries", Duration::from_secs(10), || async {
        server.requests().len() == 20
    })
    .await;
    let reqs = server.requests();
    let span = reqs[19].at - reqs[0].at;
    // A burst of 10, then one every 100 ms: about a second for 20.
    assert!(
        span >= Duration::from_millis(850),
        "20 requests in {span:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_go_on_in_order_through_a_nats_server_crash() {
    const ORDERS: usize = 40;
    let mut nats = support::nats().await;
    let (rx, url) = jittery_receiver(30).await;
    let settings = TestConfig::new()
        .delivery(r#"retry_schedule = ["200ms"]"#)
        .registry("books", &format!("{url}/hook"), "rate_limit_per_s = 10000")
        .settings(&nats.server);
    let mut events = Vec::new();
    for v in 1..=3u64 {
        for o in 0..ORDERS {
            events.push(ticket_event(&format!("o-{o:02}"), v, v as u32));
        }
    }
    let (postings, d) = dispatch(&nats, &settings, &events, |o| {
        o.ack_wait = Duration::from_secs(3)
    })
    .await;
    support::eventually("some deliveries", Duration::from_secs(10), || async {
        rx.stats().accepted >= 20
    })
    .await;
    nats.server.kill().await;
    let at_crash = rx.stats().accepted;
    assert!(
        at_crash < 3 * ORDERS as u64,
        "crashed mid-way ({at_crash} accepted)"
    );
    eprintln!(
        "nats-server killed after {at_crash} of {} deliveries",
        3 * ORDERS
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.server.restart().await.unwrap();
    let got = every_key_received(&rx, &postings, "every posting after the crash", 60).await;
    let seq_of = seq_of(&postings);
    let mut bodies: HashMap<&str, &str> = HashMap::new();
    let mut firsts: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in got.iter().filter(|r| r.status == 200) {
        let key = r.idempotency_key.as_deref().unwrap();
        let body = bodies.entry(key).or_insert(r.body.as_str());
        assert_eq!(*body, r.body.as_str(), "one body per key");
        let (order, seq) = &seq_of[key];
        let seen = firsts.entry(order.clone()).or_default();
        if !seen.contains(seq) {
            seen.push(*seq);
        }
        assert_ne!(r.chain_ok, Some(false), "registry_data chain of {order}");
    }
    for (order, seqs) in firsts {
        assert_eq!(seqs, vec![1, 2, 3], "{order} in order");
    }
    d.stop().await;
}

/// `ledgerline run --only dispatcher` as a child process, its logs (text,
/// debug) appended to `log`; killed when dropped.
fn spawn_dispatch(config: &Path, log: &Path) -> tokio::process::Child {
    process::run("debug,async_nats=info")
        .only("dispatcher")
        .text_logs()
        .spawn(config, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_retry_loses_nothing_and_never_resends_early_or_differently() {
    let nats = support::nats().await;
    let (rx, url) = support::receiver(Some(SECRET), FailureMode::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dispatch.log");
    let registry_toml = TestConfig::new()
        .delivery(r#"retry_schedule = ["2s"]"#)
        .registry(
            "erp",
            &format!("{url}/hook"),
            &format!(
                r#"max_attempts = 20
signing_secret = "{SECRET}"
headers = {{ "authenticationToken" = "header-secret-value-4" }}
[registry.auth]
type = "bearer"
token = "bearer-secret-value-5""#
            ),
        )
        .text();
    let config = process::config_file(dir.path(), &nats.server.url(), &registry_toml);
    let settings = support::settings(&nats.server, &registry_toml);
    let orders: Vec<String> = (0..5).map(|i| format!("o-kill-{i}")).collect();
    let mut events = Vec::new();
    for v in 1..=3 {
        for o in &orders {
            events.push(ticket_event(o, v, v as u32));
        }
    }
    let postings = engine::postings(&settings, &events);
    let (first, rest) = postings.split_at(orders.len());
    let mut publisher = Publisher::new(&nats);

    let mut child = spawn_dispatch(&config, &log);
    publisher.publish(first).await;
    support::eventually(
        "posting 1 of each order",
        Duration::from_secs(15),
        || async { rx.stats().accepted == orders.len() as u64 },
    )
    .await;

    // The receiver goes down; postings 2 and 3 arrive; 2 is retried.
    rx.set_failure(FailureMode {
        status: Some(500),
        ..FailureMode::default()
    })
    .unwrap();
    publisher.publish(rest).await;
    let retrying = || async {
        let mut due = Vec::new();
        for o in &orders {
            let r: Vec<DeliveryRecord> = stored(&nats, &subjects::deliveries("erp", o)).await;
            match r.last() {
                Some(last) if last.seq == 2 && last.outcome == AttemptOutcome::Retrying => {
                    due.push(last.next_attempt_at.unwrap());
                }
                _ => return None,
            }
        }
        Some(due)
    };
    support::eventually(
        "every order retrying posting 2",
        Duration::from_secs(15),
        || async { retrying().await.is_some() },
    )
    .await;
    let due = retrying().await.unwrap();
    let earliest_due = due.iter().min().copied().unwrap();

    // SIGKILL mid-retry, and start again at once.
    child.kill().await.unwrap();
    let killed_at = time::OffsetDateTime::now_utc();
    assert!(
        killed_at < earliest_due,
        "killed before the retries were due"
    );
    let failed_before = rx.received().len();
    let mut child = spawn_dispatch(&config, &log);
    rx.set_failure(FailureMode::default()).unwrap();

    let got = every_key_received(&rx, &postings, "every posting delivered", 20).await;
    // Nothing resent before its scheduled time (a restart is no reason).
    for (o, due) in orders.iter().zip(&due) {
        let key2 = postings
            .iter()
            .find(|p| p.order_id.as_str() == o && p.seq == 2)
            .unwrap()
            .idempotency_key
            .to_string();
        let resent: Vec<_> = got[failed_before..]
            .iter()
            .filter(|r| r.idempotency_key.as_deref() == Some(key2.as_str()))
            .collect();
        assert!(!resent.is_empty());
        for r in resent {
            assert!(
                r.at >= *due - Duration::from_millis(50),
                "{o}: resent at {} before its retry was due at {due}",
                r.at
            );
        }
    }
    // Every key always with one body, in order per order, the chain intact.
    let mut bodies: HashMap<String, &str> = HashMap::new();
    for r in &got {
        assert_eq!(r.signature, SignatureCheck::Valid);
        let key = r.idempotency_key.clone().unwrap();
        let body = bodies.entry(key.clone()).or_insert(r.body.as_str());
        assert_eq!(*body, r.body.as_str(), "one body per key");
    }
    for p in &postings {
        assert!(
            bodies.contains_key(&p.idempotency_key.to_string()),
            "posting delivered"
        );
    }
    for o in &orders {
        let accepted: Vec<u64> = got
            .iter()
            .filter(|r| r.order_id.as_deref() == Some(o.as_str()) && r.status == 200)
            .map(|r| {
                postings
                    .iter()
                    .find(|p| p.idempotency_key.to_string() == r.idempotency_key.clone().unwrap())
                    .unwrap()
                    .seq
            })
            .collect();
        assert_eq!(accepted, vec![1, 2, 3], "{o}");
    }
    assert!(got.iter().all(|r| r.chain_ok != Some(false)));

    // No secret in LEDGER or in the dispatcher's debug logs.
    child.kill().await.unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("dispatcher started"), "{logs}");
    let secrets = [
        "header-secret-value-4",
        "bearer-secret-value-5",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ];
    assert_no_secret(&logs, &secrets, "the dispatcher's logs");
    assert_no_secret(&ledger_text(&nats).await, &secrets, "LEDGER");
}

/// Reliability defect 1: a retry lost for good. With more wake-ups than
/// workers, wake-ups wait longer than the ack wait and the server hands
/// them out again, so a worker can hold two copies of one message; it
/// parked one (nak with the retry's delay) and acked the other, and the
/// ack removed the message from the server: nothing would bring the order
/// back. Every posting must arrive anyway, and nothing may stay pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_retry_is_never_lost_when_wake_ups_are_handed_out_twice() {
    const ORDERS: usize = 24;
    let nats = support::nats().await;
    let server = Scripted::start(|req, log| {
        let key = req.key();
        let delay = Duration::from_millis(60);
        if log.iter().all(|r| r.key() != key) {
            Reply::Respond {
                status: 503,
                headers: vec![("Retry-After", "1".to_owned())],
                body: b"{}".to_vec(),
                delay,
            }
        } else {
            Reply::Respond {
                status: 200,
                headers: vec![],
                body: b"{}".to_vec(),
                delay,
            }
        }
    })
    .await;
    let settings = TestConfig::new()
        .delivery("retry_schedule = [\"100ms\"]\nbreaker_failures = 1000\nmax_in_flight = 2")
        .registry("books", &server.url("/hook"), "rate_limit_per_s = 10000")
        .settings(&nats.server);
    let orders: Vec<String> = (0..ORDERS).map(|i| format!("o-{i:02}")).collect();
    let mut events = Vec::new();
    for v in 1..=3u64 {
        events.extend(orders.iter().map(|o| ticket_event(o, v, v as u32)));
    }
    let (postings, d) = dispatch(&nats, &settings, &events, |o| {
        o.ack_wait = Duration::from_millis(600)
    })
    .await;
    let keys: std::collections::HashSet<String> = postings
        .iter()
        .map(|p| p.idempotency_key.to_string())
        .collect();
    support::eventually(
        "every posting delivered after its retry",
        Duration::from_secs(60),
        || async {
            let delivered: std::collections::HashSet<String> = server
                .requests()
                .iter()
                .filter(|r| {
                    server
                        .requests()
                        .iter()
                        .filter(|x| x.key() == r.key())
                        .count()
                        >= 2
                })
                .map(|r| r.key())
                .collect();
            delivered.len() == keys.len()
        },
    )
    .await;
    // Caught up: every wake-up answered, none left behind.
    support::eventually(
        "no wake-up left pending",
        Duration::from_secs(10),
        || async {
            let mut c: jetstream::consumer::PullConsumer = nats
                .js
                .get_stream("LEDGER")
                .await
                .unwrap()
                .get_consumer("dispatcher-books")
                .await
                .unwrap();
            let info = c.info().await.unwrap();
            info.num_pending == 0 && info.num_ack_pending == 0
        },
    )
    .await;
    d.stop().await;
}

/// The safety net: an order left `retrying` with its next attempt long past
/// and nothing pending on the consumer (as defect 1 left it) is found by the
/// sweep, woken by a `wake` control record, and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_wakes_an_overdue_retry_that_nothing_would_bring_back() {
    let nats = support::nats().await;
    let server = Scripted::start(|_, _| reply(200, json!({"journal": "J-1"}))).await;
    let settings = books(&nats, &server.url("/hook"));
    let postings = engine::postings(&settings, &[ticket_event("o-lost", 1, 2)]);
    Publisher::new(&nats).publish(&postings).await;
    let long_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let record = DeliveryRecord {
        registry_id: "books".into(),
        order_id: "o-lost".into(),
        seq: 1,
        idempotency_key: postings[0].idempotency_key,
        attempt: 1,
        outcome: AttemptOutcome::Retrying,
        http_status: Some(503),
        duration_ms: 3,
        error: Some("HTTP 503".into()),
        response_excerpt: None,
        next_attempt_at: Some(long_ago + time::Duration::seconds(5)),
        at: long_ago,
    };
    nats.js
        .publish(
            subjects::deliveries("books", "o-lost"),
            serde_json::to_vec(&record).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // The wake-up is gone from the consumer, as the defect left it.
    let ack_wait = Duration::from_secs(5);
    let consumer = books_consumer(&nats, ack_wait).await;
    let mut batch = consumer.fetch().max_messages(10).messages().await.unwrap();
    use futures::StreamExt as _;
    while let Some(m) = batch.next().await {
        m.unwrap().double_ack().await.unwrap();
    }
    let d = start(&nats, &settings, |o| {
        o.ack_wait = ack_wait;
        o.sweep_every = Duration::from_millis(300);
        o.overdue_grace = Duration::from_secs(1);
    });
    support::eventually(
        "the overdue posting delivered",
        Duration::from_secs(15),
        || async { server.requests_for("o-lost").len() == 1 },
    )
    .await;
    let wakes: Vec<ledgerline::records::ControlRecord> =
        stored(&nats, &subjects::control("books", "o-lost")).await;
    assert!(
        matches!(
            wakes.as_slice(),
            [ledgerline::records::ControlRecord::Wake { seq: 1, .. }]
        ),
        "one wake record: {wakes:?}"
    );
    d.stop().await;
}

/// Reliability defect 6: the in-flight permits were shared by every
/// registry, and a worker holds its permit while its receiver is slow, so
/// one slow registry starved the others. Each registry now has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_registry_does_not_hold_back_another() {
    const ORDERS: usize = 6;
    let nats = support::nats().await;
    let slow = Scripted::start(|_, _| Reply::Respond {
        status: 200,
        headers: vec![],
        body: b"{}".to_vec(),
        delay: Duration::from_millis(1500),
    })
    .await;
    let fast = Scripted::start(|_, _| reply(200, json!({}))).await;
    let settings = TestConfig::new()
        .delivery("max_in_flight = 2")
        .registry("slow", &slow.url("/hook"), "timeout_ms = 5000")
        .registry("fast", &fast.url("/hook"), "")
        .settings(&nats.server);
    let events: Vec<String> = (0..ORDERS)
        .map(|i| ticket_event(&format!("o-{i}"), 1, 1))
        .collect();
    let (_, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    support::eventually(
        "the fast registry's deliveries",
        Duration::from_secs(30),
        || async { fast.requests().len() == ORDERS },
    )
    .await;
    let slow_done = slow.requests().len();
    assert!(
        slow_done <= 2 + 2,
        "the fast registry finished only after the slow one had {slow_done} requests"
    );
    d.stop().await;
}

/// Reliability defect 7: a reply nested ~127 deep was stored as
/// registry_data, but the stored record (one level more) could not be read
/// back (serde_json stops at 128), wedging the order and breaking
/// `deliveries list` for the whole registry. Now such a reply dead-letters
/// its posting with the reason, and everything else goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_nested_too_deep_dead_letters_its_posting_and_wedges_nothing() {
    let nats = support::nats().await;
    let deep = format!("{}{}", "[".repeat(127), "]".repeat(127));
    let server = Scripted::start(move |req, _| {
        let body = if req.order() == "o-deep" {
            deep.clone().into_bytes()
        } else {
            b"{}".to_vec()
        };
        Reply::Respond {
            status: 200,
            headers: vec![],
            body,
            delay: Duration::ZERO,
        }
    })
    .await;
    let settings = books(&nats, &server.url("/hook"));
    let events = [versions("o-deep", 2), versions("o-fine", 1)].concat();
    let (_, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    let want = [("o-fine", Status::Delivered), ("o-deep", Status::Dead)];
    until_statuses(&nats, &want, 15).await;
    let records: Vec<DeliveryRecord> =
        stored(&nats, &subjects::deliveries("books", "o-deep")).await;
    let last = records.last().unwrap();
    assert_eq!((last.seq, last.outcome), (1, AttemptOutcome::Dead));
    assert!(
        last.error
            .as_deref()
            .unwrap()
            .contains("nests 127 levels deep"),
        "{last:?}"
    );
    assert_eq!(server.requests_for("o-deep").len(), 1, "posting 2 is held");
    d.stop().await;
}

/// Reliability defect 10: with two dispatchers overlapping, both can send
/// posting n and each get its own reply; posting n + 1 must carry the
/// registry_data that is *stored*, whoever stored it. The other one's
/// record is stored first (with the message id dispatchers once gave it);
/// ours, guarded by the expected last subject sequence, is refused, and the
/// worker reads the order again. (When the worker's records carried a
/// message id, a cluster's leader answered such a write with a *duplicate*
/// ack, which the worker once took as "mine is stored"; they carry none
/// now, so only the guard answers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_data_stored_by_another_dispatcher_is_what_the_next_posting_carries() {
    let nats = support::nats().await;
    let server = Scripted::start(|req, _| Reply::Respond {
        status: 200,
        headers: vec![],
        body: json!({"by": "us", "seq": req.json()["idempotency_key"]})
            .to_string()
            .into_bytes(),
        // Room for the other dispatcher to store its reply first.
        delay: if req.order() == "o-race" && req.json()["registry_data"] == json!({}) {
            Duration::from_millis(700)
        } else {
            Duration::ZERO
        },
    })
    .await;
    let settings = books(&nats, &server.url("/hook"));
    let postings = engine::postings(&settings, &versions("o-race", 2));
    let mut publisher = Publisher::new(&nats);
    publisher.publish(&postings[..1]).await;
    let first_posting_seq = publisher.last[&subjects::postings("books", "o-race")];
    publisher.publish(&postings[1..]).await;
    let d = start(&nats, &settings, |_| {});
    support::eventually("posting 1 requested", Duration::from_secs(10), || async {
        !server.requests_for("o-race").is_empty()
    })
    .await;
    // The other dispatcher's reply to posting 1, stored while ours waits.
    let posting_seq: HeaderName = "Ledgerline-Posting-Stream-Seq".parse().unwrap();
    store_theirs(&nats, &postings[0], (posting_seq, first_posting_seq)).await;
    support::eventually("posting 2 requested", Duration::from_secs(10), || async {
        server
            .requests_for("o-race")
            .iter()
            .any(|r| r.key() == postings[1].idempotency_key.to_string())
    })
    .await;
    let second = server
        .requests_for("o-race")
        .into_iter()
        .find(|r| r.key() == postings[1].idempotency_key.to_string())
        .unwrap();
    assert_eq!(
        second.json()["registry_data"],
        json!({"by": "the other dispatcher"}),
        "posting 2 carries the registry_data that is stored"
    );
    d.stop().await;
}

/// Reliability defect 2: a read error other than "no message" (NATS gone
/// mid-read) panicked the worker, the admin API handler or the CLI. It is
/// an error now, naming what could not be read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_delivery_state_with_nats_down_is_an_error_not_a_panic() {
    let mut nats = support::nats().await;
    let ledger = nats.js.get_stream("LEDGER").await.unwrap();
    assert!(
        ledgerline::dispatcher::state::Progress::load(&ledger, "books", "o-1")
            .await
            .is_ok()
    );
    nats.server.kill().await;
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        ledgerline::dispatcher::state::Progress::load(&ledger, "books", "o-1"),
    )
    .await
    .expect("the read gives up");
    let e = read.expect_err("NATS is down");
    assert!(
        e.to_string()
            .contains("cannot read ledger.registry_data.books.o-1"),
        "{e}"
    );
}

/// Reliability defect 8: a reply under the 256 KiB cap can grow past the
/// server's max_payload once stored (control characters are escaped six
/// times their size); storing its registry_data then failed forever and
/// the posting was sent again and again, past max_attempts, max_age, the
/// breaker and alerts. Now it is dead-lettered with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_too_large_to_store_is_dead_lettered_not_resent_forever() {
    let server = ledgerline::natsd::NatsServer::builder()
        .max_payload(1024 * 1024)
        .start()
        .await
        .expect("nats-server starts");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    ledgerline::streams::ensure_streams(&js, &"orders".into(), 1)
        .await
        .unwrap();
    let nats = Nats { server, client, js };
    let huge = "\u{1}".repeat(250 * 1024);
    let replies = Scripted::start(move |_, _| Reply::Respond {
        status: 200,
        headers: vec![],
        body: huge.clone().into_bytes(),
        delay: Duration::ZERO,
    })
    .await;
    let settings = books(&nats, &replies.url("/hook"));
    Publisher::new(&nats)
        .publish(&engine::postings(&settings, &versions("o-big", 2)))
        .await;
    let d = start(&nats, &settings, |_| {});
    support::eventually(
        "the posting dead-lettered",
        Duration::from_secs(15),
        || async {
            let records: Vec<DeliveryRecord> =
                stored(&nats, &subjects::deliveries("books", "o-big")).await;
            records.iter().any(|r| r.outcome == AttemptOutcome::Dead)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records: Vec<DeliveryRecord> = stored(&nats, &subjects::deliveries("books", "o-big")).await;
    let dead = records.last().unwrap();
    assert_eq!(
        (dead.seq, dead.attempt, dead.outcome),
        (1, 1, AttemptOutcome::Dead)
    );
    assert!(
        dead.error
            .as_deref()
            .unwrap()
            .contains("cannot be kept as registry_data"),
        "{dead:?}"
    );
    assert_eq!(
        replies.requests().len(),
        1,
        "sent once, not again and again"
    );
    d.stop().await;
}

/// Unacknowledged wake-ups of the dispatcher's consumer for `registry`.
async fn ack_pending(nats: &Nats, registry: &str) -> u64 {
    let stream = nats.js.get_stream("LEDGER").await.unwrap();
    let mut c: jetstream::consumer::PullConsumer = stream
        .get_consumer(&format!("dispatcher-{registry}"))
        .await
        .unwrap();
    let info = c.info().await.unwrap();
    info.num_ack_pending as u64 + info.num_pending
}

/// A dispatcher for one registry with 3 postings of `order` computed and
/// posting 1 published, delivered and its wake-up acked.
async fn order_with_posting_1_delivered(
    order: &str,
) -> (Nats, Receiver, Vec<Posting>, Publisher, Dispatcher) {
    let nats = support::nats().await;
    let (rx, url) = support::receiver(None, FailureMode::default()).await;
    let settings = books(&nats, &format!("{url}/hook"));
    let postings = engine::postings(
        &settings,
        &[
            ticket_event(order, 1, 2),
            ticket_event(order, 2, 3),
            ticket_event(order, 3, 1),
        ],
    );
    let mut publisher = Publisher::new(&nats);
    let d = start(&nats, &settings, |_| {});
    publisher.publish(&postings[..1]).await;
    support::eventually(
        "posting 1 delivered and acked",
        Duration::from_secs(10),
        || async { rx.received().len() == 1 && ack_pending(&nats, "books").await == 0 },
    )
    .await;
    (nats, rx, postings, publisher, d)
}

/// Performance (issue 12): an order's next posting, arriving after its
/// worker ended caught up, used to cost a cold start: the order's state
/// read back from LEDGER (two Direct Gets) although the dispatcher itself
/// had just written it. The state is kept now, and the chain stays right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_orders_next_posting_is_sent_without_reading_its_state_back() {
    let (nats, rx, postings, mut publisher, d) = order_with_posting_1_delivered("o-warm").await;
    use futures::StreamExt as _;
    // Every state read from now on (Direct Get by last subject).
    let mut reads = nats
        .client
        .subscribe("$JS.API.DIRECT.GET.LEDGER.>")
        .await
        .unwrap();
    nats.client.flush().await.unwrap();
    for (i, p) in postings[1..].iter().enumerate() {
        publisher.publish(std::slice::from_ref(p)).await;
        support::eventually(
            "the posting delivered and acked",
            Duration::from_secs(10),
            || async { rx.received().len() == i + 2 && ack_pending(&nats, "books").await == 0 },
        )
        .await;
    }
    nats.client.flush().await.unwrap();
    let mut state_reads = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), reads.next()).await {
        if m.subject.contains("registry_data") || m.subject.contains("deliveries") {
            state_reads.push(m.subject.to_string());
        }
    }
    assert!(
        state_reads.is_empty(),
        "the state was read back from LEDGER: {state_reads:?}"
    );
    // Same chain as ever: each body carries the previous reply.
    let got = rx.received();
    assert!(got.iter().all(|r| r.chain_ok == Some(true)), "{got:?}");
    let rd: Vec<RegistryDataRecord> = stored(&nats, "ledger.registry_data.books.o-warm").await;
    assert_eq!(rd.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    d.stop().await;
}

/// The kept state of a caught-up order can be stale if something else
/// wrote the order's registry_data (another dispatcher): the guarded write
/// refuses, the worker reads LEDGER again, and the posting after carries
/// the registry_data that is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_kept_state_is_refused_by_the_guard_and_read_again() {
    let (nats, rx, postings, mut publisher, d) = order_with_posting_1_delivered("o-stale").await;
    // Posting 2 answered by "another dispatcher" behind this one's back,
    // before this one sees the posting.
    let rd_subject = store_theirs_next(&nats, &postings[1]).await;
    publisher.publish(&postings[1..]).await;
    support::eventually("posting 3 delivered", Duration::from_secs(10), || async {
        rx.received()
            .iter()
            .any(|r| r.idempotency_key.as_deref() == Some(&postings[2].idempotency_key.to_string()))
            && ack_pending(&nats, "books").await == 0
    })
    .await;
    let third = rx
        .received()
        .into_iter()
        .find(|r| r.idempotency_key.as_deref() == Some(&postings[2].idempotency_key.to_string()))
        .unwrap();
    let body: Value = serde_json::from_str(&third.body).unwrap();
    assert_eq!(
        body["registry_data"],
        json!({"by": "the other dispatcher"}),
        "posting 3 carries the registry_data that is stored"
    );
    let rd: Vec<RegistryDataRecord> = stored(&nats, &rd_subject).await;
    assert_eq!(rd.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(rd[1].registry_data, json!({"by": "the other dispatcher"}));
    d.stop().await;
}

/// A failed attempt is guarded like a delivery: a worker whose kept state
/// is stale (posting 2 delivered by "another dispatcher" behind its back)
/// sends posting 2 again, the receiver fails it, and the `retrying` record
/// it would store lands behind posting 2's `delivered` record. The guard
/// refuses it; the worker reads the order again and goes on with posting
/// 3, and posting 2's `delivered` record stays its last.
#[tokio::test]
async fn a_stale_worker_never_stores_a_failed_attempt_behind_a_delivery() {
    let (nats, rx, postings, mut publisher, d) = order_with_posting_1_delivered("o-lag").await;
    let second = &postings[1];
    let rd_subject = store_theirs_next(&nats, second).await;
    let dl_subject = subjects::deliveries("books", "o-lag");
    let guard = next_on(&nats, &dl_subject).await;
    // Theirs took two attempts: its message id is not the stale worker's.
    let theirs = DeliveryRecord {
        registry_id: "books".to_owned(),
        order_id: "o-lag".to_owned(),
        seq: 2,
        idempotency_key: second.idempotency_key,
        attempt: 2,
        outcome: AttemptOutcome::Delivered,
        http_status: Some(200),
        duration_ms: 1,
        error: None,
        response_excerpt: None,
        next_attempt_at: None,
        at: time::OffsetDateTime::now_utc(),
    };
    let id = format!("delivery:{}:2", second.idempotency_key);
    publish_acked(&nats.js, &dl_subject, &id, Some(guard), &theirs).await;
    rx.set_failure(FailureMode {
        status: Some(500),
        ..FailureMode::default()
    })
    .unwrap();
    publisher.publish(&postings[1..]).await;
    let key = |i: usize| postings[i].idempotency_key.to_string();
    support::eventually(
        "posting 3 attempted and its failure stored",
        Duration::from_secs(15),
        || async {
            let records: Vec<DeliveryRecord> = stored(&nats, &dl_subject).await;
            records.iter().any(|r| r.seq == 3)
        },
    )
    .await;
    let sent: Vec<String> = rx
        .received()
        .into_iter()
        .filter_map(|r| r.idempotency_key)
        .collect();
    assert!(
        sent.contains(&key(1)),
        "the stale worker sent posting 2 again"
    );
    let records: Vec<DeliveryRecord> = stored(&nats, &dl_subject).await;
    let after_theirs: Vec<(u64, AttemptOutcome)> = records
        .iter()
        .skip_while(|r| r.seq != 2)
        .map(|r| (r.seq, r.outcome))
        .collect();
    assert_eq!(
        after_theirs.first(),
        Some(&(2, AttemptOutcome::Delivered)),
        "{records:?}"
    );
    assert!(
        after_theirs[1..].iter().all(|(seq, _)| *seq == 3),
        "nothing of posting 2 after its delivery: {records:?}"
    );
    let rd: Vec<RegistryDataRecord> = stored(&nats, &rd_subject).await;
    assert_eq!(rd.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    d.stop().await;
}

/// Performance (issue 12) opened a window: a delivered attempt's
/// registry_data record and delivery record are sent together, and their
/// acks awaited together. Here a dispatcher (`ledgerline run`, a child
/// process) is SIGKILLed inside that window: nats-server is paused
/// (SIGSTOP) from the moment the receiver answers posting 2, so both
/// records are sent and neither is acked, then the dispatcher is killed
/// and the server resumed with whatever it was sent. The next dispatcher
/// goes on from what is stored: every posting booked in order, each key
/// with one body, each posting carrying the registry_data stored for the
/// one before, one registry_data record per posting, nothing left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_with_both_records_of_a_delivery_in_flight_resumes_the_chain() {
    let nats = support::nats().await;
    let pid = nats.server.pid().unwrap().to_string();
    let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = Scripted::start({
        let (pid, paused) = (pid.clone(), paused.clone());
        move |req, _| {
            // Posting 2 (the first to carry a registry_data): the server
            // stops before the dispatcher hears the answer.
            if req.json()["registry_data"] != json!({})
                && !paused.swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                stop_process(&pid);
            }
            reply(200, json!({"answer_to": req.key()}))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dispatch.log");
    let registry_toml = TestConfig::new()
        .registry("books", &server.url("/hook"), "")
        .text();
    let config = process::config_file(dir.path(), &nats.server.url(), &registry_toml);
    let settings = support::settings(&nats.server, &registry_toml);
    let postings = engine::postings(&settings, &versions("o-window", 3));
    Publisher::new(&nats).publish(&postings).await;
    let mut child = spawn_dispatch(&config, &log);
    support::eventually(
        "posting 2 answered with nats-server paused",
        Duration::from_secs(15),
        || async { paused.load(std::sync::atomic::Ordering::SeqCst) },
    )
    .await;
    // Room for the dispatcher to read the answer and send both records.
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().await.unwrap();
    signal(&pid, "-CONT");
    let rd_subject = subjects::registry_data("books", "o-window");
    assert!(
        stored::<RegistryDataRecord>(&nats, &rd_subject).await.len() <= 2,
        "nothing after posting 2 was stored by the killed dispatcher"
    );

    // The killed dispatcher's wake-ups come back after the ack wait: a
    // short one for the next dispatcher.
    let ack_wait = Duration::from_secs(1);
    books_consumer(&nats, ack_wait).await;
    let d = start(&nats, &settings, |o| o.ack_wait = ack_wait);
    support::eventually(
        "every posting delivered",
        Duration::from_secs(20),
        || async {
            stored::<RegistryDataRecord>(&nats, &rd_subject).await.len() == 3
                && ack_pending(&nats, "books").await == 0
        },
    )
    .await;
    d.stop().await;

    let rd: Vec<RegistryDataRecord> = stored(&nats, &rd_subject).await;
    assert_eq!(rd.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let requests = server.requests_for("o-window");
    let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
    let mut booked = Vec::new();
    for r in &requests {
        let body = bodies.entry(r.key()).or_insert_with(|| r.body.clone());
        assert_eq!(*body, r.body, "one body per key");
        if !booked.contains(&r.key()) {
            booked.push(r.key());
        }
    }
    let keys: Vec<String> = postings
        .iter()
        .map(|p| p.idempotency_key.to_string())
        .collect();
    assert_eq!(booked, keys, "booked in order");
    for (i, p) in postings.iter().enumerate().skip(1) {
        let body: Value = serde_json::from_slice(&bodies[&p.idempotency_key.to_string()]).unwrap();
        assert_eq!(
            body["registry_data"],
            rd[i - 1].registry_data,
            "posting {} carries the registry_data stored for the one before",
            p.seq
        );
    }
    let last: Vec<DeliveryRecord> = stored(&nats, &subjects::deliveries("books", "o-window")).await;
    let last = last.last().unwrap();
    assert_eq!((last.seq, last.outcome), (3, AttemptOutcome::Delivered));
}

/// The delivery record of a delivered attempt is no longer written only
/// after its registry_data record is stored (both are sent together), so
/// it has a guard of its own: a worker whose kept state is stale must not
/// store it behind a newer record of the order. Here "another dispatcher"
/// delivered posting 2 and dead-lettered posting 3 behind this one's back;
/// this one sends posting 2 again, both its writes are refused, it reads
/// the order again and holds posting 3. Unguarded, its `delivered` record
/// of posting 2 would land after the `dead` one and release posting 3
/// without a redeliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_delivered_record_never_lands_behind_a_later_dead_letter() {
    let (nats, rx, postings, mut publisher, d) = order_with_posting_1_delivered("o-behind").await;
    let rd_subject = store_theirs_next(&nats, &postings[1]).await;
    let third = &postings[2];
    let dead = DeliveryRecord {
        registry_id: "books".to_owned(),
        order_id: "o-behind".to_owned(),
        seq: 3,
        idempotency_key: third.idempotency_key,
        attempt: 1,
        outcome: AttemptOutcome::Dead,
        http_status: Some(422),
        duration_ms: 1,
        error: Some("HTTP 422".to_owned()),
        response_excerpt: None,
        next_attempt_at: None,
        at: time::OffsetDateTime::now_utc(),
    };
    let dl_subject = subjects::deliveries("books", "o-behind");
    let id = format!("delivery:{}:1", third.idempotency_key);
    publish_acked(&nats.js, &dl_subject, &id, None, &dead).await;

    publisher.publish(&postings[1..]).await;
    until_statuses(&nats, &[("o-behind", Status::Dead)], 10).await;
    support::eventually(
        "every wake-up answered",
        Duration::from_secs(10),
        || async { ack_pending(&nats, "books").await == 0 },
    )
    .await;
    let key = |i: usize| postings[i].idempotency_key.to_string();
    let sent: Vec<String> = rx
        .received()
        .into_iter()
        .filter_map(|r| r.idempotency_key)
        .collect();
    assert!(sent.contains(&key(1)), "the stale worker sent posting 2");
    assert!(
        !sent.contains(&key(2)),
        "the dead-lettered posting 3 was sent without a redeliver"
    );
    let records: Vec<DeliveryRecord> = stored(&nats, &dl_subject).await;
    let last = records.last().unwrap();
    assert_eq!((last.seq, last.outcome), (3, AttemptOutcome::Dead));
    let rd: Vec<RegistryDataRecord> = stored(&nats, &rd_subject).await;
    assert_eq!(rd.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    d.stop().await;
}

/// Pairs the dead-letter index names for `status`, and the orders
/// `deliveries list --status` shows (which checks each against LEDGER).
async fn indexed_and_listed(nats: &Nats, status: Status) -> (Vec<String>, Vec<String>) {
    let index = DeliveryIndex::existing(&nats.js)
        .await
        .unwrap()
        .expect("the dispatcher created the index");
    let named = index.pairs(status, None).await.unwrap();
    let filter = ListFilter {
        registry: None,
        status: Some(status),
    };
    let rows = list_deliveries(&nats.js, &filter, |_, _| {}).await.unwrap();
    (
        named.into_iter().map(|(_, o)| o).collect(),
        rows.into_iter().map(|r| r.order_id).collect(),
    )
}

#[tokio::test]
async fn dead_and_retrying_orders_are_listed_from_the_index_and_leave_it_when_delivered() {
    let nats = support::nats().await;
    let (rx, url) = support::receiver(None, FailureMode::default()).await;
    let toml = TestConfig::new()
        .delivery("retry_schedule = [\"300ms\"]\nbreaker_cool_down = \"1s\"")
        .registry("books", &format!("{url}/hooks"), "max_attempts = 50")
        .registry("strict", &format!("{url}/strict"), "max_attempts = 1")
        .text();
    let settings = support::settings(&nats.server, &toml);
    // Every request refused with a 503: `books` retries, `strict` gives up
    // at once.
    let refuse = |status| FailureMode {
        status: Some(status),
        ..FailureMode::default()
    };
    rx.set_failure(refuse(503)).unwrap();
    let events = [versions("o-1", 2), versions("o-2", 1)].concat();
    let (_, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    let want = [("o-1", Status::Retrying), ("o-2", Status::Retrying)];
    until_statuses(&nats, &want, 20).await;
    support::eventually(
        "both orders dead at strict",
        Duration::from_secs(20),
        || async {
            let (_, listed) = indexed_and_listed(&nats, Status::Dead).await;
            listed.len() == 2
        },
    )
    .await;
    let (named, listed) = indexed_and_listed(&nats, Status::Retrying).await;
    assert_eq!((named.len(), listed.len()), (2, 2), "retrying at books");
    // The index answers per registry too; the API the same.
    let by_registry = ListFilter {
        registry: Some("strict".into()),
        status: Some(Status::Dead),
    };
    let rows = list_deliveries(&nats.js, &by_registry, |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.registry_id.as_str())
            .collect::<Vec<_>>(),
        ["strict", "strict"]
    );
    assert!(rows.iter().all(|r| r.http_status == Some(503)));

    // The receiver recovers: retries go through and leave the index.
    rx.set_failure(FailureMode::default()).unwrap();
    support::eventually("books delivered", Duration::from_secs(20), || async {
        indexed_and_listed(&nats, Status::Retrying).await == (vec![], vec![])
    })
    .await;
    // Dead letters stay until redelivered; then they leave the index too.
    assert_eq!(
        indexed_and_listed(&nats, Status::Dead).await.1,
        ["o-1", "o-2"]
    );
    for o in ["o-1", "o-2"] {
        request_redeliver(&nats.js, "strict", o).await.unwrap();
    }
    support::eventually("strict redelivered", Duration::from_secs(20), || async {
        indexed_and_listed(&nats, Status::Dead).await == (vec![], vec![])
    })
    .await;
    let rows = all_deliveries(&nats).await;
    assert!(
        rows.iter().all(|r| r.status == Status::Delivered),
        "{rows:?}"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_key_without_its_record_is_never_shown_and_reindex_restores_a_lost_one() {
    let nats = support::nats().await;
    let (rx, url) = support::receiver(None, FailureMode::default()).await;
    rx.set_failure(FailureMode {
        status: Some(422),
        ..FailureMode::default()
    })
    .unwrap();
    let settings = books(&nats, &format!("{url}/hooks"));
    let events = [versions("o-dead", 1), versions("o-ok", 1)].concat();
    let (_, d) = dispatch(&nats, &settings, &events, |_| {}).await;
    until_statuses(
        &nats,
        &[("o-dead", Status::Dead), ("o-ok", Status::Dead)],
        20,
    )
    .await;
    rx.set_failure(FailureMode::default()).unwrap();
    request_redeliver(&nats.js, "books", "o-ok").await.unwrap();
    until_statuses(&nats, &[("o-ok", Status::Delivered)], 20).await;
    d.stop().await;

    let index = DeliveryIndex::existing(&nats.js).await.unwrap().unwrap();
    // A crash after the index write and before the record leaves a key
    // with no record behind it: never shown.
    index.mark(Status::Dead, "books", "o-ok", 1).await.unwrap();
    // An index that lost a dead letter's key (written by an older version,
    // or removed by hand) does not show it.
    index.clear("books", "o-dead").await.unwrap();
    assert_eq!(
        indexed_and_listed(&nats, Status::Dead).await,
        (vec!["o-ok".to_owned()], vec![])
    );
    // `deliveries reindex` puts back the lost one and drops the stale one.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "nats_url = \"{}\"\nallow_insecure_http = true\nallow_private_targets = [\"127.0.0.0/8\"]\n{}",
            nats.server.url(),
            TestConfig::new().registry("books", &format!("{url}/hooks"), "").text()
        ),
    )
    .unwrap();
    let out = process::ledgerline(&["deliveries", "reindex", "--config"])
        .arg(config.path())
        .output()
        .unwrap();
    process::assert_succeeded(&out);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "2 (registry, order) pairs read, 1 dead or retrying indexed, 1 stale keys removed"
        ),
        "{said}"
    );
    assert_eq!(
        indexed_and_listed(&nats, Status::Dead).await,
        (vec!["o-dead".to_owned()], vec!["o-dead".to_owned()])
    );
}
