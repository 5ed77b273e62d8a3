//! misim's Azure Resource Manager: resource groups, user-assigned identities (with their
//! principals in AAD, provisioned through an outbox), role definitions and assignments, RBAC
//! enforcement on every request, `/metadata/endpoints`, tenants and subscriptions.

pub mod auth;
pub mod domain;
pub mod error;
pub mod http;
pub mod ports;
pub mod service;
pub mod store;

pub use auth::TokenValidator;
pub use error::ArmError;
pub use http::router;
pub use service::{Arm, ArmConfig};
pub use store::{MIGRATOR, Store};
