//! Sources (SPEC 10): sales channels that send their own webhooks to
//! ledgerline, and how each one's payloads become SPEC 1 events.
//!
//! [`SourceConfig`] is what a user writes (TOML `[[source]]`, or JSON over
//! the admin API and in the `sources` bucket); unknown keys are refused.
//! [`SourceConfig::validate`] turns it into a [`Source`] with parsed
//! types, or a [`FieldError`] naming the field. Credentials are
//! [`Secret`]s: they print and serialise as `***` (like a registry's).
//! The mapping of payloads lives in [`crate::mapping`].

use serde::{Deserialize, Serialize};

use crate::domain::wire::wire_names;
use crate::events::MESSAGE_MAX_BYTES;
use crate::mapping::jq::JqProgram;
use crate::money::Currency;
use crate::registry::{
    FieldError, check_header_value, check_id, default_expires_field, default_token_field,
};
use crate::secret::Secret;

/// Default `token_ttl_s` of an `oauth2` source: an hour, as most
/// marketplaces expect of a client-credentials token.
pub const TOKEN_TTL_S_DEFAULT: u64 = 3_600;
/// Bounds of `token_ttl_s`: long enough not to hammer the token endpoint,
/// short enough that a leaked token dies within a day.
pub const TOKEN_TTL_S_MIN: u64 = 60;
pub const TOKEN_TTL_S_MAX: u64 = 86_400;
/// Default and largest `rate_limit_per_s`: requests a source may make per
/// second before it is answered 429 (its burst is one second's worth).
pub const SOURCE_RATE_LIMIT_DEFAULT: u32 = 100;
pub const SOURCE_RATE_LIMIT_MAX: u32 = 10_000;
/// Largest request body, in bytes: an event is at most this big (SPEC 1).
pub const SOURCE_BODY_MAX_BYTES: usize = MESSAGE_MAX_BYTES;
/// Longest `order_id_pointer`, in characters.
pub const POINTER_MAX_CHARS: usize = 256;
/// The gateway's signature header (its reference document).
pub const SIGNATURE_HEADER_DEFAULT: &str = "X-Signature";

/// What a source sends, and so how its payloads are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum SourceKind {
    /// Marketplace order snapshots (`orders/created`, …): the
    /// subscription reference's payloads.
    MarketplaceOrders,
    /// POS payments (`payment/created`, …): the payment webhooks reference.
    PosPayments,
    /// A card gateway's transaction events (`transaction.sale.success`, …).
    Gateway,
    /// Our own SPEC 1 events, over HTTP.
    Events,
    /// Any other channel: the user's jq program maps its payloads
    /// ([`crate::mapping::jq`]).
    Jq,
}

wire_names!(SourceKind);

impl SourceKind {
    pub const ALL: [SourceKind; 5] = [
        SourceKind::MarketplaceOrders,
        SourceKind::PosPayments,
        SourceKind::Gateway,
        SourceKind::Events,
        SourceKind::Jq,
    ];
}

/// How a source proves who it is (SPEC 10).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceAuth {
    /// Anyone who knows the URL (tests, a trusted network).
    #[default]
    None,
    /// `Authorization: Basic …` (the gateway's "Basic" authentication).
    Basic { username: String, password: Secret },
    /// `Authorization: Bearer <token>`.
    Bearer { token: Secret },
    /// An api-key header such as `authenticationToken: <value>`.
    Header { header: String, value: Secret },
    /// Tokens from our own client-credentials endpoint
    /// (`POST /v1/ingest/{source_id}/token`), then `Authorization: Bearer`.
    Oauth2 {
        client_id: String,
        client_secret: Secret,
        #[serde(default = "default_token_field")]
        token_field: String,
        #[serde(default = "default_expires_field")]
        expires_field: String,
        #[serde(default = "default_token_ttl_s")]
        token_ttl_s: u64,
    },
    /// Hex HMAC-SHA256 of the raw body, keyed by `secret`, in `header`.
    Signature {
        #[serde(default = "default_signature_header")]
        header: String,
        secret: Secret,
    },
}

impl SourceAuth {
    /// The `type` name, for listings.
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceAuth::None => "none",
            SourceAuth::Basic { .. } => "basic",
            SourceAuth::Bearer { .. } => "bearer",
            SourceAuth::Header { .. } => "header",
            SourceAuth::Oauth2 { .. } => "oauth2",
            SourceAuth::Signature { .. } => "signature",
        }
    }

    /// Every secret of this auth, with its field name.
    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        match self {
            SourceAuth::None => vec![],
            SourceAuth::Basic { password, .. } => vec![("password", password)],
            SourceAuth::Bearer { token } => vec![("token", token)],
            SourceAuth::Header { value, .. } => vec![("value", value)],
            SourceAuth::Oauth2 { client_secret, .. } => vec![("client_secret", client_secret)],
            SourceAuth::Signature { secret, .. } => vec![("secret", secret)],
        }
    }
}

fn default_token_ttl_s() -> u64 {
    TOKEN_TTL_S_DEFAULT
}
fn default_signature_header() -> String {
    SIGNATURE_HEADER_DEFAULT.to_owned()
}
fn default_true() -> bool {
    true
}
fn default_rate_limit() -> u32 {
    SOURCE_RATE_LIMIT_DEFAULT
}

/// One `[[source]]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `[a-z0-9_-]{1,64}`: the `{source_id}` of its URL.
    pub id: String,
    pub kind: SourceKind,
    /// ISO 4217 code for payloads that carry no currency (required for
    /// `pos_payments` and `gateway`, a fallback for `marketplace_orders`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// `marketplace_orders`: whether item prices include the tax.
    #[serde(default = "default_true")]
    pub prices_include_tax: bool,
    /// `marketplace_orders`: charge the payload's `shippingCost` to the
    /// buyer as a `shipping` fee (by default it is the seller's cost).
    #[serde(default)]
    pub shipping_as_fee: bool,
    /// `gateway`: RFC 6901 pointer to the order id in the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id_pointer: Option<String>,
    /// `events`: a Standard Webhooks secret (`whsec_…`); when set, every
    /// request must carry a valid `webhook-signature` (SPEC 4's scheme).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<Secret>,
    /// `jq`: the jq program that maps a payload to SPEC 1 events (its
    /// text: what the bucket stores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// `jq`: the program in a file, relative to the file that names it.
    /// Read when that file is loaded (`ledgerline run --config`, `source
    /// apply`), which puts its text in `program`: a source that still
    /// names a file (e.g. one sent to the admin API) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_file: Option<String>,
    /// Requests per second before 429 (burst: one second's worth).
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_s: u32,
    #[serde(default)]
    pub auth: SourceAuth,
}

/// A validated source: what the listener runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub config: SourceConfig,
    /// The parsed `currency`.
    pub currency: Option<Currency>,
    /// `jq`: the compiled `program`.
    pub jq: Option<JqProgram>,
}

impl Source {
    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn kind(&self) -> SourceKind {
        self.config.kind
    }
}

fn check_header_name(field: &str, name: &str) -> Result<(), FieldError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > 128 || !name.bytes().all(token) {
        return Err(FieldError::new(
            field,
            format!("{name:?} is not a valid HTTP header name"),
        ));
    }
    Ok(())
}

/// A configured secret must be a real value: not empty, and not the
/// redaction marker (a listing sent back unchanged means "keep it",
/// which only a store with the previous value can resolve).
fn check_secret(field: &str, s: &Secret) -> Result<(), FieldError> {
    if s.expose().trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if s.is_redacted_marker() {
        return Err(FieldError::new(
            field,
            "is the redaction marker \"***\", not a secret",
        ));
    }
    check_header_value(field, s)
}

impl SourceConfig {
    /// Validates every field (SPEC 10); the error names the first bad one.
    pub fn validate(&self) -> Result<Source, FieldError> {
        check_id(&self.id)?;
        let currency = match &self.currency {
            Some(code) => Some(
                Currency::parse(code).map_err(|e| FieldError::new("currency", e.to_string()))?,
            ),
            None => None,
        };
        if currency.is_none() && matches!(self.kind, SourceKind::PosPayments | SourceKind::Gateway)
        {
            return Err(FieldError::new(
                "currency",
                format!(
                    "is required for a {} source: its payloads carry no currency",
                    self.kind
                ),
            ));
        }
        match (&self.order_id_pointer, self.kind) {
            (Some(p), SourceKind::Gateway) => {
                if !p.starts_with('/') || p.len() > POINTER_MAX_CHARS {
                    return Err(FieldError::new(
                        "order_id_pointer",
                        format!(
                            "{p:?} must be a JSON pointer (RFC 6901) such as \
                             \"/event_body/object/invoice\", at most {POINTER_MAX_CHARS} characters"
                        ),
                    ));
                }
            }
            (None, SourceKind::Gateway) => {
                return Err(FieldError::new(
                    "order_id_pointer",
                    "is required for a gateway source: where in the payload the order id is",
                ));
            }
            (Some(_), kind) => {
                return Err(FieldError::new(
                    "order_id_pointer",
                    format!("applies to gateway sources only, not {kind}"),
                ));
            }
            (None, _) => {}
        }
        match &self.signing_secret {
            Some(_) if self.kind != SourceKind::Events => {
                return Err(FieldError::new(
                    "signing_secret",
                    format!(
                        "applies to events sources only (Standard Webhooks), not {}",
                        self.kind
                    ),
                ));
            }
            Some(s) => {
                check_secret("signing_secret", s)?;
                crate::signing::decode_secret(s)
                    .map_err(|m| FieldError::new("signing_secret", m))?;
            }
            None => {}
        }
        if self.rate_limit_per_s == 0 || self.rate_limit_per_s > SOURCE_RATE_LIMIT_MAX {
            return Err(FieldError::new(
                "rate_limit_per_s",
                format!("must be between 1 and {SOURCE_RATE_LIMIT_MAX}"),
            ));
        }
        let jq = self.validate_program()?;
        self.validate_auth().map_err(|e| e.within("auth"))?;
        Ok(Source {
            config: self.clone(),
            currency,
            jq,
        })
    }

    /// `program` for `jq` sources (compiled), nothing for the others.
    fn validate_program(&self) -> Result<Option<JqProgram>, FieldError> {
        if let Some(file) = &self.program_file {
            return Err(FieldError::new(
                "program_file",
                format!(
                    "{file:?} was not read: program_file works in a config file or a file given \
                     to `ledgerline source apply`; elsewhere send the program's text as `program`"
                ),
            ));
        }
        match (&self.program, self.kind) {
            (Some(text), SourceKind::Jq) => JqProgram::compile(text).map(Some),
            (None, SourceKind::Jq) => Err(FieldError::new(
                "program",
                "is required for a jq source: the jq program that maps a payload to events \
                 (or program_file)",
            )),
            (Some(_), kind) => Err(FieldError::new(
                "program",
                format!("applies to jq sources only, not {kind}"),
            )),
            (None, _) => Ok(None),
        }
    }

    fn validate_auth(&self) -> Result<(), FieldError> {
        for (field, secret) in self.auth.secrets() {
            check_secret(field, secret)?;
        }
        match &self.auth {
            SourceAuth::Basic { username, .. } if username.is_empty() || username.contains(':') => {
                Err(FieldError::new(
                    "username",
                    "must be non-empty and without ':'",
                ))
            }
            SourceAuth::Header { header, .. } => check_header_name("header", header),
            SourceAuth::Signature { header, .. } => check_header_name("header", header),
            SourceAuth::Oauth2 {
                client_id,
                token_field,
                expires_field,
                token_ttl_s,
                ..
            } => {
                if client_id.trim().is_empty() {
                    return Err(FieldError::new("client_id", "must not be empty"));
                }
                for (f, v) in [
                    ("token_field", token_field),
                    ("expires_field", expires_field),
                ] {
                    if v.is_empty() || v.len() > 64 {
                        return Err(FieldError::new(f, "must be 1 to 64 characters"));
                    }
                }
                if token_field == expires_field {
                    return Err(FieldError::new(
                        "expires_field",
                        "must differ from token_field",
                    ));
                }
                if !(TOKEN_TTL_S_MIN..=TOKEN_TTL_S_MAX).contains(token_ttl_s) {
                    return Err(FieldError::new(
                        "token_ttl_s",
                        format!("must be between {TOKEN_TTL_S_MIN} and {TOKEN_TTL_S_MAX}"),
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Source, String> {
        let c: SourceConfig = toml::from_str(toml_text).map_err(|e| e.message().to_owned())?;
        c.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn the_spec_example_is_valid() {
        let s = parse(
            r#"
id = "pos-main"
kind = "gateway"
currency = "IDR"
prices_include_tax = true
order_id_pointer = "/event_body/object/invoice"
[auth]
type = "signature"
header = "X-Signature"
secret = "s3cret-key"
"#,
        )
        .unwrap();
        assert_eq!(s.kind(), SourceKind::Gateway);
        assert_eq!(s.currency.map(|c| c.code().to_owned()), Some("IDR".into()));
        assert_eq!(s.config.rate_limit_per_s, SOURCE_RATE_LIMIT_DEFAULT);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            ("id = \"Bad Id\"\nkind = \"events\"", "id:"),
            ("id = \"a\"\nkind = \"pos_payments\"", "currency:"),
            (
                "id = \"a\"\nkind = \"pos_payments\"\ncurrency = \"EURO\"",
                "currency:",
            ),
            (
                "id = \"a\"\nkind = \"gateway\"\ncurrency = \"USD\"",
                "order_id_pointer:",
            ),
            (
                "id = \"a\"\nkind = \"gateway\"\ncurrency = \"USD\"\norder_id_pointer = \"invoice\"",
                "order_id_pointer:",
            ),
            (
                "id = \"a\"\nkind = \"events\"\norder_id_pointer = \"/x\"",
                "order_id_pointer:",
            ),
            (
                "id = \"a\"\nkind = \"events\"\nsigning_secret = \"nope\"",
                "signing_secret:",
            ),
            (
                "id = \"a\"\nkind = \"pos_payments\"\ncurrency = \"EUR\"\nsigning_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"",
                "signing_secret:",
            ),
            (
                "id = \"a\"\nkind = \"events\"\nrate_limit_per_s = 0",
                "rate_limit_per_s:",
            ),
            (
                "id = \"a\"\nkind = \"events\"\n[auth]\ntype = \"bearer\"\ntoken = \"\"",
                "auth.token:",
            ),
            (
                "id = \"a\"\nkind = \"events\"\n[auth]\ntype = \"bearer\"\ntoken = \"***\"",
                "auth.token:",
            ),
            (
                "id = \"a\"\nkind = \"events\"\n[auth]\ntype = \"header\"\nheader = \"bad header\"\nvalue = \"k\"",
                "auth.header:",
            ),
            (
                "id = \"a\"\nkind = \"events\"\n[auth]\ntype = \"basic\"\nusername = \"a:b\"\npassword = \"p\"",
                "auth.username:",
            ),
            (
                "id = \"a\"\nkind = \"events\"\n[auth]\ntype = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_ttl_s = 5",
                "auth.token_ttl_s:",
            ),
            (
                "id = \"a\"\nkind = \"events\"\n[auth]\ntype = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"s\"\nexpires_field = \"access_token\"",
                "auth.expires_field:",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with(want), "{text}\n→ {e}");
        }
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        assert!(parse("id = \"a\"\nkind = \"events\"\ncurency = \"EUR\"").is_err());
        let e = parse("id = \"a\"\nkind = \"xslt\"").unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
        let e = parse("id = \"a\"\nkind = \"events\"\n[auth]\ntype = \"api_key\"").unwrap_err();
        assert!(e.contains("unknown variant"), "{e}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_json() {
        let s = parse(
            "id = \"a\"\nkind = \"events\"\nsigning_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n[auth]\ntype = \"oauth2\"\nclient_id = \"c\"\nclient_secret = \"very-secret\"",
        )
        .unwrap();
        let shown = format!("{s:?} {}", serde_json::to_string(&s.config).unwrap());
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        assert!(shown.contains("\"client_secret\":\"***\""), "{shown}");
        let stored = crate::secret::reveal_secrets(|| serde_json::to_string(&s.config).unwrap());
        assert!(stored.contains("very-secret"));
    }
}
