//! The `verifications` row as a pure function of a verification's recorded inputs
//! (DESIGN.md section 6). Pure so that any redelivery or replay can recompute it, and so
//! that the result cannot depend on the order or multiplicity of webhooks.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Unverified,
    Pending,
    Verified,
    Rejected,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Unverified => "UNVERIFIED",
            State::Pending => "PENDING",
            State::Verified => "VERIFIED",
            State::Rejected => "REJECTED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Retry {
    None,
    SameSession,
    NewSession,
    Blocked,
}

impl Retry {
    pub fn as_str(&self) -> &'static str {
        match self {
            Retry::None => "NONE",
            Retry::SameSession => "SAME_SESSION",
            Retry::NewSession => "NEW_SESSION",
            Retry::Blocked => "BLOCKED",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecisionStatus {
    Approved,
    Declined,
    ResubmissionRequested,
    Review,
    Expired,
    Abandoned,
}

impl DecisionStatus {
    /// `None` for a status Veriff may add later: the caller dead-letters it (`UNKNOWN_STATUS`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "approved" => Self::Approved,
            "declined" => Self::Declined,
            "resubmission_requested" => Self::ResubmissionRequested,
            "review" => Self::Review,
            "expired" => Self::Expired,
            "abandoned" => Self::Abandoned,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::ResubmissionRequested => "resubmission_requested",
            Self::Review => "review",
            Self::Expired => "expired",
            Self::Abandoned => "abandoned",
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Approved | Self::Declined | Self::Expired | Self::Abandoned
        )
    }

    /// Tie-break among decisions with the same time; deliberately not the declaration order.
    fn rank(&self) -> u8 {
        match self {
            Self::Approved => 5,
            Self::Declined => 4,
            Self::ResubmissionRequested => 3,
            Self::Review => 2,
            Self::Expired => 1,
            Self::Abandoned => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventAction {
    Started,
    Submitted,
    Other,
}

impl EventAction {
    /// Veriff adds event types without notice; unknown ones are recorded but move nothing.
    pub fn parse(s: &str) -> Self {
        match s {
            "started" => Self::Started,
            "submitted" => Self::Submitted,
            _ => Self::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionStatus {
    Created,
    Started,
    Submitted,
    Review,
    ResubmissionRequested,
    Approved,
    Declined,
    Expired,
    Abandoned,
}

impl SessionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Started => "started",
            Self::Submitted => "submitted",
            Self::Review => "review",
            Self::ResubmissionRequested => "resubmission_requested",
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::Expired => "expired",
            Self::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Created,
            Self::Started,
            Self::Submitted,
            Self::Review,
            Self::ResubmissionRequested,
            Self::Approved,
            Self::Declined,
            Self::Expired,
            Self::Abandoned,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }

    /// Whether the session's URL may still be handed out (DESIGN.md section 4).
    pub fn is_usable_status(&self) -> bool {
        matches!(
            self,
            Self::Created
                | Self::Started
                | Self::Submitted
                | Self::Review
                | Self::ResubmissionRequested
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decision {
    pub attempt_id: Option<String>,
    pub status: DecisionStatus,
    pub decision_time: Option<DateTime<Utc>>,
    pub reason_code: Option<i32>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    pub attempt_id: Option<String>,
    pub action: EventAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Observation {
    Event(Event),
    Decision(Decision),
}

/// One recorded input of a verification, in the order it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// A Veriff session was created (or adopted) for this verification. The order of
    /// SessionCreated inputs in the history is authoritative (the newest one is the current session).
    SessionCreated {
        session_id: String,
        /// Adopted through `vendorData`: Veriff has it but kyc never committed it, so the
        /// user never saw its URL (`inputs.source = 'adopted'`).
        adopted: bool,
    },
    /// A webhook (or reconciliation answer) about one session.
    Observed {
        session_id: String,
        observation: Observation,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub max_attempts: u32,
    pub blocking_reason_codes: BTreeSet<i32>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            blocking_reason_codes: (105..=113)
                .chain([127, 503, 504, 505, 507, 515, 526])
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Row {
    pub state: State,
    pub retry: Retry,
    pub reason_code: Option<i32>,
    pub reason: Option<String>,
}

impl Default for Row {
    fn default() -> Self {
        Self {
            state: State::Unverified,
            retry: Retry::None,
            reason_code: None,
            reason: None,
        }
    }
}

/// What a session amounts to, borrowing the winning decision from the history.
#[derive(Debug, Clone, Copy)]
enum Effective<'a> {
    Created,
    Started,
    Submitted,
    Decided(&'a Decision),
}

/// A total order on decisions so the winner never depends on arrival order; the reason
/// fields only break ties between otherwise identical decisions.
fn decision_order(a: &Decision, b: &Decision) -> Ordering {
    (a.decision_time, a.status.rank(), &a.attempt_id)
        .cmp(&(b.decision_time, b.status.rank(), &b.attempt_id))
        .then_with(|| (a.reason_code, &a.reason).cmp(&(b.reason_code, &b.reason)))
}

/// A session's effective status. `row_view` ignores `started` events, which the contract
/// says leave the row unchanged (e.g. attempt B starting after A's resubmission_requested).
fn effective<'a>(observations: &[&'a Observation], row_view: bool) -> Effective<'a> {
    let decisions = || {
        observations.iter().filter_map(|o| match o {
            Observation::Decision(d) => Some(d),
            Observation::Event(_) => None,
        })
    };
    let best = |finals: bool| {
        decisions()
            .filter(|d| d.status.is_final() == finals)
            .max_by(|a, b| decision_order(a, b))
    };
    // A final decision is never overwritten, whatever arrived around it.
    if let Some(d) = best(true) {
        return Effective::Decided(d);
    }
    // Attempts without a decision are newer than those with one: Veriff sends
    // resubmission_requested late, often after the next attempt started.
    let decided: BTreeSet<&Option<String>> = decisions().map(|d| &d.attempt_id).collect();
    let (mut started, mut submitted) = (false, false);
    for o in observations {
        if let Observation::Event(e) = o
            && !decided.contains(&e.attempt_id)
        {
            match e.action {
                EventAction::Submitted => submitted = true,
                EventAction::Started => started |= !row_view,
                EventAction::Other => {}
            }
        }
    }
    if submitted {
        Effective::Submitted
    } else if started {
        Effective::Started
    } else {
        best(false).map_or(Effective::Created, Effective::Decided)
    }
}

/// Sessions in SessionCreated order (first creation wins), each with its observations.
/// Observations of sessions never created are dropped.
fn sessions(history: &[Input]) -> Vec<(&str, Vec<&Observation>)> {
    let mut order: Vec<&str> = Vec::new();
    let mut observed: BTreeMap<&str, Vec<&Observation>> = BTreeMap::new();
    for input in history {
        match input {
            Input::SessionCreated { session_id, .. } => {
                if !order.contains(&session_id.as_str()) {
                    order.push(session_id);
                }
            }
            Input::Observed {
                session_id,
                observation,
            } => observed.entry(session_id).or_default().push(observation),
        }
    }
    order
        .into_iter()
        .map(|id| (id, observed.remove(id).unwrap_or_default()))
        .collect()
}

fn decision_row(d: &Decision, declined_sessions: u32, policy: &Policy) -> Row {
    let (state, retry) = match d.status {
        DecisionStatus::Approved => (State::Verified, Retry::None),
        DecisionStatus::Review => (State::Pending, Retry::None),
        DecisionStatus::ResubmissionRequested => (State::Rejected, Retry::SameSession),
        DecisionStatus::Expired | DecisionStatus::Abandoned => {
            (State::Unverified, Retry::NewSession)
        }
        DecisionStatus::Declined => {
            let blocking = d
                .reason_code
                .is_some_and(|c| policy.blocking_reason_codes.contains(&c));
            if blocking || declined_sessions >= policy.max_attempts {
                (State::Rejected, Retry::Blocked)
            } else {
                (State::Rejected, Retry::NewSession)
            }
        }
    };
    Row {
        state,
        retry,
        reason_code: d.reason_code,
        reason: d.reason.clone(),
    }
}

/// The `verifications` row for a history, whatever order its webhooks arrived in.
pub fn compute(history: &[Input], policy: &Policy) -> Row {
    let mut row = Row::default();
    let mut declined_sessions = 0u32;
    for (_, observations) in sessions(history) {
        // Finals win in both views, so the row view is enough to count declines.
        let status = effective(&observations, true);
        let decided = match status {
            Effective::Decided(d) => Some(d),
            _ => None,
        };
        if decided.is_some_and(|d| d.status == DecisionStatus::Declined) {
            declined_sessions += 1;
        }
        if row.state == State::Verified {
            // Re-verification: only its approval or decline can move a verified row.
            if let Some(d) = decided.filter(|d| {
                matches!(
                    d.status,
                    DecisionStatus::Approved | DecisionStatus::Declined
                )
            }) {
                row = decision_row(d, declined_sessions, policy);
            }
        } else if row.retry == Retry::Blocked {
            // Blocked sticks through every later session, whatever they say.
        } else {
            row = match status {
                Effective::Created | Effective::Started => Row::default(),
                Effective::Submitted => Row {
                    state: State::Pending,
                    ..Row::default()
                },
                Effective::Decided(d) => decision_row(d, declined_sessions, policy),
            };
        }
    }
    row
}

/// The session's own status (started included), or `None` if it was never created here.
pub fn session_status(history: &[Input], session_id: &str) -> Option<SessionStatus> {
    let (_, observations) = sessions(history)
        .into_iter()
        .find(|(id, _)| *id == session_id)?;
    Some(match effective(&observations, false) {
        Effective::Created => SessionStatus::Created,
        Effective::Started => SessionStatus::Started,
        Effective::Submitted => SessionStatus::Submitted,
        Effective::Decided(d) => match d.status {
            DecisionStatus::Approved => SessionStatus::Approved,
            DecisionStatus::Declined => SessionStatus::Declined,
            DecisionStatus::ResubmissionRequested => SessionStatus::ResubmissionRequested,
            DecisionStatus::Review => SessionStatus::Review,
            DecisionStatus::Expired => SessionStatus::Expired,
            DecisionStatus::Abandoned => SessionStatus::Abandoned,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use DecisionStatus::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    fn at(minute: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_700_000_000 + minute * 60, 0)
    }

    fn created(session: &str) -> Input {
        Input::SessionCreated {
            session_id: session.into(),
            adopted: false,
        }
    }

    fn event(session: &str, attempt: &str, action: &str) -> Input {
        Input::Observed {
            session_id: session.into(),
            observation: Observation::Event(Event {
                attempt_id: Some(attempt.into()),
                action: EventAction::parse(action),
            }),
        }
    }

    fn decision(
        session: &str,
        attempt: &str,
        status: DecisionStatus,
        minute: Option<i64>,
        code: Option<i32>,
    ) -> Input {
        Input::Observed {
            session_id: session.into(),
            observation: Observation::Decision(Decision {
                attempt_id: Some(attempt.into()),
                status,
                decision_time: minute.and_then(at),
                reason_code: code,
                reason: code.map(|c| format!("reason {c}")),
            }),
        }
    }

    fn row(state: State, retry: Retry, code: Option<i32>) -> Row {
        Row {
            state,
            retry,
            reason_code: code,
            reason: code.map(|c| format!("reason {c}")),
        }
    }

    fn run(history: &[Input]) -> Row {
        compute(history, &Policy::default())
    }

    /// One session per element, each declined with a non-blocking reason.
    fn declined_sessions(n: usize) -> Vec<Input> {
        (0..n)
            .flat_map(|i| {
                let s = format!("s{i}");
                [created(&s), decision(&s, "a", Declined, Some(1), Some(102))]
            })
            .collect()
    }

    #[test]
    fn strings_round_trip() {
        for s in [
            Approved,
            Declined,
            ResubmissionRequested,
            Review,
            Expired,
            Abandoned,
        ] {
            assert_eq!(DecisionStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(DecisionStatus::parse("approved_maybe"), None);
        assert_eq!(EventAction::parse("started"), EventAction::Started);
        assert_eq!(EventAction::parse("submitted"), EventAction::Submitted);
        assert_eq!(EventAction::parse("photo_taken"), EventAction::Other);
        assert_eq!(State::Verified.as_str(), "VERIFIED");
        assert_eq!(Retry::SameSession.as_str(), "SAME_SESSION");
        assert_eq!(
            SessionStatus::ResubmissionRequested.as_str(),
            "resubmission_requested"
        );
        assert!(SessionStatus::Review.is_usable_status());
        assert!(!SessionStatus::Expired.is_usable_status());
        assert!(Expired.is_final() && !Review.is_final());
    }

    #[test]
    fn fresh_session_is_unverified_created() {
        let h = [created("s1")];
        assert_eq!(run(&h), Row::default());
        assert_eq!(session_status(&h, "s1"), Some(SessionStatus::Created));
        assert_eq!(session_status(&h, "nope"), None);
        assert_eq!(run(&[]), Row::default());
    }

    #[test]
    fn started_leaves_row_unchanged() {
        let h = [created("s1"), event("s1", "a", "started")];
        assert_eq!(run(&h), Row::default());
        assert_eq!(session_status(&h, "s1"), Some(SessionStatus::Started));
    }

    #[test]
    fn submitted_and_review_are_pending() {
        let h = [created("s1"), event("s1", "a", "submitted")];
        assert_eq!(run(&h), row(State::Pending, Retry::None, None));
        assert_eq!(session_status(&h, "s1"), Some(SessionStatus::Submitted));
        let h = [created("s1"), decision("s1", "a", Review, Some(1), None)];
        assert_eq!(run(&h), row(State::Pending, Retry::None, None));
        assert_eq!(session_status(&h, "s1"), Some(SessionStatus::Review));
    }

    #[test]
    fn approved_is_verified() {
        let h = [created("s1"), decision("s1", "a", Approved, Some(1), None)];
        assert_eq!(run(&h), row(State::Verified, Retry::None, None));
    }

    #[test]
    fn resubmission_requested_is_same_session() {
        let h = [
            created("s1"),
            decision("s1", "a", ResubmissionRequested, Some(1), Some(201)),
        ];
        assert_eq!(run(&h), row(State::Rejected, Retry::SameSession, Some(201)));
        // The usual flow: the decided attempt's own events are older than its decision.
        let h = [
            created("s1"),
            event("s1", "a", "started"),
            event("s1", "a", "submitted"),
            decision("s1", "a", ResubmissionRequested, Some(1), Some(201)),
        ];
        assert_eq!(run(&h), row(State::Rejected, Retry::SameSession, Some(201)));
        assert_eq!(
            session_status(&h, "s1"),
            Some(SessionStatus::ResubmissionRequested)
        );
    }

    #[test]
    fn non_blocking_decline_is_new_session() {
        let h = declined_sessions(1);
        assert_eq!(run(&h), row(State::Rejected, Retry::NewSession, Some(102)));
    }

    #[test]
    fn decline_count_reaching_max_attempts_blocks() {
        assert_eq!(
            run(&declined_sessions(2)),
            row(State::Rejected, Retry::NewSession, Some(102))
        );
        assert_eq!(
            run(&declined_sessions(3)),
            row(State::Rejected, Retry::Blocked, Some(102))
        );
    }

    #[test]
    fn blocking_reason_blocks_for_good() {
        let mut h = vec![
            created("s1"),
            decision("s1", "a", Declined, Some(1), Some(105)),
        ];
        assert_eq!(run(&h), row(State::Rejected, Retry::Blocked, Some(105)));
        h.extend([created("s2"), decision("s2", "a", Approved, Some(2), None)]);
        assert_eq!(run(&h), row(State::Rejected, Retry::Blocked, Some(105)));
    }

    #[test]
    fn expired_and_abandoned_are_new_session() {
        for status in [Expired, Abandoned] {
            let h = [created("s1"), decision("s1", "a", status, Some(1), None)];
            assert_eq!(run(&h), row(State::Unverified, Retry::NewSession, None));
        }
    }

    #[test]
    fn unknown_event_leaves_row_unchanged() {
        let h = [created("s1"), event("s1", "a", "photo_taken")];
        assert_eq!(run(&h), Row::default());
        assert_eq!(session_status(&h, "s1"), Some(SessionStatus::Created));
        let h = [
            created("s1"),
            event("s1", "a", "submitted"),
            event("s1", "b", "photo_taken"),
        ];
        assert_eq!(run(&h), row(State::Pending, Retry::None, None));
    }

    #[test]
    fn started_after_resubmission_requested_keeps_rejected() {
        let h = [
            created("s1"),
            decision("s1", "a", ResubmissionRequested, Some(1), Some(201)),
            event("s1", "b", "started"),
        ];
        assert_eq!(run(&h), row(State::Rejected, Retry::SameSession, Some(201)));
        assert_eq!(session_status(&h, "s1"), Some(SessionStatus::Started));
    }

    #[test]
    fn resubmission_arriving_after_next_attempt_started() {
        let h = [
            created("s1"),
            event("s1", "a", "submitted"),
            event("s1", "b", "started"),
            event("s1", "b", "submitted"),
            decision("s1", "a", ResubmissionRequested, Some(1), Some(201)),
        ];
        assert_eq!(run(&h), row(State::Pending, Retry::None, None));
        assert_eq!(session_status(&h, "s1"), Some(SessionStatus::Submitted));
    }

    #[test]
    fn review_then_approved_either_order() {
        let review = decision("s1", "a", Review, Some(1), None);
        let approved = decision("s1", "a", Approved, Some(2), None);
        let expected = row(State::Verified, Retry::None, None);
        assert_eq!(
            run(&[created("s1"), review.clone(), approved.clone()]),
            expected
        );
        assert_eq!(run(&[created("s1"), approved, review]), expected);
    }

    #[test]
    fn late_event_after_final_decision_changes_nothing() {
        let h = [
            created("s1"),
            decision("s1", "a", Approved, Some(1), None),
            event("s1", "b", "submitted"),
            decision("s1", "b", Review, Some(5), None),
        ];
        assert_eq!(run(&h), row(State::Verified, Retry::None, None));
        assert_eq!(session_status(&h, "s1"), Some(SessionStatus::Approved));
    }

    #[test]
    fn decision_for_older_session_does_not_move_row() {
        let h = [
            created("s1"),
            created("s2"),
            event("s2", "b", "submitted"),
            decision("s1", "a", Declined, Some(1), Some(102)),
            decision("s1", "a2", ResubmissionRequested, Some(2), Some(201)),
        ];
        assert_eq!(run(&h), row(State::Pending, Retry::None, None));
    }

    #[test]
    fn new_session_resets_row_and_reasons() {
        let mut h = declined_sessions(1);
        h.push(created("s9"));
        assert_eq!(run(&h), Row::default());
    }

    #[test]
    fn observations_of_unknown_and_duplicate_sessions() {
        let h = [
            created("s1"),
            created("s2"),
            created("s1"),
            decision("s1", "a", Expired, Some(1), None),
            decision("ghost", "a", Approved, Some(1), None),
        ];
        // s2 stays current: the second creation of s1 is ignored.
        assert_eq!(run(&h), Row::default());
        assert_eq!(session_status(&h, "ghost"), None);
    }

    #[test]
    fn reverification_kept_verified_until_final_decision() {
        let base = [
            created("s1"),
            decision("s1", "a", Approved, Some(1), Some(1)),
            created("s2"),
        ];
        let verified = row(State::Verified, Retry::None, Some(1));
        assert_eq!(run(&base), verified);
        for tail in [
            event("s2", "b", "submitted"),
            decision("s2", "b", ResubmissionRequested, Some(2), Some(201)),
            decision("s2", "b", Expired, Some(2), None),
            decision("s2", "b", Abandoned, Some(2), None),
        ] {
            assert_eq!(run(&[base.as_slice(), &[tail]].concat()), verified);
        }
        let approved = decision("s2", "b", Approved, Some(2), None);
        assert_eq!(
            run(&[base.as_slice(), &[approved]].concat()),
            row(State::Verified, Retry::None, None)
        );
        let declined = decision("s2", "b", Declined, Some(2), Some(102));
        assert_eq!(
            run(&[base.as_slice(), &[declined]].concat()),
            row(State::Rejected, Retry::NewSession, Some(102))
        );
    }

    #[test]
    fn ties_broken_by_rank_then_attempt_id() {
        let h = [
            created("s1"),
            decision("s1", "a", Declined, Some(1), Some(102)),
            decision("s1", "a", Approved, Some(1), None),
        ];
        assert_eq!(run(&h), row(State::Verified, Retry::None, None));
        let h = [
            created("s1"),
            decision("s1", "b", Declined, None, Some(103)),
            decision("s1", "a", Declined, None, Some(102)),
        ];
        assert_eq!(run(&h), row(State::Rejected, Retry::NewSession, Some(103)));
    }

    #[test]
    fn later_decision_time_wins() {
        let h = [
            created("s1"),
            decision("s1", "b", Declined, Some(2), Some(102)),
            decision("s1", "a", Approved, Some(1), None),
            decision("s1", "c", Approved, None, None),
        ];
        assert_eq!(run(&h), row(State::Rejected, Retry::NewSession, Some(102)));
    }

    fn arb_observed() -> impl Strategy<Value = Input> {
        let attempt = || proptest::option::of((0..3u8).prop_map(|a| format!("a{a}")));
        let action = prop_oneof![
            Just(EventAction::Started),
            Just(EventAction::Submitted),
            Just(EventAction::Other),
        ];
        let status = proptest::sample::select(vec![
            Approved,
            Declined,
            ResubmissionRequested,
            Review,
            Expired,
            Abandoned,
        ]);
        let observation = prop_oneof![
            (attempt(), action)
                .prop_map(|(attempt_id, action)| Observation::Event(Event { attempt_id, action })),
            (
                attempt(),
                status,
                proptest::option::of(0..3i64),
                proptest::option::of(proptest::sample::select(vec![102, 105, 503])),
                proptest::option::of(proptest::sample::select(vec!["x", "y"])),
            )
                .prop_map(|(attempt_id, status, minute, reason_code, reason)| {
                    Observation::Decision(Decision {
                        attempt_id,
                        status,
                        decision_time: minute.and_then(at),
                        reason_code,
                        reason: reason.map(String::from),
                    })
                }),
        ];
        // "s4" is never created, so its observations must be ignored.
        (0..5u8, observation).prop_map(|(s, observation)| Input::Observed {
            session_id: format!("s{s}"),
            observation,
        })
    }

    /// SessionCreated inputs (1–4, possibly repeated ids) and Observed inputs, kept apart so
    /// the Observed ones can be permuted on their own.
    fn arb_parts() -> impl Strategy<Value = (Vec<Input>, Vec<Input>)> {
        (
            proptest::collection::vec((0..4u8).prop_map(|s| created(&format!("s{s}"))), 1..=4),
            proptest::collection::vec(arb_observed(), 0..14),
        )
    }

    fn interleave(created: &[Input], observed: &[Input], cuts: &[Index]) -> Vec<Input> {
        let mut positions: Vec<usize> = cuts.iter().map(|c| c.index(observed.len() + 1)).collect();
        positions.sort_unstable();
        let mut out = observed.to_vec();
        for (i, c) in created.iter().enumerate().rev() {
            out.insert(positions[i], c.clone());
        }
        out
    }

    fn policy(max_attempts: u32) -> Policy {
        Policy {
            max_attempts,
            ..Policy::default()
        }
    }

    fn statuses(history: &[Input]) -> Vec<Option<SessionStatus>> {
        (0..5)
            .map(|s| session_status(history, &format!("s{s}")))
            .collect()
    }

    proptest! {
        #[test]
        fn observed_order_does_not_matter(
            (created, observed, shuffled) in arb_parts().prop_flat_map(|(c, o)| {
                (Just(c), Just(o.clone()), Just(o).prop_shuffle())
            }),
            cuts_a in proptest::collection::vec(any::<Index>(), 4),
            cuts_b in proptest::collection::vec(any::<Index>(), 4),
            max_attempts in 1..=4u32,
        ) {
            let a = interleave(&created, &observed, &cuts_a);
            let b = interleave(&created, &shuffled, &cuts_b);
            prop_assert_eq!(compute(&a, &policy(max_attempts)), compute(&b, &policy(max_attempts)));
            prop_assert_eq!(statuses(&a), statuses(&b));
        }

        #[test]
        fn duplicates_do_not_matter(
            (created, observed) in arb_parts(),
            cuts in proptest::collection::vec(any::<Index>(), 4),
            dups in proptest::collection::vec((any::<Index>(), any::<Index>()), 1..6),
            max_attempts in 1..=4u32,
        ) {
            let original = interleave(&created, &observed, &cuts);
            let mut duplicated = original.clone();
            if !observed.is_empty() {
                for (which, at) in &dups {
                    let copy = observed[which.index(observed.len())].clone();
                    duplicated.insert(at.index(duplicated.len() + 1), copy);
                }
            }
            let p = policy(max_attempts);
            prop_assert_eq!(compute(&original, &p), compute(&duplicated, &p));
            prop_assert_eq!(statuses(&original), statuses(&duplicated));
        }

        #[test]
        fn final_decision_means_final_status(
            (created, observed) in arb_parts(),
            cuts in proptest::collection::vec(any::<Index>(), 4),
        ) {
            let history = interleave(&created, &observed, &cuts);
            for input in &observed {
                if let Input::Observed { session_id, observation: Observation::Decision(d) } = input
                    && d.status.is_final()
                    && let Some(status) = session_status(&history, session_id)
                {
                    prop_assert!(!status.is_usable_status(), "{session_id}: {status:?}");
                }
            }
        }

        #[test]
        fn row_is_always_consistent(
            (created, observed) in arb_parts(),
            cuts in proptest::collection::vec(any::<Index>(), 4),
            max_attempts in 1..=4u32,
        ) {
            let r = compute(&interleave(&created, &observed, &cuts), &policy(max_attempts));
            let ok = match r.state {
                State::Unverified => matches!(r.retry, Retry::None | Retry::NewSession),
                State::Pending | State::Verified => r.retry == Retry::None,
                State::Rejected => r.retry != Retry::None,
            };
            prop_assert!(ok, "{r:?}");
        }
    }
}
