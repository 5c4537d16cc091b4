//! The apps' client keys, looked up by SHA-256 and cached briefly (a polling client must not
//! cost a query per request; a revoked key stops working within `KEY_CACHE_TTL`), and the
//! per client-and-onboarding rate limits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderMap;
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::storage::registration::{ApiClient, active_client, key_digest};

const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Entries kept before the cache starts over (bounds memory against random keys).
const KEY_CACHE_MAX: usize = 10_000;
/// Status polls may come this many times as often as session requests.
const POLL_FACTOR: f64 = 10.0;

/// Key digest → the client it names (or none), and when that was read.
type KeyCache = HashMap<[u8; 32], (Option<ApiClient>, Instant)>;
/// (client, onboarding, limit) → tokens left, and when they were counted.
type Buckets = HashMap<(Uuid, Uuid, Limit), (f64, Instant)>;

#[derive(Default)]
pub struct ClientKeys {
    cache: Mutex<KeyCache>,
}

impl ClientKeys {
    /// The client whose key is in the request's `x-client-key` header.
    pub async fn resolve(&self, pool: &Pool, headers: &HeaderMap) -> Result<ApiClient, ApiError> {
        let key = headers
            .get("x-client-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::InvalidClientKey)?;
        let digest = key_digest(key);
        let cached = self
            .lock()
            .get(&digest)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(client, _)| *client);
        let client = match cached {
            Some(client) => client,
            None => {
                let db = pool.get().await?;
                let found = active_client(&db, &digest).await?;
                let mut cache = self.lock();
                if cache.len() >= KEY_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(digest, (found, Instant::now()));
                found
            }
        };
        client.ok_or(ApiError::InvalidClientKey)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Session,
    StatusPoll,
}

/// Token buckets per (client, onboarding, kind of request), in this process.
pub struct RateLimiter {
    per_second: f64,
    buckets: Mutex<Buckets>,
}

impl RateLimiter {
    /// `per_second` of 0 turns the limit off.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            buckets: Mutex::default(),
        }
    }

    pub fn check(&self, client: Uuid, onboarding: Uuid, limit: Limit) -> Result<(), ApiError> {
        if self.per_second == 0.0 {
            return Ok(());
        }
        let rate = match limit {
            Limit::Session => self.per_second,
            Limit::StatusPoll => self.per_second * POLL_FACTOR,
        };
        // A burst of two seconds' worth, then the steady rate.
        let capacity = rate * 2.0;
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= KEY_CACHE_MAX {
            buckets.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(60));
        }
        let (tokens, at) = buckets
            .entry((client, onboarding, limit))
            .or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let retry_after = ((1.0 - *tokens) / rate).ceil().max(1.0) as u64;
            Err(ApiError::RateLimited { retry_after })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_and_polls_have_their_own_budget() {
        let limiter = RateLimiter::new(1);
        let (c, o) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(limiter.check(c, o, Limit::Session).is_ok());
        assert!(limiter.check(c, o, Limit::Session).is_ok());
        match limiter.check(c, o, Limit::Session) {
            Err(ApiError::RateLimited { retry_after }) => assert_eq!(retry_after, 1),
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(limiter.check(c, o, Limit::StatusPoll).is_ok());
        assert!(
            limiter.check(c, Uuid::new_v4(), Limit::Session).is_ok(),
            "per onboarding"
        );
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(0);
        let (c, o) = (Uuid::new_v4(), Uuid::new_v4());
        assert!((0..100).all(|_| limiter.check(c, o, Limit::Session).is_ok()));
    }
}
