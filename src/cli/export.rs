//! `ledgerline export`: LEDGER as an audit CSV or beancount file
//! ([`crate::export`]), its reconciling summary on stderr or in a file.

use std::io::IsTerminal;

use super::args::{ExportArgs, ExportFormat};
use super::{CliError, Exit, report_usage, settings_or_report, with_nats};
use crate::export::{ExportOptions, Format, Output};

/// Exit 1 when the summary does not balance; 2 for bad flags.
pub fn export(args: ExportArgs) -> Result<Exit, CliError> {
    let Some(settings) = settings_or_report(args.nats.settings()) else {
        return Ok(Exit::Usage);
    };
    let opts = ExportOptions {
        registries: args.registries,
        from: args.from,
        to: args.to,
        format: match args.format {
            ExportFormat::Csv => Format::Csv,
            ExportFormat::Beancount => Format::Beancount,
        },
        progress: std::io::stderr().is_terminal(),
        records_connection: None,
    };
    if let Err(e) = opts.validate() {
        return Ok(report_usage(e));
    }
    let output = Output::create(&args.out).map_err(CliError::file("creating", &args.out))?;
    let writer = output.writer().map_err(CliError::Output)?;
    let report = with_nats(&settings.config, async |client| {
        let opts = ExportOptions {
            records_connection: Some(crate::streams::connect_once(&settings.config).await?),
            ..opts
        };
        Ok(crate::export::export(&client, &opts, writer).await?)
    })?;
    output
        .commit()
        .map_err(CliError::file("writing", &args.out))?;
    let text = report.render();
    match &args.summary {
        Some(path) => {
            std::fs::write(path, &text).map_err(CliError::file("writing the summary to", path))?
        }
        None => eprint!("{text}"),
    }
    Ok(if report.summary.is_ok() {
        Exit::Success
    } else {
        Exit::Failure
    })
}
