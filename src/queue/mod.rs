//! RabbitMQ: the topology, a self-healing connection, and the message format.

pub mod broker;
pub mod message;
pub mod topology;

pub use broker::{Broker, PublishError};
pub(crate) use message::Message;
pub use message::{Envelope, RecordedWebhook};
pub use topology::Topology;
