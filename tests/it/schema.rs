//! The input events' JSON Schema (issue 14, `docs/schema/events.schema.json`)
//! against the parser: every event the parser accepts is valid under the
//! schema; every rejection the schema can express is invalid under it and
//! rejected by the parser; the rules only the parser checks are named
//! (docs/schema.md). Also served by the admin API.

use std::path::Path;

use ledgerline::events::{RejectReason, parse_event};
use ledgerline::schema::events_schema;
use serde_json::{Value, json};

use crate::support::{Service, nats, settings};

/// Rejections no JSON Schema can express: they need arithmetic, another
/// field, the subject, the raw bytes or the order's history.
const PARSER_ONLY: [RejectReason; 9] = [
    RejectReason::TooManyDecimals,
    RejectReason::DiscountExceedsLine,
    RejectReason::CurrencyMismatch,
    RejectReason::OrderIdMismatch,
    RejectReason::TooLarge,
    RejectReason::MalformedJson,
    RejectReason::Stale,
    RejectReason::Duplicate,
    RejectReason::Internal,
];

fn validator() -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(events_schema())
        .expect("the schema is a valid JSON Schema")
}

/// The parser's verdict: `None` accepted, else the reason.
fn parsed(v: &Value) -> Option<RejectReason> {
    parse_event(v.to_string().as_bytes(), None)
        .err()
        .map(|r| r.reason)
}

fn reference() -> Value {
    json!({
        "event_id": "7d0c6f0e-7a4e-4f7b-9d2a-0b8f3d1c2e11",
        "type": "order.confirmed",
        "order_id": "2e7f2d6f-0473-4935-8cfb-c11b2caa6dab",
        "occurred_at": "2026-11-22T10:00:00Z",
        "order": {
            "version": 1, "currency": "EUR", "channel": "direct", "prices_include_tax": true,
            "line_items": [
                {"id": "li-1", "product_id": "museum", "option_id": "standard", "unit_type": "adult",
                 "description": "Museum General Admission", "quantity": 2,
                 "unit_price": "11.00", "discount": "0.00", "tax_rate": "0"}
            ],
            "fees": [{"kind": "shipping", "description": "Post", "amount": "4.50", "tax_rate": "0.19"}],
            "payments": [{"payment_id": "p-1", "method": "card", "amount": "26.50", "currency": "EUR"}]
        }
    })
}

fn payment() -> Value {
    json!({
        "event_id": "e-pay-1", "type": "payment.created", "order_id": "o-1",
        "occurred_at": "2026-11-22T10:05:00+01:00",
        "payment": {"payment_id": "p-1", "method": "card", "amount": "-5.00", "currency": "JPY",
                    "date": "2026-11-22"}
    })
}

/// `base` with the value at JSON pointer `at` replaced (`None`: removed).
fn with(base: Value, at: &str, value: Option<Value>) -> Value {
    let mut v = base;
    let (parent, key) = at.rsplit_once('/').expect("a pointer");
    let target = v.pointer_mut(parent).expect("the parent exists");
    match (target, value) {
        (Value::Object(m), Some(x)) => {
            m.insert(key.to_owned(), x);
        }
        (Value::Object(m), None) => {
            m.remove(key);
        }
        (Value::Array(a), Some(x)) => a[key.parse::<usize>().unwrap()] = x,
        (other, _) => panic!("{at}: cannot set in {other}"),
    }
    v
}

#[test]
fn events_the_parser_accepts_are_valid_under_the_schema() {
    let schema = validator();
    let line = "/order/line_items/0";
    let accepted = [
        reference(),
        payment(),
        with(
            reference(),
            "/x_custom",
            Some(json!({"producer": "own field"})),
        ),
        with(reference(), "/order/channel", Some(Value::Null)),
        with(reference(), &format!("{line}/discount"), None),
        with(
            reference(),
            &format!("{line}/product_id"),
            Some(Value::Null),
        ),
        with(reference(), "/order/fees", None),
        with(reference(), "/order/payments", Some(Value::Null)),
        with(
            reference(),
            &format!("{line}/unit_price"),
            Some(json!("11.000")),
        ),
        with(
            reference(),
            &format!("{line}/discount"),
            Some(json!("-0.00")),
        ),
        with(
            reference(),
            &format!("{line}/tax_rate"),
            Some(json!("0.0750000")),
        ),
        with(reference(), &format!("{line}/quantity"), Some(json!(0))),
        with(reference(), &format!("{line}/description"), Some(json!(""))),
        with(reference(), "/type", Some(json!("order.updated"))),
        with(
            with(reference(), "/type", Some(json!("order.cancelled"))),
            "/order",
            None,
        ),
        with(payment(), "/type", Some(json!("payment.written_off"))),
        with(payment(), "/type", Some(json!("payment.deleted"))),
        with(payment(), "/payment/date", None),
    ];
    for (i, ev) in accepted.iter().enumerate() {
        assert_eq!(parsed(ev), None, "case {i}: the parser accepts {ev}");
        let errors: Vec<String> = schema.iter_errors(ev).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "case {i}: {ev}\n{errors:#?}");
    }
}

#[test]
fn what_the_schema_refuses_the_parser_rejects_with_the_same_verdict() {
    let schema = validator();
    let line = "/order/line_items/0";
    let many_lines = Value::Array(vec![reference()["order"]["line_items"][0].clone(); 1_001]);
    let cases: Vec<(&str, Value, RejectReason)> = vec![
        (
            "missing field",
            with(reference(), "/order/currency", None),
            RejectReason::MissingField,
        ),
        (
            "missing event_id",
            with(reference(), "/event_id", None),
            RejectReason::MissingField,
        ),
        (
            "a required field null",
            with(reference(), "/order", Some(Value::Null)),
            RejectReason::MissingField,
        ),
        (
            "a payment event without payment",
            with(payment(), "/payment", None),
            RejectReason::MissingField,
        ),
        (
            "money as a JSON number",
            with(
                reference(),
                &format!("{line}/unit_price"),
                Some(json!(11.0)),
            ),
            RejectReason::MoneyNotString,
        ),
        (
            "money as a JSON integer",
            with(payment(), "/payment/amount", Some(json!(5))),
            RejectReason::MoneyNotString,
        ),
        (
            "money with a comma",
            with(
                reference(),
                &format!("{line}/unit_price"),
                Some(json!("11,00")),
            ),
            RejectReason::InvalidField,
        ),
        (
            "negative money",
            with(
                reference(),
                &format!("{line}/unit_price"),
                Some(json!("-1.00")),
            ),
            RejectReason::NegativeValue,
        ),
        (
            "bad currency code",
            with(reference(), "/order/currency", Some(json!("EURO"))),
            RejectReason::UnknownCurrency,
        ),
        (
            "lower-case currency",
            with(reference(), "/order/currency", Some(json!("eur"))),
            RejectReason::UnknownCurrency,
        ),
        (
            "unknown currency",
            with(payment(), "/payment/currency", Some(json!("XYZ"))),
            RejectReason::UnknownCurrency,
        ),
        (
            "a fund, not a currency",
            with(reference(), "/order/currency", Some(json!("XAU"))),
            RejectReason::UnknownCurrency,
        ),
        (
            "unknown event type",
            with(reference(), "/type", Some(json!("order.shipped"))),
            RejectReason::UnknownType,
        ),
        (
            "type not a string",
            with(reference(), "/type", Some(json!(1))),
            RejectReason::InvalidField,
        ),
        (
            "negative quantity",
            with(reference(), &format!("{line}/quantity"), Some(json!(-1))),
            RejectReason::NegativeValue,
        ),
        (
            "fractional quantity",
            with(reference(), &format!("{line}/quantity"), Some(json!(1.5))),
            RejectReason::InvalidField,
        ),
        (
            "quantity as a string",
            with(reference(), &format!("{line}/quantity"), Some(json!("2"))),
            RejectReason::InvalidField,
        ),
        (
            "huge quantity",
            with(
                reference(),
                &format!("{line}/quantity"),
                Some(json!(1_000_000_001u64)),
            ),
            RejectReason::InvalidField,
        ),
        (
            "tax rate of 100 %",
            with(reference(), &format!("{line}/tax_rate"), Some(json!("1"))),
            RejectReason::TaxRateOutOfRange,
        ),
        (
            "negative tax rate",
            with(
                reference(),
                &format!("{line}/tax_rate"),
                Some(json!("-0.1")),
            ),
            RejectReason::TaxRateOutOfRange,
        ),
        (
            "tax rate with 7 decimals",
            with(
                reference(),
                &format!("{line}/tax_rate"),
                Some(json!("0.1234567")),
            ),
            RejectReason::InvalidField,
        ),
        (
            "order id with a space",
            with(reference(), "/order_id", Some(json!("bad id"))),
            RejectReason::InvalidOrderId,
        ),
        (
            "blank event id",
            with(reference(), "/event_id", Some(json!("  "))),
            RejectReason::InvalidField,
        ),
        (
            "control character",
            with(
                reference(),
                &format!("{line}/description"),
                Some(json!("a\u{7}b")),
            ),
            RejectReason::InvalidField,
        ),
        (
            "long id",
            with(
                reference(),
                &format!("{line}/id"),
                Some(json!("i".repeat(129))),
            ),
            RejectReason::InvalidField,
        ),
        (
            "not a timestamp",
            with(reference(), "/occurred_at", Some(json!("yesterday"))),
            RejectReason::InvalidField,
        ),
        (
            "boolean as text",
            with(reference(), "/order/prices_include_tax", Some(json!("yes"))),
            RejectReason::InvalidField,
        ),
        (
            "negative version",
            with(reference(), "/order/version", Some(json!(-1))),
            RejectReason::InvalidField,
        ),
        (
            "lines not an array",
            with(reference(), "/order/line_items", Some(json!({}))),
            RejectReason::InvalidField,
        ),
        (
            "a line not an object",
            with(reference(), line, Some(json!("li-1"))),
            RejectReason::InvalidField,
        ),
        (
            "too many lines",
            with(reference(), "/order/line_items", Some(many_lines)),
            RejectReason::TooManyLineItems,
        ),
        (
            "not an object",
            json!([reference()]),
            RejectReason::MalformedJson,
        ),
    ];
    for (what, ev, reason) in cases {
        assert!(!schema.is_valid(&ev), "{what}: the schema accepts it");
        assert_eq!(parsed(&ev), Some(reason), "{what}");
    }
}

#[test]
fn the_rules_only_the_parser_checks_pass_the_schema() {
    let schema = validator();
    let line = "/order/line_items/0";
    let cases = [
        (
            "decimals beyond the currency",
            with(
                reference(),
                &format!("{line}/unit_price"),
                Some(json!("11.005")),
            ),
            RejectReason::TooManyDecimals,
        ),
        (
            "a discount over the line",
            with(
                reference(),
                &format!("{line}/discount"),
                Some(json!("30.00")),
            ),
            RejectReason::DiscountExceedsLine,
        ),
        (
            "a payment in another currency",
            with(
                reference(),
                "/order/payments/0/currency",
                Some(json!("USD")),
            ),
            RejectReason::CurrencyMismatch,
        ),
        (
            "an amount over 10^15",
            with(
                reference(),
                &format!("{line}/unit_price"),
                Some(json!("1000000000000001")),
            ),
            RejectReason::InvalidField,
        ),
    ];
    for (what, ev, reason) in cases {
        assert!(schema.is_valid(&ev), "{what}: the schema cannot see it");
        assert_eq!(parsed(&ev), Some(reason), "{what}");
    }
}

/// Every events file under `fixtures/`.
fn fixture_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            fixture_files(&path, out);
        } else if path.file_name().is_some_and(|n| n == "events.ndjson") {
            out.push(path);
        }
    }
}

#[test]
fn every_fixture_event_gets_the_parsers_verdict_from_the_schema() {
    let schema = validator();
    let mut files = Vec::new();
    fixture_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"),
        &mut files,
    );
    assert!(files.len() >= 10, "{files:?}");
    let (mut valid, mut invalid) = (0, 0);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let at = format!("{}:{}", file.display(), i + 1);
            let verdict = parse_event(line.as_bytes(), None).err().map(|r| r.reason);
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                assert_eq!(verdict, Some(RejectReason::MalformedJson), "{at}");
                continue;
            };
            match verdict {
                None => {
                    let errors: Vec<String> =
                        schema.iter_errors(&v).map(|e| e.to_string()).collect();
                    assert!(errors.is_empty(), "{at}: {errors:#?}");
                    valid += 1;
                }
                Some(reason) if PARSER_ONLY.contains(&reason) => {}
                Some(reason) => {
                    assert!(!schema.is_valid(&v), "{at}: rejected ({reason}) but valid");
                    invalid += 1;
                }
            }
        }
    }
    assert!(
        valid > 1_000 && invalid > 0,
        "{valid} valid, {invalid} invalid"
    );
}

#[tokio::test]
async fn the_admin_api_serves_the_published_schema() {
    let nats = nats().await;
    let svc = Service::start(
        settings(&nats.server, ""),
        &[ledgerline::service::Component::Admin],
    )
    .await;
    let published: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/schema/events.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let (status, body) = svc.get("/v1/schema/events").await;
    assert_eq!((status, &body), (200, &published));
    let anonymous = svc
        .http
        .get(svc.url("/v1/schema/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    svc.stop().await;
}

#[tokio::test]
async fn publish_strict_and_the_aggregator_give_the_same_verdict_as_the_schema() {
    let nats = nats().await;
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::process::config_file(dir.path(), &nats.server.url(), "");
    let good = reference();
    let bad = with(
        with(
            with(reference(), "/event_id", Some(json!("e-bad"))),
            "/order_id",
            Some(json!("o-bad")),
        ),
        "/order/line_items/0/unit_price",
        Some(json!(11.0)),
    );
    let late = with(payment(), "/payment/currency", Some(json!("EUR")));
    let schema = validator();
    assert!(schema.is_valid(&good) && !schema.is_valid(&bad) && schema.is_valid(&late));
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, format!("{good}\n\n{bad}\r\n{late}")).unwrap();
    let publish = |strict: bool| {
        let mut cmd = crate::support::process::ledgerline(&["publish"]);
        cmd.arg(&file).arg("--config").arg(&config);
        if strict {
            cmd.arg("--strict");
        }
        let out = cmd.env("LEDGERLINE_LOG", "off").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = publish(true);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with(
            "line 3: rejected by the aggregator's rules: event e-bad: \
             order.line_items[0].unit_price: must be a decimal string like \"11.00\", \
             not a JSON number (money_not_string)\n\
             publish: 3 lines, 3 published, 0 duplicates, 0 refused in "
        ),
        "{err}"
    );
    assert!(
        err.ends_with(
            "publish --strict: 1 published lines will be rejected (ledger.rejected.<reason>)\n"
        ),
        "{err}"
    );
    // Without --strict the verdict is left to the aggregator, as before.
    let (code, err) = publish(false);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("rejected"), "{err}");

    let svc = Service::start(
        settings(&nats.server, ""),
        &[
            ledgerline::service::Component::Aggregator,
            ledgerline::service::Component::Admin,
        ],
    )
    .await;
    crate::support::eventually(
        "the aggregator's rejection",
        std::time::Duration::from_secs(20),
        || async {
            crate::support::count_ledger(&nats.js, "ledger.rejected.money_not_string").await == 1
        },
    )
    .await;
    assert_eq!(
        crate::support::count_ledger(&nats.js, "ledger.rejected.>").await,
        1
    );
    svc.stop().await;
}
