//! The host API ARM uses to install VMs and credentials (ARCHITECTURE.md §3): internal,
//! authenticated with the internal secret, on a listener VMs cannot reach.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use serde_json::json;

use crate::Imds;
use crate::error::ImdsError;
use misim_core::internal::{HostedIdentity, HostedVm, INTERNAL_SECRET_HEADER};

pub fn router(imds: Imds) -> Router {
    Router::new()
        .route("/_internal/host/vms", axum::routing::get(list_vms))
        .route(
            "/_internal/host/vms/{vm_id}",
            put(put_vm).get(get_vm).delete(delete_vm),
        )
        .route(
            "/_internal/host/vms/{vm_id}/identities/{principal_id}",
            put(put_identity).delete(delete_identity),
        )
        .route(
            misim_core::internal::EVENTS_PATH,
            axum::routing::get(events),
        )
        .route(
            misim_core::internal::CLOCK_PATH,
            axum::routing::get(clock).put(set_clock),
        )
        .route(
            misim_core::internal::FAULTS_PATH,
            axum::routing::get(list_faults)
                .post(add_fault)
                .delete(clear_faults),
        )
        .route(
            "/_internal/faults/{id}",
            axum::routing::delete(remove_fault),
        )
        .fallback(|| async { ImdsError::NotFound })
        .method_not_allowed_fallback(|| async { ImdsError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            host_panic_answer as misim_core::serve::PanicAnswer,
            misim_core::serve::contain_panics,
        ))
        .layer(axum::middleware::from_fn(misim_core::events::correlate))
        .with_state(imds)
}

/// What a host-API request whose handler panicked gets: IMDS's retryable 500.
fn host_panic_answer(_: &axum::http::Uri, message: &str) -> axum::response::Response {
    crate::vm_api::panic_answer(false, message)
}

fn authorize(imds: &Imds, headers: &HeaderMap) -> Result<(), ImdsError> {
    let presented = headers
        .get(INTERNAL_SECRET_HEADER)
        .and_then(|v| v.to_str().ok());
    if misim_core::internal::secret_matches(imds.internal_secret(), presented) {
        Ok(())
    } else {
        Err(ImdsError::HostUnauthenticated)
    }
}

/// The largest body the host API reads: above ARM's own limits (a request and a VM's stored
/// properties are at most 1 MiB each), so that what ARM accepted always fits (a refused
/// delivery would stall ARM's outbox).
const MAX_HOST_BODY_BYTES: usize = 2 * 1024 * 1024;

async fn body_as<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, ImdsError> {
    let bytes = axum::body::to_bytes(body, MAX_HOST_BODY_BYTES)
        .await
        .map_err(|_| ImdsError::HostBadRequest("body too large".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ImdsError::HostBadRequest(format!("invalid body: {e}")))
}

/// Every hosted VM with its installed identities (for ARM's reconcile pass).
async fn list_vms(State(imds): State<Imds>, headers: HeaderMap) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    Ok(axum::Json(imds.statuses().await?).into_response())
}

async fn put_vm(
    State(imds): State<Imds>,
    headers: HeaderMap,
    Path(vm_id): Path<String>,
    body: Body,
) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    let vm: HostedVm = body_as(body).await?;
    let endpoint = imds.put_vm(&vm_id, &vm).await?;
    Ok(axum::Json(json!({"vmId": vm_id, "endpoint": endpoint})).into_response())
}

async fn get_vm(
    State(imds): State<Imds>,
    headers: HeaderMap,
    Path(vm_id): Path<String>,
) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    match imds.status(&vm_id).await? {
        Some(status) => Ok(axum::Json(status).into_response()),
        None => Err(ImdsError::NotFound),
    }
}

async fn delete_vm(
    State(imds): State<Imds>,
    headers: HeaderMap,
    Path(vm_id): Path<String>,
) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    imds.delete_vm(&vm_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn put_identity(
    State(imds): State<Imds>,
    headers: HeaderMap,
    Path((vm_id, principal_id)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    let identity: HostedIdentity = body_as(body).await?;
    imds.put_identity(&vm_id, &principal_id, &identity).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_identity(
    State(imds): State<Imds>,
    headers: HeaderMap,
    Path((vm_id, principal_id)): Path<(String, String)>,
) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    imds.delete_identity(&vm_id, &principal_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

type Query = axum::extract::Query<std::collections::HashMap<String, String>>;

/// IMDS's part of the timeline (ARM merges it into `/_sim/events`).
async fn events(
    State(imds): State<Imds>,
    headers: HeaderMap,
    axum::extract::Query(query): Query,
) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    let filter =
        misim_core::events::EventFilter::from_query(&query).map_err(ImdsError::HostBadRequest)?;
    let events = imds.events().list(&filter).await?;
    Ok(axum::Json(json!({ "events": events })).into_response())
}

async fn clock(State(imds): State<Imds>, headers: HeaderMap) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    Ok(axum::Json(imds.clock_state()).into_response())
}

async fn set_clock(
    State(imds): State<Imds>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    let wanted: misim_core::internal::ClockState = body_as(body).await?;
    imds.advance_clock(wanted.offset_secs).await?;
    Ok(axum::Json(imds.clock_state()).into_response())
}

async fn list_faults(State(imds): State<Imds>, headers: HeaderMap) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    Ok(axum::Json(json!({ "faults": imds.faults().list() })).into_response())
}

async fn add_fault(
    State(imds): State<Imds>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    let request: misim_core::faults::FaultRequest = body_as(body).await?;
    let fault = imds
        .faults()
        .add(request)
        .map_err(ImdsError::HostBadRequest)?;
    Ok((StatusCode::CREATED, axum::Json(fault)).into_response())
}

async fn clear_faults(State(imds): State<Imds>, headers: HeaderMap) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    let removed = imds.faults().remove(None);
    Ok(axum::Json(json!({ "removed": removed })).into_response())
}

async fn remove_fault(
    State(imds): State<Imds>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ImdsError> {
    authorize(&imds, &headers)?;
    match imds.faults().remove(Some(&id)) {
        0 => Err(ImdsError::NotFound),
        _ => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
