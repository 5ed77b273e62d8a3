//! Pure ARM rules: request paths, names, api-versions, RBAC.

pub mod path;
pub mod rbac;
pub mod vm_identity;
