//! The one TLS crypto provider of the whole binary.
//!
//! rustls is built with `ring` only (no `aws-lc-rs`), so there is exactly
//! one provider to choose; it is installed as the process default before the
//! first TLS client (reqwest, async-nats, lettre) is built. With two
//! providers compiled in, rustls cannot choose and the first TLS connection
//! panics ("Could not automatically determine the process-level
//! CryptoProvider"); `cargo deny` (deny.toml) keeps a second stack out.

use std::sync::Once;

/// Installs `ring` as the process-level rustls provider. Idempotent and
/// cheap: every constructor of a TLS client calls it.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // `Err` means another provider was installed first (only possible
        // if an embedding program did so): that one is then used, which is
        // what the embedder asked for.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
