//! The apps' client keys and the rate limits, both per process and bounded in memory and in
//! time per request.
//!
//! Keys are looked up by SHA-256 and cached (a polling client must not cost a query per
//! request). A change to `api_clients` (`kyc clients revoke`, or the registration backend
//! setting `revoked_at`) is announced by a trigger with NOTIFY, which evicts the key from the
//! cache of every running process at once; while this process is not listening, nothing is
//! served from the cache. Unknown keys are cached apart, briefly, so that random keys cannot
//! evict the real ones.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderMap;
use deadpool_postgres::Pool;
use moka::sync::Cache;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::storage::registration::{ApiClient, active_client, key_digest};

/// Known keys: refreshed at least this often even without a notification.
const KEY_TTL: Duration = Duration::from_secs(60);
/// Unknown keys: a key created a moment ago is announced too, this only bounds the damage.
const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(5);
const KEYS_MAX: u64 = 10_000;
const UNKNOWN_KEYS_MAX: u64 = 10_000;
/// Status polls may come this many times as often as session requests.
const POLL_FACTOR: f64 = 10.0;
/// Buckets kept; the least used go first (a bucket that goes is a full one when it comes back).
const BUCKETS_MAX: u64 = 100_000;
/// A bucket idle this long is full again anyway.
const BUCKET_IDLE: Duration = Duration::from_secs(60);

pub struct ClientKeys {
    known: Cache<[u8; 32], ApiClient>,
    unknown: Cache<[u8; 32], ()>,
    /// Whether revocations reach this process now (the LISTEN connection is up).
    listening: AtomicBool,
    /// Counts changes: a lookup that raced a change does not cache what it read before it.
    epoch: AtomicU64,
}

impl Default for ClientKeys {
    fn default() -> Self {
        Self {
            known: Cache::builder()
                .max_capacity(KEYS_MAX)
                .time_to_live(KEY_TTL)
                .build(),
            unknown: Cache::builder()
                .max_capacity(UNKNOWN_KEYS_MAX)
                .time_to_live(UNKNOWN_KEY_TTL)
                .build(),
            listening: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
        }
    }
}

impl ClientKeys {
    /// The client whose key is in the request's `x-client-key` header.
    pub(crate) async fn resolve(
        &self,
        pool: &Pool,
        headers: &HeaderMap,
    ) -> Result<ApiClient, ApiError> {
        let mut values = headers.get_all("x-client-key");
        // Sent twice, the key is ambiguous: refused like a missing one.
        let key = values
            .next()
            .filter(|_| values.next().is_none())
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::InvalidClientKey)?;
        let digest = key_digest(key);
        let epoch = self.epoch.load(Ordering::Acquire);
        let cached = self.listening.load(Ordering::Acquire);
        if cached {
            if let Some(client) = self.known.get(&digest) {
                return Ok(client);
            }
            if self.unknown.contains_key(&digest) {
                return Err(ApiError::InvalidClientKey);
            }
        }
        let db = pool.get().await?;
        let found = active_client(&db, &digest).await?;
        if cached && self.epoch.load(Ordering::Acquire) == epoch {
            match found {
                Some(client) => self.known.insert(digest, client),
                None => self.unknown.insert(digest, ()),
            }
        }
        found.ok_or(ApiError::InvalidClientKey)
    }

    /// A key's row changed (revoked, created, deleted): forget what was cached of it.
    pub fn changed(&self, digest: &[u8; 32]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.known.invalidate(digest);
        self.unknown.invalidate(digest);
    }

    /// Whether changes are being announced to this process. Turning it on or off forgets
    /// everything: what changed while nobody listened is unknown.
    pub(crate) fn set_listening(&self, listening: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.listening.store(listening, Ordering::Release);
        self.known.invalidate_all();
        self.unknown.invalidate_all();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Session,
    StatusPoll,
}

/// Who a bucket counts for: a client key with an onboarding, or a signed-in user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Onboarding(Uuid, Uuid),
    /// The SHA-256 of the user id: bounded size whatever the token says.
    User([u8; 32]),
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per subject and kind of request, in this process (with N replicas behind a
/// load balancer, a client gets up to N times the rate).
pub struct RateLimiter {
    per_second: f64,
    buckets: Cache<(Subject, Limit), Arc<Mutex<Bucket>>>,
}

impl RateLimiter {
    /// `per_second` of 0 turns the limit off.
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            buckets: Cache::builder()
                .max_capacity(BUCKETS_MAX)
                .time_to_idle(BUCKET_IDLE)
                .build(),
        }
    }

    /// A request of `limit` by this client for this onboarding.
    pub fn check(&self, client: Uuid, onboarding: Uuid, limit: Limit) -> Result<(), ApiError> {
        self.take(Subject::Onboarding(client, onboarding), limit)
    }

    /// A request of `limit` by this signed-in user.
    pub(crate) fn check_user(&self, user: &str, limit: Limit) -> Result<(), ApiError> {
        self.take(Subject::User(Sha256::digest(user.as_bytes()).into()), limit)
    }

    fn take(&self, subject: Subject, limit: Limit) -> Result<(), ApiError> {
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
        let bucket = self.buckets.get_with((subject, limit), || {
            Arc::new(Mutex::new(Bucket {
                tokens: capacity,
                at: now,
            }))
        });
        let mut bucket = bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let retry_after = ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64;
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
    fn users_have_buckets_of_their_own() {
        let limiter = RateLimiter::new(1);
        assert!(limiter.check_user("u1", Limit::Session).is_ok());
        assert!(limiter.check_user("u1", Limit::Session).is_ok());
        assert!(limiter.check_user("u1", Limit::Session).is_err());
        assert!(limiter.check_user("u2", Limit::Session).is_ok());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::new(0);
        let (c, o) = (Uuid::new_v4(), Uuid::new_v4());
        assert!((0..100).all(|_| limiter.check(c, o, Limit::Session).is_ok()));
    }

    #[test]
    fn a_spray_of_onboardings_stays_bounded() {
        let limiter = RateLimiter::new(5);
        let c = Uuid::new_v4();
        for _ in 0..(BUCKETS_MAX * 2) {
            let _ = limiter.check(c, Uuid::new_v4(), Limit::StatusPoll);
        }
        limiter.buckets.run_pending_tasks();
        assert!(limiter.buckets.entry_count() <= BUCKETS_MAX);
    }

    #[test]
    fn unknown_keys_do_not_evict_known_ones() {
        let keys = ClientKeys::default();
        keys.set_listening(true);
        let client = ApiClient {
            id: Uuid::new_v4(),
            us_enabled: false,
        };
        keys.known.insert([1; 32], client);
        for n in 0..(UNKNOWN_KEYS_MAX * 2) {
            let digest: [u8; 32] = Sha256::digest(n.to_be_bytes()).into();
            keys.unknown.insert(digest, ());
        }
        keys.unknown.run_pending_tasks();
        assert_eq!(keys.known.get(&[1; 32]), Some(client));
        keys.changed(&[1; 32]);
        assert_eq!(keys.known.get(&[1; 32]), None, "a change evicts at once");
    }
}
