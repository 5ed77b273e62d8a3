//! Rendering of `AadError`: Entra's OAuth error JSON (AADSTS codes) for the token service and
//! discovery, Graph's error JSON for `/v1.0` and the internal API. The one table mapping every
//! variant to a status and code is `sts_parts` / `graph_parts`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::RequestContext;
use crate::domain::assertion::{AssertionError, entra_time};
use crate::error::AadError;

const CERT_DOCS: &str = "Review the documentation at https://docs.microsoft.com/en-us/azure/active-directory/develop/active-directory-certificate-credentials .";

/// An error with the request context it is rendered in.
#[derive(Debug)]
pub struct Failure {
    pub error: AadError,
    pub context: RequestContext,
}

/// Status, OAuth `error`, AADSTS number and message of a token-service error.
pub fn sts_parts(error: &AadError) -> (StatusCode, &'static str, u32, String) {
    use AadError::*;
    let bad = StatusCode::BAD_REQUEST;
    let unauthorized = StatusCode::UNAUTHORIZED;
    match error {
        TenantNotFound(t) => (bad, "invalid_request", 90002, format!("Tenant '{t}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.")),
        InvalidTenant(t) => (bad, "invalid_request", 900023, format!("Specified tenant identifier '{t}' is neither a valid DNS name, nor a valid external domain.")),
        NoTenantInformation => (bad, "invalid_request", 50059, "No tenant-identifying information found in either the request or implied by any provided credentials.".into()),
        MissingParameter(name) => (bad, "invalid_request", 900144, format!("The request body must contain the following parameter: '{name}'.")),
        DuplicateParameter(name) => (bad, "invalid_request", 90011, format!("Request parameter '{name}' is duplicated.")),
        UnsupportedGrantType(g) => (bad, "unsupported_grant_type", 70003, format!("The app requested an unsupported grant type '{g}'.")),
        ApplicationNotFound { client_id, tenant } => (bad, "unauthorized_client", 700016, format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.")),
        ServicePrincipalMissing { client_id, tenant } => (unauthorized, "invalid_client", 7000229, format!("The client application {client_id} is missing service principal in the tenant {tenant}. See instructions here: https://go.microsoft.com/fwlink/?linkid=2225119")),
        InvalidClientSecret { client_id } => (unauthorized, "invalid_client", 7000215, format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'.")),
        ExpiredClientSecret { client_id } => (unauthorized, "invalid_client", 7000222, format!("The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.")),
        MissingClientCredential => (unauthorized, "invalid_client", 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into()),
        ConflictingClientCredentials => (bad, "invalid_request", 7000219, "Only one client credential may be sent: the request contains both 'client_secret' and 'client_assertion'.".into()),
        UnsupportedAssertionType(t) => (bad, "invalid_request", 7000220, format!("The client_assertion_type '{t}' is not supported; use 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.")),
        InvalidAssertion(reason) => assertion_parts(reason),
        FederatedNoMatch(presented) => (bad, "invalid_request", 70021, format!("No matching federated identity record found for presented assertion. {presented}")),
        // The code and status are unconfirmed (docs/api.md, federated credentials).
        FederatedOwnIssuer(issuer) => (bad, "invalid_request", 700236, format!("Entra ID tokens issued by issuer '{issuer}' may not be used for federated identity credential flows for applications or managed identities registered in this tenant.")),
        // The code Entra gives an unreachable issuer is unconfirmed (spec/tokens.md §6.2).
        FederatedIssuerUnreachable(detail) => (bad, "invalid_request", 50166, format!("Request to External OIDC endpoint failed. {detail}")),
        InvalidScope(s) => (bad, "invalid_scope", 70011, format!("The provided value for the input parameter 'scope' is not valid. The scope {s} is not valid.")),
        ResourceNotFound { resource, tenant } => (bad, "invalid_resource", 500011, format!("The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.")),
        PostOnly(method) => (StatusCode::METHOD_NOT_ALLOWED, "invalid_request", 900561, format!("The endpoint only accepts POST requests. Received a {method} request.")),
        // Entra documents no code for a wrong verb on a document endpoint: the POST-only one's.
        GetOnly(method) => (StatusCode::METHOD_NOT_ALLOWED, "invalid_request", 900561, format!("The endpoint only accepts GET requests. Received a {method} request.")),
        UnknownEndpoint => (StatusCode::NOT_FOUND, "invalid_request", 90000, "The request path is not an endpoint of this token service.".into()),
        BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", 90000, "The request body is too large.".into()),
        Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", 90033, "A transient error has occurred. Please try again.".into()),
        FaultInjected { status, id } => (
            StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            if *status >= 500 || *status == 429 { "temporarily_unavailable" } else { "invalid_request" },
            90033,
            format!("A transient error has occurred. Please try again. (misim fault plan {id})"),
        ),
        // Graph-dialect errors are rendered by `graph_parts`; this arm only keeps the match total.
        _ => (bad, "invalid_request", 90000, error.to_string()),
    }
}

fn assertion_parts(reason: &AssertionError) -> (StatusCode, &'static str, u32, String) {
    let unauthorized = StatusCode::UNAUTHORIZED;
    let key_window = |start: &i64, end: &i64| {
        format!(
            "Found key 'Start={}, End={}'",
            entra_time(*start),
            entra_time(*end)
        )
    };
    match reason {
        AssertionError::Malformed(detail) => (
            unauthorized,
            "invalid_client",
            50027,
            format!("JWT token is invalid or malformed: {detail}."),
        ),
        AssertionError::UnsupportedAlgorithm(alg) => (
            unauthorized,
            "invalid_client",
            50027,
            format!(
                "Invalid JWT token. The signing algorithm '{alg}' is not supported; use RS256 or PS256."
            ),
        ),
        AssertionError::NoThumbprint => (
            unauthorized,
            "invalid_client",
            50027,
            "Invalid JWT token. No certificate thumbprint specified in token header.".into(),
        ),
        AssertionError::KeyNotFound { thumbprint } => (
            unauthorized,
            "invalid_client",
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for the app.]"
            ),
        ),
        AssertionError::KeyNotValid {
            thumbprint,
            start,
            end,
        } => (
            unauthorized,
            "invalid_client",
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The key used is expired or not yet valid., Thumbprint of key used by client: '{thumbprint}', {}]",
                key_window(start, end)
            ),
        ),
        AssertionError::BadSignature { thumbprint } => (
            unauthorized,
            "invalid_client",
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '{thumbprint}']"
            ),
        ),
        AssertionError::IssuerOrSubject => (
            unauthorized,
            "invalid_client",
            700021,
            format!(
                "Client assertion application identifier doesn't match 'client_id' parameter. {CERT_DOCS}"
            ),
        ),
        AssertionError::MissingExpiry => (
            unauthorized,
            "invalid_client",
            50027,
            "Invalid JWT token. The token has no 'exp' claim.".into(),
        ),
        AssertionError::TimeRange { now, nbf, exp } => (
            unauthorized,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. {CERT_DOCS}",
                entra_time(*now),
                nbf.map(entra_time).unwrap_or_else(|| "(not set)".into()),
                entra_time(*exp)
            ),
        ),
        AssertionError::Audience { audience } => (
            unauthorized,
            "invalid_client",
            700023,
            format!(
                "Client assertion audience claim does not match Realm issuer. Audience: '{audience}'. {CERT_DOCS}"
            ),
        ),
    }
}

/// Status, Graph `code` and message of a Graph or internal-API error.
pub fn graph_parts(error: &AadError) -> (StatusCode, &'static str, String) {
    use AadError::*;
    match error {
        GraphUnauthenticated(detail) => (
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            detail.clone(),
        ),
        GraphForbidden => (
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.".into(),
        ),
        GraphNotFound(m) => (StatusCode::NOT_FOUND, "Request_ResourceNotFound", m.clone()),
        GraphBadRequest(m) => (StatusCode::BAD_REQUEST, "Request_BadRequest", m.clone()),
        GraphConflict(m) => (
            StatusCode::CONFLICT,
            "Request_MultipleObjectsWithSameKeyValue",
            m.clone(),
        ),
        GraphUnknownRoute => (
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Resource not found for the segment.".into(),
        ),
        GraphMethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "The HTTP method is not allowed on this resource.".into(),
        ),
        InternalUnauthenticated => (
            StatusCode::UNAUTHORIZED,
            "InternalCredentialRequired",
            "The internal directory API needs the internal credential.".into(),
        ),
        BodyTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request_BadRequest",
            "The request body is too large.".into(),
        ),
        Internal(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "An internal error occurred.".into(),
        ),
        other => (
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            other.to_string(),
        ),
    }
}

fn timestamp(now: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

impl Failure {
    /// Renders in Graph's dialect (for `/v1.0` and `/_internal` handlers).
    pub fn graph(self) -> GraphFailure {
        GraphFailure(self)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        if self.error.is_graph() {
            return GraphFailure(self).into_response();
        }
        if let AadError::Internal(detail) = &self.error {
            tracing::error!(error = %detail, "internal error in the token service");
        }
        let (status, error, code, message) = sts_parts(&self.error);
        let now = misim_core::Clock::wall_now();
        let trace_id = Uuid::new_v4().to_string();
        let stamp = timestamp(now);
        let correlation_id = &self.context.correlation_id;
        let body = json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {stamp}"),
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        });
        let mut response = (status, axum::Json(body)).into_response();
        sts_headers(&mut response, &self.context);
        response
    }
}

/// Headers every token-service answer carries.
pub fn sts_headers(response: &mut Response, ctx: &RequestContext) {
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&Uuid::new_v4().to_string()) {
        headers.insert("x-ms-request-id", v);
    }
    headers.insert("x-ms-ests-server", HeaderValue::from_static("misim"));
    if ctx.return_client_request_id
        && let Some(id) = ctx
            .client_request_id
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert("client-request-id", id);
    }
}

pub struct GraphFailure(Failure);

impl IntoResponse for GraphFailure {
    fn into_response(self) -> Response {
        let Failure { error, context } = self.0;
        if let AadError::Internal(detail) = &error {
            tracing::error!(error = %detail, "internal error in Graph");
        }
        let (status, code, message) = graph_parts(&error);
        let now = misim_core::Clock::wall_now();
        let date = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        let body = json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": date,
                    "request-id": Uuid::new_v4().to_string(),
                    "client-request-id": context.client_request_id.clone().unwrap_or_else(|| context.correlation_id.clone()),
                }
            }
        });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED && !matches!(error, AadError::InternalUnauthenticated)
        {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\""));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_pins_statuses_and_codes() {
        let cases: Vec<(AadError, u16, &str, u32)> = vec![
            (
                AadError::TenantNotFound("x".into()),
                400,
                "invalid_request",
                90002,
            ),
            (
                AadError::InvalidClientSecret {
                    client_id: "c".into(),
                },
                401,
                "invalid_client",
                7000215,
            ),
            (
                AadError::ApplicationNotFound {
                    client_id: "c".into(),
                    tenant: "t".into(),
                },
                400,
                "unauthorized_client",
                700016,
            ),
            (
                AadError::InvalidAssertion(AssertionError::KeyNotFound {
                    thumbprint: "AB".into(),
                }),
                401,
                "invalid_client",
                700027,
            ),
            (
                AadError::InvalidAssertion(AssertionError::TimeRange {
                    now: 0,
                    nbf: None,
                    exp: 0,
                }),
                401,
                "invalid_client",
                700024,
            ),
            (
                AadError::InvalidAssertion(AssertionError::Audience {
                    audience: "a".into(),
                }),
                401,
                "invalid_client",
                700023,
            ),
            (
                AadError::UnsupportedGrantType("password".into()),
                400,
                "unsupported_grant_type",
                70003,
            ),
            (
                AadError::InvalidScope("s".into()),
                400,
                "invalid_scope",
                70011,
            ),
            (
                AadError::ResourceNotFound {
                    resource: "r".into(),
                    tenant: "t".into(),
                },
                400,
                "invalid_resource",
                500011,
            ),
            (
                AadError::MissingParameter("grant_type"),
                400,
                "invalid_request",
                900144,
            ),
        ];
        for (error, status, oauth, code) in cases {
            let (s, e, c, _) = sts_parts(&error);
            assert_eq!((s.as_u16(), e, c), (status, oauth, code), "{error:?}");
        }
        assert_eq!(
            graph_parts(&AadError::GraphForbidden).1,
            "Authorization_RequestDenied"
        );
    }
}
