//! Configuration (SPEC 7): defaults → TOML file → `LEDGERLINE_<KEY>`
//! environment → CLI flags, then validated as a whole.
//!
//! The file and the `LEDGERLINE_*` variables are layered with [`figment`]
//! (nested keys as `LEDGERLINE_SMTP__HOST`); flags are applied by the
//! commands ([`crate::cli::args`]). Unknown keys in the file are refused,
//! naming the key and its line, so a typo never silently falls back to a
//! default; a variable for an unknown key of `[smtp]` or `[delivery]` is
//! refused too, while a `LEDGERLINE_*` variable that is no config key at
//! all (`LEDGERLINE_HOME`) is warned about and ignored. Every error names
//! the key or the variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::dispatcher::schedule::RETRY_DELAY_MAX;
use crate::ledger::{LedgerOptions, TaxRounding};
use crate::money::Rounding;
use crate::registry::{FieldError, Registry, RegistryConfig, TargetPolicy};
use crate::secret::Secret;
use crate::source::{Source, SourceConfig};

/// Environment variables with the `LEDGERLINE_` prefix that are not config
/// keys (they steer logging and the CLI).
pub const NON_CONFIG_ENV: [&str; 3] = [
    "LEDGERLINE_LOG",
    "LEDGERLINE_LOG_FORMAT",
    "LEDGERLINE_CONFIG",
];

/// Largest config file read, in bytes: a registry list, not a data set.
pub const CONFIG_MAX_BYTES: u64 = 4 * 1024 * 1024;

/// SMTP settings for failure emails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// The SMTP server's host name.
    pub host: String,
    /// Its port (default 25).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// The sender address of every failure email.
    pub from: String,
    /// Login name, when the server wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for `username` (shown as `***`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// `none` (plain, for local sinks), `starttls` or `tls`.
    #[serde(default = "default_smtp_tls")]
    pub tls: String,
    /// Most emails per registry per hour, so a failing receiver cannot flood
    /// an inbox.
    #[serde(default = "default_emails_per_hour")]
    pub max_emails_per_hour: u32,
}

fn default_smtp_port() -> u16 {
    25
}
fn default_smtp_tls() -> String {
    "none".to_owned()
}
fn default_emails_per_hour() -> u32 {
    10
}

/// Delivery tuning shared by every registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Delay before each retry, in order; the last repeats. Jitter of up to
    /// ±20% is added to each.
    #[serde(default = "default_retry_schedule")]
    pub retry_schedule: Vec<String>,
    /// Most (registry, order) deliveries in flight at once, per registry.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Consecutive failures that open a registry's circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker waits before a probe.
    #[serde(default = "default_breaker_cool_down")]
    pub breaker_cool_down: String,
}

fn default_retry_schedule() -> Vec<String> {
    ["5s", "30s", "2m", "10m", "30m", "1h", "2h", "4h"]
        .map(str::to_owned)
        .to_vec()
}
fn default_max_in_flight() -> usize {
    256
}
fn default_breaker_failures() -> u32 {
    10
}
fn default_breaker_cool_down() -> String {
    "30s".to_owned()
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retry_schedule: default_retry_schedule(),
            max_in_flight: default_max_in_flight(),
            breaker_failures: default_breaker_failures(),
            breaker_cool_down: default_breaker_cool_down(),
        }
    }
}

/// The whole configuration file. A key left out takes its value from
/// [`Config::default`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub nats_url: String,
    /// Replicas of the streams and buckets ledgerline creates (SPEC 7): 1
    /// on a single server, 3 on a cluster. An existing stream or bucket is
    /// never changed to match; a difference is logged at start-up.
    pub stream_replicas: usize,
    /// A NATS credentials file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_creds: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_token: Option<Secret>,
    /// A CA certificate for a NATS server with TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Prefix of input subjects: `<prefix>.<order_id>`.
    pub subject_prefix: String,
    pub admin_listen: String,
    /// Where inbound webhooks are taken (SPEC 10), default
    /// [`INGEST_LISTEN_DEFAULT`]. `run` serves it when this is set or a
    /// `[[source]]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_listen: Option<String>,
    /// How long the active instance's lease lives without renewal: a
    /// standby takes over about this long after the active one dies
    /// ([`crate::lease`]).
    pub lease_ttl: String,
    /// How long NATS waits for a consumer's ack before it hands the message
    /// out again: the aggregator's events and each registry's postings. A
    /// live process sends progress acks while it works, so this is how long
    /// a killed instance's in-flight work waits before another process (or
    /// its own restart) takes it up.
    pub ack_wait: String,
    /// Several `run` instances share the delivery: each delivers a fair
    /// share of the registries, one lease per registry
    /// ([`crate::lease::shares`]), instead of one instance delivering to
    /// all while the others stand by (SPEC 9).
    pub share_registries: bool,
    /// Order partitions (SPEC 9): 0 (the default) keeps one active
    /// aggregator; `P` > 0 splits ORDERS into `P` partitions by a hash of
    /// the order id (a subject transform fixed when the stream is created)
    /// and every `run` instance aggregates a fair share of them, one lease
    /// per partition ([`crate::streams::orders`]).
    pub order_partitions: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    pub rounding: Rounding,
    pub tax_rounding: TaxRounding,
    pub allow_insecure_http: bool,
    pub allow_private_targets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpConfig>,
    pub delivery: DeliveryConfig,
    pub registry: Vec<RegistryConfig>,
    #[serde(default)]
    pub source: Vec<SourceConfig>,
}

/// The inbound webhooks' address when `ingest_listen` is not set (SPEC 7).
pub const INGEST_LISTEN_DEFAULT: &str = "127.0.0.1:8089";

impl Config {
    /// `ack_wait` as a duration: 2 s to 10 min (shorter, and the events a
    /// busy aggregator has queued would be handed out again while they wait).
    pub fn ack_wait(&self) -> Result<Duration, FieldError> {
        match humantime::parse_duration(&self.ack_wait) {
            Ok(d) if (Duration::from_secs(2)..=Duration::from_secs(600)).contains(&d) => Ok(d),
            _ => Err(FieldError::new(
                "ack_wait",
                format!(
                    "{:?} must be a duration from 2s to 10m, like \"30s\"",
                    self.ack_wait
                ),
            )),
        }
    }

    /// The inbound listener's address: `ingest_listen`, else the default.
    pub fn ingest_addr(&self) -> &str {
        self.ingest_listen
            .as_deref()
            .unwrap_or(INGEST_LISTEN_DEFAULT)
    }

    /// Where ORDERS keeps each order's events (`subject_prefix`,
    /// `order_partitions`).
    pub fn order_subjects(&self) -> crate::streams::OrderSubjects {
        crate::streams::OrderSubjects::new(self.subject_prefix.clone(), self.order_partitions)
    }

    /// True when `run` serves inbound webhooks: `ingest_listen` is set or
    /// a `[[source]]` is configured.
    pub fn serves_ingest(&self) -> bool {
        self.ingest_listen.is_some() || !self.source.is_empty()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            stream_replicas: 1,
            nats_creds: None,
            nats_token: None,
            nats_tls_ca: None,
            subject_prefix: "orders".to_owned(),
            admin_listen: "127.0.0.1:8088".to_owned(),
            lease_ttl: "10s".to_owned(),
            ack_wait: "30s".to_owned(),
            share_registries: false,
            order_partitions: 0,
            admin_token: None,
            rounding: Rounding::default(),
            tax_rounding: TaxRounding::default(),
            allow_insecure_http: false,
            allow_private_targets: Vec::new(),
            smtp: None,
            delivery: DeliveryConfig::default(),
            registry: Vec::new(),
            ingest_listen: None,
            source: Vec::new(),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is larger than {CONFIG_MAX_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{env}: unknown environment setting; config keys are {keys}")]
    UnknownEnv { env: String, keys: String },
    #[error("{env}: {message}")]
    BadEnv { env: String, message: String },
    #[error("config {0}")]
    Invalid(#[from] FieldError),
    #[error("config file {path}: {source}")]
    ProgramFile {
        path: String,
        #[source]
        source: crate::source_store::ProgramFileError,
    },
}

/// The configuration, validated: what the rest of ledgerline runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Config,
    /// `ack_wait`, parsed.
    pub ack_wait: Duration,
    pub ledger: LedgerOptions,
    pub policy: TargetPolicy,
    pub registries: Vec<Registry>,
    pub sources: Vec<Source>,
}

/// What the offline `ledgerline postings` runs on ([`Config::validate_offline`]).
#[derive(Debug, Clone)]
pub struct OfflineSettings {
    pub ledger: LedgerOptions,
    pub registries: Vec<Registry>,
}

impl Settings {
    /// Settings for a pipeline whose receivers listen on this machine (the
    /// demo, tests): `nats_url`, plain HTTP and 127.0.0.0/8 targets allowed,
    /// then `rest` (more top-level keys, then tables); no environment
    /// overlay. `shown` names the text in errors. The URL is quoted as TOML,
    /// so no URL can break the text (a parse error prints the line,
    /// credentials included).
    pub fn on_loopback(nats_url: &str, rest: &str, shown: &str) -> Result<Settings, ConfigError> {
        let nats_url = toml::Value::String(nats_url.to_owned());
        let text = format!(
            "nats_url = {nats_url}\nallow_insecure_http = true\n\
             allow_private_targets = [\"127.0.0.0/8\"]\n{rest}"
        );
        Config::from_toml_with_env(&text, shown, std::iter::empty())?.validate()
    }
}

/// A TOML syntax error as "line L, column C: what". Never the error's own
/// text: it quotes the offending line, which may hold a secret (a password
/// in `nats_url`, a token, a registry's credentials).
fn toml_error_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end().replace('\n', " ");
    let Some(before) = e.span().and_then(|s| text.get(..s.start)) else {
        return message;
    };
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    match key_before(before) {
        Some(key) => format!("line {line}, column {column}: {key}: {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// The key whose value starts before the end of `before` on its last line
/// (`tax_rounding`, `smtp.port`: the name before `=`, under the last table
/// header), so an error in a value names its key. Only the name is read,
/// never the value.
fn key_before(before: &str) -> Option<String> {
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = before[line_start..].split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() {
        return None;
    }
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_owned(),
    })
}

/// How an environment variable's text becomes a config value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvKind {
    /// The text as it is: a string, or a number or boolean read from it
    /// (`"2525"`, `"true"`, `"1"`) when the key wants one.
    Text,
    /// A comma-separated list of strings (blanks around items dropped).
    List,
}

/// Every key a `LEDGERLINE_<KEY>` variable may set, as its path in the
/// file (`smtp.host` is `LEDGERLINE_SMTP__HOST`). `[[registry]]` and
/// `[[source]]` are not here: arrays of tables come from the file, the
/// admin API or `registry apply` / `source apply`.
const ENV_KEYS: [(&str, EnvKind); 28] = [
    ("nats_url", EnvKind::Text),
    ("stream_replicas", EnvKind::Text),
    ("nats_creds", EnvKind::Text),
    ("nats_token", EnvKind::Text),
    ("nats_tls_ca", EnvKind::Text),
    ("subject_prefix", EnvKind::Text),
    ("admin_listen", EnvKind::Text),
    ("ingest_listen", EnvKind::Text),
    ("lease_ttl", EnvKind::Text),
    ("ack_wait", EnvKind::Text),
    ("share_registries", EnvKind::Text),
    ("order_partitions", EnvKind::Text),
    ("admin_token", EnvKind::Text),
    ("rounding", EnvKind::Text),
    ("tax_rounding", EnvKind::Text),
    ("allow_insecure_http", EnvKind::Text),
    ("allow_private_targets", EnvKind::List),
    ("smtp.host", EnvKind::Text),
    ("smtp.port", EnvKind::Text),
    ("smtp.from", EnvKind::Text),
    ("smtp.username", EnvKind::Text),
    ("smtp.password", EnvKind::Text),
    ("smtp.tls", EnvKind::Text),
    ("smtp.max_emails_per_hour", EnvKind::Text),
    ("delivery.retry_schedule", EnvKind::List),
    ("delivery.max_in_flight", EnvKind::Text),
    ("delivery.breaker_failures", EnvKind::Text),
    ("delivery.breaker_cool_down", EnvKind::Text),
];

/// Tables whose keys the environment sets one by one.
const ENV_TABLES: [&str; 2] = ["smtp", "delivery"];

/// Arrays of tables: never from the environment.
const FILE_ONLY_KEYS: [&str; 2] = ["registry", "source"];

/// The variable that sets the key at `path`: `smtp.host` →
/// `LEDGERLINE_SMTP__HOST`.
pub fn env_var_name(path: &str) -> String {
    format!(
        "LEDGERLINE_{}",
        path.replace('.', "__").to_ascii_uppercase()
    )
}

/// The variables of the keys under `table` (`""`: every key).
fn env_vars_under(table: &str) -> String {
    ENV_KEYS
        .iter()
        .filter(|(k, _)| table.is_empty() || k.starts_with(&format!("{table}.")))
        .map(|(k, _)| env_var_name(k))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `LEDGERLINE_*` variable that sets a config key.
#[derive(Debug)]
struct EnvSetting {
    /// The variable's name, as errors show it.
    var: String,
    /// The key's path in the file, e.g. `smtp.host`.
    path: &'static str,
    value: figment::value::Value,
}

/// What the `LEDGERLINE_*` variables of `env` set, sorted by name, and the
/// names of those that are no config key and are ignored (for a warning).
/// A variable meant for a key that cannot be set so is an error naming it:
/// an unknown key of `[smtp]` or `[delivery]`, a nested key written with
/// one underscore, `[[registry]]` or `[[source]]`.
fn read_env(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Vec<EnvSetting>, Vec<String>), ConfigError> {
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("LEDGERLINE_") && !NON_CONFIG_ENV.contains(&k.as_str()))
        .collect();
    let mut settings = Vec::new();
    let mut ignored = Vec::new();
    for (var, raw) in vars {
        let path = var["LEDGERLINE_".len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        if let Some(&(path, kind)) = ENV_KEYS.iter().find(|(k, _)| *k == path) {
            let value = match kind {
                EnvKind::Text => figment::value::Value::from(raw),
                EnvKind::List => figment::value::Value::from(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<String>>(),
                ),
            };
            settings.push(EnvSetting { var, path, value });
            continue;
        }
        let head = path.split('.').next().unwrap_or_default();
        if FILE_ONLY_KEYS.contains(&head) {
            return Err(ConfigError::BadEnv {
                env: var,
                message: format!(
                    "[[{head}]] is a list of tables, set in the config file or with \
                     `ledgerline {head} apply`, not from the environment"
                ),
            });
        }
        if ENV_TABLES.contains(&head) {
            return Err(ConfigError::UnknownEnv {
                env: var,
                keys: env_vars_under(head),
            });
        }
        for table in ENV_TABLES {
            if let Some(key) = path.strip_prefix(&format!("{table}_")) {
                let nested = format!("{table}.{key}");
                if ENV_KEYS.iter().any(|(k, _)| *k == nested) {
                    return Err(ConfigError::BadEnv {
                        env: var,
                        message: format!(
                            "keys of [{table}] take a double underscore: {}",
                            env_var_name(&nested)
                        ),
                    });
                }
            }
        }
        ignored.push(var);
    }
    Ok((settings, ignored))
}

/// One layer of the configuration for [`figment`]: the file's keys or one
/// variable's, named so that an error says where its value came from.
struct Layer {
    name: String,
    dict: figment::value::Dict,
}

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name.clone())
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.dict.clone()))
    }
}

/// Most replicas JetStream keeps of a stream.
pub const STREAM_REPLICAS_MAX: usize = 5;

/// Shortest `admin_token` accepted, in characters: 16 random characters
/// are beyond guessing; a word or a name is not.
pub const ADMIN_TOKEN_MIN_CHARS: usize = 16;

/// Placeholders seen in examples and tutorials (compared in lower case,
/// letters and digits only): a token that contains one is refused whatever
/// its length.
const ADMIN_TOKEN_PLACEHOLDERS: [&str; 8] = [
    "changeme",
    "replaceme",
    "placeholder",
    "yourtoken",
    "yoursecret",
    "tokenhere",
    "secrethere",
    "example",
];

/// Refuses an admin token that can be guessed: too short, a known
/// placeholder, or one character repeated. The token is never shown.
fn check_admin_token(token: &Secret) -> Result<(), FieldError> {
    let t = token.expose();
    let n = t.chars().count();
    let advice = "use at least 16 random characters, e.g. `openssl rand -hex 32`";
    if n < ADMIN_TOKEN_MIN_CHARS {
        return Err(FieldError::new(
            "admin_token",
            format!("is {n} characters long, too short to be safe; {advice}"),
        ));
    }
    let letters: String = t
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if ADMIN_TOKEN_PLACEHOLDERS.iter().any(|p| letters.contains(p)) {
        return Err(FieldError::new(
            "admin_token",
            format!("is a placeholder from an example, not a secret; {advice}"),
        ));
    }
    let mut chars = t.chars();
    if let Some(first) = chars.next()
        && chars.all(|c| c == first)
    {
        return Err(FieldError::new(
            "admin_token",
            format!("is one character repeated; {advice}"),
        ));
    }
    Ok(())
}

/// Something validated with an id that must be unique among its kind.
trait HasId {
    fn id(&self) -> &str;
}

impl HasId for Registry {
    fn id(&self) -> &str {
        Registry::id(self)
    }
}

impl HasId for Source {
    fn id(&self) -> &str {
        Source::id(self)
    }
}

/// Validates each `[[<what>]]` entry, naming `<what>[i].<field>` on error
/// and refusing an id used twice.
fn validate_each<C, T: HasId>(
    list: &[C],
    what: &str,
    validate: impl Fn(&C) -> Result<T, FieldError>,
) -> Result<Vec<T>, FieldError> {
    let mut out: Vec<T> = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        let at = format!("{what}[{i}]");
        let item = validate(c).map_err(|e| e.within(&at))?;
        if out.iter().any(|o| o.id() == item.id()) {
            return Err(FieldError::new(
                format!("{at}.id"),
                format!("{:?} is used by another {what}", item.id()),
            ));
        }
        out.push(item);
    }
    Ok(out)
}

impl Config {
    /// Reads `path` (or only defaults when `None`), overlays the
    /// `LEDGERLINE_*` variables of `env`, and parses the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, shown) = match path {
            Some(p) => {
                let meta = std::fs::metadata(p).map_err(|source| ConfigError::Io {
                    path: p.to_owned(),
                    source,
                })?;
                if meta.len() > CONFIG_MAX_BYTES {
                    return Err(ConfigError::TooLarge { path: p.to_owned() });
                }
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                    path: p.to_owned(),
                    source,
                })?;
                (text, p.display().to_string())
            }
            None => (String::new(), "(defaults)".to_owned()),
        };
        let mut config = Self::from_toml_with_env(&text, &shown, env)?;
        if let Some(p) = path {
            // A jq source's program_file is relative to this file.
            let base = p.parent().unwrap_or(Path::new("."));
            crate::source_store::read_program_files(&mut config.source, base).map_err(
                |source| ConfigError::ProgramFile {
                    path: shown,
                    source,
                },
            )?;
        }
        Ok(config)
    }

    /// Parses TOML text and overlays environment settings: the file, then
    /// each `LEDGERLINE_*` variable that sets a key (merged with
    /// [`figment`]). The file alone is read strictly first, so an unknown
    /// key or a wrong type in it is named with its line; an error in a
    /// variable's value names the variable. A `LEDGERLINE_*` variable that
    /// is no config key is logged as a warning and ignored.
    pub fn from_toml_with_env(
        text: &str,
        shown: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: shown.to_owned(),
            message: toml_error_message(text, &e),
        };
        let table: toml::Table = toml::from_str(text).map_err(parse_err)?;
        // A key missing from the file may come from the environment; the
        // merged layers below say so when it comes from neither.
        if let Err(e) = toml::from_str::<Config>(text)
            && !e.message().starts_with("missing field")
        {
            return Err(parse_err(e));
        }
        let (settings, ignored) = read_env(env)?;
        for var in &ignored {
            tracing::warn!(
                variable = %var,
                "{var} is not a configuration setting and is ignored \
                 (docs/configuration.md lists the LEDGERLINE_* variables)"
            );
        }
        let file = figment::value::Value::serialize(&table)
            .ok()
            .and_then(|v| v.into_dict())
            .ok_or_else(|| ConfigError::Parse {
                path: shown.to_owned(),
                message: "the file is not a table of keys".to_owned(),
            })?;
        let mut layers = figment::Figment::from(Layer {
            name: format!("config file {shown}"),
            dict: file,
        });
        for s in settings {
            let dict = figment::util::nest(s.path, s.value)
                .into_dict()
                .unwrap_or_default();
            layers = layers.merge(Layer { name: s.var, dict });
        }
        // Lossy: a variable's text "2525" or "true" reads as the number or
        // boolean its key wants (the file's own types were checked above).
        layers.extract_lossy::<Config>().map_err(|e| {
            let key = e.path.join(".");
            let what = if key.is_empty() {
                e.kind.to_string()
            } else {
                format!("{key}: {}", e.kind)
            };
            match e.metadata.as_ref().map(|m| m.name.to_string()) {
                Some(var) if var.starts_with("LEDGERLINE_") => ConfigError::BadEnv {
                    env: var,
                    message: what,
                },
                _ => ConfigError::Parse {
                    path: shown.to_owned(),
                    message: what,
                },
            }
        })
    }

    /// Validates only what the offline `ledgerline postings` uses (SPEC 7):
    /// the rounding (typed when parsed) and the registries' ledger shape
    /// ([`RegistryConfig::validate_ledger_shape`]). URLs, the admin API,
    /// SMTP, delivery and sources are not checked: a config that `run`
    /// refuses for them still computes postings.
    pub fn validate_offline(&self) -> Result<OfflineSettings, ConfigError> {
        let registries = validate_each(
            &self.registry,
            "registry",
            RegistryConfig::validate_ledger_shape,
        )?;
        Ok(OfflineSettings {
            ledger: LedgerOptions {
                rounding: self.rounding,
                tax_rounding: self.tax_rounding,
            },
            registries,
        })
    }

    /// Validates everything, naming the first bad key.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        let mut nets = Vec::new();
        for (i, s) in self.allow_private_targets.iter().enumerate() {
            let net: IpNet = s
                .parse()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    FieldError::new(
                        format!("allow_private_targets[{i}]"),
                        format!("{s:?} is not a CIDR like \"127.0.0.0/8\""),
                    )
                })?;
            nets.push(net);
        }
        if let Some((scheme, _)) = self.nats_url.split_once("://")
            && !["nats", "tls", "ws", "wss"].contains(&scheme)
        {
            return Err(FieldError::new(
                "nats_url",
                format!(
                    "{:?} must start with nats://, tls://, ws:// or wss://",
                    crate::streams::redact_url(&self.nats_url)
                ),
            )
            .into());
        }
        if self.subject_prefix.is_empty()
            || !self.subject_prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
        {
            return Err(FieldError::new(
                "subject_prefix",
                "must be dot-separated tokens of [A-Za-z0-9_-]",
            )
            .into());
        }
        if !(1..=STREAM_REPLICAS_MAX).contains(&self.stream_replicas) {
            return Err(FieldError::new(
                "stream_replicas",
                format!(
                    "is {}; JetStream keeps 1 to {STREAM_REPLICAS_MAX} replicas (1 on a single server, 3 on a cluster)",
                    self.stream_replicas
                ),
            )
            .into());
        }
        if self.order_partitions > crate::streams::orders::PARTITIONS_MAX {
            return Err(FieldError::new(
                "order_partitions",
                format!(
                    "is {}; use 0 (no partitions) to {} (a few times the most instances you will run, e.g. 16)",
                    self.order_partitions,
                    crate::streams::orders::PARTITIONS_MAX
                ),
            )
            .into());
        }
        if let Some(token) = &self.admin_token {
            check_admin_token(token)?;
        }
        match humantime::parse_duration(&self.lease_ttl) {
            Ok(ttl) if (Duration::from_secs(4)..=Duration::from_secs(600)).contains(&ttl) => {}
            _ => {
                return Err(FieldError::new(
                    "lease_ttl",
                    format!(
                        "{:?} must be a duration from 4s to 10m, like \"10s\"",
                        self.lease_ttl
                    ),
                )
                .into());
            }
        }
        let ack_wait = self.ack_wait()?;
        if self.admin_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(FieldError::new(
                "admin_listen",
                format!(
                    "{:?} is not an address like \"127.0.0.1:8088\"",
                    self.admin_listen
                ),
            )
            .into());
        }
        if let Some(addr) = &self.ingest_listen
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(FieldError::new(
                "ingest_listen",
                format!("{addr:?} is not an address like \"{INGEST_LISTEN_DEFAULT}\""),
            )
            .into());
        }
        for (i, d) in self.delivery.retry_schedule.iter().enumerate() {
            let field = || format!("delivery.retry_schedule[{i}]");
            let delay = humantime::parse_duration(d)
                .map_err(|e| FieldError::new(field(), format!("{d:?} is not a duration: {e}")))?;
            if delay > RETRY_DELAY_MAX {
                return Err(FieldError::new(
                    field(),
                    format!(
                        "{d:?} is longer than {} (no retry can wait longer than the longest max_age)",
                        humantime::format_duration(RETRY_DELAY_MAX)
                    ),
                )
                .into());
            }
        }
        if self.delivery.retry_schedule.is_empty() {
            return Err(
                FieldError::new("delivery.retry_schedule", "must list at least one delay").into(),
            );
        }
        humantime::parse_duration(&self.delivery.breaker_cool_down).map_err(|e| {
            FieldError::new("delivery.breaker_cool_down", format!("not a duration: {e}"))
        })?;
        if self.delivery.max_in_flight == 0 || self.delivery.max_in_flight > 100_000 {
            return Err(
                FieldError::new("delivery.max_in_flight", "must be between 1 and 100000").into(),
            );
        }
        if let Some(smtp) = &self.smtp {
            smtp.from.parse::<lettre::Address>().map_err(|e| {
                FieldError::new(
                    "smtp.from",
                    format!("{:?} is not an email address: {e}", smtp.from),
                )
            })?;
            if !["none", "starttls", "tls"].contains(&smtp.tls.as_str()) {
                return Err(FieldError::new("smtp.tls", "must be none, starttls or tls").into());
            }
        }
        let policy = TargetPolicy {
            allow_insecure_http: self.allow_insecure_http,
            allow_private_targets: nets,
        };
        let registries = validate_each(&self.registry, "registry", |r| r.validate(&policy))?;
        let sources = validate_each(&self.source, "source", SourceConfig::validate)?;
        Ok(Settings {
            sources,
            ack_wait,
            ledger: LedgerOptions {
                rounding: self.rounding,
                tax_rounding: self.tax_rounding,
            },
            policy,
            registries,
            config: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Config::from_toml_with_env(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )?
        .validate()
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let s = load("", &[]).unwrap();
        assert_eq!(s.config.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(s.ledger, LedgerOptions::default());
    }

    #[test]
    fn ack_wait_is_a_duration_from_2s_to_10m_and_a_bad_one_is_named() {
        assert_eq!(
            load("", &[]).unwrap().ack_wait,
            crate::streams::ACK_WAIT_DEFAULT
        );
        let s = load("ack_wait = \"5s\"\n", &[]).unwrap();
        assert_eq!(s.ack_wait, Duration::from_secs(5));
        for bad in ["1s", "11m", "soon"] {
            let err = load(&format!("ack_wait = \"{bad}\"\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("ack_wait") && err.contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_key_left_out_takes_its_default_and_the_others_stay() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(
            (c.subject_prefix.as_str(), c.admin_listen.as_str()),
            ("orders", "127.0.0.1:8088")
        );
        assert_eq!(
            (c.lease_ttl.as_str(), c.delivery.max_in_flight),
            ("10s", 256)
        );
        let c: Config =
            toml::from_str("lease_ttl = \"3s\"\n[delivery]\nbreaker_failures = 2\n").unwrap();
        assert_eq!(
            (c.lease_ttl.as_str(), c.delivery.breaker_failures),
            ("3s", 2)
        );
        assert_eq!(
            (c.nats_url.as_str(), c.delivery.breaker_cool_down.as_str()),
            ("nats://127.0.0.1:4222", "30s")
        );
        assert_eq!(c.delivery.retry_schedule[0], "5s");
        assert_eq!(c.delivery.retry_schedule.len(), 8);
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let cases = [
            (
                "roundng = \"half_even\"\n",
                "config file test.toml: line 1, column 1: unknown field `roundng`",
            ),
            (
                "[smtp]\nhost = \"h\"\nfrom = \"a@example.com\"\nprot = 1\n",
                "config file test.toml: line 4, column 1: unknown field `prot`",
            ),
            (
                "[[registry]]\nid = \"a\"\nurl = \"https://x.example\"\ngroup = []\n",
                "config file test.toml: line 4, column 1: unknown field `group`",
            ),
        ];
        for (file, want) in cases {
            let e = load(file, &[]).unwrap_err().to_string();
            assert!(e.starts_with(want), "{file:?}: {e}");
        }
    }

    #[test]
    fn registry_errors_name_the_registry_and_field() {
        let e = load(
            "[[registry]]\nid = \"a\"\nurl = \"http://x.example\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("config registry[0].url:"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file_and_unrelated_variables_are_ignored() {
        let s = load(
            "rounding = \"half_up\"\n",
            &[
                ("LEDGERLINE_ROUNDING", "half_even"),
                ("LEDGERLINE_LOG", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(s.ledger.rounding, Rounding::HalfEven);
        let (set, ignored) = read_env(
            [
                ("LEDGERLINE_HOME", "/opt/ledgerline"),
                ("LEDGERLINE_NATS_URL", "nats://n:4222"),
                ("HOME", "/root"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .unwrap();
        assert_eq!(ignored, ["LEDGERLINE_HOME"]);
        assert_eq!(set.len(), 1);
        assert_eq!(
            (set[0].var.as_str(), set[0].path),
            ("LEDGERLINE_NATS_URL", "nats_url")
        );
        let s = load("", &[("LEDGERLINE_HOME", "/opt/ledgerline")]).unwrap();
        assert_eq!(s.config, Config::default());
        let s = load(
            "",
            &[("LEDGERLINE_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8, ::1/128")],
        )
        .unwrap();
        assert_eq!(s.policy.allow_private_targets.len(), 2);
    }

    #[test]
    fn nested_keys_are_set_with_a_double_underscore_over_the_file() {
        let file = "[smtp]\nhost = \"mail.example\"\nfrom = \"ledger@example.com\"\n\
                    [delivery]\nmax_in_flight = 8\n";
        let s = load(
            file,
            &[
                ("LEDGERLINE_SMTP__PORT", "2525"),
                ("LEDGERLINE_SMTP__PASSWORD", "pw-from-env-123"),
                ("LEDGERLINE_DELIVERY__MAX_IN_FLIGHT", "32"),
                ("LEDGERLINE_DELIVERY__RETRY_SCHEDULE", "1s, 5s"),
                ("LEDGERLINE_ALLOW_INSECURE_HTTP", "1"),
            ],
        )
        .unwrap();
        let smtp = s.config.smtp.as_ref().unwrap();
        assert_eq!((smtp.host.as_str(), smtp.port), ("mail.example", 2525));
        assert_eq!(smtp.password.as_ref().unwrap().expose(), "pw-from-env-123");
        assert_eq!(s.config.delivery.max_in_flight, 32);
        assert_eq!(s.config.delivery.retry_schedule, ["1s", "5s"]);
        assert!(s.policy.allow_insecure_http);
        // A secret from the environment is redacted like the file's.
        let shown = format!("{:?}", s.config);
        assert!(!shown.contains("pw-from-env-123"), "{shown}");
        // A whole [smtp] from the environment, without a file.
        let s = load(
            "",
            &[
                ("LEDGERLINE_SMTP__HOST", "127.0.0.1"),
                ("LEDGERLINE_SMTP__FROM", "ledger@example.com"),
            ],
        )
        .unwrap();
        assert_eq!(s.config.smtp.unwrap().port, 25);
    }

    #[test]
    fn a_bad_value_or_key_in_the_environment_names_the_variable() {
        let e = load("", &[("LEDGERLINE_SMTP__HOST", "127.0.0.1")]).unwrap_err();
        assert!(e.to_string().starts_with("LEDGERLINE_SMTP__HOST: "), "{e}");
        assert!(e.to_string().contains("from"), "{e}");
        let e = load(
            "[smtp]\nhost = \"h\"\nfrom = \"a@example.com\"\n",
            &[("LEDGERLINE_SMTP__PORT", "twenty-five")],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("LEDGERLINE_SMTP__PORT: smtp.port"),
            "{e}"
        );
        for (var, value, starts) in [
            (
                "LEDGERLINE_DELIVERY__MAX_IN_FLIGHT",
                "-3",
                "LEDGERLINE_DELIVERY__MAX_IN_FLIGHT: ",
            ),
            (
                "LEDGERLINE_ALLOW_INSECURE_HTTP",
                "maybe",
                "LEDGERLINE_ALLOW_INSECURE_HTTP: ",
            ),
            (
                "LEDGERLINE_SMTP__HOTS",
                "h",
                "LEDGERLINE_SMTP__HOTS: unknown",
            ),
            (
                "LEDGERLINE_SMTP_HOST",
                "h",
                "LEDGERLINE_SMTP_HOST: keys of [smtp]",
            ),
            (
                "LEDGERLINE_REGISTRY",
                "[]",
                "LEDGERLINE_REGISTRY: [[registry]]",
            ),
            // Validation after the merge names the key.
            (
                "LEDGERLINE_DELIVERY__BREAKER_COOL_DOWN",
                "soon",
                "config delivery.breaker_cool_down:",
            ),
        ] {
            let e = load("", &[(var, value)]).unwrap_err().to_string();
            assert!(e.starts_with(starts), "{var}: {e}");
            if var.starts_with("LEDGERLINE_SMTP") {
                assert!(e.contains("LEDGERLINE_SMTP__HOST"), "{e}");
            }
        }
    }

    #[test]
    fn every_key_of_the_file_but_the_lists_of_tables_has_its_variable() {
        let mut c = Config {
            nats_creds: Some("c".into()),
            nats_token: Some(Secret::new("t")),
            nats_tls_ca: Some("ca".into()),
            ingest_listen: Some("127.0.0.1:1".into()),
            admin_token: Some(Secret::new("t")),
            smtp: Some(SmtpConfig {
                host: "h".into(),
                port: 25,
                from: "f@example.com".into(),
                username: Some("u".into()),
                password: Some(Secret::new("p")),
                tls: "none".into(),
                max_emails_per_hour: 1,
            }),
            ..Config::default()
        };
        c.registry.clear();
        let toml::Value::Table(t) = toml::Value::try_from(&c).unwrap() else {
            panic!("a config serialises as a table");
        };
        let mut keys = Vec::new();
        for (k, v) in t {
            match v {
                toml::Value::Table(inner) => keys.extend(inner.keys().map(|i| format!("{k}.{i}"))),
                _ if FILE_ONLY_KEYS.contains(&k.as_str()) => {}
                _ => keys.push(k),
            }
        }
        keys.sort();
        let mut env: Vec<String> = ENV_KEYS.iter().map(|(k, _)| (*k).to_owned()).collect();
        env.sort();
        assert_eq!(keys, env);
    }

    #[test]
    fn weak_admin_tokens_are_refused_naming_the_key() {
        for weak in [
            "change-me",
            "CHANGE-ME",
            "changeme",
            "short",
            "123456789012345",
            "admin",
            "password",
            "secret",
            "token",
            "aaaaaaaaaaaaaaaaaaaa",
            "please-change-me-before-production",
            "your-admin-token-here",
        ] {
            let e = load(&format!("admin_token = \"{weak}\"\n"), &[]).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("config admin_token:"), "{weak}: {text}");
            assert!(
                !text.contains("123456789012345"),
                "the token is not shown: {text}"
            );
            let e = load("", &[("LEDGERLINE_ADMIN_TOKEN", weak)]).unwrap_err();
            assert!(e.to_string().starts_with("config admin_token:"), "{e}");
        }
        let s = load("admin_token = \"hT3q9-xV2kLw8pZr4mNb\"\n", &[]).unwrap();
        assert!(s.config.admin_token.is_some());
        // The documented example works.
        let example = include_str!("../config/ledgerline.toml");
        Config::from_toml_with_env(example, "config/ledgerline.toml", [])
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn a_retry_delay_over_thirty_days_is_refused() {
        let e = load("[delivery]\nretry_schedule = [\"5s\", \"31days\"]\n", &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config delivery.retry_schedule[1]:"),
            "{e}"
        );
        let e = load(
            "[delivery]\nretry_schedule = [\"500000000000years\"]\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config delivery.retry_schedule[0]:"),
            "{e}"
        );
        load("[delivery]\nretry_schedule = [\"30days\"]\n", &[]).unwrap();
    }

    #[test]
    fn a_syntax_error_says_where_without_quoting_the_line() {
        let e = load(
            "rounding = \"half_up\"\nnats_url = \"nats://u:pw-in-file@127.0.0.1:4222\" x\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config file test.toml: line 2, column "),
            "{e}"
        );
        assert!(!e.contains("pw-in-file"), "{e}");
    }

    #[test]
    fn sources_are_validated_naming_the_source_and_field() {
        let s = load(
            "[[source]]\nid = \"pos\"\nkind = \"pos_payments\"\ncurrency = \"IDR\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(s.sources.len(), 1);
        assert!(s.config.serves_ingest());
        assert_eq!(s.config.ingest_addr(), INGEST_LISTEN_DEFAULT);
        let e = load("[[source]]\nid = \"pos\"\nkind = \"pos_payments\"\n", &[]).unwrap_err();
        assert!(
            e.to_string().starts_with("config source[0].currency:"),
            "{e}"
        );
        let twice = "[[source]]\nid = \"a\"\nkind = \"events\"\n".repeat(2);
        let e = load(&twice, &[]).unwrap_err().to_string();
        assert!(e.starts_with("config source[1].id:"), "{e}");
        let e = load("", &[("LEDGERLINE_INGEST_LISTEN", "nowhere")]).unwrap_err();
        assert!(e.to_string().starts_with("config ingest_listen:"), "{e}");
        let s = load("", &[("LEDGERLINE_INGEST_LISTEN", "127.0.0.1:0")]).unwrap();
        assert!(s.config.serves_ingest());
        assert!(!load("", &[]).unwrap().config.serves_ingest());
    }

    #[test]
    fn duplicate_registry_ids_are_refused() {
        let t = "[[registry]]\nid = \"a\"\nurl = \"https://x.example\"\n[[registry]]\nid = \"a\"\nurl = \"https://y.example\"\n";
        assert!(
            load(t, &[])
                .unwrap_err()
                .to_string()
                .contains("registry[1].id")
        );
    }
}
