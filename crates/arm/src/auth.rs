//! Validation of callers' bearer tokens: signature against AAD's JWKS (fetched over HTTP and
//! refreshed on an unknown `kid`), audience, issuer, expiry at simulated time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use misim_core::Clock;
use serde_json::Value;

use crate::error::ArmError;

/// Audiences ARM accepts (its `/metadata/endpoints` advertises the first two).
pub const AUDIENCES: &[&str] = &[
    "https://management.core.windows.net/",
    "https://management.core.windows.net",
    "https://management.azure.com/",
    "https://management.azure.com",
];
/// Shortest time between two JWKS fetches triggered by unknown key ids.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Who is calling, from a valid token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub object_id: String,
    pub app_id: String,
}

#[derive(Clone)]
pub struct TokenValidator {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    jwks_url: String,
    issuers: Vec<String>,
    clock: Arc<Clock>,
    keys: Mutex<KeyCache>,
    validated: Mutex<TokenCache>,
}

/// Validated tokens, so a warm caller costs no RSA verification (bounded; cleared when full).
#[derive(Default)]
struct TokenCache {
    tokens: HashMap<String, (Caller, i64)>,
}

const TOKEN_CACHE_LIMIT: usize = 10_000;

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, jsonwebtoken::DecodingKey>,
    fetched_at: Option<Instant>,
}

impl TokenValidator {
    pub fn new(http: reqwest::Client, aad_url: &str, tenant_id: &str, clock: Arc<Clock>) -> Self {
        let aad = aad_url.trim_end_matches('/');
        Self {
            inner: Arc::new(Inner {
                http,
                jwks_url: format!("{aad}/{tenant_id}/discovery/keys"),
                issuers: vec![
                    format!("{aad}/{tenant_id}/"),
                    format!("{aad}/{tenant_id}/v2.0"),
                ],
                clock,
                keys: Mutex::new(KeyCache::default()),
                validated: Mutex::new(TokenCache::default()),
            }),
        }
    }

    fn cached_key(&self, kid: &str) -> (Option<jsonwebtoken::DecodingKey>, bool) {
        let cache = self.inner.keys.lock().unwrap_or_else(|p| p.into_inner());
        let may_refresh = cache
            .fetched_at
            .is_none_or(|t| t.elapsed() >= REFRESH_INTERVAL);
        (cache.keys.get(kid).cloned(), may_refresh)
    }

    /// Lets the next unknown key id refetch JWKS at once (after the clock moved: AAD may sign
    /// with a key rolled in since the last fetch).
    pub fn allow_refresh(&self) {
        self.inner
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fetched_at = None;
    }

    async fn refresh(&self) -> Result<(), ArmError> {
        let jwks: Value = self
            .inner
            .http
            .get(&self.inner.jwks_url)
            .send()
            .await
            .map_err(|e| ArmError::Internal(format!("cannot fetch AAD's JWKS: {e}")))?
            .json()
            .await
            .map_err(|e| ArmError::Internal(format!("AAD's JWKS is not JSON: {e}")))?;
        let mut keys = HashMap::new();
        for jwk in jwks["keys"].as_array().into_iter().flatten() {
            if let (Some(kid), Some(n), Some(e)) =
                (jwk["kid"].as_str(), jwk["n"].as_str(), jwk["e"].as_str())
                && let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_components(n, e)
            {
                keys.insert(kid.to_string(), key);
            }
        }
        let mut cache = self.inner.keys.lock().unwrap_or_else(|p| p.into_inner());
        cache.keys = keys;
        cache.fetched_at = Some(Instant::now());
        Ok(())
    }

    /// Validates `Authorization: Bearer <token>`.
    pub async fn validate(&self, authorization: Option<&str>) -> Result<Caller, ArmError> {
        let header = authorization.ok_or(ArmError::AuthenticationMissing)?;
        let (scheme, token) = header.split_once(' ').ok_or_else(|| {
            ArmError::InvalidToken("The authorization header must use the Bearer scheme.".into())
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ArmError::InvalidToken(
                "The authorization header must use the Bearer scheme.".into(),
            ));
        }
        let token = token.trim();
        let now = self.inner.clock.now_unix();
        if let Some((caller, exp)) = self
            .inner
            .validated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tokens
            .get(token)
            && *exp > now
        {
            return Ok(caller.clone());
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ArmError::InvalidToken("The token is not a well-formed JWT.".into()))?;
        if header.alg != jsonwebtoken::Algorithm::RS256 {
            return Err(ArmError::InvalidToken(
                "The token must be signed with RS256.".into(),
            ));
        }
        let kid = header
            .kid
            .ok_or_else(|| ArmError::InvalidToken("The token has no key id.".into()))?;
        let key = match self.cached_key(&kid) {
            (Some(key), _) => key,
            (None, true) => {
                self.refresh().await?;
                self.cached_key(&kid).0.ok_or_else(|| {
                    ArmError::InvalidToken("The token was signed by an unknown key.".into())
                })?
            }
            (None, false) => {
                return Err(ArmError::InvalidToken(
                    "The token was signed by an unknown key.".into(),
                ));
            }
        };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        // Expiry is checked against simulated time below; audience and issuer with ARM's messages.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|_| ArmError::InvalidToken("The token signature is invalid.".into()))?
            .claims;
        let aud = claims["aud"].as_str().unwrap_or_default();
        if !AUDIENCES.contains(&aud) {
            return Err(ArmError::WrongAudience(aud.to_string()));
        }
        let iss = claims["iss"].as_str().unwrap_or_default();
        if !self.inner.issuers.iter().any(|i| i == iss) {
            return Err(ArmError::WrongIssuer(iss.to_string()));
        }
        let exp = claims["exp"]
            .as_i64()
            .ok_or_else(|| ArmError::InvalidToken("The token has no expiry.".into()))?;
        if exp <= now {
            let show = |t: i64| {
                time::OffsetDateTime::from_unix_timestamp(t)
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            };
            return Err(ArmError::ExpiredToken {
                exp: show(exp),
                now: show(now),
            });
        }
        let object_id = claims["oid"]
            .as_str()
            .ok_or_else(|| ArmError::InvalidToken("The token has no object id.".into()))?
            .to_string();
        let app_id = claims["appid"]
            .as_str()
            .or_else(|| claims["azp"].as_str())
            .unwrap_or_default()
            .to_string();
        let caller = Caller { object_id, app_id };
        let mut cache = self
            .inner
            .validated
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cache.tokens.len() >= TOKEN_CACHE_LIMIT {
            cache.tokens.clear();
        }
        cache
            .tokens
            .insert(token.to_string(), (caller.clone(), exp));
        Ok(caller)
    }
}
