//! The offline engine, as the tests' reference: what the service must
//! post for a list of events (`ledgerline::engine::Engine`, the code
//! `ledgerline postings` runs), and the events the tests publish.

use std::collections::BTreeMap;
use std::path::Path;

use ledgerline::config::Settings;
use ledgerline::engine::Engine;
use ledgerline::events::parse_event;
use ledgerline::posting::Posting;
use serde_json::{Value, json};

/// (registry, order, seq): a posting's place.
pub type PostingKey = (String, String, u64);

/// The postings the engine makes of `events` (one JSON event each), in
/// event order then registry order. Every event must parse and apply.
pub fn postings<S: AsRef<str>>(settings: &Settings, events: &[S]) -> Vec<Posting> {
    let mut engine = Engine::new(settings.ledger, settings.registries.clone());
    let mut out = Vec::new();
    for e in events {
        let ev = parse_event(e.as_ref().as_bytes(), None).expect("test events are valid");
        out.extend(engine.process(&ev).expect("test events apply"));
    }
    out
}

/// The postings the engine makes of the NDJSON `events`, skipping the
/// lines it rejects or refuses (as the aggregator does).
pub fn postings_skipping_rejected(settings: &Settings, events: &str) -> Vec<Posting> {
    let mut engine = Engine::new(settings.ledger, settings.registries.clone());
    let mut out = Vec::new();
    for line in events.lines().filter(|l| !l.trim().is_empty()) {
        if let Ok(ev) = parse_event(line.as_bytes(), None)
            && let Ok(ps) = engine.process(&ev)
        {
            out.extend(ps);
        }
    }
    out
}

/// (registry, order, seq) → request body (registry_data `{}`), as
/// `ledgerline postings` prints them for the NDJSON `events`.
pub fn offline_postings(settings: &Settings, events: &str) -> BTreeMap<PostingKey, Value> {
    let mut out = Vec::new();
    ledgerline::offline::run_postings(
        settings.ledger,
        settings.registries.clone(),
        events.as_bytes(),
        &mut out,
        Vec::new(),
        ledgerline::offline::Layout::Ndjson,
    )
    .expect("the offline engine runs over test events");
    String::from_utf8(out)
        .expect("postings are UTF-8")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a posting line is JSON");
            let key = (
                v["registry_id"].as_str().unwrap().to_owned(),
                v["body"]["order_id"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            );
            (key, v["body"].clone())
        })
        .collect()
}

/// The body text of a posting with registry_data `{}`, keyed by its place.
pub fn body_text(p: &Posting) -> (PostingKey, String) {
    (
        (p.registry_id.clone(), p.order_id.as_str().to_owned(), p.seq),
        serde_json::to_string(&p.body(&json!({}))).expect("a body serialises"),
    )
}

/// `fixtures/sample/events.ndjson`.
pub fn fixture_events() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sample/events.ndjson"),
    )
    .expect("the sample events are committed")
}

/// An event for `order` at `version` (1: confirmed, later: updated) with
/// `adults` museum tickets at 11.00 EUR.
pub fn ticket_event(order: &str, version: u64, adults: u32) -> String {
    json!({
        "event_id": format!("{order}-v{version}"),
        "type": if version == 1 { "order.confirmed" } else { "order.updated" },
        "order_id": order,
        "occurred_at": "2026-11-22T10:00:00Z",
        "order": {
            "version": version, "currency": "EUR", "channel": "direct",
            "prices_include_tax": true,
            "line_items": [{
                "id": "li-1", "product_id": "museum", "option_id": "standard",
                "unit_type": "adult", "description": "Museum General Admission",
                "quantity": adults, "unit_price": "11.00", "discount": "0.00", "tax_rate": "0"
            }],
            "fees": []
        }
    })
    .to_string()
}

/// `orders` orders, NDJSON: three versions each, a payment, and every
/// fourth one cancelled.
pub fn many_events(orders: usize) -> String {
    let mut out = String::new();
    for o in 0..orders {
        let id = format!("ord-{o:04}");
        for v in 1..=3u64 {
            out.push_str(&ticket_event(&id, v, v as u32 + (o % 3) as u32));
            out.push('\n');
        }
        out.push_str(&json!({"event_id": format!("{id}-pay"), "type": "payment.created", "order_id": id,
            "occurred_at": "2026-11-22T11:00:00Z",
            "payment": {"payment_id": "p1", "method": "card", "amount": "10.00", "currency": "EUR"}}).to_string());
        out.push('\n');
        if o % 4 == 0 {
            out.push_str(&json!({"event_id": format!("{id}-cancel"), "type": "order.cancelled", "order_id": id,
                "occurred_at": "2026-11-22T12:00:00Z"}).to_string());
            out.push('\n');
        }
    }
    out
}
