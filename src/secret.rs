//! Secrets that cannot leak by accident.
//!
//! A [`Secret`] prints and serialises as `***`. The one way to read it is
//! [`Secret::expose`], and the one way to serialise the real value is inside
//! [`reveal_secrets`], used only where ledgerline itself stores a registry
//! (its KV bucket): never for an API response, a log line or an export.

use std::cell::Cell;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a secret looks like wherever it is shown.
pub const REDACTED: &str = "***";

/// A string that must never be shown.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The real value, for the one place that needs it (a header, a HMAC key).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when this is the redaction marker itself: an API client that
    /// sends back what it read (`***`) means "keep the stored value".
    pub fn is_redacted_marker(&self) -> bool {
        self.0 == REDACTED
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

thread_local! {
    static REVEAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with secrets serialising to their real values on this thread,
/// for ledgerline's own storage. Everywhere else they serialise as `***`.
pub fn reveal_secrets<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            REVEAL.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(REVEAL.with(|r| r.replace(true)));
    f()
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if REVEAL.with(Cell::get) {
            s.serialize_str(&self.0)
        } else {
            s.serialize_str(REDACTED)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_or_serialise_their_value() {
        let s = Secret::new("whsec_abc");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "whsec_abc");
        let stored = reveal_secrets(|| serde_json::to_string(&s).unwrap());
        assert_eq!(stored, "\"whsec_abc\"");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
    }
}
