//! Delivery state of the postings of one order, read on its own from
//! `ledger.deliveries.<R>.<O>`.
//!
//! The dispatcher appends one [`DeliveryRecord`](crate::records::DeliveryRecord) per attempt to the subject of
//! the (registry, order), in attempt order, and delivers strictly FIFO per
//! (registry, order). So everything the export needs about every posting of
//! an order is on one subject: [`fetch_order`] reads it with the batched
//! Direct Get client ([`crate::streams::direct`]), and folds the records (read
//! as [`DeliveryRecordView`]s, borrowed from the replies) into
//! a small per-seq summary ([`SeqDeliveries`], the one fold in
//! [`crate::records`]). The records themselves are never kept.
//!
//! Only records at or below the export's snapshot sequence count, so a row's
//! delivery state is the state at the same instant as the postings exported,
//! whatever the dispatcher does meanwhile.
//!
//! The export joins most postings with their records as they pass by in
//! its one read of LEDGER ([`super::join`]); it reads an order here only
//! when the records of a held posting lie too far ahead.

use std::time::Duration;

use crate::records::{DeliveryRecordView, SeqDeliveries};
use crate::streams::direct::{DirectGet, SharedInbox};
use crate::streams::{LEDGER_STREAM, subjects};

use super::ExportError;

/// Most bytes of records the server sends for one request (it pages the rest),
/// so one order with huge error excerpts cannot flood the connection.
pub const DIRECT_GET_BATCH_BYTES: usize = 512 * 1024;
/// How long to wait for the next reply of a Direct Get before giving up:
/// far above a loopback or LAN round trip, short enough that a vanished
/// server is reported instead of hanging the export.
pub const DIRECT_GET_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads every delivery record of (registry, order) up to `snapshot_seq` and
/// folds them into per-seq states.
pub async fn fetch_order(
    client: &async_nats::Client,
    registry: &str,
    order: &str,
    snapshot_seq: u64,
) -> Result<SeqDeliveries, ExportError> {
    fetch_order_on(client, None, registry, order, snapshot_seq).await
}

/// [`fetch_order`], its replies on `inbox` (one subscription for many
/// reads).
pub async fn fetch_order_via(
    client: &async_nats::Client,
    inbox: &SharedInbox,
    registry: &str,
    order: &str,
    snapshot_seq: u64,
) -> Result<SeqDeliveries, ExportError> {
    fetch_order_on(client, Some(inbox), registry, order, snapshot_seq).await
}

/// [`fetch_order`], its replies on `inbox` when given.
async fn fetch_order_on(
    client: &async_nats::Client,
    inbox: Option<&SharedInbox>,
    registry: &str,
    order: &str,
    snapshot_seq: u64,
) -> Result<SeqDeliveries, ExportError> {
    let subject = subjects::deliveries(registry, order);
    let mut records = DirectGet::new(client, LEDGER_STREAM, &subject, DIRECT_GET_TIMEOUT)
        .max_bytes(DIRECT_GET_BATCH_BYTES)
        .up_to_seq(snapshot_seq);
    if let Some(inbox) = inbox {
        records = records.shared_inbox(inbox);
    }
    let mut out = SeqDeliveries::default();
    loop {
        let m = match records.next().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(source) => return Err(ExportError::DirectGet { subject, source }),
        };
        let record: DeliveryRecordView<'_> =
            serde_json::from_slice(m.payload()).map_err(|source| ExportError::Decode {
                stream_seq: m.seq,
                subject: subject.clone(),
                source,
            })?;
        if record.registry_id != registry || record.order_id != order {
            return Err(ExportError::Integrity {
                stream_seq: m.seq,
                message: format!(
                    "delivery record for {}/{} stored on {subject}",
                    record.registry_id, record.order_id
                ),
            });
        }
        out.apply_view(&record);
    }
    out.shrink_to_fit();
    Ok(out)
}
