//! (d) and (e): memory at scale (issue 12: "RSS after 1,000,000 distinct
//! orders", "export: rows/s and RSS for 1,000,000 postings").
//!
//! (d) The service (aggregator and dispatcher) runs in this process, as in
//! (c), against a fresh nats-server and one registry whose receiver is the
//! bench's minimal one (it counts and answers, and keeps nothing). N
//! distinct orders, one cheap event each (an `order.confirmed` of one line
//! with its payment, so one posting per order), are generated on the fly
//! and published with async publishes, [`super::pipeline::PUBLISH_WINDOW`]
//! acks in flight, while the pipeline delivers them. Reported: postings/s,
//! this process's RSS when the stage starts, when half the orders are
//! delivered and at the end (the service still running, its caches full),
//! its peak during the stage (the kernel's peak is reset when the stage
//! starts, `usage::reset_peak_rss`), nats-server's peak, and the size of
//! every cache that holds orders, with its bound.
//!
//! What holds orders in the service, and what bounds it:
//! - the aggregator's book cache: [`crate::aggregator::CACHE_ORDERS`] books
//!   (all lanes together), its lanes [`crate::aggregator::LANES`] ×
//!   [`crate::aggregator::LANE_QUEUE`] events, at most
//!   [`crate::aggregator::MAX_ACK_PENDING`] events un-acked;
//! - the dispatcher's caught-up orders, [`crate::dispatcher::IDLE_ORDERS_MAX`]
//!   per registry; its workers, their queued wake-ups and permits:
//!   `max_in_flight` orders per registry × [`crate::dispatcher::ORDER_QUEUE_MAX`]
//!   wake-ups; rate limiter, breaker, token cache and e-mail limits: one
//!   per registry;
//! - metrics: labels are registries, reasons and routes, never orders.
//!
//! Then, with the service stopped, `deliveries list --status dead` over
//! those N (registry, order) pairs, both ways: from the dead-letter index
//! (1 % of the pairs named in it) and by reading every pair
//! ([`crate::dispatcher::status::scan_deliveries`]). The named pairs were
//! delivered, so both lists are empty: a key costs a reader the same check
//! whether a dead letter is behind it or not.
//!
//! (e) The export of those postings, CSV then beancount, each as a child
//! `ledgerline export --out /dev/null` (the same binary as this one), so
//! its peak RSS is its own (the `peak RSS` of its summary line, `VmHWM`)
//! and its time is the child's wall time, start-up included.

use std::path::Path;
use std::time::{Duration, Instant};

use super::pipeline::{Running, bench_config, publish_events, registry_toml, settle};
use super::raw::Minimal;
use super::usage;
use super::{BenchError, BenchProgress, err};
use crate::config::Settings;
use crate::natsd::NatsServer;

/// The scale run's one registry.
pub const REGISTRY: &str = "scale";

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Distinct orders (one event, one posting each).
    pub orders: usize,
    /// `[delivery] max_in_flight`.
    pub max_in_flight: usize,
    /// Longest wait for every posting to be delivered.
    pub settle_limit: Duration,
    /// Export the postings afterwards, (e).
    pub export: bool,
}

/// A cache that holds orders, at the end of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSize {
    pub name: &'static str,
    pub entries: usize,
    pub bound: usize,
}

/// One export of the scale run's postings.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportFigures {
    pub format: &'static str,
    pub postings: u64,
    pub rows: u64,
    /// Wall time of the child process, start-up included.
    pub elapsed: Duration,
    /// The child's peak RSS (its summary line), in bytes.
    pub peak_rss: Option<u64>,
    /// The child's CPU time (user + system): unlike the wall time, it
    /// hardly depends on what else the machine runs.
    pub cpu: Duration,
    /// nats-server's CPU time while the child ran (`None` when it cannot
    /// be read).
    pub nats_cpu: Option<Duration>,
}

/// What (d) and (e) measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleFigures {
    /// Distinct orders published.
    pub orders: usize,
    /// Postings stored, every one delivered.
    pub postings: u64,
    /// From the first publish to the last delivery seen.
    pub elapsed: Duration,
    pub memory: Memory,
    /// The dead-letter list, both ways (`None` if it could not be run).
    pub dead_list: Option<DeadListFigures>,
    /// (e), empty when not run.
    pub exports: Vec<ExportFigures>,
}

/// `deliveries list --status dead` over the run's pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadListFigures {
    /// (registry, order) pairs on LEDGER.
    pub pairs: usize,
    /// Pairs the index names.
    pub indexed: usize,
    /// From the index: its keys read, each pair checked.
    pub from_index: Duration,
    /// Every pair read.
    pub scan: Duration,
}

/// One pair in this many is named in the index for the dead-letter list.
const DEAD_SHARE: usize = 100;

/// Memory in (d).
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    /// This process's RSS when the stage started, when half the orders had
    /// been delivered, and when all were (the service still running).
    pub rss: [Option<u64>; 3],
    /// This process's peak RSS during the stage.
    pub peak: Option<u64>,
    /// False when the kernel's peak could not be reset: `peak` is then the
    /// peak of the process's whole life.
    pub peak_is_the_stage_own: bool,
    pub nats_peak: Option<u64>,
    /// The caches that hold orders, at the end.
    pub caches: Vec<CacheSize>,
}

/// The event of order `i`: an `order.confirmed` of one line, with its
/// payment, so its one posting balances and carries a few entries.
pub fn scale_event(i: usize) -> String {
    format!(
        concat!(
            r#"{{"event_id":"scale-{i}","type":"order.confirmed","order_id":"scale-{i:07}","#,
            r#""occurred_at":"2026-11-28T10:00:00Z","order":{{"version":1,"currency":"EUR","#,
            r#""channel":"direct","prices_include_tax":true,"line_items":[{{"id":"l1","#,
            r#""product_id":"museum","option_id":"standard","unit_type":"adult","#,
            r#""description":"Museum General Admission","quantity":1,"unit_price":"11.60","#,
            r#""discount":"0.00","tax_rate":"0.16"}}],"fees":[],"payments":[{{"#,
            r#""payment_id":"p1","method":"card","amount":"11.60","currency":"EUR"}}]}}}}"#
        ),
        i = i
    )
}

pub(super) fn scale_settings(
    nats_url: &str,
    receiver_url: &str,
    max_in_flight: usize,
) -> Result<Settings, BenchError> {
    let registry = registry_toml(REGISTRY, receiver_url, &["currency"], "");
    bench_config(nats_url, max_in_flight, &[registry])
}

/// `caches` for the report: `name entries (bound b) · …`.
pub(super) fn caches_line(caches: &[CacheSize]) -> String {
    let caches: Vec<String> = caches
        .iter()
        .map(|c| format!("{} {} (bound {})", c.name, c.entries, c.bound))
        .collect();
    caches.join(" · ")
}

/// The caches of this process that hold orders, with their bounds for
/// `registries` registries.
pub(super) fn caches(registries: usize) -> Vec<CacheSize> {
    vec![
        CacheSize {
            name: "aggregator order books",
            entries: crate::aggregator::cached_books(),
            bound: crate::aggregator::CACHE_ORDERS,
        },
        CacheSize {
            name: "dispatcher caught-up orders",
            entries: crate::dispatcher::kept_orders(),
            bound: crate::dispatcher::IDLE_ORDERS_MAX * registries,
        },
    ]
}

/// Runs (d), then (e) when asked.
pub async fn run(
    opts: &ScaleOptions,
    progress: &mut dyn FnMut(&BenchProgress),
) -> Result<ScaleFigures, BenchError> {
    let receiver = Minimal::start().await?;
    progress(&BenchProgress::stage(
        "(d) starting nats-server and the pipeline",
    ));
    let server = NatsServer::start().await?;
    let settings = scale_settings(&server.url(), &receiver.url, opts.max_in_flight)?;
    let mut running = Running::start(server, settings, &[REGISTRY]).await?;
    let mut figures = measure(opts, &running, &receiver, progress).await;
    running.stop_service().await;
    if let Ok(f) = &mut figures {
        f.dead_list = dead_list(&running.js, opts.orders, progress).await.ok();
    }
    if let Ok(f) = &mut figures
        && opts.export
    {
        match export_all(
            &running.nats_url(),
            running.nats_pid(),
            f.postings,
            progress,
        )
        .await
        {
            Ok(exports) => f.exports = exports,
            Err(e) => figures = Err(e),
        }
    }
    progress(&BenchProgress::stage("(d) stopping"));
    running.stop().await;
    receiver.stop().await;
    figures
}

/// (d) on a running pipeline.
async fn measure(
    opts: &ScaleOptions,
    running: &Running,
    receiver: &Minimal,
    progress: &mut dyn FnMut(&BenchProgress),
) -> Result<ScaleFigures, BenchError> {
    let peak_is_the_stage_own = usage::reset_peak_rss();
    let rss_start = usage::current_rss();
    let started = Instant::now();
    publish_events(
        &running.js,
        &running.prefix,
        (0..opts.orders).map(scale_event),
        opts.orders,
        None,
        |_, _| {},
        progress,
        "(d) publishing distinct orders",
    )
    .await?;
    let half = (opts.orders as u64).div_ceil(2);
    let mut rss_half = None;
    let accepted = || receiver.accepted();
    let mut watch = |p: &BenchProgress| {
        if rss_half.is_none() && receiver.accepted() >= half {
            rss_half = usage::current_rss();
        }
        progress(p);
    };
    let postings = settle(
        &running.js,
        &running.ledger,
        &super::pipeline::aggregator_consumers(0),
        &[REGISTRY],
        &accepted,
        opts.settle_limit,
        &mut watch,
        "(d) delivering distinct orders",
    )
    .await?;
    let elapsed = started.elapsed();
    Ok(ScaleFigures {
        orders: opts.orders,
        postings,
        elapsed,
        memory: Memory {
            rss: [rss_start, rss_half, usage::current_rss()],
            peak: usage::peak_rss(),
            peak_is_the_stage_own,
            nats_peak: running
                .nats_pid()
                .and_then(usage::of_pid)
                .and_then(|u| u.peak_rss),
            caches: caches(1),
        },
        dead_list: None,
        exports: Vec::new(),
    })
}

/// The dead-letter list over the run's `orders` pairs, from the index and
/// by a full read (the service stopped, so nothing else writes).
async fn dead_list(
    js: &async_nats::jetstream::Context,
    orders: usize,
    progress: &mut dyn FnMut(&BenchProgress),
) -> Result<DeadListFigures, BenchError> {
    use crate::dispatcher::index::DeliveryIndex;
    use crate::dispatcher::status::{ListFilter, list_deliveries, scan_deliveries};
    use crate::records::DeliveryStatus;

    progress(&BenchProgress::stage("(d) listing dead letters, both ways"));
    let index = DeliveryIndex::open(js, 1)
        .await
        .map_err(err("opening the dead-letter index"))?;
    let mut indexed = 0;
    for i in (0..orders).step_by(DEAD_SHARE) {
        let order = format!("scale-{i:07}");
        index
            .mark(DeliveryStatus::Dead, REGISTRY, &order, 1)
            .await
            .map_err(err("writing the dead-letter index"))?;
        indexed += 1;
    }
    let filter = ListFilter {
        registry: None,
        status: Some(DeliveryStatus::Dead),
    };
    let started = Instant::now();
    let listed = list_deliveries(js, &filter, |_, _| {})
        .await
        .map_err(err("listing dead letters from the index"))?;
    let from_index = started.elapsed();
    let started = Instant::now();
    let scanned = scan_deliveries(js, &filter, |_, _| {})
        .await
        .map_err(err("listing dead letters by reading every pair"))?;
    let scan = started.elapsed();
    if listed != scanned {
        return Err(BenchError::Step {
            what: "the dead-letter list",
            message: format!(
                "{} rows from the index, {} by a full read",
                listed.len(),
                scanned.len()
            ),
        });
    }
    Ok(DeadListFigures {
        pairs: orders,
        indexed,
        from_index,
        scan,
    })
}

/// (e): CSV, then beancount.
async fn export_all(
    nats_url: &str,
    nats_pid: Option<u32>,
    postings: u64,
    progress: &mut dyn FnMut(&BenchProgress),
) -> Result<Vec<ExportFigures>, BenchError> {
    let dir = tempfile::tempdir().map_err(err("a temporary directory for the export"))?;
    let mut out = Vec::new();
    for format in ["csv", "beancount"] {
        progress(&BenchProgress {
            stage: format!("(e) exporting {postings} postings as {format}"),
            done: 0,
            total: 0,
        });
        out.push(export_child(nats_url, nats_pid, format, dir.path()).await?);
    }
    Ok(out)
}

/// One `ledgerline export --format <format> --out /dev/null` child.
async fn export_child(
    nats_url: &str,
    nats_pid: Option<u32>,
    format: &'static str,
    dir: &Path,
) -> Result<ExportFigures, BenchError> {
    let exe = std::env::current_exe().map_err(err("finding the ledgerline binary"))?;
    let summary = dir.join(format!("summary-{format}.txt"));
    let mut command = tokio::process::Command::new(exe);
    // The bench's own server, whatever this shell's configuration says
    // (`LEDGERLINE_CONFIG`, credentials, TLS or prefix overrides).
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LEDGERLINE_") {
            command.env_remove(key);
        }
    }
    let nats_cpu = || nats_pid.and_then(usage::of_pid).map(|u| u.cpu);
    let (children_before, nats_before) = (usage::children().cpu, nats_cpu());
    let started = Instant::now();
    let out = command
        .args([
            "export",
            "--nats-url",
            nats_url,
            "--format",
            format,
            "--out",
            "/dev/null",
        ])
        .arg("--summary")
        .arg(&summary)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(err("running ledgerline export"))?;
    let elapsed = started.elapsed();
    let cpu = usage::children().cpu.saturating_sub(children_before);
    let nats_cpu = nats_before
        .zip(nats_cpu())
        .map(|(before, after)| after.saturating_sub(before));
    if !out.status.success() {
        return Err(BenchError::Step {
            what: "ledgerline export",
            message: format!(
                "{format}: exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let text = std::fs::read_to_string(&summary).map_err(err("reading the export's summary"))?;
    let first = text.lines().next().unwrap_or_default();
    let (postings, rows, peak_rss) = parse_summary(first).ok_or_else(|| BenchError::Step {
        what: "ledgerline export",
        message: format!("{format}: a summary line the bench cannot read: {first:?}"),
    })?;
    Ok(ExportFigures {
        format,
        postings,
        rows,
        elapsed,
        peak_rss,
        cpu,
        nats_cpu,
    })
}

/// Postings, rows and peak RSS (bytes) of an export's summary line
/// ([`crate::export::summary::RunStats::render`]).
fn parse_summary(line: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = line.strip_prefix("export: ")?;
    let (postings, rest) = rest.split_once(" postings, ")?;
    let (rows, _) = rest.split_once(" rows ")?;
    let peak = line
        .split_once(", peak RSS ")
        .and_then(|(_, r)| r.strip_suffix(" MiB"))
        .and_then(|m| m.parse::<f64>().ok())
        .map(|mib| (mib * 1024.0 * 1024.0) as u64);
    Some((postings.parse().ok()?, rows.parse().ok()?, peak))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::summary::RunStats;

    #[test]
    fn the_scale_event_is_valid_and_one_posting_per_order() {
        let settings =
            scale_settings("nats://127.0.0.1:4222", "http://127.0.0.1:9/hooks", 8).unwrap();
        let mut engine = crate::engine::Engine::new(settings.ledger, settings.registries);
        for i in [0, 1, 999_999] {
            let line = scale_event(i);
            let (order, event) = crate::publish::route(line.as_bytes()).unwrap();
            assert_eq!(order.as_str(), format!("scale-{i:07}"));
            assert_eq!(event, format!("scale-{i}"));
            let ev = crate::events::parse_event(line.as_bytes(), Some(order.as_str())).unwrap();
            let postings = engine.process(&ev).unwrap();
            assert_eq!(postings.len(), 1, "{postings:?}");
            assert!(postings[0].entries.len() >= 2);
        }
    }

    #[test]
    fn the_export_summary_line_is_read_back() {
        let stats = RunStats {
            snapshot_seq: 3_000_000,
            postings: 1_000_000,
            rows: 4_000_000,
            elapsed: Duration::from_millis(12_345),
            peak_rss_bytes: Some(20 * 1024 * 1024),
        };
        assert_eq!(
            parse_summary(&stats.render()),
            Some((1_000_000, 4_000_000, Some(20 * 1024 * 1024)))
        );
        let no_rss = RunStats {
            peak_rss_bytes: None,
            ..stats
        };
        assert_eq!(
            parse_summary(&no_rss.render()),
            Some((1_000_000, 4_000_000, None))
        );
        assert_eq!(parse_summary("something else"), None);
    }

    #[test]
    fn every_cache_that_holds_orders_is_reported_with_its_bound() {
        let c = caches(2);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].bound, crate::aggregator::CACHE_ORDERS);
        assert_eq!(c[1].bound, 2 * crate::dispatcher::IDLE_ORDERS_MAX);
    }
}
