//! The `ledgerline` command: parses the command line and calls the library.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ledgerline::config::{Config, ConfigError, Settings};
use ledgerline::offline::{Layout, run_postings};

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

#[derive(Subcommand)]
enum Command {
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
}

fn load_settings(path: &std::path::Path) -> Result<Settings, ConfigError> {
    Config::load(Some(path), std::env::vars())?.validate()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Postings {
            config,
            events,
            pretty,
        } => {
            let settings = match load_settings(&config) {
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
                    let mut err = stderr.lock();
                    let _ = writeln!(
                        err,
                        "postings: {} events read, {} accepted, {} rejected, {} postings",
                        s.lines, s.accepted, s.rejected, s.postings
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ledgerline: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
