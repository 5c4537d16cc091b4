//! Operational endpoints: liveness, readiness, metrics.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use deadpool_postgres::Pool;

use crate::error::{ApiError, Problem};
use crate::metrics::Metrics;
use crate::queue::Broker;

/// Longest a readiness probe or a scrape waits for the database.
const DATABASE_PROBE: Duration = Duration::from_secs(2);

/// What a role needs to do its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// `kyc serve`: it can take webhooks while the broker or the spool's database is there.
    BrokerOrDatabase,
    /// `kyc worker`: it applies nothing without both.
    BrokerAndDatabase,
}

/// What the operational endpoints look at.
pub struct Ops {
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
    pub database: Pool,
    pub needs: Needs,
}

impl Ops {
    async fn database_answers(&self) -> bool {
        let probe = async {
            let db = self.database.get().await.ok()?;
            db.simple_query("SELECT 1").await.ok()
        };
        let up = matches!(
            tokio::time::timeout(DATABASE_PROBE, probe).await,
            Ok(Some(_))
        );
        self.metrics.database_up.set(i64::from(up));
        up
    }
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is alive", body = serde_json::Value, example = json!({"status": "ok"}))))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Whether what the role needs is reachable: for `kyc serve` the broker or the database (the
/// spool), for `kyc worker` both.
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, description = "What the role needs is reachable", body = serde_json::Value, example = json!({"status": "ready"})),
        (status = 503, description = "NOT_READY", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(ops: web::Data<Ops>) -> Result<HttpResponse, ApiError> {
    let broker = ops.broker.is_connected();
    let ready = match ops.needs {
        Needs::BrokerOrDatabase => broker || ops.database_answers().await,
        Needs::BrokerAndDatabase => broker && ops.database_answers().await,
    };
    if !ready {
        return Err(ApiError::NotReady(match ops.needs {
            Needs::BrokerOrDatabase => "neither the message broker nor the database is reachable",
            Needs::BrokerAndDatabase => "the message broker or the database is unreachable",
        }));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(ops: web::Data<Ops>) -> HttpResponse {
    ops.metrics
        .broker_connected
        .set(i64::from(ops.broker.is_connected()));
    ops.database_answers().await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(ops.metrics.render())
}
