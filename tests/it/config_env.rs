//! Configuration the way deployments pass it (issue 14): the file, the
//! `LEDGERLINE_*` variables and the flags layered in that order, errors
//! naming the variable or the file's key and line, an unrelated
//! `LEDGERLINE_*` variable harmless, and `postings` validating only what
//! it uses while `run` refuses the same file.

use std::path::Path;
use std::process::Stdio;

use crate::support::nats;
use crate::support::process::{config_file, ledgerline};

/// Nothing listens there: a command that connects fails naming the URL.
const NO_NATS_1: &str = "nats://127.0.0.1:1";
const NO_NATS_2: &str = "nats://127.0.0.1:2";
const NO_NATS_3: &str = "nats://127.0.0.1:3";

/// Runs `ledgerline args` with only `env` of the `LEDGERLINE_*` variables
/// (logs as text at `warn`): (exit code, stdout, stderr).
fn run_with(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = ledgerline(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("LEDGERLINE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("LEDGERLINE_LOG", "warn")
        .env("LEDGERLINE_LOG_FORMAT", "text")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `ledgerline postings` of the sample events with `config`.
fn postings(config: &Path) -> (Option<i32>, String, String) {
    let events = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sample/events.ndjson");
    run_with(
        &["postings", "--config", path(config), "--events", events],
        &[],
    )
}

#[test]
fn the_environment_overrides_the_file_and_a_flag_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), NO_NATS_1, "");
    let args = ["verify", "--config", path(&config)];
    let (code, _, err) = run_with(&args, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(NO_NATS_1), "the file's URL: {err}");

    let env = [("LEDGERLINE_NATS_URL", NO_NATS_2)];
    let (code, _, err) = run_with(&args, &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(NO_NATS_2), "the variable's URL: {err}");

    let with_flag = ["verify", "--config", path(&config), "--nats-url", NO_NATS_3];
    let (code, _, err) = run_with(&with_flag, &env);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(NO_NATS_3), "the flag's URL: {err}");
    assert!(!err.contains(NO_NATS_2), "{err}");
}

#[test]
fn nested_keys_and_bad_values_in_the_environment_name_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        NO_NATS_1,
        "[smtp]\nhost = \"127.0.0.1\"\nfrom = \"ledgerline@example.com\"\n",
    );
    let args = ["verify", "--config", path(&config)];
    let cases: [(&str, &str, &str); 5] = [
        (
            "LEDGERLINE_SMTP__PORT",
            "twenty-five",
            "ledgerline: LEDGERLINE_SMTP__PORT: smtp.port: invalid type: found string \"twenty-five\", expected u16\n",
        ),
        (
            "LEDGERLINE_SMTP__TLS",
            "sometimes",
            "ledgerline: config smtp.tls: must be none, starttls or tls\n",
        ),
        (
            "LEDGERLINE_DELIVERY__MAX_IN_FLIGHT",
            "0",
            "ledgerline: config delivery.max_in_flight: must be between 1 and 100000\n",
        ),
        (
            "LEDGERLINE_SMTP_HOST",
            "127.0.0.1",
            "ledgerline: LEDGERLINE_SMTP_HOST: keys of [smtp] take a double underscore: LEDGERLINE_SMTP__HOST\n",
        ),
        (
            "LEDGERLINE_SOURCE",
            "[]",
            "ledgerline: LEDGERLINE_SOURCE: [[source]] is a list of tables, set in the config file or with `ledgerline source apply`, not from the environment\n",
        ),
    ];
    for (var, value, want) in cases {
        let (code, _, err) = run_with(&args, &[(var, value)]);
        assert_eq!((code, err.as_str()), (Some(2), want), "{var}={value}");
    }
    // A nested variable that is valid reaches the configuration: the
    // command goes on to connect.
    let (code, _, err) = run_with(&args, &[("LEDGERLINE_SMTP__PORT", "2525")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot connect to NATS"), "{err}");
}

#[test]
fn an_unknown_key_in_the_file_is_refused_naming_it_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), NO_NATS_1, "[delivery]\nmax_in_flihgt = 4\n");
    let (code, _, err) = run_with(&["verify", "--config", path(&config)], &[]);
    assert_eq!(code, Some(2), "{err}");
    let want = format!(
        "ledgerline: config file {}: line 5, column 1: ",
        config.display()
    );
    assert!(err.starts_with(&want), "{err}");
    assert!(err.contains("unknown field `max_in_flihgt`"), "{err}");
}

#[tokio::test]
async fn an_unrelated_ledgerline_variable_is_warned_about_and_harmless() {
    let nats = nats().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), NO_NATS_1, "");
    let url = nats.server.url();
    let env = [
        ("LEDGERLINE_HOME", "/opt/ledgerline"),
        ("LEDGERLINE_NATS_URL", url.as_str()),
    ];
    let (code, out, err) = run_with(
        &["registry", "list", "--json", "--config", path(&config)],
        &env,
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "", "no registry yet");
    assert_eq!(
        err.matches("LEDGERLINE_HOME is not a configuration setting and is ignored")
            .count(),
        1,
        "warned once: {err}"
    );
}

#[test]
fn postings_runs_on_a_config_that_run_refuses_for_what_postings_does_not_use() {
    let dir = tempfile::tempdir().unwrap();
    let registry = "[[registry]]\nid = \"acme\"\nurl = \"URL\"\n";
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        registry.replace("URL", "https://accounting.example/hooks"),
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "admin_token = \"short\"\nadmin_listen = \"nowhere\"\nlease_ttl = \"1s\"\n\
             [smtp]\nhost = \"h\"\nfrom = \"not an address\"\n{}notify_emails = [\"ops@example.com\"]\n",
            registry.replace("URL", "not a url")
        ),
    )
    .unwrap();
    let (code, want, err) = postings(&good);
    assert_eq!(code, Some(0), "{err}");
    assert!(!want.is_empty());
    let (code, got, err) = postings(&bad);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(got, want, "the same postings");

    let (code, _, err) = run_with(&["run", "--config", path(&bad)], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("ledgerline: config admin_token:"), "{err}");

    // What postings uses is still validated, naming the key.
    let shape = dir.path().join("shape.toml");
    std::fs::write(
        &shape,
        format!(
            "{}group_by = [\"colour\"]\n",
            registry.replace("URL", "not a url")
        ),
    )
    .unwrap();
    let (code, _, err) = postings(&shape);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("ledgerline: config registry[0].group_by"),
        "{err}"
    );
}
