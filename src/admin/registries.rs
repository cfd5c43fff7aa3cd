//! `/v1/registries`: list, create, read, replace, delete, history.
//!
//! A registry is sent and returned as its SPEC 3 fields (JSON), every
//! secret shown as `"***"`, plus read-only `revision`, `created_at`,
//! `updated_at`, `changed_by` (and `invalid` when it fails validation
//! under the current policy, `warnings` when something it asks for will
//! not happen on this instance, e.g. `notify_emails` without `[smtp]`).
//! So what a client reads it can send back:
//! - the read-only fields are ignored, except `revision`, which, when
//!   sent, must be the stored one (409 otherwise: no lost updates);
//! - `"***"` for a secret keeps the stored secret, unless the origin of
//!   the URL it is sent to changed (then it must be sent again; see
//!   [`crate::registry_store`]);
//! - the body may be the registry itself or wrapped as `{"registry": …}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AdminState;
use super::error::ApiError;
use crate::registry::RegistryConfig;
use crate::registry_store::{ChangedBy, HistoryEntry, PutOutcome, RegistryEntry, RegistryStore};

/// Fields a client may send back from a read, ignored on write.
const READ_ONLY: [&str; 5] = [
    "created_at",
    "updated_at",
    "changed_by",
    "invalid",
    "warnings",
];

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A registry as the API shows it: secrets as `***`, with its metadata,
/// `invalid` when it fails validation and `warnings` when something it asks
/// for will not happen (e.g. `notify_emails` without `[smtp]`).
pub(super) fn view(e: &RegistryEntry, store: &RegistryStore) -> Value {
    let policy = store.policy();
    // Outside `reveal_secrets`, every secret serialises as "***".
    let mut v = serde_json::to_value(&e.config).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("revision".into(), json!(e.revision));
        m.insert("created_at".into(), json!(rfc3339(e.created_at)));
        m.insert("updated_at".into(), json!(rfc3339(e.updated_at)));
        m.insert("changed_by".into(), json!(e.changed_by.as_str()));
        if let Some(p) = e.problem(policy) {
            m.insert(
                "invalid".into(),
                json!({ "field": p.field, "message": p.message }),
            );
        }
        let warnings = store.warnings(&e.config);
        if !warnings.is_empty() {
            m.insert("warnings".into(), json!(warnings));
        }
    }
    v
}

/// The registry and optional expected revision of a write body.
fn parse_body(
    body: Result<Bytes, BytesRejection>,
    headers: &HeaderMap,
    path_id: Option<&str>,
) -> Result<(RegistryConfig, Option<u64>), ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !ct
            .to_str()
            .is_ok_and(|v| v.trim_start().starts_with("application/json"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the registry as JSON (Content-Type: application/json)",
        )
        .with_field("Content-Type"));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad_request(
            "the body must be a JSON object: a registry, or {\"registry\": {…}}",
        ));
    };
    obj = registry_object(obj);
    let revision = match obj.remove("revision") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            ApiError::invalid(
                "revision",
                "must be the revision read (a non-negative integer)",
            )
        })?),
    };
    if let Some(id) = path_id {
        match obj.get("id") {
            None => {
                obj.insert("id".into(), Value::String(id.to_owned()));
            }
            Some(Value::String(s)) if s == id => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    "id",
                    format!("{other} differs from the id in the URL ({id:?})"),
                ));
            }
        }
    }
    let config = deserialize(obj)?;
    Ok((config, revision))
}

/// Deserialises a registry, naming the field of any mismatch.
fn deserialize(obj: Map<String, Value>) -> Result<RegistryConfig, ApiError> {
    serde_path_to_error::deserialize::<_, RegistryConfig>(Value::Object(obj)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // The path of an unknown field ends with it; a missing field is
        // named only in the message, at the path of its parent.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        let field = match (missing, path.as_str()) {
            (Some(name), ".") => name.to_owned(),
            (Some(name), parent) => format!("{parent}.{name}"),
            (None, "auth") if message.starts_with("unknown variant") => "auth.type".to_owned(),
            (None, p) => p.to_owned(),
        };
        ApiError::invalid(field, message)
    })
}

/// `GET /v1/registries`.
pub(super) async fn list(State(st): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let entries = st.store().list().await?;
    Ok(Json(json!({
        "registries": entries.iter().map(|e| view(e, st.store())).collect::<Vec<_>>()
    })))
}

/// `POST /v1/registries`.
pub(super) async fn create(
    State(st): State<AdminState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (config, _) = parse_body(body, &headers, None)?;
    let entry = st.store().create(config, ChangedBy::Api).await?;
    let location = format!("/v1/registries/{}", entry.config.id);
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({
            "registry": view(&entry, st.store()),
            "result": PutOutcome::Created,
            "message": "registry created",
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /v1/registries/{id}`.
pub(super) async fn show(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match st.store().get(&id).await? {
        Some(e) => Ok(Json(json!({ "registry": view(&e, st.store()) }))),
        None => Err(ApiError::not_found(format!(
            "registry {id:?} does not exist"
        ))),
    }
}

/// `PUT /v1/registries/{id}`: create or replace.
pub(super) async fn replace(
    State(st): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (config, revision) = parse_body(body, &headers, Some(&id))?;
    let (entry, outcome) = st.store().put(config, revision, ChangedBy::Api).await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated | PutOutcome::Unchanged => StatusCode::OK,
    };
    Ok((
        status,
        Json(json!({
            "registry": view(&entry, st.store()),
            "result": outcome,
            "message": format!("registry {}", outcome.as_str()),
        })),
    )
        .into_response())
}

/// `DELETE /v1/registries/{id}`: no new postings from now on; what was
/// posted stays in LEDGER (exportable), and the registry's history stays.
pub(super) async fn delete(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = st.store().delete(&id, None).await?;
    Ok(Json(json!({
        "registry": view(&entry, st.store()),
        "result": "deleted",
        "message": "registry deleted: no new postings; its postings stay in LEDGER and its history in the registry bucket",
    })))
}

fn history_view(h: &HistoryEntry) -> Value {
    json!({
        "revision": h.revision,
        "at": rfc3339(h.at),
        "operation": h.operation,
        "changed_by": h.stored.as_ref().map(|s| s.changed_by.as_str()),
        // Outside `reveal_secrets`: secrets as "***".
        "registry": h.stored.as_ref().map(|s| serde_json::to_value(&s.registry).unwrap_or(Value::Null)),
    })
}

/// `GET /v1/registries/{id}/history`: every kept revision, oldest first.
pub(super) async fn history(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let h = st.store().history(&id).await?;
    if h.is_empty() {
        return Err(ApiError::not_found(format!(
            "registry {id:?} has no history: it never existed"
        )));
    }
    Ok(Json(json!({
        "registry_id": id,
        "history": h.iter().map(history_view).collect::<Vec<_>>(),
    })))
}

/// A registry body as the admin API reads it: the object itself or
/// `{"registry": {…}}`, with the read-only fields (timestamps, who changed
/// it, `invalid`) dropped.
pub fn registry_object(mut obj: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    if obj.len() == 1
        && let Some(Value::Object(_)) = obj.get("registry")
        && let Some(Value::Object(inner)) = obj.remove("registry")
    {
        obj = inner;
    }
    for k in READ_ONLY {
        obj.remove(k);
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, path_id: Option<&str>) -> Result<(RegistryConfig, Option<u64>), ApiError> {
        parse_body(Ok(Bytes::from(body.to_owned())), &HeaderMap::new(), path_id)
    }

    #[test]
    fn what_was_read_can_be_sent_back_wrapped_or_not() {
        let read = r#"{"registry": {"id": "a", "url": "https://a.example", "revision": 7,
            "created_at": "x", "updated_at": "y", "changed_by": "api"}}"#;
        let (c, rev) = parse(read, Some("a")).unwrap();
        assert_eq!((c.id.as_str(), rev), ("a", Some(7)));
        let (c, rev) = parse(r#"{"url": "https://a.example"}"#, Some("a")).unwrap();
        assert_eq!((c.id.as_str(), rev), ("a", None));
    }

    #[test]
    fn mismatches_name_the_field() {
        let field = |body: &str| parse(body, None).unwrap_err().field;
        assert_eq!(
            field(r#"{"id": "a", "url": "u", "colour": 1}"#).as_deref(),
            Some("colour")
        );
        assert_eq!(field(r#"{"id": "a"}"#).as_deref(), Some("url"));
        assert_eq!(
            field(r#"{"id": "a", "url": "u", "timeout_ms": "soon"}"#).as_deref(),
            Some("timeout_ms")
        );
        assert_eq!(
            field(r#"{"id": "a", "url": "u", "ledger_codes": [{"code": "1", "colour": 2}]}"#)
                .as_deref(),
            Some("ledger_codes[0].colour")
        );
        assert_eq!(
            field(r#"{"id": "a", "url": "u", "auth": {"type": "oauth"}}"#).as_deref(),
            Some("auth.type")
        );
        assert_eq!(
            field(r#"{"id": "a", "url": "u", "revision": "new"}"#).as_deref(),
            Some("revision")
        );
        assert_eq!(
            parse(r#"{"id": "b", "url": "u"}"#, Some("a"))
                .unwrap_err()
                .field
                .as_deref(),
            Some("id")
        );
        let not_json = parse("{", None).unwrap_err();
        assert_eq!(
            (not_json.status, not_json.field),
            (StatusCode::BAD_REQUEST, None)
        );
    }
}
