//! Order partitions (`order_partitions`, SPEC 9): ORDERS keeps each order's
//! events on `orders.<O>.<p>`, `p` the server's hash of the order id, and
//! every `ledgerline run` aggregates a fair share of the partitions, one
//! lease and one durable consumer per partition. A second instance takes
//! half of the partitions from the first; when one is SIGKILLed the other
//! takes its partitions over; the books come out exactly as one instance
//! would have written them.

use std::time::Duration;

use futures::TryStreamExt;

use ledgerline::streams::{self, NatsError, ORDERS_STREAM, OrderSubjects};

use crate::support::{self, books};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_order_partitions_and_take_over_a_dead_ones() {
    const ORDERS: usize = 100;
    let nats = support::nats_with(&OrderSubjects::new("orders", PARTITIONS)).await;
    let receivers = books::receivers(REGISTRIES.len()).await;
    let registries = books::registries_toml(&REGISTRIES, &receivers);
    let instances = books::Instances::new(
        &nats,
        receivers,
        &format!("order_partitions = {PARTITIONS}\nshare_registries = true\n"),
        &registries,
        ORDERS,
    );
    let leases: Vec<String> = (0..PARTITIONS)
        .map(|k| format!("aggregator.p{k}"))
        .collect();
    // B aggregates its two partitions through their consumers.
    let b_aggregates = |log: &str| {
        let started = |k: &u32| {
            log.lines().any(|line| {
                line.contains(r#""message":"aggregator started""#)
                    && line.contains(&format!(r#""consumer":"aggregator-p{k}""#))
            })
        };
        (0..PARTITIONS).filter(started).count() >= 2
    };
    let pairs = instances
        .two_share_then_one_takes_over(&nats, &leases, b_aggregates)
        .await;
    assert_eq!(pairs, REGISTRIES.len() * ORDERS);

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

    // A partition's consumer deleted under it: its aggregator stops, and
    // the instance with it (its partitions go to the others), rather than
    // keep a partition nobody aggregates.
    let orders_stream = nats.js.get_stream(ORDERS_STREAM).await.unwrap();
    orders_stream
        .delete_consumer("aggregator-p1")
        .await
        .expect("deleted");
    let ended = tokio::time::timeout(Duration::from_secs(20), svc.task)
        .await
        .expect("the instance stops")
        .expect("no panic");
    let err = ended.expect_err("an error, not a clean stop");
    assert!(
        err.to_string().contains("partition 1 stopped unasked"),
        "{err}"
    );
}

#[test]
fn order_partitions_out_of_range_names_the_key() {
    let cases = [("0", true), ("16", true), ("1024", true), ("1025", false)];
    support::assert_key_range("order_partitions", &cases, "1024", |c| {
        c.order_partitions.to_string()
    });
}
