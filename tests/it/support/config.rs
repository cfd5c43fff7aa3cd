//! Test configurations built a table at a time (`[delivery]`, `[smtp]`,
//! `[[registry]]`), so a test names only what it is about; read as
//! [`Settings`] the way [`super::settings`] does, or as text for a config
//! file.

use std::fmt::Write as _;

use ledgerline::config::Settings;
use ledgerline::natsd::NatsServer;

/// The TOML text of a test configuration: top-level keys first, then the
/// tables in the order they were added.
#[derive(Debug, Default, Clone)]
pub struct TestConfig {
    top: String,
    tables: String,
}

#[allow(dead_code)]
impl TestConfig {
    pub fn new() -> Self {
        Self::default()
    }

    /// A top-level `key = value` line (kept before every table).
    pub fn top(mut self, line: &str) -> Self {
        writeln!(self.top, "{line}").unwrap();
        self
    }

    /// `[delivery]` with `lines` (`retry_schedule = ["100ms"]`…).
    pub fn delivery(mut self, lines: &str) -> Self {
        writeln!(self.tables, "[delivery]\n{lines}").unwrap();
        self
    }

    /// `[smtp]` of a local sink on `port`, from `ledgerline@example.com`.
    pub fn smtp(mut self, port: u16) -> Self {
        writeln!(
            self.tables,
            "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nfrom = \"ledgerline@example.com\""
        )
        .unwrap();
        self
    }

    /// A `[[registry]]` of `id` at `url`, then `lines`: more of its keys,
    /// then its own tables (`[registry.auth]`…); may be empty.
    pub fn registry(mut self, id: &str, url: &str, lines: &str) -> Self {
        writeln!(
            self.tables,
            "[[registry]]\nid = \"{id}\"\nurl = \"{url}\"\n{lines}"
        )
        .unwrap();
        self
    }

    /// `[registry.auth]` of the registry added last: HTTP basic.
    pub fn basic_auth(mut self, username: &str, password: &str) -> Self {
        writeln!(
            self.tables,
            "[registry.auth]\ntype = \"basic\"\nusername = \"{username}\"\npassword = \"{password}\""
        )
        .unwrap();
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        format!("{}{}", self.top, self.tables)
    }

    /// Settings with `nats_url` pointing at `server` and loopback targets
    /// allowed ([`super::settings`]).
    pub fn settings(&self, server: &NatsServer) -> Settings {
        super::settings(server, &self.text())
    }
}
