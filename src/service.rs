//! `ledgerline run`: the long-running service, one process, the components
//! chosen (aggregator, dispatcher, admin API), stopped by a cancellation
//! token (SIGTERM / Ctrl-C in `main`).
//!
//! Start-up reads top to bottom: connect (retrying until NATS is up), make
//! sure the streams exist, start each component with the same registries and
//! shutdown token, then wait. On shutdown every component stops taking work,
//! finishes or hands back what is in flight, and returns; `run` returns when
//! all have.

use std::collections::BTreeSet;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::aggregator::{AggregatorOptions, run_aggregator};
use crate::config::Settings;
use crate::registry::fixed_registries;
use crate::streams;

/// A part of the service `run` can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Component {
    /// ORDERS → postings.
    Aggregator,
    /// Postings → webhooks.
    Dispatcher,
    /// The admin HTTP API.
    Admin,
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Nats(#[from] streams::NatsError),
    #[error("aggregator: {0}")]
    Aggregator(#[from] crate::aggregator::AggregatorError),
    #[error("component {0:?} is not available in this build yet")]
    Unavailable(Component),
    #[error("component {component:?} stopped: {message}")]
    Stopped {
        component: Component,
        message: String,
    },
}

/// Runs `components` until `shutdown` fires.
pub async fn run(
    settings: Settings,
    components: BTreeSet<Component>,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let client = streams::connect(&settings.config).await?;
    let registries = fixed_registries(settings.registries.clone());
    info!(
        nats_url = %settings.config.nats_url,
        registries = settings.registries.len(),
        components = ?components,
        "ledgerline starting"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for c in &components {
        match c {
            Component::Aggregator => {
                let options =
                    AggregatorOptions::new(&settings.config.subject_prefix, settings.ledger);
                let (client, registries, shutdown) =
                    (client.clone(), registries.clone(), shutdown.clone());
                tasks.spawn(async move {
                    run_aggregator(client, options, registries, shutdown)
                        .await
                        .map_err(ServiceError::from)
                });
            }
            other => return Err(ServiceError::Unavailable(*other)),
        }
    }
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let result = done.unwrap_or_else(|e| {
            Err(ServiceError::Stopped {
                component: Component::Aggregator,
                message: e.to_string(),
            })
        });
        if let Err(e) = result {
            error!(error = %e, "component failed; stopping the others");
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    // Let buffered publishes and acks reach the server before exiting.
    let _ = client.flush().await;
    info!("ledgerline stopped");
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
