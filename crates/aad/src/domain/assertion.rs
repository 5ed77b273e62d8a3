//! Validation of certificate client assertions (spec/tokens.md §3.5 and §7): lenient where
//! clients diverge (RS256/PS256, `x5t`/`x5t#S256`, base64 flavours, string or float times, reused
//! `jti`), strict where Entra is (registered certificate valid at simulated time, signature,
//! `iss`/`sub`, `aud`, `exp`/`nbf` against wall time).

use misim_core::crypto::{JwsAlg, RsaCertificate, hex_upper, sha256};
use misim_core::jose::{CompactJws, b64_lenient, numeric_claim, split_compact};
use std::sync::Arc;
use time::OffsetDateTime;

use super::directory::KeyCredential;

/// Clock skew tolerated on `nbf`/`exp` of client assertions, in seconds, against wall time.
/// Entra's exact value is unpublished; five minutes is what its docs and clients assume.
pub const ASSERTION_CLOCK_SKEW_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    Malformed(String),
    UnsupportedAlgorithm(String),
    NoThumbprint,
    KeyNotFound {
        thumbprint: String,
    },
    KeyNotValid {
        thumbprint: String,
        start: i64,
        end: i64,
    },
    BadSignature {
        thumbprint: String,
    },
    IssuerOrSubject,
    MissingExpiry,
    TimeRange {
        now: i64,
        nbf: Option<i64>,
        exp: i64,
    },
    Audience {
        audience: String,
    },
}

/// What a valid assertion proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAssertion {
    pub key_id: String,
}

pub struct AssertionContext<'a> {
    pub client_id: &'a str,
    pub credentials: &'a [KeyCredential],
    /// Simulated time: the registered certificate must be valid then.
    pub sim_now: i64,
    /// Wall time: assertions are minted in wall time by clients.
    pub wall_now: i64,
    pub audience_ok: &'a dyn Fn(&str) -> bool,
    /// The parsed certificate of a credential (the service keeps them parsed; `None` parses).
    pub parsed: &'a dyn Fn(&KeyCredential) -> Option<&'a RsaCertificate>,
    /// Signatures this client's certificates were already found to make.
    pub memo: Option<&'a SignatureMemo>,
}

/// Assertions whose signature was already verified, by the SHA-256 of the compact token, with
/// what was read from them. MSAL and azure-identity reuse one assertion for minutes; presented
/// again, it gets every check that depends on time, audience or the registered credential, but
/// no second parse and no second RSA operation: what a byte string says, and that it is a valid
/// signature by a given key, never change.
#[derive(Default)]
pub struct SignatureMemo {
    seen: std::sync::Mutex<std::collections::HashMap<[u8; 32], Arc<ReadAssertion>>>,
}

/// Entries a memo holds before it starts over: one client reuses a handful of assertions at a
/// time, while IMDS signs a fresh one per uncached token, which is never presented again.
const MEMO_CAPACITY: usize = 256;

impl SignatureMemo {
    fn key(token: &str) -> [u8; 32] {
        let mut key = [0u8; 32];
        key.copy_from_slice(&sha256(token.trim().as_bytes()));
        key
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<ReadAssertion>> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn remember(&self, key: [u8; 32], read: Arc<ReadAssertion>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MEMO_CAPACITY {
            seen.clear();
        }
        seen.insert(key, read);
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an assertion says: its certificate thumbprints and the claims the checks read.
#[derive(Debug, Clone)]
struct ReadAssertion {
    /// SHA-256 thumbprint of the certificate the signature verified with (remembered ones only).
    verified_with: Option<Vec<u8>>,
    alg: JwsAlg,
    sha1: Option<Vec<u8>>,
    sha256: Option<Vec<u8>>,
    iss: Option<String>,
    sub: Option<String>,
    audiences: Vec<String>,
    exp: Result<Option<i64>, AssertionError>,
    nbf: Result<Option<i64>, AssertionError>,
}

impl ReadAssertion {
    /// The thumbprint errors name (hex), worked out only when an error needs it.
    fn shown(&self) -> String {
        self.sha1
            .as_ref()
            .or(self.sha256.as_ref())
            .map(|t| hex_upper(t))
            .unwrap_or_default()
    }
}

fn read(jws: &CompactJws<'_>) -> Result<ReadAssertion, AssertionError> {
    let alg_name = jws.header.get("alg").and_then(|v| v.as_str()).unwrap_or("");
    let alg = JwsAlg::parse(alg_name)
        .ok_or_else(|| AssertionError::UnsupportedAlgorithm(alg_name.to_string()))?;
    let thumb = |name: &str| {
        jws.header
            .get(name)
            .and_then(|v| v.as_str())
            .map(|s| b64_lenient(s).unwrap_or_default())
    };
    let (sha256, sha1) = (thumb("x5t#S256"), thumb("x5t"));
    if sha1.is_none() && sha256.is_none() {
        return Err(AssertionError::NoThumbprint);
    }
    let text = |name: &str| {
        jws.claims
            .get(name)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let audiences = match jws.claims.get("aud") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let time_claim = |name: &str| -> Result<Option<i64>, AssertionError> {
        match numeric_claim(&jws.claims, name) {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(v)),
            Some(Err(())) => Err(AssertionError::Malformed(format!(
                "the '{name}' claim is not a number"
            ))),
        }
    };
    Ok(ReadAssertion {
        verified_with: None,
        alg,
        sha1,
        sha256,
        iss: text("iss"),
        sub: text("sub"),
        audiences,
        exp: time_claim("exp"),
        nbf: time_claim("nbf"),
    })
}

pub fn validate(token: &str, ctx: &AssertionContext<'_>) -> Result<ValidAssertion, AssertionError> {
    let memo_key = ctx.memo.map(|memo| (memo, SignatureMemo::key(token)));
    let remembered = memo_key.and_then(|(memo, key)| memo.get(&key));
    let (mut assertion, jws) = match remembered {
        Some(assertion) => (assertion, None),
        None => {
            let jws = split_compact(token).map_err(|e| AssertionError::Malformed(e.to_string()))?;
            (Arc::new(read(&jws)?), Some(jws))
        }
    };
    let a = &*assertion;
    let credential = ctx
        .credentials
        .iter()
        .find(|c| {
            a.sha256.as_deref() == Some(c.sha256.as_slice())
                || a.sha1.as_deref() == Some(c.sha1.as_slice())
        })
        .ok_or_else(|| AssertionError::KeyNotFound {
            thumbprint: a.shown(),
        })?;
    if !credential.valid_at(ctx.sim_now) {
        return Err(AssertionError::KeyNotValid {
            thumbprint: a.shown(),
            start: credential.start_at,
            end: credential.end_at,
        });
    }
    // A remembered assertion skips RSA only if the credential it selects now is the one it was
    // verified with (a header may name two certificates, `x5t` and `x5t#S256`).
    let verified_before = a.verified_with.as_deref() == Some(credential.sha256.as_slice());
    if !verified_before {
        let owned;
        let jws = match &jws {
            Some(jws) => jws,
            None => {
                owned =
                    split_compact(token).map_err(|e| AssertionError::Malformed(e.to_string()))?;
                &owned
            }
        };
        // The service's parsed copy keeps the public key parsed across requests.
        let parsed_here;
        let certificate = match (ctx.parsed)(credential) {
            Some(certificate) => certificate,
            None => {
                parsed_here = RsaCertificate::from_der(&credential.cert_der).map_err(|_| {
                    AssertionError::KeyNotFound {
                        thumbprint: a.shown(),
                    }
                })?;
                &parsed_here
            }
        };
        if !certificate.verify(a.alg, jws.signing_input.as_bytes(), &jws.signature) {
            return Err(AssertionError::BadSignature {
                thumbprint: a.shown(),
            });
        }
        if let Some((memo, key)) = memo_key {
            // A fresh read is not shared yet: marked in place, copied only if it came from the
            // memo (verified before with another credential).
            Arc::make_mut(&mut assertion).verified_with = Some(credential.sha256.clone());
            memo.remember(key, assertion.clone());
        }
    }
    let a = &*assertion;

    let is_client = |v: &Option<String>| {
        v.as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case(ctx.client_id))
    };
    if !is_client(&a.iss) || !is_client(&a.sub) {
        return Err(AssertionError::IssuerOrSubject);
    }
    if !a.audiences.iter().any(|aud| (ctx.audience_ok)(aud)) {
        return Err(AssertionError::Audience {
            audience: a.audiences.join(","),
        });
    }
    let exp = a.exp.clone()?.ok_or(AssertionError::MissingExpiry)?;
    let nbf = a.nbf.clone()?;
    // Saturating: `exp` is the client's number, up to i64::MAX (or a huge float, floored to it).
    let too_early =
        nbf.is_some_and(|nbf| ctx.wall_now.saturating_add(ASSERTION_CLOCK_SKEW_SECS) < nbf);
    if too_early || exp.saturating_add(ASSERTION_CLOCK_SKEW_SECS) < ctx.wall_now {
        return Err(AssertionError::TimeRange {
            now: ctx.wall_now,
            nbf,
            exp,
        });
    }
    Ok(ValidAssertion {
        key_id: credential.key_id.clone(),
    })
}

/// Entra's timestamp format in AADSTS700024 messages.
pub fn entra_time(unix: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.0000000Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use misim_core::crypto::{RsaKey, sha1, sha256};
    use misim_core::jose::b64url;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;
    const CLIENT: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
    const AUD: &str = "https://127.0.0.1:8444/t/oauth2/v2.0/token";

    struct Fixture {
        key: RsaKey,
        credential: KeyCredential,
    }

    fn fixture() -> Fixture {
        let key = RsaKey::generate().expect("keygen");
        let t = OffsetDateTime::from_unix_timestamp(NOW).expect("time");
        let der = key
            .self_signed_certificate(
                "c",
                t - time::Duration::days(1),
                t + time::Duration::days(1),
            )
            .expect("cert");
        let credential = KeyCredential {
            key_id: "key-1".into(),
            owner_id: "o".into(),
            display_name: None,
            sha1: sha1(&der),
            sha256: sha256(&der),
            cert_der: der,
            start_at: NOW - 86_400,
            end_at: NOW + 86_400,
        };
        Fixture { key, credential }
    }

    fn claims() -> serde_json::Value {
        json!({"aud": AUD, "iss": CLIENT, "sub": CLIENT, "exp": NOW + 600, "nbf": NOW, "jti": "j"})
    }

    fn check(
        f: &Fixture,
        token: &str,
        sim_now: i64,
        wall_now: i64,
    ) -> Result<ValidAssertion, AssertionError> {
        check_with_memo(f, token, sim_now, wall_now, None)
    }

    fn check_with_memo(
        f: &Fixture,
        token: &str,
        sim_now: i64,
        wall_now: i64,
        memo: Option<&SignatureMemo>,
    ) -> Result<ValidAssertion, AssertionError> {
        let credentials = [f.credential.clone()];
        let ok = |a: &str| a == AUD;
        validate(
            token,
            &AssertionContext {
                client_id: CLIENT,
                credentials: &credentials,
                sim_now,
                wall_now,
                audience_ok: &ok,
                parsed: &|_| None,
                memo,
            },
        )
    }

    fn sign(
        f: &Fixture,
        alg: JwsAlg,
        header: serde_json::Value,
        claims: serde_json::Value,
    ) -> String {
        f.key.sign_jws(alg, &header, &claims).expect("sign")
    }

    #[test]
    fn extreme_times_are_judged_without_overflowing() {
        let f = fixture();
        let header = json!({"alg":"RS256","x5t": b64url(&f.credential.sha1)});
        let with = |exp: serde_json::Value, nbf: serde_json::Value| {
            let mut claims = claims();
            claims["exp"] = exp;
            claims["nbf"] = nbf;
            check(
                &f,
                &sign(&f, JwsAlg::Rs256, header.clone(), claims),
                NOW,
                NOW,
            )
        };
        // Expiring at the end of time (or a float beyond it) is valid now.
        assert!(with(json!(i64::MAX), json!(NOW)).is_ok());
        assert!(with(json!(1e300), json!(i64::MIN)).is_ok());
        // Expired since the start of time; not before the end of time: refused, not a panic.
        assert!(matches!(
            with(json!(i64::MIN), json!(NOW)),
            Err(AssertionError::TimeRange { .. })
        ));
        assert!(matches!(
            with(json!(i64::MAX), json!(i64::MAX)),
            Err(AssertionError::TimeRange { .. })
        ));
    }

    #[test]
    fn the_service_parsed_certificate_is_the_one_verified_with() {
        let f = fixture();
        let token = sign(
            &f,
            JwsAlg::Rs256,
            json!({"alg":"RS256","x5t": b64url(&f.credential.sha1)}),
            claims(),
        );
        let parsed = RsaCertificate::from_der(&f.credential.cert_der).expect("cert");
        // The stored DER is unreadable: only the service's parsed copy can verify.
        let mut credential = f.credential.clone();
        credential.cert_der = vec![0x30, 0x00];
        let credentials = [credential];
        fn context<'a>(
            token: &str,
            credentials: &'a [KeyCredential],
            parsed: &'a dyn Fn(&KeyCredential) -> Option<&'a RsaCertificate>,
        ) -> Result<ValidAssertion, AssertionError> {
            fn ok(audience: &str) -> bool {
                audience == AUD
            }
            validate(
                token,
                &AssertionContext {
                    client_id: CLIENT,
                    credentials,
                    sim_now: NOW,
                    wall_now: NOW,
                    audience_ok: &ok,
                    parsed,
                    memo: None,
                },
            )
        }
        assert!(context(&token, &credentials, &|_| Some(&parsed)).is_ok());
        assert!(matches!(
            context(&token, &credentials, &|_| None),
            Err(AssertionError::KeyNotFound { .. })
        ));
    }

    #[test]
    fn accepts_every_client_flavour() {
        let f = fixture();
        let s1 = b64url(&f.credential.sha1);
        let s256 = b64url(&f.credential.sha256);
        let std_s1 = misim_core::jose::b64std(&f.credential.sha1);
        let cases = [
            (
                JwsAlg::Rs256,
                json!({"alg":"RS256","typ":"JWT","x5t": s1}),
                claims(),
            ),
            (
                JwsAlg::Ps256,
                json!({"alg":"PS256","x5t#S256": s256, "x5c": "MIIC"}),
                claims(),
            ),
            (
                JwsAlg::Rs256,
                json!({"alg":"RS256","x5t": std_s1}),
                claims(),
            ),
            (
                JwsAlg::Ps256,
                json!({"alg":"PS256","x5t#S256": format!("{s256}=")}),
                json!({"aud": AUD, "iss": CLIENT, "sub": CLIENT, "exp": format!("{}", NOW + 600), "nbf": format!("{}", NOW)}),
            ),
            (
                JwsAlg::Rs256,
                json!({"alg":"RS256","x5t": s1}),
                json!({"aud": AUD, "iss": CLIENT.to_uppercase(), "sub": CLIENT, "exp": (NOW + 600) as f64 + 0.017, "iat": NOW as f64}),
            ),
        ];
        for (alg, header, claims) in cases {
            let token = sign(&f, alg, header.clone(), claims);
            assert_eq!(
                check(&f, &token, NOW, NOW),
                Ok(ValidAssertion {
                    key_id: "key-1".into()
                }),
                "{header}"
            );
            // The same assertion again: no replay rejection.
            assert!(check(&f, &token, NOW, NOW + 30).is_ok());
        }
        // Padded segments, as azure-identity's own client sends them.
        let header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE,
            json!({"alg":"RS256","x5t": s1}).to_string(),
        );
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE,
            claims().to_string(),
        );
        let input = format!("{header}.{payload}");
        let sig = f.key.sign(JwsAlg::Rs256, input.as_bytes()).expect("sign");
        let padded = format!(
            "{input}.{}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, sig)
        );
        assert!(check(&f, &padded, NOW, NOW).is_ok());
    }

    #[test]
    fn a_remembered_signature_skips_only_the_rsa_check() {
        let f = fixture();
        let header = json!({"alg":"RS256","x5t": b64url(&f.credential.sha1)});
        let token = sign(&f, JwsAlg::Rs256, header.clone(), claims());
        let memo = SignatureMemo::default();
        assert!(check_with_memo(&f, &token, NOW, NOW, Some(&memo)).is_ok());
        assert!(check_with_memo(&f, &token, NOW, NOW, Some(&memo)).is_ok());
        assert_eq!(memo.len(), 1, "the reused assertion is remembered once");

        // Everything but the signature is checked again: time, and the credential's validity.
        assert!(matches!(
            check_with_memo(&f, &token, NOW, NOW + 3600, Some(&memo)),
            Err(AssertionError::TimeRange { .. })
        ));
        assert!(matches!(
            check_with_memo(&f, &token, NOW + 3 * 86_400, NOW, Some(&memo)),
            Err(AssertionError::KeyNotValid { .. })
        ));

        // A bad signature is never remembered.
        let forged = sign(&fixture(), JwsAlg::Rs256, header, claims());
        assert!(matches!(
            check_with_memo(&f, &forged, NOW, NOW, Some(&memo)),
            Err(AssertionError::BadSignature { .. })
        ));
        assert_eq!(memo.len(), 1);
        // What the memo holds is trusted without RSA (here planted, to show it is consulted).
        let mut planted = read(&split_compact(&forged).expect("jws")).expect("read");
        planted.verified_with = Some(f.credential.sha256.clone());
        memo.remember(SignatureMemo::key(&forged), Arc::new(planted.clone()));
        assert!(check_with_memo(&f, &forged, NOW, NOW, Some(&memo)).is_ok());
        // ...but only for the certificate it was verified with.
        planted.verified_with = Some(vec![0; 32]);
        memo.remember(SignatureMemo::key(&forged), Arc::new(planted));
        assert!(matches!(
            check_with_memo(&f, &forged, NOW, NOW, Some(&memo)),
            Err(AssertionError::BadSignature { .. })
        ));
    }

    #[test]
    fn rejects_what_entra_rejects() {
        let f = fixture();
        let s1 = b64url(&f.credential.sha1);
        let good_header = json!({"alg":"RS256","x5t": s1});
        let token = sign(&f, JwsAlg::Rs256, good_header.clone(), claims());

        // Tampered payload keeps the old signature.
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = b64url(
            json!({"aud": AUD, "iss": CLIENT, "sub": CLIENT, "exp": NOW + 9999})
                .to_string()
                .as_bytes(),
        );
        assert!(matches!(
            check(&f, &parts.join("."), NOW, NOW),
            Err(AssertionError::BadSignature { .. })
        ));

        let alg_none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none"}"#),
            b64url(claims().to_string().as_bytes())
        );
        assert_eq!(
            check(&f, &alg_none, NOW, NOW),
            Err(AssertionError::UnsupportedAlgorithm("none".into()))
        );
        assert!(matches!(
            check(&f, "garbage", NOW, NOW),
            Err(AssertionError::Malformed(_))
        ));

        let other = fixture();
        let unknown = sign(
            &other,
            JwsAlg::Rs256,
            json!({"alg":"RS256","x5t": b64url(&other.credential.sha1)}),
            claims(),
        );
        assert!(matches!(
            check(&f, &unknown, NOW, NOW),
            Err(AssertionError::KeyNotFound { .. })
        ));
        // Right thumbprint, wrong key.
        let forged = sign(&other, JwsAlg::Rs256, good_header.clone(), claims());
        assert!(matches!(
            check(&f, &forged, NOW, NOW),
            Err(AssertionError::BadSignature { .. })
        ));

        assert_eq!(
            check(
                &f,
                &sign(&f, JwsAlg::Rs256, json!({"alg":"RS256"}), claims()),
                NOW,
                NOW
            ),
            Err(AssertionError::NoThumbprint)
        );
        // Certificate outside its validity at simulated time.
        assert!(matches!(
            check(&f, &token, NOW + 2 * 86_400, NOW),
            Err(AssertionError::KeyNotValid { .. })
        ));

        let expired = sign(
            &f,
            JwsAlg::Rs256,
            good_header.clone(),
            json!({"aud": AUD, "iss": CLIENT, "sub": CLIENT, "exp": NOW - 301}),
        );
        assert!(matches!(
            check(&f, &expired, NOW, NOW),
            Err(AssertionError::TimeRange { .. })
        ));
        let within_skew = sign(
            &f,
            JwsAlg::Rs256,
            good_header.clone(),
            json!({"aud": AUD, "iss": CLIENT, "sub": CLIENT, "exp": NOW - 299}),
        );
        assert!(check(&f, &within_skew, NOW, NOW).is_ok());
        let future = sign(
            &f,
            JwsAlg::Rs256,
            good_header.clone(),
            json!({"aud": AUD, "iss": CLIENT, "sub": CLIENT, "exp": NOW + 9000, "nbf": NOW + 600}),
        );
        assert!(matches!(
            check(&f, &future, NOW, NOW),
            Err(AssertionError::TimeRange { .. })
        ));
        let no_exp = sign(
            &f,
            JwsAlg::Rs256,
            good_header.clone(),
            json!({"aud": AUD, "iss": CLIENT, "sub": CLIENT}),
        );
        assert_eq!(
            check(&f, &no_exp, NOW, NOW),
            Err(AssertionError::MissingExpiry)
        );
        let wrong_aud = sign(
            &f,
            JwsAlg::Rs256,
            good_header.clone(),
            json!({"aud": "https://evil/t/oauth2/v2.0/token", "iss": CLIENT, "sub": CLIENT, "exp": NOW + 60}),
        );
        assert!(matches!(
            check(&f, &wrong_aud, NOW, NOW),
            Err(AssertionError::Audience { .. })
        ));
        let wrong_iss = sign(
            &f,
            JwsAlg::Rs256,
            good_header,
            json!({"aud": AUD, "iss": "someone", "sub": CLIENT, "exp": NOW + 60}),
        );
        assert_eq!(
            check(&f, &wrong_iss, NOW, NOW),
            Err(AssertionError::IssuerOrSubject)
        );
    }
}
