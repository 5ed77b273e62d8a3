//! The internal edges between services (ARCHITECTURE.md §2–3): authenticated with one shared
//! secret sent in a header of its own, never accepted as a user token, never served on a
//! VM-facing listener. Wire types of the ARM→AAD directory API live here so both ends agree.

use serde::{Deserialize, Serialize};

/// Header carrying the internal secret.
pub const INTERNAL_SECRET_HEADER: &str = "x-misim-internal-secret";
/// File name of the internal secret in a data dir.
pub const INTERNAL_SECRET_FILE: &str = "internal-secret";

/// Whether `presented` equals the configured internal secret (constant time).
pub fn secret_matches(configured: &str, presented: Option<&str>) -> bool {
    match presented {
        Some(p) => crate::crypto::constant_time_eq(configured.as_bytes(), p.as_bytes()),
        None => false,
    }
}

/// PUT `/_internal/directory/managed-identities/{object_id}`: create (idempotently) the service
/// principal of a managed identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIdentityPrincipal {
    pub app_id: String,
    pub display_name: String,
    /// ARM resource id of the identity: the VM for system-assigned, the identity resource for
    /// user-assigned. Becomes `xms_mirid` in tokens and `alternativeNames` in Graph.
    pub resource_id: String,
    /// `true` for user-assigned identities (Graph's `isExplicit=True`).
    pub user_assigned: bool,
}

/// PUT `/_internal/directory/managed-identities/{object_id}/certificates/{key_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIdentityCertificate {
    /// Standard base64 of the certificate DER.
    pub certificate: String,
}

/// PUT `/_internal/host/vms/{vmId}` on IMDS's host API: a VM and its instance metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostedVm {
    pub resource_id: String,
    pub name: String,
    pub resource_group: String,
    pub subscription_id: String,
    pub location: String,
    pub vm_size: String,
    pub tags: std::collections::BTreeMap<String, String>,
    /// Preferred per-VM listener port (the `misim-imds-port` tag), 0 for any.
    #[serde(default)]
    pub preferred_port: u16,
    /// `Linux` or `Windows`, for the instance document (hosts installed before it: Linux).
    #[serde(default = "linux")]
    pub os_type: String,
    /// The VM's ARM `properties` as stored (secrets already removed), from which the instance
    /// document takes its OS, image, storage and security profiles (hosts installed before it:
    /// none, so those leaves are empty strings, as IMDS shows unset values).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub properties: serde_json::Map<String, serde_json::Value>,
}

fn linux() -> String {
    "Linux".into()
}

/// PUT `/_internal/host/vms/{vmId}/identities/{principalId}`: an identity's credential.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostedIdentity {
    pub client_id: String,
    pub tenant_id: String,
    /// `xms_mirid`: the identity resource (user-assigned) or the VM (system-assigned).
    pub resource_id: String,
    pub user_assigned: bool,
    pub key_id: String,
    /// Standard base64 of the certificate DER.
    pub certificate: String,
    /// Standard base64 of the PKCS#8 private key.
    pub private_key: String,
}

/// What IMDS reports about a hosted VM (GET on the host API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HostedVmStatus {
    pub vm_id: String,
    pub resource_id: String,
    pub endpoint: Option<String>,
    /// Secret of the VM's App Service-style endpoint (`IDENTITY_HEADER`).
    pub identity_header: String,
    pub identities: Vec<String>,
}

/// GET `/_internal/bootstrap` on AAD: the tenant and the bootstrap admin, so that ARM (its
/// Owner assignment) and `misim connect` (connection.json) learn them in split mode.
pub const BOOTSTRAP_PATH: &str = "/_internal/bootstrap";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapInfo {
    pub tenant_id: String,
    pub admin_client_id: String,
    pub admin_client_secret: String,
    pub admin_object_id: String,
}

/// GET: a service's events (query as `events::EventFilter::from_query`), answered as
/// `{"events": [...]}`; on AAD's URL and on IMDS's host API.
pub const EVENTS_PATH: &str = "/_internal/events";

/// GET: the service's clock; PUT `{"offsetSecs": N}`: move it forward (and run what became
/// due). On AAD's URL and on IMDS's host API.
pub const CLOCK_PATH: &str = "/_internal/clock";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClockState {
    pub offset_secs: i64,
    /// Simulated time, RFC 3339.
    #[serde(default)]
    pub now: String,
}

/// GET (list), POST (add a `faults::FaultRequest`), DELETE (clear) fault plans; DELETE
/// `{FAULTS_PATH}/{id}` removes one. On AAD's URL and on IMDS's host API.
pub const FAULTS_PATH: &str = "/_internal/faults";
