//! `events`: bytes → `parse_event` → fold into the order → ledger → postings.
//!
//! The input is an NDJSON history (one event per line, as `ledgerline
//! postings` reads it); its first byte picks the ledger options. Every line
//! goes through the same engine the offline `postings` command uses, with a
//! fixed set of registries (delta, detailed group_by, full mode, filtered),
//! and the invariants of `tests/it/properties.rs` are checked after each:
//! - nothing panics (parse, fold, derive, build, body serialisation);
//! - an accepted event never breaks the ledger invariant (no `Unbalanced`);
//! - every posting of an unfiltered registry has Σdebit = Σcredit, on the
//!   minor-unit grid of its currency, and so has the order's ledger;
//! - a refused event (parse or fold) leaves the order's book unchanged;
//! - parsing is deterministic and agrees with the subject's order id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

use ledgerline::engine::{ApplyError, Engine};
use ledgerline::events::parse_event;
use ledgerline::ledger::{LedgerOptions, TaxRounding, derive};
use ledgerline::money::Rounding;
use ledgerline::offline::posting_line;
use ledgerline::registry::{Registry, RegistryConfig, TargetPolicy};

/// At most this many events per input (keeps each run fast).
const MAX_EVENTS: usize = 32;

fn registry(toml_text: &str) -> Registry {
    let config: RegistryConfig = toml::from_str(toml_text).expect("a fixed, valid registry");
    config
        .validate(&TargetPolicy::default())
        .expect("a fixed, valid registry")
}

static REGISTRIES: LazyLock<Vec<Registry>> = LazyLock::new(|| {
    vec![
        registry("id = \"delta\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\n"),
        registry(
            "id = \"detail\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\ngroup_by = [\"currency\", \"product_id\", \"option_id\", \"unit_type\", \"tax_rate\", \"payment_method\", \"fee_kind\", \"channel\"]\n",
        ),
        registry(
            "id = \"full\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\nposting_mode = \"full\"\n",
        ),
        registry(
            "id = \"filtered\"\nurl = \"https://a.example\"\nevent_types = [\"order.*\"]\nentry_types = [\"revenue\", \"tax\"]\n",
        ),
        registry(
            "id = \"codes\"\nurl = \"https://a.example\"\nevent_types = [\"*\"]\n[[ledger_codes]]\nentry_type = \"revenue\"\ncode = \"4000\"\n[[ledger_codes]]\ncode = \"9999\"\n",
        ),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some((&flags, history)) = data.split_first() else {
        return;
    };
    let options = LedgerOptions {
        rounding: if flags & 1 == 0 {
            Rounding::HalfUp
        } else {
            Rounding::HalfEven
        },
        tax_rounding: if flags & 2 == 0 {
            TaxRounding::PerLine
        } else {
            TaxRounding::PerRate
        },
    };
    let mut engine = Engine::new(options, REGISTRIES.clone());
    for line in history.split(|&b| b == b'\n').take(MAX_EVENTS) {
        let event = match parse_event(line, None) {
            Ok(e) => e,
            Err(rejection) => {
                // A rejection always says what was wrong.
                assert!(!rejection.message.is_empty(), "empty rejection message");
                continue;
            }
        };
        // Deterministic, and the subject's order id is the body's.
        assert_eq!(
            parse_event(line, Some(event.order_id.as_str())).as_ref(),
            Ok(&event),
            "same bytes, same subject, different result"
        );
        let before = engine.book(&event.order_id).cloned();
        match engine.process(&event) {
            Ok(postings) => {
                let book = engine.book(&event.order_id).expect("just applied");
                let ledger = derive(&book.state, &options).expect("applied, so it derived");
                let (d, c) = ledger.sums();
                assert_eq!(d, c, "ledger unbalanced");
                for p in &postings {
                    let line = serde_json::to_vec(&posting_line(p)).expect("a posting serialises");
                    assert!(!line.is_empty());
                    if p.filtered {
                        continue;
                    }
                    let (d, c) = p.debit_credit();
                    assert_eq!(d, c, "posting {} of {} unbalanced", p.seq, p.registry_id);
                    if let Some(cur) = p.currency {
                        for e in &p.entries {
                            assert_eq!(
                                e.amount.round_dp(cur.minor_units()),
                                e.amount,
                                "amount off the minor-unit grid"
                            );
                        }
                    }
                }
            }
            Err(ApplyError::Rejected(_)) => {
                let after = engine.book(&event.order_id).cloned();
                match before {
                    Some(b) => assert_eq!(after, Some(b), "a refused event changed the book"),
                    // A new order's book may be created empty, never filled.
                    None => {
                        if let Some(a) = after {
                            assert!(a.cursors.is_empty(), "a refused event posted");
                            assert_eq!(
                                a.state,
                                ledgerline::order::OrderState::new(event.order_id.clone()),
                                "a refused event changed a new order"
                            );
                        }
                    }
                }
            }
            Err(other) => panic!("invariant broken: {other}"),
        }
    }
});
