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
