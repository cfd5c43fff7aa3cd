//! Two `ledgerline run` against one NATS (what anyone does for high
//! availability): the second must stand by, fenced, until the first dies,
//! then take over — and the books must come out exactly as one instance
//! would have written them (reliability defect 11).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::DirectGetErrorKind;
use ledgerline::engine::Engine;
use ledgerline::events::parse_event;
use ledgerline::receiver::{FailureMode, Receiver};
use ledgerline::records::StoredPosting;
use serde_json::json;
use tokio::net::TcpListener;

use crate::support::{self, process};

fn event(order: &str, version: u64, adults: u32) -> String {
    json!({
        "event_id": format!("{order}-v{version}"),
        "type": if version == 1 { "order.confirmed" } else { "order.updated" },
        "order_id": order,
        "occurred_at": "2026-11-22T10:00:00Z",
        "order": {
            "version": version, "currency": "EUR", "prices_include_tax": true,
            "line_items": [{"id": "li-1", "product_id": "museum", "description": "Museum",
                            "quantity": adults, "unit_price": "11.00", "tax_rate": "0.1"}]
        }
    })
    .to_string()
}

async fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_stands_by_fenced_and_takes_over_when_the_first_is_killed() {
    const ORDERS: usize = 150;
    let nats = support::nats().await;
    // One receiver per registry: a receiver checks the registry_data chain
    // per order.
    let mut receivers = Vec::new();
    for _ in 0..2 {
        let rx = Receiver::new(
            None,
            FailureMode {
                share: 0.0,
                delay_ms: 5,
                ..FailureMode::default()
            },
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(rx.clone().serve(listener, std::future::pending()));
        receivers.push((rx, url));
    }
    let registries = format!(
        "[delivery]\nretry_schedule = [\"200ms\"]\n\
         [[registry]]\nid = \"books\"\nurl = \"{}\"\nrate_limit_per_s = 10000\n\
         [[registry]]\nid = \"snapshot\"\nurl = \"{}\"\nposting_mode = \"full\"\nrate_limit_per_s = 10000\n",
        receivers[0].1, receivers[1].1
    );
    let delivered = || {
        receivers
            .iter()
            .map(|(rx, _)| rx.stats().distinct_keys)
            .sum::<u64>()
    };
    let settings = support::settings(&nats.server, &registries);
    let dir = tempfile::tempdir().unwrap();
    let config = process::service_config(
        dir.path(),
        &nats.server.url(),
        &format!("lease_ttl = \"4s\"\n{registries}"),
    );

    // What one instance would write: the offline engine over the same events.
    let mut events = Vec::new();
    for v in 1..=3u64 {
        for o in 0..ORDERS {
            events.push(event(&format!("o-{o:03}"), v, v as u32));
        }
    }
    let mut engine = Engine::new(settings.ledger, settings.registries.clone());
    let mut want: BTreeMap<(String, String, u64), String> = BTreeMap::new();
    for e in &events {
        let ev = parse_event(e.as_bytes(), None).unwrap();
        for p in engine.process(&ev).unwrap() {
            let body = serde_json::to_string(&p.body(&json!({}))).unwrap();
            want.insert(
                (p.registry_id.clone(), p.order_id.as_str().to_owned(), p.seq),
                body,
            );
        }
    }

    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = process::spawn_run(&config, &log_a, "info,async_nats=warn");
    wait_until("A active", Duration::from_secs(20), || {
        std::fs::read_to_string(&log_a).is_ok_and(|l| l.contains("lease acquired"))
    })
    .await;
    let _b = process::spawn_run(&config, &log_b, "info,async_nats=warn");
    wait_until("B standing by", Duration::from_secs(20), || {
        std::fs::read_to_string(&log_b).is_ok_and(|l| l.contains("waiting as a standby"))
    })
    .await;

    let text = events.join("\n");
    ledgerline::publish::publish(
        &nats.client,
        "orders",
        "test",
        text.as_bytes(),
        |_| {},
        |_| {},
    )
    .await
    .unwrap();
    let total = want.len() as u64;
    wait_until("a third delivered by A", Duration::from_secs(60), || {
        delivered() >= total / 3
    })
    .await;
    a.kill().await.unwrap();
    let killed_at = Instant::now();
    wait_until("B takes over", Duration::from_secs(30), || {
        std::fs::read_to_string(&log_b).is_ok_and(|l| l.contains("lease acquired"))
    })
    .await;
    let takeover = killed_at.elapsed();
    wait_until("every posting delivered", Duration::from_secs(120), || {
        delivered() >= total
    })
    .await;
    assert!(
        takeover < Duration::from_secs(10),
        "B took over {takeover:?} after A died (lease_ttl 4s)"
    );
    let log = std::fs::read_to_string(&log_b).unwrap();
    let (stood_by, took_over) = (log.find("waiting as a standby"), log.find("lease acquired"));
    assert!(
        stood_by < took_over,
        "B stood by before it was active:\n{log}"
    );

    // LEDGER holds exactly the postings one instance would have written.
    let ledger = nats.js.get_stream("LEDGER").await.unwrap();
    let mut got: BTreeMap<(String, String, u64), String> = BTreeMap::new();
    let mut from = 1;
    loop {
        match ledger
            .direct_get_next_for_subject("ledger.postings.>", Some(from))
            .await
        {
            Ok(m) => {
                from = m.sequence + 1;
                let sp: StoredPosting = serde_json::from_slice(&m.payload).unwrap();
                let key = (
                    sp.posting.registry_id.clone(),
                    sp.posting.order_id.as_str().to_owned(),
                    sp.posting.seq,
                );
                let body = serde_json::to_string(&sp.posting.body(&json!({}))).unwrap();
                assert!(
                    got.insert(key.clone(), body).is_none(),
                    "{key:?} posted twice"
                );
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
            Err(e) => panic!("reading LEDGER: {e}"),
        }
    }
    assert_eq!(
        got.len(),
        want.len(),
        "as many postings as the engine makes"
    );
    for (key, body) in &want {
        assert_eq!(got.get(key), Some(body), "posting {key:?}");
    }

    // The receiver's side: one body per key, in order per (registry,
    // order), every posting carrying the previous reply.
    let mut bodies: HashMap<String, String> = HashMap::new();
    let mut order_of: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let seq_of: HashMap<String, (String, String, u64)> = engine_keys(&settings, &events);
    let received: Vec<_> = receivers.iter().flat_map(|(rx, _)| rx.received()).collect();
    for r in received.iter().filter(|r| r.status == 200) {
        let key = r.idempotency_key.clone().unwrap();
        let body = bodies.entry(key.clone()).or_insert_with(|| r.body.clone());
        let (reg, order, seq) = &seq_of[&key];
        let mut sent: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let mut first: serde_json::Value = serde_json::from_str(body).unwrap();
        sent["registry_data"] = json!(null);
        first["registry_data"] = json!(null);
        assert_eq!(sent, first, "one body per key ({reg}/{order} #{seq})");
        assert_ne!(
            r.chain_ok,
            Some(false),
            "registry_data chain of {reg}/{order}"
        );
        let seen = order_of.entry((reg.clone(), order.clone())).or_default();
        if !seen.contains(seq) {
            seen.push(*seq);
        }
    }
    for ((reg, order), seqs) in order_of {
        assert_eq!(seqs, vec![1, 2, 3], "{reg}/{order} delivered in order");
    }
}

/// Idempotency key → (registry, order, seq), from the engine.
fn engine_keys(
    settings: &ledgerline::config::Settings,
    events: &[String],
) -> HashMap<String, (String, String, u64)> {
    let mut engine = Engine::new(settings.ledger, settings.registries.clone());
    let mut out = HashMap::new();
    for e in events {
        let ev = parse_event(e.as_bytes(), None).unwrap();
        for p in engine.process(&ev).unwrap() {
            out.insert(
                p.idempotency_key.to_string(),
                (p.registry_id.clone(), p.order_id.as_str().to_owned(), p.seq),
            );
        }
    }
    out
}
