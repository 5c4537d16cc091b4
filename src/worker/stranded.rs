//! When a consumer must consume anew although nothing told it to. A consume that raced the
//! deletion of its quorum queue (and its declaration again, by serve's publisher after an
//! unroutable publish) has been seen to leave a consumer that the broker counts and delivers
//! to, its messages unacked, while lapin yields nothing, for ever; housekeeping's check of
//! consumers cannot see it, since the queue counts one. Nothing is lost, but the consumer
//! would stop for good. So besides this process's own declarations of the topology, a
//! consumer that has received nothing for a while consumes anew: closing its channel returns
//! whatever the broker holds for it.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How often a consumer looks at how long it has been idle.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long a consumer that received nothing keeps its subscription. At rest that is a new
/// channel every so often, which costs the broker next to nothing.
const IDLE_FOR: Duration = Duration::from_secs(15);

pub(super) struct Stranding {
    resubscribe: watch::Receiver<u64>,
    check: Interval,
    last_delivery: Instant,
}

/// What woke [`Stranding::suspect`].
pub(super) enum Suspicion {
    /// This process declared the topology again (after an unroutable publish).
    Declared,
    /// Time for the periodic look.
    Check,
}

impl Stranding {
    /// `resubscribe`: the broker's [`crate::queue::Broker::resubscriptions`].
    pub(super) fn new(resubscribe: watch::Receiver<u64>) -> Self {
        let mut check = tokio::time::interval_at(Instant::now() + CHECK_EVERY, CHECK_EVERY);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            resubscribe,
            check,
            last_delivery: Instant::now(),
        }
    }

    /// A delivery arrived: the subscription is alive.
    pub(super) fn delivered(&mut self) {
        self.last_delivery = Instant::now();
    }

    /// Resolves when the subscription may be dead, for a `select!` beside the consumer
    /// (cancel-safe). Then the caller asks [`Self::stranded`].
    pub(super) async fn suspect(&mut self) -> Suspicion {
        tokio::select! {
            Ok(()) = self.resubscribe.changed() => Suspicion::Declared,
            _ = self.check.tick() => Suspicion::Check,
        }
    }

    /// Whether to consume anew, and why. `busy`: messages of this consumer are still being
    /// applied; such a consumer is not idle (a database outage holds messages for as long as
    /// it lasts, and consuming anew would return them to the queue, each return counting
    /// towards the delivery limit).
    pub(super) fn stranded(&self, suspicion: Suspicion, busy: bool) -> Option<&'static str> {
        match suspicion {
            Suspicion::Declared => Some("this process declared the queue again"),
            Suspicion::Check if !busy && self.last_delivery.elapsed() >= IDLE_FOR => {
                Some("nothing received for a while")
            }
            Suspicion::Check => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_consumer_is_stranded_a_busy_or_fed_one_is_not() {
        let (declared, resubscribe) = watch::channel(0);
        let mut stranding = Stranding::new(resubscribe);
        let suspicion = stranding.suspect().await;
        assert!(matches!(suspicion, Suspicion::Check));
        assert_eq!(
            stranding.stranded(suspicion, false),
            None,
            "5 s idle is not yet"
        );

        tokio::time::advance(IDLE_FOR).await;
        let suspicion = stranding.suspect().await;
        assert_eq!(
            stranding.stranded(suspicion, true),
            None,
            "busy is not idle"
        );
        let suspicion = stranding.suspect().await;
        assert_eq!(
            stranding.stranded(suspicion, false),
            Some("nothing received for a while")
        );

        stranding.delivered();
        let suspicion = stranding.suspect().await;
        assert_eq!(stranding.stranded(suspicion, false), None, "just fed");

        declared.send_modify(|n| *n += 1);
        let suspicion = stranding.suspect().await;
        assert!(matches!(suspicion, Suspicion::Declared));
        assert_eq!(
            stranding.stranded(suspicion, true),
            Some("this process declared the queue again")
        );
    }
}
