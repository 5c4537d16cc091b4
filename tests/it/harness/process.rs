//! The real `kyc worker` and `kyc serve` binaries as child processes, configured through the
//! environment exactly as a deployment would be, so that a test can kill them with SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kyc::config::Config;

use super::{
    ARCHIVE_KEY, EU_API_KEY, EU_SECRET, JWT_AUDIENCE, JWT_SECRET, URL_KEY, US_API_KEY, US_SECRET,
};

/// A running `kyc worker`; killed (SIGKILL) when dropped.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// Starts `kyc worker` on the deployment `config` describes (database, broker, prefix).
    pub fn spawn(config: &Config) -> Self {
        Self::start(config, false).0
    }

    /// The same, logging JSON to stderr, which is collected into the returned [`Logs`].
    pub fn spawn_logged(config: &Config) -> (Self, Logs) {
        let (worker, logs) = Self::start(config, true);
        (worker, logs.expect("stderr is captured"))
    }

    fn start(config: &Config, logged: bool) -> (Self, Option<Logs>) {
        let delays: Vec<String> = config
            .retry_delays
            .0
            .iter()
            .map(|d| format!("{}s", d.as_secs()))
            .collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_kyc"));
        command
            .arg("worker")
            // Its operational endpoints on a port of its own, so workers can run side by side.
            .env("KYC_HTTP_ADDR", "127.0.0.1:0")
            .env("KYC_DATABASE_URL", &config.database_url)
            .env("KYC_AMQP_URL", &config.amqp_url)
            .env("KYC_QUEUE_PREFIX", &config.queue_prefix)
            .env("KYC_VERIFF_API_KEY", EU_API_KEY)
            .env("KYC_VERIFF_SHARED_SECRETS", EU_SECRET)
            .env("KYC_VERIFF_US_API_KEY", US_API_KEY)
            .env("KYC_VERIFF_US_SHARED_SECRETS", US_SECRET)
            .env("KYC_ARCHIVE_ENCRYPTION_KEY", ARCHIVE_KEY)
            .env("KYC_RETRY_DELAYS", delays.join(","))
            .env(
                "KYC_WORKER_CONCURRENCY",
                config.worker_concurrency.to_string(),
            )
            .env("KYC_WORKER_BATCH", config.worker_batch.to_string())
            .env("KYC_LOG_FORMAT", "pretty")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut child = Logs::log_json(&mut command, logged)
            .spawn()
            .expect("the kyc binary starts");
        let logs = logged.then(|| Logs::capture(&mut child));
        (Self { child }, logs)
    }

    /// SIGKILL: no shutdown path runs, whatever the process was doing.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().expect("reap the killed worker");
    }

    /// Fails the test if the process has exited on its own.
    pub fn assert_running(&mut self) {
        let status = self.child.try_wait().expect("worker status");
        assert!(status.is_none(), "kyc worker exited: {status:?}");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `kyc serve` on a port of its own; killed (SIGKILL) when dropped. Its logs go to a
/// file under the target's temporary folder (named in the test's output), kept if the test
/// fails.
pub struct ServeProcess {
    child: Child,
    pub base_url: String,
    /// Its stderr: the logs, in `KYC_LOG_FORMAT=pretty`.
    pub log: std::path::PathBuf,
}

impl ServeProcess {
    /// Starts `kyc serve` on the deployment `config` describes, and waits until it is ready.
    pub async fn start(config: &Config) -> Self {
        // A free port: bound, then released for the child (a race with nothing in practice).
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{}-serve-{}.log",
            config.queue_prefix,
            addr.port()
        ));
        let stderr = std::fs::File::create(&log).expect("serve log file");
        let child = kyc_command(config)
            .arg("serve")
            .env("KYC_HTTP_ADDR", addr.to_string())
            .env(
                "KYC_PUBLISH_TIMEOUT",
                format!("{}ms", config.publish_timeout.as_millis()),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the kyc binary starts");
        eprintln!("kyc serve on {addr}, logging to {}", log.display());
        let serve = Self {
            child,
            base_url: format!("http://{addr}"),
            log,
        };
        let http = reqwest::Client::new();
        super::eventually(Duration::from_secs(20), "kyc serve to be ready", || async {
            let r = http
                .get(format!("{}/readyz", serve.base_url))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        serve
    }

    /// SIGKILL: no shutdown path runs, whatever the process was doing.
    #[allow(dead_code, reason = "used by the fault suite (tests/faults) only")]
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL kyc serve");
        self.child.wait().expect("reap the killed kyc serve");
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Kept for a test that failed, to read.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// `kyc …` as an operator runs it against the deployment `config` describes: the same
/// database, broker, queue prefix, secrets and policy as `harness::test_config`, through the
/// environment only (other `KYC_…` variables of the test process are removed). Add the
/// subcommand's arguments; stdin is closed.
pub fn kyc_command(config: &Config) -> Command {
    let delays: Vec<String> = config
        .retry_delays
        .0
        .iter()
        .map(|d| format!("{}s", d.as_secs()))
        .collect();
    let codes: Vec<String> = config
        .blocking_reason_codes
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kyc"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KYC_") {
            command.env_remove(name);
        }
    }
    command
        .env("KYC_DATABASE_URL", &config.database_url)
        .env("KYC_AMQP_URL", &config.amqp_url)
        .env("KYC_QUEUE_PREFIX", &config.queue_prefix)
        .env("KYC_HTTP_ADDR", config.http_addr.to_string())
        .env("KYC_VERIFF_API_KEY", EU_API_KEY)
        .env("KYC_VERIFF_SHARED_SECRETS", EU_SECRET)
        .env("KYC_VERIFF_US_API_KEY", US_API_KEY)
        .env("KYC_VERIFF_US_SHARED_SECRETS", US_SECRET)
        .env("KYC_JWT_SECRET", JWT_SECRET)
        .env("KYC_JWT_AUDIENCE", JWT_AUDIENCE)
        .env("KYC_URL_ENCRYPTION_KEY", URL_KEY)
        .env("KYC_ARCHIVE_ENCRYPTION_KEY", ARCHIVE_KEY)
        .env("KYC_RETRY_DELAYS", delays.join(","))
        .env("KYC_BLOCKING_REASON_CODES", codes.join(","))
        .env(
            "KYC_MAX_VERIFICATION_ATTEMPTS",
            config.max_verification_attempts.to_string(),
        )
        .env("KYC_LOG_FORMAT", "pretty")
        .stdin(Stdio::null());
    if let Some(callback) = &config.veriff_callback_url {
        command.env("KYC_VERIFF_CALLBACK_URL", callback);
    }
    command
}

/// A `kyc serve` of the deployment `config` describes, on a port of its own, started without
/// waiting for it (see [`ServeChild::wait_ready`]); killed (SIGKILL) when dropped.
pub struct ServeChild {
    child: Child,
    pub base_url: String,
}

impl ServeChild {
    pub fn start(config: &Config) -> Self {
        Self::spawn(config, false).0
    }

    /// The same, logging JSON to stderr, which is collected into the returned [`Logs`].
    pub fn start_logged(config: &Config) -> (Self, Logs) {
        let (serve, logs) = Self::spawn(config, true);
        (serve, logs.expect("stderr is captured"))
    }

    fn spawn(config: &Config, logged: bool) -> (Self, Option<Logs>) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut command = kyc_command(config);
        command
            .arg("serve")
            .env("KYC_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null());
        let mut child = Logs::log_json(&mut command, logged)
            .spawn()
            .expect("the kyc binary starts");
        let logs = logged.then(|| Logs::capture(&mut child));
        let serve = Self {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
        };
        (serve, logs)
    }

    /// Waits until `base` answers /readyz with 200.
    pub async fn wait_ready(http: &reqwest::Client, base: &str) {
        super::eventually(
            std::time::Duration::from_secs(20),
            &format!("{base} to become ready"),
            || async {
                let r = http.get(format!("{base}/readyz")).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log lines a child process writes to stderr with `KYC_LOG_FORMAT=json`, collected as
/// they arrive (a line that is not JSON is kept as a string).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<serde_json::Value>>>);

impl Logs {
    fn log_json(command: &mut Command, logged: bool) -> &mut Command {
        if logged {
            command
                .env("KYC_LOG_FORMAT", "json")
                .env("RUST_LOG", "info")
                .stderr(Stdio::piped());
        }
        command
    }

    fn capture(child: &mut Child) -> Self {
        let logs = Self::default();
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::clone(&logs.0);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                lines
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(value);
            }
        });
        logs
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The first line for which `matches` holds, waiting up to 30 s for it.
    pub async fn wait_for(
        &self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        super::eventually(Duration::from_secs(30), what, || async {
            self.lines().into_iter().find(|line| matches(line))
        })
        .await
    }
}
