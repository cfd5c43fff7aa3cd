//! Issue 13's flood: 10,000 webhooks to the ingest listener of a
//! `ledgerline run` child process, a mix of valid events, requests over a
//! source's rate limit and bodies over the size limit
//! (`ledgerline::bench::flood`, the flood `ledgerline bench --flood` runs
//! in process). Every request is answered, every 200 is stored, and the
//! child's peak RSS stays under a memory bound (not a timing).

use std::time::Duration;

use ledgerline::bench::flood;

use crate::support::{self, eventually};

/// The child's peak RSS may not pass this: a generous bound (a debug build
/// idles at about 30 MiB; a buffered flood of 500 bodies of 1 MiB would be
/// over 500 MiB).
const PEAK_RSS_MAX_BYTES: u64 = 200 * 1024 * 1024;

/// A free loopback port for the child's ingest listener.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[tokio::test]
async fn a_flood_of_10000_webhooks_is_answered_stored_and_held_in_bounded_memory() {
    let nats = support::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rest = format!("ingest_listen = \"127.0.0.1:{port}\"\n{}", flood::SOURCES);
    let config = support::process::service_config(dir.path(), &nats.server.url(), &rest);
    let log = dir.path().join("run.log");
    let mut run = support::process::run("warn")
        .only("ingest")
        .spawn(&config, &log);
    let pid = run.id().expect("the child runs");
    let http = support::http_client();
    let base = format!("http://127.0.0.1:{port}");
    let probe = format!("{base}/v1/ingest/{}", flood::SHOP);
    eventually("the ingest API answers", Duration::from_secs(30), || {
        let req = http.post(&probe).body("{}").send();
        async move { req.await.is_ok_and(|r| r.status() == 422) }
    })
    .await;

    let answers = flood::send(&http, &base, 10_000, "flood").await;
    let log_tail = || support::process::tail(&log, 20);
    assert_eq!(answers.requests(), 10_000);
    assert_eq!(
        answers.unanswered,
        0,
        "{} {}",
        answers.summary(),
        log_tail()
    );
    assert!(answers.unexpected.is_empty(), "{:?}", answers.unexpected);
    assert_eq!(answers.retry_after_missing, 0);
    assert_eq!(answers.with(413), 500, "{}", answers.summary());
    // The slow source takes 50 a second (a second's worth at once): of its
    // 2,500 requests, all but what the flood's duration allowed are
    // refused. On an idle machine the flood takes a few seconds, so most
    // are; a loaded one stretches it, and the limiter rightly lets more in.
    let slow = (0..10_000)
        .filter(|&i| flood::shot(i) == flood::Shot::OverRate)
        .count();
    let allowed =
        (f64::from(flood::SLOW_RATE_PER_S) * (answers.elapsed.as_secs_f64() + 1.0)).ceil() as usize;
    assert!(
        answers.with(429) >= slow.saturating_sub(allowed),
        "{slow} to the slow source in {:?}: {}",
        answers.elapsed,
        answers.summary()
    );
    assert!(answers.with(200) >= 5_000, "{}", answers.summary());

    // Every 200 is an event stored on ORDERS, and nothing else is.
    let mut orders = nats
        .js
        .get_stream(ledgerline::streams::ORDERS_STREAM)
        .await
        .unwrap();
    let stored = orders.info().await.unwrap().state.messages;
    assert_eq!(stored, answers.with(200) as u64, "{}", answers.summary());

    let peak = ledgerline::bench::usage::of_pid(pid)
        .and_then(|u| u.peak_rss)
        .expect("the child's /proc/PID/status");
    assert!(
        peak < PEAK_RSS_MAX_BYTES,
        "peak RSS {} MiB ≥ {} MiB",
        peak / (1024 * 1024),
        PEAK_RSS_MAX_BYTES / (1024 * 1024)
    );
    run.start_kill().unwrap();
    let _ = run.wait().await;
}
