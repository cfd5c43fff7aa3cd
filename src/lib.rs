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
//! - [`posting`]: a registry's view of the ledger: grouping, ledger codes,
//!   delta or full postings, idempotency keys, size limit.
//! - [`engine`]: the one fold: an event planned against an order's book,
//!   every subscribed registry's posting out.
//!
//! Around it:
//! - [`service`]: `ledgerline run`, the components in one process.
//! - [`lease`]: one active instance, every other a fenced hot standby.
//! - [`admin`]: the admin HTTP API: registries, deliveries, redeliver,
//!   order ledgers, health, readiness, Prometheus metrics.
//! - [`registry_store`]: the registries in a JetStream KV bucket (with
//!   history), validated writes, the live set read by every component.
//! - [`publish`]: `ledgerline publish`, NDJSON → ORDERS with bulk acks.
//! - [`verify`]: `ledgerline verify`, replay ORDERS and compare with LEDGER.
//! - [`aggregator`]: ORDERS → postings on LEDGER, crash-safe, per-order order.
//! - [`dispatcher`]: postings → accounting webhooks, FIFO per (registry,
//!   order): auth, signatures, retries, dead letters, redeliver.
//! - [`notify`]: failure emails over SMTP, rate-limited per registry.
//! - [`receiver`]: `ledgerline receiver`, a sample accounting webhook.
//! - [`config`]: the TOML file, environment overrides, validation (SPEC 7).
//! - [`secret`]: values that never print.
//! - [`signing`]: Standard Webhooks signatures.
//! - [`tls`]: the one TLS crypto provider (ring) of the binary.
//! - [`offline`]: `ledgerline postings`, the engine over a file.
//! - [`streams`]: JetStream connection, the ORDERS and LEDGER streams,
//!   subjects and headers.
//! - [`records`]: what is stored on each LEDGER subject.
//! - [`export`]: `ledgerline export`, LEDGER as an audit CSV or a beancount
//!   ledger joined with delivery state, with a reconciling summary.
//! - [`demo`]: `ledgerline demo` and its deterministic dataset.
//! - [`bench`]: `ledgerline bench`, the pipeline measured beside what
//!   JetStream and HTTP alone can do on this machine.
//! - [`natsd`]: runs a real `nats-server` for tests, demo and benches.
//! - [`cli`]: the `ledgerline` commands: their arguments, their work and
//!   everything they print (tables, summaries, progress bars);
//!   `registry` reads registry files. `main.rs` only parses the command
//!   line and maps the result to an exit code.

pub mod admin;
pub mod aggregator;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dispatcher;
pub mod domain;
pub mod export;
pub mod lease;
pub mod natsd;
pub mod notify;
pub mod offline;
pub mod publish;
pub mod receiver;
pub mod records;
pub mod registry_store;
pub mod secret;
pub mod service;
pub mod signing;
pub mod streams;
pub mod tls;
pub mod verify;

pub use domain::{engine, events, ledger, money, order, posting, registry};
