//! Several instances sharing the delivery (`share_registries = true`, SPEC
//! 9): each `ledgerline run` delivers a fair share of the registries, one
//! lease per registry; a second instance takes half of them from the
//! first, and when one is SIGKILLed the other takes its registries over.
//! The books come out exactly as one instance would have written them.

use crate::support::{self, books};

const REGISTRIES: [&str; 4] = ["r1", "r2", "r3", "r4"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_registries_and_take_over_a_dead_ones() {
    const ORDERS: usize = 100;
    let nats = support::nats().await;
    let receivers = books::receivers(REGISTRIES.len()).await;
    let registries = books::registries_toml(&REGISTRIES, &receivers);
    let instances = books::Instances::new(
        &nats,
        receivers,
        "share_registries = true\n",
        &registries,
        ORDERS,
    );
    let leases: Vec<String> = REGISTRIES
        .iter()
        .map(|r| format!("dispatcher.{r}"))
        .collect();
    // B delivers its two registries.
    let b_delivers = |log: &str| {
        let delivering = |r: &&str| {
            log.lines().any(|line| {
                line.contains(r#""message":"delivering""#)
                    && line.contains(&format!(r#""registry_id":"{r}""#))
            })
        };
        REGISTRIES.iter().filter(|r| delivering(r)).count() >= 2
    };
    let pairs = instances
        .two_share_then_one_takes_over(&nats, &leases, b_delivers)
        .await;
    assert_eq!(pairs, REGISTRIES.len() * ORDERS);
}
