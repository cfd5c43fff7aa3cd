//! `ledgerline run`: the service ([`crate::service`]) until SIGTERM or
//! Ctrl-C.

use std::collections::BTreeSet;

use tokio_util::sync::CancellationToken;

use super::args::NatsArgs;
use super::{CliError, Exit, report_usage, runtime, settings_or_report, wait_for_signal};
use crate::service::Component;

/// Runs `only` these components (all when empty) until a signal; exit 2
/// for a configuration the service refuses at start.
pub fn run(
    nats: &NatsArgs,
    only: Vec<Component>,
    admin_listen: Option<String>,
    ingest_listen: Option<String>,
) -> Result<Exit, CliError> {
    let settings = nats.settings_with(|c| {
        if let Some(a) = admin_listen {
            c.admin_listen = a;
        }
        if let Some(a) = ingest_listen {
            c.ingest_listen = Some(a);
        }
    });
    let Some(settings) = settings_or_report(settings) else {
        return Ok(Exit::Usage);
    };
    let components: BTreeSet<Component> = if only.is_empty() {
        Component::ALL.into_iter().collect()
    } else {
        only.into_iter().collect()
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            // The binary's target, as before this moved out of main.rs.
            tracing::info!(target: "ledgerline", "shutdown requested; finishing in-flight work");
            signals.cancel();
        });
        match crate::service::run(settings, components, shutdown).await {
            Ok(()) => Ok(Exit::Success),
            Err(e) if e.is_config_error() => {
                tracing::error!(target: "ledgerline", error = %e, "cannot start");
                Ok(report_usage(e))
            }
            Err(e) => Err(e.into()),
        }
    })
}
