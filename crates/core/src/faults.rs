//! Fault plans (CONTRACT.md, Simulator APIs): Azure's failure modes on demand, for IMDS (one VM
//! or all) and for AAD's token endpoints. A plan fires for the next N requests, for a while
//! (wall time: it is a test fixture, not simulated Azure state), with a probability, or until
//! removed. Plans live in the memory of the service they apply to; a restart clears them.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// What a plan does to a request it hits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum FaultAction {
    /// Answer this HTTP status (with `Retry-After` seconds when given).
    #[serde(rename_all = "camelCase")]
    Status {
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u32>,
    },
    /// Answer normally, this much later.
    #[serde(rename_all = "camelCase")]
    Latency { latency_ms: u64 },
    /// Close the connection without an answer.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultKind {
    Status,
    Latency,
    Drop,
}

/// A plan as the APIs take it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRequest {
    /// `imds` or `aad`.
    pub target: String,
    /// IMDS only: the VM (ARM resolves names to the vmId before IMDS sees it). None: every VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// `status`, `latency` or `drop`.
    pub kind: FaultKind,
    /// kind=status: the HTTP status to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// kind=status: a `Retry-After` header, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
    /// kind=latency: how much later to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Fire for the next N matching requests only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Fire for this many seconds from now only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    /// Fire on this share of matching requests (0 < p ≤ 1; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
}

/// Longest latency and duration a plan may ask for.
pub const MAX_LATENCY_MS: u64 = 120_000;
pub const MAX_DURATION_SECS: u64 = 7 * 86_400;
pub const MAX_COUNT: u32 = 1_000_000;

impl FaultRequest {
    /// Refuses plans that make no sense, with a message for the caller.
    pub fn validate(&self) -> Result<(), String> {
        match self.target.as_str() {
            "imds" => {}
            "aad" if self.vm.is_some() => {
                return Err("'vm' applies to IMDS faults only".into());
            }
            "aad" => {}
            other => return Err(format!("target '{other}' is neither 'imds' nor 'aad'")),
        }
        match self.kind {
            FaultKind::Status => {
                let status = self
                    .status
                    .ok_or("kind 'status' needs 'status' (e.g. 503)")?;
                if !(400..=599).contains(&status) {
                    return Err(format!("status {status} is not an error status (400-599)"));
                }
                if self.retry_after.is_some_and(|r| r > 3600) {
                    return Err("retryAfter must be at most 3600 seconds".into());
                }
            }
            FaultKind::Latency => match self.latency_ms {
                Some(ms) if (1..=MAX_LATENCY_MS).contains(&ms) => {}
                _ => {
                    return Err(format!(
                        "kind 'latency' needs latencyMs from 1 to {MAX_LATENCY_MS}"
                    ));
                }
            },
            FaultKind::Drop => {}
        }
        if self.kind != FaultKind::Status && (self.status.is_some() || self.retry_after.is_some()) {
            return Err("status and retryAfter apply to kind 'status' only".into());
        }
        if self.kind != FaultKind::Latency && self.latency_ms.is_some() {
            return Err("latencyMs applies to kind 'latency' only".into());
        }
        if self.count.is_some_and(|c| c == 0 || c > MAX_COUNT) {
            return Err(format!("count must be 1 to {MAX_COUNT}"));
        }
        if self
            .duration_secs
            .is_some_and(|d| d == 0 || d > MAX_DURATION_SECS)
        {
            return Err(format!("durationSecs must be 1 to {MAX_DURATION_SECS}"));
        }
        if let Some(p) = self.probability
            && !(p > 0.0 && p <= 1.0)
        {
            return Err("probability must be above 0 and at most 1".into());
        }
        Ok(())
    }

    /// What the plan does (after `validate`).
    pub fn action(&self) -> FaultAction {
        match self.kind {
            FaultKind::Status => FaultAction::Status {
                status: self.status.unwrap_or(503),
                retry_after: self.retry_after,
            },
            FaultKind::Latency => FaultAction::Latency {
                latency_ms: self.latency_ms.unwrap_or(1),
            },
            FaultKind::Drop => FaultAction::Drop,
        }
    }
}

/// A plan in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub id: String,
    #[serde(flatten)]
    pub request: FaultRequest,
    /// Requests it still fires for (when counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u32>,
    /// Wall-clock end (unix seconds), when it has a duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// How often it fired.
    #[serde(default)]
    pub fired: u64,
}

/// The plans of one service.
#[derive(Debug, Default)]
pub struct FaultPlans {
    plans: Mutex<Vec<Fault>>,
}

impl FaultPlans {
    pub fn add(&self, request: FaultRequest) -> Result<Fault, String> {
        request.validate()?;
        let fault = Fault {
            id: uuid::Uuid::new_v4().to_string(),
            remaining: request.count,
            expires_at: request
                .duration_secs
                .map(|d| crate::Clock::wall_now().unix_timestamp() + d as i64),
            fired: 0,
            request,
        };
        self.lock().push(fault.clone());
        Ok(fault)
    }

    pub fn list(&self) -> Vec<Fault> {
        let now = crate::Clock::wall_now().unix_timestamp();
        let mut plans = self.lock();
        plans.retain(|f| live(f, now));
        plans.clone()
    }

    /// Removes one plan (or all with `None`); returns how many went.
    pub fn remove(&self, id: Option<&str>) -> usize {
        let mut plans = self.lock();
        let before = plans.len();
        match id {
            Some(id) => plans.retain(|f| !f.id.eq_ignore_ascii_case(id)),
            None => plans.clear(),
        }
        before - plans.len()
    }

    /// The plan a request for `vm_id` (None: not VM-specific) hits, if any; counts it.
    pub fn hit(&self, vm_id: Option<&str>) -> Option<Fault> {
        let now = crate::Clock::wall_now().unix_timestamp();
        let mut plans = self.lock();
        if plans.is_empty() {
            return None;
        }
        plans.retain(|f| live(f, now));
        for fault in plans.iter_mut() {
            let applies = match (&fault.request.vm, vm_id) {
                (None, _) => true,
                (Some(wanted), Some(vm)) => wanted.eq_ignore_ascii_case(vm),
                (Some(_), None) => false,
            };
            if !applies {
                continue;
            }
            if let Some(p) = fault.request.probability
                && p < 1.0
            {
                let roll = f64::from(u32::from_le_bytes(crate::crypto::random_bytes::<4>()))
                    / f64::from(u32::MAX);
                if roll >= p {
                    continue;
                }
            }
            if let Some(remaining) = fault.remaining.as_mut() {
                *remaining -= 1;
            }
            fault.fired += 1;
            return Some(fault.clone());
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        self.plans.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn live(fault: &Fault, now: i64) -> bool {
    fault.remaining != Some(0) && fault.expires_at.is_none_or(|end| now < end)
}

/// Carries out a plan that hit: `Some(response)` answers instead of the service (the status
/// rendered in the service's own dialect by `render`, with `Retry-After` when the plan has one,
/// or a dropped connection); `None` lets the request go on, after the plan's latency.
pub async fn apply(
    action: FaultAction,
    render: impl FnOnce(u16) -> axum::response::Response,
) -> Option<axum::response::Response> {
    match action {
        FaultAction::Status {
            status,
            retry_after,
        } => {
            let mut response = render(status);
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(axum::http::header::RETRY_AFTER, seconds.into());
            }
            Some(response)
        }
        FaultAction::Latency { latency_ms } => {
            tokio::time::sleep(std::time::Duration::from_millis(latency_ms)).await;
            None
        }
        FaultAction::Drop => Some(dropped_connection()),
    }
}

/// A response body that fails at once: hyper closes the connection without an answer, which
/// is what a client sees when IMDS drops it.
pub fn dropped_connection() -> axum::response::Response {
    let body = axum::body::Body::new(FailingBody);
    let mut response = axum::response::Response::new(body);
    *response.status_mut() = axum::http::StatusCode::OK;
    response
}

struct FailingBody;

impl http_body::Body for FailingBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::other(
            "fault: connection dropped",
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(json: serde_json::Value) -> Result<FaultRequest, String> {
        let request: FaultRequest = serde_json::from_value(json).map_err(|e| e.to_string())?;
        request.validate().map(|()| request)
    }

    #[test]
    fn plans_are_validated() {
        assert!(
            plan(
                serde_json::json!({"target": "imds", "kind": "status", "status": 410, "count": 2})
            )
            .is_ok()
        );
        assert!(
            plan(serde_json::json!({"target": "aad", "kind": "latency", "latencyMs": 500})).is_ok()
        );
        assert!(
            plan(serde_json::json!({"target": "imds", "kind": "drop", "probability": 0.5})).is_ok()
        );
        for (bad, expected) in [
            (
                serde_json::json!({"target": "arm", "kind": "drop"}),
                "neither",
            ),
            (
                serde_json::json!({"target": "imds", "kind": "status", "status": 200}),
                "not an error status",
            ),
            (
                serde_json::json!({"target": "imds", "kind": "status"}),
                "needs 'status'",
            ),
            (
                serde_json::json!({"target": "imds", "kind": "drop", "status": 500}),
                "kind 'status' only",
            ),
            (
                serde_json::json!({"target": "imds", "kind": "latency", "latencyMs": 0}),
                "latencyMs",
            ),
            (
                serde_json::json!({"target": "imds", "kind": "drop", "count": 0}),
                "count",
            ),
            (
                serde_json::json!({"target": "imds", "kind": "drop", "durationSecs": 99999999}),
                "durationSecs",
            ),
            (
                serde_json::json!({"target": "imds", "kind": "drop", "probability": 1.5}),
                "probability",
            ),
            (
                serde_json::json!({"target": "aad", "vm": "x", "kind": "drop"}),
                "IMDS faults only",
            ),
            (
                serde_json::json!({"target": "imds", "kind": "explode"}),
                "unknown variant",
            ),
            (
                serde_json::json!({"target": "imds", "kind": "drop", "colour": 1}),
                "unknown field",
            ),
        ] {
            let error = plan(bad.clone()).expect_err(&bad.to_string());
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }

    #[test]
    fn probable_plans_hit_about_their_share_and_timed_ones_end() {
        let plans = FaultPlans::default();
        plans
            .add(
                plan(serde_json::json!({"target": "imds", "kind": "drop", "probability": 0.5}))
                    .expect("plan"),
            )
            .expect("add");
        let hits = (0..1000)
            .filter(|_| plans.hit(Some("vm")).is_some())
            .count();
        // Binomial(1000, 0.5): 350..650 is beyond 9 standard deviations.
        assert!((350..650).contains(&hits), "{hits} of 1000");

        let timed = Fault {
            id: "t".into(),
            request: plan(serde_json::json!({"target": "aad", "kind": "drop", "durationSecs": 5}))
                .expect("plan"),
            remaining: None,
            expires_at: Some(100),
            fired: 0,
        };
        assert!(live(&timed, 99));
        assert!(!live(&timed, 100), "ends at its wall-clock deadline");
    }

    #[test]
    fn counted_plans_run_out_and_vm_plans_only_hit_their_vm() {
        let plans = FaultPlans::default();
        let counted = plan(serde_json::json!({"target": "imds", "vm": "vm-a", "kind": "status", "status": 503, "count": 2})).expect("plan");
        let added = plans.add(counted).expect("add");
        assert!(plans.hit(Some("vm-b")).is_none());
        assert_eq!(plans.hit(Some("VM-A")).expect("hit").id, added.id);
        assert!(plans.hit(Some("vm-a")).is_some());
        assert!(plans.hit(Some("vm-a")).is_none(), "two hits, then gone");
        assert!(plans.list().is_empty());
        plans
            .add(plan(serde_json::json!({"target": "imds", "kind": "drop"})).expect("plan"))
            .expect("add");
        assert_eq!(plans.remove(None), 1);
    }
}
