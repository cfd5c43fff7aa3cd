//! The dispatcher: postings on `ledger.postings.<R>.<O>` delivered to their
//! registry's webhook (SPEC 4), strictly in order per (registry, order),
//! many orders at once.
//!
//! # How it is driven
//!
//! One durable pull consumer per registry (`dispatcher-<R>`) reads
//! `ledger.postings.<R>.>` and `ledger.control.<R>.>`. Its messages are
//! **wake-ups**, not work items: a message for order O wakes O's worker,
//! which reads the truth from LEDGER ([`state::Progress`]: what was
//! delivered, the registry_data to send, the attempts so far) and fetches
//! the next posting by subject. So redelivered or out-of-order messages can
//! never reorder postings, and a restart rebuilds everything from the
//! stream. The state a worker ends with when its order is caught up is kept
//! (bounded, [`idle`]) for the order's next worker, so a warm order is not
//! read back: it is what the dispatcher itself just wrote, and a stale copy
//! is refused by the guarded registry_data write and read again.
//!
//! A worker owns one (R, O) at a time ([`worker`]): it sends posting n, and
//! only after the reply's registry_data event is stored does it go on to
//! n + 1. What it does next is decided in one place ([`decide`], pure) and
//! the messages it holds are answered in one place (the worker's `apply`),
//! by how the order stands:
//! - caught up (every posting delivered): ack them all;
//! - a retry is due later: every message is nak'd **with the delay** until
//!   the next attempt (the durable schedule: the server hands them back
//!   then, to this process or the next), none acked;
//! - dead-lettered: ack them all; the postings stay held until a
//!   `ControlRecord::Redeliver` on `ledger.control.<R>.<O>` wakes the worker;
//! - while it works, at least one stays un-acked (and progress-acked), so a
//!   crash at any point leaves a message that brings the order back.
//!
//! # Bounds
//! - [`DispatcherOptions::max_in_flight`] workers at once **per registry**
//!   (each registry has its own permits, so a slow or rate-limited
//!   registry never holds back another); a worker waiting for a retry is
//!   not in flight.
//! - [`MAX_ACK_PENDING_PER_REGISTRY`] messages held per registry, so memory
//!   is bounded whatever the backlog; one registry's backlog never blocks
//!   another's consumer.
//! - [`ORDER_QUEUE_MAX`] wake-ups queued for one busy order.
//! - [`idle::IDLE_ORDERS_MAX`] caught-up orders' states kept per registry.
//! - Per registry: `rate_limit_per_s`, a circuit breaker, `timeout_ms`,
//!   256 KiB replies ([`http`]).

pub mod attempt;
pub mod auth;
pub mod breaker;
mod decide;
pub mod http;
mod idle;
pub mod index;
pub use self::idle::{IDLE_ORDERS_MAX, kept_orders};
pub mod notify;
pub mod schedule;
pub mod signing;
pub mod state;
pub mod status;
pub mod sweep;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream::Stream};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Settings, SmtpConfig};
use crate::lease::Fence;
use crate::lease::shares::{Owned, OwnedKeys, WorkGuard};
use crate::notify::{Notifier, NotifyError};
use crate::registry::{Registry, TargetPolicy};
use crate::registry_store::RegistryWatch;
use crate::streams::LEDGER_STREAM;

use self::attempt::Target;
use self::breaker::Breaker;
use self::idle::IdleOrders;
use self::index::DeliveryIndex;
use self::schedule::{RetrySchedule, ScheduleError};
use self::worker::{Slots, Token, Worker};

/// Messages fetched per pull request: enough to keep `max_in_flight`
/// workers fed, small enough to bound what a crash hands back.
pub const PULL_BATCH: usize = 256;
/// Messages a registry's consumer may have un-acked: the wake-ups of
/// orders in progress plus one per order waiting for a retry. At the limit
/// the server stops sending that registry new postings (backpressure), so
/// memory stays bounded however large the backlog.
pub const MAX_ACK_PENDING_PER_REGISTRY: i64 = 20_000;
/// Wake-ups queued for one busy order; more are handed back for
/// [`QUEUE_FULL_DELAY`] (the worker reads postings from the stream anyway).
pub const ORDER_QUEUE_MAX: usize = 256;
/// Delay of a wake-up handed back because its order's queue is full.
pub const QUEUE_FULL_DELAY: Duration = Duration::from_secs(2);
/// Backoff while a registry's consumer cannot be created or read.
pub const CONSUMER_RETRY_MIN: Duration = Duration::from_millis(500);
pub const CONSUMER_RETRY_MAX: Duration = Duration::from_secs(10);
/// At shutdown, how long to wait for more already-pulled messages to hand
/// back before giving up (they are then redelivered after the ack wait).
pub const DRAIN_WAIT: Duration = Duration::from_millis(50);
/// How often each registry is swept for overdue retries ([`sweep`]).
pub const SWEEP_EVERY_DEFAULT: Duration = Duration::from_secs(60);
/// How far past its next attempt a retry must be before the sweep wakes it.
pub const OVERDUE_GRACE_DEFAULT: Duration = Duration::from_secs(120);
/// Prefix of the durable consumer names.
pub const CONSUMER_PREFIX: &str = "dispatcher-";

/// What the dispatcher runs with.
#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    pub retry_schedule: RetrySchedule,
    pub max_in_flight: usize,
    pub breaker_failures: u32,
    pub breaker_cool_down: Duration,
    /// The SSRF guard and https rule, applied when connecting.
    pub policy: TargetPolicy,
    /// Failure emails; none without `[smtp]`.
    pub smtp: Option<SmtpConfig>,
    /// `ack_wait` ([`crate::streams::ACK_WAIT_DEFAULT`]); held messages
    /// are progress-acked at a third of it.
    pub ack_wait: Duration,
    /// See [`SWEEP_EVERY_DEFAULT`].
    pub sweep_every: Duration,
    /// See [`OVERDUE_GRACE_DEFAULT`].
    pub overdue_grace: Duration,
    /// Checked before every attempt and write: only the instance holding
    /// the lease delivers ([`crate::lease`]). Open by default.
    pub fence: Fence,
    /// With `share_registries`: the registries this instance owns now
    /// ([`crate::lease::shares`]), each with its own fence; only those are
    /// delivered (then `fence` is not used). `None`: every registry.
    pub shares: Option<OwnedKeys>,
    /// Replicas of the dead-letter index bucket when it is created.
    pub stream_replicas: usize,
}

impl DispatcherOptions {
    /// The options of a validated configuration.
    pub fn from_settings(settings: &Settings) -> Result<Self, DispatchError> {
        let d = &settings.config.delivery;
        let breaker_cool_down = humantime::parse_duration(&d.breaker_cool_down)
            .map_err(|_| DispatchError::CoolDown(d.breaker_cool_down.clone()))?;
        Ok(Self {
            retry_schedule: RetrySchedule::parse(&d.retry_schedule)?,
            max_in_flight: d.max_in_flight.max(1),
            breaker_failures: d.breaker_failures,
            breaker_cool_down,
            policy: settings.policy.clone(),
            smtp: settings.config.smtp.clone(),
            ack_wait: settings.ack_wait,
            sweep_every: SWEEP_EVERY_DEFAULT,
            overdue_grace: OVERDUE_GRACE_DEFAULT,
            fence: Fence::open(),
            shares: None,
            stream_replicas: settings.config.stream_replicas,
        })
    }
}

/// Why the dispatcher could not run.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("delivery.breaker_cool_down: {0:?} is not a duration like \"30s\"")]
    CoolDown(String),
    #[error(transparent)]
    Client(#[from] http::ClientError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
}

/// What every worker shares.
pub(crate) struct Shared {
    pub js: jetstream::Context,
    pub ledger: Stream,
    pub http: reqwest::Client,
    /// Workers in flight per registry.
    pub max_in_flight: usize,
    pub schedule: RetrySchedule,
    pub notifier: Option<Notifier>,
    pub ack_wait: Duration,
    pub sweep_every: Duration,
    pub overdue_grace: Duration,
    /// Which pairs are dead or retrying ([`index`]).
    pub index: DeliveryIndex,
}

impl Shared {
    /// How often held messages are progress-acked.
    pub fn progress_every(&self) -> Duration {
        (self.ack_wait / 3).max(Duration::from_millis(100))
    }
}

struct Running {
    registry: Registry,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Whether registry `id` is delivered here, and under which fence and
/// token: every registry under the instance's fence, or (shares) only an
/// owned one, under its own lease's fence and token.
fn ownership(
    id: &str,
    shares: Option<&std::collections::BTreeMap<String, Owned>>,
    fence: &Fence,
    shutdown: &CancellationToken,
) -> Option<(Fence, CancellationToken, Option<WorkGuard>)> {
    match shares {
        None => Some((fence.clone(), shutdown.child_token(), None)),
        Some(owned) => {
            let o = owned.get(id)?;
            let guard = o.start()?;
            Some((o.fence.clone(), o.active.clone(), Some(guard)))
        }
    }
}

/// Runs the dispatcher until `shutdown` fires, then stops taking work,
/// lets attempts in flight finish (each bounded by its registry's timeout)
/// and records them, hands back every message it holds, and returns.
///
/// The LEDGER stream must exist (`streams::ensure_streams`); until it can
/// be opened (NATS away) the dispatcher waits, retrying. Registries are
/// followed live: a changed registry's consumer is restarted with the new
/// settings, a removed or disabled one is stopped (its postings wait).
pub async fn run_dispatcher(
    client: async_nats::Client,
    options: DispatcherOptions,
    mut registries: RegistryWatch,
    shutdown: CancellationToken,
) -> Result<(), DispatchError> {
    let js = jetstream::new(client);
    let open = || js.get_stream(LEDGER_STREAM);
    let Some(ledger) = crate::streams::until_ready(
        "opening the LEDGER stream for the dispatcher",
        &shutdown,
        open,
    )
    .await
    else {
        return Ok(());
    };
    let replicas = options.stream_replicas;
    let Some(index) = crate::streams::until_ready(
        "opening the dead-letter index for the dispatcher",
        &shutdown,
        || DeliveryIndex::open(&js, replicas),
    )
    .await
    else {
        return Ok(());
    };
    let http = http::build_client(&options.policy)?;
    let (notifier, notifier_task) = match &options.smtp {
        Some(smtp) => {
            let (n, task) = Notifier::start(smtp, shutdown.clone())?;
            (Some(n), Some(task))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        js,
        ledger,
        http,
        max_in_flight: options.max_in_flight,
        schedule: options.retry_schedule.clone(),
        notifier,
        ack_wait: options.ack_wait,
        sweep_every: options.sweep_every,
        overdue_grace: options.overdue_grace,
        index,
    });
    let policy = Arc::new(options.policy.clone());
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut shares = options.shares.clone();
    info!(
        max_in_flight = options.max_in_flight,
        shared = shares.is_some(),
        "dispatcher started"
    );
    loop {
        let set = registries.borrow_and_update().clone();
        let owned = shares.as_mut().map(|s| s.borrow_and_update().clone());
        // Stop what is gone, disabled, changed or no longer ours…
        let stale: Vec<String> = running
            .iter()
            .filter(|(id, r)| {
                r.cancel.is_cancelled()
                    || owned.as_ref().is_some_and(|o| !o.contains_key(*id))
                    || set
                        .get(id)
                        .is_none_or(|now| !now.config.enabled || *now != r.registry)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(r) = running.remove(&id) {
                info!(registry_id = %id, "registry changed or removed; stopping its deliveries");
                r.cancel.cancel();
                let _ = r.task.await;
            }
        }
        // …and start what is new.
        for registry in set.all() {
            if !registry.config.enabled || running.contains_key(registry.id()) {
                continue;
            }
            let Some((fence, cancel, guard)) =
                ownership(registry.id(), owned.as_ref(), &options.fence, &shutdown)
            else {
                continue;
            };
            let breaker = Breaker::new(options.breaker_failures, options.breaker_cool_down);
            let target = match Target::new(registry, policy.clone(), breaker, fence) {
                Ok(t) => Arc::new(t),
                Err(e) => {
                    error!(error = %e, "registry cannot be delivered to; its postings wait");
                    continue;
                }
            };
            let run = run_registry(shared.clone(), target, cancel.clone());
            let task = tokio::spawn(async move {
                run.await;
                // Only now may the registry's lease go to another instance.
                drop(guard);
            });
            running.insert(
                registry.id().to_owned(),
                Running {
                    registry: registry.clone(),
                    cancel,
                    task,
                },
            );
        }
        let shares_changed = async {
            let changed = match shares.as_mut() {
                Some(s) => s.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                // No shares, or their sender gone: nothing more changes.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            () = shares_changed => {}
            changed = registries.changed() => {
                if changed.is_err() {
                    // Fixed registries: only the shares or the shutdown remain.
                    registries_fixed(&mut shares, &shutdown).await;
                    if shutdown.is_cancelled() {
                        break;
                    }
                }
            }
        }
    }
    for (_, r) in running.drain() {
        r.cancel.cancel();
        let _ = r.task.await;
    }
    if let Some(task) = notifier_task {
        let _ = task.await;
    }
    info!("dispatcher stopped");
    Ok(())
}

/// Waits (the registries being fixed) until the shares change or the
/// shutdown comes.
async fn registries_fixed(shares: &mut Option<OwnedKeys>, shutdown: &CancellationToken) {
    match shares.as_mut() {
        Some(s) => tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = s.changed() => {}
        },
        None => shutdown.cancelled().await,
    }
}

/// The consumer configuration of a registry.
pub fn consumer_config(registry_id: &str, ack_wait: Duration) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(format!("{CONSUMER_PREFIX}{registry_id}")),
        description: Some(format!(
            "ledgerline dispatcher: postings and control of registry {registry_id}"
        )),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        // Naks with delay are the retry schedule; they must never run out.
        max_deliver: -1,
        filter_subjects: vec![
            format!("ledger.postings.{registry_id}.>"),
            format!("ledger.control.{registry_id}.>"),
        ],
        max_ack_pending: MAX_ACK_PENDING_PER_REGISTRY,
        ..Default::default()
    }
}

/// A registry's consumer could not be opened (it is retried with a
/// backoff).
#[derive(Debug, thiserror::Error)]
enum OpenConsumerError {
    #[error("cannot create consumer: {0}")]
    Create(#[source] async_nats::jetstream::stream::ConsumerError),
    #[error("cannot pull: {0}")]
    Pull(#[source] consumer::StreamError),
}

async fn open_messages(
    shared: &Shared,
    registry_id: &str,
) -> Result<consumer::pull::Stream, OpenConsumerError> {
    let consumer: consumer::PullConsumer = shared
        .ledger
        .create_consumer(consumer_config(registry_id, shared.ack_wait))
        .await
        .map_err(OpenConsumerError::Create)?;
    consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .heartbeat(crate::streams::PULL_HEARTBEAT)
        .expires(crate::streams::PULL_EXPIRES)
        .messages()
        .await
        .map_err(OpenConsumerError::Pull)
}

/// One registry: its consumer, and a worker per order with work.
async fn run_registry(shared: Arc<Shared>, target: Arc<Target>, cancel: CancellationToken) {
    let registry_id = target.id().to_owned();
    let slots: Slots = Arc::new(Mutex::new(HashMap::new()));
    // Caught-up orders' state, for their next worker ([`idle`]); dropped
    // with this registry's run (a changed registry, a lost lease).
    let idle = IdleOrders::default();
    // This registry's own permits: one registry's slow receiver or rate
    // limit can only ever hold its own workers.
    let permits = Arc::new(Semaphore::new(shared.max_in_flight));
    let mut workers: JoinSet<()> = JoinSet::new();
    let mut worker_orders: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut backoff = CONSUMER_RETRY_MIN;
    let sweeper = tokio::spawn(sweep_loop(
        shared.clone(),
        registry_id.clone(),
        cancel.clone(),
    ));
    info!(registry_id = %registry_id, "delivering");
    'consumer: while !cancel.is_cancelled() {
        let mut messages = match open_messages(&shared, &registry_id).await {
            Ok(m) => m,
            Err(e) => {
                warn!(registry_id = %registry_id, error = %e, retry_in_ms = backoff.as_millis() as u64,
                      "consumer unavailable");
                tokio::select! {
                    _ = cancel.cancelled() => break 'consumer,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(CONSUMER_RETRY_MAX);
                continue;
            }
        };
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    hand_back_buffered(&mut messages).await;
                    break 'consumer;
                }
                Some(done) = workers.join_next_with_id(), if !workers.is_empty() => {
                    reap(done, &slots, &mut worker_orders, &registry_id).await;
                }
                next = messages.next() => match next {
                    Some(Ok(msg)) => {
                        backoff = CONSUMER_RETRY_MIN;
                        let Some(token) = Token::from_message(msg, &registry_id).await else { continue };
                        route(&shared, &target, &permits, &slots, &idle, &mut workers, &mut worker_orders, &cancel, token).await;
                    }
                    Some(Err(e)) => {
                        use consumer::pull::MessagesErrorKind as K;
                        match e.kind() {
                            K::MissingHeartbeat => {
                                warn!(registry_id = %registry_id, "no heartbeat from NATS; still pulling");
                            }
                            _ => {
                                warn!(registry_id = %registry_id, error = %e, "pull failed; reopening the consumer");
                                break;
                            }
                        }
                    }
                    None => break,
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break 'consumer,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(CONSUMER_RETRY_MAX);
    }
    // Workers see the cancellation, finish the attempt in flight and hand
    // back what they hold.
    while let Some(done) = workers.join_next_with_id().await {
        reap(done, &slots, &mut worker_orders, &registry_id).await;
    }
    let _ = sweeper.await;
    info!(registry_id = %registry_id, "stopped delivering");
}

/// Sweeps the registry for overdue retries every `sweep_every` until
/// cancelled ([`sweep`]).
async fn sweep_loop(shared: Arc<Shared>, registry_id: String, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(shared.sweep_every) => {}
        }
        let now = time::OffsetDateTime::now_utc();
        match sweep::sweep_registry(&shared, &registry_id, shared.overdue_grace, now).await {
            Ok(report) => {
                metrics::gauge!("ledgerline_overdue_retries_last_sweep",
                    "registry" => registry_id.clone())
                .set(report.woken as f64);
            }
            Err(e) => {
                warn!(registry_id = %registry_id, error = %e, "overdue-retry sweep failed; trying again later")
            }
        }
    }
}

/// Naks (after [`crate::streams::HAND_BACK_DELAY`]) what the pull stream has already received but not
/// routed, so the next instance gets it at once rather than after the ack
/// wait. Bounded: at most two batches, each wait [`DRAIN_WAIT`].
async fn hand_back_buffered(messages: &mut consumer::pull::Stream) {
    for _ in 0..2 * PULL_BATCH {
        match tokio::time::timeout(DRAIN_WAIT, messages.next()).await {
            Ok(Some(Ok(m))) => {
                let _ = m
                    .ack_with(async_nats::jetstream::message::AckKind::Nak(Some(
                        crate::streams::HAND_BACK_DELAY,
                    )))
                    .await;
            }
            _ => return,
        }
    }
}

/// Hands `token` to its order's worker, starting one (when a slot in
/// `max_in_flight` is free) if there is none.
#[allow(clippy::too_many_arguments)]
async fn route(
    shared: &Arc<Shared>,
    target: &Arc<Target>,
    permits: &Arc<Semaphore>,
    slots: &Slots,
    idle: &IdleOrders,
    workers: &mut JoinSet<()>,
    worker_orders: &mut HashMap<tokio::task::Id, String>,
    cancel: &CancellationToken,
    token: Token,
) {
    let order_id = token.order_id.clone();
    let token = {
        let mut map = slots.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&order_id) {
            Some(queue) if queue.len() < ORDER_QUEUE_MAX => {
                queue.push(token);
                return;
            }
            Some(_) => Err(token),
            None => Ok(token),
        }
    };
    let token = match token {
        Ok(t) => t,
        Err(t) => {
            t.nak(Some(QUEUE_FULL_DELAY)).await;
            return;
        }
    };
    // Waiting for a permit can outlast the ack wait: keep the wake-up
    // alive meanwhile, so the server does not hand out a second copy.
    let acquire = permits.clone().acquire_owned();
    tokio::pin!(acquire);
    let permit = loop {
        tokio::select! {
            p = &mut acquire => break p.ok(),
            _ = cancel.cancelled() => break None,
            _ = tokio::time::sleep(shared.progress_every()) => token.progress().await,
        }
    };
    let Some(permit) = permit else {
        token.nak(Some(crate::streams::HAND_BACK_DELAY)).await;
        return;
    };
    slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(order_id.clone(), vec![token]);
    let worker = Worker {
        shared: shared.clone(),
        target: target.clone(),
        slots: slots.clone(),
        idle: idle.clone(),
        order_id: order_id.clone(),
        cancel: cancel.clone(),
        _permit: permit,
        held: Vec::new(),
    };
    let handle = workers.spawn(worker.run());
    worker_orders.insert(handle.id(), order_id);
}

/// Forgets a finished worker; a panicked one's queued wake-ups are handed
/// back so its order is picked up again.
async fn reap(
    done: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
    slots: &Slots,
    worker_orders: &mut HashMap<tokio::task::Id, String>,
    registry_id: &str,
) {
    match done {
        Ok((id, ())) => {
            worker_orders.remove(&id);
        }
        Err(e) => {
            let order = worker_orders.remove(&e.id());
            error!(registry_id = %registry_id, order_id = ?order, error = %e, "delivery worker failed");
            if let Some(order) = order {
                let queued = slots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&order)
                    .unwrap_or_default();
                for t in queued {
                    t.nak(Some(QUEUE_FULL_DELAY)).await;
                }
            }
        }
    }
}
