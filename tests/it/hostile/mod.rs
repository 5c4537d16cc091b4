//! Hostile input (issue 11): bad inputs with their documented answers, the worker's tolerance
//! of odd but signed bodies, slow and flooding clients, and secrets kept out of `--help`,
//! errors and metric labels.

mod bad_inputs;
mod raw;
mod secrets;
mod slow_clients;
mod tolerance;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

use crate::harness::{JWT_AUDIENCE, JWT_SECRET};

/// An HS256 bearer token with these claims, signed with `secret`.
pub fn token_signed_with(secret: &str, claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("the token is signed")
}

/// Valid claims for `user` on the harness configuration, ten minutes left.
pub fn claims(user: &str) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    serde_json::json!({ "sub": user, "aud": JWT_AUDIENCE, "exp": now + 600 })
}

/// A valid token for `user`.
pub fn token(user: &str) -> String {
    token_signed_with(JWT_SECRET, &claims(user))
}
