//! `ledgerline publish`: an NDJSON events file to ORDERS
//! ([`crate::publish`]), refusals and a summary on stderr, a progress bar
//! on a terminal.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::args::NatsArgs;
use super::{CliError, Exit, progress_bar, settings_or_report, with_nats};

/// Exit 1 when `strict` and any line was refused.
pub fn publish(nats: &NatsArgs, file: &Path, strict: bool) -> Result<Exit, CliError> {
    let Some(settings) = settings_or_report(nats.settings()) else {
        return Ok(Exit::Usage);
    };
    let (input, source, len): (Box<dyn std::io::BufRead + Send>, String, Option<u64>) =
        if file.as_os_str() == "-" {
            (
                Box::new(BufReader::new(std::io::stdin())),
                "stdin".to_owned(),
                None,
            )
        } else {
            let f = File::open(file).map_err(CliError::file("opening", file))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(BufReader::new(f)), file.display().to_string(), len)
        };
    let bar = progress_bar(len.map(|_| 0), "publishing");
    let summary = with_nats(&settings.config, async |client| {
        let summary = crate::publish::publish(
            &client,
            &settings.config.subject_prefix,
            settings.config.stream_replicas,
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
        client.flush().await.map_err(CliError::flush("flushing"))?;
        Ok(summary)
    })?;
    bar.finish_and_clear();
    eprintln!("{summary}");
    Ok(if strict && summary.refused_total() > 0 {
        Exit::Failure
    } else {
        Exit::Success
    })
}
