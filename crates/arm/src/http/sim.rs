//! `/_sim/` on ARM's URL (CONTRACT.md, Simulator APIs): the merged event timeline (list and a
//! live server-sent-events stream), the clock, fault plans and token explanations. Versionless;
//! the bootstrap admin's token only (checked by each use case).

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::Duration;

use super::{Call, ok_json};
use crate::auth::TokenValidator;
use crate::error::ArmError;
use crate::service::parse_duration;

/// How often a live stream looks for new events (the `--follow` latency budget is 100 ms).
const POLL_INTERVAL: Duration = Duration::from_millis(40);
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn handle(call: &Call, validator: &TokenValidator) -> Result<Response, ArmError> {
    let path = call.path.trim_end_matches('/').to_ascii_lowercase();
    let m = &call.method;
    match path.as_str() {
        "/_sim/events" if *m == Method::GET => events(call).await,
        "/_sim/events/stream" if *m == Method::GET => stream(call).await,
        "/_sim/clock" if *m == Method::GET => Ok(ok_json(
            StatusCode::OK,
            call.arm.clock_status(&call.caller).await?,
        )),
        "/_sim/clock/advance" if *m == Method::POST => advance(call, validator).await,
        "/_sim/faults" if *m == Method::GET => Ok(ok_json(
            StatusCode::OK,
            call.arm.list_faults(&call.caller).await?,
        )),
        "/_sim/faults" if *m == Method::POST => {
            let request = serde_json::from_slice(&call.body).map_err(|e| {
                ArmError::InvalidRequestContent(format!("The fault plan is not valid: {e}"))
            })?;
            let fault = call.arm.add_fault(&call.caller, request).await?;
            Ok(ok_json(StatusCode::CREATED, fault))
        }
        "/_sim/faults" if *m == Method::DELETE => {
            let removed = call.arm.remove_faults(&call.caller, None).await?;
            Ok(ok_json(StatusCode::OK, json!({ "removed": removed })))
        }
        "/_sim/explain" if *m == Method::POST => explain(call, validator).await,
        _ if path.starts_with("/_sim/faults/") && *m == Method::DELETE => {
            let id = &call.path.trim_end_matches('/')["/_sim/faults/".len()..];
            call.arm.remove_faults(&call.caller, Some(id)).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        "/_sim/events"
        | "/_sim/events/stream"
        | "/_sim/clock"
        | "/_sim/clock/advance"
        | "/_sim/faults"
        | "/_sim/explain" => Err(ArmError::MethodNotAllowed(m.to_string())),
        _ => Err(ArmError::InvalidResourceType(call.path.clone())),
    }
}

async fn events(call: &Call) -> Result<Response, ArmError> {
    let (filter, cursor) = call.arm.timeline_filter(&call.caller, &call.query).await?;
    let page = call.arm.timeline(&filter, &cursor).await;
    Ok(ok_json(
        StatusCode::OK,
        json!({"value": page.events, "cursor": page.cursor.render(), "warnings": page.warnings}),
    ))
}

/// `text/event-stream`: one `event: misim` per event, its cursor as the SSE `id`.
async fn stream(call: &Call) -> Result<Response, ArmError> {
    let (filter, mut cursor) = call.arm.timeline_filter(&call.caller, &call.query).await?;
    let arm = call.arm.clone();
    let (sender, receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    tokio::spawn(async move {
        let mut quiet = Duration::ZERO;
        if sender
            .send(bytes::Bytes::from_static(b": misim events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let page = arm.timeline(&filter, &cursor).await;
            let mut running = cursor.clone();
            for event in &page.events {
                running.advance(event);
                let data = serde_json::to_string(event).unwrap_or_default();
                let frame = format!("id: {}\nevent: misim\ndata: {data}\n\n", running.render());
                if sender.send(bytes::Bytes::from(frame)).await.is_err() {
                    return;
                }
                quiet = Duration::ZERO;
            }
            cursor = page.cursor;
            if quiet >= KEEP_ALIVE {
                quiet = Duration::ZERO;
                if sender
                    .send(bytes::Bytes::from_static(b": keep-alive\n\n"))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if sender.is_closed() {
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
            quiet += POLL_INTERVAL;
        }
    });
    let mut response = Response::new(misim_core::events::channel_body(receiver));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

async fn advance(call: &Call, validator: &TokenValidator) -> Result<Response, ArmError> {
    let body: Value = if call.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&call.body)
            .map_err(|e| ArmError::InvalidRequestContent(format!("The body is not JSON: {e}")))?
    };
    let by = body["by"]
        .as_str()
        .map(str::to_string)
        .or_else(|| body["by"].as_i64().map(|n| n.to_string()))
        .or_else(|| call.query.get("by").cloned())
        .ok_or_else(|| {
            ArmError::InvalidParameter(
                "Say how far to move the clock: {\"by\": \"46d\"} (s, m, h, d, w).".into(),
            )
        })?;
    let secs = parse_duration(&by).map_err(ArmError::InvalidParameter)?;
    let moved = call.arm.advance_clock(&call.caller, secs).await?;
    validator.allow_refresh();
    Ok(ok_json(StatusCode::OK, moved))
}

/// Decodes a token, verifies it as ARM would, and says what it stands for.
async fn explain(call: &Call, validator: &TokenValidator) -> Result<Response, ArmError> {
    call.arm.require_admin(&call.caller)?;
    let body: Value = serde_json::from_slice(&call.body)
        .map_err(|e| ArmError::InvalidRequestContent(format!("The body is not JSON: {e}")))?;
    let token = body["token"]
        .as_str()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ArmError::InvalidParameter("Give the token: {\"token\": \"eyJ...\"}.".into())
        })?;
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    let part = |index: usize| -> Result<Value, ArmError> {
        token
            .split('.')
            .nth(index)
            .and_then(misim_core::jose::b64_lenient)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| ArmError::InvalidParameter("The token is not a well-formed JWT.".into()))
    };
    if token.split('.').count() != 3 {
        return Err(ArmError::InvalidParameter(
            "The token is not a well-formed JWT (three dot-separated parts).".into(),
        ));
    }
    let (header_part, claims) = (part(0)?, part(1)?);
    let verdict = validator.validate(Some(&format!("Bearer {token}"))).await;
    let mut principal = match claims["oid"].as_str() {
        Some(oid) => call.arm.describe_principal(oid).await?,
        None => Value::Null,
    };
    if principal["identity"].is_null() && claims["xms_mirid"].is_string() {
        principal["kind"] = json!("a managed identity that no longer exists");
    }
    let now = misim_core::Clock::wall_now().unix_timestamp();
    Ok(ok_json(
        StatusCode::OK,
        json!({
            "header": header_part,
            "claims": claims,
            "acceptedByArm": verdict.is_ok(),
            "reason": match &verdict {
                Ok(_) => "signature verified with AAD's JWKS; issuer, audience and lifetime are valid at simulated time".to_string(),
                Err(error) => error.to_string(),
            },
            "principal": principal,
            "wallNow": now,
        }),
    ))
}
