//! The operators' web console under `/console` (SPEC 6): server-rendered
//! pages (maud templates, escaped by construction) over the same reads and
//! actions as the admin API, for people who want to look rather than curl.
//!
//! | route | what |
//! |---|---|
//! | `GET/POST /console/login`, `POST /console/logout` | the admin token in, a session cookie out ([`session`]) |
//! | `GET /console` | overview: streams and lag, postings/s and deliveries/s ([`rates`]), registries by state, dead letters, overdue retries |
//! | `GET /console/registries`, `GET /console/registries/{id}` | list; config (secrets `***`) and its history |
//! | `POST /console/registries/{id}/enabled` | enable or disable |
//! | `GET /console/deliveries?registry=&status=` | delivery state per order |
//! | `POST /console/registries/{id}/orders/{order_id}/redeliver` | redeliver a dead letter |
//! | `GET /console/orders/{order_id}` | events, ledger, postings, attempts |
//! | `GET /console/export`, `GET /console/export/download` | CSV or beancount of a registry and period |
//! | `GET /console/static/{file}` | the style sheet and the one script |
//!
//! Security: every page but the login form and the static files needs a
//! session (HttpOnly, SameSite=Strict cookie holding an HMAC-derived value,
//! never the token) or `Authorization: Bearer <admin_token>`; a browser
//! without either is sent to the login form, anything else gets 401.
//! Every POST of a session carries its CSRF token (403 otherwise). Every
//! response has a strict Content-Security-Policy: no inline script or
//! style, nothing from another origin.

mod pages;
pub mod rates;
pub mod session;

use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Form, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::AdminState;
use super::error::ApiError;
use crate::dispatcher::state::OrderDeliveries;
use crate::dispatcher::status::{ListFilter, list_deliveries};
use crate::records::{DeliveryRecord, DeliveryStatus};
use session::Session;

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";
/// Most rows on the deliveries page (the CLI and API page further).
pub const DELIVERIES_SHOWN_MAX: usize = 500;
/// Longest the overview waits for its dead-letter and retry counts.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a request was let in.
#[derive(Debug, Clone)]
pub(super) enum Auth {
    /// `Authorization: Bearer <admin_token>` (no ambient credential, so no
    /// CSRF token is needed).
    Bearer,
    Session(Session),
}

impl Auth {
    /// The CSRF token forms carry (empty for bearer callers).
    fn csrf(&self, st: &AdminState) -> String {
        match self {
            Auth::Bearer => String::new(),
            Auth::Session(s) => s.csrf_token(st.token()),
        }
    }

    /// 403 unless a session's POST carries its CSRF token.
    fn check_csrf(&self, st: &AdminState, presented: &str) -> Result<(), ConsoleError> {
        match self {
            Auth::Bearer => Ok(()),
            Auth::Session(s) if s.csrf_matches(st.token(), presented) => Ok(()),
            Auth::Session(_) => Err(ConsoleError(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "the form's CSRF token is missing or not this session's: reload the page and try again",
                )
                .with_field("csrf"),
            )),
        }
    }
}

/// What every signed-in page starts from: the admin state and how the
/// request was let in (put in the request by `require_auth`).
struct SignedIn {
    st: AdminState,
    auth: Auth,
}

impl FromRequestParts<AdminState> for SignedIn {
    type Rejection = <Extension<Auth> as FromRequestParts<AdminState>>::Rejection;

    async fn from_request_parts(
        parts: &mut Parts,
        st: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        let Extension(auth) = Extension::<Auth>::from_request_parts(parts, st).await?;
        Ok(SignedIn {
            st: st.clone(),
            auth,
        })
    }
}

/// An error page: the API error's status and message, as HTML.
#[derive(Debug)]
pub(super) struct ConsoleError(ApiError);

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        ConsoleError(e)
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        (self.0.status, pages::error(&self.0)).into_response()
    }
}

type Page = Result<Response, ConsoleError>;

/// The console's router (merged into the admin API's).
pub(super) fn router(state: AdminState) -> Router<AdminState> {
    let protected = Router::new()
        .route("/console", get(overview))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/logout", post(logout))
        .route("/console/registries", get(registries))
        .route("/console/registries/{id}", get(registry))
        .route("/console/registries/{id}/enabled", post(set_enabled))
        .route("/console/deliveries", get(deliveries))
        .route(
            "/console/registries/{id}/orders/{order_id}/redeliver",
            post(redeliver),
        )
        .route("/console/orders", get(find_order))
        .route("/console/orders/{order_id}", get(order))
        .route("/console/export", get(export_form))
        .route("/console/export/download", get(export_download))
        .route_layer(middleware::from_fn_with_state(state, require_auth));
    Router::new()
        .merge(protected)
        .route("/console/login", get(login_form).post(login))
        .route("/console/static/{file}", get(static_file))
        .layer(middleware::from_fn(security_headers))
}

/// Middleware: the headers of every console response.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// Middleware: a valid session or bearer token, else the login form (for
/// a browser's GET) or 401.
async fn require_auth(State(st): State<AdminState>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let auth = match bearer {
        Some(t) if super::auth::token_matches(t, st.token()) => Some(Auth::Bearer),
        Some(_) => None,
        None => headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|c| session::cookie(c, session::COOKIE))
            .and_then(|v| Session::from_cookie(v, st.token(), OffsetDateTime::now_utc()))
            .map(Auth::Session),
    };
    match auth {
        Some(auth) => {
            req.extensions_mut().insert(auth);
            next.run(req).await
        }
        None if req.method() == axum::http::Method::GET && bearer.is_none() => {
            Redirect::to("/console/login").into_response()
        }
        None => ConsoleError(
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "log in at /console/login, or send \"Authorization: Bearer <admin_token>\"",
            )
            .with_field("Authorization"),
        )
        .into_response(),
    }
}

/// `GET /console/static/{file}`.
async fn static_file(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "console.css" => (include_str!("console.css"), "text/css; charset=utf-8"),
        "console.js" => (include_str!("console.js"), "text/javascript; charset=utf-8"),
        _ => return ConsoleError(ApiError::not_found("no such file")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login_form() -> Response {
    pages::login(None).into_response()
}

/// `POST /console/login`: the admin token in, a session cookie out.
async fn login(State(st): State<AdminState>, Form(f): Form<LoginForm>) -> Response {
    if !super::auth::token_matches(f.token.trim(), st.token()) {
        tracing::warn!("console login refused: wrong admin token");
        return (
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That is not the admin token.")),
        )
            .into_response();
    }
    let s = Session::issue(OffsetDateTime::now_utc());
    let cookie = format!(
        "{}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}",
        session::COOKIE,
        s.cookie_value(st.token()),
        session::SESSION_TTL_SECS
    );
    tracing::info!("console login");
    let mut resp = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /console/logout`.
async fn logout(SignedIn { st, auth }: SignedIn, Form(f): Form<CsrfForm>) -> Page {
    auth.check_csrf(&st, &f.csrf)?;
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "ledgerline_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    Ok(resp)
}

/// What the overview shows.
pub(super) struct Overview {
    lag: super::metrics::LagSnapshot,
    series: Vec<(f64, f64, f64)>,
    enabled: usize,
    disabled: usize,
    invalid: usize,
    /// Dead letters, retrying orders, those overdue; `None` when NATS did not
    /// answer in time.
    counts: Option<(usize, usize, usize)>,
}

/// Dead-lettered orders, retrying orders and the retries overdue at `now`.
async fn delivery_counts(st: &AdminState, now: OffsetDateTime) -> Option<(usize, usize, usize)> {
    let list = |status| async move {
        let filter = ListFilter {
            registry: None,
            status: Some(status),
        };
        list_deliveries(st.js(), &filter, |_, _| {}).await.ok()
    };
    let counts = async {
        let dead = list(DeliveryStatus::Dead).await?;
        let retrying = list(DeliveryStatus::Retrying).await?;
        let overdue = retrying
            .iter()
            .filter(|r| r.next_attempt_at.is_some_and(|t| t < now))
            .count();
        Some((dead.len(), retrying.len(), overdue))
    };
    tokio::time::timeout(COUNT_TIMEOUT, counts)
        .await
        .ok()
        .flatten()
}

/// `GET /console`.
async fn overview(SignedIn { st, auth }: SignedIn) -> Page {
    let entries = st.store().list().await.map_err(ApiError::from)?;
    let invalid = entries
        .iter()
        .filter(|e| e.problem(st.store().policy()).is_some())
        .count();
    let enabled = entries
        .iter()
        .filter(|e| e.config.enabled && e.problem(st.store().policy()).is_none())
        .count();
    let (lag, counts) = tokio::join!(
        super::metrics::lag_snapshot(st.js()),
        delivery_counts(&st, OffsetDateTime::now_utc())
    );
    let o = Overview {
        lag,
        series: st.rates().series(),
        enabled,
        disabled: entries.len() - enabled - invalid,
        invalid,
        counts,
    };
    Ok(pages::overview(&auth.csrf(&st), &o).into_response())
}

/// `GET /console/registries`.
async fn registries(SignedIn { st, auth }: SignedIn) -> Page {
    let store = st.store();
    let views: Vec<Value> = store
        .list()
        .await
        .map_err(ApiError::from)?
        .iter()
        .map(|e| super::registries::view(e, store))
        .collect();
    Ok(pages::registries(&auth.csrf(&st), &views).into_response())
}

#[derive(Deserialize, Default)]
struct Notice {
    notice: Option<String>,
}

/// `GET /console/registries/{id}`.
async fn registry(
    SignedIn { st, auth }: SignedIn,
    Path(id): Path<String>,
    Query(n): Query<Notice>,
) -> Page {
    let store = st.store();
    let entry = store.get(&id).await.map_err(ApiError::from)?;
    let history: Vec<Value> = store
        .history(&id)
        .await
        .map_err(ApiError::from)?
        .iter()
        .map(super::registries::history_view)
        .collect();
    if entry.is_none() && history.is_empty() {
        return Err(ApiError::not_found(format!("registry {id:?} does not exist")).into());
    }
    let view = entry.as_ref().map(|e| super::registries::view(e, store));
    Ok(pages::registry(
        &auth.csrf(&st),
        &id,
        view.as_ref(),
        &history,
        n.notice.as_deref(),
    )
    .into_response())
}

#[derive(Deserialize)]
struct EnabledForm {
    #[serde(default)]
    csrf: String,
    enabled: String,
}

/// `POST /console/registries/{id}/enabled`: enable (`enabled=true`) or
/// disable (`false`) a registry, as a new revision by the API.
async fn set_enabled(
    SignedIn { st, auth }: SignedIn,
    Path(id): Path<String>,
    Form(f): Form<EnabledForm>,
) -> Page {
    auth.check_csrf(&st, &f.csrf)?;
    let enabled = match f.enabled.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(
                ApiError::invalid("enabled", format!("{other:?} is not true or false")).into(),
            );
        }
    };
    let store = st.store();
    let entry = store
        .get(&id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found(format!("registry {id:?} does not exist")))?;
    let mut config = entry.config;
    config.enabled = enabled;
    store
        .put(
            config,
            Some(entry.revision),
            crate::registry_store::ChangedBy::Api,
        )
        .await
        .map_err(ApiError::from)?;
    tracing::info!(registry_id = %id, enabled, "registry changed from the console");
    let notice = if enabled { "enabled" } else { "disabled" };
    Ok(Redirect::to(&format!("/console/registries/{id}?notice={notice}")).into_response())
}

#[derive(Deserialize, Default)]
struct DeliveriesQuery {
    registry: Option<String>,
    status: Option<String>,
}

/// A status filter of the deliveries page: `None` for all, `held` for
/// orders with postings held behind a dead letter.
fn parse_status(s: &str) -> Result<Option<DeliveryStatus>, ApiError> {
    Ok(Some(match s {
        "" => return Ok(None),
        "delivered" => DeliveryStatus::Delivered,
        "pending" => DeliveryStatus::Pending,
        "retrying" => DeliveryStatus::Retrying,
        "dead" => DeliveryStatus::Dead,
        "held" => DeliveryStatus::Held,
        other => {
            return Err(ApiError::invalid(
                "status",
                format!(
                    "{other:?} is not a status: use dead, retrying, held, delivered or pending"
                ),
            ));
        }
    }))
}

/// `GET /console/deliveries?registry=&status=`.
async fn deliveries(SignedIn { st, auth }: SignedIn, Query(q): Query<DeliveriesQuery>) -> Page {
    let status = parse_status(q.status.as_deref().unwrap_or(""))?;
    let registry = q.registry.filter(|r| !r.is_empty());
    let filter = ListFilter {
        registry: registry.clone(),
        // An order is never `held`: those are dead ones holding postings.
        status: status.filter(|s| *s != DeliveryStatus::Held),
    };
    let mut rows: Vec<OrderDeliveries> = list_deliveries(st.js(), &filter, |_, _| {})
        .await
        .map_err(|e| match e {
            crate::dispatcher::status::StatusError::BadId(bad) => {
                ApiError::invalid("registry", format!("{bad:?} is not a registry id"))
            }
            other => ApiError::unavailable(format!("reading deliveries: {other}")),
        })?;
    if status == Some(DeliveryStatus::Held) {
        rows.retain(|r| r.held > 0);
    }
    let total = rows.len();
    rows.truncate(DELIVERIES_SHOWN_MAX);
    let ids = registry_ids(&st).await?;
    Ok(pages::deliveries(
        &auth.csrf(&st),
        &ids,
        registry.as_deref(),
        status,
        &rows,
        total,
    )
    .into_response())
}

/// `POST /console/registries/{id}/orders/{order_id}/redeliver`.
async fn redeliver(
    SignedIn { st, auth }: SignedIn,
    Path((id, order_id)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Page {
    auth.check_csrf(&st, &f.csrf)?;
    super::orders::redeliver_order(&st, &id, &order_id).await?;
    Ok(Redirect::to(&format!("/console/orders/{order_id}?notice=redeliver")).into_response())
}

#[derive(Deserialize)]
struct FindOrder {
    #[serde(default)]
    order_id: String,
}

/// `GET /console/orders?order_id=`: the order's page (the lookup form
/// without an id).
async fn find_order(SignedIn { st, auth }: SignedIn, Query(q): Query<FindOrder>) -> Page {
    let id = q.order_id.trim();
    if id.is_empty() {
        return Ok(pages::find_order(&auth.csrf(&st)).into_response());
    }
    if crate::events::OrderId::parse(id).is_none() {
        return Err(ApiError::invalid("order_id", "must match [A-Za-z0-9_-]{1,128}").into());
    }
    Ok(Redirect::to(&format!("/console/orders/{id}")).into_response())
}

/// `GET /console/orders/{order_id}`.
async fn order(
    SignedIn { st, auth }: SignedIn,
    Path(order_id): Path<String>,
    Query(n): Query<Notice>,
) -> Page {
    let view = super::orders::order_view(&st, &order_id).await?;
    let order = crate::events::OrderId::parse(&order_id)
        .ok_or_else(|| ApiError::invalid("order_id", "must match [A-Za-z0-9_-]{1,128}"))?;
    let (records, _) = super::orders::read_every_registry(
        st.client(),
        crate::streams::subjects::deliveries,
        &order,
        super::orders::VIEW_DELIVERY_RECORDS_MAX,
    )
    .await?;
    let attempts: Vec<DeliveryRecord> = records
        .iter()
        .filter_map(|m| serde_json::from_slice(m.payload()).ok())
        .collect();
    Ok(pages::order(&auth.csrf(&st), &view, &attempts, n.notice.as_deref()).into_response())
}

/// Every registry's id (for the filters' choices).
async fn registry_ids(st: &AdminState) -> Result<Vec<String>, ApiError> {
    Ok(st
        .store()
        .list()
        .await?
        .into_iter()
        .map(|e| e.config.id)
        .collect())
}

/// `GET /console/export`.
async fn export_form(SignedIn { st, auth }: SignedIn) -> Page {
    let ids = registry_ids(&st).await?;
    Ok(pages::export(&auth.csrf(&st), &ids).into_response())
}

#[derive(Deserialize)]
struct ExportQuery {
    #[serde(default)]
    registry: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    format: String,
}

/// A `YYYY-MM-DD` date of the export form as midnight UTC (`None` when empty).
fn parse_day(field: &str, value: &str) -> Result<Option<OffsetDateTime>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(value, &format)
        .map(|d| Some(d.midnight().assume_utc()))
        .map_err(|e| ApiError::invalid(field, format!("{value:?} is not a date (YYYY-MM-DD): {e}")))
}

/// `GET /console/export/download?registry=&from=&to=&format=csv|beancount`:
/// the export file of one registry, postings from `from` (inclusive) to
/// `to` (exclusive), both UTC dates.
async fn export_download(State(st): State<AdminState>, Query(q): Query<ExportQuery>) -> Page {
    if q.registry.is_empty() {
        return Err(ApiError::invalid("registry", "choose a registry").into());
    }
    let (format, ext) = match q.format.as_str() {
        "" | "csv" => (crate::export::Format::Csv, "csv"),
        "beancount" => (crate::export::Format::Beancount, "beancount"),
        other => {
            return Err(ApiError::invalid(
                "format",
                format!("{other:?} is not a format: use csv or beancount"),
            )
            .into());
        }
    };
    let opts = crate::export::ExportOptions {
        registries: vec![q.registry.clone()],
        from: parse_day("from", &q.from)?,
        to: parse_day("to", &q.to)?,
        format,
        progress: false,
        // One registry's file, for a browser: the service's own connection.
        records_connection: None,
    };
    // The export's future is not `Send` (it was written for the CLI's
    // `block_on`): it runs on a blocking thread of this runtime.
    let client = st.client().clone();
    let handle = tokio::runtime::Handle::current();
    let (result, out) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let r = handle.block_on(crate::export::export(&client, &opts, &mut out));
        (r.map(|_| ()), out)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the export stopped: {e}")))?;
    result.map_err(|e| match e {
        crate::export::ExportError::BadRegistry(_) => ApiError::invalid("registry", e.to_string()),
        crate::export::ExportError::BadRange { .. } => ApiError::invalid("to", e.to_string()),
        other => ApiError::unavailable(format!("export failed: {other}")),
    })?;
    let name = format!("ledger-{}.{ext}", q.registry);
    let disposition = format!("attachment; filename=\"{name}\"");
    let content_type = match format {
        crate::export::Format::Csv => "text/csv; charset=utf-8",
        crate::export::Format::Beancount => "text/plain; charset=utf-8",
    };
    let mut resp = ([(header::CONTENT_TYPE, content_type)], out).into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
