//! The real `kyc worker` binary as a child process, configured through the environment
//! exactly as a deployment would be, so that a test can kill it with SIGKILL.

use std::process::{Child, Command, Stdio};

use kyc::config::Config;

use super::{ARCHIVE_KEY, EU_API_KEY, EU_SECRET, US_API_KEY, US_SECRET};

/// A running `kyc worker`; killed (SIGKILL) when dropped.
pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// Starts `kyc worker` on the deployment `config` describes (database, broker, prefix).
    pub fn spawn(config: &Config) -> Self {
        let delays: Vec<String> = config
            .retry_delays
            .0
            .iter()
            .map(|d| format!("{}s", d.as_secs()))
            .collect();
        let child = Command::new(env!("CARGO_BIN_EXE_kyc"))
            .arg("worker")
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
            .stdout(Stdio::null())
            .spawn()
            .expect("the kyc binary starts");
        Self { child }
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
