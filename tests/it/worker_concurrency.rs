//! Many inputs of one verification at once: applied concurrently (one worker with many
//! slots, or two worker processes), the row is what the state machine gives for the same
//! inputs applied one by one. A lost update (two transactions recomputing from histories
//! that each miss the other's input) would leave a row computed from part of the history.

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use kyc::state_machine::{
    self, Decision, DecisionStatus, Event, EventAction, Input, Observation, Row,
};
use kyc::veriff::integration::Integration;
use uuid::Uuid;

use crate::harness::seed::{RowView, decision, event, row_of, time};
use crate::harness::{Spawn, TestApp, eventually};

/// One webhook of the burst.
struct Webhook {
    session: &'static str,
    attempt: String,
    what: What,
}

enum What {
    Event(&'static str),
    Decision {
        status: &'static str,
        minute: u32,
        code: Option<i32>,
    },
}

impl Webhook {
    fn event(session: &'static str, attempt: impl Into<String>, action: &'static str) -> Self {
        Self {
            session,
            attempt: attempt.into(),
            what: What::Event(action),
        }
    }

    fn decision(
        session: &'static str,
        attempt: impl Into<String>,
        status: &'static str,
        minute: u32,
        code: Option<i32>,
    ) -> Self {
        Self {
            session,
            attempt: attempt.into(),
            what: What::Decision {
                status,
                minute,
                code,
            },
        }
    }

    fn kind(&self) -> &'static str {
        match self.what {
            What::Event(_) => "event",
            What::Decision { .. } => "decision",
        }
    }

    fn body(&self) -> Vec<u8> {
        match self.what {
            What::Event(action) => event(self.session, Some(&self.attempt), action),
            What::Decision {
                status,
                minute,
                code,
            } => decision(
                self.session,
                Some(&self.attempt),
                status,
                &time(minute),
                code,
            ),
        }
    }

    /// The input as the state machine reads it back from `inputs`.
    fn input(&self) -> Input {
        let attempt_id = Some(self.attempt.clone());
        let observation = match self.what {
            What::Event(action) => Observation::Event(Event {
                attempt_id,
                action: EventAction::parse(action),
            }),
            What::Decision {
                status,
                minute,
                code,
            } => Observation::Decision(Decision {
                attempt_id,
                status: DecisionStatus::parse(status).expect("a known status"),
                decision_time: Some(
                    DateTime::parse_from_rfc3339(&time(minute))
                        .expect("rfc3339")
                        .with_timezone(&Utc),
                ),
                reason_code: code,
                reason: code.map(|c| format!("reason {c}")),
            }),
        };
        Input::Observed {
            session_id: self.session.to_owned(),
            observation,
        }
    }
}

const SESSIONS: [&str; 3] = ["s1", "s2", "s3"];

/// 50 webhooks over three sessions (s3 the current one): two older sessions ending declined,
/// and a current one with many attempts and decisions whose latest is a decline, so the
/// right row (BLOCKED: a third declined session) needs every session's final decision.
fn burst() -> Vec<Webhook> {
    let mut burst = Vec::new();
    for (session, base) in [("s1", 0), ("s2", 10)] {
        for attempt in ["a1", "a2"] {
            burst.push(Webhook::event(session, attempt, "started"));
            burst.push(Webhook::event(session, attempt, "submitted"));
        }
        burst.push(Webhook::decision(session, "a1", "review", base + 1, None));
        burst.push(Webhook::decision(
            session,
            "a1",
            "resubmission_requested",
            base + 2,
            Some(201),
        ));
        burst.push(Webhook::decision(
            session,
            "a2",
            "declined",
            base + 3,
            Some(102),
        ));
    }
    for attempt in 1..=6 {
        for action in ["started", "submitted", "document_uploaded"] {
            burst.push(Webhook::event("s3", format!("c{attempt}"), action));
        }
    }
    let statuses = [
        "review",
        "resubmission_requested",
        "approved",
        "expired",
        "abandoned",
        "review",
    ];
    for i in 0..17u32 {
        let status = statuses[i as usize % statuses.len()];
        let code = (status == "resubmission_requested").then_some(201);
        burst.push(Webhook::decision(
            "s3",
            format!("c{}", i % 6 + 1),
            status,
            20 + i,
            code,
        ));
    }
    burst.push(Webhook::decision("s3", "c6", "declined", 40, Some(102)));
    assert_eq!(burst.len(), 50);
    burst
}

fn view(row: &Row) -> RowView {
    (
        row.state.as_str().to_owned(),
        row.retry.as_str().to_owned(),
        row.reason_code,
        row.reason.clone(),
    )
}

/// Seeds the sessions, sends the whole burst at once, waits until `workers` applied it,
/// and compares the row and the session statuses with the state machine's.
async fn burst_gives_the_state_machines_row(app: &TestApp, workers: &[&TestApp]) -> Uuid {
    let v = app.seed_verification(Integration::Eu, SESSIONS[0]).await;
    for session in &SESSIONS[1..] {
        app.seed_session(v, session).await;
    }
    let burst = burst();
    let mut history: Vec<Input> = SESSIONS
        .iter()
        .map(|s| Input::SessionCreated {
            session_id: (*s).to_owned(),
            adopted: false,
        })
        .collect();
    history.extend(burst.iter().map(Webhook::input));
    let expected = state_machine::compute(&history, &app.config.policy());
    assert_eq!(
        view(&expected),
        row_of("REJECTED", "BLOCKED", Some(102)),
        "the scenario needs all three sessions"
    );

    let bodies: Vec<(&str, Vec<u8>)> = burst.iter().map(|w| (w.kind(), w.body())).collect();
    join_all(bodies.iter().map(|(kind, body)| app.send(kind, body))).await;

    app.wait_inputs(v, 53).await;
    // Every message settled: applied once each, nothing retried or dead-lettered.
    let applied = eventually(
        std::time::Duration::from_secs(20),
        "50 messages applied",
        || async {
            let mut total = 0;
            for worker in workers {
                total += worker.worker_count("applied", "").await;
            }
            (total >= 50).then_some(total)
        },
    )
    .await;
    assert_eq!(applied, 50);
    assert_eq!(app.row(v).await, view(&expected));
    for session in SESSIONS {
        let status = state_machine::session_status(&history, session).expect("created");
        assert_eq!(
            app.session_status(session).await,
            status.as_str(),
            "{session}"
        );
    }
    assert!(app.dead_letters().await.is_empty());
    for worker in workers {
        assert_eq!(worker.worker_count("retried", "APPLY_FAILED").await, 0);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_applied_concurrently_by_one_worker_matches_the_state_machine() {
    // Small batches, so that the burst is many transactions racing for the same lock.
    let app = TestApp::run_with(&["--worker-batch", "3"]).await;
    assert!(app.config.worker_concurrency > 1, "applies concurrently");
    burst_gives_the_state_machines_row(&app, &[&app]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_applied_by_two_worker_processes_matches_the_state_machine() {
    // Small prefetch windows (2 batches of 4, twice over), so both take a share of the burst.
    let first = TestApp::run_with(&["--worker-concurrency", "2", "--worker-batch", "4"]).await;
    // Another process of the same deployment; its own HTTP side only shows its metrics.
    let second = TestApp::start_with(
        Spawn {
            http: true,
            worker: true,
            ..Spawn::default()
        },
        first.config.clone(),
        None,
    )
    .await;
    eventually(
        std::time::Duration::from_secs(20),
        "both workers consuming",
        || async { (first.peek().main_consumers().await == 2).then_some(()) },
    )
    .await;

    burst_gives_the_state_machines_row(&first, &[&first, &second]).await;
    let (a, b) = (
        first.worker_count("applied", "").await,
        second.worker_count("applied", "").await,
    );
    assert!(a > 0 && b > 0, "both workers applied part of it: {a} + {b}");
}
