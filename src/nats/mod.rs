//! NATS plumbing: the JetStream connection, the ORDERS and LEDGER streams
//! with their subjects and headers ([`streams`]), what is stored on each
//! LEDGER subject ([`records`]), the fencing lease that keeps one instance
//! active ([`lease`]), and a real `nats-server` for tests, the demo and the
//! bench ([`natsd`]).

pub mod lease;
pub mod natsd;
pub mod records;
pub mod streams;
