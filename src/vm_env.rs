//! `misim vm env` / `misim vm exec`: the environment that points official clients at a VM's
//! identity endpoint (CONTRACT.md, Commands).

use anyhow::Context;
use std::path::Path;
use std::time::Duration;

use crate::connection::Connection;

/// Variables to set and to remove for one VM.
pub struct VmEnv {
    pub set: Vec<(String, String)>,
    pub unset: Vec<&'static str>,
}

/// IMDS mode and App Service mode exclude each other: the App Service variables override IMDS
/// in every SDK.
const APP_SERVICE_VARS: &[&str] = &[
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
];

fn client(connection: &Connection) -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read_to_string(&connection.ca_cert)
        .with_context(|| format!("cannot read {}", connection.ca_cert.display()))?;
    Ok(misim_core::tls::http_client(&ca, Duration::from_secs(30))?)
}

/// A token of the bootstrap admin for `resource`.
pub async fn admin_token(connection: &Connection, resource: &str) -> anyhow::Result<String> {
    let url = format!("{}/{}/oauth2/token", connection.aad, connection.tenant_id);
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", connection.admin.client_id.as_str()),
        ("client_secret", connection.admin.client_secret.as_str()),
        ("resource", resource),
    ];
    let response = client(connection)?
        .post(&url)
        .form(&form)
        .send()
        .await
        .with_context(|| format!("cannot reach AAD at {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .context("AAD answered with something other than JSON")?;
    match body["access_token"].as_str() {
        Some(token) if status.is_success() => Ok(token.to_string()),
        _ => anyhow::bail!(
            "AAD refused: {}",
            body["error_description"]
                .as_str()
                .unwrap_or("unknown error")
        ),
    }
}

pub async fn vm_env(data_dir: &Path, vm: &str, app_service: bool) -> anyhow::Result<VmEnv> {
    let connection = Connection::read(data_dir)?;
    let token = admin_token(&connection, "https://management.azure.com/").await?;
    let url = format!("{}/_sim/vms/{}", connection.arm, vm.trim_start_matches('/'));
    let response = client(&connection)?
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach ARM at {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .context("ARM answered with something other than JSON")?;
    if !status.is_success() {
        anyhow::bail!(
            "{}",
            body["error"]["message"].as_str().unwrap_or("ARM refused")
        );
    }
    let endpoint = body["imds"].as_str().ok_or_else(|| {
        anyhow::anyhow!("VM '{vm}' has no IMDS endpoint (is its host provisioned?)")
    })?;
    let ca = connection.ca_cert.display().to_string();
    let mut set = vec![
        ("REQUESTS_CA_BUNDLE".to_string(), ca.clone()),
        ("SSL_CERT_FILE".to_string(), ca),
    ];
    let unset = if app_service {
        let header = body["identityHeader"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("VM '{vm}' has no identity header"))?;
        set.push((
            "IDENTITY_ENDPOINT".into(),
            format!("{endpoint}{}", misim_imds::APP_SERVICE_PATH),
        ));
        set.push(("IDENTITY_HEADER".into(), header.to_string()));
        vec![
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "IDENTITY_SERVER_THUMBPRINT",
            "IMDS_ENDPOINT",
            "MSI_ENDPOINT",
            "MSI_SECRET",
        ]
    } else {
        set.push((
            "AZURE_POD_IDENTITY_AUTHORITY_HOST".into(),
            endpoint.to_string(),
        ));
        APP_SERVICE_VARS.to_vec()
    };
    Ok(VmEnv { set, unset })
}

/// Single-quotes a value for POSIX shells.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
