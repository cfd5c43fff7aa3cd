//! `records`: bytes → the parsers of what is stored on LEDGER subjects
//! (`ledgerline::records`) and what `dispatcher::state` builds from them.
//!
//! The input is lines. Every line is parsed as each record type
//! (`StoredPosting`, `DeliveryRecord`, `RegistryDataRecord`, `AlertRecord`,
//! `ControlRecord`); what parses must write back and read back the same, and
//! a stored posting must render its request body. Then, as
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

use ledgerline::dispatcher::state::{LastDelivery, OrderDeliveries, Progress};
use ledgerline::records::{
    AlertRecord, ControlRecord, DeliveryRecord, RegistryDataRecord, StoredPosting,
};

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
