//! Directory objects as the service sees them (never serialized straight to the wire).

use misim_core::crypto::{constant_time_eq, random_bytes, sha256};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub default_domain: String,
    pub display_name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub object_id: String,
    pub app_id: String,
    pub display_name: String,
    pub identifier_uris: Vec<String>,
    /// `api.requestedAccessTokenVersion`: which token format resources receive.
    pub token_version: u8,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalKind {
    Application,
    ManagedIdentity {
        resource_id: String,
        user_assigned: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePrincipal {
    pub object_id: String,
    pub app_id: String,
    pub display_name: String,
    pub kind: PrincipalKind,
    pub created_at: i64,
}

impl ServicePrincipal {
    pub fn is_managed_identity(&self) -> bool {
        matches!(self.kind, PrincipalKind::ManagedIdentity { .. })
    }
}

/// A registered public certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCredential {
    pub key_id: String,
    pub owner_id: String,
    pub display_name: Option<String>,
    pub cert_der: Vec<u8>,
    pub sha1: Vec<u8>,
    pub sha256: Vec<u8>,
    pub start_at: i64,
    pub end_at: i64,
}

impl KeyCredential {
    pub fn valid_at(&self, now: i64) -> bool {
        self.start_at <= now && now <= self.end_at
    }
}

/// A federated identity credential of a managed identity (spec/tokens.md §6.1, from ARM) or of
/// an application (§6.3, from Graph): a token with this issuer and subject, addressed to one of
/// the audiences, stands in for its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FederatedCredential {
    #[serde(default)]
    pub name: String,
    pub issuer: String,
    pub subject: String,
    pub audiences: Vec<String>,
    /// Graph's id of an application's credential; empty for a managed identity's.
    #[serde(default)]
    pub id: String,
    /// Graph's free-text description; empty when none.
    #[serde(default)]
    pub description: String,
}

/// What a Graph request sets on an application's federated credential (absent: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FederatedCredentialDraft {
    pub name: Option<String>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub description: Option<String>,
}

impl FederatedCredentialDraft {
    pub fn apply(self, to: &mut FederatedCredential) {
        let set = |field: &mut String, value: Option<String>| {
            if let Some(value) = value {
                *field = value;
            }
        };
        set(&mut to.name, self.name);
        set(&mut to.issuer, self.issuer);
        set(&mut to.subject, self.subject);
        set(&mut to.description, self.description);
        if let Some(audiences) = self.audiences {
            to.audiences = audiences;
        }
    }
}

/// A client secret, stored as salted SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordCredential {
    pub key_id: String,
    pub owner_id: String,
    pub display_name: Option<String>,
    /// First three characters of the secret, as Graph shows them.
    pub hint: String,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
    pub start_at: i64,
    pub end_at: i64,
}

fn salted_hash(salt: &[u8], secret: &str) -> Vec<u8> {
    let mut input = salt.to_vec();
    input.extend_from_slice(secret.as_bytes());
    sha256(&input)
}

impl PasswordCredential {
    pub fn new(
        key_id: String,
        owner_id: String,
        display_name: Option<String>,
        secret: &str,
        start_at: i64,
        end_at: i64,
    ) -> Self {
        let salt = random_bytes::<16>().to_vec();
        Self {
            key_id,
            owner_id,
            display_name,
            hint: secret.chars().take(3).collect(),
            hash: salted_hash(&salt, secret),
            salt,
            start_at,
            end_at,
        }
    }

    pub fn matches(&self, secret: &str) -> bool {
        constant_time_eq(&salted_hash(&self.salt, secret), &self.hash)
    }

    pub fn valid_at(&self, now: i64) -> bool {
        self.start_at <= now && now <= self.end_at
    }
}

/// A new client secret in Entra's style: 40 characters with a `~` after a 3-character hint
/// prefix ("abc8Q~...").
pub fn new_client_secret() -> String {
    let raw = misim_core::crypto::random_secret::<30>().replace(['-', '_'], "x");
    format!("{}8Q~{}", &raw[..3], &raw[3..37])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_themselves() {
        let secret = new_client_secret();
        assert_eq!(secret.len(), 40);
        let credential = PasswordCredential::new("k".into(), "o".into(), None, &secret, 0, 100);
        assert!(credential.matches(&secret));
        assert!(!credential.matches(&format!("{secret}x")));
        assert!(!credential.matches(""));
        assert_eq!(credential.hint, &secret[..3]);
        assert!(credential.valid_at(100) && !credential.valid_at(101));
    }
}
