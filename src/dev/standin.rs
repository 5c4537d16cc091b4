//! A local stand-in for Veriff, mounted by `kyc run --dev` so the whole flow runs on one
//! machine without a Veriff account: it creates sessions, shows a page where a person picks
//! an outcome, and sends the matching signed event and decision webhooks to the receiver,
//! as Veriff would. It only ever exists on loopback with public development secrets.

use std::collections::HashMap;
use std::sync::Mutex;

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use uuid::Uuid;

use crate::veriff::signature::sign;

pub struct StandIn {
    /// Where the receiver listens (this same server).
    base: String,
    api_key: SecretString,
    secret: SecretString,
    http: reqwest::Client,
    sessions: Mutex<HashMap<String, Session>>,
}

#[derive(Clone)]
struct Session {
    vendor_data: Option<String>,
    callback: Option<String>,
    decision: Option<Vec<u8>>,
}

#[derive(Deserialize)]
struct CreateBody {
    verification: Option<CreateVerification>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateVerification {
    callback: Option<String>,
    vendor_data: Option<String>,
}

#[derive(Clone, Copy)]
enum Choice {
    Approve,
    Decline,
    Resubmit,
    Abandon,
}

impl Choice {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(Choice::Approve),
            "decline" => Some(Choice::Decline),
            "resubmit" => Some(Choice::Resubmit),
            "abandon" => Some(Choice::Abandon),
            _ => None,
        }
    }

    /// Veriff's status, code and reason for this outcome.
    fn decision(self) -> (&'static str, u32, Option<(i32, &'static str)>) {
        match self {
            Choice::Approve => ("approved", 9001, None),
            Choice::Decline => (
                "declined",
                9102,
                Some((102, "Suspected document tampering")),
            ),
            Choice::Resubmit => (
                "resubmission_requested",
                9103,
                Some((204, "Poor image quality")),
            ),
            Choice::Abandon => ("abandoned", 9104, None),
        }
    }
}

impl StandIn {
    pub fn new(
        base: String,
        api_key: SecretString,
        secret: SecretString,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            base,
            api_key,
            secret,
            http: crate::tls::client_builder().build()?,
            sessions: Mutex::default(),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Signs and posts a webhook to the receiver; returns its HTTP status.
    async fn deliver(&self, kind: &str, body: Vec<u8>) -> Result<u16, reqwest::Error> {
        let signature = sign(&self.secret, &body);
        let response = self
            .http
            .post(format!("{}/webhooks/veriff/{kind}", self.base))
            .header("content-type", "application/json")
            .header("x-auth-client", self.api_key.expose_secret())
            .header("x-hmac-signature", signature)
            .body(body)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    use crate::http::endpoint;
    use actix_web::http::Method;
    cfg.service(endpoint("/dev/veriff/v1/sessions", Method::POST, create))
        .service(endpoint(
            "/dev/veriff/v1/sessions/{id}/decision",
            Method::GET,
            decision,
        ))
        .service(endpoint("/dev/veriff/v/{id}", Method::GET, page))
        .service(endpoint(
            "/dev/veriff/v/{id}/{choice}",
            Method::POST,
            choose,
        ))
        .service(endpoint("/dev/done", Method::GET, done));
}

async fn create(
    req: HttpRequest,
    body: web::Json<CreateBody>,
    standin: web::Data<StandIn>,
) -> HttpResponse {
    let client = req
        .headers()
        .get("x-auth-client")
        .and_then(|v| v.to_str().ok());
    if client != Some(standin.api_key.expose_secret()) {
        return HttpResponse::Unauthorized()
            .json(serde_json::json!({"status": "fail", "code": 1801}));
    }
    let verification = body.into_inner().verification;
    let id = Uuid::new_v4().to_string();
    let session = Session {
        vendor_data: verification.as_ref().and_then(|v| v.vendor_data.clone()),
        callback: verification.and_then(|v| v.callback),
        decision: None,
    };
    standin.sessions().insert(id.clone(), session.clone());
    let token = Uuid::new_v4().simple().to_string();
    HttpResponse::Created().json(serde_json::json!({
        "status": "success",
        "verification": {
            "id": id,
            "url": format!("{}/dev/veriff/v/{id}?token={token}", standin.base),
            "vendorData": session.vendor_data,
            "host": standin.base,
            "status": "created",
            "sessionToken": token,
        }
    }))
}

async fn decision(path: web::Path<String>, standin: web::Data<StandIn>) -> HttpResponse {
    let id = path.into_inner();
    let stored = standin.sessions().get(&id).map(|s| s.decision.clone());
    match stored {
        None => HttpResponse::NotFound().json(serde_json::json!({"status": "fail"})),
        Some(Some(body)) => HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(body),
        Some(None) => {
            HttpResponse::Ok().json(serde_json::json!({"status": "success", "verification": null}))
        }
    }
}

async fn page(path: web::Path<String>, standin: web::Data<StandIn>) -> HttpResponse {
    let id = path.into_inner();
    if !standin.sessions().contains_key(&id) {
        return html(
            "Unknown session",
            "<p>This session does not exist (the stand-in forgets sessions when kyc restarts).</p>",
        );
    }
    let button = |choice: &str, label: &str| {
        format!(
            r#"<form method="post" action="/dev/veriff/v/{id}/{choice}"><button id="{choice}" type="submit">{label}</button></form>"#
        )
    };
    let body = format!(
        "<p>Development stand-in for Veriff. Session <code>{id}</code>.</p><p>Choose the outcome:</p>{}{}{}{}",
        button("approve", "Approve"),
        button("decline", "Decline"),
        button("resubmit", "Request resubmission"),
        button("abandon", "Abandon"),
    );
    html("Verify your identity (development)", &body)
}

async fn choose(path: web::Path<(String, String)>, standin: web::Data<StandIn>) -> HttpResponse {
    let (id, choice) = path.into_inner();
    let Some(choice) = Choice::parse(&choice) else {
        return HttpResponse::NotFound().finish();
    };
    let Some(session) = standin.sessions().get(&id).cloned() else {
        return HttpResponse::NotFound().finish();
    };
    let attempt = Uuid::new_v4().to_string();
    let event = |action: &str, code: u32| {
        serde_json::json!({
            "id": id, "attemptId": attempt, "feature": "selfid", "code": code, "action": action,
            "vendorData": session.vendor_data, "endUserId": null,
        })
        .to_string()
        .into_bytes()
    };
    let (status, code, reason) = choice.decision();
    let decision = serde_json::json!({
        "status": "success",
        "verification": {
            "id": id, "attemptId": attempt, "vendorData": session.vendor_data, "endUserId": null,
            "status": status, "code": code,
            "reason": reason.map(|(_, text)| text), "reasonCode": reason.map(|(code, _)| code),
            "decisionTime": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            "acceptanceTime": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            "person": { "firstName": "DEV", "lastName": "USER" },
            "document": { "type": "PASSPORT", "number": "DEV0000001", "country": "EE" },
            "comments": [], "additionalVerifiedData": {}, "riskLabels": []
        },
        "technicalData": { "ip": "127.0.0.1" }
    })
    .to_string()
    .into_bytes();

    let mut deliveries = Vec::new();
    if !matches!(choice, Choice::Abandon) {
        deliveries.push(("event", event("started", 7001)));
        deliveries.push(("event", event("submitted", 7002)));
    }
    deliveries.push(("decision", decision.clone()));
    for (kind, body) in deliveries {
        match standin.deliver(kind, body).await {
            Ok(200) => {}
            Ok(other) => {
                return html(
                    "Webhook refused",
                    &format!("<p>The receiver answered {other} to the {kind} webhook.</p>"),
                );
            }
            Err(_) => {
                return html(
                    "Webhook failed",
                    "<p>The receiver could not be reached.</p>",
                );
            }
        }
    }
    if let Some(stored) = standin.sessions().get_mut(&id) {
        stored.decision = Some(decision);
    }
    let back = session
        .callback
        .map(|url| {
            format!(
                r#"<p><a id="back" href="{}">Back to the app</a></p>"#,
                escape(&url)
            )
        })
        .unwrap_or_default();
    html(
        "Done",
        &format!(r#"<p id="result">Sent: {status}.</p>{back}"#),
    )
}

async fn done() -> HttpResponse {
    html(
        "Verification finished",
        "<p>The verification flow is finished; the app polls its status.</p>",
    )
}

fn html(title: &str, body: &str) -> HttpResponse {
    HttpResponse::Ok().content_type(ContentType::html()).body(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>"
    ))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
