//! The dispatcher's HTTP client and its guards.
//!
//! One `reqwest::Client` serves every registry (connection pools per host).
//! It enforces, on every request including token requests:
//! - the SSRF guard of SPEC 3 **on the resolved address**: a DNS resolver
//!   that drops private and loopback addresses unless the [`TargetPolicy`]
//!   allow-lists them, so a name that resolves (or rebinds) to
//!   `127.0.0.1` is refused when connecting, not only when configured; IP
//!   literals, which never reach a resolver, are checked by
//!   [`check_literal_target`] before each request;
//! - `https://` only unless `allow_insecure_http`;
//! - redirects followed only to the same host and port, only when they keep
//!   the method and body (307, 308), at most [`REDIRECTS_MAX`];
//! - no proxy from the environment (it would connect on our behalf,
//!   bypassing the guard);
//! - a response body read to at most [`RESPONSE_MAX_BYTES`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

use crate::registry::TargetPolicy;

/// Largest response body read (SPEC 4: above it the attempt fails). It
/// bounds the memory of an attempt and of the registry_data stored.
pub const RESPONSE_MAX_BYTES: usize = 256 * 1024;
/// Most redirects followed in one request.
pub const REDIRECTS_MAX: usize = 5;
/// Idle pooled connections are closed after this long.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per host: as many as the default `max_in_flight`
/// (256 per registry), so a registry working at full concurrency reuses its
/// connections instead of opening and closing the ones past the pool.
pub const POOL_MAX_IDLE_PER_HOST: usize = 256;

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("ledgerline/", env!("CARGO_PKG_VERSION"));

/// A target the SSRF guard refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host} resolves to {addresses}, a private or loopback address; \
     ledgerline does not call it unless allow_private_targets lists it"
)]
pub struct TargetRefused {
    pub host: String,
    pub addresses: String,
}

/// A redirect the client refused to follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redirect not followed: {0}")]
pub struct RedirectRefused(pub String);

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientError(#[source] reqwest::Error);

/// Resolves with the system resolver, then keeps only the addresses the
/// policy allows.
#[derive(Debug, Clone)]
struct GuardedResolver {
    policy: Arc<TargetPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| policy.ip_allowed(a.ip()));
            if allowed.is_empty() && !refused.is_empty() {
                let addresses = refused
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(TargetRefused { host, addresses }) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Refuses a URL whose host is an IP literal the policy does not allow
/// (literals are connected to without a resolver).
pub fn check_literal_target(url: &Url, policy: &TargetPolicy) -> Result<(), TargetRefused> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if policy.ip_allowed(ip) {
        Ok(())
    } else {
        Err(TargetRefused {
            host: url.host_str().unwrap_or_default().to_owned(),
            addresses: ip.to_string(),
        })
    }
}

fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let status = attempt.status().as_u16();
        let Some(first) = attempt.previous().first() else {
            return attempt.stop();
        };
        let to = attempt.url();
        if attempt.previous().len() > REDIRECTS_MAX {
            return attempt.error(RedirectRefused(format!(
                "more than {REDIRECTS_MAX} redirects"
            )));
        }
        if to.host_str() != first.host_str()
            || to.port_or_known_default() != first.port_or_known_default()
        {
            let msg = format!(
                "{status} to another host ({}), only same-host redirects are followed",
                to.host_str().unwrap_or("?")
            );
            return attempt.error(RedirectRefused(msg));
        }
        if first.scheme() == "https" && to.scheme() != "https" {
            return attempt.error(RedirectRefused(format!("{status} from https to http")));
        }
        if status != 307 && status != 308 {
            // 301/302/303 would turn the POST into a GET without the body.
            let msg = format!(
                "{status} would change the POST into a GET; the receiver should answer 307/308 or fix its URL"
            );
            return attempt.error(RedirectRefused(msg));
        }
        attempt.follow()
    })
}

/// The dispatcher's client under `policy`.
pub fn build_client(policy: &TargetPolicy) -> Result<reqwest::Client, ClientError> {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .dns_resolver(GuardedResolver {
            policy: Arc::new(policy.clone()),
        })
        .redirect(redirect_policy())
        .https_only(!policy.allow_insecure_http)
        .no_proxy()
        .user_agent(USER_AGENT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build()
        .map_err(ClientError)
}

/// A body read up to a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CappedBody {
    Complete(Bytes),
    /// Longer than the limit; the prefix read so far.
    TooLarge(Bytes),
}

/// Reads the body of `resp`, stopping once it exceeds `max_bytes`.
pub async fn read_capped(
    mut resp: reqwest::Response,
    max_bytes: usize,
) -> Result<CappedBody, reqwest::Error> {
    // A body declared too large is not read beyond what an excerpt needs.
    let declared_too_large = resp.content_length().is_some_and(|n| n > max_bytes as u64);
    let keep = if declared_too_large {
        crate::records::RESPONSE_EXCERPT_MAX_BYTES.min(max_bytes)
    } else {
        max_bytes
    };
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > keep {
            let room = keep - buf.len();
            buf.extend_from_slice(&chunk[..room]);
            return Ok(CappedBody::TooLarge(buf.freeze()));
        }
        buf.extend_from_slice(&chunk);
    }
    if declared_too_large {
        // Shorter than announced: still refused, the reply broke off.
        return Ok(CappedBody::TooLarge(buf.freeze()));
    }
    Ok(CappedBody::Complete(buf.freeze()))
}

/// How a request that got no response failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The SSRF guard or the redirect policy refused: retrying cannot help.
    Refused(String),
    /// Timed out.
    Timeout(String),
    /// Connection refused, reset, DNS failure, TLS failure…: retry.
    Transport(String),
}

/// Classifies a reqwest error and describes it with its causes, without
/// the URL (it is in the registry; the description goes to records).
pub fn classify_error(e: reqwest::Error) -> SendFailure {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<TargetRefused>() {
            return SendFailure::Refused(r.to_string());
        }
        if let Some(r) = c.downcast_ref::<RedirectRefused>() {
            return SendFailure::Refused(r.to_string());
        }
        cause = c.source();
    }
    let timeout = e.is_timeout();
    let text = describe(&e.without_url());
    if timeout {
        SendFailure::Timeout(text)
    } else {
        SendFailure::Transport(text)
    }
}

/// An error and its causes on one line, repeated text collapsed.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cause = c.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> TargetPolicy {
        TargetPolicy {
            allow_insecure_http: true,
            allow_private_targets: vec!["127.0.0.0/8".parse().unwrap()],
        }
    }

    #[tokio::test]
    async fn localhost_is_refused_at_resolution_unless_allow_listed() {
        let strict = GuardedResolver {
            policy: Arc::new(TargetPolicy::default()),
        };
        let err = match strict.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("private or loopback"), "{err}");
        let allowed = GuardedResolver {
            policy: Arc::new(open()),
        };
        let addrs: Vec<_> = match allowed.resolve("localhost".parse().unwrap()).await {
            Ok(a) => a.collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(addrs.iter().any(|a| a.ip().is_loopback()));
    }

    #[test]
    fn ip_literals_are_checked_before_sending() {
        let url = Url::parse("http://127.0.0.1:9/x").unwrap();
        assert!(check_literal_target(&url, &TargetPolicy::default()).is_err());
        assert!(check_literal_target(&url, &open()).is_ok());
        let url = Url::parse("http://[::1]:9/x").unwrap();
        assert!(check_literal_target(&url, &TargetPolicy::default()).is_err());
        let url = Url::parse("https://accounting.example/x").unwrap();
        assert!(check_literal_target(&url, &TargetPolicy::default()).is_ok());
    }
}
