//! The event-sourced core against a real nats-server: publish → aggregator
//! → LEDGER, compared with the offline engine; duplicates, poison messages,
//! crashes of the aggregator and restarts of NATS; `verify`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::stream::Stream;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use ledgerline::aggregator::{AggregatorOptions, run_aggregator};
use ledgerline::config::Settings;
use ledgerline::demo::count;
use ledgerline::streams::{self, LEDGER_STREAM, subjects};

use crate::support::engine::{self, PostingKey, offline_postings};
use crate::support::{self, Nats, process};

const CONFIG: &str = r#"
ack_wait = "5s"

[[registry]]
id = "books"
url = "https://accounting.example/hooks"
event_types = ["*"]

[[registry]]
id = "detail"
url = "https://bi.example/ingest"
event_types = ["order.*", "payment.created"]
group_by = ["currency", "product_id", "payment_method"]
ledger_codes = [{ entry_type = "revenue", product_id = "museum", code = "200" }]

[[registry]]
id = "snapshot"
url = "https://erp.example/revenue"
posting_mode = "full"
entry_types = ["revenue", "tax"]
"#;

/// (registry, order, seq) → body text, as the offline command computes it.
fn offline(settings: &Settings, events: &str) -> BTreeMap<PostingKey, String> {
    offline_postings(settings, events)
        .into_iter()
        .map(|(key, body)| (key, body.to_string()))
        .collect()
}

/// How long the aggregator may take to store what a test expects.
const STORED_WITHIN: Duration = Duration::from_secs(30);

/// Waits until `filter` holds `want` messages (or fails after
/// [`STORED_WITHIN`]).
async fn wait_for(stream: &Stream, filter: &str, want: u64) {
    let what = format!("{want} messages on {filter}");
    support::eventually(&what, STORED_WITHIN, || async {
        count(stream, filter).await >= want
    })
    .await;
    assert_eq!(
        count(stream, filter).await,
        want,
        "more messages than expected on {filter}"
    );
}

fn spawn_aggregator(nats: &Nats, settings: &Settings) -> Aggregator {
    let token = CancellationToken::new();
    let task = tokio::spawn(run_aggregator(
        nats.client.clone(),
        AggregatorOptions::new("orders".into(), settings.ledger),
        support::watch(settings),
        token.clone(),
    ));
    let handle = tokio::spawn(async move {
        task.await.unwrap().unwrap();
    });
    Aggregator { token, handle }
}

/// A server and the settings of [`CONFIG`] on it.
async fn nats_and_settings() -> (Nats, Settings) {
    let nats = support::nats().await;
    let settings = support::settings(&nats.server, CONFIG);
    (nats, settings)
}

/// The `Ledgerline-Message` header of a rejection record.
fn message_of(record: &(String, Option<async_nats::HeaderMap>, bytes::Bytes)) -> String {
    let headers = record.1.as_ref().expect("a rejection has headers");
    let message = headers.get(streams::H_MESSAGE).expect("and a message");
    message.as_str().to_owned()
}

/// The aggregator as the tests spawn it: its task fails the test if the
/// aggregator returns an error.
struct Aggregator {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Aggregator {
    /// Stops it and waits until it has stopped.
    async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap();
    }
}

/// A nats-server with an aggregator running under [`CONFIG`], and the
/// sample events with what the offline command posts for them:
/// (nats, settings, events, offline postings, aggregator).
async fn fixtures_with_an_aggregator() -> (
    Nats,
    Settings,
    String,
    BTreeMap<PostingKey, String>,
    Aggregator,
) {
    let (nats, settings) = nats_and_settings().await;
    let events = engine::fixture_events();
    let want = offline(&settings, &events);
    let aggregator = spawn_aggregator(&nats, &settings);
    (nats, settings, events, want, aggregator)
}

async fn ledger_stream(nats: &Nats) -> Stream {
    nats.js.get_stream(LEDGER_STREAM).await.unwrap()
}

#[tokio::test]
async fn published_fixtures_post_exactly_what_the_offline_engine_computes() {
    let (nats, settings, events, want, aggregator) = fixtures_with_an_aggregator().await;

    let first = support::publish_events(&nats, &events).await;
    // The fixture repeats one event id on purpose; JetStream drops it.
    assert_eq!(
        (first.published, first.duplicates),
        (events.lines().count() as u64 - 1, 1)
    );
    let ledger = ledger_stream(&nats).await;
    wait_for(&ledger, subjects::POSTINGS_ALL, want.len() as u64).await;
    assert_eq!(support::stored_postings(&nats.js).await, want);

    // The same file again: every line is a duplicate, no posting is added.
    let again = support::publish_events(&nats, &events).await;
    assert_eq!(
        (again.published, again.duplicates),
        (0, first.published + 1)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&ledger, subjects::POSTINGS_ALL).await,
        want.len() as u64
    );

    // The stale snapshot of the fixture is recorded as rejected.
    assert_eq!(count(&ledger, "ledger.rejected.stale").await, 1);
    assert_eq!(count(&ledger, subjects::REJECTED_ALL).await, 1);

    aggregator.stop().await;

    let report = support::verify(&nats, &settings).await.unwrap();
    assert!(report.ok(), "{report}: {:?}", report.mismatches);
    assert_eq!(report.matched, want.len() as u64);
}

fn good_event(order: &str, id: &str) -> Value {
    json!({"event_id": id, "type": "order.confirmed", "order_id": order, "occurred_at": "2026-11-22T10:00:00Z",
           "order": {"version": 1, "currency": "EUR", "prices_include_tax": true,
                     "line_items": [{"id": "l", "description": "Ticket", "quantity": 1, "unit_price": "10.00", "tax_rate": "0"}]}})
}

#[tokio::test]
async fn poison_messages_land_in_rejected_with_reasons_while_good_ones_flow() {
    let (nats, settings) = nats_and_settings().await;
    let aggregator = spawn_aggregator(&nats, &settings);

    let mutate = |f: fn(&mut Value)| {
        let mut v = good_event("poison", "p");
        f(&mut v);
        v.to_string().into_bytes()
    };
    let big = {
        let mut v = good_event("poison", "big");
        v["padding"] = json!("x".repeat(2 * 1024 * 1024));
        v.to_string().into_bytes()
    };
    // (subject token, bytes, expected reason)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("poison", b"this is not json".to_vec(), "malformed_json"),
        (
            "poison",
            mutate(|v| v["type"] = json!("order.shipped")),
            "unknown_type",
        ),
        (
            "poison",
            mutate(|v| {
                v.as_object_mut().unwrap().remove("occurred_at");
            }),
            "missing_field",
        ),
        (
            "poison",
            mutate(|v| v["order"]["line_items"][0]["unit_price"] = json!(10.0)),
            "money_not_string",
        ),
        (
            "poison",
            mutate(|v| v["order"]["line_items"][0]["unit_price"] = json!("10.001")),
            "too_many_decimals",
        ),
        (
            "poison",
            mutate(|v| v["order"]["line_items"][0]["quantity"] = json!(-2)),
            "negative_value",
        ),
        (
            "poison",
            mutate(|v| v["order"]["line_items"][0]["discount"] = json!("10.01")),
            "discount_exceeds_line",
        ),
        (
            "poison",
            mutate(|v| v["order"]["line_items"][0]["tax_rate"] = json!("1.2")),
            "tax_rate_out_of_range",
        ),
        (
            "poison",
            mutate(|v| v["order"]["currency"] = json!("EUX")),
            "unknown_currency",
        ),
        (
            "poison",
            mutate(
                |v| v["order"]["payments"] = json!([{"payment_id": "x", "method": "card", "amount": "1.00", "currency": "USD"}]),
            ),
            "currency_mismatch",
        ),
        (
            "poison",
            mutate(|v| v["order_id"] = json!("has space")),
            "invalid_order_id",
        ),
        ("other", mutate(|_| {}), "order_id_mismatch"),
        (
            "poison",
            mutate(|v| {
                v["order"]["line_items"] = json!(vec![v["order"]["line_items"][0].clone(); 1001])
            }),
            "too_many_line_items",
        ),
        ("poison", big, "too_large"),
    ];
    for (i, (token_, bytes, _)) in cases.iter().enumerate() {
        let subject = format!("orders.{token_}");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("poison-{i}").as_str());
        nats.js
            .publish_with_headers(subject, headers, bytes.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        // A good event between every poison one.
        let good = good_event(&format!("good-{i}"), &format!("g{i}")).to_string();
        support::publish_events(&nats, &good).await;
    }
    let ledger = ledger_stream(&nats).await;
    wait_for(&ledger, subjects::REJECTED_ALL, cases.len() as u64).await;
    // Good ones flow: 3 registries subscribe order.confirmed.
    wait_for(&ledger, subjects::POSTINGS_ALL, 3 * cases.len() as u64).await;

    // Lanes run in parallel, so match rejections by reason (unique per case).
    let rejected: BTreeMap<String, (Option<async_nats::HeaderMap>, bytes::Bytes)> =
        support::read_ledger_with_headers(&nats.js, subjects::REJECTED_ALL)
            .await
            .into_iter()
            .map(|(s, h, p)| (s, (h, p)))
            .collect();
    assert_eq!(rejected.len(), cases.len());
    for (i, (_, original, reason)) in cases.iter().enumerate() {
        let (headers, payload) = &rejected[&format!("ledger.rejected.{reason}")];
        let h = headers.as_ref().unwrap();
        assert_eq!(h.get(streams::H_REASON).unwrap().as_str(), *reason);
        assert!(!h.get(streams::H_MESSAGE).unwrap().as_str().is_empty());
        assert!(
            h.get(streams::H_SOURCE)
                .unwrap()
                .as_str()
                .starts_with("orders.")
        );
        assert_eq!(
            &payload[..],
            &original[..],
            "original bytes of case {i} are kept"
        );
    }
    aggregator.stop().await;
}

#[tokio::test]
async fn unroutable_lines_are_refused_by_publish_with_their_line_numbers() {
    let nats = support::nats().await;
    let text = format!(
        "{}\nnot json\n{{\"event_id\":\"e\",\"order_id\":\"bad id\"}}\n\n{}\n",
        good_event("a", "e1"),
        good_event("b", "e2")
    );
    let mut refused = Vec::new();
    let s = ledgerline::publish::publish(
        &nats.client,
        &"orders".into(),
        1,
        "t.ndjson",
        text.as_bytes(),
        |r| refused.push((r.line, r.reason)),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((s.lines, s.published, s.refused_total()), (4, 2, 2));
    use ledgerline::events::RejectReason::*;
    assert_eq!(refused, vec![(2, MalformedJson), (3, InvalidOrderId)]);
    let ledger = ledger_stream(&nats).await;
    assert_eq!(count(&ledger, subjects::REJECTED_ALL).await, 2);
}

#[tokio::test]
async fn killed_aggregators_and_a_restarted_server_lose_and_double_nothing() {
    killed_three_times_and_a_server_restart(engine::many_events(150)).await;
}

/// The same with long-lived orders: 4 orders of 120 events each, round
/// robin, so books are rebuilt from snapshots (every 64 events) taken by
/// the instances that were killed.
#[tokio::test]
async fn killed_aggregators_rebuilding_long_orders_from_snapshots_lose_and_double_nothing() {
    let mut events = String::new();
    for v in 1..=120u64 {
        for o in 0..4 {
            events.push_str(&engine::ticket_event(
                &format!("o-long-{o}"),
                v,
                (v % 6) as u32 + 1,
            ));
            events.push('\n');
        }
    }
    killed_three_times_and_a_server_restart(events).await;
}

/// Publishes `events` in slices while the aggregator (a process) is killed
/// three times and nats-server restarted once; then every posting must be
/// stored once, as the offline engine computes it, and `verify` pass.
async fn killed_three_times_and_a_server_restart(events: String) {
    let mut nats = support::nats().await;
    let settings = support::settings(&nats.server, CONFIG);
    let dir = tempfile::tempdir().unwrap();
    let config_path = process::config_file(dir.path(), &nats.server.url(), CONFIG);
    let aggregator = process::run("warn").only("aggregator");
    let log = dir.path().join("aggregator.log");
    let want = offline(&settings, &events);

    let mut agg = aggregator.spawn(&config_path, &log);
    let publisher = {
        let client = nats.client.clone();
        let events = events.clone();
        tokio::spawn(async move {
            // Publish in slices so the aggregator is mid-stream when killed.
            let lines: Vec<&str> = events.lines().collect();
            for chunk in lines.chunks(40) {
                let text = chunk.join("\n");
                loop {
                    match ledgerline::publish::publish(
                        &client,
                        &"orders".into(),
                        1,
                        "test",
                        text.as_bytes(),
                        |_| {},
                        |_| {},
                    )
                    .await
                    {
                        Ok(_) => break,
                        // NATS is being restarted: try the slice again (the
                        // msg ids make it idempotent).
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    let ledger = ledger_stream(&nats).await;
    // Kill the aggregator three times while it works.
    for round in 0..3 {
        let target = (want.len() as u64) * (round + 1) / 5;
        let started = Instant::now();
        while count(&ledger, subjects::POSTINGS_ALL).await < target
            && started.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if round == 1 {
            // Restart NATS itself under the running aggregator, same port
            // and store; it reconnects and carries on.
            nats.server.stop().await;
            nats.server.restart().await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        agg.start_kill().unwrap();
        agg.wait().await.unwrap();
        agg = aggregator.spawn(&config_path, &log);
    }
    publisher.await.unwrap();
    let ledger = ledger_stream(&nats).await;
    let started = Instant::now();
    while count(&ledger, subjects::POSTINGS_ALL).await < want.len() as u64
        && started.elapsed() < Duration::from_secs(90)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything extra would arrive now; give it the chance to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // `stored` fails on any (registry, order, seq) stored twice.
    let got = support::stored_postings(&nats.js).await;
    support::assert_same_keys(&want, &got, "");
    assert_eq!(got, want, "same postings, but a body differs");
    agg.start_kill().unwrap();
    let _ = agg.wait().await;

    let report = support::verify(&nats, &settings).await.unwrap();
    assert!(report.ok(), "{report}");
}

#[tokio::test]
async fn verify_passes_on_an_honest_ledger_and_names_a_tampered_posting() {
    let (nats, settings, events, want, aggregator) = fixtures_with_an_aggregator().await;
    support::publish_events(&nats, &events).await;
    let ledger = ledger_stream(&nats).await;
    wait_for(&ledger, subjects::POSTINGS_ALL, want.len() as u64).await;
    aggregator.stop().await;

    let verify = || support::verify(&nats, &settings);
    assert!(verify().await.unwrap().ok());

    // Tamper: rewrite the reference order's first posting with 1 cent more
    // revenue, as a new message on its subject, and delete the original.
    let subject = subjects::postings("books", "2e7f2d6f-0473-4935-8cfb-c11b2caa6dab");
    support::tamper_last_posting(&nats, &subject, |sp| {
        sp.posting.entries[1].amount -= rust_decimal::Decimal::new(1, 2);
    })
    .await;

    // And delete another posting outright.
    let other = subjects::postings("snapshot", "ord-incl");
    let gone = ledger
        .get_last_raw_message_by_subject(&other)
        .await
        .unwrap();
    ledger.delete_message(gone.sequence).await.unwrap();

    let report = verify().await.unwrap();
    assert!(!report.ok());
    let lines: Vec<String> = report.mismatches.iter().map(|m| m.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    support::assert_a_line_starts_with(
        &lines,
        "books/2e7f2d6f-0473-4935-8cfb-c11b2caa6dab #1: differs",
    );
    support::assert_a_line_starts_with(&lines, "snapshot/ord-incl #1: missing");

    // The CLI says the same and exits 1.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline"))
        .args(["verify", "--nats-url", &nats.server.url()])
        .env("LEDGERLINE_CONFIG", {
            let p = std::env::temp_dir().join(format!("ll-verify-{}.toml", std::process::id()));
            std::fs::write(&p, CONFIG).unwrap();
            p
        })
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("books/2e7f2d6f-0473-4935-8cfb-c11b2caa6dab #1"),
        "{stdout}"
    );
}

/// Reliability defect 4: an order under the 1 MiB input limit can make a
/// posting too large to store (1,000 lines with long descriptions, grouped
/// per product: entries plus cumulative entries). It used to be published,
/// refused by the server and retried forever, blocking its lane. Now the
/// event is rejected `too_large` with the reason, and nothing else waits.
#[tokio::test]
async fn an_event_whose_posting_would_be_too_large_is_rejected_not_stuck() {
    let (nats, settings) = nats_and_settings().await;
    let aggregator = spawn_aggregator(&nats, &settings);
    let lines: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"id": format!("l{i}"), "product_id": format!("p{i}"),
                   "description": format!("{i} {}", "Guided tour of the old town ".repeat(20)),
                   "quantity": 1, "unit_price": "10.00", "tax_rate": "0.1"})
        })
        .collect();
    let mut huge = good_event("huge", "h1");
    huge["order"]["line_items"] = json!(lines);
    let text = huge.to_string();
    assert!(
        text.len() < 1024 * 1024,
        "under the input limit: {}",
        text.len()
    );
    let mut small = good_event("huge", "h2");
    small["order"]["version"] = json!(2);
    let input = format!("{text}\n{small}\n{}\n", good_event("after", "a1"));
    support::publish_events(&nats, &input).await;
    let ledger = ledger_stream(&nats).await;
    wait_for(&ledger, "ledger.rejected.too_large", 1).await;
    // 3 registries × (the small version of "huge", and "after").
    wait_for(&ledger, subjects::POSTINGS_ALL, 6).await;
    let rejected = support::read_ledger_with_headers(&nats.js, "ledger.rejected.too_large").await;
    let message = message_of(&rejected[0]);
    assert!(message.contains("the posting for registry"), "{message}");
    // The rejected event changed nothing: the next version is posting 1.
    let posted = support::stored_postings(&nats.js).await;
    assert!(posted.contains_key(&("books".to_owned(), "huge".to_owned(), 1)));
    assert!(!posted.contains_key(&("books".to_owned(), "huge".to_owned(), 2)));
    aggregator.stop().await;
}

/// Reliability defect 5: an unreadable stored posting used to be retried
/// forever; its lane stopped, then (queue full) the reader and every lane.
/// Now the order's event is rejected (`internal`, naming the record) and
/// every other order flows.
#[tokio::test]
async fn a_corrupt_stored_posting_rejects_its_orders_event_and_stops_nothing_else() {
    let (nats, settings) = nats_and_settings().await;
    nats.js
        .publish(
            subjects::postings("books", "broken"),
            bytes::Bytes::from_static(b"{ not a posting"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let aggregator = spawn_aggregator(&nats, &settings);
    let mut input = good_event("broken", "b1").to_string();
    for i in 0..40 {
        input.push('\n');
        input.push_str(&good_event(&format!("fine-{i}"), &format!("f{i}")).to_string());
    }
    support::publish_events(&nats, &input).await;
    let ledger = ledger_stream(&nats).await;
    wait_for(&ledger, "ledger.rejected.internal", 1).await;
    // The corrupt one, the broken order's postings to the two other
    // registries (an event's postings are sent together, each on its own
    // subject: only the broken subject refuses), plus 3 registries × 40
    // good orders.
    wait_for(&ledger, subjects::POSTINGS_ALL, 1 + 2 + 3 * 40).await;
    assert_eq!(
        count(&ledger, &subjects::postings("books", "broken")).await,
        1
    );
    for r in ["detail", "snapshot"] {
        assert_eq!(
            count(&ledger, &subjects::postings(r, "broken")).await,
            1,
            "{r}"
        );
    }
    let rejected = support::read_ledger_with_headers(&nats.js, "ledger.rejected.internal").await;
    let message = message_of(&rejected[0]);
    assert!(
        message.contains("ledger.postings.books.broken") && message.contains("unreadable"),
        "{message}"
    );
    aggregator.stop().await;
}

/// A previous instance pulled an order's events and handed them back (nak,
/// as at shutdown) in an order that is not the stream's: the server
/// redelivers them in that order. Each event must still be applied once, in
/// stream order; none may be skipped as "already handled" because a later
/// one overtook it.
#[tokio::test]
async fn events_handed_back_out_of_order_are_all_applied_in_stream_order() {
    let (nats, settings) = nats_and_settings().await;
    let events = engine::many_events(1);
    let want = offline(&settings, &events);
    assert_eq!(support::publish_events(&nats, &events).await.published, 5);

    // The previous instance: the aggregator's durable consumer, all five
    // events pulled, handed back v2, cancel, v1, v3, payment.
    let orders = nats.js.get_stream(streams::ORDERS_STREAM).await.unwrap();
    let consumer = orders
        .get_or_create_consumer(
            ledgerline::aggregator::CONSUMER,
            pull::Config {
                durable_name: Some(ledgerline::aggregator::CONSUMER.to_owned()),
                filter_subject: "orders.>".to_owned(),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ledgerline::streams::ACK_WAIT_DEFAULT,
                max_ack_pending: ledgerline::aggregator::MAX_ACK_PENDING,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(5).messages().await.unwrap();
    let mut pulled = Vec::new();
    while let Some(m) = batch.next().await {
        pulled.push(m.unwrap());
    }
    assert_eq!(pulled.len(), 5);
    for i in [1, 4, 0, 2, 3] {
        pulled[i]
            .ack_with(async_nats::jetstream::message::AckKind::Nak(None))
            .await
            .unwrap();
    }

    let aggregator = spawn_aggregator(&nats, &settings);
    let ledger = ledger_stream(&nats).await;
    wait_for(&ledger, subjects::POSTINGS_ALL, want.len() as u64).await;
    assert_eq!(support::stored_postings(&nats.js).await, want);
    assert_eq!(count(&ledger, subjects::REJECTED_ALL).await, 0);
    aggregator.stop().await;
}

/// An aggregator that (re)starts while NATS is away waits for it rather
/// than failing (which would stop every component of `ledgerline run`),
/// then handles what was published.
#[tokio::test]
async fn an_aggregator_started_while_nats_is_down_waits_for_it_then_posts() {
    let (mut nats, settings) = nats_and_settings().await;
    nats.server.stop().await;
    let aggregator = spawn_aggregator(&nats, &settings);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !aggregator.handle.is_finished(),
        "the aggregator gave up while NATS was down"
    );
    nats.server.restart().await.expect("nats-server restarts");
    let event = engine::ticket_event("o-late", 1, 2);
    let want = engine::postings(&settings, &[&event]).len() as u64;
    assert!(want > 0);
    let first = support::publish_events(&nats, &event).await;
    assert_eq!(first.published, 1);
    let ledger = ledger_stream(&nats).await;
    wait_for(&ledger, subjects::POSTINGS_ALL, want).await;
    aggregator.stop().await;
}

/// A restarted aggregator rebuilds a long-lived order from its own
/// history, read a page (≤ 256 events) per round trip: every page must be
/// folded. Here 300 events of one order (interleaved with another order's)
/// are handled by one aggregator; a second one, its cache empty, gets a
/// stale update (version 280: refused only if the fold reached past the
/// first page) and then version 301, which must post exactly what the
/// offline engine posts for the whole history.
#[tokio::test]
async fn a_rebuilt_order_folds_every_page_of_its_history() {
    const VERSIONS: u64 = 300;
    let (nats, settings) = nats_and_settings().await;
    let mut history = String::new();
    for v in 1..=VERSIONS {
        history.push_str(&engine::ticket_event("o-long", v, (v % 7) as u32 + 1));
        history.push('\n');
        if v % 30 == 0 {
            history.push_str(&engine::ticket_event("o-other", v / 30, v as u32 / 30));
            history.push('\n');
        }
    }
    let ledger = handled_by_an_aggregator_then_stopped(&nats, &settings, &history).await;
    // Without the order's snapshots (a cache, deletable at any time) the
    // rebuild replays the whole history.
    nats.js
        .delete_key_value(ledgerline::snapshots::BUCKET)
        .await
        .unwrap();

    let next = engine::ticket_event("o-long", VERSIONS + 1, 9);
    stale_and_next_to_a_second_aggregator(&nats, &settings, &history, ("o-long", 280), &next).await;
    assert_eq!(count(&ledger, subjects::REJECTED_ALL).await, 1);
}

/// Every 64 events a lane stores its order's state in the KV bucket
/// `ledgerline_books`; a rebuild starts from that snapshot and replays only
/// the events after it. Proved by deleting the order's events up to the
/// snapshot (its payment among them) before a second aggregator, its cache
/// empty, gets a stale update and the next version: it refuses the one
/// and posts for the other exactly what the offline engine posts for the
/// whole history, the payment included.
#[tokio::test]
async fn a_rebuilt_order_starts_from_its_snapshot_and_replays_what_follows() {
    const VERSIONS: u64 = 150;
    let (nats, settings) = nats_and_settings().await;
    let mut history = String::new();
    for v in 1..=VERSIONS {
        history.push_str(&engine::ticket_event("o-snap", v, (v % 5) as u32 + 1));
        history.push('\n');
        if v == 1 {
            let payment = json!({"event_id": "o-snap-pay", "type": "payment.created",
                "order_id": "o-snap", "occurred_at": "2026-11-22T11:00:00Z",
                "payment": {"payment_id": "p1", "method": "card", "amount": "10.00", "currency": "EUR"}});
            history.push_str(&format!("{payment}\n"));
        }
        if v % 20 == 0 {
            history.push_str(&engine::ticket_event("o-side", v / 20, 2));
            history.push('\n');
        }
    }
    handled_by_an_aggregator_then_stopped(&nats, &settings, &history).await;

    // The latest snapshot: after the order's 128th event (the payment is
    // its second), version 127.
    let books = nats
        .js
        .get_key_value(ledgerline::snapshots::BUCKET)
        .await
        .unwrap();
    let entry = books.get("o-snap").await.unwrap().expect("a snapshot");
    let snapshot: ledgerline::snapshots::Snapshot = serde_json::from_slice(&entry).unwrap();
    assert_eq!(snapshot.state.version, Some(127));
    assert_eq!(snapshot.state.payments.len(), 1);
    let orders = nats.js.get_stream(streams::ORDERS_STREAM).await.unwrap();
    let mut deleted = 0;
    while let Some(m) = streams::next_on_subject(&orders, "orders.o-snap", 1)
        .await
        .unwrap()
        .filter(|m| m.sequence <= snapshot.orders_seq)
    {
        orders.delete_message(m.sequence).await.unwrap();
        deleted += 1;
    }
    assert_eq!(deleted, 128);

    let next = engine::ticket_event("o-snap", VERSIONS + 1, 4);
    stale_and_next_to_a_second_aggregator(&nats, &settings, &history, ("o-snap", 140), &next).await;
}

/// Publishes `history` to a fresh aggregator, waits until it has stored
/// every posting the offline engine computes, stops it; returns LEDGER.
async fn handled_by_an_aggregator_then_stopped(
    nats: &Nats,
    settings: &Settings,
    history: &str,
) -> Stream {
    let first = spawn_aggregator(nats, settings);
    support::publish_events(nats, history).await;
    let ledger = ledger_stream(nats).await;
    let want = offline(settings, history);
    wait_for(&ledger, subjects::POSTINGS_ALL, want.len() as u64).await;
    first.stop().await;
    ledger
}

/// After [`handled_by_an_aggregator_then_stopped`]: publishes a stale
/// update of `order` (its `version` again, under a new event id) and then
/// `next`, and starts a second aggregator, its cache empty. The stale one
/// must be refused and every posting be what the offline engine computes
/// for the whole history.
async fn stale_and_next_to_a_second_aggregator(
    nats: &Nats,
    settings: &Settings,
    history: &str,
    (order, version): (&str, u64),
    next: &str,
) {
    let mut stale: Value = serde_json::from_str(&engine::ticket_event(order, version, 1)).unwrap();
    stale["event_id"] = json!(format!("{order}-late-{version}"));
    let later = format!("{stale}\n{next}\n");
    support::publish_events(nats, &later).await;
    let second = spawn_aggregator(nats, settings);
    let ledger = ledger_stream(nats).await;
    let want = offline(settings, &format!("{history}{later}"));
    wait_for(&ledger, subjects::POSTINGS_ALL, want.len() as u64).await;
    wait_for(&ledger, "ledger.rejected.stale", 1).await;
    assert_eq!(support::stored_postings(&nats.js).await, want);
    second.stop().await;
}
