//! Bearer tokens for the user endpoints: only the configured algorithm (never `none`, no
//! HS/RS confusion), `exp` and `aud` required, `iss` when configured, `nbf` honoured when
//! present, `sub` is the user id.

use actix_web::http::header::{AUTHORIZATION, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::config::{ConfigError, JwtKey, JwtSettings};
use crate::error::ApiError;

pub struct BearerAuth {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl BearerAuth {
    pub fn new(settings: JwtSettings) -> Result<Self, ConfigError> {
        let (key, algorithm) = match settings.key {
            JwtKey::Hs256(secret) => (
                DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                Algorithm::HS256,
            ),
            JwtKey::Rs256Pem(pem) => (
                DecodingKey::from_rsa_pem(&pem).map_err(|_| {
                    ConfigError::Malformed(
                        "KYC_JWT_PUBLIC_KEY_FILE",
                        "not an RSA public key in PEM",
                    )
                })?,
                Algorithm::RS256,
            ),
        };
        let mut validation = Validation::new(algorithm);
        // A token is not accepted before its `nbf` (RFC 7519 4.1.5); the library skips it by default.
        validation.validate_nbf = true;
        validation.set_audience(&[settings.audience]);
        let mut required = vec!["exp", "aud", "sub"];
        if let Some(issuer) = settings.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self { key, validation })
    }

    /// The user id (`sub`) of a valid bearer token.
    pub fn user(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        // The scheme is case-insensitive (RFC 9110 section 11.1).
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized("a bearer token is required"))?;
        let claims = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| ApiError::Unauthorized("the bearer token is invalid or expired"))?
            .claims;
        if claims.sub.is_empty() {
            return Err(ApiError::Unauthorized("the bearer token names no user"));
        }
        Ok(claims.sub)
    }
}
