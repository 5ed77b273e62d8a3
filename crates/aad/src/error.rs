//! `AadError`: every way an AAD request can fail, named by meaning. `http::error` renders the
//! token-service variants in Entra's OAuth dialect (AADSTS codes) and the Graph variants in
//! Graph's `{"error":{"code","message","innerError"}}` dialect.

use crate::domain::assertion::AssertionError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AadError {
    // ---- token service (Entra OAuth dialect) ----
    #[error("tenant '{0}' not found")]
    TenantNotFound(String),
    #[error("tenant identifier '{0}' is not valid")]
    InvalidTenant(String),
    #[error("no tenant-identifying information")]
    NoTenantInformation,
    #[error("missing parameter '{0}'")]
    MissingParameter(&'static str),
    #[error("parameter '{0}' was sent more than once")]
    DuplicateParameter(String),
    #[error("unsupported grant type '{0}'")]
    UnsupportedGrantType(String),
    #[error("application '{client_id}' not found")]
    ApplicationNotFound { client_id: String, tenant: String },
    #[error("application '{client_id}' has no service principal")]
    ServicePrincipalMissing { client_id: String, tenant: String },
    #[error("invalid client secret")]
    InvalidClientSecret { client_id: String },
    #[error("expired client secret")]
    ExpiredClientSecret { client_id: String },
    #[error("no client credential")]
    MissingClientCredential,
    #[error("more than one client credential")]
    ConflictingClientCredentials,
    #[error("unsupported client_assertion_type '{0}'")]
    UnsupportedAssertionType(String),
    #[error("invalid client assertion")]
    InvalidAssertion(AssertionError),
    #[error("no federated credential matches the assertion")]
    /// What the assertion presented: "Assertion Issuer: '…'. Assertion Subject: …".
    FederatedNoMatch(String),
    #[error("a token of this AAD ('{0}') cannot stand in for this client")]
    /// Entra's own tokens are a federated credential only of an application, and only a
    /// user-assigned managed identity's (spec §6.3).
    FederatedOwnIssuer(String),
    #[error("the federated assertion's issuer could not be reached")]
    FederatedIssuerUnreachable(String),
    #[error("invalid scope '{0}'")]
    InvalidScope(String),
    #[error("resource '{resource}' not found")]
    ResourceNotFound { resource: String, tenant: String },
    #[error("the endpoint only accepts POST")]
    PostOnly(String),
    #[error("the endpoint only accepts GET")]
    GetOnly(String),
    #[error("no such endpoint")]
    UnknownEndpoint,
    #[error("request body too large")]
    BodyTooLarge,

    // ---- Graph and the internal directory API ----
    #[error("graph: missing or invalid token")]
    GraphUnauthenticated(String),
    #[error("graph: insufficient privileges")]
    GraphForbidden,
    #[error("graph: not found")]
    GraphNotFound(String),
    #[error("graph: bad request")]
    GraphBadRequest(String),
    #[error("graph: conflict")]
    GraphConflict(String),
    #[error("graph: unknown route")]
    GraphUnknownRoute,
    #[error("graph: method not allowed")]
    GraphMethodNotAllowed,
    #[error("internal API: bad or missing internal credential")]
    InternalUnauthenticated,

    #[error("internal error: {0}")]
    Internal(String),

    /// A fault plan refused the token request.
    #[error("fault plan {id} injected status {status}")]
    FaultInjected { status: u16, id: String },
}

impl From<StoreError> for AadError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict => {
                Self::GraphConflict("An object with the same key already exists.".into())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for AadError {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(format!("database error: {error}"))
    }
}

impl From<misim_core::crypto::CryptoError> for AadError {
    fn from(error: misim_core::crypto::CryptoError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl AadError {
    /// Whether this error belongs to Graph's dialect rather than the token service's.
    pub fn is_graph(&self) -> bool {
        matches!(
            self,
            Self::GraphUnauthenticated(_)
                | Self::GraphForbidden
                | Self::GraphNotFound(_)
                | Self::GraphBadRequest(_)
                | Self::GraphConflict(_)
                | Self::GraphUnknownRoute
                | Self::GraphMethodNotAllowed
                | Self::InternalUnauthenticated
        )
    }
}
