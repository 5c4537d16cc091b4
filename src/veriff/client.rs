//! Veriff's station API: creating sessions and asking for a session's decision. Session
//! creation is not idempotent, so it is retried only when no connection could be made.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use uuid::Uuid;

use super::integration::{Integration, Integrations};
use super::signature::sign;
use crate::backoff::Backoff;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts when the connection itself cannot be made (nothing reached Veriff).
const CONNECT_ATTEMPTS: usize = 3;
/// Veriff sessions live for 7 days.
pub(crate) const SESSION_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::days(7);

#[derive(Debug, thiserror::Error)]
pub enum VeriffError {
    #[error("the {0} integration is not configured")]
    NotConfigured(Integration),
    #[error("Veriff could not be reached")]
    Unreachable,
    #[error("Veriff did not answer in time")]
    Timeout,
    #[error("Veriff answered {0}")]
    Status(u16),
    #[error("Veriff's answer could not be read")]
    BadAnswer,
}

/// A session Veriff created. The URL carries an access token: it is redacted in `Debug`.
pub struct CreatedSession {
    pub id: String,
    pub url: SecretString,
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for CreatedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedSession")
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct VeriffClient {
    http: reqwest::Client,
    integrations: Integrations,
    eu_base: String,
    us_base: String,
    /// Only the registration API creates sessions; the worker's client has none.
    callback_url: Option<String>,
}

#[derive(Deserialize)]
struct Created {
    verification: Option<CreatedVerification>,
}

#[derive(Deserialize)]
struct CreatedVerification {
    id: Option<String>,
    url: Option<String>,
}

impl VeriffClient {
    pub fn new(
        integrations: Integrations,
        eu_base: &str,
        us_base: &str,
        callback_url: Option<String>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = crate::tls::client_builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(timeout)
            .build()?;
        Ok(Self {
            http,
            integrations,
            eu_base: eu_base.trim_end_matches('/').to_owned(),
            us_base: us_base.trim_end_matches('/').to_owned(),
            callback_url,
        })
    }

    fn base(&self, integration: Integration) -> &str {
        match integration {
            Integration::Eu => &self.eu_base,
            Integration::Us => &self.us_base,
        }
    }

    /// `POST /v1/sessions`. `vendorData` is the verification id (never personal data);
    /// `endUserId` is sent only when the user id is a UUID.
    pub async fn create_session(
        &self,
        integration: Integration,
        verification: Uuid,
        user_id: Option<&str>,
    ) -> Result<CreatedSession, VeriffError> {
        let keys = self
            .integrations
            .get(integration)
            .ok_or(VeriffError::NotConfigured(integration))?;
        let callback = self
            .callback_url
            .as_deref()
            .ok_or(VeriffError::NotConfigured(integration))?;
        let mut body = serde_json::json!({
            "verification": {
                "callback": callback,
                "vendorData": verification.to_string(),
            }
        });
        if let Some(end_user) = user_id.and_then(|u| Uuid::parse_str(u).ok()) {
            body["verification"]["endUserId"] = serde_json::Value::String(end_user.to_string());
        }
        let url = format!("{}/v1/sessions", self.base(integration));
        let mut attempt = 0;
        let mut backoff = Backoff::new();
        let response = loop {
            attempt += 1;
            let sent = self
                .http
                .post(&url)
                .header("x-auth-client", keys.api_key().expose_secret())
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(response) => break response,
                Err(e) if e.is_connect() && attempt < CONNECT_ATTEMPTS => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(classify(&e)),
            }
        };
        if !response.status().is_success() {
            return Err(VeriffError::Status(response.status().as_u16()));
        }
        let created: Created = response.json().await.map_err(|_| VeriffError::BadAnswer)?;
        let v = created.verification.ok_or(VeriffError::BadAnswer)?;
        match (v.id, v.url) {
            (Some(id), Some(url)) if !id.is_empty() && !url.is_empty() => Ok(CreatedSession {
                id,
                url: SecretString::from(url),
                // Whole seconds: the stored expiry (microseconds in PostgreSQL) and so every
                // later answer for this session carry exactly the same `expiresAt`.
                expires_at: (Utc::now() + SESSION_LIFETIME).trunc_subsecs(0),
            }),
            _ => Err(VeriffError::BadAnswer),
        }
    }

    /// `GET /v1/sessions/{id}/decision`, signed over the session id. Returns the raw body
    /// (shaped like a decision webhook).
    pub async fn decision(
        &self,
        integration: Integration,
        session_id: &str,
    ) -> Result<Vec<u8>, VeriffError> {
        let keys = self
            .integrations
            .get(integration)
            .ok_or(VeriffError::NotConfigured(integration))?;
        let secret = keys
            .signing_secret()
            .ok_or(VeriffError::NotConfigured(integration))?;
        let response = self
            .http
            .get(format!(
                "{}/v1/sessions/{session_id}/decision",
                self.base(integration)
            ))
            .header("x-auth-client", keys.api_key().expose_secret())
            .header("x-hmac-signature", sign(secret, session_id.as_bytes()))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        if !response.status().is_success() {
            return Err(VeriffError::Status(response.status().as_u16()));
        }
        Ok(response
            .bytes()
            .await
            .map_err(|_| VeriffError::BadAnswer)?
            .to_vec())
    }
}

fn classify(e: &reqwest::Error) -> VeriffError {
    if e.is_timeout() {
        VeriffError::Timeout
    } else {
        VeriffError::Unreachable
    }
}
