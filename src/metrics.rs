//! Prometheus metrics, one registry per process (not the global one, so that tests can run
//! several instances side by side). Labels never carry payload content, and every label
//! value comes from a fixed set.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Webhooks by kind and outcome (accepted, spooled, bad_signature, too_large, timeout,
    /// unparsed, unavailable).
    pub webhooks: IntCounterVec,
    /// Time from publishing a webhook to the broker's confirm.
    pub publish_confirm_seconds: HistogramVec,
    /// Worker outcomes: applied, duplicate, retried, dead_lettered (with the reason),
    /// requeued (a move to a retry tier or the dead-letter queue failed: the message went back
    /// to the main queue, with the reason it was being moved for), db_unavailable.
    pub worker_messages: IntCounterVec,
    /// Time from a webhook's receipt to the commit that applied it.
    pub apply_seconds: Histogram,
    /// Messages ready in each queue (main, retry tiers, dead).
    pub queue_depth: IntGaugeVec,
    /// Dead letters recorded into the dead_letters table, by reason.
    pub dead_letters_recorded: IntCounterVec,
    /// Dead letters whose content PostgreSQL refused as sent (NUL characters, …): recorded
    /// sanitised or with their body and reason only.
    pub dead_letters_damaged: IntCounter,
    /// Dead letters that still need action (neither replayed nor purged).
    pub dead_letters_open: IntGauge,
    /// Status requests waiting for a change (`Prefer: wait`).
    pub status_waiters: IntGauge,
    /// Database reads by the status endpoints (what the in-memory view could not answer).
    pub status_reads: IntCounter,
    /// 1 while the broker connection is up.
    pub broker_connected: IntGauge,
    /// 1 while the database answers.
    pub database_up: IntGauge,
    /// Webhooks committed to the spool (the broker could not confirm them in time).
    pub spooled: IntCounter,
    /// Spooled webhooks the relay published (confirmed) and deleted.
    pub relayed: IntCounter,
    /// Rows waiting in the spool.
    pub spool_depth: IntGauge,
    /// Age of the oldest row in the spool.
    pub spool_oldest_seconds: Gauge,
}

fn registered<C: Collector + Clone + 'static>(registry: &Registry, metric: C) -> C {
    // Names are fixed and distinct: registering can only fail on a programming error.
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        Self {
            webhooks: registered(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "kyc_webhooks_total",
                        "Webhooks received, by kind and outcome",
                    ),
                    &["kind", "outcome"],
                )
                .expect("valid metric"),
            ),
            publish_confirm_seconds: registered(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "kyc_publish_confirm_seconds",
                        "Time from publish to the broker's confirm",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0,
                    ]),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            worker_messages: registered(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "kyc_worker_messages_total",
                        "Messages handled by the worker, by outcome and reason",
                    ),
                    &["outcome", "reason"],
                )
                .expect("valid metric"),
            ),
            apply_seconds: registered(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "kyc_apply_seconds",
                        "Time from a webhook's receipt to the commit that applied it",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                        300.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            queue_depth: registered(
                r,
                IntGaugeVec::new(
                    Opts::new("kyc_queue_depth", "Messages ready in each queue"),
                    &["queue"],
                )
                .expect("valid metric"),
            ),
            dead_letters_recorded: registered(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "kyc_dead_letters_recorded_total",
                        "Dead letters recorded, by reason",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            dead_letters_damaged: registered(
                r,
                IntCounter::new(
                    "kyc_dead_letters_damaged_total",
                    "Dead letters whose content PostgreSQL refused as sent, recorded sanitised",
                )
                .expect("valid metric"),
            ),
            dead_letters_open: registered(
                r,
                IntGauge::new(
                    "kyc_dead_letters_open",
                    "Dead letters that still need action (neither replayed nor purged)",
                )
                .expect("valid metric"),
            ),
            status_waiters: registered(
                r,
                IntGauge::new("kyc_status_waiters", "Status requests waiting for a change")
                    .expect("valid metric"),
            ),
            status_reads: registered(
                r,
                IntCounter::new(
                    "kyc_status_reads_total",
                    "Database reads by the status endpoints (polls the in-memory view could not answer)",
                )
                .expect("valid metric"),
            ),
            broker_connected: registered(
                r,
                IntGauge::new(
                    "kyc_broker_connected",
                    "1 while the broker connection is up",
                )
                .expect("valid metric"),
            ),
            database_up: registered(
                r,
                IntGauge::new("kyc_database_up", "1 while the database answers")
                    .expect("valid metric"),
            ),
            spooled: registered(
                r,
                IntCounter::new(
                    "kyc_spooled_total",
                    "Webhooks committed to the spool because the broker could not confirm them",
                )
                .expect("valid metric"),
            ),
            relayed: registered(
                r,
                IntCounter::new(
                    "kyc_relayed_total",
                    "Spooled webhooks published with a confirm and deleted from the spool",
                )
                .expect("valid metric"),
            ),
            spool_depth: registered(
                r,
                IntGauge::new("kyc_spool_depth", "Webhooks waiting in the spool")
                    .expect("valid metric"),
            ),
            spool_oldest_seconds: registered(
                r,
                Gauge::new(
                    "kyc_spool_oldest_seconds",
                    "Age of the oldest webhook waiting in the spool",
                )
                .expect("valid metric"),
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
