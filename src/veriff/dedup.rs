//! The dedup key: one function shared by the receiver (as the message's `message_id`) and
//! the worker (as the recorded input's key), so a webhook is recognised however often it comes.

use sha2::{Digest, Sha256};

use super::Kind;
use super::payload::{Facts, What};

/// `hex(sha256(kind|session|attempt or -|status or action|decisionTime or -))`, or
/// `hex(sha256(body))` for a body in which no session id could be found.
pub fn dedup_key(kind: Kind, facts: Option<&Facts>, body: &[u8]) -> String {
    let Some(facts) = facts else {
        return hex::encode(Sha256::digest(body));
    };
    let decision_time = match &facts.what {
        What::Decision { decision_time, .. } => decision_time.as_deref(),
        What::Event { .. } => None,
    };
    let material = [
        kind.as_str(),
        &facts.session_id,
        facts.attempt_id.as_deref().unwrap_or("-"),
        facts.status_or_action(),
        decision_time.unwrap_or("-"),
    ]
    .join("|");
    hex::encode(Sha256::digest(material.as_bytes()))
}

/// The key of a `session_created` input: one per session, however often it is recorded.
pub(crate) fn session_created_key(session_id: &str) -> String {
    hex::encode(Sha256::digest(
        format!("session_created|{session_id}").as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::veriff::payload::parse;

    fn sha_hex(s: &str) -> String {
        hex::encode(Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn decision_key_uses_decision_time_as_sent() {
        let body = br#"{"verification":{"id":"s1","attemptId":"a1","status":"approved","decisionTime":"2030-01-01T10:03:21.123Z"}}"#;
        let facts = parse(Kind::Decision, body);
        assert_eq!(
            dedup_key(Kind::Decision, facts.as_ref(), body),
            sha_hex("decision|s1|a1|approved|2030-01-01T10:03:21.123Z")
        );
    }

    #[test]
    fn missing_parts_become_dashes() {
        let body = br#"{"id":"s1","action":"started"}"#;
        let facts = parse(Kind::Event, body);
        assert_eq!(
            dedup_key(Kind::Event, facts.as_ref(), body),
            sha_hex("event|s1|-|started|-")
        );
    }

    #[test]
    fn unparseable_body_is_keyed_by_its_bytes() {
        assert_eq!(dedup_key(Kind::Decision, None, b"junk"), sha_hex("junk"));
    }

    #[test]
    fn formatting_does_not_change_the_key_of_the_same_facts() {
        let compact = br#"{"id":"s1","attemptId":"a","action":"submitted"}"#;
        let pretty =
            b"{\n  \"action\": \"submitted\",\n  \"attemptId\": \"a\",\n  \"id\": \"s1\"\n}";
        let key = |b: &[u8]| dedup_key(Kind::Event, parse(Kind::Event, b).as_ref(), b);
        assert_eq!(key(compact), key(pretty));
    }
}
