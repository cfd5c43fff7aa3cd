//! The command line's error paths: each message and exit code, exactly
//! (main.rs only maps what `ledgerline::cli` returns; this keeps the
//! wording and the codes from drifting). No NATS: the ones that need it
//! are pointed at a port where nothing listens.

use std::path::Path;
use std::process::{Command, Stdio};

const NO_NATS: &str = "nats://127.0.0.1:1";

/// Runs `ledgerline args` with no configuration from the environment and
/// no logs: (exit code, stdout, stderr).
fn ledgerline(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ledgerline"));
    cmd.args(args)
        .stdin(Stdio::null())
        .env("LEDGERLINE_LOG", "off");
    for (k, _) in std::env::vars() {
        if k.starts_with("LEDGERLINE_") && k != "LEDGERLINE_LOG" {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn each_command_names_what_went_wrong_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let missing = shown(&dir.path().join("missing"));
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ledgerline.toml");
    let not_found = "No such file or directory (os error 2)";

    // Exact stderr, exit code.
    let exact: Vec<(Vec<&str>, i32, String)> = vec![
        (
            vec!["postings", "--config", &missing, "--events", "-"],
            2,
            format!("ledgerline: cannot read config file {missing}: {not_found}\n"),
        ),
        (
            vec!["postings", "--config", config, "--events", &missing],
            2,
            format!("ledgerline: cannot open events file {missing}: {not_found}\n"),
        ),
        (
            vec!["postings", "--config", config, "--events", "-"],
            0,
            "postings: 0 events read, 0 accepted, 0 rejected, 0 postings\n".to_owned(),
        ),
        (
            vec!["publish", &missing, "--nats-url", NO_NATS],
            1,
            format!("ledgerline: opening {missing}: {not_found}\n"),
        ),
        (
            vec!["export", "--nats-url", NO_NATS, "--registry", "BAD ID"],
            2,
            "ledgerline: \"BAD ID\" is not a registry id ([a-z0-9_-]{1,64})\n".to_owned(),
        ),
        (
            vec!["registry", "apply", "-f", &missing, "--nats-url", NO_NATS],
            2,
            format!("ledgerline: cannot read {missing}: {not_found}\n"),
        ),
        (
            vec!["receiver", "--listen", "127.0.0.1:0", "--secret", "nope"],
            2,
            "ledgerline: --secret: must start with \"whsec_\" followed by base64\n".to_owned(),
        ),
        (
            vec!["run", "--nats-url", NO_NATS, "--admin-listen", "nowhere"],
            2,
            "ledgerline: config admin_listen: \"nowhere\" is not an address like \
             \"127.0.0.1:8088\"\n"
                .to_owned(),
        ),
    ];
    for (args, code, stderr) in exact {
        let (got_code, stdout, got_stderr) = ledgerline(&args);
        assert_eq!(got_stderr, stderr, "{args:?}");
        assert_eq!(got_code, Some(code), "{args:?}: {got_stderr}");
        assert_eq!(stdout, "", "{args:?}");
    }

    // Stderr that ends in the operating system's words: its start, exit 1.
    let out_file = shown(&dir.path().join("missing").join("ledger.csv"));
    let connect = format!("ledgerline: cannot connect to NATS at {NO_NATS}: ");
    let prefixed: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["export", "--nats-url", NO_NATS, "--out", &out_file],
            format!("ledgerline: creating {out_file}: {not_found}"),
        ),
        (
            vec!["receiver", "--listen", "192.0.2.1:1"],
            "ledgerline: cannot listen on 192.0.2.1:1: ".to_owned(),
        ),
        (vec!["verify", "--nats-url", NO_NATS], connect.clone()),
        (vec!["export", "--nats-url", NO_NATS], connect.clone()),
        (
            vec!["registry", "list", "--nats-url", NO_NATS],
            connect.clone(),
        ),
        (
            vec!["deliveries", "list", "--nats-url", NO_NATS],
            connect.clone(),
        ),
        (
            vec![
                "redeliver",
                "--registry",
                "a",
                "--order",
                "b",
                "--nats-url",
                NO_NATS,
            ],
            connect.clone(),
        ),
    ];
    for (args, start) in prefixed {
        let (code, stdout, stderr) = ledgerline(&args);
        assert!(stderr.starts_with(&start), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert_eq!(stdout, "", "{args:?}");
    }
}
