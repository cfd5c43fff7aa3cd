//! `ledgerline postings`: the engine offline, no NATS (SPEC 6).
//!
//! Reads an NDJSON events file, and for each accepted event in file order and
//! each subscribed registry in config order writes one NDJSON line
//! `{"registry_id": R, "seq": n, "body": <request body>}` with registry_data
//! `{}`. Rejected events go to the error stream, one line each (line number,
//! event id, field, why); the rest are processed.

use std::io::{BufRead, Write};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::{ApplyError, Engine};
use crate::events::parse_event;
use crate::ledger::LedgerOptions;
use crate::posting::{Body, Posting};
use crate::registry::Registry;

/// What a `postings` run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PostingsSummary {
    pub lines: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub postings: u64,
}

/// Output layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One compact JSON object per line (the contract).
    Ndjson,
    /// Indented, with a blank line between postings, for people.
    Pretty,
}

/// The NDJSON line of one posting: `{"registry_id", "seq", "body"}`.
#[derive(Debug, Serialize)]
pub struct PostingLine<'a> {
    pub registry_id: &'a str,
    pub seq: u64,
    pub body: Body<'a>,
}

/// registry_data of every offline posting: an empty object.
static EMPTY_OBJECT: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| Value::Object(Map::new()));

/// The NDJSON line of one posting, with registry_data `{}`.
pub fn posting_line(p: &Posting) -> PostingLine<'_> {
    PostingLine {
        registry_id: &p.registry_id,
        seq: p.seq,
        body: p.body(&EMPTY_OBJECT),
    }
}

/// Runs the engine over `events`, writing postings to `out` and rejections
/// to `errors`. I/O errors end the run; bad events do not.
pub fn run_postings(
    options: LedgerOptions,
    registries: Vec<Registry>,
    events: impl BufRead,
    mut out: impl Write,
    mut errors: impl Write,
    layout: Layout,
) -> std::io::Result<PostingsSummary> {
    let mut engine = Engine::new(options, registries);
    let mut summary = PostingsSummary::default();
    for (i, line) in events.lines().enumerate() {
        let line = line?;
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        let result = parse_event(line.as_bytes(), None)
            .map_err(ApplyError::from)
            .and_then(|ev| engine.process(&ev));
        match result {
            Ok(postings) => {
                summary.accepted += 1;
                for p in &postings {
                    let v = posting_line(p);
                    match layout {
                        Layout::Ndjson => serde_json::to_writer(&mut out, &v)?,
                        Layout::Pretty => {
                            serde_json::to_writer_pretty(&mut out, &v)?;
                            writeln!(out)?;
                        }
                    }
                    writeln!(out)?;
                    summary.postings += 1;
                }
            }
            Err(e) => {
                summary.rejected += 1;
                writeln!(errors, "line {line_no}: {e}")?;
            }
        }
    }
    out.flush()?;
    Ok(summary)
}
