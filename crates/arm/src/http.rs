//! ARM's HTTP surface. ARM paths are hierarchical and case-insensitive, so one dispatcher parses
//! the path into a `Target` and hands it to a thin handler per resource kind.

mod error;
mod filter;
mod rbac;
mod resources;
mod sim;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use uuid::Uuid;

use crate::auth::{Caller, TokenValidator};
use crate::domain::path::{self, ApiFamily, Target};
use crate::error::ArmError;
use crate::service::Arm;

pub use error::Failure;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Items per page of a collection.
pub const PAGE_SIZE: usize = 100;

#[derive(Clone)]
pub struct ArmState {
    pub arm: Arm,
    pub validator: TokenValidator,
}

pub fn router(arm: Arm, validator: TokenValidator) -> Router {
    Router::new()
        .fallback(dispatch)
        .with_state(ArmState { arm, validator })
}

/// What every handler gets: the parsed request.
pub struct Call {
    pub arm: Arm,
    pub caller: Caller,
    pub method: Method,
    pub query: HashMap<String, String>,
    pub api_version: String,
    pub body: bytes::Bytes,
    pub path: String,
}

impl Call {
    /// The body as a JSON object (`{}` when empty, for PATCH/PUT without content).
    pub fn json_object(&self) -> Result<Map<String, Value>, ArmError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(ArmError::InvalidRequestContent(format!(
                "Expected a JSON object, found {}",
                kind_of(&other)
            ))),
            Err(e) => Err(ArmError::InvalidRequestContent(e.to_string())),
        }
    }

    /// An absolute URL on ARM's public host for `path`, keeping the api-version.
    pub fn url(&self, path: &str, extra_query: &str) -> String {
        let mut url = format!(
            "{}{path}?api-version={}",
            self.arm.public_url(),
            self.api_version
        );
        if !extra_query.is_empty() {
            url.push('&');
            url.push_str(extra_query);
        }
        url
    }

    /// A page of `items`, rendered after slicing (only the page costs JSON), with a `nextLink` on
    /// our host when more remain.
    pub fn page<T>(
        &self,
        items: Vec<T>,
        render: impl Fn(&T) -> Value,
    ) -> Result<Response, ArmError> {
        let skip = match self
            .query
            .get("$skiptoken")
            .or_else(|| self.query.get("$skipToken"))
        {
            Some(token) => token.parse::<usize>().map_err(|_| {
                ArmError::InvalidParameter(format!("The skip token '{token}' is not valid."))
            })?,
            None => 0,
        };
        let top = match self.query.get("$top") {
            Some(top) => top
                .parse::<usize>()
                .ok()
                .filter(|t| (1..=1000).contains(t))
                .ok_or_else(|| {
                    ArmError::InvalidParameter(format!(
                        "The value '{top}' of $top is not valid; use 1 to 1000."
                    ))
                })?,
            None => PAGE_SIZE,
        };
        let total = items.len();
        let page: Vec<Value> = items.iter().skip(skip).take(top).map(render).collect();
        let mut body = json!({"value": page});
        // Saturating: the skip token is the caller's number, up to usize::MAX.
        let next_skip = skip.saturating_add(top);
        if next_skip < total {
            let mut extra = format!("$skiptoken={next_skip}");
            if self.query.contains_key("$top") {
                extra.push_str(&format!("&$top={top}"));
            }
            if let Some(filter) = self.query.get("$filter") {
                extra.push_str("&$filter=");
                extra.push_str(
                    &percent_encoding::utf8_percent_encode(
                        filter,
                        percent_encoding::NON_ALPHANUMERIC,
                    )
                    .to_string(),
                );
            }
            body["nextLink"] = json!(self.url(&self.path, &extra));
        }
        Ok(ok_json(StatusCode::OK, body))
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// 201 for a PUT that created, 200 for one that replaced.
pub fn put_status(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

pub fn ok_json(status: StatusCode, body: Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn parse_query(query: Option<&str>) -> Result<HashMap<String, String>, ArmError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ArmError::InvalidParameter(format!("The query string is malformed: {e}")))?;
    let mut map = HashMap::new();
    for (key, value) in pairs {
        if map.contains_key(&key) {
            return Err(ArmError::InvalidParameter(format!(
                "The query parameter '{key}' is repeated."
            )));
        }
        map.insert(key, value);
    }
    Ok(map)
}

async fn dispatch(State(state): State<ArmState>, request: Request) -> Response {
    let correlation = request
        .headers()
        .get("x-ms-correlation-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| Uuid::parse_str(v).is_ok())
        .map(str::to_string)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let method = request.method().clone();
    let authority = format!("{}/", state.arm.aad_url());
    // A panic (a bug) becomes ARM's 500, with ARM's headers, instead of a closed connection.
    let handled = misim_core::events::with_correlation(
        correlation.clone(),
        misim_core::serve::catch_panic(handle(state, request)),
    )
    .await
    .unwrap_or_else(|message| Err(ArmError::Internal(format!("a handler panicked: {message}"))));
    let mut response = match handled {
        Ok(response) => response,
        Err(error) => Failure { error, authority }.into_response(),
    };
    if method == Method::HEAD {
        *response.body_mut() = Body::empty();
    }
    arm_headers(&mut response, &correlation, &method);
    response
}

async fn handle(state: ArmState, request: Request) -> Result<Response, ArmError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let target = path::parse(&path);
    let query = parse_query(parts.uri.query())?;
    if target == Target::MetadataEndpoints {
        return Ok(resources::metadata_endpoints(
            &state.arm,
            query.get("api-version").map(String::as_str),
        ));
    }
    // Simulator APIs (`/_sim/`) are versionless.
    let is_sim = matches!(target, Target::SimVm { .. })
        || path
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("/_sim/"));
    let api_version = match query.get("api-version").cloned() {
        Some(version) => version,
        None if is_sim => String::new(),
        None => return Err(ArmError::MissingApiVersion),
    };
    if !is_sim {
        check_api_version(&target, &api_version)?;
    }
    let validated = state
        .validator
        .validate(
            parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .await;
    let caller = match validated {
        Ok(caller) => caller,
        Err(error) => {
            state.arm.events().record(
                misim_core::events::Draft::new(
                    "arm.request.unauthenticated",
                    format!("refused {} {path}: {error}", parts.method),
                )
                .resource(&path),
            );
            return Err(error);
        }
    };
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ArmError::RequestTooLarge)?;
    let call = Call {
        arm: state.arm,
        caller,
        method: parts.method,
        query,
        api_version,
        body,
        path,
    };
    if is_sim && !matches!(target, Target::SimVm { .. }) {
        return sim::handle(&call, &state.validator).await;
    }
    match target {
        Target::RoleAssignments { .. }
        | Target::RoleAssignment { .. }
        | Target::RoleDefinitions { .. }
        | Target::RoleDefinition { .. } => rbac::handle(&call, target).await,
        Target::Unknown => Err(ArmError::InvalidResourceType(call.path.clone())),
        other => resources::handle(&call, other, &parts.headers).await,
    }
}

fn check_api_version(target: &Target, version: &str) -> Result<(), ArmError> {
    let family = target.family();
    if path::api_version_ok(family, version) {
        return Ok(());
    }
    // Resource-provider types say so in their own words; ARM's own types in ARM's.
    Err(match family {
        ApiFamily::ManagedIdentity | ApiFamily::Authorization | ApiFamily::Compute => {
            ArmError::NoRegisteredProviderFound {
                version: version.to_string(),
                kind: target.type_name(),
                supported: family.examples(),
            }
        }
        ApiFamily::Resources | ApiFamily::Metadata => ArmError::InvalidApiVersion {
            version: version.to_string(),
            supported: family.examples(),
        },
    })
}

/// Headers ARM sends on every response (spec/arm.md §1.6).
fn arm_headers(response: &mut Response, correlation: &str, method: &Method) {
    let headers: &mut HeaderMap = response.headers_mut();
    let request_id = Uuid::new_v4().to_string();
    let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(headers, "x-ms-request-id", &request_id);
    set(headers, "x-ms-correlation-request-id", correlation);
    let now = misim_core::Clock::wall_now();
    set(
        headers,
        "x-ms-routing-request-id",
        &format!(
            "LOCAL:{:04}{:02}{:02}T{:02}{:02}{:02}Z:{request_id}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        ),
    );
    let (name, value) = match *method {
        Method::GET | Method::HEAD => ("x-ms-ratelimit-remaining-subscription-reads", "11999"),
        Method::DELETE => ("x-ms-ratelimit-remaining-subscription-deletes", "14999"),
        _ => ("x-ms-ratelimit-remaining-subscription-writes", "1199"),
    };
    set(headers, name, value);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::EXPIRES, HeaderValue::from_static("-1"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
}
