//! Postings (SPEC 3 and 4): what one registry receives for one event.
//!
//! A registry sees the order's ledger through its own lens: entry types
//! filtered, a ledger code per entry (first matching rule), entries grouped by
//! (entry type, ledger code, description) plus its columns, amounts and
//! quantities netted within a group. [`build`] turns that into posting `n` of
//! (registry, order): the whole grouped ledger (`full`) or its difference from
//! everything posted before (`delta`), with the idempotency key that stays the
//! same across retries, restarts and replays. Pure: no I/O.

use std::collections::HashMap;
use std::collections::hash_map::Entry as Slot;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use foldhash::fast::RandomState;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::events::{Event, EventType, OrderId, Text};
use crate::ledger::{Dims, EntryType, Ledger};
use crate::money::{Currency, DecimalText, write_integer, write_on_scale, write_unsigned};
use crate::registry::{Column, ColumnValue, PostingMode, Registry};

/// The key entries are grouped and netted by. Its texts are shared with
/// the ledger they come from (and with the order's state), never copied.
#[derive(Debug, Clone, Eq, Serialize, Deserialize)]
pub struct GroupKey {
    pub entry_type: EntryType,
    pub ledger_code: Option<Text>,
    pub description: Text,
    /// The registry's group columns, in its `group_by` order, with values.
    pub columns: Columns,
}

/// Equal when each field is equal, as a derived `PartialEq` says; a text
/// or a column list held at one address is equal without its bytes being
/// compared (`Arc<str>`'s `==` compares the bytes even of one allocation).
/// A key and the cursor's key it is netted against often share them: the
/// registry's ledger codes, the ledger's own descriptions, and texts kept
/// from the previous event.
impl PartialEq for GroupKey {
    fn eq(&self, other: &Self) -> bool {
        self.entry_type == other.entry_type
            && same_opt_text(&self.ledger_code, &other.ledger_code)
            && same_text(&self.description, &other.description)
            && same_columns(&self.columns, &other.columns)
    }
}

/// `a == b` of column lists, without comparing the bytes of one list or
/// text.
fn same_columns(a: &Columns, b: &Columns) -> bool {
    Arc::ptr_eq(a, b)
        || a.len() == b.len()
            && a.iter()
                .zip(b.iter())
                .all(|((c, x), (d, y))| c == d && same_opt_text(x, y))
}

/// Hashes the fields in order, as a derived `Hash` does (equal keys hash
/// equally: equality is the fields').
impl Hash for GroupKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.entry_type.hash(h);
        self.ledger_code.hash(h);
        self.description.hash(h);
        self.columns.hash(h);
    }
}

/// `a == b`, without comparing the bytes of one allocation.
fn same_text(a: &Text, b: &Text) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// [`same_text`] of optional texts.
fn same_opt_text(a: &Option<Text>, b: &Option<Text>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => same_text(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A group key's columns and their values. Shared: the groups of one
/// grouping whose values are the same hold one list, and copying a key
/// (a difference, a cursor) copies no list. Stored as a JSON array of
/// `[column, value]` pairs, as a `Vec` is.
pub type Columns = Arc<[(Column, Option<Text>)]>;

/// A group key as entries hold it: shared, so that copying an entry (into
/// a difference, a posting's `cumulative`, a cursor) or dropping one costs
/// one reference count rather than one per text, and a key equal to one
/// posted before is that one (compared by address).
pub type SharedKey = Arc<GroupKey>;

/// A grouped, netted entry. Stored as one flat object (the key's fields,
/// then quantity and amount), and read back field by field through
/// [`GroupedEntryFields`]: serde's `flatten` would first buffer each entry
/// into an intermediate tree, for every entry of every posting the
/// dispatcher and the export read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "GroupedEntryFields")]
pub struct GroupedEntry {
    #[serde(flatten)]
    pub key: SharedKey,
    pub quantity: i64,
    /// Signed: debit positive, credit negative.
    pub amount: Decimal,
}

/// [`GroupedEntry`] as its stored JSON object has it.
#[derive(Deserialize)]
struct GroupedEntryFields {
    entry_type: EntryType,
    ledger_code: Option<Text>,
    description: Text,
    columns: Columns,
    quantity: i64,
    amount: Decimal,
}

impl From<GroupedEntryFields> for GroupedEntry {
    fn from(f: GroupedEntryFields) -> Self {
        Self {
            key: Arc::new(GroupKey {
                entry_type: f.entry_type,
                ledger_code: f.ledger_code,
                description: f.description,
                columns: f.columns,
            }),
            quantity: f.quantity,
            amount: f.amount,
        }
    }
}

impl GroupedEntry {
    fn is_zero(&self) -> bool {
        self.amount.is_zero() && self.quantity == 0
    }
}

/// A group key borrowed from an entry, so grouping makes a key only once
/// per group rather than once per entry. Its columns are read from the
/// entry's dimensions through the registry's `group_by` (the same for
/// every key of one grouping) when hashed or compared, not copied.
struct KeyRef<'a> {
    entry_type: EntryType,
    ledger_code: Option<&'a str>,
    description: &'a str,
    dims: &'a Dims<'a>,
    group_by: &'a [Column],
}

/// Equal when the type, code, description and the value of each group
/// column are equal (keys of one grouping share their `group_by`).
impl PartialEq for KeyRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        // A description is often the same text (a tax rate's, a line's
        // own), a ledger code the same rule's: equal without comparing
        // their bytes.
        let same = |a: &str, b: &str| std::ptr::eq(a, b) || a == b;
        let same_code = match (self.ledger_code, other.ledger_code) {
            (Some(a), Some(b)) => same(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        self.entry_type == other.entry_type
            && same_code
            && same(self.description, other.description)
            && self
                .group_by
                .iter()
                .all(|c| c.of(self.dims) == c.of(other.dims))
    }
}

impl Eq for KeyRef<'_> {}

/// Hashes what tells keys apart cheaply: equal keys hash equally, and a
/// rate is left out (hashing a `Decimal` normalises it, the largest cost
/// of grouping): keys that differ only by rate are told apart by `Eq`.
impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.entry_type.hash(h);
        self.ledger_code.hash(h);
        self.description.hash(h);
        for c in self.group_by {
            match c.of(self.dims) {
                Some(ColumnValue::Text(t)) => t.hash(h),
                Some(ColumnValue::Currency(c)) => c.hash(h),
                Some(ColumnValue::Rate(_)) | None => {}
            }
        }
    }
}

/// The texts of the column values that are not held as text by the ledger
/// (currencies and rates), made once per event ([`group_with`]; once per
/// grouping through [`group`]) and shared by the groups of its groupings.
/// A text equal to one of the groups posted before (a cursor's, offered
/// by [`group_with`]) is that one rather than a new one: the next
/// difference compares it by address, and the column lists holding it
/// can be the cursor's.
#[derive(Default)]
pub struct ValueTexts<'a> {
    made: Vec<(ColumnValue<'static>, Text)>,
    /// Currency and rate texts of the groups posted before, by address.
    offered: [Option<&'a Text>; TEXTS_OFFERED_MAX],
}

/// At most this many texts posted before are offered for reuse (currency
/// and rate texts: an order has one currency and a few rates).
const TEXTS_OFFERED_MAX: usize = 8;

impl<'a> ValueTexts<'a> {
    /// Offers `t`, a currency's or a rate's text posted before, for reuse.
    fn offer(&mut self, t: &'a Text) {
        for slot in &mut self.offered {
            match slot {
                Some(o) if Arc::ptr_eq(o, t) => return,
                Some(_) => {}
                None => {
                    *slot = Some(t);
                    return;
                }
            }
        }
    }

    /// A text of `s`: one offered when equal, else a new one.
    fn offered_or_new(&self, s: &str) -> Text {
        let offered = self.offered.iter().map_while(|o| *o);
        match offered.into_iter().find(|o| ***o == *s) {
            Some(o) => Text::clone(o),
            None => Text::from(s),
        }
    }

    fn text(&mut self, v: ColumnValue<'_>) -> Text {
        Text::clone(self.text_ref(v))
    }

    /// [`ValueTexts::text`], borrowed.
    fn text_ref<'s>(&'s mut self, v: ColumnValue<'s>) -> &'s Text {
        let owned = match v {
            ColumnValue::Text(t) => return t,
            ColumnValue::Currency(c) => ColumnValue::Currency(c),
            ColumnValue::Rate(r) => ColumnValue::Rate(r),
        };
        // A rate met before is usually the very same value (rates are
        // normalised when parsed): its bits are compared before its value.
        let same = |k: &ColumnValue<'_>| match (k, &owned) {
            // Two rates of one scale are equal exactly when their bits
            // are, but for a zero's sign.
            (ColumnValue::Rate(a), ColumnValue::Rate(b)) => {
                a.serialize() == b.serialize() || (a.scale() != b.scale() || a.is_zero()) && a == b
            }
            (k, owned) => k == owned,
        };
        if let Some(i) = self.made.iter().position(|(k, _)| same(k)) {
            return &self.made[i].1;
        }
        let t = match owned {
            // What `Display` writes, without the machinery: a currency's
            // code, a rate normalised.
            ColumnValue::Currency(c) => self.offered_or_new(c.code()),
            ColumnValue::Rate(r) => self.offered_or_new(DecimalText::new(r.normalize()).as_str()),
            ColumnValue::Text(t) => Text::clone(t),
        };
        let i = self.made.len();
        self.made.push((owned, t));
        &self.made[i].1
    }
}

/// The column lists made in one grouping, kept so that a group whose
/// values are those of a list made before shares it: the registry's
/// columns are often the same for many groups (the default `group_by`,
/// the currency alone, for all of them).
struct ColumnLists<'a> {
    /// The [`identity`] of each value of each list kept, `width` (the
    /// number of group columns, at least 1) a list.
    ids: [u128; COLUMN_IDS],
    lists: [Option<Columns>; COLUMN_LISTS_KEPT],
    kept: usize,
    /// The distinct lists of the groups posted before (the cursor's): a
    /// new list that would hold the same texts (by address) is one of
    /// them instead.
    posted: [Option<&'a Columns>; COLUMN_LISTS_KEPT],
    posted_len: usize,
    /// Where the next look among `posted` starts: after the last found
    /// (a grouping meets its lists in the order of the last one).
    posted_next: usize,
}

/// At most this many lists are kept for sharing in one grouping, and
/// their values take at most [`COLUMN_IDS`]; groups past them get lists
/// of their own (with the same content as a shared one would have).
const COLUMN_LISTS_KEPT: usize = 16;
const COLUMN_IDS: usize = 64;
/// A `group_by` names each column at most once (`Column::ALL`).
const GROUP_COLUMNS_MAX: usize = Column::ALL.len();

/// What tells a column value apart, cheaply: the same for two values only
/// if they are equal. A text by its address (equal texts at two addresses
/// differ here: their groups get a list each), a currency by its code, a
/// rate by its bits; 0 for no value. The low two bits say which: a rate's
/// low 16 bits are zero (its flags' unused half).
fn identity(v: Option<ColumnValue<'_>>) -> u128 {
    match v {
        None => 0,
        Some(ColumnValue::Text(t)) => ((Arc::as_ptr(t).cast::<u8>().addr() as u128) << 2) | 1,
        Some(ColumnValue::Currency(c)) => (u128::from(c.as_u32()) << 2) | 2,
        Some(ColumnValue::Rate(r)) => u128::from_le_bytes(r.serialize()) | 3,
    }
}

impl<'a> ColumnLists<'a> {
    fn new() -> Self {
        Self {
            ids: [0; COLUMN_IDS],
            lists: [const { None }; COLUMN_LISTS_KEPT],
            kept: 0,
            posted: [None; COLUMN_LISTS_KEPT],
            posted_len: 0,
            posted_next: 0,
        }
    }

    /// Keeps the distinct lists of `posted` (the groups posted before)
    /// for reuse, and offers their currency and rate texts to `texts`.
    fn keep_posted(&mut self, posted: &'a [GroupedEntry], texts: &mut ValueTexts<'a>) {
        let mut n = 0;
        for g in posted {
            let list = &g.key.columns;
            if n == COLUMN_LISTS_KEPT {
                break;
            }
            // Neighbours often share a list: the last one is looked at first.
            let seen = self.posted[..n]
                .iter()
                .rev()
                .any(|p| p.is_some_and(|p| Arc::ptr_eq(p, list)));
            if seen {
                continue;
            }
            self.posted[n] = Some(list);
            n += 1;
            for (c, v) in list.iter() {
                if let (Column::Currency | Column::TaxRate, Some(t)) = (c, v) {
                    texts.offer(t);
                }
            }
        }
        self.posted_len = n;
    }

    /// The columns `group_by` of an entry with dimensions `dims`: a list
    /// kept before when its values are the same ones, else a posted list
    /// holding the same texts, else a new list.
    fn of(&mut self, group_by: &[Column], dims: &Dims<'_>, texts: &mut ValueTexts<'a>) -> Columns {
        let make = |texts: &mut ValueTexts| -> Columns {
            group_by
                .iter()
                .map(|c| (*c, c.of(dims).map(|v| texts.text(v))))
                .collect()
        };
        if group_by.len() > GROUP_COLUMNS_MAX {
            // Not a validated registry's: nothing is shared.
            return make(texts);
        }
        let width = group_by.len().max(1);
        let mut ids = [0u128; GROUP_COLUMNS_MAX];
        for (id, c) in ids.iter_mut().zip(group_by) {
            *id = identity(c.of(dims));
        }
        let ids = &ids[..width];
        let kept = self
            .ids
            .chunks_exact(width)
            .zip(&self.lists)
            .take(self.kept);
        for (kept_ids, list) in kept {
            if let (true, Some(list)) = (kept_ids == ids, list) {
                return Columns::clone(list);
            }
        }
        let list = match self.posted_with(group_by, dims, texts) {
            Some(list) => list,
            None => make(texts),
        };
        let at = self.kept * width;
        if self.kept < COLUMN_LISTS_KEPT && at + width <= COLUMN_IDS {
            self.ids[at..at + width].copy_from_slice(ids);
            self.lists[self.kept] = Some(Columns::clone(&list));
            self.kept += 1;
        }
        list
    }
}

impl<'a> ColumnLists<'a> {
    /// The posted list holding the texts (by address) that the columns
    /// `group_by` of `dims` have (`texts` gives those of currencies and
    /// rates), if any. `group_by` is at most [`GROUP_COLUMNS_MAX`] long.
    fn posted_with(
        &mut self,
        group_by: &[Column],
        dims: &Dims<'_>,
        texts: &mut ValueTexts<'a>,
    ) -> Option<Columns> {
        let n = self.posted_len;
        if n == 0 {
            return None;
        }
        let addr = |t: &Text| Arc::as_ptr(t).cast::<u8>().addr();
        let mut addrs = [0usize; GROUP_COLUMNS_MAX];
        for (a, c) in addrs.iter_mut().zip(group_by) {
            *a = c.of(dims).map_or(0, |v| addr(texts.text_ref(v)));
        }
        let addrs = &addrs[..group_by.len()];
        let same = |list: &Columns| {
            list.len() == addrs.len()
                && list
                    .iter()
                    .zip(group_by.iter().zip(addrs))
                    .all(|((c, t), (d, a))| c == d && t.as_ref().map_or(0, addr) == *a)
        };
        let mut i = self.posted_next;
        for _ in 0..n {
            if i >= n {
                i = 0;
            }
            if let Some(list) = self.posted[i].filter(|l| same(l)) {
                self.posted_next = i + 1;
                return Some(Columns::clone(list));
            }
            i += 1;
        }
        None
    }
}

/// Ledgers of at most this many entries are grouped by comparing each key
/// with the groups' keys so far rather than through a hash map, which
/// would cost a table and a hash per entry for an order's dozen entries.
const GROUP_SCAN_MAX_ENTRIES: usize = 32;

/// Groups a ledger as `registry` sees it. Groups keep the order in which
/// they first appear, which follows the ledger's order (type, then source).
pub fn group(ledger: &Ledger, registry: &Registry) -> Vec<GroupedEntry> {
    group_with(ledger, registry, &mut ValueTexts::default(), &[])
}

/// [`group`], taking the texts of currencies and rates from `texts` (made
/// there when met for the first time): the groupings of one event share
/// them. A column list or a currency's or rate's text equal to one of
/// `posted` (the registry's cursor: the groups posted before) is that one,
/// so the difference from `posted` compares them by address.
pub fn group_with<'a>(
    ledger: &Ledger,
    registry: &Registry,
    texts: &mut ValueTexts<'a>,
    posted: &'a [GroupedEntry],
) -> Vec<GroupedEntry> {
    let mut out: Vec<GroupedEntry> = Vec::with_capacity(ledger.entries.len());
    // The key of each group in `out`, borrowed from its first entry.
    let mut keys: Vec<KeyRef<'_>> = Vec::with_capacity(ledger.entries.len());
    let mut index: Option<HashMap<KeyRef<'_>, usize, RandomState>> = (ledger.entries.len()
        > GROUP_SCAN_MAX_ENTRIES)
        .then(|| HashMap::with_capacity_and_hasher(ledger.entries.len(), RandomState::default()));
    let mut lists = ColumnLists::new();
    lists.keep_posted(posted, texts);
    let mut posted_keys = PostedKeys { posted, next: 0 };
    for e in &ledger.entries {
        if !registry.includes(e.entry_type) {
            continue;
        }
        let code = registry.code_rule(e.entry_type, &e.dims).map(|r| &r.code);
        let key = KeyRef {
            entry_type: e.entry_type,
            ledger_code: code.map(|c| &**c),
            description: &e.description,
            dims: &e.dims,
            group_by: &registry.group_by,
        };
        let found = match &mut index {
            // One hash per entry: the slot found is the one filled.
            Some(index) => match index.entry(key) {
                Slot::Occupied(slot) => Some(*slot.get()),
                Slot::Vacant(slot) => {
                    slot.insert(out.len());
                    None
                }
            },
            // A scan of the keys so far, most of them of another type.
            None => {
                let found = keys
                    .iter()
                    .position(|k| k.entry_type == key.entry_type && *k == key);
                if found.is_none() {
                    keys.push(key);
                }
                found
            }
        };
        match found {
            Some(i) => {
                out[i].amount += e.amount;
                out[i].quantity += e.quantity;
            }
            None => {
                let posted_key = posted_keys.find(e.entry_type, code, &e.description, |list| {
                    same_values(list, &registry.group_by, &e.dims, texts)
                });
                let key = match posted_key {
                    Some(key) => SharedKey::clone(key),
                    None => Arc::new(GroupKey {
                        entry_type: e.entry_type,
                        ledger_code: code.cloned(),
                        description: Text::clone(&e.description),
                        columns: lists.of(&registry.group_by, &e.dims, texts),
                    }),
                };
                out.push(GroupedEntry {
                    key,
                    quantity: e.quantity,
                    amount: e.amount,
                });
            }
        }
    }
    out.retain(|g| !g.is_zero());
    out
}

/// The keys of the groups posted before (a cursor's), looked up by value
/// so that a group equal to a posted one shares its key.
struct PostedKeys<'a> {
    posted: &'a [GroupedEntry],
    /// Where the next look starts: after the last key found (a grouping
    /// meets its groups in the order of the last one).
    next: usize,
}

impl<'a> PostedKeys<'a> {
    /// The posted key equal to the key of these parts, if any: its
    /// columns are those `columns` says are the same.
    fn find(
        &mut self,
        entry_type: EntryType,
        ledger_code: Option<&Text>,
        description: &Text,
        mut columns: impl FnMut(&Columns) -> bool,
    ) -> Option<&'a SharedKey> {
        let n = self.posted.len();
        let mut i = self.next;
        for _ in 0..n {
            if i >= n {
                i = 0;
            }
            let k = &self.posted[i].key;
            if k.entry_type == entry_type
                && same_text(&k.description, description)
                && match (&k.ledger_code, ledger_code) {
                    (Some(a), Some(b)) => same_text(a, b),
                    (a, b) => a.is_none() && b.is_none(),
                }
                && columns(&k.columns)
            {
                self.next = i + 1;
                return Some(k);
            }
            i += 1;
        }
        None
    }
}

/// True when `list` is the list of columns `group_by` with the values of
/// `dims` (as [`ColumnLists::of`] would make it): each column in its
/// place, each value the same text (currencies' and rates' texts from
/// `texts`).
fn same_values(
    list: &Columns,
    group_by: &[Column],
    dims: &Dims<'_>,
    texts: &mut ValueTexts<'_>,
) -> bool {
    list.len() == group_by.len()
        && list.iter().zip(group_by).all(|((c, v), d)| {
            c == d
                && match (d.of(dims), v) {
                    (None, None) => true,
                    (Some(ColumnValue::Text(t)), Some(v)) => same_text(t, v),
                    (Some(value), Some(v)) => same_text(texts.text_ref(value), v),
                    _ => false,
                }
        })
}

/// `current − posted` per group key: current groups in their order, then
/// groups only posted before (reversals), each entry type in table order.
/// Zero differences are dropped. `None` when a difference overflows (only
/// possible when `posted`, read back from LEDGER, is out of range).
pub fn difference(current: &[GroupedEntry], posted: &[GroupedEntry]) -> Option<Vec<GroupedEntry>> {
    let mut out: Vec<GroupedEntry> = Vec::with_capacity(current.len());
    let change = |c: &GroupedEntry, quantity: i64, amount: Decimal| {
        // Unchanged groups are dropped before their key is copied.
        (quantity != 0 || !amount.is_zero()).then(|| GroupedEntry {
            key: c.key.clone(),
            quantity,
            amount,
        })
    };
    // The usual case, an update that changed amounts only: the same keys
    // in the same order, so each group is netted against its namesake
    // without a look-up (and nothing is reversed).
    if current.len() == posted.len() && current.iter().zip(posted).all(|(c, p)| c.key == p.key) {
        for (c, p) in current.iter().zip(posted) {
            let (quantity, amount) = (
                c.quantity.checked_sub(p.quantity)?,
                c.amount.checked_sub(p.amount)?,
            );
            out.extend(change(c, quantity, amount));
        }
        out.sort_by_key(|g| g.key.entry_type);
        return Some(out);
    }
    // Key → index of its last posted entry (the one a repeated key, only
    // in a corrupt stored posting, is netted against).
    let mut posted_index: HashMap<&SharedKey, usize, RandomState> =
        HashMap::with_capacity_and_hasher(posted.len(), RandomState::default());
    posted_index.extend(posted.iter().enumerate().map(|(i, g)| (&g.key, i)));
    // Which of those a current group has: the rest are reversed below.
    let mut in_current = vec![false; posted.len()];
    for c in current {
        let (quantity, amount) = match posted_index.get(&c.key) {
            Some(&i) => {
                in_current[i] = true;
                let p = &posted[i];
                (
                    c.quantity.checked_sub(p.quantity)?,
                    c.amount.checked_sub(p.amount)?,
                )
            }
            None => (c.quantity, c.amount),
        };
        out.extend(change(c, quantity, amount));
    }
    for p in posted {
        // Every posted entry is in the index, under its key's last index.
        if posted_index.get(&p.key).is_some_and(|&i| in_current[i]) {
            continue;
        }
        out.push(GroupedEntry {
            key: p.key.clone(),
            quantity: p.quantity.checked_neg()?,
            amount: -p.amount,
        });
    }
    out.retain(|g| !g.is_zero());
    // Stable: within a type, first appearance order is kept.
    out.sort_by_key(|g| g.key.entry_type);
    Some(out)
}

/// The idempotency key of posting `seq` of (registry, order): UUIDv5 in the
/// URL namespace of `ledgerline:<R>:<O>:<n>` (SPEC 4).
///
/// `Uuid::new_v5`'s value (the tests hold the two equal), hashed with the
/// `sha1` crate, which uses the CPU's SHA instructions where it has them:
/// with `uuid`'s portable SHA-1, an event's three keys were 6 % of the
/// engine's instructions.
pub fn idempotency_key(registry_id: &str, order_id: &str, seq: u64) -> Uuid {
    use sha1::{Digest, Sha1};
    // The name's bytes as `format!("ledgerline:{registry_id}:{order_id}:{seq}")`
    // writes them, without the formatting machinery, after the namespace's.
    let mut digits = Vec::with_capacity(20);
    write_unsigned(&mut digits, seq);
    let mut sha = Sha1::new();
    sha.update(Uuid::NAMESPACE_URL.as_bytes());
    sha.update(b"ledgerline:");
    sha.update(registry_id.as_bytes());
    sha.update(b":");
    sha.update(order_id.as_bytes());
    sha.update(b":");
    sha.update(&digits);
    let digest = sha.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// What a registry has been sent for an order so far.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// The last posting's number (0: none yet).
    pub seq: u64,
    /// Σ of every posting sent: in `full` mode the last ledger sent, in
    /// `delta` mode the running sum (equal by construction).
    pub posted: Vec<GroupedEntry>,
}

/// One posting: a stored record in LEDGER and, with registry_data, the
/// request body the dispatcher sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub registry_id: String,
    pub order_id: OrderId,
    pub seq: u64,
    pub idempotency_key: Uuid,
    pub event_id: String,
    pub event_type: EventType,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub mode: PostingMode,
    pub currency: Option<Currency>,
    /// The entry types were filtered: the posting may legitimately not balance.
    pub filtered: bool,
    /// The entries this posting sends.
    pub entries: Vec<GroupedEntry>,
    /// Everything posted to this registry for this order, including this
    /// posting: enough to build the next one without replaying history.
    pub cumulative: Vec<GroupedEntry>,
}

/// Largest posting (as stored JSON) ledgerline produces. A posting is
/// stored on LEDGER with its cumulative entries, and NATS takes 1 MB
/// messages by default: a bigger posting could never be stored or sent, so
/// the event that would make it is rejected (`too_large`) instead.
pub const MAX_POSTING_BYTES: usize = 960 * 1024;

/// Refuses a posting that would be over [`MAX_POSTING_BYTES`] as JSON.
pub fn check_size(posting: &Posting) -> Result<(), crate::events::Rejection> {
    // Cheap bound first: an entry is at most its text fields (escaped
    // worst case 6 bytes a character) plus fixed room for numbers and keys.
    let per_entry = 6 * (crate::events::TEXT_MAX_CHARS * 3 + 256) + 512;
    let entries = posting.entries.len() + posting.cumulative.len();
    if entries.saturating_mul(per_entry) <= MAX_POSTING_BYTES {
        return Ok(());
    }
    let size = serde_json::to_vec(posting).map_or(usize::MAX, |b| b.len());
    if size <= MAX_POSTING_BYTES {
        return Ok(());
    }
    Err(crate::events::Rejection::new(
        crate::events::RejectReason::TooLarge,
        "",
        format!(
            "the posting for registry {} would be {size} bytes (with {} entries), over the \
             {MAX_POSTING_BYTES} bytes a posting may take; the event is not applied \
             (group the registry's entries more coarsely or split the order)",
            posting.registry_id,
            posting.entries.len()
        ),
    ))
}

/// A posting of an unfiltered registry that does not balance: a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("posting {seq} of registry {registry_id} for order {order_id} does not balance: Σ = {sum}")]
pub struct UnbalancedPosting {
    pub registry_id: String,
    pub order_id: String,
    pub seq: u64,
    pub sum: Decimal,
}

/// Why no posting could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The posting would not balance: a bug, never posted.
    #[error(transparent)]
    Unbalanced(#[from] UnbalancedPosting),
    /// What was posted before (the cursor, read back from a stored posting)
    /// cannot be continued: its seq is the last one, or its totals are so
    /// far out of range that the difference overflows. Only a corrupt
    /// stored posting can do this.
    #[error(
        "posting after seq {seq} of registry {registry_id} for order {order_id}: \
         the previous posting is out of range ({why})"
    )]
    CursorOutOfRange {
        registry_id: String,
        order_id: String,
        seq: u64,
        why: &'static str,
    },
}

/// Builds the next posting for `registry` after `event`, from the order's
/// current `ledger` and what was posted before (`cursor`). The posting's
/// `cumulative` is the cursor to keep after it ([`Posting::cursor`]).
pub fn build(
    registry: &Registry,
    event: &Event,
    ledger: &Ledger,
    cursor: &Cursor,
) -> Result<Posting, BuildError> {
    build_grouped(registry, event, ledger, cursor, group(ledger, registry))
}

/// True when `a` and `b` group any ledger alike: [`group`] reads nothing
/// else of a registry than its entry types, ledger code rules and group
/// columns.
pub fn same_grouping(a: &Registry, b: &Registry) -> bool {
    a.group_by == b.group_by && a.entry_types == b.entry_types && a.ledger_codes == b.ledger_codes
}

/// [`build`] with `current`, the ledger as `registry` groups it
/// (`group(ledger, registry)`), already made: registries that group alike
/// ([`same_grouping`]) share one grouping.
pub fn build_grouped(
    registry: &Registry,
    event: &Event,
    ledger: &Ledger,
    cursor: &Cursor,
    current: Vec<GroupedEntry>,
) -> Result<Posting, BuildError> {
    let out_of_range = |why| BuildError::CursorOutOfRange {
        registry_id: registry.id().to_owned(),
        order_id: event.order_id.to_string(),
        seq: cursor.seq,
        why,
    };
    let entries = match registry.config.posting_mode {
        PostingMode::Full => current.clone(),
        PostingMode::Delta => difference(&current, &cursor.posted)
            .ok_or_else(|| out_of_range("the difference from it overflows"))?,
    };
    let seq = cursor
        .seq
        .checked_add(1)
        .ok_or_else(|| out_of_range("its seq is the last one"))?;
    let filtered = !registry.includes_all_entry_types();
    if !filtered {
        let sum = entries
            .iter()
            .try_fold(Decimal::ZERO, |s, e| s.checked_add(e.amount))
            .ok_or_else(|| out_of_range("the sum of the difference overflows"))?;
        if !sum.is_zero() {
            return Err(UnbalancedPosting {
                registry_id: registry.id().to_owned(),
                order_id: event.order_id.to_string(),
                seq,
                sum,
            }
            .into());
        }
    }
    Ok(Posting {
        registry_id: registry.id().to_owned(),
        order_id: event.order_id.clone(),
        seq,
        idempotency_key: idempotency_key(registry.id(), event.order_id.as_str(), seq),
        event_id: event.event_id.clone(),
        event_type: event.event_type,
        occurred_at: event.occurred_at,
        mode: registry.config.posting_mode,
        currency: ledger.currency,
        filtered,
        entries,
        cumulative: current,
    })
}

impl Posting {
    /// Σ of signed amounts: zero when Σdebit = Σcredit (Σdebit − Σcredit,
    /// from [`Posting::debit_credit`]).
    pub fn sum(&self) -> Decimal {
        let (d, c) = self.debit_credit();
        d - c
    }

    /// (Σdebit, Σcredit). Saturating at `Decimal::MAX`: a posting read back
    /// from LEDGER is not bounded like one the engine builds, and its
    /// totals must not panic `export` or `verify`. Both totals of the
    /// engine's postings are far below the limit.
    pub fn debit_credit(&self) -> (Decimal, Decimal) {
        self.entries
            .iter()
            .fold((Decimal::ZERO, Decimal::ZERO), |(d, c), e| {
                (
                    d.saturating_add(e.amount.max(Decimal::ZERO)),
                    c.saturating_add((-e.amount).max(Decimal::ZERO)),
                )
            })
    }

    /// The cursor this posting leaves behind.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            seq: self.seq,
            posted: self.cumulative.clone(),
        }
    }

    /// The request body (SPEC 4), with the registry_data the previous
    /// posting's response returned (`{}` for the first). Serialise it with
    /// `serde_json::to_vec` for the exact bytes sent.
    pub fn body<'a>(&'a self, registry_data: &'a Value) -> Body<'a> {
        Body {
            order_id: &self.order_id,
            registry_data,
            idempotency_key: self.idempotency_key,
            ledger_entries: WireEntries(self),
        }
    }

    /// The exact bytes of the request body: what
    /// `serde_json::to_vec(&self.body(registry_data))` writes (the tests
    /// hold the two equal), written straight into one buffer sized up
    /// front, each text escaped as serde_json escapes it. The dispatcher
    /// sends these; [`Posting::body`] is the same body as a value to embed
    /// in other documents.
    pub fn body_json(&self, registry_data: &Value) -> Result<Vec<u8>, serde_json::Error> {
        let mut out =
            Vec::with_capacity(BODY_BYTES_FIXED + BODY_BYTES_PER_ENTRY * self.entries.len());
        out.extend_from_slice(b"{\"order_id\":\"");
        json_escaped(&mut out, self.order_id.as_str());
        out.extend_from_slice(b"\",\"registry_data\":");
        match registry_data {
            // A first posting's (the bench's): what serde_json writes.
            Value::Null => out.extend_from_slice(b"null"),
            data => serde_json::to_writer(&mut out, data)?,
        }
        out.extend_from_slice(b",\"idempotency_key\":\"");
        let mut uuid = Uuid::encode_buffer();
        let uuid = self.idempotency_key.hyphenated().encode_lower(&mut uuid);
        out.extend_from_slice(uuid.as_bytes());
        out.extend_from_slice(b"\",\"ledger_entries\":[");
        // Where the previous entry's code and columns were written: an
        // entry with the same code and list (by address: the groups of a
        // grouping share them) copies those bytes.
        let mut previous: Option<(&GroupKey, std::ops::Range<usize>)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match &previous {
                Some((p, written)) if same_code_and_columns(p, &e.key) => {
                    out.extend_from_within(written.clone());
                }
                _ => {
                    let start = out.len();
                    out.extend_from_slice(b"{\"ledger_code\":");
                    json_opt_str(&mut out, e.key.ledger_code.as_deref());
                    for (col, v) in e.key.columns.iter() {
                        out.extend_from_slice(column_key(*col));
                        json_opt_str(&mut out, v.as_deref());
                    }
                    previous = Some((&e.key, start..out.len()));
                }
            }
            out.extend_from_slice(b",\"quantity\":");
            write_integer(&mut out, e.quantity);
            let (debit, credit) = signed_parts(e.amount);
            // The side an entry is not on is a zero: written with the
            // keys around it in one copy.
            match self.zero_text(debit) {
                Some(zero) => out.extend_from_slice(zero.debit_then_credit),
                None => {
                    out.extend_from_slice(b",\"debit\":\"");
                    self.write_on_scale(&mut out, debit);
                    out.extend_from_slice(b"\",\"credit\":\"");
                }
            }
            match self.zero_text(credit) {
                Some(zero) => out.extend_from_slice(zero.credit_then_description),
                None => {
                    self.write_on_scale(&mut out, credit);
                    out.extend_from_slice(b"\",\"description\":\"");
                }
            }
            json_escaped(&mut out, &e.key.description);
            out.extend_from_slice(b"\"}");
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }

    /// The posting as its stored JSON object has it, without the braces
    /// (`"registry_id":…,"cumulative":[…]`): the bytes serde writes for
    /// these fields (the tests hold `{` + them + `}` equal to
    /// `serde_json::to_vec(self)`), written straight into `out`, each text
    /// escaped as serde_json escapes it. The aggregator stores every
    /// posting through this ([`crate::records::StoredPostingRef::to_json`]),
    /// its cumulative entries included: serde's `flatten` and its map
    /// serialiser cost more than the rest of the event's work.
    ///
    /// Fails only when `occurred_at` has no RFC 3339 form (a year outside
    /// 0–9999, an offset with seconds), as serde's `rfc3339` fails; every
    /// parsed event's has one.
    pub fn write_json_fields(&self, out: &mut Vec<u8>) -> Result<(), time::error::Format> {
        out.extend_from_slice(b"\"registry_id\":");
        json_str(out, &self.registry_id);
        out.extend_from_slice(b",\"order_id\":");
        json_str(out, self.order_id.as_str());
        out.extend_from_slice(b",\"seq\":");
        write_unsigned(out, self.seq);
        out.extend_from_slice(b",\"idempotency_key\":\"");
        let mut uuid = Uuid::encode_buffer();
        let uuid = self.idempotency_key.hyphenated().encode_lower(&mut uuid);
        out.extend_from_slice(uuid.as_bytes());
        out.extend_from_slice(b"\",\"event_id\":");
        json_str(out, &self.event_id);
        out.extend_from_slice(b",\"event_type\":\"");
        out.extend_from_slice(self.event_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"occurred_at\":\"");
        self.occurred_at
            .format_into(out, &time::format_description::well_known::Rfc3339)?;
        out.extend_from_slice(match self.mode {
            PostingMode::Delta => b"\",\"mode\":\"delta\",\"currency\":",
            PostingMode::Full => b"\",\"mode\":\"full\",\"currency\":",
        });
        match self.currency {
            Some(c) => json_str(out, c.code()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(if self.filtered {
            b",\"filtered\":true,\"entries\":"
        } else {
            b",\"filtered\":false,\"entries\":"
        });
        write_grouped_entries(out, &self.entries);
        out.extend_from_slice(b",\"cumulative\":");
        write_grouped_entries(out, &self.cumulative);
        Ok(())
    }

    /// Room for [`Posting::write_json_fields`]' bytes of a typical posting
    /// (more is grown into, as a `Vec` does).
    pub fn json_capacity(&self) -> usize {
        STORED_BYTES_FIXED + STORED_BYTES_PER_ENTRY * (self.entries.len() + self.cumulative.len())
    }

    /// The bytes around a zero `amount` in a wire entry, when it is one and
    /// the currency's zero has a constant text (`write_on_scale`'s own:
    /// `0` and up to four zeros after the point, unsigned).
    fn zero_text(&self, amount: Decimal) -> Option<&'static ZeroText> {
        let minor_units = self.currency?.minor_units();
        ZERO_TEXTS
            .get(minor_units as usize)
            .filter(|_| amount.is_zero())
    }

    /// The debit and credit the wire shows for `e`, on the currency's scale.
    fn wire_amounts(&self, e: &GroupedEntry) -> (Decimal, Decimal) {
        let (debit, credit) = signed_parts(e.amount);
        (self.on_scale(debit), self.on_scale(credit))
    }

    /// Appends what `self.format(amount)` returns, without a `String`.
    fn write_on_scale(&self, out: &mut Vec<u8>, amount: Decimal) {
        match self.currency {
            Some(c) => write_on_scale(out, amount, c.minor_units()),
            None => out.extend_from_slice(DecimalText::new(amount).as_bytes()),
        }
    }

    /// An amount with the currency's scale (entries exist only with one).
    pub fn format(&self, amount: Decimal) -> String {
        self.on_scale(amount).to_string()
    }

    /// Appends what [`Posting::format`] returns to `out`, without a
    /// `String`.
    pub fn write_amount(&self, out: &mut Vec<u8>, amount: Decimal) {
        match self.currency {
            Some(c) => crate::money::write_on_scale(out, amount, c.minor_units()),
            None => {
                use std::io::Write as _;
                // Writing into a Vec cannot fail.
                let _ = write!(out, "{amount}");
            }
        }
    }

    /// The amount [`Posting::format`] prints, as a `Decimal` to write
    /// without a `String`.
    fn on_scale(&self, amount: Decimal) -> Decimal {
        match self.currency {
            Some(c) => c.on_scale(amount),
            None => amount,
        }
    }
}

/// The wire body of a posting, serialised in the contract's key order:
/// `order_id`, `registry_data`, `idempotency_key`, `ledger_entries`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Body<'a> {
    pub order_id: &'a OrderId,
    pub registry_data: &'a Value,
    pub idempotency_key: Uuid,
    pub ledger_entries: WireEntries<'a>,
}

/// A posting's entries as the wire shows them: `ledger_code`, the group
/// columns in `group_by` order, `quantity`, `debit`, `credit`, `description`.
#[derive(Debug, Clone, Copy)]
pub struct WireEntries<'a>(&'a Posting);

impl Serialize for WireEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let p = self.0;
        let mut seq = s.serialize_seq(Some(p.entries.len()))?;
        for e in &p.entries {
            seq.serialize_element(&WireEntry {
                posting: p,
                entry: e,
            })?;
        }
        seq.end()
    }
}

struct WireEntry<'a> {
    posting: &'a Posting,
    entry: &'a GroupedEntry,
}

impl Serialize for WireEntry<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.entry;
        let mut m = s.serialize_map(Some(5 + e.key.columns.len()))?;
        m.serialize_entry("ledger_code", &e.key.ledger_code)?;
        for (col, v) in e.key.columns.iter() {
            m.serialize_entry(col.as_str(), v)?;
        }
        m.serialize_entry("quantity", &e.quantity)?;
        let (debit, credit) = self.posting.wire_amounts(e);
        m.serialize_entry("debit", &AsText(debit))?;
        m.serialize_entry("credit", &AsText(credit))?;
        m.serialize_entry("description", &e.key.description)?;
        m.end()
    }
}

/// A decimal serialised as the JSON string of its `Display` (the text of
/// `to_string()`), rendered on the stack.
struct AsText(Decimal);

impl Serialize for AsText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(DecimalText::new(self.0).as_str())
    }
}

/// True when `a` and `b` hold their ledger code and column list at one
/// address each (or have no code): their wire bytes up to the quantity
/// are the same.
fn same_code_and_columns(a: &GroupKey, b: &GroupKey) -> bool {
    let same_code = match (&a.ledger_code, &b.ledger_code) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        (None, None) => true,
        _ => false,
    };
    same_code && Arc::ptr_eq(&a.columns, &b.columns)
}

/// (debit, credit) of a signed amount: `amount.max(0)` and
/// `(-amount).max(0)`, each the amount itself or `Decimal::ZERO` (`max`
/// keeps `self` unless it is less: a negative zero stays as it is).
fn signed_parts(amount: Decimal) -> (Decimal, Decimal) {
    let below_zero = |d: Decimal| d.is_sign_negative() && !d.is_zero();
    let part = |d: Decimal| if below_zero(d) { Decimal::ZERO } else { d };
    (part(amount), part(-amount))
}

/// A zero amount of a currency with `minor_units` ≤ 4 (the index of
/// [`ZERO_TEXTS`]) in a wire entry, with the keys around it.
struct ZeroText {
    /// `,"debit":"0.00","credit":"`.
    debit_then_credit: &'static [u8],
    /// `0.00","description":"`.
    credit_then_description: &'static [u8],
}

const ZERO_TEXTS: [ZeroText; 5] = [
    ZeroText {
        debit_then_credit: b",\"debit\":\"0\",\"credit\":\"",
        credit_then_description: b"0\",\"description\":\"",
    },
    ZeroText {
        debit_then_credit: b",\"debit\":\"0.0\",\"credit\":\"",
        credit_then_description: b"0.0\",\"description\":\"",
    },
    ZeroText {
        debit_then_credit: b",\"debit\":\"0.00\",\"credit\":\"",
        credit_then_description: b"0.00\",\"description\":\"",
    },
    ZeroText {
        debit_then_credit: b",\"debit\":\"0.000\",\"credit\":\"",
        credit_then_description: b"0.000\",\"description\":\"",
    },
    ZeroText {
        debit_then_credit: b",\"debit\":\"0.0000\",\"credit\":\"",
        credit_then_description: b"0.0000\",\"description\":\"",
    },
];

/// A column's key in a wire entry, with the comma before it and the colon
/// after: `,"currency":` (the names need no escaping).
fn column_key(c: Column) -> &'static [u8] {
    match c {
        Column::Currency => b",\"currency\":",
        Column::Channel => b",\"channel\":",
        Column::ProductId => b",\"product_id\":",
        Column::OptionId => b",\"option_id\":",
        Column::UnitType => b",\"unit_type\":",
        Column::TaxRate => b",\"tax_rate\":",
        Column::PaymentMethod => b",\"payment_method\":",
        Column::FeeKind => b",\"fee_kind\":",
    }
}

/// Appends `entries` as the JSON array serde writes for them: each a flat
/// object of the key's fields (`entry_type`, `ledger_code`, `description`,
/// `columns` as `[column, value]` pairs), then `quantity` and `amount` (its
/// `Display` text as a string, as rust_decimal serialises it).
fn write_grouped_entries(out: &mut Vec<u8>, entries: &[GroupedEntry]) {
    out.push(b'[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"entry_type\":\"");
        out.extend_from_slice(e.key.entry_type.as_str().as_bytes());
        out.extend_from_slice(b"\",\"ledger_code\":");
        json_opt_str(out, e.key.ledger_code.as_deref());
        out.extend_from_slice(b",\"description\":");
        json_str(out, &e.key.description);
        out.extend_from_slice(b",\"columns\":[");
        for (j, (col, v)) in e.key.columns.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"[\"");
            out.extend_from_slice(col.as_str().as_bytes());
            out.extend_from_slice(b"\",");
            json_opt_str(out, v.as_deref());
            out.push(b']');
        }
        out.extend_from_slice(b"],\"quantity\":");
        write_integer(out, e.quantity);
        out.extend_from_slice(b",\"amount\":\"");
        out.extend_from_slice(DecimalText::new(e.amount).as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.push(b']');
}

/// Room for a stored posting's own fields (ids, key, timestamp, flags).
const STORED_BYTES_FIXED: usize = 384;
/// Room for one typical stored entry (keys, columns, amount, description).
const STORED_BYTES_PER_ENTRY: usize = 160;

/// Room for a body's order id, registry_data `{}` and idempotency key.
const BODY_BYTES_FIXED: usize = 256;
/// Room for one typical wire entry (keys, amounts, a description).
const BODY_BYTES_PER_ENTRY: usize = 192;

/// `s` as a JSON string, escaped exactly as serde_json escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    json_escaped(out, s);
    out.push(b'"');
}

/// The inside of the JSON string of `s` (no quotes), escaped exactly as
/// serde_json escapes it: `"` and `\` with a backslash, `\b \f \n \r \t`
/// by name, every other control character as `\u00xx` (lower-case hex),
/// the rest as it is. No `reserve`: a body is sized up front.
#[inline]
fn json_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if needs_escape(bytes) {
        escape(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
}

/// [`json_escaped`] of a text that has a byte to escape: rare, kept out
/// of line so the common path stays small.
#[cold]
#[inline(never)]
fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let named: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(named);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// True when a byte of `bytes` must be escaped in a JSON string (a control
/// character, `"` or `\`), looked at eight bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    use super::swar::{has_zero, splat};
    super::swar::any(
        bytes,
        |w| has_zero(w & splat(0xe0)) || has_zero(w ^ splat(b'"')) || has_zero(w ^ splat(b'\\')),
        |b| b < 0x20 || b == b'"' || b == b'\\',
    )
}

/// `s` as a JSON string, or `null`.
fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_uuid_v5_of_the_documented_name() {
        let k = idempotency_key("xero-eu", "o-1", 3);
        assert_eq!(k.get_version_num(), 5);
        assert_eq!(
            k,
            Uuid::new_v5(&Uuid::NAMESPACE_URL, b"ledgerline:xero-eu:o-1:3")
        );
        assert_ne!(k, idempotency_key("xero-eu", "o-1", 4));
        for seq in [0, 1, 9, 10, 1234, u64::MAX] {
            let name = format!("ledgerline:r-é:o/1 \"x\":{seq}");
            assert_eq!(
                idempotency_key("r-é", "o/1 \"x\"", seq),
                Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
            );
        }
        // Names around the stack buffer's size (written on the heap past it).
        for len in [0, 1, 60, 80, 90, 91, 92, 93, 120, 200, 1000] {
            let order = "o".repeat(len);
            for seq in [0, 7, 10, 99_999, u64::MAX] {
                let name = format!("ledgerline:reg:{order}:{seq}");
                assert_eq!(
                    idempotency_key("reg", &order, seq),
                    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes()),
                    "{len} {seq}"
                );
            }
        }
        assert_eq!(
            Uuid::NAMESPACE_URL.to_string(),
            "6ba7b811-9dad-11d1-80b4-00c04fd430c8"
        );
    }

    /// Posting 1 of registry `r` for order `o-1` with `entries`, no currency.
    fn posting_of(entries: Vec<GroupedEntry>) -> Posting {
        Posting {
            registry_id: "r".into(),
            order_id: OrderId::parse("o-1").unwrap(),
            seq: 1,
            idempotency_key: idempotency_key("r", "o-1", 1),
            event_id: "e".into(),
            event_type: EventType::OrderConfirmed,
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            mode: PostingMode::Delta,
            currency: None,
            filtered: false,
            entries,
            cumulative: vec![],
        }
    }

    fn g(desc: &str, q: i64, a: i64) -> GroupedEntry {
        GroupedEntry {
            key: GroupKey {
                entry_type: EntryType::Revenue,
                ledger_code: None,
                description: desc.into(),
                columns: Columns::from([]),
            }
            .into(),
            quantity: q,
            amount: Decimal::new(a, 2),
        }
    }

    /// A key's equality is its fields' (texts by their bytes), whether
    /// the two keys share their texts and lists or hold copies of them.
    #[test]
    fn group_keys_are_equal_exactly_when_their_fields_are() {
        let eur = Text::from("EUR");
        let shared = Columns::from([(Column::Currency, Some(Text::clone(&eur)))]);
        let lists = [
            Columns::clone(&shared),
            Columns::clone(&shared),
            Columns::from([(Column::Currency, Some(Text::from("EUR")))]),
            Columns::from([(Column::Currency, Some(eur))]),
            Columns::from([(Column::Currency, Some(Text::from("USD")))]),
            Columns::from([(Column::Currency, None)]),
            Columns::from([(Column::ProductId, Some(Text::from("EUR")))]),
            Columns::from([]),
            Columns::from([
                (Column::Currency, Some(Text::from("EUR"))),
                (Column::TaxRate, None),
            ]),
        ];
        let desc = Text::from("Ticket");
        let descs = [
            Text::clone(&desc),
            desc,
            Text::from("Ticket"),
            Text::from("Tick"),
        ];
        let code = Text::from("200");
        let codes = [
            None,
            Some(Text::clone(&code)),
            Some(code),
            Some(Text::from("200")),
            Some(Text::from("820")),
        ];
        let mut keys = Vec::new();
        for entry_type in [EntryType::Revenue, EntryType::Tax] {
            for ledger_code in &codes {
                for description in &descs {
                    for columns in &lists {
                        keys.push(GroupKey {
                            entry_type,
                            ledger_code: ledger_code.clone(),
                            description: Text::clone(description),
                            columns: Columns::clone(columns),
                        });
                    }
                }
            }
        }
        let fields = |k: &GroupKey| {
            (
                k.entry_type,
                k.ledger_code.as_deref().map(str::to_owned),
                k.description.to_string(),
                k.columns
                    .iter()
                    .map(|(c, v)| (*c, v.as_deref().map(str::to_owned)))
                    .collect::<Vec<_>>(),
            )
        };
        for a in &keys {
            for b in &keys {
                assert_eq!(a == b, fields(a) == fields(b), "{a:?} {b:?}");
            }
        }
        use std::hash::BuildHasher as _;
        let state = RandomState::default();
        for a in &keys {
            for b in keys.iter().filter(|b| *b == a) {
                assert_eq!(state.hash_one(a), state.hash_one(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn differences_reverse_what_is_gone_and_drop_what_did_not_change() {
        let posted = vec![g("A", 2, -2200), g("B", 2, -1600)];
        let current = vec![g("A", 2, -2200), g("C", 1, -500)];
        let d = difference(&current, &posted).unwrap();
        assert_eq!(d, vec![g("C", 1, -500), g("B", -2, 1600)]);
    }

    /// Texts that test a writer's escaping against serde_json's: every
    /// ASCII byte (each control character, the quote, the backslash),
    /// nothing, quotes beside non-ASCII, and characters serde_json writes
    /// as they are (DEL, a C1 control, the line separator).
    fn awkward_texts() -> [String; 4] {
        [
            (0u8..128).map(char::from).collect(),
            String::new(),
            "Ticket \"A\" \\ 10 € ✓".into(),
            "\u{7f}\u{80}\u{2028}".into(),
        ]
    }

    /// The dispatcher's bytes are serde's, for every text a producer can
    /// send (quotes, backslashes, each control character, non-ASCII),
    /// every amount sign and scale, codes and columns absent or present.
    #[test]
    fn body_bytes_are_the_serialised_body() {
        let texts = awkward_texts();
        let texts = texts.each_ref().map(String::as_str);
        let mut entries = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let mut e = g(text, i as i64 - 1, [-2200, 0, 5, 123_456][i]);
            Arc::make_mut(&mut e.key).ledger_code = (i % 2 == 0).then(|| Text::from(*text));
            Arc::make_mut(&mut e.key).columns = Columns::from([
                (Column::Currency, Some("EUR".into())),
                (Column::ProductId, (i % 2 == 1).then(|| Text::from(*text))),
            ]);
            entries.push(e);
        }
        // Entries sharing their code and list with the one before (their
        // bytes are copied), or only one of them, or equal copies of them.
        let shared = entries.clone();
        for (i, e) in shared.iter().enumerate() {
            let mut same = g("shares", 2, 100 * i as i64);
            Arc::make_mut(&mut same.key).ledger_code = e.key.ledger_code.clone();
            Arc::make_mut(&mut same.key).columns = Columns::clone(&e.key.columns);
            let mut code_only = same.clone();
            Arc::make_mut(&mut code_only.key).columns = Columns::from(&*e.key.columns);
            let mut list_only = same.clone();
            Arc::make_mut(&mut list_only.key).ledger_code =
                e.key.ledger_code.as_deref().map(Text::from);
            let mut other = same.clone();
            Arc::make_mut(&mut other.key).ledger_code = Some("other".into());
            entries.extend([same.clone(), same, code_only, list_only, other]);
        }
        let mut p = posting_of(entries);
        let data = [
            Value::Null,
            serde_json::json!({}),
            serde_json::json!({"b": [1, 2.5, "x\n"], "a": {"z": null}}),
        ];
        for currency in ["EUR", "JPY", "BHD"] {
            p.currency = Currency::parse(currency).ok();
            for d in &data {
                let want = serde_json::to_vec(&p.body(d)).unwrap();
                assert_eq!(
                    String::from_utf8(p.body_json(d).unwrap()).unwrap(),
                    String::from_utf8(want).unwrap()
                );
            }
        }
        p.entries.clear();
        assert_eq!(
            p.body_json(&Value::Null).unwrap(),
            serde_json::to_vec(&p.body(&Value::Null)).unwrap()
        );
    }

    /// The stored JSON written by hand is serde's, byte for byte: every
    /// text a producer can send, every amount sign, size and scale
    /// (negative zero included), codes, columns and currency absent or
    /// present, both modes, filtered or not, a timestamp with an offset and
    /// nanoseconds, empty and long lists, every entry type.
    #[test]
    fn stored_json_is_the_serialised_posting() {
        let texts = awkward_texts();
        let texts = texts.each_ref().map(String::as_str);
        let amounts = [
            Decimal::new(-2200, 2),
            Decimal::ZERO,
            -Decimal::new(0, 3),
            Decimal::new(5, 0),
            Decimal::new(123_456_789, 7),
            Decimal::MAX,
            Decimal::MIN,
        ];
        let mut entries = Vec::new();
        for (i, amount) in amounts.into_iter().enumerate() {
            let text = texts[i % texts.len()];
            let mut e = g(text, [i as i64 - 3, i64::MIN, i64::MAX][i % 3], 0);
            e.amount = amount;
            Arc::make_mut(&mut e.key).entry_type = EntryType::ALL[i % EntryType::ALL.len()];
            Arc::make_mut(&mut e.key).ledger_code = (i % 2 == 0).then(|| Text::from(text));
            Arc::make_mut(&mut e.key).columns = Columns::from_iter(
                Column::ALL
                    .iter()
                    .take(i)
                    .enumerate()
                    .map(|(j, &c)| (c, (j % 2 == 0).then(|| Text::from(text)))),
            );
            entries.push(e);
        }
        let mut p = posting_of(entries.clone());
        p.cumulative = entries.into_iter().rev().collect();
        let stamps = [
            OffsetDateTime::UNIX_EPOCH,
            time::macros::datetime!(2026-11-29 10:43:32.123_456_789 +05:30),
            time::macros::datetime!(9999-12-31 23:59:59.5 -11:00),
        ];
        for (i, stamp) in stamps.into_iter().enumerate() {
            p.occurred_at = stamp;
            p.registry_id = texts[i].to_owned();
            p.event_id = texts[(i + 1) % texts.len()].to_owned();
            p.seq = [0, 7, u64::MAX][i];
            for currency in [
                None,
                Currency::parse("EUR").ok(),
                Currency::parse("BHD").ok(),
            ] {
                p.currency = currency;
                for (mode, filtered) in [(PostingMode::Delta, false), (PostingMode::Full, true)] {
                    (p.mode, p.filtered) = (mode, filtered);
                    let mut mine = vec![b'{'];
                    p.write_json_fields(&mut mine).unwrap();
                    mine.push(b'}');
                    assert_eq!(
                        String::from_utf8(mine).unwrap(),
                        serde_json::to_string(&p).unwrap()
                    );
                }
            }
        }
        p.entries.clear();
        p.cumulative.clear();
        let mut mine = vec![b'{'];
        p.write_json_fields(&mut mine).unwrap();
        mine.push(b'}');
        assert_eq!(mine, serde_json::to_vec(&p).unwrap());
    }

    /// A timestamp RFC 3339 cannot show (an offset with seconds) fails
    /// as serde's `rfc3339` does.
    #[test]
    fn stored_json_of_an_offset_with_seconds_fails_as_serde_does() {
        let mut p = posting_of(vec![]);
        p.occurred_at = time::macros::datetime!(2026-01-01 0:00 +01:00:30);
        assert!(serde_json::to_vec(&p).is_err());
        assert!(p.write_json_fields(&mut Vec::new()).is_err());
    }

    /// Each zero text is the zero `write_on_scale` writes for its minor
    /// units, with the keys around it.
    #[test]
    fn zero_texts_are_the_written_zeros() {
        for (minor_units, z) in ZERO_TEXTS.iter().enumerate() {
            let mut zero = Vec::new();
            write_on_scale(&mut zero, Decimal::ZERO, minor_units as u32);
            let zero = String::from_utf8(zero).unwrap();
            assert_eq!(
                z.debit_then_credit,
                format!(",\"debit\":\"{zero}\",\"credit\":\"").as_bytes()
            );
            assert_eq!(
                z.credit_then_description,
                format!("{zero}\",\"description\":\"").as_bytes()
            );
        }
    }

    /// Each column's key is its name as serde_json writes a string.
    #[test]
    fn column_keys_are_the_serialised_names() {
        for c in Column::ALL {
            let want = format!(",{}:", serde_json::to_string(c.as_str()).unwrap());
            assert_eq!(column_key(c), want.as_bytes());
        }
    }

    /// `signed_parts` is `max(0)` of the amount and of its negation, sign
    /// and scale of a zero included (`Display` prints `-0` and `0.000`).
    #[test]
    fn signed_parts_are_max_zero() {
        for s in ["0", "-0", "0.000", "-0.000", "1.5", "-1.5", "0.01", "-0.01"] {
            let d: Decimal = s.parse().unwrap();
            let (debit, credit) = signed_parts(d);
            let want = (d.max(Decimal::ZERO), (-d).max(Decimal::ZERO));
            assert_eq!(
                (debit.to_string(), credit.to_string()),
                (want.0.to_string(), want.1.to_string()),
                "{s}"
            );
        }
    }

    /// Every byte at every place of a word (and of the tail) is seen.
    #[test]
    fn needs_escape_finds_each_byte_that_must_be_escaped() {
        super::super::swar::check_each_byte_at_each_place(needs_escape, |b| {
            b < 0x20 || b == b'"' || b == b'\\'
        });
    }

    fn next_of(posted: Vec<GroupedEntry>, seq: u64) -> bool {
        let registry: crate::registry::RegistryConfig =
            toml::from_str("id = \"r\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\n")
                .unwrap();
        let registry = registry
            .validate(&crate::registry::TargetPolicy::default())
            .unwrap();
        let event = crate::events::parse_event(
            br#"{"event_id":"e1","type":"order.confirmed","order_id":"o-1","occurred_at":"2026-11-22T10:00:00Z","order":{"version":1,"currency":"EUR","prices_include_tax":true,"line_items":[{"id":"l1","product_id":"p","option_id":"o","unit_type":"adult","description":"A","quantity":2,"unit_price":"11.00","discount":"0.00","tax_rate":"0"}],"fees":[]}}"#,
            None,
        )
        .unwrap();
        let mut state = crate::order::OrderState::new(event.order_id.clone());
        state.apply(&event).unwrap();
        let ledger = crate::ledger::derive(&state, &Default::default()).unwrap();
        let current = group(&ledger, &registry);
        assert!(!current.is_empty());
        build(&registry, &event, &ledger, &Cursor { seq, posted }).is_ok()
    }

    /// Groupings that share their value texts (`group_with`, as a plan
    /// groups) are the groupings made alone (`group`), in any order, and
    /// share the texts of equal values.
    #[test]
    fn groupings_sharing_value_texts_are_the_groupings_alone() {
        let registries: Vec<_> = [
            "group_by = [\"currency\", \"tax_rate\", \"product_id\"]",
            "group_by = [\"tax_rate\", \"currency\"]",
            "",
        ]
        .iter()
        .map(grouped_by)
        .collect();
        let event = crate::events::parse_event(
            br#"{"event_id":"e1","type":"order.confirmed","order_id":"o-1","occurred_at":"2026-11-22T10:00:00Z","order":{"version":1,"currency":"EUR","prices_include_tax":true,"line_items":[{"id":"l1","product_id":"p","description":"A","quantity":2,"unit_price":"11.00","tax_rate":"0.16"},{"id":"l2","product_id":"q","description":"B","quantity":1,"unit_price":"3.10","tax_rate":"0.075"},{"id":"l3","product_id":"p","description":"C","quantity":1,"unit_price":"5.00","tax_rate":"0.160"}],"payments":[{"payment_id":"p1","method":"card","amount":"5.00","currency":"EUR"}]}}"#,
            None,
        )
        .unwrap();
        let mut state = crate::order::OrderState::new(event.order_id.clone());
        state.apply(&event).unwrap();
        let ledger = crate::ledger::derive(&state, &Default::default()).unwrap();
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let mut texts = ValueTexts::default();
            let mut currency_texts: Vec<Text> = Vec::new();
            for i in order {
                let shared = group_with(&ledger, &registries[i], &mut texts, &[]);
                assert_eq!(shared, group(&ledger, &registries[i]), "{order:?} {i}");
                currency_texts.extend(shared.iter().flat_map(|g| {
                    g.key
                        .columns
                        .iter()
                        .filter(|(c, _)| *c == Column::Currency)
                        .flat_map(|(_, v)| v.clone())
                }));
            }
            assert!(currency_texts.len() > 1);
            assert!(
                currency_texts
                    .iter()
                    .all(|t| Arc::ptr_eq(t, &currency_texts[0])),
                "{order:?}"
            );
        }
    }

    /// A registry `r` for every event type with `group_by` set by `line`
    /// (a TOML line, or nothing for the default).
    fn grouped_by(line: &&str) -> Registry {
        let toml =
            format!("id = \"r\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\n{line}\n");
        toml::from_str::<crate::registry::RegistryConfig>(&toml)
            .unwrap()
            .validate(&crate::registry::TargetPolicy::default())
            .unwrap()
    }

    /// A grouping after a cursor (`group_with`'s `posted`, as a plan
    /// groups) is the grouping made alone, stored as the same JSON; a list
    /// whose texts are the cursor's (texts kept from the state before) is
    /// the cursor's list, and a currency's or rate's text the cursor's.
    #[test]
    fn groupings_after_a_cursor_are_the_groupings_alone() {
        let registries: Vec<_> = [
            "group_by = [\"currency\", \"tax_rate\", \"product_id\"]",
            "group_by = [\"tax_rate\", \"payment_method\", \"currency\"]",
            "group_by = []",
            "",
        ]
        .iter()
        .map(grouped_by)
        .collect();
        let event = |version: u64, product: &str, rate: &str, currency: &str| {
            let json = format!(
                r#"{{"event_id":"e{version}","type":"order.updated","order_id":"o-1","occurred_at":"2026-11-22T10:00:00Z","order":{{"version":{version},"currency":"{currency}","prices_include_tax":true,"line_items":[{{"id":"l1","product_id":"p","description":"A","quantity":{version},"unit_price":"11.00","tax_rate":"0.16"}},{{"id":"l2","product_id":"{product}","description":"B","quantity":1,"unit_price":"3.10","tax_rate":"{rate}"}},{{"id":"l3","product_id":"p","description":"C","quantity":1,"unit_price":"5.00","tax_rate":"0.160"}}],"payments":[{{"payment_id":"p1","method":"card","amount":"5.00","currency":"{currency}"}}]}}}}"#
            );
            crate::events::parse_event(json.as_bytes(), None).unwrap()
        };
        let updates = [
            event(2, "q", "0.075", "EUR"),
            event(3, "q", "0.075", "EUR"),
            event(4, "p", "0.075", "EUR"),
            event(5, "p", "0.2", "EUR"),
        ];
        let mut first = crate::order::OrderState::new(OrderId::parse("o-1").unwrap());
        first.apply(&event(1, "q", "0.075", "EUR")).unwrap();
        let mut usd = crate::order::OrderState::new(OrderId::parse("o-1").unwrap());
        usd.apply(&event(1, "q", "0.075", "USD")).unwrap();
        let opts = Default::default();
        for r in &registries {
            for start in [&first, &usd] {
                let mut state = start.clone();
                let mut posted = group(&crate::ledger::derive(&state, &opts).unwrap(), r);
                for e in &updates {
                    if state.currency != Some(Currency::parse("EUR").unwrap()) {
                        // Another order's cursor: nothing in common but its texts.
                        state = first.clone();
                    }
                    let next = state.applied(e).unwrap();
                    let ledger = crate::ledger::derive(&next, &opts).unwrap();
                    let got = group_with(&ledger, r, &mut ValueTexts::default(), &posted);
                    let alone = group(&ledger, r);
                    assert_eq!(got, alone);
                    assert_eq!(
                        serde_json::to_string(&got).unwrap(),
                        serde_json::to_string(&alone).unwrap()
                    );
                    for g in &got {
                        // A group equal to a posted one holds its very key.
                        if let Some(p) = posted.iter().find(|p| *p.key == *g.key) {
                            assert!(Arc::ptr_eq(&p.key, &g.key), "{:?}", g.key);
                        }
                        let cols = |c: &Columns| {
                            c.iter()
                                .map(|(c, v)| (*c, v.as_deref().map(str::to_owned)))
                                .collect::<Vec<_>>()
                        };
                        let equal = posted
                            .iter()
                            .filter(|p| cols(&p.key.columns) == cols(&g.key.columns));
                        let addr = |c: &Columns| {
                            c.iter()
                                .map(|(c, v)| (*c, v.as_ref().map(|t| Arc::as_ptr(t).cast::<u8>())))
                                .collect::<Vec<_>>()
                        };
                        // Same texts by address: the very list.
                        for p in equal {
                            if addr(&p.key.columns) == addr(&g.key.columns) {
                                assert!(Arc::ptr_eq(&p.key.columns, &g.key.columns));
                            }
                        }
                        for (c, v) in g.key.columns.iter() {
                            let Some(v) = v
                                .as_ref()
                                .filter(|_| matches!(c, Column::Currency | Column::TaxRate))
                            else {
                                continue;
                            };
                            let posted_text = posted
                                .iter()
                                .flat_map(|p| p.key.columns.iter())
                                .find(|(d, w)| d == c && w.as_deref() == Some(&**v));
                            if let Some((_, Some(w))) = posted_text {
                                assert!(Arc::ptr_eq(v, w), "{c:?} {v}");
                            }
                        }
                    }
                    posted = got;
                    state = next;
                }
            }
        }
    }

    /// Found with the `records` fuzz target (an input made for its
    /// harness): a cursor read back from a stored posting (after an
    /// aggregator restart) with seq `u64::MAX` or totals near the limits of
    /// `Decimal`/`i64` made `build` panic ("attempt to add with overflow",
    /// "Subtraction overflowed"), killing the lane.
    #[test]
    fn a_cursor_out_of_range_is_refused_not_a_panic() {
        assert!(next_of(vec![], 1), "the fixture builds");
        assert!(!next_of(vec![], u64::MAX), "no posting after u64::MAX");
        let mut huge = g("A", 2, 0);
        Arc::make_mut(&mut huge.key).columns =
            Columns::from([(Column::Currency, Some("EUR".into()))]);
        huge.amount = Decimal::MAX;
        assert!(!next_of(vec![huge], 1), "a reversal out of range");
        let mut gone = g("Gone", i64::MIN, -100);
        Arc::make_mut(&mut gone.key).entry_type = EntryType::Discount;
        assert!(!next_of(vec![gone], 1), "a quantity that cannot be negated");
        let mut a = g("X", 0, 0);
        a.amount = Decimal::MAX;
        let mut b = g("Y", 0, 0);
        b.amount = Decimal::MAX;
        assert!(!next_of(vec![a, b], 1), "reversals whose sum overflows");
    }

    /// Found with the `records` fuzz target (an input made for its
    /// harness): the totals of a stored posting (`export`, `verify`)
    /// panicked when its amounts overflow a `Decimal`.
    #[test]
    fn totals_of_a_posting_out_of_range_do_not_panic() {
        let mut a = g("A", 0, 0);
        a.amount = Decimal::MAX;
        let mut c = g("C", 0, 0);
        c.amount = Decimal::MIN;
        let p = posting_of(vec![a.clone(), a, c.clone(), c]);
        let (d, c) = p.debit_credit();
        assert_eq!((d, c), (Decimal::MAX, Decimal::MAX));
        assert_eq!(p.sum(), Decimal::ZERO);
    }
}
