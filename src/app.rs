//! Wiring: starts the roles a process runs (HTTP, later the worker) around one broker
//! connection, and stops them together on a signal or when any of them dies.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::queue::{Broker, Topology};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running process: its tasks, and the token that stops them.
pub struct Service {
    http_addr: Option<SocketAddr>,
    server: Option<ServerHandle>,
    stop: CancellationToken,
    tasks: JoinSet<Result<(), BoxError>>,
}

pub fn topology(config: &Config) -> Topology {
    Topology::new(config.queue_prefix.clone(), config.retry_delays.0.clone())
}

impl Service {
    /// Starts the HTTP side on `listener`.
    pub fn start_http(config: &Config, dev: bool, listener: TcpListener) -> Result<Self, BoxError> {
        if dev {
            config.check_dev_loopback()?;
        }
        let integrations = config.integrations(dev)?;
        let stop = CancellationToken::new();
        let broker = Broker::start(config.amqp_url.clone(), topology(config), stop.clone());
        let http_addr = listener.local_addr()?;
        let state = AppState {
            integrations,
            broker,
            metrics: Arc::new(Metrics::new()),
        };
        let server = http::server(state, listener)?;
        let handle = server.handle();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move { server.await.map_err(BoxError::from) });
        tracing::info!(addr = %http_addr, "serving HTTP");
        Ok(Self {
            http_addr: Some(http_addr),
            server: Some(handle),
            stop,
            tasks,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Runs until SIGINT or SIGTERM, or until a task ends; then stops everything gracefully.
    pub async fn run_until_signal(mut self) -> Result<(), BoxError> {
        let outcome = tokio::select! {
            () = shutdown_signal() => {
                tracing::info!("shutting down");
                Ok(())
            }
            Some(ended) = self.tasks.join_next() => match ended {
                Ok(Ok(())) => Err("a service task stopped unexpectedly".into()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.into()),
            },
        };
        self.shutdown().await;
        outcome
    }

    /// Stops accepting work, lets in-flight work finish, and waits for every task.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.stop(true).await;
        }
        self.stop.cancel();
        while let Some(ended) = self.tasks.join_next().await {
            if let Ok(Err(e)) = ended {
                tracing::warn!(error = %e, "task ended with an error during shutdown");
            }
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT only");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
