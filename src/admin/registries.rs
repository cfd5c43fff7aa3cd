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
//!
//! The handlers are generic over what they manage ([`Managed`]): the same
//! serve `/v1/sources` ([`super::sources`]), a source in place of a
//! registry (`{"source": …}`, `"sources"`, `source_id`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use serde_json::{Map, Value, json};

use super::AdminState;
use super::error::ApiError;
use crate::registry::RegistryConfig;
use crate::registry_store::{ChangedBy, Entry, HistoryEntry, Item, KvStore, PutOutcome};

/// An item the admin API manages in its bucket, under `/v1/<plural>`.
pub(super) trait Managed: Item {
    /// This item's store.
    fn store(st: &AdminState) -> &KvStore<Self>;
    /// The `message` of a deletion: what stays.
    const DELETED: &'static str;
}

impl Managed for RegistryConfig {
    fn store(st: &AdminState) -> &KvStore<Self> {
        st.store()
    }
    const DELETED: &'static str = "registry deleted: no new postings; its postings stay in LEDGER and its history in the registry bucket";
}

/// The routes of `T`'s items at the paths `[list, one, history]` (e.g.
/// `/v1/registries`, `/v1/registries/{id}`, `/v1/registries/{id}/history`):
/// list and create, read, replace and delete one, its kept revisions.
pub(super) fn routes<T: Managed>(
    [list_path, one_path, history_path]: [&'static str; 3],
) -> [(&'static str, MethodRouter<AdminState>); 3] {
    [
        (list_path, get(list::<T>).post(create::<T>)),
        (
            one_path,
            get(show::<T>).put(replace::<T>).delete(delete::<T>),
        ),
        (history_path, get(history::<T>)),
    ]
}

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
pub(super) fn view<T: Item>(e: &Entry<T>, store: &KvStore<T>) -> Value {
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
fn parse_body<T: Item>(
    body: Result<Bytes, BytesRejection>,
    headers: &HeaderMap,
    path_id: Option<&str>,
) -> Result<(T, Option<u64>), ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), r.body_text()))?;
    if let Some(ct) = headers.get(header::CONTENT_TYPE)
        && !ct
            .to_str()
            .is_ok_and(|v| v.trim_start().starts_with("application/json"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "send the {} as JSON (Content-Type: application/json)",
                T::KIND
            ),
        )
        .with_field("Content-Type"));
    }
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad_request(format!(
            "the body must be a JSON object: a {kind}, or {{\"{kind}\": {{…}}}}",
            kind = T::KIND
        )));
    };
    obj = item_object(obj, T::KIND);
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

/// Deserialises an item, naming the field of any mismatch.
fn deserialize<T: Item>(obj: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(Value::Object(obj)).map_err(|e| {
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
pub(super) async fn list<T: Managed>(
    State(st): State<AdminState>,
) -> Result<Json<Value>, ApiError> {
    let store = T::store(&st);
    let entries = store.list().await?;
    let mut out = Map::new();
    out.insert(
        T::PLURAL.to_owned(),
        entries.iter().map(|e| view(e, store)).collect(),
    );
    Ok(Json(Value::Object(out)))
}

/// `{"<kind>": value}` and more fields, in this order.
fn one(key: &str, value: Value, rest: Value) -> Value {
    let mut out = Map::new();
    out.insert(key.to_owned(), value);
    if let Value::Object(rest) = rest {
        out.extend(rest);
    }
    Value::Object(out)
}

/// `POST /v1/registries`.
pub(super) async fn create<T: Managed>(
    State(st): State<AdminState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let store = T::store(&st);
    let (config, _) = parse_body::<T>(body, &headers, None)?;
    let entry = store.create(config, ChangedBy::Api).await?;
    let location = format!("/v1/{}/{}", T::PLURAL, entry.config.id());
    let mut resp = (
        StatusCode::CREATED,
        Json(one(
            T::KIND,
            view(&entry, store),
            json!({
                "result": PutOutcome::Created,
                "message": format!("{} created", T::KIND),
            }),
        )),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /v1/registries/{id}`.
pub(super) async fn show<T: Managed>(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = T::store(&st);
    match store.get(&id).await? {
        Some(e) => Ok(Json(one(T::KIND, view(&e, store), Value::Null))),
        None => Err(ApiError::not_found(format!(
            "{} {id:?} does not exist",
            T::KIND
        ))),
    }
}

/// `PUT /v1/registries/{id}`: create or replace.
pub(super) async fn replace<T: Managed>(
    State(st): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let store = T::store(&st);
    let (config, revision) = parse_body::<T>(body, &headers, Some(&id))?;
    let (entry, outcome) = store.put(config, revision, ChangedBy::Api).await?;
    let status = match outcome {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Updated | PutOutcome::Unchanged => StatusCode::OK,
    };
    Ok((
        status,
        Json(one(
            T::KIND,
            view(&entry, store),
            json!({
                "result": outcome,
                "message": format!("{} {}", T::KIND, outcome.as_str()),
            }),
        )),
    )
        .into_response())
}

/// `DELETE /v1/registries/{id}`: no new postings from now on; what was
/// posted stays in LEDGER (exportable), and the registry's history stays.
pub(super) async fn delete<T: Managed>(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = T::store(&st);
    let entry = store.delete(&id, None).await?;
    Ok(Json(one(
        T::KIND,
        view(&entry, store),
        json!({
            "result": "deleted",
            "message": T::DELETED,
        }),
    )))
}

pub(super) fn history_view<T: Item>(h: &HistoryEntry<T>) -> Value {
    let stored = h.stored.as_ref().map(T::from_stored);
    let mut v = json!({
        "revision": h.revision,
        "at": rfc3339(h.at),
        "operation": h.operation,
        "changed_by": stored.map(|s| s.2.as_str()),
    });
    if let Value::Object(m) = &mut v {
        // Outside `reveal_secrets`: secrets as "***".
        m.insert(
            T::KIND.to_owned(),
            stored.map_or(Value::Null, |s| {
                serde_json::to_value(s.0).unwrap_or(Value::Null)
            }),
        );
    }
    v
}

/// `GET /v1/registries/{id}/history`: every kept revision, oldest first.
pub(super) async fn history<T: Managed>(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let h = T::store(&st).history(&id).await?;
    if h.is_empty() {
        return Err(ApiError::not_found(format!(
            "{} {id:?} has no history: it never existed",
            T::KIND
        )));
    }
    Ok(Json(one(
        &format!("{}_id", T::KIND),
        Value::String(id),
        json!({ "history": h.iter().map(history_view).collect::<Vec<_>>() }),
    )))
}

/// A registry body as the admin API reads it: the object itself or
/// `{"registry": {…}}`, with the read-only fields (timestamps, who changed
/// it, `invalid`) dropped.
pub fn registry_object(obj: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    item_object(obj, "registry")
}

/// [`registry_object`] for any item: `{"<kind>": {…}}` or the item itself.
pub fn item_object(
    mut obj: serde_json::Map<String, Value>,
    kind: &str,
) -> serde_json::Map<String, Value> {
    if obj.len() == 1
        && let Some(Value::Object(_)) = obj.get(kind)
        && let Some(Value::Object(inner)) = obj.remove(kind)
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
