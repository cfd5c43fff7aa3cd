//! Property tests over random event histories (proptest). Each property runs
//! `PROPTEST_CASES` cases, 1,000 unless set.
//!
//! Histories are made as JSON, so the parser is exercised too: snapshots with
//! random lines, discounts, fees and tax rates (inclusive and exclusive),
//! payments created, updated, deleted and written off, refunds, cancellations
//! with and without a final snapshot, redemptions (over-redemptions and
//! unknown lines among them), stale snapshots and duplicates, in
//! EUR, JPY, BHD and USD, under both rounding modes and both tax roundings.

use std::collections::HashMap;

use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use ledgerline::engine::{ApplyError, Engine, OrderBook};
use ledgerline::events::{EventType, OrderId, parse_event};
use ledgerline::ledger::{
    EntryType, Ledger, LedgerOptions, RevenueRecognition, TaxRounding, derive, derive_with,
};
use ledgerline::money::{Currency, Rounding};
use ledgerline::order::OrderState;
use ledgerline::posting::{SharedKey, group};
use ledgerline::records::{StoredPosting, StoredPostingRef};
use ledgerline::registry::{Registry, RegistryConfig, TargetPolicy};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

const CURRENCIES: [(&str, u32); 4] = [("EUR", 2), ("JPY", 0), ("BHD", 3), ("USD", 2)];
const RATES: [&str; 8] = [
    "0", "0.05", "0.075", "0.08", "0.1", "0.16", "0.19", "0.0625",
];
const METHODS: [&str; 3] = ["card", "cash", "gift_card"];

fn money(minor: i64, scale: u32) -> String {
    Decimal::new(minor, scale).to_string()
}

/// A line: (product, quantity, unit price in minor units, discount %, rate index).
type Line = (u8, u8, i64, u8, u8);

/// One event of a history, before ids and versions are filled in.
#[derive(Debug, Clone)]
enum Step {
    Snapshot {
        lines: Vec<Line>,
        fees: Vec<(i64, u8)>,
        incl: bool,
        payments: Vec<(u8, u8, i64)>,
        version_back: bool,
    },
    Cancel {
        snapshot: Option<Vec<Line>>,
    },
    Payment {
        kind: u8,
        id: u8,
        method: u8,
        amount: i64,
    },
    Duplicate {
        of: usize,
    },
    Redeem {
        line: u8,
        id: u8,
        quantity: u8,
    },
}

fn line() -> impl Strategy<Value = Line> {
    // (product, quantity, unit price in minor units, discount share 0..=100 %, rate index)
    (
        0u8..4,
        0u8..20,
        0i64..50_000,
        prop_oneof![3 => Just(0u8), 1 => 0u8..=100],
        0u8..8,
    )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (prop::collection::vec(line(), 0..5), prop::collection::vec((0i64..3_000, 0u8..8), 0..2), any::<bool>(),
              prop::collection::vec((0u8..3, 0u8..3, -2_000i64..40_000), 0..2), prop::bool::weighted(0.1))
            .prop_map(|(lines, fees, incl, payments, version_back)| Step::Snapshot { lines, fees, incl, payments, version_back }),
        1 => prop::option::of(prop::collection::vec(line(), 0..2)).prop_map(|snapshot| Step::Cancel { snapshot }),
        4 => (0u8..4, 0u8..4, 0u8..3, -5_000i64..40_000).prop_map(|(kind, id, method, amount)| Step::Payment { kind, id, method, amount }),
        1 => (0usize..20).prop_map(|of| Step::Duplicate { of }),
        3 => (0u8..6, 0u8..4, 0u8..12).prop_map(|(line, id, quantity)| Step::Redeem { line, id, quantity }),
    ]
}

#[derive(Debug, Clone)]
struct History {
    currency: usize,
    incl: bool,
    options: LedgerOptions,
    events: Vec<Value>,
}

fn lines_json(lines: &[Line], scale: u32) -> Vec<Value> {
    lines
        .iter()
        .enumerate()
        .map(|(i, &(product, qty, price, disc_pct, rate))| {
            let gross = price * i64::from(qty);
            let discount = gross * i64::from(disc_pct) / 100;
            json!({"id": format!("l{i}"), "product_id": format!("p{product}"), "option_id": "o",
                   "unit_type": if i % 2 == 0 { "adult" } else { "child" },
                   "description": format!("Product {product}"), "quantity": qty,
                   "unit_price": money(price, scale), "discount": money(discount, scale),
                   "tax_rate": RATES[rate as usize]})
        })
        .collect()
}

fn history() -> impl Strategy<Value = History> {
    (0usize..4, any::<bool>(), any::<bool>(), any::<bool>(), prop::collection::vec(step(), 1..14)).prop_map(
        |(currency, incl, half_even, per_rate, steps)| {
            let (code, scale) = CURRENCIES[currency];
            let options = LedgerOptions {
                rounding: if half_even { Rounding::HalfEven } else { Rounding::HalfUp },
                tax_rounding: if per_rate { TaxRounding::PerRate } else { TaxRounding::PerLine },
            };
            let mut version = 0u64;
            let mut events: Vec<Value> = Vec::new();
            for (n, s) in steps.into_iter().enumerate() {
                let base = |ty: &str| json!({"event_id": format!("e{n}"), "type": ty, "order_id": "ord-p",
                                            "occurred_at": "2026-11-22T10:00:00Z"});
                let ev = match s {
                    Step::Snapshot { lines, fees, incl: flip, payments, version_back } => {
                        version = if version_back { version.saturating_sub(1) } else { version + 1 };
                        let mut e = base(if n == 0 { "order.confirmed" } else { "order.updated" });
                        e["order"] = json!({"version": version, "currency": code, "channel": "web",
                            "prices_include_tax": incl ^ flip,
                            "line_items": lines_json(&lines, scale),
                            "fees": fees.iter().map(|&(a, r)| json!({"kind": "shipping", "description": "Shipping",
                                    "amount": money(a, scale), "tax_rate": RATES[r as usize]})).collect::<Vec<_>>(),
                            "payments": payments.iter().map(|&(id, m, a)| json!({"payment_id": format!("pay{id}"),
                                    "method": METHODS[m as usize], "amount": money(a, scale), "currency": code})).collect::<Vec<_>>()});
                        if version_back { version += 1; }
                        e
                    }
                    Step::Cancel { snapshot } => {
                        let mut e = base("order.cancelled");
                        if let Some(lines) = snapshot {
                            version += 1;
                            e["order"] = json!({"version": version, "currency": code, "prices_include_tax": incl,
                                "line_items": lines_json(&lines, scale)});
                        }
                        e
                    }
                    Step::Payment { kind, id, method, amount } => {
                        let ty = ["payment.created", "payment.updated", "payment.deleted", "payment.written_off"][kind as usize];
                        let mut e = base(ty);
                        e["payment"] = json!({"payment_id": format!("pay{id}"), "method": METHODS[method as usize],
                                              "amount": money(amount, scale), "currency": code});
                        e
                    }
                    Step::Redeem { line, id, quantity } => {
                        let mut e = base("order.redeemed");
                        e["redemption"] = json!({"redemption_id": format!("scan{id}"),
                            "line_item_id": format!("l{line}"), "quantity": quantity,
                            "date": "2026-11-23"});
                        e
                    }
                    Step::Duplicate { of } => match events.get(of) {
                        Some(prev) => prev.clone(),
                        None => continue,
                    },
                };
                events.push(ev);
            }
            History { currency, incl, options, events }
        },
    )
}

fn registry(toml_text: &str) -> Registry {
    toml::from_str::<RegistryConfig>(toml_text)
        .unwrap()
        .validate(&TargetPolicy::default())
        .unwrap()
}

fn registries() -> Vec<Registry> {
    vec![
        registry("id = \"delta\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\n"),
        registry(
            "id = \"detail\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\ngroup_by = [\"currency\", \"product_id\", \"unit_type\", \"tax_rate\", \"payment_method\", \"fee_kind\", \"channel\"]\n",
        ),
        registry(
            "id = \"full\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\nposting_mode = \"full\"\n",
        ),
        registry(
            "id = \"deferring\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\nrevenue_recognition = \"on_redemption\"\ngroup_by = [\"currency\", \"product_id\", \"unit_type\", \"tax_rate\"]\n",
        ),
        registry(
            "id = \"filtered\"\nurl = \"https://a.example\"\nevent_types = [\"order.*\"]\nentry_types = [\"revenue\", \"tax\"]\n",
        ),
    ]
}

/// Runs a history; returns the engine and every posting in order.
fn run(h: &History) -> (Engine, Vec<ledgerline::posting::Posting>) {
    let mut engine = Engine::new(h.options, registries());
    let mut postings = Vec::new();
    for e in &h.events {
        let ev = parse_event(e.to_string().as_bytes(), None).expect("generated events are valid");
        match engine.process(&ev) {
            Ok(ps) => postings.extend(ps),
            Err(ApplyError::Rejected(_)) => {}
            Err(other) => panic!("invariant broken: {other}"),
        }
    }
    (engine, postings)
}

fn book(engine: &Engine) -> Option<&OrderBook> {
    engine.book(&OrderId::parse("ord-p").unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn every_posting_of_an_unfiltered_registry_balances(h in history()) {
        let (engine, postings) = run(&h);
        for p in postings.iter().filter(|p| !p.filtered) {
            let (d, c) = p.debit_credit();
            prop_assert_eq!(d, c, "posting {} of {}", p.seq, p.registry_id);
            // On the minor-unit grid of the currency.
            let scale = CURRENCIES[h.currency].1;
            for e in &p.entries {
                prop_assert_eq!(e.amount.round_dp(scale), e.amount);
            }
        }
        if let Some(b) = book(&engine) {
            let l = derive(&b.state, &h.options).unwrap();
            let (d, c) = l.sums();
            prop_assert_eq!(d, c);
        }
    }

    #[test]
    fn delta_postings_sum_to_the_full_ledger(h in history()) {
        let (engine, postings) = run(&h);
        let Some(b) = book(&engine) else { return Ok(()) };
        for r in registries().iter().filter(|r| r.id() != "full") {
            let ledger = derive_with(&b.state, &h.options, r.config.revenue_recognition).unwrap();
            let mut sums: HashMap<SharedKey, (i64, Decimal)> = HashMap::new();
            for p in postings.iter().filter(|p| p.registry_id == r.id()) {
                for e in &p.entries {
                    let s = sums.entry(e.key.clone()).or_default();
                    s.0 += e.quantity;
                    s.1 += e.amount;
                }
            }
            sums.retain(|_, (q, a)| *q != 0 || !a.is_zero());
            let want: HashMap<SharedKey, (i64, Decimal)> = group(&ledger, r)
                .into_iter()
                .map(|g| (g.key, (g.quantity, g.amount)))
                .collect();
            // What a registry was sent adds up to what its last posting says
            // was posted so far…
            if let Some(last) = postings.iter().rfind(|p| p.registry_id == r.id()) {
                let cumulative: HashMap<SharedKey, (i64, Decimal)> =
                    last.cumulative.iter().map(|g| (g.key.clone(), (g.quantity, g.amount))).collect();
                prop_assert_eq!(&sums, &cumulative, "registry {}", r.id());
            }
            // …and a registry subscribed to every type has been sent exactly
            // the order's current ledger.
            if r.event_types.len() == EventType::ALL.len() && postings.iter().any(|p| p.registry_id == r.id()) {
                prop_assert_eq!(&sums, &want, "registry {}", r.id());
            }
        }
    }

    #[test]
    fn the_ledger_total_is_what_the_customer_is_charged(h in history()) {
        // Independent of the ledger's own formulas: inclusive prices charge
        // Σ(quantity × unit_price − discount) + Σfees; exclusive prices charge
        // that plus the tax. The receivable or refund due is the plug that
        // makes any ledger balance, so this is what catches a wrong formula.
        let (engine, _) = run(&h);
        let Some(b) = book(&engine) else { return Ok(()) };
        let l = derive(&b.state, &h.options).unwrap();
        let charged: Decimal = b.state.line_items.iter()
            .map(|li| Decimal::from(li.quantity) * li.unit_price - li.discount)
            .chain(b.state.fees.iter().map(|f| f.amount))
            .sum();
        let total = l.totals.revenue - l.totals.discount + l.totals.tax + l.totals.fees;
        if b.state.prices_include_tax {
            prop_assert_eq!(total, charged);
        } else {
            prop_assert_eq!(total - l.totals.tax, charged);
        }
        // And the entries say the same as the totals.
        let of = |t: EntryType| -> Decimal { l.entries.iter().filter(|e| e.entry_type == t).map(|e| e.amount).sum() };
        prop_assert_eq!(-of(EntryType::Revenue), l.totals.revenue);
        prop_assert_eq!(of(EntryType::Discount), l.totals.discount);
        prop_assert_eq!(-of(EntryType::Tax), l.totals.tax);
        prop_assert_eq!(-of(EntryType::Fee), l.totals.fees);
        prop_assert_eq!(of(EntryType::Receivable) + of(EntryType::RefundDue), l.totals.outstanding);
        prop_assert_eq!(l.totals.outstanding, total - l.totals.paid - l.totals.written_off);
    }

    #[test]
    fn revenue_quantities_sum_to_the_current_quantities(h in history()) {
        let (engine, postings) = run(&h);
        let Some(b) = book(&engine) else { return Ok(()) };
        let current: i64 = b.state.line_items.iter().map(|l| l.quantity as i64).sum();
        let posted: i64 = postings
            .iter()
            .filter(|p| p.registry_id == "delta")
            .flat_map(|p| &p.entries)
            .filter(|e| e.key.entry_type == EntryType::Revenue)
            .map(|e| e.quantity)
            .sum();
        prop_assert_eq!(posted, current);
        // In full mode the last posting carries the current quantities.
        if let Some(last) = postings.iter().rfind(|p| p.registry_id == "full") {
            let q: i64 = last.entries.iter().filter(|e| e.key.entry_type == EntryType::Revenue).map(|e| e.quantity).sum();
            prop_assert_eq!(q, current);
        }
    }

    #[test]
    fn the_dispatchers_body_bytes_are_the_serialised_body(h in history()) {
        let (_, postings) = run(&h);
        let data = serde_json::json!({"ref": "x\"1", "n": [1, 2.5]});
        for p in &postings {
            for d in [&Value::Null, &data] {
                prop_assert_eq!(p.body_json(d).unwrap(), serde_json::to_vec(&p.body(d)).unwrap());
            }
        }
    }

    #[test]
    fn the_aggregators_stored_bytes_are_serdes_and_read_back_as_serde_reads_them(h in history(), seqs in (any::<u64>(), any::<u64>())) {
        let (_, postings) = run(&h);
        for p in &postings {
            let stored = StoredPostingRef { source_seq: seqs.0, previous_subject_seq: seqs.1, posting: p };
            let bytes = stored.to_json().unwrap();
            prop_assert_eq!(&bytes, &serde_json::to_vec(&stored).unwrap());
            // And the dispatcher reads them back as serde does.
            prop_assert_eq!(
                StoredPosting::read_without_cumulative(&bytes).unwrap(),
                StoredPosting::read_without_cumulative_by_serde(&bytes).unwrap()
            );
        }
    }

    #[test]
    fn revenue_and_deferred_revenue_add_up_to_the_lines_revenue_at_every_step(h in history()) {
        let mut engine = Engine::new(h.options, registries());
        let currency = Currency::parse(CURRENCIES[h.currency].0).unwrap();
        for e in &h.events {
            let ev = parse_event(e.to_string().as_bytes(), None).expect("generated events are valid");
            let postings = match engine.process(&ev) {
                Ok(ps) => ps,
                Err(ApplyError::Rejected(_)) => continue,
                Err(other) => panic!("invariant broken: {other}"),
            };
            // A redemption changes nothing on confirmation, and on redemption
            // only moves deferred revenue to revenue, to the cent.
            if ev.event_type == EventType::OrderRedeemed {
                for p in &postings {
                    if p.registry_id == "deferring" {
                        prop_assert!(p.entries.iter().all(|g| matches!(g.key.entry_type, EntryType::Revenue | EntryType::DeferredRevenue)), "{:?}", p.entries);
                        prop_assert!(p.sum().is_zero());
                    } else if p.mode == ledgerline::registry::PostingMode::Delta {
                        prop_assert!(p.entries.is_empty(), "{}: {:?}", p.registry_id, p.entries);
                    }
                }
            }
            let state = &book(&engine).expect("an event was applied").state;
            check_recognition(state, &h.options, currency)?;
            // Each line on its own: the split of SPEC 2, computed here.
            for line in &state.line_items {
                let mut one = state.clone();
                one.line_items = vec![line.clone()];
                one.fees.clear();
                one.payments.clear();
                let whole = revenue_of(&derive(&one, &h.options).unwrap(), EntryType::Revenue).1;
                let split = derive_with(&one, &h.options, RevenueRecognition::OnRedemption).unwrap();
                let r = state.redeemed(&line.id).min(line.quantity);
                let want = if r == line.quantity { whole } else {
                    currency.round(whole * Decimal::from(r) / Decimal::from(line.quantity), h.options.rounding)
                };
                prop_assert_eq!(revenue_of(&split, EntryType::Revenue), (r as i64, want), "line {}", line.id);
                prop_assert_eq!(revenue_of(&split, EntryType::DeferredRevenue), ((line.quantity - r) as i64, whole - want), "line {}", line.id);
            }
        }
    }

    /// Registries that group a ledger alike share one grouping
    /// (`posting::same_grouping`): each still gets exactly the postings it
    /// gets on its own.
    #[test]
    fn a_registry_posts_the_same_beside_others_as_alone(h in history()) {
        let (_, together) = run(&h);
        for alone in registries() {
            let id = alone.id().to_owned();
            let mut engine = Engine::new(h.options, vec![alone]);
            let mut own = Vec::new();
            for e in &h.events {
                let ev = parse_event(e.to_string().as_bytes(), None).expect("generated events are valid");
                if let Ok(ps) = engine.process(&ev) {
                    own.extend(ps);
                }
            }
            let beside: Vec<_> = together.iter().filter(|p| p.registry_id == id).collect();
            prop_assert_eq!(
                serde_json::to_string(&beside).unwrap(),
                serde_json::to_string(&own).unwrap(),
                "registry {}", id
            );
        }
    }

    #[test]
    fn the_same_input_always_gives_byte_identical_output(h in history()) {
        let input: String = h.events.iter().map(|e| format!("{e}\n")).collect();
        let render = || {
            let mut out = Vec::new();
            ledgerline::offline::run_postings(h.options, registries(), input.as_bytes(), &mut out, Vec::new(), ledgerline::offline::Layout::Ndjson).unwrap();
            out
        };
        let first = render();
        prop_assert_eq!(&first, &render());
        let _ = h.incl;
    }

    #[test]
    fn invalid_events_never_panic_and_never_change_state(
        h in history(),
        mutations in prop::collection::vec((0usize..64, 0usize..12, any::<u8>()), 1..6),
    ) {
        let mut engine = Engine::new(h.options, registries());
        for (i, e) in h.events.iter().enumerate() {
            // Corrupt a copy of this event in one of several ways, feed it,
            // and check that a refusal left the book exactly as it was.
            let (pick, how, byte) = mutations[i % mutations.len()];
            let bad = corrupt(e, pick, how, byte);
            let before = book(&engine).cloned();
            match parse_event(&bad, Some("ord-p")) {
                Err(_) => {}
                Ok(ev) => match engine.process(&ev) {
                    Ok(_) => {}
                    Err(ApplyError::Rejected(_)) => prop_assert_eq!(book(&engine).cloned(), before),
                    Err(other) => prop_assert!(false, "invariant broken: {}", other),
                },
            }
            let good = parse_event(e.to_string().as_bytes(), None).unwrap();
            let _ = engine.process(&good);
        }
    }
}

/// A corrupted copy of `e`: a field replaced by a wrong value, removed, or
/// the bytes cut or flipped.
fn corrupt(e: &Value, pick: usize, how: usize, byte: u8) -> Vec<u8> {
    let mut v = e.clone();
    let mut paths: Vec<Vec<String>> = Vec::new();
    collect_paths(&v, &mut Vec::new(), &mut paths);
    let path = &paths[pick % paths.len()];
    let replacement = match how {
        0 => json!(1.5),
        1 => json!(-3),
        2 => json!("12.3456"),
        3 => json!(null),
        4 => json!("-1.00"),
        5 => json!("abc"),
        6 => json!([]),
        7 => json!("1e5"),
        8 => json!(u64::MAX),
        _ => Value::Null,
    };
    if how <= 8 {
        set(&mut v, path, replacement);
        v.to_string().into_bytes()
    } else if how == 9 {
        remove(&mut v, path);
        v.to_string().into_bytes()
    } else {
        let mut b = e.to_string().into_bytes();
        let at = pick % b.len().max(1);
        if how == 10 {
            b.truncate(at)
        } else if let Some(x) = b.get_mut(at) {
            *x = byte
        }
        b
    }
}

fn collect_paths(v: &Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                at.push(k.clone());
                out.push(at.clone());
                collect_paths(c, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                at.push(i.to_string());
                out.push(at.clone());
                collect_paths(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn slot<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |cur, k| match cur {
        Value::Object(m) => m.get_mut(k),
        Value::Array(a) => a.get_mut(k.parse::<usize>().ok()?),
        _ => None,
    })
}

fn set(v: &mut Value, path: &[String], new: Value) {
    if let Some(s) = slot(v, path) {
        *s = new;
    }
}

fn remove(v: &mut Value, path: &[String]) {
    let (last, parent) = path.split_last().unwrap();
    match slot(v, parent) {
        Some(Value::Object(m)) => {
            m.remove(last);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = last.parse::<usize>()
                && i < a.len()
            {
                a.remove(i);
            }
        }
        _ => {}
    }
}

#[test]
fn currencies_in_the_generator_are_real() {
    for (code, scale) in CURRENCIES {
        assert_eq!(Currency::parse(code).unwrap().minor_units(), scale);
    }
}

/// (Σ quantity, Σ credit) of the entries of type `t`.
fn revenue_of(l: &Ledger, t: EntryType) -> (i64, Decimal) {
    l.entries
        .iter()
        .filter(|e| e.entry_type == t)
        .fold((0, Decimal::ZERO), |(q, a), e| {
            (q + e.quantity, a - e.amount)
        })
}

/// The order's ledger on redemption against its ledger on confirmation:
/// balanced; every entry but revenue the same; revenue and deferred revenue
/// together the revenue on confirmation; the redeemed units recognised.
fn check_recognition(
    state: &OrderState,
    options: &LedgerOptions,
    currency: Currency,
) -> Result<(), TestCaseError> {
    let now = derive(state, options).unwrap();
    let later = derive_with(state, options, RevenueRecognition::OnRedemption).unwrap();
    let (d, c) = later.sums();
    prop_assert_eq!(d, c);
    fn others<'a>(l: &Ledger<'a>) -> Vec<ledgerline::ledger::Entry<'a>> {
        l.entries
            .iter()
            .filter(|e| {
                !matches!(
                    e.entry_type,
                    EntryType::Revenue | EntryType::DeferredRevenue
                )
            })
            .cloned()
            .collect()
    }
    prop_assert_eq!(others(&later), others(&now));
    let (q_now, revenue) = revenue_of(&now, EntryType::Revenue);
    let (q_recognised, recognised) = revenue_of(&later, EntryType::Revenue);
    let (q_deferred, deferred) = revenue_of(&later, EntryType::DeferredRevenue);
    prop_assert_eq!(recognised + deferred, revenue);
    prop_assert_eq!(q_recognised + q_deferred, q_now);
    let redeemed: i64 = state
        .line_items
        .iter()
        .map(|l| state.redeemed(&l.id).min(l.quantity) as i64)
        .sum();
    prop_assert_eq!(q_recognised, redeemed);
    for e in &later.entries {
        prop_assert_eq!(e.amount.round_dp(currency.minor_units()), e.amount);
    }
    Ok(())
}
