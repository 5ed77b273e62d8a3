//! Rendering of `ArmError` as ARM's error envelope; 401s carry a single Bearer challenge.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ArmError;

pub struct Failure {
    pub error: ArmError,
    /// AAD's authority host, named in the 401 challenge.
    pub authority: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, code) = self.error.parts();
        if let ArmError::Internal(detail) = &self.error {
            tracing::error!(error = %detail, "internal error in ARM");
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = super::ok_json(
            status,
            json!({"error": {"code": code, "message": self.error.to_string()}}),
        );
        if status == StatusCode::UNAUTHORIZED {
            let description = match &self.error {
                ArmError::AuthenticationMissing => {
                    "The authentication failed because of missing 'Authorization' header."
                }
                _ => "The access token is invalid or expired.",
            };
            let challenge = format!(
                "Bearer authorization_uri=\"{}\", error=\"invalid_token\", error_description=\"{description}\"",
                self.authority
            );
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        if matches!(self.error.parts().0, 400 | 401 | 404) {
            response
                .headers_mut()
                .insert("x-ms-failure-cause", HeaderValue::from_static("gateway"));
        }
        response
    }
}
