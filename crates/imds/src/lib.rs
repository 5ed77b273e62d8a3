//! misim's Instance Metadata Service. This first cut serves the demo VM's listener in IMDS's
//! own dialect (the `Metadata: true` probe rule included); hosted VMs and tokens arrive with the
//! IMDS issue.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// IMDS's `Server` header (real IMDS answers `IMDS/<a>.<b>.<c>.<d>`).
pub const SERVER_HEADER: &str = "IMDS/150.870.65.1854";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("Required metadata header not specified")]
    MissingMetadataHeader,
    #[error("Identity not found")]
    IdentityNotFound,
    #[error("The requested path was not found")]
    NotFound,
}

impl IntoResponse for ImdsError {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            Self::MissingMetadataHeader | Self::IdentityNotFound => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        };
        let mut response = (
            status,
            axum::Json(json!({"error": error, "error_description": self.to_string()})),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert(header::SERVER, HeaderValue::from_static(SERVER_HEADER));
        response
    }
}

pub fn router() -> Router {
    Router::new().fallback(|request: Request| async move {
        let metadata = request
            .headers()
            .get("metadata")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !metadata {
            return ImdsError::MissingMetadataHeader;
        }
        // No VM has an identity until the ARM lifecycle lands.
        if request.uri().path().starts_with("/metadata/identity") {
            ImdsError::IdentityNotFound
        } else {
            ImdsError::NotFound
        }
    })
}
