//! Access-token claims as Entra issues them (spec/tokens.md §4).

use misim_core::jose::b64url;
use serde::Serialize;

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

/// An access token's claims; serialized straight to JSON (a map of `Value`s cost the token
/// path a few microseconds of allocations).
#[derive(Debug, Serialize)]
pub struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    aio: String,
    idp: &'a str,
    idtyp: &'static str,
    oid: &'a str,
    rh: String,
    sub: &'a str,
    tid: &'a str,
    uti: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    appid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    appidacr: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    azp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    azpacr: Option<&'static str>,
    ver: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    xms_mirid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xms_tcdt: Option<i64>,
}

impl Claims<'_> {
    /// The JSON payload of the token.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings and integers only: serializing cannot fail.
        serde_json::to_vec(self).expect("claims serialize")
    }
}

pub fn claims<'a>(input: &ClaimsInput<'a>) -> Claims<'a> {
    let (iat, exp) = lifetime(input.now, input.lifetime_secs);
    let acr = match input.auth {
        ClientAuth::Secret => "1",
        ClientAuth::Certificate => "2",
    };
    let uti = b64url(&input.unique_token_id);
    let v1 = input.version == TokenVersion::V1;
    Claims {
        aud: input.audience,
        iss: input.issuer,
        iat,
        nbf: iat,
        exp,
        aio: format!("E2Z{}", &uti[..16]),
        idp: input.issuer,
        idtyp: "app",
        oid: input.object_id,
        rh: format!("0.{uti}."),
        sub: input.object_id,
        tid: input.tenant_id,
        uti,
        appid: v1.then_some(input.app_id),
        appidacr: v1.then_some(acr),
        azp: (!v1).then_some(input.app_id),
        azpacr: (!v1).then_some(acr),
        ver: if v1 { "1.0" } else { "2.0" },
        xms_mirid: input.mi_resource_id,
        xms_tcdt: input.mi_resource_id.map(|_| input.tenant_created_at),
    }
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
        let c: serde_json::Value = serde_json::from_slice(
            &claims(&input(
                TokenVersion::V1,
                Some("/subscriptions/s/resourcegroups/r/providers/Microsoft.Compute/virtualMachines/v"),
            ))
            .to_json(),
        )
        .expect("json");
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
        let c: serde_json::Value =
            serde_json::from_slice(&claims(&input(TokenVersion::V2, None)).to_json())
                .expect("json");
        assert_eq!(c["azp"], "app");
        assert_eq!(c["ver"], "2.0");
        assert!(c.get("appid").is_none() && c.get("xms_mirid").is_none());
    }
}
