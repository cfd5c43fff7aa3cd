//! Shares: several instances each own a fair share of a set of keys, one
//! lease per key (SPEC 9). The dispatcher uses it with the registries as
//! keys (`share_registries = true`): every registry is delivered by exactly
//! one instance at a time, so its order per (registry, order), its rate
//! limit and its circuit breaker stay whole, and the delivery work spreads
//! over the instances.
//!
//! Each key `k` is a [`Lease`] of its own (`<prefix><k>` in the lease
//! bucket): acquired by `create`, renewed by revision, fenced, released
//! after its work has stopped, exactly as the one-active-instance lease.
//! On top of that, every [`TICKS_PER_TTL`]th of the TTL, [`share`]:
//!
//! 1. renews this instance's membership key `member.<prefix><instance>`
//!    (`member.dispatcher.<instance>`: one set of members per kind of
//!    share, so an instance sharing only the delivery does not count where
//!    the order partitions are shared; the bucket's `max_age` removes the
//!    key of an instance that stopped renewing it: the members are the
//!    instances alive within one TTL);
//! 2. computes the fair share ⌈keys / members⌉;
//! 3. gives up a key it lost, one no longer wanted (a deleted or disabled
//!    registry) and any beyond its fair share: the key's work is stopped
//!    first ([`Owned::active`] cancelled, then its [`WorkGuard`] awaited),
//!    only then is the lease released, so the next owner never overlaps;
//! 4. takes free keys up to its fair share.
//!
//! So an instance that joins gets its share within a tick or two of the
//! others noticing it; the keys of one that dies move within the TTL. The
//! keys of a dead instance's membership are counted until it expires (one
//! TTL): meanwhile the fair share is lower and a key may wait a TTL for an
//! owner (never two owners).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Fence, Lease};

/// The prefix of membership keys in the lease bucket.
pub const MEMBER_PREFIX: &str = "member.";
/// How many times per TTL the shares are reviewed.
pub const TICKS_PER_TTL: u32 = 4;

/// A key this instance owns: the fence its writes check, and the token
/// that stops its work when the key is given up or lost.
#[derive(Debug, Clone)]
pub struct Owned {
    /// Checked before every write of the key's work.
    pub fence: Fence,
    /// Cancelled when the key is given up or lost: its work stops.
    pub active: CancellationToken,
    work: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

/// Held while the work on an owned key runs; dropping it tells [`share`]
/// the work has stopped, so the lease may go to another instance.
#[derive(Debug)]
pub struct WorkGuard(#[allow(dead_code)] oneshot::Sender<()>);

impl Owned {
    /// Starts the work on the key: the guard to hold while it runs, or
    /// `None` when the key was given up meanwhile (start nothing).
    pub fn start(&self) -> Option<WorkGuard> {
        let sender = self.work.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        (!self.active.is_cancelled()).then_some(WorkGuard(sender))
    }
}

/// What [`share`] publishes: the keys this instance owns now.
pub type OwnedKeys = watch::Receiver<BTreeMap<String, Owned>>;

/// A key held by [`share`].
struct Held {
    owned: Owned,
    stopped: oneshot::Receiver<()>,
    stop_keeper: CancellationToken,
    keeper: JoinHandle<bool>,
}

/// What [`share`] needs besides the keys.
#[derive(Debug, Clone)]
pub struct ShareOptions {
    /// The lease bucket ([`super::bucket`]).
    pub store: kv::Store,
    /// The prefix of the keys' leases, e.g. `dispatcher.`.
    pub prefix: String,
    /// This instance's name ([`super::instance_name`]).
    pub instance: String,
    /// The lease TTL (the bucket's `max_age`).
    pub ttl: Duration,
}

/// Owns a fair share of the keys `wanted` returns (read again at every
/// tick) until `shutdown`, publishing what it owns on `owned`; at shutdown
/// stops the work on every key, releases the leases and leaves the
/// members.
pub async fn share(
    options: ShareOptions,
    wanted: impl Fn() -> BTreeSet<String>,
    owned: watch::Sender<BTreeMap<String, Owned>>,
    shutdown: CancellationToken,
) {
    let ShareOptions {
        store,
        prefix,
        instance,
        ttl,
    } = options;
    let members_prefix = format!("{MEMBER_PREFIX}{prefix}");
    let member_key = format!("{members_prefix}{instance}");
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    let mut last_fair = None;
    loop {
        if let Err(e) = store.put(&member_key, instance.clone().into()).await {
            warn!(instance = %instance, error = %e, "cannot renew this instance's membership");
        }
        let members = count_members(&store, &members_prefix)
            .await
            .unwrap_or(1)
            .max(1);
        let want = wanted();
        let fair = want.len().div_ceil(members);
        if last_fair != Some((fair, members)) {
            info!(instance = %instance, members, keys = want.len(), fair, "shares reviewed");
            last_fair = Some((fair, members));
        }
        // Give up what is lost or not wanted, then what is beyond the share.
        let mut give_up: Vec<String> = held
            .iter()
            .filter(|(k, h)| h.keeper.is_finished() || !want.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        let kept: Vec<String> = held
            .keys()
            .filter(|k| !give_up.contains(k))
            .cloned()
            .collect();
        give_up.extend(kept.into_iter().skip(fair));
        for k in give_up {
            hand_off(&mut held, &owned, &prefix, &k, &instance).await;
        }
        // Take free keys up to the share.
        for k in &want {
            if held.len() >= fair || shutdown.is_cancelled() {
                break;
            }
            if held.contains_key(k) {
                continue;
            }
            let Ok(lease) =
                Lease::try_acquire(&store, &format!("{prefix}{k}"), &instance, ttl).await
            else {
                continue;
            };
            let (tx, stopped) = oneshot::channel();
            let own = Owned {
                fence: lease.fence(),
                active: shutdown.child_token(),
                work: Arc::new(Mutex::new(Some(tx))),
            };
            let stop_keeper = CancellationToken::new();
            let keeper = tokio::spawn(lease.keep(stop_keeper.clone(), own.active.clone()));
            owned.send_modify(|m| {
                m.insert(k.clone(), own.clone());
            });
            metrics::gauge!("ledgerline_share_owned", "lease" => format!("{prefix}{k}")).set(1.0);
            held.insert(
                k.clone(),
                Held {
                    owned: own,
                    stopped,
                    stop_keeper,
                    keeper,
                },
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(ttl / TICKS_PER_TTL) => {}
        }
    }
    let keys: Vec<String> = held.keys().cloned().collect();
    for k in keys {
        hand_off(&mut held, &owned, &prefix, &k, &instance).await;
    }
    if let Err(e) = store.delete(&member_key).await {
        warn!(instance = %instance, error = %e, "cannot leave the members; the key expires by itself");
    }
}

/// Stops the work on key `k`, waits until it has stopped, then releases
/// (or, if lost, lets go of) its lease.
async fn hand_off(
    held: &mut BTreeMap<String, Held>,
    owned: &watch::Sender<BTreeMap<String, Owned>>,
    prefix: &str,
    k: &str,
    instance: &str,
) {
    let Some(h) = held.remove(k) else {
        return;
    };
    h.owned.active.cancel();
    owned.send_modify(|m| {
        m.remove(k);
    });
    metrics::gauge!("ledgerline_share_owned", "lease" => format!("{prefix}{k}")).set(0.0);
    // Work never started: nothing to wait for.
    drop(
        h.owned
            .work
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(),
    );
    // The sender is dropped when the work ends (or was never taken).
    let _ = h.stopped.await;
    h.stop_keeper.cancel();
    let lost = h.keeper.await.unwrap_or(true);
    info!(instance, key = k, lost, "share given up");
}

/// How many instances renewed their membership (keys under
/// `members_prefix`) within the TTL.
async fn count_members(store: &kv::Store, members_prefix: &str) -> Option<usize> {
    let keys = store.keys().await.ok()?;
    let all: Vec<String> = keys.try_collect().await.ok()?;
    Some(all.iter().filter(|k| k.starts_with(members_prefix)).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned() -> (Owned, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (
            Owned {
                fence: Fence::open(),
                active: CancellationToken::new(),
                work: Arc::new(Mutex::new(Some(tx))),
            },
            rx,
        )
    }

    #[tokio::test]
    async fn the_work_guard_is_given_once_and_its_drop_says_the_work_stopped() {
        let (o, mut stopped) = owned();
        let guard = o.start().expect("the first start gets the guard");
        assert!(o.clone().start().is_none(), "a second start gets nothing");
        assert!(stopped.try_recv().is_err(), "work running");
        drop(guard);
        assert!(stopped.await.is_err(), "dropped: the work has stopped");
    }

    #[tokio::test]
    async fn a_key_given_up_before_its_work_started_starts_nothing() {
        let (o, stopped) = owned();
        o.active.cancel();
        assert!(o.start().is_none());
        assert!(stopped.await.is_err(), "nothing to wait for");
    }
}
