//! The console's pages: maud templates, so every value from outside
//! (order ids, descriptions, registry_data, receivers' answers) is
//! escaped by construction. Views are rendered from the admin API's JSON,
//! generically: entry types, dimensions and posting fields are shown by
//! their names, whatever they are.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use rust_decimal::Decimal;
use serde_json::Value;

use super::Overview;
use crate::admin::ApiError;
use crate::dispatcher::state::OrderDeliveries;
use crate::records::{DeliveryRecord, DeliveryStatus};

/// Which menu entry a page is under.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Nav {
    Overview,
    Registries,
    Deliveries,
    Orders,
    Export,
    None,
}

/// The frame of every page after login: the menu, the logout form, `body`.
fn layout(title: &str, nav: Nav, csrf: &str, refresh: Option<u32>, body: Markup) -> Markup {
    let item = |href: &str, label: &str, this: Nav| {
        html! { a href=(href) class=[(nav == this).then_some("here")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · ledgerline console" }
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/console.js" defer {}
            }
            body data-refresh=[refresh] {
                header {
                    a.brand href="/console" { "ledgerline" }
                    (item("/console", "Overview", Nav::Overview))
                    (item("/console/registries", "Registries", Nav::Registries))
                    (item("/console/deliveries", "Deliveries", Nav::Deliveries))
                    (item("/console/orders", "Orders", Nav::Orders))
                    (item("/console/export", "Export", Nav::Export))
                    @if !csrf.is_empty() {
                        form.inline method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button.secondary type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A hidden CSRF field and a button, posting to `action`.
fn action_form(action: &str, csrf: &str, fields: &[(&str, &str)], label: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            @for (k, v) in fields { input type="hidden" name=(k) value=(v); }
            button type="submit" { (label) }
        }
    }
}

/// A JSON value as text (strings without quotes, null as empty).
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn status_badge(status: &str) -> Markup {
    html! { span class={ "status status-" (status) } { (status) } }
}

/// The login form (`error`: why the last try failed).
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · ledgerline console" }
                link rel="stylesheet" href="/console/static/console.css";
            }
            body {
                div.login {
                    h1 { "ledgerline console" }
                    @if let Some(e) = error { p.error { (e) } }
                    form method="post" action="/console/login" {
                        label { "Admin token" input type="password" name="token" id="token" autocomplete="current-password" autofocus; }
                        button type="submit" id="login" { "Log in" }
                    }
                    p.muted { "The admin token is " code { "admin_token" } " of the service's configuration." }
                }
            }
        }
    }
}

/// An error page.
pub fn error(e: &ApiError) -> Markup {
    layout(
        "Error",
        Nav::None,
        "",
        None,
        html! {
            h1 { (e.status.as_u16()) " " (e.status.canonical_reason().unwrap_or("")) }
            p.error id="error" {
                (e.message)
                @if let Some(f) = &e.field { " (field: " code { (f) } ")" }
            }
        },
    )
}

pub fn overview(csrf: &str, o: &Overview) -> Markup {
    let body = html! {
        h1 { "Overview" }
        div.cards {
            @match o.counts {
                Some((dead, retrying, overdue)) => {
                    a.card href="/console/deliveries?status=dead" {
                        div.n.bad[dead > 0] id="dead-letters" { (dead) } div { "dead letters" }
                    }
                    a.card href="/console/deliveries?status=retrying" {
                        div.n id="retrying" { (retrying) } div { "orders retrying" }
                    }
                    div.card { div.n.warn[overdue > 0] id="overdue" { (overdue) } div { "retries overdue" } }
                }
                None => { div.card { div.n { "?" } div { "delivery counts unavailable (NATS slow)" } } }
            }
            a.card href="/console/registries" {
                div.n { (o.enabled) } div { "registries enabled" }
            }
            div.card { div.n { (o.disabled) } div { "disabled" } }
            div.card { div.n.bad[o.invalid > 0] { (o.invalid) } div { "invalid" } }
        }
        h2 { "Throughput (this instance, last minutes)" }
        p {
            span.legend-postings { "■ postings/s" } " · " span.legend-deliveries { "■ deliveries/s" }
            @if let Some(last) = o.series.last() {
                " · now " (format!("{:.1}", last.1)) " postings/s, " (format!("{:.1}", last.2)) " deliveries/s"
            }
        }
        @if o.series.is_empty() {
            p.muted { "Sampled every 5 s: the chart appears after the first two samples." }
        } @else {
            (PreEscaped(super::rates::svg(&o.series)))
        }
        h2 { "Streams" }
        table {
            tr { th { "stream" } th.num { "messages" } }
            @for (name, n) in &o.lag.streams { tr { td { (name) } td.num { (n) } } }
        }
        h2 { "Consumers" }
        table {
            tr { th { "stream" } th { "consumer" } th.num { "lag (pending)" } th.num { "unacknowledged" } }
            @for c in &o.lag.consumers {
                tr { td { (c.stream) } td { (c.consumer) } td.num { (c.pending) } td.num { (c.ack_pending) } }
            }
        }
    };
    layout("Overview", Nav::Overview, csrf, Some(10), body)
}

pub fn registries(csrf: &str, views: &[Value]) -> Markup {
    let body = html! {
        h1 { "Registries" }
        table id="registries" {
            tr { th { "id" } th { "name" } th { "url" } th { "state" } th.num { "revision" } th { "updated" } th { "by" } }
            @for r in views {
                @let id = text(&r["id"]);
                tr {
                    td { a href={ "/console/registries/" (id) } { (id) } }
                    td { (text(&r["name"])) }
                    td { code { (text(&r["url"])) } }
                    td {
                        @if r.get("invalid").is_some() {
                            span.bad { "invalid: " (text(&r["invalid"]["message"])) }
                        } @else if r["enabled"] == Value::Bool(true) {
                            span.ok { "enabled" }
                        } @else { span.warn { "disabled" } }
                    }
                    td.num { (text(&r["revision"])) }
                    td { (text(&r["updated_at"])) }
                    td { (text(&r["changed_by"])) }
                }
            }
        }
    };
    layout("Registries", Nav::Registries, csrf, None, body)
}

/// The top-level fields whose value differs between two revisions.
fn changed_fields(before: &Value, after: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| b.get(*k) != a.get(*k))
        .cloned()
        .collect()
}

pub fn registry(
    csrf: &str,
    id: &str,
    view: Option<&Value>,
    history: &[Value],
    notice: Option<&str>,
) -> Markup {
    let notice = match notice {
        Some("enabled") => Some("Registry enabled."),
        Some("disabled") => Some("Registry disabled."),
        _ => None,
    };
    let action = format!("/console/registries/{id}/enabled");
    let body = html! {
        h1 { "Registry " code { (id) } }
        @if let Some(n) = notice { p.flash id="notice" { (n) } }
        @match view {
            Some(v) => {
                p {
                    @if v["enabled"] == Value::Bool(true) {
                        span.ok { "enabled" } " "
                        (action_form(&action, csrf, &[("enabled", "false")], "Disable"))
                    } @else {
                        span.warn { "disabled" } " "
                        (action_form(&action, csrf, &[("enabled", "true")], "Enable"))
                    }
                    " · " a href={ "/console/deliveries?registry=" (id) } { "deliveries" }
                    " · " a href={ "/console/export?registry=" (id) } { "export" }
                }
                h2 { "Configuration (secrets shown as ***)" }
                pre id="config" { (pretty(v)) }
            }
            None => { p.warn { "Deleted: its postings stay in LEDGER, its history below." } }
        }
        h2 { "History" }
        table id="history" {
            tr { th.num { "revision" } th { "when" } th { "operation" } th { "by" } th { "what changed" } }
            @for (i, h) in history.iter().enumerate().rev() {
                @let changed = match i.checked_sub(1).and_then(|p| history.get(p)) {
                    Some(prev) => changed_fields(&prev["registry"], &h["registry"]).join(", "),
                    None => "created".to_owned(),
                };
                tr {
                    td.num { (text(&h["revision"])) }
                    td { (text(&h["at"])) }
                    td { (text(&h["operation"])) }
                    td { (text(&h["changed_by"])) }
                    td { (changed) }
                }
            }
        }
    };
    layout(&format!("Registry {id}"), Nav::Registries, csrf, None, body)
}

pub fn deliveries(
    csrf: &str,
    registry_ids: &[String],
    registry: Option<&str>,
    status: Option<DeliveryStatus>,
    rows: &[OrderDeliveries],
    total: usize,
) -> Markup {
    let statuses = ["dead", "retrying", "held", "delivered", "pending"];
    let chosen = status.map(DeliveryStatus::as_str);
    let body = html! {
        h1 { "Deliveries" }
        form.filters method="get" action="/console/deliveries" {
            label { "registry"
                select name="registry" {
                    option value="" { "all" }
                    @for r in registry_ids {
                        option value=(r) selected[registry == Some(r.as_str())] { (r) }
                    }
                }
            }
            label { "status"
                select name="status" {
                    option value="" { "any" }
                    @for s in statuses { option value=(s) selected[chosen == Some(s)] { (s) } }
                }
            }
            button type="submit" { "Show" }
        }
        p.muted { (total) " orders" @if total > rows.len() { ", the first " (rows.len()) " shown" } }
        table id="deliveries" {
            tr { th { "registry" } th { "order" } th { "status" } th.num { "postings" } th.num { "delivered" } th.num { "held" }
                 th.num { "failing" } th.num { "attempts" } th.num { "HTTP" } th { "last error" } th { "next attempt" } th {} }
            @for r in rows {
                tr data-order=(r.order_id) {
                    td { a href={ "/console/registries/" (r.registry_id) } { (r.registry_id) } }
                    td { a href={ "/console/orders/" (r.order_id) } { (r.order_id) } }
                    td { (status_badge(r.status.as_str())) }
                    td.num { (r.postings) } td.num { (r.delivered) } td.num { (r.held) }
                    td.num { @if let Some(s) = r.failing_seq { (s) } }
                    td.num { (r.attempts) }
                    td.num { @if let Some(s) = r.http_status { (s) } }
                    td { @if let Some(e) = &r.last_error { (e) } }
                    td { @if let Some(t) = r.next_attempt_at { (crate::admin::orders::rfc3339(t)) } }
                    td {
                        @if r.status == DeliveryStatus::Dead {
                            (action_form(&format!("/console/registries/{}/orders/{}/redeliver", r.registry_id, r.order_id), csrf, &[], "Redeliver"))
                        }
                    }
                }
            }
        }
    };
    layout("Deliveries", Nav::Deliveries, csrf, Some(10), body)
}

/// Columns of a table of JSON objects: every key, in order of first use.
fn columns(rows: &[Value]) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        for k in r.as_object().into_iter().flat_map(|o| o.keys()) {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    cols
}

/// A table of JSON objects, one column per key.
fn object_table(class: &str, rows: &[Value]) -> Markup {
    let cols = columns(rows);
    html! {
        table class=(class) {
            tr { @for c in &cols { th { (c) } } }
            @for r in rows { tr { @for c in &cols { td { (text(&r[c.as_str()])) } } } }
        }
    }
}

/// The sum of decimal strings (money on the wire); unparsable ones count 0.
fn sum(values: impl Iterator<Item = String>) -> Decimal {
    values.filter_map(|v| v.parse::<Decimal>().ok()).sum()
}

/// The keys of an entry shown in their own columns; every other key is a
/// dimension.
const ENTRY_COLUMNS: [&str; 5] = ["entry_type", "description", "quantity", "debit", "credit"];

fn ledger_table(ledger: &Value) -> Markup {
    let entries = ledger["entries"].as_array().map_or(&[][..], Vec::as_slice);
    let debit = sum(entries.iter().map(|e| text(&e["debit"])));
    let credit = sum(entries.iter().map(|e| text(&e["credit"])));
    let currency = text(&ledger["currency"]);
    html! {
        table id="ledger" {
            tr { th { "entry type" } th { "description" } th.num { "qty" } th { "dimensions" } th { "currency" } th.num { "debit" } th.num { "credit" } }
            @for e in entries {
                @let dims: Vec<String> = e.as_object().into_iter().flatten()
                    .filter(|(k, _)| !ENTRY_COLUMNS.contains(&k.as_str()))
                    .map(|(k, v)| format!("{k}={}", text(v))).collect();
                tr {
                    td { (text(&e["entry_type"])) }
                    td.description { (text(&e["description"])) }
                    td.num { (text(&e["quantity"])) }
                    td { (dims.join(" · ")) }
                    td { (currency) }
                    td.num { (text(&e["debit"])) }
                    td.num { (text(&e["credit"])) }
                }
            }
            tr.total {
                td colspan="4" { "total" }
                td { (currency) }
                td.num { (text(&ledger["debit"])) }
                td.num { (text(&ledger["credit"])) }
            }
        }
        p id="balance" {
            @if debit == credit {
                span.ok { "Balanced: debits = credits = " (debit) " " (currency) "." }
            } @else {
                span.bad { "NOT balanced: debits " (debit) " ≠ credits " (credit) " " (currency) "." }
            }
        }
    }
}

pub fn order(
    csrf: &str,
    view: &Value,
    attempts: &[DeliveryRecord],
    notice: Option<&str>,
) -> Markup {
    let order_id = text(&view["order_id"]);
    let empty = Vec::new();
    let events = view["events"].as_array().unwrap_or(&empty);
    let registries = view["registries"].as_array().unwrap_or(&empty);
    let body = html! {
        h1 { "Order " code id="order-id" { (order_id) } }
        @if notice == Some("redeliver") {
            p.flash id="notice" { "Redelivery requested: the dispatcher sends the dead letter again, same key and body." }
        }
        h2 { "Events" }
        table id="events" {
            tr { th.num { "stream seq" } th { "received" } th { "event id" } th { "type" } th { "applied" } }
            @for e in events {
                tr {
                    td.num { (text(&e["stream_seq"])) }
                    td { (text(&e["received_at"])) }
                    td { (text(&e["event_id"])) }
                    td { (text(&e["type"])) }
                    td { @if e["applied"] == Value::Bool(true) { "yes" } @else { span.bad { "no: " (text(&e["message"])) } } }
                }
            }
        }
        h2 { "Ledger" }
        @if view["ledger"].is_null() { p.muted { "No valid event yet." } } @else { (ledger_table(&view["ledger"])) }
        @for r in registries {
            @let rid = text(&r["registry_id"]);
            @let status = text(&r["delivery"]["status"]);
            section.registry data-registry=(rid) {
                h2 { "Registry " a href={ "/console/registries/" (rid) } { (rid) } " · " (status_badge(&status)) }
                @if status == "dead" {
                    p { (action_form(&format!("/console/registries/{rid}/orders/{order_id}/redeliver"), csrf, &[], "Redeliver")) }
                }
                h3 { "registry_data (what the receiver answered last)" }
                pre.registry-data { (pretty(&r["registry_data"])) }
                h3 { "Postings" }
                table.postings {
                    tr { th.num { "seq" } th { "idempotency key" } th { "event" } th { "mode" } th { "status" } th.num { "attempts" } th.num { "HTTP" } th { "delivered" } th { "next attempt" } }
                    @for p in r["postings"].as_array().unwrap_or(&empty) {
                        tr {
                            td.num { (text(&p["seq"])) }
                            td { code { (text(&p["idempotency_key"])) } }
                            td { (text(&p["event_type"])) }
                            td { (text(&p["mode"])) @if p["filtered"] == Value::Bool(true) { " (filtered)" } }
                            td { (status_badge(&text(&p["delivery"]["status"]))) }
                            td.num { (text(&p["delivery"]["attempts"])) }
                            td.num { (text(&p["delivery"]["http_status"])) }
                            td { (text(&p["delivery"]["delivered_at"])) }
                            td { (text(&p["delivery"]["next_attempt_at"])) }
                        }
                        @if let Some(entries) = p["ledger_entries"].as_array() {
                            tr { td {} td colspan="8" { (object_table("posting-entries", entries)) } }
                        }
                    }
                }
                h3 { "Attempts" }
                table.attempts {
                    tr { th.num { "seq" } th.num { "attempt" } th { "outcome" } th.num { "HTTP" } th.num { "ms" } th { "error" } th { "response" } th { "at" } th { "next attempt" } }
                    @for a in attempts.iter().filter(|a| a.registry_id == rid) {
                        tr {
                            td.num { (a.seq) }
                            td.num { (a.attempt) }
                            td { (status_badge(DeliveryStatus::from(a.outcome).as_str())) }
                            td.num { @if let Some(s) = a.http_status { (s) } }
                            td.num { (a.duration_ms) }
                            td { @if let Some(e) = &a.error { (e) } }
                            td { @if let Some(x) = &a.response_excerpt { code { (x) } } }
                            td { (crate::admin::orders::rfc3339(a.at)) }
                            td { @if let Some(t) = a.next_attempt_at { (crate::admin::orders::rfc3339(t)) } }
                        }
                    }
                }
            }
        }
    };
    layout(&format!("Order {order_id}"), Nav::Orders, csrf, None, body)
}

/// The order lookup form.
pub fn find_order(csrf: &str) -> Markup {
    let body = html! {
        h1 { "Orders" }
        form.filters method="get" action="/console/orders" {
            label { "order id" input type="text" name="order_id" required; }
            button type="submit" { "Show" }
        }
    };
    layout("Orders", Nav::Orders, csrf, None, body)
}

pub fn export(csrf: &str, registry_ids: &[String]) -> Markup {
    let body = html! {
        h1 { "Export" }
        p.muted { "Postings of one registry stored from the first day to the last (exclusive), UTC, with their delivery status. For a large period use " code { "ledgerline export" } "." }
        form.filters method="get" action="/console/export/download" {
            label { "registry"
                select name="registry" required {
                    @for r in registry_ids { option value=(r) { (r) } }
                }
            }
            label { "from (UTC day)" input type="date" name="from"; }
            label { "to (exclusive)" input type="date" name="to"; }
            label { "format"
                select name="format" { option value="csv" { "CSV" } option value="beancount" { "beancount" } }
            }
            button type="submit" { "Download" }
        }
    };
    layout("Export", Nav::Export, csrf, None, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_from_outside_is_escaped() {
        let view = json!({
            "order_id": "o-1",
            "events": [],
            "ledger": {"currency": "EUR", "debit": "1.00", "credit": "1.00", "entries": [
                {"entry_type": "revenue", "description": "<script>alert(1)</script>", "debit": "0.00", "credit": "1.00"},
                {"entry_type": "receivable", "description": "x", "debit": "1.00", "credit": "0.00"},
            ]},
            "registries": [{"registry_id": "books", "delivery": {"status": "delivered"},
                "registry_data": {"note": "<img src=x onerror=alert(1)>"}, "postings": []}],
        });
        let html = order("t", &view, &[], None).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<img src=x"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("Balanced: debits = credits = 1.00 EUR"));
    }

    #[test]
    fn an_unbalanced_ledger_is_shown_as_such() {
        let ledger = json!({"currency": "EUR", "debit": "2.00", "credit": "1.00", "entries": [
            {"entry_type": "receivable", "debit": "2.00", "credit": "0.00"},
            {"entry_type": "deferred_revenue", "debit": "0.00", "credit": "1.00", "channel": "web"},
        ]});
        let html = ledger_table(&ledger).into_string();
        assert!(html.contains("NOT balanced"), "{html}");
        assert!(html.contains("deferred_revenue") && html.contains("channel=web"));
    }

    #[test]
    fn history_names_the_fields_that_changed() {
        let a = json!({"id": "a", "enabled": true, "url": "u"});
        let b = json!({"id": "a", "enabled": false, "url": "u", "name": "n"});
        assert_eq!(changed_fields(&a, &b), ["enabled", "name"]);
    }
}
