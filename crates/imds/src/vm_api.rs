//! The VM-facing endpoints of one VM's IMDS listener (spec/tokens.md §1): the token endpoint,
//! identity info, instance metadata and versions. Checks run in the order probes rely on:
//! `X-Forwarded-For`, then `Metadata: true`, then parameters, then the identity.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Imds;
use crate::error::{ImdsError, SERVER_HEADER};
use crate::relay;
use crate::store::IdentityRow;

/// Versions IMDS documents; the identity category exists from 2018-02-01.
pub const API_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2023-07-01",
    "2023-11-15",
    "2024-03-15",
    "2024-07-17",
    "2025-04-07",
];

/// Path of the deprecated VM-extension endpoint (`http://localhost:50342/oauth2/token` on Azure),
/// served on each VM's listener.
pub const EXTENSION_PATH: &str = "/oauth2/token";

/// Path of the App Service-style endpoint (`IDENTITY_ENDPOINT`) on each VM's listener.
pub const APP_SERVICE_PATH: &str = "/msi/token";

#[derive(Clone)]
struct VmState {
    imds: Imds,
    vm_id: String,
}

pub fn router(imds: Imds, vm_id: String) -> Router {
    Router::new()
        .fallback(handle)
        .layer(axum::middleware::from_fn(misim_core::events::correlate))
        .with_state(VmState { imds, vm_id })
}

/// Tag naming the addresses a VM calls IMDS from (source-address mode; comma-separated).
pub const SOURCE_IP_TAG: &str = "misim-ip";

/// The addresses a VM's `misim-ip` tag gives it (what it calls IMDS from, and its instance
/// document's network interface).
pub(crate) fn tagged_addresses(
    hosted: &misim_core::internal::HostedVm,
) -> impl Iterator<Item = std::net::IpAddr> + '_ {
    tagged_ips(&hosted.tags)
}

/// The addresses a VM's `misim-ip` tag names.
pub(crate) fn tagged_ips(
    tags: &std::collections::BTreeMap<String, String>,
) -> impl Iterator<Item = std::net::IpAddr> + '_ {
    tags.get(SOURCE_IP_TAG)
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
}

/// Longest query string IMDS reads: real clients send a few hundred bytes; anything near this
/// is a mistake, answered in IMDS's dialect rather than left to the HTTP layer.
pub const MAX_QUERY_BYTES: usize = 8192;
/// The longest form the VM-extension endpoint reads from a POST.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

/// One listener for many VMs (e.g. 169.254.169.254:80 on a VM network): the caller's source
/// address names the VM (its `misim-ip` tag).
pub fn source_router(imds: Imds) -> Router {
    Router::new()
        .fallback(handle_by_source)
        .layer(axum::middleware::from_fn(misim_core::events::correlate))
        .with_state(imds)
}

async fn handle_by_source(State(imds): State<Imds>, request: Request) -> Response {
    let peer = misim_core::serve::peer_addr(&request).map(|a| a.ip());
    let vm_id = peer.and_then(|ip| imds.vm_at(ip));
    match vm_id {
        Some(vm_id) => handle(State(VmState { imds, vm_id }), request).await,
        // A v1 probe without `Metadata` still reads IMDS's 400 (spec/tokens.md §2.2), so that
        // the client goes on to the real request and shows the user why no VM answers; IMDSv2
        // probes and other paths read the 404, as from a known VM (§2.1).
        None => {
            let path = request.uri().path().trim_end_matches('/');
            if request.headers().contains_key(&X_FORWARDED_FOR) {
                ImdsError::Forwarded
            } else if request.method() == Method::GET
                && is_imds_path(path)
                && !metadata_header_ok(request.headers())
            {
                ImdsError::MissingMetadataHeader
            } else {
                ImdsError::UnknownSource(peer.map(|ip| ip.to_string()).unwrap_or_default())
            }
            .into_response()
        }
    }
}

// Header names parsed once: looking one up by text parses and hashes the text each time.
static METADATA: HeaderName = HeaderName::from_static("metadata");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-identity-header");

/// A header's value when it is sent exactly once (a repeated credential header is refused).
fn single_header<'a>(
    headers: &'a axum::http::HeaderMap,
    name: &HeaderName,
) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value),
        _ => None,
    }
}

/// `Metadata: true`, sent once. IMDS documents lower case, but callers that Azure answers send
/// `True` (Google's workload identity federation, Microsoft's own guest-proxy tests), so the
/// value's case is not checked (spec/tokens.md §1.1).
fn metadata_header_ok(headers: &axum::http::HeaderMap) -> bool {
    single_header(headers, &METADATA)
        .is_some_and(|value| value.to_str().is_ok_and(|v| v.eq_ignore_ascii_case("true")))
}

fn json_ok(body: impl serde::Serialize) -> Response {
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(header::SERVER, HeaderValue::from_static(SERVER_HEADER));
    response
}

/// The IMDS paths served (after trailing slashes are trimmed); IMDSv2's and any other are 404.
fn is_imds_path(path: &str) -> bool {
    matches!(
        path,
        "/metadata/identity/oauth2/token"
            | "/metadata/identity/info"
            | "/metadata/versions"
            | "/metadata/instance"
    ) || path.starts_with("/metadata/instance/")
}

/// The identity endpoints served: what fault plans and rate limits apply to. IMDSv2's probe
/// paths are not among them: a plan must not answer MSAL.NET's probe (a 400 there reads as
/// "IMDSv2 available") nor be used up by it.
fn is_identity_path(path: &str) -> bool {
    matches!(
        path,
        "/metadata/identity/oauth2/token"
            | "/metadata/identity/info"
            | APP_SERVICE_PATH
            | EXTENSION_PATH
    )
}

async fn handle(State(state): State<VmState>, request: Request) -> Response {
    // A panic (a bug) answers a retryable 500 in the route's dialect, not a closed connection;
    // caught here rather than by a middleware layer, which would box every request's future.
    let app_service = request.uri().path().trim_end_matches('/') == APP_SERVICE_PATH;
    misim_core::serve::catch_panic(serve_vm(state, request))
        .await
        .unwrap_or_else(|message| panic_answer(app_service, &message))
}

async fn serve_vm(state: VmState, request: Request) -> Response {
    let path = request.uri().path().trim_end_matches('/');
    if is_identity_path(path)
        && let Some(fault) = state.imds.inner.faults.hit(Some(&state.vm_id))
    {
        let app_service_dialect = path == APP_SERVICE_PATH;
        state.imds.inner.events.record(
            misim_core::events::Draft::new(
                "imds.fault.injected",
                format!("fault plan {} hit {}", fault.id, request.uri().path()),
            )
            .vm(&state.vm_id)
            .details(json!({"faultId": fault.id, "plan": fault.request})),
        );
        // Each endpoint fails in its own dialect, as the client it serves expects to parse.
        let answer = misim_core::faults::apply(fault.request.action(), |status| {
            let error = ImdsError::Fault {
                status,
                id: fault.id.clone(),
            };
            if app_service_dialect {
                app_service_failure(&error)
            } else {
                error.into_response()
            }
        })
        .await;
        if let Some(response) = answer {
            return response;
        }
    }
    match route(&state, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// Applies the identity rate limits (when on) to identity requests.
fn admit(state: &VmState, path: &str) -> Result<Option<crate::throttle::Admission>, ImdsError> {
    if !state.imds.inner.config.throttle || !is_identity_path(path) {
        return Ok(None);
    }
    state
        .imds
        .inner
        .throttle
        .admit(&state.vm_id, std::time::Instant::now())
        .map(Some)
        .ok_or(ImdsError::TooManyRequests)
}

/// Query parameters, refusing repeated names and overlong queries.
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ImdsError> {
    if query.is_some_and(|q| q.len() > MAX_QUERY_BYTES) {
        return Err(ImdsError::QueryTooLong);
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|_| ImdsError::DuplicateParameter("?".into()))?;
    for (i, (name, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(n, _)| n == name) {
            return Err(ImdsError::DuplicateParameter(name.clone()));
        }
    }
    Ok(pairs)
}

async fn route(state: &VmState, request: Request) -> Result<Response, ImdsError> {
    let path = request.uri().path().trim_end_matches('/').to_string();
    if path == APP_SERVICE_PATH {
        return Ok(app_service(state, request).await);
    }
    if request.headers().contains_key(&X_FORWARDED_FOR) {
        return Err(ImdsError::Forwarded);
    }
    if path == EXTENSION_PATH {
        return extension(state, request).await;
    }
    if !is_imds_path(&path) {
        // IMDSv2 probes (getPlatformMetadata, credential) and anything else: not here.
        return Err(ImdsError::NotFound);
    }
    if request.method() != Method::GET {
        return Err(ImdsError::MethodNotAllowed);
    }
    if !metadata_header_ok(request.headers()) {
        return Err(ImdsError::MissingMetadataHeader);
    }
    let _admission = admit(state, &path)?;
    let pairs = query_pairs(request.uri().query())?;
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if path == "/metadata/versions" {
        return Ok(json_ok(json!({"apiVersions": API_VERSIONS})));
    }
    let version = param("api-version")
        .filter(|v| API_VERSIONS.contains(v))
        .ok_or(ImdsError::ApiVersion)?;
    let identities = state.imds.vm_identities(&state.vm_id).await?;
    match path.as_str() {
        "/metadata/identity/oauth2/token" => {
            if version < "2018-02-01" {
                return Err(ImdsError::ApiVersion);
            }
            token(state, &identities, &pairs).await
        }
        "/metadata/identity/info" => {
            // The identity category exists from 2018-02-01 (spec/tokens.md §1.7–1.8).
            if version < "2018-02-01" {
                return Err(ImdsError::ApiVersion);
            }
            let tenant = info_tenant(&identities).ok_or(ImdsError::IdentityNotFound)?;
            Ok(json_ok(json!({"tenantId": tenant})))
        }
        _ => instance(state, &path, param("format")).await,
    }
}

/// The tenant `/metadata/identity/info` reports: the system-assigned identity's, else the first
/// user-assigned one's (spec/tokens.md §1.8).
fn info_tenant(identities: &[IdentityRow]) -> Option<&str> {
    identities
        .iter()
        .find(|i| !i.user_assigned)
        .or(identities.first())
        .map(|i| i.tenant_id.as_str())
}

/// Which identity a request selects (spec/tokens.md §1.3).
pub fn select<'a>(
    identities: &'a [IdentityRow],
    pairs: &[(String, String)],
) -> Result<&'a IdentityRow, ImdsError> {
    // An empty selector counts as none: clients treat `client_id=""` as unset, and older .NET
    // clients sent an empty `client_id=` for the system-assigned identity (spec/tokens.md §2.7).
    let selectors: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(k, v)| {
            !v.is_empty()
                && matches!(
                    k.as_str(),
                    "client_id" | "object_id" | "msi_res_id" | "mi_res_id" | "principal_id"
                )
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if selectors.len() > 1 {
        return Err(ImdsError::SeveralSelectors);
    }
    match selectors.first() {
        Some((kind, value)) => identities
            .iter()
            .find(|i| match *kind {
                "client_id" => i.client_id.eq_ignore_ascii_case(value),
                "object_id" | "principal_id" => i.principal_id.eq_ignore_ascii_case(value),
                _ => i.user_assigned && i.resource_id.eq_ignore_ascii_case(value),
            })
            .ok_or(ImdsError::IdentityNotFound),
        None => {
            if let Some(system) = identities.iter().find(|i| !i.user_assigned) {
                return Ok(system);
            }
            match identities {
                [only] => Ok(only),
                [] => Err(ImdsError::IdentityNotFound),
                _ => Err(ImdsError::MultipleIdentities),
            }
        }
    }
}

/// The legacy VM-extension protocol: `GET ?resource=` or `POST` with a form body, `Metadata:
/// true`, no api-version; the same answer as IMDS (spec/tokens.md §1.10).
async fn extension(state: &VmState, request: Request) -> Result<Response, ImdsError> {
    if !metadata_header_ok(request.headers()) {
        return Err(ImdsError::MissingMetadataHeader);
    }
    let _admission = admit(state, EXTENSION_PATH)?;
    let mut pairs = query_pairs(request.uri().query())?;
    match *request.method() {
        Method::GET => {}
        Method::POST => {
            let body = axum::body::to_bytes(request.into_body(), MAX_FORM_BYTES)
                .await
                .map_err(|e| {
                    // Too long, or broken off / badly chunked by the client.
                    match e
                        .into_inner()
                        .downcast::<http_body_util::LengthLimitError>()
                    {
                        Ok(_) => ImdsError::FormTooLong,
                        Err(_) => ImdsError::UnreadableForm,
                    }
                })?;
            let form: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&body).unwrap_or_default();
            for (name, value) in form {
                if pairs.iter().any(|(n, _)| *n == name) {
                    return Err(ImdsError::DuplicateFormParameter(name));
                }
                pairs.push((name, value));
            }
        }
        _ => return Err(ImdsError::MethodNotAllowed),
    }
    let identities = state.imds.vm_identities(&state.vm_id).await?;
    token(state, &identities, &pairs).await
}

/// App Service's error shape: `{"statusCode","message","correlationId"}`; answers a client
/// should retry (throttled, AAD unavailable) say when (spec/tokens.md §1.5).
fn app_service_error(status: StatusCode, message: &str) -> Response {
    let mut response = (status, axum::Json(json!({"statusCode": status.as_u16(), "message": message, "correlationId": uuid::Uuid::new_v4().to_string()}))).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// What a request whose handler panicked gets: a retryable 500 in IMDS's dialect, or in the
/// App Service endpoint's.
pub(crate) fn panic_answer(app_service: bool, message: &str) -> Response {
    let error = ImdsError::Internal(format!("a handler panicked: {message}"));
    if app_service {
        app_service_failure(&error)
    } else {
        error.into_response()
    }
}

/// An IMDS error told in the App Service dialect, with IMDS's status and message.
fn app_service_failure(error: &ImdsError) -> Response {
    if let ImdsError::Internal(detail) = error {
        tracing::error!(error = %detail, "internal error in IMDS's App Service endpoint");
    }
    app_service_error(error.parts().0, &error.to_string())
}

/// The App Service / Functions protocol (2019-08-01) on the VM's listener: `X-IDENTITY-HEADER`
/// instead of `Metadata`, `mi_res_id`/`principal_id` selectors, epoch-string `expires_on`.
async fn app_service(state: &VmState, request: Request) -> Response {
    // Proxied requests are refused as on IMDS, in this endpoint's own dialect.
    if request.headers().contains_key(&X_FORWARDED_FOR) {
        return app_service_failure(&ImdsError::Forwarded);
    }
    if request.method() != Method::GET {
        return app_service_error(StatusCode::METHOD_NOT_ALLOWED, "Only GET is supported.");
    }
    let presented = single_header(request.headers(), &X_IDENTITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let expected = state.imds.identity_header(&state.vm_id);
    if !misim_core::crypto::constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        return app_service_error(
            StatusCode::UNAUTHORIZED,
            "The X-IDENTITY-HEADER header is missing or wrong.",
        );
    }
    let _admission = match admit(state, APP_SERVICE_PATH) {
        Ok(admission) => admission,
        Err(e) => return app_service_failure(&e),
    };
    let pairs = match query_pairs(request.uri().query()) {
        Ok(pairs) => pairs,
        Err(e) => return app_service_failure(&e),
    };
    if pairs
        .iter()
        .find(|(k, _)| k == "api-version")
        .map(|(_, v)| v.as_str())
        != Some("2019-08-01")
    {
        return app_service_error(
            StatusCode::BAD_REQUEST,
            "The api-version must be 2019-08-01.",
        );
    }
    let identities = match state.imds.vm_identities(&state.vm_id).await {
        Ok(identities) => identities,
        Err(e) => return app_service_failure(&e),
    };
    match token(state, &identities, &pairs).await {
        Ok(response) => response,
        Err(ImdsError::AadUnavailable(m)) => {
            app_service_error(StatusCode::INTERNAL_SERVER_ERROR, &m)
        }
        Err(e) => app_service_failure(&e),
    }
}

async fn token(
    state: &VmState,
    identities: &[IdentityRow],
    pairs: &[(String, String)],
) -> Result<Response, ImdsError> {
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    // Only a selector that selected is echoed; an empty one counts as none (see `select`).
    let echoed = |name: &str| param(name).filter(|v| !v.is_empty());
    let resource = param("resource")
        .filter(|r| !r.is_empty())
        .ok_or(ImdsError::MissingResource)?;
    let bypass = match param("bypass_cache") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(_) => return Err(ImdsError::BadBypassCache),
    };
    let identity = select(identities, pairs)?;
    let imds = &state.imds.inner;
    let now = imds.clock.now_unix();
    let cached = if bypass {
        None
    } else {
        imds.cache.get(&identity.principal_id, resource, now)
    };
    let cache = match (&cached, bypass) {
        (Some(_), _) => "hit",
        (None, true) => "bypass",
        (None, false) => "miss",
    };
    let earlier_hits = if cached.is_some() {
        imds.hits.admit(
            &state.vm_id,
            &identity.principal_id,
            resource,
            std::time::Instant::now(),
        )
    } else {
        Some(0)
    };
    if let Some(earlier_hits) = earlier_hits {
        let also = if earlier_hits > 0 {
            format!("; {earlier_hits} more cached tokens since the last one recorded")
        } else {
            String::new()
        };
        imds.events.record(
            misim_core::events::Draft::new(
                "imds.token.requested",
                format!(
                    "the VM asked for a token for {resource} as identity {} (cache {cache}){also}",
                    identity.client_id
                ),
            )
            .vm(&state.vm_id)
            .principal(&identity.principal_id)
            .resource(&identity.resource_id)
            .details(json!({"resource": resource, "clientId": identity.client_id, "cache": cache, "coalescedHits": earlier_hits})),
        );
    }
    let token = match cached {
        Some(token) => token,
        None => {
            let fetched = relay::fetch(
                &imds.http,
                &imds.keys,
                &imds.config.aad_url,
                identity,
                resource,
                misim_core::Clock::wall_now().unix_timestamp(),
            )
            .await;
            let token = match fetched {
                Ok(token) => token,
                Err(error) => {
                    imds.events.record(
                        misim_core::events::Draft::new(
                            "imds.token.failed",
                            format!("AAD gave no token: {error}"),
                        )
                        .vm(&state.vm_id)
                        .principal(&identity.principal_id),
                    );
                    return Err(error);
                }
            };
            imds.cache
                .put(&identity.principal_id, resource, token.clone());
            token
        }
    };
    let expires_in = token.expires_on.saturating_sub(now).max(0);
    let expires_in = expires_in.to_string();
    Ok(json_ok(TokenBody {
        access_token: &token.access_token,
        client_id: &identity.client_id,
        ext_expires_in: expires_in.clone(),
        expires_in,
        expires_on: token.expires_on.to_string(),
        // Echo the selector the client used (Arc-style clients check it).
        mi_res_id: echoed("mi_res_id"),
        msi_res_id: echoed("msi_res_id"),
        not_before: token.not_before.to_string(),
        object_id: echoed("object_id"),
        principal_id: echoed("principal_id"),
        refresh_token: "",
        resource,
        token_type: "Bearer",
    }))
}

/// The token answer: every value a string (spec/tokens.md §1).
#[derive(serde::Serialize)]
struct TokenBody<'a> {
    access_token: &'a serde_json::value::RawValue,
    client_id: &'a str,
    expires_in: String,
    expires_on: String,
    ext_expires_in: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mi_res_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    msi_res_id: Option<&'a str>,
    not_before: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal_id: Option<&'a str>,
    refresh_token: &'static str,
    resource: &'a str,
    token_type: &'static str,
}

/// `/metadata/instance[/...]`: the compute and network documents, JSON or `format=text` leaves.
async fn instance(
    state: &VmState,
    path: &str,
    format: Option<&str>,
) -> Result<Response, ImdsError> {
    let vm = state
        .imds
        .inner
        .store
        .vm(&state.vm_id)
        .await?
        .ok_or(ImdsError::NotFound)?;
    let hosted: misim_core::internal::HostedVm =
        serde_json::from_str(&vm.metadata).map_err(|e| ImdsError::Internal(e.to_string()))?;
    let document = crate::instance::document(&vm.vm_id, &hosted);
    let mut node = &document;
    for segment in path
        .trim_start_matches("/metadata/instance")
        .split('/')
        .filter(|s| !s.is_empty())
    {
        node = match node {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
        .ok_or(ImdsError::NotFound)?;
    }
    let leaf = !node.is_object() && !node.is_array();
    match (leaf, format) {
        (true, Some("text")) => {
            let text = node
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| node.to_string());
            let mut response = (StatusCode::OK, text).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
                .headers_mut()
                .insert(header::SERVER, HeaderValue::from_static(SERVER_HEADER));
            Ok(response)
        }
        (true, _) => Err(ImdsError::LeafNeedsText),
        (false, _) => Ok(json_ok(node.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_answered_in_its_routes_dialect() {
        let read = |response: Response| async move {
            let status = response.status().as_u16();
            let server = response.headers().get(header::SERVER).cloned();
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .expect("body");
            let json: Value = serde_json::from_slice(&body).expect("json");
            (status, server, json)
        };
        let (status, server, body) = read(panic_answer(false, "a bug")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (500, Some("server_error"))
        );
        assert!(server.is_some_and(|s| s.as_bytes().starts_with(b"IMDS/")));
        let (status, _, body) = read(panic_answer(true, "a bug")).await;
        assert_eq!((status, body["statusCode"].as_u64()), (500, Some(500)));
        assert!(body["message"].is_string(), "{body}");
    }

    #[test]
    fn the_token_answer_is_all_strings_and_echoes_only_the_selector_given() {
        let token = relay::Token::new("eyJ.x.y", 1800086399, 1800000000).expect("token");
        let body = TokenBody {
            access_token: &token.access_token,
            client_id: "c",
            expires_in: "86399".into(),
            expires_on: "1800086399".into(),
            ext_expires_in: "86399".into(),
            mi_res_id: None,
            msi_res_id: Some("/subscriptions/s/x"),
            not_before: "1800000000".into(),
            object_id: None,
            principal_id: None,
            refresh_token: "",
            resource: "https://vault.azure.net",
            token_type: "Bearer",
        };
        assert_eq!(
            serde_json::to_string(&body).expect("json"),
            r#"{"access_token":"eyJ.x.y","client_id":"c","expires_in":"86399","expires_on":"1800086399","ext_expires_in":"86399","msi_res_id":"/subscriptions/s/x","not_before":"1800000000","refresh_token":"","resource":"https://vault.azure.net","token_type":"Bearer"}"#
        );
    }

    fn identity(principal: &str, client: &str, user: bool) -> IdentityRow {
        IdentityRow {
            vm_id: "vm".into(),
            principal_id: principal.into(),
            client_id: client.into(),
            tenant_id: "t".into(),
            resource_id: format!(
                "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{principal}"
            ),
            user_assigned: user,
            key_id: "k".into(),
            cert_der: vec![],
            private_pkcs8: vec![],
            installed_at: 0,
        }
    }

    #[test]
    fn identity_info_reports_the_system_assigned_tenant_first() {
        let mut user = identity("u", "cu", true);
        user.tenant_id = "tenant-of-user".into();
        let mut system = identity("s", "cs", false);
        system.tenant_id = "tenant-of-system".into();
        assert_eq!(
            info_tenant(&[user.clone(), system]),
            Some("tenant-of-system")
        );
        assert_eq!(info_tenant(&[user]), Some("tenant-of-user"));
        assert_eq!(info_tenant(&[]), None);
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn default_identity_rules() {
        let system = identity("sys", "c-sys", false);
        let one = identity("one", "c-one", true);
        let two = identity("two", "c-two", true);
        assert_eq!(
            select(&[one.clone(), system.clone()], &[])
                .expect("system")
                .principal_id,
            "sys"
        );
        assert_eq!(
            select(std::slice::from_ref(&one), &[])
                .expect("only")
                .principal_id,
            "one"
        );
        assert!(matches!(
            select(&[one.clone(), two.clone()], &[]),
            Err(ImdsError::MultipleIdentities)
        ));
        assert!(matches!(select(&[], &[]), Err(ImdsError::IdentityNotFound)));
    }

    #[test]
    fn selectors_pick_or_fail() {
        let all = [
            identity("sys", "c-sys", false),
            identity("one", "c-one", true),
            identity("two", "c-two", true),
        ];
        assert_eq!(
            select(&all, &q(&[("client_id", "C-TWO")]))
                .expect("by client")
                .principal_id,
            "two"
        );
        assert_eq!(
            select(&all, &q(&[("object_id", "one")]))
                .expect("by object")
                .principal_id,
            "one"
        );
        let res = all[2].resource_id.to_uppercase();
        assert_eq!(
            select(&all, &q(&[("msi_res_id", &res)]))
                .expect("by resource")
                .principal_id,
            "two"
        );
        assert_eq!(
            select(&all, &q(&[("mi_res_id", &res)]))
                .expect("alias")
                .principal_id,
            "two"
        );
        assert!(matches!(
            select(&all, &q(&[("client_id", "nope")])),
            Err(ImdsError::IdentityNotFound)
        ));
        assert!(matches!(
            select(&all, &q(&[("client_id", "c-one"), ("object_id", "one")])),
            Err(ImdsError::SeveralSelectors)
        ));
    }

    #[test]
    fn an_empty_selector_counts_as_none() {
        let all = [
            identity("sys", "c-sys", false),
            identity("one", "c-one", true),
        ];
        for name in [
            "client_id",
            "object_id",
            "msi_res_id",
            "mi_res_id",
            "principal_id",
        ] {
            assert_eq!(
                select(&all, &q(&[(name, "")]))
                    .expect("the default identity")
                    .principal_id,
                "sys",
                "{name}="
            );
        }
        assert_eq!(
            select(&all, &q(&[("client_id", ""), ("object_id", "one")]))
                .expect("the one selector with a value")
                .principal_id,
            "one"
        );
        assert!(matches!(
            select(&all[1..], &q(&[("client_id", ""), ("object_id", "nope")])),
            Err(ImdsError::IdentityNotFound)
        ));
    }

    #[test]
    fn only_the_served_identity_endpoints_take_faults_and_limits() {
        for path in [
            "/metadata/identity/oauth2/token",
            "/metadata/identity/info",
            APP_SERVICE_PATH,
            EXTENSION_PATH,
        ] {
            assert!(is_identity_path(path), "{path}");
        }
        for path in [
            "/metadata/identity/getPlatformMetadata",
            "/metadata/identity/credential",
            "/metadata/identity/issuecredential",
            "/metadata/identity",
            "/metadata/versions",
            "/metadata/instance",
        ] {
            assert!(!is_identity_path(path), "{path}");
        }
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(matches!(
            query_pairs(Some("resource=a&resource=b")),
            Err(ImdsError::DuplicateParameter(_))
        ));
        assert_eq!(query_pairs(Some("a=1&b=2")).expect("ok").len(), 2);
    }

    #[test]
    fn app_service_errors_say_when_to_retry_only_when_a_retry_can_help() {
        for (status, retry) in [
            (StatusCode::TOO_MANY_REQUESTS, true),
            (StatusCode::INTERNAL_SERVER_ERROR, true),
            (StatusCode::SERVICE_UNAVAILABLE, true),
            (StatusCode::BAD_REQUEST, false),
            (StatusCode::UNAUTHORIZED, false),
        ] {
            let response = app_service_error(status, "m");
            assert_eq!(
                response.headers().get(header::RETRY_AFTER).is_some(),
                retry,
                "{status}"
            );
        }
    }

    #[test]
    fn overlong_queries_are_refused_in_imds_dialect() {
        let long = format!("resource={}", "a".repeat(MAX_QUERY_BYTES));
        assert!(matches!(
            query_pairs(Some(&long)),
            Err(ImdsError::QueryTooLong)
        ));
        let fits = format!("r={}", "a".repeat(MAX_QUERY_BYTES - 2));
        assert_eq!(query_pairs(Some(&fits)).expect("at the limit").len(), 1);
    }

    #[test]
    fn the_metadata_header_is_true_in_any_case_once() {
        let headers = |values: &[&str]| {
            let mut map = axum::http::HeaderMap::new();
            for value in values {
                map.append("Metadata", HeaderValue::from_str(value).expect("value"));
            }
            map
        };
        for good in ["true", "True", "TRUE"] {
            assert!(metadata_header_ok(&headers(&[good])), "{good}");
        }
        for odd in [
            &[][..],
            &["false"],
            &[""],
            &["true "],
            &["yes"],
            &["true", "true"],
        ] {
            assert!(!metadata_header_ok(&headers(odd)), "{odd:?}");
        }
    }
}
