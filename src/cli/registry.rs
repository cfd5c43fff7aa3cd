//! `ledgerline registry apply|list|show|delete`: the commands, thin over
//! [`crate::registry_store`], and what they need around it: reading
//! registry files and rendering registries for people.
//!
//! A registry file is TOML with `[[registry]]` entries (a whole ledgerline
//! config file works: only its registries are applied) or JSON: one
//! registry, an array of them, or `{"registry": [...]}`. Nothing printed
//! here ever shows a secret: registries serialise with `***`.
//!
//! The commands are generic over what they manage ([`CliItem`]): the same
//! serve `ledgerline source …` ([`super::source`]), a `[[source]]` in place
//! of a `[[registry]]`.

use std::io::{Read, Write};
use std::path::Path;

use serde_json::Value;

use super::args::{ItemOp, RegistryCommand, RegistryRun};
use super::{CliError, Exit, report_failure, report_usage, settings_or_report, with_nats};
use crate::config::{CONFIG_MAX_BYTES, Config, Settings};
use crate::registry::{FieldError, RegistryConfig};
use crate::registry_store::{ChangedBy, Entry, Item, KvStore, RegistryEntry, StoreError};

/// An item the CLI manages in its bucket.
pub trait CliItem: Item {
    /// What its bucket validates against on this instance.
    fn policy(settings: &Settings) -> Self::Policy;
    /// Its entries in a config file (`[[registry]]`, `[[source]]`).
    fn of_config(config: Config) -> Vec<Self>;
    /// The `list` columns between ID and REVISION, UPDATED.
    const COLUMNS: &'static [&'static str];
    /// The cells of those columns.
    fn cells(&self) -> Vec<String>;
    /// What `delete` says stays, after the revision.
    const DELETED: &'static str;

    /// The item as a one-entry TOML file (`[[registry]]`, `[[source]]`;
    /// secrets as `***`).
    fn toml_entry(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(&std::collections::BTreeMap::from([(Self::KIND, [self])]))
    }
    /// Reads the files the items name, relative to `base` (the folder of
    /// the file they came from): a jq source's `program_file`.
    fn read_files(_items: &mut [Self], _base: &Path) -> Result<(), RegistryFileError> {
        Ok(())
    }
}

impl CliItem for RegistryConfig {
    fn policy(settings: &Settings) -> Self::Policy {
        settings.policy.clone()
    }
    fn of_config(config: Config) -> Vec<Self> {
        config.registry
    }
    const COLUMNS: &'static [&'static str] = &["NAME", "URL", "ENABLED"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.url.clone(),
            self.enabled.to_string(),
        ]
    }
    const DELETED: &'static str = "its postings stay in LEDGER";
}

/// `ledgerline registry …`: exit 0 done, 1 NATS trouble or no such
/// registry, 2 an invalid file or registry (the message names the field).
pub fn registry(command: RegistryCommand) -> Result<Exit, CliError> {
    match command.into_run() {
        RegistryRun::Item(nats, op) => run_op::<RegistryConfig>(&nats, op),
        RegistryRun::Backfill(args) => super::backfill::backfill(args),
    }
}

/// One command on the items of type `T`: exit 0 done, 1 NATS trouble or
/// no such item, 2 an invalid file or item (the message names the field).
pub(super) fn run_op<T: CliItem>(
    nats: &super::args::NatsArgs,
    op: ItemOp,
) -> Result<Exit, CliError> {
    let Some(settings) = settings_or_report(nats.settings()) else {
        return Ok(Exit::Usage);
    };
    // Read the file before connecting: a bad file is exit 2 either way.
    let configs = match &op {
        ItemOp::Apply { file } => match read_item_file::<T>(file) {
            Ok(f) => f,
            Err(e) => return Ok(report_usage(e)),
        },
        _ => Vec::new(),
    };
    with_nats(&settings.config, async |client| {
        let js = async_nats::jetstream::new(client.clone());
        let store = KvStore::<T>::open(&js, T::policy(&settings), settings.config.stream_replicas)
            .await?
            .with_smtp_configured(settings.config.smtp.is_some());
        let mut out = std::io::stdout().lock();
        let exit = match op {
            ItemOp::Apply { .. } => apply(&store, &configs, &mut out).await?,
            ItemOp::List { json } => list(&store, json, &mut out).await?,
            ItemOp::Show { id, format } => show(&store, &id, format, &mut out).await?,
            ItemOp::Delete { id } => delete(&store, &id, &mut out).await?,
        };
        out.flush()?;
        client
            .flush()
            .await
            .map_err(CliError::flush("flushing to NATS"))?;
        Ok(exit)
    })
}

/// `registry apply`: one line per registry with what was done to it.
async fn apply<T: CliItem>(
    store: &KvStore<T>,
    configs: &[T],
    out: &mut impl Write,
) -> Result<Exit, CliError> {
    match store.apply(configs, ChangedBy::Cli).await {
        Ok(done) => {
            for (e, outcome) in done {
                writeln!(
                    out,
                    "{} {} (revision {})",
                    outcome.as_str(),
                    e.config.id(),
                    e.revision
                )?;
            }
            Ok(Exit::Success)
        }
        Err(e @ StoreError::Invalid(_)) => Ok(report_usage(e)),
        Err(e) if e.is_caller_error() => Ok(report_failure(e)),
        Err(e) => Err(e.into()),
    }
}

/// `registry list`: a table, or one JSON object per line.
async fn list<T: CliItem>(
    store: &KvStore<T>,
    json: bool,
    out: &mut impl Write,
) -> Result<Exit, CliError> {
    let entries = store.list().await?;
    if json {
        for e in &entries {
            writeln!(out, "{}", render_json_line(e))?;
        }
    } else {
        write!(out, "{}", render_item_table(&entries))?;
    }
    Ok(Exit::Success)
}

/// `registry show`: the registry on stdout, its warnings on stderr.
async fn show<T: CliItem>(
    store: &KvStore<T>,
    id: &str,
    format: ShowFormat,
    out: &mut impl Write,
) -> Result<Exit, CliError> {
    let Some(e) = store.get(id).await? else {
        return Ok(report_failure(format_args!(
            "{} {id:?} does not exist",
            T::KIND
        )));
    };
    match render_show(&e, format) {
        Ok(text) => {
            write!(out, "{text}")?;
            // On stderr: stdout stays valid JSON or TOML.
            for w in store.warnings(&e.config) {
                eprintln!("ledgerline: warning: {} {id}: {w}", T::KIND);
            }
            Ok(Exit::Success)
        }
        Err(msg) => Ok(report_failure(msg)),
    }
}

/// `registry delete`: its postings stay in LEDGER.
async fn delete<T: CliItem>(
    store: &KvStore<T>,
    id: &str,
    out: &mut impl Write,
) -> Result<Exit, CliError> {
    match store.delete(id, None).await {
        Ok(e) => {
            writeln!(
                out,
                "deleted {} (was revision {}); {}",
                e.config.id(),
                e.revision,
                T::DELETED
            )?;
            Ok(Exit::Success)
        }
        Err(e) if e.is_caller_error() => Ok(report_failure(e)),
        Err(e) => Err(e.into()),
    }
}

/// Why a registry file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RegistryFileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {CONFIG_MAX_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {error}")]
    Field {
        path: String,
        #[source]
        error: FieldError,
    },
    #[error("{path}: {source}")]
    ProgramFile {
        path: String,
        #[source]
        source: crate::source_store::ProgramFileError,
    },
}

/// Reads the registries of a TOML or JSON file (not yet validated against
/// a policy: see [`crate::registry_store::check_batch`]).
pub fn read_registry_file(path: &Path) -> Result<Vec<RegistryConfig>, RegistryFileError> {
    read_item_file(path)
}

/// [`read_registry_file`] for any item; `-` reads stdin. The files the
/// items name are read relative to the file's folder ([`CliItem::read_files`]).
pub(super) fn read_item_file<T: CliItem>(path: &Path) -> Result<Vec<T>, RegistryFileError> {
    let mut items = read_items::<T>(path)?;
    let base = match path.parent() {
        Some(dir) if path != Path::new("-") && !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    T::read_files(&mut items, base)?;
    Ok(items)
}

/// The items of the file at `path` as written.
fn read_items<T: CliItem>(path: &Path) -> Result<Vec<T>, RegistryFileError> {
    let shown = path.display().to_string();
    let io = |source| RegistryFileError::Io {
        path: shown.clone(),
        source,
    };
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .take(CONFIG_MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        text
    } else {
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.len() > CONFIG_MAX_BYTES {
            return Err(RegistryFileError::TooLarge { path: shown });
        }
        std::fs::read_to_string(path).map_err(io)?
    };
    if text.len() as u64 > CONFIG_MAX_BYTES {
        return Err(RegistryFileError::TooLarge { path: shown });
    }
    let start = text.trim_start();
    let is_json = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => true,
        Some("toml") => false,
        // `[[registry]]` and `[table]` are TOML; `{…}` and `[{…}]` JSON.
        _ => {
            start.starts_with('{')
                || (start.starts_with('[') && start[1..].trim_start().starts_with(['{', ']']))
        }
    };
    if is_json {
        parse_json::<T>(&text, &shown)
    } else {
        // Environment overrides do not apply to a file of registries.
        let config =
            Config::from_toml_with_env(&text, &shown, std::iter::empty()).map_err(|e| {
                RegistryFileError::Parse {
                    path: shown.clone(),
                    message: e.to_string(),
                }
            })?;
        let items = T::of_config(config);
        if items.is_empty() {
            return Err(RegistryFileError::Parse {
                path: shown,
                message: format!("no [[{}]] entries", T::KIND),
            });
        }
        Ok(items)
    }
}

fn parse_json<T: CliItem>(text: &str, shown: &str) -> Result<Vec<T>, RegistryFileError> {
    let kind = T::KIND;
    let parse_err = |message: String| RegistryFileError::Parse {
        path: shown.to_owned(),
        message,
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| parse_err(format!("not valid JSON: {e}")))?;
    let list = match value {
        Value::Array(a) => a,
        Value::Object(mut o) if o.len() == 1 && o.contains_key(kind) => match o.remove(kind) {
            Some(Value::Array(a)) => a,
            Some(one @ Value::Object(_)) => vec![one],
            _ => {
                return Err(parse_err(format!(
                    "\"{kind}\" must be an array or an object"
                )));
            }
        },
        one @ Value::Object(_) => vec![one],
        _ => {
            return Err(parse_err(format!(
                "expected a {kind}, an array of them, or {{\"{kind}\": [...]}}"
            )));
        }
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." {
                    format!("{kind}[{i}]")
                } else {
                    format!("{kind}[{i}].{path}")
                };
                RegistryFileError::Field {
                    path: shown.to_owned(),
                    error: FieldError::new(at, e.inner().to_string()),
                }
            })
        })
        .collect()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `registry list`: a table of id, name, url, enabled, revision, updated.
pub fn render_table(entries: &[RegistryEntry]) -> String {
    render_item_table(entries)
}

/// [`render_table`] for any item: its columns, then revision and updated.
pub(super) fn render_item_table<T: CliItem>(entries: &[Entry<T>]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut r = vec![e.config.id().to_owned()];
            r.extend(e.config.cells());
            r.push(e.revision.to_string());
            r.push(rfc3339(e.updated_at));
            r
        })
        .collect();
    let header: Vec<String> = ["ID"]
        .iter()
        .chain(T::COLUMNS)
        .chain(&["REVISION", "UPDATED"])
        .map(|h| (*h).to_owned())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, &w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(&header);
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// One JSON line per registry (`registry list --json`): the registry,
/// secrets as `***`, with its revision and times.
pub fn render_json_line<T: Item>(e: &Entry<T>) -> String {
    serde_json::to_string(&with_meta(e)).unwrap_or_default()
}

fn with_meta<T: Item>(e: &Entry<T>) -> Value {
    let mut v = serde_json::to_value(&e.config).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("revision".into(), e.revision.into());
        m.insert("created_at".into(), rfc3339(e.created_at).into());
        m.insert("updated_at".into(), rfc3339(e.updated_at).into());
        m.insert("changed_by".into(), e.changed_by.as_str().into());
    }
    v
}

/// How `registry show` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowFormat {
    Json,
    Toml,
}

/// `registry show`: the registry (secrets as `***`), as pretty JSON with
/// its metadata, or as a TOML `[[registry]]` entry ready to edit and apply
/// (the `***` markers keep the stored secrets).
pub fn render_show<T: CliItem>(e: &Entry<T>, format: ShowFormat) -> Result<String, String> {
    match format {
        ShowFormat::Json => serde_json::to_string_pretty(&with_meta(e))
            .map(|s| s + "\n")
            .map_err(|err| err.to_string()),
        ShowFormat::Toml => {
            let body = e.config.toml_entry().map_err(|err| {
                format!(
                    "cannot show this {} as TOML ({err}); use --format json",
                    T::KIND
                )
            })?;
            Ok(format!(
                "# {} {} revision {}, updated {} by {}\n{body}",
                T::KIND,
                e.config.id(),
                e.revision,
                rfc3339(e.updated_at),
                e.changed_by.as_str()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str, text: &str) -> Result<Vec<RegistryConfig>, RegistryFileError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        read_registry_file(&p)
    }

    #[test]
    fn toml_and_json_files_are_told_apart_by_name_or_content() {
        let toml = "[[registry]]\nid = \"a\"\nurl = \"https://a.example\"\n";
        assert_eq!(read("r.toml", toml).unwrap()[0].id, "a");
        assert_eq!(read("r", toml).unwrap()[0].id, "a");
        let one = r#"{"id": "a", "url": "https://a.example"}"#;
        assert_eq!(read("r", one).unwrap().len(), 1);
        let list =
            r#"[{"id": "a", "url": "https://a.example"}, {"id": "b", "url": "https://b.example"}]"#;
        assert_eq!(read("r.json", list).unwrap().len(), 2);
        let wrapped = format!("{{\"registry\": {list}}}");
        assert_eq!(read("r", &wrapped).unwrap().len(), 2);
    }

    #[test]
    fn a_toml_entry_is_a_one_entry_file_that_reads_back_the_same() {
        let toml = "[[registry]]\nid = \"a\"\nurl = \"https://a.example\"\n\
                    [registry.auth]\ntype = \"bearer\"\ntoken = \"t0ken\"\n";
        let registry = read("r.toml", toml).unwrap().remove(0);
        let entry = registry.toml_entry().unwrap();
        // The layout of a file with one `[[registry]]` table, secrets as ***.
        #[derive(serde::Serialize)]
        struct File<'a> {
            registry: [&'a RegistryConfig; 1],
        }
        let file = toml::to_string_pretty(&File {
            registry: [&registry],
        })
        .unwrap();
        assert_eq!(entry, file);
        assert!(entry.starts_with("[[registry]]\n"), "{entry}");
        assert!(entry.contains("token = \"***\""), "{entry}");
        let back = read("e.toml", &entry).unwrap().remove(0);
        assert_eq!((back.id, back.url), (registry.id, registry.url));
    }

    #[test]
    fn errors_name_the_entry_and_the_field() {
        let e = read("r.json", r#"[{"id": "a", "url": "u"}, {"id": "b"}]"#).unwrap_err();
        assert!(e.to_string().contains("registry[1]"), "{e}");
        let e = read(
            "r.toml",
            "[[registry]]\nid = \"a\"\nurl = \"u\"\ncolour = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        assert!(
            read("r.toml", "rounding = \"half_up\"\n").is_err(),
            "no registries"
        );
    }
}
