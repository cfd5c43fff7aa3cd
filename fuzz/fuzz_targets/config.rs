//! `config`: text → the TOML config file parser and its validation; JSON →
//! a registry as the admin API and the registry store parse it.
//!
//! The first byte picks the parser (even: config TOML, odd: registry JSON);
//! the rest is the input. Checked:
//! - nothing panics (parse, validation, secret handling);
//! - every refusal names what was wrong (a non-empty field or message);
//! - a valid registry survives being stored: written as the store writes it
//!   (secrets revealed) and read back, it is the same and validates the same;
//! - a valid config file survives being written back as TOML.
#![no_main]

use libfuzzer_sys::fuzz_target;

use ledgerline::config::Config;
use ledgerline::registry::{RegistryConfig, TargetPolicy};
use ledgerline::registry_store::{ChangedBy, StoredRegistry, check_batch, keep_stored_secrets};
use ledgerline::secret::reveal_secrets;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if let Ok(text) = std::str::from_utf8(input) {
            config_toml(text);
        }
    } else {
        registry_json(input);
    }
});

fn config_toml(text: &str) {
    let config = match Config::from_toml_with_env(text, "fuzz.toml", Vec::new()) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let again = config.clone();
    match config.validate() {
        Ok(settings) => {
            let written =
                reveal_secrets(|| toml::to_string(&again)).expect("a parsed config serialises");
            let back = Config::from_toml_with_env(&written, "fuzz.toml", Vec::new())
                .unwrap_or_else(|e| panic!("written config does not parse: {e}\n{written}"));
            assert_eq!(back, again, "config changed when written back");
            let back = back
                .validate()
                .unwrap_or_else(|e| panic!("written config does not validate: {e}\n{written}"));
            assert_eq!(
                back.registries, settings.registries,
                "written config validates differently"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn registry_json(bytes: &[u8]) {
    // As the admin API: a JSON object, optionally wrapped in {"registry": …}.
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let mut obj = ledgerline::admin::registries::registry_object(obj);
    obj.remove("revision");
    let mut config = match serde_path_to_error::deserialize::<_, RegistryConfig>(Value::Object(obj))
    {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.inner().to_string().is_empty());
            return;
        }
    };
    // The redaction marker: kept from a stored copy, refused with none.
    let stored = config.clone();
    if let Err(e) = keep_stored_secrets(&mut config, None) {
        assert!(!e.field.is_empty(), "marker error without a field: {e}");
        if keep_stored_secrets(&mut config, Some(&stored)).is_err() {
            return;
        }
    }
    let policy = TargetPolicy::default();
    let registry = match config.validate(&policy) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.message.is_empty(), "error without a message: {e:?}");
            assert!(
                check_batch(std::slice::from_ref(&config), &policy).is_err(),
                "validate refuses what check_batch accepts"
            );
            return;
        }
    };
    check_batch(std::slice::from_ref(&config), &policy).expect("valid alone, valid in a batch");
    // As the registry store writes and reads it.
    let value = StoredRegistry {
        registry: config.clone(),
        created_at: time::OffsetDateTime::UNIX_EPOCH,
        changed_by: ChangedBy::Api,
    };
    let written = reveal_secrets(|| serde_json::to_vec(&value)).expect("a registry serialises");
    let back: StoredRegistry = serde_json::from_slice(&written)
        .unwrap_or_else(|e| panic!("stored registry does not read back: {e}"));
    assert_eq!(back.registry, config, "registry changed when stored");
    assert_eq!(
        back.registry.validate(&policy).as_ref(),
        Ok(&registry),
        "stored registry validates differently"
    );
}
