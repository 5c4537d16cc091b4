//! The HTTP side: routes, shared state and the server.

mod ops;
mod webhooks;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::queue::Broker;
use crate::veriff::signature::Integrations;

/// Largest webhook body accepted (DESIGN.md section 3).
pub const BODY_LIMIT: usize = 1024 * 1024;

pub struct AppState {
    pub integrations: Integrations,
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/webhooks/veriff")
            .route("/decision", web::post().to(webhooks::decision))
            .route("/event", web::post().to(webhooks::event)),
    )
    .route("/healthz", web::get().to(ops::healthz))
    .route("/readyz", web::get().to(ops::readyz))
    .route("/metrics", web::get().to(ops::metrics));
}

/// Binds the server to an already-open listener (port 0 in tests).
pub fn server(state: AppState, listener: TcpListener) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(routes)
            .default_service(web::to(|| async { Err::<&str, _>(ApiError::NotFound) }))
    })
    .listen(listener)?
    // Signals are the service's to handle, so that every role stops together.
    .disable_signals()
    .shutdown_timeout(10)
    .run();
    Ok(server)
}
