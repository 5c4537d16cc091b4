//! Integration tests: the real service against the real PostgreSQL and RabbitMQ, each test
//! with its own database and queue prefix. One binary, so the crate is linked once.

mod clients_cli;
mod cross_session;
mod database_tls;
mod deploy;
mod errors;
mod forward_faults;
mod harness;
mod hostile;
mod ingest;
mod migrate;
mod oncall;
mod ops;
mod orphan_sessions;
mod publisher;
mod reconciliation;
mod registration;
mod replicas;
mod status_herd;
mod url_secrecy;
mod user_verification;
mod worker;
mod worker_concurrency;
mod worker_dead_letters;
mod worker_faults;
