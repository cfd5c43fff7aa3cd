//! Several instances sharing the delivery (`share_registries = true`, SPEC
//! 9): each `ledgerline run` delivers a fair share of the registries, one
//! lease per registry; a second instance takes half of them from the
//! first, and when one is SIGKILLed the other takes its registries over.
//! The books come out exactly as one instance would have written them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ledgerline::receiver::FailureMode;
use serde_json::json;

use crate::support::engine::{self, ticket_event};
use crate::support::{self, Nats, process};

const REGISTRIES: [&str; 4] = ["r1", "r2", "r3", "r4"];

/// The pid of each registry's lease holder (the holder's name carries it).
async fn holders(nats: &Nats) -> BTreeMap<&'static str, u32> {
    let mut out = BTreeMap::new();
    let Ok(kv) = nats.js.get_key_value(ledgerline::lease::BUCKET).await else {
        return out;
    };
    for r in REGISTRIES {
        if let Ok(Some(v)) = kv.get(format!("dispatcher.{r}")).await
            && let Ok(h) = serde_json::from_slice::<ledgerline::lease::Holder>(&v)
            && let Some(pid) = h.instance.rsplit('-').nth(1).and_then(|p| p.parse().ok())
        {
            out.insert(r, pid);
        }
    }
    out
}

/// How many registries each of `pids` holds.
async fn held_by(nats: &Nats, pids: &[u32]) -> Vec<usize> {
    let h = holders(nats).await;
    pids.iter()
        .map(|p| h.values().filter(|v| *v == p).count())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_registries_and_take_over_a_dead_ones() {
    const ORDERS: usize = 100;
    let nats = support::nats().await;
    let mut receivers = Vec::new();
    for _ in REGISTRIES {
        let failure = FailureMode {
            share: 0.0,
            delay_ms: 5,
            ..FailureMode::default()
        };
        let (rx, url) = support::receiver(None, failure).await;
        receivers.push((rx, format!("{url}/hook")));
    }
    let mut registries = String::from("[delivery]\nretry_schedule = [\"200ms\"]\n");
    for (r, (_, url)) in REGISTRIES.iter().zip(&receivers) {
        registries.push_str(&format!(
            "[[registry]]\nid = \"{r}\"\nurl = \"{url}\"\nrate_limit_per_s = 10000\n"
        ));
    }
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
        &format!("lease_ttl = \"4s\"\nshare_registries = true\n{registries}"),
    );
    let mut events = Vec::new();
    for v in 1..=3u64 {
        for o in 0..ORDERS {
            events.push(ticket_event(&format!("o-{o:03}"), v, v as u32));
        }
    }
    let postings = engine::postings(&settings, &events);
    let want: BTreeMap<_, _> = postings.iter().map(engine::body_text).collect();

    // A alone owns every registry; B joins and takes half.
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let mut a = process::spawn_run(&config, &log_a, "info,async_nats=warn");
    let pid_a = a.id().unwrap();
    support::eventually("A owns all four", Duration::from_secs(30), || async {
        held_by(&nats, &[pid_a]).await == vec![4]
    })
    .await;
    let b = process::spawn_run(&config, &log_b, "info,async_nats=warn");
    let pid_b = b.id().unwrap();
    support::eventually("two each", Duration::from_secs(30), || async {
        held_by(&nats, &[pid_a, pid_b]).await == vec![2, 2]
    })
    .await;
    let b_delivers: Vec<&str> = REGISTRIES
        .iter()
        .copied()
        .filter(|r| {
            std::fs::read_to_string(&log_b).is_ok_and(|l| {
                l.lines().any(|line| {
                    line.contains(r#""message":"delivering""#)
                        && line.contains(&format!(r#""registry_id":"{r}""#))
                })
            })
        })
        .collect();
    assert!(
        b_delivers.len() >= 2,
        "B delivers its share: {b_delivers:?}\n{}",
        std::fs::read_to_string(&log_b).unwrap_or_default()
    );

    // Orders flow through both; A dies; B takes everything.
    support::publish_events(&nats, &events.join("\n")).await;
    let total = want.len() as u64;
    support::eventually(
        "a third delivered by both",
        Duration::from_secs(60),
        || async { delivered() >= total / 3 },
    )
    .await;
    a.kill().await.unwrap();
    support::eventually("B owns all four", Duration::from_secs(30), || async {
        held_by(&nats, &[pid_b]).await == vec![4]
    })
    .await;
    support::eventually(
        "every posting delivered",
        Duration::from_secs(120),
        || async { delivered() >= total },
    )
    .await;
    drop(b);

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
    // The receivers' side: one body per key, in order per (registry,
    // order), every posting carrying the previous reply.
    let seq_of: HashMap<String, (String, String, u64)> = postings
        .iter()
        .map(|p| (p.idempotency_key.to_string(), engine::body_text(p).0))
        .collect();
    let mut bodies: HashMap<String, String> = HashMap::new();
    let mut order_of: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for r in receivers
        .iter()
        .flat_map(|(rx, _)| rx.received())
        .filter(|r| r.status == 200)
    {
        let key = r.idempotency_key.clone().unwrap();
        let first = bodies.entry(key.clone()).or_insert_with(|| r.body.clone());
        let (reg, order, seq) = &seq_of[&key];
        let mut sent: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let mut first: serde_json::Value = serde_json::from_str(first).unwrap();
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
    assert_eq!(order_of.len(), REGISTRIES.len() * ORDERS);
    for ((reg, order), seqs) in order_of {
        assert_eq!(seqs, vec![1, 2, 3], "{reg}/{order} delivered in order");
    }
}
