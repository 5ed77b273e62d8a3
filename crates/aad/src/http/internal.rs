//! The internal directory API ARM uses for managed identities (ARCHITECTURE.md §3):
//! authenticated by the internal secret header, never by user tokens.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::GraphFailure;
use super::{RequestContext, read_body};
use crate::error::AadError;
use crate::service::Aad;
use misim_core::internal::{
    INTERNAL_SECRET_HEADER, ManagedIdentityCertificate, ManagedIdentityPrincipal,
};

type Result<T> = std::result::Result<T, GraphFailure>;

fn authorize(aad: &Aad, headers: &HeaderMap) -> Result<RequestContext> {
    let ctx = RequestContext::from_headers(headers);
    let presented = headers
        .get(INTERNAL_SECRET_HEADER)
        .and_then(|v| v.to_str().ok());
    aad.internal_caller(presented)
        .map_err(|e| ctx.fail(e).graph())?;
    Ok(ctx)
}

async fn body_as<T: serde::de::DeserializeOwned>(body: Body, ctx: &RequestContext) -> Result<T> {
    let bytes = read_body(body, ctx).await.map_err(|f| f.graph())?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ctx.fail(AadError::GraphBadRequest(format!(
            "Invalid request body: {e}"
        )))
        .graph()
    })
}

fn principal_body(view: &crate::service::PrincipalView) -> serde_json::Value {
    json!({
        "objectId": view.sp.object_id,
        "appId": view.sp.app_id,
        "displayName": view.sp.display_name,
        "keyIds": view.keys.iter().map(|k| k.key_id.clone()).collect::<Vec<_>>(),
    })
}

/// The tenant and the bootstrap admin (split mode: ARM and `misim connect` learn them here).
pub async fn bootstrap(State(aad): State<Aad>, headers: HeaderMap) -> Result<Response> {
    authorize(&aad, &headers)?;
    let admin = aad.bootstrap();
    Ok(axum::Json(misim_core::internal::BootstrapInfo {
        tenant_id: admin.tenant_id.clone(),
        admin_client_id: admin.client_id.clone(),
        admin_client_secret: admin.client_secret.clone(),
        admin_object_id: admin.object_id.clone(),
    })
    .into_response())
}

/// AAD's part of the timeline (ARM merges it into `/_sim/events`).
pub async fn events(
    State(aad): State<Aad>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    let filter = misim_core::events::EventFilter::from_query(&query)
        .map_err(|e| ctx.fail(AadError::GraphBadRequest(e)).graph())?;
    let events = aad
        .events()
        .list(&filter)
        .await
        .map_err(|e| ctx.fail(AadError::from(e)).graph())?;
    Ok(axum::Json(json!({ "events": events })).into_response())
}

pub async fn list_faults(State(aad): State<Aad>, headers: HeaderMap) -> Result<Response> {
    authorize(&aad, &headers)?;
    Ok(axum::Json(json!({ "faults": aad.faults().list() })).into_response())
}

pub async fn add_fault(State(aad): State<Aad>, headers: HeaderMap, body: Body) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    let request: misim_core::faults::FaultRequest = body_as(body, &ctx).await?;
    let fault = aad
        .faults()
        .add(request)
        .map_err(|e| ctx.fail(AadError::GraphBadRequest(e)).graph())?;
    Ok((StatusCode::CREATED, axum::Json(fault)).into_response())
}

pub async fn clear_faults(State(aad): State<Aad>, headers: HeaderMap) -> Result<Response> {
    authorize(&aad, &headers)?;
    Ok(axum::Json(json!({ "removed": aad.faults().remove(None) })).into_response())
}

pub async fn remove_fault(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    match aad.faults().remove(Some(&id)) {
        0 => Err(ctx
            .fail(AadError::GraphNotFound(format!("No fault plan '{id}'.")))
            .graph()),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// AAD's simulated clock.
pub async fn clock(State(aad): State<Aad>, headers: HeaderMap) -> Result<Response> {
    authorize(&aad, &headers)?;
    Ok(axum::Json(aad.clock_state()).into_response())
}

/// Moves AAD's clock forward (never back) and rolls the signing key when it is due.
pub async fn set_clock(State(aad): State<Aad>, headers: HeaderMap, body: Body) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    let wanted: misim_core::internal::ClockState = body_as(body, &ctx).await?;
    aad.advance_clock(wanted.offset_secs)
        .await
        .map_err(|e| ctx.fail(e).graph())?;
    Ok(axum::Json(aad.clock_state()).into_response())
}

/// The object ids of every managed-identity principal (for ARM's reconcile pass).
pub async fn list_managed_identities(
    State(aad): State<Aad>,
    headers: HeaderMap,
) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    let all = aad
        .service_principals()
        .await
        .map_err(|e| ctx.fail(e).graph())?;
    let ids: Vec<String> = all
        .into_iter()
        .filter(|v| v.sp.is_managed_identity())
        .map(|v| v.sp.object_id)
        .collect();
    Ok(axum::Json(json!({"objectIds": ids})).into_response())
}

pub async fn get_managed_identity(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(object_id): Path<String>,
) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    let view = aad
        .service_principal(&object_id, false)
        .await
        .map_err(|e| ctx.fail(e).graph())?;
    let mut body = principal_body(&view);
    // What ARM's reconcile compares with the federated credentials it holds.
    body["federatedCredentials"] = json!(
        aad.federated_credential_names(&object_id)
            .await
            .map_err(|e| ctx.fail(e).graph())?
    );
    Ok(axum::Json(body).into_response())
}

pub async fn put_managed_identity(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(object_id): Path<String>,
    body: Body,
) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    let principal: ManagedIdentityPrincipal = body_as(body, &ctx).await?;
    let (view, created) = aad
        .put_managed_identity(&object_id, principal)
        .await
        .map_err(|e| ctx.fail(e).graph())?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(principal_body(&view))).into_response())
}

pub async fn delete_managed_identity(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path(object_id): Path<String>,
) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    aad.delete_managed_identity(&object_id)
        .await
        .map_err(|e| ctx.fail(e).graph())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn put_certificate(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path((object_id, key_id)): Path<(String, String)>,
    body: Body,
) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    let certificate: ManagedIdentityCertificate = body_as(body, &ctx).await?;
    let key = aad
        .put_managed_identity_certificate(&object_id, &key_id, &certificate.certificate)
        .await
        .map_err(|e| ctx.fail(e).graph())?;
    Ok(axum::Json(
        json!({"keyId": key.key_id, "thumbprint": misim_core::crypto::hex_upper(&key.sha1)}),
    )
    .into_response())
}

pub async fn delete_certificate(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path((object_id, key_id)): Path<(String, String)>,
) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    aad.delete_managed_identity_certificate(&object_id, &key_id)
        .await
        .map_err(|e| ctx.fail(e).graph())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn put_federated_credential(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path((object_id, name)): Path<(String, String)>,
    body: Body,
) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    let mut credential: crate::domain::directory::FederatedCredential = body_as(body, &ctx).await?;
    credential.name = name;
    aad.put_federated_credential(&object_id, credential)
        .await
        .map_err(|e| ctx.fail(e).graph())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn delete_federated_credential(
    State(aad): State<Aad>,
    headers: HeaderMap,
    Path((object_id, name)): Path<(String, String)>,
) -> Result<Response> {
    let ctx = authorize(&aad, &headers)?;
    aad.delete_federated_credential(&object_id, &name)
        .await
        .map_err(|e| ctx.fail(e).graph())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
