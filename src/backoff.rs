//! The one backoff policy of every retry loop (broker, database, LISTEN, consumers, Veriff):
//! exponential from 100 ms to 5 s with jitter, so that replicas that lost the same server do
//! not all come back in the same instant.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

const MIN_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

pub(crate) struct Backoff {
    delays: ExponentialBackoff,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self {
            delays: policy().build(),
        }
    }

    /// The next delay; the sequence never ends.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(MAX_DELAY)
    }

    /// After a success: the next failure starts from the shortest delay again.
    pub(crate) fn reset(&mut self) {
        self.delays = policy().build();
    }

    /// Sleeps for the next delay; `false` if `stop` came first.
    pub(crate) async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = stop.cancelled() => false,
        }
    }
}

fn policy() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_restarts_after_reset() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(
            delays[0] >= MIN_DELAY && delays[0] < MIN_DELAY * 2,
            "{delays:?}"
        );
        // Jitter adds at most one more delay's worth on top of the cap.
        assert!(delays.iter().all(|d| *d <= MAX_DELAY * 2), "{delays:?}");
        assert!(delays[11] >= MAX_DELAY, "reaches the cap: {delays:?}");
        backoff.reset();
        assert!(backoff.next_delay() < MIN_DELAY * 2);
    }
}
