//! Token endpoints with secrets and certificate assertions, v1 and v2, and their failures.

use crate::support::{ClientCert, TestSim, error_code, register_app};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn admin_secret_tokens_verify_against_discovered_jwks() {
    let sim = TestSim::start().await;
    let token = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let claims = sim.verify(&token, "https://management.azure.com").await;
    let admin = &sim.sim.connection.admin;
    assert_eq!(claims["appid"], admin.client_id.as_str());
    assert_eq!(claims["oid"], admin.object_id.as_str());
    assert_eq!(claims["sub"], admin.object_id.as_str());
    assert_eq!(claims["tid"], sim.tenant());
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["appidacr"], "1");
    assert_eq!(claims["idtyp"], "app");
    let lifetime = claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat");
    assert_eq!(
        lifetime,
        3599 + 300,
        "app tokens: expires_in 3599, back-dated five minutes"
    );
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.kid, header.x5t, "v1 tokens carry kid and x5t");

    // The v2 endpoint answers numbers; the resource's format (v1) decides the token.
    let (status, body) = sim
        .secret_token(
            &admin.client_id,
            &admin.client_secret,
            "https://vault.azure.net/.default",
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        body["expires_in"].is_i64() && body["ext_expires_in"].is_i64(),
        "{body}"
    );
    assert!(body.get("resource").is_none());
    sim.verify(
        body["access_token"].as_str().expect("token"),
        "https://vault.azure.net",
    )
    .await;
    // Other first-party resources apps in a VM ask for, by URI or by per-account endpoint
    // (the audience is the endpoint asked for), or by application id.
    for (scope, audience) in [
        (
            "https://redis.azure.com/.default",
            "https://redis.azure.com",
        ),
        ("https://azconfig.io/.default", "https://azconfig.io"),
        (
            "https://mystore.azconfig.io/.default",
            "https://mystore.azconfig.io",
        ),
        (
            "https://myaccount.documents.azure.com/.default",
            "https://myaccount.documents.azure.com",
        ),
        (
            "https://myaccount.blob.core.windows.net/.default",
            "https://myaccount.blob.core.windows.net",
        ),
        (
            "https://containerregistry.azure.net/.default",
            "https://containerregistry.azure.net",
        ),
        (
            "https://monitor.azure.com/.default",
            "https://monitor.azure.com",
        ),
        (
            "acca5fbb-b7e4-4009-81f1-37e38fd66d78/.default",
            "acca5fbb-b7e4-4009-81f1-37e38fd66d78",
        ),
    ] {
        let (status, body) = sim
            .secret_token(&admin.client_id, &admin.client_secret, scope)
            .await;
        assert_eq!(status, 200, "{scope}: {body}");
        sim.verify(body["access_token"].as_str().expect("token"), audience)
            .await;
    }
    // Not every host under those domains.
    let (status, body) = sim
        .secret_token(
            &admin.client_id,
            &admin.client_secret,
            "https://a.b.blob.core.windows.net/.default",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error_codes"][0], 500011, "{body}");
    sim.stop().await;
}

#[tokio::test]
async fn v1_endpoint_uses_strings_and_echoes_the_resource() {
    let sim = TestSim::start().await;
    let admin = sim.sim.connection.admin.clone();
    let url = format!("{}/{}/oauth2/token", sim.aad(), sim.tenant());
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", admin.client_id.as_str()),
        ("client_secret", admin.client_secret.as_str()),
        ("resource", "https://management.core.windows.net/"),
    ];
    let (status, body) = sim.post_form(&url, &form).await;
    assert_eq!(status, 200, "{body}");
    for field in ["expires_in", "ext_expires_in", "expires_on", "not_before"] {
        assert!(
            body[field]
                .as_str()
                .is_some_and(|v| v.parse::<i64>().is_ok()),
            "{field} must be a numeric string: {body}"
        );
    }
    assert_eq!(body["resource"], "https://management.core.windows.net/");
    let claims = sim
        .verify(
            body["access_token"].as_str().expect("token"),
            "https://management.core.windows.net/",
        )
        .await;
    assert_eq!(claims["aud"], "https://management.core.windows.net/");
    // The tenant may be named by its domain too; HTTP Basic carries the secret as well.
    let by_domain = format!("{}/misim.onmicrosoft.com/oauth2/token", sim.aad());
    let response = sim
        .http
        .post(by_domain)
        .basic_auth(&admin.client_id, Some(&admin.client_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("resource", "https://graph.microsoft.com"),
        ])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    sim.stop().await;
}

#[tokio::test]
async fn certificate_assertions_get_tokens_and_failures_get_their_aadsts_codes() {
    let sim = TestSim::start().await;
    let graph = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let cert = ClientCert::new();
    let (_, app_id) = register_app(&sim, &graph, "cert-app", Some(&cert)).await;
    let aud = sim.v2_token_url();
    let token_for = |assertion: String| {
        let app_id = app_id.clone();
        let url = aud.clone();
        let sim = &sim;
        async move {
            sim.post_form(
                &url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", app_id.as_str()),
                    ("scope", "https://management.azure.com/.default"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.as_str()),
                ],
            )
            .await
        }
    };

    let (status, body) = token_for(cert.assertion(&app_id, &aud, 600)).await;
    assert_eq!(status, 200, "{body}");
    let claims = sim
        .verify(
            body["access_token"].as_str().expect("token"),
            "https://management.azure.com",
        )
        .await;
    assert_eq!(claims["appidacr"], "2");
    assert_eq!(claims["appid"], app_id.as_str());

    let stranger = ClientCert::new();
    let (status, body) = token_for(stranger.assertion(&app_id, &aud, 600)).await;
    assert_eq!(
        (status, error_code(&body)),
        (401, 700027),
        "unregistered certificate: {body}"
    );
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("AADSTS700027:"))
    );

    let good = cert.assertion(&app_id, &aud, 600);
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    parts[1] = misim_core::jose::b64url(
        json!({"aud": aud, "iss": app_id, "sub": app_id, "exp": 4_000_000_000i64})
            .to_string()
            .as_bytes(),
    );
    let (status, body) = token_for(parts.join(".")).await;
    assert_eq!(
        (status, error_code(&body)),
        (401, 700027),
        "tampered: {body}"
    );

    let (status, body) = token_for(cert.assertion(&app_id, &aud, -3600)).await;
    assert_eq!(
        (status, error_code(&body)),
        (401, 700024),
        "expired: {body}"
    );

    let (status, body) = token_for(cert.assertion(
        &app_id,
        "https://login.microsoftonline.com/x/oauth2/v2.0/token",
        600,
    ))
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (401, 700023),
        "wrong audience: {body}"
    );

    let (status, body) =
        token_for(cert.assertion("11111111-1111-1111-1111-111111111111", &aud, 600)).await;
    assert_eq!(
        (status, error_code(&body)),
        (401, 700021),
        "iss/sub not the client: {body}"
    );

    let admin = sim.sim.connection.admin.clone();
    let (status, body) = sim
        .secret_token(
            &admin.client_id,
            "wrong",
            "https://management.azure.com/.default",
        )
        .await;
    assert_eq!((status, error_code(&body)), (401, 7000215), "{body}");
    let (status, body) = sim
        .secret_token(
            "22222222-2222-2222-2222-222222222222",
            "x",
            "https://management.azure.com/.default",
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, 700016), "{body}");
    let (status, body) = sim
        .secret_token(
            &admin.client_id,
            &admin.client_secret,
            "https://unknown.example/.default",
        )
        .await;
    assert_eq!((status, error_code(&body)), (400, 500011), "{body}");
    let (status, body) = sim
        .secret_token(&admin.client_id, &admin.client_secret, "User.Read")
        .await;
    assert_eq!((status, error_code(&body)), (400, 70011), "{body}");
    sim.stop().await;
}

#[tokio::test]
async fn managed_identity_principals_from_the_internal_api_get_mi_tokens() {
    let sim = TestSim::start().await;
    let secret = sim.internal_secret();
    let object_id = uuid::Uuid::new_v4().to_string();
    let app_id = uuid::Uuid::new_v4().to_string();
    let resource_id = format!(
        "/subscriptions/{}/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1",
        sim.sim.connection.subscription_id
    );
    let url = format!(
        "{}/_internal/directory/managed-identities/{object_id}",
        sim.aad()
    );
    let principal = json!({"appId": app_id, "displayName": "id1", "resourceId": resource_id, "userAssigned": true});

    // Without the internal credential, or with a user token, the API refuses.
    let refused = sim
        .http
        .put(&url)
        .json(&principal)
        .send()
        .await
        .expect("put");
    assert_eq!(refused.status(), 401);
    let admin = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let refused = sim
        .http
        .put(&url)
        .bearer_auth(&admin)
        .json(&principal)
        .send()
        .await
        .expect("put");
    assert_eq!(refused.status(), 401);

    for expected in [201, 200] {
        let response = sim
            .http
            .put(&url)
            .header(misim_core::internal::INTERNAL_SECRET_HEADER, &secret)
            .json(&principal)
            .send()
            .await
            .expect("put");
        assert_eq!(response.status().as_u16(), expected, "PUT is idempotent");
    }
    let cert = ClientCert::new();
    let key_id = uuid::Uuid::new_v4().to_string();
    let response = sim
        .http
        .put(format!("{url}/certificates/{key_id}"))
        .header(misim_core::internal::INTERNAL_SECRET_HEADER, &secret)
        .json(&json!({"certificate": cert.b64()}))
        .send()
        .await
        .expect("put cert");
    assert_eq!(response.status(), 200);

    let aud = sim.v2_token_url();
    let assertion = cert.assertion(&app_id, &aud, 600);
    let (status, body) = sim
        .post_form(
            &aud,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", app_id.as_str()),
                ("scope", "https://management.azure.com/.default"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["expires_in"], 86_399,
        "managed-identity tokens live about a day"
    );
    let claims = sim
        .verify(
            body["access_token"].as_str().expect("token"),
            "https://management.azure.com",
        )
        .await;
    assert_eq!(claims["xms_mirid"], resource_id.as_str());
    assert_eq!(claims["oid"], object_id.as_str());

    // Graph shows it as a managed identity with its certificate.
    let (status, sp) = sim
        .graph(
            Method::GET,
            &format!("servicePrincipals/{object_id}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(sp["servicePrincipalType"], "ManagedIdentity");
    assert_eq!(
        sp["alternativeNames"],
        json!(["isExplicit=True", resource_id])
    );
    assert_eq!(sp["keyCredentials"][0]["type"], "AsymmetricX509Cert");
    assert_eq!(
        sp["keyCredentials"][0]["customKeyIdentifier"],
        misim_core::crypto::hex_upper(&misim_core::crypto::sha1(&cert.der))
    );

    // Removing the certificate stops assertions; deleting the principal is idempotent.
    let response = sim
        .http
        .delete(format!("{url}/certificates/{key_id}"))
        .header(misim_core::internal::INTERNAL_SECRET_HEADER, &secret)
        .send()
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    let (status, body) = sim
        .post_form(
            &aud,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", app_id.as_str()),
                ("scope", "https://management.azure.com/.default"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ],
        )
        .await;
    assert_eq!((status, error_code(&body)), (401, 700027), "{body}");
    for _ in 0..2 {
        let response = sim
            .http
            .delete(&url)
            .header(misim_core::internal::INTERNAL_SECRET_HEADER, &secret)
            .send()
            .await
            .expect("delete");
        assert_eq!(response.status(), 204);
    }
    sim.stop().await;
}
