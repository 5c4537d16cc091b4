//! A fake of Veriff's station API for the registration tests: it records every
//! `POST /v1/sessions` (headers and JSON body) and answers as the test switches it to
//! (201, 200, 500, or never), and answers `GET /v1/sessions/{id}/decision` with a set body
//! (per session, when set for one).
//! It runs on the test's runtime (one worker, port 0) and stops when dropped.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use uuid::Uuid;

/// How the fake answers `POST /v1/sessions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 201 with a new session (what Veriff answers).
    Created,
    /// 200 with a new session (any 2xx is success).
    Ok,
    /// 500.
    Fail,
    /// Never answers.
    Hang,
}

/// A session the fake handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeSession {
    pub id: String,
    pub url: String,
    /// The access token inside `url`.
    pub token: String,
}

/// One `POST /v1/sessions` as it arrived.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when it was not JSON).
    pub body: serde_json::Value,
    /// What the fake answered with, when it created a session.
    pub created: Option<FakeSession>,
}

impl SessionRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `verification` object of the body.
    pub fn verification(&self) -> &serde_json::Map<String, serde_json::Value> {
        self.body["verification"]
            .as_object()
            .expect("the body has a `verification` object")
    }
}

/// One `GET /v1/sessions/{id}/decision` as it arrived.
#[derive(Debug, Clone)]
pub struct DecisionRequest {
    pub session_id: String,
    pub headers: Vec<(String, String)>,
}

impl DecisionRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    mode: Mode,
    /// Waited before answering a session request (to make concurrent callers overlap).
    delay: Duration,
    sessions: Vec<SessionRequest>,
    decision: (u16, serde_json::Value),
    /// Answers for particular sessions, before `decision`.
    decision_for: HashMap<String, (u16, serde_json::Value)>,
    decisions: Vec<DecisionRequest>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct FakeVeriff {
    /// What kyc's `--veriff-base-url` (or `--veriff-us-base-url`) points at.
    pub base_url: String,
    shared: Shared,
    handle: ServerHandle,
}

fn headers_of(req: &HttpRequest) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn create_session(
    req: HttpRequest,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (mode, delay, created) = {
        let mut state = shared.lock();
        let mode = state.mode;
        let created = matches!(mode, Mode::Created | Mode::Ok).then(|| {
            let token = format!("vrftok{}", Uuid::new_v4().simple());
            FakeSession {
                id: Uuid::new_v4().to_string(),
                url: format!("https://alchemy.veriff.example/v/{token}"),
                token,
            }
        });
        state.sessions.push(SessionRequest {
            headers: headers_of(&req),
            body: body.clone(),
            created: created.clone(),
        });
        (mode, state.delay, created)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let Some(session) = created else {
        if mode == Mode::Hang {
            std::future::pending::<()>().await;
        }
        return HttpResponse::InternalServerError()
            .json(serde_json::json!({"status": "fail", "message": "Internal server error"}));
    };
    let answer = serde_json::json!({
        "status": "success",
        "verification": {
            "id": session.id,
            "url": session.url,
            "vendorData": body["verification"]["vendorData"],
            "host": "https://alchemy.veriff.example",
            "status": "created",
            "sessionToken": session.token,
        }
    });
    match mode {
        Mode::Ok => HttpResponse::Ok().json(answer),
        _ => HttpResponse::Created().json(answer),
    }
}

async fn decision(
    req: HttpRequest,
    id: web::Path<String>,
    shared: web::Data<Shared>,
) -> HttpResponse {
    let mut state = shared.lock();
    let session_id = id.into_inner();
    let (status, body) = state
        .decision_for
        .get(&session_id)
        .unwrap_or(&state.decision)
        .clone();
    state.decisions.push(DecisionRequest {
        session_id,
        headers: headers_of(&req),
    });
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status).expect("a valid decision status"),
    )
    .json(body)
}

impl FakeVeriff {
    /// Starts the fake on 127.0.0.1:0, answering 201 with new sessions.
    pub async fn start() -> Self {
        let shared = Shared(Arc::new(Mutex::new(State {
            mode: Mode::Created,
            delay: Duration::ZERO,
            sessions: Vec::new(),
            decision: (
                200,
                serde_json::json!({"status": "success", "verification": null}),
            ),
            decision_for: HashMap::new(),
            decisions: Vec::new(),
        })));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake Veriff");
        let base_url = format!(
            "http://{}",
            listener.local_addr().expect("the fake's address")
        );
        let data = web::Data::new(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/sessions", web::post().to(create_session))
                .route("/v1/sessions/{id}/decision", web::get().to(decision))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("the fake Veriff listens")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            base_url,
            shared,
            handle,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Waits this long before answering each session request.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// What `GET /v1/sessions/{id}/decision` answers.
    pub fn set_decision(&self, status: u16, body: serde_json::Value) {
        self.shared.lock().decision = (status, body);
    }

    /// What `GET /v1/sessions/{id}/decision` answers for this session (others get the
    /// answer of `set_decision`).
    pub fn set_decision_for(&self, session_id: &str, status: u16, body: serde_json::Value) {
        self.shared
            .lock()
            .decision_for
            .insert(session_id.to_owned(), (status, body));
    }

    /// Every `POST /v1/sessions` so far, oldest first.
    pub fn session_requests(&self) -> Vec<SessionRequest> {
        self.shared.lock().sessions.clone()
    }

    /// Every `GET /v1/sessions/{id}/decision` so far, oldest first.
    pub fn decision_requests(&self) -> Vec<DecisionRequest> {
        self.shared.lock().decisions.clone()
    }

    /// The sessions the fake created, oldest first.
    pub fn created(&self) -> Vec<FakeSession> {
        self.session_requests()
            .into_iter()
            .filter_map(|r| r.created)
            .collect()
    }
}

impl Drop for FakeVeriff {
    fn drop(&mut self) {
        // The stop command is sent now; the server task (on the test's runtime, whose other
        // workers keep running while this thread waits) carries it out.
        let stopped = self.handle.stop(false);
        let waiter = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), stopped).await;
            });
        });
        let _ = waiter.join();
    }
}
