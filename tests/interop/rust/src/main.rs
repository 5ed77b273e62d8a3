//! Gets a token with azure_identity's ManagedIdentityCredential, unchanged: in a simulated VM
//! started by `misim vm exec VM --app-service`, the App Service variables (IDENTITY_ENDPOINT,
//! IDENTITY_HEADER) point it at the VM's endpoint. Prints the token's claims as JSON, or the
//! error, and exits non-zero on failure.

use azure_core::credentials::TokenCredential;
use base64::Engine;

#[tokio::main]
async fn main() {
    let scope = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "https://management.azure.com/.default".into());
    // The selector a user-assigned identity is asked for by, if any.
    let selector = std::env::var("PROBE_CLIENT_ID")
        .ok()
        .map(azure_identity::UserAssignedId::ClientId)
        .or_else(|| {
            std::env::var("PROBE_OBJECT_ID")
                .ok()
                .map(azure_identity::UserAssignedId::ObjectId)
        });
    let options = selector.map(|id| azure_identity::ManagedIdentityCredentialOptions {
        user_assigned_id: Some(id),
        ..Default::default()
    });
    let credential = match azure_identity::ManagedIdentityCredential::new(options) {
        Ok(credential) => credential,
        Err(error) => {
            eprintln!("probe: cannot build the credential: {error}");
            std::process::exit(2);
        }
    };
    match credential.get_token(&[scope.as_str()], None).await {
        Ok(token) => {
            let secret = token.token.secret();
            let payload = secret.split('.').nth(1).unwrap_or_default();
            let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .unwrap_or_default();
            println!("{}", serde_json::json!({"claims": claims, "expires_on": token.expires_on.unix_timestamp()}));
        }
        Err(error) => {
            eprintln!("probe: no token: {error}");
            std::process::exit(1);
        }
    }
}
