//! An arbitrary history and policy → `compute`, `explain`, `session_status`, `current_session`.
//!
//! Asserts: no panic; `explain(h).row == compute(h)`; the row is consistent (UNVERIFIED with
//! NONE or NEW_SESSION, PENDING and VERIFIED with NONE, REJECTED never with NONE); nothing
//! changes when the observed inputs are reordered or an input is duplicated; `decided_by`
//! indexes an input of a created session that can decide that row (DESIGN section 6), of
//! the current session unless the row is an approval or a block; a final decision leaves
//! its session unusable; the explanation never quotes Veriff's reason text.
#![no_main]

use arbitrary::Arbitrary;
use chrono::DateTime;
use kyc::state_machine::{
    Decision, DecisionStatus, Event, EventAction, Input, Observation, Policy, Retry, Row,
    SessionStatus, State, compute, current_session, explain, session_status,
};
use libfuzzer_sys::fuzz_target;

/// Enough inputs for several sessions with a few attempts each; longer only slows the run.
const MAX_INPUTS: usize = 32;
/// Sessions s0..s4; one the input may never create, whose observations must be ignored.
const SESSIONS: usize = 5;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sid {
    S0,
    S1,
    S2,
    S3,
    S4,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Attempt {
    A0,
    A1,
    A2,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Action {
    Started,
    Submitted,
    Other,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Status {
    Approved,
    Declined,
    ResubmissionRequested,
    Review,
    Expired,
    Abandoned,
}

/// Mostly a few close minutes, so that ties and near-ties happen; sometimes any instant.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Time {
    Minute(u8),
    Any(i64, u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Code {
    NonBlocking,
    Blocking,
    Resubmission,
    Other503,
    Any(i32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Reason {
    X,
    Y,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum In {
    Created {
        session: Sid,
        adopted: bool,
    },
    Event {
        session: Sid,
        attempt: Option<Attempt>,
        action: Action,
    },
    Decision {
        session: Sid,
        attempt: Option<Attempt>,
        status: Status,
        time: Option<Time>,
        code: Option<Code>,
        reason: Option<Reason>,
    },
}

#[derive(Arbitrary, Debug)]
struct Case {
    max_attempts: u8,
    /// Which of the codes the inputs use block, one bit each; or the default policy's.
    blocking: Option<u8>,
    history: Vec<In>,
    shuffle: u64,
    duplicates: Vec<(u8, u16)>,
}

/// Stand-ins for Veriff's reason text, which may quote personal data.
const PERSONAL: [&str; 2] = ["Personal: Jane Doe", "Personal: passport X1234567"];
const CODES: [i32; 4] = [102, 105, 201, 503];

fn sid(s: Sid) -> String {
    format!("s{}", s as u8)
}

fn attempt(a: Option<Attempt>) -> Option<String> {
    a.map(|a| format!("a{}", a as u8))
}

fn input(i: In) -> Input {
    match i {
        In::Created { session, adopted } => Input::SessionCreated {
            session_id: sid(session),
            adopted,
        },
        In::Event {
            session,
            attempt: a,
            action,
        } => Input::Observed {
            session_id: sid(session),
            observation: Observation::Event(Event {
                attempt_id: attempt(a),
                action: match action {
                    Action::Started => EventAction::Started,
                    Action::Submitted => EventAction::Submitted,
                    Action::Other => EventAction::Other,
                },
            }),
        },
        In::Decision {
            session,
            attempt: a,
            status,
            time,
            code,
            reason,
        } => Input::Observed {
            session_id: sid(session),
            observation: Observation::Decision(Decision {
                attempt_id: attempt(a),
                status: match status {
                    Status::Approved => DecisionStatus::Approved,
                    Status::Declined => DecisionStatus::Declined,
                    Status::ResubmissionRequested => DecisionStatus::ResubmissionRequested,
                    Status::Review => DecisionStatus::Review,
                    Status::Expired => DecisionStatus::Expired,
                    Status::Abandoned => DecisionStatus::Abandoned,
                },
                decision_time: time.and_then(|t| match t {
                    Time::Minute(m) => {
                        DateTime::from_timestamp(1_700_000_000 + 60 * i64::from(m % 3), 0)
                    }
                    Time::Any(secs, nanos) => DateTime::from_timestamp(secs, nanos),
                }),
                reason_code: code.map(|c| match c {
                    Code::NonBlocking => CODES[0],
                    Code::Blocking => CODES[1],
                    Code::Resubmission => CODES[2],
                    Code::Other503 => CODES[3],
                    Code::Any(c) => c,
                }),
                reason: reason.map(|r| PERSONAL[r as usize].to_owned()),
            }),
        },
    }
}

/// A small deterministic generator (splitmix64), so that a crash replays exactly.
struct Mix(u64);

impl Mix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        usize::try_from(z % n as u64).unwrap_or(0)
    }
}

/// The same history with its Observed inputs permuted among their own places; the
/// SessionCreated order is authoritative, so it stays.
fn shuffled(history: &[Input], seed: u64) -> Vec<Input> {
    let places: Vec<usize> = (0..history.len())
        .filter(|&i| matches!(history[i], Input::Observed { .. }))
        .collect();
    let mut order = places.clone();
    let mut mix = Mix(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, mix.below(i + 1));
    }
    let mut out = history.to_vec();
    for (place, from) in places.iter().zip(order) {
        out[*place] = history[from].clone();
    }
    out
}

/// The same history with some inputs recorded again: an Observed copy anywhere, a
/// SessionCreated copy anywhere after its original (before it, it would reorder sessions).
fn duplicated(history: &[Input], picks: &[(u8, u16)]) -> Vec<Input> {
    let mut out = history.to_vec();
    for &(which, at) in picks.iter().take(4) {
        if out.is_empty() {
            break;
        }
        let which = usize::from(which) % out.len();
        let copy = out[which].clone();
        let at = usize::from(at);
        let at = match copy {
            Input::Observed { .. } => at % (out.len() + 1),
            Input::SessionCreated { .. } => which + 1 + at % (out.len() - which),
        };
        out.insert(at, copy);
    }
    out
}

fn session_of(input: &Input) -> &str {
    match input {
        Input::SessionCreated { session_id, .. } | Input::Observed { session_id, .. } => session_id,
    }
}

/// Everything that must not depend on arrival order or multiplicity.
fn view(h: &[Input], p: &Policy) -> (Row, Vec<Option<SessionStatus>>, Option<String>, String) {
    let statuses = (0..SESSIONS)
        .map(|s| session_status(h, &format!("s{s}")))
        .collect();
    (
        compute(h, p),
        statuses,
        current_session(h).map(str::to_owned),
        explain(h, p).to_string(),
    )
}

/// Whether `input` is the kind of input that can decide `r` (DESIGN section 6), reasons
/// included.
fn can_decide(r: &Row, input: &Input) -> bool {
    use DecisionStatus::*;
    let no_reason = r.reason_code.is_none() && r.reason.is_none();
    match input {
        Input::SessionCreated { .. } => {
            (r.state, r.retry) == (State::Unverified, Retry::None) && no_reason
        }
        Input::Observed {
            observation: Observation::Event(e),
            ..
        } => {
            no_reason
                && match (r.state, r.retry) {
                    (State::Pending, Retry::None) => e.action == EventAction::Submitted,
                    (State::Unverified, Retry::None) => e.action == EventAction::Started,
                    _ => false,
                }
        }
        Input::Observed {
            observation: Observation::Decision(d),
            ..
        } => {
            r.reason_code == d.reason_code
                && r.reason == d.reason
                && match (r.state, r.retry) {
                    (State::Verified, Retry::None) => d.status == Approved,
                    (State::Rejected, Retry::Blocked | Retry::NewSession) => d.status == Declined,
                    (State::Rejected, Retry::SameSession) => d.status == ResubmissionRequested,
                    (State::Pending, Retry::None) => d.status == Review,
                    (State::Unverified, Retry::NewSession) => {
                        matches!(d.status, Expired | Abandoned)
                    }
                    _ => false,
                }
        }
    }
}

fuzz_target!(|case: Case| {
    let history: Vec<Input> = case
        .history
        .iter()
        .take(MAX_INPUTS)
        .copied()
        .map(input)
        .collect();
    let policy = Policy {
        max_attempts: u32::from(case.max_attempts % 4) + 1,
        blocking_reason_codes: match case.blocking {
            None => Policy::default().blocking_reason_codes,
            Some(mask) => (0..CODES.len())
                .filter(|i| mask >> i & 1 == 1)
                .map(|i| CODES[i])
                .collect(),
        },
    };

    let row = compute(&history, &policy);
    let explanation = explain(&history, &policy);
    assert_eq!(explanation.row, row, "explain disagrees with compute");
    let consistent = match row.state {
        State::Unverified => matches!(row.retry, Retry::None | Retry::NewSession),
        State::Pending | State::Verified => row.retry == Retry::None,
        State::Rejected => row.retry != Retry::None,
    };
    assert!(consistent, "inconsistent row {row:?}");

    let text = explanation.text();
    assert!(
        text.starts_with(&format!(
            "{} / {}: ",
            row.state.as_str(),
            row.retry.as_str()
        )),
        "{text}"
    );
    assert!(
        !text.contains("Personal"),
        "reason text in the explanation: {text}"
    );
    assert_eq!(explanation.max_attempts, policy.max_attempts);

    let current = current_session(&history);
    assert_eq!(explanation.current_session.as_deref(), current);
    let declined = (0..SESSIONS)
        .filter(|s| session_status(&history, &format!("s{s}")) == Some(SessionStatus::Declined))
        .count();
    assert_eq!(explanation.declined_sessions as usize, declined);

    match explanation.decided_by {
        None => {
            assert!(current.is_none(), "a session but nothing decided");
            assert_eq!(row, Row::default());
        }
        Some(i) => {
            assert!(current.is_some(), "decided without a session");
            assert!(
                i < history.len(),
                "decided_by {i} outside a history of {}",
                history.len()
            );
            let decider = &history[i];
            assert!(can_decide(&row, decider), "{row:?} decided by {decider:?}");
            let session = session_of(decider);
            assert!(
                session_status(&history, session).is_some(),
                "{session} never created"
            );
            // Only an approval or a block reaches across sessions.
            if row.state != State::Verified && row.retry != Retry::Blocked {
                assert_eq!(Some(session), current, "another session decided {row:?}");
            }
        }
    }

    for input in &history {
        if let Input::Observed {
            session_id,
            observation: Observation::Decision(d),
        } = input
            && d.status.is_final()
            && let Some(status) = session_status(&history, session_id)
        {
            assert!(
                !status.is_usable_status(),
                "{session_id} {status:?} after a final decision"
            );
        }
    }

    let original = view(&history, &policy);
    assert_eq!(
        view(&shuffled(&history, case.shuffle), &policy),
        original,
        "order matters"
    );
    assert_eq!(
        view(&duplicated(&history, &case.duplicates), &policy),
        original,
        "duplicates matter"
    );
});
