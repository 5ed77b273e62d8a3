//! AAD's typed configuration; the binary fills it from flags and environment.

#[derive(Debug, Clone)]
pub struct AadConfig {
    /// Authority host as clients reach it (`https://host:port`, no trailing slash). Issuers,
    /// discovery endpoints and the accepted assertion audiences derive from it.
    pub public_url: String,
    /// Base of the Graph subset (`/v1.0/...`); az also asks tokens for this URL itself.
    pub graph_url: String,
    /// Further origins clients may use for the authority (other names in the TLS certificate),
    /// accepted in client-assertion audiences.
    pub alias_origins: Vec<String>,
    /// Shared secret of the internal directory API.
    pub internal_secret: String,
    /// Lifetime of app (client-credentials) tokens: Entra's are 60–90 min.
    pub app_token_lifetime_secs: i64,
    /// Lifetime of managed-identity tokens: ~24 h on Azure.
    pub mi_token_lifetime_secs: i64,
    /// Default domain of the seeded tenant.
    pub tenant_domain: String,
    /// Simulated time between two rolls of the token-signing key (0: never).
    pub signing_key_roll_secs: i64,
    /// The CA AAD trusts when it fetches a federated issuer's keys over HTTPS: the deployment's
    /// own (`None`: only plain-HTTP local issuers can be reached).
    pub trusted_ca_pem: Option<String>,
}

/// Entra rolls its signing keys every few weeks without a published period; six weeks here.
pub const DEFAULT_SIGNING_KEY_ROLL_SECS: i64 = 42 * 86_400;

impl AadConfig {
    pub fn new(public_url: impl Into<String>, internal_secret: impl Into<String>) -> Self {
        let public_url = public_url.into().trim_end_matches('/').to_string();
        Self {
            graph_url: public_url.clone(),
            public_url,
            alias_origins: Vec::new(),
            internal_secret: internal_secret.into(),
            app_token_lifetime_secs: 3599,
            mi_token_lifetime_secs: 86_399,
            tenant_domain: "misim.onmicrosoft.com".into(),
            signing_key_roll_secs: DEFAULT_SIGNING_KEY_ROLL_SECS,
            trusted_ca_pem: None,
        }
    }
}
