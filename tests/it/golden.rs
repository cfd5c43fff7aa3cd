//! Golden files: `fixtures/golden/<case>/` holds a config, an events file,
//! the exact NDJSON postings expected and the rejection lines expected.
//! Run with `UPDATE_GOLDEN=1` to rewrite the expected files after a
//! deliberate change, then review the diff line by line.

use std::path::{Path, PathBuf};
use std::process::Output;

use ledgerline::config::Config;
use ledgerline::offline::{Layout, run_postings};

use crate::support::{self, process};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/golden")
}

fn run_case(dir: &Path) -> (String, String) {
    let text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let settings = Config::from_toml_with_env(&text, "config.toml", std::iter::empty())
        .unwrap()
        .validate()
        .unwrap();
    let events = std::fs::File::open(dir.join("events.ndjson")).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    run_postings(
        settings.ledger,
        settings.registries,
        std::io::BufReader::new(events),
        &mut out,
        &mut err,
        Layout::Ndjson,
    )
    .unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

/// `ledgerline postings --config <config> --events <events>`.
fn postings_cli(config: &Path, events: &Path) -> Output {
    process::ledgerline(&["postings", "--config"])
        .arg(config)
        .arg("--events")
        .arg(events)
        .output()
        .unwrap()
}

#[test]
fn every_golden_case_produces_exactly_its_expected_postings() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases = 0;
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("config.toml").exists() {
            continue;
        }
        cases += 1;
        let (out, err) = run_case(&dir);
        let expected_out = dir.join("expected.ndjson");
        let expected_err = dir.join("expected.stderr");
        if update && dir.file_name().unwrap() != "reference" {
            std::fs::write(&expected_out, &out).unwrap();
            std::fs::write(&expected_err, &err).unwrap();
            continue;
        }
        let want_out = std::fs::read_to_string(&expected_out).unwrap();
        let want_err = std::fs::read_to_string(&expected_err).unwrap_or_default();
        assert_eq!(out, want_out, "postings of {}", dir.display());
        assert_eq!(err, want_err, "rejections of {}", dir.display());
    }
    assert!(cases >= 10, "only {cases} golden cases found");
}

#[test]
fn the_reference_example_is_byte_exact_through_the_cli() {
    // expected.ndjson of this case was written by hand from the contract,
    // never generated, and UPDATE_GOLDEN leaves it alone.
    let dir = golden_dir().join("reference");
    let out = postings_cli(&dir.join("config.toml"), &dir.join("events.ndjson"));
    assert!(out.status.success());
    let want = std::fs::read(dir.join("expected.ndjson")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&want)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 accepted, 0 rejected, 1 postings"),
        "{stderr}"
    );
}

#[test]
fn bad_events_are_reported_one_line_each_and_the_rest_are_processed() {
    let dir = golden_dir().join("rejections");
    let out = postings_cli(&dir.join("config.toml"), &dir.join("events.ndjson"));
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(lines.len(), 9, "{stderr}");
    support::assert_a_line_starts_with(&lines, "line 2: event x1: order.line_items[0].unit_price:");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn an_invalid_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("roundng = \"half_even\"\n", "roundng"),
        (
            "[[registry]]\nid = \"a\"\nurl = \"https://x.example\"\nentry_types = [\"revnue\"]\n",
            "registry[0].entry_types[0]",
        ),
        // postings validates what it uses: not the url (issue 14).
        (
            "[[registry]]\nid = \"a\"\nurl = \"http://x.example\"\ngroup_by = [\"colour\"]\n",
            "registry[0].group_by",
        ),
        ("tax_rounding = \"sometimes\"\n", "tax_rounding"),
    ];
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, "").unwrap();
    for (text, key) in cases {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let out = postings_cli(&config, &events);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
}
