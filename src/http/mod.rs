//! The HTTP side: routes, shared state and the server.

mod bearer;
mod clients;
mod openapi;
mod ops;
mod registration;
mod request_id;
mod status;
mod status_view;
mod user;
mod webhooks;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::http::Method;
use actix_web::http::header::{CONTENT_LENGTH, HeaderMap};
use actix_web::{App, FromRequest, Handler, HttpResponse, HttpServer, Resource, Responder, web};
use bytes::BytesMut;
use deadpool_postgres::Pool;
use futures_util::StreamExt;

pub(crate) use bearer::BearerAuth;
pub(crate) use clients::{ClientKeys, RateLimiter};
pub(crate) use ops::{Needs, Ops};
pub(crate) use status_view::StatusView;

use crate::crypto::Cipher;
use crate::dev::StandIn;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::queue::Broker;
use crate::spool::Spool;
use crate::state_machine::Policy;
use crate::storage::notifications::{Change, Listener};
use crate::veriff::client::VeriffClient;
use crate::veriff::integration::Integrations;

/// Largest webhook body accepted (DESIGN.md section 3).
pub(crate) const BODY_LIMIT: usize = 1024 * 1024;
/// The request head must arrive within this (actix's timer, cleared once the head is in).
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// The whole body must arrive within this after the head: a slow sender cannot hold a
/// connection (and its memory) for longer.
const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// How long a stopping server lets the requests it accepted finish (the orchestrator's grace
/// period must be longer).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AppState {
    pub integrations: Integrations,
    pub broker: Broker,
    /// How long a webhook waits for the broker's confirm (KYC_PUBLISH_TIMEOUT).
    pub publish_timeout: Duration,
    /// Where a webhook goes when the broker does not confirm it in time.
    pub spool: Spool,
    pub metrics: Arc<Metrics>,
    pub registration: Registration,
}

/// What the registration API needs.
pub struct Registration {
    pub pool: Pool,
    pub veriff: VeriffClient,
    /// Seals session URLs (KYC_URL_ENCRYPTION_KEY).
    pub urls: Cipher,
    pub policy: Policy,
    pub clients: Arc<ClientKeys>,
    pub limiter: RateLimiter,
    pub status: Arc<StatusView>,
    pub bearer: BearerAuth,
    /// Session creations allowed at once: fewer than the pool's connections.
    pub creations: tokio::sync::Semaphore,
    /// Cancelled when the process starts to stop: long-polling requests answer at once.
    pub draining: tokio_util::sync::CancellationToken,
}

/// What this process keeps in memory and the database's change notifications invalidate.
pub(crate) struct Views {
    pub clients: Arc<ClientKeys>,
    pub status: Arc<StatusView>,
}

impl Listener for Views {
    fn changed(&self, change: Change) {
        match change {
            Change::ApiClient(Some(digest)) => self.clients.changed(&digest),
            Change::ApiClient(None) => self.clients.set_listening(true),
            Change::Verification(_) | Change::Onboarding { .. } => self.status.changed(change),
        }
    }

    fn listening(&self, listening: bool) {
        self.clients.set_listening(listening);
        self.status.set_listening(listening);
    }
}

/// One path served with one method. Any other method on it answers 405 with `Allow`, a
/// problem document (`METHOD_NOT_ALLOWED`), rather than 404: the path exists.
pub(crate) fn endpoint<F, Args>(path: &str, method: Method, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    let allow = method.clone();
    web::resource(path)
        .route(web::method(method).to(handler))
        .default_service(web::to(move || {
            let allow = allow.clone();
            async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow }) }
        }))
}

/// The API's routes: webhooks, registration, status, the OpenAPI document.
fn api_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint(
        "/webhooks/veriff/decision",
        Method::POST,
        webhooks::decision,
    ))
    .service(endpoint(
        "/webhooks/veriff/event",
        Method::POST,
        webhooks::event,
    ))
    .service(endpoint(
        "/v1/auth/register/verification",
        Method::POST,
        registration::create,
    ))
    .service(endpoint(
        "/v1/auth/register/status",
        Method::GET,
        status::onboarding_status,
    ))
    .service(endpoint(
        "/v1/user/verification",
        Method::GET,
        user::verification,
    ))
    .service(endpoint(
        "/v1/user/verification/status",
        Method::GET,
        status::user_status,
    ))
    .service(endpoint("/openapi.json", Method::GET, openapi::document));
}

/// The probes, and `/metrics` unless it is served on KYC_OPS_ADDR only.
fn ops_routes(cfg: &mut web::ServiceConfig, with_metrics: bool) {
    cfg.service(endpoint("/healthz", Method::GET, ops::healthz))
        .service(endpoint("/readyz", Method::GET, ops::readyz));
    if with_metrics {
        cfg.service(endpoint("/metrics", Method::GET, ops::metrics));
    }
}

/// The public server: the API, the probes, `/metrics` when `with_metrics`, and under `--dev`
/// the local Veriff stand-in. Binds to an already-open listener (port 0 in tests).
pub fn server(
    state: AppState,
    ops: Arc<Ops>,
    standin: Option<StandIn>,
    listener: TcpListener,
    limits: Limits,
) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let standin = standin.map(web::Data::new);
    let with_metrics = limits.with_metrics;
    serve_with(ops, listener, limits, move |cfg| {
        cfg.app_data(state.clone());
        api_routes(cfg);
        ops_routes(cfg, with_metrics);
        if let Some(standin) = &standin {
            cfg.app_data(standin.clone());
            crate::dev::routes(cfg);
        }
    })
}

/// Only the operational endpoints: `kyc worker`'s listener, and KYC_OPS_ADDR.
pub(crate) fn ops_server(
    ops: Arc<Ops>,
    listener: TcpListener,
    limits: Limits,
) -> std::io::Result<Server> {
    let with_metrics = limits.with_metrics;
    serve_with(ops, listener, limits, move |cfg| {
        ops_routes(cfg, with_metrics)
    })
}

/// How a listener is bounded, and whether it serves `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections held at once by the whole server.
    pub max_connections: u32,
    pub with_metrics: bool,
}

fn serve_with<F>(
    ops: Arc<Ops>,
    listener: TcpListener,
    limits: Limits,
    mount: F,
) -> std::io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    // actix counts connections per worker thread.
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let per_worker = (limits.max_connections as usize).div_ceil(workers).max(1);
    let ops = web::Data::from(ops);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(actix_web::middleware::from_fn(request_id::middleware))
            .app_data(ops.clone())
            .configure(mount.clone())
            .default_service(web::to(|| async { Err::<&str, _>(ApiError::NotFound) }))
    })
    .workers(workers)
    .max_connections(per_worker)
    .listen(listener)?
    .client_request_timeout(HEAD_DEADLINE)
    // Signals are the service's to handle, so that every role stops together.
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs())
    .run();
    Ok(server)
}

/// A UUID in its hyphenated form only (as the OpenAPI document's `format: uuid` says): the
/// simple, braced and URN forms that `Uuid::parse_str` also takes are refused.
pub(crate) fn hyphenated_uuid(text: &str) -> Option<uuid::Uuid> {
    (text.len() == 36)
        .then(|| uuid::Uuid::try_parse(text).ok())
        .flatten()
}

/// Reads a body, refusing it as soon as it is known to exceed `limit`, or when it has not
/// arrived whole within the deadline. Memory grows with the bytes that arrive, never ahead of
/// them from a declared `Content-Length`.
pub(crate) async fn read_limited(
    headers: &HeaderMap,
    mut body: web::Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let too_large = ApiError::PayloadTooLarge { limit };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk
                .map_err(|_| ApiError::InvalidRequest("the request body could not be read"))?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    tokio::time::timeout(BODY_DEADLINE, read)
        .await
        .unwrap_or(Err(ApiError::RequestTimeout))
}
