//! Two `ledgerline run` against one NATS (what anyone does for high
//! availability): the second must stand by, fenced, until the first dies,
//! then take over — and the books must come out exactly as one instance
//! would have written them (reliability defect 11).

use std::time::{Duration, Instant};

use crate::support::{self, books};

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
    let instances = books::Instances::new(&nats, receivers, "", &registries, ORDERS);

    let (mut a, log_a) = instances.spawn("a");
    support::eventually("A active", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log_a).is_ok_and(|l| l.contains("lease acquired"))
    })
    .await;
    let (_b, log_b) = instances.spawn("b");
    support::eventually("B standing by", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log_b).is_ok_and(|l| l.contains("waiting as a standby"))
    })
    .await;

    instances
        .publish_and_kill_midway(&nats, &mut a, "a third delivered by A")
        .await;
    let killed_at = Instant::now();
    support::eventually("B takes over", Duration::from_secs(30), || async {
        std::fs::read_to_string(&log_b).is_ok_and(|l| l.contains("lease acquired"))
    })
    .await;
    let takeover = killed_at.elapsed();
    instances.all_delivered().await;
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
    let pairs = instances.assert_as_one_instance(&nats).await;
    assert_eq!(pairs, 2 * ORDERS);
}
