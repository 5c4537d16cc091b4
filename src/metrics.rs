//! Prometheus metrics, one registry per process (not the global one, so that tests can run
//! several instances side by side). Labels never carry payload content.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Webhooks by kind and outcome (accepted, bad_signature, too_large, unparsed, broker_unavailable).
    pub webhooks: IntCounterVec,
    /// Time from publishing a webhook to the broker's confirm.
    pub publish_confirm_seconds: HistogramVec,
    /// Worker outcomes: applied, duplicate, retried, dead_lettered (with the reason), db_unavailable.
    pub worker_messages: IntCounterVec,
    /// Time from a webhook's receipt to the commit that applied it.
    pub apply_seconds: Histogram,
    /// Messages ready in each queue (main, retry tiers, dead).
    pub queue_depth: IntGaugeVec,
    /// Dead letters recorded into the dead_letters table, by reason.
    pub dead_letters_recorded: IntCounterVec,
    /// Status requests waiting for a change (`Prefer: wait`).
    pub status_waiters: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let webhooks = IntCounterVec::new(
            Opts::new(
                "kyc_webhooks_total",
                "Webhooks received, by kind and outcome",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let publish_confirm_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kyc_publish_confirm_seconds",
                "Time from publish to the broker's confirm",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        let worker_messages = IntCounterVec::new(
            Opts::new(
                "kyc_worker_messages_total",
                "Messages handled by the worker, by outcome and reason",
            ),
            &["outcome", "reason"],
        )
        .expect("valid metric");
        let apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "kyc_apply_seconds",
                "Time from a webhook's receipt to the commit that applied it",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new("kyc_queue_depth", "Messages ready in each queue"),
            &["queue"],
        )
        .expect("valid metric");
        let dead_letters_recorded = IntCounterVec::new(
            Opts::new(
                "kyc_dead_letters_recorded_total",
                "Dead letters recorded, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let status_waiters =
            IntGauge::new("kyc_status_waiters", "Status requests waiting for a change")
                .expect("valid metric");
        for metric in [
            Box::new(webhooks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(publish_confirm_seconds.clone()),
            Box::new(worker_messages.clone()),
            Box::new(apply_seconds.clone()),
            Box::new(queue_depth.clone()),
            Box::new(dead_letters_recorded.clone()),
            Box::new(status_waiters.clone()),
        ] {
            registry.register(metric).expect("unique metric");
        }
        Self {
            registry,
            webhooks,
            publish_confirm_seconds,
            worker_messages,
            apply_seconds,
            queue_depth,
            dead_letters_recorded,
            status_waiters,
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
