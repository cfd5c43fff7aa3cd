//! `POST /v1/registries/{id}/backfill` starts a backfill of the registry
//! ([`crate::backfill`]) on this instance, in the background; `GET` of the
//! same route says where the last one stands. One backfill per registry
//! at a time. A backfill interrupted by a restart is simply started again:
//! it posts only what is still missing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::AdminState;
use super::error::ApiError;
use crate::backfill::{BackfillError, BackfillSummary, Scope, registry_to_backfill};
use crate::events::OrderId;

/// The request body (optional: `{}` or none backfills every order).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillRequest {
    /// RFC 3339: only orders with an event stored at or after it.
    from: Option<String>,
    /// Only these orders.
    orders: Option<Vec<String>>,
}

/// Where a registry's backfill stands.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    registry_id: String,
    /// `running`, `done` or `failed`.
    state: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    finished_at: Option<OffsetDateTime>,
    orders_done: u64,
    orders_total: Option<u64>,
    summary: Option<BackfillSummary>,
    error: Option<String>,
}

/// The backfills of this instance, by registry: the running one, else the
/// last one.
#[derive(Debug, Default, Clone)]
pub struct Jobs(Arc<Mutex<HashMap<String, Job>>>);

impl Jobs {
    fn update(&self, id: &str, f: impl FnOnce(&mut Job)) {
        let mut jobs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(job) = jobs.get_mut(id) {
            f(job);
        }
    }

    fn get(&self, id: &str) -> Option<Job> {
        let jobs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.get(id).cloned()
    }

    /// Records `job` unless one is running for its registry (that one is
    /// returned).
    fn start(&self, job: Job) -> Result<(), Box<Job>> {
        let mut jobs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match jobs.get(&job.registry_id) {
            Some(running) if running.state == "running" => Err(Box::new(running.clone())),
            _ => {
                jobs.insert(job.registry_id.clone(), job);
                Ok(())
            }
        }
    }
}

fn parse_request(body: &[u8]) -> Result<Scope, ApiError> {
    let req: BackfillRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BackfillRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the body is not a backfill request: {e}"))
        })?
    };
    let from = req
        .from
        .map(|t| {
            OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).map_err(|e| {
                ApiError::invalid("from", format!("{t:?} is not an RFC 3339 time: {e}"))
            })
        })
        .transpose()?;
    let orders = req
        .orders
        .map(|list| {
            list.iter()
                .enumerate()
                .map(|(i, o)| {
                    OrderId::parse(o).ok_or_else(|| {
                        ApiError::invalid(
                            format!("orders[{i}]"),
                            format!("{o:?} is not an order id ([A-Za-z0-9_-]{{1,128}})"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok(Scope { from, orders })
}

/// `POST /v1/registries/{id}/backfill`: 202 with the job, 409 while one
/// runs or when the registry is disabled, 404 for no such registry.
pub(super) async fn start(
    State(st): State<AdminState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let scope = parse_request(&body)?;
    let registry = match registry_to_backfill(st.store(), &id).await {
        Ok(r) => r,
        Err(BackfillError::Unknown(_)) => {
            return Err(ApiError::not_found(format!("no registry {id}")));
        }
        Err(e @ (BackfillError::Disabled(_) | BackfillError::Invalid { .. })) => {
            return Err(ApiError::conflict(e.to_string()));
        }
        Err(e) => return Err(ApiError::unavailable(format!("reading registry {id}: {e}"))),
    };
    let job = Job {
        registry_id: id.clone(),
        state: "running",
        started_at: OffsetDateTime::now_utc(),
        finished_at: None,
        orders_done: 0,
        orders_total: scope.orders.as_ref().map(|o| o.len() as u64),
        summary: None,
        error: None,
    };
    let jobs = st.backfills().clone();
    if let Err(running) = jobs.start(job.clone()) {
        return Err(ApiError::conflict(format!(
            "a backfill of {id} is running since {} ({} of {} orders); wait for it (GET this route)",
            running.started_at,
            running.orders_done,
            running
                .orders_total
                .map_or_else(|| "?".to_owned(), |t| t.to_string())
        )));
    }
    tracing::info!(registry_id = %id, "backfill started over the admin API");
    let (client, orders, ledger) = (
        st.client().clone(),
        st.orders().clone(),
        *st.ledger_options(),
    );
    tokio::spawn(async move {
        let result =
            crate::backfill::backfill(&client, &orders, ledger, &registry, scope, |done, total| {
                jobs.update(registry.id(), |j| {
                    j.orders_done = done;
                    j.orders_total = total;
                });
            })
            .await;
        match &result {
            Ok(s) => tracing::info!(registry_id = %registry.id(), "{s}"),
            Err(e) => {
                tracing::warn!(registry_id = %registry.id(), error = %e, "backfill failed; start it again to go on")
            }
        }
        jobs.update(registry.id(), |j| {
            j.finished_at = Some(OffsetDateTime::now_utc());
            match result {
                Ok(summary) => {
                    j.state = "done";
                    j.summary = Some(summary);
                }
                Err(e) => {
                    j.state = "failed";
                    j.error = Some(e.to_string());
                }
            }
        });
    });
    Ok((StatusCode::ACCEPTED, Json(job)))
}

/// `GET /v1/registries/{id}/backfill`: the running or last backfill of
/// this instance.
pub(super) async fn show(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    st.backfills().get(&id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!("no backfill of {id} was started on this instance"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_the_field_it_cannot_use() {
        assert!(parse_request(b"").unwrap().orders.is_none());
        assert!(parse_request(b" {} ").unwrap().from.is_none());
        let s = parse_request(br#"{"from": "2026-11-01T00:00:00Z", "orders": ["a-1", "b_2"]}"#)
            .unwrap();
        assert_eq!(s.orders.unwrap().len(), 2);
        assert_eq!(s.from.unwrap().year(), 2026);
        let e = parse_request(br#"{"orders": ["ok", "not ok"]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("orders[1]"));
        let e = parse_request(br#"{"from": "yesterday"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("from"));
        let e = parse_request(br#"{"form": "2026-11-01T00:00:00Z"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("unknown field `form`"), "{}", e.message);
    }

    #[test]
    fn one_backfill_per_registry_runs_at_a_time() {
        let jobs = Jobs::default();
        let job = Job {
            registry_id: "r".into(),
            state: "running",
            started_at: OffsetDateTime::UNIX_EPOCH,
            finished_at: None,
            orders_done: 0,
            orders_total: None,
            summary: None,
            error: None,
        };
        assert!(jobs.start(job.clone()).is_ok());
        assert!(jobs.start(job.clone()).is_err(), "a second while it runs");
        jobs.update("r", |j| j.state = "done");
        assert!(jobs.start(job).is_ok(), "again once done");
    }
}
