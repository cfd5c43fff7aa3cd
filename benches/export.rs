//! Export at scale: 10,000 and then 100,000 postings (9 entries each, one
//! delivery record each) exported to CSV from a real nats-server; prints
//! postings/s and the peak RSS of the export process, and fails if memory
//! grows by more than 8 MiB between the two (the export streams).
//!
//! `cargo bench --bench export` (about a minute on 2 cores). The export runs
//! as a child `ledgerline export` process so its peak RSS is its own.

use std::path::Path;
use std::time::Instant;

use async_nats::jetstream;
use ledgerline::engine::Engine;
use ledgerline::events::{OrderId, parse_event};
use ledgerline::natsd::NatsServer;
use ledgerline::posting::{Posting, idempotency_key};
use ledgerline::records::{AttemptOutcome, DeliveryRecord, StoredPosting};
use ledgerline::streams::{self, subjects};

const PUBLISH_WINDOW: usize = 512;

fn template() -> Posting {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden/tax_rates");
    let settings = ledgerline::config::Config::from_toml_with_env(
        &std::fs::read_to_string(root.join("config.toml")).expect("fixture config"),
        "config.toml",
        std::iter::empty(),
    )
    .expect("parses")
    .validate()
    .expect("valid");
    let mut engine = Engine::new(settings.ledger, settings.registries);
    let events = std::fs::read_to_string(root.join("events.ndjson")).expect("fixture events");
    let line = events.lines().next().expect("one event");
    let ev = parse_event(line.as_bytes(), None).expect("valid event");
    engine.process(&ev).expect("applies").remove(0)
}

async fn publish(js: &jetstream::Context, template: &Posting, from: usize, n: usize) {
    let mut acks = Vec::with_capacity(PUBLISH_WINDOW);
    for i in from..from + n {
        let mut p = template.clone();
        p.registry_id = "bulk".into();
        p.order_id = OrderId::parse(&format!("bulk-{i:07}")).expect("valid id");
        p.idempotency_key = idempotency_key("bulk", p.order_id.as_str(), 1);
        let record = DeliveryRecord {
            registry_id: "bulk".into(),
            order_id: p.order_id.to_string(),
            seq: 1,
            idempotency_key: p.idempotency_key,
            attempt: 1,
            outcome: AttemptOutcome::Delivered,
            http_status: Some(200),
            duration_ms: 12,
            error: None,
            response_excerpt: None,
            next_attempt_at: None,
            at: time::OffsetDateTime::now_utc(),
        };
        let order = p.order_id.to_string();
        let stored = StoredPosting {
            source_seq: i as u64 + 1,
            previous_subject_seq: 0,
            posting: p,
        };
        for (subject, payload) in [
            (
                subjects::postings("bulk", &order),
                serde_json::to_vec(&stored).expect("encodes"),
            ),
            (
                subjects::deliveries("bulk", &order),
                serde_json::to_vec(&record).expect("encodes"),
            ),
        ] {
            acks.push(js.publish(subject, payload.into()).await.expect("publish"));
            if acks.len() == PUBLISH_WINDOW {
                for a in acks.drain(..) {
                    a.await.expect("ack");
                }
            }
        }
    }
    for a in acks {
        a.await.expect("ack");
    }
}

/// Runs `ledgerline export` (release build) and returns its summary line.
fn export(url: &str, dir: &Path) -> String {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/ledgerline");
    let summary = dir.join("summary.txt");
    let out = std::process::Command::new(&bin)
        .args(["export", "--nats-url", url, "--out"])
        .arg(dir.join("bulk.csv"))
        .arg("--summary")
        .arg(&summary)
        .output()
        .expect("run `cargo build --release` first");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&summary)
        .expect("summary written")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn rss_mib(line: &str) -> f64 {
    line.split("peak RSS ")
        .nth(1)
        .and_then(|r| r.trim_end_matches(" MiB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let server = NatsServer::start()
        .await
        .expect("nats-server (run `make tools`)");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    streams::ensure_streams(&js, &"orders".into(), 1)
        .await
        .expect("streams");
    let dir = tempfile::tempdir().expect("temp dir");
    let template = template();

    let t = Instant::now();
    publish(&js, &template, 0, 10_000).await;
    eprintln!(
        "published 10,000 postings in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let small = export(&server.url(), dir.path());
    publish(&js, &template, 10_000, 90_000).await;
    let large = export(&server.url(), dir.path());
    println!("export  10,000 postings: {small}");
    println!("export 100,000 postings: {large}");
    let growth = rss_mib(&large) - rss_mib(&small);
    println!("peak RSS growth from 10k to 100k: {growth:.1} MiB");
    assert!(growth < 8.0, "export memory grew by {growth:.1} MiB");
}
