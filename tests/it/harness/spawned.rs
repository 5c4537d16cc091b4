//! A `kyc` subcommand as a child process, configured through its environment as a deployment
//! configures it. Its JSON logs are captured: the addresses it bound (port 0) are read from
//! them, and the last lines are printed when a test fails. Killed (SIGKILL) when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::eventually;

/// How long a process may take to start listening or to exit.
const WAIT: Duration = Duration::from_secs(30);

pub struct Spawned {
    name: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Spawned {
    /// Starts `command` (e.g. `process::kyc_command(&config).arg("serve")`) with JSON logs.
    pub fn start(name: &str, mut command: Command) -> Self {
        command
            .env("KYC_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: the kyc binary starts: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        // Read continuously, so that a full pipe never blocks the process.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(line);
            }
        });
        Self {
            name: name.to_owned(),
            child,
            logs,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (e.g. to read `/proc/<pid>/status`).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The `addr` of the first log line whose message is `message`, once it is logged.
    /// Fails the test if the process exits first.
    pub async fn logged_addr(&mut self, message: &str) -> SocketAddr {
        let what = format!("{} to log \"{message}\"", self.name);
        eventually(WAIT, &what, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before logging \"{message}\":\n{}",
                    self.name,
                    self.logs().join("\n")
                );
            }
            let found = self.logs().iter().find_map(|line| {
                let entry: serde_json::Value = serde_json::from_str(line).ok()?;
                (entry["message"] == message).then(|| entry["addr"].as_str()?.parse().ok())?
            });
            async move { found }
        })
        .await
    }

    /// Where KYC_HTTP_ADDR listens.
    pub async fn http_addr(&mut self) -> SocketAddr {
        self.logged_addr("serving HTTP").await
    }

    /// Where KYC_OPS_ADDR listens.
    pub async fn ops_addr(&mut self) -> SocketAddr {
        self.logged_addr("serving the operational endpoints").await
    }

    /// SIGTERM: the orchestrator's request to stop gracefully.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "SIGTERM {}", self.name);
    }

    /// SIGKILL: no shutdown path runs, whatever the process was doing.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Waits until the process has exited, and returns how.
    pub async fn exited(&mut self) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        eventually(WAIT, &what, || {
            let status = self.child.try_wait().expect("process status");
            async move { status }
        })
        .await
    }

    /// Fails the test if the process has exited on its own.
    pub fn assert_running(&mut self) {
        let status = self.child.try_wait().expect("process status");
        assert!(
            status.is_none(),
            "{} exited ({status:?}):\n{}",
            self.name,
            self.logs().join("\n")
        );
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail = &logs[logs.len().saturating_sub(40)..];
            eprintln!("--- last log lines of {}:\n{}", self.name, tail.join("\n"));
        }
    }
}
