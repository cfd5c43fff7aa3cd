//! The admin HTTP API (SPEC 6), served by `ledgerline run` on
//! `admin_listen`. Described in `openapi/admin.json` (kept true by a test
//! that walks [`routes`]).
//!
//! | route | what |
//! |---|---|
//! | `GET/POST /v1/registries` | list, create ([`registries`]) |
//! | `GET/PUT/DELETE /v1/registries/{id}` | read, create or replace, delete |
//! | `GET /v1/registries/{id}/history` | every kept revision (the audit trail) |
//! | `GET /v1/registries/{id}/deliveries?status=` | delivery state per order ([`orders`]) |
//! | `POST /v1/registries/{id}/orders/{order_id}/redeliver` | retry a dead letter |
//! | `POST/GET /v1/registries/{id}/backfill` | post what the registry missed; where it stands ([`backfill`]) |
//! | `GET/POST /v1/sources` | inbound sources (SPEC 10): list, create ([`sources`]) |
//! | `GET/PUT/DELETE /v1/sources/{id}` | read, create or replace, delete |
//! | `GET /v1/sources/{id}/history` | every kept revision |
//! | `GET /v1/orders/{order_id}/ledger` | the order's ledger, postings and their delivery |
//! | `GET /v1/schema/events` | the input events' JSON Schema ([`crate::schema`]) |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness ([`health`]) |
//! | `GET /metrics` | Prometheus ([`metrics`]) |
//! | `/console/…` | the operators' web console ([`console`]): HTML pages, session cookie or bearer token |
//!
//! Every `/v1` route needs `Authorization: Bearer <admin_token>` ([`auth`]);
//! the probes and metrics do not. Every error is JSON naming the field at
//! fault ([`ApiError`]). Bodies are limited to [`BODY_MAX_BYTES`], requests
//! to [`REQUEST_TIMEOUT`]. Secrets are never in a response: registries and
//! sources are serialised with `***` in place of every secret.

pub mod auth;
mod backfill;
pub mod console;
mod error;
pub mod health;
pub mod metrics;
mod orders;
pub mod registries;
mod sources;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::ledger::LedgerOptions;
use crate::registry::RegistryConfig;
use crate::registry_store::RegistryStore;
use crate::registry_store::RegistryWatch;
use crate::secret::Secret;
use crate::source::SourceConfig;
use crate::source_store::SourceStore;

pub use error::ApiError;
pub use health::{ComponentState, Health};

/// Largest request body: a registry with a large chart of accounts is
/// ~150 KiB; anything bigger is a mistake or an attack.
pub const BODY_MAX_BYTES: usize = 256 * 1024;
/// Longest a request may take before it is answered 503; bounds the work
/// a slow NATS can pile up (the ledger view of a very long order is the
/// slowest route).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    store: RegistryStore,
    registries: RegistryWatch,
    sources: SourceStore,
    token: Secret,
    orders: crate::streams::OrderSubjects,
    ledger: LedgerOptions,
    health: Arc<Health>,
    metrics: Option<PrometheusHandle>,
    backfills: backfill::Jobs,
    rates: Arc<console::rates::Rates>,
}

/// Everything the admin API needs from the service.
pub struct AdminConfig {
    pub client: async_nats::Client,
    pub store: RegistryStore,
    pub registries: RegistryWatch,
    /// The inbound sources' bucket (`/v1/sources`).
    pub sources: SourceStore,
    /// The bearer token (`admin_token`).
    pub token: Secret,
    /// Where ORDERS keeps each order's events.
    pub orders: crate::streams::OrderSubjects,
    pub ledger: LedgerOptions,
    pub health: Arc<Health>,
}

impl AdminState {
    pub fn new(c: AdminConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                js: jetstream::new(c.client.clone()),
                client: c.client,
                store: c.store,
                registries: c.registries,
                sources: c.sources,
                token: c.token,
                orders: c.orders,
                ledger: c.ledger,
                health: c.health,
                metrics: metrics::install(),
                backfills: backfill::Jobs::default(),
                rates: Arc::default(),
            }),
        }
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }
    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.inner.js
    }
    pub(crate) fn store(&self) -> &RegistryStore {
        &self.inner.store
    }
    pub(crate) fn sources(&self) -> &SourceStore {
        &self.inner.sources
    }
    pub(crate) fn registries(&self) -> &RegistryWatch {
        &self.inner.registries
    }
    pub(crate) fn token(&self) -> &Secret {
        &self.inner.token
    }
    pub(crate) fn orders(&self) -> &crate::streams::OrderSubjects {
        &self.inner.orders
    }
    pub(crate) fn ledger_options(&self) -> &LedgerOptions {
        &self.inner.ledger
    }
    pub(crate) fn health(&self) -> &Health {
        &self.inner.health
    }
    pub(crate) fn backfills(&self) -> &backfill::Jobs {
        &self.inner.backfills
    }
    pub(crate) fn rates(&self) -> &console::rates::Rates {
        &self.inner.rates
    }
}

/// Every route of the API: the router is built from this list, and the
/// OpenAPI test walks it, so the description cannot miss a route.
pub fn routes() -> Vec<(&'static str, MethodRouter<AdminState>)> {
    let registries = registries::routes::<RegistryConfig>([
        "/v1/registries",
        "/v1/registries/{id}",
        "/v1/registries/{id}/history",
    ]);
    let sources = registries::routes::<SourceConfig>([
        "/v1/sources",
        "/v1/sources/{id}",
        "/v1/sources/{id}/history",
    ]);
    registries
        .into_iter()
        .chain([
            ("/v1/registries/{id}/deliveries", get(orders::deliveries)),
            (
                "/v1/registries/{id}/orders/{order_id}/redeliver",
                post(orders::redeliver),
            ),
            (
                "/v1/registries/{id}/backfill",
                post(backfill::start).get(backfill::show),
            ),
        ])
        .chain(sources)
        .chain([
            ("/v1/orders/{order_id}/ledger", get(orders::ledger)),
            ("/v1/schema/events", get(events_schema)),
            ("/healthz", get(health::healthz)),
            ("/readyz", get(health::readyz)),
            ("/metrics", get(render_metrics)),
        ])
        .collect()
}

/// True for routes that need the bearer token.
pub fn is_protected(path: &str) -> bool {
    path.starts_with("/v1/")
}

/// The API as an axum router.
pub fn router(state: AdminState) -> Router {
    let mut protected = Router::new();
    let mut open = Router::new();
    for (path, route) in routes() {
        if is_protected(path) {
            protected = protected.route(path, route);
        } else {
            open = open.route(path, route);
        }
    }
    // `route_layer`: only matched routes ask for the token, so an unknown
    // path is a 404 and a wrong method a 405, token or not.
    let protected = protected.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    Router::new()
        .merge(protected)
        .merge(open)
        .merge(console::router(state.clone()))
        .fallback(|| async { ApiError::not_found("no such route; see openapi/admin.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route; see openapi/admin.json",
            )
        })
        .layer(middleware::from_fn(timeout))
        .layer(middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(BODY_MAX_BYTES))
        .with_state(state)
}

/// Middleware: answers 503 when a request outlives [`REQUEST_TIMEOUT`].
async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::unavailable(format!(
            "the request took longer than {}s; try again",
            REQUEST_TIMEOUT.as_secs()
        ))
        .into_response(),
    }
}

/// `GET /v1/schema/events`: the input events' JSON Schema.
async fn events_schema() -> axum::Json<&'static serde_json::Value> {
    axum::Json(crate::schema::events_schema())
}

/// `GET /metrics`.
async fn render_metrics(axum::extract::State(st): axum::extract::State<AdminState>) -> Response {
    // Fresh gauges for this scrape (the sampler keeps them current between
    // scrapes too); a slow NATS leaves the last values.
    let _ = tokio::time::timeout(
        metrics::SCRAPE_SAMPLE_TIMEOUT,
        metrics::sample_once(st.js(), st.registries()),
    )
    .await;
    match &st.inner.metrics {
        Some(h) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            h.render(),
        )
            .into_response(),
        None => ApiError::unavailable("the metrics recorder is not installed").into_response(),
    }
}

/// Serves the API on `listener` until `shutdown`, then stops accepting and
/// finishes the requests in flight. Also samples consumer lag for
/// `/metrics` while it runs.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let stop_sampler = shutdown.child_token();
    let sampler = tokio::spawn(metrics::sample_lag(
        state.js().clone(),
        state.registries().clone(),
        state.inner.metrics.clone(),
        stop_sampler.clone(),
    ));
    let rates = {
        let state = state.clone();
        let stop = stop_sampler.clone();
        tokio::spawn(async move {
            state
                .rates()
                .sample(state.inner.metrics.clone(), stop)
                .await
        })
    };
    let result = serve_router("admin API", listener, router(state), shutdown).await;
    stop_sampler.cancel();
    let _ = sampler.await;
    let _ = rates.await;
    result
}

/// Serves `router` on `listener` until `shutdown`, then stops accepting
/// and finishes the requests in flight; logs `<name> listening` (with the
/// address) and `<name> stopped`. The admin and ingest APIs' server.
pub async fn serve_router(
    name: &str,
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(addr = %addr, "{name} listening");
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    info!("{name} stopped");
    result
}
