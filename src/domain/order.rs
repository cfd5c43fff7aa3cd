//! Order state: the fold of an order's events (SPEC 1).
//!
//! [`OrderState::apply`] is the only way state changes. It either applies an
//! event completely or refuses it and leaves the state exactly as it was
//! (stale snapshots, duplicate event ids, a currency that differs from the
//! order's). Pure: no I/O, no clock.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::events::{
    Event, EventBody, Fee, LineItem, OrderId, OrderSnapshot, Payment, Redemption, RejectReason,
    Rejection, Text,
};
use crate::money::Currency;

/// Most events remembered per order for duplicate detection. An order with
/// more events than this is far outside any real lifecycle; past it the
/// oldest ids are forgotten (JetStream's own duplicate window still applies).
pub const APPLIED_EVENT_IDS_MAX: usize = 10_000;

/// The ids of the events applied to an order, oldest first, with an index
/// of their hashes, so [`AppliedIds::contains`] (asked for every event) is
/// O(1) however long the order's history: a scan cost ≈ 7 % of the
/// service's CPU at 600 ids an order and grew with every event up to
/// [`APPLIED_EVENT_IDS_MAX`]. Read-only as a slice (`Deref`); changed only
/// through its methods, which keep the index in step. On the wire (serde)
/// it is the list of ids, as before. The index adds 18–36 bytes an id (a
/// hash and a count an entry, at the map's load factor) to the id's own
/// ≈ 50–80; ids crafted to share a hash only bring back the scan, bounded
/// as before.
#[derive(Debug, Clone, Default)]
pub struct AppliedIds {
    ids: Vec<Text>,
    /// Hash of an id → how many of `ids` have it (two ids may share one).
    hashes: HashMap<u64, u32, BuildHasherDefault<U64Hasher>>,
}

impl AppliedIds {
    fn hash(id: &str) -> u64 {
        // Fixed keys: a state's index must agree with its copies' and with
        // a rebuilt one. A hash that two ids share only costs a compare.
        let mut h = std::hash::DefaultHasher::new();
        id.hash(&mut h);
        h.finish()
    }

    /// Whether `id` is among the ids.
    pub fn contains(&self, id: &str) -> bool {
        self.hashes.contains_key(&Self::hash(id)) && self.ids.iter().any(|e| &**e == id)
    }

    /// Adds `id` as the newest.
    pub fn push(&mut self, id: Text) {
        *self.hashes.entry(Self::hash(&id)).or_insert(0) += 1;
        self.ids.push(id);
    }

    /// Moves `newer`'s ids after these, leaving `newer` empty.
    pub fn append(&mut self, newer: &mut AppliedIds) {
        for (h, n) in newer.hashes.drain() {
            *self.hashes.entry(h).or_insert(0) += n;
        }
        self.ids.append(&mut newer.ids);
    }

    /// Drops the oldest ids past `max`.
    pub fn keep_newest(&mut self, max: usize) {
        let over = self.ids.len().saturating_sub(max);
        for id in self.ids.drain(..over) {
            let h = Self::hash(&id);
            if let Some(n) = self.hashes.get_mut(&h) {
                *n -= 1;
                if *n == 0 {
                    self.hashes.remove(&h);
                }
            }
        }
    }

    /// A copy with room for the one id an applied event adds (the copy
    /// grows no further before it is kept).
    fn copy_with_room_for_one(&self) -> AppliedIds {
        let mut ids = Vec::with_capacity(self.ids.len() + 1);
        ids.extend_from_slice(&self.ids);
        AppliedIds {
            ids,
            hashes: self.hashes.clone(),
        }
    }

    fn with_capacity(n: usize) -> AppliedIds {
        AppliedIds {
            ids: Vec::with_capacity(n),
            hashes: HashMap::with_capacity_and_hasher(n, Default::default()),
        }
    }
}

impl std::ops::Deref for AppliedIds {
    type Target = [Text];
    fn deref(&self) -> &[Text] {
        &self.ids
    }
}

impl PartialEq for AppliedIds {
    fn eq(&self, other: &Self) -> bool {
        self.ids == other.ids
    }
}

impl Eq for AppliedIds {}

impl FromIterator<Text> for AppliedIds {
    fn from_iter<I: IntoIterator<Item = Text>>(iter: I) -> Self {
        let mut out = AppliedIds::default();
        for id in iter {
            out.push(id);
        }
        out
    }
}

impl Serialize for AppliedIds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.ids.serialize(s)
    }
}

impl<'de> Deserialize<'de> for AppliedIds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<Text>::deserialize(d)?.into_iter().collect())
    }
}

/// The index's keys are hashes already: they are used as they are.
#[derive(Default)]
struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed (`write_u64`); anything else is folded in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What a payment record stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentKind {
    /// Money received (or, negative, refunded).
    Paid,
    /// Outstanding balance written off as bad debt.
    WrittenOff,
}

/// A payment kept by `payment_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRecord {
    pub payment_id: Text,
    pub method: Text,
    pub amount: Decimal,
    pub kind: PaymentKind,
}

/// Units of a line redeemed, kept by `redemption_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedemptionRecord {
    pub redemption_id: Text,
    pub line_item_id: Text,
    pub quantity: u64,
}

/// The current state of one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub order_id: OrderId,
    /// Fixed by the first event that names one.
    pub currency: Option<Currency>,
    pub channel: Option<Text>,
    pub prices_include_tax: bool,
    /// Version of the last applied snapshot.
    pub version: Option<u64>,
    pub cancelled: bool,
    #[serde(default)]
    pub line_items: Vec<LineItem>,
    #[serde(default)]
    pub fees: Vec<Fee>,
    /// In order of first appearance; updates keep the position.
    #[serde(default)]
    pub payments: Vec<PaymentRecord>,
    /// In order of first appearance; a redemption of the same id replaces
    /// the earlier one in place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redemptions: Vec<RedemptionRecord>,
    /// Event ids applied, oldest first (bounded by [`APPLIED_EVENT_IDS_MAX`]).
    /// Shared texts: the next state's copy of the list (one per event)
    /// copies no id.
    #[serde(default)]
    pub applied_event_ids: AppliedIds,
}

impl OrderState {
    /// An order nothing has happened to yet.
    pub fn new(order_id: OrderId) -> Self {
        Self {
            order_id,
            currency: None,
            channel: None,
            prices_include_tax: false,
            version: None,
            cancelled: false,
            line_items: Vec::new(),
            fees: Vec::new(),
            payments: Vec::new(),
            redemptions: Vec::new(),
            applied_event_ids: AppliedIds::default(),
        }
    }

    /// Units of line `line_item_id` redeemed so far (Σ of its redemptions;
    /// may exceed the line's quantity after a snapshot lowered it: SPEC 2
    /// recognises min(Σ, quantity)).
    pub fn redeemed(&self, line_item_id: &str) -> u64 {
        self.redemptions
            .iter()
            .filter(|r| &*r.line_item_id == line_item_id)
            .fold(0u64, |sum, r| sum.saturating_add(r.quantity))
    }

    /// True once `event_id` has been applied to this order.
    pub fn has_applied(&self, event_id: &str) -> bool {
        self.applied_event_ids.contains(event_id)
    }

    /// Applies `event`, or refuses it and changes nothing.
    pub fn apply(&mut self, event: &Event) -> Result<(), Rejection> {
        self.check(event)?;
        self.change(event, None);
        self.trim_applied_event_ids();
        Ok(())
    }

    /// The state after `event`, leaving this one as it is: what
    /// [`OrderState::apply`] makes of a copy, without copying the lines
    /// and fees a snapshot replaces anyway.
    pub fn applied(&self, event: &Event) -> Result<OrderState, Rejection> {
        let mut next =
            self.applied_but_ids(event, self.applied_event_ids.copy_with_room_for_one())?;
        next.trim_applied_event_ids();
        Ok(next)
    }

    /// [`OrderState::applied`] with `applied_event_ids` holding only
    /// `event`'s id: [`OrderState::take_applied_event_ids`] moves the
    /// earlier ones over once the state is kept, so a long order's ids
    /// are not copied (nor their reference counts taken) for each event.
    pub(crate) fn applied_without_earlier_ids(
        &self,
        event: &Event,
    ) -> Result<OrderState, Rejection> {
        self.applied_but_ids(event, AppliedIds::with_capacity(1))
    }

    /// Puts `earlier`'s ids (the state this one was applied to) before
    /// this state's own, then keeps the last [`APPLIED_EVENT_IDS_MAX`].
    pub(crate) fn take_applied_event_ids(&mut self, earlier: &mut OrderState) {
        let mut ids = std::mem::take(&mut earlier.applied_event_ids);
        ids.append(&mut self.applied_event_ids);
        self.applied_event_ids = ids;
        self.trim_applied_event_ids();
    }

    fn trim_applied_event_ids(&mut self) {
        self.applied_event_ids.keep_newest(APPLIED_EVENT_IDS_MAX);
    }

    /// [`OrderState::applied`] with `ids` for its applied event ids (the
    /// event's id is added to them, untrimmed).
    fn applied_but_ids(&self, event: &Event, ids: AppliedIds) -> Result<OrderState, Rejection> {
        self.check(event)?;
        // A snapshot or a cancellation sets the lines and fees: they are
        // not copied only to be replaced.
        let (line_items, fees) = match event.body {
            EventBody::Snapshot(_) | EventBody::Cancel(_) => (Vec::new(), Vec::new()),
            EventBody::Payment(_) | EventBody::PaymentDeleted(_) | EventBody::Redemption(_) => {
                (self.line_items.clone(), self.fees.clone())
            }
        };
        let mut next = OrderState {
            order_id: self.order_id.clone(),
            currency: self.currency,
            channel: self.channel.clone(),
            prices_include_tax: self.prices_include_tax,
            version: self.version,
            cancelled: self.cancelled,
            line_items,
            fees,
            payments: self.payments.clone(),
            redemptions: self.redemptions.clone(),
            applied_event_ids: ids,
        };
        next.change(event, Some((&self.line_items, &self.fees)));
        Ok(next)
    }

    /// Refuses `event` when it cannot be applied to this state.
    fn check(&self, event: &Event) -> Result<(), Rejection> {
        let refuse = |reason, field: &str, message: String| {
            let mut r = Rejection::new(reason, field, message);
            r.event_id = Some(event.event_id.clone());
            r
        };
        if event.order_id != self.order_id {
            return Err(refuse(
                RejectReason::OrderIdMismatch,
                "order_id",
                format!(
                    "event for order {} applied to order {}",
                    event.order_id, self.order_id
                ),
            ));
        }
        if self.has_applied(&event.event_id) {
            return Err(refuse(
                RejectReason::Duplicate,
                "event_id",
                "this event was already applied to the order".to_owned(),
            ));
        }
        // Every check happens before the first change, so a refusal leaves the
        // state untouched.
        match &event.body {
            EventBody::Snapshot(s) | EventBody::Cancel(Some(s)) => {
                self.check_currency(s.currency)
                    .map_err(|m| refuse(RejectReason::CurrencyMismatch, "order.currency", m))?;
                if let Some(v) = self.version
                    && s.version <= v
                {
                    return Err(refuse(
                        RejectReason::Stale,
                        "order.version",
                        format!("version {} is not above the applied version {v}", s.version),
                    ));
                }
            }
            EventBody::Payment(p) | EventBody::PaymentDeleted(p) => {
                self.check_currency(p.currency)
                    .map_err(|m| refuse(RejectReason::CurrencyMismatch, "payment.currency", m))?;
            }
            EventBody::Redemption(r) => {
                self.check_redemption(r)
                    .map_err(|(reason, field, m)| refuse(reason, field, m))?;
            }
            EventBody::Cancel(None) => {}
        }
        Ok(())
    }

    /// A redemption names a line the order has now, and with it (replacing
    /// an earlier redemption of the same id) the line's redemptions add up
    /// to at most its quantity. A redemption that lowers its own earlier
    /// count is always taken (a correction), even where a later snapshot
    /// left the line with fewer units than were redeemed.
    fn check_redemption(&self, r: &Redemption) -> Result<(), (RejectReason, &'static str, String)> {
        let Some(line) = self.line_items.iter().find(|l| l.id == r.line_item_id) else {
            return Err((
                RejectReason::UnknownLineItem,
                "redemption.line_item_id",
                format!(
                    "the order has no line {:?}{}",
                    &*r.line_item_id,
                    if self.cancelled {
                        " (it is cancelled)"
                    } else {
                        ""
                    }
                ),
            ));
        };
        let previous = self
            .redemptions
            .iter()
            .find(|k| k.redemption_id == r.redemption_id)
            .filter(|k| k.line_item_id == r.line_item_id)
            .map_or(0, |k| k.quantity);
        let others = self.redeemed(&r.line_item_id) - previous;
        let total = others.saturating_add(r.quantity);
        if total > line.quantity && r.quantity > previous {
            return Err((
                RejectReason::OverRedemption,
                "redemption.quantity",
                format!(
                    "{} units of line {:?} would be redeemed ({others} already, {} now), \
                     but it has {}",
                    total, &*r.line_item_id, r.quantity, line.quantity
                ),
            ));
        }
        Ok(())
    }

    /// Applies `event`, which [`OrderState::check`] accepted. A snapshot's
    /// lines and fees keep the texts of the lines and fees `before` it
    /// (these, when `None`) where they are equal.
    fn change(&mut self, event: &Event, before: Option<(&[LineItem], &[Fee])>) {
        match &event.body {
            EventBody::Snapshot(s) => {
                self.apply_snapshot(s, before);
                self.cancelled = false;
            }
            EventBody::Cancel(Some(s)) => {
                self.apply_snapshot(s, before);
                self.cancelled = true;
            }
            EventBody::Cancel(None) => {
                self.line_items.clear();
                self.fees.clear();
                self.cancelled = true;
            }
            EventBody::Payment(p) => {
                let kind = match event.event_type {
                    crate::events::EventType::PaymentWrittenOff => PaymentKind::WrittenOff,
                    _ => PaymentKind::Paid,
                };
                self.currency.get_or_insert(p.currency);
                self.set_payment(p, kind);
            }
            EventBody::PaymentDeleted(p) => {
                self.payments.retain(|r| r.payment_id != p.payment_id);
            }
            EventBody::Redemption(r) => self.set_redemption(r),
        }
        self.applied_event_ids
            .push(Text::from(event.event_id.as_str()));
    }

    fn check_currency(&self, c: Currency) -> Result<(), String> {
        match self.currency {
            Some(have) if have != c => Err(format!("{c} on an order in {have}")),
            _ => Ok(()),
        }
    }

    fn apply_snapshot(&mut self, s: &OrderSnapshot, before: Option<(&[LineItem], &[Fee])>) {
        self.currency = Some(s.currency);
        self.channel = kept_opt(&s.channel, &self.channel);
        self.prices_include_tax = s.prices_include_tax;
        self.version = Some(s.version);
        let (lines, fees) = before.unwrap_or((&self.line_items, &self.fees));
        let (lines, fees) = (kept_lines(&s.line_items, lines), kept_fees(&s.fees, fees));
        self.line_items = lines;
        self.fees = fees;
        for p in &s.payments {
            self.set_payment(p, PaymentKind::Paid);
        }
    }

    fn set_redemption(&mut self, r: &Redemption) {
        let record = RedemptionRecord {
            redemption_id: r.redemption_id.clone(),
            line_item_id: r.line_item_id.clone(),
            quantity: r.quantity,
        };
        upsert(&mut self.redemptions, record, |k| {
            k.redemption_id == r.redemption_id
        });
    }

    fn set_payment(&mut self, p: &Payment, kind: PaymentKind) {
        match self
            .payments
            .iter_mut()
            .find(|r| r.payment_id == p.payment_id)
        {
            // The record's own id (equal) and method, when equal, are kept.
            Some(r) => {
                r.method = kept(&p.method, &r.method);
                r.amount = p.amount;
                r.kind = kind;
            }
            None => self.payments.push(PaymentRecord {
                payment_id: p.payment_id.clone(),
                method: p.method.clone(),
                amount: p.amount,
                kind,
            }),
        }
    }

    /// Distinct tax rates in use, ascending.
    pub fn tax_rates(&self) -> BTreeSet<Decimal> {
        self.line_items
            .iter()
            .map(|l| l.tax_rate)
            .chain(self.fees.iter().map(|f| f.tax_rate))
            .collect()
    }
}

/// `new`, as the text `old` holds when the two are equal: texts kept from
/// one state to the next (a line's, a payment's) stay one allocation, so
/// the keys grouped from them are compared by address
/// (`posting::GroupKey`'s `==`) and their column lists are reused.
fn kept(new: &Text, old: &Text) -> Text {
    if **new == **old {
        Text::clone(old)
    } else {
        Text::clone(new)
    }
}

/// [`kept`] of optional texts.
fn kept_opt(new: &Option<Text>, old: &Option<Text>) -> Option<Text> {
    match (new, old) {
        (Some(new), Some(old)) => Some(kept(new, old)),
        (new, _) => new.clone(),
    }
}

/// A copy of a snapshot's `lines`, each with the texts (but the id) of the
/// line at its place `before` where they are equal (an update usually keeps its lines
/// in place); equal to `lines` (`==`).
fn kept_lines(lines: &[LineItem], before: &[LineItem]) -> Vec<LineItem> {
    let kept_line = |(i, l): (usize, &LineItem)| match before.get(i) {
        // The id is not kept: no key is grouped by it.
        Some(b) => LineItem {
            id: Text::clone(&l.id),
            product_id: kept_opt(&l.product_id, &b.product_id),
            option_id: kept_opt(&l.option_id, &b.option_id),
            unit_type: kept_opt(&l.unit_type, &b.unit_type),
            description: kept(&l.description, &b.description),
            quantity: l.quantity,
            unit_price: l.unit_price,
            discount: l.discount,
            tax_rate: l.tax_rate,
        },
        None => l.clone(),
    };
    lines.iter().enumerate().map(kept_line).collect()
}

/// [`kept_lines`] for fees.
fn kept_fees(fees: &[Fee], before: &[Fee]) -> Vec<Fee> {
    let kept_fee = |(i, f): (usize, &Fee)| match before.get(i) {
        Some(b) => Fee {
            kind: kept(&f.kind, &b.kind),
            description: kept(&f.description, &b.description),
            amount: f.amount,
            tax_rate: f.tax_rate,
        },
        None => f.clone(),
    };
    fees.iter().enumerate().map(kept_fee).collect()
}

/// Replaces the element `same` picks with `record`, or appends it: records
/// kept by id, in order of first appearance.
fn upsert<T>(list: &mut Vec<T>, record: T, same: impl Fn(&T) -> bool) {
    match list.iter_mut().find(|k| same(k)) {
        Some(existing) => *existing = record,
        None => list.push(record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::parse_event;
    use serde_json::json;
    use std::sync::Arc;

    /// `contains` agrees with a scan of the ids through every way they
    /// change: pushes, appends of a newer list, trims of the oldest, and
    /// the same id applied twice (two entries, one hash).
    #[test]
    fn applied_ids_contain_exactly_what_they_list() {
        let mut ids = AppliedIds::default();
        let mut x = 7u64;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            x >> 33
        };
        for step in 0..5_000 {
            match next() % 10 {
                0 => {
                    let mut newer: AppliedIds = (0..next() % 4)
                        .map(|_| Text::from(format!("e{}", next() % 300)))
                        .collect();
                    ids.append(&mut newer);
                    assert!(newer.is_empty());
                }
                1 => ids.keep_newest((next() % 50) as usize),
                _ => ids.push(Text::from(format!("e{}", next() % 300))),
            }
            for probe in 0..300 {
                let id = format!("e{probe}");
                assert_eq!(
                    ids.contains(&id),
                    ids.iter().any(|e| **e == *id),
                    "step {step}, {id}"
                );
            }
            let counted: u32 = ids.hashes.values().sum();
            assert_eq!(counted as usize, ids.len(), "step {step}");
        }
    }

    /// On the wire the ids are a list, as before; read back, the index is
    /// rebuilt (a duplicate is still refused).
    #[test]
    fn applied_ids_are_a_list_on_the_wire_and_indexed_when_read() {
        let ids: AppliedIds = ["a", "b", "a"].into_iter().map(Text::from).collect();
        let wire = serde_json::to_value(&ids).unwrap();
        assert_eq!(wire, json!(["a", "b", "a"]));
        let back: AppliedIds = serde_json::from_value(wire).unwrap();
        assert_eq!(back, ids);
        assert!(back.contains("a") && back.contains("b") && !back.contains("c"));
        let mut trimmed = back.clone();
        trimmed.keep_newest(1);
        assert!(trimmed.contains("a") && !trimmed.contains("b"));
    }

    fn ev(v: serde_json::Value) -> Event {
        parse_event(v.to_string().as_bytes(), None).unwrap()
    }

    fn snapshot(id: &str, version: u64, qty: u64) -> Event {
        ev(json!({
            "event_id": id, "type": "order.updated", "order_id": "o1",
            "occurred_at": "2026-11-22T10:00:00Z",
            "order": {"version": version, "currency": "EUR", "prices_include_tax": true,
                "line_items": [{"id": "l1", "description": "T", "quantity": qty,
                                "unit_price": "10.00", "tax_rate": "0"}]}
        }))
    }

    fn payment(id: &str, ty: &str, pid: &str, amount: &str, currency: &str) -> Event {
        ev(json!({
            "event_id": id, "type": ty, "order_id": "o1", "occurred_at": "2026-11-22T10:00:00Z",
            "payment": {"payment_id": pid, "method": "card", "amount": amount, "currency": currency}
        }))
    }

    fn state() -> OrderState {
        OrderState::new(OrderId::parse("o1").unwrap())
    }

    /// A snapshot keeps the texts of the lines (but their ids), fees, channel and payments
    /// before it where they are equal (one allocation, not a copy), takes
    /// its own where they differ, and is the state the snapshot alone
    /// gives: equal, and stored as the same JSON.
    #[test]
    fn snapshots_keep_the_equal_texts_of_the_state_before() {
        let order = |version: u64, lines: serde_json::Value, fees: serde_json::Value| {
            ev(json!({
                "event_id": format!("e{version}"), "type": "order.updated", "order_id": "o1",
                "occurred_at": "2026-11-22T10:00:00Z",
                "order": {"version": version, "currency": "EUR", "channel": "web",
                    "prices_include_tax": true, "line_items": lines, "fees": fees,
                    "payments": [{"payment_id": "p1", "method": if version < 3 { "card" } else { "cash" },
                                  "amount": "1.00", "currency": "EUR"}]}
            }))
        };
        let line = |id: &str, product: Option<&str>, desc: &str, q: u64| {
            json!({"id": id, "product_id": product, "option_id": "std", "unit_type": "adult",
                   "description": desc, "quantity": q, "unit_price": "10.00", "tax_rate": "0.16"})
        };
        let fee = |kind: &str, desc: &str| json!({"kind": kind, "description": desc, "amount": "2.00", "tax_rate": "0"});
        let events = [
            order(
                1,
                json!([line("l1", Some("p"), "A", 1), line("l2", None, "B", 1)]),
                json!([fee("shipping", "Ship")]),
            ),
            // The same texts, other quantities.
            order(
                2,
                json!([line("l1", Some("p"), "A", 2), line("l2", None, "B", 3)]),
                json!([fee("shipping", "Ship")]),
            ),
            // Texts changed, a line and a fee more, another method.
            order(
                3,
                json!([
                    line("l1", Some("q"), "A", 2),
                    line("l2", Some("p"), "C", 3),
                    line("l3", None, "A", 1)
                ]),
                json!([fee("shipping", "Other"), fee("handling", "H")]),
            ),
            // Lines in another order, fewer of them.
            order(4, json!([line("l3", None, "A", 1)]), json!([])),
        ];
        let same = |a: &Text, b: &Text| Arc::ptr_eq(a, b);
        let mut s = state();
        for e in &events {
            let before = s.clone();
            let next = s.applied(e).unwrap();
            let mut alone = s.clone();
            alone.line_items.clear();
            alone.fees.clear();
            alone.apply(e).unwrap();
            let mut applied = s.clone();
            applied.apply(e).unwrap();
            for got in [&next, &applied] {
                assert_eq!(got, &alone);
                assert_eq!(
                    serde_json::to_string(got).unwrap(),
                    serde_json::to_string(&alone).unwrap()
                );
                for (l, b) in got.line_items.iter().zip(&before.line_items) {
                    let texts = [
                        (l.product_id.as_ref(), b.product_id.as_ref()),
                        (l.option_id.as_ref(), b.option_id.as_ref()),
                        (l.unit_type.as_ref(), b.unit_type.as_ref()),
                        (Some(&l.description), Some(&b.description)),
                    ];
                    for (t, b) in texts {
                        if let (Some(t), Some(b)) = (t, b) {
                            assert_eq!(same(t, b), t == b, "{t} {b}");
                        }
                    }
                }
                for (f, b) in got.fees.iter().zip(&before.fees) {
                    assert_eq!(same(&f.kind, &b.kind), f.kind == b.kind);
                    assert_eq!(
                        same(&f.description, &b.description),
                        f.description == b.description
                    );
                }
                if let (Some(c), Some(b)) = (&got.channel, &before.channel) {
                    assert!(same(c, b));
                }
                for (p, b) in got.payments.iter().zip(&before.payments) {
                    assert!(same(&p.payment_id, &b.payment_id));
                    assert_eq!(same(&p.method, &b.method), p.method == b.method);
                }
            }
            s = next;
        }
        assert_eq!(&*s.payments[0].method, "cash");
    }

    /// `applied` is `apply` on a copy, for every kind of event, accepted
    /// or refused.
    #[test]
    fn applied_is_apply_on_a_copy() {
        let cancel = ev(
            json!({"event_id": "c1", "type": "order.cancelled", "order_id": "o1",
                               "occurred_at": "2026-11-22T10:00:00Z"}),
        );
        let events = [
            snapshot("e1", 1, 2),
            payment("p1", "payment.created", "pay-1", "10.00", "EUR"),
            redeem("r1", "gate-1", "l1", 1),
            redeem("r2", "gate-2", "l1", 5),
            payment("p2", "payment.written_off", "pay-2", "3.00", "EUR"),
            payment("p3", "payment.created", "pay-3", "1.00", "USD"),
            snapshot("e2", 2, 5),
            snapshot("e2", 3, 5),
            snapshot("e3", 1, 5),
            payment("p4", "payment.deleted", "pay-1", "10.00", "EUR"),
            cancel,
            snapshot("e4", 4, 1),
        ];
        let mut s = state();
        for e in &events {
            let mut copy = s.clone();
            let want = copy.apply(e).map(|()| copy);
            let got = s.applied(e);
            assert_eq!(got, want, "{}", e.event_id);
            if let Ok(next) = got {
                s = next;
            }
        }
        assert_eq!(s.applied_event_ids.len(), 8, "four were refused");
    }

    /// The book's way (the new state holds its event's id only, the earlier
    /// ids are moved over when it is kept) gives the state `apply` does,
    /// past the bound too: the last `APPLIED_EVENT_IDS_MAX` ids, oldest
    /// first; an id dropped from them is applied again, a kept one refused.
    #[test]
    fn applied_ids_are_moved_not_copied_and_stay_bounded() {
        let pay = |i: usize| payment(&format!("p{i}"), "payment.created", "pay", "1.00", "EUR");
        let mut book = state();
        let mut alone = state();
        let last = APPLIED_EVENT_IDS_MAX + 3;
        for i in 1..=last {
            let e = pay(i);
            let mut next = book.applied_without_earlier_ids(&e).unwrap();
            assert_eq!(next.applied_event_ids.len(), 1);
            next.take_applied_event_ids(&mut book);
            book = next;
            alone.apply(&e).unwrap();
        }
        assert_eq!(book, alone);
        assert_eq!(book.applied_event_ids.len(), APPLIED_EVENT_IDS_MAX);
        assert_eq!(&*book.applied_event_ids[0], "p4");
        assert_eq!(
            &*book.applied_event_ids[APPLIED_EVENT_IDS_MAX - 1],
            format!("p{last}")
        );
        assert!(book.applied(&pay(3)).is_ok(), "p3 was dropped from the ids");
        let r = book.applied(&pay(4)).unwrap_err();
        assert_eq!(r.reason, RejectReason::Duplicate);
        let after = book.applied(&pay(3)).unwrap();
        assert_eq!(after.applied_event_ids.len(), APPLIED_EVENT_IDS_MAX);
        assert_eq!(&*after.applied_event_ids[0], "p5");
    }

    #[test]
    fn stale_snapshots_are_refused_and_change_nothing() {
        let mut s = state();
        s.apply(&snapshot("e1", 2, 1)).unwrap();
        let before = s.clone();
        for v in [1, 2] {
            let r = s.apply(&snapshot(&format!("old{v}"), v, 5)).unwrap_err();
            assert_eq!(r.reason, RejectReason::Stale);
        }
        assert_eq!(s, before);
    }

    #[test]
    fn duplicate_event_ids_are_refused() {
        let mut s = state();
        s.apply(&snapshot("e1", 1, 1)).unwrap();
        let r = s.apply(&snapshot("e1", 2, 3)).unwrap_err();
        assert_eq!(r.reason, RejectReason::Duplicate);
        assert_eq!(s.line_items[0].quantity, 1);
    }

    #[test]
    fn payments_are_kept_by_id_and_deleted_by_id() {
        let mut s = state();
        s.apply(&payment("p1", "payment.created", "pay-1", "10.00", "EUR"))
            .unwrap();
        s.apply(&payment("p2", "payment.created", "pay-2", "5.00", "EUR"))
            .unwrap();
        s.apply(&payment("p3", "payment.updated", "pay-1", "12.00", "EUR"))
            .unwrap();
        assert_eq!(s.payments.len(), 2);
        assert_eq!(s.payments[0].amount.to_string(), "12.00");
        s.apply(&payment("p4", "payment.deleted", "pay-2", "5.00", "EUR"))
            .unwrap();
        s.apply(&payment("p5", "payment.deleted", "unknown", "5.00", "EUR"))
            .unwrap();
        assert_eq!(s.payments.len(), 1);
        s.apply(&payment(
            "p6",
            "payment.written_off",
            "pay-1",
            "12.00",
            "EUR",
        ))
        .unwrap();
        assert_eq!(s.payments[0].kind, PaymentKind::WrittenOff);
    }

    #[test]
    fn a_payment_in_another_currency_is_refused() {
        let mut s = state();
        s.apply(&snapshot("e1", 1, 1)).unwrap();
        let r = s
            .apply(&payment("p1", "payment.created", "pay-1", "10.00", "USD"))
            .unwrap_err();
        assert_eq!(r.reason, RejectReason::CurrencyMismatch);
        assert!(s.payments.is_empty());
    }

    #[test]
    fn cancellation_without_snapshot_clears_lines_and_keeps_the_version() {
        let mut s = state();
        s.apply(&snapshot("e1", 3, 2)).unwrap();
        s.apply(&cancel("c")).unwrap();
        assert!(s.cancelled && s.line_items.is_empty());
        assert_eq!(s.version, Some(3));
        // A later snapshot reinstates the order.
        s.apply(&snapshot("e2", 4, 1)).unwrap();
        assert!(!s.cancelled);
        assert_eq!(s.line_items.len(), 1);
    }

    fn cancel(event_id: &str) -> Event {
        ev(
            json!({"event_id": event_id, "type": "order.cancelled", "order_id": "o1",
                  "occurred_at": "2026-11-22T10:00:00Z"}),
        )
    }

    fn redeem(event_id: &str, redemption_id: &str, line: &str, quantity: u64) -> Event {
        ev(json!({
            "event_id": event_id, "type": "order.redeemed", "order_id": "o1",
            "occurred_at": "2026-11-23T10:00:00Z",
            "redemption": {"redemption_id": redemption_id, "line_item_id": line,
                           "quantity": quantity, "date": "2026-11-23"}
        }))
    }

    #[test]
    fn redemptions_are_kept_by_id_and_never_exceed_the_line() {
        let mut s = state();
        s.apply(&snapshot("e1", 1, 3)).unwrap();
        s.apply(&redeem("r1", "gate-1", "l1", 2)).unwrap();
        assert_eq!(s.redeemed("l1"), 2);
        // Two more would make 4 of 3: refused, naming the quantity.
        let r = s.apply(&redeem("r2", "gate-2", "l1", 2)).unwrap_err();
        assert_eq!(r.reason, RejectReason::OverRedemption);
        assert_eq!(r.field, "redemption.quantity");
        assert!(
            r.message.contains("4 units of line \"l1\""),
            "{}",
            r.message
        );
        assert_eq!(s.redeemed("l1"), 2);
        // The same id replaces its earlier count, so 3 of 3 is fine.
        s.apply(&redeem("r3", "gate-1", "l1", 3)).unwrap();
        assert_eq!(s.redeemed("l1"), 3);
        assert_eq!(s.redemptions.len(), 1);
        // An unknown line is refused.
        let r = s.apply(&redeem("r4", "gate-3", "l9", 1)).unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownLineItem);
        assert_eq!(r.field, "redemption.line_item_id");
    }

    #[test]
    fn a_snapshot_may_leave_fewer_units_than_were_redeemed_and_a_correction_is_taken() {
        let mut s = state();
        s.apply(&snapshot("e1", 1, 3)).unwrap();
        s.apply(&redeem("r1", "gate-1", "l1", 3)).unwrap();
        // The order is reduced to 1 unit: kept, redemptions as they were
        // (the ledger recognises min(redeemed, quantity)).
        s.apply(&snapshot("e2", 2, 1)).unwrap();
        assert_eq!(s.redeemed("l1"), 3);
        // More is refused; a correction down is taken although 2 > 1.
        assert_eq!(
            s.apply(&redeem("r2", "gate-2", "l1", 1))
                .unwrap_err()
                .reason,
            RejectReason::OverRedemption
        );
        s.apply(&redeem("r3", "gate-1", "l1", 2)).unwrap();
        assert_eq!(s.redeemed("l1"), 2);
    }

    #[test]
    fn a_cancelled_order_has_no_line_to_redeem() {
        let mut s = state();
        s.apply(&snapshot("e1", 1, 3)).unwrap();
        s.apply(&cancel("c")).unwrap();
        let r = s.apply(&redeem("r1", "gate-1", "l1", 1)).unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownLineItem);
        assert!(r.message.contains("cancelled"), "{}", r.message);
    }
}
