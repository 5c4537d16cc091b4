//! The message format on the queue: the raw body unchanged, and the facts the worker needs
//! to verify it again (signature, integration, kind) in headers. A delivery's headers are
//! decoded once, into [`Message`]; nothing past this module handles lapin's `FieldTable`.

use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Topology;
use crate::veriff::Kind;
use crate::veriff::integration::Integration;
use crate::veriff::payload::{self, Facts};
use crate::veriff::signature::VerifiedWebhook;

pub const HEADER_SIGNATURE: &str = "kyc-signature";
pub const HEADER_INTEGRATION: &str = "kyc-integration";
pub const HEADER_KIND: &str = "kyc-kind";
pub const HEADER_RECEIVED_AT: &str = "kyc-received-at";
/// Failures so far (retry tiers and dead letters).
pub const HEADER_ATTEMPTS: &str = "kyc-attempts";
pub const HEADER_FIRST_FAILURE: &str = "kyc-first-failure";
pub const HEADER_LAST_FAILURE: &str = "kyc-last-failure";
pub const HEADER_DEAD_REASON: &str = "kyc-dead-reason";
pub const HEADER_DEAD_LETTER_ID: &str = "kyc-dead-letter-id";
/// Set on every republish by an operator (`kyc dlq replay`, `kyc replay`): a new life of the
/// same webhook, so that failing again makes a new dead letter rather than the old one.
pub(crate) const HEADER_REPLAY: &str = "kyc-replay";
/// Set by the publisher on every publish: pairs a returned message with its own publish.
pub(crate) const HEADER_PUBLISH_ID: &str = "kyc-publish-id";

/// The headers an operator's replay removes: the failure bookkeeping of the previous life.
const FAILURE_HEADERS: [&str; 6] = [
    HEADER_ATTEMPTS,
    HEADER_FIRST_FAILURE,
    HEADER_LAST_FAILURE,
    HEADER_DEAD_REASON,
    HEADER_DEAD_LETTER_ID,
    HEADER_PUBLISH_ID,
];

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// A message ready to publish. Only a verified webhook, a recorded webhook (with its original
/// signature), or a message that already came through the queue can become one.
#[derive(Clone)]
pub struct Envelope {
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) message_id: String,
    pub(super) headers: FieldTable,
    pub(super) body: Bytes,
}

/// Bodies hold personal data: `Debug` shows where a message goes, not what it carries.
impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("message_id", &self.message_id)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// A webhook as it was recorded (an input, a spooled or a dead-lettered one): what it takes
/// to publish it again exactly as it first travelled.
#[derive(Clone)]
pub struct RecordedWebhook {
    pub kind: Kind,
    pub integration: Integration,
    /// The signature it arrived with, verified again by the worker.
    pub signature: String,
    pub dedup_key: String,
    pub received_at: DateTime<Utc>,
    /// Whether a session id could be read from the body (else it travels as `veriff.unparsed`).
    pub parsed: bool,
    pub body: Bytes,
}

impl Envelope {
    /// A verified webhook as it travels to the worker. Bodies with no session id go to
    /// `veriff.unparsed`: the worker dead-letters them, they are never dropped.
    pub fn webhook(
        topology: &Topology,
        webhook: &VerifiedWebhook,
        facts: Option<&Facts>,
        dedup_key: String,
        received_at: DateTime<Utc>,
    ) -> Self {
        Self::recorded(
            topology,
            &RecordedWebhook {
                kind: webhook.kind(),
                integration: webhook.integration(),
                signature: webhook.signature().to_owned(),
                dedup_key,
                received_at,
                parsed: facts.is_some(),
                body: webhook.body().clone(),
            },
            None,
        )
    }

    /// A recorded webhook published again: by the spool's relay (`replay: None`, the same
    /// life), or by an operator (`replay: Some`, a new life).
    pub fn recorded(topology: &Topology, webhook: &RecordedWebhook, replay: Option<Uuid>) -> Self {
        let mut headers = FieldTable::default();
        put(&mut headers, HEADER_SIGNATURE, &webhook.signature);
        put(
            &mut headers,
            HEADER_INTEGRATION,
            webhook.integration.as_str(),
        );
        put(&mut headers, HEADER_KIND, webhook.kind.as_str());
        put(
            &mut headers,
            HEADER_RECEIVED_AT,
            &rfc3339(webhook.received_at),
        );
        if let Some(replay) = replay {
            put(&mut headers, HEADER_REPLAY, &replay.to_string());
        }
        Self {
            exchange: topology.exchange(),
            routing_key: routing_key_of(webhook.kind, webhook.parsed).to_owned(),
            message_id: webhook.dedup_key.clone(),
            headers,
            body: webhook.body.clone(),
        }
    }

    /// A dead letter's original message (headers as first received, failure bookkeeping
    /// removed), republished by an operator to the main queue for a new life.
    pub(crate) fn dead_letter_replay(
        topology: &Topology,
        headers: &serde_json::Value,
        message_id: Option<&str>,
        body: Bytes,
        replay: Uuid,
    ) -> Self {
        let mut headers = headers_from_json(headers);
        let mut kept = FieldTable::default();
        for (name, value) in headers.inner() {
            if !FAILURE_HEADERS.contains(&name.as_str()) && name.as_str() != HEADER_REPLAY {
                kept.insert(name.clone(), value.clone());
            }
        }
        headers = kept;
        put(&mut headers, HEADER_REPLAY, &replay.to_string());
        let kind = header_str(&headers, HEADER_KIND).and_then(Kind::parse);
        Self {
            exchange: topology.exchange(),
            routing_key: routing_key(kind, &body).to_owned(),
            message_id: message_id.unwrap_or_default().to_owned(),
            headers,
            body,
        }
    }

    /// The dedup key, also the AMQP `message_id`.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }

    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    pub fn routing_key(&self) -> &str {
        &self.routing_key
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Persistent, with the dedup key as `message_id`, the headers, and `publish_id` to pair a
    /// returned message with its publish.
    pub fn properties(&self, publish_id: &str) -> BasicProperties {
        properties(self.message_id.as_str(), self.headers.clone(), publish_id)
    }

    /// What a publish sends: exchange, routing key, body and properties, without copying.
    pub(super) fn into_parts(self, publish_id: &str) -> (String, String, Bytes, BasicProperties) {
        let properties = properties(&self.message_id, self.headers, publish_id);
        (self.exchange, self.routing_key, self.body, properties)
    }
}

fn properties(message_id: &str, mut headers: FieldTable, publish_id: &str) -> BasicProperties {
    put(&mut headers, HEADER_PUBLISH_ID, publish_id);
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
        .with_message_id(ShortString::from(message_id))
        .with_timestamp(u64::try_from(Utc::now().timestamp()).unwrap_or_default())
        .with_headers(headers)
}

/// A delivery, its headers decoded once.
#[derive(Clone)]
pub(crate) struct Message {
    pub body: Bytes,
    pub message_id: Option<String>,
    pub kind: Option<Kind>,
    pub integration: Option<Integration>,
    pub signature: Option<String>,
    pub received_at: Option<DateTime<Utc>>,
    /// Failures before this delivery.
    pub attempts: i64,
    pub first_failure: Option<DateTime<Utc>>,
    pub last_failure: Option<DateTime<Utc>>,
    pub dead_reason: Option<String>,
    pub dead_letter_id: Option<Uuid>,
    /// Every header as received, to forward unchanged and to record with a dead letter.
    headers: FieldTable,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("message_id", &self.message_id)
            .field("kind", &self.kind)
            .field("integration", &self.integration)
            .field("attempts", &self.attempts)
            .field("body_bytes", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Message {
    pub(crate) fn from_delivery(delivery: &Delivery) -> Self {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let text = |name| header_str(&headers, name);
        Self {
            body: Bytes::copy_from_slice(&delivery.data),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            kind: text(HEADER_KIND).and_then(Kind::parse),
            integration: text(HEADER_INTEGRATION).and_then(Integration::parse),
            signature: text(HEADER_SIGNATURE).map(str::to_owned),
            received_at: header_time(&headers, HEADER_RECEIVED_AT),
            attempts: header_i64(&headers, HEADER_ATTEMPTS).unwrap_or(0),
            first_failure: header_time(&headers, HEADER_FIRST_FAILURE),
            last_failure: header_time(&headers, HEADER_LAST_FAILURE),
            dead_reason: text(HEADER_DEAD_REASON).map(str::to_owned),
            dead_letter_id: text(HEADER_DEAD_LETTER_ID).and_then(|id| Uuid::parse_str(id).ok()),
            headers,
        }
    }

    /// The headers as JSON, as the dead-letter table keeps them.
    pub(crate) fn headers_json(&self) -> serde_json::Value {
        headers_to_json(&self.headers)
    }

    /// The same message into a retry tier (through the default exchange), one more failure
    /// counted.
    pub(crate) fn to_retry(&self, queue: String, now: DateTime<Utc>) -> Envelope {
        self.moved(queue, self.with_failure(now))
    }

    /// The same message into the dead-letter queue, with its reason and a dead-letter id that
    /// is the same however often this delivery is dead-lettered (a lost ack means a
    /// redelivery, which must not make a second dead letter).
    pub(crate) fn to_dead(
        &self,
        queue: String,
        reason: &str,
        now: DateTime<Utc>,
    ) -> (Envelope, Uuid) {
        let id = self.dead_letter_id_for(reason);
        let mut headers = self.with_failure(now);
        put(&mut headers, HEADER_DEAD_REASON, reason);
        put(&mut headers, HEADER_DEAD_LETTER_ID, &id.to_string());
        (self.moved(queue, headers), id)
    }

    /// Derived from what identifies this life of the message: its id, its body, the replay
    /// that started this life, the failures it had, and the reason.
    fn dead_letter_id_for(&self, reason: &str) -> Uuid {
        let mut hash = Sha256::new();
        for part in [
            self.message_id.as_deref().unwrap_or("-").as_bytes(),
            &Sha256::digest(&self.body),
            header_str(&self.headers, HEADER_REPLAY)
                .unwrap_or("-")
                .as_bytes(),
            self.attempts.to_string().as_bytes(),
            reason.as_bytes(),
        ] {
            hash.update(part);
            hash.update(b"|");
        }
        uuid_from(&hash.finalize())
    }

    fn with_failure(&self, now: DateTime<Utc>) -> FieldTable {
        let now = rfc3339(now);
        let mut headers = self.headers.clone();
        headers.insert(
            HEADER_ATTEMPTS.into(),
            AMQPValue::LongLongInt(self.attempts + 1),
        );
        if !headers.inner().contains_key(HEADER_FIRST_FAILURE) {
            put(&mut headers, HEADER_FIRST_FAILURE, &now);
        }
        put(&mut headers, HEADER_LAST_FAILURE, &now);
        headers
    }

    fn moved(&self, queue: String, headers: FieldTable) -> Envelope {
        Envelope {
            exchange: String::new(),
            routing_key: queue,
            message_id: self.message_id.clone().unwrap_or_default(),
            headers,
            body: self.body.clone(),
        }
    }

    /// The broker's own dead letter (a message past the main queue's delivery limit) has no
    /// id of ours: one derived from what is the same on every redelivery.
    pub(crate) fn broker_dead_letter_id(&self) -> Uuid {
        let mut hash = Sha256::new();
        hash.update(self.message_id.as_deref().unwrap_or_default().as_bytes());
        // x-death carries the time of the broker's dead-lettering: a later death is a new letter.
        hash.update(
            self.headers_json()
                .get("x-death")
                .map(ToString::to_string)
                .unwrap_or_default()
                .as_bytes(),
        );
        uuid_from(&hash.finalize())
    }
}

fn uuid_from(digest: &[u8]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

fn routing_key_of(kind: Kind, parsed: bool) -> &'static str {
    match (parsed, kind) {
        (false, _) => "veriff.unparsed",
        (true, Kind::Decision) => "veriff.decision",
        (true, Kind::Event) => "veriff.event",
    }
}

/// The routing key of a body of this kind, as the receiver chose it.
pub fn routing_key(kind: Option<Kind>, body: &[u8]) -> &'static str {
    match kind {
        Some(kind) => routing_key_of(kind, payload::parse(kind, body).is_some()),
        None => "veriff.unparsed",
    }
}

pub fn put(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(name.into(), AMQPValue::LongString(value.into()));
}

/// A string header, whichever AMQP string type the sender used.
pub fn header_str<'a>(headers: &'a FieldTable, name: &str) -> Option<&'a str> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// An integer header, whichever AMQP integer type the sender used.
fn header_i64(headers: &FieldTable, name: &str) -> Option<i64> {
    int_value(headers.inner().get(name)?)
}

fn int_value(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

/// A header holding an RFC 3339 time.
fn header_time(headers: &FieldTable, name: &str) -> Option<DateTime<Utc>> {
    let text = header_str(headers, name)?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Headers as JSON, for the dead-letter table (and back, for a replay).
fn headers_to_json(headers: &FieldTable) -> serde_json::Value {
    serde_json::Value::Object(
        headers
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &AMQPValue) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        AMQPValue::Boolean(b) => J::Bool(*b),
        AMQPValue::ShortString(s) => J::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => J::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::Timestamp(t) => J::from(*t),
        AMQPValue::Float(f) => J::from(f64::from(*f)),
        AMQPValue::Double(f) => J::from(*f),
        AMQPValue::FieldArray(items) => {
            J::Array(items.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::FieldTable(table) => headers_to_json(table),
        AMQPValue::ByteArray(bytes) => J::String(hex::encode(bytes.as_slice())),
        AMQPValue::DecimalValue(d) => J::String(format!("{d:?}")),
        AMQPValue::Void => J::Null,
        other => int_value(other).map_or(J::Null, J::from),
    }
}

/// Headers back from their JSON form (strings, integers and booleans; nested values, such as
/// the broker's `x-death`, are left out).
fn headers_from_json(json: &serde_json::Value) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(map) = json.as_object() {
        for (name, value) in map {
            let value = match value {
                serde_json::Value::String(s) => AMQPValue::LongString(s.as_str().into()),
                serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => AMQPValue::LongLongInt(i),
                    None => continue,
                },
                _ => continue,
            };
            headers.insert(name.as_str().into(), value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body with personal data, as Veriff's decisions carry it.
    const BODY: &[u8] = br#"{"verification":{"id":"s1","status":"approved","person":{"firstName":"TESTY","lastName":"MCTESTFACE"}}}"#;

    fn recorded() -> RecordedWebhook {
        RecordedWebhook {
            kind: Kind::Decision,
            integration: Integration::Eu,
            signature: "ab".repeat(32),
            dedup_key: "key".to_owned(),
            received_at: Utc::now(),
            parsed: true,
            body: Bytes::from_static(BODY),
        }
    }

    fn shows_no_body(shown: &str) {
        assert!(
            !shown.contains("TESTY") && !shown.contains("MCTESTFACE") && !shown.contains("s1"),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("body_bytes: {}", BODY.len())),
            "{shown}"
        );
    }

    #[test]
    fn debug_of_an_envelope_or_a_message_shows_no_body() {
        let topology = Topology::new("kyc", vec![]);
        let envelope = Envelope::recorded(&topology, &recorded(), None);
        shows_no_body(&format!("{envelope:?}"));
        let message = Message {
            body: Bytes::from_static(BODY),
            message_id: Some("key".to_owned()),
            kind: Some(Kind::Decision),
            integration: Some(Integration::Eu),
            signature: Some("ab".repeat(32)),
            received_at: None,
            attempts: 0,
            first_failure: None,
            last_failure: None,
            dead_reason: None,
            dead_letter_id: None,
            headers: FieldTable::default(),
        };
        shows_no_body(&format!("{message:?}"));
        let (dead, _) = message.to_dead("kyc.dead".to_owned(), "UNPARSEABLE", Utc::now());
        shows_no_body(&format!("{dead:?}"));
    }
}
