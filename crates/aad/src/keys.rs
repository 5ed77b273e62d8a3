//! AAD's token-signing keys: RSA-2048, persisted, published in JWKS with their self-signed
//! certificates. More than one key is always published (the current one and the next), as
//! Entra does; rollover moves "current" forward.

use std::sync::{Arc, RwLock};

use misim_core::crypto::{JwsAlg, RsaCertificate, RsaKey, blocking, signing};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::error::AadError;
use crate::store::{SigningKeyRow, Store};

/// Subject of Entra's signing certificates.
const SIGNING_CERT_SUBJECT: &str = "accounts.accesscontrol.windows.net";
/// Validity of a signing certificate (simulated time).
const SIGNING_CERT_DAYS: i64 = 5 * 365;
const CURRENT_KID_SETTING: &str = "current_signing_kid";
const NEXT_KID_SETTING: &str = "next_signing_kid";
const CURRENT_SINCE_SETTING: &str = "current_signing_since";

pub struct SigningKey {
    pub kid: String,
    pub key: RsaKey,
    pub cert: RsaCertificate,
    pub created_at: i64,
    /// The base64url JWS headers of v1 tokens (with `x5t`) and v2 tokens: the same for every
    /// token this key signs.
    v1_header: String,
    v2_header: String,
}

impl SigningKey {
    fn from_row(row: &SigningKeyRow) -> Result<Arc<Self>, AadError> {
        let encode = |header: Value| misim_core::jose::b64url(header.to_string().as_bytes());
        Ok(Arc::new(SigningKey {
            v1_header: encode(
                json!({"typ": "JWT", "alg": "RS256", "x5t": row.kid, "kid": row.kid}),
            ),
            v2_header: encode(json!({"typ": "JWT", "alg": "RS256", "kid": row.kid})),
            kid: row.kid.clone(),
            key: RsaKey::from_pkcs8(&row.private_pkcs8)?,
            cert: RsaCertificate::from_der(&row.cert_der)?,
            created_at: row.created_at,
        }))
    }
}

#[derive(Clone, Default)]
pub struct SigningKeys {
    inner: Arc<RwLock<KeySet>>,
}

/// Published keys: the previous one (so its tokens still verify), the current one (signs) and
/// the next one (published ahead, as Entra does).
#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<SigningKey>>,
    current: String,
    next: String,
    /// Simulated time the current key started signing.
    current_since: i64,
}

/// A roll: which key stopped signing and which took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roll {
    pub previous: String,
    pub current: String,
    pub at: i64,
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
            store.set_setting(NEXT_KID_SETTING, &made[1].kid).await?;
            rows = store.signing_keys().await?;
        }
        let keys = rows
            .iter()
            .map(SigningKey::from_row)
            .collect::<Result<Vec<_>, AadError>>()?;
        let setting_kid =
            |value: Option<String>| value.filter(|kid| keys.iter().any(|k| &k.kid == kid));
        let current = setting_kid(store.setting(CURRENT_KID_SETTING).await?)
            .unwrap_or_else(|| keys[0].kid.clone());
        // Data dirs from before rolls existed name no next key: the newest other one.
        let next = setting_kid(store.setting(NEXT_KID_SETTING).await?).unwrap_or_else(|| {
            keys.iter()
                .rev()
                .find(|k| k.kid != current)
                .map_or_else(|| current.clone(), |k| k.kid.clone())
        });
        let current_since = match store.setting(CURRENT_SINCE_SETTING).await? {
            Some(since) => since.parse().unwrap_or(0),
            None => keys
                .iter()
                .find(|k| k.kid == current)
                .map_or(0, |k| k.created_at),
        };
        Ok(Self {
            inner: Arc::new(RwLock::new(KeySet {
                keys,
                current,
                next,
                current_since,
            })),
        })
    }

    /// The key tokens are signed with now.
    pub fn current(&self) -> Arc<SigningKey> {
        let set = self.inner.read().unwrap_or_else(|p| p.into_inner());
        set.keys
            .iter()
            .find(|k| k.kid == set.current)
            .unwrap_or(&set.keys[0])
            .clone()
    }

    /// Rolls as often as `period_secs` of simulated time have passed since the current key
    /// started signing: next becomes current, current stays published as previous, a new key
    /// is published as next, and older keys are retired.
    pub async fn roll_if_due(
        &self,
        store: &Store,
        now: OffsetDateTime,
        period_secs: i64,
    ) -> Result<Vec<Roll>, AadError> {
        let mut rolls = Vec::new();
        loop {
            let since = self
                .inner
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .current_since;
            let at = since + period_secs;
            if period_secs <= 0 || now.unix_timestamp() < at {
                return Ok(rolls);
            }
            let made_at = OffsetDateTime::from_unix_timestamp(at).unwrap_or(now);
            let row = blocking(move || generate_row(made_at)).await??;
            store.insert_signing_key(&row).await?;
            let new_key = SigningKey::from_row(&row)?;
            let (roll, keep) = {
                let mut set = self.inner.write().unwrap_or_else(|p| p.into_inner());
                let next = set.next.clone();
                let previous = std::mem::replace(&mut set.current, next);
                set.next = new_key.kid.clone();
                set.current_since = at;
                let keep = [previous.clone(), set.current.clone(), set.next.clone()];
                set.keys.push(new_key);
                set.keys.retain(|k| keep.contains(&k.kid));
                (
                    Roll {
                        previous,
                        current: set.current.clone(),
                        at,
                    },
                    keep,
                )
            };
            store.set_setting(CURRENT_KID_SETTING, &keep[1]).await?;
            store.set_setting(NEXT_KID_SETTING, &keep[2]).await?;
            store
                .set_setting(CURRENT_SINCE_SETTING, &at.to_string())
                .await?;
            store.retain_signing_keys(&keep).await?;
            rolls.push(roll);
        }
    }

    pub fn find(&self, kid: &str) -> Option<Arc<SigningKey>> {
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

    /// Signs `payload` (the claims as JSON) with the current key on a signing thread; returns
    /// the token and the key's id.
    pub async fn sign(
        &self,
        version_1: bool,
        payload: Vec<u8>,
    ) -> Result<(String, String), AadError> {
        let key = self.current();
        let kid = key.kid.clone();
        let token = signing(move || {
            let header = if version_1 {
                &key.v1_header
            } else {
                &key.v2_header
            };
            key.key.sign_compact(JwsAlg::Rs256, header, &payload)
        })
        .await??;
        Ok((token, kid))
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
