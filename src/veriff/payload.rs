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
            let Object(DecisionBody { verification }) = serde_json::from_slice(body).ok()?;
            let Object(v) = verification?;
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
            let Object(e): Object<EventBody> = serde_json::from_slice(body).ok()?;
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
    verification: Option<Object<DecisionVerification>>,
}

/// A struct read from a JSON object only: serde would also fill one from an array, by
/// position (`[1, "approved"]`), and a body like that has no session id.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);

        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(Fields(std::marker::PhantomData))
            .map(Object)
    }
}

// Every text field is read with `text`: a field of an unexpected type must not make a signed
// body unreadable when its session id and status can be read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DecisionVerification {
    #[serde(default, deserialize_with = "text")]
    id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    attempt_id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    vendor_data: Option<String>,
    #[serde(default, deserialize_with = "text")]
    status: Option<String>,
    #[serde(default, deserialize_with = "text")]
    decision_time: Option<String>,
    reason_code: Option<ReasonCode>,
    #[serde(default, deserialize_with = "text")]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventBody {
    #[serde(default, deserialize_with = "text")]
    id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    attempt_id: Option<String>,
    #[serde(default, deserialize_with = "text")]
    vendor_data: Option<String>,
    #[serde(default, deserialize_with = "text")]
    action: Option<String>,
}

/// A string as sent, or an integer as its text (`"attemptId": 7`, `"decisionTime": 1767261600`:
/// the same document always gives the same text, so the dedup key is stable); `null`,
/// booleans, arrays and objects count as absent, and so does a string holding NUL (`\u0000`),
/// which PostgreSQL's text cannot store: a session id like that is no session id. So do
/// fractions and exponents: serde_json reads `7e53` as a nearby double whose text,
/// re-serialised and read again, is another double, so the same document sent with other
/// whitespace would get another session id (found by the `webhook_payload` fuzzer).
fn text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct Text;

    impl<'de> serde::de::Visitor<'de> for Text {
        type Value = Option<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok((!v.contains('\0')).then(|| v.to_owned()))
        }

        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(v).filter(|v| !v.contains('\0')))
        }

        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Text)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            while map
                .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                .is_some()
            {}
            Ok(None)
        }
    }

    deserializer.deserialize_any(Text)
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
    fn fields_of_unexpected_types_do_not_make_a_body_unreadable() {
        let body = br#"{"verification":{"id":"s1","attemptId":7,"vendorData":{"a":[1]},"status":"approved","decisionTime":1767261600,"reason":false,"reasonCode":[1]}}"#;
        let facts = parse(Kind::Decision, body).expect("the session id and status can be read");
        assert_eq!(facts.session_id, "s1");
        assert_eq!(facts.attempt_id.as_deref(), Some("7"));
        assert_eq!(facts.vendor_data, None);
        assert_eq!(
            facts.what,
            What::Decision {
                status: "approved".into(),
                decision_time: Some("1767261600".into()),
                reason_code: None,
                reason: None,
            }
        );
        let event = br#"{"id":12345,"attemptId":1.5,"action":"started","feature":7}"#;
        let facts = parse(Kind::Event, event).expect("a numeric session id is its text");
        assert_eq!(facts.session_id, "12345");
        assert_eq!(facts.attempt_id, None, "a fraction is no text");
        // A status that is not a string or a number is no status: not a body without a session.
        let odd_status = br#"{"verification":{"id":"s1","status":{"x":1}}}"#;
        assert_eq!(
            parse(Kind::Decision, odd_status).map(|f| f.status_or_action().to_owned()),
            Some(String::new())
        );
    }

    #[test]
    fn the_same_bytes_give_the_same_dedup_key_with_numeric_fields() {
        let body = br#"{"verification":{"id":"s1","attemptId":7,"status":"approved","decisionTime":1767261600}}"#;
        let key = |b: &[u8]| {
            super::super::dedup::dedup_key(Kind::Decision, parse(Kind::Decision, b).as_ref(), b)
        };
        assert_eq!(key(body), key(body));
        let as_text = br#"{"verification":{"id":"s1","attemptId":"7","status":"approved","decisionTime":"1767261600"}}"#;
        // The number's text is what was sent: the same facts as the string form.
        assert_eq!(key(body), key(as_text));
    }

    #[test]
    fn fractions_and_exponents_are_no_text() {
        for id in ["7e53", "1.5", "-0.0", "1E2"] {
            let body = format!(r#"{{"id":{id},"action":"started"}}"#);
            assert_eq!(parse(Kind::Event, body.as_bytes()), None, "{id}");
        }
        // Why: the text of a double serde_json read is not stable across re-serialisation.
        let sent = br#"{"id":7e53,"action":"started"}"#;
        let value: serde_json::Value = serde_json::from_slice(sent).expect("JSON");
        let again = serde_json::to_vec(&value).expect("serialises");
        assert_eq!(parse(Kind::Event, &again), parse(Kind::Event, sent));
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        // Nesting in a field kyc does not read is skipped (without recursion)...
        let mut body = br#"{"verification":{"id":"s","status":"approved","x":"#.to_vec();
        body.extend(std::iter::repeat_n(b'[', 100_000));
        body.extend(std::iter::repeat_n(b']', 100_000));
        body.extend(b"}}");
        assert_eq!(
            parse(Kind::Decision, &body).map(|f| f.session_id),
            Some("s".to_owned())
        );
        // ...and a body that is only nesting has no session id.
        assert_eq!(parse(Kind::Event, &[b'['; 1_000_000]), None);
        assert_eq!(parse(Kind::Decision, &[b'{'; 1_000_000]), None);
        let mut objects = b"{\"verification\":".repeat(100_000);
        objects.extend(b"{}".iter().chain(&b"}".repeat(100_000)));
        assert_eq!(parse(Kind::Decision, &objects), None);
    }

    #[test]
    fn text_with_nul_counts_as_absent() {
        let body = br#"{"verification":{"id":"s\u0000","status":"approved"}}"#;
        assert_eq!(parse(Kind::Decision, body), None, "no session id");
        let body = br#"{"verification":{"id":"s","attemptId":"a\u0000","status":"approved","reason":"\u0000"}}"#;
        let facts = parse(Kind::Decision, body).expect("a session id");
        assert_eq!(facts.attempt_id, None);
        assert!(matches!(facts.what, What::Decision { reason: None, .. }));
    }

    #[test]
    fn arrays_are_not_objects() {
        assert_eq!(
            parse(Kind::Event, br#"["s1", "a1", null, "started"]"#),
            None
        );
        assert_eq!(
            parse(
                Kind::Decision,
                br#"{"verification":["s1","a1",null,"approved"]}"#
            ),
            None
        );
        assert_eq!(
            parse(Kind::Decision, br#"[["s1","a1",null,"approved"]]"#),
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
