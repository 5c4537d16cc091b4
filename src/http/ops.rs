//! Operational endpoints: liveness, readiness, metrics.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use deadpool_postgres::Pool;

use crate::error::{ApiError, Problem};
use crate::metrics::Metrics;
use crate::queue::Broker;

/// What the operational endpoints look at.
pub struct Ops {
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
    /// Checked by readiness where the role needs the database (the worker); ingest does not.
    pub database: Option<Pool>,
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is alive")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// What the role needs: the broker for `kyc serve` (ingest), the broker and the database for
/// `kyc worker`.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "What the role needs is reachable"),
        (status = 503, description = "NOT_READY", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(ops: web::Data<Ops>) -> Result<HttpResponse, ApiError> {
    if !ops.broker.is_connected() {
        return Err(ApiError::NotReady("the message broker is unreachable"));
    }
    if let Some(pool) = &ops.database {
        let reachable = match pool.get().await {
            Ok(db) => db.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        };
        if !reachable {
            return Err(ApiError::NotReady("the database is unreachable"));
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(ops: web::Data<Ops>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(ops.metrics.render())
}
