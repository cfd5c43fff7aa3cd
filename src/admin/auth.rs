//! Bearer-token authentication of the `/v1` routes.
//!
//! The presented token is compared with `admin_token` in constant time:
//! both are hashed (SHA-256, fixed length, so not even the length leaks)
//! and the digests compared with `subtle`. Neither token is ever logged.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::warn;

use super::AdminState;
use super::error::ApiError;
use crate::secret::Secret;

/// True when `presented` is the admin token, in time independent of both.
pub fn token_matches(presented: &str, expected: &Secret) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.expose().as_bytes());
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any
/// case, RFC 7235).
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware: lets the request through with the right token, else 401.
pub async fn require_token(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    match bearer(&req) {
        Some(t) if token_matches(t, st.token()) => next.run(req).await,
        Some(_) => {
            warn!(method = %req.method(), path = %req.uri().path(), "admin request refused: wrong bearer token");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the bearer token is not the admin token",
            )
            .with_field("Authorization")
            .into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token: send \"Authorization: Bearer <admin_token>\"",
        )
        .with_field("Authorization")
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_matches() {
        let t = Secret::new("s3cret-token");
        assert!(token_matches("s3cret-token", &t));
        assert!(!token_matches("s3cret-toke", &t));
        assert!(!token_matches("s3cret-token ", &t));
        assert!(!token_matches("", &t));
    }
}
