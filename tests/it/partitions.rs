//! Order partitions (`order_partitions`, SPEC 9): ORDERS keeps each order's
//! events on `orders.<O>.<p>`, `p` the server's hash of the order id, and
//! every `ledgerline run` aggregates a fair share of the partitions, one
//! lease and one durable consumer per partition. A second instance takes
//! half of the partitions from the first; when one is SIGKILLed the other
//! takes its partitions over; the books come out exactly as one instance
//! would have written them.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;

use ledgerline::streams::{self, NatsError, ORDERS_STREAM, OrderSubjects};

use crate::support::{self, Nats, books};

const PARTITIONS: u32 = 4;
const REGISTRIES: [&str; 2] = ["r1", "r2"];

#[tokio::test]
async fn the_server_puts_each_order_in_the_partition_ledgerline_computes() {
    let orders = OrderSubjects::new("shop.orders", 8);
    let nats = support::nats_with(&orders).await;
    let ids: Vec<String> = (0..200).map(|i| format!("order-{i}")).collect();
    for id in &ids {
        nats.js
            .publish(orders.publish(id), "{}".into())
            .await
            .unwrap()
            .await
            .expect("stored");
    }
    let mut stream = nats.js.get_stream(ORDERS_STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 200);
    let mut stored: Vec<String> = Vec::new();
    let mut subjects = stream.info_with_subjects("shop.orders.>").await.unwrap();
    while let Some((subject, count)) = subjects.try_next().await.unwrap() {
        assert_eq!(count, 1, "{subject}");
        stored.push(subject);
    }
    stored.sort();
    let mut expected: Vec<String> = ids.iter().map(|id| orders.stored(id)).collect();
    expected.sort();
    assert_eq!(stored, expected, "the server's partitions are ours");
    let used: std::collections::BTreeSet<u32> = ids
        .iter()
        .map(|id| streams::orders::partition_of(id, 8))
        .collect();
    assert_eq!(
        used.len(),
        8,
        "200 orders fall in every one of 8 partitions"
    );

    // A configuration without the partitions is refused, not applied.
    let err = streams::ensure_streams(&nats.js, &"shop.orders".into(), 1)
        .await
        .expect_err("the stream's partitions are not the configuration's");
    let NatsError::StreamSettings { stream, problems } = &err else {
        panic!("refused for its settings, not {err}");
    };
    assert_eq!(*stream, ORDERS_STREAM);
    assert!(problems.contains("subject_transform"), "{problems}");
    assert!(problems.contains("partition(8,1)"), "{problems}");
    // Nor is another partition count.
    let err = streams::ensure_streams(&nats.js, &OrderSubjects::new("shop.orders", 16), 1)
        .await
        .expect_err("16 partitions is not 8");
    assert!(err.to_string().contains("order_partitions"), "{err}");
}

/// The pid of each partition's lease holder.
async fn holders(nats: &Nats) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    for k in 0..PARTITIONS {
        if let Some(pid) = books::lease_holder_pid(&nats.js, &format!("aggregator.p{k}")).await {
            out.insert(k, pid);
        }
    }
    out
}

/// How many partitions each of `pids` holds.
async fn held_by(nats: &Nats, pids: &[u32]) -> Vec<usize> {
    let h = holders(nats).await;
    pids.iter()
        .map(|p| h.values().filter(|v| *v == p).count())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_order_partitions_and_take_over_a_dead_ones() {
    const ORDERS: usize = 100;
    let nats = support::nats_with(&OrderSubjects::new("orders", PARTITIONS)).await;
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
        &format!("order_partitions = {PARTITIONS}\nshare_registries = true\n"),
        &registries,
        ORDERS,
    );

    // A alone owns every partition; B joins and takes half.
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
    let b_consumers = || {
        let log = std::fs::read_to_string(&log_b).unwrap_or_default();
        (0..PARTITIONS)
            .filter(|k| {
                log.lines().any(|line| {
                    line.contains(r#""message":"aggregator started""#)
                        && line.contains(&format!(r#""consumer":"aggregator-p{k}""#))
                })
            })
            .count()
    };
    support::eventually("B aggregates its two", Duration::from_secs(10), || async {
        b_consumers() >= 2
    })
    .await;

    // Orders flow through both; A dies; B takes every partition.
    instances
        .publish_and_kill_midway(&nats, &mut a, "a third delivered by both")
        .await;
    support::eventually("B owns all four", Duration::from_secs(30), || async {
        held_by(&nats, &[pid_b]).await == vec![4]
    })
    .await;
    instances.all_delivered().await;
    drop(b);
    // One durable consumer per partition, and no unpartitioned one.
    let orders_stream = nats.js.get_stream(ORDERS_STREAM).await.unwrap();
    let names: Vec<String> = orders_stream
        .consumer_names()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let want: Vec<String> = (0..PARTITIONS)
        .map(|k| format!("aggregator-p{k}"))
        .collect();
    assert_eq!(names, want);

    // LEDGER and the receivers as one instance would have left them.
    let pairs = instances.assert_as_one_instance(&nats).await;
    assert_eq!(pairs, REGISTRIES.len() * ORDERS);
}

/// One instance with partitions, in process: it owns every partition,
/// `/readyz` checks every partition's consumer, and the ledger view reads
/// an order's events from its partition's subject.
#[tokio::test]
async fn the_admin_api_sees_a_partitioned_orders_stream() {
    let nats = support::nats_with(&OrderSubjects::new("orders", 3)).await;
    let (rx, url) = support::receiver(None, ledgerline::receiver::FailureMode::default()).await;
    let settings = support::settings(
        &nats.server,
        &format!("order_partitions = 3\n[[registry]]\nid = \"books\"\nurl = \"{url}/hooks\"\n"),
    );
    let events = support::engine::fixture_events();
    let want = support::engine::offline_postings(&settings, &events).len();
    let svc = support::Service::start(settings, &ledgerline::service::Component::ALL).await;
    support::publish_events_to(&nats, &OrderSubjects::new("orders", 3), &events).await;
    support::eventually("every posting delivered", Duration::from_secs(30), || {
        let n = rx.received().iter().filter(|r| r.status == 200).count();
        async move { n >= want }
    })
    .await;
    let check = svc
        .readyz_check("consumers ORDERS/aggregator-p*")
        .await
        .expect("a check of the partitions' consumers");
    assert_eq!(check["ok"], true, "{check}");
    assert_eq!(check["detail"], "all 3 present", "{check}");
    assert!(
        svc.readyz_check("consumer ORDERS/aggregator")
            .await
            .is_none(),
        "no unpartitioned consumer is expected"
    );

    let order = "2e7f2d6f-0473-4935-8cfb-c11b2caa6dab";
    let (status, view) = svc.get(&format!("/v1/orders/{order}/ledger")).await;
    assert_eq!(status, 200, "{view}");
    assert!(
        !view["events"].as_array().expect("events").is_empty(),
        "the order's events are read from orders.{order}.<p>: {view}"
    );
    assert_eq!(view["ledger"]["debit"], view["ledger"]["credit"]);
    assert_eq!(view["registries"][0]["delivery"]["status"], "delivered");

    // An event published straight on another partition's subject is
    // refused, named, not handled beside its order's owner.
    let orders = OrderSubjects::new("orders", 3);
    let wrong = (streams::orders::partition_of("o-astray", 3) + 1) % 3;
    nats.js
        .publish(
            format!("orders.o-astray.{wrong}"),
            support::engine::ticket_event("o-astray", 1, 2).into(),
        )
        .await
        .unwrap()
        .await
        .expect("stored");
    support::eventually(
        "the astray event refused",
        Duration::from_secs(10),
        || async {
            !support::read_ledger_with_headers(&nats.js, "ledger.rejected.order_id_mismatch")
                .await
                .is_empty()
        },
    )
    .await;
    let refused =
        support::read_ledger_with_headers(&nats.js, "ledger.rejected.order_id_mismatch").await;
    let headers = refused[0].1.as_ref().expect("headers");
    let message = headers.get(streams::H_MESSAGE).expect("a reason").as_str();
    assert!(
        message.contains(&format!(
            "not on its order's partition {}",
            orders.stored("o-astray")
        )),
        "{message}"
    );
    svc.stop().await;
}

#[test]
fn order_partitions_out_of_range_names_the_key() {
    for (value, ok) in [("0", true), ("16", true), ("1024", true), ("1025", false)] {
        let got = ledgerline::config::Settings::on_loopback(
            "nats://127.0.0.1:4222",
            &format!("order_partitions = {value}"),
            "test.toml",
        );
        match (got, ok) {
            (Ok(s), true) => assert_eq!(s.config.order_partitions.to_string(), value),
            (Err(e), false) => {
                let e = e.to_string();
                assert!(e.contains("order_partitions") && e.contains("1024"), "{e}");
            }
            (got, _) => panic!("order_partitions = {value}: {:?}", got.map(|s| s.config)),
        }
    }
}
