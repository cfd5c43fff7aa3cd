//! `ledgerline postings`: the offline engine ([`crate::offline`]) over an
//! events file, postings on stdout and a count on stderr. No NATS.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::Path;

use super::{Exit, report_failure, report_usage};
use crate::config::Config;
use crate::offline::{Layout, run_postings};

/// Exit 2 for a bad configuration (only what postings use is validated:
/// [`Config::validate_offline`]) or an events file that cannot be opened
/// (bad lines are rejected on stderr, not fatal); 1 when writing fails.
pub fn postings(config: &Path, events: &Path, pretty: bool) -> Exit {
    let settings =
        match Config::load(Some(config), std::env::vars()).and_then(|c| c.validate_offline()) {
            Ok(s) => s,
            Err(e) => return report_usage(e),
        };
    let input: Box<dyn std::io::BufRead> = if events.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match File::open(events) {
            Ok(f) => Box::new(BufReader::new(f)),
            Err(e) => {
                return report_usage(format_args!(
                    "cannot open events file {}: {e}",
                    events.display()
                ));
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
            Exit::Success
        }
        Err(e) => report_failure(e),
    }
}
