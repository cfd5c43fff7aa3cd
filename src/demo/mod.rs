//! `ledgerline demo`: the whole pipeline on one machine.
//!
//! - [`dataset`]: the deterministic sample data (`fixtures/demo/`).

pub mod dataset;
