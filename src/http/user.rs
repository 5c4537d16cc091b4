//! `GET /v1/user/verification`: a Veriff session URL for the bearer token's user — the
//! verification of their newest onboarding, or one of their own. For a VERIFIED user a new
//! session is a re-verification.

use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::clients::Limit;
use super::status_view::Key;
use crate::error::{ApiError, Problem};
use crate::state_machine::Retry;
use crate::storage::registration as reg;
use crate::storage::verifications as store;

#[utoipa::path(
    get,
    path = "/v1/user/verification",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A Veriff session URL for the user", body = crate::http::registration::SessionAnswer),
        (status = 401, description = "UNAUTHORIZED", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "VERIFICATION_BLOCKED", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 500, description = "PROVIDER_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "DATABASE_UNAVAILABLE", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn verification(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let api = &state.registration;
    let user = api.bearer.user(req.headers())?;
    api.limiter.check_user(&user, Limit::Session)?;
    // Most calls come back for a session that is still usable: answered without a lock.
    {
        let db = api.pool.get().await?;
        if let (Some(id), status) = reg::user_status(&db, &user).await?
            && status.retry != Retry::Blocked
            && let Some(answer) = reg::current_session(&db, id)
                .await?
                .and_then(|s| api.reusable(s))
        {
            return Ok(HttpResponse::Ok().json(answer));
        }
    }
    let _slot = api.creation_slot().await?;
    let mut db = api.pool.get().await?;
    let tx = db.transaction().await?;
    let id = reg::verification_of_user(&tx, &user).await?;
    let verification = store::lock(&tx, id).await?.ok_or_else(|| {
        tracing::error!(verification = %id, "a verification just created or found is gone");
        ApiError::Internal
    })?;
    if verification.row.retry == Retry::Blocked {
        return Err(ApiError::VerificationBlocked);
    }
    let answer = api.issue_session(tx, &verification, Some(&user)).await?;
    api.status.written(verification.id, Key::user(&user));
    Ok(HttpResponse::Ok().json(answer))
}
