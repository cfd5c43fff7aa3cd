//! The `ledgerline` command: parses the command line, runs the command
//! ([`ledgerline::cli`]) and maps how it ended to an exit code.
//!
//! Exit codes: 0 done; 1 the work found a problem (verify mismatches, a
//! NATS failure); 2 an invalid configuration or command line.

use std::process::ExitCode;

use clap::Parser;

use ledgerline::cli::{self, Exit, args::Cli};

/// mimalloc instead of glibc's malloc: the pipeline allocates and frees many
/// small buffers across threads, where glibc spent ≈ 19 % of the bench's
/// CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for an invalid configuration or command line.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ledgerline::tls::install_crypto_provider();
    match cli::execute(cli.command) {
        Ok(Exit::Success) => ExitCode::SUCCESS,
        Ok(Exit::Failure) => ExitCode::FAILURE,
        Ok(Exit::Usage) => ExitCode::from(EXIT_USAGE),
        Err(e) => {
            // `{:#}`: the error and each of its causes.
            eprintln!("ledgerline: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
