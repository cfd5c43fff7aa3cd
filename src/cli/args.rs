//! The command line of `ledgerline`: clap's derive types for every command
//! and its flags (`main.rs` parses them; [`super::execute`] runs them).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, Settings};
use crate::service::Component;

#[derive(Parser)]
#[command(
    name = "ledgerline",
    version,
    about = "Order events in, exact double-entry ledger postings out, delivered over webhooks."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the configuration and NATS are (every command that talks to NATS).
#[derive(Args, Clone)]
pub struct NatsArgs {
    /// Configuration file (docs/configuration.md); defaults apply without one.
    #[arg(long, env = "LEDGERLINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS server URL, overriding the file and LEDGERLINE_NATS_URL.
    #[arg(long)]
    pub nats_url: Option<String>,
}

impl NatsArgs {
    /// defaults → file → LEDGERLINE_* → flags, then validated.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        self.settings_with(|_| {})
    }

    /// Like [`NatsArgs::settings`], with a command's own flags applied last.
    pub fn settings_with(&self, flags: impl FnOnce(&mut Config)) -> Result<Settings, ConfigError> {
        let mut config = Config::load(self.config.as_deref(), std::env::vars())?;
        if let Some(url) = &self.nats_url {
            config.nats_url = url.clone();
        }
        flags(&mut config);
        config.validate()
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the service: aggregator, dispatcher, admin API and, with sources,
    /// inbound webhooks (or some of them) until SIGTERM or Ctrl-C.
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
        /// Address of the inbound webhooks (docs/inbound.md), overriding the
        /// file and LEDGERLINE_INGEST_LISTEN; served even without a [[source]].
        // `[[source]]` is TOML in the --help text, not a doc link.
        #[allow(rustdoc::broken_intra_doc_links)]
        #[arg(long)]
        ingest_listen: Option<String>,
    },
    /// Registries in the registry bucket: apply a file, list, show, delete,
    /// backfill.
    /// Changes reach a running service at once.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Inbound sources (docs/inbound.md) in the source bucket: apply a file,
    /// list, show, delete. Changes reach a running service at once.
    Source {
        #[command(subcommand)]
        command: SourceCommand,
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
        /// Keep everything running after the summary (the console stays
        /// reachable) until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Measure this machine: raw JetStream, raw HTTP and the pipeline end
    /// to end, side by side (the last line is the end-to-end/limit ratio).
    Bench(crate::bench::BenchArgs),
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
pub enum RegistryCommand {
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
    #[command(flatten)]
    Stored(StoredCommand<Registries>),
    /// Post the current ledger of the orders a registry missed (it was
    /// created or enabled after their events) as each order's first
    /// posting. Throttled by the registry's rate limit; idempotent: run it
    /// again after a crash and it posts only what is missing.
    Backfill(BackfillArgs),
}

/// `ledgerline registry backfill`.
#[derive(Args)]
pub struct BackfillArgs {
    /// The registry id.
    pub id: String,
    /// Only orders with an event stored at or after this time (RFC 3339,
    /// e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_parser = parse_rfc3339)]
    pub from: Option<time::OffsetDateTime>,
    /// Only the orders of this file: one order id per line (blank lines
    /// and lines starting with # are skipped).
    #[arg(long, value_name = "FILE")]
    pub orders: Option<PathBuf>,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// What a `registry` subcommand runs.
pub enum RegistryRun {
    /// An operation `source` has too.
    Item(NatsArgs, ItemOp),
    Backfill(BackfillArgs),
}

impl RegistryCommand {
    /// Where the configuration and NATS are, whichever the subcommand.
    pub fn nats(&self) -> &NatsArgs {
        match self {
            RegistryCommand::Apply { nats, .. }
            | RegistryCommand::Backfill(BackfillArgs { nats, .. }) => nats,
            RegistryCommand::Stored(StoredCommand::List(ListArgs { nats, .. }))
            | RegistryCommand::Stored(StoredCommand::Show(ShowArgs { nats, .. }))
            | RegistryCommand::Stored(StoredCommand::Delete(DeleteArgs { nats, .. })) => nats,
        }
    }

    /// What to run, and where NATS is.
    pub fn into_run(self) -> RegistryRun {
        let item = |nats, op| RegistryRun::Item(nats, op);
        match self {
            RegistryCommand::Apply { file, nats } => item(nats, ItemOp::Apply { file }),
            RegistryCommand::Stored(command) => {
                let (nats, op) = command.into_op();
                item(nats, op)
            }
            RegistryCommand::Backfill(args) => RegistryRun::Backfill(args),
        }
    }
}

/// What `registry` and `source` do, whichever the items.
pub enum ItemOp {
    Apply {
        file: PathBuf,
    },
    List {
        json: bool,
    },
    Show {
        id: String,
        format: super::registry::ShowFormat,
    },
    Delete {
        id: String,
    },
}

/// `list`, `show` and `delete`: the same for registries and sources but
/// for how their help names the items (`N`).
#[derive(Subcommand)]
pub enum StoredCommand<N: ItemHelp> {
    #[command(about = N::LIST)]
    List(ListArgs),
    #[command(about = N::SHOW)]
    Show(ShowArgs<N>),
    #[command(about = N::DELETE)]
    Delete(DeleteArgs<N>),
}

impl<N: ItemHelp> StoredCommand<N> {
    /// Where NATS is, and what to do.
    fn into_op(self) -> (NatsArgs, ItemOp) {
        match self {
            StoredCommand::List(args) => (args.nats, ItemOp::List { json: args.json }),
            StoredCommand::Show(args) => {
                let (id, format) = (args.id, args.format);
                (args.nats, ItemOp::Show { id, format })
            }
            StoredCommand::Delete(args) => (args.nats, ItemOp::Delete { id: args.id }),
        }
    }
}

/// How the help of [`StoredCommand`] names its items (as clap prints
/// help: no final period).
pub trait ItemHelp: Send + Sync + 'static {
    /// What `list` shows.
    const LIST: &'static str;
    /// What `show` shows.
    const SHOW: &'static str;
    /// What `delete` does and what stays.
    const DELETE: &'static str;
    /// The id argument of `show` and `delete`.
    const ID: &'static str;
}

/// `registry list|show|delete`.
pub struct Registries;
impl ItemHelp for Registries {
    const LIST: &'static str =
        "A table of the registries: id, name, url, enabled, revision, updated";
    const SHOW: &'static str = "One registry, secrets shown as \"***\"";
    const DELETE: &'static str = "Delete a registry: no new postings for it; its postings stay in \
        LEDGER and its history in the bucket";
    const ID: &'static str = "The registry id";
}

/// `source list|show|delete`.
pub struct Sources;
impl ItemHelp for Sources {
    const LIST: &'static str =
        "A table of the sources: id, kind, auth, currency, revision, updated";
    const SHOW: &'static str = "One source, secrets shown as \"***\"";
    const DELETE: &'static str = "Delete a source: its route answers 404 from now on; what it \
        sent stays in ORDERS and its history in the bucket";
    const ID: &'static str = "The source id";
}

/// `registry list` and `source list`.
#[derive(Args)]
pub struct ListArgs {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub nats: NatsArgs,
}

/// `registry show` and `source show`.
#[derive(Args)]
pub struct ShowArgs<N: ItemHelp> {
    #[arg(help = N::ID)]
    pub id: String,
    /// JSON (with revision and times) or a TOML entry to edit and apply.
    #[arg(long, value_enum, default_value = "json")]
    pub format: super::registry::ShowFormat,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[arg(skip)]
    pub items: std::marker::PhantomData<N>,
}

/// `registry delete` and `source delete`.
#[derive(Args)]
pub struct DeleteArgs<N: ItemHelp> {
    #[arg(help = N::ID)]
    pub id: String,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[arg(skip)]
    pub items: std::marker::PhantomData<N>,
}

#[derive(Subcommand)]
pub enum SourceCommand {
    /// Create or update the sources of a file: TOML `[[source]]` entries (a
    /// whole config file works) or JSON. All are validated before any is
    /// written; unchanged ones are not rewritten. `"***"` for a secret keeps
    /// the stored one.
    Apply {
        /// The source file, or - for stdin.
        #[arg(value_name = "FILE", required_unless_present = "file_flag")]
        file: Option<PathBuf>,
        /// The same, as `registry apply -f` takes it.
        #[arg(
            short = 'f',
            long = "file",
            id = "file_flag",
            value_name = "FILE",
            conflicts_with = "file"
        )]
        file_flag: Option<PathBuf>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    #[command(flatten)]
    Stored(StoredCommand<Sources>),
}

impl SourceCommand {
    /// Where NATS is, and what to do.
    pub fn into_op(self) -> (NatsArgs, ItemOp) {
        match self {
            SourceCommand::Apply {
                file,
                file_flag,
                nats,
            } => {
                // clap requires one of the two; an empty path would be
                // refused as unreadable, naming it.
                let file = file.or(file_flag).unwrap_or_default();
                (nats, ItemOp::Apply { file })
            }
            SourceCommand::Stored(command) => command.into_op(),
        }
    }
}

#[derive(Subcommand)]
pub enum DeliveriesCommand {
    /// One line per (registry, order): postings, delivered, status, attempts,
    /// last error, next attempt.
    List {
        /// Only this registry.
        #[arg(long)]
        registry: Option<String>,
        /// Only this status.
        #[arg(long, value_enum)]
        status: Option<crate::records::DeliveryStatus>,
        /// NDJSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Rebuilds the dead-letter index (which pairs are dead or retrying,
    /// what `list --status dead|retrying` reads) from LEDGER. Safe while
    /// the service runs.
    Reindex {
        #[command(flatten)]
        nats: NatsArgs,
    },
}

/// `ledgerline receiver` flags.
#[derive(Args)]
pub struct ReceiverArgs {
    /// Address to listen on, e.g. 127.0.0.1:9000.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Verify Standard Webhooks signatures with this `whsec_…` secret.
    #[arg(long)]
    pub secret: Option<String>,
    /// Answer this HTTP status instead of accepting…
    #[arg(long)]
    pub fail_status: Option<u16>,
    /// …to this share of requests (0 to 1).
    #[arg(long, default_value_t = 1.0)]
    pub fail_share: f64,
    /// Wait this long before answering.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Plus a random extra wait up to this long (answers in random order).
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
}

/// `ledgerline export` flags.
#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Output file, or - for standard output.
    #[arg(long, default_value = "-")]
    pub out: PathBuf,
    /// Only these registries (repeatable or comma-separated); all by default.
    #[arg(long = "registry", value_delimiter = ',')]
    pub registries: Vec<String>,
    /// Only postings posted at or after this RFC 3339 time.
    #[arg(long, value_parser = parse_rfc3339)]
    pub from: Option<time::OffsetDateTime>,
    /// Only postings posted before this RFC 3339 time.
    #[arg(long, value_parser = parse_rfc3339)]
    pub to: Option<time::OffsetDateTime>,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: ExportFormat,
    /// Write the summary to this file instead of standard error.
    #[arg(long)]
    pub summary: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
    Beancount,
}

fn parse_rfc3339(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-11-22T10:00:00Z: {e}"))
}
