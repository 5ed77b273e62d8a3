//! Base64 flavours and compact JWS, lenient on input the way Entra is (padding, standard or URL
//! alphabet) and strict on output (base64url without padding).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64std(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes base64 in any of the four usual spellings (URL or standard alphabet, with or
/// without `=` padding); clients differ (spec/tokens.md §3.5).
pub fn b64_lenient(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    [&URL_SAFE_NO_PAD, &URL_SAFE, &STANDARD, &STANDARD_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

/// A compact JWS split into its parts, not yet verified.
#[derive(Debug)]
pub struct CompactJws<'a> {
    /// `header.payload` exactly as sent: the signature covers these bytes.
    pub signing_input: &'a str,
    pub header: serde_json::Map<String, serde_json::Value>,
    pub claims: serde_json::Map<String, serde_json::Value>,
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwsError {
    #[error("a JWT has three segments separated by dots")]
    Segments,
    #[error("the {0} segment is not base64")]
    Base64(&'static str),
    #[error("the {0} segment is not a JSON object")]
    Json(&'static str),
}

pub fn split_compact(token: &str) -> Result<CompactJws<'_>, JwsError> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Segments);
    };
    let object = |segment: &str,
                  name: &'static str|
     -> Result<serde_json::Map<String, serde_json::Value>, JwsError> {
        let bytes = b64_lenient(segment).ok_or(JwsError::Base64(name))?;
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(JwsError::Json(name)),
        }
    };
    let header = object(h, "header")?;
    let claims = object(p, "payload")?;
    let signature = if s.is_empty() {
        Vec::new()
    } else {
        b64_lenient(s).ok_or(JwsError::Base64("signature"))?
    };
    let signing_input = &token.trim()[..h.len() + 1 + p.len()];
    Ok(CompactJws {
        signing_input,
        header,
        claims,
        signature,
    })
}

/// Reads a numeric claim sent as a JSON number (integer or float) or as a numeric string,
/// as MSAL.NET and MSAL Python do (spec/tokens.md §3.5, §7).
pub fn numeric_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<Result<i64, ()>> {
    let value = claims.get(name)?;
    let parsed = match value {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.floor() as i64)
        }),
        serde_json::Value::String(s) => s.trim().parse::<i64>().ok().or_else(|| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| f.floor() as i64)
        }),
        _ => None,
    };
    Some(parsed.ok_or(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_base64_accepts_all_spellings() {
        let bytes = [0xfbu8, 0xff, 0x01, 0x02];
        for text in ["-_8BAg", "-_8BAg==", "+/8BAg==", "+/8BAg"] {
            assert_eq!(b64_lenient(text).as_deref(), Some(&bytes[..]), "{text}");
        }
        assert_eq!(b64_lenient("***"), None);
    }

    #[test]
    fn split_keeps_padded_signing_input() {
        let h = URL_SAFE.encode(br#"{"alg":"RS256"}"#);
        let p = URL_SAFE.encode(br#"{"exp":"12.5"}"#);
        let token = format!("{h}.{p}.AAAA");
        let jws = split_compact(&token).expect("valid");
        assert_eq!(jws.signing_input, format!("{h}.{p}"));
        assert_eq!(numeric_claim(&jws.claims, "exp"), Some(Ok(12)));
        assert_eq!(numeric_claim(&jws.claims, "nbf"), None);
        assert!(matches!(split_compact("a.b"), Err(JwsError::Segments)));
    }

    #[test]
    fn numeric_claims_reject_garbage() {
        let claims: serde_json::Map<_, _> =
            serde_json::from_str(r#"{"a":"x","b":[1],"c":1.9e3}"#).expect("json");
        assert_eq!(numeric_claim(&claims, "a"), Some(Err(())));
        assert_eq!(numeric_claim(&claims, "b"), Some(Err(())));
        assert_eq!(numeric_claim(&claims, "c"), Some(Ok(1900)));
    }
}
