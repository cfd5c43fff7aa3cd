//! What several `ledgerline run` instances must leave behind: exactly what
//! one instance would have written (the fence and shares tests), and the
//! set-up those tests share ([`Instances`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use ledgerline::posting::Posting;
use ledgerline::receiver::{FailureMode, Receiver};
use serde_json::json;

use super::{Nats, engine, process};

/// Instances of `ledgerline run` over one NATS, started from one config
/// file, the receivers behind their registries, and a ticket history with
/// the postings one instance would make of it.
pub struct Instances {
    receivers: Vec<(Receiver, String)>,
    /// Versions 1 to 3 of each order ([`ticket_history`]).
    events: Vec<String>,
    /// What the offline engine makes of `events`.
    postings: Vec<Posting>,
    /// Where the instances' config keeps the events (`order_partitions`).
    orders: ledgerline::streams::OrderSubjects,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Instances {
    /// The config: `lease_ttl = "4s"`, `ack_wait = "5s"`, `top` (TOML lines), then
    /// `registries` (the `[delivery]` and `[[registry]]` tables, one
    /// registry per receiver); the history of `orders` orders.
    pub fn new(
        nats: &Nats,
        receivers: Vec<(Receiver, String)>,
        top: &str,
        registries: &str,
        orders: usize,
    ) -> Instances {
        let settings = super::settings(&nats.server, &format!("{top}{registries}"));
        let dir = tempfile::tempdir().unwrap();
        let config = process::service_config(
            dir.path(),
            &nats.server.url(),
            &format!("lease_ttl = \"4s\"\nack_wait = \"5s\"\n{top}{registries}"),
        );
        let events = ticket_history(orders, 3);
        let postings = engine::postings(&settings, &events);
        Instances {
            receivers,
            events,
            postings,
            orders: settings.config.order_subjects(),
            config,
            dir,
        }
    }

    /// Starts instance `name`, logging to `<name>.log` in the config's
    /// folder: the child (killed when dropped) and its log.
    pub fn spawn(&self, name: &str) -> (tokio::process::Child, PathBuf) {
        let log = self.dir.path().join(format!("{name}.log"));
        let child = process::spawn_run(&self.config, &log, "info,async_nats=warn");
        (child, log)
    }

    /// Waits until the receivers booked `want` postings (`what`: whose).
    async fn wait_delivered(&self, what: &str, limit: Duration, want: usize) {
        super::eventually(what, limit, || async {
            delivered(&self.receivers) >= want as u64
        })
        .await;
    }

    /// Publishes the history, and kills `first` once a third of the
    /// postings is delivered (`what`: by whom).
    pub async fn publish_and_kill_midway(
        &self,
        nats: &Nats,
        first: &mut tokio::process::Child,
        what: &str,
    ) {
        super::publish_events_to(nats, &self.orders, &self.events.join("\n")).await;
        let third = self.postings.len() / 3;
        self.wait_delivered(what, Duration::from_secs(60), third)
            .await;
        first.kill().await.unwrap();
    }

    /// Waits until every posting is delivered.
    pub async fn all_delivered(&self) {
        let all = self.postings.len();
        self.wait_delivered("every posting delivered", Duration::from_secs(120), all)
            .await;
    }

    /// [`assert_as_one_instance`] for this history: how many (registry,
    /// order) were booked.
    pub async fn assert_as_one_instance(&self, nats: &Nats) -> usize {
        assert_as_one_instance(nats, &self.receivers, &self.postings, 3).await
    }

    /// Two instances share the leases `keys` (`dispatcher.<R>`,
    /// `aggregator.p<k>`): A alone holds all of them; B joins and takes
    /// half, and `b_works` finds B working on its half in B's log; orders
    /// flow through both; A is SIGKILLed and B takes every key; every
    /// posting is delivered. Then LEDGER and the receivers must be as one
    /// instance would have left them: how many (registry, order) were
    /// booked.
    pub async fn two_share_then_one_takes_over(
        &self,
        nats: &Nats,
        keys: &[String],
        b_works: impl Fn(&str) -> bool,
    ) -> usize {
        let (all, half) = (keys.len(), keys.len() / 2);
        let (mut a, _) = self.spawn("a");
        let pid_a = a.id().unwrap();
        super::eventually("A holds every key", Duration::from_secs(30), || async {
            held_by(&nats.js, keys, &[pid_a]).await == vec![all]
        })
        .await;
        let (b, log_b) = self.spawn("b");
        let pid_b = b.id().unwrap();
        super::eventually("half each", Duration::from_secs(30), || async {
            held_by(&nats.js, keys, &[pid_a, pid_b]).await == vec![all - half, half]
        })
        .await;
        super::eventually("B works on its half", Duration::from_secs(10), || async {
            b_works(&std::fs::read_to_string(&log_b).unwrap_or_default())
        })
        .await;
        self.publish_and_kill_midway(nats, &mut a, "a third delivered by both")
            .await;
        super::eventually("B holds every key", Duration::from_secs(30), || async {
            held_by(&nats.js, keys, &[pid_b]).await == vec![all]
        })
        .await;
        self.all_delivered().await;
        drop(b);
        self.assert_as_one_instance(nats).await
    }
}

/// `[delivery]` with one 200 ms retry and a `[[registry]]` per id, each
/// to its receiver (10,000 requests/s).
pub fn registries_toml(ids: &[&str], receivers: &[(Receiver, String)]) -> String {
    let mut toml = String::from("[delivery]\nretry_schedule = [\"200ms\"]\n");
    for (r, (_, url)) in ids.iter().zip(receivers) {
        toml.push_str(&format!(
            "[[registry]]\nid = \"{r}\"\nurl = \"{url}\"\nrate_limit_per_s = 10000\n"
        ));
    }
    toml
}

/// How many of the leases `keys` each of `pids` holds.
pub async fn held_by(
    js: &async_nats::jetstream::Context,
    keys: &[String],
    pids: &[u32],
) -> Vec<usize> {
    let mut holders = Vec::new();
    for key in keys {
        holders.extend(lease_holder_pid(js, key).await);
    }
    pids.iter()
        .map(|p| holders.iter().filter(|h| *h == p).count())
        .collect()
}

/// Versions `1..=versions` of a ticket order `o-000`, `o-001`, … each,
/// all first versions first.
fn ticket_history(orders: usize, versions: u64) -> Vec<String> {
    let mut events = Vec::new();
    for v in 1..=versions {
        for o in 0..orders {
            events.push(engine::ticket_event(&format!("o-{o:03}"), v, v as u32));
        }
    }
    events
}

/// The pid of the instance holding lease `key` (an instance's name ends
/// in `-<pid>-<random>`, `lease::instance_name`), if one holds it.
pub async fn lease_holder_pid(js: &async_nats::jetstream::Context, key: &str) -> Option<u32> {
    let kv = js.get_key_value(ledgerline::lease::BUCKET).await.ok()?;
    let value = kv.get(key).await.ok()??;
    let holder: ledgerline::lease::Holder = serde_json::from_slice(&value).ok()?;
    holder.instance.rsplit('-').nth(1)?.parse().ok()
}

/// One receiver per registry, never failing, answering after 5 ms; each
/// with its `/hook` URL.
pub async fn receivers(n: usize) -> Vec<(Receiver, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let failure = FailureMode {
            share: 0.0,
            delay_ms: 5,
            ..FailureMode::default()
        };
        let (rx, url) = super::receiver(None, failure).await;
        out.push((rx, format!("{url}/hook")));
    }
    out
}

/// Distinct keys the receivers booked.
fn delivered(receivers: &[(Receiver, String)]) -> u64 {
    receivers
        .iter()
        .map(|(rx, _)| rx.stats().distinct_keys)
        .sum()
}

/// LEDGER holds exactly `postings` (what the offline engine makes), and
/// the receivers booked them as one instance would: one body per key,
/// every posting carrying the previous reply, every (registry, order)
/// in order `1..=seqs`. Returns how many (registry, order) were booked.
async fn assert_as_one_instance(
    nats: &Nats,
    receivers: &[(Receiver, String)],
    postings: &[Posting],
    seqs: u64,
) -> usize {
    let want: BTreeMap<_, _> = postings.iter().map(engine::body_text).collect();
    let got = super::stored_postings(&nats.js).await;
    assert_eq!(
        got.len(),
        want.len(),
        "as many postings as the engine makes"
    );
    for (key, body) in &want {
        assert_eq!(got.get(key), Some(body), "posting {key:?}");
    }
    let seq_of: HashMap<String, (String, String, u64)> = postings
        .iter()
        .map(|p| (p.idempotency_key.to_string(), engine::body_text(p).0))
        .collect();
    let mut bodies: HashMap<String, String> = HashMap::new();
    let mut order_of: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for r in receivers
        .iter()
        .flat_map(|(rx, _)| rx.received())
        .filter(|r| r.status == 200)
    {
        let key = r.idempotency_key.clone().unwrap();
        let first = bodies.entry(key.clone()).or_insert_with(|| r.body.clone());
        let (reg, order, seq) = &seq_of[&key];
        let mut sent: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let mut first: serde_json::Value = serde_json::from_str(first).unwrap();
        sent["registry_data"] = json!(null);
        first["registry_data"] = json!(null);
        assert_eq!(sent, first, "one body per key ({reg}/{order} #{seq})");
        assert_ne!(
            r.chain_ok,
            Some(false),
            "registry_data chain of {reg}/{order}"
        );
        let seen = order_of.entry((reg.clone(), order.clone())).or_default();
        if !seen.contains(seq) {
            seen.push(*seq);
        }
    }
    let all: Vec<u64> = (1..=seqs).collect();
    for ((reg, order), booked) in &order_of {
        assert_eq!(booked, &all, "{reg}/{order} delivered in order");
    }
    order_of.len()
}
