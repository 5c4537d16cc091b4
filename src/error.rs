//! The error catalogue: every error a client can see, with its HTTP status and stable
//! `code`, rendered as an RFC 9457 problem document. Internal causes are logged, never sent.

use actix_web::http::StatusCode;
use actix_web::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::veriff::signature::SignatureError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidSignature(#[from] SignatureError),
    #[error("the body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the message broker cannot take the webhook now; retry later")]
    BrokerUnavailable,
    #[error("the service is not ready: {0}")]
    NotReady(&'static str),
    #[error("no such resource")]
    NotFound,
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("x-client-key is missing, unknown or revoked")]
    InvalidClientKey,
    #[error("no such onboarding for this client, or it is already completed")]
    OnboardingNotFound,
    #[error("the onboarding has expired")]
    OnboardingExpired,
    #[error("the onboarding's phone number is not verified yet")]
    PhoneNotVerified,
    #[error("this client has no US environment")]
    UsEnvNotAvailable,
    #[error("verification is blocked: no further attempts are allowed")]
    VerificationBlocked,
    #[error("the verification is already VERIFIED")]
    AlreadyVerified,
    #[error("too many requests; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("the identity provider is unavailable; retry later")]
    ProviderUnavailable,
    #[error("the database is unavailable; retry later")]
    DatabaseUnavailable,
    #[error("{0}")]
    Unauthorized(&'static str),
}

struct Entry {
    status: u16,
    code: &'static str,
    title: &'static str,
}

impl ApiError {
    fn entry(&self) -> Entry {
        let (status, code, title) = match self {
            ApiError::InvalidSignature(_) => (401, "INVALID_SIGNATURE", "Invalid signature"),
            ApiError::PayloadTooLarge { .. } => (413, "PAYLOAD_TOO_LARGE", "Payload too large"),
            ApiError::BrokerUnavailable => (503, "BROKER_UNAVAILABLE", "Broker unavailable"),
            ApiError::NotReady(_) => (503, "NOT_READY", "Not ready"),
            ApiError::NotFound => (404, "NOT_FOUND", "Not found"),
            ApiError::InvalidRequest(_) => (400, "INVALID_REQUEST", "Invalid request"),
            ApiError::InvalidClientKey => (498, "INVALID_CLIENT_KEY", "Invalid client key"),
            ApiError::OnboardingNotFound => (404, "ONBOARDING_NOT_FOUND", "Onboarding not found"),
            ApiError::OnboardingExpired => (400, "ONBOARDING_EXPIRED", "Onboarding expired"),
            ApiError::PhoneNotVerified => (400, "PHONE_NOT_VERIFIED", "Phone not verified"),
            ApiError::UsEnvNotAvailable => {
                (400, "US_ENV_NOT_AVAILABLE", "US environment not available")
            }
            ApiError::VerificationBlocked => (403, "VERIFICATION_BLOCKED", "Verification blocked"),
            ApiError::AlreadyVerified => (409, "ALREADY_VERIFIED", "Already verified"),
            ApiError::RateLimited { .. } => (429, "RATE_LIMITED", "Too many requests"),
            ApiError::ProviderUnavailable => (500, "PROVIDER_UNAVAILABLE", "Provider unavailable"),
            ApiError::DatabaseUnavailable => (503, "DATABASE_UNAVAILABLE", "Database unavailable"),
            ApiError::Unauthorized(_) => (401, "UNAUTHORIZED", "Unauthorized"),
        };
        Entry {
            status,
            code,
            title,
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.entry().status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The stable, machine-readable code clients branch on.
    pub fn code(&self) -> &'static str {
        self.entry().code
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        tracing::warn!(%error, "database error");
        ApiError::DatabaseUnavailable
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(%error, "database pool error");
        ApiError::DatabaseUnavailable
    }
}

/// An RFC 9457 problem document with kyc's stable `code`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub code: &'static str,
    pub detail: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let entry = self.entry();
        let detail = self.to_string();
        let mut response = HttpResponse::build(self.status());
        match self {
            ApiError::RateLimited { retry_after } => {
                response.insert_header((RETRY_AFTER, retry_after.to_string()));
            }
            ApiError::Unauthorized(_) => {
                response.insert_header((WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response
            .content_type("application/problem+json")
            .json(Problem {
                kind: "about:blank",
                title: entry.title,
                status: entry.status,
                code: entry.code,
                detail: &detail,
            })
    }
}
