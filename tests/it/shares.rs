//! Several instances sharing the delivery (`share_registries = true`, SPEC
//! 9): each `ledgerline run` delivers a fair share of the registries, one
//! lease per registry; a second instance takes half of them from the
//! first, and when one is SIGKILLed the other takes its registries over.
//! The books come out exactly as one instance would have written them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{self, Nats, books};

const REGISTRIES: [&str; 4] = ["r1", "r2", "r3", "r4"];

/// The pid of each registry's lease holder.
async fn holders(nats: &Nats) -> BTreeMap<&'static str, u32> {
    let mut out = BTreeMap::new();
    for r in REGISTRIES {
        if let Some(pid) = books::lease_holder_pid(&nats.js, &format!("dispatcher.{r}")).await {
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
    let receivers = books::receivers(REGISTRIES.len()).await;
    let mut registries = String::from("[delivery]\nretry_schedule = [\"200ms\"]\n");
    for (r, (_, url)) in REGISTRIES.iter().zip(&receivers) {
        registries.push_str(&format!(
            "[[registry]]\nid = \"{r}\"\nurl = \"{url}\"\nrate_limit_per_s = 10000\n"
        ));
    }
    let instances = books::Instances::new(
        &nats,
        receivers,
        "share_registries = true\n",
        &registries,
        ORDERS,
    );

    // A alone owns every registry; B joins and takes half.
    let (mut a, _) = instances.spawn("a");
    let pid_a = a.id().unwrap();
    support::eventually("A owns all four", Duration::from_secs(30), || async {
        held_by(&nats, &[pid_a]).await == vec![4]
    })
    .await;
    let (b, log_b) = instances.spawn("b");
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
    instances
        .publish_and_kill_midway(&nats, &mut a, "a third delivered by both")
        .await;
    support::eventually("B owns all four", Duration::from_secs(30), || async {
        held_by(&nats, &[pid_b]).await == vec![4]
    })
    .await;
    instances.all_delivered().await;
    drop(b);

    // LEDGER and the receivers as one instance would have left them.
    let pairs = instances.assert_as_one_instance(&nats).await;
    assert_eq!(pairs, REGISTRIES.len() * ORDERS);
}
