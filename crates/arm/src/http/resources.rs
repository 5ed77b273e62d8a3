//! Handlers for subscriptions, tenants, resource groups, user-assigned identities, providers,
//! operation results and `/metadata/endpoints`.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::filter::ResourceFilter;
use super::{Call, ok_json, put_status};
use crate::domain::path::{ApiFamily, Target};
use crate::error::ArmError;
use crate::service::{Arm, FicInput, IdentityView, TrackedInput, VmInput, VmView, WriteConditions};
use crate::store::ResourceRow;

pub async fn handle(
    call: &Call,
    target: Target,
    headers: &HeaderMap,
) -> Result<Response, ArmError> {
    let m = &call.method;
    match target {
        Target::Tenants if *m == Method::GET => {
            call.page(vec![tenant_json(&call.arm)], Value::clone)
        }
        Target::Subscriptions if *m == Method::GET => {
            let subs = call.arm.visible_subscriptions(&call.caller).await?;
            call.page(subs, |_| subscription_json(&call.arm))
        }
        Target::Subscription { sub } if *m == Method::GET => {
            call.arm.subscription(&call.caller, &sub).await?;
            Ok(ok_json(StatusCode::OK, subscription_json(&call.arm)))
        }
        Target::Providers { sub } if *m == Method::GET => {
            call.arm.subscription(&call.caller, &sub).await?;
            let known: Vec<&str> = PROVIDERS.iter().map(|(namespace, _)| *namespace).collect();
            call.page(known, |namespace| provider_json(&sub, namespace))
        }
        Target::Provider { sub, namespace } if *m == Method::GET => {
            call.arm.subscription(&call.caller, &sub).await?;
            Ok(ok_json(StatusCode::OK, provider_json(&sub, &namespace)))
        }
        Target::ProviderRegistration { sub, namespace } if *m == Method::POST => {
            call.arm
                .register_provider(&call.caller, &sub, &namespace)
                .await?;
            Ok(ok_json(StatusCode::OK, provider_json(&sub, &namespace)))
        }
        Target::ResourceGroups { sub } if *m == Method::GET => {
            let filter =
                ResourceFilter::parse(call.query.get("$filter").map(String::as_str), false)?;
            let mut groups = call.arm.groups(&call.caller, &sub).await?;
            groups.retain(|g| filter.matches(g, GROUP_TYPE));
            call.page(groups, group_json)
        }
        Target::ResourceGroup { sub, rg } => group(call, &sub, &rg).await,
        Target::SubscriptionResources { sub } if *m == Method::GET => {
            let filter =
                ResourceFilter::parse(call.query.get("$filter").map(String::as_str), true)?;
            let mut all = call.arm.subscription_resources(&call.caller, &sub).await?;
            all.retain(|r| filter.matches(r, resource_type(r)));
            call.page(all, generic_json)
        }
        Target::GroupResources { sub, rg } if *m == Method::GET => {
            let filter =
                ResourceFilter::parse(call.query.get("$filter").map(String::as_str), true)?;
            let mut members = call.arm.group_resources(&call.caller, &sub, &rg).await?;
            members.retain(|r| filter.matches(r, resource_type(r)));
            call.page(members, generic_json)
        }
        Target::OperationResult { sub, token } if *m == Method::GET => {
            operation_result(call, &sub, &token).await
        }
        Target::Identities { sub, rg } if *m == Method::GET => {
            let items = call
                .arm
                .identities(&call.caller, &sub, rg.as_deref())
                .await?;
            call.page(items, |i| identity_json(call, i))
        }
        Target::Identity { sub, rg, name } => identity(call, &sub, &rg, &name).await,
        Target::FederatedCredentials { sub, rg, identity } if *m == Method::GET => {
            let rows = call.arm.fics(&call.caller, &sub, &rg, &identity).await?;
            call.page(rows, fic_json)
        }
        Target::FederatedCredential {
            sub,
            rg,
            identity,
            name,
        } => fic(call, &sub, &rg, &identity, &name).await,
        Target::VirtualMachines { sub, rg } if *m == Method::GET => {
            let vms = call.arm.vms(&call.caller, &sub, rg.as_deref()).await?;
            call.page(vms, |v| vm_json(call, v))
        }
        Target::VirtualMachine { sub, rg, name } => vm(call, headers, &sub, &rg, &name).await,
        Target::SimVm { key } if *m == Method::GET => {
            let (view, status) = call.arm.sim_vm(&call.caller, &key).await?;
            Ok(ok_json(
                StatusCode::OK,
                json!({
                    "id": view.resource.id,
                    "name": view.resource.name,
                    "vmId": view.state.vm_id,
                    "imds": status.as_ref().and_then(|s| s.endpoint.clone()),
                    "identityHeader": status.as_ref().map(|s| s.identity_header.clone()),
                    "identities": status.map(|s| s.identities).unwrap_or_default(),
                }),
            ))
        }
        Target::SystemIdentity { scope } if *m == Method::GET => {
            let (location, identity) = call.arm.system_identity(&call.caller, &scope).await?;
            Ok(ok_json(
                StatusCode::OK,
                json!({
                    "id": format!("{scope}/providers/Microsoft.ManagedIdentity/identities/default"),
                    "name": "default",
                    "type": "Microsoft.ManagedIdentity/identities",
                    "location": location,
                    "properties": {
                        "tenantId": call.arm.tenant_id(),
                        "principalId": identity.principal_id,
                        "clientId": identity.client_id,
                        "clientSecretUrl": format!("{}{scope}/credentials/v2/identities?tid={}&oid={}&aid={}", call.arm.public_url(), call.arm.tenant_id(), identity.principal_id, identity.client_id),
                    },
                }),
            ))
        }
        _ => Err(ArmError::MethodNotAllowed(m.to_string())),
    }
}

fn tags_of(body: &Map<String, Value>) -> Result<Option<Map<String, Value>>, ArmError> {
    match body.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(tags)) => {
            for (key, value) in tags {
                if !value.is_string() {
                    return Err(ArmError::InvalidRequestContent(format!(
                        "The value of tag '{key}' must be a string"
                    )));
                }
                if key.is_empty()
                    || key.len() > 512
                    || key
                        .chars()
                        .any(|c| "<>%&\\?/".contains(c) || c.is_control())
                {
                    return Err(ArmError::InvalidParameter(format!(
                        "The tag name '{key}' is invalid."
                    )));
                }
                if value.as_str().is_some_and(|v| v.len() > 256) {
                    return Err(ArmError::InvalidParameter(format!(
                        "The value of tag '{key}' is longer than 256 characters."
                    )));
                }
            }
            if tags.len() > 50 {
                return Err(ArmError::InvalidParameter(
                    "At most 50 tags are allowed.".into(),
                ));
            }
            Ok(Some(tags.clone()))
        }
        Some(_) => Err(ArmError::InvalidRequestContent(
            "'tags' must be an object of strings".into(),
        )),
    }
}

fn tracked_input(body: &Map<String, Value>) -> Result<TrackedInput, ArmError> {
    let location = match body.get("location") {
        None | Some(Value::Null) => return Err(ArmError::LocationRequired),
        Some(Value::String(l)) if !l.trim().is_empty() => l.clone(),
        Some(Value::String(_)) => return Err(ArmError::LocationRequired),
        Some(_) => {
            return Err(ArmError::InvalidRequestContent(
                "'location' must be a string".into(),
            ));
        }
    };
    Ok(TrackedInput {
        location,
        tags: tags_of(body)?.unwrap_or_default(),
    })
}

fn tags_json(row: &ResourceRow) -> Value {
    serde_json::from_str(&row.tags).unwrap_or_else(|_| json!({}))
}

fn group_json(row: &ResourceRow) -> Value {
    json!({
        "id": row.id,
        "name": row.name,
        "type": GROUP_TYPE,
        "location": row.location,
        "tags": tags_json(row),
        "properties": {"provisioningState": row.state},
    })
}

const GROUP_TYPE: &str = "Microsoft.Resources/resourceGroups";

/// A resource type a provider lists: its name, the family of its api-versions, and whether it
/// is regional.
type ResourceType = (&'static str, ApiFamily, bool);

/// The namespaces misim serves and their resource types, each with its api-versions newest
/// first (`az resource` picks the first that is not a preview).
const PROVIDERS: &[(&str, &[ResourceType])] = &[
    (
        "Microsoft.Authorization",
        &[
            ("roleAssignments", ApiFamily::Authorization, false),
            ("roleDefinitions", ApiFamily::Authorization, false),
        ],
    ),
    (
        "Microsoft.Compute",
        &[("virtualMachines", ApiFamily::Compute, true)],
    ),
    (
        "Microsoft.ManagedIdentity",
        &[
            ("Identities", ApiFamily::ManagedIdentity, false),
            ("userAssignedIdentities", ApiFamily::ManagedIdentity, true),
            (
                "userAssignedIdentities/federatedIdentityCredentials",
                ApiFamily::ManagedIdentity,
                false,
            ),
        ],
    ),
    (
        "Microsoft.Resources",
        &[
            ("resourceGroups", ApiFamily::Resources, false),
            ("subscriptions", ApiFamily::Resources, false),
        ],
    ),
];

/// Regions listed for regional types; any location is accepted, as normalised names.
const LOCATIONS: &[&str] = &[
    "East US",
    "East US 2",
    "West US",
    "West US 2",
    "Central US",
    "North Europe",
    "West Europe",
    "UK South",
    "Southeast Asia",
    "Australia East",
];

/// A provider as `GET /subscriptions/{sub}/providers[/{namespace}]` shows it: registered, with
/// its resource types if misim serves the namespace (any other namespace is registered too,
/// with none, so that tools registering a default set at start-up go on).
fn provider_json(sub: &str, namespace: &str) -> Value {
    let known = PROVIDERS
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(namespace));
    let namespace = known.map_or(namespace, |(known, _)| *known);
    let types: Vec<Value> = known
        .map(|(_, types)| *types)
        .unwrap_or_default()
        .iter()
        .map(|(name, family, regional)| {
            let mut versions: Vec<&str> = family.examples().split(", ").collect();
            versions.reverse();
            let locations: &[&str] = if *regional { LOCATIONS } else { &[] };
            json!({"resourceType": name, "locations": locations, "apiVersions": versions})
        })
        .collect();
    json!({
        "id": format!("/subscriptions/{sub}/providers/{namespace}"),
        "namespace": namespace,
        "registrationState": "Registered",
        "registrationPolicy": "RegistrationRequired",
        "resourceTypes": types,
    })
}

/// The ARM type of a group's top-level resource.
fn resource_type(row: &ResourceRow) -> &'static str {
    match row.kind.as_str() {
        crate::service::KIND_VM => "Microsoft.Compute/virtualMachines",
        _ => "Microsoft.ManagedIdentity/userAssignedIdentities",
    }
}

fn generic_json(row: &ResourceRow) -> Value {
    json!({"id": row.id, "name": row.name, "type": resource_type(row), "location": row.location, "tags": tags_json(row)})
}

fn system_data(row: &ResourceRow) -> Value {
    let time = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
    };
    json!({
        "createdBy": row.created_by, "createdByType": "Application", "createdAt": time(row.created_at),
        "lastModifiedBy": row.updated_by, "lastModifiedByType": "Application", "lastModifiedAt": time(row.updated_at),
    })
}

fn identity_json(call: &Call, view: &IdentityView) -> Value {
    let row = &view.resource;
    let mut properties = json!({"tenantId": call.arm.tenant_id(), "principalId": view.principal_id, "clientId": view.client_id});
    // `isolationScope` exists from 2024-11-30 on.
    if call.api_version.as_str() >= "2024-11-30" {
        properties["isolationScope"] = json!("None");
    }
    let mut body = json!({
        "id": row.id,
        "name": row.name,
        "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
        "location": row.location,
        "tags": tags_json(row),
        "properties": properties,
    });
    if call.api_version.as_str() >= "2023-01-31" {
        body["systemData"] = system_data(row);
    }
    body
}

fn tenant_json(arm: &Arm) -> Value {
    json!({
        "id": format!("/tenants/{}", arm.tenant_id()),
        "tenantId": arm.tenant_id(),
        "countryCode": "US",
        "displayName": "misim Simulated Tenant",
        "domains": ["misim.onmicrosoft.com"],
        "tenantCategory": "Home",
        "defaultDomain": "misim.onmicrosoft.com",
        "tenantType": "AAD",
    })
}

fn subscription_json(arm: &Arm) -> Value {
    json!({
        "id": format!("/subscriptions/{}", arm.subscription_id()),
        "subscriptionId": arm.subscription_id(),
        "tenantId": arm.tenant_id(),
        "displayName": "misim Simulated Subscription",
        "state": "Enabled",
        "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01", "quotaId": "PayAsYouGo_2014-09-01", "spendingLimit": "Off"},
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "tags": {},
    })
}

async fn group(call: &Call, sub: &str, rg: &str) -> Result<Response, ArmError> {
    let arm = &call.arm;
    match call.method {
        Method::GET => Ok(ok_json(
            StatusCode::OK,
            group_json(&arm.group(&call.caller, sub, rg).await?),
        )),
        Method::HEAD => existence(arm.group(&call.caller, sub, rg).await),
        Method::PUT => {
            let input = tracked_input(&call.json_object()?)?;
            let (row, created) = arm.put_group(&call.caller, sub, rg, input).await?;
            Ok(ok_json(put_status(created), group_json(&row)))
        }
        Method::PATCH => {
            let body = call.json_object()?;
            Ok(ok_json(
                StatusCode::OK,
                group_json(
                    &arm.patch_group(&call.caller, sub, rg, tags_of(&body)?)
                        .await?,
                ),
            ))
        }
        Method::DELETE => {
            arm.delete_group(&call.caller, sub, rg).await?;
            // A long-running operation, already finished: the first poll answers 200.
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json!({"jobId": format!("RESOURCEGROUPDELETIONJOB-{}", rg.to_uppercase()), "rg": rg}).to_string());
            let location = call.url(
                &format!(
                    "/subscriptions/{}/operationresults/{token}",
                    arm.subscription_id()
                ),
                "",
            );
            let mut response = StatusCode::ACCEPTED.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, v);
            }
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(response)
        }
        ref other => Err(ArmError::MethodNotAllowed(other.to_string())),
    }
}

async fn operation_result(call: &Call, sub: &str, token: &str) -> Result<Response, ArmError> {
    // Whoever started the operation may poll it, even if the deletion took their rights with it;
    // deletions finish before their 202 is sent, so a known operation is always done.
    if !sub.eq_ignore_ascii_case(call.arm.subscription_id()) {
        return Err(ArmError::SubscriptionNotFound(sub.to_string()));
    }
    let known = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v["rg"].is_string());
    if known {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(ArmError::InvalidParameter(format!(
            "The operation '{token}' is not known."
        )))
    }
}

/// HEAD on a group or resource (`check_existence[_by_id]`): 204 when it exists, 404 when it or
/// its group does not (the dispatcher drops any body); anything else, a 403 say, as it is.
fn existence<T>(found: Result<T, ArmError>) -> Result<Response, ArmError> {
    match found {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(ArmError::ResourceNotFound { .. } | ArmError::ResourceGroupNotFound(_)) => {
            Ok(StatusCode::NOT_FOUND.into_response())
        }
        Err(e) => Err(e),
    }
}

async fn identity(call: &Call, sub: &str, rg: &str, name: &str) -> Result<Response, ArmError> {
    let arm = &call.arm;
    match call.method {
        Method::GET => Ok(ok_json(
            StatusCode::OK,
            identity_json(call, &arm.identity(&call.caller, sub, rg, name).await?),
        )),
        Method::HEAD => existence(arm.identity(&call.caller, sub, rg, name).await),
        Method::PUT => {
            let input = tracked_input(&call.json_object()?)?;
            let (view, created) = arm.put_identity(&call.caller, sub, rg, name, input).await?;
            Ok(ok_json(put_status(created), identity_json(call, &view)))
        }
        Method::PATCH => {
            let body = call.json_object()?;
            let location = match body.get("location") {
                None | Some(Value::Null) => None,
                Some(Value::String(l)) => Some(l.clone()),
                Some(_) => {
                    return Err(ArmError::InvalidRequestContent(
                        "'location' must be a string".into(),
                    ));
                }
            };
            let view = arm
                .patch_identity(&call.caller, sub, rg, name, tags_of(&body)?, location)
                .await?;
            Ok(ok_json(StatusCode::OK, identity_json(call, &view)))
        }
        Method::DELETE => {
            let deleted = arm.delete_identity(&call.caller, sub, rg, name).await?;
            Ok(if deleted {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            }
            .into_response())
        }
        ref other => Err(ArmError::MethodNotAllowed(other.to_string())),
    }
}

/// `GET /metadata/endpoints` (no authentication): one object for 2022-09-01 and later, the list
/// of clouds for 2019-05-01/2020-06-01, the legacy object otherwise (spec/arm.md §2.5).
pub fn metadata_endpoints(arm: &Arm, api_version: Option<&str>) -> Response {
    let (arm_url, aad_url, graph_url) = (arm.public_url(), arm.aad_url(), arm.graph_url());
    let audiences = json!([
        "https://management.core.windows.net/",
        "https://management.azure.com/"
    ]);
    let cloud = json!({
        "name": "AzureSimulator",
        "portal": format!("{arm_url}/portal"),
        "resourceManager": format!("{arm_url}/"),
        "authentication": {"loginEndpoint": format!("{aad_url}/"), "audiences": audiences, "tenant": "common", "identityProvider": "AAD"},
        "microsoftGraphResourceId": format!("{graph_url}/"),
        "graph": format!("{graph_url}/"),
        "graphAudience": format!("{graph_url}/"),
        "media": format!("{arm_url}/media/"),
        "batch": format!("{arm_url}/batch/"),
        "gallery": format!("{arm_url}/gallery/"),
        "sqlManagement": format!("{arm_url}/sql/"),
        "vmImageAliasDoc": format!("{arm_url}/aliases.json"),
        "ossrdbmsResourceId": format!("{arm_url}/ossrdbms"),
        "ossrDbmsResourceId": format!("{arm_url}/ossrdbms"),
        "suffixes": {"keyVaultDns": "vault.misim.localhost", "storage": "storage.misim.localhost", "sqlServerHostname": "database.misim.localhost", "acrLoginServer": "acr.misim.localhost", "mhsmDns": "managedhsm.misim.localhost"},
    });
    let body = match api_version {
        Some("2019-05-01") | Some("2020-06-01") => json!([cloud]),
        Some(v) if v >= "2022-09-01" && v.len() >= 10 => cloud,
        _ => json!({
            "galleryEndpoint": format!("{arm_url}/gallery/"),
            "graphEndpoint": format!("{graph_url}/"),
            "portalEndpoint": format!("{arm_url}/portal"),
            "authentication": {"loginEndpoint": format!("{aad_url}/"), "audiences": audiences},
        }),
    };
    ok_json(StatusCode::OK, body)
}

fn vm_json(call: &Call, view: &VmView) -> Value {
    let row = &view.resource;
    let state = &view.state;
    let mut properties = Value::Object(state.properties.clone());
    properties["vmId"] = json!(state.vm_id);
    properties["provisioningState"] = json!(row.state);
    properties["timeCreated"] = json!(
        time::OffsetDateTime::from_unix_timestamp(state.time_created)
            .ok()
            .and_then(|t| t
                .format(&time::format_description::well_known::Rfc3339)
                .ok())
    );
    let mut body = json!({
        "id": row.id,
        "name": row.name,
        "type": "Microsoft.Compute/virtualMachines",
        "location": row.location,
        "tags": tags_json(row),
        "etag": format!("\"{}\"", state.version),
        "properties": properties,
        "resources": [],
    });
    let desired = state.desired();
    if desired.system || !desired.user.is_empty() {
        let mut identity = json!({"type": desired.type_name()});
        if let Some(principal) = &state.system_principal_id {
            identity["principalId"] = json!(principal);
            identity["tenantId"] = json!(call.arm.tenant_id());
        }
        if !state.attached.is_empty() {
            let map: Map<String, Value> = state
                .attached
                .iter()
                .map(|a| {
                    (
                        a.id.clone(),
                        json!({"principalId": a.principal_id, "clientId": a.client_id}),
                    )
                })
                .collect();
            identity["userAssignedIdentities"] = Value::Object(map);
        }
        body["identity"] = identity;
    }
    body
}

/// The conditional headers of a VM write as sent; ARM parses them after authorizing the write.
fn write_conditions(headers: &HeaderMap) -> WriteConditions {
    let joined = |name: header::HeaderName| -> Option<String> {
        let lines: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .collect();
        (!lines.is_empty()).then(|| lines.join(", "))
    };
    WriteConditions {
        if_match: joined(header::IF_MATCH),
        if_none_match: joined(header::IF_NONE_MATCH),
    }
}

fn vm_input(body: &Map<String, Value>) -> Result<VmInput, ArmError> {
    let location = match body.get("location") {
        None | Some(Value::Null) => None,
        Some(Value::String(l)) if !l.trim().is_empty() => Some(l.clone()),
        Some(Value::String(_)) => return Err(ArmError::LocationRequired),
        Some(_) => {
            return Err(ArmError::InvalidRequestContent(
                "'location' must be a string".into(),
            ));
        }
    };
    let properties = match body.get("properties") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p.clone()),
        Some(_) => {
            return Err(ArmError::InvalidRequestContent(
                "'properties' must be an object".into(),
            ));
        }
    };
    Ok(VmInput {
        location,
        tags: tags_of(body)?,
        properties,
        identity: body.get("identity").cloned(),
        ..VmInput::default()
    })
}

async fn vm(
    call: &Call,
    headers: &HeaderMap,
    sub: &str,
    rg: &str,
    name: &str,
) -> Result<Response, ArmError> {
    let arm = &call.arm;
    match call.method {
        Method::GET => Ok(ok_json(
            StatusCode::OK,
            vm_json(call, &arm.vm(&call.caller, sub, rg, name).await?),
        )),
        Method::HEAD => existence(arm.vm(&call.caller, sub, rg, name).await),
        Method::PUT | Method::PATCH => {
            let patch = call.method == Method::PATCH;
            let input = VmInput {
                conditions: write_conditions(headers),
                ..vm_input(&call.json_object()?)?
            };
            if !patch && input.location.is_none() {
                return Err(ArmError::LocationRequired);
            }
            let (view, created) = arm
                .put_vm(&call.caller, sub, rg, name, input, patch)
                .await?;
            // Work is finished before answering: terminal state, no async headers, so every
            // poller (body, Azure-AsyncOperation, Location) ends at once.
            Ok(ok_json(put_status(created), vm_json(call, &view)))
        }
        Method::DELETE => {
            let deleted = arm.delete_vm(&call.caller, sub, rg, name).await?;
            Ok(if deleted {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            }
            .into_response())
        }
        ref other => Err(ArmError::MethodNotAllowed(other.to_string())),
    }
}

fn fic_json(row: &ResourceRow) -> Value {
    let properties: Value = serde_json::from_str(&row.properties).unwrap_or_else(|_| json!({}));
    json!({"id": row.id, "name": row.name, "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials", "properties": properties})
}

fn fic_input(body: &Map<String, Value>) -> Result<FicInput, ArmError> {
    let properties = body
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| ArmError::InvalidRequestContent("'properties' is required".into()))?;
    let text = |field: &str| -> Result<String, ArmError> {
        match properties.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(ArmError::InvalidParameter(format!(
                "The property '{field}' is required."
            ))),
            Some(_) => Err(ArmError::InvalidRequestContent(format!(
                "'{field}' must be a string"
            ))),
        }
    };
    let audiences = match properties.get("audiences") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|a| a.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ArmError::InvalidRequestContent("'audiences' must be an array of strings".into())
            })?,
        None | Some(Value::Null) => {
            return Err(ArmError::InvalidParameter(
                "The property 'audiences' is required.".into(),
            ));
        }
        Some(_) => {
            return Err(ArmError::InvalidRequestContent(
                "'audiences' must be an array of strings".into(),
            ));
        }
    };
    Ok(FicInput {
        issuer: text("issuer")?,
        subject: text("subject")?,
        audiences,
    })
}

async fn fic(
    call: &Call,
    sub: &str,
    rg: &str,
    identity: &str,
    name: &str,
) -> Result<Response, ArmError> {
    let arm = &call.arm;
    match call.method {
        Method::GET => Ok(ok_json(
            StatusCode::OK,
            fic_json(&arm.fic(&call.caller, sub, rg, identity, name).await?),
        )),
        Method::HEAD => existence(arm.fic(&call.caller, sub, rg, identity, name).await),
        Method::PUT => {
            let input = fic_input(&call.json_object()?)?;
            let (row, created) = arm
                .put_fic(&call.caller, sub, rg, identity, name, input)
                .await?;
            Ok(ok_json(put_status(created), fic_json(&row)))
        }
        Method::DELETE => {
            let deleted = arm
                .delete_fic(&call.caller, sub, rg, identity, name)
                .await?;
            Ok(if deleted {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            }
            .into_response())
        }
        ref other => Err(ArmError::MethodNotAllowed(other.to_string())),
    }
}
