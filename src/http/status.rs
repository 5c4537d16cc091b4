//! `GET /v1/auth/register/status` and `GET /v1/user/verification/status`: the verification
//! state, cheap to poll (answered from the in-memory view while nothing changed). The ETag is
//! a hash of the body; `If-None-Match` with it is answered 304, and with `Prefer: wait=N` the
//! answer waits (costing the database nothing) until the body changes or N seconds pass.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use actix_web::http::header::{CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::clients::Limit;
use super::status_view::{Answer, Key};
use super::{AppState, hyphenated_uuid};
use crate::error::{ApiError, Problem};
use crate::state_machine::{Retry, State};
use crate::storage::registration::{self as reg, VerificationStatus};

const MAX_WAIT: u64 = 30;

/// The public status of a verification, as the status endpoints answer it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[schema(value_type = StateName, example = "REJECTED")]
    pub state: &'static str,
    #[schema(value_type = RetryName, example = "NEW_SESSION")]
    pub retry: &'static str,
    pub reason_code: Option<i32>,
    pub reason: Option<String>,
    /// `null` while the onboarding has no verification yet.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The states of a verification, as the OpenAPI document names them.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code)] // described, never built: the status carries `State::as_str`
pub enum StateName {
    Unverified,
    Pending,
    Verified,
    Rejected,
}

/// What a user may do next, as the OpenAPI document names it.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(dead_code)] // described, never built: the status carries `Retry::as_str`
pub enum RetryName {
    None,
    SameSession,
    NewSession,
    Blocked,
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
pub(crate) struct Query {
    onboarding_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/auth/register/status",
    params(
        ("onboardingId" = uuid::Uuid, Query, description = "The onboarding's id"),
        ("x-client-key" = String, Header, description = "The client's public key"),
        ("If-None-Match" = Option<String>, Header, description = "The ETag of the last answer (weak, a list, or `*`)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): with a matching If-None-Match, wait up to N s for a change"),
    ),
    responses(
        (status = 200, description = "The verification's state; ETag is a hash of this body", body = Status,
            headers(("ETag" = String, description = "A hash of the body"), ("Cache-Control" = String, description = "`no-cache`"))),
        (status = 304, description = "Unchanged since the ETag presented",
            headers(("ETag" = String, description = "The current ETag"))),
        (status = 400, description = "INVALID_REQUEST: onboardingId missing, repeated or not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "ONBOARDING_NOT_FOUND", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 498, description = "INVALID_CLIENT_KEY", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "DATABASE_UNAVAILABLE", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn onboarding_status(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let api = &state.registration;
    let client = api.clients.resolve(&api.pool, req.headers()).await?;
    // Read here rather than by an extractor, whose refusal (a repeated or badly encoded
    // parameter) would not be a problem document.
    let onboarding = web::Query::<Query>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.into_inner().onboarding_id)
        .as_deref()
        .and_then(hyphenated_uuid)
        .ok_or(ApiError::InvalidRequest("onboardingId must be a UUID"))?;
    api.limiter
        .check(client.id, onboarding, Limit::StatusPoll)?;
    let read = || async {
        let db = api.pool.get().await?;
        state.metrics.status_reads.inc();
        Ok(match reg::onboarding_view(&db, onboarding).await? {
            Some((owner, verification, status)) => Answer::new(Some(owner), verification, status),
            None => Answer::new(None, None, VerificationStatus::unverified()),
        })
    };
    // Another client's onboarding is as unknown as one that does not exist.
    let visible = |answer: &Answer| answer.owner == Some(client.id);
    respond(&req, &state, Key::Onboarding(onboarding), read, visible).await
}

/// `GET /v1/user/verification/status`: the same, for the bearer token's user.
#[utoipa::path(
    get,
    path = "/v1/user/verification/status",
    security(("bearer" = [])),
    params(
        ("If-None-Match" = Option<String>, Header, description = "The ETag of the last answer (weak, a list, or `*`)"),
        ("Prefer" = Option<String>, Header, description = "`wait=N` (N ≤ 30): with a matching If-None-Match, wait up to N s for a change"),
    ),
    responses(
        (status = 200, description = "The user's verification state", body = Status,
            headers(("ETag" = String, description = "A hash of the body"), ("Cache-Control" = String, description = "`no-cache`"))),
        (status = 304, description = "Unchanged since the ETag presented",
            headers(("ETag" = String, description = "The current ETag"))),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 429, description = "RATE_LIMITED", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "DATABASE_UNAVAILABLE", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn user_status(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let api = &state.registration;
    let user = api.bearer.user(req.headers())?;
    api.limiter.check_user(&user, Limit::StatusPoll)?;
    let read = || async {
        let db = api.pool.get().await?;
        state.metrics.status_reads.inc();
        let (verification, status) = reg::user_status(&db, &user).await?;
        Ok(Answer::new(None, verification, status))
    };
    respond(&req, &state, Key::user(&user), read, |_| true).await
}

/// Answers with the status and its ETag, or 304, waiting for a change when asked to. The
/// answer comes from the in-memory view when it can, else from `read`.
async fn respond<F, Fut, V>(
    req: &HttpRequest,
    state: &AppState,
    key: Key,
    read: F,
    visible: V,
) -> Result<HttpResponse, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Answer, ApiError>>,
    V: Fn(&Answer) -> bool,
{
    let view = &state.registration.status;
    let current = || async {
        if let Some(answer) = view.get(&key) {
            return Ok(answer);
        }
        let epoch = view.epoch();
        let answer = Arc::new(read().await?);
        view.keep(key, Arc::clone(&answer), epoch);
        Ok::<_, ApiError>(answer)
    };
    let presented = if_none_match(req);
    let wait = requested_wait(req);
    // Registered before the first read, so that no change can slip between read and wait.
    let mut watch = match (&presented, wait) {
        (Some(_), Some(_)) => Some(view.watch(key)),
        _ => None,
    };
    let mut answer = current().await?;
    if !visible(&answer) {
        return Err(ApiError::OnboardingNotFound);
    }
    let matches = |answer: &Answer| presented.as_ref().is_some_and(|p| p.matches(&answer.etag));
    if !matches(&answer) {
        return Ok(ok(&answer));
    }
    let (Some(wait), Some(watch)) = (wait, watch.as_mut()) else {
        return Ok(not_modified(&answer.etag));
    };
    let deadline = tokio::time::Instant::now() + wait;
    let _waiting = Waiting::start(&state.metrics.status_waiters);
    let draining = &state.registration.draining;
    loop {
        let _ = watch.changes.borrow_and_update();
        tokio::select! {
            changed = tokio::time::timeout_at(deadline, watch.changes.changed()) => {
                if !matches!(changed, Ok(Ok(()))) {
                    return Ok(not_modified(&answer.etag));
                }
            }
            // A stopping process answers its waiters now rather than hold up the drain.
            () = draining.cancelled() => return Ok(not_modified(&answer.etag)),
        }
        answer = current().await?;
        if !visible(&answer) {
            return Err(ApiError::OnboardingNotFound);
        }
        if !matches(&answer) {
            return Ok(ok(&answer));
        }
    }
}

/// `If-None-Match`: `*`, or a list of ETags, strong or weak (`W/"…"`, as gzip proxies make
/// them); weak comparison, as RFC 9110 wants for it.
enum Presented {
    Any,
    Tags(Vec<String>),
}

impl Presented {
    fn matches(&self, etag: &str) -> bool {
        match self {
            Presented::Any => true,
            Presented::Tags(tags) => tags.iter().any(|t| t == etag),
        }
    }
}

fn if_none_match(req: &HttpRequest) -> Option<Presented> {
    let values: Vec<&str> = req
        .headers()
        .get_all(IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return None;
    }
    let mut tags = Vec::new();
    for tag in values.iter().flat_map(|v| v.split(',')) {
        let tag = tag.trim();
        if tag == "*" {
            return Some(Presented::Any);
        }
        let strong = tag.strip_prefix("W/").unwrap_or(tag);
        if strong.len() >= 2 && strong.starts_with('"') && strong.ends_with('"') {
            tags.push(strong.to_owned());
        }
    }
    Some(Presented::Tags(tags))
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

fn ok(answer: &Answer) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((ETAG, answer.etag.clone()))
        .insert_header((CACHE_CONTROL, "no-cache"))
        .content_type("application/json")
        .body(answer.body.clone())
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

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn presented(values: &[&str]) -> Option<Presented> {
        let mut req = TestRequest::default();
        for v in values {
            req = req.append_header((IF_NONE_MATCH, *v));
        }
        if_none_match(&req.to_http_request())
    }

    #[test]
    fn weak_tags_lists_and_star_match() {
        let etag = "\"abc\"";
        for values in [
            &["\"abc\""][..],
            &["W/\"abc\""],
            &["\"x\", W/\"abc\""],
            &["\"x\"", "\"abc\""],
            &["*"],
        ] {
            assert!(
                presented(values).is_some_and(|p| p.matches(etag)),
                "{values:?}"
            );
        }
        for values in [&["\"abcd\""][..], &["abc"], &["W/abc"], &[""]] {
            assert!(
                !presented(values).is_some_and(|p| p.matches(etag)),
                "{values:?}"
            );
        }
        assert!(presented(&[]).is_none());
    }
}
