//! The admin API over HTTP against a real nats-server: registry CRUD with
//! validation errors naming the field, the bearer token, request limits,
//! secrets in no response, and the OpenAPI description kept true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};

use ledgerline::service::Component;

use crate::support::{self, ADMIN_TOKEN, Service};

/// A service with only the admin API and the instance's default, strict
/// policy: https only, no private or loopback targets.
/// A nats-server and the admin API alone on it, with the instance's
/// default (strict) target policy.
async fn strict_admin() -> (support::Nats, Service) {
    let nats = support::nats().await;
    let settings = support::settings_strict(&nats.server, "");
    let svc = Service::start(settings, &[Component::Admin]).await;
    (nats, svc)
}

/// [`strict_admin`] with the registry `body` describes created
/// (expecting 201), as `GET` reads it back.
async fn strict_admin_with(body: Value) -> (support::Nats, Service, Value) {
    let (nats, svc) = strict_admin().await;
    let (status, b) = svc.post("/v1/registries", &body).await;
    assert_eq!(status, 201, "{b}");
    let id = body["id"].as_str().expect("the body names its id");
    let read = svc.get(&format!("/v1/registries/{id}")).await.1;
    (nats, svc, read)
}

fn error_field(body: &Value) -> Option<&str> {
    body["error"]["field"].as_str()
}

#[tokio::test]
async fn registries_are_created_read_replaced_and_deleted_and_bad_ones_refused_naming_the_field() {
    let (_nats, svc) = strict_admin().await;

    let xero = json!({
        "id": "xero-eu", "name": "Xero EU",
        "url": "https://accounting.example/hooks/orders",
        "event_types": ["order.confirmed", "order.updated", "order.cancelled"],
        "entry_types": ["cashflow", "revenue", "tax"],
        "group_by": ["currency"],
        "notify_emails": ["ops@example.com"],
    });
    let (status, body) = svc.post("/v1/registries", &xero).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["registry"]["id"], "xero-eu");
    assert_eq!(body["result"], "created");
    let revision = body["registry"]["revision"].as_u64().unwrap();

    // The same id again: 409, naming the id.
    let (status, body) = svc.post("/v1/registries", &xero).await;
    assert_eq!((status, error_field(&body)), (409, Some("id")), "{body}");

    // Each invalid registry: 4xx with the field.
    let cases: Vec<(&str, Value, &str)> = vec![
        ("a bad URL", json!({"id": "r1", "url": "not a url"}), "url"),
        (
            "http:// without allow_insecure_http",
            json!({"id": "r2", "url": "http://accounting.example/hook"}),
            "url",
        ),
        (
            "a loopback target without the allow-list",
            json!({"id": "r3", "url": "https://127.0.0.1:8443/hook"}),
            "url",
        ),
        (
            "localhost by name",
            json!({"id": "r3b", "url": "https://localhost/hook"}),
            "url",
        ),
        (
            "six emails",
            json!({"id": "r4", "url": "https://a.example/h",
                   "notify_emails": (0..6).map(|i| format!("ops{i}@example.com")).collect::<Vec<_>>()}),
            "notify_emails",
        ),
        (
            "an unknown entry type",
            json!({"id": "r5", "url": "https://a.example/h", "entry_types": ["revenue", "bogus"]}),
            "entry_types[1]",
        ),
        (
            "an unknown group column",
            json!({"id": "r6", "url": "https://a.example/h", "group_by": ["colour"]}),
            "group_by[0]",
        ),
        (
            "an unknown field",
            json!({"id": "r7", "url": "https://a.example/h", "colour": "red"}),
            "colour",
        ),
        (
            "a wrong type",
            json!({"id": "r8", "url": "https://a.example/h", "timeout_ms": "soon"}),
            "timeout_ms",
        ),
        (
            "an unknown auth type",
            json!({"id": "r9", "url": "https://a.example/h", "auth": {"type": "oauth"}}),
            "auth.type",
        ),
        ("a missing url", json!({"id": "r10"}), "url"),
        (
            "a bad id",
            json!({"id": "Not An Id", "url": "https://a.example/h"}),
            "id",
        ),
        (
            "a marker with no stored secret",
            json!({"id": "r11", "url": "https://a.example/h", "headers": {"api-key": "***"}}),
            "headers.api-key",
        ),
    ];
    for (what, body, field) in cases {
        let (status, answer) = svc.post("/v1/registries", &body).await;
        assert_eq!(status, 422, "{what}: {answer}");
        assert_eq!(error_field(&answer), Some(field), "{what}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {answer}"
        );
    }
    let (status, _) = svc.get("/v1/registries/r1").await;
    assert_eq!(status, 404, "nothing refused was stored");

    // Not JSON at all: 400; too large: 413.
    let resp = svc
        .req(Method::POST, "/v1/registries")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let big = json!({"id": "big", "url": "https://a.example/h", "name": "x".repeat(300 * 1024)});
    let (status, body) = svc.post("/v1/registries", &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]["message"].is_string(),
        "413 is JSON too: {body}"
    );

    // Read: one, and the list.
    let (status, body) = svc.get("/v1/registries/xero-eu").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["registry"]["url"],
        "https://accounting.example/hooks/orders"
    );
    assert_eq!(body["registry"]["changed_by"], "api");
    let (_, list) = svc.get("/v1/registries").await;
    assert_eq!(list["registries"].as_array().unwrap().len(), 1);

    // Replace what was read, changed (the read-only fields ride along).
    let mut changed = body["registry"].clone();
    changed["enabled"] = json!(false);
    changed["timeout_ms"] = json!(5000);
    let (status, body) = svc.put("/v1/registries/xero-eu", &changed).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "updated");
    assert_eq!(body["registry"]["enabled"], false);
    assert!(body["registry"]["revision"].as_u64().unwrap() > revision);
    // The same stale copy again: its revision is old now.
    let (status, body) = svc.put("/v1/registries/xero-eu", &changed).await;
    assert_eq!(
        (status, error_field(&body)),
        (409, Some("revision")),
        "{body}"
    );
    // Without a revision, wrapped like the reference API, with the same
    // content: nothing to write.
    let (_, current) = svc.get("/v1/registries/xero-eu").await;
    let mut same = json!({"registry": current["registry"].clone()});
    same["registry"].as_object_mut().unwrap().remove("revision");
    let (status, body) = svc.put("/v1/registries/xero-eu", &same).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("unchanged")),
        "{body}"
    );
    // The id in the body must match the URL.
    let (status, body) = svc
        .put(
            "/v1/registries/other",
            &json!({"id": "xero-eu", "url": "https://a.example/h"}),
        )
        .await;
    assert_eq!((status, error_field(&body)), (422, Some("id")), "{body}");
    // PUT creates when missing (201).
    let (status, body) = svc
        .put(
            "/v1/registries/other",
            &json!({"url": "https://b.example/h"}),
        )
        .await;
    assert_eq!(
        (status, body["result"].as_str()),
        (201, Some("created")),
        "{body}"
    );

    // Delete; then it is gone, its history stays.
    let (status, body) = svc.delete("/v1/registries/xero-eu").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = svc.get("/v1/registries/xero-eu").await;
    assert_eq!(status, 404);
    let (status, _) = svc.delete("/v1/registries/xero-eu").await;
    assert_eq!(status, 404);
    let (status, body) = svc.get("/v1/registries/xero-eu/history").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        support::str_fields(&body["history"], "operation"),
        ["put", "put", "delete"]
    );

    // Unknown routes and methods: JSON 404 and 405.
    let (status, body) = svc.get("/v1/nothing").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"].is_string());
    let (status, _) = svc.call(Method::PATCH, "/v1/registries/other", None).await;
    assert_eq!(status, 405);
    svc.stop().await;
}

#[tokio::test]
async fn requests_without_the_admin_token_are_refused() {
    let (_nats, svc) = strict_admin().await;
    let http = crate::support::http_client();
    for (what, auth) in [
        ("no token", None),
        ("a wrong token", Some("Bearer not-the-token".to_owned())),
        (
            "a prefix of the token",
            Some(format!("Bearer {}", &ADMIN_TOKEN[..10])),
        ),
        ("another scheme", Some(format!("Basic {ADMIN_TOKEN}"))),
        ("an empty bearer", Some("Bearer ".to_owned())),
    ] {
        for (method, path) in [
            (Method::GET, "/v1/registries"),
            (Method::POST, "/v1/registries"),
            (Method::DELETE, "/v1/registries/x"),
            (Method::GET, "/v1/orders/o-1/ledger"),
            (Method::POST, "/v1/registries/x/orders/o-1/redeliver"),
        ] {
            let mut r = http.request(method.clone(), svc.url(path));
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            let resp = r.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{what}: {method} {path}");
            assert_eq!(
                resp.headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer")
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(error_field(&body), Some("Authorization"));
        }
    }
    // The scheme in any case works.
    let resp = http
        .get(svc.url("/v1/registries"))
        .header("authorization", format!("bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Probes and metrics are open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = http.get(svc.url(path)).send().await.unwrap();
        assert_ne!(resp.status(), 401, "{path}");
    }
    svc.stop().await;
}

#[tokio::test]
async fn no_response_ever_carries_a_secret() {
    let (nats, svc) = strict_admin().await;
    let secrets = [
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_c2VjcmV0LW9mLXRoZS1wcmV2aW91cy1rZXk=",
        "header-secret-1",
        "client-secret-2",
        "extra-body-secret-3",
        "token-header-secret-4",
        "basic-password-5",
        "bearer-token-6",
        "query-api-key-7",
    ];
    let mut seen = String::new();
    let oauth = json!({
        "id": "oauth", "url": "https://accounting.example/hooks",
        "signing_secret": secrets[0],
        "signing_secret_previous": secrets[1],
        "signing_secret_previous_until": "2030-01-01T00:00:00Z",
        "headers": {"authenticationToken": secrets[2]},
        "query": {"api_key": secrets[8]},
        "auth": {"type": "oauth2_client_credentials", "token_url": "https://accounting.example/token",
                 "client_id": "ledgerline", "client_secret": secrets[3],
                 "extra_body": {"audience": secrets[4]}, "headers": {"X-Token-Key": secrets[5]}},
    });
    let basic = json!({"id": "basic", "url": "https://a.example/h",
        "auth": {"type": "basic", "username": "u", "password": secrets[6]}});
    let bearer = json!({"id": "bearer", "url": "https://b.example/h",
        "auth": {"type": "bearer", "token": secrets[7]}});
    for body in [&oauth, &basic, &bearer] {
        let (status, b) = svc.post("/v1/registries", body).await;
        assert_eq!(status, 201, "{b}");
        seen.push_str(&b.to_string());
    }
    let (_, list) = svc.get("/v1/registries").await;
    seen.push_str(&list.to_string());
    let (_, one) = svc.get("/v1/registries/oauth").await;
    seen.push_str(&one.to_string());
    assert_eq!(one["registry"]["signing_secret"], "***");
    assert_eq!(one["registry"]["auth"]["client_secret"], "***");
    assert_eq!(one["registry"]["headers"]["authenticationToken"], "***");
    assert_eq!(one["registry"]["query"]["api_key"], "***");
    // Send back what was read with a change: the secrets are kept…
    let mut back = one["registry"].clone();
    back["name"] = json!("renamed");
    let (status, b) = svc.put("/v1/registries/oauth", &back).await;
    assert_eq!(status, 200, "{b}");
    seen.push_str(&b.to_string());
    let store = support::registry_store(&nats.js).await;
    let stored = store.get("oauth").await.unwrap().unwrap();
    assert_eq!(stored.config.signing_secret.unwrap().expose(), secrets[0]);
    assert_eq!(
        stored.config.headers["authenticationToken"].expose(),
        secrets[2]
    );
    let query =
        ledgerline::secret::reveal_secrets(|| serde_json::to_value(&stored.config.query)).unwrap();
    assert_eq!(query["api_key"], secrets[8]);
    // …through a change of the registry's secrets too.
    let (_, h) = svc.get("/v1/registries/oauth/history").await;
    seen.push_str(&h.to_string());
    let (_, d) = svc.delete("/v1/registries/basic").await;
    seen.push_str(&d.to_string());
    let (_, h) = svc.get("/v1/registries/basic/history").await;
    seen.push_str(&h.to_string());
    // A refused write does not echo the secret either.
    let mut bad = bearer.clone();
    bad["id"] = json!("bearer2");
    bad["url"] = json!("http://b.example/h");
    let (status, b) = svc.post("/v1/registries", &bad).await;
    assert_eq!(status, 422);
    seen.push_str(&b.to_string());
    for s in secrets {
        assert!(!seen.contains(s), "secret {s} appeared in a response");
    }
    assert!(seen.contains("***"));
    svc.stop().await;
}

/// `openapi/admin.json` lists exactly the router's routes, each with the
/// methods the router answers, and requires the token exactly where the
/// router does. The methods are found by asking the router (405 or not),
/// so a method added in code and not in the description fails this.
#[tokio::test]
async fn the_openapi_description_matches_the_router() {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/admin.json"))
            .unwrap(),
    )
    .unwrap();
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut documented_open: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (k, op) in item.as_object().unwrap() {
            if methods.iter().any(|m| m.as_str().eq_ignore_ascii_case(k)) {
                documented
                    .entry(path.clone())
                    .or_default()
                    .insert(k.to_uppercase());
                if op["security"].as_array().is_some_and(|s| s.is_empty()) {
                    documented_open.insert((path.clone(), k.to_uppercase()));
                }
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{k} {path} documents no response"
                );
            }
        }
    }

    let (_nats, svc) = strict_admin().await;
    let http = crate::support::http_client();
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut served_open: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, _) in ledgerline::admin::routes() {
        let concrete = path
            .replace("{id}", "probe")
            .replace("{order_id}", "probe-order");
        for m in &methods {
            // Without the token: 405 when the route lacks the method, 401
            // when it needs the token, anything else when it is open.
            let status = http
                .request(m.clone(), svc.url(&concrete))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if status == 405 {
                continue;
            }
            served
                .entry(path.to_owned())
                .or_default()
                .insert(m.as_str().to_owned());
            if status != 401 {
                served_open.insert((path.to_owned(), m.as_str().to_owned()));
            }
        }
    }
    assert_eq!(
        served, documented,
        "routes and methods: router (left) vs openapi/admin.json (right)"
    );
    assert_eq!(
        served_open, documented_open,
        "routes without the token: router vs description"
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_put_that_moves_the_url_to_another_origin_must_send_the_secrets_again() {
    let books = json!({"id": "books", "url": "https://a.example/hooks",
        "headers": {"X-Api-Key": "header-secret-value"},
        "auth": {"type": "basic", "username": "u", "password": "basic-password-value"}});
    let (_nats, svc, read) = strict_admin_with(books).await;
    let mut moved = read["registry"].clone();
    moved["url"] = json!("https://evil.example/collect");
    moved["headers"]["X-Api-Key"] = json!("header-secret-value");
    let (status, b) = svc.put("/v1/registries/books", &moved).await;
    assert_eq!(status, 422, "{b}");
    assert_eq!(error_field(&b), Some("auth.password"), "{b}");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("from https://a.example to https://evil.example")
            && message.contains("\"***\""),
        "{message}"
    );
    let (_, after) = svc.get("/v1/registries/books").await;
    assert_eq!(after["registry"]["url"], "https://a.example/hooks");
    assert_eq!(after["registry"]["revision"], read["registry"]["revision"]);
    // Sent again in clear: accepted.
    moved["auth"]["password"] = json!("a-new-password");
    let (status, b) = svc.put("/v1/registries/books", &moved).await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["registry"]["url"], "https://evil.example/collect");
    svc.stop().await;
}

#[tokio::test]
async fn metric_labels_come_from_a_fixed_set_whatever_the_request() {
    let (_nats, svc) = strict_admin().await;
    let http = support::http_client();
    for (method, path) in [
        ("FOOBAR", "/v1/registries"),
        ("BREWCOFFEE", "/healthz"),
        ("GET", "/random/path/one"),
        ("POST", "/another/unknown/7"),
    ] {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        http.request(m, svc.url(path)).send().await.unwrap();
    }
    let metrics = svc.metrics().await;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("ledgerline_admin_"))
    {
        let labels = line.split('{').nth(1).unwrap_or_default();
        for (name, allowed) in [
            (
                "method=\"",
                &[
                    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "other",
                ][..],
            ),
            (
                "route=\"",
                &[
                    "unmatched",
                    "/healthz",
                    "/readyz",
                    "/metrics",
                    "/v1/registries",
                    "/v1/registries/{id}",
                ][..],
            ),
        ] {
            if let Some(v) = labels.split(name).nth(1) {
                let value = v.split('"').next().unwrap_or_default();
                assert!(
                    allowed.contains(&value) || value.starts_with("/v1/"),
                    "{line}"
                );
            }
        }
        assert!(
            !line.contains("random") && !line.contains("another"),
            "{line}"
        );
    }
    assert!(
        metrics.contains("method=\"other\""),
        "an unknown method is counted as other:\n{metrics}"
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_registry_with_notify_emails_and_no_smtp_shows_a_warning() {
    let mailed = json!({"id": "mailed", "url": "https://a.example/hooks",
        "notify_emails": ["ops@example.com"]});
    let (_nats, svc, read) = strict_admin_with(mailed).await;
    let warnings = read["registry"]["warnings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{read}");
    assert_eq!(warnings[0]["field"], "notify_emails", "{read}");
    assert!(
        warnings[0]["message"].as_str().unwrap().contains("[smtp]"),
        "{read}"
    );
    // Without notify_emails: no warnings.
    let quiet = json!({"id": "quiet", "url": "https://a.example/hooks"});
    let (_, b) = svc.post("/v1/registries", &quiet).await;
    assert!(b["registry"].get("warnings").is_none(), "{b}");
    svc.stop().await;
}
