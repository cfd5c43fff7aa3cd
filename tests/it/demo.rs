//! The demo: its committed dataset, and (below) a reduced-size run end to end.

use std::path::Path;

use ledgerline::demo::dataset::{ORDERS, SEED, generate};

#[test]
fn the_committed_demo_dataset_is_what_the_generator_makes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/events.ndjson");
    let made: String = generate(ORDERS, SEED)
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    if std::env::var_os("UPDATE_DEMO_DATASET").is_some() {
        std::fs::write(&path, &made).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == made,
        "fixtures/demo/events.ndjson is stale: run UPDATE_DEMO_DATASET=1 cargo test --test it demo"
    );
    assert!(made.lines().count() > 2_000, "a few thousand events");
}
