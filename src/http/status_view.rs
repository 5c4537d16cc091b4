//! What the status endpoints answer, kept in memory and invalidated by NOTIFY, so that a poll
//! costs no query while nothing changed, and a long-polling request waits on its own key:
//! it costs the database nothing until its own row changes (2,000 waiters and a stream of
//! unrelated changes cost no query at all).
//!
//! Correctness does not depend on the view: while the LISTEN connection is down nothing is
//! served from it, and a read that raced a change is not kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use uuid::Uuid;

use super::status::Status;
use crate::storage::notifications::Change;
use crate::storage::registration::VerificationStatus;

/// Entries kept: one per polled onboarding or user.
const ENTRIES_MAX: u64 = 200_000;
/// A safety net only: changes are announced.
const ENTRY_TTL: Duration = Duration::from_secs(300);

/// What a status poll is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    Onboarding(Uuid),
    /// The SHA-256 of the user id (what the database announces for it).
    User([u8; 32]),
}

impl Key {
    pub fn user(user: &str) -> Self {
        Key::User(Sha256::digest(user.as_bytes()).into())
    }
}

/// A status as answered: the body already serialised, its ETag, who may read it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// For an onboarding: the client it belongs to (`None`: there is no such onboarding).
    pub owner: Option<Uuid>,
    pub verification: Option<Uuid>,
    pub body: Bytes,
    pub etag: String,
}

impl Answer {
    pub fn new(
        owner: Option<Uuid>,
        verification: Option<Uuid>,
        status: VerificationStatus,
    ) -> Self {
        let body = Bytes::from(serde_json::to_vec(&Status::from(status)).unwrap_or_default());
        let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]));
        Self {
            owner,
            verification,
            body,
            etag,
        }
    }
}

pub struct StatusView {
    entries: Cache<Key, Arc<Answer>>,
    /// Which keys show each verification, to invalidate them when it changes.
    by_verification: Arc<Mutex<HashMap<Uuid, Vec<Key>>>>,
    /// Long-polling requests, by key: woken when their key changes.
    waiters: Mutex<HashMap<Key, watch::Sender<u64>>>,
    listening: AtomicBool,
    /// Counts changes: a read that raced one is answered, not kept.
    epoch: AtomicU64,
    /// Orders keeping an answer against looking up a change's keys, so that a change is
    /// either seen by `keep` (nothing kept) or finds the kept entry (evicted).
    sequence: Mutex<()>,
}

impl Default for StatusView {
    fn default() -> Self {
        let by_verification: Arc<Mutex<HashMap<Uuid, Vec<Key>>>> = Arc::default();
        let index = Arc::clone(&by_verification);
        let entries = Cache::builder()
            .max_capacity(ENTRIES_MAX)
            .time_to_live(ENTRY_TTL)
            .eviction_listener(move |key: Arc<Key>, answer: Arc<Answer>, _: RemovalCause| {
                if let Some(verification) = answer.verification {
                    unindex(&index, verification, *key);
                }
            })
            .build();
        Self {
            entries,
            by_verification,
            waiters: Mutex::default(),
            listening: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            sequence: Mutex::new(()),
        }
    }
}

fn unindex(index: &Mutex<HashMap<Uuid, Vec<Key>>>, verification: Uuid, key: Key) {
    let mut index = index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(keys) = index.get_mut(&verification) {
        keys.retain(|k| *k != key);
        if keys.is_empty() {
            index.remove(&verification);
        }
    }
}

/// A long-polling request's registration; it ends with the request.
pub struct Watch<'a> {
    view: &'a StatusView,
    key: Key,
    pub changes: watch::Receiver<u64>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut waiters = self.view.lock_waiters();
        if let Some(sender) = waiters.get(&self.key)
            // This receiver is still alive here: it is the last one when the count is 1.
            && sender.receiver_count() <= 1
        {
            waiters.remove(&self.key);
        }
    }
}

impl StatusView {
    /// The kept answer, when it can be trusted.
    pub fn get(&self, key: &Key) -> Option<Arc<Answer>> {
        if !self.listening.load(Ordering::Acquire) {
            return None;
        }
        self.entries.get(key)
    }

    /// The epoch to pass to [`StatusView::keep`] with what is read after it.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps a freshly read answer, unless a change came since `epoch` (it may be stale).
    pub fn keep(&self, key: Key, answer: Arc<Answer>, epoch: u64) {
        if !self.listening.load(Ordering::Acquire) {
            return;
        }
        let _sequence = self
            .sequence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if let Some(verification) = answer.verification {
            let mut index = self
                .by_verification
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let keys = index.entry(verification).or_default();
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        self.entries.insert(key, answer);
    }

    /// Registers a long-polling request for `key`, before it reads, so that no change can
    /// slip between its read and its wait.
    pub fn watch(&self, key: Key) -> Watch<'_> {
        let changes = self
            .lock_waiters()
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Watch {
            view: self,
            key,
            changes,
        }
    }

    /// How many long-polling requests wait now.
    pub fn waiting(&self) -> usize {
        self.lock_waiters()
            .values()
            .map(watch::Sender::receiver_count)
            .sum()
    }

    pub fn changed(&self, change: Change) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let sequence = self
            .sequence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let keys: Vec<Key> = match change {
            Change::Verification(id) => self
                .by_verification
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&id)
                .cloned()
                .unwrap_or_default(),
            Change::Onboarding { id, user } => id
                .map(Key::Onboarding)
                .into_iter()
                .chain(user.map(Key::User))
                .collect(),
            Change::ApiClient(_) => Vec::new(),
        };
        drop(sequence);
        for key in keys {
            self.entries.invalidate(&key);
            self.wake(&key);
        }
    }

    /// This process just committed a change to `verification`, seen through `key`: forgotten
    /// at once, so that the same process reads its own write (other replicas see it when the
    /// database announces it, a few milliseconds later).
    pub fn written(&self, verification: Uuid, key: Key) {
        self.changed(Change::Verification(verification));
        match key {
            Key::Onboarding(id) => self.changed(Change::Onboarding {
                id: Some(id),
                user: None,
            }),
            Key::User(user) => self.changed(Change::Onboarding {
                id: None,
                user: Some(user),
            }),
        }
    }

    /// Whether changes reach this process. Either way, what is kept can no longer be trusted
    /// (changes may have been missed): it is dropped, and every waiter reads once more.
    pub(crate) fn set_listening(&self, listening: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.listening.store(listening, Ordering::Release);
        self.entries.invalidate_all();
        let waiters = self.lock_waiters();
        for sender in waiters.values() {
            sender.send_modify(|version| *version += 1);
        }
    }

    fn wake(&self, key: &Key) {
        if let Some(sender) = self.lock_waiters().get(key) {
            sender.send_modify(|version| *version += 1);
        }
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, HashMap<Key, watch::Sender<u64>>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{Retry, State};

    fn answer(verification: Option<Uuid>, state: State) -> Arc<Answer> {
        Arc::new(Answer::new(
            Some(Uuid::nil()),
            verification,
            VerificationStatus {
                state,
                retry: Retry::None,
                reason_code: None,
                reason: None,
                updated_at: None,
            },
        ))
    }

    #[test]
    fn nothing_is_served_or_kept_while_not_listening() {
        let view = StatusView::default();
        let key = Key::Onboarding(Uuid::new_v4());
        view.keep(key, answer(None, State::Unverified), view.epoch());
        assert!(view.get(&key).is_none());
        view.set_listening(true);
        view.keep(key, answer(None, State::Unverified), view.epoch());
        assert!(view.get(&key).is_some());
        view.set_listening(false);
        assert!(
            view.get(&key).is_none(),
            "dropped when changes may be missed"
        );
    }

    #[test]
    fn a_change_evicts_its_keys_and_wakes_their_waiters_only() {
        let view = StatusView::default();
        view.set_listening(true);
        let (v, other) = (Uuid::new_v4(), Uuid::new_v4());
        let (mine, theirs) = (Key::Onboarding(Uuid::new_v4()), Key::user("someone"));
        view.keep(mine, answer(Some(v), State::Pending), view.epoch());
        view.keep(theirs, answer(Some(other), State::Pending), view.epoch());
        let mut watching_mine = view.watch(mine);
        let watching_theirs = view.watch(theirs);
        assert_eq!(view.waiting(), 2);

        view.changed(Change::Verification(v));
        assert!(view.get(&mine).is_none());
        assert!(view.get(&theirs).is_some());
        assert!(watching_mine.changes.has_changed().unwrap_or(false));
        assert!(!watching_theirs.changes.has_changed().unwrap_or(true));
        let _ = watching_mine.changes.borrow_and_update();

        view.changed(Change::Onboarding {
            id: None,
            user: Some(Sha256::digest(b"someone").into()),
        });
        assert!(
            view.get(&theirs).is_none(),
            "a user's new onboarding evicts it"
        );
        assert!(watching_theirs.changes.has_changed().unwrap_or(false));
        drop(watching_mine);
        drop(watching_theirs);
        assert_eq!(view.waiting(), 0);
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let view = StatusView::default();
        view.set_listening(true);
        let key = Key::Onboarding(Uuid::new_v4());
        let epoch = view.epoch();
        // The row changes (and is announced) while the read is on its way back.
        view.changed(Change::Verification(Uuid::new_v4()));
        view.keep(key, answer(None, State::Unverified), epoch);
        assert!(view.get(&key).is_none());
    }
}
