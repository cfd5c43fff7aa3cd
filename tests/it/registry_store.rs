//! The registry bucket against a real nats-server: idempotent applies,
//! history, optimistic concurrency, secrets kept for the dispatcher and
//! never shown, the live watch, and stored registries that no longer
//! validate.

use std::time::{Duration, Instant};

use ledgerline::registry::{AuthConfig, FieldError, RegistryConfig, TargetPolicy};
use ledgerline::registry_store::{
    BUCKET, ChangedBy, PutOutcome, RegistryStore, StoreError, keep_stored_secrets,
};
use tokio_util::sync::CancellationToken;

use crate::support;

fn registry(text: &str) -> RegistryConfig {
    toml::from_str(text).unwrap()
}

/// A registry with only its id and url.
fn registry_at(id: &str, url: &str) -> RegistryConfig {
    registry(&format!("id = \"{id}\"\nurl = \"{url}\"\n"))
}

/// Creates a registry with only `id` and `url`, written by `by`.
async fn create_at(store: &RegistryStore, id: &str, url: &str, by: ChangedBy) {
    store.create(registry_at(id, url), by).await.unwrap();
}

/// The field error of a write that must be refused as invalid.
fn invalid(refused: Result<impl std::fmt::Debug, StoreError>) -> FieldError {
    match refused {
        Err(StoreError::Invalid(f)) => f,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

fn loopback_policy() -> TargetPolicy {
    TargetPolicy {
        allow_insecure_http: true,
        allow_private_targets: vec!["127.0.0.0/8".parse().unwrap()],
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn with_secrets() -> RegistryConfig {
    registry(&format!(
        r#"
        id = "books"
        url = "https://accounting.example/hooks"
        signing_secret = "{SECRET}"
        headers = {{ "authenticationToken" = "hdr-secret-value" }}
        [auth]
        type = "basic"
        username = "ledger"
        password = "basic-password-value"
        "#
    ))
}

#[tokio::test]
async fn applying_the_same_registries_again_writes_no_new_revision() {
    let nats = support::nats().await;
    let store = support::registry_store(&nats.js).await;
    let a = registry_at("a", "https://a.example/hook");
    let b = registry("id = \"b\"\nurl = \"https://b.example/hook\"\nenabled = false\n");
    let both = [a.clone(), b.clone()];
    let apply_both = || store.apply(&both, ChangedBy::Config);
    let outcomes =
        |applied: &[(_, PutOutcome)]| applied.iter().map(|(_, o)| *o).collect::<Vec<_>>();
    let first = apply_both().await.unwrap();
    assert_eq!(outcomes(&first), [PutOutcome::Created, PutOutcome::Created]);
    let again = apply_both().await.unwrap();
    assert_eq!(
        outcomes(&again),
        [PutOutcome::Unchanged, PutOutcome::Unchanged]
    );
    assert_eq!(
        first.iter().map(|(e, _)| e.revision).collect::<Vec<_>>(),
        again.iter().map(|(e, _)| e.revision).collect::<Vec<_>>(),
        "no new revision"
    );
    // A real change is a new revision; the history keeps both.
    let mut a2 = a.clone();
    a2.name = "A, renamed".into();
    let (e, o) = store.put(a2, None, ChangedBy::Cli).await.unwrap();
    assert_eq!(o, PutOutcome::Updated);
    assert!(e.revision > first[1].0.revision);
    assert_eq!(e.created_at, first[0].0.created_at, "creation time kept");
    let h = store.history("a").await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(
        h.iter()
            .map(|x| x.stored.as_ref().unwrap().changed_by)
            .collect::<Vec<_>>(),
        [ChangedBy::Config, ChangedBy::Cli]
    );
    // Listed by creation.
    let ids: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.config.id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
    // A batch with one bad registry writes nothing.
    let bad = registry_at("c", "http://c.example/hook");
    let c_ok = registry_at("d", "https://d.example/hook");
    let err = store.apply(&[c_ok, bad], ChangedBy::Cli).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(f) if f.field == "registry[1].url"),
        "{err}"
    );
    assert!(store.get("d").await.unwrap().is_none());
}

#[tokio::test]
async fn writes_are_refused_on_a_stale_revision_an_existing_id_or_a_missing_registry() {
    let nats = support::nats().await;
    let store = support::registry_store(&nats.js).await;
    let a = registry_at("a", "https://a.example/hook");
    let created = store.create(a.clone(), ChangedBy::Api).await.unwrap();
    assert!(matches!(
        store.create(a.clone(), ChangedBy::Api).await,
        Err(StoreError::Exists { .. })
    ));
    let mut a2 = a.clone();
    a2.timeout_ms = 5_000;
    let (updated, _) = store
        .put(a2.clone(), Some(created.revision), ChangedBy::Api)
        .await
        .unwrap();
    // Someone holding the old revision loses, and is told the new one.
    let mut a3 = a.clone();
    a3.timeout_ms = 7_000;
    match store.put(a3, Some(created.revision), ChangedBy::Api).await {
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (created.revision, updated.revision));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.delete("nope", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete("a", Some(created.revision)).await,
        Err(StoreError::Conflict { .. })
    ));
    store.delete("a", Some(updated.revision)).await.unwrap();
    assert!(store.get("a").await.unwrap().is_none());
    // Deleted, the history stays, ending with the deletion; the id can be
    // used again.
    let h = store.history("a").await.unwrap();
    assert_eq!(
        h.iter().map(|x| x.operation).collect::<Vec<_>>(),
        ["put", "put", "delete"]
    );
    store.create(a, ChangedBy::Api).await.unwrap();
    assert!(matches!(
        store.put(registry_at("Bad Id", "https://x.example"), None, ChangedBy::Api).await,
        Err(StoreError::Invalid(f)) if f.field == "id"
    ));
}

#[tokio::test]
async fn secrets_are_stored_for_the_dispatcher_shown_as_stars_and_kept_by_the_marker() {
    let nats = support::nats().await;
    let store = support::registry_store(&nats.js).await;
    let (e, _) = store
        .put(with_secrets(), None, ChangedBy::Api)
        .await
        .unwrap();
    // The bucket holds the real values (the dispatcher signs with them)…
    let kv = nats.js.get_key_value(BUCKET).await.unwrap();
    let raw = String::from_utf8(kv.get("books").await.unwrap().unwrap().to_vec()).unwrap();
    assert!(raw.contains(SECRET) && raw.contains("basic-password-value"));
    let read = store.get("books").await.unwrap().unwrap();
    assert_eq!(
        read.config.signing_secret.as_ref().unwrap().expose(),
        SECRET
    );
    // …and nothing else ever shows them.
    let shown = format!(
        "{:?} {}",
        read,
        serde_json::to_string(&read.config).unwrap()
    );
    for s in [SECRET, "hdr-secret-value", "basic-password-value"] {
        assert!(!shown.contains(s), "{s} shown in {shown}");
    }
    // What a client read, sent back with a change: secrets kept.
    let mut back: RegistryConfig =
        serde_json::from_str(&serde_json::to_string(&read.config).unwrap()).unwrap();
    assert!(back.signing_secret.as_ref().unwrap().is_redacted_marker());
    let (same, outcome) = store.put(back.clone(), None, ChangedBy::Api).await.unwrap();
    assert_eq!(
        outcome,
        PutOutcome::Unchanged,
        "markers resolve to the same"
    );
    assert_eq!(same.revision, e.revision);
    back.url = "https://accounting.example/hooks/v2".into();
    let (changed, outcome) = store.put(back, None, ChangedBy::Api).await.unwrap();
    assert_eq!(outcome, PutOutcome::Updated);
    assert_eq!(
        changed.config.signing_secret.as_ref().unwrap().expose(),
        SECRET
    );
    assert_eq!(
        changed.config.headers["authenticationToken"].expose(),
        "hdr-secret-value"
    );
    assert!(matches!(&changed.config.auth,
        AuthConfig::Basic { password, .. } if password.expose() == "basic-password-value"));
    // A marker where nothing is stored is refused, naming the field.
    let mut fresh = with_secrets();
    fresh.id = "other".into();
    keep_stored_secrets(&mut fresh, None).unwrap();
    fresh
        .headers
        .insert("x-api-key".into(), ledgerline::secret::Secret::new("***"));
    let err = store.create(fresh, ChangedBy::Api).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(f) if f.field == "headers.x-api-key"),
        "{err}"
    );
}

/// Waits until the watch shows what `ok` wants.
async fn until(
    w: &mut ledgerline::registry_store::RegistryWatch,
    what: &str,
    ok: impl Fn(&ledgerline::registry::RegistrySet) -> bool,
) {
    let started = Instant::now();
    while !ok(&w.borrow_and_update()) {
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
        let _ = tokio::time::timeout(Duration::from_millis(200), w.changed()).await;
    }
}

#[tokio::test]
async fn the_watch_follows_creates_changes_and_deletes_without_a_restart() {
    let nats = support::nats().await;
    let store = support::registry_store(&nats.js).await;
    create_at(&store, "first", "https://a.example/hook", ChangedBy::Config).await;
    let shutdown = CancellationToken::new();
    let watcher = store.watch(shutdown.clone()).await.unwrap();
    let mut w = watcher.registries.clone();
    assert_eq!(w.borrow().all().len(), 1, "the current set at once");

    // A second writer (another instance, the CLI) makes changes.
    let other = support::registry_store(&nats.js).await;
    create_at(&other, "second", "https://b.example/hook", ChangedBy::Cli).await;
    until(&mut w, "a created registry appears", |s| {
        s.get("second").is_some()
    })
    .await;
    let ids: Vec<_> = w.borrow().all().iter().map(|r| r.id().to_owned()).collect();
    assert_eq!(ids, ["first", "second"], "by creation");

    let mut paused = registry_at("second", "https://b.example/hook");
    paused.enabled = false;
    other.put(paused, None, ChangedBy::Cli).await.unwrap();
    until(&mut w, "a disabled registry shows as disabled", |s| {
        s.get("second").is_some_and(|r| !r.config.enabled)
    })
    .await;

    other.delete("first", None).await.unwrap();
    until(&mut w, "a deleted registry disappears", |s| {
        s.get("first").is_none()
    })
    .await;

    // Garbage written straight into the bucket is skipped, not fatal.
    let kv = nats.js.get_key_value(BUCKET).await.unwrap();
    kv.put("garbage", "{not json".into()).await.unwrap();
    create_at(&other, "third", "https://c.example/hook", ChangedBy::Cli).await;
    until(&mut w, "later changes still arrive", |s| {
        s.get("third").is_some()
    })
    .await;
    assert!(w.borrow().get("garbage").is_none());
    assert!(!watcher.task.is_finished());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_registry_the_policy_no_longer_allows_is_left_out_not_fatal() {
    let nats = support::nats().await;
    // Written by an instance that allows loopback targets…
    let lax = RegistryStore::open(&nats.js, loopback_policy(), 1)
        .await
        .unwrap();
    create_at(&lax, "local", "http://127.0.0.1:9/hook", ChangedBy::Api).await;
    create_at(&lax, "public", "https://a.example/hook", ChangedBy::Api).await;
    // …read by one that does not.
    let strict = support::registry_store(&nats.js).await;
    let shutdown = CancellationToken::new();
    let watcher = strict.watch(shutdown.clone()).await.unwrap();
    let ids: Vec<_> = watcher
        .registries
        .borrow()
        .all()
        .iter()
        .map(|r| r.id().to_owned())
        .collect();
    assert_eq!(ids, ["public"]);
    // Still listed, with why it is not in force.
    let listed = strict.list().await.unwrap();
    let local = listed.iter().find(|e| e.config.id == "local").unwrap();
    assert_eq!(local.problem(strict.policy()).unwrap().field, "url");
    shutdown.cancel();
}

/// What a client reads, as it would send it back: every secret `***`.
fn as_read(c: &RegistryConfig) -> RegistryConfig {
    serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap()
}

#[tokio::test]
async fn a_marker_cannot_carry_a_secret_to_another_origin() {
    let nats = support::nats().await;
    let store = support::registry_store(&nats.js).await;
    let mut books = with_secrets();
    books.query =
        serde_json::from_value(serde_json::json!({"api_key": "query-secret-value"})).unwrap();
    store.put(books, None, ChangedBy::Api).await.unwrap();
    let read = as_read(&store.get("books").await.unwrap().unwrap().config);

    // Another host, or the same host on another port or scheme: the
    // secrets sent to the url must be sent again, naming the first one.
    for evil in [
        "https://evil.example/hooks",
        "https://accounting.example:8443/hooks",
        "https://accounting.example.evil.example/hooks",
    ] {
        let mut moved = read.clone();
        moved.url = evil.into();
        let f = invalid(store.put(moved.clone(), None, ChangedBy::Api).await);
        assert_eq!(f.field, "headers.authenticationToken", "{f}");
        assert!(
            f.message.contains("https://accounting.example")
                && f.message.contains(&evil[..evil.len() - "/hooks".len()])
                && f.message.contains("\"***\""),
            "{f}"
        );
        // Through `registry apply` too, naming the entry.
        let err = store.apply(&[moved], ChangedBy::Cli).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Invalid(f) if f.field == "registry[0].headers.authenticationToken"),
            "{err}"
        );
    }
    // Each secret sent to the url is checked, not only the first.
    let mut moved = read.clone();
    moved.url = "https://evil.example/hooks".into();
    moved.headers.insert(
        "authenticationToken".into(),
        ledgerline::secret::Secret::new("attacker-knows-nothing"),
    );
    let f = invalid(store.put(moved.clone(), None, ChangedBy::Api).await);
    assert_eq!(f.field, "query.api_key", "{f}");
    moved.query = serde_json::from_value(serde_json::json!({"api_key": "new-query-key"})).unwrap();
    let f = invalid(store.put(moved.clone(), None, ChangedBy::Api).await);
    assert_eq!(f.field, "auth.password", "{f}");
    // Nothing was written: the stored registry still points where it did.
    let stored = store.get("books").await.unwrap().unwrap();
    assert_eq!(stored.config.url, "https://accounting.example/hooks");
    // Every secret sent again in clear: accepted; the signing secret (it
    // signs, it is never sent) is kept by its marker.
    moved.auth = AuthConfig::Basic {
        username: "ledger".into(),
        password: ledgerline::secret::Secret::new("new-password"),
    };
    let (e, outcome) = store.put(moved, None, ChangedBy::Api).await.unwrap();
    assert_eq!(outcome, PutOutcome::Updated);
    assert_eq!(e.config.url, "https://evil.example/hooks");
    assert_eq!(e.config.signing_secret.as_ref().unwrap().expose(), SECRET);

    // OAuth2: the client secret goes to the token endpoint; moving that
    // endpoint needs it again, and so does moving the url (the token it
    // mints is sent there).
    let oauth = registry(
        r#"
        id = "oauth"
        url = "https://accounting.example/hooks"
        [auth]
        type = "oauth2_client_credentials"
        token_url = "https://login.accounting.example/token"
        client_id = "ledgerline"
        client_secret = "client-secret-value"
        extra_body = { audience = "extra-body-secret" }
        "#,
    );
    store.put(oauth, None, ChangedBy::Api).await.unwrap();
    let read = as_read(&store.get("oauth").await.unwrap().unwrap().config);
    let mut token_moved = read.clone();
    if let AuthConfig::Oauth2ClientCredentials { token_url, .. } = &mut token_moved.auth {
        *token_url = "https://evil.example/token".into();
    }
    let f = invalid(store.put(token_moved.clone(), None, ChangedBy::Api).await);
    assert_eq!(f.field, "auth.client_secret", "{f}");
    assert!(
        f.message.contains("auth.token_url")
            && f.message.contains("https://login.accounting.example")
            && f.message.contains("https://evil.example"),
        "{f}"
    );
    let mut url_moved = read.clone();
    url_moved.url = "https://evil.example/hooks".into();
    let err = store
        .put(url_moved, None, ChangedBy::Api)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(f) if f.field == "auth.client_secret"),
        "{err}"
    );
    // Same origins, other paths: markers keep the secrets.
    let mut same = read;
    same.url = "https://accounting.example/hooks/v2".into();
    if let AuthConfig::Oauth2ClientCredentials { token_url, .. } = &mut same.auth {
        *token_url = "https://login.accounting.example/oauth/token".into();
    }
    let (e, _) = store.put(same, None, ChangedBy::Api).await.unwrap();
    assert!(matches!(&e.config.auth,
        AuthConfig::Oauth2ClientCredentials { client_secret, .. } if client_secret.expose() == "client-secret-value"));
}
