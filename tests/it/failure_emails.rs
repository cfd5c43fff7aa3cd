//! A registry with `notify_emails` on an instance without `[smtp]` (issue
//! 14): valid, but no failure email will be sent, and the operator is told
//! at start (a log line), by `registry show` and in `/readyz`.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::config::TestConfig;
use crate::support::process::{config_file, ledgerline, run, tail};
use crate::support::{Service, eventually, nats};

const MAILED: &str = "notify_emails = [\"ops@example.com\"]";

#[tokio::test]
async fn readyz_warns_of_notify_emails_without_smtp_naming_the_registries() {
    let nats = nats().await;
    let config = TestConfig::new()
        .registry("mailed", "http://127.0.0.1:9/hooks", MAILED)
        .registry("quiet", "http://127.0.0.1:9/hooks", "");
    let svc = Service::start(
        config.settings(&nats.server),
        &ledgerline::service::Component::ALL,
    )
    .await;
    eventually(
        "the failure emails check",
        Duration::from_secs(20),
        || async { svc.readyz_check("failure emails").await.is_some() },
    )
    .await;
    let check = svc.readyz_check("failure emails").await.unwrap_or_default();
    assert_eq!(check["ok"], true, "a warning, not a failure: {check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("[smtp]") && detail.ends_with("notify_emails: mailed"),
        "{detail}"
    );
    svc.stop().await;

    // With [smtp], no such check.
    let with_smtp = config.smtp(2525);
    let svc = Service::start(
        with_smtp.settings(&nats.server),
        &ledgerline::service::Component::ALL,
    )
    .await;
    eventually("readiness", Duration::from_secs(20), || async {
        let r = svc.http.get(svc.url("/readyz")).send().await.unwrap();
        r.status() == 200
    })
    .await;
    assert_eq!(svc.readyz_check("failure emails").await, None);
    svc.stop().await;
}

#[tokio::test]
async fn run_logs_the_warning_at_start_and_registry_show_repeats_it() {
    let nats = nats().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &nats.server.url(),
        &format!("[[registry]]\nid = \"mailed\"\nurl = \"http://127.0.0.1:9/hooks\"\n{MAILED}\n"),
    );
    let log = dir.path().join("run.log");
    let mut child = run("warn").only("aggregator").spawn(&config, &log);
    eventually("the start-up warning", Duration::from_secs(20), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| {
                v["level"] == "WARN"
                    && v["registry_id"] == "mailed"
                    && v["field"] == "notify_emails"
                    && v["message"].as_str().unwrap_or("").contains("[smtp]")
            })
    })
    .await;
    child.start_kill().unwrap();
    let _ = child.wait().await;

    let out = ledgerline(&["registry", "show", "mailed", "--config"])
        .arg(&config)
        .env("LEDGERLINE_LOG", "off")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", tail(&log, 20));
    assert!(
        err.contains("warning") && err.contains("notify_emails") && err.contains("[smtp]"),
        "{err}"
    );
}
