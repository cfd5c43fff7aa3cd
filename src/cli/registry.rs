//! `ledgerline registry apply|list|show|delete`: the commands, thin over
//! [`crate::registry_store`], and what they need around it: reading
//! registry files and rendering registries for people.
//!
//! A registry file is TOML with `[[registry]]` entries (a whole ledgerline
//! config file works: only its registries are applied) or JSON: one
//! registry, an array of them, or `{"registry": [...]}`. Nothing printed
//! here ever shows a secret: registries serialise with `***`.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use super::args::RegistryCommand;
use super::{CliError, Exit, report_failure, report_usage, settings_or_report, with_nats};
use crate::config::{CONFIG_MAX_BYTES, Config};
use crate::registry::{FieldError, RegistryConfig};
use crate::registry_store::{ChangedBy, RegistryEntry, RegistryStore, StoreError};

/// `ledgerline registry …`: exit 0 done, 1 NATS trouble or no such
/// registry, 2 an invalid file or registry (the message names the field).
pub fn registry(command: RegistryCommand) -> Result<Exit, CliError> {
    let Some(settings) = settings_or_report(command.nats().settings()) else {
        return Ok(Exit::Usage);
    };
    // Read the file before connecting: a bad file is exit 2 either way.
    let configs = match &command {
        RegistryCommand::Apply { file, .. } => match read_registry_file(file) {
            Ok(f) => f,
            Err(e) => return Ok(report_usage(e)),
        },
        _ => Vec::new(),
    };
    with_nats(&settings.config, async |client| {
        let js = async_nats::jetstream::new(client.clone());
        let store = RegistryStore::open(&js, settings.policy.clone())
            .await?
            .with_smtp_configured(settings.config.smtp.is_some());
        let mut out = std::io::stdout().lock();
        let exit = match command {
            RegistryCommand::Apply { .. } => apply(&store, &configs, &mut out).await?,
            RegistryCommand::List { json, .. } => list(&store, json, &mut out).await?,
            RegistryCommand::Show { id, format, .. } => show(&store, &id, format, &mut out).await?,
            RegistryCommand::Delete { id, .. } => delete(&store, &id, &mut out).await?,
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
async fn apply(
    store: &RegistryStore,
    configs: &[RegistryConfig],
    out: &mut impl Write,
) -> Result<Exit, CliError> {
    match store.apply(configs, ChangedBy::Cli).await {
        Ok(done) => {
            for (e, outcome) in done {
                writeln!(
                    out,
                    "{} {} (revision {})",
                    outcome.as_str(),
                    e.config.id,
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
async fn list(store: &RegistryStore, json: bool, out: &mut impl Write) -> Result<Exit, CliError> {
    let entries = store.list().await?;
    if json {
        for e in &entries {
            writeln!(out, "{}", render_json_line(e))?;
        }
    } else {
        write!(out, "{}", render_table(&entries))?;
    }
    Ok(Exit::Success)
}

/// `registry show`: the registry on stdout, its warnings on stderr.
async fn show(
    store: &RegistryStore,
    id: &str,
    format: ShowFormat,
    out: &mut impl Write,
) -> Result<Exit, CliError> {
    let Some(e) = store.get(id).await? else {
        return Ok(report_failure(format_args!(
            "registry {id:?} does not exist"
        )));
    };
    match render_show(&e, format) {
        Ok(text) => {
            write!(out, "{text}")?;
            // On stderr: stdout stays valid JSON or TOML.
            for w in store.warnings(&e.config) {
                eprintln!("ledgerline: warning: registry {id}: {w}");
            }
            Ok(Exit::Success)
        }
        Err(msg) => Ok(report_failure(msg)),
    }
}

/// `registry delete`: its postings stay in LEDGER.
async fn delete(store: &RegistryStore, id: &str, out: &mut impl Write) -> Result<Exit, CliError> {
    match store.delete(id, None).await {
        Ok(e) => {
            writeln!(
                out,
                "deleted {} (was revision {}); its postings stay in LEDGER",
                e.config.id, e.revision
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
}

/// Reads the registries of a TOML or JSON file (not yet validated against
/// a policy: see [`crate::registry_store::check_batch`]).
pub fn read_registry_file(path: &Path) -> Result<Vec<RegistryConfig>, RegistryFileError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| RegistryFileError::Io {
        path: shown.clone(),
        source,
    })?;
    if meta.len() > CONFIG_MAX_BYTES {
        return Err(RegistryFileError::TooLarge { path: shown });
    }
    let text = std::fs::read_to_string(path).map_err(|source| RegistryFileError::Io {
        path: shown.clone(),
        source,
    })?;
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
        parse_json(&text, &shown)
    } else {
        // Environment overrides do not apply to a file of registries.
        let config =
            Config::from_toml_with_env(&text, &shown, std::iter::empty()).map_err(|e| {
                RegistryFileError::Parse {
                    path: shown.clone(),
                    message: e.to_string(),
                }
            })?;
        if config.registry.is_empty() {
            return Err(RegistryFileError::Parse {
                path: shown,
                message: "no [[registry]] entries".to_owned(),
            });
        }
        Ok(config.registry)
    }
}

fn parse_json(text: &str, shown: &str) -> Result<Vec<RegistryConfig>, RegistryFileError> {
    let parse_err = |message: String| RegistryFileError::Parse {
        path: shown.to_owned(),
        message,
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| parse_err(format!("not valid JSON: {e}")))?;
    let list = match value {
        Value::Array(a) => a,
        Value::Object(mut o) if o.len() == 1 && o.contains_key("registry") => {
            match o.remove("registry") {
                Some(Value::Array(a)) => a,
                Some(one @ Value::Object(_)) => vec![one],
                _ => {
                    return Err(parse_err(
                        "\"registry\" must be an array or an object".into(),
                    ));
                }
            }
        }
        one @ Value::Object(_) => vec![one],
        _ => {
            return Err(parse_err(
                "expected a registry, an array of them, or {\"registry\": [...]}".into(),
            ));
        }
    };
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_path_to_error::deserialize::<_, RegistryConfig>(v).map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." {
                    format!("registry[{i}]")
                } else {
                    format!("registry[{i}].{path}")
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
    let rows: Vec<[String; 6]> = entries
        .iter()
        .map(|e| {
            [
                e.config.id.clone(),
                e.config.name.clone(),
                e.config.url.clone(),
                e.config.enabled.to_string(),
                e.revision.to_string(),
                rfc3339(e.updated_at),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "URL", "ENABLED", "REVISION", "UPDATED"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(&header.map(str::to_owned));
    out.push('\n');
    for r in &rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// One JSON line per registry (`registry list --json`): the registry,
/// secrets as `***`, with its revision and times.
pub fn render_json_line(e: &RegistryEntry) -> String {
    serde_json::to_string(&with_meta(e)).unwrap_or_default()
}

fn with_meta(e: &RegistryEntry) -> Value {
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
pub fn render_show(e: &RegistryEntry, format: ShowFormat) -> Result<String, String> {
    match format {
        ShowFormat::Json => serde_json::to_string_pretty(&with_meta(e))
            .map(|s| s + "\n")
            .map_err(|err| err.to_string()),
        ShowFormat::Toml => {
            #[derive(serde::Serialize)]
            struct File<'a> {
                registry: [&'a RegistryConfig; 1],
            }
            let body = toml::to_string_pretty(&File {
                registry: [&e.config],
            })
            .map_err(|err| {
                format!("cannot show this registry as TOML ({err}); use --format json")
            })?;
            Ok(format!(
                "# registry {} revision {}, updated {} by {}\n{body}",
                e.config.id,
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
