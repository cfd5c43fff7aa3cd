//! Shared helpers for integration tests: a real nats-server per test, a
//! connected client with both streams, settings from TOML.

use std::sync::Arc;

use async_nats::jetstream;
use ledgerline::config::{Config, Settings};
use ledgerline::natsd::NatsServer;
use ledgerline::registry::{RegistrySet, RegistryWatch};

/// A running server, a client and a JetStream context with ORDERS and
/// LEDGER created.
pub struct Nats {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

pub async fn nats() -> Nats {
    let server = NatsServer::start()
        .await
        .expect("nats-server starts (run `make tools`)");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    ledgerline::streams::ensure_streams(&js, "orders")
        .await
        .expect("streams");
    Nats { server, client, js }
}

/// Settings from TOML text, with `nats_url` pointing at `server` and
/// loopback targets allowed (test receivers listen on 127.0.0.1).
pub fn settings(server: &NatsServer, toml_text: &str) -> Settings {
    let text = format!(
        "nats_url = \"{}\"\nallow_insecure_http = true\nallow_private_targets = [\"127.0.0.0/8\"]\n{toml_text}",
        server.url()
    );
    Config::from_toml_with_env(&text, "test.toml", std::iter::empty())
        .expect("test config parses")
        .validate()
        .expect("test config is valid")
}

/// A registry watch over the settings' registries.
pub fn watch(settings: &Settings) -> RegistryWatch {
    ledgerline::registry::fixed_registries(settings.registries.clone())
}

/// The registry set of the settings.
#[allow(dead_code)]
pub fn set(settings: &Settings) -> Arc<RegistrySet> {
    Arc::new(RegistrySet::new(settings.registries.clone()))
}
