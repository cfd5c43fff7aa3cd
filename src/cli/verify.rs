//! `ledgerline verify`: replay ORDERS and compare with LEDGER
//! ([`crate::verify`]); each mismatch on stdout, the report on stderr.

use super::args::NatsArgs;
use super::{CliError, Exit, progress_bar, settings_or_report, with_nats};

/// Exit 1 when any stored posting is not reproduced exactly.
pub fn verify(nats: &NatsArgs) -> Result<Exit, CliError> {
    let Some(settings) = settings_or_report(nats.settings()) else {
        return Ok(Exit::Usage);
    };
    let bar = progress_bar(None, "verifying");
    let report = with_nats(&settings.config, async |client| {
        let report = crate::verify::verify(&client, &settings, |what, n| {
            bar.set_message(what.to_owned());
            bar.set_position(n);
        })
        .await?;
        Ok(report)
    })?;
    bar.finish_and_clear();
    for m in &report.mismatches {
        println!("{m}");
    }
    eprintln!("{report}");
    Ok(if report.ok() {
        Exit::Success
    } else {
        Exit::Failure
    })
}
