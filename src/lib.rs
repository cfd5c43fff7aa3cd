//! ledgerline turns order lifecycle events into exact double-entry ledger
//! postings and delivers them to accounting systems over webhooks,
//! event-sourced on NATS JetStream.
//!
//! # Layout
//!
//! The pure core lives in [`domain`] (no I/O, no async: a test keeps tokio,
//! async-nats, reqwest and axum out of it), in the order an event flows
//! through it; its modules are re-exported here under their own names:
//! - [`money`]: currencies, decimal strings, rounding.
//! - [`events`]: producer messages parsed into typed events, or rejections
//!   naming the field.
//! - [`order`]: the fold of an order's events into its state.
//! - [`ledger`]: an order state's ledger, balanced (SPEC 2).
//! - [`registry`]: the registry schema and its validation.
//! - [`source`]: the inbound source schema (SPEC 10); [`mapping`] turns a
//!   source's payloads into events.
//! - [`posting`]: a registry's view of the ledger: grouping, ledger codes,
//!   delta or full postings, idempotency keys, size limit.
//! - [`engine`]: the one fold: an event planned against an order's book,
//!   every subscribed registry's posting out.
//!
//! Around it, folders by stage (each module also re-exported here):
//! - [`ingest`]: events in. [`publish`] (`ledgerline publish`, NDJSON →
//!   ORDERS with bulk acks) and [`aggregator`] (ORDERS → postings on LEDGER,
//!   crash-safe, per-order order).
//! - [`dispatcher`]: postings → accounting webhooks, FIFO per (registry,
//!   order): auth, [`signing`] (Standard Webhooks), retries, dead letters,
//!   redeliver, [`notify`] (failure emails over SMTP).
//! - [`export`]: the audit. `ledgerline export` (LEDGER as an audit CSV or a
//!   beancount ledger joined with delivery state, with a reconciling
//!   summary) and [`verify`] (replay ORDERS and compare with LEDGER).
//! - [`nats`]: [`streams`] (connection, ORDERS and LEDGER, subjects and
//!   headers), [`records`] (what is stored on each LEDGER subject),
//!   [`lease`] (one active instance, every other a fenced hot standby),
//!   [`natsd`] (a real `nats-server` for tests, demo and benches).
//! - [`inbound`]: the sales channels' own webhooks (SPEC 10) on their own
//!   listener, mapped by [`mapping`] to events on ORDERS; [`source`] is
//!   their schema.
//! - [`registry_store`]: the registries in a JetStream KV bucket (with
//!   history), validated writes, the live set read by every component.
//! - [`service`]: `ledgerline run`, the components in one process.
//! - [`admin`]: the admin HTTP API: registries, deliveries, redeliver,
//!   order ledgers, health, readiness, Prometheus metrics.
//! - [`cli`]: the `ledgerline` commands: their arguments, their work and
//!   everything they print (tables, summaries, progress bars);
//!   `registry` reads registry files. `main.rs` only parses the command
//!   line and maps the result to an exit code.
//! - [`offline`]: `ledgerline postings`, the engine over a file.
//! - [`receiver`]: `ledgerline receiver`, a sample accounting webhook.
//! - [`demo`]: `ledgerline demo` and its deterministic dataset.
//! - [`bench`](mod@bench): `ledgerline bench`, the pipeline measured beside what
//!   JetStream and HTTP alone can do on this machine.
//! - [`config`]: the TOML file, environment overrides, validation.
//! - [`schema`](mod@schema): the JSON Schema of the input events, for producers.
//! - [`secret`]: values that never print.
//! - [`tls`]: the one TLS crypto provider (ring) of the binary.
//! - [`fifo`]: a bounded map evicting the oldest-inserted first (the
//!   aggregator's books).

// Module docs are the developers' map of the code and link to private
// items; `make doc` renders them with `--document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admin;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dispatcher;
pub mod domain;
pub mod export;
pub mod fifo;
pub mod inbound;
pub mod ingest;
pub mod nats;
pub mod offline;
pub mod receiver;
pub mod registry_store;
pub mod schema;
pub mod secret;
pub mod service;
pub mod source_store;
pub mod tls;

pub use dispatcher::{notify, signing};
pub use domain::inbound as mapping;
pub use domain::{engine, events, ledger, money, order, posting, registry, source};
pub use export::verify;
pub use ingest::{aggregator, backfill, publish, snapshots};
pub use nats::{lease, natsd, records, streams};
