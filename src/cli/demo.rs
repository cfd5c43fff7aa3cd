//! `ledgerline demo`: the whole pipeline on one machine
//! ([`crate::demo`]), its stages on stderr (a spinner on a terminal) and
//! its summary on stdout.

use std::io::IsTerminal;
use std::path::PathBuf;

use super::{CliError, Exit, progress_bar, runtime};
use crate::demo::{DemoOptions, dataset};

/// Exit 1 when the ledger does not balance or bean-check refuses it.
/// With `keep`, everything stays up after the summary until Ctrl-C.
pub fn demo(
    orders: Option<usize>,
    nats_url: Option<String>,
    out: PathBuf,
    keep: bool,
) -> Result<Exit, CliError> {
    let opts = DemoOptions {
        orders: orders.unwrap_or(dataset::ORDERS),
        nats_url,
        out_dir: out,
        keep,
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
    let mut console_shown = false;
    let rt = runtime()?;
    let (summary, kept) = rt.block_on(crate::demo::run_demo(opts, |p| {
        if let Some(c) = p.console.as_ref().filter(|_| !console_shown) {
            // Shown once, above the spinner, while the demo runs.
            bar.suspend(|| eprintln!("demo: {c}"));
            console_shown = true;
        }
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
    if let Some(kept) = kept {
        eprintln!(
            "demo: everything stays up (console {}); Ctrl-C stops it",
            summary.console_url
        );
        rt.block_on(kept.stop_after(super::wait_for_signal()));
    }
    let ok = summary.balanced && summary.verify.ok() && summary.bean_check != Some(false);
    Ok(if ok { Exit::Success } else { Exit::Failure })
}
