//! The HTTP side: routes, shared state and the server.

mod bearer;
mod clients;
mod openapi;
mod ops;
mod registration;
mod status;
mod user;
mod webhooks;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::http::header::{CONTENT_LENGTH, HeaderMap};
use actix_web::{App, HttpServer, web};
use bytes::BytesMut;
use deadpool_postgres::Pool;
use futures_util::StreamExt;

pub use bearer::BearerAuth;
pub use clients::{ClientKeys, RateLimiter};
pub use ops::Ops;

use crate::crypto::Cipher;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::queue::Broker;
use crate::state_machine::Policy;
use crate::storage::notifications::Notifier;
use crate::veriff::client::VeriffClient;
use crate::veriff::signature::Integrations;
use crate::veriff::standin::StandIn;

/// Largest webhook body accepted (DESIGN.md section 3).
pub const BODY_LIMIT: usize = 1024 * 1024;

pub struct AppState {
    pub integrations: Integrations,
    pub broker: Broker,
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
    pub clients: ClientKeys,
    pub limiter: RateLimiter,
    pub notifier: Notifier,
    pub bearer: BearerAuth,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/webhooks/veriff")
            .route("/decision", web::post().to(webhooks::decision))
            .route("/event", web::post().to(webhooks::event)),
    )
    .route(
        "/v1/auth/register/verification",
        web::post().to(registration::create),
    )
    .route(
        "/v1/auth/register/status",
        web::get().to(status::onboarding_status),
    )
    .route("/v1/user/verification", web::get().to(user::verification))
    .route(
        "/v1/user/verification/status",
        web::get().to(status::user_status),
    )
    .route("/openapi.json", web::get().to(openapi::document))
    .configure(ops_routes);
}

fn ops_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(ops::healthz))
        .route("/readyz", web::get().to(ops::readyz))
        .route("/metrics", web::get().to(ops::metrics));
}

/// Binds the server to an already-open listener (port 0 in tests).
/// `standin` mounts the local Veriff stand-in (`--dev` only).
pub fn server(
    state: AppState,
    ops: Ops,
    standin: Option<StandIn>,
    listener: TcpListener,
) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let standin = standin.map(web::Data::new);
    serve_with(ops, listener, move |cfg| {
        cfg.app_data(state.clone());
        routes(cfg);
        if let Some(standin) = &standin {
            cfg.app_data(standin.clone());
            crate::veriff::standin::routes(cfg);
        }
    })
}

/// Only the operational endpoints, for a process without the API (`kyc worker`).
pub fn ops_server(ops: Ops, listener: TcpListener) -> std::io::Result<Server> {
    serve_with(ops, listener, ops_routes)
}

fn serve_with<F>(ops: Ops, listener: TcpListener, mount: F) -> std::io::Result<Server>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let ops = web::Data::new(ops);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(ops.clone())
            .configure(mount.clone())
            .default_service(web::to(|| async { Err::<&str, _>(ApiError::NotFound) }))
    })
    .listen(listener)?
    // Signals are the service's to handle, so that every role stops together.
    .disable_signals()
    .shutdown_timeout(10)
    .run();
    Ok(server)
}

/// Reads a body, refusing it as soon as it is known to exceed `limit`.
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
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::InvalidRequest("the request body could not be read"))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}
