//! `GET /openapi.json`: the OpenAPI 3.1 document of every public endpoint, generated from
//! the handlers' annotations and the response types, error responses included.

use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::status::Status;
use super::{ops, registration, status, user, webhooks};
use crate::error::Problem;

#[derive(OpenApi)]
#[openapi(
    info(title = "kyc", description = "Identity verification with Veriff"),
    paths(
        webhooks::decision,
        webhooks::event,
        registration::create,
        status::onboarding_status,
        user::verification,
        status::user_status,
        ops::healthz,
        ops::readyz,
        ops::metrics,
    ),
    components(schemas(
        Problem,
        Status,
        status::StateName,
        status::RetryName,
        registration::SessionAnswer,
        registration::SessionRequest
    )),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

pub async fn document() -> HttpResponse {
    match ApiDoc::openapi().to_json() {
        Ok(json) => HttpResponse::Ok()
            .content_type("application/json")
            .body(json),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}
