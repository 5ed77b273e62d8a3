//! AAD's token-signing keys: RSA-2048, persisted, published in JWKS with their self-signed
//! certificates. More than one key is always published (the current one and the next), as
//! Entra does; rollover moves "current" forward.

use std::sync::{Arc, RwLock};

use misim_core::crypto::{JwsAlg, RsaCertificate, RsaKey, blocking};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::error::AadError;
use crate::store::{SigningKeyRow, Store};

/// Subject of Entra's signing certificates.
const SIGNING_CERT_SUBJECT: &str = "accounts.accesscontrol.windows.net";
/// Validity of a signing certificate (simulated time).
const SIGNING_CERT_DAYS: i64 = 5 * 365;
const CURRENT_KID_SETTING: &str = "current_signing_kid";

#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub key: RsaKey,
    pub cert: RsaCertificate,
}

#[derive(Clone, Default)]
pub struct SigningKeys {
    inner: Arc<RwLock<KeySet>>,
}

#[derive(Default)]
struct KeySet {
    keys: Vec<SigningKey>,
    current: usize,
}

impl SigningKeys {
    /// Loads the persisted keys, generating the first two (current and next) on a new data dir.
    pub async fn load_or_create(store: &Store, now: OffsetDateTime) -> Result<Self, AadError> {
        let mut rows = store.signing_keys().await?;
        if rows.is_empty() {
            let made = blocking(move || -> Result<Vec<SigningKeyRow>, AadError> {
                (0..2).map(|_| generate_row(now)).collect()
            })
            .await??;
            for row in &made {
                store.insert_signing_key(row).await?;
            }
            store.set_setting(CURRENT_KID_SETTING, &made[0].kid).await?;
            // Re-read so the order is the store's on every start.
            rows = store.signing_keys().await?;
        }
        let keys = rows
            .iter()
            .map(|row| {
                Ok(SigningKey {
                    kid: row.kid.clone(),
                    key: RsaKey::from_pkcs8(&row.private_pkcs8)?,
                    cert: RsaCertificate::from_der(&row.cert_der)?,
                })
            })
            .collect::<Result<Vec<_>, AadError>>()?;
        let current_kid = store.setting(CURRENT_KID_SETTING).await?;
        let current = keys
            .iter()
            .position(|k| Some(&k.kid) == current_kid.as_ref())
            .unwrap_or(0);
        Ok(Self {
            inner: Arc::new(RwLock::new(KeySet { keys, current })),
        })
    }

    /// The key tokens are signed with now.
    pub fn current(&self) -> SigningKey {
        let set = self.inner.read().unwrap_or_else(|p| p.into_inner());
        set.keys[set.current].clone()
    }

    pub fn find(&self, kid: &str) -> Option<SigningKey> {
        let set = self.inner.read().unwrap_or_else(|p| p.into_inner());
        set.keys.iter().find(|k| k.kid == kid).cloned()
    }

    /// The JWKS document; `issuer` adds Entra's per-key `issuer` member (v2 keys).
    pub fn jwks(&self, issuer: Option<&str>) -> Value {
        let set = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<Value> = set
            .keys
            .iter()
            .map(|k| {
                let mut jwk = json!({
                    "kty": "RSA",
                    "use": "sig",
                    "kid": k.kid,
                    "x5t": k.kid,
                    "n": misim_core::jose::b64url(&k.cert.modulus),
                    "e": misim_core::jose::b64url(&k.cert.exponent),
                    "x5c": [k.cert.der_b64()],
                    "cloud_instance_name": "microsoftonline.com",
                });
                if let Some(issuer) = issuer {
                    jwk["issuer"] = json!(issuer);
                }
                jwk
            })
            .collect();
        json!({ "keys": keys })
    }

    /// Signs a token with the current key on a blocking thread.
    pub async fn sign(&self, version_1: bool, claims: Value) -> Result<String, AadError> {
        let key = self.current();
        let header = if version_1 {
            json!({"typ": "JWT", "alg": "RS256", "x5t": key.kid, "kid": key.kid})
        } else {
            json!({"typ": "JWT", "alg": "RS256", "kid": key.kid})
        };
        Ok(blocking(move || key.key.sign_jws(JwsAlg::Rs256, &header, &claims)).await??)
    }
}

fn generate_row(now: OffsetDateTime) -> Result<SigningKeyRow, AadError> {
    let key = RsaKey::generate()?;
    let not_after = now + Duration::days(SIGNING_CERT_DAYS);
    let der =
        key.self_signed_certificate(SIGNING_CERT_SUBJECT, now - Duration::days(1), not_after)?;
    let cert = RsaCertificate::from_der(&der)?;
    Ok(SigningKeyRow {
        kid: cert.x5t(),
        private_pkcs8: key.pkcs8_der().to_vec(),
        cert_der: der,
        created_at: now.unix_timestamp(),
        not_after: not_after.unix_timestamp(),
    })
}
