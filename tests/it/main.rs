//! Integration tests, all in one test binary (`cargo test --test it`) so
//! they link once. They run a real `nats-server` via `ledgerline::natsd`;
//! install it first with `make tools` (or `scripts/install-tools.sh`).
//!
//! Add further test modules here (`mod engine;`, ...) as they are written.

mod admin;
mod backfill;
mod bench;
mod chaos;
mod cli;
mod config_env;
mod console;
mod deferred;
mod demo;
mod dispatcher;
mod export;
mod failure_emails;
mod fence;
mod flood;
mod golden;
mod inbound;
mod layout;
mod natsd;
mod partitions;
mod pipeline;
mod properties;
mod receiver;
mod registry_store;
mod schema;
mod service;
mod shares;
mod streams;
mod support;
mod tls;
mod verify;
