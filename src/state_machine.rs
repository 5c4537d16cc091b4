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

    pub(crate) const ALL: [Self; 9] = [
        Self::Created,
        Self::Started,
        Self::Submitted,
        Self::Review,
        Self::ResubmissionRequested,
        Self::Approved,
        Self::Declined,
        Self::Expired,
        Self::Abandoned,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
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
    /// SessionCreated inputs in the history is authoritative (see `current_session`).
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

/// What a session amounts to, borrowing the winning input from the history (with its index).
#[derive(Debug, Clone, Copy)]
enum Effective<'a> {
    Created,
    Started(usize),
    Submitted(usize),
    Decided(usize, &'a Decision),
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
fn effective<'a>(observations: &[(usize, &'a Observation)], row_view: bool) -> Effective<'a> {
    let decisions = || {
        observations.iter().filter_map(|&(i, o)| match o {
            Observation::Decision(d) => Some((i, d)),
            Observation::Event(_) => None,
        })
    };
    let best = |finals: bool| {
        decisions()
            .filter(|(_, d)| d.status.is_final() == finals)
            .max_by(|(_, a), (_, b)| decision_order(a, b))
    };
    // A final decision is never overwritten, whatever arrived around it.
    if let Some((i, d)) = best(true) {
        return Effective::Decided(i, d);
    }
    // Attempts without a decision are newer than those with one: Veriff sends
    // resubmission_requested late, often after the next attempt started.
    let decided: BTreeSet<&Option<String>> = decisions().map(|(_, d)| &d.attempt_id).collect();
    let (mut started, mut submitted) = (None, None);
    for &(i, o) in observations {
        if let Observation::Event(e) = o
            && !decided.contains(&e.attempt_id)
        {
            match e.action {
                EventAction::Submitted => {
                    submitted.get_or_insert(i);
                }
                EventAction::Started if !row_view => {
                    started.get_or_insert(i);
                }
                EventAction::Started | EventAction::Other => {}
            }
        }
    }
    match (submitted, started) {
        (Some(i), _) => Effective::Submitted(i),
        (None, Some(i)) => Effective::Started(i),
        (None, None) => best(false).map_or(Effective::Created, |(i, d)| Effective::Decided(i, d)),
    }
}

/// One session of the verification, as recorded.
struct Session<'a> {
    id: &'a str,
    /// Index of its first SessionCreated input.
    created_at: usize,
    adopted: bool,
    observations: Vec<(usize, &'a Observation)>,
}

/// Sessions in SessionCreated order (first creation wins), each with its observations.
/// Observations of sessions never created are dropped.
fn sessions(history: &[Input]) -> Vec<Session<'_>> {
    let mut order: Vec<Session> = Vec::new();
    let mut observed: BTreeMap<&str, Vec<(usize, &Observation)>> = BTreeMap::new();
    for (i, input) in history.iter().enumerate() {
        match input {
            Input::SessionCreated {
                session_id,
                adopted,
            } => match order.iter_mut().find(|s| s.id == session_id) {
                // Once kyc has committed a session the user may hold its URL.
                Some(known) => known.adopted &= *adopted,
                None => order.push(Session {
                    id: session_id,
                    created_at: i,
                    adopted: *adopted,
                    observations: Vec::new(),
                }),
            },
            Input::Observed {
                session_id,
                observation,
            } => observed
                .entry(session_id)
                .or_default()
                .push((i, observation)),
        }
    }
    for session in &mut order {
        session.observations = observed.remove(session.id).unwrap_or_default();
    }
    order
}

/// Position of the current session: the newest one the user has; an adopted orphan only
/// when there is nothing else, since its URL was never handed out.
fn current(sessions: &[Session]) -> Option<usize> {
    sessions
        .iter()
        .rposition(|s| !s.adopted)
        .or_else(|| sessions.len().checked_sub(1))
}

/// The id of the current session (the one whose URL is handed out), if any.
pub fn current_session(history: &[Input]) -> Option<&str> {
    let sessions = sessions(history);
    current(&sessions).map(|i| sessions[i].id)
}

/// Which rule decided the row; drives the explanation's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The current session's own status.
    Current,
    /// The latest approval of all sessions.
    Approval,
    /// A decline with a blocking reason, later than every approval.
    BlockingReason,
    /// The latest decline, once the declined sessions reached the cap.
    Cap,
}

/// The row and what decided it: the one computation behind `compute` and `explain`.
struct Verdict<'a> {
    row: Row,
    sessions: Vec<Session<'a>>,
    /// Each session's effective status, by position.
    statuses: Vec<Effective<'a>>,
    current: usize,
    /// (session position, its effective status) of the deciding input.
    decider: (usize, Effective<'a>),
    cause: Cause,
    declined_sessions: u32,
}

fn row_of(state: State, retry: Retry, decision: Option<&Decision>) -> Row {
    Row {
        state,
        retry,
        reason_code: decision.and_then(|d| d.reason_code),
        reason: decision.and_then(|d| d.reason.clone()),
    }
}

/// The row of the current session's own status, before other sessions are considered.
fn base_row(status: Effective) -> Row {
    match status {
        Effective::Created | Effective::Started(_) => Row::default(),
        Effective::Submitted(_) => row_of(State::Pending, Retry::None, None),
        Effective::Decided(_, d) => {
            let (state, retry) = match d.status {
                DecisionStatus::Approved => (State::Verified, Retry::None),
                DecisionStatus::Review => (State::Pending, Retry::None),
                DecisionStatus::ResubmissionRequested => (State::Rejected, Retry::SameSession),
                // BLOCKED is decided across sessions, where this decline is counted too.
                DecisionStatus::Declined => (State::Rejected, Retry::NewSession),
                DecisionStatus::Expired | DecisionStatus::Abandoned => {
                    (State::Unverified, Retry::NewSession)
                }
            };
            row_of(state, retry, Some(d))
        }
    }
}

/// A session that ended approved or declined: the only outcomes that count across sessions.
#[derive(Debug, Clone, Copy)]
struct Final<'a> {
    session: usize,
    input: usize,
    decision: &'a Decision,
}

fn decide<'a>(history: &'a [Input], policy: &Policy) -> Option<Verdict<'a>> {
    let sessions = sessions(history);
    let current = current(&sessions)?;
    let statuses: Vec<Effective> = sessions
        .iter()
        .map(|s| effective(&s.observations, true))
        .collect();
    let finals: Vec<Final> = statuses
        .iter()
        .enumerate()
        .filter_map(|(session, status)| match *status {
            Effective::Decided(input, decision)
                if matches!(
                    decision.status,
                    DecisionStatus::Approved | DecisionStatus::Declined
                ) =>
            {
                Some(Final {
                    session,
                    input,
                    decision,
                })
            }
            _ => None,
        })
        .collect();
    // Identical decisions of two sessions: prefer the current one, then the newer one,
    // so the choice never depends on arrival order.
    let later = |a: &&Final, b: &&Final| {
        decision_order(a.decision, b.decision)
            .then_with(|| (a.session == current).cmp(&(b.session == current)))
            .then_with(|| a.session.cmp(&b.session))
    };
    let with = |status| move |f: &&Final| f.decision.status == status;
    let declined_sessions =
        u32::try_from(finals.iter().filter(with(DecisionStatus::Declined)).count())
            .unwrap_or(u32::MAX);
    let latest = finals.iter().max_by(later);
    let latest_approval = finals
        .iter()
        .filter(with(DecisionStatus::Approved))
        .max_by(later);
    let blocking = finals
        .iter()
        .filter(with(DecisionStatus::Declined))
        .filter(|f| {
            f.decision
                .reason_code
                .is_some_and(|c| policy.blocking_reason_codes.contains(&c))
        })
        .filter(|f| latest_approval.is_none_or(|a| later(f, &a).is_gt()))
        .max_by(later);

    let by = |f: &Final<'a>, state, retry, cause| {
        let decider = (f.session, Effective::Decided(f.input, f.decision));
        (row_of(state, retry, Some(f.decision)), decider, cause)
    };
    let (row, decider, cause) = match (latest, blocking) {
        (Some(w), _) if w.decision.status == DecisionStatus::Approved => {
            by(w, State::Verified, Retry::None, Cause::Approval)
        }
        (Some(_), Some(b)) => by(b, State::Rejected, Retry::Blocked, Cause::BlockingReason),
        (Some(w), None) if declined_sessions >= policy.max_attempts => {
            by(w, State::Rejected, Retry::Blocked, Cause::Cap)
        }
        // No final anywhere, or a decline that does not block: an older session's only
        // counts toward the cap, and the current session's is its own base row.
        _ => (
            base_row(statuses[current]),
            (current, statuses[current]),
            Cause::Current,
        ),
    };
    Some(Verdict {
        row,
        sessions,
        statuses,
        current,
        decider,
        cause,
        declined_sessions,
    })
}

/// The `verifications` row for a history, whatever order its webhooks arrived in.
pub fn compute(history: &[Input], policy: &Policy) -> Row {
    decide(history, policy).map_or_else(Row::default, |v| v.row)
}

/// Why a verification's row is what it is, for operators. Holds no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Always equal to `compute` for the same history and policy.
    pub row: Row,
    /// Index into the history of the input that decided the row; `None` without a session.
    pub decided_by: Option<usize>,
    pub current_session: Option<String>,
    pub declined_sessions: u32,
    pub max_attempts: u32,
    text: String,
}

impl Explanation {
    /// One line: `"{STATE} / {RETRY}: …"`, only session ids, statuses, reason codes, times
    /// and counts (never Veriff's reason text, which may quote the person's document).
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn describe_session(sessions: &[Session], position: usize) -> String {
    let s = &sessions[position];
    let adopted = if s.adopted { ", adopted" } else { "" };
    format!("session {} ({}{adopted})", position + 1, s.id)
}

fn describe_status(status: Effective) -> String {
    match status {
        Effective::Created => "created, no decision yet".to_owned(),
        Effective::Started(_) => "started, no decision yet".to_owned(),
        Effective::Submitted(_) => "submitted, no decision yet".to_owned(),
        Effective::Decided(_, d) => {
            let code = d.reason_code.map(|c| format!(" ({c})")).unwrap_or_default();
            let time = d.decision_time.map_or_else(
                || " without a decision time".to_owned(),
                |t| {
                    format!(
                        " at {}",
                        t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                    )
                },
            );
            format!("{}{code}{time}", d.status.as_str())
        }
    }
}

fn input_index(session: &Session, status: Effective) -> usize {
    match status {
        Effective::Created => session.created_at,
        Effective::Started(i) | Effective::Submitted(i) | Effective::Decided(i, _) => i,
    }
}

/// The row for a history together with what decided it; `row` is exactly `compute`'s.
pub fn explain(history: &[Input], policy: &Policy) -> Explanation {
    let Some(v) = decide(history, policy) else {
        let row = Row::default();
        return Explanation {
            text: format!(
                "{} / {}: no session yet",
                row.state.as_str(),
                row.retry.as_str()
            ),
            row,
            decided_by: None,
            current_session: None,
            declined_sessions: 0,
            max_attempts: policy.max_attempts,
        };
    };
    let (position, status) = v.decider;
    let mut text = format!(
        "{} / {}: {} {}",
        v.row.state.as_str(),
        v.row.retry.as_str(),
        describe_session(&v.sessions, position),
        describe_status(status)
    );
    let attempts = format!(
        "{} of {} attempts declined",
        v.declined_sessions, policy.max_attempts
    );
    match v.cause {
        Cause::Approval if v.declined_sessions > 0 => text.push_str(", later than every decline"),
        Cause::Approval => {}
        Cause::BlockingReason => text.push_str(&format!(", a blocking reason, {attempts}")),
        Cause::Cap => text.push_str(&format!(", the cap reached, {attempts}")),
        Cause::Current if v.declined_sessions > 0 => text.push_str(&format!(", {attempts}")),
        Cause::Current => {}
    }
    if position != v.current {
        text.push_str(&format!(
            "; current {} {}",
            describe_session(&v.sessions, v.current),
            describe_status(v.statuses[v.current])
        ));
    }
    Explanation {
        decided_by: Some(input_index(&v.sessions[position], status)),
        current_session: Some(v.sessions[v.current].id.to_owned()),
        row: v.row,
        declined_sessions: v.declined_sessions,
        max_attempts: policy.max_attempts,
        text,
    }
}

/// The session's own status (started included), or `None` if it was never created here.
pub fn session_status(history: &[Input], session_id: &str) -> Option<SessionStatus> {
    let session = sessions(history).into_iter().find(|s| s.id == session_id)?;
    Some(match effective(&session.observations, false) {
        Effective::Created => SessionStatus::Created,
        Effective::Started(_) => SessionStatus::Started,
        Effective::Submitted(_) => SessionStatus::Submitted,
        Effective::Decided(_, d) => match d.status {
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

    fn adopted(session: &str) -> Input {
        Input::SessionCreated {
            session_id: session.into(),
            adopted: true,
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
    fn blocking_reason_blocks_until_a_later_approval() {
        let h = vec![
            created("s1"),
            decision("s1", "a", Declined, Some(1), Some(105)),
        ];
        let blocked = row(State::Rejected, Retry::Blocked, Some(105));
        assert_eq!(run(&h), blocked);
        // A new session and everything short of an approval leave it blocked.
        let newer = [h.as_slice(), &[created("s2")]].concat();
        assert_eq!(run(&newer), blocked);
        for tail in [
            event("s2", "a", "submitted"),
            decision("s2", "a", ResubmissionRequested, Some(2), Some(201)),
            decision("s2", "a", Expired, Some(2), None),
            decision("s2", "a", Declined, Some(2), Some(102)),
        ] {
            assert_eq!(run(&[newer.as_slice(), &[tail]].concat()), blocked);
        }
        // An approval decided before the blocking decline does not unblock it...
        let earlier = decision("s2", "a", Approved, Some(0), None);
        assert_eq!(run(&[newer.as_slice(), &[earlier]].concat()), blocked);
        // ...but a later one does: among finals of different sessions the later decisionTime
        // wins, and a Veriff approval is never silently ignored (DESIGN section 6).
        let later = decision("s2", "a", Approved, Some(2), None);
        assert_eq!(
            run(&[newer.as_slice(), &[later]].concat()),
            row(State::Verified, Retry::None, None)
        );
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
    fn older_sessions_non_blocking_decline_does_not_move_row() {
        // An older session's final decline now counts (toward the cap) but, being neither
        // blocking nor an approval, leaves the current session's row; its later
        // resubmission_requested cannot overwrite the final decline.
        let h = [
            created("s1"),
            created("s2"),
            event("s2", "b", "submitted"),
            decision("s1", "a", Declined, Some(1), Some(102)),
            decision("s1", "a2", ResubmissionRequested, Some(2), Some(201)),
        ];
        assert_eq!(run(&h), row(State::Pending, Retry::None, None));
        assert_eq!(explain(&h, &Policy::default()).declined_sessions, 1);
        assert_eq!(session_status(&h, "s1"), Some(SessionStatus::Declined));
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

    #[test]
    fn older_approval_after_newer_decline_verifies() {
        let h = [
            created("s1"),
            created("s2"),
            decision("s2", "b", Declined, Some(1), Some(102)),
            decision("s1", "a", Approved, Some(2), Some(1)),
        ];
        assert_eq!(run(&h), row(State::Verified, Retry::None, Some(1)));
        assert_eq!(current_session(&h), Some("s2"));
    }

    #[test]
    fn older_approval_before_newer_decline_does_not_verify() {
        let rejected = row(State::Rejected, Retry::NewSession, Some(102));
        let h = [
            created("s1"),
            decision("s1", "a", Approved, Some(1), Some(1)),
            created("s2"),
            decision("s2", "b", Declined, Some(2), Some(102)),
        ];
        assert_eq!(run(&h), rejected);
        // Arriving last does not make it the later decision.
        let h = [
            created("s1"),
            created("s2"),
            decision("s2", "b", Declined, Some(2), Some(102)),
            decision("s1", "a", Approved, Some(1), Some(1)),
        ];
        assert_eq!(run(&h), rejected);
    }

    #[test]
    fn blocking_decline_before_an_approval_no_longer_blocks() {
        // Only declines later than the latest approval can block by their reason.
        let h = [
            created("s1"),
            decision("s1", "a", Declined, Some(1), Some(105)),
            created("s2"),
            decision("s2", "b", Approved, Some(2), None),
            created("s3"),
            decision("s3", "c", Declined, Some(3), Some(102)),
        ];
        assert_eq!(run(&h), row(State::Rejected, Retry::NewSession, Some(102)));
        // The cap still counts every declined session, before the approval or not.
        assert_eq!(
            compute(&h, &policy(2)),
            row(State::Rejected, Retry::Blocked, Some(102))
        );
    }

    #[test]
    fn older_blocking_decline_blocks_while_current_is_pending() {
        let pending = [created("s1"), created("s2"), event("s2", "b", "submitted")];
        assert_eq!(run(&pending), row(State::Pending, Retry::None, None));
        let h = [
            pending.as_slice(),
            &[decision("s1", "a", Declined, Some(1), Some(105))],
        ]
        .concat();
        assert_eq!(run(&h), row(State::Rejected, Retry::Blocked, Some(105)));
    }

    #[test]
    fn older_non_blocking_declines_count_toward_the_cap() {
        let pending = row(State::Pending, Retry::None, None);
        let mut h = vec![
            created("s1"),
            created("s2"),
            created("s3"),
            created("s4"),
            event("s4", "d", "submitted"),
            decision("s1", "a", Declined, Some(1), Some(102)),
            decision("s2", "b", Declined, Some(2), Some(103)),
        ];
        assert_eq!(run(&h), pending);
        h.push(decision("s3", "c", Declined, Some(3), Some(104)));
        // The third declined session reaches the cap: blocked with the latest decline.
        assert_eq!(run(&h), row(State::Rejected, Retry::Blocked, Some(104)));
        assert_eq!(compute(&h, &policy(4)), pending);
    }

    #[test]
    fn non_final_inputs_of_older_sessions_never_move_row() {
        let base = [
            created("s1"),
            decision("s1", "a", ResubmissionRequested, Some(1), Some(201)),
            created("s2"),
            decision("s2", "b", ResubmissionRequested, Some(1), Some(202)),
        ];
        let expected = row(State::Rejected, Retry::SameSession, Some(202));
        assert_eq!(run(&base), expected);
        for tail in [
            event("s1", "c", "started"),
            event("s1", "c", "submitted"),
            decision("s1", "c", Review, Some(5), None),
            decision("s1", "c", ResubmissionRequested, Some(5), Some(201)),
            decision("s1", "c", Expired, Some(5), None),
            decision("s1", "c", Abandoned, Some(5), None),
        ] {
            let h = [base.as_slice(), &[tail]].concat();
            assert_eq!(run(&h), expected, "{:?}", h.last());
        }
    }

    #[test]
    fn adopted_orphan_does_not_become_current() {
        let h = [
            created("s1"),
            decision("s1", "a", ResubmissionRequested, Some(1), Some(201)),
            adopted("o1"),
            event("o1", "x", "submitted"),
            decision("o1", "x", Expired, Some(2), None),
        ];
        assert_eq!(run(&h), row(State::Rejected, Retry::SameSession, Some(201)));
        assert_eq!(current_session(&h), Some("s1"));
        assert_eq!(session_status(&h, "o1"), Some(SessionStatus::Expired));
        // Had kyc committed it, it would be current and its expiry would ask for a new one.
        let committed = [&h[..2], &[created("o1")], &h[3..]].concat();
        assert_eq!(current_session(&committed), Some("o1"));
        assert_eq!(
            run(&committed),
            row(State::Unverified, Retry::NewSession, None)
        );
    }

    #[test]
    fn adopted_orphan_approval_verifies() {
        let h = [
            created("s1"),
            event("s1", "a", "submitted"),
            adopted("o1"),
            decision("o1", "x", Approved, Some(1), None),
        ];
        assert_eq!(run(&h), row(State::Verified, Retry::None, None));
        assert_eq!(current_session(&h), Some("s1"));
    }

    #[test]
    fn adopted_orphan_decline_counts() {
        let mut h = vec![
            created("s1"),
            decision("s1", "a", Declined, Some(1), Some(102)),
            created("s2"),
            decision("s2", "b", Declined, Some(2), Some(102)),
            adopted("o1"),
        ];
        assert_eq!(run(&h), row(State::Rejected, Retry::NewSession, Some(102)));
        h.push(decision("o1", "x", Declined, Some(3), Some(103)));
        assert_eq!(run(&h), row(State::Rejected, Retry::Blocked, Some(103)));
        let h = [
            created("s1"),
            event("s1", "a", "submitted"),
            adopted("o1"),
            decision("o1", "x", Declined, Some(1), Some(105)),
        ];
        assert_eq!(run(&h), row(State::Rejected, Retry::Blocked, Some(105)));
    }

    #[test]
    fn adopted_session_is_current_only_without_another() {
        assert_eq!(current_session(&[]), None);
        let h = [adopted("o1"), event("o1", "a", "submitted")];
        assert_eq!(current_session(&h), Some("o1"));
        assert_eq!(run(&h), row(State::Pending, Retry::None, None));
        let h = [adopted("o1"), adopted("o2"), event("o1", "a", "submitted")];
        assert_eq!(current_session(&h), Some("o2"));
        assert_eq!(run(&h), Row::default());
        let h = [created("s1"), adopted("o1"), adopted("o2")];
        assert_eq!(current_session(&h), Some("s1"));
        // Recorded as committed once as well: the user may hold its URL.
        let h = [created("s1"), adopted("o1"), created("o1")];
        assert_eq!(current_session(&h), Some("o1"));
    }

    #[test]
    fn explanation_names_what_decided() {
        let p = Policy::default();
        let e = explain(&[], &p);
        assert_eq!(e.row, Row::default());
        assert_eq!(e.decided_by, None);
        assert_eq!(e.current_session, None);
        assert_eq!(e.text(), "UNVERIFIED / NONE: no session yet");

        let h = [created("s1"), adopted("s2"), created("s3")];
        let e = explain(&h, &p);
        assert_eq!(e.decided_by, Some(2));
        assert_eq!(e.current_session.as_deref(), Some("s3"));
        assert_eq!(
            e.to_string(),
            "UNVERIFIED / NONE: session 3 (s3) created, no decision yet"
        );

        let h = [
            created("s1"),
            decision("s1", "a", Declined, Some(1), Some(102)),
            created("s2"),
            event("s2", "b", "started"),
            decision("s2", "b", Declined, Some(2), Some(103)),
        ];
        let e = explain(&h, &p);
        assert_eq!(e.decided_by, Some(4));
        assert_eq!((e.declined_sessions, e.max_attempts), (2, 3));
        assert_eq!(
            e.text(),
            "REJECTED / NEW_SESSION: session 2 (s2) declined (103) at 2023-11-14T22:15:20Z, \
             2 of 3 attempts declined"
        );

        let h = [
            created("s1"),
            created("s2"),
            event("s2", "b", "submitted"),
            decision("s1", "a", Declined, Some(1), Some(105)),
        ];
        let e = explain(&h, &p);
        assert_eq!(e.decided_by, Some(3));
        assert_eq!(
            e.text(),
            "REJECTED / BLOCKED: session 1 (s1) declined (105) at 2023-11-14T22:14:20Z, \
             a blocking reason, 1 of 3 attempts declined; \
             current session 2 (s2) submitted, no decision yet"
        );

        let mut h = declined_sessions(3);
        let e = explain(&h, &p);
        assert_eq!(e.decided_by, Some(5));
        assert_eq!(
            e.text(),
            "REJECTED / BLOCKED: session 3 (s2) declined (102) at 2023-11-14T22:14:20Z, \
             the cap reached, 3 of 3 attempts declined"
        );

        h.extend([adopted("o"), decision("o", "x", Approved, Some(9), None)]);
        let e = explain(&h, &p);
        assert_eq!(e.decided_by, Some(7));
        assert_eq!(
            e.text(),
            "VERIFIED / NONE: session 4 (o, adopted) approved at 2023-11-14T22:22:20Z, \
             later than every decline; current session 3 (s2) declined (102) at \
             2023-11-14T22:14:20Z"
        );

        let h = [
            created("s1"),
            decision("s1", "a", ResubmissionRequested, None, Some(201)),
        ];
        assert_eq!(
            explain(&h, &p).text(),
            "REJECTED / SAME_SESSION: session 1 (s1) resubmission_requested (201) \
             without a decision time"
        );
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
                proptest::option::of(proptest::sample::select(vec![PERSONAL_X, PERSONAL_Y])),
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

    /// Stand-ins for Veriff's reason text, which may quote personal data.
    const PERSONAL_X: &str = "Personal: Jane Doe";
    const PERSONAL_Y: &str = "Personal: passport X1234567";

    /// SessionCreated inputs (1–4, possibly repeated ids, some adopted) and Observed inputs,
    /// kept apart so the Observed ones can be permuted on their own.
    fn arb_parts() -> impl Strategy<Value = (Vec<Input>, Vec<Input>)> {
        let created = (0..4u8, proptest::bool::weighted(0.3)).prop_map(|(s, adopted)| {
            Input::SessionCreated {
                session_id: format!("s{s}"),
                adopted,
            }
        });
        (
            proptest::collection::vec(created, 1..=4),
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

    fn session_of(input: &Input) -> &str {
        match input {
            Input::SessionCreated { session_id, .. } | Input::Observed { session_id, .. } => {
                session_id
            }
        }
    }

    /// Whether `input` is the kind of input that can decide `r` (DESIGN section 6 table),
    /// reasons included.
    fn can_decide(r: &Row, input: &Input) -> bool {
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
                        (State::Rejected, Retry::Blocked | Retry::NewSession) => {
                            d.status == Declined
                        }
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
            let p = policy(max_attempts);
            prop_assert_eq!(compute(&a, &p), compute(&b, &p));
            prop_assert_eq!(statuses(&a), statuses(&b));
            prop_assert_eq!(current_session(&a), current_session(&b));
            prop_assert_eq!(explain(&a, &p).to_string(), explain(&b, &p).to_string());
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
            prop_assert_eq!(explain(&original, &p).to_string(), explain(&duplicated, &p).to_string());
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
        fn explanation_agrees_with_row(
            (created, observed) in arb_parts(),
            cuts in proptest::collection::vec(any::<Index>(), 4),
            max_attempts in 1..=4u32,
        ) {
            let h = interleave(&created, &observed, &cuts);
            let p = policy(max_attempts);
            let r = compute(&h, &p);
            let e = explain(&h, &p);
            prop_assert_eq!(&e.row, &r);
            let head = format!("{} / {}: ", r.state.as_str(), r.retry.as_str());
            prop_assert!(e.text().starts_with(&head), "{}", e);
            prop_assert!(!e.text().contains("Personal"), "{}", e);
            prop_assert_eq!(e.current_session.as_deref(), current_session(&h));
            prop_assert_eq!(e.max_attempts, max_attempts);
            let declined = statuses(&h)
                .into_iter()
                .filter(|s| *s == Some(SessionStatus::Declined))
                .count();
            prop_assert_eq!(e.declined_sessions as usize, declined);
            // There is always a session here, so something decided.
            let i = e.decided_by.expect("decided_by");
            prop_assert!(i < h.len());
            prop_assert!(can_decide(&r, &h[i]), "{r:?} decided by {:?}", h[i]);
            let session = session_of(&h[i]);
            prop_assert!(session_status(&h, session).is_some(), "{session} never created");
            // Only an approval or a block reaches across sessions.
            if r.state != State::Verified && r.retry != Retry::Blocked {
                prop_assert_eq!(Some(session), current_session(&h));
            }
        }

        #[test]
        fn other_sessions_move_row_only_by_approval_or_decline(
            (created, observed) in arb_parts(),
            cuts in proptest::collection::vec(any::<Index>(), 4),
            extra in proptest::collection::vec((arb_observed(), any::<Index>()), 1..6),
            target in any::<Index>(),
            max_attempts in 1..=4u32,
        ) {
            // The oldest session, adopted, is never current: there is always another one.
            let mut h = interleave(&created, &observed, &cuts);
            h.insert(0, adopted("s9"));
            let current = current_session(&h).map(str::to_owned);
            let others: Vec<String> = (0..4)
                .map(|s| format!("s{s}"))
                .chain(["s9".to_owned()])
                .filter(|s| session_status(&h, s).is_some() && Some(s) != current.as_ref())
                .collect();
            let s = &others[target.index(others.len())];
            let ended = matches!(
                session_status(&h, s),
                Some(SessionStatus::Approved | SessionStatus::Declined)
            );
            let mut moved = h.clone();
            for (input, at) in extra {
                let Input::Observed { observation, .. } = input else { continue };
                let keep = match &observation {
                    Observation::Event(_) => true,
                    // expired/abandoned must not replace an approval or a decline.
                    Observation::Decision(d) => !d.status.is_final()
                        || (!ended && matches!(d.status, Expired | Abandoned)),
                };
                if keep {
                    let input = Input::Observed { session_id: s.clone(), observation };
                    moved.insert(at.index(moved.len() + 1), input);
                }
            }
            let p = policy(max_attempts);
            prop_assert_eq!(compute(&moved, &p), compute(&h, &p));
            prop_assert_eq!(explain(&moved, &p).to_string(), explain(&h, &p).to_string());
        }

        #[test]
        fn orphans_never_displace_the_users_session(
            (creations, observed) in arb_parts(),
            cuts in proptest::collection::vec(any::<Index>(), 4),
            at in any::<Index>(),
        ) {
            let h = interleave(&creations, &observed, &cuts);
            let users = creations
                .iter()
                .any(|c| matches!(c, Input::SessionCreated { adopted: false, .. }));
            let mut with_orphan = h.clone();
            with_orphan.insert(at.index(h.len() + 1), adopted("s8"));
            if users {
                prop_assert_eq!(current_session(&with_orphan), current_session(&h));
            }
            // A session kyc commits is current, however many orphans came before it.
            with_orphan.push(created("s7"));
            prop_assert_eq!(current_session(&with_orphan), Some("s7"));
        }

        #[test]
        fn a_later_approval_is_never_ignored(
            (created, observed) in arb_parts(),
            cuts in proptest::collection::vec(any::<Index>(), 4),
            at in any::<Index>(),
            orphan in any::<bool>(),
            max_attempts in 1..=4u32,
        ) {
            // Generated decisions are at minutes 0–2 or untimed; this one is later than all.
            let mut h = interleave(&created, &observed, &cuts);
            let session = Input::SessionCreated { session_id: "s7".into(), adopted: orphan };
            h.insert(at.index(h.len() + 1), session);
            h.push(decision("s7", "a", Approved, Some(10), None));
            prop_assert_eq!(
                compute(&h, &policy(max_attempts)),
                row(State::Verified, Retry::None, None)
            );
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
