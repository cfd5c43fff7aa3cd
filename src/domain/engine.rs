//! The engine: one event in, the postings of every subscribed registry out.
//!
//! [`OrderBook`] is everything ledgerline keeps per order: its state and, per
//! registry, what was posted so far. [`OrderBook::apply`] is all-or-nothing:
//! a refused event, or (a bug) an unbalanced ledger, leaves the book as it
//! was. [`Engine`] keeps books for many orders in memory, for the offline
//! `postings` command, `verify` and tests; the aggregator keeps the same
//! books but recovers them from JetStream.

use std::collections::{BTreeMap, HashMap};

use crate::events::{Event, OrderId, Rejection};
use crate::ledger::{LedgerOptions, RevenueRecognition, Unbalanced, derive, derive_with};
use crate::order::OrderState;
use crate::posting::{
    BuildError, Cursor, Posting, ValueTexts, build_grouped, group_with, same_grouping,
};
use crate::registry::Registry;

/// Why an event produced no postings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The event was refused (stale, duplicate, currency mismatch…).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The ledger broke its invariant: a bug, reported, never posted.
    #[error(transparent)]
    Unbalanced(#[from] Unbalanced),
    /// A posting would not balance (a bug), or its cursor is out of range.
    #[error(transparent)]
    Posting(#[from] BuildError),
}

/// One order's state and, per registry id, what was posted to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBook {
    pub state: OrderState,
    pub cursors: BTreeMap<String, Cursor>,
}

impl OrderBook {
    pub fn new(order_id: OrderId) -> Self {
        Self {
            state: OrderState::new(order_id),
            cursors: BTreeMap::new(),
        }
    }

    /// What `event` would do to this book, computed without changing it:
    /// the new state and one posting per subscribed registry (in the order
    /// of `registries`) except those `posted(registry_id)` says were
    /// already posted for this event (the aggregator after a crash). All
    /// or nothing: a refused event, a broken invariant or a posting too
    /// large to store is an error and plans nothing.
    ///
    /// This is the one fold of ledgerline: the aggregator, `postings`,
    /// `verify` and the admin ledger view all go through it.
    pub fn plan(
        &self,
        event: &Event,
        registries: &[Registry],
        opts: &LedgerOptions,
        posted: impl Fn(&str) -> bool,
    ) -> Result<Plan, ApplyError> {
        // The new state's applied ids are this event's only: `commit`
        // moves the earlier ones over rather than each event copying them.
        let state = self.state.applied_without_earlier_ids(event)?;
        let ledger = derive(&state, opts)?;
        // Made once, and only when a registry recognises on redemption.
        let mut deferring = None;
        let mut postings: Vec<Posting> = Vec::with_capacity(registries.len());
        // Each registry with a posting, by the posting's index: a later one
        // that sees the same ledger and groups it alike takes a copy of its
        // grouping (the posting's `cumulative`) rather than grouping again.
        let mut grouped: Vec<(&Registry, usize)> = Vec::with_capacity(registries.len());
        // The texts of currencies and rates, made once for all groupings.
        let mut texts = ValueTexts::default();
        for r in registries.iter().filter(|r| r.subscribes(event.event_type)) {
            if posted(r.id()) {
                continue;
            }
            let ledger = match r.config.revenue_recognition {
                RevenueRecognition::OnConfirmation => &ledger,
                recognition @ RevenueRecognition::OnRedemption => match &mut deferring {
                    Some(l) => &*l,
                    None => &*deferring.insert(derive_with(&state, opts, recognition)?),
                },
            };
            let alike = grouped.iter().find(|(g, _)| {
                g.config.revenue_recognition == r.config.revenue_recognition && same_grouping(g, r)
            });
            let cursor = self.cursors.get(r.id());
            let current = match alike.and_then(|&(_, i)| postings.get(i)) {
                Some(p) => p.cumulative.clone(),
                None => group_with(ledger, r, &mut texts, cursor.map_or(&[], |c| &c.posted)),
            };
            let posting = build_grouped(
                r,
                event,
                ledger,
                cursor.unwrap_or(&Cursor::default()),
                current,
            )?;
            if alike.is_none() {
                grouped.push((r, postings.len()));
            }
            crate::posting::check_size(&posting).map_err(|mut rejection| {
                rejection.event_id = Some(event.event_id.clone());
                rejection
            })?;
            postings.push(posting);
        }
        Ok(Plan { state, postings })
    }

    /// Makes `plan` (made by [`OrderBook::plan`] on this book) the book's
    /// state, once its postings are stored: each posting's `cumulative`
    /// becomes its registry's cursor.
    pub fn commit(&mut self, plan: Plan) {
        self.keep_state(plan.state);
        for p in plan.postings {
            let cursor = Cursor {
                seq: p.seq,
                posted: p.cumulative,
            };
            self.set_cursor(p.registry_id, cursor);
        }
    }

    /// Makes `state`, planned on this book's state, the book's state.
    fn keep_state(&mut self, mut state: OrderState) {
        state.take_applied_event_ids(&mut self.state);
        self.state = state;
    }

    fn set_cursor(&mut self, registry_id: String, cursor: Cursor) {
        match self.cursors.get_mut(&registry_id) {
            Some(c) => *c = cursor,
            None => {
                self.cursors.insert(registry_id, cursor);
            }
        }
    }

    /// Applies `event` and returns one posting per subscribed registry, in
    /// the order of `registries`. All or nothing.
    pub fn apply(
        &mut self,
        event: &Event,
        registries: &[Registry],
        opts: &LedgerOptions,
    ) -> Result<Vec<Posting>, ApplyError> {
        let plan = self.plan(event, registries, opts, |_| false)?;
        self.keep_state(plan.state);
        for p in &plan.postings {
            self.set_cursor(p.registry_id.clone(), p.cursor());
        }
        Ok(plan.postings)
    }
}

/// What an event does to an order book ([`OrderBook::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    state: OrderState,
    /// The new postings, one per subscribed registry not yet posted; each
    /// one's `cumulative` is its registry's cursor once committed.
    pub postings: Vec<Posting>,
}

/// Order books for many orders, in memory.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub options: LedgerOptions,
    pub registries: Vec<Registry>,
    books: HashMap<OrderId, OrderBook>,
}

impl Engine {
    pub fn new(options: LedgerOptions, registries: Vec<Registry>) -> Self {
        Self {
            options,
            registries,
            books: HashMap::new(),
        }
    }

    /// Applies one event to its order. An order whose first event is
    /// refused (a redemption of an order never confirmed) gets no book.
    pub fn process(&mut self, event: &Event) -> Result<Vec<Posting>, ApplyError> {
        if let Some(book) = self.books.get_mut(&event.order_id) {
            return book.apply(event, &self.registries, &self.options);
        }
        let mut book = OrderBook::new(event.order_id.clone());
        let postings = book.apply(event, &self.registries, &self.options)?;
        self.books.insert(event.order_id.clone(), book);
        Ok(postings)
    }

    /// The book of an order, if any event reached it.
    pub fn book(&self, order_id: &OrderId) -> Option<&OrderBook> {
        self.books.get(order_id)
    }

    /// Every order seen.
    pub fn books(&self) -> impl Iterator<Item = &OrderBook> {
        self.books.values()
    }
}
