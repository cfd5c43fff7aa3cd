//! `ledgerline publish`: an NDJSON events file to ORDERS
//! ([`crate::publish`]), refusals and a summary on stderr, a progress bar
//! on a terminal. With `--strict`, each routable line is also parsed as
//! the aggregator will ([`crate::events::parse_event`]: the schema's rules
//! and the ledger rules of one event), so the command's verdict is the
//! aggregator's; such a line is still published, and the aggregator
//! records it on `ledger.rejected.<reason>`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::args::NatsArgs;
use super::{CliError, Exit, progress_bar, settings_or_report, with_nats};
use crate::events::{Rejection, parse_event};

/// Reads the input for [`crate::publish::publish`] and, when `check`,
/// parses each routable line as the aggregator will as it goes by,
/// keeping the rejected ones by line number (numbered as `publish`
/// numbers them: every line, blank ones included).
struct Checked<R> {
    inner: R,
    check: bool,
    /// The line read so far, without its newline.
    line: Vec<u8>,
    line_no: u64,
    rejected: Vec<(u64, Rejection)>,
}

impl<R: BufRead> Checked<R> {
    fn new(inner: R, check: bool) -> Self {
        Self {
            inner,
            check,
            line: Vec::new(),
            line_no: 0,
            rejected: Vec::new(),
        }
    }

    /// Checks the line read so far, as `publish` reads it (a trailing
    /// `\r` dropped, blank lines skipped, unroutable ones refused there).
    fn check_line(&mut self) {
        self.line_no += 1;
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) || crate::publish::route(&line).is_err() {
            return;
        }
        if let Err(r) = parse_event(&line, None) {
            self.rejected.push((self.line_no, r));
        }
    }

    /// Checks a last line that has no newline.
    fn finish(&mut self) {
        if self.check && !self.line.is_empty() {
            self.check_line();
        }
    }
}

impl<R: BufRead> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Checked<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if self.check {
            // What is consumed is what `fill_buf` returned: buffered, so
            // asking again reads nothing.
            let taken = match self.inner.fill_buf() {
                Ok(buf) => buf[..amt.min(buf.len())].to_vec(),
                Err(_) => Vec::new(),
            };
            for piece in taken.split_inclusive(|&b| b == b'\n') {
                match piece.strip_suffix(b"\n") {
                    Some(end) => {
                        self.line.extend_from_slice(end);
                        self.check_line();
                    }
                    None => self.line.extend_from_slice(piece),
                }
            }
        }
        self.inner.consume(amt);
    }
}

/// Exit 1 when `strict` and any line was refused, or would be rejected by
/// the aggregator.
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
    let mut input = Checked::new(input, strict);
    let bar = progress_bar(len.map(|_| 0), "publishing");
    let summary = with_nats(&settings.config, async |client| {
        let summary = crate::publish::publish(
            &client,
            &settings.config.order_subjects(),
            settings.config.stream_replicas,
            &source,
            &mut input,
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
    input.finish();
    for (line, r) in &input.rejected {
        eprintln!("line {line}: rejected by the aggregator's rules: {r}");
    }
    eprintln!("{summary}");
    if !input.rejected.is_empty() {
        eprintln!(
            "publish --strict: {} published lines will be rejected (ledger.rejected.<reason>)",
            input.rejected.len()
        );
    }
    Ok(
        if strict && (summary.refused_total() > 0 || !input.rejected.is_empty()) {
            Exit::Failure
        } else {
            Exit::Success
        },
    )
}
