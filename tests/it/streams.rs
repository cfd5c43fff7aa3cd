//! Stream settings are the operator's once a stream exists (SPEC 7, 9):
//! `stream_replicas` is used when ledgerline creates a stream, an existing
//! stream is never updated at start-up, and one ledgerline cannot run on is
//! refused with what to change.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use ledgerline::natsd::NatsServer;
use ledgerline::streams::{self, LEDGER_STREAM, NatsError, ORDERS_STREAM};

async fn server() -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start().await.expect("nats-server starts");
    let client = async_nats::connect(server.url()).await.expect("connect");
    (server, jetstream::new(client))
}

async fn config_of(js: &jetstream::Context, name: &str) -> stream::Config {
    js.get_stream(name)
        .await
        .expect("the stream exists")
        .info()
        .await
        .expect("stream info")
        .config
        .clone()
}

#[tokio::test]
async fn an_operators_stream_settings_survive_every_start_up() {
    let (_server, js) = server().await;
    streams::ensure_streams(&js, &"orders".into(), 1)
        .await
        .expect("created");
    // The operator keeps LEDGER for 400 days and at most 1 GiB, and says so.
    let mut edited = config_of(&js, LEDGER_STREAM).await;
    edited.max_age = Duration::from_secs(400 * 86_400);
    edited.max_bytes = 1 << 30;
    edited.description = Some("ours, kept 400 days".to_owned());
    js.update_stream(edited).await.expect("operator's edit");

    // Every start-up ensures the streams again: nothing is reverted.
    for _ in 0..2 {
        streams::ensure_streams(&js, &"orders".into(), 1)
            .await
            .expect("a stream with limits is warned about, not refused");
    }
    let after = config_of(&js, LEDGER_STREAM).await;
    assert_eq!(after.max_age, Duration::from_secs(400 * 86_400));
    assert_eq!(after.max_bytes, 1 << 30);
    assert_eq!(after.description.as_deref(), Some("ours, kept 400 days"));
    // ORDERS, untouched by the operator, is as ledgerline created it.
    let orders = config_of(&js, ORDERS_STREAM).await;
    assert_eq!(orders.subjects, ["orders.>"]);
    assert!(orders.allow_direct);
    assert_eq!(orders.num_replicas, 1);
    assert!(orders.max_age.is_zero());
}

#[tokio::test]
async fn a_stream_ledgerline_cannot_run_on_is_refused_named_and_left_unchanged() {
    let (_server, js) = server().await;
    // Someone created ORDERS by hand: work-queue retention, no Direct Get.
    js.create_stream(stream::Config {
        name: ORDERS_STREAM.to_owned(),
        subjects: vec!["orders.>".to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        allow_direct: false,
        ..Default::default()
    })
    .await
    .expect("created by hand");

    let err = streams::ensure_streams(&js, &"orders".into(), 1)
        .await
        .expect_err("ledgerline cannot replay a work queue");
    assert!(
        matches!(&err, NatsError::StreamSettings { stream, .. } if *stream == ORDERS_STREAM),
        "{err:?}"
    );
    let message = err.to_string();
    for needle in [
        "stream ORDERS",
        "retention",
        "allow_direct",
        "nats stream edit",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    let after = config_of(&js, ORDERS_STREAM).await;
    assert_eq!(after.retention, stream::RetentionPolicy::WorkQueue);
    assert!(!after.allow_direct, "an existing stream is never changed");
}

#[tokio::test]
async fn streams_are_created_with_stream_replicas_and_the_servers_refusal_is_named() {
    let (_server, js) = server().await;
    // A single server keeps one replica: asking for three names the stream
    // and carries the server's reason.
    let err = streams::ensure_streams(&js, &"orders".into(), 3)
        .await
        .expect_err("a single server has no room for three replicas");
    let message = err.to_string();
    assert!(
        message.starts_with("cannot create stream ORDERS:"),
        "{message}"
    );
    assert!(
        js.get_stream(ORDERS_STREAM).await.is_err(),
        "nothing half-made"
    );

    streams::ensure_streams(&js, &"orders".into(), 1)
        .await
        .expect("one replica on one server");
    assert_eq!(config_of(&js, LEDGER_STREAM).await.num_replicas, 1);
}

#[test]
fn stream_replicas_out_of_range_names_the_key() {
    let cases = [("0", false), ("1", true), ("3", true), ("6", false)];
    crate::support::assert_key_range("stream_replicas", &cases, "1 to 5", |c| {
        c.stream_replicas.to_string()
    });
}

/// A batched Direct Get with a page limit in bytes still returns a message
/// larger than the limit (alone in its page) and goes on after it: a
/// reader that stopped there would miss the rest of the subject (an
/// order's events, when the aggregator rebuilds its book).
#[tokio::test]
async fn a_message_larger_than_a_page_is_read_and_so_is_what_follows() {
    let (server, js) = server().await;
    streams::ensure_streams(&js, &"orders".into(), 1)
        .await
        .unwrap();
    let sizes = [100, 300 * 1024, 100, 200, 300 * 1024, 100];
    for (i, size) in sizes.iter().enumerate() {
        let body = vec![b'a' + i as u8; *size];
        js.publish("orders.big", body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut reader = streams::direct::DirectGet::new(
        &client,
        ORDERS_STREAM,
        "orders.big",
        Duration::from_secs(5),
    )
    .max_bytes(64 * 1024);
    let mut got = Vec::new();
    while let Some(m) = reader.next().await.unwrap() {
        got.push((m.payload().len(), m.payload()[0]));
    }
    let want: Vec<(usize, u8)> = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, b'a' + i as u8))
        .collect();
    assert_eq!(got, want);
}

/// Direct Gets whose requests are lost with a nats-server (sent while it
/// is paused, then it is killed and started again on the same store) are
/// asked again once the client has reconnected, and read what a quiet read
/// does: the paged read of a subject and the multi-last question the
/// export asks. (Before, each waited for a reply that could not come and
/// failed after its timeout.)
#[tokio::test]
async fn direct_gets_lost_in_a_nats_restart_are_asked_again() {
    use ledgerline::streams::direct::{DirectGet, SharedInbox, last_sequences};

    let (mut server, js) = server().await;
    streams::ensure_streams(&js, &"orders".into(), 1)
        .await
        .unwrap();
    let (one, other) = ("ledger.deliveries.r.one", "ledger.deliveries.r.other");
    for i in 0..600 {
        let subject = if i % 3 == 2 { other } else { one };
        js.publish(subject, format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let want: Vec<String> = (0..600)
        .filter(|i| i % 3 != 2)
        .map(|i| i.to_string())
        .collect();
    let client = async_nats::connect(server.url()).await.unwrap();
    let inbox = SharedInbox::new(&client).await.unwrap();
    let timeout = Duration::from_secs(30);

    let pid = server.pid().expect("running").to_string();
    crate::support::process::stop_process(&pid);
    let read = tokio::spawn({
        let (client, inbox) = (client.clone(), inbox.clone());
        async move {
            let mut reader =
                DirectGet::new(&client, LEDGER_STREAM, one, timeout).shared_inbox(&inbox);
            let mut got = Vec::new();
            while let Some(m) = reader.next().await? {
                got.push(String::from_utf8_lossy(m.payload()).into_owned());
            }
            Ok::<_, streams::direct::DirectGetError>(got)
        }
    });
    let own_inbox = tokio::spawn({
        let client = client.clone();
        async move {
            let mut reader = DirectGet::new(&client, LEDGER_STREAM, other, timeout);
            let mut n = 0;
            while reader.next().await?.is_some() {
                n += 1;
            }
            Ok::<_, streams::direct::DirectGetError>(n)
        }
    });
    let last = tokio::spawn(async move {
        last_sequences(&client, &inbox, LEDGER_STREAM, &[one, other], 600, timeout).await
    });
    // The requests are written to the paused server's socket, then lost
    // with it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    server.kill().await;
    server.restart().await.unwrap();

    let got = read.await.unwrap().expect("the paged read");
    assert_eq!(got, want);
    assert_eq!(
        own_inbox.await.unwrap().expect("the read on its own inbox"),
        200
    );
    let mut last = last.await.unwrap().expect("the multi-last question");
    last.sort();
    assert_eq!(
        last,
        vec![(one.to_owned(), 600 - 1), (other.to_owned(), 600)],
        "the last sequence of each subject"
    );
    assert!(
        started.elapsed() < timeout,
        "asked again after the reconnection, not after the {timeout:?} timeout"
    );
}
