//! (h) long-lived orders, on its own with `--long-orders N`: the same
//! orders receiving event after event, as a running service sees them.
//!
//! The other stages give each order a few events; a cost that grows with
//! what the service has handled since it started (a list that is never
//! trimmed, a scan over history) does not show there. Here
//! [`LONG_ORDERS`] orders, few enough that every cache holds them all, are
//! confirmed, then updated again and again, round robin (one more ticket
//! each time, so every event posts a delta), N events in all, through the
//! service in this process to one registry whose receiver keeps nothing
//! (as in (d)). Reported: the delivery rate and the CPU per 1,000 postings
//! (this process's and nats-server's) in each fifth of the postings, and
//! the last fifth's rate over the second's (the first includes the start;
//! a rate that falls, or a CPU cost that rises, from fifth to fifth is
//! such a cost), this process's RSS at the start, the end and its
//! peak, nats-server's peak, and the caches that hold orders.
//!
//! Then the service is restarted on the same nats-server (every cache
//! empty) and each order gets one more event: each book is rebuilt (the
//! aggregator starts from the order's latest snapshot, taken every 64
//! events, and replays the events after it; the dispatcher reads the
//! order's delivery state), so the time until those postings are
//! delivered is what a restart costs per long-lived order.
//!
//! Session 14 found such a cost in the aggregator's book cache
//! ([`crate::fifo::FifoMap`]: its line of keys grew by one key per event
//! and each event swept it); this stage is the end-to-end check that it,
//! or its like, is not back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::pipeline::{Running, publish_events, settle};
use super::raw::Minimal;
use super::scale::{CacheSize, REGISTRY, caches, scale_settings};
use super::{BenchError, BenchProgress, mib, usage};
use crate::natsd::NatsServer;

/// Orders of the stage: under every cache's bound (the aggregator's books,
/// the dispatcher's caught-up orders), so each order's state stays in
/// memory from its first event to its last.
pub const LONG_ORDERS: usize = 500;

/// What (h) measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LongFigures {
    pub orders: usize,
    pub events: usize,
    /// Postings stored, every one delivered.
    pub postings: u64,
    /// From the first publish to the last delivery seen.
    pub elapsed: Duration,
    /// Postings/s in each fifth of the deliveries, in order.
    pub fifths: Vec<f64>,
    /// CPU seconds per 1,000 postings in each fifth: this process's, and
    /// nats-server's (`None` when it cannot be read). Unlike the rates,
    /// these hardly move with what else the machine runs.
    pub fifths_cpu: Vec<(f64, Option<f64>)>,
    /// This process's RSS at the start and the end, and its peak during
    /// the stage.
    pub rss: [Option<u64>; 2],
    pub peak: Option<u64>,
    /// nats-server's peak RSS (`None` when it cannot be read): it holds,
    /// among the rest, every message id of the streams' duplicate window.
    pub nats_peak: Option<u64>,
    pub caches: Vec<CacheSize>,
    /// After the restart: one more event per order, each order rebuilt.
    pub restart: Option<Restart>,
}

/// What one more event per order cost after the service restarted.
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    /// Orders, each with one more event (and posting).
    pub orders: usize,
    /// Events each order had before the restart.
    pub history: usize,
    /// From the first publish to the last delivery.
    pub elapsed: Duration,
    /// CPU seconds of this process and of nats-server meanwhile.
    pub cpu: (f64, Option<f64>),
    /// Books the aggregator rebuilt meanwhile: from a snapshot, from the
    /// order's first event.
    pub rebuilt: (u64, u64),
}

impl LongFigures {
    /// The last fifth's rate over the second's (the first includes the
    /// start); `None` without both.
    pub fn last_over_second(&self) -> Option<f64> {
        match (self.fifths.get(1), self.fifths.last()) {
            (Some(second), Some(last)) if self.fifths.len() > 2 && *second > 0.0 => {
                Some(last / second)
            }
            _ => None,
        }
    }
}

/// Event `round` (0: the `order.confirmed`) of long-lived order `order`:
/// version `round + 1`, with `round + 1` tickets on its one line; the
/// payment comes with the confirmation.
pub fn long_event(order: usize, round: usize) -> String {
    let version = round + 1;
    let (kind, payments) = if round == 0 {
        (
            "order.confirmed",
            r#","payments":[{"payment_id":"p1","method":"card","amount":"11.60","currency":"EUR"}]"#,
        )
    } else {
        ("order.updated", "")
    };
    format!(
        concat!(
            r#"{{"event_id":"long-{order}-{version}","type":"{kind}","order_id":"long-{order:05}","#,
            r#""occurred_at":"2026-11-28T10:00:00Z","order":{{"version":{version},"currency":"EUR","#,
            r#""channel":"direct","prices_include_tax":true,"line_items":[{{"id":"l1","#,
            r#""product_id":"museum","option_id":"standard","unit_type":"adult","#,
            r#""description":"Museum General Admission","quantity":{version},"unit_price":"11.60","#,
            r#""discount":"0.00","tax_rate":"0.16"}}],"fees":[]{payments}}}}}"#
        ),
        order = order,
        version = version,
        kind = kind,
        payments = payments,
    )
}

/// Runs (h): `events` events over [`LONG_ORDERS`] orders (fewer orders
/// when there are fewer events).
pub async fn run(
    events: usize,
    max_in_flight: usize,
    settle_limit: Duration,
    progress: &mut dyn FnMut(&BenchProgress),
) -> Result<LongFigures, BenchError> {
    let events = events.max(1);
    let orders = LONG_ORDERS.min(events);
    let receiver = Minimal::start().await?;
    progress(&BenchProgress::stage(
        "(h) starting nats-server and the pipeline",
    ));
    let server = NatsServer::start().await?;
    let settings = scale_settings(&server.url(), &receiver.url, max_in_flight)?;
    let mut running = Running::start(server, settings.clone(), &[REGISTRY]).await?;
    let stage = Stage {
        events,
        orders,
        settle_limit,
        receiver: &receiver,
    };
    let figures = match measure(&stage, &running, progress).await {
        Ok(mut f) => {
            progress(&BenchProgress::stage("(h) restarting the service"));
            let restarted = async {
                running.restart_service(&settings).await?;
                restart(&stage, &running, progress).await
            }
            .await;
            restarted.map(|r| {
                f.restart = Some(r);
                f
            })
        }
        Err(e) => Err(e),
    };
    progress(&BenchProgress::stage("(h) stopping"));
    running.stop_service().await;
    running.stop().await;
    receiver.stop().await;
    figures
}

/// What each step of (h) works with: `events` events over `orders`
/// orders, round robin, to `receiver`.
struct Stage<'a> {
    events: usize,
    orders: usize,
    settle_limit: Duration,
    receiver: &'a Minimal,
}

async fn measure(
    stage: &Stage<'_>,
    running: &Running,
    progress: &mut dyn FnMut(&BenchProgress),
) -> Result<LongFigures, BenchError> {
    let Stage {
        events,
        orders,
        receiver,
        ..
    } = *stage;
    usage::reset_peak_rss();
    let rss_start = usage::current_rss();
    let started = Instant::now();
    // When the deliveries passed each fifth of the events (one posting
    // each), sampled every 10 ms while the stage runs.
    let accepted = receiver.counter();
    let nats_pid = running.nats_pid();
    let mut sampler = tokio::spawn(fifth_marks(
        accepted.clone(),
        events as u64,
        started,
        nats_pid,
    ));
    let delivered = publish_and_settle(
        stage,
        running,
        &accepted,
        0..events,
        progress,
        [
            "(h) publishing long-lived orders' events",
            "(h) delivering long-lived orders' postings",
        ],
    )
    .await;
    let elapsed = started.elapsed();
    let postings = match delivered {
        Ok(p) => p,
        Err(e) => {
            sampler.abort();
            return Err(e);
        }
    };
    // Every posting is delivered: the sampler's next tick sees the last
    // fifth.
    let marks = match tokio::time::timeout(Duration::from_secs(2), &mut sampler).await {
        Ok(Ok(marks)) => marks,
        _ => {
            sampler.abort();
            Vec::new()
        }
    };
    let fifth = events as f64 / 5.0;
    let per_1000 = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / fifth.max(1.0);
    let mut fifths = Vec::new();
    let mut fifths_cpu = Vec::new();
    for pair in marks.windows(2) {
        let (from, to) = (&pair[0], &pair[1]);
        fifths.push(fifth / (to.at - from.at).as_secs_f64().max(1e-9));
        let nats = match (from.nats_cpu, to.nats_cpu) {
            (Some(a), Some(b)) => Some(per_1000(b.saturating_sub(a))),
            _ => None,
        };
        fifths_cpu.push((per_1000(to.own_cpu.saturating_sub(from.own_cpu)), nats));
    }
    Ok(LongFigures {
        orders,
        events,
        postings,
        elapsed,
        fifths,
        fifths_cpu,
        rss: [rss_start, usage::current_rss()],
        peak: usage::peak_rss(),
        nats_peak: nats_pid.and_then(usage::of_pid).and_then(|u| u.peak_rss),
        caches: caches(1),
        restart: None,
    })
}

/// After [`Running::restart_service`]: the next event of each of the
/// `orders` orders that received `events` round robin, published at once,
/// timed until every posting is delivered.
async fn restart(
    stage: &Stage<'_>,
    running: &Running,
    progress: &mut dyn FnMut(&BenchProgress),
) -> Result<Restart, BenchError> {
    let Stage {
        events,
        orders,
        receiver,
        ..
    } = *stage;
    let accepted = receiver.counter();
    let nats_pid = running.nats_pid();
    let before = mark(Instant::now(), nats_pid);
    let rebuilt_before = crate::aggregator::rebuilt_books();
    let started = Instant::now();
    publish_and_settle(
        stage,
        running,
        &accepted,
        events..events + orders,
        progress,
        [
            "(h) publishing one more event per order",
            "(h) rebuilding the orders and delivering their postings",
        ],
    )
    .await?;
    let elapsed = started.elapsed();
    let after = mark(Instant::now(), nats_pid);
    let rebuilt_after = crate::aggregator::rebuilt_books();
    let nats = match (before.nats_cpu, after.nats_cpu) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
        _ => None,
    };
    Ok(Restart {
        orders,
        history: events / orders.max(1),
        elapsed,
        cpu: (
            after.own_cpu.saturating_sub(before.own_cpu).as_secs_f64(),
            nats,
        ),
        rebuilt: (
            rebuilt_after.0.saturating_sub(rebuilt_before.0),
            rebuilt_after.1.saturating_sub(rebuilt_before.1),
        ),
    })
}

/// Publishes events `range` of the stage's round robin ([`long_event`]),
/// then waits until every posting stored is delivered (`accepted` counts
/// the receiver's); returns the postings stored. `stages` names the two
/// steps for the progress line.
async fn publish_and_settle(
    stage: &Stage<'_>,
    running: &Running,
    accepted: &AtomicU64,
    range: std::ops::Range<usize>,
    progress: &mut dyn FnMut(&BenchProgress),
    stages: [&str; 2],
) -> Result<u64, BenchError> {
    let Stage {
        orders,
        settle_limit,
        ..
    } = *stage;
    let count = range.len();
    let lines = range.map(|i| long_event(i % orders, i / orders));
    publish_events(
        &running.js,
        &running.prefix,
        lines,
        count,
        None,
        |_, _| {},
        progress,
        stages[0],
    )
    .await?;
    settle(
        &running.js,
        &running.ledger,
        &super::pipeline::aggregator_consumers(0),
        &[REGISTRY],
        &|| accepted.load(Ordering::Relaxed),
        settle_limit,
        progress,
        stages[1],
    )
    .await
}

/// When the deliveries passed a point, and the CPU spent by then.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// Since the stage started.
    at: Duration,
    own_cpu: Duration,
    nats_cpu: Option<Duration>,
}

fn mark(started: Instant, nats_pid: Option<u32>) -> Mark {
    Mark {
        at: started.elapsed(),
        own_cpu: usage::own().cpu,
        nats_cpu: nats_pid.and_then(usage::of_pid).map(|u| u.cpu),
    }
}

/// A mark at the start, then one as `accepted` reaches each fifth of
/// `total` (sampled every 10 ms); returns once it reached all of `total`.
async fn fifth_marks(
    accepted: Arc<AtomicU64>,
    total: u64,
    started: Instant,
    nats_pid: Option<u32>,
) -> Vec<Mark> {
    let mut marks = Vec::with_capacity(6);
    marks.push(mark(started, nats_pid));
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    while marks.len() < 6 {
        ticks.tick().await;
        let now = accepted.load(Ordering::Relaxed);
        while marks.len() < 6 && now * 5 >= total * marks.len() as u64 {
            marks.push(mark(started, nats_pid));
        }
    }
    marks
}

impl std::fmt::Display for LongFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "(h) long-lived orders: {} orders, {} events (each order confirmed, then updated, round robin) → {} postings delivered to 1 registry in {:.1} s",
            self.orders,
            self.events,
            self.postings,
            self.elapsed.as_secs_f64()
        )?;
        let fifths: Vec<String> = self.fifths.iter().map(|r| format!("{r:.0}")).collect();
        writeln!(
            f,
            "    postings/s, each fifth    {} (the first fifth includes the start)",
            fifths.join(" · ")
        )?;
        let cpu: Vec<String> = self
            .fifths_cpu
            .iter()
            .map(|(own, nats)| match nats {
                Some(n) => format!("{own:.3} + {n:.3}"),
                None => format!("{own:.3} + ?"),
            })
            .collect();
        writeln!(
            f,
            "    CPU s per 1,000 postings  {} (this process + nats-server, each fifth)",
            cpu.join(" · ")
        )?;
        match self.last_over_second() {
            Some(r) => writeln!(
                f,
                "    last fifth / second fifth {r:.2} (a cost that grows with what the service has handled shows as a falling rate)"
            )?,
            None => writeln!(f, "    last fifth / second fifth unknown")?,
        }
        writeln!(
            f,
            "    RSS of this process       start {} · end {} · peak {} · nats-server peak {}",
            mib(self.rss[0]),
            mib(self.rss[1]),
            mib(self.peak),
            mib(self.nats_peak)
        )?;
        write!(
            f,
            "    caches at the end         {}",
            super::scale::caches_line(&self.caches)
        )?;
        if let Some(r) = &self.restart {
            let nats = r.cpu.1.map_or("?".to_owned(), |n| format!("{n:.2}"));
            write!(
                f,
                "\n    after a restart           {} orders' next event (each order's book rebuilt: {} events, a snapshot every 64) delivered in {:.2} s: {:.0} orders/s, CPU {:.2} s + {nats} s (this process + nats-server); books rebuilt {}, {} of them from a snapshot",
                r.orders,
                r.history,
                r.elapsed.as_secs_f64(),
                r.orders as f64 / r.elapsed.as_secs_f64().max(1e-9),
                r.cpu.0,
                r.rebuilt.0 + r.rebuilt.1,
                r.rebuilt.0,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_long_event_is_valid_and_adds_one_ticket() {
        for round in [0, 1, 199] {
            let line = long_event(7, round);
            crate::events::parse_event(line.as_bytes(), Some("long-00007"))
                .unwrap_or_else(|r| panic!("{line}: {r:?}"));
            let (order_id, event_id) = crate::publish::route(line.as_bytes()).expect("routable");
            assert_eq!(order_id.to_string(), "long-00007");
            assert_eq!(event_id, format!("long-7-{}", round + 1));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["order"]["version"], round as u64 + 1);
            assert_eq!(v["order"]["line_items"][0]["quantity"], round as u64 + 1);
            assert_eq!(v["order"]["payments"].is_array(), round == 0);
        }
    }

    #[test]
    fn the_ratio_is_the_last_fifth_over_the_second() {
        let mut f = LongFigures {
            orders: 1,
            events: 5,
            postings: 5,
            elapsed: Duration::from_secs(1),
            fifths: vec![100.0, 90.0, 80.0, 70.0, 50.0],
            fifths_cpu: Vec::new(),
            rss: [None, None],
            peak: None,
            nats_peak: None,
            caches: Vec::new(),
            restart: None,
        };
        assert_eq!(f.last_over_second(), Some(50.0 / 90.0));
        f.fifths.truncate(2);
        assert_eq!(f.last_over_second(), None);
    }
}
