//! Integration tests: the real service against the real PostgreSQL and RabbitMQ, each test
//! with its own database and queue prefix. One binary, so the crate is linked once.

mod clients_cli;
mod forward_faults;
mod harness;
mod ingest;
mod migrate;
mod oncall;
mod ops;
mod reconciliation;
mod registration;
mod url_secrecy;
mod user_verification;
mod worker;
mod worker_concurrency;
mod worker_dead_letters;
mod worker_faults;
