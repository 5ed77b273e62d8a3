//! Workload identity federation: an external OIDC issuer's token, trusted by a federated
//! credential of a user-assigned identity, is exchanged at AAD for the identity's token
//! (spec/tokens.md §6.2). The issuer is a small server of this test on loopback.

use misim_core::crypto::{JwsAlg, RsaCertificate, RsaKey};
use misim_core::jose::b64url;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestSim, arm_call};

const MSI_API: &str = "2024-11-30";
const EXCHANGE: &str = "api://AzureADTokenExchange";
const SUBJECT: &str = "system:serviceaccount:default:workload";

/// An OIDC issuer on loopback: its discovery document and key set, one RSA key (`kid` "k1").
struct Issuer {
    url: String,
    key: RsaKey,
    _server: tokio::task::JoinHandle<()>,
}

impl Issuer {
    async fn start() -> Self {
        let key = RsaKey::generate().expect("key");
        let now = time::OffsetDateTime::now_utc();
        let der = key
            .self_signed_certificate(
                "issuer",
                now - time::Duration::days(1),
                now + time::Duration::days(1),
            )
            .expect("cert");
        let cert = RsaCertificate::from_der(&der).expect("parse");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/keys")});
        let keys = json!({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1", "n": b64url(&cert.modulus), "e": b64url(&cert.exponent)}]});
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/keys",
                axum::routing::get(move || async move { axum::Json(keys) }),
            );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            key,
            _server: server,
        }
    }

    /// A token of this issuer, signed with `key` (the issuer's own unless another is given).
    fn token(&self, claims: Value, key: Option<&RsaKey>) -> String {
        self.token_with(
            json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}),
            claims,
            key,
        )
    }

    fn token_with(&self, header: Value, claims: Value, key: Option<&RsaKey>) -> String {
        key.unwrap_or(&self.key)
            .sign_jws(JwsAlg::Rs256, &header, &claims)
            .expect("sign")
    }

    fn claims(&self, subject: &str, audience: &str, expires_in: i64) -> Value {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        json!({"iss": self.url, "sub": subject, "aud": [audience], "iat": now, "nbf": now - 5, "exp": now + expires_in, "jti": uuid::Uuid::new_v4().to_string()})
    }
}

async fn exchange(sim: &TestSim, client_id: &str, assertion: &str) -> (u16, Value) {
    let url = format!("{}/{}/oauth2/v2.0/token", sim.aad(), sim.tenant());
    sim.post_form(
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("scope", "https://management.azure.com/.default"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ],
    )
    .await
}

/// A user-assigned identity `name` in group `wif`, made by the admin: its id, client id and
/// principal id.
async fn identity(sim: &TestSim, admin: &str, name: &str) -> (String, String, String) {
    let sub = format!("/subscriptions/{}", sim.sim.connection.subscription_id);
    arm_call(
        sim,
        admin,
        Method::PUT,
        &format!("{sub}/resourcegroups/wif"),
        "2024-11-01",
        Some(json!({"location": "eastus"})),
    )
    .await;
    let id = format!(
        "{sub}/resourceGroups/wif/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    );
    let (status, body) = arm_call(
        sim,
        admin,
        Method::PUT,
        &id,
        MSI_API,
        Some(json!({"location": "eastus"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let text = |field: &str| body["properties"][field].as_str().expect(field).to_string();
    (id, text("clientId"), text("principalId"))
}

#[tokio::test]
async fn an_external_token_trusted_by_a_federated_credential_gets_the_identitys_token() {
    let sim = TestSim::start().await;
    let issuer = Issuer::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let (identity_id, client_id, principal_id) = identity(&sim, &admin, "workload").await;

    // Before a federated credential trusts the issuer: no record matches.
    let good = issuer.token(issuer.claims(SUBJECT, EXCHANGE, 600), None);
    let (status, refused) = exchange(&sim, &client_id, &good).await;
    assert_eq!(
        (status, refused["error_codes"][0].as_i64()),
        (400, Some(70021)),
        "{refused}"
    );

    let fic = format!("{identity_id}/federatedIdentityCredentials/k8s");
    let (status, created) = arm_call(
        &sim,
        &admin,
        Method::PUT,
        &fic,
        "2023-01-31",
        Some(json!({"properties": {"issuer": issuer.url, "subject": SUBJECT, "audiences": [EXCHANGE]}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");

    // The exchange: the identity's token, as IMDS would have given it.
    let (status, body) = exchange(&sim, &client_id, &good).await;
    assert_eq!(status, 200, "{body}");
    let claims = sim
        .verify(
            body["access_token"].as_str().expect("token"),
            "https://management.azure.com",
        )
        .await;
    assert_eq!(claims["oid"], principal_id.as_str());
    assert_eq!(claims["appid"], client_id.as_str());
    assert_eq!(
        claims["xms_mirid"].as_str().map(str::to_ascii_lowercase),
        Some(identity_id.to_ascii_lowercase())
    );

    // What AAD refuses, in its dialect.
    let stranger = RsaKey::generate().expect("key");
    for (assertion, status, code, why) in [
        (
            issuer.token(
                issuer.claims("system:serviceaccount:default:other", EXCHANGE, 600),
                None,
            ),
            400,
            70021,
            "another subject",
        ),
        (
            issuer.token(issuer.claims(SUBJECT, "api://other", 600), None),
            400,
            70021,
            "another audience",
        ),
        (
            issuer.token(issuer.claims(SUBJECT, EXCHANGE, -3600), None),
            401,
            700024,
            "expired",
        ),
        (
            issuer.token(issuer.claims(SUBJECT, EXCHANGE, 600), Some(&stranger)),
            401,
            700027,
            "signed by another key",
        ),
        (
            {
                let mut claims = issuer.claims(SUBJECT, EXCHANGE, 600);
                claims["iss"] = json!(format!("{}/", issuer.url));
                issuer.token(claims, None)
            },
            400,
            70021,
            "the issuer with a trailing slash",
        ),
    ] {
        let (got, body) = exchange(&sim, &client_id, &assertion).await;
        assert_eq!(
            (got, body["error_codes"][0].as_i64()),
            (status, Some(code)),
            "{why}: {body}"
        );
    }

    // An issuer that cannot be reached: AADSTS50166, not a hang or a 500.
    let unreachable_fic = format!("{identity_id}/federatedIdentityCredentials/gone");
    let gone = "http://127.0.0.1:9";
    arm_call(
        &sim,
        &admin,
        Method::PUT,
        &unreachable_fic,
        "2023-01-31",
        Some(json!({"properties": {"issuer": gone, "subject": SUBJECT, "audiences": [EXCHANGE]}})),
    )
    .await;
    let mut claims = issuer.claims(SUBJECT, EXCHANGE, 600);
    claims["iss"] = json!(gone);
    let (status, body) = exchange(&sim, &client_id, &issuer.token(claims, None)).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (400, Some(50166)),
        "{body}"
    );
    // Why it failed stays in AAD's log: the answer is no probe of AAD's network.
    assert!(
        !body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("127.0.0.1:9") || d.contains("refused")),
        "{body}"
    );

    // Tokens that also carry a thumbprint (GitHub Actions' do) are still external tokens:
    // they are not the identity's own certificate assertion (its issuer is not the identity).
    let with_x5t = issuer.token_with(
        json!({"alg": "RS256", "typ": "JWT", "kid": "k1", "x5t": "bm90LWEtY2VydA"}),
        issuer.claims(SUBJECT, EXCHANGE, 600),
        None,
    );
    assert_eq!(exchange(&sim, &client_id, &with_x5t).await.0, 200);
    // Only RS256 with a key id; not `none` or an HMAC.
    for header in [
        json!({"alg": "PS256", "kid": "k1"}),
        json!({"alg": "none", "kid": "k1"}),
        json!({"alg": "RS256"}),
    ] {
        let token = issuer.token_with(header.clone(), issuer.claims(SUBJECT, EXCHANGE, 600), None);
        let (status, body) = exchange(&sim, &client_id, &token).await;
        assert_eq!(
            (status, body["error_codes"][0].as_i64()),
            (401, Some(50027)),
            "{header}: {body}"
        );
    }
    // An application is not a managed identity: such a token is only a malformed assertion.
    let app = sim.sim.connection.admin.client_id.clone();
    let (status, body) = exchange(&sim, &app, &good).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (401, Some(50027)),
        "{body}"
    );

    // A changed credential is what AAD trusts next.
    let (status, _) = arm_call(
        &sim,
        &admin,
        Method::PUT,
        &fic,
        "2023-01-31",
        Some(json!({"properties": {"issuer": issuer.url, "subject": "system:serviceaccount:prod:workload", "audiences": [EXCHANGE]}})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        exchange(&sim, &client_id, &good).await.1["error_codes"][0],
        70021
    );
    let prod = issuer.token(
        issuer.claims("system:serviceaccount:prod:workload", EXCHANGE, 600),
        None,
    );
    assert_eq!(exchange(&sim, &client_id, &prod).await.0, 200);

    // Deleting the credential ends the trust at once.
    assert_eq!(
        arm_call(&sim, &admin, Method::DELETE, &fic, "2023-01-31", None)
            .await
            .0,
        200
    );
    let (status, body) = exchange(&sim, &client_id, &prod).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (400, Some(70021)),
        "{body}"
    );

    // So does deleting the identity: its principal is gone from the directory.
    arm_call(
        &sim,
        &admin,
        Method::PUT,
        &fic,
        "2023-01-31",
        Some(json!({"properties": {"issuer": issuer.url, "subject": SUBJECT, "audiences": [EXCHANGE]}})),
    )
    .await;
    assert_eq!(exchange(&sim, &client_id, &good).await.0, 200);
    assert_eq!(
        arm_call(&sim, &admin, Method::DELETE, &identity_id, MSI_API, None)
            .await
            .0,
        200
    );
    let (status, body) = exchange(&sim, &client_id, &good).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (400, Some(700016)),
        "{body}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn federated_credentials_reach_aad_again_after_a_restart() {
    let first = TestSim::start().await;
    let issuer = Issuer::start().await;
    let admin = first
        .admin_token("https://management.azure.com/.default")
        .await;
    let (identity_id, client_id, principal) = identity(&first, &admin, "kept").await;
    arm_call(
        &first,
        &admin,
        Method::PUT,
        &format!("{identity_id}/federatedIdentityCredentials/k8s"),
        "2023-01-31",
        Some(json!({"properties": {"issuer": issuer.url, "subject": SUBJECT, "audiences": [EXCHANGE]}})),
    )
    .await;
    // A credential AAD holds that ARM does not (a restored ARM database): reconcile removes it.
    let stray = format!(
        "{}/_internal/directory/managed-identities/{principal}/federated-credentials/stray",
        first.aad()
    );
    let response = first
        .http
        .put(&stray)
        .header(
            misim_core::internal::INTERNAL_SECRET_HEADER,
            first.internal_secret(),
        )
        .json(&json!({"issuer": issuer.url, "subject": "stray", "audiences": [EXCHANGE]}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 204);
    let stray_token = issuer.token(issuer.claims("stray", EXCHANGE, 600), None);
    assert_eq!(exchange(&first, &client_id, &stray_token).await.0, 200);
    let dir = first.stop().await;
    let second = TestSim::start_in(dir, |_| {}).await;
    second.sim.arm.deliver().await;
    let (status, body) = exchange(&second, &client_id, &stray_token).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (400, Some(70021)),
        "{body}"
    );

    // AAD loses its database; ARM's reconcile at start sends the credential again.
    let dir = second.stop().await;
    for file in ["aad.db", "aad.db-wal", "aad.db-shm"] {
        let path = dir.path().join(file);
        if path.exists() {
            std::fs::remove_file(&path).expect("remove");
        }
    }
    let third = TestSim::start_in(dir, |_| {}).await;
    third.sim.arm.deliver().await;
    assert_eq!(third.sim.arm.pending_work().await.expect("outbox"), 0);
    let token = issuer.token(issuer.claims(SUBJECT, EXCHANGE, 600), None);
    let (status, body) = exchange(&third, &client_id, &token).await;
    assert_eq!(status, 200, "{body}");
    third.stop().await;
}
