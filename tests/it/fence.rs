//! Two `ledgerline run` against one NATS (what anyone does for high
//! availability): the second must stand by, fenced, until the first dies,
//! then take over — and the books must come out exactly as one instance
//! would have written them (reliability defect 11).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ledgerline::receiver::FailureMode;
use serde_json::json;

use crate::support::engine::{self, ticket_event};
use crate::support::{self, process};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_stands_by_fenced_and_takes_over_when_the_first_is_killed() {
    const ORDERS: usize = 150;
    let nats = support::nats().await;
    // One receiver per registry: a receiver checks the registry_data chain
    // per order.
    let mut receivers = Vec::new();
    for _ in 0..2 {
        let failure = FailureMode {
            share: 0.0,
            delay_ms: 5,
            ..FailureMode::default()
        };
        let (rx, url) = support::receiver(None, failure).await;
        receivers.push((rx, format!("{url}/hook")));
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
            events.push(ticket_event(&format!("o-{o:03}"), v, v as u32));
        }
    }
    let postings = engine::postings(&settings, &events);
    let want: BTreeMap<_, _> = postings.iter().map(engine::body_text).collect();

    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = process::spawn_run(&config, &log_a, "info,async_nats=warn");
    support::eventually("A active", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log_a).is_ok_and(|l| l.contains("lease acquired"))
    })
    .await;
    let _b = process::spawn_run(&config, &log_b, "info,async_nats=warn");
    support::eventually("B standing by", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log_b).is_ok_and(|l| l.contains("waiting as a standby"))
    })
    .await;

    support::publish_events(&nats, &events.join("\n")).await;
    let total = want.len() as u64;
    support::eventually(
        "a third delivered by A",
        Duration::from_secs(60),
        || async { delivered() >= total / 3 },
    )
    .await;
    a.kill().await.unwrap();
    let killed_at = Instant::now();
    support::eventually("B takes over", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log_b).is_ok_and(|l| l.contains("lease acquired"))
    })
    .await;
    let takeover = killed_at.elapsed();
    support::eventually(
        "every posting delivered",
        Duration::from_secs(120),
        || async { delivered() >= total },
    )
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
    let got = support::stored_postings(&nats.js).await;
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
    let seq_of: HashMap<String, (String, String, u64)> = postings
        .iter()
        .map(|p| (p.idempotency_key.to_string(), engine::body_text(p).0))
        .collect();
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
