//! Engine throughput: one `order.updated` event → postings for 3 registries,
//! for an order of 5 lines, 2 tax rates and 2 payments (the figure in BENCHMARKS.md).
//! Pure CPU: parse, fold, ledger, group, delta, body rendering.
//!
//! `engine/event_to_3_postings_with_bodies` is the whole path as the
//! pipeline runs it: parse, `OrderBook::plan`, the request body of each
//! posting (`Posting::body_json`, the bytes the dispatcher sends),
//! `OrderBook::commit`. `engine/event_to_3_stored_postings` is the
//! aggregator's share: the same with each posting encoded as the
//! `StoredPosting` it publishes instead of the bodies.
//! `engine/event_to_3_postings_with_bodies_after_1000_events` is the whole
//! path on an order with a long history (1,000 events applied before);
//! `engine/first_event_to_3_postings_with_bodies` on an order's first
//! event (no cursor: every group is new).
//! `engine/event_to_1_delta_posting_with_body` is the whole path for one
//! `delta` registry, the typical subscription. The `stage/…` benches time
//! each step alone on the same event, so a change shows where it moved the
//! time: parse (bytes → `Event`), fold (`OrderState::apply`), ledger
//! (`derive`), grouping (`group`, the 3 registries), build (the 3 postings:
//! grouping, delta, keys), body serialisation (the 3 bodies as the
//! dispatcher writes them; `body_serde` the same through `Posting::body`
//! and serde, as the admin view and `postings` embed them), the stored
//! records (`stored_3_postings` as the aggregator writes them by hand,
//! `stored_serde_3_postings` the same bytes through serde, and the
//! dispatcher's read of them, straight and through serde alone, and a
//! rebuild's), signing (one body, HMAC-SHA256) and the aggregator's cache
//! of books (`book_cache_…`: an order's book taken out and put back, after
//! 100,000 events).
//!
//! The allocator is mimalloc, as in the `ledgerline` binary (`src/main.rs`).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

use ledgerline::engine::OrderBook;
use ledgerline::events::{OrderId, parse_event};
use ledgerline::ledger::{LedgerOptions, derive};
use ledgerline::posting::{build, group};
use ledgerline::records::{StoredPosting, StoredPostingRef};
use ledgerline::registry::{Registry, RegistryConfig, TargetPolicy};

/// The binary's allocator, so the figures are the pipeline's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn snapshot(version: u64, event_id: &str) -> Vec<u8> {
    let lines: Vec<_> = (0..5)
        .map(|i| {
            json!({"id": format!("l{i}"), "product_id": format!("p{}", i % 3), "option_id": "std",
                   "unit_type": if i % 2 == 0 { "adult" } else { "child" },
                   "description": format!("Ticket {i}"), "quantity": 1 + i + version as usize % 3,
                   "unit_price": "12.99", "discount": if i == 0 { "1.00" } else { "0.00" },
                   "tax_rate": if i % 2 == 0 { "0.16" } else { "0.075" }})
        })
        .collect();
    json!({"event_id": event_id, "type": "order.updated", "order_id": "bench-order",
           "occurred_at": "2026-11-22T10:00:00Z",
           "order": {"version": version, "currency": "EUR", "channel": "web", "prices_include_tax": true,
                     "line_items": lines,
                     "payments": [{"payment_id": "p1", "method": "card", "amount": "40.00", "currency": "EUR"},
                                  {"payment_id": "p2", "method": "gift_card", "amount": "10.00", "currency": "EUR"}]}})
    .to_string()
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let policy = TargetPolicy::default();
    let registries: Vec<_> = [
        "id = \"a\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\n",
        "id = \"b\"\nurl = \"https://b.example\"\nevent_types = [\"*\"]\ngroup_by = [\"currency\", \"product_id\", \"payment_method\", \"tax_rate\"]\nledger_codes = [{ entry_type = \"revenue\", code = \"200\" }, { entry_type = \"tax\", code = \"820\" }]\n",
        "id = \"c\"\nurl = \"https://c.example\"\nevent_types = [\"*\"]\nposting_mode = \"full\"\n",
    ]
    .iter()
    .map(|t| toml::from_str::<RegistryConfig>(t).unwrap().validate(&policy).unwrap())
    .collect();
    let opts = LedgerOptions::default();

    // A book that has seen a confirmation, so the event is a real delta.
    let mut book = OrderBook::new(OrderId::parse("bench-order").unwrap());
    book.apply(
        &parse_event(&snapshot(1, "e1"), None).unwrap(),
        &registries,
        &opts,
    )
    .unwrap();
    let update = snapshot(2, "e2");

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    // What the pipeline does per event: the aggregator plans and commits,
    // the dispatcher renders each posting's body, sends it and frees it.
    // The bodies are freed here, in the loop, as the pipeline frees them:
    // criterion keeps a batch's outputs until the batch ends, and kept
    // bodies made the allocator take fresh pages from the kernel inside
    // the timed loop (≈ 15 % of the time spent zeroing pages), a cost no
    // running aggregator or dispatcher has. The book is kept (criterion
    // drops it after the batch): an order's book lives on.
    let whole = |mut book: OrderBook, registries: &[Registry], event: &[u8]| {
        let ev = parse_event(black_box(event), Some("bench-order")).unwrap();
        let plan = book.plan(&ev, registries, &opts, |_| false).unwrap();
        let bodies: Vec<Vec<u8>> = plan
            .postings
            .iter()
            .map(|p| p.body_json(&serde_json::Value::Null).unwrap())
            .collect();
        book.commit(plan);
        black_box(&bodies);
        drop(bodies);
        book
    };
    g.bench_function("event_to_3_postings_with_bodies", |b| {
        b.iter_batched(
            || book.clone(),
            |book| whole(book, &registries, &update),
            BatchSize::SmallInput,
        )
    });
    // The same event on an order that has seen 1,000 events before: the
    // cost of a long order's history (its applied event ids).
    let mut long = book.clone();
    long.state.applied_event_ids = (0..1000)
        .map(|i| format!("earlier-{i}").into())
        .chain(long.state.applied_event_ids.iter().cloned())
        .collect();
    g.bench_function("event_to_3_postings_with_bodies_after_1000_events", |b| {
        b.iter_batched(
            || long.clone(),
            |book| whole(book, &registries, &update),
            BatchSize::SmallInput,
        )
    });
    // An order's first event: no cursor, every group new.
    let fresh = OrderBook::new(OrderId::parse("bench-order").unwrap());
    let first = snapshot(1, "e1");
    g.bench_function("first_event_to_3_postings_with_bodies", |b| {
        b.iter_batched(
            || fresh.clone(),
            |book| whole(book, &registries, &first),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("event_to_1_delta_posting_with_body", |b| {
        b.iter_batched(
            || book.clone(),
            |book| whole(book, &registries[..1], &update),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("event_to_3_stored_postings", |b| {
        b.iter_batched(
            || book.clone(),
            |mut book| {
                let ev = parse_event(black_box(&update), Some("bench-order")).unwrap();
                let plan = book.plan(&ev, &registries, &opts, |_| false).unwrap();
                let stored: Vec<Vec<u8>> = plan.postings.iter().map(stored_bytes).collect();
                book.commit(plan);
                // Freed in the loop, as the aggregator frees each once published.
                black_box(&stored);
                drop(stored);
                book
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // The stages, each on the state the whole path sees.
    let event = parse_event(&update, Some("bench-order")).unwrap();
    let mut folded = book.state.clone();
    folded.apply(&event).unwrap();
    let ledger = derive(&folded, &opts).unwrap();
    let postings = book.clone().apply(&event, &registries, &opts).unwrap();
    let bodies: Vec<Vec<u8>> = postings
        .iter()
        .map(|p| p.body_json(&serde_json::Value::Null).unwrap())
        .collect();
    let key = [7u8; 32];

    let mut g = c.benchmark_group("stage");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| {
        b.iter(|| parse_event(black_box(&update), Some("bench-order")).unwrap())
    });
    g.bench_function("fold", |b| {
        b.iter_batched(
            || book.state.clone(),
            |mut state| {
                state.apply(black_box(&event)).unwrap();
                state
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("ledger", |b| {
        b.iter(|| derive(black_box(&folded), &opts).unwrap())
    });
    g.bench_function("grouping_3_registries", |b| {
        b.iter(|| {
            registries
                .iter()
                .map(|r| group(black_box(&ledger), r))
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("build_3_postings", |b| {
        b.iter(|| {
            registries
                .iter()
                .map(|r| {
                    let cursor = &book.cursors[r.id()];
                    build(r, black_box(&event), &ledger, cursor).unwrap()
                })
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("body_serialisation_3_postings", |b| {
        b.iter(|| {
            black_box(&postings)
                .iter()
                .map(|p| p.body_json(&serde_json::Value::Null).unwrap())
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("body_serde_3_postings", |b| {
        b.iter(|| {
            black_box(&postings)
                .iter()
                .map(|p| serde_json::to_vec(&p.body(&serde_json::Value::Null)).unwrap())
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("stored_3_postings", |b| {
        b.iter(|| {
            black_box(&postings)
                .iter()
                .map(stored_bytes)
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("stored_serde_3_postings", |b| {
        b.iter(|| {
            black_box(&postings)
                .iter()
                .map(|p| serde_json::to_vec(&stored_ref(p)).unwrap())
                .collect::<Vec<_>>()
        })
    });
    // What the dispatcher reads of each posting it delivers, and the
    // aggregator of each stored posting when it rebuilds a book.
    let stored: Vec<Vec<u8>> = postings.iter().map(stored_bytes).collect();
    g.bench_function("read_3_stored_postings_without_cumulative", |b| {
        b.iter(|| {
            black_box(&stored)
                .iter()
                .map(|s| StoredPosting::read_without_cumulative(s).unwrap())
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("read_3_stored_postings_without_cumulative_by_serde", |b| {
        b.iter(|| {
            black_box(&stored)
                .iter()
                .map(|s| StoredPosting::read_without_cumulative_by_serde(s).unwrap())
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("read_3_stored_postings_whole", |b| {
        b.iter(|| {
            black_box(&stored)
                .iter()
                .map(|s| serde_json::from_slice::<StoredPosting>(s).unwrap())
                .collect::<Vec<_>>()
        })
    });
    // The aggregator's cache of books: one lane's bound (10,000 / 16),
    // 500 orders in it, each taken out and put back for its events, after
    // 100,000 events. Amortised O(1): before session 14 the line of keys
    // grew with every put-back and each one swept it (≈ 1.7 ms here).
    let orders: Vec<OrderId> = (0..500)
        .map(|i| OrderId::parse(&format!("ord-{i:06}")).unwrap())
        .collect();
    let mut cache = ledgerline::fifo::FifoMap::new(10_000 / 16);
    for event in 0..100_000 {
        let id = &orders[event % orders.len()];
        let book = cache.remove(id).unwrap_or(0u64);
        cache.insert(id.clone(), book + 1);
    }
    let mut event = 0;
    g.bench_function(
        "book_cache_take_out_and_put_back_after_100000_events",
        |b| {
            b.iter(|| {
                event += 1;
                let id = &orders[event % orders.len()];
                let book = cache.remove(black_box(id)).unwrap_or(0);
                cache.insert(id.clone(), book + 1);
            })
        },
    );
    g.bench_function("signing_1_body", |b| {
        b.iter(|| {
            ledgerline::signing::sign(
                &key,
                "0b6c4a5e-5f7a-5d55-9f1e-3f4c2b1a0d9e",
                1_795_000_000,
                black_box(&bodies[0]),
            )
        })
    });
    g.finish();
}

/// The record the aggregator publishes for `posting`, as it writes it
/// (`ingest::aggregator`: borrowed, written by hand).
fn stored_bytes(posting: &ledgerline::posting::Posting) -> Vec<u8> {
    stored_ref(posting).to_json().unwrap()
}

/// The record the aggregator publishes for `posting`, borrowing it.
fn stored_ref(posting: &ledgerline::posting::Posting) -> StoredPostingRef<'_> {
    StoredPostingRef {
        source_seq: 7,
        previous_subject_seq: 3,
        posting,
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
