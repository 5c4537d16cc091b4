//! The error catalogue: every error a client can see, with its HTTP status and stable
//! `code`, rendered as an RFC 9457 problem document. Internal causes are logged, never sent.

use actix_web::http::StatusCode;
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
    #[error("the request body could not be read")]
    BodyUnreadable,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidSignature(_) => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BrokerUnavailable | ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::BodyUnreadable => StatusCode::BAD_REQUEST,
        }
    }

    /// The stable, machine-readable code clients branch on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidSignature(_) => "INVALID_SIGNATURE",
            ApiError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            ApiError::BrokerUnavailable => "BROKER_UNAVAILABLE",
            ApiError::NotReady(_) => "NOT_READY",
            ApiError::NotFound => "NOT_FOUND",
            ApiError::BodyUnreadable => "INVALID_REQUEST",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            ApiError::InvalidSignature(_) => "Invalid signature",
            ApiError::PayloadTooLarge { .. } => "Payload too large",
            ApiError::BrokerUnavailable => "Broker unavailable",
            ApiError::NotReady(_) => "Not ready",
            ApiError::NotFound => "Not found",
            ApiError::BodyUnreadable => "Invalid request",
        }
    }
}

/// An RFC 9457 problem document with kyc's stable `code`.
#[derive(Debug, Serialize)]
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
        let detail = self.to_string();
        HttpResponse::build(self.status())
            .content_type("application/problem+json")
            .json(Problem {
                kind: "about:blank",
                title: self.title(),
                status: self.status().as_u16(),
                code: self.code(),
                detail: &detail,
            })
    }
}
