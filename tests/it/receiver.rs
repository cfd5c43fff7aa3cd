//! `ledgerline receiver`, the sample accounting system, as a user runs it:
//! the binary on a free port, driven over HTTP.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ledgerline::secret::Secret;
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn signed(body: &str, key: &str) -> Vec<(&'static str, String)> {
    let k = ledgerline::signing::decode_secret(&Secret::new(SECRET)).unwrap();
    let ts = time::OffsetDateTime::now_utc().unix_timestamp();
    vec![
        ("webhook-id", key.to_owned()),
        ("webhook-timestamp", ts.to_string()),
        (
            "webhook-signature",
            ledgerline::signing::sign(&k, key, ts, body.as_bytes()),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_verifies_signatures_answers_journals_and_fails_on_demand() {
    let mut child = crate::support::process::ledgerline(&[])
        .args(["receiver", "--listen", "127.0.0.1:0", "--secret", SECRET])
        .args(["--fail-status", "503", "--fail-share", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    assert!(first.contains("signatures verified"), "{first}");
    let base = format!("http://{addr}");
    let http = crate::support::http_client();
    let body = json!({"order_id": "o-1", "registry_data": {}, "idempotency_key": "k-1",
                      "ledger_entries": []})
    .to_string();
    let post = |body: String, headers: Vec<(&'static str, String)>| {
        let mut req = http.post(format!("{base}/hooks")).body(body);
        for (n, v) in headers {
            req = req.header(n, v);
        }
        req.send()
    };

    let r = post(body.clone(), signed(&body, "k-1")).await.unwrap();
    assert_eq!(r.status(), 503, "told to fail at start");
    let r = http
        .put(format!("{base}/_receiver/failure"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = post(body.clone(), signed(&body, "k-1")).await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer, json!({"journal_id": "J-000123", "revision": 1}));
    let again: Value = post(body.clone(), signed(&body, "k-1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, answer, "the same key gets the same answer");
    let r = post(body.clone(), vec![]).await.unwrap();
    assert_eq!(r.status(), 401, "unsigned");
    let tampered = body.replace("o-1", "o-2");
    let r = post(tampered, signed(&body, "k-1")).await.unwrap();
    assert_eq!(r.status(), 401, "signature of another body");

    let get_json = |path: &str| {
        let r = http.get(format!("{base}{path}")).send();
        async move { r.await.unwrap().json::<Value>().await.unwrap() }
    };
    let stats = get_json("/_receiver/stats").await;
    assert_eq!(stats["requests"], 5);
    assert_eq!(stats["accepted"], 2);
    assert_eq!(stats["failures_injected"], 1);
    assert_eq!(stats["signature_failures"], 2);
    let received = get_json("/_receiver/received").await;
    let received = received.as_array().expect("a JSON array");
    assert_eq!(received.len(), 5);
    assert_eq!(received[1]["signature"], "valid");
    assert_eq!(received[3]["signature"], "missing");

    // SIGTERM: a summary, exit 0.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    for line in stderr.lines() {
        rest.push_str(&line.unwrap());
        rest.push('\n');
    }
    assert!(status.success(), "{rest}");
    assert!(rest.contains("receiver: 5 requests, 2 accepted"), "{rest}");
}

#[tokio::test]
async fn an_extreme_webhook_timestamp_is_refused_not_a_crash() {
    let (rx, base) = crate::support::receiver(Some(SECRET), Default::default()).await;
    let url = format!("{base}/hooks");
    let http = crate::support::http_client();
    let body = json!({"order_id": "o-1", "registry_data": {}, "idempotency_key": "k-1",
                      "ledger_entries": []})
    .to_string();
    let k = ledgerline::signing::decode_secret(&Secret::new(SECRET)).unwrap();
    for ts in [i64::MAX, i64::MIN, i64::MIN + 1, -1] {
        let r = http
            .post(&url)
            .header("webhook-id", "k-1")
            .header("webhook-timestamp", ts.to_string())
            .header(
                "webhook-signature",
                ledgerline::signing::sign(&k, "k-1", ts, body.as_bytes()),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("timestamp {ts}: no answer ({e})"));
        assert_eq!(r.status(), 401, "timestamp {ts}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("timestamp out of tolerance"),
            "timestamp {ts}: {text}"
        );
    }
    // Still serving, and a good signature still passes.
    let body = body.replace("k-1", "k-2");
    let r = http
        .post(&url)
        .headers(
            signed(&body, "k-2")
                .into_iter()
                .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
                .collect(),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 401);
    drop(rx);
}
