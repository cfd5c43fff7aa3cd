//! `ledgerline source apply|list|show|delete`: the `registry` commands
//! ([`super::registry`]) over the source bucket ([`crate::source_store`]):
//! the same files (TOML `[[source]]` entries or JSON: one source, an array,
//! or `{"source": [...]}`; `-` for stdin), output, exit codes and `***` for
//! every secret.

use super::args::SourceCommand;
use std::path::Path;

use super::registry::{CliItem, RegistryFileError, run_op};
use super::{CliError, Exit};
use crate::config::{Config, Settings};
use crate::source::SourceConfig;

impl CliItem for SourceConfig {
    fn policy(_: &Settings) -> Self::Policy {}
    fn of_config(config: Config) -> Vec<Self> {
        config.source
    }
    const COLUMNS: &'static [&'static str] = &["KIND", "AUTH", "CURRENCY"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.kind.as_str().to_owned(),
            self.auth.type_name().to_owned(),
            self.currency.clone().unwrap_or_else(|| "-".to_owned()),
        ]
    }
    const DELETED: &'static str = "its route answers 404 from now on";
    fn read_files(items: &mut [Self], base: &Path) -> Result<(), RegistryFileError> {
        crate::source_store::read_program_files(items, base).map_err(|source| {
            RegistryFileError::ProgramFile {
                path: base.display().to_string(),
                source,
            }
        })
    }
}

/// `ledgerline source …`: exit 0 done, 1 NATS trouble or no such source,
/// 2 an invalid file or source (the message names the field).
pub fn source(command: SourceCommand) -> Result<Exit, CliError> {
    let (nats, op) = command.into_op();
    run_op::<SourceConfig>(&nats, op)
}
