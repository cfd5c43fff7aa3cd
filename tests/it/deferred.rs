//! Deferred revenue (SPEC 2, `revenue_recognition = "on_redemption"`)
//! through the real pipeline: the golden case `deferred_revenue` published
//! to a real nats-server, posted by the aggregator, delivered by the
//! dispatcher to a loopback receiver, with nats-server restarted between
//! the redemptions, refused redemptions recorded on
//! `ledger.rejected.<reason>`, and `verify` clean afterwards.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ledgerline::receiver::FailureMode;
use ledgerline::service::Component;
use serde_json::Value;

use crate::support::{self, Service, eventually};

fn case(file: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/deferred_revenue");
    std::fs::read_to_string(dir.join(file)).unwrap()
}

/// What an accounting system books of a body: everything but the
/// registry_data chain (the receiver's own answers).
fn booked(body: &Value) -> (String, Value) {
    (
        body["idempotency_key"].as_str().unwrap().to_owned(),
        body["ledger_entries"].clone(),
    )
}

#[tokio::test]
async fn redemptions_move_deferred_revenue_to_revenue_at_the_receiver() {
    let mut nats = support::nats().await;
    let (rx, url) = support::receiver(None, FailureMode::default()).await;
    let config = case("config.toml").replace("https://accounting.example", &url);
    let settings = support::settings(&nats.server, &config);
    let svc = Service::start(settings.clone(), &Component::ALL).await;
    let want: BTreeMap<String, Value> = case("expected.ndjson")
        .lines()
        .map(|l| booked(&serde_json::from_str::<Value>(l).unwrap()["body"]))
        .collect();

    // The confirmation, its payment and the first redemption; then
    // nats-server goes away and comes back; then the rest.
    let events = case("events.ndjson");
    let lines: Vec<&str> = events.lines().collect();
    let (first, rest) = lines.split_at(3);
    let published = support::publish_events(&nats, &(first.join("\n") + "\n")).await;
    assert!(published.refused.is_empty(), "{:?}", published.refused);
    eventually(
        "the first redemption delivered",
        Duration::from_secs(30),
        || async { rx.received().iter().filter(|r| r.status == 200).count() >= 8 },
    )
    .await;
    nats.server.restart().await.expect("nats-server restarts");
    let published = support::publish_events(&nats, &(rest.join("\n") + "\n")).await;
    assert!(published.refused.is_empty(), "{:?}", published.refused);
    eventually(
        "every posting delivered",
        Duration::from_secs(30),
        || async { rx.received().iter().filter(|r| r.status == 200).count() >= want.len() },
    )
    .await;
    let got: BTreeMap<String, Value> = rx
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| booked(&serde_json::from_str(&r.body).unwrap()))
        .collect();
    assert_eq!(got, want, "the receiver booked exactly the golden postings");
    // A redemption moves revenue within one posting: a credit of revenue
    // and a debit of deferred revenue of the same amount.
    let moved = rx
        .received()
        .iter()
        .filter(|r| r.status == 200 && r.body.contains("\"Deferred Revenue: Child Ticket\""))
        .filter(|r| r.body.contains("\"quantity\":-1"))
        .count();
    assert_eq!(
        moved, 1,
        "the child ticket's redemption reached `tickets` once"
    );

    for reason in ["over_redemption", "unknown_line_item"] {
        let subject = format!("ledger.rejected.{reason}");
        eventually(&subject, Duration::from_secs(10), || async {
            support::count_ledger(&nats.js, &subject).await == 1
        })
        .await;
    }
    svc.stop().await;
    let report = support::verify(&nats, &settings).await.unwrap();
    assert!(report.ok(), "{report}: {:?}", report.mismatches);
    assert_eq!(report.matched, want.len() as u64);
}
