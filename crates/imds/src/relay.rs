//! Getting a token from AAD the way the real host agent does: a client assertion signed with the
//! identity's key, posted to AAD's token endpoint over HTTPS, and a per-(identity, resource)
//! cache until shortly before expiry.

use std::collections::HashMap;
use std::sync::Mutex;

use misim_core::crypto::{JwsAlg, RsaKey, sha1, signing};
use misim_core::jose::b64url;
use serde_json::{Value, json};

use crate::error::ImdsError;
use crate::store::IdentityRow;

/// Cached tokens are re-issued when less than this much lifetime is left.
pub const REFRESH_BEFORE_EXPIRY_SECS: i64 = 300;
/// Lifetime of the assertions IMDS signs (wall time, like any client).
const ASSERTION_LIFETIME_SECS: i64 = 600;

#[derive(Debug, Clone)]
pub struct Token {
    /// Shared: a cached token is handed out many times a second.
    pub access_token: std::sync::Arc<str>,
    pub expires_on: i64,
    pub not_before: i64,
}

/// Tokens by lower-case principal id, then resource: a lookup allocates nothing.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, HashMap<String, Token>>>,
}

fn lower(id: &str) -> std::borrow::Cow<'_, str> {
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        id.to_ascii_lowercase().into()
    } else {
        id.into()
    }
}

impl TokenCache {
    pub fn get(&self, principal_id: &str, resource: &str, now: i64) -> Option<Token> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(lower(principal_id).as_ref())?
            .get(resource)
            .filter(|t| t.expires_on - REFRESH_BEFORE_EXPIRY_SECS > now)
            .cloned()
    }

    pub fn put(&self, principal_id: &str, resource: &str, token: Token) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(principal_id.to_ascii_lowercase())
            .or_default()
            .insert(resource.to_string(), token);
    }

    /// Forgets every token of a principal (its credential was removed).
    pub fn forget(&self, principal_id: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(lower(principal_id).as_ref());
    }
}

/// Parsed identity keys: parsing PKCS#8 (with aws-lc's key checks) costs more than the
/// signature itself, so each credential is parsed once.
#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<HashMap<(String, String), IdentityKey>>,
}

/// An identity's parsed key and the encoded JWS header of its assertions (its certificate's
/// `x5t`), the same for every assertion it signs.
#[derive(Clone)]
struct IdentityKey {
    key: RsaKey,
    header: std::sync::Arc<str>,
}

impl IdentityKey {
    fn parse(pkcs8: &[u8], cert_der: &[u8]) -> Result<Self, misim_core::crypto::CryptoError> {
        let header = json!({"alg": "RS256", "typ": "JWT", "x5t": b64url(&sha1(cert_der))});
        Ok(Self {
            key: RsaKey::from_pkcs8(pkcs8)?,
            header: b64url(header.to_string().as_bytes()).into(),
        })
    }
}

/// The claims of a client assertion (spec/tokens.md §3.5).
#[derive(serde::Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    exp: i64,
}

impl KeyCache {
    fn slot(identity: &IdentityRow) -> (String, String) {
        (
            identity.principal_id.to_ascii_lowercase(),
            identity.key_id.clone(),
        )
    }

    fn get(&self, identity: &IdentityRow) -> Option<IdentityKey> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&Self::slot(identity))
            .cloned()
    }

    fn put(&self, identity: &IdentityRow, key: IdentityKey) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Self::slot(identity), key);
    }

    /// Forgets a principal's keys (its credential changed or went away).
    pub fn forget(&self, principal_id: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, _), _| !p.eq_ignore_ascii_case(principal_id));
    }
}

/// Requests a token for `resource` from AAD's v1 endpoint with a certificate assertion.
pub async fn fetch(
    http: &reqwest::Client,
    keys: &KeyCache,
    aad_url: &str,
    identity: &IdentityRow,
    resource: &str,
    wall_now: i64,
) -> Result<Token, ImdsError> {
    let endpoint = format!(
        "{}/{}/oauth2/token",
        aad_url.trim_end_matches('/'),
        identity.tenant_id
    );
    let cached = keys.get(identity);
    let parsed_here = cached.is_none();
    let source = cached.ok_or_else(|| (identity.private_pkcs8.clone(), identity.cert_der.clone()));
    let claims = serde_json::to_vec(&AssertionClaims {
        aud: &endpoint,
        iss: &identity.client_id,
        sub: &identity.client_id,
        jti: uuid::Uuid::new_v4().to_string(),
        nbf: wall_now - 60,
        exp: wall_now + ASSERTION_LIFETIME_SECS,
    })
    .map_err(|e| ImdsError::Internal(e.to_string()))?;
    let (assertion, key) = signing(move || {
        let key = match source {
            Ok(key) => key,
            Err((pkcs8, der)) => IdentityKey::parse(&pkcs8, &der)?,
        };
        key.key
            .sign_compact(JwsAlg::Rs256, &key.header, &claims)
            .map(|jws| (jws, key))
    })
    .await
    .map_err(|e| ImdsError::Internal(e.to_string()))?
    .map_err(|e| ImdsError::Internal(e.to_string()))?;
    if parsed_here {
        keys.put(identity, key);
    }
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", identity.client_id.as_str()),
        ("resource", resource),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion.as_str()),
    ];
    let response = misim_core::events::propagate(http.post(&endpoint))
        .form(&form)
        .send()
        .await
        .map_err(|e| ImdsError::AadUnavailable(format!("AAD is unreachable: {e}")))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.map_err(|e| {
        ImdsError::AadUnavailable(format!("AAD answered {status} without JSON: {e}"))
    })?;
    if status == 200 {
        let number = |field: &str| {
            body[field]
                .as_str()
                .and_then(|s| s.parse::<i64>().ok())
                .or_else(|| body[field].as_i64())
        };
        return match (
            body["access_token"].as_str(),
            number("expires_on"),
            number("not_before"),
        ) {
            (Some(token), Some(expires_on), Some(not_before)) => Ok(Token {
                access_token: token.into(),
                expires_on,
                not_before,
            }),
            _ => Err(ImdsError::AadUnavailable(
                "AAD's answer lacks access_token/expires_on".into(),
            )),
        };
    }
    let error = body["error"].as_str().unwrap_or("unknown").to_string();
    let description = body["error_description"].as_str().unwrap_or("").to_string();
    if (400..500).contains(&status) && status != 429 {
        // What the caller asked for is wrong (unknown resource...): a 400 it will not retry.
        Err(ImdsError::Upstream {
            status: 400,
            error,
            description,
        })
    } else {
        Err(ImdsError::AadUnavailable(format!(
            "AAD answered {status}: {description}"
        )))
    }
}
