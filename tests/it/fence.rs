//! Two `ledgerline run` against one NATS (what anyone does for high
//! availability): the second must stand by, fenced, until the first dies,
//! then take over — and the books must come out exactly as one instance
//! would have written them (reliability defect 11).

use std::time::{Duration, Instant};

use crate::support::engine;
use crate::support::{self, books, process};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_stands_by_fenced_and_takes_over_when_the_first_is_killed() {
    const ORDERS: usize = 150;
    let nats = support::nats().await;
    // One receiver per registry: a receiver checks the registry_data chain
    // per order.
    let receivers = books::receivers(2).await;
    let registries = format!(
        "[delivery]\nretry_schedule = [\"200ms\"]\n\
         [[registry]]\nid = \"books\"\nurl = \"{}\"\nrate_limit_per_s = 10000\n\
         [[registry]]\nid = \"snapshot\"\nurl = \"{}\"\nposting_mode = \"full\"\nrate_limit_per_s = 10000\n",
        receivers[0].1, receivers[1].1
    );
    let delivered = || books::delivered(&receivers);
    let settings = support::settings(&nats.server, &registries);
    let dir = tempfile::tempdir().unwrap();
    let config = process::service_config(
        dir.path(),
        &nats.server.url(),
        &format!("lease_ttl = \"4s\"\nack_wait = \"5s\"\n{registries}"),
    );

    // What one instance would write: the offline engine over the same events.
    let events = books::ticket_history(ORDERS, 3);
    let postings = engine::postings(&settings, &events);
    let total = postings.len() as u64;

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

    // LEDGER and the receivers as one instance would have left them.
    let pairs = books::assert_as_one_instance(&nats, &receivers, &postings, 3).await;
    assert_eq!(pairs, 2 * ORDERS);
}
