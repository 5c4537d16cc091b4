//! Operational endpoints: liveness, readiness, metrics.

use actix_web::{HttpResponse, web};

use super::AppState;
use crate::error::{ApiError, Problem};

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is alive")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Ingest needs the broker; that is what readiness means for `kyc serve`.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "The broker is reachable"),
        (status = 503, description = "NOT_READY", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.broker.is_connected() {
        Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })))
    } else {
        Err(ApiError::NotReady("the message broker is unreachable"))
    }
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
