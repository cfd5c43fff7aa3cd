//! TLS end to end, with certificates made here by `rcgen` (a test CA and a
//! server certificate for 127.0.0.1):
//!
//! * `ledgerline publish` to a nats-server with `--tls`, trusting the CA
//!   through `nats_tls_ca`; without the CA, or with another one, it fails
//!   with a clear error and exit code 1, never a panic;
//! * `ledgerline run` delivering to webhook receivers served over HTTPS
//!   (axum over tokio-rustls), trusting the private CA through
//!   `SSL_CERT_FILE`; a receiver whose certificate it cannot trust gets a
//!   retrying delivery whose record names the TLS error.
//!
//! The binary is run as a child process, as an operator would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ledgerline::natsd::NatsServer;
use ledgerline::receiver::{FailureMode, Receiver};
use ledgerline::records::{AttemptOutcome, DeliveryRecord};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::support::config::TestConfig;
use crate::support::engine::ticket_event;
use crate::support::{self, process};

/// A test CA and one server certificate it signed, for `127.0.0.1` and
/// `localhost`, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(ca_name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, format!("{ca_name} server"));
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), leaf_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), leaf_key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    fn cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A rustls acceptor serving the server certificate.
    fn acceptor(&self) -> TlsAcceptor {
        ledgerline::tls::install_crypto_provider();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(self.cert())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.key()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// Accepted TLS connections for `axum::serve`. Handshakes run in their own
/// tasks, so a client that gives up mid-handshake (as one that does not
/// trust the certificate does) never holds up the next connection.
struct TlsListener {
    addr: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    async fn bind(acceptor: TlsAcceptor) -> TlsListener {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (tx, accepted) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((sock, peer)) = tcp.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        TlsListener { addr, accepted }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accept loop only ends with the test's runtime.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The sample receiver served over HTTPS with `pki`'s server certificate:
/// it and its base URL `https://127.0.0.1:PORT`.
async fn https_receiver(pki: &Pki) -> (Receiver, String) {
    let rx = Receiver::new(None, FailureMode::default()).unwrap();
    let listener = TlsListener::bind(pki.acceptor()).await;
    let url = format!("https://{}", listener.addr);
    let router = rx.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (rx, url)
}

/// One `order.confirmed` event per order (two tickets), NDJSON.
fn events(orders: &[&str]) -> String {
    orders
        .iter()
        .map(|order| ticket_event(order, 1, 2) + "\n")
        .collect()
}

/// `ledgerline publish --config <config> <events>`, with no `SSL_CERT_*`
/// from the environment (so only what the config says is trusted).
fn publish(config: &Path, events: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline"))
        .arg("publish")
        .arg("--config")
        .arg(config)
        .arg(events)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env("LEDGERLINE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A client of the TLS server trusting `pki`'s CA, and the number of
/// messages in ORDERS.
async fn orders_count(server: &NatsServer, pki: &Pki) -> u64 {
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca())
        .require_tls(true)
        .connect(server.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    match js.get_stream(ledgerline::streams::ORDERS_STREAM).await {
        Ok(mut stream) => stream.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_tls_trusts_nats_tls_ca_and_fails_cleanly_without_it() {
    let pki = Pki::new("ledgerline test CA");
    let server = NatsServer::builder()
        .tls(pki.cert(), pki.key())
        .start()
        .await
        .expect("nats-server with TLS starts (run `make tools`)");
    let url = server.url();
    assert!(url.starts_with("tls://127.0.0.1:"), "{url}");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, events(&["o-tls-1", "o-tls-2", "o-tls-3"])).unwrap();
    let config = |name: &str, ca: Option<&Path>| {
        let path = dir.path().join(name);
        let mut text = format!("nats_url = \"{url}\"\n");
        if let Some(ca) = ca {
            text.push_str(&format!("nats_tls_ca = \"{}\"\n", ca.display()));
        }
        std::fs::write(&path, text).unwrap();
        path
    };

    // With the CA: every event lands in ORDERS.
    let out = publish(&config("c.toml", Some(&pki.ca())), &input);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "publish over TLS failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(orders_count(&server, &pki).await, 3, "{stderr}");

    // Without a CA (nothing trusts the test CA), and with another CA: a
    // clear certificate error, exit code 1, nothing published.
    let other = Pki::new("some other CA");
    for (what, ca) in [("no CA", None), ("a wrong CA", Some(other.ca()))] {
        let out = publish(&config("bad.toml", ca.as_deref()), &input);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot connect to NATS at {url}")),
            "{what}: the error names the server: {stderr}"
        );
        assert!(
            stderr.contains("invalid peer certificate") && stderr.contains("UnknownIssuer"),
            "{what}: the error says the certificate is not trusted: {stderr}"
        );
    }
    assert_eq!(orders_count(&server, &pki).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_delivers_over_https_trusting_a_private_ca_from_ssl_cert_file() {
    let nats = support::nats().await;
    let trusted = Pki::new("ledgerline receivers CA");
    let untrusted = Pki::new("a CA nobody trusts");
    let (rx, url) = https_receiver(&trusted).await;
    let (rx_untrusted, url_untrusted) = https_receiver(&untrusted).await;

    // allow_insecure_http stays false: only https:// targets are accepted.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ledgerline.toml");
    let text = TestConfig::new()
        .top(&format!("nats_url = \"{}\"", nats.server.url()))
        .top(r#"allow_private_targets = ["127.0.0.0/8"]"#)
        .delivery(r#"retry_schedule = ["1s"]"#)
        .registry("books", &format!("{url}/hook"), "")
        .registry(
            "untrusted",
            &format!("{url_untrusted}/hook"),
            "max_attempts = 50",
        )
        .text();
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("run.log");
    let mut run = process::run("info,async_nats=warn")
        .only("aggregator,dispatcher")
        .text_logs()
        .env("SSL_CERT_FILE", trusted.ca())
        .env_remove("SSL_CERT_DIR")
        .spawn(&config, &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    let orders = ["o-https-1", "o-https-2"];
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, events(&orders)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline"))
        .arg("publish")
        .arg("--config")
        .arg(&config)
        .arg(&input)
        .output()
        .unwrap();
    process::assert_succeeded(&out);

    // The trusted receiver gets each posting, over TLS.
    support::eventually(
        "both postings delivered over https",
        Duration::from_secs(30),
        || async { rx.stats().accepted == orders.len() as u64 },
    )
    .await;
    let got = rx.received();
    let mut delivered: Vec<&str> = got.iter().filter_map(|r| r.order_id.as_deref()).collect();
    delivered.sort_unstable();
    assert_eq!(delivered, orders);
    assert!(got.iter().all(|r| r.path == "/hook"));
    let records = |registry: &'static str| {
        let js = nats.js.clone();
        async move {
            support::read_ledger(&js, &format!("ledger.deliveries.{registry}.>"))
                .await
                .into_iter()
                .map(|(_, payload)| serde_json::from_slice::<DeliveryRecord>(&payload).unwrap())
                .collect::<Vec<_>>()
        }
    };
    // The record of an attempt is stored just after the reply arrives.
    support::eventually(
        "both deliveries recorded",
        Duration::from_secs(10),
        || async { records("books").await.len() == orders.len() },
    )
    .await;
    let books = records("books").await;
    assert!(
        books
            .iter()
            .all(|r| r.outcome == AttemptOutcome::Delivered && r.http_status == Some(200)),
        "{books:?}"
    );

    // The untrusted receiver: nothing arrives; each order keeps retrying,
    // and its records say why (the certificate), without a status.
    support::eventually(
        "a second failed attempt per order at the untrusted receiver",
        Duration::from_secs(30),
        || async {
            let failed = records("untrusted").await;
            orders
                .iter()
                .all(|o| failed.iter().any(|r| r.order_id == *o && r.attempt >= 2))
        },
    )
    .await;
    assert!(rx_untrusted.received().is_empty());
    let failed = records("untrusted").await;
    for r in &failed {
        assert_eq!(r.outcome, AttemptOutcome::Retrying, "{r:?}");
        assert_eq!(r.http_status, None, "{r:?}");
        assert!(r.next_attempt_at.is_some(), "{r:?}");
        let error = r.error.as_deref().unwrap_or("");
        assert!(
            error.contains("invalid peer certificate") && error.contains("UnknownIssuer"),
            "the record names the TLS error: {error}"
        );
    }
    let mut failing: Vec<&str> = failed.iter().map(|r| r.order_id.as_str()).collect();
    failing.sort_unstable();
    failing.dedup();
    assert_eq!(failing, orders);

    // And the service is still up, having panicked nowhere.
    assert!(run.try_wait().unwrap().is_none(), "{}", logs());
    assert!(!logs().contains("panicked"), "{}", logs());
}
