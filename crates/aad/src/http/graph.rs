//! The Microsoft Graph v1.0 subset: applications (with their federated identity credentials)
//! and service principals. Any token of the
//! tenant for Graph may read; only the bootstrap admin may write (CONTRACT.md, Graph subset).

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::GraphFailure;
use super::{RequestContext, read_body};
use crate::domain::directory::{
    FederatedCredential, FederatedCredentialDraft, KeyCredential, PasswordCredential, PrincipalKind,
};
use crate::error::AadError;
use crate::service::{
    Aad, ApplicationDraft, ApplicationView, GraphCaller, KeyCredentialDraft, PrincipalView,
};

type GraphResult = Result<Response, GraphFailure>;

fn graph_time(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.replace_nanosecond(0).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn parse_graph_time(value: &Value, field: &str) -> Result<Option<i64>, AadError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339)
            .map(|t| Some(t.unix_timestamp()))
            .map_err(|_| {
                AadError::GraphBadRequest(format!(
                    "Invalid value specified for property '{field}': '{s}' is not an ISO 8601 date."
                ))
            }),
        _ => Err(AadError::GraphBadRequest(format!(
            "Property '{field}' must be a string."
        ))),
    }
}

struct Call {
    aad: Aad,
    ctx: RequestContext,
    caller: GraphCaller,
}

impl Call {
    fn new(aad: Aad, headers: &HeaderMap) -> Result<Self, GraphFailure> {
        let ctx = RequestContext::from_headers(headers);
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let caller = aad.graph_caller(bearer).map_err(|e| ctx.fail(e).graph())?;
        Ok(Self { aad, ctx, caller })
    }

    fn writer(aad: Aad, headers: &HeaderMap) -> Result<Self, GraphFailure> {
        let call = Self::new(aad, headers)?;
        if !call.caller.is_admin {
            return Err(call.fail(AadError::GraphForbidden));
        }
        Ok(call)
    }

    fn fail(&self, error: AadError) -> GraphFailure {
        self.ctx.fail(error).graph()
    }

    async fn json_body(&self, body: Body) -> Result<Map<String, Value>, GraphFailure> {
        let bytes = read_body(body, &self.ctx).await.map_err(|f| f.graph())?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(self.fail(AadError::GraphBadRequest(
                "The request body must be a JSON object.".into(),
            ))),
            Err(e) => Err(self.fail(AadError::GraphBadRequest(format!(
                "Unable to read JSON request payload: {e}"
            )))),
        }
    }

    fn context_url(&self, fragment: &str) -> String {
        format!("{}/v1.0/$metadata#{fragment}", self.aad.config().graph_url)
    }
}

fn key_credential_json(key: &KeyCredential) -> Value {
    json!({
        "customKeyIdentifier": misim_core::crypto::hex_upper(&key.sha1),
        "displayName": key.display_name,
        "endDateTime": graph_time(key.end_at),
        "key": null,
        "keyId": key.key_id,
        "startDateTime": graph_time(key.start_at),
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
    })
}

fn password_json(password: &PasswordCredential, secret_text: Option<&str>) -> Value {
    json!({
        "customKeyIdentifier": null,
        "displayName": password.display_name,
        "endDateTime": graph_time(password.end_at),
        "hint": password.hint,
        "keyId": password.key_id,
        "secretText": secret_text,
        "startDateTime": graph_time(password.start_at),
    })
}

fn application_json(aad: &Aad, view: &ApplicationView) -> Value {
    let app = &view.app;
    json!({
        "id": app.object_id,
        "appId": app.app_id,
        "displayName": app.display_name,
        "createdDateTime": graph_time(app.created_at),
        "publisherDomain": aad.tenant().default_domain,
        "signInAudience": "AzureADMyOrg",
        "identifierUris": app.identifier_uris,
        "api": {"requestedAccessTokenVersion": if app.token_version == 2 { json!(2) } else { Value::Null }},
        "keyCredentials": view.keys.iter().map(key_credential_json).collect::<Vec<_>>(),
        "passwordCredentials": view.passwords.iter().map(|p| password_json(p, None)).collect::<Vec<_>>(),
    })
}

fn principal_json(aad: &Aad, view: &PrincipalView) -> Value {
    let sp = &view.sp;
    let (kind, alternative_names) = match &sp.kind {
        PrincipalKind::Application => ("Application", Vec::new()),
        PrincipalKind::ManagedIdentity {
            resource_id,
            user_assigned,
        } => (
            "ManagedIdentity",
            vec![
                format!(
                    "isExplicit={}",
                    if *user_assigned { "True" } else { "False" }
                ),
                resource_id.clone(),
            ],
        ),
    };
    json!({
        "id": sp.object_id,
        "appId": sp.app_id,
        "displayName": sp.display_name,
        "appDisplayName": sp.display_name,
        "accountEnabled": true,
        "appOwnerOrganizationId": aad.tenant().id,
        "createdDateTime": graph_time(sp.created_at),
        "servicePrincipalType": kind,
        "servicePrincipalNames": [sp.app_id],
        "alternativeNames": alternative_names,
        "signInAudience": "AzureADMyOrg",
        "tags": [],
        "keyCredentials": view.keys.iter().map(key_credential_json).collect::<Vec<_>>(),
        "passwordCredentials": [],
    })
}

/// A parsed `$filter` of the forms clients use against Graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphFilter {
    Eq { property: String, value: String },
    StartsWith { property: String, value: String },
    AnyEq { collection: String, value: String },
}

fn quoted(text: &str) -> Option<String> {
    let inner = text.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner.replace("''", "'"))
}

/// Parses `prop eq 'v'`, `startswith(prop,'v')` and `coll/any(x:x eq 'v')`.
pub fn parse_filter(filter: &str) -> Option<GraphFilter> {
    let filter = filter.trim();
    if let Some(args) = filter
        .strip_prefix("startswith(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (property, value) = args.split_once(',')?;
        return Some(GraphFilter::StartsWith {
            property: property.trim().to_string(),
            value: quoted(value)?,
        });
    }
    if let Some((collection, rest)) = filter.split_once("/any(") {
        let body = rest.strip_suffix(')')?;
        let (var, predicate) = body.split_once(':')?;
        let (lhs, value) = predicate.split_once(" eq ")?;
        if lhs.trim() != var.trim() {
            return None;
        }
        return Some(GraphFilter::AnyEq {
            collection: collection.trim().to_string(),
            value: quoted(value)?,
        });
    }
    let (property, value) = filter.split_once(" eq ")?;
    Some(GraphFilter::Eq {
        property: property.trim().to_string(),
        value: quoted(value)?,
    })
}

fn matches(object: &Value, filter: &GraphFilter) -> bool {
    let text = |p: &str| object.get(p).and_then(Value::as_str).map(str::to_string);
    match filter {
        GraphFilter::Eq { property, value } => {
            text(property).is_some_and(|v| v.eq_ignore_ascii_case(value))
        }
        GraphFilter::StartsWith { property, value } => {
            text(property).is_some_and(|v| v.to_lowercase().starts_with(&value.to_lowercase()))
        }
        GraphFilter::AnyEq { collection, value } => object
            .get(collection)
            .and_then(Value::as_array)
            .is_some_and(|items| {
                items
                    .iter()
                    .any(|i| i.as_str().is_some_and(|s| s.eq_ignore_ascii_case(value)))
            }),
    }
}

/// Applies `$filter`, `$top` and `$skiptoken` and renders a Graph collection: `entity` is its
/// path under `/v1.0` (for `@odata.nextLink`), `context` its `@odata.context` fragment.
fn collection(
    call: &Call,
    entity: &str,
    context: &str,
    items: Vec<Value>,
    query: &HashMap<String, String>,
) -> GraphResult {
    let mut items = items;
    if let Some(filter) = query.get("$filter") {
        let parsed = parse_filter(filter).ok_or_else(|| {
            call.fail(AadError::GraphBadRequest(format!(
                "Unsupported or invalid query filter clause specified: '{filter}'."
            )))
        })?;
        items.retain(|i| matches(i, &parsed));
    }
    let top = match query.get("$top") {
        None => 100,
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|t| (1..=999).contains(t))
            .ok_or_else(|| {
                call.fail(AadError::GraphBadRequest(
                    "Invalid page size specified: '$top' must be between 1 and 999.".into(),
                ))
            })?,
    };
    let skip = match query.get("$skiptoken") {
        None => 0,
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| call.fail(AadError::GraphBadRequest("Invalid $skiptoken.".into())))?,
    };
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(skip).take(top).collect();
    let mut body = json!({"@odata.context": call.context_url(context), "value": page});
    // Saturating: the skip token is the caller's number, up to usize::MAX.
    let next_skip = skip.saturating_add(top);
    if next_skip < total {
        let mut next = format!(
            "{}/v1.0/{entity}?$top={top}&$skiptoken={next_skip}",
            call.aad.config().graph_url,
        );
        if let Some(filter) = query.get("$filter") {
            next.push_str("&$filter=");
            next.push_str(
                &percent_encoding::utf8_percent_encode(filter, percent_encoding::NON_ALPHANUMERIC)
                    .to_string(),
            );
        }
        body["@odata.nextLink"] = json!(next);
    }
    Ok(axum::Json(body).into_response())
}

fn entity(call: &Call, fragment: &str, mut value: Value, status: StatusCode) -> Response {
    value["@odata.context"] = json!(call.context_url(fragment));
    (status, axum::Json(value)).into_response()
}

fn string_list(call: &Call, value: &Value, field: &str) -> Result<Vec<String>, GraphFailure> {
    value
        .as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
        })
        .ok_or_else(|| {
            call.fail(AadError::GraphBadRequest(format!(
                "Property '{field}' must be an array of strings."
            )))
        })
}

fn application_draft(
    call: &Call,
    body: &Map<String, Value>,
) -> Result<ApplicationDraft, GraphFailure> {
    let bad = |m: String| call.fail(AadError::GraphBadRequest(m));
    let mut draft = ApplicationDraft::default();
    if let Some(name) = body.get("displayName") {
        draft.display_name = Some(
            name.as_str()
                .ok_or_else(|| bad("Property 'displayName' must be a string.".into()))?
                .to_string(),
        );
    }
    if let Some(uris) = body.get("identifierUris") {
        draft.identifier_uris = Some(string_list(call, uris, "identifierUris")?);
    }
    if let Some(api) = body.get("api") {
        match api.get("requestedAccessTokenVersion") {
            None | Some(Value::Null) => {}
            Some(v) => {
                let version = v.as_u64().filter(|v| *v == 1 || *v == 2).ok_or_else(|| {
                    bad("Property 'requestedAccessTokenVersion' must be 1 or 2.".into())
                })?;
                draft.token_version = Some(version as u8);
            }
        }
    }
    if let Some(keys) = body.get("keyCredentials") {
        let items = keys
            .as_array()
            .ok_or_else(|| bad("Property 'keyCredentials' must be an array.".into()))?;
        let mut drafts = Vec::new();
        for item in items {
            let key = item.get("key").and_then(Value::as_str).ok_or_else(|| {
                bad("Each keyCredential needs a 'key' (base64 of the certificate).".into())
            })?;
            if let Some(kind) = item.get("type").and_then(Value::as_str)
                && kind != "AsymmetricX509Cert"
            {
                return Err(bad(format!(
                    "Key credential type '{kind}' is not supported; use 'AsymmetricX509Cert'."
                )));
            }
            drafts.push(KeyCredentialDraft {
                key_id: item
                    .get("keyId")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                key: key.to_string(),
                display_name: item
                    .get("displayName")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                start: parse_graph_time(
                    item.get("startDateTime").unwrap_or(&Value::Null),
                    "startDateTime",
                )
                .map_err(|e| call.fail(e))?,
                end: parse_graph_time(
                    item.get("endDateTime").unwrap_or(&Value::Null),
                    "endDateTime",
                )
                .map_err(|e| call.fail(e))?,
            });
        }
        draft.key_credentials = Some(drafts);
    }
    Ok(draft)
}

// ---- applications ----

pub async fn list_applications(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    let call = Call::new(aad, &headers)?;
    let views = call.aad.applications().await.map_err(|e| call.fail(e))?;
    let items = views
        .iter()
        .map(|v| application_json(&call.aad, v))
        .collect();
    collection(&call, "applications", "applications", items, &query)
}

pub async fn create_application(
    State(aad): State<Aad>,
    headers: HeaderMap,
    body: Body,
) -> GraphResult {
    let call = Call::writer(aad, &headers)?;
    let body = call.json_body(body).await?;
    let draft = application_draft(&call, &body)?;
    let view = call
        .aad
        .create_application(draft)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(entity(
        &call,
        "applications/$entity",
        application_json(&call.aad, &view),
        StatusCode::CREATED,
    ))
}

pub async fn get_application(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> GraphResult {
    let call = Call::new(aad, &headers)?;
    let view = call
        .aad
        .application(&id, false)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(entity(
        &call,
        "applications/$entity",
        application_json(&call.aad, &view),
        StatusCode::OK,
    ))
}

pub async fn update_application(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> GraphResult {
    let call = Call::writer(aad, &headers)?;
    let body = call.json_body(body).await?;
    let draft = application_draft(&call, &body)?;
    call.aad
        .update_application(&id, draft)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn delete_application(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> GraphResult {
    let call = Call::writer(aad, &headers)?;
    call.aad
        .delete_application(&id)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn add_password(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> GraphResult {
    let call = Call::writer(aad, &headers)?;
    let body = call.json_body(body).await?;
    let credential = body
        .get("passwordCredential")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    if !credential.is_object() {
        return Err(call.fail(AadError::GraphBadRequest(
            "Property 'passwordCredential' must be an object.".into(),
        )));
    }
    let display_name = credential
        .get("displayName")
        .and_then(Value::as_str)
        .map(str::to_string);
    let end = parse_graph_time(
        credential.get("endDateTime").unwrap_or(&Value::Null),
        "endDateTime",
    )
    .map_err(|e| call.fail(e))?;
    let new = call
        .aad
        .add_password(&id, display_name, end)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(entity(
        &call,
        "microsoft.graph.passwordCredential",
        password_json(&new.credential, Some(&new.secret_text)),
        StatusCode::OK,
    ))
}

pub async fn remove_password(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> GraphResult {
    let call = Call::writer(aad, &headers)?;
    let body = call.json_body(body).await?;
    let key_id = body.get("keyId").and_then(Value::as_str).ok_or_else(|| {
        call.fail(AadError::GraphBadRequest(
            "Property 'keyId' is required.".into(),
        ))
    })?;
    call.aad
        .remove_password(&id, key_id)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- federated identity credentials of applications ----

fn federated_credential_json(credential: &FederatedCredential) -> Value {
    json!({
        "id": credential.id,
        "name": credential.name,
        "issuer": credential.issuer,
        "subject": credential.subject,
        "description": (!credential.description.is_empty()).then_some(&credential.description),
        "audiences": credential.audiences,
    })
}

/// The properties a request sets; read-only `id` and OData annotations are ignored, anything
/// else unknown is refused as Graph does.
fn federated_credential_draft(
    call: &Call,
    body: &Map<String, Value>,
) -> Result<FederatedCredentialDraft, GraphFailure> {
    let bad = |m: String| call.fail(AadError::GraphBadRequest(m));
    let mut draft = FederatedCredentialDraft::default();
    for (field, value) in body {
        let text = || {
            value
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("Property '{field}' must be a string.")))
        };
        match field.as_str() {
            "name" => draft.name = Some(text()?),
            "issuer" => draft.issuer = Some(text()?),
            "subject" => draft.subject = Some(text()?),
            "description" if value.is_null() => draft.description = Some(String::new()),
            "description" => draft.description = Some(text()?),
            "audiences" => draft.audiences = Some(string_list(call, value, "audiences")?),
            "id" => {}
            other if other.starts_with("@odata.") => {}
            other => {
                return Err(bad(format!(
                    "Property '{other}' does not exist on type 'microsoft.graph.federatedIdentityCredential'."
                )));
            }
        }
    }
    Ok(draft)
}

fn credential_entity(id: &str) -> String {
    format!("applications('{id}')/federatedIdentityCredentials/$entity")
}

pub async fn list_federated_credentials(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    let call = Call::new(aad, &headers)?;
    let (_, held) = call
        .aad
        .application_federated_credentials(&id)
        .await
        .map_err(|e| call.fail(e))?;
    let items = held.iter().map(federated_credential_json).collect();
    collection(
        &call,
        &format!("applications/{id}/federatedIdentityCredentials"),
        &format!("applications('{id}')/federatedIdentityCredentials"),
        items,
        &query,
    )
}

pub async fn create_federated_credential(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> GraphResult {
    let call = Call::writer(aad, &headers)?;
    let body = call.json_body(body).await?;
    let draft = federated_credential_draft(&call, &body)?;
    let created = call
        .aad
        .add_application_federated_credential(&id, draft)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(entity(
        &call,
        &credential_entity(&id),
        federated_credential_json(&created),
        StatusCode::CREATED,
    ))
}

pub async fn get_federated_credential(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path((id, credential)): Path<(String, String)>,
) -> GraphResult {
    let call = Call::new(aad, &headers)?;
    let (_, found) = call
        .aad
        .application_federated_credential(&id, &credential)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(entity(
        &call,
        &credential_entity(&id),
        federated_credential_json(&found),
        StatusCode::OK,
    ))
}

pub async fn update_federated_credential(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path((id, credential)): Path<(String, String)>,
    body: Body,
) -> GraphResult {
    let call = Call::writer(aad, &headers)?;
    let body = call.json_body(body).await?;
    let draft = federated_credential_draft(&call, &body)?;
    call.aad
        .update_application_federated_credential(&id, &credential, draft)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn delete_federated_credential(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path((id, credential)): Path<(String, String)>,
) -> GraphResult {
    let call = Call::writer(aad, &headers)?;
    call.aad
        .delete_application_federated_credential(&id, &credential)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- service principals ----

pub async fn list_service_principals(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> GraphResult {
    let call = Call::new(aad, &headers)?;
    let views = call
        .aad
        .service_principals()
        .await
        .map_err(|e| call.fail(e))?;
    let items = views.iter().map(|v| principal_json(&call.aad, v)).collect();
    collection(
        &call,
        "servicePrincipals",
        "servicePrincipals",
        items,
        &query,
    )
}

pub async fn create_service_principal(
    State(aad): State<Aad>,
    headers: HeaderMap,
    body: Body,
) -> GraphResult {
    let call = Call::writer(aad, &headers)?;
    let body = call.json_body(body).await?;
    let app_id = body.get("appId").and_then(Value::as_str).ok_or_else(|| {
        call.fail(AadError::GraphBadRequest(
            "Property 'appId' is required.".into(),
        ))
    })?;
    let view = call
        .aad
        .create_service_principal(app_id)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(entity(
        &call,
        "servicePrincipals/$entity",
        principal_json(&call.aad, &view),
        StatusCode::CREATED,
    ))
}

pub async fn get_service_principal(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> GraphResult {
    let call = Call::new(aad, &headers)?;
    let view = call
        .aad
        .service_principal(&id, false)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(entity(
        &call,
        "servicePrincipals/$entity",
        principal_json(&call.aad, &view),
        StatusCode::OK,
    ))
}

pub async fn delete_service_principal(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> GraphResult {
    let call = Call::writer(aad, &headers)?;
    call.aad
        .delete_service_principal(&id)
        .await
        .map_err(|e| call.fail(e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1.0/directoryObjects/getByIds`: the objects with those ids (service principals and
/// applications; users and groups do not exist here), unknown ids left out, as az uses it to
/// name role-assignment principals.
pub async fn get_by_ids(State(aad): State<Aad>, headers: HeaderMap, body: Body) -> GraphResult {
    let call = Call::new(aad, &headers)?;
    let body = call.json_body(body).await?;
    let ids = body.get("ids").and_then(Value::as_array).ok_or_else(|| {
        call.fail(AadError::GraphBadRequest(
            "Property 'ids' is required.".into(),
        ))
    })?;
    if ids.len() > 1000 {
        return Err(call.fail(AadError::GraphBadRequest(
            "At most 1000 ids may be requested.".into(),
        )));
    }
    let types: Vec<String> = body
        .get("types")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default();
    let wants = |kind: &str| types.is_empty() || types.iter().any(|t| t == kind);
    let mut found = Vec::new();
    for id in ids.iter().filter_map(Value::as_str) {
        if wants("serviceprincipal")
            && let Ok(view) = call.aad.service_principal(id, false).await
        {
            let mut json = principal_json(&call.aad, &view);
            json["@odata.type"] = json!("#microsoft.graph.servicePrincipal");
            found.push(json);
        } else if wants("application")
            && let Ok(view) = call.aad.application(id, false).await
        {
            let mut json = application_json(&call.aad, &view);
            json["@odata.type"] = json!("#microsoft.graph.application");
            found.push(json);
        }
    }
    Ok(
        axum::Json(json!({"@odata.context": call.context_url("directoryObjects"), "value": found}))
            .into_response(),
    )
}

/// `applications(appId='...')` and `servicePrincipals(appId='...')`.
pub async fn get_by_alternate_key(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(segment): Path<String>,
) -> GraphResult {
    let call = Call::new(aad, &headers)?;
    let parse = |prefix: &str| {
        segment
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(")"))
            .and_then(|r| r.strip_prefix("appId="))
            .and_then(quoted)
    };
    if let Some(app_id) = parse("applications(") {
        let view = call
            .aad
            .application(&app_id, true)
            .await
            .map_err(|e| call.fail(e))?;
        return Ok(entity(
            &call,
            "applications/$entity",
            application_json(&call.aad, &view),
            StatusCode::OK,
        ));
    }
    if let Some(app_id) = parse("servicePrincipals(") {
        let view = call
            .aad
            .service_principal(&app_id, true)
            .await
            .map_err(|e| call.fail(e))?;
        return Ok(entity(
            &call,
            "servicePrincipals/$entity",
            principal_json(&call.aad, &view),
            StatusCode::OK,
        ));
    }
    Err(call.fail(AadError::GraphUnknownRoute))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_clients_send_parse() {
        assert_eq!(
            parse_filter("appId eq 'abc'"),
            Some(GraphFilter::Eq {
                property: "appId".into(),
                value: "abc".into()
            })
        );
        assert_eq!(
            parse_filter("servicePrincipalNames/any(c:c eq 'x''y')"),
            Some(GraphFilter::AnyEq {
                collection: "servicePrincipalNames".into(),
                value: "x'y".into()
            })
        );
        assert_eq!(
            parse_filter("startswith(displayName,'ab')"),
            Some(GraphFilter::StartsWith {
                property: "displayName".into(),
                value: "ab".into()
            })
        );
        assert_eq!(parse_filter("appId eq abc"), None);
        assert_eq!(parse_filter("x/any(a:b eq 'v')"), None);
        assert_eq!(parse_filter(""), None);
    }

    #[test]
    fn filters_match_case_insensitively() {
        let object = json!({"displayName": "Alpha", "servicePrincipalNames": ["A1"]});
        assert!(matches(
            &object,
            &GraphFilter::Eq {
                property: "displayName".into(),
                value: "alpha".into()
            }
        ));
        assert!(matches(
            &object,
            &GraphFilter::StartsWith {
                property: "displayName".into(),
                value: "AL".into()
            }
        ));
        assert!(matches(
            &object,
            &GraphFilter::AnyEq {
                collection: "servicePrincipalNames".into(),
                value: "a1".into()
            }
        ));
        assert!(!matches(
            &object,
            &GraphFilter::Eq {
                property: "appId".into(),
                value: "x".into()
            }
        ));
    }
}
