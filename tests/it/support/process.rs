//! The `ledgerline` binary as a child process (the way an operator runs
//! it): its config file, `ledgerline run` logging to a file, one-shot
//! commands, and the tail of a log for failures.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::ADMIN_TOKEN;

/// Writes `dir/ledgerline.toml`: `nats_url`, loopback targets allowed,
/// then `rest` (any further TOML).
pub fn config_file(dir: &Path, nats_url: &str, rest: &str) -> PathBuf {
    let path = dir.join("ledgerline.toml");
    std::fs::write(
        &path,
        format!(
            "nats_url = \"{nats_url}\"\nallow_insecure_http = true\nallow_private_targets = [\"127.0.0.0/8\"]\n{rest}"
        ),
    )
    .unwrap();
    path
}

/// [`config_file`] with an admin API on a free loopback port and
/// [`ADMIN_TOKEN`] before `registries`.
pub fn service_config(dir: &Path, nats_url: &str, registries: &str) -> PathBuf {
    config_file(
        dir,
        nats_url,
        &format!("admin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n{registries}"),
    )
}

/// `ledgerline <args>`: the binary built for these tests, with no
/// `LEDGERLINE_CONFIG` from the environment (`tokio::process::Command`
/// converts from it).
pub fn ledgerline(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline"));
    cmd.args(args).env_remove("LEDGERLINE_CONFIG");
    cmd
}

/// How `ledgerline run` is started: which components, its log level and
/// format, further environment.
pub struct Run {
    only: Option<String>,
    level: String,
    format: &'static str,
    env: Vec<(String, String)>,
    env_remove: Vec<String>,
}

/// `ledgerline run`, every component, logging JSON at `level` (a
/// `LEDGERLINE_LOG` filter).
pub fn run(level: &str) -> Run {
    Run {
        only: None,
        level: level.to_owned(),
        format: "json",
        env: Vec::new(),
        env_remove: Vec::new(),
    }
}

impl Run {
    /// Only these components (`--only`).
    pub fn only(mut self, components: &str) -> Self {
        self.only = Some(components.to_owned());
        self
    }

    /// Logs as text rather than JSON.
    pub fn text_logs(mut self) -> Self {
        self.format = "text";
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env.push((
            name.to_owned(),
            value.as_ref().to_string_lossy().into_owned(),
        ));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, name: &str) -> Self {
        self.env_remove.push(name.to_owned());
        self
    }

    /// Starts it with `config`, its logs appended to `log`. Killed when
    /// dropped.
    pub fn spawn(&self, config: &Path, log: &Path) -> tokio::process::Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = tokio::process::Command::from(ledgerline(&["run"]));
        if let Some(only) = &self.only {
            cmd.args(["--only", only]);
        }
        cmd.arg("--config")
            .arg(config)
            .env("LEDGERLINE_LOG", &self.level)
            .env("LEDGERLINE_LOG_FORMAT", self.format);
        for (name, value) in &self.env {
            cmd.env(name, value);
        }
        for name in &self.env_remove {
            cmd.env_remove(name);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }
}

/// `ledgerline run` as a child process, logging JSON at `level` (a
/// `LEDGERLINE_LOG` filter) to `log` (appended). Killed when dropped.
pub fn spawn_run(config: &Path, log: &Path, level: &str) -> tokio::process::Child {
    run(level).spawn(config, log)
}

/// Fails, showing its stderr, unless the command `out` came from exited 0.
pub fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The last `n` lines of the file at `path` (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One-shot `ledgerline <args> --config <config>` commands (logging at
/// debug), keeping all they print so a test can check that no secret is
/// ever shown.
pub struct Cli {
    config: PathBuf,
    /// Everything printed so far, standard output and error.
    pub seen: String,
}

impl Cli {
    /// Commands run with `config`.
    pub fn new(config: PathBuf) -> Self {
        Cli {
            config,
            seen: String::new(),
        }
    }

    /// `ledgerline <args>` with nothing on standard input: exit code,
    /// standard output, standard error.
    pub fn run(&mut self, args: &[&str]) -> (Option<i32>, String, String) {
        self.run_with_stdin(args, "")
    }

    /// `ledgerline <args>` reading `stdin`.
    pub fn run_with_stdin(&mut self, args: &[&str], stdin: &str) -> (Option<i32>, String, String) {
        use std::io::Write;
        let mut child = ledgerline(args)
            .arg("--config")
            .arg(&self.config)
            .env("LEDGERLINE_LOG", "debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        self.seen.push_str(&o);
        self.seen.push_str(&e);
        (out.status.code(), o, e)
    }

    /// Runs `apply` (`<kind> apply …`, its `n` items already applied)
    /// again and checks it leaves all `n` unchanged, that `<kind> list
    /// --json` prints `n` lines and that `<kind> list` prints a table
    /// whose header has ID first and `columns`; returns its `n` rows.
    pub fn reapply_and_list(&mut self, apply: &[&str], n: usize, columns: &[&str]) -> Vec<String> {
        let (code, out, err) = self.run(apply);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("unchanged ")).count(),
            n,
            "{out}"
        );
        let kind = apply[0];
        let (code, out, err) = self.run(&[kind, "list", "--json"]);
        assert_eq!((code, out.lines().count()), (Some(0), n), "{err}");
        let (code, out, err) = self.run(&[kind, "list"]);
        assert_eq!(code, Some(0), "{err}");
        let mut lines = out.lines().map(str::to_owned);
        let header = lines.next().unwrap_or_default();
        assert!(
            header.starts_with("ID") && columns.iter().all(|c| header.contains(c)),
            "{out}"
        );
        let rows: Vec<String> = lines.collect();
        assert_eq!(rows.len(), n, "{out}");
        rows
    }
}

/// Sends `signal` (`-STOP`, `-CONT`) to process `pid`.
pub fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Stops process `pid` (SIGSTOP) and returns once every one of its
/// threads is stopped. `kill` returns as soon as the signal is queued; the
/// process stops when one of its threads takes it, and on a loaded machine
/// its other threads can go on serving for milliseconds until then (seen:
/// nats-server storing two records after `kill -STOP` had returned).
pub fn stop_process(pid: &str) {
    signal(pid, "-STOP");
    let tasks = format!("/proc/{pid}/task");
    let started = std::time::Instant::now();
    let all_stopped = || {
        std::fs::read_dir(&tasks).unwrap().all(|t| {
            let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
            // The state is the field after the command's closing parenthesis.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    };
    while !all_stopped() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "process {pid} did not stop within 10 s of SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
