//! `verify` replays each registry as it was when each event was handled
//! (issue 14): registries created over the API, edited in the file and
//! deleted while the service ran between batches give zero mismatches,
//! and a tampered posting is named with the revision it was checked
//! against.

use std::time::Duration;

use ledgerline::receiver::FailureMode;
use ledgerline::registry_store::ChangedBy;
use ledgerline::service::Component;
use ledgerline::streams::subjects;
use serde_json::json;

use crate::support::config::TestConfig;
use crate::support::engine::ticket_event;
use crate::support::{self, Service};

/// Versions `from..=to` of each of `orders`, NDJSON.
fn versions(orders: &[&str], from: u64, to: u64) -> String {
    let mut out = String::new();
    for o in orders {
        for v in from..=to {
            out.push_str(&ticket_event(o, v, v as u32));
            out.push('\n');
        }
    }
    out
}

#[tokio::test]
async fn verify_replays_registries_created_edited_and_deleted_between_batches() {
    let nats = support::nats().await;
    let bl = support::books_and_late(&nats).await;
    let (books_url, late_url) = (bl.books_url, bl.late_url);
    let books = |extra: &str| {
        TestConfig::new()
            .registry("books", &format!("{books_url}/hooks"), extra)
            .settings(&nats.server)
    };
    let first = books("");
    let svc = Service::start(first.clone(), &Component::ALL).await;

    // Batch 1: books alone.
    support::publish_events(&nats, &versions(&["a-0", "a-1"], 1, 2)).await;
    support::settled(&nats.js).await;

    // Batch 2: `late` created over the API first (delta, the default).
    svc.create_registry(&json!({"id": "late", "url": format!("{late_url}/hooks")}))
        .await;
    svc.in_force("late", true).await;
    let batch2 = format!(
        "{}{}",
        versions(&["a-0", "a-1"], 3, 3),
        versions(&["b-0"], 1, 2)
    );
    support::publish_events(&nats, &batch2).await;
    support::settled(&nats.js).await;
    svc.stop().await;

    // Between runs: `late` deleted, and books edited in the file (grouped
    // by product too, full postings): the next start writes the edit.
    let store = support::registry_store_for(&nats.js, &first).await;
    store.delete("late", None).await.unwrap();
    let edited = books("group_by = [\"currency\", \"product_id\"]\nposting_mode = \"full\"");
    let svc = Service::start(edited.clone(), &Component::ALL).await;
    support::publish_events(
        &nats,
        &format!(
            "{}{}",
            versions(&["a-0", "b-0"], 4, 4),
            versions(&["c-0"], 1, 1)
        ),
    )
    .await;
    support::settled(&nats.js).await;
    svc.stop().await;

    let late_postings = support::count_ledger(&nats.js, "ledger.postings.late.>").await;
    assert_eq!(
        late_postings, 4,
        "late had batch 2 only (a-0, a-1 #3; b-0 v1, v2)"
    );
    let report = support::verify(&nats, &edited).await.unwrap();
    assert!(report.ok(), "{report}: {:?}", report.mismatches);
    assert_eq!(report.matched, report.stored);
    assert_eq!(
        report.stored,
        8 + 4 + 3,
        "books 8, late 4, the edited books 3"
    );

    // A posting made by the edited books, tampered with, is named with the
    // revision it was checked against.
    let revision = store.get("books").await.unwrap().unwrap().revision;
    support::tamper_last_posting(&nats, &subjects::postings("books", "c-0"), |sp| {
        sp.posting.entries[0].amount += rust_decimal::Decimal::new(1, 2);
    })
    .await;
    let report = support::verify(&nats, &edited).await.unwrap();
    let lines: Vec<String> = report.mismatches.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        lines,
        [format!(
            "books/c-0 #1: differs from the replay (replayed with revision {revision} of books): \
             and it does not balance (debit 11.01, credit 11.00)"
        )]
    );
}

#[tokio::test]
async fn registry_revisions_outlive_the_buckets_64_on_ledger_without_secrets() {
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let nats = support::nats().await;
    let (_rx, url) = support::receiver(Some(SECRET), FailureMode::default()).await;
    let settings = TestConfig::new().settings(&nats.server);
    let svc = Service::start(settings.clone(), &Component::ALL).await;
    let store = support::registry_store_for(&nats.js, &settings).await;
    let registry = |name: &str, group_by: &[&str]| -> ledgerline::registry::RegistryConfig {
        serde_json::from_value(json!({
            "id": "r", "name": name, "url": format!("{url}/hooks"),
            "group_by": group_by, "signing_secret": SECRET,
        }))
        .unwrap()
    };
    store
        .create(registry("r", &["currency"]), ChangedBy::Cli)
        .await
        .unwrap();
    svc.in_force("r", true).await;
    support::publish_events(&nats, &versions(&["o-1"], 1, 1)).await;
    support::settled(&nats.js).await;

    // Revision 2 changes what the postings look like; 70 more rename it.
    store
        .put(
            registry("r", &["currency", "product_id"]),
            None,
            ChangedBy::Cli,
        )
        .await
        .unwrap();
    for n in 1..=70 {
        store
            .put(
                registry(&format!("r {n}"), &["currency", "product_id"]),
                None,
                ChangedBy::Cli,
            )
            .await
            .unwrap();
    }
    let archived = "ledger.history.registry.r";
    support::eventually("72 revisions archived", Duration::from_secs(30), || async {
        support::count_ledger(&nats.js, archived).await == 72
    })
    .await;
    assert_eq!(
        store.history("r").await.unwrap().len(),
        64,
        "the bucket keeps 64"
    );
    for (_, payload) in support::read_ledger(&nats.js, archived).await {
        let text = String::from_utf8_lossy(&payload);
        assert!(!text.contains(SECRET), "a secret archived in clear: {text}");
        assert!(text.contains("\"signing_secret\":\"***\""), "{text}");
    }

    // The first posting was made by revision 1, beyond the bucket's
    // history: verify finds it on LEDGER.
    support::publish_events(&nats, &versions(&["o-1"], 2, 2)).await;
    support::settled(&nats.js).await;
    svc.stop().await;
    let report = support::verify(&nats, &settings).await.unwrap();
    assert!(report.ok(), "{report}: {:?}", report.mismatches);
    assert_eq!(report.matched, 2);
}
