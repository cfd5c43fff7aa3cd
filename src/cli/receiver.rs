//! `ledgerline receiver`: the sample accounting webhook
//! ([`crate::receiver`]) until SIGTERM or Ctrl-C, then what it saw on
//! stderr.

use super::args::ReceiverArgs;
use super::{CliError, Exit, report_usage, runtime, wait_for_signal};
use crate::receiver::{FailureMode, Receiver};

/// Exit 2 for an invalid secret or failure mode.
pub fn receiver(args: ReceiverArgs) -> Result<Exit, CliError> {
    let secret = args.secret.map(crate::secret::Secret::new);
    let failure = FailureMode {
        status: args.fail_status,
        share: args.fail_share,
        delay_ms: args.delay_ms,
        jitter_ms: args.jitter_ms,
    };
    let rx = match Receiver::new(secret.as_ref(), failure) {
        Ok(rx) => rx,
        Err(e) => return Ok(report_usage(e)),
    };
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| CliError::Listen {
                addr: args.listen,
                source,
            })?;
        let addr = listener.local_addr()?;
        eprintln!(
            "receiver listening on http://{addr} (signatures {}); control API under /_receiver/",
            if secret.is_some() {
                "verified"
            } else {
                "not checked"
            }
        );
        rx.clone().serve(listener, wait_for_signal()).await?;
        let s = rx.stats();
        eprintln!(
            "receiver: {} requests, {} accepted, {} failures injected, {} bad signatures, \
             {} registry_data chain breaks, {} postings, {} orders",
            s.requests,
            s.accepted,
            s.failures_injected,
            s.signature_failures,
            s.chain_breaks,
            s.distinct_keys,
            s.orders
        );
        Ok(Exit::Success)
    })
}
