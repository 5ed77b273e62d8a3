//! Getting a token from AAD the way the real host agent does: a client assertion signed with the
//! identity's key, posted to AAD's token endpoint over HTTPS, and a per-(identity, resource)
//! cache until shortly before expiry.

use std::sync::{Arc, Mutex};

use misim_core::crypto::{JwsAlg, RsaKey, sha1, signing};
use misim_core::jose::b64url;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::FastMap;
use crate::error::ImdsError;
use crate::store::IdentityRow;

/// Cached tokens are re-issued when less than this much lifetime is left.
pub const REFRESH_BEFORE_EXPIRY_SECS: i64 = 300;
/// Lifetime of the assertions IMDS signs (wall time, like any client).
const ASSERTION_LIFETIME_SECS: i64 = 600;

#[derive(Debug, Clone)]
pub struct Token {
    /// The token as a JSON string, quotes included, shared: a cached token is handed out many
    /// times a second, and escaping its kilobyte and a half for each answer was a sixteenth of
    /// a cached answer's cost.
    pub access_token: Arc<RawValue>,
    pub expires_on: i64,
    pub not_before: i64,
}

impl Token {
    pub fn new(access_token: &str, expires_on: i64, not_before: i64) -> Result<Self, ImdsError> {
        // A string always serializes to valid JSON; the error arm only keeps this panic-free.
        let raw = serde_json::to_string(access_token)
            .and_then(RawValue::from_string)
            .map_err(|e| ImdsError::Internal(format!("AAD's token as JSON: {e}")))?;
        Ok(Self {
            access_token: raw.into(),
            expires_on,
            not_before,
        })
    }
}

/// Tokens by lower-case principal id, then resource: a lookup allocates nothing.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<FastMap<String, FastMap<String, Token>>>,
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
            .filter(|t| t.expires_on.saturating_sub(REFRESH_BEFORE_EXPIRY_SECS) > now)
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

/// Parsed identity keys by lower-case principal id, then key id: parsing PKCS#8 (with aws-lc's
/// key checks) costs more than the signature itself, so each credential is parsed once, and a
/// lookup allocates nothing.
#[derive(Default)]
pub struct KeyCache {
    keys: Mutex<FastMap<String, FastMap<String, IdentityKey>>>,
}

/// An identity's parsed key, the encoded JWS header of its assertions (its certificate's
/// `x5t`) and its tenant's token endpoint: the same for every assertion it signs. (The endpoint
/// is built from IMDS's configured AAD URL, fixed for the life of the service.)
#[derive(Clone)]
struct IdentityKey {
    key: RsaKey,
    header: Arc<str>,
    endpoint: Endpoint,
}

/// AAD's v1 token endpoint of a tenant, as text (the assertion's `aud`) and parsed.
#[derive(Clone)]
struct Endpoint {
    text: Arc<str>,
    uri: http::Uri,
}

impl Endpoint {
    fn of(aad_url: &str, tenant_id: &str) -> Result<Self, ImdsError> {
        let text = format!("{}/{tenant_id}/oauth2/token", aad_url.trim_end_matches('/'));
        let uri = text
            .parse::<http::Uri>()
            .map_err(|e| ImdsError::Internal(format!("AAD's token endpoint {text}: {e}")))?;
        Ok(Self {
            text: text.into(),
            uri,
        })
    }
}

impl IdentityKey {
    fn parse(
        pkcs8: &[u8],
        cert_der: &[u8],
        endpoint: Endpoint,
    ) -> Result<Self, misim_core::crypto::CryptoError> {
        let header = json!({"alg": "RS256", "typ": "JWT", "x5t": b64url(&sha1(cert_der))});
        Ok(Self {
            key: RsaKey::from_pkcs8(pkcs8)?,
            header: b64url(header.to_string().as_bytes()).into(),
            endpoint,
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
    fn get(&self, identity: &IdentityRow) -> Option<IdentityKey> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(lower(&identity.principal_id).as_ref())?
            .get(&identity.key_id)
            .cloned()
    }

    fn put(&self, identity: &IdentityRow, key: IdentityKey) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(identity.principal_id.to_ascii_lowercase())
            .or_default()
            .insert(identity.key_id.clone(), key);
    }

    /// Forgets a principal's keys (its credential changed or went away).
    pub fn forget(&self, principal_id: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(lower(principal_id).as_ref());
    }
}

/// Characters a form value keeps as they are (`application/x-www-form-urlencoded`).
const FORM_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// The client-credentials form. The assertion goes in as it is: a compact JWS is base64url and
/// dots, nothing a form escapes, and escaping-by-scan its kilobyte was a measurable share of
/// the relay.
fn token_form(client_id: &str, resource: &str, assertion: &str) -> String {
    debug_assert!(
        assertion
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    );
    let escape = |value| percent_encoding::utf8_percent_encode(value, FORM_VALUE);
    format!(
        "grant_type=client_credentials&client_id={}&resource={}&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}",
        escape(client_id),
        escape(resource)
    )
}

/// What the relay reads of AAD's answer, success or error. Every field is optional and of any
/// JSON type, so an object of the wrong shape reads as one lacking fields; an answer that is not
/// a JSON object is unreadable (AAD unavailable, which a client retries).
#[derive(serde::Deserialize)]
struct AadAnswer {
    access_token: Option<Value>,
    expires_on: Option<Value>,
    not_before: Option<Value>,
    error: Option<Value>,
    error_description: Option<Value>,
}

/// v1 answers give epoch seconds as strings; a number is accepted too.
fn epoch(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::String(text) => text.parse().ok(),
        other => other.as_i64(),
    }
}

/// Requests a token for `resource` from AAD's v1 endpoint with a certificate assertion.
pub async fn fetch(
    http: &misim_core::tls::FormClient,
    keys: &KeyCache,
    aad_url: &str,
    identity: &IdentityRow,
    resource: &str,
    wall_now: i64,
) -> Result<Token, ImdsError> {
    let cached = keys.get(identity);
    let parsed_here = cached.is_none();
    let endpoint = match &cached {
        Some(key) => key.endpoint.clone(),
        None => Endpoint::of(aad_url, &identity.tenant_id)?,
    };
    let claims = serde_json::to_vec(&AssertionClaims {
        aud: &endpoint.text,
        iss: &identity.client_id,
        sub: &identity.client_id,
        jti: uuid::Uuid::new_v4().to_string(),
        nbf: wall_now - 60,
        exp: wall_now + ASSERTION_LIFETIME_SECS,
    })
    .map_err(|e| ImdsError::Internal(e.to_string()))?;
    let source = cached.ok_or_else(|| {
        (
            identity.private_pkcs8.clone(),
            identity.cert_der.clone(),
            endpoint.clone(),
        )
    });
    let (assertion, key) = signing(move || {
        let key = match source {
            Ok(key) => key,
            Err((pkcs8, der, endpoint)) => IdentityKey::parse(&pkcs8, &der, endpoint)?,
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
    let correlation = misim_core::events::current_correlation();
    let headers: &[(&'static str, &str)] = match &correlation {
        Some(id) => &[(misim_core::events::CORRELATION_HEADER, id.as_str())],
        None => &[],
    };
    let (status, answer) = http
        .post_form(
            &endpoint.uri,
            headers,
            token_form(&identity.client_id, resource, &assertion),
        )
        .await
        .map_err(|e| ImdsError::AadUnavailable(format!("AAD {e}")))?;
    let body: AadAnswer = serde_json::from_slice(&answer).map_err(|e| {
        ImdsError::AadUnavailable(format!("AAD answered {status} without JSON: {e}"))
    })?;
    if status == 200 {
        return match (
            body.access_token.as_ref().and_then(Value::as_str),
            epoch(body.expires_on.as_ref()),
            epoch(body.not_before.as_ref()),
        ) {
            (Some(token), Some(expires_on), Some(not_before)) => {
                Token::new(token, expires_on, not_before)
            }
            _ => Err(ImdsError::AadUnavailable(
                "AAD's answer lacks access_token/expires_on".into(),
            )),
        };
    }
    let text = |field: Option<Value>| match field {
        Some(Value::String(text)) => Some(text),
        _ => None,
    };
    let error = text(body.error).unwrap_or_else(|| "unknown".into());
    let description = text(body.error_description).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_escapes_values_and_keeps_the_assertion() {
        let form = token_form(
            "1234-abcd",
            "https://management.azure.com/ x",
            "eyJh.eyJ-_0.c2ln",
        );
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&form).expect("a valid form");
        assert_eq!(
            pairs,
            [
                ("grant_type", "client_credentials"),
                ("client_id", "1234-abcd"),
                ("resource", "https://management.azure.com/ x"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                ),
                ("client_assertion", "eyJh.eyJ-_0.c2ln"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(form.contains("resource=https%3A%2F%2Fmanagement.azure.com%2F%20x"));
    }

    #[test]
    fn cached_tokens_are_found_by_principal_in_any_case_and_forgotten_together() {
        let cache = TokenCache::default();
        let token = |expires_on| Token::new("t", expires_on, 0).expect("token");
        cache.put("ABC-Principal", "https://vault.azure.net", token(10_000));
        cache.put(
            "abc-principal",
            "https://management.azure.com/",
            token(10_000),
        );
        assert!(
            cache
                .get("abc-PRINCIPAL", "https://vault.azure.net", 0)
                .is_some()
        );
        assert!(cache.get("abc-principal", "https://other", 0).is_none());
        // Re-issued once less than REFRESH_BEFORE_EXPIRY_SECS of its lifetime is left.
        let late = 10_000 - REFRESH_BEFORE_EXPIRY_SECS;
        assert!(
            cache
                .get("abc-principal", "https://vault.azure.net", late)
                .is_none()
        );
        cache.forget("ABC-PRINCIPAL");
        assert!(
            cache
                .get("abc-principal", "https://management.azure.com/", 0)
                .is_none()
        );
    }

    #[test]
    fn parsed_keys_are_found_by_principal_in_any_case_and_key_id_and_forgotten_together() {
        let key = RsaKey::generate().expect("key");
        let endpoint = Endpoint::of("https://login.example/", "tenant").expect("endpoint");
        let parsed = IdentityKey::parse(key.pkcs8_der(), b"certificate", endpoint).expect("parsed");
        assert_eq!(
            &*parsed.endpoint.text,
            "https://login.example/tenant/oauth2/token"
        );
        let identity = |principal: &str, key_id: &str| IdentityRow {
            vm_id: "vm".into(),
            principal_id: principal.into(),
            client_id: "client".into(),
            tenant_id: "tenant".into(),
            resource_id: "id".into(),
            user_assigned: false,
            key_id: key_id.into(),
            cert_der: Vec::new(),
            private_pkcs8: Vec::new(),
            installed_at: 0,
        };
        let keys = KeyCache::default();
        keys.put(&identity("ABC-Principal", "key-1"), parsed.clone());
        keys.put(&identity("other", "key-1"), parsed);
        assert!(keys.get(&identity("abc-PRINCIPAL", "key-1")).is_some());
        // A rolled credential has a new key id: its key is parsed afresh.
        assert!(keys.get(&identity("abc-principal", "key-2")).is_none());
        keys.forget("ABC-PRINCIPAL");
        assert!(keys.get(&identity("abc-principal", "key-1")).is_none());
        assert!(keys.get(&identity("other", "key-1")).is_some());
    }

    #[test]
    fn a_token_is_kept_as_the_json_string_it_is_answered_as() {
        let jws = Token::new("eyJh.eyJ-_0.c2ln", 1, 0).expect("token");
        assert_eq!(jws.access_token.get(), r#""eyJh.eyJ-_0.c2ln""#);
        // Whatever AAD sent comes out escaped as JSON, never raw.
        let odd = Token::new("a\"b\\c\u{1}", 1, 0).expect("token");
        let back: String = serde_json::from_str(odd.access_token.get()).expect("valid JSON");
        assert_eq!(back, "a\"b\\c\u{1}");
    }

    #[test]
    fn epochs_are_read_from_strings_or_numbers() {
        assert_eq!(epoch(Some(&json!("1800000000"))), Some(1_800_000_000));
        assert_eq!(epoch(Some(&json!(1_800_000_000))), Some(1_800_000_000));
        assert_eq!(epoch(Some(&json!("soon"))), None);
        assert_eq!(epoch(Some(&json!(null))), None);
        assert_eq!(epoch(None), None);
    }

    #[test]
    fn answers_of_any_shape_are_read_field_by_field() {
        let odd: AadAnswer =
            serde_json::from_str(r#"{"access_token":7,"error":{"x":1},"extra":[1]}"#)
                .expect("odd fields still read");
        assert!(odd.access_token.as_ref().and_then(Value::as_str).is_none());
        assert!(matches!(odd.error, Some(Value::Object(_))));
    }
}
