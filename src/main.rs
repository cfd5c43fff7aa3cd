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
        self.settings_with(|_| {})
    }

    /// Like [`NatsArgs::settings`], with a command's own flags applied last.
    fn settings_with(&self, flags: impl FnOnce(&mut Config)) -> Result<Settings, ConfigError> {
        let mut config = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(url) = &self.nats_url {
            config.nats_url = url.clone();
        }
        flags(&mut config);
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
        /// Address of the admin API, overriding the file and
        /// LEDGERLINE_ADMIN_LISTEN (port 0: any free port, logged).
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// Registries in the registry bucket: apply a file, list, show, delete.
    /// Changes reach a running service at once.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
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
    /// The whole pipeline on one machine: nats-server, sample receivers
    /// behind three registries, the dataset, retries, a dead letter and its
    /// redelivery, the audit CSV and beancount files, a summary.
    Demo {
        /// Orders in the dataset (default: the full demo, 1,300 orders).
        #[arg(long)]
        orders: Option<usize>,
        /// Use this NATS server instead of starting one.
        #[arg(long)]
        nats_url: Option<String>,
        /// Where ledger.csv and ledger.beancount go.
        #[arg(long, default_value = "out")]
        out: PathBuf,
    },
    /// Measure this machine: raw JetStream, raw HTTP and the pipeline end
    /// to end, side by side (the last line is the end-to-end/limit ratio).
    Bench(ledgerline::bench::BenchArgs),
    /// Replay ORDERS and check every stored posting is reproduced exactly.
    Verify {
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Export LEDGER for audit (CSV or beancount) with delivery state, and
    /// report totals per registry and currency (exit 1 when unbalanced).
    Export(ExportArgs),

    /// Resend a dead-lettered posting with its same idempotency key and body,
    /// then the postings of the order it held.
    Redeliver {
        /// The registry id.
        #[arg(long)]
        registry: String,
        /// The order id.
        #[arg(long)]
        order: String,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Delivery state per (registry, order).
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// A sample accounting receiver: verifies signatures, answers
    /// registry_data, keeps what it received, fails on demand.
    Receiver(ReceiverArgs),
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Create or update the registries of a file: TOML `[[registry]]`
    /// entries (a whole config file works) or JSON. All are validated
    /// before any is written; unchanged ones are not rewritten. `"***"` for
    /// a secret keeps the stored one.
    Apply {
        /// The registry file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// A table of the registries: id, name, url, enabled, revision, updated.
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// One registry, secrets shown as "***".
    Show {
        /// The registry id.
        id: String,
        /// JSON (with revision and times) or a TOML entry to edit and apply.
        #[arg(long, value_enum, default_value = "json")]
        format: ledgerline::registry_cli::ShowFormat,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Delete a registry: no new postings for it; its postings stay in
    /// LEDGER and its history in the bucket.
    Delete {
        /// The registry id.
        id: String,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// One line per (registry, order): postings, delivered, status, attempts,
    /// last error, next attempt.
    List {
        /// Only this registry.
        #[arg(long)]
        registry: Option<String>,
        /// Only this status.
        #[arg(long, value_enum)]
        status: Option<ledgerline::dispatcher::state::Status>,
        /// NDJSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

/// `ledgerline receiver` flags.
#[derive(Args)]
struct ReceiverArgs {
    /// Address to listen on, e.g. 127.0.0.1:9000.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Verify Standard Webhooks signatures with this `whsec_…` secret.
    #[arg(long)]
    secret: Option<String>,
    /// Answer this HTTP status instead of accepting…
    #[arg(long)]
    fail_status: Option<u16>,
    /// …to this share of requests (0 to 1).
    #[arg(long, default_value_t = 1.0)]
    fail_share: f64,
    /// Wait this long before answering.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Plus a random extra wait up to this long (answers in random order).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
}

/// `ledgerline export` flags.
#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// Output file, or - for standard output.
    #[arg(long, default_value = "-")]
    out: PathBuf,
    /// Only these registries (repeatable or comma-separated); all by default.
    #[arg(long = "registry", value_delimiter = ',')]
    registries: Vec<String>,
    /// Only postings posted at or after this RFC 3339 time.
    #[arg(long, value_parser = parse_rfc3339)]
    from: Option<time::OffsetDateTime>,
    /// Only postings posted before this RFC 3339 time.
    #[arg(long, value_parser = parse_rfc3339)]
    to: Option<time::OffsetDateTime>,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    format: ExportFormat,
    /// Write the summary to this file instead of standard error.
    #[arg(long)]
    summary: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Csv,
    Beancount,
}

fn parse_rfc3339(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-11-22T10:00:00Z: {e}"))
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
    ledgerline::tls::install_crypto_provider();
    let result = match cli.command {
        Command::Postings {
            config,
            events,
            pretty,
        } => return postings(config, events, pretty),
        Command::Run {
            nats,
            only,
            admin_listen,
        } => {
            init_logging("info");
            let settings = nats.settings_with(|c| {
                if let Some(a) = admin_listen {
                    c.admin_listen = a;
                }
            });
            let settings = match settings {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("ledgerline: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            run(settings, only)
        }
        Command::Registry { command } => {
            init_logging("warn");
            registry(command)
        }
        Command::Publish { file, nats, strict } => {
            init_logging("warn");
            let settings = match settings_or_exit(&nats) {
                Ok(s) => s,
                Err(code) => return code,
            };
            publish(settings, file, strict)
        }
        Command::Demo {
            orders,
            nats_url,
            out,
        } => {
            // The demo fails on purpose (retries, a dead letter); its
            // summary says what happened, so only errors are logged.
            init_logging("error");
            demo(orders, nats_url, out)
        }
        Command::Bench(args) => return ledgerline::bench::cli(args),
        Command::Verify { nats } => {
            init_logging("warn");
            let settings = match settings_or_exit(&nats) {
                Ok(s) => s,
                Err(code) => return code,
            };
            verify(settings)
        }
        Command::Export(args) => {
            init_logging("warn");
            let settings = match settings_or_exit(&args.nats) {
                Ok(s) => s,
                Err(code) => return code,
            };
            export(settings, args)
        }
        Command::Redeliver {
            registry,
            order,
            nats,
        } => {
            init_logging("warn");
            let settings = match settings_or_exit(&nats) {
                Ok(s) => s,
                Err(code) => return code,
            };
            redeliver(settings, &registry, &order)
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
            let settings = match settings_or_exit(&nats) {
                Ok(s) => s,
                Err(code) => return code,
            };
            deliveries_list(settings, registry, status, json)
        }
        Command::Receiver(args) => {
            init_logging("info");
            receiver(args)
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
        Component::ALL.into_iter().collect()
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
        match ledgerline::service::run(settings, components, shutdown).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) if e.is_config_error() => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("ledgerline: {e}");
                Ok(ExitCode::from(EXIT_USAGE))
            }
            Err(e) => Err(e.into()),
        }
    })
}

/// `ledgerline registry …`: exit 0 done, 1 NATS trouble or no such
/// registry, 2 an invalid file or registry (the message names the field).
fn registry(command: RegistryCommand) -> anyhow::Result<ExitCode> {
    use ledgerline::registry_cli::{
        read_registry_file, render_json_line, render_show, render_table,
    };
    use ledgerline::registry_store::{ChangedBy, RegistryStore, StoreError};
    let nats = match &command {
        RegistryCommand::Apply { nats, .. }
        | RegistryCommand::List { nats, .. }
        | RegistryCommand::Show { nats, .. }
        | RegistryCommand::Delete { nats, .. } => nats.clone(),
    };
    let settings = match settings_or_exit(&nats) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    // Read the file before connecting: a bad file is exit 2 either way.
    let file = match &command {
        RegistryCommand::Apply { file, .. } => match read_registry_file(file) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("ledgerline: {e}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        },
        _ => None,
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let client = ledgerline::streams::connect_once(&settings.config).await?;
        let js = async_nats::jetstream::new(client.clone());
        let store = RegistryStore::open(&js, settings.policy.clone())
            .await?
            .with_smtp_configured(settings.config.smtp.is_some());
        let mut out = std::io::stdout().lock();
        let code = match command {
            RegistryCommand::Apply { .. } => {
                let configs = file.unwrap_or_default();
                match store.apply(&configs, ChangedBy::Cli).await {
                    Ok(done) => {
                        for (e, outcome) in done {
                            writeln!(
                                out,
                                "{} {} (revision {})",
                                outcome.as_str(),
                                e.config.id,
                                e.revision
                            )?;
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e @ StoreError::Invalid(_)) => {
                        eprintln!("ledgerline: {e}");
                        ExitCode::from(EXIT_USAGE)
                    }
                    Err(e) if e.is_caller_error() => {
                        eprintln!("ledgerline: {e}");
                        ExitCode::FAILURE
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            RegistryCommand::List { json, .. } => {
                let entries = store.list().await?;
                if json {
                    for e in &entries {
                        writeln!(out, "{}", render_json_line(e))?;
                    }
                } else {
                    write!(out, "{}", render_table(&entries))?;
                }
                ExitCode::SUCCESS
            }
            RegistryCommand::Show { id, format, .. } => match store.get(&id).await? {
                Some(e) => match render_show(&e, format) {
                    Ok(text) => {
                        write!(out, "{text}")?;
                        // On stderr: stdout stays valid JSON or TOML.
                        for w in store.warnings(&e.config) {
                            eprintln!("ledgerline: warning: registry {id}: {w}");
                        }
                        ExitCode::SUCCESS
                    }
                    Err(msg) => {
                        eprintln!("ledgerline: {msg}");
                        ExitCode::FAILURE
                    }
                },
                None => {
                    eprintln!("ledgerline: registry {id:?} does not exist");
                    ExitCode::FAILURE
                }
            },
            RegistryCommand::Delete { id, .. } => match store.delete(&id, None).await {
                Ok(e) => {
                    writeln!(
                        out,
                        "deleted {} (was revision {}); its postings stay in LEDGER",
                        e.config.id, e.revision
                    )?;
                    ExitCode::SUCCESS
                }
                Err(e) if e.is_caller_error() => {
                    eprintln!("ledgerline: {e}");
                    ExitCode::FAILURE
                }
                Err(e) => return Err(e.into()),
            },
        };
        out.flush()?;
        client.flush().await.context("flushing to NATS")?;
        Ok(code)
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

fn export(settings: Settings, args: ExportArgs) -> anyhow::Result<ExitCode> {
    use ledgerline::export::{ExportOptions, Format, Output};
    let opts = ExportOptions {
        registries: args.registries,
        from: args.from,
        to: args.to,
        format: match args.format {
            ExportFormat::Csv => Format::Csv,
            ExportFormat::Beancount => Format::Beancount,
        },
        progress: std::io::stderr().is_terminal(),
    };
    if let Err(e) = opts.validate() {
        eprintln!("ledgerline: {e}");
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let output =
        Output::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let writer = output.writer().context("opening the output")?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let client = ledgerline::streams::connect_once(&settings.config).await?;
        let report = ledgerline::export::export(&client, &opts, writer).await?;
        anyhow::Ok(report)
    })?;
    output
        .commit()
        .with_context(|| format!("writing {}", args.out.display()))?;
    let text = report.render();
    match &args.summary {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("writing the summary to {}", path.display()))?,
        None => eprint!("{text}"),
    }
    Ok(if report.summary.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `ledgerline redeliver`: exit 0 when requested, 1 when nothing is
/// dead-lettered for the order.
fn redeliver(settings: Settings, registry: &str, order: &str) -> anyhow::Result<ExitCode> {
    use ledgerline::dispatcher::status::{RedeliverOutcome, request_redeliver};
    let rt = runtime()?;
    rt.block_on(async {
        let client = ledgerline::streams::connect_once(&settings.config).await?;
        let js = async_nats::jetstream::new(client.clone());
        let outcome = request_redeliver(&js, registry, order).await?;
        client.flush().await.context("flushing to NATS")?;
        Ok(match outcome {
            RedeliverOutcome::Requested {
                seq,
                idempotency_key,
                held,
            } => {
                println!(
                    "redelivery of posting {seq} of order {order} to {registry} requested \
                     (idempotency key {idempotency_key}); {held} held posting(s) follow it"
                );
                ExitCode::SUCCESS
            }
            RedeliverOutcome::NotDead { status } => {
                eprintln!(
                    "ledgerline: order {order} is not dead-lettered at {registry} (status: {}); nothing to redeliver",
                    status.as_str()
                );
                ExitCode::FAILURE
            }
            RedeliverOutcome::Unknown => {
                eprintln!("ledgerline: registry {registry} has no postings for order {order}");
                ExitCode::FAILURE
            }
        })
    })
}

/// `ledgerline deliveries list`.
fn deliveries_list(
    settings: Settings,
    registry: Option<String>,
    status: Option<ledgerline::dispatcher::state::Status>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use ledgerline::dispatcher::state::Status;
    use ledgerline::dispatcher::status::{ListFilter, list_deliveries};
    let bar = progress_bar(None, "reading deliveries");
    let rt = runtime()?;
    let rows = rt.block_on(async {
        let client = ledgerline::streams::connect_once(&settings.config).await?;
        let js = async_nats::jetstream::new(client);
        let filter = ListFilter { registry, status };
        let rows = list_deliveries(&js, &filter, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await?;
        anyhow::Ok(rows)
    })?;
    bar.finish_and_clear();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        for r in &rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
    } else {
        writeln!(
            out,
            "{:<20} {:<38} {:<9} {:>8} {:>9} {:>5} {:>8} {:<25} LAST ERROR",
            "REGISTRY",
            "ORDER",
            "STATUS",
            "POSTINGS",
            "DELIVERED",
            "HELD",
            "ATTEMPTS",
            "NEXT ATTEMPT"
        )?;
        for r in &rows {
            let next = r
                .next_attempt_at
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            writeln!(
                out,
                "{:<20} {:<38} {:<9} {:>8} {:>9} {:>5} {:>8} {:<25} {}",
                r.registry_id,
                r.order_id,
                r.status.as_str(),
                r.postings,
                r.delivered,
                r.held,
                r.attempts,
                next,
                r.last_error.as_deref().unwrap_or("")
            )?;
        }
    }
    out.flush()?;
    let count = |s: Status| rows.iter().filter(|r| r.status == s).count();
    eprintln!(
        "deliveries: {} (registry, order) pairs: {} delivered, {} pending, {} retrying, {} dead",
        rows.len(),
        count(Status::Delivered),
        count(Status::Pending),
        count(Status::Retrying),
        count(Status::Dead)
    );
    Ok(ExitCode::SUCCESS)
}

/// `ledgerline receiver`: serves until Ctrl-C, then prints what it saw.
fn receiver(args: ReceiverArgs) -> anyhow::Result<ExitCode> {
    use ledgerline::receiver::{FailureMode, Receiver};
    let secret = args.secret.map(ledgerline::secret::Secret::new);
    let failure = FailureMode {
        status: args.fail_status,
        share: args.fail_share,
        delay_ms: args.delay_ms,
        jitter_ms: args.jitter_ms,
    };
    let rx = match Receiver::new(secret.as_ref(), failure) {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("ledgerline: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "receiver listening on http://{addr} (signatures {}); control API under /_receiver/",
            if secret.is_some() {
                "verified"
            } else {
                "not checked"
            }
        );
        rx.clone().serve(listener, wait_for_signal()).await?;
        let s = rx.stats();
        eprintln!(
            "receiver: {} requests, {} accepted, {} failures injected, {} bad signatures, \
             {} registry_data chain breaks, {} postings, {} orders",
            s.requests,
            s.accepted,
            s.failures_injected,
            s.signature_failures,
            s.chain_breaks,
            s.distinct_keys,
            s.orders
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn demo(orders: Option<usize>, nats_url: Option<String>, out: PathBuf) -> anyhow::Result<ExitCode> {
    use ledgerline::demo::{DemoOptions, dataset};
    let opts = DemoOptions {
        orders: orders.unwrap_or(dataset::ORDERS),
        nats_url,
        out_dir: out,
    };
    let tty = std::io::stderr().is_terminal();
    let bar = progress_bar(None, "starting");
    if tty {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
    }
    let mut last_stage = String::new();
    let rt = runtime()?;
    let summary = rt.block_on(ledgerline::demo::run_demo(opts, |p| {
        let line = format!(
            "{}: published {}/{} · postings {} · delivered {} · rejected {}",
            p.stage, p.published, p.events, p.postings, p.delivered, p.rejected
        );
        if tty {
            bar.set_message(line);
        } else if p.stage != last_stage {
            eprintln!("demo: {}", p.stage);
            last_stage = p.stage.clone();
        }
    }))?;
    bar.finish_and_clear();
    println!("{summary}");
    let ok = summary.balanced && summary.bean_check != Some(false);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
