//! The typed path of [`parse_event`](super::parse_event): a message read
//! straight from its bytes into the shape of an event (a reader written
//! for that one shape, on borrowed strings, no JSON tree), then through the
//! same value checks as the tree ([`super::id_of`], [`super::money_of`]…).
//!
//! It only ever answers for a valid event: anything it does not take as it
//! is (a field it does not know, a key given twice, a wrong JSON type, a
//! string with an escape, a number that is not a plain whole number, a
//! value a check refuses) gives `None`, and `parse_event` reads the message
//! again as a tree, which accepts forward-compatible extras and names the
//! first fault exactly as it always has. So an event it accepts is the
//! event the tree would make, and every rejection is the tree's.
//!
//! What it takes is a subset of JSON (RFC 8259) that serde_json reads
//! alike: objects, arrays, `null`, `true`, `false`, whole numbers without
//! sign, fraction or exponent, strings without escapes or control
//! characters, and whitespace (space, tab, line feed, carriage return)
//! between tokens; nothing but whitespace after the event's object.

use rust_decimal::Decimal;

use super::{
    Event, EventBody, EventType, FEES_MAX, Fee, LineItem, OrderSnapshot, Payment, check_discount,
    check_len, check_line_count, check_payment_currencies, currency_of, id_of, money_of,
    occurred_at_of, order_id_of, quantity_of, rate_of, text_of,
};
use crate::events::Text;
use crate::money::{Currency, parse_decimal_str};

/// An event as sent: the envelope, with `order` or `payment` by type.
#[derive(Default)]
pub(super) struct RawEvent<'a> {
    pub(super) event_id: Option<&'a str>,
    pub(super) event_type: Option<&'a str>,
    pub(super) order_id: Option<&'a str>,
    pub(super) occurred_at: Option<&'a str>,
    pub(super) order: Option<RawSnapshot<'a>>,
    pub(super) payment: Option<RawPayment<'a>>,
}

/// `order`: a snapshot as sent.
pub(super) struct RawSnapshot<'a> {
    pub(super) version: u64,
    pub(super) currency: &'a str,
    pub(super) channel: Option<&'a str>,
    pub(super) prices_include_tax: bool,
    pub(super) line_items: Vec<RawLine<'a>>,
    pub(super) fees: Option<Vec<RawFee<'a>>>,
    pub(super) payments: Option<Vec<RawPayment<'a>>>,
}

/// `order.line_items[i]` as sent; money and rates still text.
pub(super) struct RawLine<'a> {
    pub(super) id: &'a str,
    pub(super) product_id: Option<&'a str>,
    pub(super) option_id: Option<&'a str>,
    pub(super) unit_type: Option<&'a str>,
    pub(super) description: &'a str,
    pub(super) quantity: u64,
    pub(super) unit_price: &'a str,
    pub(super) discount: Option<&'a str>,
    pub(super) tax_rate: &'a str,
}

/// `order.fees[i]` as sent.
pub(super) struct RawFee<'a> {
    pub(super) kind: &'a str,
    pub(super) description: &'a str,
    pub(super) amount: &'a str,
    pub(super) tax_rate: &'a str,
}

/// `payment`, or `order.payments[i]`, as sent; a missing `date`
/// and a `null` one are both `None`.
pub(super) struct RawPayment<'a> {
    pub(super) date: Option<&'a str>,
    pub(super) currency: &'a str,
    pub(super) payment_id: &'a str,
    pub(super) method: &'a str,
    pub(super) amount: &'a str,
}

/// The event `bytes` hold when they are a valid event of the known shape;
/// `None` for anything else (the tree then decides).
pub(super) fn parse(bytes: &[u8], subject_order_id: Option<&str>) -> Option<Event> {
    // UTF-8 checked once for the whole message, not string by string; a
    // message that is not UTF-8 goes to the tree, which names the fault.
    let text = std::str::from_utf8(bytes).ok()?;
    event(read_event(text)?, subject_order_id)
}

/// The event `raw` holds when every value passes the tree's checks.
pub(super) fn event(raw: RawEvent<'_>, subject_order_id: Option<&str>) -> Option<Event> {
    let event_type = super::event_type_of(raw.event_type?).ok()?;
    let body = match event_type {
        EventType::OrderConfirmed | EventType::OrderUpdated => {
            EventBody::Snapshot(snapshot(raw.order?)?)
        }
        EventType::OrderCancelled => EventBody::Cancel(match raw.order {
            Some(o) => Some(snapshot(o)?),
            None => None,
        }),
        EventType::PaymentDeleted => EventBody::PaymentDeleted(payment(raw.payment?, None)?),
        EventType::PaymentCreated | EventType::PaymentUpdated | EventType::PaymentWrittenOff => {
            EventBody::Payment(payment(raw.payment?, None)?)
        }
        // Rare next to snapshots and payments: the tree reads it.
        EventType::OrderRedeemed => return None,
    };
    Some(Event {
        event_id: id_of(raw.event_id?, no_path).ok()?,
        event_type,
        order_id: order_id_of(raw.order_id?, subject_order_id).ok()?,
        occurred_at: occurred_at_of(raw.occurred_at?).ok()?,
        body,
    })
}

/// The reader: a position in the message's text.
struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    /// The next byte that is not JSON whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        // The usual case, no whitespace (all of it is at most b' '): one
        // comparison.
        if let Some(&b) = bytes.get(self.at)
            && b > b' '
        {
            return Some(b);
        }
        while let Some(&b) = bytes.get(self.at) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes `b`, the next byte after whitespace.
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// A string without escapes or control characters, borrowed.
    fn str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let bytes = self.text.as_bytes();
        // Eight bytes at a time to the first quote, backslash or control
        // character, then byte by byte over the last few.
        while let Some(chunk) = bytes.get(self.at..self.at + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            match special(u64::from_le_bytes(word)) {
                0 => self.at += 8,
                found => {
                    self.at += (found.trailing_zeros() / 8) as usize;
                    break;
                }
            }
        }
        loop {
            match *bytes.get(self.at)? {
                b'"' => break,
                // An escape (the tree reads it) or a control character
                // (not JSON: the tree names it).
                b'\\' | 0x00..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        // Both ends are at an ASCII quote, so at character boundaries.
        let s = self.text.get(start..self.at)?;
        self.at += 1;
        Some(s)
    }

    /// `null`, consumed when it is next.
    fn null(&mut self) -> bool {
        let next = self.peek() == Some(b'n');
        if next && self.text.as_bytes()[self.at..].starts_with(b"null") {
            self.at += 4;
            true
        } else {
            false
        }
    }

    /// A string, or `null` (`None`).
    fn opt_str(&mut self) -> Option<Option<&'a str>> {
        if self.null() {
            Some(None)
        } else {
            self.str().map(Some)
        }
    }

    /// `true` or `false`.
    fn bool(&mut self) -> Option<bool> {
        let next = self.peek()?;
        let rest = &self.text.as_bytes()[self.at..];
        let (value, len) = match next {
            b't' if rest.starts_with(b"true") => (true, 4),
            b'f' if rest.starts_with(b"false") => (false, 5),
            _ => return None,
        };
        self.at += len;
        Some(value)
    }

    /// A whole number without sign, fraction or exponent that fits a
    /// `u64` (serde_json reads it as that `u64`).
    fn u64(&mut self) -> Option<u64> {
        self.peek()?;
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(&b) = bytes.get(self.at) {
            if !b.is_ascii_digit() {
                break;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.at += 1;
        }
        let len = self.at - start;
        // No digits, a leading zero, or a fraction or exponent next.
        if len == 0
            || len > 1 && bytes[start] == b'0'
            || matches!(bytes.get(self.at), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        Some(n)
    }

    /// An object's key when it is one of `keys`: the name as the table
    /// holds it. `None` for any other key, or one with an escape (the tree
    /// reads those).
    fn key<const N: usize>(&mut self, keys: &Keys<N>) -> Option<&'static str> {
        if self.peek()? != b'"' {
            return None;
        }
        let bytes = self.text.as_bytes();
        let Some(chunk) = bytes.get(self.at + 1..self.at + 1 + KEY_BYTES) else {
            // Near the message's end: read as a string, then looked up.
            let key = self.str()?;
            return keys.names.into_iter().find(|name| *name == key);
        };
        let mut words = [0u64; KEY_WORDS];
        for (w, bytes) in words.iter_mut().zip(chunk.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            *w = u64::from_le_bytes(word);
        }
        let i = (0..N)
            .find(|&i| (0..KEY_WORDS).all(|k| words[k] & keys.masks[i][k] == keys.words[i][k]))?;
        // The quotes and the name are ASCII: `at` stays at a character
        // boundary.
        self.at += keys.names[i].len() + 2;
        Some(keys.names[i])
    }

    /// An object whose members `member` reads, each after its key, one of
    /// `keys`; `member` answers `None` for a key it does not take (or
    /// takes twice), and any other key gives `None`.
    fn object<const N: usize>(
        &mut self,
        keys: &Keys<N>,
        mut member: impl FnMut(&mut Self, &'static str) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let key = self.key(keys)?;
            self.eat(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array of what `item` reads; at most `max` items are read (more
    /// is the tree's to refuse).
    fn array<T>(
        &mut self,
        max: usize,
        mut item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.eat(b'[')?;
        // Room for an order's few lines or payments without growing.
        let mut items = Vec::with_capacity(8);
        if self.peek()? == b']' {
            self.at += 1;
            return Some(items);
        }
        loop {
            if items.len() == max {
                return None;
            }
            items.push(item(self)?);
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(items);
                }
                _ => return None,
            }
        }
    }

    /// An array, or `null` (`None`).
    fn opt_array<T>(
        &mut self,
        max: usize,
        item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Option<Vec<T>>> {
        if self.null() {
            Some(None)
        } else {
            self.array(max, item).map(Some)
        }
    }
}

/// The high bit of each byte of `w` (little-endian) that is a quote, a
/// backslash or a control character (below 0x20), and maybe of bytes
/// above such a byte: the lowest bit set is always the first such byte
/// (a borrow only ever runs past a byte that is zero itself), 0 when there
/// is none.
fn special(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    zero(w & (0xe0 * ONES))
        | zero(w ^ (u64::from(b'"') * ONES))
        | zero(w ^ (u64::from(b'\\') * ONES))
}

/// The member names an object of the event may have, each with what
/// reads it from the message by comparing words: its bytes and closing
/// quote, and which bytes of the words are its. A key is one of them
/// exactly when the bytes after its opening quote begin with one's name
/// and quote (a name holds no quote or backslash, so that quote ends the
/// key), without scanning the key and then matching its text.
struct Keys<const N: usize> {
    names: [&'static str; N],
    words: [[u64; KEY_WORDS]; N],
    masks: [[u64; KEY_WORDS]; N],
}

/// The bytes compared for a key: a name and its quote fit.
const KEY_BYTES: usize = 24;
const KEY_WORDS: usize = KEY_BYTES / 8;

impl<const N: usize> Keys<N> {
    const fn new(names: [&'static str; N]) -> Self {
        let mut words = [[0u64; KEY_WORDS]; N];
        let mut masks = [[0u64; KEY_WORDS]; N];
        let mut i = 0;
        while i < N {
            let name = names[i].as_bytes();
            assert!(name.len() < KEY_BYTES, "a key name and its quote fit");
            let mut j = 0;
            while j <= name.len() {
                let b = if j < name.len() { name[j] } else { b'"' };
                assert!(
                    j == name.len() || (b != b'"' && b != b'\\' && b >= 0x20),
                    "a key name needs no escape"
                );
                words[i][j / 8] |= (b as u64) << (8 * (j % 8));
                masks[i][j / 8] |= 0xff << (8 * (j % 8));
                j += 1;
            }
            i += 1;
        }
        Self {
            names,
            words,
            masks,
        }
    }
}

const EVENT_KEYS: Keys<6> = Keys::new([
    "event_id",
    "type",
    "order_id",
    "occurred_at",
    "order",
    "payment",
]);
const SNAPSHOT_KEYS: Keys<7> = Keys::new([
    "version",
    "currency",
    "channel",
    "prices_include_tax",
    "line_items",
    "fees",
    "payments",
]);
const LINE_KEYS: Keys<9> = Keys::new([
    "id",
    "product_id",
    "option_id",
    "unit_type",
    "description",
    "quantity",
    "unit_price",
    "discount",
    "tax_rate",
]);
const FEE_KEYS: Keys<4> = Keys::new(["kind", "description", "amount", "tax_rate"]);
const PAYMENT_KEYS: Keys<5> = Keys::new(["date", "currency", "payment_id", "method", "amount"]);

/// Marks field `bit` of an object as read: `None` when it already was
/// (a key given twice: the tree takes the last one).
fn first(seen: &mut u16, bit: u16) -> Option<()> {
    let once = *seen & bit == 0;
    *seen |= bit;
    once.then_some(())
}

/// The event's object and nothing after it but whitespace.
fn read_event(text: &str) -> Option<RawEvent<'_>> {
    let mut r = Reader { text, at: 0 };
    let mut raw = RawEvent::default();
    let mut seen = 0;
    r.object(&EVENT_KEYS, |r, key| {
        let (bit, slot) = match key {
            "event_id" => (1, &mut raw.event_id),
            "type" => (2, &mut raw.event_type),
            "order_id" => (4, &mut raw.order_id),
            "occurred_at" => (8, &mut raw.occurred_at),
            "order" => {
                first(&mut seen, 16)?;
                raw.order = if r.null() {
                    None
                } else {
                    Some(read_snapshot(r)?)
                };
                return Some(());
            }
            "payment" => {
                first(&mut seen, 32)?;
                raw.payment = if r.null() {
                    None
                } else {
                    Some(read_payment(r)?)
                };
                return Some(());
            }
            _ => return None,
        };
        first(&mut seen, bit)?;
        *slot = Some(r.str()?);
        Some(())
    })?;
    // Trailing whitespace only.
    match r.peek() {
        None => Some(raw),
        Some(_) => None,
    }
}

fn read_snapshot<'a>(r: &mut Reader<'a>) -> Option<RawSnapshot<'a>> {
    let (mut version, mut currency, mut channel, mut incl) = (None, None, None, None);
    let (mut lines, mut fees, mut payments) = (None, None, None);
    let mut seen = 0;
    r.object(&SNAPSHOT_KEYS, |r, key| {
        match key {
            "version" => {
                first(&mut seen, 1)?;
                version = Some(r.u64()?);
            }
            "currency" => {
                first(&mut seen, 2)?;
                currency = Some(r.str()?);
            }
            "channel" => {
                first(&mut seen, 4)?;
                channel = r.opt_str()?;
            }
            "prices_include_tax" => {
                first(&mut seen, 8)?;
                incl = Some(r.bool()?);
            }
            "line_items" => {
                first(&mut seen, 16)?;
                lines = Some(r.array(super::LINE_ITEMS_MAX, read_line)?);
            }
            "fees" => {
                first(&mut seen, 32)?;
                fees = r.opt_array(FEES_MAX, read_fee)?;
            }
            "payments" => {
                first(&mut seen, 64)?;
                payments = r.opt_array(FEES_MAX, read_payment)?;
            }
            _ => return None,
        }
        Some(())
    })?;
    Some(RawSnapshot {
        version: version?,
        currency: currency?,
        channel,
        prices_include_tax: incl?,
        line_items: lines?,
        fees,
        payments,
    })
}

fn read_line<'a>(r: &mut Reader<'a>) -> Option<RawLine<'a>> {
    let (mut id, mut product_id, mut option_id, mut unit_type) = (None, None, None, None);
    let (mut description, mut quantity, mut unit_price) = (None, None, None);
    let (mut discount, mut tax_rate) = (None, None);
    let mut seen = 0;
    r.object(&LINE_KEYS, |r, key| {
        let (bit, slot) = match key {
            "id" => (1, &mut id),
            "product_id" => (2, &mut product_id),
            "option_id" => (4, &mut option_id),
            "unit_type" => (8, &mut unit_type),
            "description" => (16, &mut description),
            "quantity" => {
                first(&mut seen, 32)?;
                quantity = Some(r.u64()?);
                return Some(());
            }
            "unit_price" => (64, &mut unit_price),
            "discount" => (128, &mut discount),
            "tax_rate" => (256, &mut tax_rate),
            _ => return None,
        };
        first(&mut seen, bit)?;
        // `null` for an optional field is its absence; for a required
        // one it is refused below.
        *slot = r.opt_str()?;
        Some(())
    })?;
    Some(RawLine {
        id: id?,
        product_id,
        option_id,
        unit_type,
        description: description?,
        quantity: quantity?,
        unit_price: unit_price?,
        discount,
        tax_rate: tax_rate?,
    })
}

fn read_fee<'a>(r: &mut Reader<'a>) -> Option<RawFee<'a>> {
    let (mut kind, mut description, mut amount, mut tax_rate) = (None, None, None, None);
    let mut seen = 0;
    r.object(&FEE_KEYS, |r, key| {
        let (bit, slot) = match key {
            "kind" => (1, &mut kind),
            "description" => (2, &mut description),
            "amount" => (4, &mut amount),
            "tax_rate" => (8, &mut tax_rate),
            _ => return None,
        };
        first(&mut seen, bit)?;
        *slot = Some(r.str()?);
        Some(())
    })?;
    Some(RawFee {
        kind: kind?,
        description: description?,
        amount: amount?,
        tax_rate: tax_rate?,
    })
}

fn read_payment<'a>(r: &mut Reader<'a>) -> Option<RawPayment<'a>> {
    let (mut date, mut currency, mut payment_id, mut method, mut amount) =
        (None, None, None, None, None);
    let mut seen = 0;
    r.object(&PAYMENT_KEYS, |r, key| {
        let (bit, slot) = match key {
            "date" => (1, &mut date),
            "currency" => (2, &mut currency),
            "payment_id" => (4, &mut payment_id),
            "method" => (8, &mut method),
            "amount" => (16, &mut amount),
            _ => return None,
        };
        first(&mut seen, bit)?;
        *slot = r.opt_str()?;
        Some(())
    })?;
    Some(RawPayment {
        date,
        currency: currency?,
        payment_id: payment_id?,
        method: method?,
        amount: amount?,
    })
}

/// The path of a field the typed path refuses: never shown (the tree
/// names it when it reads the message again).
fn no_path() -> String {
    String::new()
}

fn snapshot(raw: RawSnapshot<'_>) -> Option<OrderSnapshot> {
    let currency = currency_of(raw.currency, no_path).ok()?;
    check_line_count(raw.line_items.len(), no_path).ok()?;
    let mut line_items: Vec<LineItem> = Vec::with_capacity(raw.line_items.len());
    for (i, l) in raw.line_items.iter().enumerate() {
        // The few lines before, whose ids this one often repeats.
        let from = i.saturating_sub(SHARED_LINES);
        let earlier = raw.line_items[from..i].iter().zip(&line_items[from..]);
        line_items.push(line(l, currency, earlier)?);
    }
    let fees = match raw.fees {
        Some(fees) => {
            check_len(fees.len(), FEES_MAX, no_path).ok()?;
            fees.iter()
                .map(|f| fee(f, currency))
                .collect::<Option<Vec<_>>>()?
        }
        None => Vec::new(),
    };
    let payments = match raw.payments {
        Some(payments) => {
            check_len(payments.len(), FEES_MAX, no_path).ok()?;
            payments
                .into_iter()
                .map(|p| payment(p, Some((raw.currency, currency))))
                .collect::<Option<Vec<_>>>()?
        }
        None => Vec::new(),
    };
    check_payment_currencies(&payments, currency, no_path).ok()?;
    Some(OrderSnapshot {
        version: raw.version,
        currency,
        channel: opt_text(raw.channel)?,
        prices_include_tax: raw.prices_include_tax,
        line_items,
        fees,
        payments,
    })
}

/// A line's product, option and unit type are shared with one of this
/// many lines before it that sent the same text (an order's lines often
/// share an option or a unit type), rather than allocated again.
const SHARED_LINES: usize = 4;

fn line<'a, 'l>(
    raw: &RawLine<'a>,
    currency: Currency,
    earlier: impl Iterator<Item = (&'l RawLine<'a>, &'l LineItem)> + Clone,
) -> Option<LineItem>
where
    'a: 'l,
{
    let quantity = quantity_of(raw.quantity, no_path).ok()?;
    let unit_price = money(raw.unit_price, currency, false)?;
    let discount = match raw.discount {
        Some(d) => money(d, currency, false)?,
        None => Decimal::ZERO,
    };
    check_discount(quantity, unit_price, discount, currency, no_path).ok()?;
    Some(LineItem {
        id: id_of(raw.id, no_path).ok()?,
        product_id: shared_id(
            raw.product_id,
            earlier.clone().map(|(r, l)| (r.product_id, &l.product_id)),
        )?,
        option_id: shared_id(
            raw.option_id,
            earlier.clone().map(|(r, l)| (r.option_id, &l.option_id)),
        )?,
        unit_type: shared_id(
            raw.unit_type,
            earlier.map(|(r, l)| (r.unit_type, &l.unit_type)),
        )?,
        description: text_of(raw.description, no_path).ok()?,
        quantity,
        unit_price,
        discount,
        tax_rate: rate(raw.tax_rate)?,
    })
}

fn fee(raw: &RawFee<'_>, currency: Currency) -> Option<Fee> {
    Some(Fee {
        kind: id_of(raw.kind, no_path).ok()?,
        description: text_of(raw.description, no_path).ok()?,
        amount: money(raw.amount, currency, false)?,
        tax_rate: rate(raw.tax_rate)?,
    })
}

/// A payment; `order` is the order's currency as sent and as read, taken
/// as it is by a payment that sends the same code (reading a code looks it
/// up in the ISO table).
fn payment(raw: RawPayment<'_>, order: Option<(&str, Currency)>) -> Option<Payment> {
    let currency = match order {
        Some((code, currency)) if code == raw.currency => currency,
        _ => currency_of(raw.currency, no_path).ok()?,
    };
    Some(Payment {
        payment_id: id_of(raw.payment_id, no_path).ok()?,
        method: id_of(raw.method, no_path).ok()?,
        amount: money(raw.amount, currency, true)?,
        currency,
        date: opt_text(raw.date)?,
    })
}

/// `Some(None)` when absent, `None` when present and refused.
fn opt_id<'a, T: From<&'a str>>(s: Option<&'a str>) -> Option<Option<T>> {
    s.map(|s| id_of(s, no_path)).transpose().ok()
}

/// [`opt_id`] of `s`, sharing the text an earlier line made of the same
/// string (it passed the same check).
fn shared_id<'a, 'l>(
    s: Option<&'a str>,
    mut earlier: impl Iterator<Item = (Option<&'a str>, &'l Option<Text>)>,
) -> Option<Option<Text>> {
    let Some(s) = s else {
        return Some(None);
    };
    match earlier.find_map(|(raw, text)| text.as_ref().filter(|_| raw == Some(s))) {
        Some(text) => Some(Some(Text::clone(text))),
        None => opt_id(Some(s)),
    }
}

fn opt_text<'a, T: From<&'a str>>(s: Option<&'a str>) -> Option<Option<T>> {
    s.map(|s| text_of(s, no_path)).transpose().ok()
}

fn money(s: &str, currency: Currency, signed: bool) -> Option<Decimal> {
    let d = parse_decimal_str(s).ok()?;
    money_of(d, currency, signed, no_path).ok()
}

fn rate(s: &str) -> Option<Decimal> {
    rate_of(parse_decimal_str(s).ok()?, no_path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key is read as the table's name exactly when it is that name,
    /// with enough of the message after it for the words and without
    /// (near the end, where it is read as a string).
    #[test]
    fn keys_are_read_as_exactly_their_names() {
        let names = LINE_KEYS.names;
        for tail in ["", ":1}", ":1,\"padding_to_pass_the_words\":2}"] {
            for (i, name) in names.iter().enumerate() {
                let text = format!("\"{name}\"{tail}");
                let mut r = Reader { text: &text, at: 0 };
                assert_eq!(r.key(&LINE_KEYS), Some(names[i]), "{text}");
                assert_eq!(r.at, name.len() + 2, "{text}");
                for other in [
                    format!("\"{name}x\"{tail}"),
                    format!("\"{}\"{tail}", &name[..name.len() - 1]),
                    format!("\"{name}\\\"\"{tail}"),
                    format!("\"x{name}\"{tail}"),
                    format!("{name}\"{tail}"),
                ] {
                    let mut r = Reader {
                        text: &other,
                        at: 0,
                    };
                    assert_eq!(r.key(&LINE_KEYS), None, "{other}");
                }
            }
        }
        let mut r = Reader {
            text: " \n\"id\" :",
            at: 0,
        };
        assert_eq!(r.key(&LINE_KEYS), Some("id"));
        assert_eq!(r.peek(), Some(b':'));
    }
}
