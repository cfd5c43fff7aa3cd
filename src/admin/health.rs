//! `/healthz` and `/readyz`.
//!
//! - `/healthz`: the process is up and serving (no I/O).
//! - `/readyz`: ready for work: NATS connected, the ORDERS and LEDGER
//!   streams present, the registry bucket followed, every component of this
//!   process running, and their durable consumers present (the aggregator's
//!   on ORDERS; a dispatcher consumer per enabled registry on LEDGER).
//!   503 with the failing checks otherwise, including while shutting down.
//!   A passed `failure emails` check warns when registries list
//!   `notify_emails` but no `[smtp]` is configured.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::AdminState;
use crate::streams::{LEDGER_STREAM, ORDERS_STREAM};

/// Longest a readiness probe waits for NATS per check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a component of the process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    Starting,
    Running,
    /// Waiting as a hot standby while another instance holds the lease.
    Standby,
    Stopped,
    Failed,
}

/// What the service tells readiness about itself. Shared by the service
/// (writer) and the admin API (reader).
#[derive(Debug, Default)]
pub struct Health {
    components: Mutex<BTreeMap<&'static str, ComponentState>>,
    registry_watch: Mutex<Option<Arc<AtomicBool>>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the state of a component (`aggregator`, `dispatcher`, `admin`).
    pub fn set(&self, component: &'static str, state: ComponentState) {
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(component, state);
    }

    /// Where each component stands.
    pub fn components(&self) -> BTreeMap<&'static str, ComponentState> {
        self.components
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The flag the registry watcher keeps (false while it cannot follow
    /// the bucket).
    pub fn set_registry_watch(&self, flag: Arc<AtomicBool>) {
        *self
            .registry_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(flag);
    }

    fn registry_watch_ok(&self) -> Option<bool> {
        self.registry_watch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| f.load(Ordering::Relaxed))
    }
}

/// `GET /healthz`.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

struct Check {
    name: String,
    ok: bool,
    detail: String,
}

/// `GET /readyz`.
pub async fn readyz(State(st): State<AdminState>) -> (StatusCode, Json<Value>) {
    let mut checks = Vec::new();
    let state = st.client().connection_state();
    let connected = state == async_nats::connection::State::Connected;
    checks.push(Check {
        name: "nats".into(),
        ok: connected,
        detail: format!("{state:?}").to_lowercase(),
    });
    let js = st.js();
    let mut streams = BTreeMap::new();
    for name in [ORDERS_STREAM, LEDGER_STREAM] {
        let (ok, detail) = if !connected {
            (false, "NATS not connected".to_owned())
        } else {
            checked(js.get_stream(name), |s| {
                streams.insert(name, s);
                "present".to_owned()
            })
            .await
        };
        checks.push(Check {
            name: format!("stream {name}"),
            ok,
            detail,
        });
    }
    match st.health().registry_watch_ok() {
        Some(ok) => checks.push(Check {
            name: "registries".into(),
            ok,
            detail: if ok {
                "followed"
            } else {
                "not followed (NATS?)"
            }
            .into(),
        }),
        None => checks.push(Check {
            name: "registries".into(),
            ok: false,
            detail: "not loaded yet".into(),
        }),
    }
    let components = st.health().components();
    for (name, state) in &components {
        checks.push(Check {
            name: format!("component {name}"),
            ok: matches!(state, ComponentState::Running | ComponentState::Standby),
            detail: format!("{state:?}").to_lowercase(),
        });
    }
    // The durable consumers of the running components.
    let mut consumers: Vec<(&'static str, String)> = Vec::new();
    let aggregating = components.get("aggregator") == Some(&ComponentState::Running);
    let partitions = st.orders().partitions();
    if aggregating && partitions == 0 {
        consumers.push((ORDERS_STREAM, crate::aggregator::CONSUMER.to_owned()));
    }
    if aggregating
        && partitions > 0
        && let Some(orders) = streams.get(ORDERS_STREAM)
    {
        checks.push(partition_consumers(orders, partitions).await);
    }
    if components.get("dispatcher") == Some(&ComponentState::Running) {
        let set = st.registries().borrow().clone();
        for r in set.all().iter().filter(|r| r.config.enabled) {
            consumers.push((
                LEDGER_STREAM,
                format!("{}{}", crate::dispatcher::CONSUMER_PREFIX, r.id()),
            ));
        }
    }
    for (stream, consumer) in consumers {
        let (ok, detail) = match streams.get(stream) {
            None => (false, "stream missing".to_owned()),
            Some(s) => {
                checked(s.consumer_info(&consumer), |info| {
                    format!(
                        "{} pending, {} unacknowledged",
                        info.num_pending, info.num_ack_pending
                    )
                })
                .await
            }
        };
        checks.push(Check {
            name: format!("consumer {stream}/{consumer}"),
            ok,
            detail,
        });
    }
    if let Some(check) = failure_emails(&st) {
        checks.push(check);
    }
    let ready = checks.iter().all(|c| c.ok);
    let body = json!({
        "ready": ready,
        "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// A passed check that warns, when registries in force list
/// `notify_emails` on an instance without `[smtp]`: no failure email will
/// be sent for them ([`crate::registry_store::registry_warnings`]). `None`
/// when there is none.
fn failure_emails(st: &AdminState) -> Option<Check> {
    let set = st.registries().borrow().clone();
    let unmailed: Vec<&str> = set
        .all()
        .iter()
        .filter(|r| {
            st.store()
                .warnings(&r.config)
                .iter()
                .any(|w| w.field == "notify_emails")
        })
        .map(|r| r.id())
        .collect();
    (!unmailed.is_empty()).then(|| Check {
        name: "failure emails".into(),
        ok: true,
        detail: format!(
            "warning: no [smtp] is configured, so no failure email will be sent for \
             registries with notify_emails: {}",
            unmailed.join(", ")
        ),
    })
}

/// With order partitions: whether every partition has its consumer (one
/// request for their names, not one per partition; whichever instance owns
/// a partition creates its consumer).
async fn partition_consumers(
    orders: &async_nats::jetstream::stream::Stream,
    partitions: u32,
) -> Check {
    use futures::TryStreamExt;
    let names = orders.consumer_names().try_collect::<Vec<String>>();
    let (ok, detail) = match tokio::time::timeout(CHECK_TIMEOUT, names).await {
        Ok(Ok(names)) => {
            let names: std::collections::HashSet<String> = names.into_iter().collect();
            let missing: Vec<u32> = (0..partitions)
                .filter(|k| !names.contains(&crate::aggregator::partition_consumer(*k)))
                .collect();
            match missing.first() {
                None => (true, format!("all {partitions} present")),
                Some(first) => (
                    false,
                    format!(
                        "{} of {partitions} missing (first: {}); an instance takes them up within lease_ttl",
                        missing.len(),
                        crate::aggregator::partition_consumer(*first)
                    ),
                ),
            }
        }
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (false, "timed out".to_owned()),
    };
    Check {
        name: format!(
            "consumers {ORDERS_STREAM}/{}-p*",
            crate::aggregator::CONSUMER
        ),
        ok,
        detail,
    }
}

/// One readiness check: `request` within [`CHECK_TIMEOUT`], passed with
/// `detail` of its answer, or failed with its error or "timed out".
async fn checked<T, E: std::fmt::Display>(
    request: impl std::future::Future<Output = Result<T, E>>,
    detail: impl FnOnce(T) -> String,
) -> (bool, String) {
    match tokio::time::timeout(CHECK_TIMEOUT, request).await {
        Ok(Ok(answer)) => (true, detail(answer)),
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (false, "timed out".to_owned()),
    }
}
