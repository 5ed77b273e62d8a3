//! OpenID discovery documents, JWKS and instance discovery (spec/tokens.md §5).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;

use super::RequestContext;
use super::error::Failure;
use crate::service::Aad;

fn cacheable(body: Value) -> Response {
    let mut response = axum::Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=86400, private"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// The tenant shown in a document: the tenant id, or `{tenantid}` for `common`/`organizations`.
fn tenant_shown(
    aad: &Aad,
    segment: &str,
    headers: &HeaderMap,
) -> Result<(String, String), Failure> {
    let tid = aad
        .discovery_tenant(segment)
        .map_err(|e| RequestContext::from_headers(headers).fail(e))?;
    let path_tenant = tid.clone().unwrap_or_else(|| segment.to_string());
    Ok((path_tenant, tid.unwrap_or_else(|| "{tenantid}".into())))
}

pub async fn v2_configuration(
    State(aad): State<Aad>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let (path_tenant, issuer_tenant) = tenant_shown(&aad, &tenant, &headers)?;
    let base = &aad.config().public_url;
    let t = format!("{base}/{path_tenant}");
    Ok(cacheable(json!({
        "token_endpoint": format!("{t}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{t}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{issuer_tenant}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": format!("{}/oidc/userinfo", aad.config().graph_url),
        "authorization_endpoint": format!("{t}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{t}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{t}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{t}/kerberos"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    })))
}

pub async fn v1_configuration(
    State(aad): State<Aad>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let (path_tenant, issuer_tenant) = tenant_shown(&aad, &tenant, &headers)?;
    let base = &aad.config().public_url;
    let t = format!("{base}/{path_tenant}");
    Ok(cacheable(json!({
        "token_endpoint": format!("{t}/oauth2/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/common/discovery/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "scopes_supported": ["openid"],
        "issuer": format!("{base}/{issuer_tenant}/"),
        "microsoft_multi_refresh_token": true,
        "authorization_endpoint": format!("{t}/oauth2/authorize"),
        "device_authorization_endpoint": format!("{t}/oauth2/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{t}/oauth2/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "amr", "nonce", "email", "given_name", "family_name", "nickname"],
        "check_session_iframe": format!("{t}/oauth2/checksession"),
        "userinfo_endpoint": format!("{t}/openid/userinfo"),
        "kerberos_endpoint": format!("{t}/kerberos"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    })))
}

pub async fn v1_keys(
    State(aad): State<Aad>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    tenant_shown(&aad, &tenant, &headers)?;
    Ok(cacheable(aad.jwks(false)))
}

pub async fn v2_keys(
    State(aad): State<Aad>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    tenant_shown(&aad, &tenant, &headers)?;
    Ok(cacheable(aad.jwks(true)))
}

/// Instance discovery, for clients pointed at misim with `instance_discovery=<url>`: every
/// authority on this host is valid and is its own preferred alias.
pub async fn instance(
    State(aad): State<Aad>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let base = &aad.config().public_url;
    let host = base.split("://").nth(1).unwrap_or(base);
    let tenant = query
        .get("authorization_endpoint")
        .and_then(|e| e.split("://").nth(1))
        .and_then(|rest| rest.split('/').nth(1))
        .unwrap_or("common")
        .to_string();
    let tenant = aad
        .discovery_tenant(&tenant)
        .ok()
        .flatten()
        .unwrap_or(tenant);
    let host_no_port = host.split(':').next().unwrap_or(host);
    cacheable(json!({
        "tenant_discovery_endpoint": format!("{base}/{tenant}/v2.0/.well-known/openid-configuration"),
        "api-version": "1.1",
        "metadata": [{
            "preferred_network": host,
            "preferred_cache": host,
            "aliases": [host, host_no_port],
        }],
    }))
}
