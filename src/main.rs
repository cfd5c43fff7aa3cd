//! The `ledgerline` command: parses the command line and calls the library.
//!
//! Exit codes: 0 done; 1 the work found a problem (verify mismatches, a
//! NATS failure); 2 an invalid configuration or command line.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use ledgerline::config::{Config, ConfigError, Settings};
use ledgerline::offline::{Layout, run_postings};
use ledgerline::service::Component;

/// Exit code for an invalid configuration or command line.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "ledgerline",
    version,
    about = "Order events in, exact double-entry ledger postings out, delivered over webhooks."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration and NATS are (every command that talks to NATS).
#[derive(Args, Clone)]
struct NatsArgs {
    /// Configuration file (SPEC 7); defaults apply without one.
    #[arg(long, env = "LEDGERLINE_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL, overriding the file and LEDGERLINE_NATS_URL.
    #[arg(long)]
    nats_url: Option<String>,
}

impl NatsArgs {
    /// defaults → file → LEDGERLINE_* → flags, then validated.
    fn settings(&self) -> Result<Settings, ConfigError> {
        let mut config = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(url) = &self.nats_url {
            config.nats_url = url.clone();
        }
        config.validate()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: aggregator, dispatcher and admin API (or some of
    /// them) until SIGTERM or Ctrl-C.
    Run {
        #[command(flatten)]
        nats: NatsArgs,
        /// Run only these components (comma-separated).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<Component>,
    },
    /// Publish an NDJSON events file (or - for stdin) to ORDERS.
    Publish {
        /// The events file, one JSON event per line, or - for stdin.
        file: PathBuf,
        #[command(flatten)]
        nats: NatsArgs,
        /// Exit 1 when any line is refused.
        #[arg(long)]
        strict: bool,
    },
    /// Compute postings offline (no NATS): one NDJSON line per posting.
    Postings {
        /// Configuration file (rounding, tax_rounding and the registries are read).
        #[arg(long, env = "LEDGERLINE_CONFIG")]
        config: PathBuf,
        /// NDJSON events file, or - for standard input.
        #[arg(long)]
        events: PathBuf,
        /// Indented output for people, instead of NDJSON.
        #[arg(long)]
        pretty: bool,
    },
    /// Replay ORDERS and check every stored posting is reproduced exactly.
    Verify {
        #[command(flatten)]
        nats: NatsArgs,
    },
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Loads settings or explains why not (exit 2).
fn settings_or_exit(nats: &NatsArgs) -> Result<Settings, ExitCode> {
    nats.settings().map_err(|e| {
        eprintln!("ledgerline: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Postings {
            config,
            events,
            pretty,
        } => return postings(config, events, pretty),
        Command::Run { nats, only } => {
            init_logging("info");
            let settings = match settings_or_exit(&nats) {
                Ok(s) => s,
                Err(code) => return code,
            };
            run(settings, only)
        }
        Command::Publish { file, nats, strict } => {
            init_logging("warn");
            let settings = match settings_or_exit(&nats) {
                Ok(s) => s,
                Err(code) => return code,
            };
            publish(settings, file, strict)
        }
        Command::Verify { nats } => {
            init_logging("warn");
            let settings = match settings_or_exit(&nats) {
                Ok(s) => s,
                Err(code) => return code,
            };
            verify(settings)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ledgerline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn postings(config: PathBuf, events: PathBuf, pretty: bool) -> ExitCode {
    let settings = match Config::load(Some(&config), std::env::vars()).and_then(Config::validate) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ledgerline: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let input: Box<dyn std::io::BufRead> = if events.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match File::open(&events) {
            Ok(f) => Box::new(BufReader::new(f)),
            Err(e) => {
                eprintln!(
                    "ledgerline: cannot open events file {}: {e}",
                    events.display()
                );
                return ExitCode::from(EXIT_USAGE);
            }
        }
    };
    let layout = if pretty {
        Layout::Pretty
    } else {
        Layout::Ndjson
    };
    let stdout = std::io::stdout().lock();
    let stderr = std::io::stderr();
    match run_postings(
        settings.ledger,
        settings.registries,
        input,
        std::io::BufWriter::new(stdout),
        stderr.lock(),
        layout,
    ) {
        Ok(s) => {
            let _ = writeln!(
                stderr.lock(),
                "postings: {} events read, {} accepted, {} rejected, {} postings",
                s.lines,
                s.accepted,
                s.rejected,
                s.postings
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ledgerline: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings, only: Vec<Component>) -> anyhow::Result<ExitCode> {
    let components: BTreeSet<Component> = if only.is_empty() {
        // Everything this build has.
        [Component::Aggregator].into_iter().collect()
    } else {
        only.into_iter().collect()
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested; finishing in-flight work");
            signals.cancel();
        });
        ledgerline::service::run(settings, components, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
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

fn publish(settings: Settings, file: PathBuf, strict: bool) -> anyhow::Result<ExitCode> {
    let (input, source, len): (Box<dyn std::io::BufRead + Send>, String, Option<u64>) =
        if file.as_os_str() == "-" {
            (
                Box::new(BufReader::new(std::io::stdin())),
                "stdin".to_owned(),
                None,
            )
        } else {
            let f = File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(BufReader::new(f)), file.display().to_string(), len)
        };
    let bar = progress_bar(len.map(|_| 0), "publishing");
    let rt = runtime()?;
    let summary = rt.block_on(async {
        let client = ledgerline::streams::connect_once(&settings.config).await?;
        let summary = ledgerline::publish::publish(
            &client,
            &settings.config.subject_prefix,
            &source,
            input,
            |r| {
                bar.suspend(|| eprintln!("line {}: refused: {} ({})", r.line, r.message, r.reason));
            },
            |s| {
                bar.set_position(s.lines);
            },
        )
        .await?;
        client.flush().await.context("flushing")?;
        anyhow::Ok(summary)
    })?;
    bar.finish_and_clear();
    eprintln!("{summary}");
    Ok(if strict && summary.refused_total() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn verify(settings: Settings) -> anyhow::Result<ExitCode> {
    let bar = progress_bar(None, "verifying");
    let rt = runtime()?;
    let report = rt.block_on(async {
        let client = ledgerline::streams::connect_once(&settings.config).await?;
        let report = ledgerline::verify::verify(
            &client,
            &settings.config.subject_prefix,
            settings.ledger,
            settings.registries.clone(),
            |what, n| {
                bar.set_message(what.to_owned());
                bar.set_position(n);
            },
        )
        .await?;
        anyhow::Ok(report)
    })?;
    bar.finish_and_clear();
    for m in &report.mismatches {
        println!("{m}");
    }
    eprintln!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
