//! Shared helpers for integration tests: a real nats-server per test, a
//! connected client with both streams, settings from TOML, the service in
//! this process, LEDGER readers, the sample receiver and `eventually`;
//! the offline engine as reference and test events ([`engine`]); the
//! `ledgerline` binary as a child process ([`process`]); a scripted HTTP
//! server that can answer anything, hang or reset ([`scripted`]); test
//! configurations built a table at a time ([`config`]); a headless
//! chromium over WebDriver ([`webdriver`]).

pub mod books;
pub mod config;
pub mod engine;
pub mod process;
pub mod scripted;
pub mod webdriver;

use std::sync::Arc;

use async_nats::jetstream;
use ledgerline::config::{Config, Settings};
use ledgerline::natsd::NatsServer;
use ledgerline::registry::RegistrySet;
use ledgerline::registry_store::RegistryWatch;

/// A running server, a client and a JetStream context with ORDERS and
/// LEDGER created.
pub struct Nats {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

pub async fn nats() -> Nats {
    nats_with(&"orders".into()).await
}

/// [`nats`] with ORDERS created for `orders` (e.g. with partitions).
pub async fn nats_with(orders: &ledgerline::streams::OrderSubjects) -> Nats {
    let server = NatsServer::start()
        .await
        .expect("nats-server starts (run `make tools`)");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    ledgerline::streams::ensure_streams(&js, orders, 1)
        .await
        .expect("streams");
    Nats { server, client, js }
}

/// Settings from TOML text, with `nats_url` pointing at `server` and
/// loopback targets allowed (test receivers listen on 127.0.0.1).
pub fn settings(server: &NatsServer, toml_text: &str) -> Settings {
    Settings::on_loopback(&server.url(), toml_text, "test.toml").expect("test config is valid")
}

/// `key = value` for each of `cases` (value, valid): a valid value is read
/// back by `read`, an invalid one refused with an error naming `key` and
/// `bounds`.
#[allow(dead_code)]
pub fn assert_key_range(
    key: &str,
    cases: &[(&str, bool)],
    bounds: &str,
    read: impl Fn(&Config) -> String,
) {
    for &(value, ok) in cases {
        let got = Settings::on_loopback(
            "nats://127.0.0.1:4222",
            &format!("{key} = {value}"),
            "test.toml",
        );
        match (got, ok) {
            (Ok(s), true) => assert_eq!(read(&s.config), value),
            (Err(e), false) => {
                let e = e.to_string();
                assert!(e.contains(key) && e.contains(bounds), "{e}");
            }
            (got, _) => panic!("{key} = {value}: {:?}", got.map(|s| s.config)),
        }
    }
}

/// A registry watch over the settings' registries.
pub fn watch(settings: &Settings) -> RegistryWatch {
    ledgerline::registry_store::fixed_registries(settings.registries.clone())
}

/// The registry set of the settings.
#[allow(dead_code)]
pub fn set(settings: &Settings) -> Arc<RegistrySet> {
    Arc::new(RegistrySet::new(settings.registries.clone()))
}

/// Settings from TOML text with only `nats_url` added: the instance's own
/// policy is whatever the text says (strict by default).
#[allow(dead_code)]
pub fn settings_strict(server: &NatsServer, toml_text: &str) -> Settings {
    let text = format!("nats_url = \"{}\"\n{toml_text}", server.url());
    Config::from_toml_with_env(&text, "test.toml", std::iter::empty())
        .expect("test config parses")
        .validate()
        .expect("test config is valid")
}

/// The admin token of test services.
#[allow(dead_code)]
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// `ledgerline run` in this process, the admin API (when chosen) on a
/// free loopback port.
#[allow(dead_code)]
pub struct Service {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), ledgerline::service::ServiceError>>,
    pub http: reqwest::Client,
}

#[allow(dead_code)]
impl Service {
    /// Starts `components` with `settings` (its `admin_token` is set to
    /// [`ADMIN_TOKEN`]).
    pub async fn start(
        mut settings: Settings,
        components: &[ledgerline::service::Component],
    ) -> Service {
        settings.config.admin_token = Some(ledgerline::secret::Secret::new(ADMIN_TOKEN));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(ledgerline::service::run_with_listener(
            settings,
            components.iter().copied().collect(),
            Some(listener),
            shutdown.clone(),
        ));
        let svc = Service {
            base,
            shutdown,
            task,
            http: crate::support::http_client(),
        };
        // Ready to answer once /healthz does.
        let started = std::time::Instant::now();
        while svc.http.get(svc.url("/healthz")).send().await.is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "the service did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        svc
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the admin token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Sends and returns (status, body as JSON, or as a string when not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut r = self.req(method, path);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }

    /// `GET path` with the admin token: (status, body).
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `POST path` of `body` with the admin token: (status, body).
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// `PUT path` of `body` with the admin token: (status, body).
    pub async fn put(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    /// `POST path` with no body and the admin token: (status, body).
    pub async fn post_empty(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::POST, path, None).await
    }

    /// `DELETE path` with the admin token: (status, body).
    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// `GET /metrics` (no token needed): the Prometheus text.
    pub async fn metrics(&self) -> String {
        let resp = self.http.get(self.url("/metrics")).send().await.unwrap();
        resp.text().await.unwrap()
    }

    /// The check named `name` among `/readyz`'s (no token needed), if any.
    pub async fn readyz_check(&self, name: &str) -> Option<serde_json::Value> {
        let resp = self.http.get(self.url("/readyz")).send().await.unwrap();
        let body: serde_json::Value = resp.json().await.unwrap();
        body["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
    }

    /// Waits until the running service delivers to `registry` (`true`: its
    /// consumer is among the readiness checks, so the dispatcher and the
    /// aggregator, which share the registry set, have it), or no longer does
    /// (`false`: deleted or disabled).
    pub async fn in_force(&self, registry: &str, wanted: bool) {
        let name = format!("consumer LEDGER/dispatcher-{registry}");
        eventually(
            &format!("{registry} in force: {wanted}"),
            std::time::Duration::from_secs(10),
            || async {
                match self.readyz_check(&name).await {
                    Some(c) => wanted && c["ok"] == true,
                    None => !wanted,
                }
            },
        )
        .await;
    }

    /// Creates a registry over the API (`201` expected); its answer.
    pub async fn create_registry(&self, registry: &serde_json::Value) -> serde_json::Value {
        let (status, body) = self.post("/v1/registries", registry).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Stops it (as SIGTERM would) and expects a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), self.task)
            .await
            .expect("the service stops within 30 s")
            .unwrap()
            .expect("the service stops cleanly");
    }
}

/// The registry store on `js` with the target policy of `settings`.
#[allow(dead_code)]
pub async fn registry_store_for(
    js: &jetstream::Context,
    settings: &Settings,
) -> ledgerline::registry_store::RegistryStore {
    ledgerline::registry_store::RegistryStore::open(js, settings.policy.clone(), 1)
        .await
        .expect("the registry store opens")
}

/// Two sample receivers, and settings with the first as registry `books`.
#[allow(dead_code)]
pub struct BooksAndLate {
    pub books: ledgerline::receiver::Receiver,
    pub books_url: String,
    /// For a registry added later.
    pub late: ledgerline::receiver::Receiver,
    pub late_url: String,
    pub settings: Settings,
}

/// [`BooksAndLate`] on `nats`, neither receiver failing.
#[allow(dead_code)]
pub async fn books_and_late(nats: &Nats) -> BooksAndLate {
    let ok = ledgerline::receiver::FailureMode::default;
    let (books, books_url) = receiver(None, ok()).await;
    let (late, late_url) = receiver(None, ok()).await;
    let settings = config::TestConfig::new()
        .registry("books", &format!("{books_url}/hooks"), "")
        .settings(&nats.server);
    BooksAndLate {
        books,
        books_url,
        late,
        late_url,
        settings,
    }
}

/// Rewrites the last posting on `subject` with `change` made to it, as a
/// new message, and deletes the original: a tampered LEDGER for `verify`.
#[allow(dead_code)]
pub async fn tamper_last_posting(
    nats: &Nats,
    subject: &str,
    change: impl FnOnce(&mut ledgerline::records::StoredPosting),
) {
    let ledger = nats
        .js
        .get_stream(ledgerline::streams::LEDGER_STREAM)
        .await
        .unwrap();
    let original = ledger
        .get_last_raw_message_by_subject(subject)
        .await
        .unwrap();
    let mut sp: ledgerline::records::StoredPosting =
        serde_json::from_slice(&original.payload).unwrap();
    change(&mut sp);
    nats.js
        .publish(subject.to_owned(), serde_json::to_vec(&sp).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    ledger.delete_message(original.sequence).await.unwrap();
}

/// Waits until the aggregator has handled every event on ORDERS.
#[allow(dead_code)]
pub async fn settled(js: &jetstream::Context) {
    eventually(
        "the aggregator has handled every event",
        std::time::Duration::from_secs(30),
        || async {
            // Not there yet while the aggregator starts.
            let Ok(mut c) = js
                .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                    ledgerline::aggregator::CONSUMER,
                    ledgerline::streams::ORDERS_STREAM,
                )
                .await
            else {
                return false;
            };
            let info = c.info().await.unwrap();
            info.num_pending == 0 && info.num_ack_pending == 0
        },
    )
    .await;
}

/// Every message of a LEDGER subject filter: (subject, payload).
#[allow(dead_code)]
pub async fn read_ledger(js: &jetstream::Context, filter: &str) -> Vec<(String, bytes::Bytes)> {
    read_ledger_with_headers(js, filter)
        .await
        .into_iter()
        .map(|(subject, _, payload)| (subject, payload))
        .collect()
}

/// Every message of a LEDGER subject filter: (subject, headers, payload).
#[allow(dead_code)]
pub async fn read_ledger_with_headers(
    js: &jetstream::Context,
    filter: &str,
) -> Vec<(String, Option<async_nats::HeaderMap>, bytes::Bytes)> {
    let stream = js
        .get_stream(ledgerline::streams::LEDGER_STREAM)
        .await
        .unwrap();
    let mut out = Vec::new();
    ledgerline::streams::for_each_message(&stream, filter, |m, _, _| {
        out.push((m.subject.to_string(), m.headers.clone(), m.payload.clone()));
    })
    .await
    .unwrap();
    out
}

/// Publishes the NDJSON `events` to ORDERS, as `ledgerline publish` does.
#[allow(dead_code)]
pub async fn publish_events(nats: &Nats, events: &str) -> ledgerline::publish::PublishSummary {
    publish_events_to(nats, &"orders".into(), events).await
}

/// [`publish_events`] to ORDERS laid out as `orders` says.
pub async fn publish_events_to(
    nats: &Nats,
    orders: &ledgerline::streams::OrderSubjects,
    events: &str,
) -> ledgerline::publish::PublishSummary {
    ledgerline::publish::publish(
        &nats.client,
        orders,
        1,
        "test",
        events.as_bytes(),
        |_| {},
        |_| {},
    )
    .await
    .expect("events are published")
}

/// Every posting stored on LEDGER: its place → its body text with
/// registry_data `{}`. Fails on a posting stored twice.
#[allow(dead_code)]
pub async fn stored_postings(
    js: &jetstream::Context,
) -> std::collections::BTreeMap<engine::PostingKey, String> {
    let mut out = std::collections::BTreeMap::new();
    for (_, payload) in read_ledger(js, ledgerline::streams::subjects::POSTINGS_ALL).await {
        let stored: ledgerline::records::StoredPosting = serde_json::from_slice(&payload).unwrap();
        let (key, body) = engine::body_text(&stored.posting);
        assert!(
            out.insert(key.clone(), body).is_none(),
            "posting {key:?} stored twice"
        );
    }
    out
}

/// The registry store on `js`, with the default (strict) target policy.
#[allow(dead_code)]
pub async fn registry_store(js: &jetstream::Context) -> ledgerline::registry_store::RegistryStore {
    ledgerline::registry_store::RegistryStore::open(
        js,
        ledgerline::registry::TargetPolicy::default(),
        1,
    )
    .await
    .expect("the registry store opens")
}

/// `ledgerline verify` of the ORDERS and LEDGER on `nats` (prefix
/// `orders`) under `settings`.
#[allow(dead_code)]
pub async fn verify(
    nats: &Nats,
    settings: &Settings,
) -> Result<ledgerline::verify::VerifyReport, ledgerline::verify::VerifyError> {
    ledgerline::verify::verify(&nats.client, settings, |_, _| {}).await
}

/// How many messages a LEDGER subject filter holds.
#[allow(dead_code)]
pub async fn count_ledger(js: &jetstream::Context, filter: &str) -> u64 {
    let Ok(stream) = js.get_stream(ledgerline::streams::LEDGER_STREAM).await else {
        return 0;
    };
    let Ok(subjects) = stream.info_with_subjects(filter).await else {
        return 0;
    };
    use futures::TryStreamExt;
    subjects
        .try_fold(0u64, |n, (_, c)| async move { Ok(n + c as u64) })
        .await
        .unwrap_or(0)
}

/// A sample receiver (`ledgerline::receiver`) on a free loopback port,
/// verifying signatures with `secret` when given and failing as `failure`
/// says (it can be changed later); returns it and its base URL
/// (`http://127.0.0.1:<port>`, any path is served).
#[allow(dead_code)]
pub async fn receiver(
    secret: Option<&str>,
    failure: ledgerline::receiver::FailureMode,
) -> (ledgerline::receiver::Receiver, String) {
    let rx = ledgerline::receiver::Receiver::new(
        secret.map(ledgerline::secret::Secret::new).as_ref(),
        failure,
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(rx.clone().serve(listener, std::future::pending()));
    (rx, url)
}

/// Fails, showing every line, unless one of `lines` starts with `prefix`.
#[track_caller]
pub fn assert_a_line_starts_with<S: AsRef<str>>(lines: impl IntoIterator<Item = S>, prefix: &str) {
    let lines: Vec<S> = lines.into_iter().collect();
    let shown: Vec<&str> = lines.iter().map(AsRef::as_ref).collect();
    assert!(
        shown.iter().any(|l| l.starts_with(prefix)),
        "no line starts with {prefix:?}:\n{}",
        shown.join("\n")
    );
}

/// Fails, naming up to five of each, when `want` and `got` do not hold
/// the same keys; `what` says whose keys they are.
#[allow(dead_code)]
pub fn assert_same_keys<K: Ord + std::fmt::Debug, A, B>(
    want: &std::collections::BTreeMap<K, A>,
    got: &std::collections::BTreeMap<K, B>,
    what: &str,
) {
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}missing {missing:?}, extra {extra:?}"
    );
}

/// Checks that an API reply (status, body) refuses with `status`, its
/// error naming `field` as the one that is wrong.
pub fn assert_refused((got, body): (u16, serde_json::Value), status: u16, field: &str) {
    assert_eq!(
        (got, body["error"]["field"].as_str()),
        (status, Some(field)),
        "{body}"
    );
}

/// `field` of every item of the JSON array `items`, as strings.
#[allow(dead_code)]
pub fn str_fields<'a>(items: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    let items = items.as_array().expect("a JSON array");
    items
        .iter()
        .map(|i| {
            i[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} of {i} is not a string"))
        })
        .collect()
}

/// How often [`eventually`] looks again.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Polls `f` until it is true; fails naming `what` after `limit`.
#[allow(dead_code)]
pub async fn eventually<F, Fut>(what: &str, limit: std::time::Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !f().await {
        assert!(
            started.elapsed() < limit,
            "timed out waiting for {what} (after {limit:?})"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A plain reqwest client for talking to test services (the binary's one
/// crypto provider installed first, as the binary itself does).
#[allow(dead_code)]
pub fn http_client() -> reqwest::Client {
    ledgerline::tls::install_crypto_provider();
    reqwest::Client::new()
}
