//! Workload identity federation (spec/tokens.md §6.2): an external token (a Kubernetes service
//! account's, a CI system's) presented as the client assertion of a managed identity whose
//! federated credentials trust its issuer, subject and audience. The issuer's signing keys come
//! from its OpenID discovery document.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use misim_core::jose::{CompactJws, b64_lenient, numeric_claim};
use serde_json::Value;

use super::assertion::{ASSERTION_CLOCK_SKEW_SECS, AssertionError};
use super::directory::FederatedCredential;

/// Why a federated assertion was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FederationError {
    /// No credential trusts this issuer, subject and audience (AADSTS70021).
    NoMatch {
        issuer: String,
        subject: String,
        audience: String,
    },
    /// The issuer's discovery document or keys could not be had (AADSTS50166).
    IssuerUnreachable(String),
    /// Malformed, wrongly signed or out of its time range: as for certificate assertions.
    Assertion(AssertionError),
}

/// The credential an external token matches: issuer and subject exactly (case-sensitive, as
/// Entra compares them), and one of its audiences among the token's.
pub fn matching<'a>(
    credentials: &'a [FederatedCredential],
    jws: &CompactJws<'_>,
) -> Result<&'a FederatedCredential, FederationError> {
    let text = |name: &str| jws.claims.get(name).and_then(Value::as_str).unwrap_or("");
    let audiences: Vec<&str> = match jws.claims.get("aud") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    credentials
        .iter()
        .find(|c| {
            c.issuer == text("iss")
                && c.subject == text("sub")
                && c.audiences.iter().any(|a| audiences.contains(&a.as_str()))
        })
        .ok_or_else(|| FederationError::NoMatch {
            issuer: text("iss").to_string(),
            subject: text("sub").to_string(),
            audience: audiences.join(","),
        })
}

/// Checks an application's federated credential: the rules ARM applies to an identity's
/// (`misim_core::federation`), and Graph's limit on the description. The message names what is
/// wrong.
pub fn check_application_credential(credential: &FederatedCredential) -> Result<(), String> {
    use misim_core::federation::{MAX_FIELD_CHARS, NAME_RULE, check_fields, valid_name};
    if !valid_name(&credential.name) {
        return Err(format!("Invalid name '{}'. {NAME_RULE}", credential.name));
    }
    check_fields(
        &credential.issuer,
        &credential.subject,
        &credential.audiences,
    )
    .map_err(str::to_string)?;
    if credential.description.chars().count() > MAX_FIELD_CHARS {
        return Err(format!(
            "The description may have at most {MAX_FIELD_CHARS} characters."
        ));
    }
    Ok(())
}

/// `exp` (required) and `nbf` against wall time, with the skew certificate assertions get.
pub fn check_time(jws: &CompactJws<'_>, wall_now: i64) -> Result<(), AssertionError> {
    let time = |name: &str| match numeric_claim(&jws.claims, name) {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some(v)),
        Some(Err(())) => Err(AssertionError::Malformed(format!(
            "the '{name}' claim is not a number"
        ))),
    };
    let exp = time("exp")?.ok_or(AssertionError::MissingExpiry)?;
    let nbf = time("nbf")?;
    let too_early = nbf.is_some_and(|nbf| wall_now.saturating_add(ASSERTION_CLOCK_SKEW_SECS) < nbf);
    if too_early || exp.saturating_add(ASSERTION_CLOCK_SKEW_SECS) < wall_now {
        return Err(AssertionError::TimeRange {
            now: wall_now,
            nbf,
            exp,
        });
    }
    Ok(())
}

/// An issuer's RSA signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IssuerKey {
    kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
}

/// How long an issuer's keys are kept before they are fetched again.
const KEYS_KEPT: Duration = Duration::from_secs(300);
/// A token naming a key not among the kept ones refetches them, at most this often.
const REFETCH_AFTER: Duration = Duration::from_secs(10);
/// The most a discovery document or key set may take.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// An issuer's keys (or why they could not be had) and when.
type Fetched = (Instant, Result<Arc<Vec<IssuerKey>>, String>);

/// A failed fetch is remembered this long, so that tokens naming an unreachable issuer do not
/// each make AAD fetch.
const FAILURE_KEPT: Duration = Duration::from_secs(15);

/// Issuers' signing keys, fetched from their discovery documents and kept for a while.
pub struct IssuerKeys {
    http: reqwest::Client,
    kept: Mutex<HashMap<String, Fetched>>,
    /// One fetch at a time per issuer: concurrent tokens of an issuer wait for one fetch, and
    /// a slow issuer holds up only its own tokens.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl IssuerKeys {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            kept: Mutex::new(HashMap::new()),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies an RS256 token signed by `issuer`'s key `kid`.
    pub async fn verify(&self, issuer: &str, jws: &CompactJws<'_>) -> Result<(), FederationError> {
        let malformed =
            |what: &str| FederationError::Assertion(AssertionError::Malformed(what.into()));
        if jws.header.get("alg").and_then(Value::as_str) != Some("RS256") {
            return Err(FederationError::Assertion(
                AssertionError::UnsupportedAlgorithm(
                    jws.header
                        .get("alg")
                        .and_then(Value::as_str)
                        .unwrap_or("none")
                        .to_string(),
                ),
            ));
        }
        let kid = jws
            .header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("a federated assertion needs a 'kid' header"))?;
        let key = match self.find(issuer, kid, false).await? {
            Some(key) => key,
            None => self.find(issuer, kid, true).await?.ok_or_else(|| {
                FederationError::Assertion(AssertionError::KeyNotFound {
                    thumbprint: kid.to_string(),
                })
            })?,
        };
        let public = aws_lc_rs::signature::RsaPublicKeyComponents {
            n: &key.n,
            e: &key.e,
        };
        public
            .verify(
                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                jws.signing_input.as_bytes(),
                &jws.signature,
            )
            .map_err(|_| {
                FederationError::Assertion(AssertionError::BadSignature {
                    thumbprint: kid.to_string(),
                })
            })
    }

    /// The key `kid` among the issuer's kept keys (fetched if none are kept or they are old;
    /// `refetch` fetches again unless the kept ones are very recent).
    async fn find(
        &self,
        issuer: &str,
        kid: &str,
        refetch: bool,
    ) -> Result<Option<IssuerKey>, FederationError> {
        // Kept keys serve unless old; a refetch (for an unknown kid) fetches unless they are
        // very recent, so a token naming a key that does not exist cannot make every request
        // fetch; a failure is kept briefly.
        let usable = |entry: &Fetched| match &entry.1 {
            Ok(_) => entry.0.elapsed() < if refetch { REFETCH_AFTER } else { KEYS_KEPT },
            Err(_) => entry.0.elapsed() < FAILURE_KEPT,
        };
        let kept = |this: &Self| {
            this.kept
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(issuer)
                .filter(|entry| usable(entry))
                .map(|entry| entry.1.clone())
        };
        let result = match kept(self) {
            Some(result) => result,
            None => {
                let gate = self
                    .fetching
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(issuer.to_string())
                    .or_default()
                    .clone();
                let _one_at_a_time = gate.lock().await;
                // Another request may have fetched meanwhile.
                match kept(self) {
                    Some(result) => result,
                    None => {
                        let fetched = self.fetch(issuer).await.map(Arc::new);
                        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
                        // A failed refetch keeps the keys already held (an outage, or a token
                        // naming an unknown key, must not turn the issuer's good tokens away);
                        // only an issuer never read is remembered as failing.
                        let result = match (fetched, kept.get(issuer)) {
                            (Ok(keys), _) => Ok(keys),
                            (Err(detail), held) => {
                                tracing::warn!(%issuer, %detail, "a federated credential's issuer could not be read");
                                match held {
                                    Some((_, Ok(keys))) => Ok(keys.clone()),
                                    _ => Err(detail),
                                }
                            }
                        };
                        kept.insert(issuer.to_string(), (Instant::now(), result.clone()));
                        result
                    }
                }
            }
        };
        // The caller learns that the issuer failed, not how (no probe of AAD's network).
        let keys = result.map_err(|_| {
            FederationError::IssuerUnreachable(
                "The issuer's discovery document or signing keys could not be read.".into(),
            )
        })?;
        Ok(keys.iter().find(|k| k.kid == kid).cloned())
    }

    /// The issuer's RSA signing keys, through its discovery document. The key set must be
    /// https, or plain HTTP where the issuer itself may be (`urls::is_local_http`).
    async fn fetch(&self, issuer: &str) -> Result<Vec<IssuerKey>, String> {
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let document = self.get_json(&discovery).await?;
        let jwks_uri = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{discovery} names no jwks_uri"))?;
        if !jwks_uri.starts_with("https://") && !misim_core::urls::is_local_http(jwks_uri) {
            return Err(format!(
                "the jwks_uri {jwks_uri} is neither https nor a local http URL"
            ));
        }
        let set = self.get_json(jwks_uri).await?;
        let b64 = |v: Option<&Value>| v.and_then(Value::as_str).and_then(b64_lenient);
        let keys: Vec<IssuerKey> = set
            .get("keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|k| k.get("kty").and_then(Value::as_str) == Some("RSA"))
            .filter(|k| {
                k.get("use")
                    .and_then(Value::as_str)
                    .is_none_or(|u| u == "sig")
            })
            .filter_map(|k| {
                Some(IssuerKey {
                    kid: k.get("kid")?.as_str()?.to_string(),
                    n: b64(k.get("n"))?,
                    e: b64(k.get("e"))?,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(format!("{jwks_uri} publishes no RSA signing key"));
        }
        Ok(keys)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        let too_large =
            || format!("GET {url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes");
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large());
        }
        // Read up to the limit, not the whole body first.
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
        {
            if bytes.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("GET {url}: not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use misim_core::jose::split_compact;

    fn token(claims: Value) -> String {
        let b64 = |v: &Value| misim_core::jose::b64url(v.to_string().as_bytes());
        format!(
            "{}.{}.c2ln",
            b64(&serde_json::json!({"alg": "RS256", "kid": "k"})),
            b64(&claims)
        )
    }

    fn fic(issuer: &str, subject: &str, audience: &str) -> FederatedCredential {
        FederatedCredential {
            name: "f".into(),
            issuer: issuer.into(),
            subject: subject.into(),
            audiences: vec![audience.into()],
            ..Default::default()
        }
    }

    #[test]
    fn application_credentials_follow_the_identitys_rules_and_graphs_description_limit() {
        let good = FederatedCredential {
            name: "github-main_1".into(),
            ..fic(
                "https://issuer.example",
                "repo:o/r:ref:refs/heads/main",
                "api://AzureADTokenExchange",
            )
        };
        assert_eq!(check_application_credential(&good), Ok(()));
        let bad = |change: fn(&mut FederatedCredential)| {
            let mut credential = good.clone();
            change(&mut credential);
            check_application_credential(&credential).expect_err("refused")
        };
        assert!(bad(|c| c.name = "..".into()).contains("Invalid name"));
        assert!(bad(|c| c.name = "x.y".into()).contains("Invalid name"));
        assert!(bad(|c| c.issuer = "http://issuer.example.com".into()).contains("issuer"));
        assert!(bad(|c| c.subject = "repo:*".into()).contains("wildcards"));
        assert!(bad(|c| c.audiences.push("second".into())).contains("exactly one"));
        assert!(bad(|c| c.description = "d".repeat(601)).contains("description"));
        // Non-ASCII descriptions are counted in characters.
        let mut edge = good.clone();
        edge.description = "é".repeat(600);
        assert_eq!(check_application_credential(&edge), Ok(()));
    }

    #[test]
    fn issuer_and_subject_match_exactly_and_one_audience_is_enough() {
        let credentials = [fic(
            "https://issuer.example",
            "system:serviceaccount:default:app",
            "api://AzureADTokenExchange",
        )];
        let good = token(
            serde_json::json!({"iss": "https://issuer.example", "sub": "system:serviceaccount:default:app", "aud": ["x", "api://AzureADTokenExchange"]}),
        );
        assert!(matching(&credentials, &split_compact(&good).expect("jws")).is_ok());
        for bad in [
            serde_json::json!({"iss": "https://issuer.example/", "sub": "system:serviceaccount:default:app", "aud": "api://AzureADTokenExchange"}),
            serde_json::json!({"iss": "https://issuer.example", "sub": "SYSTEM:serviceaccount:default:app", "aud": "api://AzureADTokenExchange"}),
            serde_json::json!({"iss": "https://issuer.example", "sub": "system:serviceaccount:default:app", "aud": "api://other"}),
            serde_json::json!({"iss": "https://issuer.example", "sub": "system:serviceaccount:default:app"}),
        ] {
            let bad = token(bad);
            assert!(matches!(
                matching(&credentials, &split_compact(&bad).expect("jws")),
                Err(FederationError::NoMatch { .. })
            ));
        }
    }

    /// An issuer on loopback whose documents can be switched off.
    async fn issuer(up: Arc<std::sync::atomic::AtomicBool>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let discovery = serde_json::json!({"issuer": url, "jwks_uri": format!("{url}/keys")});
        let keys =
            serde_json::json!({"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]});
        let answer = move |body: Value| {
            let up = up.clone();
            move || async move {
                if up.load(std::sync::atomic::Ordering::SeqCst) {
                    axum::Json(body).into_response()
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response()
                }
            }
        };
        use axum::response::IntoResponse;
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(answer(discovery)),
            )
            .route("/keys", axum::routing::get(answer(keys)));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        url
    }

    #[tokio::test]
    async fn a_failed_refetch_keeps_the_keys_held_and_a_new_issuer_fails_briefly() {
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let url = issuer(up.clone()).await;
        let keys = IssuerKeys::new(
            misim_core::tls::http_client_without_roots(Duration::from_secs(5)).expect("client"),
        );
        assert!(
            keys.find(&url, "k1", false)
                .await
                .expect("fetched")
                .is_some()
        );
        // The issuer goes down and the held keys grow old enough to refetch.
        up.store(false, std::sync::atomic::Ordering::SeqCst);
        for entry in keys.kept.lock().expect("lock").values_mut() {
            entry.0 = Instant::now()
                .checked_sub(KEYS_KEPT + Duration::from_secs(1))
                .expect("past");
        }
        assert!(
            keys.find(&url, "k1", true)
                .await
                .expect("the held keys")
                .is_some()
        );
        // An issuer never read that is down: unreachable, and remembered as such.
        let other = issuer(Arc::new(std::sync::atomic::AtomicBool::new(false))).await;
        assert!(matches!(
            keys.find(&other, "k1", false).await,
            Err(FederationError::IssuerUnreachable(_))
        ));
        assert!(matches!(
            keys.kept.lock().expect("lock").get(&other),
            Some((_, Err(_)))
        ));
    }

    #[test]
    fn expiry_is_required_and_checked_with_skew() {
        let at = |claims: Value| check_time(&split_compact(&token(claims)).expect("jws"), 10_000);
        assert!(at(serde_json::json!({"exp": 10_100})).is_ok());
        assert!(at(serde_json::json!({"exp": 9_800, "nbf": 10_200})).is_ok());
        assert!(matches!(
            at(serde_json::json!({})),
            Err(AssertionError::MissingExpiry)
        ));
        assert!(matches!(
            at(serde_json::json!({"exp": 9_000})),
            Err(AssertionError::TimeRange { .. })
        ));
        assert!(matches!(
            at(serde_json::json!({"exp": 20_000, "nbf": 11_000})),
            Err(AssertionError::TimeRange { .. })
        ));
    }
}
