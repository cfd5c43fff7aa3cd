//! The pure core of ledgerline: what an order event means in money, with
//! no I/O and nothing async. Everything here is deterministic: the same
//! events and registries give byte-identical postings, whichever process
//! computes them (the aggregator, `postings`, `verify`, the admin view).
//!
//! The boundary is checked, not just claimed: `tests/it/layout.rs` fails if
//! a file in this folder names tokio, async-nats, reqwest, axum or hyper.
//!
//! In flow order: [`money`] → [`events`] → [`order`] → [`ledger`] →
//! [`posting`] (with the [`registry`] schema) → [`engine`].
//! Beside them, inbound webhooks: the [`source`] schema, and [`inbound`]
//! mapping a source's payloads to [`events`]. [`wire`]: how enums with wire
//! names get `as_str` and `Display` (strum, by serde's naming rule).
//! `swar`: byte scans eight at a time, for the parser's and the body
//! writer's text checks. `json_reader`: the typed JSON reader of the
//! event parser and of a stored posting's fast read.

pub mod engine;
pub mod events;
pub mod inbound;
pub(crate) mod json_reader;
pub mod ledger;
pub mod money;
pub mod order;
pub mod posting;
pub mod registry;
pub mod source;
pub(crate) mod swar;
pub mod wire;
