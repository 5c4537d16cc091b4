//! kyc: identity verification with Veriff. Signed webhooks are verified on their raw bytes,
//! published durably to RabbitMQ, and applied exactly once to PostgreSQL by the worker.

#[macro_use]
mod output;

pub mod app;
mod backoff;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod error;
pub mod http;
pub mod metrics;
pub mod oncall;
pub mod queue;
pub mod spool;
pub mod state_machine;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod veriff;
pub mod worker;
