//! The operators' console (`/console`): HTTP-level checks of its security
//! (login, cookie flags, CSP, CSRF, escaping), and one headless chromium
//! walking the whole scenario (log in, registries, an order, a dead letter
//! appearing, redeliver, delivered; XSS shown as text), saving a
//! screenshot of each page under `target/console-screenshots/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ledgerline::service::Component;
use serde_json::{Value, json};

use crate::support::scripted::{Scripted, reply};
use crate::support::webdriver::Browser;
use crate::support::{self, ADMIN_TOKEN, Service, config::TestConfig, engine::ticket_event};

/// An order description and a receiver answer that would run script if
/// they were not escaped.
const XSS_DESCRIPTION: &str =
    "<script>window.__xss_d=1</script><img src=x onerror=\"window.__xss_i=1\">";
const XSS_NOTE: &str = "<img src=x onerror=\"window.__xss_r=1\"><b>bold</b>";

/// A ticket event whose line description is `description`.
fn event_described(order: &str, description: &str) -> String {
    let mut e: Value = serde_json::from_str(&ticket_event(order, 1, 2)).unwrap();
    e["order"]["line_items"][0]["description"] = json!(description);
    e.to_string()
}

/// An HTTP client that does not follow redirects (to see them).
fn client() -> reqwest::Client {
    ledgerline::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The login form posted with `token`.
async fn post_login(http: &reqwest::Client, svc: &Service, token: &str) -> reqwest::Response {
    http.post(svc.url("/console/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

/// Logs in with the admin token: the `name=value` of the session cookie.
async fn log_in(http: &reqwest::Client, svc: &Service) -> String {
    let r = post_login(http, svc, ADMIN_TOKEN).await;
    assert_eq!(r.status(), 303);
    let set_cookie = header(&r, "set-cookie");
    set_cookie.split(';').next().unwrap().to_owned()
}

/// `GET path` with the session `cookie`: (status, page).
async fn page(http: &reqwest::Client, svc: &Service, cookie: &str, path: &str) -> (u16, String) {
    let r = http
        .get(svc.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The CSRF token of a page's forms.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF field")
        + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

/// NATS and the admin API alone, with a registry `books` (nothing listens
/// at its URL).
async fn admin_with_books() -> (support::Nats, Service) {
    let nats = support::nats().await;
    let settings = TestConfig::new()
        .registry("books", "http://127.0.0.1:9/hooks", "")
        .settings(&nats.server);
    let svc = Service::start(settings, &[Component::Admin]).await;
    (nats, svc)
}

#[tokio::test]
async fn console_pages_need_a_login_and_are_served_with_a_strict_policy() {
    let (_nats, svc) = admin_with_books().await;
    let http = client();

    // No session: a browser's GET goes to the login form, a POST is 401,
    // a wrong bearer token is 401.
    let r = http.get(svc.url("/console")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), header(&r, "location")),
        (303, "/console/login".into())
    );
    let r = http.post(svc.url("/console/logout")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(svc.url("/console"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(svc.url("/console/login")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = header(&r, "content-security-policy");
    assert_eq!(csp, ledgerline::admin::console::CSP);
    assert!(csp.contains("default-src 'self'") && !csp.contains("unsafe-inline"));
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");

    // A wrong token is refused; the right one sets a strict cookie that is
    // not the token.
    let r = post_login(&http, &svc, "not-the-token").await;
    assert_eq!(r.status(), 401);
    assert!(header(&r, "set-cookie").is_empty());
    let r = post_login(&http, &svc, ADMIN_TOKEN).await;
    assert_eq!(
        (r.status().as_u16(), header(&r, "location")),
        (303, "/console".into())
    );
    let set_cookie = header(&r, "set-cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(set_cookie.contains(flag), "{flag} missing: {set_cookie}");
    }
    assert!(!set_cookie.contains(ADMIN_TOKEN), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    let r = http
        .get(svc.url("/console"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-security-policy"),
        ledgerline::admin::console::CSP
    );
    assert_eq!(header(&r, "cache-control"), "no-store");
    let page = r.text().await.unwrap();
    assert!(page.contains("<h1>Overview</h1>"), "{page}");
    assert!(
        !page.contains("<style") && !page.contains(" style="),
        "no inline style"
    );
    assert!(
        page.matches("<script").count() == 1
            && page.contains("<script src=\"/console/static/console.js\""),
        "only the static script"
    );
    // A tampered cookie is no session.
    let tampered = format!("{}x", cookie);
    let r = http
        .get(svc.url("/console"))
        .header("cookie", tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // The bearer token works too (curl).
    let r = http
        .get(svc.url("/console/registries"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("href=\"/console/registries/books\"")
    );
    // The static files need no session.
    let r = http
        .get(svc.url("/console/static/console.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), header(&r, "content-type").as_str()),
        (200, "text/css; charset=utf-8")
    );
    svc.stop().await;
}

#[tokio::test]
async fn console_actions_need_the_sessions_csrf_token_and_pages_escape_what_comes_from_outside() {
    let (nats, svc) = admin_with_books().await;
    let http = client();
    let cookie = log_in(&http, &svc).await;
    let (_, html) = page(&http, &svc, &cookie, "/console/registries/books").await;
    let csrf = csrf_of(&html);
    let disable = |csrf: Option<&str>| {
        let mut form = vec![("enabled", "false".to_owned())];
        if let Some(c) = csrf {
            form.push(("csrf", c.to_owned()));
        }
        http.post(svc.url("/console/registries/books/enabled"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
    };
    // Without the token, or with another one: 403, nothing changed.
    for bad in [None, Some("forged"), Some("")] {
        let r = disable(bad).await.unwrap();
        assert_eq!(r.status(), 403, "{bad:?}");
        assert!(r.text().await.unwrap().contains("CSRF"));
    }
    let (_, reg) = svc.get("/v1/registries/books").await;
    assert_eq!(reg["registry"]["enabled"], true);
    // With it: done, and the history says what changed.
    let r = disable(Some(&csrf)).await.unwrap();
    assert_eq!(r.status(), 303);
    let (_, reg) = svc.get("/v1/registries/books").await;
    assert_eq!(reg["registry"]["enabled"], false);
    let (_, html) = page(
        &http,
        &svc,
        &cookie,
        "/console/registries/books?notice=disabled",
    )
    .await;
    assert!(
        html.contains("<td>enabled</td>"),
        "the changed field: {html}"
    );
    assert!(html.contains("Registry disabled."));

    // An order whose description is markup: shown as text.
    support::publish_events(
        &nats,
        &format!("{}\n", event_described("o-xss", XSS_DESCRIPTION)),
    )
    .await;
    let (_, html) = page(&http, &svc, &cookie, "/console/orders/o-xss").await;
    assert!(!html.contains("<script>window"), "{html}");
    assert!(!html.contains("<img src=x"), "{html}");
    assert!(
        html.contains("&lt;script&gt;window.__xss_d=1&lt;/script&gt;"),
        "{html}"
    );
    assert!(html.contains("Balanced: debits = credits"), "{html}");
    // Bad input is named.
    let (status, text) = page(&http, &svc, &cookie, "/console/deliveries?status=lost").await;
    assert_eq!(status, 422);
    assert!(text.contains("(field: <code>status</code>)"), "{text}");
    svc.stop().await;
}

#[tokio::test]
async fn a_browser_sees_a_dead_letter_redelivers_it_and_reads_markup_as_text() {
    let nats = support::nats().await;
    // The receiver answers with markup in its registry_data, or refuses.
    let refuse = Arc::new(AtomicBool::new(false));
    let r = refuse.clone();
    let receiver = Scripted::start(move |_, _| {
        if r.load(Ordering::SeqCst) {
            reply(422, json!({"error": "period closed"}))
        } else {
            reply(200, json!({"journal": "J-1", "note": XSS_NOTE}))
        }
    })
    .await;
    let settings = TestConfig::new()
        .delivery("retry_schedule = [\"100ms\"]")
        .registry("books", &receiver.url("/hooks"), "max_attempts = 1")
        .settings(&nats.server);
    let svc = Service::start(
        settings,
        &[
            Component::Aggregator,
            Component::Dispatcher,
            Component::Admin,
        ],
    )
    .await;
    support::publish_events(
        &nats,
        &format!("{}\n", event_described("o-xss", XSS_DESCRIPTION)),
    )
    .await;
    support::eventually("o-xss delivered", Duration::from_secs(20), || async {
        svc.get("/v1/orders/o-xss/ledger").await.1["registries"][0]["delivery"]["status"]
            == "delivered"
    })
    .await;

    let b = Browser::start().await;
    let base = &svc.base;
    // Log in through the form.
    b.goto(&format!("{base}/console")).await;
    assert!(b.url().await.ends_with("/console/login"));
    b.screenshot("01-login").await;
    b.type_into("#token", ADMIN_TOKEN).await;
    b.click("#login").await;
    b.wait_for("#dead-letters").await;
    assert_eq!(b.text("h1").await, "Overview");
    assert_eq!(b.text("#dead-letters").await, "0");
    b.screenshot("02-overview").await;

    b.goto(&format!("{base}/console/registries")).await;
    assert!(b.text("#registries").await.contains("books"));
    b.screenshot("03-registries").await;
    b.goto(&format!("{base}/console/registries/books")).await;
    assert!(b.text("#config").await.contains("\"max_attempts\": 1"));
    b.screenshot("04-registry").await;

    // The order: markup from the order and from the receiver is text.
    b.goto(&format!("{base}/console/orders/o-xss")).await;
    assert!(b.text("#ledger").await.contains(XSS_DESCRIPTION));
    // As JSON text: the quotes inside are escaped.
    let data = b.text("pre.registry-data").await;
    assert!(data.contains(&XSS_NOTE.replace('"', "\\\"")), "{data}");
    assert!(
        b.find_all("main script, main img, pre.registry-data b")
            .await
            .is_empty()
    );
    assert_eq!(
        b.eval("return [window.__xss_d, window.__xss_i, window.__xss_r].filter(x => x !== undefined).length").await,
        json!(0)
    );
    assert!(b.text("#balance").await.starts_with("Balanced"));
    b.screenshot("05-order").await;

    // The receiver refuses the next order: a dead letter appears.
    refuse.store(true, Ordering::SeqCst);
    support::publish_events(&nats, &format!("{}\n", ticket_event("o-dead", 1, 3))).await;
    support::eventually(
        "the overview shows the dead letter",
        Duration::from_secs(20),
        || async {
            b.goto(&format!("{base}/console")).await;
            b.text("#dead-letters").await == "1"
        },
    )
    .await;
    b.goto(&format!("{base}/console/deliveries?status=dead"))
        .await;
    assert!(b.text("tr[data-order=o-dead]").await.contains("dead"));
    assert_eq!(b.find_all("#deliveries tr[data-order]").await.len(), 1);
    b.screenshot("06-dead-letter").await;

    // Accept again, press redeliver on the order page: delivered.
    refuse.store(false, Ordering::SeqCst);
    b.goto(&format!("{base}/console/orders/o-dead")).await;
    assert!(
        b.text("section[data-registry=books] h2")
            .await
            .contains("dead")
    );
    assert!(b.text("table.attempts").await.contains("422"));
    b.click("section[data-registry=books] form button").await;
    b.wait_for("#notice").await;
    assert!(b.text("#notice").await.starts_with("Redelivery requested"));
    support::eventually(
        "the order page shows it delivered",
        Duration::from_secs(20),
        || async {
            b.goto(&format!("{base}/console/orders/o-dead")).await;
            b.text("section[data-registry=books] h2")
                .await
                .contains("delivered")
        },
    )
    .await;
    b.screenshot("07-redelivered").await;
    b.goto(&format!("{base}/console/export")).await;
    b.screenshot("08-export").await;
    b.close().await;
    assert_eq!(
        receiver.requests_for("o-dead").len(),
        2,
        "refused once, then delivered"
    );
    svc.stop().await;
}
