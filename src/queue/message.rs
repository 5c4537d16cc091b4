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
        let routing_key = match (facts, webhook.kind()) {
            (None, _) => "veriff.unparsed",
            (Some(_), Kind::Decision) => "veriff.decision",
            (Some(_), Kind::Event) => "veriff.event",
        };
        let mut headers = FieldTable::default();
        put(&mut headers, HEADER_SIGNATURE, webhook.signature());
        put(
            &mut headers,
            HEADER_INTEGRATION,
            webhook.integration().as_str(),
        );
        put(&mut headers, HEADER_KIND, webhook.kind().as_str());
        put(
            &mut headers,
            HEADER_RECEIVED_AT,
            &received_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        );
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
