//! Registries (SPEC 3): where postings go, and how they are shaped.
//!
//! [`RegistryConfig`] is what a user writes (TOML `[[registry]]` or JSON over
//! the admin API); unknown keys are refused. [`RegistryConfig::validate`]
//! turns it into a [`Registry`] with parsed types, or a [`FieldError`] that
//! names the field. Secrets are [`Secret`]s: they never print.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::domain::wire::wire_names;
use crate::events::{EventType, Text};
use crate::ledger::{Dims, EntryType, RevenueRecognition};
use crate::money::{Currency, parse_decimal_str, rate_text};
use crate::secret::Secret;

/// Most notification addresses per registry (SPEC 3).
pub const NOTIFY_EMAILS_MAX: usize = 5;
/// Most ledger code rules per registry: enough for a chart of accounts per
/// product, small enough that first-match search stays trivial.
pub const LEDGER_CODES_MAX: usize = 1_000;
/// Most custom headers or query parameters.
pub const CUSTOM_PARAMS_MAX: usize = 32;
/// Bounds on delivery settings, so one registry cannot hold work forever.
pub const TIMEOUT_MS_MAX: u64 = 120_000;
pub const MAX_ATTEMPTS_MAX: u32 = 100;
pub const MAX_AGE_MAX: Duration = Duration::from_secs(30 * 24 * 3600);
pub const RATE_LIMIT_PER_S_MAX: u32 = 10_000;

/// A column a registry may group entries by (SPEC 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Column {
    Currency,
    Channel,
    ProductId,
    OptionId,
    UnitType,
    TaxRate,
    PaymentMethod,
    FeeKind,
}

wire_names!(Column);

impl Column {
    pub const ALL: [Column; 8] = [
        Column::Currency,
        Column::Channel,
        Column::ProductId,
        Column::OptionId,
        Column::UnitType,
        Column::TaxRate,
        Column::PaymentMethod,
        Column::FeeKind,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The entry's value for this column, as text; `None` where the column
    /// does not apply to the entry.
    pub fn value(self, d: &Dims<'_>) -> Option<String> {
        self.of(d).map(|v| v.to_string())
    }

    /// The entry's value for this column without copying it; `None` where
    /// the column does not apply to the entry.
    pub fn of<'a>(self, d: &Dims<'a>) -> Option<ColumnValue<'a>> {
        let text = match self {
            Column::Currency => return d.currency.map(ColumnValue::Currency),
            // Rates are normalised when parsed, so equal rates are equal here.
            Column::TaxRate => return d.tax_rate.map(ColumnValue::Rate),
            Column::Channel => d.channel,
            Column::ProductId => d.product_id,
            Column::OptionId => d.option_id,
            Column::UnitType => d.unit_type,
            Column::PaymentMethod => d.payment_method,
            Column::FeeKind => d.fee_kind,
        };
        text.map(ColumnValue::Text)
    }
}

/// An entry's value for a column ([`Column::of`]), borrowed from the
/// entry. It displays as the column's text: the code of a currency, a rate
/// without trailing zeros (`0.16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnValue<'a> {
    Text(&'a Text),
    Currency(Currency),
    Rate(Decimal),
}

impl ColumnValue<'_> {
    /// True when the value's text is `want`.
    pub fn is(&self, want: &str) -> bool {
        match self {
            ColumnValue::Text(t) => ***t == *want,
            ColumnValue::Currency(c) => c.code() == want,
            ColumnValue::Rate(r) => rate_text(*r) == want,
        }
    }
}

impl fmt::Display for ColumnValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnValue::Text(t) => f.write_str(t),
            ColumnValue::Currency(c) => f.write_str(c.code()),
            ColumnValue::Rate(r) => fmt::Display::fmt(&r.normalize(), f),
        }
    }
}

/// `delta` sends what changed since the last posting; `full` the whole ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostingMode {
    #[default]
    Delta,
    Full,
}

/// A ledger code rule: every condition given must match; first match wins.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerCodeRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub option_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fee_kind: Option<String>,
    pub code: String,
}

/// How the dispatcher authenticates to the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    #[default]
    None,
    Basic {
        username: String,
        password: Secret,
    },
    Bearer {
        token: Secret,
    },
    /// OAuth2 client credentials, shaped after the subscription reference:
    /// the token endpoint, extra body fields, headers and URL parameters, and
    /// where in the reply the token and its lifetime are.
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        #[serde(default = "default_token_field")]
        token_field: String,
        #[serde(default = "default_expires_field")]
        expires_field: String,
        #[serde(default = "default_token_type")]
        token_type: String,
        /// Extra form fields sent to the token endpoint.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        extra_body: BTreeMap<String, Secret>,
        /// Extra headers sent to the token endpoint.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, Secret>,
        /// Extra URL parameters sent to the token endpoint.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        params: BTreeMap<String, String>,
    },
}

pub(crate) fn default_token_field() -> String {
    "access_token".to_owned()
}
pub(crate) fn default_expires_field() -> String {
    "expires_in".to_owned()
}
fn default_token_type() -> String {
    "Bearer".to_owned()
}

/// Success also needs the body to say so (the order-confirmation reference's
/// `{"status": "1", "message": …}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptRule {
    /// RFC 6901 pointer into the JSON reply, e.g. `/status`.
    pub json_pointer: String,
    /// Values that mean success (strings, numbers, booleans).
    pub success_values: Vec<Value>,
    /// Where the receiver's explanation is, shown when it refuses.
    #[serde(default = "default_message_pointer")]
    pub message_pointer: String,
}

fn default_message_pointer() -> String {
    "/message".to_owned()
}

/// A registry as written by a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub url: String,
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_event_types")]
    pub event_types: Vec<String>,
    /// `None`: every entry type (a balanced posting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_types: Option<Vec<String>>,
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    #[serde(default)]
    pub posting_mode: PostingMode,
    /// When a line's revenue is recognised: on confirmation (the default,
    /// not written out) or on redemption (SPEC 2's `deferred_revenue`).
    #[serde(default, skip_serializing_if = "RevenueRecognition::is_default")]
    pub revenue_recognition: RevenueRecognition,
    #[serde(default)]
    pub ledger_codes: Vec<LedgerCodeRule>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_max_age")]
    pub max_age: String,
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_s: u32,
    #[serde(default)]
    pub notify_emails: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<Secret>,
    /// During a secret rotation: the previous secret, also signed with until
    /// `signing_secret_previous_until` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_previous: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_previous_until: Option<String>,
    /// Custom headers (api-key style); values are treated as secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Custom URL parameters; values are treated as secrets (they often
    /// carry an API key).
    #[serde(default)]
    pub query: BTreeMap<String, Secret>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<AcceptRule>,
}

fn default_enabled() -> bool {
    true
}
fn default_event_types() -> Vec<String> {
    ["order.confirmed", "order.updated", "order.cancelled"]
        .map(str::to_owned)
        .to_vec()
}
fn default_group_by() -> Vec<String> {
    vec!["currency".to_owned()]
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_attempts() -> u32 {
    12
}
fn default_max_age() -> String {
    "72h".to_owned()
}
fn default_rate_limit() -> u32 {
    50
}

/// A refused configuration value: the field (a path such as `group_by[1]`)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error under a parent path: `url` → `registry[2].url`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

/// Instance-wide rules a registry is checked against (SPEC 7).
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    pub allow_insecure_http: bool,
    pub allow_private_targets: Vec<IpNet>,
}

impl TargetPolicy {
    /// True when `ip` may be a webhook target: public, or allow-listed. An
    /// IPv4-mapped address (`::ffff:a.b.c.d`) is its IPv4 address here too,
    /// so an allow-listed IPv4 network covers its mapped form.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !is_private(ip) || self.allow_private_targets.iter().any(|n| n.contains(&ip))
    }
}

/// Loopback, private, link-local, unspecified, CGNAT, unique-local, multicast,
/// documentation and other special-purpose addresses, and the IPv6 ranges
/// that lead to IPv4 through a translator or tunnel (NAT64, 6to4, Teredo,
/// IPv4-compatible): never a webhook target unless allow-listed (SSRF
/// guard). An IPv4-mapped address (`::ffff:a.b.c.d`) follows the IPv4 rules.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                // IETF protocol assignments 192.0.0.0/24
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // IPv4-compatible ::/96 (deprecated; reaches IPv4 by tunnel)
                || s[..6] == [0; 6]
                // NAT64: well-known 64:ff9b::/96 and local-use 64:ff9b:1::/48
                // reach any IPv4 address, private ones included
                || (s[0] == 0x0064 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1))
                // Teredo 2001::/32 and 6to4 2002::/16: IPv4 behind a tunnel
                || (s[0] == 0x2001 && s[1] == 0)
                || s[0] == 0x2002
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // site-local fec0::/10 (deprecated, still routed locally)
                || (s[0] & 0xffc0) == 0xfec0
                || s[0] == 0x2001 && s[1] == 0x0db8
        }
    }
}

/// A parsed ledger code rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRule {
    pub entry_type: Option<EntryType>,
    pub conditions: Vec<(Column, String)>,
    /// Shared by every grouped entry that carries it.
    pub code: Text,
}

impl CodeRule {
    pub fn matches(&self, entry_type: EntryType, dims: &Dims<'_>) -> bool {
        self.entry_type.is_none_or(|t| t == entry_type)
            && self
                .conditions
                .iter()
                .all(|(col, want)| col.of(dims).is_some_and(|v| v.is(want)))
    }
}

/// A validated registry.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    pub config: RegistryConfig,
    pub url: Url,
    pub event_types: BTreeSet<EventType>,
    /// `None`: every entry type.
    pub entry_types: Option<BTreeSet<EntryType>>,
    pub group_by: Vec<Column>,
    pub ledger_codes: Vec<CodeRule>,
    pub max_age: Duration,
}

impl Registry {
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// True when events of type `t` produce postings for this registry.
    pub fn subscribes(&self, t: EventType) -> bool {
        self.event_types.contains(&t)
    }

    /// True when every entry type is included, so postings must balance.
    pub fn includes_all_entry_types(&self) -> bool {
        self.entry_types.is_none()
    }

    pub fn includes(&self, t: EntryType) -> bool {
        self.entry_types.as_ref().is_none_or(|s| s.contains(&t))
    }

    /// The ledger code of an entry: the first rule that matches, else none.
    pub fn ledger_code(&self, t: EntryType, dims: &Dims<'_>) -> Option<&str> {
        self.code_rule(t, dims).map(|r| &*r.code)
    }

    /// The rule that gives an entry its ledger code: the first that matches.
    pub fn code_rule(&self, t: EntryType, dims: &Dims<'_>) -> Option<&CodeRule> {
        self.ledger_codes.iter().find(|r| r.matches(t, dims))
    }
}

pub(crate) fn check_id(id: &str) -> Result<(), FieldError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "id",
            format!("{id:?} must match [a-z0-9_-]{{1,64}}"),
        ))
    }
}

/// Checks a webhook URL against the policy: https (or http when allowed),
/// a host, and no private or loopback literal address unless allow-listed.
/// Hostnames are checked again on the resolved address at connect time.
pub fn check_url(field: &str, raw: &str, policy: &TargetPolicy) -> Result<Url, FieldError> {
    let url = Url::parse(raw)
        .map_err(|e| FieldError::new(field, format!("{raw:?} is not a valid URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_insecure_http => {}
        "http" => {
            return Err(FieldError::new(
                field,
                "must use https:// (http:// needs allow_insecure_http on the instance)",
            ));
        }
        other => {
            return Err(FieldError::new(
                field,
                format!("scheme {other:?} is not allowed; use https://"),
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FieldError::new(
            field,
            "must not carry credentials; use auth = { type = \"basic\", … }",
        ));
    }
    let ip = match url.host() {
        None => return Err(FieldError::new(field, "has no host")),
        Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            (d == "localhost" || d.ends_with(".localhost"))
                .then_some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        }
    };
    if let Some(ip) = ip
        && !policy.ip_allowed(ip)
    {
        return Err(FieldError::new(
            field,
            format!(
                "{ip} is a private or loopback address; add it to allow_private_targets to allow it"
            ),
        ));
    }
    Ok(url)
}

fn check_event_types(list: &[String]) -> Result<BTreeSet<EventType>, FieldError> {
    if list.is_empty() {
        return Err(FieldError::new(
            "event_types",
            "must name at least one event type",
        ));
    }
    let mut set = BTreeSet::new();
    for (i, t) in list.iter().enumerate() {
        let matched: Vec<EventType> = match t.as_str() {
            "*" => EventType::ALL.to_vec(),
            "order.*" | "payment.*" => {
                let prefix = &t[..t.len() - 1];
                EventType::ALL
                    .into_iter()
                    .filter(|e| e.as_str().starts_with(prefix))
                    .collect()
            }
            name => EventType::parse(name).into_iter().collect(),
        };
        if matched.is_empty() {
            return Err(FieldError::new(
                format!("event_types[{i}]"),
                format!(
                    "unknown event type {t:?}; expected one of {}, order.*, payment.* or *",
                    EventType::ALL.map(EventType::as_str).join(", ")
                ),
            ));
        }
        set.extend(matched);
    }
    Ok(set)
}

/// The entry types listed, or `None` for every type a posting of this
/// registry can carry (`deferred_revenue` only on redemption), so that its
/// postings must balance.
fn check_entry_types(
    list: &Option<Vec<String>>,
    recognition: RevenueRecognition,
) -> Result<Option<BTreeSet<EntryType>>, FieldError> {
    let Some(list) = list else { return Ok(None) };
    let mut set = BTreeSet::new();
    for (i, t) in list.iter().enumerate() {
        let e = EntryType::parse(t).ok_or_else(|| {
            FieldError::new(
                format!("entry_types[{i}]"),
                format!(
                    "unknown entry type {t:?}; expected one of {}",
                    EntryType::ALL.map(EntryType::as_str).join(", ")
                ),
            )
        })?;
        set.insert(e);
    }
    if set.is_empty() {
        return Err(FieldError::new(
            "entry_types",
            "must name at least one entry type (omit it for all)",
        ));
    }
    // Every type listed: the same as no filter, so postings must balance.
    let complete = EntryType::ALL.iter().all(|t| {
        set.contains(t)
            || (*t == EntryType::DeferredRevenue
                && recognition == RevenueRecognition::OnConfirmation)
    });
    Ok((!complete).then_some(set))
}

fn check_group_by(list: &[String]) -> Result<Vec<Column>, FieldError> {
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let col = Column::parse(c).ok_or_else(|| {
            FieldError::new(
                format!("group_by[{i}]"),
                format!(
                    "unknown column {c:?}; expected one of {}",
                    Column::ALL.map(Column::as_str).join(", ")
                ),
            )
        })?;
        if out.contains(&col) {
            return Err(FieldError::new(
                format!("group_by[{i}]"),
                format!("{c:?} is listed twice"),
            ));
        }
        out.push(col);
    }
    Ok(out)
}

fn check_rules(rules: &[LedgerCodeRule]) -> Result<Vec<CodeRule>, FieldError> {
    if rules.len() > LEDGER_CODES_MAX {
        return Err(FieldError::new(
            "ledger_codes",
            format!(
                "{} rules, over the limit of {LEDGER_CODES_MAX}",
                rules.len()
            ),
        ));
    }
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = |f: &str| format!("ledger_codes[{i}].{f}");
            let entry_type = match &r.entry_type {
                None => None,
                Some(t) => Some(EntryType::parse(t).ok_or_else(|| {
                    FieldError::new(at("entry_type"), format!("unknown entry type {t:?}"))
                })?),
            };
            if r.code.trim().is_empty() {
                return Err(FieldError::new(at("code"), "must not be empty"));
            }
            let mut conditions = Vec::new();
            let fields = [
                (Column::Currency, &r.currency),
                (Column::Channel, &r.channel),
                (Column::ProductId, &r.product_id),
                (Column::OptionId, &r.option_id),
                (Column::UnitType, &r.unit_type),
                (Column::TaxRate, &r.tax_rate),
                (Column::PaymentMethod, &r.payment_method),
                (Column::FeeKind, &r.fee_kind),
            ];
            for (col, v) in fields {
                if let Some(v) = v {
                    let v = if col == Column::TaxRate {
                        let d: Decimal = parse_decimal_str(v)
                            .map_err(|e| FieldError::new(at("tax_rate"), e.to_string()))?;
                        rate_text(d)
                    } else {
                        v.clone()
                    };
                    conditions.push((col, v));
                }
            }
            Ok(CodeRule {
                entry_type,
                conditions,
                code: Text::from(r.code.as_str()),
            })
        })
        .collect()
}

fn check_header_name(field: &str, name: &str) -> Result<(), FieldError> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let reserved = [
        "content-type",
        "content-length",
        "host",
        "idempotency-key",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-ledger-event-type",
        "user-agent",
    ];
    if !ok {
        return Err(FieldError::new(
            field,
            format!("{name:?} is not a valid header name"),
        ));
    }
    if reserved.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(FieldError::new(
            field,
            format!("{name:?} is set by ledgerline and cannot be overridden"),
        ));
    }
    Ok(())
}

/// A header value must be what an HTTP request can carry: visible ASCII,
/// spaces and tabs. A line break would otherwise make every delivery of the
/// registry fail. The value is a secret: the error does not show it.
pub(crate) fn check_header_value(field: &str, value: &Secret) -> Result<(), FieldError> {
    match value
        .expose()
        .bytes()
        .position(|b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
    {
        None => Ok(()),
        Some(at) => Err(FieldError::new(
            field,
            format!(
                "is not a valid header value: byte {at} is a line break, a control or a \
                 non-ASCII character (only visible ASCII, spaces and tabs are allowed)"
            ),
        )),
    }
}

impl RegistryConfig {
    /// Validates every field (SPEC 3); the error names the first bad one.
    pub fn validate(&self, policy: &TargetPolicy) -> Result<Registry, FieldError> {
        check_id(&self.id)?;
        if self.name.chars().count() > 200 {
            return Err(FieldError::new("name", "is longer than 200 characters"));
        }
        let url = check_url("url", &self.url, policy)?;
        let event_types = check_event_types(&self.event_types)?;
        let entry_types = check_entry_types(&self.entry_types, self.revenue_recognition)?;
        let group_by = check_group_by(&self.group_by)?;
        let ledger_codes = check_rules(&self.ledger_codes)?;
        if self.timeout_ms == 0 || self.timeout_ms > TIMEOUT_MS_MAX {
            return Err(FieldError::new(
                "timeout_ms",
                format!("must be between 1 and {TIMEOUT_MS_MAX}"),
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_MAX {
            return Err(FieldError::new(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS_MAX}"),
            ));
        }
        let max_age = humantime::parse_duration(&self.max_age).map_err(|e| {
            FieldError::new(
                "max_age",
                format!("{:?} is not a duration like \"72h\": {e}", self.max_age),
            )
        })?;
        if max_age.is_zero() || max_age > MAX_AGE_MAX {
            return Err(FieldError::new("max_age", "must be between 1s and 30 days"));
        }
        if self.rate_limit_per_s == 0 || self.rate_limit_per_s > RATE_LIMIT_PER_S_MAX {
            return Err(FieldError::new(
                "rate_limit_per_s",
                format!("must be between 1 and {RATE_LIMIT_PER_S_MAX}"),
            ));
        }
        if self.notify_emails.len() > NOTIFY_EMAILS_MAX {
            return Err(FieldError::new(
                "notify_emails",
                format!(
                    "{} addresses, at most {NOTIFY_EMAILS_MAX} are allowed",
                    self.notify_emails.len()
                ),
            ));
        }
        for (i, e) in self.notify_emails.iter().enumerate() {
            e.parse::<lettre::Address>().map_err(|err| {
                FieldError::new(
                    format!("notify_emails[{i}]"),
                    format!("{e:?} is not an email address: {err}"),
                )
            })?;
        }
        for (f, s) in [
            ("signing_secret", &self.signing_secret),
            ("signing_secret_previous", &self.signing_secret_previous),
        ] {
            if let Some(s) = s {
                crate::signing::decode_secret(s).map_err(|m| FieldError::new(f, m))?;
            }
        }
        match (
            &self.signing_secret_previous,
            &self.signing_secret_previous_until,
        ) {
            (Some(_), None) => {
                return Err(FieldError::new(
                    "signing_secret_previous_until",
                    "is required with signing_secret_previous (when the rotation window ends)",
                ));
            }
            (_, Some(until)) => {
                time::OffsetDateTime::parse(until, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                        FieldError::new(
                            "signing_secret_previous_until",
                            format!("{until:?} is not an RFC 3339 timestamp: {e}"),
                        )
                    })?;
            }
            (None, None) => {}
        }
        if self.headers.len() > CUSTOM_PARAMS_MAX || self.query.len() > CUSTOM_PARAMS_MAX {
            return Err(FieldError::new(
                if self.headers.len() > CUSTOM_PARAMS_MAX {
                    "headers"
                } else {
                    "query"
                },
                format!("at most {CUSTOM_PARAMS_MAX} entries"),
            ));
        }
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            check_header_name(&field, name)?;
            check_header_value(&field, value)?;
        }
        match &self.auth {
            AuthConfig::None | AuthConfig::Basic { .. } | AuthConfig::Bearer { .. } => {}
            AuthConfig::Oauth2ClientCredentials {
                token_url, headers, ..
            } => {
                check_url("auth.token_url", token_url, policy)?;
                for (name, value) in headers {
                    let field = format!("auth.headers.{name}");
                    check_header_name(&field, name)?;
                    check_header_value(&field, value)?;
                }
            }
        }
        if let Some(a) = &self.accept {
            if !a.json_pointer.is_empty() && !a.json_pointer.starts_with('/') {
                return Err(FieldError::new(
                    "accept.json_pointer",
                    "must start with '/' (RFC 6901)",
                ));
            }
            if a.success_values.is_empty() {
                return Err(FieldError::new(
                    "accept.success_values",
                    "must list at least one value",
                ));
            }
        }
        Ok(Registry {
            config: self.clone(),
            url,
            event_types,
            entry_types,
            group_by,
            ledger_codes,
            max_age,
        })
    }

    /// Validates only what the ledger of a posting reads (SPEC 7: what the
    /// offline `ledgerline postings` uses): the id, event and entry types,
    /// grouping and ledger codes. The target (url, auth, headers),
    /// delivery and email settings are not checked: `url` is the
    /// configured one when it parses, else [`OFFLINE_URL`], and `max_age`
    /// zero when it does not parse; nothing offline sends or expires.
    pub fn validate_ledger_shape(&self) -> Result<Registry, FieldError> {
        check_id(&self.id)?;
        let url = Url::parse(&self.url)
            .or_else(|_| Url::parse(OFFLINE_URL))
            .map_err(|e| FieldError::new("url", e.to_string()))?;
        Ok(Registry {
            config: self.clone(),
            url,
            event_types: check_event_types(&self.event_types)?,
            entry_types: check_entry_types(&self.entry_types, self.revenue_recognition)?,
            group_by: check_group_by(&self.group_by)?,
            ledger_codes: check_rules(&self.ledger_codes)?,
            max_age: humantime::parse_duration(&self.max_age).unwrap_or_default(),
        })
    }
}

/// The target of a registry validated offline whose `url` does not parse
/// ([`RegistryConfig::validate_ledger_shape`]); never sent to.
pub const OFFLINE_URL: &str = "https://offline.invalid/";

/// A registry config from TOML text: the one helper of the crate's tests.
#[cfg(test)]
pub(crate) fn config_from_toml(text: &str) -> RegistryConfig {
    toml::from_str(text).expect("the test's registry TOML parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RegistryConfig {
        config_from_toml(
            r#"
            id = "xero-eu"
            url = "https://accounting.example/hooks/orders"
            "#,
        )
    }

    fn policy() -> TargetPolicy {
        TargetPolicy::default()
    }

    #[test]
    fn defaults_make_a_valid_registry() {
        let r = base().validate(&policy()).unwrap();
        assert_eq!(r.group_by, vec![Column::Currency]);
        assert!(r.subscribes(EventType::OrderCancelled));
        assert!(!r.subscribes(EventType::PaymentCreated));
        assert!(r.includes_all_entry_types());
    }

    #[test]
    fn each_bad_field_is_named() {
        type Case = (fn(&mut RegistryConfig), &'static str);
        let cases: Vec<Case> = vec![
            (|r| r.id = "Bad Id".into(), "id"),
            (|r| r.url = "http://accounting.example/x".into(), "url"),
            (|r| r.url = "https://127.0.0.1/x".into(), "url"),
            (|r| r.url = "https://localhost:8080/x".into(), "url"),
            (|r| r.url = "https://[::1]/x".into(), "url"),
            (|r| r.url = "https://10.1.2.3/x".into(), "url"),
            (|r| r.url = "ftp://accounting.example/x".into(), "url"),
            (
                |r| r.entry_types = Some(vec!["revenue".into(), "bogus".into()]),
                "entry_types[1]",
            ),
            (
                |r| r.group_by = vec!["currency".into(), "colour".into()],
                "group_by[1]",
            ),
            (
                |r| r.event_types = vec!["order.shipped".into()],
                "event_types[0]",
            ),
            (
                |r| r.notify_emails = (0..6).map(|i| format!("a{i}@example.com")).collect(),
                "notify_emails",
            ),
            (
                |r| r.notify_emails = vec!["not-an-email".into()],
                "notify_emails[0]",
            ),
            (|r| r.max_age = "forever".into(), "max_age"),
            (|r| r.timeout_ms = 0, "timeout_ms"),
            (
                |r| r.signing_secret = Some(Secret::new("nope")),
                "signing_secret",
            ),
            (
                |r| {
                    r.headers.insert("Idempotency-Key".into(), Secret::new("x"));
                },
                "headers.Idempotency-Key",
            ),
            (
                |r| {
                    r.headers
                        .insert("X-Api-Key".into(), Secret::new("k1\nX-Injected: 1"));
                },
                "headers.X-Api-Key",
            ),
            (
                |r| {
                    r.headers.insert("X-Zero".into(), Secret::new("a\0b"));
                },
                "headers.X-Zero",
            ),
            (
                |r| {
                    r.headers.insert("X Api Key".into(), Secret::new("k1"));
                },
                "headers.X Api Key",
            ),
            (
                |r| {
                    r.auth = AuthConfig::Oauth2ClientCredentials {
                        token_url: "https://login.example/token".into(),
                        client_id: "c".into(),
                        client_secret: Secret::new("s"),
                        scope: None,
                        token_field: default_token_field(),
                        expires_field: default_expires_field(),
                        token_type: default_token_type(),
                        extra_body: BTreeMap::new(),
                        headers: [("X-Token-Key".to_owned(), Secret::new("v\r\n"))].into(),
                        params: BTreeMap::new(),
                    }
                },
                "auth.headers.X-Token-Key",
            ),
            (
                |r| {
                    r.ledger_codes = vec![LedgerCodeRule {
                        entry_type: Some("revenu".into()),
                        code: "200".into(),
                        ..Default::default()
                    }]
                },
                "ledger_codes[0].entry_type",
            ),
        ];
        for (mutate, field) in cases {
            let mut r = base();
            mutate(&mut r);
            let err = r.validate(&policy()).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn loopback_is_allowed_when_allow_listed_and_http_when_insecure_is_on() {
        let mut r = base();
        r.url = "http://127.0.0.1:9000/hook".into();
        let p = TargetPolicy {
            allow_insecure_http: true,
            allow_private_targets: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert!(r.validate(&p).is_ok());
    }

    #[test]
    fn special_purpose_addresses_are_private_and_mapped_v4_follows_the_v4_rules() {
        let private = [
            "64:ff9b::a00:1",         // NAT64 of 10.0.0.1
            "64:ff9b::808:808",       // NAT64 of 8.8.8.8: still a translator
            "64:ff9b:1::1",           // local-use NAT64
            "2002:7f00:1::1",         // 6to4 of 127.0.0.1
            "2002:808:808::1",        // 6to4
            "::7f00:1",               // IPv4-compatible 127.0.0.1
            "::808:808",              // IPv4-compatible, deprecated
            "fec0::1",                // site-local
            "feff::1",                // site-local, top
            "2001::1",                // Teredo
            "2001:0:ffff::1",         // Teredo
            "192.0.0.1",              // IETF protocol assignments
            "192.0.0.255",            //
            "::ffff:10.0.0.1",        // mapped private
            "::ffff:127.0.0.1",       // mapped loopback
            "::ffff:169.254.169.254", // mapped metadata service
            "::ffff:192.0.0.8",       // mapped protocol assignment
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "169.254.169.254",
            "100.64.0.1",
        ];
        let public = [
            "8.8.8.8",
            "192.0.1.1",
            "::ffff:8.8.8.8",
            "2001:4860:4860::8888",
            "2003::1",
            "64:ff9b:2::1",
        ];
        for a in private {
            assert!(is_private(a.parse().unwrap()), "{a} must be refused");
        }
        for a in public {
            assert!(!is_private(a.parse().unwrap()), "{a} is public");
        }
        // A mapped address follows the allow-list of its v4 form.
        let p = TargetPolicy {
            allow_insecure_http: false,
            allow_private_targets: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(p.ip_allowed("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!p.ip_allowed("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<RegistryConfig>(
            "id = \"a\"\nurl = \"https://x.example\"\ncolour = 1\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn ledger_codes_first_match_wins() {
        let mut r = base();
        r.ledger_codes = vec![
            LedgerCodeRule {
                entry_type: Some("revenue".into()),
                product_id: Some("museum".into()),
                code: "200".into(),
                ..Default::default()
            },
            LedgerCodeRule {
                entry_type: Some("revenue".into()),
                code: "201".into(),
                ..Default::default()
            },
            LedgerCodeRule {
                entry_type: Some("tax".into()),
                tax_rate: Some("0.160".into()),
                code: "820".into(),
                ..Default::default()
            },
        ];
        let r = r.validate(&policy()).unwrap();
        let (museum, zoo) = (Text::from("museum"), Text::from("zoo"));
        let museum = Dims {
            product_id: Some(&museum),
            ..Dims::default()
        };
        let other = Dims {
            product_id: Some(&zoo),
            ..Dims::default()
        };
        let tax16 = Dims {
            tax_rate: Some(Decimal::new(16, 2)),
            ..Dims::default()
        };
        assert_eq!(r.ledger_code(EntryType::Revenue, &museum), Some("200"));
        assert_eq!(r.ledger_code(EntryType::Revenue, &other), Some("201"));
        assert_eq!(r.ledger_code(EntryType::Tax, &tax16), Some("820"));
        assert_eq!(r.ledger_code(EntryType::Cashflow, &museum), None);
    }
}

/// The registries in force, shared by aggregator and dispatcher. Replaced
/// whole when a registry changes, so readers see a consistent set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrySet {
    registries: Vec<Registry>,
}

impl From<Vec<Registry>> for RegistrySet {
    fn from(registries: Vec<Registry>) -> Self {
        Self::new(registries)
    }
}

impl RegistrySet {
    pub fn new(registries: Vec<Registry>) -> Self {
        Self { registries }
    }

    /// In the order they were configured.
    pub fn all(&self) -> &[Registry] {
        &self.registries
    }

    pub fn get(&self, id: &str) -> Option<&Registry> {
        self.registries.iter().find(|r| r.id() == id)
    }
}
