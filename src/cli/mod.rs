//! The `ledgerline` command line: its arguments ([`args`]), one module per
//! command group doing the command's work and rendering what people read
//! (tables, summaries, progress bars), and how each command ended
//! ([`Exit`], or a [`CliError`]). `main.rs` only parses the arguments and
//! maps the result to an exit code.
//!
//! What a command expects to go wrong (a bad configuration, an unknown
//! registry, an unbalanced export) it reports on stderr itself and ends with
//! [`Exit::Usage`] or [`Exit::Failure`]; anything else is a [`CliError`],
//! printed by `main.rs` with its causes.

pub mod args;
pub mod backfill;
pub mod deliveries;
pub mod demo;
pub mod export;
pub mod postings;
pub mod publish;
pub mod receiver;
pub mod registry;
pub mod run;
pub mod source;
pub mod verify;

use std::fmt::Display;
use std::io::IsTerminal;

use crate::config::{ConfigError, Settings};
use args::{Command, DeliveriesCommand};

/// How a command ended, its problems already reported on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done (exit 0).
    Success,
    /// The work found a problem: verify mismatches, an unbalanced export,
    /// nothing to redeliver (exit 1).
    Failure,
    /// An invalid configuration, command line or input file (exit 2).
    Usage,
}

/// A command failed for a reason it did not expect (NATS, I/O): exit 1,
/// printed with its causes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("{doing}")]
    Flush {
        /// What was being flushed, as the message says it.
        doing: &'static str,
        #[source]
        source: async_nats::client::FlushError,
    },
    /// A file could not be opened, created or written.
    #[error("{doing} {path}")]
    File {
        doing: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the output")]
    Output(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Nats(#[from] crate::streams::NatsError),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    #[error(transparent)]
    Store(#[from] crate::registry_store::StoreError),
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    #[error(transparent)]
    Verify(#[from] crate::verify::VerifyError),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    #[error(transparent)]
    Deliveries(#[from] crate::dispatcher::status::StatusError),
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
}

impl CliError {
    /// An I/O error on the file at `path`, while `doing` ("opening", …).
    fn file(doing: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| CliError::File {
            doing,
            path,
            source,
        }
    }

    /// A failed flush to NATS, while `doing` ("flushing to NATS", …).
    fn flush(doing: &'static str) -> impl FnOnce(async_nats::client::FlushError) -> Self {
        move |source| CliError::Flush { doing, source }
    }
}

/// Runs one command, logging as it needs.
pub fn execute(command: Command) -> Result<Exit, CliError> {
    match command {
        Command::Postings {
            config,
            events,
            pretty,
        } => Ok(postings::postings(&config, &events, pretty)),
        Command::Run {
            nats,
            only,
            admin_listen,
            ingest_listen,
        } => {
            init_logging("info");
            run::run(&nats, only, admin_listen, ingest_listen)
        }
        Command::Registry { command } => {
            init_logging("warn");
            registry::registry(command)
        }
        Command::Source { command } => {
            init_logging("warn");
            source::source(command)
        }
        Command::Publish { file, nats, strict } => {
            init_logging("warn");
            publish::publish(&nats, &file, strict)
        }
        Command::Demo {
            orders,
            nats_url,
            out,
            keep,
        } => {
            // The demo fails on purpose (retries, a dead letter); its
            // summary says what happened, so only errors are logged.
            init_logging("error");
            demo::demo(orders, nats_url, out, keep)
        }
        Command::Bench(args) => Ok(
            if crate::bench::cli(args) == std::process::ExitCode::SUCCESS {
                Exit::Success
            } else {
                Exit::Failure
            },
        ),
        Command::Verify { nats } => {
            init_logging("warn");
            verify::verify(&nats)
        }
        Command::Export(args) => {
            init_logging("warn");
            export::export(args)
        }
        Command::Redeliver {
            registry,
            order,
            nats,
        } => {
            init_logging("warn");
            deliveries::redeliver(&nats, &registry, &order)
        }
        Command::Deliveries {
            command:
                DeliveriesCommand::List {
                    registry,
                    status,
                    json,
                    nats,
                },
        } => {
            init_logging("warn");
            deliveries::list(&nats, registry, status, json)
        }
        Command::Deliveries {
            command: DeliveriesCommand::Reindex { nats },
        } => {
            init_logging("warn");
            deliveries::reindex(&nats)
        }
        Command::Receiver(args) => {
            init_logging("info");
            receiver::receiver(args)
        }
    }
}

/// Logs to stderr: readable on a terminal, JSON lines otherwise (or as
/// LEDGERLINE_LOG_FORMAT says); the filter from LEDGERLINE_LOG.
fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LEDGERLINE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},async_nats=warn")));
    let json = match std::env::var("LEDGERLINE_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.compact().init();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// Starts the async runtime, connects to NATS once and runs `work` with
/// the client: the frame of every command that talks to NATS.
fn with_nats<T>(
    config: &crate::config::Config,
    work: impl AsyncFnOnce(async_nats::Client) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let rt = runtime()?;
    rt.block_on(async {
        let client = crate::streams::connect_once(config).await?;
        work(client).await
    })
}

/// Says on stderr why the input is invalid: the command exits 2.
fn report_usage(e: impl Display) -> Exit {
    eprintln!("ledgerline: {e}");
    Exit::Usage
}

/// Says on stderr what the work found: the command exits 1.
fn report_failure(e: impl Display) -> Exit {
    eprintln!("ledgerline: {e}");
    Exit::Failure
}

/// The settings, or `None` once stderr says why they are invalid (the
/// command then ends with [`Exit::Usage`]).
fn settings_or_report(settings: Result<Settings, ConfigError>) -> Option<Settings> {
    settings.map_err(report_usage).ok()
}

/// SIGTERM or Ctrl-C.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A progress bar on stderr when it is a terminal, nothing otherwise.
fn progress_bar(len: Option<u64>, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} {pos}/{len} [{elapsed}] {per_sec}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}
