//! The chaos test (issue #10): the demo dataset's orders through `ledgerline
//! run` as a child process while it is SIGKILLed at random moments,
//! nats-server is crashed or stopped and restarted, and the receiver fails
//! at random (500, 503, 429 with Retry-After, replies slower than
//! `timeout_ms`, connection resets, slow replies; a timeout or reset comes
//! before or after the receiver booked the posting). Two registries: `books`
//! (delta, signed) and `erp` (full, unsigned).
//!
//! Then it audits from the receiver's side: every posting the offline
//! engine computes was booked, with the body it computes (registry_data
//! aside); first bookings per (registry, order) in seq order 1, 2, 3…; one
//! body per idempotency key; each new posting carrying the registry_data
//! the receiver answered to the previous one; valid signatures; every
//! (registry, order) `delivered` in `deliveries list` (none `retrying` with
//! an overdue next attempt, none dead); each posting stored once.
//!
//! Everything random comes from one seed, printed first; `CHAOS_SEED=<n>`
//! replays the same dataset, failure sequence and chaos schedule (the
//! interleaving of requests and kills still varies with timing). Sizes:
//! `CHAOS_ORDERS` (default 400), `CHAOS_KILLS` (5), `CHAOS_NATS_RESTARTS`
//! (2); `make chaos` runs the long form. On failure the run's directory
//! (config, `ledgerline run` log) is kept and named.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use ledgerline::dispatcher::state::OrderDeliveries;
use ledgerline::dispatcher::status::{ListFilter, list_deliveries};
use ledgerline::records::DeliveryStatus as Status;
use ledgerline::secret::Secret;
use ledgerline::streams::{OrderSubjects, subjects};

use async_nats::jetstream;
use ledgerline::config::Settings;
use ledgerline::natsd::NatsCluster;

use crate::support;
use crate::support::process::{service_config, spawn_run, tail};
use crate::support::scripted::{Reply, Req, Scripted};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// `timeout_ms` of both registries; a "timeout" reply comes this much
/// later plus [`TIMEOUT_EXCESS`].
const TIMEOUT_MS: u64 = 1_000;
const TIMEOUT_EXCESS: Duration = Duration::from_millis(500);
/// Events published per `publish` call.
const PUBLISH_CHUNK: usize = 50;
/// A `retrying` row whose next attempt is further in the past than this is
/// overdue: nothing woke it.
const OVERDUE_SLACK: Duration = Duration::from_secs(5);
/// Log filter of the child process (debug would write gigabytes in the long
/// form).
const RUN_LOG: &str = "info";

/// Sizes and seed, from the environment.
#[derive(Debug, Clone, Copy)]
struct Plan {
    seed: u64,
    orders: usize,
    kills: usize,
    nats_restarts: usize,
    /// nats-server nodes (1: a single server; 3: a cluster, R3 streams).
    nodes: usize,
    /// `ledgerline run` instances (one active, the others standing by).
    instances: usize,
    /// Order partitions (`order_partitions`; 0: one active aggregator).
    partitions: u32,
    /// The prefix of the size variables (`CHAOS_`, `CHAOS_CLUSTER_`).
    env: &'static str,
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a whole number: {e}")),
        Err(_) => default,
    }
}

impl Plan {
    /// One nats-server, one instance; sizes from `CHAOS_*`.
    fn from_env() -> Self {
        Plan::sized_from_env("CHAOS_", (400, 5, 2), 1, 1, 0)
    }

    /// A 3-node cluster and 3 instances; sizes from `CHAOS_CLUSTER_*`.
    fn cluster_from_env() -> Self {
        Plan::sized_from_env("CHAOS_CLUSTER_", (200, 3, 3), 3, 3, 4)
    }

    /// `nodes` and `instances`; the sizes from `<env>ORDERS`, `<env>KILLS`
    /// and `<env>NATS_RESTARTS`, else `defaults` (in that order); the seed
    /// from `CHAOS_SEED`, else random.
    fn sized_from_env(
        env: &'static str,
        defaults: (usize, usize, usize),
        nodes: usize,
        instances: usize,
        partitions: u32,
    ) -> Self {
        let size = |name: &str, default: usize| env_number(&format!("{env}{name}"), default);
        Plan {
            seed: env_number("CHAOS_SEED", rand::random::<u64>()),
            orders: size("ORDERS", defaults.0),
            kills: size("KILLS", defaults.1),
            nats_restarts: size("NATS_RESTARTS", defaults.2),
            nodes,
            instances,
            partitions,
            env,
        }
    }

    /// The command that replays this run.
    fn replay(&self) -> String {
        let env = self.env;
        let test = if self.nodes > 1 {
            "chaos::a_cluster"
        } else {
            "chaos"
        };
        format!(
            "CHAOS_SEED={} {env}ORDERS={} {env}KILLS={} {env}NATS_RESTARTS={} cargo test --test it {test} -- --nocapture",
            self.seed, self.orders, self.kills, self.nats_restarts
        )
    }

    /// How long everything may take to arrive once the chaos is over: the
    /// ack wait of a killed dispatcher (30 s), retries, and the backlog.
    fn drain_limit(&self) -> Duration {
        Duration::from_secs(120 + self.orders as u64 / 10)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// SIGKILL `ledgerline run` (the active instance, when several run),
    /// start it again.
    KillRun,
    /// Crash (SIGKILL) or stop nats-server (a node of a cluster, its
    /// LEDGER leader half of the time), start it again.
    RestartNats,
}

/// The registries: `books` delta and signed, `erp` full and unsigned;
/// short retries, and the shortest lease (a restarted instance waits for
/// the killed one's lease to expire), so a run ends in about a minute.
fn registries(base: &str, plan: &Plan) -> String {
    let (replicas, share, partitions) = (plan.nodes, plan.instances > 1, plan.partitions);
    format!(
        r#"
lease_ttl = "4s"
ack_wait = "5s"
stream_replicas = {replicas}
share_registries = {share}
order_partitions = {partitions}

[delivery]
retry_schedule = ["300ms", "1s", "2s"]
breaker_cool_down = "1s"

[[registry]]
id = "books"
url = "{base}/books"
event_types = ["*"]
posting_mode = "delta"
signing_secret = "{SECRET}"
timeout_ms = {TIMEOUT_MS}
max_attempts = 100
rate_limit_per_s = 2000

[[registry]]
id = "erp"
url = "{base}/erp"
posting_mode = "full"
group_by = ["currency", "product_id"]
timeout_ms = {TIMEOUT_MS}
max_attempts = 100
rate_limit_per_s = 2000
"#
    )
}

// ------------------------------------------------------------ the receiver

/// What the receiver does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Ok,
    /// Books, answers after 50–600 ms (within the timeout).
    Slow,
    Status500,
    Status503,
    /// 429 with `Retry-After: 1`.
    TooMany,
    /// Books, answers after the timeout (the answer is lost).
    TimeoutBooked,
    /// Answers 500 after the timeout, without booking.
    TimeoutLost,
    /// Books, then resets the connection.
    ResetBooked,
    /// Resets the connection without booking.
    ResetLost,
}

impl Fate {
    /// Weights out of 100: about a third of the requests fail.
    const WEIGHTS: [(Fate, u32); 9] = [
        (Fate::Ok, 60),
        (Fate::Slow, 10),
        (Fate::Status500, 6),
        (Fate::Status503, 6),
        (Fate::TooMany, 6),
        (Fate::TimeoutBooked, 3),
        (Fate::TimeoutLost, 3),
        (Fate::ResetBooked, 3),
        (Fate::ResetLost, 3),
    ];

    fn pick(rng: &mut ChaCha8Rng) -> Fate {
        let mut n = rng.random_range(0..100u32);
        for (fate, w) in Self::WEIGHTS {
            if n < w {
                return fate;
            }
            n -= w;
        }
        Fate::Ok
    }

    fn books(self) -> bool {
        matches!(
            self,
            Fate::Ok | Fate::Slow | Fate::TimeoutBooked | Fate::ResetBooked
        )
    }
}

/// One (registry, order) journal of the receiver.
#[derive(Default)]
struct Journal {
    revision: u64,
    /// What it answered to the last posting booked (`{}` before any).
    last_answer: Value,
}

/// The receiver's books, kept under one lock.
struct Books {
    rng: ChaCha8Rng,
    signing_key: Vec<u8>,
    journals: HashMap<(String, String), Journal>,
    /// Idempotency key → the answer given when it was booked.
    answers: HashMap<String, Value>,
    /// Idempotency key → (registry, the first body received).
    bodies: HashMap<String, (String, Vec<u8>)>,
    /// First bookings in the order they happened: (registry, key).
    booked: Vec<(String, String)>,
    fates: BTreeMap<Fate, u64>,
    problems: Vec<String>,
}

impl Books {
    fn handle(&mut self, req: &Req) -> Reply {
        let registry = req.path.trim_start_matches('/').to_owned();
        let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
            self.problems
                .push(format!("{registry}: a body that is not JSON"));
            return respond(400, json!({"message": "not JSON"}), Duration::ZERO);
        };
        let key = body["idempotency_key"].as_str().unwrap_or("").to_owned();
        let order = body["order_id"].as_str().unwrap_or("").to_owned();
        if req.header("idempotency-key") != Some(key.as_str()) {
            self.problems.push(format!(
                "{registry}/{order}: idempotency-key header {:?} is not the body's {key:?}",
                req.header("idempotency-key")
            ));
        }
        if registry == "books" && !self.signature_ok(req) {
            self.problems
                .push(format!("{registry}/{order}: bad signature on {key}"));
        }
        match self.bodies.get(&key) {
            None => {
                self.bodies
                    .insert(key.clone(), (registry.clone(), req.body.clone()));
            }
            Some((r, first)) if *r != registry || *first != req.body => {
                self.problems.push(format!(
                    "{registry}/{order}: key {key} came with two bodies (or registries)"
                ));
            }
            Some(_) => {}
        }
        let fate = Fate::pick(&mut self.rng);
        *self.fates.entry(fate).or_default() += 1;
        let answer = fate
            .books()
            .then(|| self.book(&registry, &order, &key, &body["registry_data"]));
        let slow = Duration::from_millis(self.rng.random_range(50..600));
        let late = Duration::from_millis(TIMEOUT_MS) + TIMEOUT_EXCESS;
        let refusal = json!({"status": "0", "message": "simulated failure"});
        match (fate, answer) {
            (Fate::Ok, Some(a)) => respond(200, a, Duration::ZERO),
            (Fate::Slow, Some(a)) => respond(200, a, slow),
            (Fate::TimeoutBooked, Some(a)) => respond(200, a, late),
            (Fate::TimeoutLost, _) => respond(500, refusal, late),
            (Fate::Status503, _) => respond(503, refusal, Duration::ZERO),
            (Fate::TooMany, _) => Reply::Respond {
                status: 429,
                headers: vec![("retry-after", "1".to_owned())],
                body: refusal.to_string().into_bytes(),
                delay: Duration::ZERO,
            },
            (Fate::ResetBooked | Fate::ResetLost, _) => Reply::Reset,
            _ => respond(500, refusal, Duration::ZERO),
        }
    }

    fn signature_ok(&self, req: &Req) -> bool {
        let (Some(id), Some(ts), Some(sig)) = (
            req.header("webhook-id"),
            req.header("webhook-timestamp").and_then(|t| t.parse().ok()),
            req.header("webhook-signature"),
        ) else {
            return false;
        };
        ledgerline::signing::verify(&self.signing_key, id, ts, &req.body, sig)
    }

    /// Books a posting: the same answer for a key booked before; otherwise
    /// checks the chain and answers the next revision.
    fn book(&mut self, registry: &str, order: &str, key: &str, registry_data: &Value) -> Value {
        if let Some(a) = self.answers.get(key) {
            return a.clone();
        }
        let journal = self
            .journals
            .entry((registry.to_owned(), order.to_owned()))
            .or_insert_with(|| Journal {
                revision: 0,
                last_answer: json!({}),
            });
        if *registry_data != journal.last_answer {
            self.problems.push(format!(
                "{registry}/{order}: registry_data chain broken at revision {}: got {registry_data}, answered {}",
                journal.revision + 1,
                journal.last_answer
            ));
        }
        journal.revision += 1;
        let answer =
            json!({"journal_id": format!("{registry}-{order}"), "revision": journal.revision});
        journal.last_answer = answer.clone();
        self.answers.insert(key.to_owned(), answer.clone());
        self.booked.push((registry.to_owned(), key.to_owned()));
        answer
    }
}

fn respond(status: u16, body: Value, delay: Duration) -> Reply {
    Reply::Respond {
        status,
        headers: vec![],
        body: body.to_string().into_bytes(),
        delay,
    }
}

/// The chaos receiver: a scripted server whose handler is [`Books`].
struct ChaosReceiver {
    server: Scripted,
    books: Arc<Mutex<Books>>,
}

impl ChaosReceiver {
    async fn start(seed: u64) -> Self {
        let books = Arc::new(Mutex::new(Books {
            rng: ChaCha8Rng::seed_from_u64(seed),
            signing_key: ledgerline::signing::decode_secret(&Secret::new(SECRET)).unwrap(),
            journals: HashMap::new(),
            answers: HashMap::new(),
            bodies: HashMap::new(),
            booked: Vec::new(),
            fates: BTreeMap::new(),
            problems: Vec::new(),
        }));
        let b = books.clone();
        let server = Scripted::start(move |req, _| b.lock().unwrap().handle(req)).await;
        Self { server, books }
    }

    fn booked(&self) -> usize {
        self.books.lock().unwrap().booked.len()
    }
}

// ---------------------------------------------------------------- expected

/// A posting as the offline engine computes it.
struct Want {
    registry: String,
    order: String,
    seq: u64,
    body: Value,
}

/// Idempotency key → the posting, and the number of (registry, order).
fn expected(
    settings: &ledgerline::config::Settings,
    events: &str,
) -> (HashMap<String, Want>, usize) {
    let all = support::engine::offline_postings(settings, events);
    let pairs = all
        .keys()
        .map(|(r, o, _)| (r, o))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let want = all
        .iter()
        .map(|((registry, order, seq), body)| {
            (
                body["idempotency_key"].as_str().unwrap().to_owned(),
                Want {
                    registry: registry.clone(),
                    order: order.clone(),
                    seq: *seq,
                    body: body.clone(),
                },
            )
        })
        .collect();
    (want, pairs)
}

// ------------------------------------------------------------------- chaos

/// Publishes `events` in chunks spread over `over`, retrying a chunk while
/// nats-server is down (publishing is idempotent: `Nats-Msg-Id`). The last
/// chunk waits for `last`: until the last action is under way, something
/// is always left to book, however long the actions take on a loaded
/// machine.
fn publish_slowly(
    client: async_nats::Client,
    orders: OrderSubjects,
    replicas: usize,
    events: Vec<String>,
    over: Duration,
    last: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let chunks: Vec<String> = events.chunks(PUBLISH_CHUNK).map(|c| c.join("\n")).collect();
        let pause = over / chunks.len().max(1) as u32;
        let mut last = Some(last);
        for (i, chunk) in chunks.iter().enumerate() {
            if i + 1 == chunks.len()
                && let Some(last) = last.take()
            {
                let _ = last.await;
            }
            let started = Instant::now();
            while let Err(e) = ledgerline::publish::publish(
                &client,
                &orders,
                replicas,
                "chaos",
                chunk.as_bytes(),
                |_| {},
                |_| {},
            )
            .await
            {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "publishing failed for a minute: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            tokio::time::sleep(pause).await;
        }
    })
}

/// Every (registry, order) as `deliveries list` shows it.
async fn deliveries(js: &jetstream::Context) -> Result<Vec<OrderDeliveries>, String> {
    list_deliveries(js, &ListFilter::default(), |_, _| {})
        .await
        .map_err(|e| e.to_string())
}

/// Pending and ack-pending messages of a registry's dispatcher consumer.
async fn consumer_pending(js: &jetstream::Context, registry: &str) -> String {
    let info = async {
        let stream = js
            .get_stream(ledgerline::streams::LEDGER_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let mut consumer = stream
            .get_consumer::<pull::Config>(&format!(
                "{}{registry}",
                ledgerline::dispatcher::CONSUMER_PREFIX
            ))
            .await
            .map_err(|e| e.to_string())?;
        let i = consumer.info().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(format!(
            "{} pending, {} ack-pending",
            i.num_pending, i.num_ack_pending
        ))
    };
    info.await.unwrap_or_else(|e| format!("unknown ({e})"))
}

/// What is wrong with the (registry, order) rows, one line each (at most a
/// few per kind).
fn undelivered(rows: &[OrderDeliveries], pairs: usize) -> Vec<String> {
    let now = time::OffsetDateTime::now_utc();
    let mut out = Vec::new();
    if rows.len() != pairs {
        out.push(format!(
            "deliveries list shows {} (registry, order), the offline engine {pairs}",
            rows.len()
        ));
    }
    let mut shown: HashMap<&str, usize> = HashMap::new();
    for r in rows.iter().filter(|r| r.status != Status::Delivered) {
        let overdue = r.status == Status::Retrying
            && r.next_attempt_at.is_some_and(|t| t + OVERDUE_SLACK < now);
        let kind = if overdue {
            "retrying with an overdue next attempt"
        } else {
            r.status.as_str()
        };
        let n = shown.entry(kind).or_default();
        *n += 1;
        if *n <= 5 {
            out.push(format!(
                "{}/{}: {kind} ({} of {} delivered, seq {:?}, {} attempts, next {:?}, last error {:?})",
                r.registry_id,
                r.order_id,
                r.delivered,
                r.postings,
                r.failing_seq,
                r.attempts,
                r.next_attempt_at,
                r.last_error
            ));
        }
    }
    for (kind, n) in shown {
        out.push(format!("{n} (registry, order) {kind} in all"));
    }
    out
}

/// The receiver-side audit: everything wrong, one line each.
fn audit_books(books: &Books, want: &HashMap<String, Want>) -> Vec<String> {
    let mut problems: Vec<String> = books.problems.iter().take(20).cloned().collect();
    if books.problems.len() > 20 {
        problems.push(format!(
            "… {} receiver problems in all",
            books.problems.len()
        ));
    }
    let missing: Vec<&Want> = want
        .iter()
        .filter(|(k, _)| !books.answers.contains_key(*k))
        .map(|(_, w)| w)
        .collect();
    if !missing.is_empty() {
        let some: Vec<String> = missing
            .iter()
            .take(10)
            .map(|w| format!("{}/{} seq {}", w.registry, w.order, w.seq))
            .collect();
        problems.push(format!(
            "{} of {} postings never booked, e.g. {some:?}",
            missing.len(),
            want.len()
        ));
    }
    // First bookings per (registry, order): seq 1, 2, 3…, each with the
    // body the engine computes (registry_data aside).
    let mut next: HashMap<(&str, &str), u64> = HashMap::new();
    for (registry, key) in &books.booked {
        let Some(w) = want.get(key) else {
            problems.push(format!(
                "{registry}: booked {key}, which the engine never made"
            ));
            continue;
        };
        if w.registry != *registry {
            problems.push(format!(
                "{registry}: booked {key} of registry {}",
                w.registry
            ));
        }
        let n = next.entry((&w.registry, &w.order)).or_insert(1);
        if w.seq != *n {
            problems.push(format!(
                "{}/{}: seq {} booked when seq {n} was next",
                w.registry, w.order, w.seq
            ));
        }
        *n = w.seq + 1;
        let mut got: Value = serde_json::from_slice(&books.bodies[key].1).unwrap_or_default();
        let mut expected = w.body.clone();
        got["registry_data"] = Value::Null;
        expected["registry_data"] = Value::Null;
        if got != expected {
            problems.push(format!(
                "{}/{} seq {}: body differs from the engine's\n got  {got}\n want {expected}",
                w.registry, w.order, w.seq
            ));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_arrive_whole_and_in_order_through_kills_nats_restarts_and_receiver_failures() {
    chaos(Plan::from_env()).await;
}

/// Scale-out (SPEC 9, issue 16): the same chaos on a 3-node nats-server
/// cluster with R3 streams and buckets (`stream_replicas = 3`, `nats_url`
/// listing the three nodes), three `ledgerline run` instances sharing the
/// delivery (`share_registries`: one registry each for two of them) with
/// one aggregator active and two standing by: the aggregator's instance is
/// SIGKILLed (another takes over its lease and its registry within the
/// TTL) and nodes
/// are crashed or stopped (the LEDGER stream's leader half of the time)
/// while orders flow. The same
/// audit: nothing lost, in order per (registry, order), one body per key,
/// each posting stored once (no posting published by two owners), and
/// `verify` agrees with every stored posting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_three_nodes_and_three_instances_loses_nothing_through_node_and_instance_kills()
 {
    chaos(Plan::cluster_from_env()).await;
}

/// The nats-server(s) of a run and a client of them.
struct ChaosNats {
    cluster: NatsCluster,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl ChaosNats {
    async fn start(nodes: usize, orders: &OrderSubjects) -> Self {
        let cluster = NatsCluster::start(nodes)
            .await
            .expect("nats-server starts (run `make tools`)");
        let servers: Vec<String> = cluster.url().split(',').map(str::to_owned).collect();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .expect("connect");
        let js = jetstream::new(client.clone());
        ledgerline::streams::ensure_streams(&js, orders, nodes)
            .await
            .expect("streams");
        Self {
            cluster,
            client,
            js,
        }
    }

    /// The node to crash: the LEDGER stream's leader half of the time (when
    /// there is a cluster), else any.
    async fn victim(&self, rng: &mut ChaCha8Rng) -> usize {
        if self.cluster.len() > 1 && rng.random_bool(0.5) {
            let leader = async {
                let mut stream = self
                    .js
                    .get_stream(ledgerline::streams::LEDGER_STREAM)
                    .await
                    .ok()?;
                let info = stream.info().await.ok()?;
                info.cluster.as_ref()?.leader.clone()
            };
            if let Some(name) = leader.await
                && let Some(i) =
                    (0..self.cluster.len()).find(|i| self.cluster.node(*i).name() == name)
            {
                return i;
            }
        }
        rng.random_range(0..self.cluster.len())
    }
}

/// The `ledgerline run` instances of a run, each with its own log.
struct Instances {
    config: std::path::PathBuf,
    logs: Vec<std::path::PathBuf>,
    runs: Vec<tokio::process::Child>,
}

impl Instances {
    fn start(config: &Path, dir: &Path, n: usize) -> Self {
        let logs: Vec<_> = (0..n).map(|i| dir.join(format!("run-{i}.log"))).collect();
        let runs = logs
            .iter()
            .map(|log| spawn_run(config, log, RUN_LOG))
            .collect();
        Self {
            config: config.to_owned(),
            logs,
            runs,
        }
    }

    /// The instance holding the aggregator's lease (its holder's name
    /// carries the pid), when one holds it and is ours. (The registries'
    /// deliveries are shared between the instances.)
    async fn active(&self, js: &jetstream::Context) -> Option<usize> {
        let pid = support::books::lease_holder_pid(js, "aggregator").await?;
        self.runs.iter().position(|r| r.id() == Some(pid))
    }

    /// SIGKILLs instance `i` and starts it again after `pause`.
    async fn kill_and_restart(&mut self, i: usize, pause: Duration) {
        let run = &mut self.runs[i];
        run.start_kill().unwrap();
        run.wait().await.unwrap();
        tokio::time::sleep(pause).await;
        *run = spawn_run(&self.config, &self.logs[i], RUN_LOG);
    }
}

/// Runs the chaos of `plan` and audits what it left; fails with every
/// problem found.
async fn chaos(plan: Plan) {
    eprintln!("chaos: {plan:?}\nchaos: replay with {}", plan.replay());
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let mut nats =
        ChaosNats::start(plan.nodes, &OrderSubjects::new("orders", plan.partitions)).await;
    let rx = ChaosReceiver::start(rng.random()).await;
    let registries = registries(&rx.server.url(""), &plan);
    let dir = tempfile::Builder::new()
        .prefix("ledgerline-chaos-")
        .tempdir()
        .unwrap();
    let url = nats.cluster.url();
    let config = service_config(dir.path(), &url, &registries);
    let settings =
        Settings::on_loopback(&url, &registries, "chaos.toml").expect("test config is valid");
    let events = ledgerline::demo::dataset::generate(plan.orders, rng.random());
    let (want, pairs) = expected(&settings, &events.join("\n"));
    eprintln!(
        "chaos: {} orders, {} events, {} postings to {pairs} (registry, order)",
        plan.orders,
        events.len(),
        want.len()
    );

    // The schedule: kills and NATS restarts in random order, 2–6 s apart;
    // the events published until the last one, so all the others strike
    // under load.
    let mut actions: Vec<Action> = std::iter::repeat_n(Action::KillRun, plan.kills)
        .chain(std::iter::repeat_n(Action::RestartNats, plan.nats_restarts))
        .collect();
    actions.shuffle(&mut rng);
    let schedule: Vec<(Duration, Action)> = actions
        .into_iter()
        .map(|a| (Duration::from_millis(rng.random_range(2_000..6_000)), a))
        .collect();
    let window: Duration = schedule.iter().map(|(d, _)| *d).sum();
    let last_wait = schedule.last().map_or(Duration::ZERO, |(d, _)| *d);

    let mut runs = Instances::start(&config, dir.path(), plan.instances);
    // The actions themselves take time too (a restarted node catches up
    // before it is ready): publishing is spread over that as well, so the
    // last actions still strike while orders arrive.
    let action_time = Duration::from_millis(
        plan.nats_restarts as u64 * if plan.nodes > 1 { 2_500 } else { 1_000 }
            + plan.kills as u64 * 300,
    );
    let (last_action, last) = tokio::sync::oneshot::channel();
    let publisher = publish_slowly(
        nats.client.clone(),
        settings.config.order_subjects(),
        plan.nodes,
        events,
        window - last_wait + action_time,
        last,
    );
    let mut last_action = Some(last_action);
    let actions = schedule.len();
    let mut under_load = 0;
    for (i, (wait, action)) in schedule.into_iter().enumerate() {
        tokio::time::sleep(wait).await;
        let booked = rx.booked();
        if booked < want.len() {
            under_load += 1;
        }
        if i + 1 == actions
            && let Some(go) = last_action.take()
        {
            // The last chunk flows while the last action strikes.
            let _ = go.send(());
        }
        let what = match action {
            Action::KillRun => {
                let (victim, active) = match runs.active(&nats.js).await {
                    Some(a) => (a, true),
                    None => (rng.random_range(0..plan.instances), false),
                };
                let pause = Duration::from_millis(rng.random_range(0..400));
                runs.kill_and_restart(victim, pause).await;
                format!("instance {victim}{}", if active { " (active)" } else { "" })
            }
            Action::RestartNats => {
                let victim = nats.victim(&mut rng).await;
                let node = nats.cluster.node_mut(victim);
                if rng.random_bool(0.5) {
                    node.kill().await;
                } else {
                    node.stop().await;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_500))).await;
                node.restart().await.expect("nats-server restarts");
                format!("node {victim}")
            }
        };
        eprintln!(
            "chaos: {:>5.1} s  #{i} {action:?} {what} with {booked} of {} booked",
            started.elapsed().as_secs_f64(),
            want.len()
        );
    }
    if let Some(go) = last_action.take() {
        // No action at all: nothing to wait for.
        let _ = go.send(());
    }
    publisher.await.unwrap();
    eprintln!(
        "chaos: {:.1} s  chaos over, all published; draining",
        started.elapsed().as_secs_f64()
    );

    // Drain: every posting booked and every (registry, order) delivered.
    let deadline = Instant::now() + plan.drain_limit();
    let rows = loop {
        if rx.booked() >= want.len()
            && let Ok(rows) = deliveries(&nats.js).await
            && undelivered(&rows, pairs).is_empty()
        {
            break rows;
        }
        if Instant::now() > deadline {
            break deliveries(&nats.js).await.unwrap_or_else(|e| {
                eprintln!("chaos: deliveries list failed: {e}");
                Vec::new()
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let elapsed = started.elapsed();

    // The audit.
    let mut problems = {
        let books = rx.books.lock().unwrap();
        eprintln!(
            "chaos: {:.1} s  {} requests, fates {:?}",
            elapsed.as_secs_f64(),
            books.fates.values().sum::<u64>(),
            books.fates
        );
        let mut p = audit_books(&books, &want);
        for (fate, _) in Fate::WEIGHTS {
            if plan.orders >= 100 && !books.fates.contains_key(&fate) {
                p.push(format!("the receiver never chose {fate:?}"));
            }
        }
        p
    };
    if under_load + 1 < plan.kills + plan.nats_restarts {
        problems.push(format!(
            "only {under_load} of {} kills and restarts struck before everything was booked",
            plan.kills + plan.nats_restarts
        ));
    }
    problems.extend(undelivered(&rows, pairs));
    let stored = support::count_ledger(&nats.js, subjects::POSTINGS_ALL).await;
    if stored != want.len() as u64 {
        problems.push(format!(
            "LEDGER holds {stored} postings, the engine made {}",
            want.len()
        ));
    }
    problems.extend(replica_problems(&nats.js, plan.nodes).await);
    // `verify` replays ORDERS with the same fold the aggregator used: after
    // every kill and restart, every stored posting is the replay's.
    match ledgerline::verify::verify(&nats.client, &settings, |_, _| {}).await {
        Ok(report) if report.ok() && report.matched == want.len() as u64 => {}
        Ok(report) => problems.push(format!("{report}: {:?}", report.mismatches)),
        Err(e) => problems.push(format!("verify failed: {e}")),
    }
    if !problems.is_empty() {
        for r in ["books", "erp"] {
            problems.push(format!(
                "consumer of {r}: {}",
                consumer_pending(&nats.js, r).await
            ));
        }
        fail(&plan, dir, &runs.logs, &problems);
    }
    eprintln!(
        "chaos: passed in {:.1} s (seed {})",
        elapsed.as_secs_f64(),
        plan.seed
    );
}

/// Every stream and bucket the run uses has `replicas` replicas: the
/// test's and `ledgerline run`'s (`stream_replicas`).
async fn replica_problems(js: &jetstream::Context, replicas: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut names = vec![
        ledgerline::streams::ORDERS_STREAM.to_owned(),
        ledgerline::streams::LEDGER_STREAM.to_owned(),
    ];
    names.extend(
        [
            ledgerline::lease::BUCKET,
            ledgerline::dispatcher::index::BUCKET,
        ]
        .map(|b| format!("KV_{b}")),
    );
    for name in names {
        match js.get_stream(&name).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) if info.config.num_replicas == replicas => {}
                Ok(info) => problems.push(format!(
                    "{name} has {} replicas, stream_replicas is {replicas}",
                    info.config.num_replicas
                )),
                Err(e) => problems.push(format!("{name}: {e}")),
            },
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    problems
}

/// Keeps the run's directory and fails with every problem and the seed.
fn fail(
    plan: &Plan,
    mut dir: tempfile::TempDir,
    logs: &[std::path::PathBuf],
    problems: &[String],
) -> ! {
    dir.disable_cleanup(true);
    let tails: Vec<String> = logs
        .iter()
        .map(|log| format!("{}:\n{}", log.display(), tail(log, 15)))
        .collect();
    panic!(
        "chaos test failed (seed {}); replay: {}\nrun logs kept; their tails:\n{}\n\nproblems:\n- {}",
        plan.seed,
        plan.replay(),
        tails.join("\n\n"),
        problems.join("\n- ")
    );
}
