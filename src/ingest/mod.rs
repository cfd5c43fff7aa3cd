//! Events in: `ledgerline publish` puts NDJSON events on ORDERS, and the
//! aggregator turns each event into its postings on LEDGER (the engine's one
//! fold, crash-safe, in stream order per order).

pub mod aggregator;
pub mod backfill;
pub mod publish;
pub mod snapshots;
