//! `kyc run --dev` end to end in a real browser: the registration API hands out a session
//! URL of the local Veriff stand-in, headless Chromium opens it and clicks "Approve", and the
//! stand-in's signed webhooks make the verification VERIFIED. Chromium is driven through
//! chromedriver's WebDriver HTTP protocol; without Debian's `chromium` and `chromium-driver`
//! the test says so on stderr and skips.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::WAIT;
use crate::harness::{Spawn, TestApp, eventually};

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// An executable on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Set by `.ci/run`: there the browser must run, and a missing one fails the test.
const REQUIRED: &str = "KYC_REQUIRE_BROWSER";
/// Set by `.ci/run` too: a file the test writes once it has really run, which `.ci/run`
/// checks, so that CI proves the browser test ran rather than passed by skipping.
const RAN_MARKER: &str = "KYC_BROWSER_TEST_MARKER";

/// Says on the real stderr (not captured by the test runner) why the test did not run; in
/// CI, where the browser is required, fails instead.
fn skip(why: &str) {
    assert!(
        std::env::var_os(REQUIRED).is_none(),
        "{REQUIRED} is set but the browser test cannot run: {why}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED oncall::dev_page: {why}; install Debian's packages with \
         `apt-get install -y chromium chromium-driver` to run it"
    );
}

/// A chromedriver on a port of its own; shut down (with its browsers) when dropped.
struct ChromeDriver {
    child: Child,
    port: u16,
    base: String,
    http: reqwest::Client,
    profile: PathBuf,
}

impl ChromeDriver {
    async fn start(chromedriver: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Self {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            profile: std::env::temp_dir()
                .join(format!("kyc-chromium-{}", uuid::Uuid::new_v4().simple())),
        };
        eventually(WAIT, "chromedriver to be ready", || async {
            let status: Value = driver
                .http
                .get(format!("{}/status", driver.base))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (status["value"]["ready"] == true).then_some(())
        })
        .await;
        driver
    }

    /// One WebDriver command; fails the test with WebDriver's error.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("chromedriver answers");
        let status = response.status();
        let answer: Value = response.json().await.expect("a JSON answer");
        assert!(status.is_success(), "WebDriver {path}: {status} {answer}");
        answer["value"].clone()
    }

    /// A headless Chromium session.
    async fn session(&self, browser: &Path) -> Browser<'_> {
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            format!("--user-data-dir={}", self.profile.display()),
        ];
        let created = self
            .call(
                reqwest::Method::POST,
                "/session",
                Some(json!({
                    "capabilities": { "alwaysMatch": {
                        "goog:chromeOptions": { "binary": browser, "args": args }
                    }}
                })),
            )
            .await;
        let id = created["sessionId"]
            .as_str()
            .expect("a WebDriver session id")
            .to_owned();
        let browser = Browser { driver: self, id };
        browser
            .call(
                reqwest::Method::POST,
                "/timeouts",
                json!({ "implicit": 10_000, "pageLoad": 30_000 }),
            )
            .await;
        browser
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // chromedriver's own /shutdown quits the browsers it started; then make sure.
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(
                b"GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            let _ = stream.read_to_end(&mut Vec::new());
        }
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A browser session of a [`ChromeDriver`].
struct Browser<'a> {
    driver: &'a ChromeDriver,
    id: String,
}

impl Browser<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.id);
        let body = (method != reqwest::Method::GET).then_some(body);
        self.driver.call(method, &path, body).await
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn title(&self) -> String {
        self.call(reqwest::Method::GET, "/title", Value::Null)
            .await
            .as_str()
            .expect("a title")
            .to_owned()
    }

    /// The element a CSS selector finds (waiting up to the implicit timeout).
    async fn find(&self, selector: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({ "using": "css selector", "value": selector }),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .expect("an element reference")
            .to_owned()
    }

    async fn click(&self, selector: &str) {
        let element = self.find(selector).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    async fn text(&self, selector: &str) -> String {
        let element = self.find(selector).await;
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            Value::Null,
        )
        .await
        .as_str()
        .expect("text")
        .to_owned()
    }

    async fn quit(self) {
        self.driver
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.id),
                None,
            )
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_approves_on_the_dev_page_and_the_verification_becomes_verified() {
    let (Some(chromedriver), Some(chromium)) = (on_path("chromedriver"), on_path("chromium"))
    else {
        skip("chromedriver or chromium is not installed");
        return;
    };
    // `--dev` without `--veriff-base-url`: the registration API creates sessions at the
    // stand-in mounted on the app itself.
    let app = TestApp::start(Spawn {
        worker: true,
        dev: true,
        ..Spawn::default()
    })
    .await;
    let client = app.seed_client(false).await;
    let onboarding = app.seed_ready_onboarding(&client).await;
    let answer = app.session(&client.key, onboarding).await;
    assert!(
        answer.url.starts_with(&format!(
            "{}/dev/veriff/v/{}",
            app.base_url, answer.session_id
        )),
        "a stand-in URL: {}",
        answer.url
    );
    let status = || async {
        let body: Value = app
            .status_request(&client.key, onboarding)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["state"].as_str().map(str::to_owned)
    };
    assert_eq!(status().await.as_deref(), Some("UNVERIFIED"));

    let driver = ChromeDriver::start(&chromedriver).await;
    let browser = driver.session(&chromium).await;
    browser.open(&answer.url).await;
    assert_eq!(browser.title().await, "Verify your identity (development)");
    assert!(
        browser
            .text("body")
            .await
            .contains(answer.session_id.as_str()),
        "the page names the session"
    );
    browser.click("#approve").await;
    assert_eq!(browser.text("#result").await, "Sent: approved.");
    browser.quit().await;

    let state = eventually(WAIT, "the status VERIFIED", || async {
        status().await.filter(|s| s == "VERIFIED")
    })
    .await;
    assert_eq!(state, "VERIFIED");
    let (v, _) = app
        .verification_of(onboarding)
        .await
        .expect("the onboarding's verification");
    // session_created, started, submitted, approved.
    app.wait_inputs(v, 4).await;
    if let Some(marker) = std::env::var_os(RAN_MARKER) {
        std::fs::write(marker, "the browser test ran\n").expect("the marker is written");
    }
}
