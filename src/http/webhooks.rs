//! Veriff's webhook receiver: bytes in, signature checked, published with a confirm, then 200.

use actix_web::http::header::HeaderMap;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;

use super::{AppState, BODY_LIMIT, read_limited};
use crate::error::{ApiError, Problem, chain};
use crate::queue::{Envelope, PublishError};
use crate::veriff::signature::{RawWebhook, SignatureHeaders};
use crate::veriff::{Kind, dedup, payload};

#[utoipa::path(
    post,
    path = "/webhooks/veriff/decision",
    request_body(
        content = Option<serde_json::Value>,
        content_type = "application/json",
        description = "Veriff's decision webhook, exactly as signed. Any bytes whose signature verifies are accepted: one in which no session id can be read is dead-lettered as UNPARSEABLE, never dropped.",
        example = json!({"status": "success", "verification": {"id": "11111111-1111-4111-8111-111111111111", "attemptId": "11111111-aaaa-4aaa-8aaa-111111111111", "status": "approved", "code": 9001, "reasonCode": null, "decisionTime": "2030-01-01T10:03:21.123Z"}})
    ),
    params(
        ("X-HMAC-SIGNATURE" = Option<String>, Header, description = "Hex HMAC-SHA256 of the raw body with one of the integration's shared secrets (either case); sent once"),
        ("VRF-HMAC-SIGNATURE" = Option<String>, Header, description = "Fallback when X-HMAC-SIGNATURE is absent; when both are sent they must agree"),
        ("X-AUTH-CLIENT" = Option<String>, Header, description = "The integration's API key: its secrets verify the signature"),
    ),
    responses(
        (status = 200, description = "Durable: the broker confirmed it, or it was committed to the spool"),
        (status = 400, description = "INVALID_REQUEST: the body could not be read", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_SIGNATURE: missing, malformed, repeated or wrong signature, unknown X-AUTH-CLIENT, or the legacy X-SIGNATURE", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "REQUEST_TIMEOUT: the body did not arrive within 10 s", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE (over 1 MiB)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BROKER_UNAVAILABLE: neither the broker nor the spool could take it; retry later", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn decision(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    receive(Kind::Decision, &req, body, &state).await
}

#[utoipa::path(
    post,
    path = "/webhooks/veriff/event",
    request_body(
        content = Option<serde_json::Value>,
        content_type = "application/json",
        description = "Veriff's event webhook, exactly as signed. Any bytes whose signature verifies are accepted: one in which no session id can be read is dead-lettered as UNPARSEABLE, never dropped.",
        example = json!({"id": "11111111-1111-4111-8111-111111111111", "attemptId": "11111111-aaaa-4aaa-8aaa-111111111111", "feature": "selfid", "code": 7002, "action": "submitted"})
    ),
    params(
        ("X-HMAC-SIGNATURE" = Option<String>, Header, description = "Hex HMAC-SHA256 of the raw body with one of the integration's shared secrets (either case); sent once"),
        ("VRF-HMAC-SIGNATURE" = Option<String>, Header, description = "Fallback when X-HMAC-SIGNATURE is absent; when both are sent they must agree"),
        ("X-AUTH-CLIENT" = Option<String>, Header, description = "The integration's API key: its secrets verify the signature"),
    ),
    responses(
        (status = 200, description = "Durable: the broker confirmed it, or it was committed to the spool"),
        (status = 400, description = "INVALID_REQUEST: the body could not be read", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "INVALID_SIGNATURE: missing, malformed, repeated or wrong signature, unknown X-AUTH-CLIENT, or the legacy X-SIGNATURE", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "REQUEST_TIMEOUT: the body did not arrive within 10 s", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "PAYLOAD_TOO_LARGE (over 1 MiB)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "BROKER_UNAVAILABLE: neither the broker nor the spool could take it; retry later", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    )
)]
pub async fn event(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    receive(Kind::Event, &req, body, &state).await
}

async fn receive(
    kind: Kind,
    req: &HttpRequest,
    body: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let count = |outcome: &str| {
        state
            .metrics
            .webhooks
            .with_label_values(&[kind.as_str(), outcome])
            .inc();
    };
    let body = read_limited(req.headers(), body, BODY_LIMIT)
        .await
        .inspect_err(|e| {
            if matches!(e, ApiError::PayloadTooLarge { .. }) {
                count("too_large");
            }
        })?;
    let raw = RawWebhook {
        kind,
        body: body.freeze(),
        headers: signature_headers(req.headers()),
    };
    let webhook = state.integrations.verify(raw).map_err(|e| {
        count("bad_signature");
        tracing::warn!(%kind, reason = %e, "webhook refused");
        ApiError::from(e)
    })?;

    let facts = payload::parse(kind, webhook.body());
    let dedup_key = dedup::dedup_key(kind, facts.as_ref(), webhook.body());
    let received_at = Utc::now();
    let session = facts.as_ref().map(|f| f.session_id.as_str());
    let parsed = facts.is_some();
    let envelope = Envelope::webhook(
        state.broker.topology(),
        &webhook,
        facts.as_ref(),
        dedup_key,
        received_at,
    );
    let dedup_key = envelope.message_id().to_owned();
    let dedup_key = dedup_key.as_str();
    // The broker first; while it is away or slow, the spool. A confirm that comes back after
    // the timeout makes the webhook both published and spooled: the worker's dedup absorbs it.
    let published = match state.broker.is_connected() {
        true => state.broker.publish(envelope, state.publish_timeout).await,
        false => Err(PublishError::NotConnected),
    };
    let error = match published {
        Ok(took) => {
            state
                .metrics
                .publish_confirm_seconds
                .with_label_values(&[kind.as_str()])
                .observe(took.as_secs_f64());
            count(if parsed { "accepted" } else { "unparsed" });
            tracing::debug!(%kind, dedup_key, session, integration = %webhook.integration(), "webhook accepted");
            return Ok(HttpResponse::Ok().finish());
        }
        Err(error) => error,
    };
    match state
        .spool
        .store(&webhook, dedup_key, parsed, received_at)
        .await
    {
        Ok(()) => {
            count("spooled");
            tracing::info!(%kind, dedup_key, session, broker = %chain(&error), "webhook spooled: the broker did not confirm it");
            Ok(HttpResponse::Ok().finish())
        }
        Err(spool_error) => {
            count("unavailable");
            tracing::error!(%kind, dedup_key, session, broker = %chain(&error), spool = %chain(&spool_error), "webhook refused: neither the broker nor the spool could take it");
            Err(ApiError::BrokerUnavailable)
        }
    }
}

fn signature_headers(headers: &HeaderMap) -> SignatureHeaders {
    // A header that is present but not text, or sent more than once (which value would
    // count?), is kept as empty so that it fails as malformed rather than passing as absent.
    let text = |name: &str| {
        let mut values = headers.get_all(name);
        let first = values.next()?;
        if values.next().is_some() {
            return Some(String::new());
        }
        Some(first.to_str().map(str::to_owned).unwrap_or_default())
    };
    SignatureHeaders {
        hmac: text("x-hmac-signature"),
        vrf_hmac: text("vrf-hmac-signature"),
        auth_client: text("x-auth-client"),
        legacy_present: headers.contains_key("x-signature"),
    }
}
