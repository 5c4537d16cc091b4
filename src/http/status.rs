//! `GET /v1/auth/register/status` and `GET /v1/user/verification/status`: the verification
//! state, cheap to poll. The ETag is a hash
//! of the body; `If-None-Match` with it is answered 304, and with `Prefer: wait=N` the answer
//! waits (without holding a database connection) until the body changes or N seconds pass.

use std::future::Future;
use std::time::Duration;

use actix_web::http::header::{CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::AppState;
use super::clients::Limit;
use crate::error::{ApiError, Problem};
use crate::state_machine::{Retry, State};
use crate::storage::notifications::Notice;
use crate::storage::registration::{self as reg, VerificationStatus};

const MAX_WAIT: u64 = 30;

/// The public status of a verification, as the status endpoints answer it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[schema(value_type = String, example = "REJECTED")]
    pub state: &'static str,
    #[schema(value_type = String, example = "NEW_SESSION")]
    pub retry: &'static str,
    pub reason_code: Option<i32>,
    pub reason: Option<String>,
    /// `null` while the onboarding has no verification yet.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<VerificationStatus> for Status {
    fn from(s: VerificationStatus) -> Self {
        Self {
            state: State::as_str(&s.state),
            retry: Retry::as_str(&s.retry),
            reason_code: s.reason_code,
            reason: s.reason,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    onboarding_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/auth/register/status",
    params(
        ("onboardingId" = String, Query, description = "The onboarding's id (a UUID)"),
        ("x-client-key" = String, Header, description = "The client's public key"),
        ("If-None-Match" = Option<String>, Header, description = "The ETag of the last answer"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): wait up to N s for a change"),
    ),
    responses(
        (status = 200, description = "The verification's state; ETag is a hash of this body", body = Status),
        (status = 304, description = "Unchanged since the ETag presented"),
        (status = 400, description = "INVALID_REQUEST", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "ONBOARDING_NOT_FOUND", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED", body = Problem, content_type = "application/problem+json"),
        (status = 498, description = "INVALID_CLIENT_KEY", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn onboarding_status(
    req: HttpRequest,
    query: web::Query<Query>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let api = &state.registration;
    let client = api.clients.resolve(&api.pool, req.headers()).await?;
    let onboarding = query
        .onboarding_id
        .as_deref()
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or(ApiError::InvalidRequest("onboardingId must be a UUID"))?;
    api.limiter
        .check(client.id, onboarding, Limit::StatusPoll)?;
    respond(&req, &state, || async {
        let db = api.pool.get().await?;
        if reg::onboarding(&db, onboarding, client.id).await?.is_none() {
            return Err(ApiError::OnboardingNotFound);
        }
        Ok(reg::onboarding_status(&db, onboarding).await?)
    })
    .await
}

/// `GET /v1/user/verification/status`: the same, for the bearer token's user.
#[utoipa::path(
    get,
    path = "/v1/user/verification/status",
    security(("bearer" = [])),
    params(
        ("If-None-Match" = Option<String>, Header, description = "The ETag of the last answer"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): wait up to N s for a change"),
    ),
    responses(
        (status = 200, description = "The user's verification state", body = Status),
        (status = 304, description = "Unchanged since the ETag presented"),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn user_status(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let api = &state.registration;
    let user = api.bearer.user(req.headers())?;
    respond(&req, &state, || async {
        let db = api.pool.get().await?;
        Ok(reg::user_status(&db, &user).await?)
    })
    .await
}

/// Answers with the status and its ETag, or 304, waiting for a change when asked to.
async fn respond<F, Fut>(
    req: &HttpRequest,
    state: &AppState,
    read: F,
) -> Result<HttpResponse, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(Option<Uuid>, VerificationStatus), ApiError>>,
{
    // Subscribed before the first read, so no change can slip between read and wait.
    let mut notices = state.registration.notifier.subscribe();
    let (mut verification, status) = read().await?;
    let status = Status::from(status);
    let mut etag = etag_of(&status);
    let presented = req
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if presented != Some(etag.as_str()) {
        return Ok(answer(&status, &etag));
    }
    let Some(wait) = requested_wait(req) else {
        return Ok(not_modified(&etag));
    };
    let deadline = tokio::time::Instant::now() + wait;
    let _waiting = Waiting::start(&state.metrics.status_waiters);
    loop {
        let notice = tokio::time::timeout_at(deadline, notices.recv()).await;
        let relevant = match notice {
            Err(_) | Ok(Err(RecvError::Closed)) => return Ok(not_modified(&etag)),
            Ok(Ok(Notice::Changed(id))) => verification.is_none_or(|v| v == id),
            Ok(Ok(Notice::Resync) | Err(RecvError::Lagged(_))) => true,
        };
        if relevant {
            let (now_verification, status) = read().await?;
            let status = Status::from(status);
            verification = now_verification;
            let current = etag_of(&status);
            if current != etag {
                return Ok(answer(&status, &current));
            }
            etag = current;
        }
    }
}

/// `Prefer: wait=N`, capped at 30 seconds.
fn requested_wait(req: &HttpRequest) -> Option<Duration> {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .find_map(|p| p.trim().strip_prefix("wait=")?.trim().parse::<u64>().ok())
        .map(|n| Duration::from_secs(n.min(MAX_WAIT)))
}

fn etag_of(status: &Status) -> String {
    let body = serde_json::to_vec(status).unwrap_or_default();
    format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]))
}

fn answer(status: &Status, etag: &str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((ETAG, etag.to_owned()))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .json(status)
}

fn not_modified(etag: &str) -> HttpResponse {
    HttpResponse::NotModified()
        .insert_header((ETAG, etag.to_owned()))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .finish()
}

/// Counts a waiting request for as long as it waits.
struct Waiting<'a>(&'a prometheus::IntGauge);

impl<'a> Waiting<'a> {
    fn start(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
