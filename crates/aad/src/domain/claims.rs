//! Access-token claims as Entra issues them (spec/tokens.md §4).

use misim_core::jose::b64url;
use serde_json::{Value, json};

/// Tokens are back-dated like Entra's (`iat`/`nbf` ≈ now − 5 min).
pub const BACKDATE_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenVersion {
    V1,
    V2,
}

/// How the client proved itself: `appidacr`/`azpacr` "1" (secret) or "2" (certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Secret,
    Certificate,
}

pub struct ClaimsInput<'a> {
    pub version: TokenVersion,
    pub issuer: &'a str,
    pub tenant_id: &'a str,
    pub audience: &'a str,
    pub app_id: &'a str,
    pub object_id: &'a str,
    pub auth: ClientAuth,
    pub now: i64,
    pub lifetime_secs: i64,
    /// `xms_mirid` of managed identities.
    pub mi_resource_id: Option<&'a str>,
    pub tenant_created_at: i64,
    pub unique_token_id: [u8; 16],
}

/// The issue time and expiry of a token minted at `now` with `lifetime_secs`.
pub fn lifetime(now: i64, lifetime_secs: i64) -> (i64, i64) {
    (now - BACKDATE_SECS, now + lifetime_secs)
}

pub fn claims(input: &ClaimsInput<'_>) -> Value {
    let (iat, exp) = lifetime(input.now, input.lifetime_secs);
    let acr = match input.auth {
        ClientAuth::Secret => "1",
        ClientAuth::Certificate => "2",
    };
    let uti = b64url(&input.unique_token_id);
    let mut claims = json!({
        "aud": input.audience,
        "iss": input.issuer,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "aio": format!("E2Z{}", &uti[..16]),
        "idp": input.issuer,
        "idtyp": "app",
        "oid": input.object_id,
        "rh": format!("0.{}.", &uti),
        "sub": input.object_id,
        "tid": input.tenant_id,
        "uti": uti,
    });
    let map = claims.as_object_mut().expect("json! object");
    match input.version {
        TokenVersion::V1 => {
            map.insert("appid".into(), json!(input.app_id));
            map.insert("appidacr".into(), json!(acr));
            map.insert("ver".into(), json!("1.0"));
        }
        TokenVersion::V2 => {
            map.insert("azp".into(), json!(input.app_id));
            map.insert("azpacr".into(), json!(acr));
            map.insert("ver".into(), json!("2.0"));
        }
    }
    if let Some(mirid) = input.mi_resource_id {
        map.insert("xms_mirid".into(), json!(mirid));
        map.insert("xms_tcdt".into(), json!(input.tenant_created_at));
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(version: TokenVersion, mirid: Option<&'static str>) -> ClaimsInput<'static> {
        ClaimsInput {
            version,
            issuer: "https://h/t/",
            tenant_id: "t",
            audience: "https://management.azure.com/",
            app_id: "app",
            object_id: "oid",
            auth: ClientAuth::Certificate,
            now: 1000,
            lifetime_secs: 86_399,
            mi_resource_id: mirid,
            tenant_created_at: 5,
            unique_token_id: [7; 16],
        }
    }

    #[test]
    fn v1_managed_identity_claims() {
        let c = claims(&input(
            TokenVersion::V1,
            Some("/subscriptions/s/resourcegroups/r/providers/Microsoft.Compute/virtualMachines/v"),
        ));
        assert_eq!(c["appid"], "app");
        assert_eq!(c["appidacr"], "2");
        assert_eq!(c["ver"], "1.0");
        assert_eq!(c["iat"], 700);
        assert_eq!(c["exp"], 87_399);
        assert_eq!(c["sub"], c["oid"]);
        assert_eq!(c["idtyp"], "app");
        assert!(
            c["xms_mirid"]
                .as_str()
                .is_some_and(|m| m.contains("virtualMachines"))
        );
        assert!(c.get("azp").is_none());
    }

    #[test]
    fn v2_app_claims() {
        let c = claims(&input(TokenVersion::V2, None));
        assert_eq!(c["azp"], "app");
        assert_eq!(c["ver"], "2.0");
        assert!(c.get("appid").is_none() && c.get("xms_mirid").is_none());
    }
}
