//! `registry backfill` (SPEC 6): a registry created after its orders gets
//! each order's current ledger as its first posting, once — through the
//! admin API and the CLI, twice in a row, killed midway and run again, and
//! racing the aggregator on orders that keep changing.

use std::collections::BTreeMap;
use std::time::Duration;

use ledgerline::engine::Engine;
use ledgerline::events::parse_event;
use ledgerline::records::StoredPosting;
use ledgerline::registry::RegistryConfig;
use ledgerline::registry_store::ChangedBy;
use ledgerline::service::Component;
use serde_json::{Value, json};

use crate::support::engine::{many_events, ticket_event};
use crate::support::process::{config_file, ledgerline};
use crate::support::{self, Service, eventually};

/// Every posting of `registry` on LEDGER, by (order, seq), with whether it
/// was stored by a backfill.
async fn postings_of(
    js: &async_nats::jetstream::Context,
    registry: &str,
) -> BTreeMap<(String, u64), (StoredPosting, bool)> {
    let filter = format!("ledger.postings.{registry}.>");
    let mut out = BTreeMap::new();
    for (_, headers, payload) in support::read_ledger_with_headers(js, &filter).await {
        let stored: StoredPosting = serde_json::from_slice(&payload).unwrap();
        let backfilled = headers
            .as_ref()
            .and_then(|h| h.get(ledgerline::backfill::H_BACKFILL))
            .is_some_and(|v| v.as_str() == "true");
        let key = (stored.posting.order_id.to_string(), stored.posting.seq);
        assert!(
            out.insert(key.clone(), (stored, backfilled)).is_none(),
            "{registry} posting {key:?} stored twice"
        );
    }
    out
}

/// What `registry` has been sent for each order so far (its cursor), per
/// the offline engine run over `events` with the registries of `settings`.
fn offline_cursors(
    settings: &ledgerline::config::Settings,
    events: &str,
    registry: &str,
) -> BTreeMap<String, Value> {
    let mut engine = Engine::new(settings.ledger, settings.registries.clone());
    for line in events.lines().filter(|l| !l.trim().is_empty()) {
        let ev = parse_event(line.as_bytes(), None).expect("test events parse");
        let _ = engine.process(&ev);
    }
    engine
        .books()
        .filter_map(|b| {
            let c = b.cursors.get(registry)?;
            Some((b.state.order_id.to_string(), json!(c.posted)))
        })
        .collect()
}

/// `late`, subscribed to every event type: its cursor after an order's
/// last event is the order's whole ledger.
/// `settings` with `registry` added, as a config file naming it would give.
fn with_registry(
    settings: &ledgerline::config::Settings,
    registry: RegistryConfig,
) -> ledgerline::config::Settings {
    let mut with = settings.clone();
    with.registries
        .push(registry.validate(&with.policy).expect("a valid registry"));
    with
}

fn late_registry(url: &str, mode: &str, rate: u32) -> RegistryConfig {
    let types: Vec<&str> = ledgerline::events::EventType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect();
    serde_json::from_value(json!({
        "id": "late", "url": format!("{url}/hooks"), "posting_mode": mode,
        "rate_limit_per_s": rate, "event_types": types,
    }))
    .expect("a valid registry")
}

#[tokio::test]
async fn a_registry_created_late_gets_each_orders_ledger_once_then_deltas() {
    let nats = support::nats().await;
    let bl = support::books_and_late(&nats).await;
    let (books, late, late_url, settings) = (bl.books, bl.late, bl.late_url, bl.settings);
    let svc = Service::start(settings.clone(), &Component::ALL).await;
    let events = many_events(6);
    support::publish_events(&nats, &events).await;
    let books_total =
        support::engine::postings(&settings, &events.lines().collect::<Vec<_>>()).len();
    eventually(
        "books has every posting",
        Duration::from_secs(20),
        || async { books.received().iter().filter(|r| r.status == 200).count() == books_total },
    )
    .await;

    // `late` is created over the API after every order; nothing is posted
    // to it until the backfill.
    svc.create_registry(&serde_json::to_value(late_registry(&late_url, "full", 50)).unwrap())
        .await;
    let (status, body) = svc.post_empty("/v1/registries/nope/backfill").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = svc
        .post(
            "/v1/registries/late/backfill",
            &json!({"orders": ["ord-0001", "no such"]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("orders[1]")),
        "{body}"
    );
    let (status, body) = svc.post_empty("/v1/registries/late/backfill").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "running");
    eventually("the backfill is done", Duration::from_secs(20), || async {
        svc.get("/v1/registries/late/backfill").await.1["state"] == "done"
    })
    .await;
    let (_, job) = svc.get("/v1/registries/late/backfill").await;
    assert_eq!(job["summary"]["orders"], 6, "{job}");
    assert_eq!(job["summary"]["posted"], 6, "{job}");

    // Each order's first posting is its ledger now, as a full-mode `late`
    // would have been sent after the order's last event.
    let with_late = with_registry(&settings, late_registry(&late_url, "full", 50));
    let want = offline_cursors(&with_late, &events, "late");
    let stored = postings_of(&nats.js, "late").await;
    assert_eq!(stored.len(), 6);
    for ((order, seq), (sp, backfilled)) in &stored {
        assert_eq!(*seq, 1);
        assert!(backfilled, "{order}: marked as a backfill");
        assert_eq!(
            json!(sp.posting.cumulative),
            want[order],
            "{order}: the ledger now"
        );
        assert_eq!(
            sp.posting.idempotency_key,
            ledgerline::posting::idempotency_key("late", order, 1)
        );
    }
    eventually(
        "late receives the 6 first postings",
        Duration::from_secs(20),
        || async { late.received().iter().filter(|r| r.status == 200).count() == 6 },
    )
    .await;

    // Run again from the CLI: nothing more is posted.
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &nats.server.url(), "");
    let out = ledgerline(&["registry", "backfill", "late", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("6 orders, 0 first postings stored, 6 already posted"),
        "{err}"
    );

    // The next event of an order is posted on top of the backfilled one.
    support::publish_events(&nats, &ticket_event("ord-0001", 4, 9)).await;
    eventually(
        "late receives posting 2 of ord-0001",
        Duration::from_secs(20),
        || async { late.received().iter().filter(|r| r.status == 200).count() == 7 },
    )
    .await;
    let last = late.received().last().cloned().unwrap();
    assert_eq!(
        last.idempotency_key.as_deref(),
        Some(
            ledgerline::posting::idempotency_key("late", "ord-0001", 2)
                .to_string()
                .as_str()
        )
    );
    let all = format!("{events}{}\n", ticket_event("ord-0001", 4, 9));
    let want = offline_cursors(&with_late, &all, "late");
    let stored = postings_of(&nats.js, "late").await;
    let (second, backfilled) = &stored[&("ord-0001".to_owned(), 2)];
    assert!(!backfilled);
    assert_eq!(json!(second.posting.cumulative), want["ord-0001"]);
    svc.stop().await;
    // verify replays the backfill as what it is: `late` has nothing of an
    // order before its backfilled posting 1.
    let report = support::verify(&nats, &settings).await.unwrap();
    assert!(report.ok(), "{report}: {:?}", report.mismatches);
}

#[tokio::test]
async fn a_backfill_killed_midway_goes_on_where_it_stopped_when_run_again() {
    let nats = support::nats().await;
    // Twenty orders on ORDERS, never posted (no aggregator runs here).
    support::publish_events(&nats, &many_events(20)).await;
    let policy = ledgerline::registry::TargetPolicy {
        allow_insecure_http: true,
        allow_private_targets: vec!["127.0.0.0/8".parse().unwrap()],
    };
    let store = ledgerline::registry_store::RegistryStore::open(&nats.js, policy, 1)
        .await
        .unwrap();
    store
        .create(
            late_registry("http://127.0.0.1:9", "delta", 5),
            ChangedBy::Cli,
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &nats.server.url(), "");
    let backfill = || {
        let mut cmd = ledgerline(&["registry", "backfill", "late", "--config"]);
        cmd.arg(&config);
        cmd
    };

    // Five a second: killed after a few, well before the twenty.
    let mut child = tokio::process::Command::from(backfill()).spawn().unwrap();
    eventually(
        "a few first postings stored",
        Duration::from_secs(20),
        || async { support::count_ledger(&nats.js, "ledger.postings.late.>").await >= 3 },
    )
    .await;
    child.kill().await.unwrap();
    let before = support::count_ledger(&nats.js, "ledger.postings.late.>").await;
    assert!(before < 20, "killed before the end ({before} stored)");

    let out = backfill().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "20 orders, {} first postings stored, {before} already posted",
            20 - before
        )),
        "{err}"
    );
    let stored = postings_of(&nats.js, "late").await;
    assert_eq!(stored.len(), 20, "one first posting per order, none twice");
    assert!(stored.keys().all(|(_, seq)| *seq == 1));
}

#[tokio::test]
async fn a_backfill_racing_the_aggregator_leaves_each_order_posted_once_and_in_step() {
    let nats = support::nats().await;
    let bl = support::books_and_late(&nats).await;
    let (late, late_url, settings) = (bl.late, bl.late_url, bl.settings);
    let svc = Service::start(settings.clone(), &Component::ALL).await;
    let first = many_events(30);
    support::publish_events(&nats, &first).await;
    // `late` (delta) appears while the aggregator is still at work.
    svc.create_registry(&serde_json::to_value(late_registry(&late_url, "delta", 200)).unwrap())
        .await;
    let (status, body) = svc.post_empty("/v1/registries/late/backfill").await;
    assert_eq!(status, 202, "{body}");
    // More events for the same orders while the backfill runs.
    let mut more = String::new();
    for o in 0..30 {
        more.push_str(&ticket_event(&format!("ord-{o:04}"), 9, 7));
        more.push('\n');
    }
    support::publish_events(&nats, &more).await;
    eventually("the backfill is done", Duration::from_secs(30), || async {
        svc.get("/v1/registries/late/backfill").await.1["state"] == "done"
    })
    .await;
    let (_, job) = svc.get("/v1/registries/late/backfill").await;
    let s = &job["summary"];
    assert_eq!(
        s["posted"].as_u64().unwrap() + s["already_posted"].as_u64().unwrap(),
        30,
        "every order posted once, by the backfill or the aggregator: {job}"
    );
    let all = format!("{first}{more}");
    let with_late = with_registry(&settings, late_registry(&late_url, "delta", 200));
    let want = offline_cursors(&with_late, &all, "late");
    // Every order ends with what `late` must have been sent in all, its
    // postings numbered 1..n without a gap, whoever wrote the first.
    eventually(
        "late's postings catch up",
        Duration::from_secs(30),
        || async {
            let stored = postings_of(&nats.js, "late").await;
            let mut last: BTreeMap<&str, &StoredPosting> = BTreeMap::new();
            for ((order, _), (sp, _)) in &stored {
                last.insert(order, sp);
            }
            last.len() == 30
                && last
                    .iter()
                    .all(|(o, sp)| json!(sp.posting.cumulative) == want[*o])
        },
    )
    .await;
    let stored = postings_of(&nats.js, "late").await;
    let mut seqs: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (order, seq) in stored.keys() {
        seqs.entry(order).or_default().push(*seq);
    }
    for (order, s) in &seqs {
        assert_eq!(*s, (1..=s.len() as u64).collect::<Vec<_>>(), "{order}");
    }
    // `late` can be complete while `books` is not: a backfill that ran
    // after an order's last event was stored posts that order's whole
    // ledger to `late` before the aggregator has handled those events.
    // verify replays every stored event, so it waits for the aggregator.
    support::settled(&nats.js).await;
    let report = support::verify(&nats, &settings).await.unwrap();
    assert!(report.ok(), "{report}: {:?}", report.mismatches);
    // The receiver got each posting once per key, in order per order.
    let delivered: usize = stored.len();
    eventually(
        "late receives every posting",
        Duration::from_secs(30),
        || async { late.stats().distinct_keys as usize == delivered },
    )
    .await;
    svc.stop().await;
}
