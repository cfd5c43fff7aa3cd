//! `ledgerline verify`: replay ORDERS through the engine and check that
//! every posting stored in LEDGER is reproduced exactly.
//!
//! The event log is the source of truth: replaying it must give, for every
//! (registry, order, seq), a posting equal in every field (key, event,
//! entries, cumulative) and produced by the same ORDERS message. Anything
//! else is listed: missing (the replay produced it, LEDGER does not have
//! it), unexpected (stored but not produced) and different, naming the
//! registry's revision the replay used.
//!
//! **Registries as they were.** Each event is replayed with the registries
//! in force when the aggregator handled it: the registry bucket's history
//! (every revision, created, edited, disabled or deleted through the file,
//! `registry apply` or the API) at the time the event's first posting was
//! stored, or, for an event no registry posted, when it was published. A
//! registry of the configuration the bucket never held (an instance that
//! never ran, fixed registries) counts from the beginning. The bucket keeps
//! 64 revisions per registry: older changes are beyond what verify can
//! replay (docs/registries.md).
//!
//! **Backfills.** A posting stored by `registry backfill` (header
//! `Ledgerline-Backfill`) is replayed as what it is: the registry has
//! nothing of the order before it, and at its event it gets the order's
//! whole ledger as posting 1 ([`crate::backfill`]).
//!
//! Memory holds one 32-byte digest per stored posting and one order book
//! per order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use async_nats::jetstream::{self, stream::Stream};
use sha2::{Digest, Sha256};

use time::OffsetDateTime;

use crate::config::Settings;
use crate::engine::{ApplyError, OrderBook};
use crate::events::{OrderId, parse_event};
use crate::ledger::{LedgerOptions, derive};
use crate::posting::{Cursor, Posting, build};
use crate::records::StoredPosting;
use crate::registry::{Registry, RegistryConfig, TargetPolicy};
use crate::registry_store::{HistoryEntry, RegistryStore};
use crate::streams::{self, LEDGER_STREAM, ORDERS_STREAM, OrderSubjects, subjects};

/// One posting that does not match the replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub registry_id: String,
    pub order_id: String,
    pub seq: u64,
    pub problem: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} #{}: {}",
            self.registry_id, self.order_id, self.seq, self.problem
        )
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub events: u64,
    pub expected: u64,
    pub stored: u64,
    pub matched: u64,
    pub mismatches: Vec<Mismatch>,
    pub elapsed_ms: u128,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "verify: {} events replayed, {} postings expected, {} stored, {} match, {} mismatches ({} ms)",
            self.events,
            self.expected,
            self.stored,
            self.matched,
            self.mismatches.len(),
            self.elapsed_ms
        )
    }
}

/// Why verify could not run (mismatches are a report, not an error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Streams(#[from] streams::NatsError),
    #[error("reading the registries' history: {0}")]
    Registries(#[source] crate::registry_store::StoreError),
    #[error("reading {stream}: {source}")]
    Read {
        stream: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

fn digest(p: &Posting, source_seq: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(source_seq.to_be_bytes());
    // Serialising a Posting cannot fail: every field is plain data.
    h.update(serde_json::to_vec(p).unwrap_or_default());
    h.finalize().into()
}

fn cumulative_digest(p: &Posting) -> [u8; 32] {
    // Plain data, as above.
    Sha256::digest(serde_json::to_vec(&p.cumulative).unwrap_or_default()).into()
}

type Key = (String, String, u64);

/// What is kept of a stored posting while ORDERS is replayed.
struct Stored {
    digest: [u8; 32],
    cumulative: [u8; 32],
    /// Its debit and credit when it should balance and does not.
    unbalanced: Option<(rust_decimal::Decimal, rust_decimal::Decimal)>,
}

/// The registries over time: what was in force from when, as the KV
/// history of the registries says. Each epoch starts at a change.
struct Timeline {
    /// (from, the registries in force, the revision of each) by time.
    epochs: Vec<(OffsetDateTime, Vec<Registry>, Vec<u64>)>,
}

impl Timeline {
    /// From the bucket's history (every revision, in order); a registry of
    /// the configuration the bucket never had (an instance that never ran,
    /// or fixed registries) is in force from the beginning, revision 0.
    fn new(
        config: Vec<Registry>,
        history: Vec<(String, HistoryEntry<RegistryConfig>)>,
        policy: &TargetPolicy,
    ) -> Timeline {
        let known: HashSet<&str> = history.iter().map(|(id, _)| id.as_str()).collect();
        let mut current: BTreeMap<String, (u64, Registry)> = config
            .into_iter()
            .filter(|r| !known.contains(r.id()))
            .map(|r| (r.id().to_owned(), (0, r)))
            .collect();
        let snapshot = |current: &BTreeMap<String, (u64, Registry)>| {
            let (revisions, registries) = current
                .values()
                .map(|(rev, r)| (*rev, r.clone()))
                .unzip::<_, _, Vec<_>, Vec<_>>();
            (registries, revisions)
        };
        let (registries, revisions) = snapshot(&current);
        let mut epochs = vec![(OffsetDateTime::UNIX_EPOCH, registries, revisions)];
        for (id, entry) in history {
            // What the aggregator would have had: a valid stored registry,
            // nothing after a deletion or an invalid value.
            let valid = entry
                .stored
                .as_ref()
                .and_then(|s| without_secrets(&s.registry).validate(policy).ok());
            match valid {
                Some(r) => current.insert(id, (entry.revision, r)),
                None => current.remove(&id),
            };
            let (registries, revisions) = snapshot(&current);
            epochs.push((entry.at, registries, revisions));
        }
        Timeline { epochs }
    }

    /// The registries in force at `t`, with their revisions.
    fn at(&self, t: OffsetDateTime) -> (&[Registry], &[u64]) {
        let i = self.epochs.partition_point(|(from, ..)| *from <= t);
        let (_, registries, revisions) = &self.epochs[i.saturating_sub(1)];
        (registries, revisions)
    }

    /// The last revision of `id` in force at or before `t`.
    fn last_before(&self, t: OffsetDateTime, id: &str) -> Option<&Registry> {
        let i = self.epochs.partition_point(|(from, ..)| *from <= t);
        self.epochs[..i]
            .iter()
            .rev()
            .find_map(|(_, registries, _)| registries.iter().find(|r| r.id() == id))
    }

    /// The revision of `id` in force at `t`, for messages.
    fn revision(&self, t: OffsetDateTime, id: &str) -> Option<u64> {
        let (registries, revisions) = self.at(t);
        registries
            .iter()
            .position(|r| r.id() == id)
            .map(|i| revisions[i])
    }
}

/// `config` without its secrets (an archived revision has them as `***`):
/// they never change a posting.
fn without_secrets(config: &RegistryConfig) -> RegistryConfig {
    RegistryConfig {
        signing_secret: None,
        signing_secret_previous: None,
        signing_secret_previous_until: None,
        headers: BTreeMap::new(),
        query: BTreeMap::new(),
        auth: Default::default(),
        ..config.clone()
    }
}

/// A posting stored for an order: its registry, its number, the ORDERS
/// sequence of its event, when it was stored and whether `registry
/// backfill` stored it.
struct Posted {
    registry_id: String,
    seq: u64,
    source_seq: u64,
    at: OffsetDateTime,
    backfill: bool,
}

/// Everything read from LEDGER before the replay.
#[derive(Default)]
struct Ledger {
    stored: HashMap<Key, Stored>,
    /// ORDERS sequence → when its first posting was stored: when the
    /// aggregator handled the event, give or take the publish.
    handled_at: HashMap<u64, OffsetDateTime>,
    /// Order id → its stored postings.
    posted: HashMap<String, Vec<Posted>>,
}

/// Replays ORDERS and compares with LEDGER, each registry as it was when
/// each event was handled (module doc).
pub async fn verify(
    client: &async_nats::Client,
    settings: &Settings,
    mut progress: impl FnMut(&str, u64),
) -> Result<VerifyReport, VerifyError> {
    let started = Instant::now();
    let js = jetstream::new(client.clone());
    let subjects = settings.config.order_subjects();
    let (orders, ledger) =
        streams::ensure_streams(&js, &subjects, settings.config.stream_replicas).await?;
    let history = match js.get_key_value(crate::registry_store::BUCKET).await {
        Ok(_) => {
            let store = RegistryStore::open(
                &js,
                settings.policy.clone(),
                settings.config.stream_replicas,
            )
            .await
            .map_err(VerifyError::Registries)?;
            // The bucket's revisions, and the older ones archived on LEDGER.
            let mut history = store.archived().await.map_err(VerifyError::Registries)?;
            let kept = store.timeline().await.map_err(VerifyError::Registries)?;
            history.retain(|(_, h)| kept.first().is_none_or(|(_, k)| h.revision < k.revision));
            history.extend(kept);
            history
        }
        // No bucket: the instance never ran; the configuration's registries.
        Err(_) => Vec::new(),
    };
    let timeline = Timeline::new(settings.registries.clone(), history, &settings.policy);
    let mut report = VerifyReport::default();
    let stored = read_ledger(&ledger, &mut report, &mut progress).await?;
    replay(
        &orders,
        &subjects,
        &settings.ledger,
        &timeline,
        stored,
        &mut report,
        &mut progress,
    )
    .await?;
    report.mismatches.sort_by(|a, b| {
        (&a.registry_id, &a.order_id, a.seq).cmp(&(&b.registry_id, &b.order_id, b.seq))
    });
    report.elapsed_ms = started.elapsed().as_millis();
    Ok(report)
}

/// Step 1: every stored posting (its digest), when each event was
/// handled, and the backfills.
async fn read_ledger(
    ledger: &Stream,
    report: &mut VerifyReport,
    progress: &mut impl FnMut(&str, u64),
) -> Result<Ledger, VerifyError> {
    let mut out = Ledger::default();
    read_all(
        ledger,
        LEDGER_STREAM,
        subjects::POSTINGS_ALL,
        |msg, _seq, at| {
            report.stored += 1;
            progress("reading LEDGER", report.stored);
            let subject = msg.subject.as_str();
            let stored: StoredPosting = match serde_json::from_slice(&msg.payload) {
                Ok(s) => s,
                Err(e) => {
                    let (r, o) = subjects::parse_order_subject(subject)
                        .map(|(_, r, o)| (r.to_owned(), o.to_owned()))
                        .unwrap_or_default();
                    report.mismatches.push(Mismatch {
                        registry_id: r,
                        order_id: o,
                        seq: 0,
                        problem: format!("unreadable posting: {e}"),
                    });
                    return;
                }
            };
            let p = &stored.posting;
            let handled = out.handled_at.entry(stored.source_seq).or_insert(at);
            *handled = (*handled).min(at);
            let backfilled = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(crate::backfill::H_BACKFILL))
                .is_some_and(|v| v.as_str() == "true");
            out.posted
                .entry(p.order_id.to_string())
                .or_default()
                .push(Posted {
                    registry_id: p.registry_id.clone(),
                    seq: p.seq,
                    source_seq: stored.source_seq,
                    at,
                    backfill: backfilled,
                });
            let (d, c) = p.debit_credit();
            out.stored.insert(
                (p.registry_id.clone(), p.order_id.to_string(), p.seq),
                Stored {
                    digest: digest(p, stored.source_seq),
                    cumulative: cumulative_digest(p),
                    unbalanced: (!p.filtered && d != c).then_some((d, c)),
                },
            );
        },
    )
    .await?;
    Ok(out)
}

/// Step 2: replays ORDERS, each event with the registries in force when it
/// was handled, and checks each posting the replay makes against LEDGER;
/// what LEDGER has and the replay does not make is reported at the end.
async fn replay(
    orders: &Stream,
    subjects: &OrderSubjects,
    options: &LedgerOptions,
    timeline: &Timeline,
    mut ledger: Ledger,
    report: &mut VerifyReport,
    progress: &mut impl FnMut(&str, u64),
) -> Result<(), VerifyError> {
    let mut books: HashMap<OrderId, OrderBook> = HashMap::new();
    read_all(
        orders,
        ORDERS_STREAM,
        &subjects.all(),
        |msg, seq, published| {
            report.events += 1;
            progress("replaying ORDERS", report.events);
            let subject = msg.subject.as_str();
            let token = subjects.order_of(subject).unwrap_or(subject);
            let Ok(event) = parse_event(&msg.payload, Some(token)) else {
                return;
            };
            let at = ledger.handled_at.get(&seq).copied().unwrap_or(published);
            let book = books
                .entry(event.order_id.clone())
                .or_insert_with(|| OrderBook::new(event.order_id.clone()));
            let posted = ledger.posted.get(event.order_id.as_str());
            let registries = in_force_for(timeline, at, seq, posted.map_or(&[][..], |p| &p[..]));
            let Ok(plan) = book.plan(&event, &registries, options, |_| false) else {
                return;
            };
            for p in &plan.postings {
                check(
                    p,
                    seq,
                    timeline.revision(at, &p.registry_id),
                    book,
                    &mut ledger.stored,
                    report,
                );
            }
            book.commit(plan);
            let backfills = posted
                .into_iter()
                .flatten()
                .filter(|f| f.backfill && f.source_seq == seq);
            for f in backfills {
                let (registries, _) = timeline.at(f.at);
                let Some(r) = registries.iter().find(|r| r.id() == f.registry_id) else {
                    continue;
                };
                let built = derive(&book.state, options)
                    .map_err(ApplyError::from)
                    .and_then(|ledger| Ok(build(r, &event, &ledger, &Cursor::default())?));
                if let Ok(p) = built {
                    check(
                        &p,
                        seq,
                        timeline.revision(f.at, r.id()),
                        book,
                        &mut ledger.stored,
                        report,
                    );
                    book.cursors.insert(p.registry_id.clone(), p.cursor());
                }
            }
        },
    )
    .await?;
    let mut left: Vec<Mismatch> = ledger
        .stored
        .into_keys()
        .map(|(r, o, s)| Mismatch {
            registry_id: r,
            order_id: o,
            seq: s,
            problem: "stored, but the replay does not produce it (unknown registry, or a posting nobody should have made)".to_owned(),
        })
        .collect();
    report.mismatches.append(&mut left);
    Ok(())
}

/// The registries to replay the event at ORDERS sequence `seq` of an order
/// with, handled at `at`, knowing the order's stored postings `posted`:
/// those in force at `at` (the bucket's history), except
/// - a registry whose posting 1 for the order comes from a later event:
///   it starts there (it was created, or the aggregator learned of it,
///   after this event was handled), or from a backfill at or after this
///   event (the backfill makes it, [`replay`]);
///
/// plus a registry that did post for this event although the history says
/// it was not in force at `at` (the aggregator learned of a deletion after
/// handling it), with its last revision before `at`.
fn in_force_for(
    timeline: &Timeline,
    at: OffsetDateTime,
    seq: u64,
    posted: &[Posted],
) -> Vec<Registry> {
    let starts_later = |id: &str| {
        posted.iter().any(|p| {
            p.registry_id == id
                && p.seq == 1
                && (seq < p.source_seq || (p.backfill && seq == p.source_seq))
        })
    };
    let (in_force, _) = timeline.at(at);
    let mut out: Vec<Registry> = in_force
        .iter()
        .filter(|r| !starts_later(r.id()))
        .cloned()
        .collect();
    for p in posted.iter().filter(|p| p.source_seq == seq && !p.backfill) {
        if !out.iter().any(|r| r.id() == p.registry_id)
            && let Some(r) = timeline.last_before(at, &p.registry_id)
        {
            out.push(r.clone());
        }
    }
    out
}

/// Checks one posting of the replay, made by `revision` of its registry,
/// against the stored one.
fn check(
    p: &Posting,
    source_seq: u64,
    revision: Option<u64>,
    book: &OrderBook,
    stored: &mut HashMap<Key, Stored>,
    report: &mut VerifyReport,
) {
    report.expected += 1;
    let key = (p.registry_id.clone(), p.order_id.to_string(), p.seq);
    let with = match revision {
        Some(rev) if rev > 0 => format!(" (replayed with revision {rev} of {})", p.registry_id),
        _ => String::new(),
    };
    let problem = match stored.remove(&key) {
        Some(s) if s.digest == digest(p, source_seq) => {
            report.matched += 1;
            return;
        }
        Some(s) => {
            let mut parts = vec![format!("differs from the replay{with}")];
            let cursor_seq = book.cursors.get(&p.registry_id).map_or(0, |c| c.seq);
            if cursor_seq + 1 == p.seq && s.cumulative != cumulative_digest(p) {
                parts.push("its running total does not match the order's ledger".to_owned());
            }
            if let Some((d, c)) = s.unbalanced {
                parts.push(format!("and it does not balance (debit {d}, credit {c})"));
            }
            parts.join(": ")
        }
        None => format!("missing from LEDGER (the replay produces it{with})"),
    };
    report.mismatches.push(Mismatch {
        registry_id: key.0,
        order_id: key.1,
        seq: key.2,
        problem,
    });
}

/// [`streams::for_each_message`], its failure named by `name`.
async fn read_all(
    stream: &Stream,
    name: &'static str,
    filter: &str,
    f: impl FnMut(&jetstream::Message, u64, OffsetDateTime),
) -> Result<(), VerifyError> {
    streams::for_each_message(stream, filter, f)
        .await
        .map_err(|source| VerifyError::Read {
            stream: name,
            source,
        })
}
