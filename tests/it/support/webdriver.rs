//! A headless chromium driven over WebDriver (W3C, JSON over loopback
//! HTTP) for the console's browser test: chromedriver on a free port, one
//! session with a fresh profile, the few commands the test needs.
//!
//! Written on reqwest (already in the tree) rather than a WebDriver crate:
//! the ones maintained bring about twenty crates (a second `http`, `icu`,
//! `thiserror` and `cookie`), which `make test`'s five-minute budget cannot
//! pay for eight commands over JSON.
//!
//! The browser comes from `scripts/install-browser.sh` (run by `make test`):
//! `chromium` and `chromedriver` on PATH, or `CHROMIUM_BIN` and
//! `CHROMEDRIVER_BIN`.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn binary(env: &str, name: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| {
        let found = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        });
        found
            .unwrap_or_else(|| {
                panic!("{name} is not installed: run scripts/install-browser.sh (make test does), or set {env}")
            })
            .to_string_lossy()
            .into_owned()
    })
}

/// Where screenshots go: `target/console-screenshots/` (git-ignored).
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless chromium session.
    pub async fn start() -> Browser {
        let chromium = binary("CHROMIUM_BIN", "chromium");
        let driver_bin = binary("CHROMEDRIVER_BIN", "chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {driver_bin}: {e}"));
        let http = super::http_client();
        let base = format!("http://127.0.0.1:{port}");
        super::eventually("chromedriver answers", Duration::from_secs(20), || async {
            let r = http.get(format!("{base}/status")).send().await;
            match r {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromium did not start: {resp}"))
            .to_owned();
        Browser {
            http,
            session: format!("{base}/session/{id}"),
            _driver: driver,
            _profile: profile,
        }
    }

    /// One WebDriver command: its `value`, or a panic naming the error.
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.session));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp: Value = r.send().await.unwrap().json().await.unwrap();
        let value = resp["value"].clone();
        if let Some(err) = value.get("error") {
            panic!("WebDriver {path}: {err}: {}", value["message"]);
        }
        value
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The elements matching a CSS selector.
    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e[ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("not an element reference: {e}"))
                    .to_owned()
            })
            .collect()
    }

    async fn find(&self, css: &str) -> String {
        self.find_all(css)
            .await
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css:?} on the page"))
    }

    /// Waits until an element matches `css` (a click's navigation may
    /// still be loading when the click returns).
    pub async fn wait_for(&self, css: &str) {
        super::eventually(
            &format!("an element {css:?} on the page"),
            Duration::from_secs(10),
            || async { !self.find_all(css).await.is_empty() },
        )
        .await;
    }

    /// The rendered text of the first element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Runs `script` (a function body) in the page; what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Saves a PNG of the page as `<screenshot_dir>/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the session (chromedriver closes chromium).
    pub async fn close(self) {
        self.cmd(reqwest::Method::DELETE, "", None).await;
    }
}
