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

/// The reference event of SPEC 1 (`fixtures/golden/reference`), with a fee.
fn reference() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/golden/reference/events.ndjson"
    ))
    .unwrap();
    let mut v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    v["order"]["fees"] =
        json!([{"kind": "shipping", "description": "Post", "amount": "4.50", "tax_rate": "0.19"}]);
    v
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
fn what_the_schema_refuses_the_parser_rejects_and_the_rest_is_parser_only() {
    use RejectReason::*;
    let schema = validator();
    let set = |at: &str, v: Value| with(reference(), at, Some(v));
    let drop = |at: &str| with(reference(), at, None);
    let line = |field: &str, v: Value| set(&format!("/order/line_items/0/{field}"), v);
    let pay = |at: &str, v: Option<Value>| with(payment(), at, v);
    let many_lines = Value::Array(vec![reference()["order"]["line_items"][0].clone(); 1_001]);
    let cases: Vec<(&str, Value, RejectReason)> = vec![
        ("missing field", drop("/order/currency"), MissingField),
        ("missing event_id", drop("/event_id"), MissingField),
        (
            "a required field null",
            set("/order", Value::Null),
            MissingField,
        ),
        (
            "a payment event without payment",
            pay("/payment", None),
            MissingField,
        ),
        (
            "money as a JSON number",
            line("unit_price", json!(11.0)),
            MoneyNotString,
        ),
        (
            "money as a JSON integer",
            pay("/payment/amount", Some(json!(5))),
            MoneyNotString,
        ),
        (
            "money with a comma",
            line("unit_price", json!("11,00")),
            InvalidField,
        ),
        (
            "negative money",
            line("unit_price", json!("-1.00")),
            NegativeValue,
        ),
        (
            "bad currency code",
            set("/order/currency", json!("EURO")),
            UnknownCurrency,
        ),
        (
            "lower-case currency",
            set("/order/currency", json!("eur")),
            UnknownCurrency,
        ),
        (
            "unknown currency",
            pay("/payment/currency", Some(json!("XYZ"))),
            UnknownCurrency,
        ),
        (
            "a fund, not a currency",
            set("/order/currency", json!("XAU")),
            UnknownCurrency,
        ),
        (
            "unknown event type",
            set("/type", json!("order.shipped")),
            UnknownType,
        ),
        ("type not a string", set("/type", json!(1)), InvalidField),
        (
            "negative quantity",
            line("quantity", json!(-1)),
            NegativeValue,
        ),
        (
            "fractional quantity",
            line("quantity", json!(1.5)),
            InvalidField,
        ),
        (
            "quantity as a string",
            line("quantity", json!("2")),
            InvalidField,
        ),
        (
            "huge quantity",
            line("quantity", json!(1_000_000_001u64)),
            InvalidField,
        ),
        (
            "tax rate of 100 %",
            line("tax_rate", json!("1")),
            TaxRateOutOfRange,
        ),
        (
            "negative tax rate",
            line("tax_rate", json!("-0.1")),
            TaxRateOutOfRange,
        ),
        (
            "tax rate with 7 decimals",
            line("tax_rate", json!("0.1234567")),
            InvalidField,
        ),
        (
            "order id with a space",
            set("/order_id", json!("bad id")),
            InvalidOrderId,
        ),
        (
            "blank event id",
            set("/event_id", json!("  ")),
            InvalidField,
        ),
        (
            "control character",
            line("description", json!("a\u{7}b")),
            InvalidField,
        ),
        ("long id", line("id", json!("i".repeat(129))), InvalidField),
        (
            "not a timestamp",
            set("/occurred_at", json!("yesterday")),
            InvalidField,
        ),
        (
            "boolean as text",
            set("/order/prices_include_tax", json!("yes")),
            InvalidField,
        ),
        (
            "negative version",
            set("/order/version", json!(-1)),
            InvalidField,
        ),
        (
            "lines not an array",
            set("/order/line_items", json!({})),
            InvalidField,
        ),
        (
            "a line not an object",
            set("/order/line_items/0", json!("li-1")),
            InvalidField,
        ),
        (
            "too many lines",
            set("/order/line_items", many_lines),
            TooManyLineItems,
        ),
        ("not an object", json!([reference()]), MalformedJson),
        // Parser-only (docs/schema.md): valid under the schema.
        (
            "decimals beyond the currency",
            line("unit_price", json!("11.005")),
            TooManyDecimals,
        ),
        (
            "a discount over the line",
            line("discount", json!("30.00")),
            DiscountExceedsLine,
        ),
        (
            "a payment in another currency",
            set("/order/payments/0/currency", json!("USD")),
            CurrencyMismatch,
        ),
        (
            AMOUNT_OVER_LIMIT,
            line("unit_price", json!("1000000000000001")),
            InvalidField,
        ),
    ];
    for (what, ev, reason) in cases {
        let parser_only =
            PARSER_ONLY.contains(&reason) && reason != MalformedJson || what == AMOUNT_OVER_LIMIT;
        assert_eq!(
            schema.is_valid(&ev),
            parser_only,
            "{what}: valid under the schema?"
        );
        assert_eq!(parsed(&ev), Some(reason), "{what}");
    }
}

/// The one `invalid_field` rule only the parser checks among the cases.
const AMOUNT_OVER_LIMIT: &str = "an amount over 10^15";

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
    let anonymous = reqwest::get(svc.url("/v1/schema/events")).await.unwrap();
    assert_eq!(anonymous.status(), 401, "the token is required");
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
