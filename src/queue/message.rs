//! The message format on the queue: the raw body unchanged, and the facts the worker needs
//! to verify it again (signature, integration, kind) in headers.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::veriff::Kind;
use crate::veriff::payload::Facts;
use crate::veriff::signature::VerifiedWebhook;

pub const HEADER_SIGNATURE: &str = "kyc-signature";
pub const HEADER_INTEGRATION: &str = "kyc-integration";
pub const HEADER_KIND: &str = "kyc-kind";
pub const HEADER_RECEIVED_AT: &str = "kyc-received-at";

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: String,
    pub headers: FieldTable,
    pub body: Bytes,
}

impl Envelope {
    /// A verified webhook as it travels to the worker. Bodies with no session id go to
    /// `veriff.unparsed`: the worker dead-letters them, they are never dropped.
    pub fn webhook(
        exchange: String,
        webhook: &VerifiedWebhook,
        facts: Option<&Facts>,
        dedup_key: String,
        received_at: DateTime<Utc>,
    ) -> Self {
        let routing_key = routing_key_of(webhook.kind(), facts.is_some());
        let mut headers = FieldTable::default();
        put(&mut headers, HEADER_SIGNATURE, webhook.signature());
        put(
            &mut headers,
            HEADER_INTEGRATION,
            webhook.integration().as_str(),
        );
        put(&mut headers, HEADER_KIND, webhook.kind().as_str());
        put(&mut headers, HEADER_RECEIVED_AT, &rfc3339(received_at));
        Self {
            exchange,
            routing_key: routing_key.to_owned(),
            message_id: dedup_key,
            headers,
            body: webhook.body().clone(),
        }
    }

    pub fn properties(&self) -> BasicProperties {
        BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(ShortString::from(self.message_id.as_str()))
            .with_timestamp(u64::try_from(Utc::now().timestamp()).unwrap_or_default())
            .with_headers(self.headers.clone())
    }
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
        Some(kind) => routing_key_of(kind, crate::veriff::payload::parse(kind, body).is_some()),
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

/// Failures so far (retry tiers and dead letters).
pub const HEADER_ATTEMPTS: &str = "kyc-attempts";
pub const HEADER_FIRST_FAILURE: &str = "kyc-first-failure";
pub const HEADER_LAST_FAILURE: &str = "kyc-last-failure";
pub const HEADER_DEAD_REASON: &str = "kyc-dead-reason";
pub const HEADER_DEAD_LETTER_ID: &str = "kyc-dead-letter-id";

/// An integer header, whichever AMQP integer type the sender used.
pub fn header_i64(headers: &FieldTable, name: &str) -> Option<i64> {
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
pub fn header_time(headers: &FieldTable, name: &str) -> Option<DateTime<Utc>> {
    let text = header_str(headers, name)?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Headers as JSON, for the dead-letter table (and back, for a replay).
pub fn headers_to_json(headers: &FieldTable) -> serde_json::Value {
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
pub fn headers_from_json(json: &serde_json::Value) -> FieldTable {
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
