//! The `nats-server` harness itself: start, publish, stop/kill, restart.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use ledgerline::natsd::{NatsCluster, NatsServer, NatsdError};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Upper bound for any single test, so a wedged server fails instead of hanging.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn bounded<T>(test: impl Future<Output = Result<T>>) -> Result<T> {
    timeout(TEST_TIMEOUT, test)
        .await
        .context("test timed out")?
}

/// Runs `test` on a freshly started server, within [`TEST_TIMEOUT`].
async fn with_server<F, Fut>(test: F) -> Result<()>
where
    F: FnOnce(NatsServer) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    bounded(async { test(NatsServer::start().await?).await }).await
}

/// Kills `server` and binds its port, as another process could.
async fn kill_and_take_its_port(server: &mut NatsServer) -> Result<std::net::TcpListener> {
    server.kill().await;
    Ok(std::net::TcpListener::bind(("127.0.0.1", server.port()))?)
}

/// The error message of a start that must fail; it must say the server
/// exited during startup. `what` names the start.
fn failed_at_startup<T>(started: std::result::Result<T, NatsdError>, what: &str) -> Result<String> {
    let err = started.err().with_context(|| format!("{what} succeeded"))?;
    let msg = err.to_string();
    ensure!(msg.contains("exited during startup"), "{msg}");
    Ok(msg)
}

async fn connect(server: &NatsServer) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(server.url())
        .await
        .with_context(|| format!("connecting to {}", server.url()))
}

/// Creates stream `ORDERS` on `orders.>` and publishes `bodies` with acks,
/// checking the acked sequence numbers are 1..=n.
async fn create_stream_and_publish(js: &jetstream::Context, bodies: &[&str]) -> Result<()> {
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    for (i, body) in bodies.iter().enumerate() {
        let ack = js
            .publish(format!("orders.{i}"), Bytes::from(body.to_string()))
            .await?
            .await?;
        ensure!(ack.stream == "ORDERS", "ack from stream {}", ack.stream);
        ensure!(
            ack.sequence == i as u64 + 1,
            "ack sequence {}",
            ack.sequence
        );
    }
    Ok(())
}

/// Reads stream `ORDERS` of `server` back (over a new connection) and
/// checks it holds exactly `bodies`.
async fn assert_stream_holds(server: &NatsServer, bodies: &[&str]) -> Result<()> {
    let js = jetstream::new(connect(server).await?);
    let mut orders = js.get_stream("ORDERS").await?;
    let messages = orders.info().await?.state.messages;
    ensure!(
        messages == bodies.len() as u64,
        "stream holds {messages} messages"
    );
    for (i, body) in bodies.iter().enumerate() {
        let msg = orders.get_raw_message(i as u64 + 1).await?;
        ensure!(
            msg.subject.as_str() == format!("orders.{i}"),
            "subject {}",
            msg.subject
        );
        ensure!(msg.payload == body.as_bytes(), "payload {:?}", msg.payload);
    }
    Ok(())
}

#[tokio::test]
async fn a_started_server_accepts_jetstream_publishes() -> Result<()> {
    with_server(|server| async move {
        ensure!(server.url() == format!("nats://127.0.0.1:{}", server.port()));
        let js = jetstream::new(connect(&server).await?);

        create_stream_and_publish(&js, &["one", "two", "three"]).await?;
        assert_stream_holds(&server, &["one", "two", "three"]).await?;

        let log = std::fs::read_to_string(server.log_path())?;
        ensure!(log.contains("Server is ready"), "log:\n{log}");
        ensure!(
            server.store_dir().join("jetstream").is_dir(),
            "no jetstream dir in {}",
            server.store_dir().display()
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_restarted_server_keeps_its_stream_data_on_the_same_port() -> Result<()> {
    with_server(|mut server| async move {
        let (url, port) = (server.url(), server.port());
        {
            let client = connect(&server).await?;
            create_stream_and_publish(&jetstream::new(client.clone()), &["a", "b"]).await?;
            client.drain().await?;
        }

        server.stop().await;
        ensure!(!server.is_running());
        server.restart().await?;

        ensure!(server.url() == url && server.port() == port);
        assert_stream_holds(&server, &["a", "b"]).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_killed_server_refuses_connections_until_restarted() -> Result<()> {
    with_server(|mut server| async move {
        {
            let js = jetstream::new(connect(&server).await?);
            create_stream_and_publish(&js, &["acked before the crash"]).await?;
        }

        server.kill().await;
        ensure!(!server.is_running() && server.pid().is_none());
        ensure!(
            TcpStream::connect(("127.0.0.1", server.port()))
                .await
                .is_err(),
            "port {} still accepts connections after kill",
            server.port()
        );
        ensure!(connect(&server).await.is_err());

        server.restart().await?;
        // Acked writes survive SIGKILL: they are in the store files already.
        assert_stream_holds(&server, &["acked before the crash"]).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_connected_client_reconnects_after_the_server_restarts() -> Result<()> {
    with_server(|mut server| async move {
        let client = async_nats::ConnectOptions::new()
            .reconnect_delay_callback(|_attempts| Duration::from_millis(100))
            .connect(server.url())
            .await?;
        let js = jetstream::new(client.clone());
        create_stream_and_publish(&js, &["before"]).await?;

        server.kill().await;
        server.restart().await?;

        // The same client object works again once it has reconnected.
        let ack = timeout(Duration::from_secs(20), async {
            loop {
                match js.publish("orders.1", Bytes::from("after")).await {
                    Ok(pending) => match pending.await {
                        Ok(ack) => break ack,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    },
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
        .await
        .context("client did not reconnect")?;
        ensure!(ack.sequence >= 2, "ack sequence {}", ack.sequence);
        ensure!(client.connection_state() == async_nats::connection::State::Connected);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_server_started_with_a_given_store_dir_leaves_its_data_there() -> Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("store");
        {
            let server = NatsServer::start_with(Some(store.clone())).await?;
            ensure!(server.store_dir() == store);
            let js = jetstream::new(connect(&server).await?);
            create_stream_and_publish(&js, &["kept"]).await?;
            // Dropping the server SIGKILLs it but leaves a given store alone.
        }
        ensure!(store.join("jetstream").is_dir(), "store dir was removed");

        // A new server (on new ports) over the same store finds the stream.
        let server = NatsServer::start_with(Some(store)).await?;
        assert_stream_holds(&server, &["kept"]).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_restart_waits_for_its_port_to_be_freed() -> Result<()> {
    with_server(|mut server| async move {
        // Someone else holds the port for a moment; restart retries until free.
        let squatter = kill_and_take_its_port(&mut server).await?;
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(squatter);
        });
        server.restart().await?;
        release.await?;

        let log = std::fs::read_to_string(server.log_path())?;
        ensure!(log.contains("address already in use"), "log:\n{log}");
        connect(&server).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_restart_fails_with_the_log_tail_when_its_port_stays_taken() -> Result<()> {
    with_server(|mut server| async move {
        let _squatter = kill_and_take_its_port(&mut server).await?;

        let msg = failed_at_startup(server.restart().await, "restart on a taken port")?;
        ensure!(msg.contains("address already in use"), "{msg}");
        ensure!(!server.is_running());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_tls_server_whose_certificate_is_missing_fails_with_the_log_tail() -> Result<()> {
    bounded(async {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("no-such-cert.pem");
        let started = NatsServer::builder()
            .tls(&missing, dir.path().join("no-such-key.pem"))
            .start()
            .await;
        let msg = failed_at_startup(started, "a TLS server without its certificate")?;
        ensure!(msg.contains("no-such-cert.pem"), "{msg}");
        Ok(())
    })
    .await
}

/// Publishes `orders.c-<i>` for each `i`, retrying each message (same
/// `Nats-Msg-Id`, so a retry after a lost ack is not stored twice) until it
/// is acknowledged: a stream without a leader answers again once the other
/// replicas have elected one.
async fn publish_until_acked(js: &jetstream::Context, range: std::ops::Range<usize>) -> Result<()> {
    for i in range {
        let started = std::time::Instant::now();
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("c-{i}").as_str());
            let sent = js
                .publish_with_headers(
                    format!("orders.c-{i}"),
                    headers,
                    Bytes::from(format!("{i}")),
                )
                .await;
            match sent {
                Ok(ack) => match ack.await {
                    Ok(_) => break,
                    Err(e) => ensure!(started.elapsed() < Duration::from_secs(30), "{i}: {e}"),
                },
                Err(e) => ensure!(started.elapsed() < Duration::from_secs(30), "{i}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The node index of the ORDERS stream's leader, and how many of its
/// replicas are current.
async fn orders_leader(cluster: &NatsCluster, js: &jetstream::Context) -> Result<(usize, usize)> {
    let info = js.get_stream("ORDERS").await?.info().await?.clone();
    ensure!(
        info.config.num_replicas == 3,
        "{} replicas",
        info.config.num_replicas
    );
    let c = info
        .cluster
        .context("a clustered stream has cluster info")?;
    let leader = c.leader.context("ORDERS has a leader")?;
    let node = (0..cluster.len())
        .find(|i| cluster.node(*i).name() == leader)
        .with_context(|| format!("leader {leader} is one of the nodes"))?;
    Ok((node, c.replicas.iter().filter(|r| r.current).count()))
}

#[tokio::test]
async fn a_three_node_cluster_keeps_an_r3_stream_through_the_loss_of_any_one_node() -> Result<()> {
    bounded(async {
        let mut cluster = NatsCluster::start(3).await?;
        ensure!(cluster.url().split(',').count() == 3, "{}", cluster.url());
        // The comma-separated list, as `nats_url` takes it (a list once
        // failed to connect: async-nats reads one string as one URL).
        let settings = ledgerline::config::Settings::on_loopback(&cluster.url(), "", "test.toml")?;
        let client = ledgerline::streams::connect_once(&settings.config).await?;
        let js = jetstream::new(client);
        ledgerline::streams::ensure_streams(&js, &"orders".into(), 3).await?;
        publish_until_acked(&js, 0..50).await?;

        // The leader dies: the others elect one and take writes.
        let (leader, _) = orders_leader(&cluster, &js).await?;
        cluster.node_mut(leader).kill().await;
        publish_until_acked(&js, 50..100).await?;
        let (new_leader, _) = orders_leader(&cluster, &js).await?;
        ensure!(new_leader != leader, "a new leader was elected");

        // It comes back, catches up, and then another node may die: every
        // message is still there.
        cluster.node_mut(leader).restart().await?;
        let started = std::time::Instant::now();
        while orders_leader(&cluster, &js).await?.1 < 2 {
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "replicas catch up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.node_mut(new_leader).kill().await;
        publish_until_acked(&js, 100..110).await?;
        let messages = js.get_stream("ORDERS").await?.info().await?.state.messages;
        ensure!(
            messages == 110,
            "ORDERS holds {messages} messages, 110 were acked"
        );
        Ok(())
    })
    .await
}

/// One event id published twice at once (a file with a repeated line, a
/// vendor's retry racing its first attempt): a single server answers the
/// second with a duplicate ack, a clustered stream with "in process" (409,
/// error code 10158) until the first is stored. `ledgerline publish` settles
/// that answer: the repeats count as duplicates, nothing fails, each event
/// is stored once.
#[tokio::test]
async fn a_repeated_event_id_published_at_once_to_a_cluster_is_a_duplicate_not_an_error()
-> Result<()> {
    bounded(async {
        let cluster = NatsCluster::start(3).await?;
        let settings = ledgerline::config::Settings::on_loopback(&cluster.url(), "", "test.toml")?;
        let client = ledgerline::streams::connect_once(&settings.config).await?;
        let mut lines = String::new();
        for i in 0..40 {
            let event =
                format!(r#"{{"event_id":"e-{i}","order_id":"o-{i}","type":"order.confirmed"}}"#);
            // Three times in a row: sent together, in one ack window.
            for _ in 0..3 {
                lines.push_str(&event);
                lines.push('\n');
            }
        }
        let summary = ledgerline::publish::publish(
            &client,
            &"orders".into(),
            3,
            "test",
            lines.as_bytes(),
            |_| {},
            |_| {},
        )
        .await?;
        ensure!(
            (summary.published, summary.duplicates) == (40, 80),
            "{summary}"
        );
        let js = jetstream::new(client);
        let messages = js.get_stream("ORDERS").await?.info().await?.state.messages;
        ensure!(messages == 40, "ORDERS holds {messages} messages");
        Ok(())
    })
    .await
}

/// A publish that finds no stream (a cluster's new stream not yet known
/// everywhere, a leader changing) is sent again for a while: it is stored
/// once the stream answers, and refused for good only if none ever does.
#[tokio::test]
async fn a_publish_that_finds_no_stream_yet_is_sent_again_until_one_answers() -> Result<()> {
    with_server(|server| async move {
        let client = async_nats::connect(server.url()).await?;
        let js = jetstream::new(client);
        let message = jetstream::message::PublishMessage::build()
            .message_id("e-1")
            .payload(Bytes::from_static(b"{}"));
        let ack = js.send_publish("late.one", message.clone()).await?;
        let creator = js.clone();
        let created = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            creator
                .create_stream(stream::Config {
                    name: "LATE".into(),
                    subjects: vec!["late.>".into()],
                    ..Default::default()
                })
                .await
                .map(|_| ())
        });
        let stored =
            ledgerline::streams::ack_resolving_in_process(&js, "late.one", &message, ack).await?;
        created.await??;
        ensure!(stored.stream == "LATE" && !stored.duplicate, "{stored:?}");

        let ack = js.send_publish("nowhere.one", message.clone()).await?;
        let started = std::time::Instant::now();
        let refused =
            ledgerline::streams::ack_resolving_in_process(&js, "nowhere.one", &message, ack).await;
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| e.kind() == jetstream::context::PublishErrorKind::StreamNotFound),
            "{refused:?}"
        );
        ensure!(
            started.elapsed() >= Duration::from_secs(2),
            "given up after {:?}",
            started.elapsed()
        );
        Ok(())
    })
    .await
}
