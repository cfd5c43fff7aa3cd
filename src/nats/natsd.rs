//! Locates and runs a real `nats-server` child process with JetStream
//! enabled, for the integration tests, `ledgerline demo` and the benches.
//!
//! There is no in-process NATS server for Rust, so this module drives the
//! real Go binary. [`locate_nats_server`] finds it (normally the pinned copy
//! that `make tools` / `scripts/install-tools.sh` puts in
//! `<repo>/.tools/bin/nats-server`), and [`NatsServer`] runs it:
//!
//! * on `127.0.0.1` with a free client port and a free monitoring port;
//! * with JetStream on (`-js -sd <store dir>`), the store dir being a temp
//!   dir owned by the [`NatsServer`] unless one is given;
//! * optionally with TLS on the client port (`--tls --tlscert --tlskey`),
//!   chosen with [`NatsServer::builder`] and [`NatsServerBuilder::tls`];
//! * with its stdout/stderr appended to a log file in its temp dir (see
//!   [`NatsServer::log_path`]), never to the test output;
//! * and it only returns once the server is ready: the client port answers
//!   with this server's `INFO` and `GET /healthz` on the monitoring port says
//!   JetStream is up.
//!
//! [`NatsServer::stop`], [`NatsServer::kill`] and [`NatsServer::restart`] let
//! tests simulate graceful shutdowns, crashes and recoveries; a restarted
//! server keeps its port and store dir, so clients can reconnect to the same
//! URL and find their streams. Dropping a [`NatsServer`] SIGKILLs the child.
//!
//! [`NatsCluster::start`] starts several such servers as one cluster (each
//! with a cluster listener and routes to the others), for streams with
//! replicas and the scale-out tests; its [`NatsCluster::url`] is the
//! comma-separated list `nats_url` takes.
//!
//! [`NatsServer::start`] and [`NatsServer::start_with`] cover the common
//! cases; [`NatsServer::builder`] also sets TLS:
//!
//! ```no_run
//! # async fn demo() -> Result<(), ledgerline::natsd::NatsdError> {
//! let server = ledgerline::natsd::NatsServer::builder()
//!     .tls("server.pem", "server.key")
//!     .start()
//!     .await?;
//! let url = server.url(); // tls://127.0.0.1:PORT
//! # Ok(())
//! # }
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), ledgerline::natsd::NatsdError> {
//! let mut server = ledgerline::natsd::NatsServer::start().await?;
//! let url = server.url(); // nats://127.0.0.1:PORT, for async_nats::connect
//! server.kill().await; // crash it
//! server.restart().await?; // same port, same JetStream store
//! # Ok(())
//! # }
//! ```
//!
//! Unix only (it relies on executable bits and the `kill` command).

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout};

/// Environment variable naming the `nats-server` binary to use; it takes
/// precedence over every other place [`locate_nats_server`] looks.
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// How long [`NatsServer::start`] and [`NatsServer::restart`] wait for the
/// server to become ready before giving up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`NatsServer::stop`] waits after SIGTERM before it SIGKILLs.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where the install script puts the pinned server, relative to the repo.
const TOOLS_NATS_SERVER: &str = ".tools/bin/nats-server";
const HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const POLL_INTERVAL: Duration = Duration::from_millis(25);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Fresh-port attempts in `start` when a chosen port got taken meanwhile.
const START_ATTEMPTS: u32 = 3;
/// Same-port attempts in `restart` when the port is briefly busy.
const RESTART_ATTEMPTS: u32 = 10;
const RESTART_RETRY_DELAY: Duration = Duration::from_millis(200);
const LOG_TAIL_LINES: usize = 40;
/// The cluster name of the nodes a [`NatsCluster`] starts.
const CLUSTER_NAME: &str = "ledgerline";

/// What can go wrong while locating or running `nats-server`.
#[derive(Debug, thiserror::Error)]
pub enum NatsdError {
    /// `NATS_SERVER_BIN` is set but does not name an executable.
    #[error(
        "NATS_SERVER_BIN is set to {}, which is not an executable file (nor a command on PATH)",
        .0.display()
    )]
    BadEnvBinary(PathBuf),

    /// No `nats-server` anywhere we looked.
    #[error(
        "nats-server not found; searched NATS_SERVER_BIN, {} and $PATH. \
         Run `make tools` (or `scripts/install-tools.sh`), or set NATS_SERVER_BIN",
        display_paths(.searched)
    )]
    NotFound {
        /// The `.tools/bin/nats-server` candidates that did not exist.
        searched: Vec<PathBuf>,
    },

    /// A local I/O step (temp dir, log file, port probe) failed.
    #[error("nats-server harness: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },

    /// The binary could not be spawned.
    #[error("failed to spawn {}: {source}", .bin.display())]
    Spawn {
        /// The binary we tried to run.
        bin: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// The server exited before it became ready (bad flags, port in use, ...).
    #[error(
        "nats-server on port {port} exited during startup ({status}); last lines of {}:\n{log_tail}",
        .log.display()
    )]
    Exited {
        /// The client port it was started on.
        port: u16,
        /// Its exit status.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of what it logged during this start.
        log_tail: String,
    },

    /// The server did not become ready within [`READY_TIMEOUT`].
    #[error(
        "nats-server on port {port} not ready within {timeout:?}; last lines of {}:\n{log_tail}",
        .log.display()
    )]
    NotReady {
        /// The client port it was started on.
        port: u16,
        /// How long we waited.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
        /// The end of what it logged during this start.
        log_tail: String,
    },
}

impl NatsdError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// True when the server died because one of its ports was taken.
    fn is_address_in_use(&self) -> bool {
        matches!(self, Self::Exited { log_tail, .. } if log_tail.contains("address already in use"))
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds the `nats-server` binary to run.
///
/// Order:
/// 1. `$NATS_SERVER_BIN` (a path, or a bare command name looked up on PATH);
///    if set but unusable this is an error, not a fall-through;
/// 2. `.tools/bin/nats-server` in the current dir or any ancestor;
/// 3. `.tools/bin/nats-server` in the directory of the running executable or
///    any ancestor (so `target/release/ledgerline demo` finds the project's);
/// 4. `.tools/bin/nats-server` in this crate's source dir (compile-time
///    `CARGO_MANIFEST_DIR`);
/// 5. `nats-server` on `PATH`.
///
/// # Errors
///
/// [`NatsdError::BadEnvBinary`] if `NATS_SERVER_BIN` is set but unusable,
/// [`NatsdError::NotFound`] (listing the places searched) otherwise.
pub fn locate_nats_server() -> Result<PathBuf, NatsdError> {
    if let Some(value) = std::env::var_os(NATS_SERVER_BIN_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        let is_bare_name = path.components().count() == 1 && !path.is_absolute();
        let found = if is_executable(&path) {
            Some(path.clone())
        } else if is_bare_name {
            find_on_path(&path)
        } else {
            None
        };
        return found.ok_or(NatsdError::BadEnvBinary(path));
    }

    let mut searched: Vec<PathBuf> = Vec::new();
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        roots.extend(dir.ancestors().map(Path::to_path_buf));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for root in roots {
        let candidate = root.join(TOOLS_NATS_SERVER);
        if searched.contains(&candidate) {
            continue;
        }
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        searched.push(candidate);
    }

    find_on_path(Path::new("nats-server")).ok_or(NatsdError::NotFound { searched })
}

fn find_on_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    // `metadata` follows symlinks, so a dangling .tools link does not count.
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Picks two distinct free loopback ports by binding port 0 and releasing.
/// Another process could take one before the server binds it; `start`
/// notices (the server exits with "address already in use") and retries.
fn free_ports() -> Result<(u16, u16), NatsdError> {
    let ports = free_port_list(2)?;
    Ok((ports[0], ports[1]))
}

/// `n` distinct free loopback ports (all bound at once, then released).
fn free_port_list(n: usize) -> Result<Vec<u16>, NatsdError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind(SocketAddr::from((HOST, 0))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(NatsdError::io("binding a free loopback port"))?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|addr| addr.port())
                .map_err(NatsdError::io("reading a bound port"))
        })
        .collect()
}

/// `max_payload` of servers started here: 8 MiB (the server default is 1 MB).
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;

/// The server certificate chain and key of a TLS [`NatsServer`] (PEM files).
#[derive(Debug, Clone)]
struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
}

/// Options for [`NatsServer::builder`]: everything defaults to what
/// [`NatsServer::start`] does.
#[derive(Debug, Default, Clone)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct NatsServerBuilder {
    store_dir: Option<PathBuf>,
    tls: Option<ServerTls>,
    max_payload: Option<usize>,
}

impl NatsServerBuilder {
    /// Keeps the JetStream store in `dir` (created if missing, left in place
    /// on drop) instead of a temp dir.
    pub fn store_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store_dir = Some(dir.into());
        self
    }

    /// Serves the client port over TLS only, with the certificate chain in
    /// `cert` and its private key in `key` (both PEM; they must cover
    /// `127.0.0.1`). [`NatsServer::url`] then starts with `tls://`.
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some(ServerTls {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// The server's `max_payload` in bytes (default [`MAX_PAYLOAD_BYTES`];
    /// a stock server has 1 MB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// Starts the server and waits until it is ready.
    ///
    /// # Errors
    ///
    /// As for [`NatsServer::start`], plus failing to create the store dir;
    /// a bad certificate or key makes the server exit during startup
    /// ([`NatsdError::Exited`], with its log tail saying why).
    pub async fn start(self) -> Result<NatsServer, NatsdError> {
        NatsServer::start_from(self).await
    }
}

/// A running (or stopped, restartable) `nats-server` child with JetStream.
///
/// Dropping it SIGKILLs the server and deletes its temp dir (log file and,
/// unless given to [`NatsServer::start_with`], the JetStream store).
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    name: String,
    port: u16,
    monitor_port: u16,
    store_dir: PathBuf,
    log_path: PathBuf,
    /// Log length when the current start began; error tails start there.
    log_start: u64,
    /// TLS on the client port, when chosen.
    tls: Option<ServerTls>,
    max_payload: usize,
    /// Its place in a cluster ([`NatsCluster`]), kept across restarts.
    cluster: Option<ClusterNode>,
    child: Option<Child>,
    /// Holds the log (and maybe the store); removed on drop, after the kill.
    temp: tempfile::TempDir,
}

/// A node's cluster listener and the routes to the other nodes.
#[derive(Debug, Clone)]
struct ClusterNode {
    port: u16,
    routes: Vec<u16>,
}

impl NatsServer {
    /// Starts a server with JetStream on free loopback ports and a fresh
    /// temporary store, and waits until it is ready.
    ///
    /// # Errors
    ///
    /// If the binary cannot be found or spawned, or the server exits or is
    /// not ready within [`READY_TIMEOUT`]; those last errors carry the tail
    /// of its log, and its temp dir is then kept for inspection.
    pub async fn start() -> Result<Self, NatsdError> {
        Self::start_with(None).await
    }

    /// Like [`NatsServer::start`], but with the JetStream store in
    /// `store_dir` (created if missing, left in place on drop) when given.
    ///
    /// # Errors
    ///
    /// As for [`NatsServer::start`], plus failing to create `store_dir`.
    pub async fn start_with(store_dir: Option<PathBuf>) -> Result<Self, NatsdError> {
        let mut builder = Self::builder();
        if let Some(dir) = store_dir {
            builder = builder.store_dir(dir);
        }
        builder.start().await
    }

    /// A builder for a server with more options than [`NatsServer::start`]
    /// and [`NatsServer::start_with`] take (TLS).
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// Starts the server the builder describes; see [`NatsServerBuilder::start`].
    async fn start_from(options: NatsServerBuilder) -> Result<Self, NatsdError> {
        let mut server = Self::prepare(options)?;
        let mut attempt = 1;
        loop {
            (server.port, server.monitor_port) = free_ports()?;
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) if e.is_address_in_use() && attempt < START_ATTEMPTS => attempt += 1,
                Err(e) => {
                    // Keep the temp dir so the log named in the error exists.
                    server.temp.disable_cleanup(true);
                    return Err(e);
                }
            }
        }
    }

    /// A server the builder describes, with its temp dir and store, not
    /// started and without ports yet.
    fn prepare(options: NatsServerBuilder) -> Result<Self, NatsdError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let NatsServerBuilder {
            store_dir,
            tls,
            max_payload,
        } = options;

        let bin = locate_nats_server()?;
        let temp = tempfile::Builder::new()
            .prefix("ledgerline-natsd-")
            .tempdir()
            .map_err(NatsdError::io("creating a temp dir"))?;
        let store_dir = store_dir.unwrap_or_else(|| temp.path().join("store"));
        std::fs::create_dir_all(&store_dir).map_err(NatsdError::io(format!(
            "creating store dir {}",
            store_dir.display()
        )))?;
        let server = Self {
            bin,
            // Unique per process and instance: readiness checks compare it
            // with the INFO the client port sends, so a different server
            // that grabbed "our" port is never mistaken for ours.
            name: format!(
                "ledgerline-natsd-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ),
            port: 0,
            monitor_port: 0,
            store_dir,
            log_path: temp.path().join("nats-server.log"),
            log_start: 0,
            tls,
            max_payload: max_payload.unwrap_or(MAX_PAYLOAD_BYTES),
            cluster: None,
            child: None,
            temp,
        };
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`, for `async_nats::connect`; `tls://…` when
    /// the server was started with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "nats" };
        format!("{scheme}://{HOST}:{}", self.port)
    }

    /// The server's name (`server_name`; a stream's cluster info names its
    /// leader and replicas by it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the client port speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The client port. It stays the same across [`NatsServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/healthz`, `/varz`, `/jsz`, ...).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// Messages the server has received and sent since it started
    /// (`/varz`'s `in_msgs` and `out_msgs`: client publishes, acks and
    /// requests in; deliveries, replies and acks out), or `None` if the
    /// monitoring port does not answer.
    pub async fn message_counts(&self) -> Option<MessageCounts> {
        let text = monitor_get(self.monitor_port, "/varz").await?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        let varz: serde_json::Value = serde_json::from_str(body).ok()?;
        Some(MessageCounts {
            received: varz["in_msgs"].as_u64()?,
            sent: varz["out_msgs"].as_u64()?,
        })
    }

    /// The JetStream store directory (`-sd`).
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The server's log file: its stdout and stderr, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the log file, for diagnostics.
    pub fn log_tail(&self, lines: usize) -> String {
        read_tail(&self.log_path, 0, lines)
    }

    /// The binary being run.
    pub fn binary(&self) -> &Path {
        &self.bin
    }

    /// The child's process id, if it is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the child process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Graceful stop: sends SIGTERM (via the `kill` command, as this crate
    /// has no libc/nix dependency), so the server flushes its JetStream
    /// store and exits; waits for it, and SIGKILLs it if it has not exited
    /// after [`STOP_GRACE`] or SIGTERM could not be sent. No-op if stopped.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            // The child is not reaped until we wait on it, so `pid` is still
            // ours (at worst a zombie) and cannot have been reused.
            let termed = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if termed && timeout(STOP_GRACE, child.wait()).await.is_ok() {
                return;
            }
            tracing::warn!(pid, "nats-server did not stop on SIGTERM; killing it");
        }
        // Errors mean it already exited, which is what we want.
        let _ = child.kill().await;
    }

    /// Crash: SIGKILLs the server and waits for it to die. No-op if stopped.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it already exited, which is what we want.
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same client and monitoring ports and
    /// the same store dir, stopping it gracefully first if it still runs,
    /// and waits until it is ready. Retries for a while if a port is
    /// briefly busy.
    ///
    /// # Errors
    ///
    /// If the server cannot be spawned, exits (e.g. its port stayed taken),
    /// or is not ready within [`READY_TIMEOUT`]; the error carries the tail
    /// of its log.
    pub async fn restart(&mut self) -> Result<(), NatsdError> {
        self.stop().await;
        let mut attempt = 1;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_address_in_use() && attempt < RESTART_ATTEMPTS => {
                    attempt += 1;
                    sleep(RESTART_RETRY_DELAY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Spawns the child on `self.port`/`self.monitor_port` and waits until
    /// it is ready; on failure the child is killed and `self.child` is None.
    async fn spawn_and_wait(&mut self) -> Result<(), NatsdError> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(NatsdError::io(format!(
                "opening log file {}",
                self.log_path.display()
            )))?;
        self.log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        // A marker so restarts are easy to tell apart in the log; best effort.
        let _ = writeln!(
            log,
            "--- ledgerline natsd: starting {} on {HOST}:{} (monitor {}) ---",
            self.bin.display(),
            self.port,
            self.monitor_port
        );
        let log_err = log
            .try_clone()
            .map_err(NatsdError::io("duplicating the log file handle"))?;

        // max_payload is the one setting without a command-line flag. Above
        // the 1 MB default so an oversized input (SPEC 1: over 1 MiB) reaches
        // the stream and is rejected with a reason instead of being refused
        // at the connection.
        let conf = self.temp.path().join("nats-server.conf");
        let mut conf_text = format!("max_payload: {}\n", self.max_payload);
        if let Some(node) = &self.cluster {
            let routes: Vec<String> = node
                .routes
                .iter()
                .map(|p| format!("\"nats-route://{HOST}:{p}\""))
                .collect();
            let _ = write!(
                conf_text,
                "cluster {{\n  name: {CLUSTER_NAME}\n  listen: \"{HOST}:{}\"\n  routes: [{}]\n}}\n",
                node.port,
                routes.join(", ")
            );
        }
        std::fs::write(&conf, conf_text).map_err(NatsdError::io("writing the server config"))?;
        let mut command = Command::new(&self.bin);
        command
            .arg("-c")
            .arg(&conf)
            .args(["-a", &HOST.to_string()])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .args(["--server_name", &self.name])
            .arg("-js")
            .arg("-sd")
            .arg(&self.store_dir);
        if let Some(tls) = &self.tls {
            // The INFO line still comes in plain text before the handshake,
            // so the readiness probe below works unchanged.
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(&tls.cert)
                .arg("--tlskey")
                .arg(&tls.key);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NatsdError::Spawn {
                bin: self.bin.clone(),
                source,
            })?;
        tracing::debug!(
            pid = child.id(),
            port = self.port,
            store = %self.store_dir.display(),
            "spawned nats-server"
        );

        // Whichever comes first: the server is ready, it exits, or time is up.
        // Racing the child's exit matters: a port we lost to another process
        // may accept connections but never answer, stalling the probes.
        let name = self.name.as_str();
        let outcome = tokio::select! {
            status = child.wait() => Err(status),
            ready = timeout(READY_TIMEOUT, poll_ready(self.port, self.monitor_port, name)) => {
                Ok(ready.is_ok())
            }
        };
        let log_tail = || read_tail(&self.log_path, self.log_start, LOG_TAIL_LINES);
        let error = match outcome {
            Ok(true) => {
                self.child = Some(child);
                return Ok(());
            }
            Ok(false) => NatsdError::NotReady {
                port: self.port,
                timeout: READY_TIMEOUT,
                log: self.log_path.clone(),
                log_tail: log_tail(),
            },
            Err(Ok(status)) => NatsdError::Exited {
                port: self.port,
                status,
                log: self.log_path.clone(),
                log_tail: log_tail(),
            },
            Err(Err(source)) => NatsdError::Io {
                what: "waiting for nats-server".into(),
                source,
            },
        };
        // Errors mean it already exited, which is what we want.
        let _ = child.kill().await;
        Err(error)
    }
}

/// A cluster of `nats-server` nodes with JetStream on loopback ports, for
/// the scale-out tests: each node is a [`NatsServer`] (own store, log and
/// ports) with a cluster listener and routes to every other node, so
/// streams and buckets can have up to `n` replicas. A node can be killed,
/// stopped and restarted on its own ([`NatsCluster::node_mut`]); it rejoins
/// with its store and catches up.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes (at least 1) at once and returns when every one is
    /// ready (`/healthz` answers 200 once JetStream has a meta leader, so
    /// the nodes must start together: one alone has no quorum).
    ///
    /// As for one server, a port taken by someone else between choosing it
    /// and the node binding it (other tests start servers too) makes the
    /// whole cluster start again on fresh ports, up to [`START_ATTEMPTS`]
    /// times.
    ///
    /// # Errors
    ///
    /// As for [`NatsServer::start`]; the nodes' temp dirs are then kept so
    /// the logs named in the error exist.
    pub async fn start(n: usize) -> Result<Self, NatsdError> {
        let mut attempt = 1;
        loop {
            match Self::start_once(n).await {
                Ok(cluster) => return Ok(cluster),
                Err((e, mut nodes)) if e.is_address_in_use() && attempt < START_ATTEMPTS => {
                    for node in &mut nodes {
                        node.stop().await;
                    }
                    attempt += 1;
                }
                Err((e, mut nodes)) => {
                    for node in &mut nodes {
                        node.stop().await;
                        node.temp.disable_cleanup(true);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One attempt of [`Self::start`]: the nodes, started or not, come
    /// back with the error.
    async fn start_once(n: usize) -> Result<Self, (NatsdError, Vec<NatsServer>)> {
        let n = n.max(1);
        let ports = match free_port_list(3 * n) {
            Ok(ports) => ports,
            Err(e) => return Err((e, Vec::new())),
        };
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut node = match NatsServer::prepare(NatsServerBuilder::default()) {
                Ok(node) => node,
                Err(e) => return Err((e, nodes)),
            };
            node.port = ports[3 * i];
            node.monitor_port = ports[3 * i + 1];
            if n > 1 {
                node.cluster = Some(ClusterNode {
                    port: ports[3 * i + 2],
                    routes: (0..n)
                        .filter(|j| *j != i)
                        .map(|j| ports[3 * j + 2])
                        .collect(),
                });
            }
            nodes.push(node);
        }
        let started =
            futures::future::join_all(nodes.iter_mut().map(NatsServer::spawn_and_wait)).await;
        let mut failed = started.into_iter().find_map(Result::err);
        if failed.is_none() && n > 1 {
            // Ready nodes may still be electing the JetStream meta leader;
            // until then every stream request times out.
            let monitor = nodes[0].monitor_port;
            if timeout(READY_TIMEOUT, async {
                while !meta_leader_known(monitor).await {
                    sleep(POLL_INTERVAL).await;
                }
            })
            .await
            .is_err()
            {
                failed = Some(NatsdError::NotReady {
                    port: nodes[0].port,
                    timeout: READY_TIMEOUT,
                    log: nodes[0].log_path.clone(),
                    log_tail: read_tail(&nodes[0].log_path, 0, LOG_TAIL_LINES),
                });
            }
        }
        match failed {
            Some(e) => Err((e, nodes)),
            None => Ok(Self { nodes }),
        }
    }

    /// Every node's client URL, comma-separated (`nats_url`, SPEC 7).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`NatsCluster::len`].
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i`, to kill, stop or restart it.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`NatsCluster::len`].
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }
}

/// Polls until the server on these ports is ready. The monitor listener
/// starts before the client listener, so an INFO carrying our name means
/// both ports are ours; `/healthz` then says whether JetStream (and the
/// streams it recovered from the store) is up.
async fn poll_ready(port: u16, monitor_port: u16, name: &str) {
    while !(client_port_is_ours(port, name).await && healthz_ok(monitor_port).await) {
        sleep(POLL_INTERVAL).await;
    }
}

/// Connects to the client port and checks the INFO line names us.
async fn client_port_is_ours(port: u16, name: &str) -> bool {
    let probe = async {
        let stream = TcpStream::connect((HOST, port)).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        io::Result::Ok(line)
    };
    let want = format!("\"server_name\":\"{name}\"");
    matches!(timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(line))
        if line.starts_with("INFO ") && line.contains(&want))
}

/// Messages a server has received and sent ([`NatsServer::message_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub received: u64,
    pub sent: u64,
}

/// `GET /jsz` on the monitoring port names a JetStream meta leader.
async fn meta_leader_known(monitor_port: u16) -> bool {
    let Some(text) = monitor_get(monitor_port, "/jsz").await else {
        return false;
    };
    let Some((_, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(body).is_ok_and(|jsz| {
        jsz["meta_cluster"]["leader"]
            .as_str()
            .is_some_and(|l| !l.is_empty())
    })
}

/// `GET /healthz` on the monitoring port answers 200.
async fn healthz_ok(monitor_port: u16) -> bool {
    monitor_get(monitor_port, "/healthz")
        .await
        .is_some_and(|text| text.split_whitespace().nth(1) == Some("200"))
}

/// The whole HTTP/1.0 response to `GET path` on the monitoring port
/// (lossy UTF-8), or `None` if it did not come within [`PROBE_TIMEOUT`].
async fn monitor_get(monitor_port: u16, path: &str) -> Option<String> {
    let probe = async {
        let mut stream = TcpStream::connect((HOST, monitor_port)).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        io::Result::Ok(response)
    };
    match timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(response)) => Some(String::from_utf8_lossy(&response).into_owned()),
        _ => None,
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // `kill_on_drop` would do this too; be explicit. Errors mean the
            // process is already gone.
            let _ = child.start_kill();
        }
    }
}

/// The last `lines` lines of the file from byte `from` on (lossy UTF-8).
fn read_tail(path: &Path, from: u64, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return format!("(could not read {})", path.display());
    };
    let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let all: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in &all[all.len().saturating_sub(lines)..] {
        let _ = writeln!(out, "    {line}");
    }
    out
}
