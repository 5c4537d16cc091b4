//! Lenient reading of Veriff's webhook bodies. Veriff adds fields and event types without
//! notice, so only what kyc needs is read and everything else is ignored.

use serde::Deserialize;

use super::Kind;

/// The non-personal facts of a webhook body: all kyc ever reads from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub session_id: String,
    pub attempt_id: Option<String>,
    pub vendor_data: Option<String>,
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Decision {
        /// Veriff's `status` string, as sent (the numeric `code` is not trusted).
        status: String,
        /// `decisionTime` exactly as sent: it is part of the dedup key.
        decision_time: Option<String>,
        reason_code: Option<i32>,
        reason: Option<String>,
    },
    Event {
        action: String,
    },
}

impl Facts {
    /// `status` of a decision or `action` of an event.
    pub fn status_or_action(&self) -> &str {
        match &self.what {
            What::Decision { status, .. } => status,
            What::Event { action } => action,
        }
    }
}

/// Reads the facts of a body, or `None` when no session id can be found in it.
pub fn parse(kind: Kind, body: &[u8]) -> Option<Facts> {
    match kind {
        Kind::Decision => {
            let DecisionBody { verification } = serde_json::from_slice(body).ok()?;
            let v = verification?;
            Some(Facts {
                session_id: non_empty(v.id)?,
                attempt_id: non_empty(v.attempt_id),
                vendor_data: non_empty(v.vendor_data),
                what: What::Decision {
                    status: v.status.unwrap_or_default(),
                    decision_time: v.decision_time,
                    reason_code: v.reason_code.and_then(ReasonCode::value),
                    reason: v.reason,
                },
            })
        }
        Kind::Event => {
            let e: EventBody = serde_json::from_slice(body).ok()?;
            Some(Facts {
                session_id: non_empty(e.id)?,
                attempt_id: non_empty(e.attempt_id),
                vendor_data: non_empty(e.vendor_data),
                what: What::Event {
                    action: e.action.unwrap_or_default(),
                },
            })
        }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

#[derive(Deserialize)]
struct DecisionBody {
    verification: Option<DecisionVerification>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DecisionVerification {
    id: Option<String>,
    attempt_id: Option<String>,
    vendor_data: Option<String>,
    status: Option<String>,
    decision_time: Option<String>,
    reason_code: Option<ReasonCode>,
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventBody {
    id: Option<String>,
    attempt_id: Option<String>,
    vendor_data: Option<String>,
    action: Option<String>,
}

/// `reasonCode` arrives as a number or as a string of digits.
#[derive(Deserialize)]
#[serde(untagged)]
enum ReasonCode {
    Number(i64),
    Text(String),
    // Anything else (a float, an object) is ignored rather than failing the body.
    Other(serde::de::IgnoredAny),
}

impl ReasonCode {
    fn value(self) -> Option<i32> {
        match self {
            ReasonCode::Number(n) => i32::try_from(n).ok(),
            ReasonCode::Text(s) => s.trim().parse().ok(),
            ReasonCode::Other(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_fields_are_read_and_the_rest_ignored() {
        let body = br#"{"status":"success","verification":{"id":"s1","attemptId":"a1","vendorData":"v","status":"declined","code":9102,"reason":"Bad","reasonCode":"102","decisionTime":"2030-01-02T11:05:00.456Z","newField":{"x":1}}}"#;
        let facts = parse(Kind::Decision, body).expect("a session id");
        assert_eq!(facts.session_id, "s1");
        assert_eq!(facts.attempt_id.as_deref(), Some("a1"));
        assert_eq!(
            facts.what,
            What::Decision {
                status: "declined".into(),
                decision_time: Some("2030-01-02T11:05:00.456Z".into()),
                reason_code: Some(102),
                reason: Some("Bad".into()),
            }
        );
    }

    #[test]
    fn reason_code_as_number_or_junk() {
        let numeric = br#"{"verification":{"id":"s","status":"declined","reasonCode":105}}"#;
        let junk = br#"{"verification":{"id":"s","status":"declined","reasonCode":{"a":1}}}"#;
        let code = |b: &[u8]| match parse(Kind::Decision, b).map(|f| f.what) {
            Some(What::Decision { reason_code, .. }) => reason_code,
            other => panic!("not a decision: {other:?}"),
        };
        assert_eq!(code(numeric), Some(105));
        assert_eq!(code(junk), None);
    }

    #[test]
    fn no_session_id_means_unparseable() {
        assert_eq!(parse(Kind::Decision, b"not json"), None);
        assert_eq!(
            parse(Kind::Decision, br#"{"verification":{"status":"approved"}}"#),
            None
        );
        assert_eq!(parse(Kind::Event, br#"{"id":"","action":"started"}"#), None);
        assert_eq!(parse(Kind::Event, br#"[1,2,3]"#), None);
        // An event body posted to the decision endpoint has no `verification.id`.
        assert_eq!(
            parse(Kind::Decision, br#"{"id":"s","action":"started"}"#),
            None
        );
    }

    #[test]
    fn unknown_event_actions_still_parse() {
        let facts = parse(
            Kind::Event,
            br#"{"id":"s","action":"something_new","code":7099}"#,
        )
        .expect("a session id");
        assert_eq!(facts.status_or_action(), "something_new");
    }
}
