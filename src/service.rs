//! `ledgerline run`: the long-running service, one process, the components
//! chosen (aggregator, dispatcher, admin API), stopped by a cancellation
//! token (SIGTERM / Ctrl-C in `main`).
//!
//! Start-up reads top to bottom:
//! 1. connect (retrying until NATS is up);
//! 2. make sure the ORDERS and LEDGER streams and the registry and source
//!    buckets exist;
//! 3. apply the config file's `[[registry]]` and `[[source]]` entries to
//!    their buckets, each written only if it differs from what is stored
//!    (so every start-up is idempotent; the file wins over API edits of the
//!    same registry or source);
//! 4. follow the buckets: the live registry set every component reads and
//!    the live sources the ingest API serves, so a registry or source
//!    created, changed, disabled or deleted (API or CLI) is picked up
//!    without a restart;
//! 5. start each component with that set and the shutdown token (the
//!    ingest API for inbound webhooks only when sources are configured in
//!    the file or the bucket, or `ingest_listen` is set: [`crate::inbound`]);
//! 6. wait.
//!
//! Steps 2–4 are retried while NATS is unreachable. On shutdown every
//! component stops taking work, finishes or hands back what is in flight
//! (the aggregator finishes the event each lane is applying and naks the
//! queued ones; the dispatcher finishes and records the attempts in flight
//! and hands back its messages; the admin API finishes the requests in
//! flight), and `run` returns once all have. A component that fails, or
//! stops while it should not, stops the others, and `run` returns its error.
//!
//! [`InProcess`] runs the same beside a client of the caller's own (the
//! demo and the bench watch LEDGER while the pipeline fills it).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, AdminConfig, AdminState, ComponentState, Health};
use crate::aggregator::{AggregatorOptions, run_aggregator};
use crate::config::Settings;
use crate::dispatcher::{DispatchError, DispatcherOptions, run_dispatcher};
use crate::registry_store::{self, RegistryStore, RegistryWatcher, StoreError};
use crate::source_store::{self, SourceStore, SourceWatcher};
use crate::streams;

/// Backoff between start-up attempts while NATS is unreachable: first, cap.
pub use crate::streams::{START_RETRY_MAX, START_RETRY_MIN};
/// Longest the last flush to NATS may take at shutdown.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A part of the service `run` can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Component {
    /// ORDERS → postings.
    Aggregator,
    /// Postings → webhooks.
    Dispatcher,
    /// The admin HTTP API.
    Admin,
    /// Inbound webhooks (SPEC 10) on `ingest_listen`: started only when
    /// the config has a `[[source]]` or sets `ingest_listen`.
    Ingest,
}

impl Component {
    /// Every component: what `run` starts by default.
    pub const ALL: [Component; 4] = [
        Component::Aggregator,
        Component::Dispatcher,
        Component::Admin,
        Component::Ingest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Aggregator => "aggregator",
            Component::Dispatcher => "dispatcher",
            Component::Admin => "admin",
            Component::Ingest => "ingest",
        }
    }
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Nats(#[from] streams::NatsError),
    #[error("registries: {0}")]
    Registries(#[from] StoreError),
    #[error("sources: {0}")]
    Sources(#[source] StoreError),
    #[error("aggregator: {0}")]
    Aggregator(#[from] crate::aggregator::AggregatorError),
    #[error("dispatcher: {0}")]
    Dispatcher(#[from] DispatchError),
    #[error(
        "admin_token must be set to serve the admin API (in the config file or \
         LEDGERLINE_ADMIN_TOKEN), or leave the API out: --only aggregator,dispatcher"
    )]
    MissingAdminToken,
    #[error("cannot listen on {addr} for the admin API: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API: {0}")]
    Admin(#[source] std::io::Error),
    #[error("cannot listen on {addr} for inbound webhooks (ingest_listen): {source}")]
    ListenIngest {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ingest API: {0}")]
    Ingest(#[source] std::io::Error),
    #[error("lease: {0}")]
    Lease(#[from] crate::lease::LeaseError),
    #[error("component {component:?} stopped: {message}")]
    Stopped {
        component: Component,
        message: String,
    },
}

impl ServiceError {
    /// True when the configuration is at fault (exit 2), not the run.
    pub fn is_config_error(&self) -> bool {
        matches!(
            self,
            ServiceError::MissingAdminToken
                | ServiceError::Listen { .. }
                | ServiceError::ListenIngest { .. }
                | ServiceError::Registries(StoreError::Invalid(_))
                | ServiceError::Sources(StoreError::Invalid(_))
        )
    }
}

/// [`run`] in this process beside a client of the caller's own, with the
/// ORDERS and LEDGER streams ensured first: how the demo and the bench run
/// the pipeline. [`Self::stop`] stops it.
pub struct InProcess {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// The LEDGER stream, to watch what the pipeline writes.
    pub ledger: jetstream::stream::Stream,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

impl InProcess {
    /// Connects once (no retrying), ensures the streams and starts
    /// `components` with `settings`.
    pub async fn start(
        settings: &Settings,
        components: &[Component],
    ) -> Result<InProcess, streams::NatsError> {
        let client = streams::connect_once(&settings.config).await?;
        let js = jetstream::new(client.clone());
        streams::ensure_streams(
            &js,
            &settings.config.order_subjects(),
            settings.config.stream_replicas,
        )
        .await?;
        let ledger = js
            .get_stream(streams::LEDGER_STREAM)
            .await
            .map_err(|source| streams::NatsError::GetStream {
                stream: streams::LEDGER_STREAM,
                source,
            })?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            settings.clone(),
            components.iter().copied().collect(),
            shutdown.clone(),
        ));
        Ok(InProcess {
            client,
            js,
            ledger,
            shutdown,
            task,
        })
    }

    /// Whether it has stopped on its own (a component failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the components (an error they stop with is logged: what they
    /// wrote is what the caller reports on) and flushes the client.
    pub async fn stop(self) {
        self.shutdown.cancel();
        if let Ok(Err(e)) = self.task.await {
            warn!(error = %e, "the pipeline stopped with an error");
        }
        let _ = self.client.flush().await;
    }
}

/// Runs `components` until `shutdown` fires, the admin API (when chosen)
/// on `admin_listen`.
pub async fn run(
    settings: Settings,
    components: BTreeSet<Component>,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let listener = if components.contains(&Component::Admin) {
        admin_token(&settings)?;
        let addr = settings.config.admin_listen.clone();
        Some(
            TcpListener::bind(&addr)
                .await
                .map_err(|source| ServiceError::Listen { addr, source })?,
        )
    } else {
        None
    };
    let listeners = Listeners {
        admin: listener,
        ingest: None,
    };
    run_with_listeners(settings, components, listeners, shutdown).await
}

/// Listeners bound by the caller (tests bind `127.0.0.1:0`); a component
/// whose listener is `None` binds its configured address.
#[derive(Debug, Default)]
pub struct Listeners {
    pub admin: Option<TcpListener>,
    pub ingest: Option<TcpListener>,
}

fn admin_token(settings: &Settings) -> Result<crate::secret::Secret, ServiceError> {
    match &settings.config.admin_token {
        Some(t) if !t.expose().trim().is_empty() => Ok(t.clone()),
        _ => Err(ServiceError::MissingAdminToken),
    }
}

/// [`run`] with the admin API on an already bound listener (tests bind
/// `127.0.0.1:0`). The listener is required when `components` has the
/// admin API, and ignored otherwise.
pub async fn run_with_listener(
    settings: Settings,
    components: BTreeSet<Component>,
    admin_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let listeners = Listeners {
        admin: admin_listener,
        ingest: None,
    };
    run_with_listeners(settings, components, listeners, shutdown).await
}

/// [`run`] with the listeners given (each required only when its
/// component is chosen; `None` binds the configured address).
pub async fn run_with_listeners(
    settings: Settings,
    mut components: BTreeSet<Component>,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    // Inbound webhooks are served only where sources are configured: in
    // the file (or `ingest_listen`) as checked here, or in the bucket as
    // found once it is read (below).
    let ingest_chosen = components.contains(&Component::Ingest);
    if !settings.config.serves_ingest() && listeners.ingest.is_none() {
        components.remove(&Component::Ingest);
    }
    // Everything that can be refused is checked before anything starts.
    let admin_parts = if components.contains(&Component::Admin) {
        Some(admin_parts(&settings, listeners.admin).await?)
    } else {
        None
    };
    let ingest_listener = if components.contains(&Component::Ingest) {
        Some(match listeners.ingest {
            Some(l) => l,
            None => {
                let addr = settings.config.ingest_addr().to_owned();
                TcpListener::bind(&addr)
                    .await
                    .map_err(|source| ServiceError::ListenIngest { addr, source })?
            }
        })
    } else {
        None
    };
    let dispatcher_options = if components.contains(&Component::Dispatcher) {
        Some(DispatcherOptions::from_settings(&settings)?)
    } else {
        None
    };
    let health = Arc::new(Health::new());
    for c in &components {
        health.set(c.name(), ComponentState::Starting);
    }
    let client = streams::connect(&settings.config).await?;
    info!(
        nats_url = %crate::streams::redact_url(&settings.config.nats_url),
        config_registries = settings.config.registry.len(),
        components = ?components,
        "ledgerline starting"
    );
    let js = jetstream::new(client.clone());
    let Some(((store, watcher), (source_store, source_watcher))) =
        prepare(&js, &settings, &shutdown).await?
    else {
        info!("shutdown requested during start-up; ledgerline stopped");
        return Ok(());
    };
    let sources = source_watcher.registries.clone();
    // Sources created over the API or the CLI before this start-up.
    let ingest_listener = match ingest_listener {
        None if ingest_chosen && !sources.borrow().is_empty() => {
            let addr = settings.config.ingest_addr().to_owned();
            let l = TcpListener::bind(&addr)
                .await
                .map_err(|source| ServiceError::ListenIngest { addr, source })?;
            components.insert(Component::Ingest);
            health.set(Component::Ingest.name(), ComponentState::Starting);
            Some(l)
        }
        other => other,
    };
    health.set_registry_watch(watcher.healthy.clone());
    let registries = watcher.registries.clone();
    crate::registry_store::log_startup_warnings(&settings, &registries.borrow());

    let mut tasks = tokio::task::JoinSet::new();
    let mut names = HashMap::new();
    // The aggregator and the dispatcher act only while this instance holds
    // the lease: one task runs them, standing by while another is active.
    let active: Vec<Component> = components
        .iter()
        .copied()
        .filter(|c| !matches!(c, Component::Admin | Component::Ingest))
        .collect();
    // One lease per component: `--only aggregator` and `--only dispatcher`
    // in separate processes each hold their own.
    for c in active {
        let parts = ActiveParts {
            js: js.clone(),
            client: client.clone(),
            settings: settings.clone(),
            components: vec![c],
            dispatcher_options: dispatcher_options.clone(),
            registries: registries.clone(),
            health: health.clone(),
        };
        let handle = if c == Component::Dispatcher && settings.config.share_registries {
            tasks.spawn(run_shared_dispatcher(parts, shutdown.clone()))
        } else if c == Component::Aggregator && settings.config.order_partitions > 0 {
            tasks.spawn(run_partitioned_aggregator(parts, shutdown.clone()))
        } else {
            tasks.spawn(run_active(parts, shutdown.clone()))
        };
        names.insert(handle.id(), c);
    }
    if let Some((listener, token)) = admin_parts {
        let state = AdminState::new(AdminConfig {
            client: client.clone(),
            store: store.clone(),
            registries: registries.clone(),
            sources: source_store,
            token,
            orders: settings.config.order_subjects(),
            ledger: settings.ledger,
            health: health.clone(),
        });
        let shutdown = shutdown.clone();
        let handle = tasks.spawn(async move {
            admin::serve(listener, state, shutdown)
                .await
                .map_err(ServiceError::Admin)
        });
        names.insert(handle.id(), Component::Admin);
        health.set(Component::Admin.name(), ComponentState::Running);
    }
    if let Some(listener) = ingest_listener {
        let state = crate::inbound::InboundState::new(
            client.clone(),
            settings.config.order_subjects(),
            sources,
        );
        let shutdown = shutdown.clone();
        let handle = tasks.spawn(async move {
            crate::inbound::serve(listener, state, shutdown)
                .await
                .map_err(ServiceError::Ingest)
        });
        names.insert(handle.id(), Component::Ingest);
        health.set(Component::Ingest.name(), ComponentState::Running);
    }

    let first_error = join_components(&mut tasks, &names, &shutdown, &health).await;
    // The watcher follows the same token; wait for it to let go.
    shutdown.cancel();
    let _ = watcher.task.await;
    let _ = source_watcher.task.await;
    flush(&client).await;
    info!("ledgerline stopped");
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The admin API's listener (the one given, else `admin_listen` bound) and
/// token (refused when missing).
async fn admin_parts(
    settings: &Settings,
    listener: Option<TcpListener>,
) -> Result<(TcpListener, crate::secret::Secret), ServiceError> {
    let token = admin_token(settings)?;
    let listener = match listener {
        Some(l) => l,
        None => {
            let addr = settings.config.admin_listen.clone();
            TcpListener::bind(&addr)
                .await
                .map_err(|source| ServiceError::Listen { addr, source })?
        }
    };
    Ok((listener, token))
}

/// Lets buffered publishes and acks reach the server before exiting, but
/// does not hang on a server that is gone: what was not acknowledged is
/// redelivered after a restart.
async fn flush(client: &async_nats::Client) {
    if tokio::time::timeout(FLUSH_TIMEOUT, client.flush())
        .await
        .is_err()
    {
        warn!(
            "NATS did not confirm the last writes in time; unacknowledged work will be redelivered"
        );
    }
}

/// What the active components need.
struct ActiveParts {
    js: jetstream::Context,
    client: async_nats::Client,
    settings: Settings,
    components: Vec<Component>,
    dispatcher_options: Option<DispatcherOptions>,
    registries: crate::registry_store::RegistryWatch,
    health: Arc<Health>,
}

impl ActiveParts {
    /// The lease bucket (retried until it opens; `None` at shutdown) and
    /// the lease TTL.
    async fn lease_bucket(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<(async_nats::jetstream::kv::Store, Duration)>, ServiceError> {
        // Validated with the config: a parse failure cannot happen here.
        let ttl = humantime::parse_duration(&self.settings.config.lease_ttl)
            .unwrap_or(crate::lease::TTL_DEFAULT);
        let store = lease_bucket(
            &self.js,
            ttl,
            self.settings.config.stream_replicas,
            shutdown,
        )
        .await?;
        Ok(store.map(|s| (s, ttl)))
    }

    /// Starts component `c` (the aggregator or the dispatcher) in `tasks`,
    /// writing only while `fence` holds and stopping with `token`.
    fn spawn(
        &self,
        c: Component,
        tasks: &mut tokio::task::JoinSet<Result<(), ServiceError>>,
        fence: &crate::lease::Fence,
        token: &CancellationToken,
    ) -> Option<tokio::task::AbortHandle> {
        let (client, registries, token) =
            (self.client.clone(), self.registries.clone(), token.clone());
        match c {
            Component::Aggregator => {
                let mut options = AggregatorOptions::new(
                    self.settings.config.order_subjects(),
                    self.settings.ledger,
                );
                options.fence = fence.clone();
                options.stream_replicas = self.settings.config.stream_replicas;
                options.ack_wait = self.settings.ack_wait;
                Some(tasks.spawn(async move {
                    run_aggregator(client, options, registries, token)
                        .await
                        .map_err(ServiceError::from)
                }))
            }
            Component::Dispatcher => {
                let mut options = self.dispatcher_options.clone()?;
                options.fence = fence.clone();
                Some(tasks.spawn(async move {
                    run_dispatcher(client, options, registries, token)
                        .await
                        .map_err(ServiceError::from)
                }))
            }
            Component::Admin | Component::Ingest => None,
        }
    }
}

impl ActiveParts {
    /// Shares component `c`'s keys (`wanted`, read again at every review)
    /// over the instances, one lease `<c>.<key>` each
    /// ([`crate::lease::shares`]), and marks `c` running: what this instance
    /// owns, and the sharing task, which ends after `shutdown` once every
    /// owned key's work has stopped. `None` at shutdown.
    async fn share(
        &self,
        c: Component,
        wanted: impl Fn() -> BTreeSet<String> + Send + 'static,
        shutdown: &CancellationToken,
    ) -> Result<Option<(crate::lease::shares::OwnedKeys, tokio::task::JoinHandle<()>)>, ServiceError>
    {
        let Some((store, ttl)) = self.lease_bucket(shutdown).await? else {
            return Ok(None);
        };
        let (owned_tx, owned) = tokio::sync::watch::channel(std::collections::BTreeMap::new());
        let options = crate::lease::shares::ShareOptions {
            store,
            prefix: format!("{}.", c.name()),
            instance: crate::lease::instance_name(),
            ttl,
        };
        let task = tokio::spawn(crate::lease::shares::share(
            options,
            wanted,
            owned_tx,
            shutdown.clone(),
        ));
        self.health.set(c.name(), ComponentState::Running);
        Ok(Some((owned, task)))
    }
}

/// The lease bucket, retried until it opens; `None` at shutdown.
async fn lease_bucket(
    js: &jetstream::Context,
    ttl: Duration,
    replicas: usize,
    shutdown: &CancellationToken,
) -> Result<Option<async_nats::jetstream::kv::Store>, ServiceError> {
    loop {
        match crate::lease::bucket(js, ttl, replicas).await {
            Ok(store) => return Ok(Some(store)),
            Err(e @ crate::lease::LeaseError::TtlTooShort { .. }) => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, "cannot open the lease bucket yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(START_RETRY_MAX) => {}
                }
            }
        }
    }
}

/// Runs the aggregator and the dispatcher while this instance holds the
/// lease ([`crate::lease`]); stands by while another instance does, and
/// again after losing it. Returns at shutdown (after the components have
/// stopped, then releasing the lease) or when a component fails.
async fn run_active(parts: ActiveParts, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let Some((store, ttl)) = parts.lease_bucket(&shutdown).await? else {
        return Ok(());
    };
    let instance = crate::lease::instance_name();
    loop {
        let health = parts.health.clone();
        let names: Vec<&'static str> = parts.components.iter().map(|c| c.name()).collect();
        let standby = |_| {
            for n in &names {
                health.set(n, ComponentState::Standby);
            }
        };
        let key = names.join("+");
        let Some(lease) =
            crate::lease::Lease::acquire(store.clone(), &key, &instance, ttl, &shutdown, standby)
                .await
        else {
            return Ok(());
        };
        let fence = lease.fence();
        let active = shutdown.child_token();
        let stop_keeper = CancellationToken::new();
        let keeper = tokio::spawn(lease.keep(stop_keeper.clone(), active.clone()));
        let mut tasks = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        for &c in &parts.components {
            if let Some(handle) = parts.spawn(c, &mut tasks, &fence, &active) {
                names.insert(handle.id(), c);
                parts.health.set(c.name(), ComponentState::Running);
            }
        }
        let first_error = join_components(&mut tasks, &names, &active, &parts.health).await;
        // Every write of this term is done: only now may another instance
        // take over (release, or let the lease run out if it was lost).
        stop_keeper.cancel();
        let _ = keeper.await;
        if let Some(e) = first_error {
            return Err(e);
        }
        if shutdown.is_cancelled() {
            for c in &parts.components {
                parts.health.set(c.name(), ComponentState::Stopped);
            }
            return Ok(());
        }
        warn!(instance = %instance, "lease lost; this instance stands by again");
    }
}

/// The dispatcher with `share_registries`: this instance delivers the
/// registries it owns, a fair share of them, each under a lease of its own
/// (`dispatcher.<registry>`, [`crate::lease::shares`]); the other
/// instances deliver the rest. Returns at shutdown, after every registry's
/// deliveries have stopped and its lease is released.
async fn run_shared_dispatcher(
    parts: ActiveParts,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let Some(mut options) = parts.dispatcher_options.clone() else {
        return Ok(());
    };
    let registries = parts.registries.clone();
    let wanted = move || {
        registries
            .borrow()
            .all()
            .iter()
            .filter(|r| r.config.enabled)
            .map(|r| r.id().to_owned())
            .collect()
    };
    let Some((owned, shares)) = parts
        .share(Component::Dispatcher, wanted, &shutdown)
        .await?
    else {
        return Ok(());
    };
    options.shares = Some(owned);
    let dispatched = run_dispatcher(
        parts.client.clone(),
        options,
        parts.registries.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(ServiceError::from);
    // A failed dispatcher stops this instance: its shares go back.
    shutdown.cancel();
    let _ = shares.await;
    dispatched
}

/// The aggregator with order partitions (`order_partitions` > 0): this
/// instance aggregates the partitions it owns, a fair share of them, each
/// under a lease of its own (`aggregator.p<k>`, [`crate::lease::shares`])
/// and through its own durable consumer (`aggregator-p<k>`); the other
/// instances aggregate the rest. A partition given up (another instance
/// joined) or lost stops its aggregator, which finishes the events it is
/// applying and hands the rest back, before its lease is released. Returns
/// at shutdown, after every partition has stopped.
async fn run_partitioned_aggregator(
    parts: ActiveParts,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let partitions = parts.settings.config.order_partitions;
    let wanted = move || (0..partitions).map(|k| format!("p{k}")).collect();
    let Some((mut owned, shares)) = parts
        .share(Component::Aggregator, wanted, &shutdown)
        .await?
    else {
        return Ok(());
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut failed = None;
    loop {
        // Start each newly owned partition once (`start` hands its guard
        // out once per ownership).
        let current = owned.borrow_and_update().clone();
        for (key, own) in current {
            let Some(k) = key.strip_prefix('p').and_then(|k| k.parse::<u32>().ok()) else {
                continue;
            };
            let Some(guard) = own.start() else {
                continue;
            };
            let mut options = AggregatorOptions::new(
                parts.settings.config.order_subjects(),
                parts.settings.ledger,
            );
            options.partition = Some(k);
            options.fence = own.fence.clone();
            options.stream_replicas = parts.settings.config.stream_replicas;
            options.ack_wait = parts.settings.ack_wait;
            options.cache_orders = (crate::aggregator::CACHE_ORDERS
                / usize::try_from(partitions).unwrap_or(usize::MAX))
            .max(crate::aggregator::LANES);
            let (client, registries) = (parts.client.clone(), parts.registries.clone());
            tasks.spawn(async move {
                let result = run_aggregator(client, options, registries, own.active.clone()).await;
                // The partition's work has stopped: its lease may go.
                drop(guard);
                match result {
                    // Stopped unasked (its consumer deleted): the
                    // partition would stay owned with nothing aggregating it.
                    Ok(()) if !own.active.is_cancelled() => Err(ServiceError::Stopped {
                        component: Component::Aggregator,
                        message: format!("partition {k} stopped unasked"),
                    }),
                    other => other.map_err(ServiceError::from),
                }
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = owned.changed() => if changed.is_err() { break },
            Some(done) = tasks.join_next() => {
                let error = match done {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(e) => Some(ServiceError::Stopped {
                        component: Component::Aggregator,
                        message: format!("a partition's task ended: {e}"),
                    }),
                };
                if let Some(e) = error {
                    error!(error = %e, "an aggregator partition failed; this instance stops");
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    // A failed partition stops this instance: its shares go back.
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    let _ = shares.await;
    failed.map_or(Ok(()), Err)
}

/// Waits for every task in `tasks`. A component that fails, panics or
/// stops while `token` is not cancelled is marked failed and cancels
/// `token`, which stops the others; the first such error is returned.
async fn join_components(
    tasks: &mut tokio::task::JoinSet<Result<(), ServiceError>>,
    names: &HashMap<tokio::task::Id, Component>,
    token: &CancellationToken,
    health: &Health,
) -> Option<ServiceError> {
    let mut first_error = None;
    while let Some(done) = tasks.join_next_with_id().await {
        let (id, result) = match done {
            Ok((id, r)) => (id, Ok(r)),
            Err(e) => (e.id(), Err(e)),
        };
        // Every task was spawned by the caller and named.
        let Some(&component) = names.get(&id) else {
            continue;
        };
        let result = match result.unwrap_or_else(|panic| {
            Err(ServiceError::Stopped {
                component,
                message: panic.to_string(),
            })
        }) {
            Ok(()) if !token.is_cancelled() => Err(ServiceError::Stopped {
                component,
                message: "stopped without being asked to".to_owned(),
            }),
            other => other,
        };
        match result {
            Ok(()) => health.set(component.name(), ComponentState::Stopped),
            Err(e) => {
                health.set(component.name(), ComponentState::Failed);
                error!(component = component.name(), error = %e, "component failed; stopping the others");
                token.cancel();
                first_error.get_or_insert(e);
            }
        }
    }
    first_error
}

/// The stores and live watches of the registries and the sources.
type Prepared = (
    (RegistryStore, RegistryWatcher),
    (SourceStore, SourceWatcher),
);

/// Start-up steps 2–4, retried while NATS is unreachable. `None` when
/// shutdown was requested meanwhile.
async fn prepare(
    js: &jetstream::Context,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> Result<Option<Prepared>, ServiceError> {
    let mut backoff = START_RETRY_MIN;
    loop {
        let attempt = async {
            streams::ensure_streams(
                js,
                &settings.config.order_subjects(),
                settings.config.stream_replicas,
            )
            .await?;
            let ready = registry_store::start(js, settings, shutdown.clone()).await?;
            let sources = source_store::start(js, settings, shutdown.clone())
                .await
                .map_err(ServiceError::Sources)?;
            Ok::<_, ServiceError>((ready, sources))
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = attempt => r,
        };
        match result {
            Ok(ready) => {
                info!(
                    registries = (ready.0).1.registries.borrow().all().len(),
                    sources = (ready.1).1.registries.borrow().len(),
                    "registries and sources loaded"
                );
                return Ok(Some(ready));
            }
            Err(ServiceError::Registries(s)) if s.is_caller_error() => {
                return Err(ServiceError::Registries(s));
            }
            Err(ServiceError::Sources(s)) if s.is_caller_error() => {
                return Err(ServiceError::Sources(s));
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "start-up step failed (NATS unreachable?); retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(START_RETRY_MAX);
            }
        }
    }
}
