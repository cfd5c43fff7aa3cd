//! `records`: bytes → the parsers of what is stored on LEDGER subjects
//! (`ledgerline::records`) and what `dispatcher::state` builds from them.
//!
//! The input is lines. Every line is parsed as each record type
//! (`StoredPosting`, `DeliveryRecord`, `RegistryDataRecord`, `AlertRecord`,
//! `ControlRecord`); what parses must write back and read back the same, and
//! a stored posting must render its request body and its totals (as
//! `export` and `verify` do), and the next posting must build from its
//! cursor (as the aggregator does after a restart) or be refused with an
//! error, never a panic. Then, as
//! `Progress::load` does: line 1 is the last registry_data record, line 2
//! the last delivery record, lines 3 and 4 the round headers
//! (`Ledgerline-Round-Attempt`, `Ledgerline-Round-Started`), line 5 the
//! posting count; the progress is summarised (`current`,
//! `next_attempt_numbers`, `OrderDeliveries::new`). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use ledgerline::events::parse_event;
use ledgerline::ledger::{LedgerOptions, derive};
use ledgerline::order::OrderState;
use ledgerline::posting::build;
use ledgerline::registry::{Registry, RegistryConfig, TargetPolicy};
use std::sync::LazyLock;

use ledgerline::dispatcher::state::{LastDelivery, OrderDeliveries, Progress};
use ledgerline::records::{
    AlertRecord, ControlRecord, DeliveryRecord, RegistryDataRecord, StoredPosting,
};

/// An event, its order's ledger and two registries (delta and full mode)
/// to build a next posting with.
static NEXT: LazyLock<(
    ledgerline::events::Event,
    ledgerline::ledger::Ledger,
    Vec<Registry>,
)> = LazyLock::new(|| {
    let event = parse_event(
            br#"{"event_id":"e9","type":"order.updated","order_id":"ord-1","occurred_at":"2026-11-22T10:00:00Z","order":{"version":9,"currency":"EUR","channel":"web","prices_include_tax":true,"line_items":[{"id":"l1","product_id":"p","option_id":"o","unit_type":"adult","description":"Adult Ticket","quantity":2,"unit_price":"11.60","discount":"0.00","tax_rate":"0.16"}],"fees":[],"payments":[{"payment_id":"pay-1","method":"card","amount":"5.00","currency":"EUR"}]}}"#,
            None,
        )
        .expect("a fixed, valid event");
    let mut state = OrderState::new(event.order_id.clone());
    state.apply(&event).expect("a fixed, valid event");
    let ledger = derive(&state, &LedgerOptions::default()).expect("a fixed, valid order");
    let registries = ["", "posting_mode = \"full\"\n"]
        .iter()
        .map(|extra| {
            let text =
                format!("id = \"r\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\n{extra}");
            let config: RegistryConfig = toml::from_str(&text).expect("a fixed registry");
            config
                .validate(&TargetPolicy::default())
                .expect("a fixed registry")
        })
        .collect();
    (event, ledger, registries)
});

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    line: &[u8],
) -> Option<T> {
    let v: T = serde_json::from_slice(line).ok()?;
    let written = serde_json::to_vec(&v).expect("a parsed record serialises");
    let back: T = serde_json::from_slice(&written).unwrap_or_else(|e| {
        panic!(
            "record does not read back: {e}\n{}",
            String::from_utf8_lossy(&written)
        )
    });
    assert_eq!(back, v, "record changed when written back");
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').take(8).collect();
    for line in &lines {
        if let Some(sp) = round_trip::<StoredPosting>(line) {
            let empty = Value::Object(Default::default());
            let body = serde_json::to_vec(&sp.posting.body(&empty)).expect("a body serialises");
            assert!(!body.is_empty());
            let _ = sp.posting.debit_credit();
            let _ = sp.posting.sum();
            let (event, ledger, registries) = &*NEXT;
            for r in registries {
                if let Ok((next, cursor)) = build(r, event, ledger, &sp.posting.cursor()) {
                    assert_eq!(next.seq, sp.posting.seq + 1);
                    assert_eq!(cursor.seq, next.seq);
                }
            }
        }
        round_trip::<DeliveryRecord>(line);
        round_trip::<RegistryDataRecord>(line);
        round_trip::<AlertRecord>(line);
        round_trip::<ControlRecord>(line);
    }

    let line = |i: usize| lines.get(i).copied().unwrap_or_default();
    let text = |i: usize| std::str::from_utf8(line(i)).ok();
    let mut p = Progress {
        registry_id: "r".into(),
        order_id: "o".into(),
        delivered_seq: 0,
        registry_data: Value::Object(Default::default()),
        registry_data_stream_seq: 0,
        delivered_posting_stream_seq: 0,
        last_delivery: None,
    };
    if let Ok(rd) = serde_json::from_slice::<RegistryDataRecord>(line(0)) {
        p.delivered_seq = rd.seq;
        p.registry_data = rd.registry_data;
        p.registry_data_stream_seq = 7;
    }
    if let Ok(record) = serde_json::from_slice::<DeliveryRecord>(line(1)) {
        let round_attempt = text(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(record.attempt);
        let round_started_at = text(3)
            .and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok())
            .unwrap_or(record.at);
        p.last_delivery = Some(LastDelivery {
            record,
            stream_seq: 9,
            round_attempt,
            round_started_at,
        });
    }
    let postings: u64 = text(4).and_then(|v| v.parse().ok()).unwrap_or(1);
    let _ = p.current();
    let _ = p.next_attempt_numbers();
    let summary = OrderDeliveries::new(&p, postings);
    assert!(summary.delivered <= summary.postings);
    serde_json::to_vec(&summary).expect("a summary serialises");
});
