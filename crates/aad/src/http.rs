//! AAD's HTTP surface: the whole route table in one place; handlers live in the submodules.

mod discovery;
pub mod error;
mod graph;
mod internal;
mod token;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use uuid::Uuid;

use crate::error::AadError;
use crate::service::Aad;
use error::Failure;

/// Largest accepted request body: token requests are small; Graph bodies carry certificates.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(aad: Aad) -> Router {
    Router::new()
        .route(
            "/{tenant}/oauth2/token",
            post(token::v1).fallback(token::not_post),
        )
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(token::v2).fallback(token::not_post),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(discovery::v1_configuration),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(discovery::v2_configuration),
        )
        .route("/{tenant}/discovery/keys", get(discovery::v1_keys))
        .route("/{tenant}/discovery/v2.0/keys", get(discovery::v2_keys))
        .route("/common/discovery/instance", get(discovery::instance))
        .route(
            "/v1.0/applications",
            get(graph::list_applications).post(graph::create_application),
        )
        .route(
            "/v1.0/applications/{id}",
            get(graph::get_application)
                .patch(graph::update_application)
                .delete(graph::delete_application),
        )
        .route(
            "/v1.0/applications/{id}/addPassword",
            post(graph::add_password),
        )
        .route(
            "/v1.0/applications/{id}/removePassword",
            post(graph::remove_password),
        )
        .route(
            "/v1.0/applications/{id}/federatedIdentityCredentials",
            get(graph::list_federated_credentials).post(graph::create_federated_credential),
        )
        .route(
            "/v1.0/applications/{id}/federatedIdentityCredentials/{credential}",
            get(graph::get_federated_credential)
                .patch(graph::update_federated_credential)
                .delete(graph::delete_federated_credential),
        )
        .route(
            "/v1.0/servicePrincipals",
            get(graph::list_service_principals).post(graph::create_service_principal),
        )
        .route(
            "/v1.0/servicePrincipals/{id}",
            get(graph::get_service_principal).delete(graph::delete_service_principal),
        )
        .route("/v1.0/directoryObjects/getByIds", post(graph::get_by_ids))
        .route("/v1.0/{entity}", get(graph::get_by_alternate_key))
        .route(
            misim_core::internal::BOOTSTRAP_PATH,
            get(internal::bootstrap),
        )
        .route(misim_core::internal::EVENTS_PATH, get(internal::events))
        .route(
            misim_core::internal::FAULTS_PATH,
            get(internal::list_faults)
                .post(internal::add_fault)
                .delete(internal::clear_faults),
        )
        .route(
            "/_internal/faults/{id}",
            axum::routing::delete(internal::remove_fault),
        )
        .route(
            misim_core::internal::CLOCK_PATH,
            get(internal::clock).put(internal::set_clock),
        )
        .route(
            "/_internal/directory/managed-identities",
            get(internal::list_managed_identities),
        )
        .route(
            "/_internal/directory/managed-identities/{object_id}",
            get(internal::get_managed_identity)
                .put(internal::put_managed_identity)
                .delete(internal::delete_managed_identity),
        )
        .route(
            "/_internal/directory/managed-identities/{object_id}/certificates/{key_id}",
            axum::routing::put(internal::put_certificate).delete(internal::delete_certificate),
        )
        .route(
            "/_internal/directory/managed-identities/{object_id}/federated-credentials/{name}",
            axum::routing::put(internal::put_federated_credential)
                .delete(internal::delete_federated_credential),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            panic_answer as misim_core::serve::PanicAnswer,
            misim_core::serve::contain_panics,
        ))
        .layer(axum::middleware::from_fn(undecodable_path))
        .layer(axum::middleware::from_fn(misim_core::events::correlate))
        .with_state(aad)
}

/// Per-request context for error rendering: the correlation id follows the client's
/// `client-request-id` when it sent one.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub correlation_id: String,
    pub client_request_id: Option<String>,
    pub return_client_request_id: bool,
}

impl RequestContext {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let client_request_id = header("client-request-id")
            .or_else(|| header("x-ms-client-request-id"))
            .filter(|v| Uuid::parse_str(v).is_ok());
        Self {
            correlation_id: client_request_id
                .clone()
                .or_else(misim_core::events::current_correlation)
                .unwrap_or_else(|| Uuid::new_v4().to_string()),
            return_client_request_id: header("return-client-request-id")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            client_request_id,
        }
    }

    pub fn fail(&self, error: AadError) -> Failure {
        Failure {
            error,
            context: self.clone(),
        }
    }
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`].
pub async fn read_body(body: Body, ctx: &RequestContext) -> Result<bytes::Bytes, Failure> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ctx.fail(AadError::BodyTooLarge))
}

async fn unknown_route(uri: Uri, headers: HeaderMap) -> Response {
    let ctx = RequestContext::from_headers(&headers);
    let error = if is_graph_path(uri.path()) {
        AadError::GraphUnknownRoute
    } else {
        AadError::UnknownEndpoint
    };
    axum::response::IntoResponse::into_response(ctx.fail(error))
}

/// Whether a path is Graph's or the internal API's (answered in Graph's dialect).
fn is_graph_path(path: &str) -> bool {
    path.starts_with("/v1.0") || path.starts_with("/_internal")
}

/// What a request whose handler panicked gets: a retryable 500 in the route's dialect.
fn panic_answer(uri: &Uri, message: &str) -> Response {
    let failure = RequestContext::from_headers(&HeaderMap::new())
        .fail(AadError::Internal(format!("a handler panicked: {message}")));
    if is_graph_path(uri.path()) {
        axum::response::IntoResponse::into_response(failure.graph())
    } else {
        axum::response::IntoResponse::into_response(failure)
    }
}

/// A path whose escapes decode to bytes that are not UTF-8 names no tenant and no object. It
/// gets the token service's invalid-tenant error, or Graph's unknown route, instead of axum's
/// plain-text rejection of the path part.
async fn undecodable_path(request: Request, next: axum::middleware::Next) -> Response {
    let path = request.uri().path();
    if path.contains('%')
        && percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .is_err()
    {
        if is_graph_path(path) {
            return unknown_route(request.uri().clone(), request.headers().clone()).await;
        }
        // Elsewhere the first segment is the tenant: refused as a tenant name would be.
        let tenant = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let tenant = percent_encoding::percent_decode_str(tenant).decode_utf8_lossy();
        let failure = RequestContext::from_headers(request.headers())
            .fail(AadError::InvalidTenant(tenant.into_owned()));
        return axum::response::IntoResponse::into_response(failure);
    }
    next.run(request).await
}

async fn method_not_allowed(request: Request) -> Response {
    let ctx = RequestContext::from_headers(request.headers());
    let path = request.uri().path();
    let method = request.method().to_string();
    let error = if is_graph_path(path) {
        AadError::GraphMethodNotAllowed
    } else if [
        "/.well-known/openid-configuration",
        "/discovery/keys",
        "/discovery/v2.0/keys",
        "/discovery/instance",
    ]
    .iter()
    .any(|document| path.trim_end_matches('/').ends_with(document))
    {
        // Discovery documents, signing keys and instance discovery are read with GET.
        AadError::GetOnly(method)
    } else {
        AadError::PostOnly(method)
    };
    axum::response::IntoResponse::into_response(ctx.fail(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_answered_in_its_routes_dialect() {
        let read = |response: Response| async move {
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), 8192)
                .await
                .expect("body");
            let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
            (status, json)
        };
        let uri = |path: &str| path.parse::<Uri>().expect("uri");
        let (status, sts) = read(panic_answer(&uri("/t/oauth2/v2.0/token"), "a bug")).await;
        assert_eq!(status, 500);
        assert_eq!(sts["error_codes"][0], 90033, "{sts}");
        let (status, graph) = read(panic_answer(&uri("/v1.0/applications"), "a bug")).await;
        assert_eq!(status, 500);
        assert!(graph["error"]["code"].is_string(), "{graph}");
    }
}
