//! The demo: its committed dataset, and (below) a reduced-size run end to end.

use std::path::Path;

use ledgerline::demo::dataset::{ORDERS, SEED, generate};

use crate::support;

#[test]
fn the_committed_demo_dataset_is_what_the_generator_makes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/events.ndjson");
    let made: String = generate(ORDERS, SEED)
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    if std::env::var_os("UPDATE_DEMO_DATASET").is_some() {
        std::fs::write(&path, &made).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == made,
        "fixtures/demo/events.ndjson is stale: run UPDATE_DEMO_DATASET=1 cargo test --test it demo"
    );
    assert!(made.lines().count() > 2_000, "a few thousand events");
}

#[test]
fn a_reduced_demo_runs_end_to_end_and_leaves_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline"))
        .args(["demo", "--orders", "60", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let value = |label: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} in the summary:\n{stdout}"))
            .trim()
            .to_owned()
    };
    assert_eq!(value("orders"), "60");
    // The console's address and token, and that it stopped with the demo.
    let console = value("console");
    assert!(
        console.starts_with("http://127.0.0.1:") && console.contains("/console (admin token "),
        "{stdout}"
    );
    assert!(
        console.ends_with("stopped with the demo; --keep leaves it up)"),
        "{stdout}"
    );
    // The console is announced while the demo runs.
    support::assert_a_line_starts_with(stderr.lines(), "demo: console http://127.0.0.1:");
    assert_eq!(value("dead letters"), "1", "{stdout}");
    assert_eq!(value("redelivered"), "1", "{stdout}");
    assert!(
        value("channel webhooks").starts_with("5 accepted"),
        "one webhook of each source kind: {stdout}"
    );
    assert!(value("balanced").starts_with("yes"), "{stdout}");
    let postings: u64 = value("postings").parse().unwrap();
    let delivered: u64 = value("delivered").parse().unwrap();
    assert!(postings > 100 && delivered == postings, "{stdout}");
    assert_eq!(
        value("verified"),
        format!("{postings} postings match a replay of the events"),
        "{stdout}"
    );
    assert!(
        value("retries").parse::<u64>().unwrap() > 0,
        "the failure burst shows retries:\n{stdout}"
    );
    assert!(
        value("rejected").parse::<u64>().unwrap() > 0,
        "the poison messages are rejected:\n{stdout}"
    );
    assert!(stdout.contains("(bean-check: OK)"), "{stdout}");

    // The files: a CSV with the SPEC 5 header and one row per entry, and a
    // beancount ledger.
    let csv = std::fs::read_to_string(dir.path().join("ledger.csv")).unwrap();
    assert!(csv.starts_with(
        "posting_id,posted_at,registry_id,order_id,seq,event_id,event_type,entry_type,"
    ));
    assert!(
        csv.lines().count() > postings as usize,
        "fewer rows than postings"
    );
    let beancount = std::fs::read_to_string(dir.path().join("ledger.beancount")).unwrap();
    assert!(beancount.contains("open "), "no accounts opened");
}
