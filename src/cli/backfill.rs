//! `ledgerline registry backfill R [--from T] [--orders FILE]`
//! ([`crate::backfill`]): a progress bar on a terminal, the summary on
//! stderr.

use super::args::BackfillArgs;
use super::{
    CliError, Exit, progress_bar, report_failure, report_usage, settings_or_report, with_nats,
};
use crate::backfill::{BackfillError, Scope, parse_order_list, registry_to_backfill};
use crate::registry_store::RegistryStore;

/// Exit 0 when done, 1 when the registry cannot be backfilled or NATS
/// fails midway (what was stored stays; run it again), 2 for a bad file.
pub fn backfill(args: BackfillArgs) -> Result<Exit, CliError> {
    let Some(settings) = settings_or_report(args.nats.settings()) else {
        return Ok(Exit::Usage);
    };
    let orders = match &args.orders {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(CliError::file("reading", path))?;
            match parse_order_list(&text) {
                Ok(list) => Some(list),
                Err(e) => return Ok(report_usage(format_args!("{}: {e}", path.display()))),
            }
        }
    };
    let bar = progress_bar(None, "backfilling");
    let result = with_nats(&settings.config, async |client| {
        let js = async_nats::jetstream::new(client.clone());
        let store = RegistryStore::open(
            &js,
            settings.policy.clone(),
            settings.config.stream_replicas,
        )
        .await?;
        let run = async {
            let registry = registry_to_backfill(&store, &args.id).await?;
            let scope = Scope {
                from: args.from,
                orders,
            };
            crate::backfill::backfill(
                &client,
                &settings.config.order_subjects(),
                settings.ledger,
                &registry,
                scope,
                |done, total| {
                    if let Some(total) = total {
                        bar.set_length(total);
                    }
                    bar.set_position(done);
                },
            )
            .await
        };
        Ok::<_, CliError>(run.await)
    })?;
    bar.finish_and_clear();
    Ok(match result {
        Ok(summary) => {
            eprintln!("{summary}");
            Exit::Success
        }
        Err(
            e @ (BackfillError::Unknown(_)
            | BackfillError::Disabled(_)
            | BackfillError::Invalid { .. }),
        ) => report_failure(e),
        Err(e) => report_failure(format_args!(
            "{}; what was stored stays: run the backfill again to go on",
            error_chain(&e)
        )),
    })
}

/// An error with its causes, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
