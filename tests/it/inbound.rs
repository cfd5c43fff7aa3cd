//! Inbound webhooks (SPEC 10): the mapping of each kind's reference
//! payloads against golden files (`fixtures/inbound/`), and the listener
//! end to end through a real nats-server and the running service.

use std::path::{Path, PathBuf};

use ledgerline::mapping::{self, LineRef, Plan};
use ledgerline::source::SourceConfig;
use serde::Deserialize;

fn inbound_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/inbound")
}

#[derive(Deserialize)]
struct Cases {
    source: SourceConfig,
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    payload: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    lines: Vec<(String, u64)>,
}

/// What a case produces, as the `.out` file spells it.
fn render(plan: Result<Plan, ledgerline::events::Rejection>, lines: &[LineRef]) -> String {
    let events = match plan {
        Ok(Plan::Store(events)) => events,
        Ok(Plan::Redeem(r)) => r.events(lines),
        Ok(Plan::Ignored { topic }) => return format!("ignored {topic}\n"),
        Err(r) => return format!("rejected {} {}: {}\n", r.reason, r.field, r.message),
    };
    let mut out = String::new();
    for e in events {
        let event: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(event["event_id"].as_str(), Some(e.msg_id.as_str()));
        assert_eq!(event["order_id"].as_str(), Some(e.order_id.as_str()));
        out.push_str(&String::from_utf8(e.payload).unwrap());
        out.push('\n');
    }
    out
}

#[test]
fn every_reference_payload_maps_to_exactly_its_golden_events() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut checked = 0;
    for kind in [
        "marketplace_orders",
        "pos_payments",
        "gateway",
        "events",
        "jq",
    ] {
        let dir = inbound_dir().join(kind);
        let mut cases: Cases =
            toml::from_str(&std::fs::read_to_string(dir.join("cases.toml")).unwrap()).unwrap();
        // A jq source's program_file, read as `run` and `source apply` read it.
        ledgerline::source_store::read_program_files(std::slice::from_mut(&mut cases.source), &dir)
            .unwrap();
        let source = cases.source.validate().unwrap();
        for case in cases.case {
            let payload = case.payload.as_deref().unwrap_or(&case.name);
            let body = std::fs::read(dir.join(format!("{payload}.json"))).unwrap();
            let lines: Vec<LineRef> = case
                .lines
                .iter()
                .map(|(id, quantity)| LineRef {
                    id: id.clone(),
                    quantity: *quantity,
                })
                .collect();
            let got = render(mapping::plan(&source, case.topic.as_deref(), &body), &lines);
            let out = dir.join(format!("{}.out", case.name));
            if update {
                std::fs::write(&out, &got).unwrap();
            }
            let want = std::fs::read_to_string(&out).unwrap_or_default();
            assert_eq!(
                got, want,
                "{kind}/{}: output differs from {out:?}",
                case.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 26, "only {checked} cases");
}

// ── The listener, end to end ────────────────────────────────────────────

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use ledgerline::config::Settings;
use ledgerline::receiver::FailureMode;
use ledgerline::service::{Component, Listeners};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::support::{self, eventually};

/// `ledgerline run` in this process, every component, the ingest API and
/// the admin API (`service`) each on a free loopback port.
struct Running {
    /// `http://127.0.0.1:<port>` of the ingest API.
    base: String,
    service: support::Service,
}

impl Running {
    async fn start(mut settings: Settings) -> Running {
        settings.config.admin_token = Some(ledgerline::secret::Secret::new(support::ADMIN_TOKEN));
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ingest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_base = format!("http://{}", admin.local_addr().unwrap());
        let base = format!("http://{}", ingest.local_addr().unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(ledgerline::service::run_with_listeners(
            settings,
            Component::ALL.into_iter().collect(),
            Listeners {
                admin: Some(admin),
                ingest: Some(ingest),
            },
            shutdown.clone(),
        ));
        let service = support::Service {
            base: admin_base,
            shutdown,
            task,
            http: support::http_client(),
        };
        let running = Running { base, service };
        let probe = format!("{}/v1/ingest/no-such-source", running.base);
        eventually("the ingest API answers", Duration::from_secs(20), || {
            let req = running.service.http.post(&probe).send();
            async move { req.await.is_ok_and(|r| r.status() == 404) }
        })
        .await;
        running
    }

    /// POSTs `body` to `/v1/ingest/<path>` with `headers`: (status, JSON).
    async fn post(&self, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
        let mut req = self
            .service
            .http
            .post(format!("{}/v1/ingest/{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn stop(self) {
        self.service.stop().await;
    }
}

fn fixture(kind: &str, name: &str) -> Vec<u8> {
    std::fs::read(inbound_dir().join(kind).join(format!("{name}.json"))).unwrap()
}

/// Hex HMAC-SHA256 of `body` under `key`: the gateway's `X-Signature`.
fn hex_hmac(key: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Messages stored on ORDERS under `subject`.
async fn count_orders(js: &async_nats::jetstream::Context, subject: &str) -> u64 {
    use futures::TryStreamExt;
    let stream = js
        .get_stream(ledgerline::streams::ORDERS_STREAM)
        .await
        .unwrap();
    stream
        .info_with_subjects(subject)
        .await
        .unwrap()
        .try_fold(0u64, |n, (_, c)| async move { Ok(n + c as u64) })
        .await
        .unwrap()
}

/// A SPEC 1 `order.confirmed` of one line, as a shop posts it.
fn confirmed(order: &str, currency: &str, price: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": format!("{order}-confirmed"),
        "type": "order.confirmed",
        "order_id": order,
        "occurred_at": "2026-11-22T10:00:00Z",
        "order": {
            "version": 1, "currency": currency, "prices_include_tax": true,
            "line_items": [{"id": "li-1", "description": "Ticket", "quantity": 1,
                            "unit_price": price, "tax_rate": "0"}],
            "fees": []
        }
    }))
    .unwrap()
}

const SOURCES: &str = r#"
[[source]]
id = "venti"
kind = "marketplace_orders"
currency = "MXN"
[source.auth]
type = "header"
header = "authenticationToken"
value = "venti-key-0123456789"

[[source]]
id = "pos"
kind = "pos_payments"
currency = "IDR"
[source.auth]
type = "basic"
username = "pos"
password = "pos-pass-0123456789"

[[source]]
id = "gateway"
kind = "gateway"
currency = "USD"
order_id_pointer = "/event_body/object/invoice"
[source.auth]
type = "signature"
secret = "gateway-secret-0123456789"

[[source]]
id = "shop"
kind = "events"
[source.auth]
type = "bearer"
token = "shop-token-0123456789"
"#;

/// A nats-server, a sample receiver behind registry `books` (every event
/// type) and the settings: `extra` TOML, then [`SOURCES`].
async fn setup(extra: &str) -> (support::Nats, ledgerline::receiver::Receiver, Settings) {
    setup_with(extra, "").await
}

/// [`setup`] with `registry` (TOML lines) added to registry `books`.
async fn setup_with(
    extra: &str,
    registry: &str,
) -> (support::Nats, ledgerline::receiver::Receiver, Settings) {
    let nats = support::nats().await;
    let (rx, rx_url) = support::receiver(None, FailureMode::default()).await;
    let settings = support::settings(
        &nats.server,
        &format!(
            "{extra}[[registry]]\nid = \"books\"\nurl = \"{rx_url}/hooks\"\nevent_types = [\"*\"]\n{registry}{SOURCES}"
        ),
    );
    (nats, rx, settings)
}

/// Waits until the receiver has accepted `n` postings.
async fn delivered(rx: &ledgerline::receiver::Receiver, n: usize) {
    eventually(
        &format!("{n} postings delivered"),
        Duration::from_secs(60),
        || {
            let got = rx.received().iter().filter(|r| r.status == 200).count();
            async move { got >= n }
        },
    )
    .await;
}

const POS_ORDER: &str = "008cdf4c-f5c1-449c-94dd-c2f3741fb1ab";

#[tokio::test]
async fn every_kind_is_authenticated_mapped_stored_once_and_posted_to_a_registry() {
    let (nats, rx, settings) = setup("").await;
    let svc = Running::start(settings.clone()).await;
    let shop = [("authorization", "Bearer shop-token-0123456789".to_owned())];
    let venti = [("authenticationToken", "venti-key-0123456789".to_owned())];
    let pos_basic = format!("Basic {}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("pos:pos-pass-0123456789")
    });
    let pos = [("authorization", pos_basic)];

    // Our own events: the orders the POS and the gateway pay.
    for body in [
        confirmed(POS_ORDER, "IDR", "100000"),
        confirmed("INV-1001", "USD", "5.00"),
    ] {
        let (status, reply) = svc.post("shop", &shop, &body).await;
        assert_eq!((status, &reply["stored"]), (200, &json!(1)), "{reply}");
    }

    // The marketplace: a snapshot, its retry (dropped), a newer snapshot.
    let created = fixture("marketplace_orders", "orders_created");
    let (status, reply) = svc.post("venti/orders/created", &venti, &created).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"status": "success", "stored": 1, "duplicates": 0})
    );
    let (status, reply) = svc.post("venti/orders/created", &venti, &created).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"status": "success", "stored": 0, "duplicates": 1})
    );
    let updated = fixture("marketplace_orders", "orders_updated");
    let (status, _) = svc.post("venti/orders/updated", &venti, &updated).await;
    assert_eq!(status, 200);
    assert_eq!(count_orders(&nats.js, "orders.1234").await, 2);

    // The POS answers exactly what its reference expects.
    let payment = fixture("pos_payments", "payment");
    let (status, reply) = svc.post("pos/payment/created", &pos, &payment).await;
    assert_eq!((status, reply), (200, json!({"status": "success"})));

    // The gateway: a bad signature stores nothing; the right one does.
    let sale = fixture("gateway", "sale_success");
    let bad = [("X-Signature", hex_hmac("not-the-secret", &sale))];
    let (status, reply) = svc.post("gateway", &bad, &sale).await;
    assert_eq!(status, 401, "{reply}");
    assert_eq!(reply["error"]["field"], "X-Signature");
    assert_eq!(count_orders(&nats.js, "orders.INV-1001").await, 1);
    let good = [("X-Signature", hex_hmac("gateway-secret-0123456789", &sale))];
    let (status, reply) = svc.post("gateway", &good, &sale).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(count_orders(&nats.js, "orders.INV-1001").await, 2);

    // Wrong credentials: 401, nothing stored, nothing rejected.
    let wrong = [("authenticationToken", "guess".to_owned())];
    let (status, reply) = svc.post("venti/orders/updated", &wrong, &updated).await;
    assert_eq!(
        (status, &reply["error"]["field"]),
        (401, &json!("authenticationToken"))
    );
    let (status, _) = svc.post("pos/payment/created", &[], &payment).await;
    assert_eq!(status, 401);

    // A bad payload: 422 naming the field, its raw body kept as rejected.
    let mismatch = fixture("marketplace_orders", "total_mismatch");
    let (status, reply) = svc.post("venti/orders/created", &venti, &mismatch).await;
    assert_eq!(
        (status, &reply["error"]["field"]),
        (422, &json!("total")),
        "{reply}"
    );
    let rejected = support::read_ledger(&nats.js, "ledger.rejected.invalid_field").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].1.as_ref(), mismatch.as_slice());
    let (status, _) = svc.post("venti/orders/created", &venti, b"{not json").await;
    assert_eq!(status, 400);

    // Unknown topics are acknowledged, not stored; unknown sources are 404.
    let (status, reply) = svc.post("venti/orders/billing", &venti, &created).await;
    assert_eq!((status, &reply["ignored"]), (200, &json!("orders/billing")));
    let (status, _) = svc.post("nobody/orders/created", &venti, &created).await;
    assert_eq!(status, 404);
    assert_eq!(count_orders(&nats.js, "orders.>").await, 6);

    // Six events, six postings, each what a replay of ORDERS gives.
    delivered(&rx, 6).await;
    let report = support::verify(&nats, &settings).await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!((report.expected, report.stored), (6, 6), "{report}");
    let body_of = |order: &str| -> Vec<Value> {
        rx.received()
            .iter()
            .filter(|r| r.order_id.as_deref() == Some(order))
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    };
    let cashflow = |b: &Value| -> Vec<String> {
        b["ledger_entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["description"] == "Cashflow")
            .map(|e| e["debit"].as_str().unwrap().to_owned())
            .collect()
    };
    let pos_bodies = body_of(POS_ORDER);
    assert_eq!(cashflow(pos_bodies.last().unwrap()), ["100000.00"]);
    let gateway_bodies = body_of("INV-1001");
    assert_eq!(cashflow(gateway_bodies.last().unwrap()), ["5.00"]);
    // The paid marketplace order: 660.00 paid, then 200.00 more.
    let venti_bodies = body_of("1234");
    assert_eq!(venti_bodies.len(), 2);
    assert_eq!(cashflow(&venti_bodies[0]), ["660.00"]);
    assert_eq!(cashflow(&venti_bodies[1]), ["200.00"]);
    svc.stop().await;
}

/// `orders/redeemed` through the listener: the order's lines are read from
/// ORDERS, one `order.redeemed` per line is stored (once, however often the
/// marketplace retries), and a registry recognising revenue on redemption
/// is posted the move from deferred revenue to revenue.
#[tokio::test]
async fn a_marketplace_redemption_moves_the_orders_deferred_revenue_to_revenue() {
    let (nats, rx, settings) = setup_with("", "revenue_recognition = \"on_redemption\"\n").await;
    let svc = Running::start(settings.clone()).await;
    let venti = [("authenticationToken", "venti-key-0123456789".to_owned())];
    let created = fixture("marketplace_orders", "orders_created");
    let (status, reply) = svc.post("venti/orders/created", &venti, &created).await;
    assert_eq!((status, &reply["stored"]), (200, &json!(1)), "{reply}");
    let redeemed = fixture("marketplace_orders", "orders_redeemed");
    let (status, reply) = svc.post("venti/orders/redeemed", &venti, &redeemed).await;
    assert_eq!((status, &reply["stored"]), (200, &json!(2)), "{reply}");
    let (status, reply) = svc.post("venti/orders/redeemed", &venti, &redeemed).await;
    assert_eq!((status, &reply["duplicates"]), (200, &json!(2)), "{reply}");

    // The confirmation defers both lines; each redemption moves one.
    delivered(&rx, 3).await;
    let bodies: Vec<Value> = rx
        .received()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let sum = |b: &Value, prefix: &str, side: &str| -> Decimal {
        b["ledger_entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["description"].as_str().unwrap().starts_with(prefix))
            .map(|e| e[side].as_str().unwrap().parse::<Decimal>().unwrap())
            .sum()
    };
    let deferred = sum(&bodies[0], "Deferred Revenue: ", "credit");
    assert!(deferred > Decimal::ZERO, "{}", bodies[0]);
    let mut moved = Decimal::ZERO;
    for b in &bodies[1..] {
        let debit = sum(b, "Deferred Revenue: ", "debit");
        assert!(debit > Decimal::ZERO, "{b}");
        let entries = b["ledger_entries"].as_array().unwrap();
        assert_eq!(
            entries.len(),
            2,
            "a debit of deferred revenue, a credit of revenue: {b}"
        );
        moved += debit;
    }
    assert_eq!(moved, deferred, "every deferred unit recognised");
    let report = support::verify(&nats, &settings).await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.stored, 3, "{report}");
    svc.stop().await;
}

#[tokio::test]
async fn with_nats_down_a_webhook_is_answered_503_and_its_retry_is_stored_once() {
    // A lease that outlives the outage: this test is about the webhook, not
    // about the active instance losing its lease (which stops `run`).
    let (mut nats, rx, settings) = setup("lease_ttl = \"60s\"\n").await;
    let svc = Running::start(settings.clone()).await;
    let shop = [("authorization", "Bearer shop-token-0123456789".to_owned())];
    let (status, _) = svc
        .post("shop", &shop, &confirmed("o-1", "EUR", "10.00"))
        .await;
    assert_eq!(status, 200);
    // The pipeline is up and running before NATS goes away.
    delivered(&rx, 1).await;

    nats.server.stop().await;
    let second = confirmed("o-2", "EUR", "20.00");
    let started = std::time::Instant::now();
    let (status, reply) = svc.post("shop", &shop, &second).await;
    assert_eq!(status, 503, "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered in time"
    );

    nats.server.restart().await.unwrap();
    // The vendor retries until it is answered 2xx.
    let mut answered = 0;
    for _ in 0..100 {
        let (status, _) = svc.post("shop", &shop, &second).await;
        answered = status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answered, 200);
    let client = async_nats::connect(nats.server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    assert_eq!(count_orders(&js, "orders.o-2").await, 1, "stored once");
    delivered(&rx, 2).await;
    let nats = support::Nats {
        client,
        js,
        server: nats.server,
    };
    let report = support::verify(&nats, &settings).await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!((report.expected, report.stored), (2, 2), "{report}");
    svc.stop().await;
}

#[tokio::test]
async fn an_oauth2_source_takes_only_the_tokens_it_issued() {
    let (_nats, _rx, settings) = setup(
        r#"
[[source]]
id = "venti-oauth"
kind = "marketplace_orders"
[source.auth]
type = "oauth2"
client_id = "venti"
client_secret = "venti-secret-0123456789"
token_field = "auth_token"
token_ttl_s = 600
"#,
    )
    .await;
    let svc = Running::start(settings).await;
    let token_url = format!("{}/v1/ingest/venti-oauth/token", svc.base);
    let http = &svc.service.http;
    let form = "grant_type=client_credentials&client_id=venti&client_secret=wrong";
    let resp = http
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let ask_token = |secret: &str| {
        http.post(&token_url)
            .json(
                &json!({"grant_type": "client_credentials", "client_id": "venti",
                          "client_secret": secret}),
            )
            .send()
    };
    let resp = ask_token("venti-secret-0123456789").await.unwrap();
    assert_eq!(resp.status(), 200);
    let reply: Value = resp.json().await.unwrap();
    assert_eq!(
        (&reply["expires_in"], &reply["token_type"]),
        (&json!(600), &json!("Bearer"))
    );
    let token = reply["auth_token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);

    let created = fixture("marketplace_orders", "orders_created");
    let bearer = |t: &str| [("authorization", format!("Bearer {t}"))];
    let (status, _) = svc
        .post("venti-oauth/orders/created", &bearer("made-up"), &created)
        .await;
    assert_eq!(status, 401);
    let (status, reply) = svc
        .post("venti-oauth/orders/created", &bearer(&token), &created)
        .await;
    assert_eq!((status, &reply["stored"]), (200, &json!(1)), "{reply}");

    // A new client secret over the admin API: the tokens minted under the
    // old one, and the old one itself, are refused from then on.
    let (status, body) = svc
        .service
        .put(
            "/v1/sources/venti-oauth",
            &json!({"kind": "marketplace_orders", "auth": {"type": "oauth2",
                    "client_id": "venti", "client_secret": "venti-secret-rotated-42",
                    "token_field": "auth_token", "token_ttl_s": 600}}),
        )
        .await;
    assert_eq!(
        (status, &body["result"]),
        (200, &json!("updated")),
        "{body}"
    );
    assert!(
        !body.to_string().contains("venti-secret-rotated-42"),
        "{body}"
    );
    eventually("the old token refused", Duration::from_secs(20), || async {
        let (status, _) = svc
            .post("venti-oauth/orders/created", &bearer(&token), &created)
            .await;
        status == 401
    })
    .await;
    let old = ask_token("venti-secret-0123456789").await.unwrap();
    assert_eq!(old.status(), 401);
    let new = ask_token("venti-secret-rotated-42").await.unwrap();
    assert_eq!(new.status(), 200);

    // Another source's token endpoint does not exist.
    let resp = http
        .post(format!("{}/v1/ingest/shop/token", svc.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    svc.stop().await;
}

#[tokio::test]
async fn a_flood_is_held_to_the_source_rate_and_bodies_to_their_limit() {
    let (_nats, _rx, settings) =
        setup("[[source]]\nid = \"slow\"\nkind = \"events\"\nrate_limit_per_s = 5\n").await;
    let svc = Running::start(settings).await;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let started = std::time::Instant::now();
    for _ in 0..50 {
        let (status, _) = svc.post("slow", &[], b"{}").await;
        *statuses.entry(status).or_default() += 1;
    }
    // 5 a second, a second's worth at once: all but what the loop's own
    // duration allowed are refused (≈ 45 on an idle machine; a loaded one
    // takes longer, and the limiter rightly lets more in).
    let elapsed = started.elapsed();
    let allowed = (5.0 * (elapsed.as_secs_f64() + 1.0)).ceil() as usize;
    let limited = statuses.get(&429).copied().unwrap_or(0);
    assert!(
        limited >= 50usize.saturating_sub(allowed),
        "{statuses:?} in {elapsed:?}"
    );
    let big = vec![b' '; ledgerline::source::SOURCE_BODY_MAX_BYTES + 1];
    let (status, _) = svc.post("slow", &[], &big).await;
    assert_eq!(status, 413);
    svc.stop().await;
}

#[tokio::test]
async fn a_sigkill_mid_flood_never_loses_an_acknowledged_webhook() {
    let nats = support::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = support::process::service_config(
        dir.path(),
        &nats.server.url(),
        &format!(
            "ingest_listen = \"127.0.0.1:{port}\"\n[[source]]\nid = \"shop\"\nkind = \"events\"\nrate_limit_per_s = 10000\n"
        ),
    );
    let log = dir.path().join("run.log");
    let mut run = support::process::run("info")
        .only("ingest")
        .spawn(&config, &log);
    let http = support::http_client();
    let url = format!("http://127.0.0.1:{port}/v1/ingest/shop");
    eventually("the ingest API answers", Duration::from_secs(30), || {
        let req = http.post(&url).body("{}").send();
        async move { req.await.is_ok_and(|r| r.status() == 422) }
    })
    .await;

    // 400 webhooks, 16 at a time; the process is killed once 100 are
    // acknowledged, whatever is in flight.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..400 {
        let (http, url, acked, gate) = (http.clone(), url.clone(), acked.clone(), gate.clone());
        requests.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let order = format!("k-{i}");
            let sent = http
                .post(&url)
                .body(confirmed(&order, "EUR", "1.00"))
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            let ok = sent.is_ok_and(|r| r.status() == 200);
            if ok {
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            (order, ok)
        });
    }
    eventually("100 webhooks acknowledged", Duration::from_secs(60), || {
        let n = acked.load(std::sync::atomic::Ordering::SeqCst);
        async move { n >= 100 }
    })
    .await;
    run.start_kill().unwrap();
    let _ = run.wait().await;

    let mut answered = Vec::new();
    let mut unanswered = 0;
    while let Some(done) = requests.join_next().await {
        match done.unwrap() {
            (order, true) => answered.push(order),
            (_, false) => unanswered += 1,
        }
    }
    assert!(
        answered.len() >= 100 && unanswered > 0,
        "{} answered, {unanswered} not",
        answered.len()
    );
    for order in &answered {
        assert_eq!(
            count_orders(&nats.js, &format!("orders.{order}")).await,
            1,
            "acknowledged webhook for {order} is stored once"
        );
    }
}

// ── Sources in the bucket (admin API and CLI) ───────────────────────────

const TOKEN_ONE: &str = "web-token-one-0123456789";
const TOKEN_TWO: &str = "web-token-two-9876543210";

/// POSTs one SPEC 1 event to source `web` with `token` until the answer is
/// `want` (the running service follows the bucket; a change is in force
/// within moments): the last (status, reply).
async fn ingest_until(svc: &Running, token: &str, order: &str, want: u16) -> (u16, Value) {
    let auth = [("authorization", format!("Bearer {token}"))];
    let mut last = (0, Value::Null);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        last = svc
            .post("web", &auth, &confirmed(order, "EUR", "10.00"))
            .await;
        if last.0 == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("source web with {token}: never {want}, last {last:?}");
}

/// Checks an admin API reply (status, body) is 200 with `result` `want`,
/// and keeps it in `seen` (where no secret may show).
fn done((status, body): (u16, Value), want: &str, seen: &mut String) {
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some(want)),
        "{body}"
    );
    seen.push_str(&body.to_string());
}

#[tokio::test]
async fn a_source_written_over_the_admin_api_is_served_rekeyed_and_removed_without_a_restart() {
    let nats = support::nats().await;
    // No [[source]] in the file: the bucket is the only place it comes from.
    let settings = support::settings(&nats.server, "");
    let svc = Running::start(settings).await;
    let admin = &svc.service;
    let mut seen = String::new();

    let (status, body) = admin
        .post(
            "/v1/sources",
            &json!({"id": "web", "kind": "events",
                    "auth": {"type": "bearer", "token": TOKEN_ONE}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["source"]["auth"]["token"], "***");
    assert_eq!(body["source"]["changed_by"], "api");
    assert_eq!(body["message"], "source created");
    seen.push_str(&body.to_string());

    // Served at once by the running service, and stored on ORDERS.
    let (_, reply) = ingest_until(&svc, TOKEN_ONE, "WEB-1", 200).await;
    assert_eq!(reply["stored"], json!(1), "{reply}");
    assert_eq!(count_orders(&nats.js, "orders.WEB-1").await, 1);

    // A bad body names the field; the id is taken from the URL on PUT.
    let bad = json!({"id": "bad", "kind": "fax"});
    support::assert_refused(admin.post("/v1/sources", &bad).await, 422, "kind");
    let taken = json!({"id": "web", "kind": "events"});
    support::assert_refused(admin.post("/v1/sources", &taken).await, 409, "id");

    // Read back and sent back with "***": the stored secret is kept.
    let (status, read) = admin.get("/v1/sources/web").await;
    assert_eq!(status, 200, "{read}");
    seen.push_str(&read.to_string());
    let mut same = read["source"].clone();
    same["rate_limit_per_s"] = json!(50);
    done(
        admin.put("/v1/sources/web", &same).await,
        "updated",
        &mut seen,
    );
    ingest_until(&svc, TOKEN_ONE, "WEB-2", 200).await;

    // PUT a new secret: the old one is refused from then on.
    let rekeyed = json!({"kind": "events", "auth": {"type": "bearer", "token": TOKEN_TWO}});
    done(
        admin.put("/v1/sources/web", &rekeyed).await,
        "updated",
        &mut seen,
    );
    ingest_until(&svc, TOKEN_ONE, "WEB-3", 401).await;
    ingest_until(&svc, TOKEN_TWO, "WEB-3", 200).await;

    let (status, list) = admin.get("/v1/sources").await;
    assert_eq!(status, 200);
    assert_eq!(support::str_fields(&list["sources"], "id"), ["web"]);
    seen.push_str(&list.to_string());
    let (status, history) = admin.get("/v1/sources/web/history").await;
    assert_eq!((status, history["source_id"].as_str()), (200, Some("web")));
    assert_eq!(
        history["history"].as_array().map(Vec::len),
        Some(3),
        "{history}"
    );
    seen.push_str(&history.to_string());

    // The bucket, not the file, holds it: a restart serves it still.
    let settings = support::settings(&nats.server, "");
    svc.stop().await;
    let svc = Running::start(settings).await;
    let admin = &svc.service;
    ingest_until(&svc, TOKEN_TWO, "WEB-3", 200).await;

    // DELETE: its route answers 404, its history stays.
    done(admin.delete("/v1/sources/web").await, "deleted", &mut seen);
    ingest_until(&svc, TOKEN_TWO, "WEB-4", 404).await;
    assert_eq!(admin.get("/v1/sources/web").await.0, 404);
    assert_eq!(admin.get("/v1/sources/web/history").await.0, 200);

    for secret in [TOKEN_ONE, TOKEN_TWO] {
        assert!(!seen.contains(secret), "{secret} in an API response");
    }
    // The registries' API is untouched by the sources beside it.
    assert_eq!(
        admin.get("/v1/registries").await.1,
        json!({"registries": []})
    );
    svc.stop().await;
}

#[tokio::test]
async fn the_source_cli_applies_lists_shows_and_deletes_without_showing_a_secret() {
    let nats = support::nats().await;
    let dir = tempfile::tempdir().unwrap();
    let config = support::process::config_file(dir.path(), &nats.server.url(), "");
    let mut cli = support::process::Cli::new(config);
    let file = dir.path().join("sources.toml");
    std::fs::write(&file, SOURCES).unwrap();
    let file_arg = file.to_str().unwrap();

    let (code, out, err) = cli.run(&["source", "apply", file_arg]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("created venti (revision "), "{out}");
    assert_eq!(out.lines().count(), 4, "{out}");
    let rows = cli.reapply_and_list(
        &["source", "apply", "-f", file_arg],
        4,
        &["KIND", "REVISION"],
    );
    let gateway = &rows[2];
    assert!(
        gateway.starts_with("gateway ") && gateway.contains("signature") && gateway.contains("USD"),
        "{rows:?}"
    );

    // show → edit → apply from stdin: the "***" markers keep the secrets.
    let (code, shown, err) = cli.run(&["source", "show", "gateway", "--format", "toml"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(shown.starts_with("# source gateway revision "), "{shown}");
    assert!(shown.contains("secret = \"***\""), "{shown}");
    let edited = shown.replace("currency = \"USD\"", "currency = \"EUR\"");
    let (code, out, err) = cli.run_with_stdin(&["source", "apply", "-"], &edited);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("updated gateway"), "{out}");
    let store = ledgerline::source_store::SourceStore::open(&nats.js, (), 1)
        .await
        .unwrap();
    let gateway = store.get("gateway").await.unwrap().unwrap();
    assert_eq!(gateway.config.currency.as_deref(), Some("EUR"));
    assert_eq!(
        gateway.changed_by,
        ledgerline::registry_store::ChangedBy::Cli
    );
    assert!(
        matches!(&gateway.config.auth, ledgerline::source::SourceAuth::Signature { secret, .. }
                 if secret.expose() == "gateway-secret-0123456789"),
        "{:?}",
        gateway.config.auth
    );
    let (code, out, _) = cli.run(&["source", "show", "pos"]);
    assert_eq!(code, Some(0));
    let pos: Value = serde_json::from_str(&out).expect("show prints JSON");
    assert_eq!(
        (pos["auth"]["password"].as_str(), pos["kind"].as_str()),
        (Some("***"), Some("pos_payments"))
    );

    // Invalid: exit 2 naming the entry and the field; nothing written.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[source]]\nid = \"ok\"\nkind = \"events\"\n[[source]]\nid = \"nocur\"\nkind = \"gateway\"\n").unwrap();
    let (code, _, err) = cli.run(&["source", "apply", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("source[1].currency"), "{err}");
    assert!(store.get("ok").await.unwrap().is_none());

    let (code, out, _) = cli.run(&["source", "delete", "pos"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("deleted pos (was revision "), "{out}");
    assert!(out.contains("its route answers 404"), "{out}");
    let (code, _, err) = cli.run(&["source", "show", "pos"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("ledgerline: source \"pos\" does not exist\n"),
        "{err}"
    );
    let (code, _, err) = cli.run(&["source", "delete", "pos"]);
    assert_eq!(code, Some(1), "{err}");

    for secret in [
        "venti-key-0123456789",
        "pos-pass-0123456789",
        "gateway-secret-0123456789",
        "shop-token-0123456789",
    ] {
        assert!(!cli.seen.contains(secret), "{secret} in CLI output");
    }
}

// ── jq sources: a channel mapped by the user's own program ──────────────

const TICKETS_TOKEN: &str = "tickets-token-0123456789";

/// A `[[source]]` of kind jq with `program` inline, bearer-authenticated.
fn jq_source(id: &str, program: &str) -> String {
    format!(
        "[[source]]\nid = \"{id}\"\nkind = \"jq\"\ncurrency = \"EUR\"\nprogram = '''\n{program}'''\n\
         [source.auth]\ntype = \"bearer\"\ntoken = \"{TICKETS_TOKEN}\"\n"
    )
}

#[tokio::test]
async fn a_jq_source_is_mapped_stored_once_refused_naming_the_field_and_posted() {
    let program = std::fs::read_to_string(inbound_dir().join("jq/tickets.jq")).unwrap();
    let (nats, rx, settings) = setup(&jq_source("tickets", &program)).await;
    let svc = Running::start(settings.clone()).await;
    let auth = [("authorization", format!("Bearer {TICKETS_TOKEN}"))];

    // Mapped and stored; the vendor's retry is dropped (its own event id).
    let confirmed = fixture("jq", "booking_confirmed");
    for (stored, duplicates) in [(1, 0), (0, 1)] {
        let answer = svc.post("tickets", &auth, &confirmed).await;
        let want = json!({"status": "success", "stored": stored, "duplicates": duplicates});
        assert_eq!(answer, (200, want));
    }
    let (status, _) = svc.post("tickets", &[], &confirmed).await;
    assert_eq!(status, 401);
    let refunded = fixture("jq", "booking_refunded");
    let (status, reply) = svc.post("tickets", &auth, &refunded).await;
    assert_eq!((status, &reply["stored"]), (200, &json!(1)), "{reply}");
    // No output: acknowledged, nothing stored.
    let viewed = fixture("jq", "booking_viewed");
    let (status, reply) = svc.post("tickets/booking/viewed", &auth, &viewed).await;
    assert_eq!((status, &reply["ignored"]), (200, &json!("booking/viewed")));
    assert_eq!(count_orders(&nats.js, "orders.BK-1001").await, 2);

    // A bad output: 422 naming the event's field, the raw body kept; a
    // run-time error of the program: 422 naming `program`, body kept.
    let broken: &[u8] =
        br#"{"id": "evt_x", "event": "booking.confirmed", "created": "2026-11-22T10:00:00Z",
        "booking": {"reference": "BK-2", "revision": 1, "tickets": 5}}"#;
    for (body, field, reason) in [
        (
            fixture("jq", "too_many_decimals"),
            "payment.amount",
            "too_many_decimals",
        ),
        (broken.to_vec(), "program", "invalid_field"),
    ] {
        let (status, reply) = svc.post("tickets", &auth, &body).await;
        assert_eq!(
            (status, reply["error"]["field"].as_str()),
            (422, Some(field)),
            "{reply}"
        );
        let kept = support::read_ledger(&nats.js, &format!("ledger.rejected.{reason}")).await;
        let bodies: Vec<&[u8]> = kept.iter().map(|(_, b)| b.as_ref()).collect();
        assert_eq!(bodies, [body.as_slice()], "{reason}");
    }
    assert_eq!(count_orders(&nats.js, "orders.>").await, 2);

    // Over the admin API: the program's text is sent, compiled on write
    // (a bad one is 422 naming `program`), served at once.
    let admin = &svc.service;
    for (source, field) in [
        (
            json!({"id": "j2", "kind": "jq", "program": "{a: (.b | }"}),
            "program",
        ),
        (
            json!({"id": "j2", "kind": "jq", "program_file": "x.jq"}),
            "program_file",
        ),
    ] {
        let (status, body) = admin.post("/v1/sources", &source).await;
        assert_eq!(
            (status, body["error"]["field"].as_str()),
            (422, Some(field)),
            "{body}"
        );
    }
    let (status, body) = admin
        .post(
            "/v1/sources",
            &json!({"id": "j2", "kind": "jq", "program": "empty"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["source"]["program"], "empty");
    eventually(
        "the new jq source served",
        Duration::from_secs(20),
        || async {
            let (status, reply) = svc.post("j2/any/topic", &[], b"{}").await;
            status == 200 && reply["ignored"] == "any/topic"
        },
    )
    .await;

    // Two events, two postings, each what a replay of ORDERS gives; the
    // money is the payload's own digits.
    delivered(&rx, 2).await;
    let report = support::verify(&nats, &settings).await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!((report.expected, report.stored), (2, 2), "{report}");
    let bodies: Vec<Value> = rx
        .received()
        .iter()
        .filter(|r| r.order_id.as_deref() == Some("BK-1001"))
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let cashflow = |b: &Value, side: &str| -> Vec<String> {
        b["ledger_entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["description"] == "Cashflow")
            .map(|e| e[side].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(cashflow(&bodies[0], "debit"), ["12345678901234.96"]);
    assert_eq!(cashflow(&bodies[1], "credit"), ["0.20"]);
    svc.stop().await;
}

#[tokio::test]
async fn a_jq_program_file_is_read_beside_its_file_and_a_bad_program_is_refused_at_load() {
    let nats = support::nats().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        inbound_dir().join("jq/tickets.jq"),
        dir.path().join("tickets.jq"),
    )
    .unwrap();
    std::fs::write(dir.path().join("bad.jq"), "{a: .b,\n  c: (.d | }\n").unwrap();

    // `ledgerline run` refuses to start, naming the source and the position.
    let config = support::process::config_file(
        dir.path(),
        &nats.server.url(),
        "[[source]]\nid = \"broken\"\nkind = \"jq\"\nprogram_file = \"bad.jq\"\n",
    );
    let mut run = tokio::process::Command::from(support::process::ledgerline(&["run"]));
    run.arg("--config").arg(&config).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), run.output())
        .await
        .expect("run refuses a bad program at once")
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("source[0].program: line 2, column"), "{err}");

    // `source apply` reads program_file beside the file and stores the text.
    let config = support::process::config_file(dir.path(), &nats.server.url(), "");
    let store = ledgerline::source_store::SourceStore::open(&nats.js, (), 1)
        .await
        .unwrap();
    // Writes `text` to `name` in the folder, then applies it.
    let apply = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = support::process::ledgerline(&["source", "apply"])
            .arg(&file)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = apply(
        "sources.toml",
        "[[source]]\nid = \"tickets\"\nkind = \"jq\"\ncurrency = \"EUR\"\nprogram_file = \"tickets.jq\"\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("created tickets (revision "), "{out}");
    let stored = store.get("tickets").await.unwrap().unwrap();
    let program = std::fs::read_to_string(dir.path().join("tickets.jq")).unwrap();
    assert_eq!(stored.config.program.as_deref(), Some(program.as_str()));
    assert_eq!(stored.config.program_file, None);

    let (code, _, err) = apply(
        "bad.toml",
        "[[source]]\nid = \"broken\"\nkind = \"jq\"\nprogram_file = \"bad.jq\"\n",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("program: line 2, column"), "{err}");
    assert!(store.get("broken").await.unwrap().is_none());
}
