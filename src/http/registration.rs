//! `POST /v1/auth/register/verification`: a Veriff session URL for an onboarding, reused while
//! the current session is usable. Checks run in the contract's order: client key, body,
//! onboarding, then the verification's state.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use uuid::Uuid;

use super::clients::Limit;
use super::status_view::Key;
use super::{AppState, hyphenated_uuid, read_limited};
use crate::error::{ApiError, Problem};
use crate::state_machine::{Retry, State};
use crate::storage::registration::{self as reg, CurrentSession};
use crate::storage::verifications as store;
use crate::veriff::integration::Integration;

/// Requests are tiny; anything bigger is not one of ours.
const BODY_LIMIT: usize = 16 * 1024;
/// Longest a session request waits for a creation slot.
const CREATION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// A session this close to its end is not handed out again.
const REUSE_MARGIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionAnswer {
    pub url: String,
    pub session_id: String,
    pub expires_at: DateTime<Utc>,
    pub reused: bool,
}

/// The body of a session request.
#[derive(utoipa::ToSchema)]
#[schema(example = json!({"onboardingId": "8a0b5d8e-6f3c-4d9e-9d61-0c2f7c1a2b3c"}))]
#[allow(dead_code)] // described for the OpenAPI document; the handler reads the JSON itself
pub struct SessionRequest {
    #[schema(rename = "onboardingId")]
    onboarding_id: Uuid,
}

#[utoipa::path(
    post,
    path = "/v1/auth/register/verification",
    request_body(content = SessionRequest, description = "The onboarding to verify"),
    params(
        ("x-client-key" = String, Header, description = "The client's public key"),
        ("x-us-env" = Option<String>, Header, description = "`true` (any case) routes to the US Veriff integration; anything else, or none, to the EU one"),
    ),
    responses(
        (status = 200, description = "A Veriff session URL", body = SessionAnswer),
        (status = 400, description = "INVALID_REQUEST, ONBOARDING_EXPIRED, PHONE_NOT_VERIFIED or US_ENV_NOT_AVAILABLE", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "VERIFICATION_BLOCKED", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "ONBOARDING_NOT_FOUND", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "REQUEST_TIMEOUT: the body did not arrive within 10 s", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "ALREADY_VERIFIED", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE: a body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "RATE_LIMITED", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 498, description = "INVALID_CLIENT_KEY: x-client-key missing, repeated, unknown or revoked", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "PROVIDER_UNAVAILABLE", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "DATABASE_UNAVAILABLE", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn create(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let api = &state.registration;
    let client = api.clients.resolve(&api.pool, req.headers()).await?;

    let body = read_limited(req.headers(), body, BODY_LIMIT).await?;
    let request: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
        ApiError::InvalidRequest("the body must be JSON like {\"onboardingId\": \"<uuid>\"}")
    })?;
    // Read from an object only: a struct would also accept an array (`["<uuid>"]`).
    let onboarding_id = request
        .get("onboardingId")
        .and_then(serde_json::Value::as_str)
        .and_then(hyphenated_uuid)
        .ok_or(ApiError::InvalidRequest("onboardingId must be a UUID"))?;
    api.limiter
        .check(client.id, onboarding_id, Limit::Session)?;

    let db = api.pool.get().await?;
    let onboarding = reg::onboarding(&db, onboarding_id, client.id)
        .await?
        .filter(|o| !o.completed)
        .ok_or(ApiError::OnboardingNotFound)?;
    if onboarding.expires_at <= Utc::now() {
        return Err(ApiError::OnboardingExpired);
    }
    if !onboarding.phone_verified {
        return Err(ApiError::PhoneNotVerified);
    }
    let wants_us = req
        .headers()
        .get("x-us-env")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if wants_us && !client.us_enabled {
        return Err(ApiError::UsEnvNotAvailable);
    }
    let region = if wants_us {
        Integration::Us
    } else {
        Integration::Eu
    };

    // Most calls come back for a session that is still usable: answered without a lock or a
    // write. (A session that turns final meanwhile is the same race as a request a moment earlier.)
    if let (Some(id), status) = reg::onboarding_status(&db, onboarding_id).await? {
        refuse_by_state(status.state, status.retry)?;
        if let Some(answer) = reg::current_session(&db, id)
            .await?
            .and_then(|s| api.reusable(s))
        {
            return Ok(HttpResponse::Ok().json(answer));
        }
    }

    drop(db);

    // The verification's lock is held across Veriff's call: a concurrent request waits and
    // then reuses the session this one creates, so two calls never create two sessions.
    // Only so many may wait on Veriff at once, each holding a connection: a slow Veriff
    // must not take the pool from the status endpoints.
    let _slot = api.creation_slot().await?;
    let mut db = api.pool.get().await?;
    let tx = db.transaction().await?;
    let id =
        reg::verification_of_onboarding(&tx, onboarding_id, onboarding.user_id.as_deref(), region)
            .await?;
    let verification = store::lock(&tx, id).await?.ok_or_else(|| {
        tracing::error!(verification = %id, "a verification just created or found is gone");
        ApiError::Internal
    })?;
    refuse_by_state(verification.row.state, verification.row.retry)?;
    let answer = api
        .issue_session(tx, &verification, onboarding.user_id.as_deref())
        .await?;
    api.status
        .written(verification.id, Key::Onboarding(onboarding_id));
    if let Some(user) = onboarding.user_id.as_deref() {
        api.status.written(verification.id, Key::user(user));
    }
    Ok(HttpResponse::Ok().json(answer))
}

/// A VERIFIED onboarding needs no session; a BLOCKED one may not have another.
fn refuse_by_state(state: State, retry: Retry) -> Result<(), ApiError> {
    match (state, retry) {
        (State::Verified, _) => Err(ApiError::AlreadyVerified),
        (_, Retry::Blocked) => Err(ApiError::VerificationBlocked),
        _ => Ok(()),
    }
}

impl super::Registration {
    /// A place among the session creations allowed at once (each may wait on Veriff while it
    /// holds a connection and the verification's lock). Waiting too long for one means Veriff
    /// is not keeping up: that is the provider being unavailable, not the database.
    pub(super) async fn creation_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(CREATION_WAIT, self.creations.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("every session creation slot is waiting on Veriff");
                Err(ApiError::ProviderUnavailable)
            }
        }
    }

    /// The current session when it is usable, else a new one from Veriff in the region of the
    /// verification's first session. Commits `tx`, which holds the verification's lock.
    pub(super) async fn issue_session(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        verification: &store::Locked,
        user_id: Option<&str>,
    ) -> Result<SessionAnswer, ApiError> {
        if let Some(reusable) = reg::current_session(&tx, verification.id)
            .await?
            .and_then(|s| self.reusable(s))
        {
            tx.commit().await?;
            return Ok(reusable);
        }
        let region = verification.region;
        let created = self
            .veriff
            .create_session(region, verification.id, user_id)
            .await
            .map_err(|error| {
                tracing::warn!(error = %crate::error::chain(&error), verification = %verification.id, "Veriff session creation failed");
                ApiError::ProviderUnavailable
            })?;
        let sealed = self.urls.seal(created.url.expose_secret().as_bytes());
        store::record_session(
            &tx,
            verification,
            &created.id,
            "api",
            Some(&sealed),
            Some(created.expires_at),
        )
        .await?;
        store::recompute(&tx, verification, &self.policy).await?;
        tx.commit().await?;
        tracing::info!(verification = %verification.id, session = %created.id, %region, "Veriff session created");
        Ok(SessionAnswer {
            url: created.url.expose_secret().to_owned(),
            session_id: created.id,
            expires_at: created.expires_at,
            reused: false,
        })
    }

    /// The current session's answer, when it may be handed out again.
    pub(super) fn reusable(&self, session: CurrentSession) -> Option<SessionAnswer> {
        let usable = session.status.is_usable_status();
        let expires_at = session.expires_at?;
        if !usable || expires_at - Utc::now() <= REUSE_MARGIN {
            return None;
        }
        let url = self.urls.open(session.url_ciphertext.as_deref()?).ok()?;
        Some(SessionAnswer {
            url: String::from_utf8(url).ok()?,
            session_id: session.id,
            expires_at,
            reused: true,
        })
    }
}
