//! (g) Instances sharing the work (issue 16), on its own with
//! `ledgerline bench --instances 1,2,3`.
//!
//! For each count N: a fresh 3-node nats-server cluster
//! ([`crate::natsd::NatsCluster`], every stream and bucket with three
//! replicas), [`REGISTRIES`] registries each with its own lean receiver
//! (the one of (c): signatures and the registry_data chain checked), and N
//! service instances in this process, each with its own NATS connection to
//! the cluster, as `ledgerline run` with `share_registries = true` and
//! `order_partitions` = [`ORDER_PARTITIONS`]: the order partitions'
//! aggregation and the registries' deliveries shared. Once the partitions'
//! and the registries' leases are spread over the N instances, the demo dataset is
//! published at once and waited for until every posting is delivered with
//! its registry_data stored. Reported per N: postings/s (first publish to
//! last receipt), CPU seconds of this process and of the three nodes, and
//! the postings/s against N = 1.
//!
//! All of it shares this machine's CPUs: on a small machine more instances
//! cannot add CPU, so the figures show what sharing costs there, not the
//! speed-up of instances on machines of their own.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::TryStreamExt;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::pipeline::{self, BenchReceiver, bench_config_with, publish_events, registry_toml};
use super::usage;
use super::{BenchError, BenchProgress, err};
use crate::demo::dataset;
use crate::natsd::NatsCluster;
use crate::service::{Component, InProcess};

/// Registries delivered to: divisible by 1, 2 and 3, so the shares are even.
pub const REGISTRIES: usize = 6;
/// Nodes of the cluster.
pub const NODES: usize = 3;
/// Order partitions (`order_partitions`): 6 share evenly over 1, 2 and 3
/// instances.
pub const ORDER_PARTITIONS: u32 = 6;
/// The lease TTL of the instances.
const LEASE_TTL: &str = "4s";

/// One run: N instances.
#[derive(Debug, Clone)]
pub struct InstanceRun {
    pub instances: usize,
    pub postings: u64,
    pub elapsed: Duration,
    pub postings_per_s: f64,
    /// CPU of this process (every instance) during the run.
    pub cpu_own: Duration,
    /// CPU of the three nodes during the run.
    pub cpu_nats: Duration,
}

/// Every run of `--instances`.
#[derive(Debug, Clone)]
pub struct InstancesFigures {
    pub orders: usize,
    pub cpus: usize,
    pub runs: Vec<InstanceRun>,
}

/// Runs (g) for each count in `counts`, `orders` orders each.
pub async fn run(
    counts: &[usize],
    orders: usize,
    max_in_flight: usize,
    progress: &mut dyn FnMut(&BenchProgress),
) -> Result<InstancesFigures, BenchError> {
    let mut runs = Vec::new();
    for &n in counts {
        runs.push(run_one(n.max(1), orders, max_in_flight, progress).await?);
    }
    Ok(InstancesFigures {
        orders,
        cpus: super::cpus(),
        runs,
    })
}

async fn run_one(
    n: usize,
    orders: usize,
    max_in_flight: usize,
    progress: &mut dyn FnMut(&BenchProgress),
) -> Result<InstanceRun, BenchError> {
    let stage = format!("(g) {n} instance(s): starting a {NODES}-node cluster");
    progress(&BenchProgress::stage(&stage));
    let cluster = NatsCluster::start(NODES).await?;
    let stop_receivers = CancellationToken::new();
    let mut receivers = Vec::new();
    let mut registries = Vec::new();
    let ids: Vec<String> = (1..=REGISTRIES).map(|i| format!("r{i}")).collect();
    for id in &ids {
        let rx = BenchReceiver::new(None)?;
        let addr = rx.serve("/hook", stop_receivers.clone()).await?;
        registries.push(registry_toml(
            id,
            &format!("http://{addr}/hook"),
            &["currency"],
            "",
        ));
        receivers.push(rx);
    }
    let top = format!(
        "stream_replicas = {NODES}\nshare_registries = true\norder_partitions = {ORDER_PARTITIONS}\n\
         lease_ttl = \"{LEASE_TTL}\"\n"
    );
    let settings = bench_config_with(&cluster.url(), max_in_flight, &top, &registries)?;
    let components = [Component::Aggregator, Component::Dispatcher];
    let mut instances = Vec::new();
    for _ in 0..n {
        instances.push(InProcess::start(&settings, &components).await?);
    }
    let js = instances[0].js.clone();
    let ledger = instances[0].ledger.clone();
    let outcome = async {
        progress(&BenchProgress::stage(&format!(
            "(g) {n} instance(s): waiting for the partitions and the registries to be shared"
        )));
        wait_for_shares(&js, &ids, n).await?;

        let lines = dataset::generate(orders, dataset::SEED);
        let before_own = usage::own();
        let nats_cpu = |c: &NatsCluster| -> Duration {
            (0..c.len())
                .filter_map(|i| c.node(i).pid().and_then(usage::of_pid))
                .map(|u| u.cpu)
                .sum()
        };
        let before_nats = nats_cpu(&cluster);
        let started = OffsetDateTime::now_utc();
        let total = lines.len();
        publish_events(
            &js,
            &settings.config.subject_prefix,
            lines.into_iter(),
            total,
            None,
            |_, _| {},
            progress,
            &format!("(g) {n} instance(s): publishing"),
        )
        .await?;
        let accepted = || -> u64 { receivers.iter().map(BenchReceiver::accepted).sum() };
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let postings = pipeline::settle(
            &js,
            &ledger,
            &pipeline::aggregator_consumers(ORDER_PARTITIONS),
            &id_refs,
            &accepted,
            Duration::from_secs(900),
            progress,
            &format!("(g) {n} instance(s): delivering"),
        )
        .await?;
        let breaks: u64 = receivers.iter().map(BenchReceiver::chain_breaks).sum();
        if breaks > 0 {
            return Err(BenchError::Step {
                what: "checking the deliveries",
                message: format!(
                    "{breaks} postings did not carry the registry_data answered to the one before"
                ),
            });
        }
        let end = receivers
            .iter()
            .filter_map(BenchReceiver::last_receipt)
            .max()
            .unwrap_or_else(OffsetDateTime::now_utc);
        let elapsed = (end - started).unsigned_abs();
        let after_own = usage::own();
        Ok(InstanceRun {
            instances: n,
            postings,
            elapsed,
            postings_per_s: postings as f64 / elapsed.as_secs_f64().max(1e-9),
            cpu_own: after_own.cpu.saturating_sub(before_own.cpu),
            cpu_nats: nats_cpu(&cluster).saturating_sub(before_nats),
        })
    }
    .await;
    progress(&BenchProgress::stage(&format!(
        "(g) {n} instance(s): stopping"
    )));
    for i in instances {
        i.stop().await;
    }
    stop_receivers.cancel();
    drop(cluster);
    outcome
}

/// Waits until the order partitions and the registries are each spread
/// evenly over the `n` instances (⌈keys / n⌉ or one less each) and every
/// partition's consumer exists. (On a fresh cluster under load an
/// instance's start-up can take tens of seconds, its JetStream requests
/// timing out and retried: measured before it is up, the run would time
/// that, not the delivery.)
async fn wait_for_shares(
    js: &jetstream::Context,
    registries: &[String],
    n: usize,
) -> Result<(), BenchError> {
    let started = Instant::now();
    let partitions: Vec<String> = (0..ORDER_PARTITIONS).map(|k| format!("p{k}")).collect();
    loop {
        if even(js, Component::Aggregator, &partitions, n).await
            && even(js, Component::Dispatcher, registries, n).await
            && aggregating(js).await
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(BenchError::Step {
                what: "sharing the partitions and the registries",
                message: format!(
                    "the {ORDER_PARTITIONS} order partitions and the {} registries were not shared evenly by {n} instances within 120 s",
                    registries.len()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether component `c`'s leases on `keys` are all held and spread evenly
/// over `n` instances.
async fn even(js: &jetstream::Context, c: Component, keys: &[String], n: usize) -> bool {
    let want = n.min(keys.len()).max(1);
    let fair = keys.len().div_ceil(want);
    holders(js, c, keys).await.is_some_and(|holders| {
        holders.len() == want
            && holders
                .values()
                .all(|held| *held + 1 >= fair && *held <= fair)
    })
}

/// Whether every order partition's consumer exists and has a pull request
/// waiting (on a fresh cluster the first requests to a new consumer can be
/// lost before it has a leader, and are made again only when they would
/// have expired: measured from then, a run would time that wait).
async fn aggregating(js: &jetstream::Context) -> bool {
    for k in 0..ORDER_PARTITIONS {
        let consumer = js
            .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
                crate::aggregator::partition_consumer(k),
                crate::streams::ORDERS_STREAM,
            )
            .await;
        let pulling = match consumer {
            Ok(mut c) => c.info().await.is_ok_and(|i| i.num_waiting > 0),
            Err(_) => false,
        };
        if !pulling {
            return false;
        }
    }
    true
}

/// How many of `keys` (leases `<component>.<key>`) each holder holds, when
/// every one is held.
async fn holders(
    js: &jetstream::Context,
    c: Component,
    keys_wanted: &[String],
) -> Option<BTreeMap<String, usize>> {
    let kv = js.get_key_value(crate::lease::BUCKET).await.ok()?;
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(err("reading the leases"))
        .ok()?
        .try_collect()
        .await
        .ok()?;
    let mut holders = BTreeMap::new();
    for r in keys_wanted {
        let key = format!("{}.{r}", c.name());
        if !keys.contains(&key) {
            return None;
        }
        let value = kv.get(&key).await.ok()??;
        let holder: crate::lease::Holder = serde_json::from_slice(&value).ok()?;
        *holders.entry(holder.instance).or_insert(0) += 1;
    }
    Some(holders)
}

impl fmt::Display for InstancesFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "(g) instances sharing the work (order_partitions = {ORDER_PARTITIONS}, share_registries): \
             a {NODES}-node cluster, R{NODES} streams, {REGISTRIES} registries, {} orders per run, all in this process on {} CPUs",
            self.orders, self.cpus
        )?;
        let base = self.runs.first().map_or(0.0, |r| r.postings_per_s);
        for r in &self.runs {
            writeln!(
                f,
                "  {} instance(s): {} postings in {:.1} s: {:.0} postings/s ({:.2}× the first run); \
                 CPU {:.1} s this process, {:.1} s the nodes",
                r.instances,
                r.postings,
                r.elapsed.as_secs_f64(),
                r.postings_per_s,
                r.postings_per_s / base.max(1e-9),
                r.cpu_own.as_secs_f64(),
                r.cpu_nats.as_secs_f64()
            )?;
        }
        write!(
            f,
            "  Every instance and node shares this machine's {} CPUs: the figures show what sharing \
             costs here, not the speed-up of instances on machines of their own (docs/scale-out.md).",
            self.cpus
        )
    }
}
