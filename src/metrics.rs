//! Prometheus metrics, one registry per process (not the global one, so that tests can run
//! several instances side by side). Labels never carry payload content.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Webhooks by kind and outcome (accepted, bad_signature, too_large, unparsed, broker_unavailable).
    pub webhooks: IntCounterVec,
    /// Time from publishing a webhook to the broker's confirm.
    pub publish_confirm_seconds: HistogramVec,
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
        registry
            .register(Box::new(webhooks.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(publish_confirm_seconds.clone()))
            .expect("unique metric");
        Self {
            registry,
            webhooks,
            publish_confirm_seconds,
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
