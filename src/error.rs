//! The error catalogue: every error a client can see, with its HTTP status and stable
//! `code`, rendered as an RFC 9457 problem document. Internal causes are logged with their
//! whole chain, never sent.

use std::fmt;

use actix_web::http::header::{ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::storage::DbError;
use crate::veriff::signature::SignatureError;

/// Any error of a role or a command, with its causes.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Displays an error with every cause after it (`a: b: c`). A driver's own message is often
/// only in the source (tokio-postgres says "db error" at the top), so every log line and
/// every CLI failure that reports an error goes through this.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// `error = %chain(&e)` in a log line.
pub fn chain<'a>(error: &'a (dyn std::error::Error + 'static)) -> Chain<'a> {
    Chain(error)
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidSignature(#[from] SignatureError),
    #[error("the body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request took too long to arrive")]
    RequestTimeout,
    #[error("neither the message broker nor the database can take the webhook now; retry later")]
    BrokerUnavailable,
    #[error("the service is not ready: {0}")]
    NotReady(&'static str),
    #[error("no such resource")]
    NotFound,
    /// A method the path does not serve; `allow` is the one it does.
    #[error("{allow} is the only method of this resource")]
    MethodNotAllowed { allow: Method },
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
    /// A broken invariant or a failed statement: logged with its chain where it happens,
    /// answered with an opaque body.
    #[error("internal error")]
    Internal,
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
            ApiError::RequestTimeout => (408, "REQUEST_TIMEOUT", "Request timeout"),
            ApiError::BrokerUnavailable => (503, "BROKER_UNAVAILABLE", "Broker unavailable"),
            ApiError::NotReady(_) => (503, "NOT_READY", "Not ready"),
            ApiError::NotFound => (404, "NOT_FOUND", "Not found"),
            ApiError::MethodNotAllowed { .. } => (405, "METHOD_NOT_ALLOWED", "Method not allowed"),
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
            ApiError::Internal => (500, "INTERNAL", "Internal error"),
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

/// A database failure reaches the client as 503 only when the database is really away;
/// anything else is a bug or bad data: 500, with the chain in the log.
impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        if error.is_outage() {
            tracing::warn!(error = %chain(&error), "database unavailable");
            ApiError::DatabaseUnavailable
        } else {
            tracing::error!(error = %chain(&error), "database statement failed");
            ApiError::Internal
        }
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> Self {
        DbError::from(error).into()
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        DbError::from(error).into()
    }
}

/// An RFC 9457 problem document with kyc's stable `code`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// Always `about:blank`: the `code` names the problem.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    /// Stable, machine-readable: clients branch on it.
    #[schema(example = "ONBOARDING_EXPIRED")]
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
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((ALLOW, allow.as_str()));
            }
            ApiError::BrokerUnavailable | ApiError::DatabaseUnavailable => {
                response.insert_header((RETRY_AFTER, "5"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn chain_shows_every_cause() {
        assert_eq!(chain(&Outer(Inner)).to_string(), "outer: inner");
    }

    #[test]
    fn a_method_not_allowed_names_the_allowed_one() {
        let error = ApiError::MethodNotAllowed {
            allow: Method::POST,
        };
        let response = error.error_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            response.headers().get(ALLOW).and_then(|v| v.to_str().ok()),
            Some("POST")
        );
        assert_eq!(error.code(), "METHOD_NOT_ALLOWED");
    }

    #[test]
    fn internal_errors_are_opaque() {
        let response = ApiError::Internal.error_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(ApiError::Internal.to_string(), "internal error");
    }
}
