//! Wiring: starts the roles a process runs (HTTP, the worker) around one broker connection,
//! supervises every long-running loop, and stops them together on a signal or as soon as any
//! of them ends: a loop that dies brings the process down, visibly, and the orchestrator
//! restarts it.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use futures_util::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{BoxError, chain};
use crate::http::{self, AppState, BearerAuth, Needs, Ops, RateLimiter, Registration, Views};
use crate::metrics::Metrics;
use crate::queue::Broker;
use crate::spool::Spool;
use crate::storage;
use crate::storage::notifications;
use crate::veriff::client::VeriffClient;
use crate::worker::{Worker, WorkerSettings};

/// Connections for the registration API of one process.
const HTTP_POOL_SIZE: usize = 16;
/// Session creations at once (each holds a connection while Veriff answers): the other half
/// of the pool stays for status polls, webhooks spooled and the rest.
const SESSION_CREATIONS: usize = HTTP_POOL_SIZE / 2;

/// What a process runs. The HTTP listener always serves the probes; with `api` also the
/// webhooks and the registration API. `ops`, when given, serves the probes and `/metrics`,
/// which then leave the HTTP listener.
pub struct Roles {
    pub http: Option<TcpListener>,
    pub ops: Option<TcpListener>,
    pub api: bool,
    pub worker: bool,
}

/// A running process: its supervised tasks, the token that stops them, and the broker
/// connection, closed last so that in-flight work can still ack and publish while it drains.
pub struct Service {
    http_addr: Option<SocketAddr>,
    ops_addr: Option<SocketAddr>,
    servers: Vec<ServerHandle>,
    /// Cancelled first on a stop: what waits for something that may never come answers now.
    draining: CancellationToken,
    stop: CancellationToken,
    broker: Broker,
    tasks: JoinSet<(&'static str, Result<(), BoxError>)>,
}

impl Service {
    /// Starts the requested roles around one broker connection.
    pub fn start(config: &Config, roles: Roles) -> Result<Self, BoxError> {
        let integrations = config.integrations()?;
        let stop = CancellationToken::new();
        let name = match (roles.api, roles.worker) {
            (true, true) => "run",
            (true, false) => "serve",
            (false, _) => "worker",
        };
        let broker = Broker::start(
            &config.amqp_urls(),
            name,
            config.topology(),
            CancellationToken::new(),
        )?;
        let metrics = Arc::new(Metrics::new());
        let mut service = Self {
            http_addr: roles
                .http
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
            ops_addr: roles
                .ops
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
            servers: Vec::new(),
            draining: CancellationToken::new(),
            stop,
            broker: broker.clone(),
            tasks: JoinSet::new(),
        };
        let own_addr = service.http_addr.unwrap_or(config.http_addr);
        let veriff = |callback_url| {
            let base = config.veriff_base_url(own_addr);
            let us_base = config
                .veriff_us_base_url
                .clone()
                .unwrap_or_else(|| base.clone());
            VeriffClient::new(
                integrations.clone(),
                &base,
                &us_base,
                callback_url,
                config.veriff_timeout,
            )
        };

        let mut worker_pool = None;
        if roles.worker {
            let settings = WorkerSettings::from_config(config);
            let pool = storage::pool(&config.database_url, Worker::pool_size(&settings))?;
            worker_pool = Some(pool.clone());
            tracing::info!(
                batches = settings.batches,
                batch_size = settings.batch_size,
                "worker started"
            );
            let worker = Arc::new(Worker::new(
                settings,
                pool,
                broker.clone(),
                integrations.clone(),
                config.archive_cipher()?,
                Arc::clone(&metrics),
                Some(veriff(None)?),
            ));
            for (name, task) in worker.tasks(&service.stop) {
                service.supervise(name, task);
            }
        }

        let api_pool = match roles.api {
            true => Some(storage::pool(&config.database_url, HTTP_POOL_SIZE)?),
            false => None,
        };
        let ops = Arc::new(Ops {
            broker: broker.clone(),
            metrics: Arc::clone(&metrics),
            database: match (&api_pool, &worker_pool) {
                (Some(pool), _) | (None, Some(pool)) => pool.clone(),
                (None, None) => storage::pool(&config.database_url, 1)?,
            },
            needs: match roles.api {
                true => Needs::BrokerOrDatabase,
                false => Needs::BrokerAndDatabase,
            },
        });
        let limits = |with_metrics| http::Limits {
            max_connections: config.http_max_connections,
            with_metrics,
        };
        let metrics_on_http = roles.ops.is_none();
        if let Some(listener) = roles.ops {
            let running = http::ops_server(Arc::clone(&ops), listener, limits(true))?;
            service.servers.push(running.handle());
            service.supervise("ops server", async move { Ok(running.await?) });
            if let Some(addr) = service.ops_addr {
                tracing::info!(%addr, role = name, "serving the operational endpoints");
            }
        }
        if let Some(listener) = roles.http {
            let running = match api_pool {
                Some(pool) => {
                    let views = Arc::new(Views {
                        clients: Arc::default(),
                        status: Arc::default(),
                    });
                    let (url, stop) = (config.database_url.clone(), service.stop.clone());
                    let views_listener = Arc::clone(&views) as Arc<dyn notifications::Listener>;
                    service.supervise("notification listener", async move {
                        notifications::listen(url, views_listener, stop).await;
                        Ok(())
                    });
                    let registration = Registration {
                        pool,
                        veriff: veriff(Some(config.callback_url(own_addr)?))?,
                        urls: config.url_cipher()?,
                        policy: config.policy(),
                        clients: Arc::clone(&views.clients),
                        limiter: RateLimiter::new(config.client_rate_limit),
                        status: Arc::clone(&views.status),
                        bearer: BearerAuth::new(config.jwt()?)?,
                        creations: tokio::sync::Semaphore::new(SESSION_CREATIONS),
                        draining: service.draining.clone(),
                    };
                    let spool = Spool::new(
                        registration.pool.clone(),
                        config.archive_cipher()?,
                        Arc::clone(&metrics),
                    );
                    let relay = spool.relay(broker.clone());
                    let stop = service.stop.clone();
                    service.supervise("spool relay", relay.run(stop));
                    let standin = match config.dev {
                        true => Some(crate::dev::standin(&integrations, own_addr)?),
                        false => None,
                    };
                    let state = AppState {
                        integrations,
                        broker,
                        publish_timeout: config.publish_timeout,
                        spool,
                        metrics,
                        registration,
                    };
                    http::server(state, ops, standin, listener, limits(metrics_on_http))?
                }
                None => http::ops_server(ops, listener, limits(metrics_on_http))?,
            };
            service.servers.push(running.handle());
            service.supervise("HTTP server", async move { Ok(running.await?) });
            tracing::info!(addr = %own_addr, role = name, "serving HTTP");
        }
        Ok(service)
    }

    /// Runs `task` until it ends; its end, a panic included, is reported with its name.
    fn supervise<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.tasks.spawn(async move {
            let outcome = match AssertUnwindSafe(task).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("{name} panicked").into()),
            };
            (name, outcome)
        });
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_addr
    }

    /// Runs until SIGINT or SIGTERM, or until a task ends; then stops everything gracefully.
    pub(crate) async fn run_until_signal(mut self) -> Result<(), BoxError> {
        let outcome = tokio::select! {
            () = shutdown_signal() => {
                tracing::info!("shutting down");
                Ok(())
            }
            Some(ended) = self.tasks.join_next() => {
                let error: BoxError = match ended {
                    Ok((name, Ok(()))) => format!("{name} stopped unexpectedly").into(),
                    Ok((name, Err(e))) => format!("{name} failed: {}", chain(&*e)).into(),
                    Err(e) => e.into(),
                };
                tracing::error!(error = %chain(&*error), "a service task ended; stopping the process");
                Err(error)
            }
        };
        self.shutdown().await;
        outcome
    }

    /// Stops accepting work, lets in-flight work finish, and waits for every task.
    pub async fn shutdown(mut self) {
        self.draining.cancel();
        let started = std::time::Instant::now();
        for server in std::mem::take(&mut self.servers) {
            server.stop(true).await;
        }
        // What a stop took says whether requests were still being answered.
        tracing::info!(
            millis = started.elapsed().as_millis() as u64,
            "HTTP servers stopped; stopping the background tasks"
        );
        self.stop.cancel();
        while let Some(ended) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = ended {
                tracing::warn!(task = name, error = %chain(&*e), "task ended with an error during shutdown");
            }
        }
        self.broker.close().await;
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
