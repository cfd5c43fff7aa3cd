//! `ledgerline deliveries list`, `deliveries reindex` and `ledgerline
//! redeliver`: delivery state per (registry, order) as a table or NDJSON,
//! the dead-letter index rebuilt, and a dead letter resent
//! ([`crate::dispatcher::status`]).

use std::io::Write;

use super::args::NatsArgs;
use super::{CliError, Exit, progress_bar, report_failure, settings_or_report, with_nats};
use crate::dispatcher::state::OrderDeliveries;
use crate::dispatcher::status::{
    ListFilter, RedeliverOutcome, list_deliveries, reindex as reindex_deliveries, request_redeliver,
};
use crate::records::DeliveryStatus;

/// `ledgerline redeliver`: exit 0 when requested, 1 when nothing is
/// dead-lettered for the order.
pub fn redeliver(nats: &NatsArgs, registry: &str, order: &str) -> Result<Exit, CliError> {
    let Some(settings) = settings_or_report(nats.settings()) else {
        return Ok(Exit::Usage);
    };
    with_nats(&settings.config, async |client| {
        let js = async_nats::jetstream::new(client.clone());
        let outcome = request_redeliver(&js, registry, order).await?;
        client
            .flush()
            .await
            .map_err(CliError::flush("flushing to NATS"))?;
        Ok(match outcome {
            RedeliverOutcome::Requested {
                seq,
                idempotency_key,
                held,
            } => {
                println!(
                    "redelivery of posting {seq} of order {order} to {registry} requested \
                     (idempotency key {idempotency_key}); {held} held posting(s) follow it"
                );
                Exit::Success
            }
            RedeliverOutcome::NotDead { status } => report_failure(format_args!(
                "order {order} is not dead-lettered at {registry} (status: {}); nothing to redeliver",
                status.as_str()
            )),
            RedeliverOutcome::Unsendable { seq, reason } => report_failure(format_args!(
                "posting {seq} of order {order} at {registry} cannot be sent ({reason}); \
                 a redelivery would fail the same way (run `ledgerline verify`)"
            )),
            RedeliverOutcome::Unknown => report_failure(format_args!(
                "registry {registry} has no postings for order {order}"
            )),
        })
    })
}

/// `ledgerline deliveries list`: the rows on stdout, counts per status on
/// stderr.
pub fn list(
    nats: &NatsArgs,
    registry: Option<String>,
    status: Option<DeliveryStatus>,
    json: bool,
) -> Result<Exit, CliError> {
    let Some(settings) = settings_or_report(nats.settings()) else {
        return Ok(Exit::Usage);
    };
    let bar = progress_bar(None, "reading deliveries");
    let rows = with_nats(&settings.config, async |client| {
        let js = async_nats::jetstream::new(client);
        let filter = ListFilter { registry, status };
        let rows = list_deliveries(&js, &filter, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await?;
        Ok(rows)
    })?;
    bar.finish_and_clear();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        for r in &rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
    } else {
        write_table(&mut out, &rows)?;
    }
    out.flush()?;
    let count = |s: DeliveryStatus| rows.iter().filter(|r| r.status == s).count();
    eprintln!(
        "deliveries: {} (registry, order) pairs: {} delivered, {} pending, {} retrying, {} dead",
        rows.len(),
        count(DeliveryStatus::Delivered),
        count(DeliveryStatus::Pending),
        count(DeliveryStatus::Retrying),
        count(DeliveryStatus::Dead)
    );
    Ok(Exit::Success)
}

/// `ledgerline deliveries reindex`: a progress bar while LEDGER is read,
/// then a one-line summary.
pub fn reindex(nats: &NatsArgs) -> Result<Exit, CliError> {
    let Some(settings) = settings_or_report(nats.settings()) else {
        return Ok(Exit::Usage);
    };
    let bar = progress_bar(None, "reading deliveries");
    let replicas = settings.config.stream_replicas;
    let summary = with_nats(&settings.config, async |client| {
        let js = async_nats::jetstream::new(client);
        Ok(reindex_deliveries(&js, replicas, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await?)
    })?;
    bar.finish_and_clear();
    eprintln!(
        "deliveries reindex: {} (registry, order) pairs read, {} dead or retrying indexed, {} stale keys removed",
        summary.pairs, summary.indexed, summary.removed
    );
    Ok(Exit::Success)
}

/// The `deliveries list` table: a header, then one line per row.
fn write_table(out: &mut impl Write, rows: &[OrderDeliveries]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:<38} {:<9} {:>8} {:>9} {:>5} {:>8} {:<25} LAST ERROR",
        "REGISTRY", "ORDER", "STATUS", "POSTINGS", "DELIVERED", "HELD", "ATTEMPTS", "NEXT ATTEMPT"
    )?;
    for r in rows {
        let next = r
            .next_attempt_at
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "{:<20} {:<38} {:<9} {:>8} {:>9} {:>5} {:>8} {:<25} {}",
            r.registry_id,
            r.order_id,
            r.status.as_str(),
            r.postings,
            r.delivered,
            r.held,
            r.attempts,
            next,
            r.last_error.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}
