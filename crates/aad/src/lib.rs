//! misim's Entra ID (Azure AD): the directory (tenants, applications, service principals,
//! certificate and password credentials), the token service (v1/v2 client credentials with
//! secrets or certificate assertions), discovery and JWKS, a Microsoft Graph v1.0 subset, and the
//! internal directory API ARM uses for managed identities.

pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod keys;
pub mod service;
pub mod store;

pub use config::{AadConfig, DEFAULT_SIGNING_KEY_ROLL_SECS};
pub use error::AadError;
pub use http::router;
pub use service::{Aad, Bootstrap};
pub use store::{MIGRATOR, Store};
