//! `ImdsError` in IMDS's own dialect: `{"error","error_description"}` JSON with
//! `Server: IMDS/...` (spec/tokens.md §1.1, §1.3, §1.5).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// IMDS's `Server` header (real IMDS answers `IMDS/<a>.<b>.<c>.<d>`).
pub const SERVER_HEADER: &str = "IMDS/150.870.65.1854";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("Required metadata header not specified")]
    MissingMetadataHeader,
    #[error("Request contains X-Forwarded-For header. IMDS does not accept proxied requests")]
    Forwarded,
    #[error("Query parameter '{0}' is repeated")]
    DuplicateParameter(String),
    /// The VM-extension endpoint reads the query and a POSTed form as one list.
    #[error("Parameter '{0}' is given more than once in the query and form")]
    DuplicateFormParameter(String),
    #[error(
        "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds"
    )]
    ApiVersion,
    #[error("Required audience parameter not specified")]
    MissingResource,
    #[error("Only one of client_id, object_id and msi_res_id may be specified")]
    SeveralSelectors,
    #[error("Identity not found")]
    IdentityNotFound,
    #[error(
        "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"
    )]
    MultipleIdentities,
    #[error("bypass_cache must be 'true' when specified")]
    BadBypassCache,
    #[error(
        "Bad request. The query string is longer than {} bytes",
        crate::vm_api::MAX_QUERY_BYTES
    )]
    QueryTooLong,
    #[error(
        "Bad request. The form body is longer than {} bytes",
        crate::vm_api::MAX_FORM_BYTES
    )]
    FormTooLong,
    #[error("Bad request. The form body could not be read")]
    UnreadableForm,
    #[error("Bad request. Leaf nodes need the format=text query parameter")]
    LeafNeedsText,
    #[error("The requested path was not found")]
    NotFound,
    #[error("No VM is hosted at source address '{0}'")]
    UnknownSource(String),
    #[error(
        "Too many requests. The identity endpoint allows 20 requests per second and 5 at once per VM"
    )]
    TooManyRequests,
    #[error("The requested method is not allowed")]
    MethodNotAllowed,
    /// AAD answered with an error the client should see as is (e.g. unknown resource).
    #[error("{description}")]
    Upstream {
        status: u16,
        error: String,
        description: String,
    },
    /// A fault plan answered instead of IMDS.
    #[error("misim fault plan {id}: injected status {status}")]
    Fault { status: u16, id: String },
    /// AAD unreachable or failing: a retryable 500, never a hang.
    #[error("Failed to retrieve token from the Active directory. {0}")]
    AadUnavailable(String),
    #[error("internal error")]
    Internal(String),
    // ---- host API (internal dialect) ----
    #[error("The host API needs the internal credential.")]
    HostUnauthenticated,
    #[error("{0}")]
    HostBadRequest(String),
}

impl From<sqlx::Error> for ImdsError {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(error.to_string())
    }
}

impl ImdsError {
    pub fn parts(&self) -> (StatusCode, &str) {
        use ImdsError::*;
        match self {
            MissingMetadataHeader
            | Forwarded
            | DuplicateParameter(_)
            | DuplicateFormParameter(_)
            | ApiVersion
            | MissingResource
            | SeveralSelectors
            | IdentityNotFound
            | MultipleIdentities
            | BadBypassCache
            | QueryTooLong
            | FormTooLong
            | UnreadableForm
            | LeafNeedsText => (
                StatusCode::BAD_REQUEST,
                if matches!(
                    self,
                    ApiVersion | LeafNeedsText | QueryTooLong | FormTooLong | UnreadableForm
                ) {
                    "bad_request"
                } else {
                    "invalid_request"
                },
            ),
            NotFound | UnknownSource(_) => (StatusCode::NOT_FOUND, "not_found"),
            TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Upstream { status, error, .. } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
                error.as_str(),
            ),
            Fault { status, .. } => (
                StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                match status {
                    404 => "not_found",
                    410 => "gone",
                    429 => "too_many_requests",
                    400..=499 => "invalid_request",
                    _ => "server_error",
                },
            ),
            AadUnavailable(_) => (StatusCode::INTERNAL_SERVER_ERROR, "unknown"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
            HostUnauthenticated => (StatusCode::UNAUTHORIZED, "unauthorized"),
            HostBadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        }
    }
}

impl IntoResponse for ImdsError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let ImdsError::Internal(detail) = &self {
            tracing::error!(error = %detail, "internal error in IMDS");
        }
        let mut body = json!({"error": code, "error_description": self.to_string()});
        if matches!(self, ImdsError::ApiVersion) {
            body = json!({"error": self.to_string(), "newest-versions": ["2025-04-07", "2024-07-17", "2024-03-15"]});
        }
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert(header::SERVER, HeaderValue::from_static(SERVER_HEADER));
        if matches!(
            self,
            ImdsError::AadUnavailable(_) | ImdsError::TooManyRequests
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }

        response
    }
}
