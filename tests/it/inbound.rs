//! Inbound webhooks (SPEC 10): the mapping of each kind's reference
//! payloads against golden files (`fixtures/inbound/`), and the listener
//! end to end through a real nats-server and the running service.

use std::path::{Path, PathBuf};

use ledgerline::mapping::{self, LineRef, Plan};
use ledgerline::source::SourceConfig;
use serde::Deserialize;

fn inbound_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/inbound")
}

#[derive(Deserialize)]
struct Cases {
    source: SourceConfig,
    case: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    payload: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    lines: Vec<(String, u64)>,
}

/// What a case produces, as the `.out` file spells it.
fn render(plan: Result<Plan, ledgerline::events::Rejection>, lines: &[LineRef]) -> String {
    let events = match plan {
        Ok(Plan::Store(events)) => events,
        Ok(Plan::Redeem(r)) => r.events(lines),
        Ok(Plan::Ignored { topic }) => return format!("ignored {topic}\n"),
        Err(r) => return format!("rejected {} {}: {}\n", r.reason, r.field, r.message),
    };
    let mut out = String::new();
    for e in events {
        let event: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(event["event_id"].as_str(), Some(e.msg_id.as_str()));
        assert_eq!(event["order_id"].as_str(), Some(e.order_id.as_str()));
        out.push_str(&String::from_utf8(e.payload).unwrap());
        out.push('\n');
    }
    out
}

#[test]
fn every_reference_payload_maps_to_exactly_its_golden_events() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut checked = 0;
    for kind in ["marketplace_orders", "pos_payments", "gateway", "events"] {
        let dir = inbound_dir().join(kind);
        let cases: Cases =
            toml::from_str(&std::fs::read_to_string(dir.join("cases.toml")).unwrap()).unwrap();
        let source = cases.source.validate().unwrap();
        for case in cases.case {
            let payload = case.payload.as_deref().unwrap_or(&case.name);
            let body = std::fs::read(dir.join(format!("{payload}.json"))).unwrap();
            let lines: Vec<LineRef> = case
                .lines
                .iter()
                .map(|(id, quantity)| LineRef {
                    id: id.clone(),
                    quantity: *quantity,
                })
                .collect();
            let got = render(mapping::plan(&source, case.topic.as_deref(), &body), &lines);
            let out = dir.join(format!("{}.out", case.name));
            if update {
                std::fs::write(&out, &got).unwrap();
            }
            let want = std::fs::read_to_string(&out).unwrap_or_default();
            assert_eq!(
                got, want,
                "{kind}/{}: output differs from {out:?}",
                case.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} cases");
}
