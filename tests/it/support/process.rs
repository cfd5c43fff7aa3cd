//! `ledgerline run` as a child process (the way an operator runs it): its
//! config file, its log file, and the tail of that log for failures.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::ADMIN_TOKEN;

/// Writes `dir/ledgerline.toml`: `nats_url`, an admin API on a free
/// loopback port with [`ADMIN_TOKEN`], loopback targets allowed, then
/// `registries` (any further TOML).
pub fn service_config(dir: &Path, nats_url: &str, registries: &str) -> PathBuf {
    let path = dir.join("ledgerline.toml");
    std::fs::write(
        &path,
        format!(
            "nats_url = \"{nats_url}\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
             allow_insecure_http = true\nallow_private_targets = [\"127.0.0.0/8\"]\n{registries}"
        ),
    )
    .unwrap();
    path
}

/// `ledgerline run` as a child process, logging JSON at `level` (a
/// `LEDGERLINE_LOG` filter) to `log` (appended). Killed when dropped.
pub fn spawn_run(config: &Path, log: &Path, level: &str) -> tokio::process::Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_ledgerline"))
        .args(["run", "--config"])
        .arg(config)
        .env("LEDGERLINE_LOG", level)
        .env("LEDGERLINE_LOG_FORMAT", "json")
        .env_remove("LEDGERLINE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The last `n` lines of the file at `path` (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
