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
    // An application with no federated credential trusts no external token.
    let app = sim.sim.connection.admin.client_id.clone();
    let (status, body) = exchange(&sim, &app, &good).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (400, Some(70021)),
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

/// Graph's federated identity credentials of an application: created, listed, read by id or
/// name, changed, deleted; Graph's limits refused in Graph's dialect.
#[tokio::test]
async fn applications_keep_federated_credentials_through_graph() {
    let sim = TestSim::start().await;
    let graph = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let (object_id, _app_id) = crate::support::register_app(&sim, &graph, "fic-app", None).await;
    let credentials = format!("applications/{object_id}/federatedIdentityCredentials");
    let call = |method: Method, path: String, body: Option<Value>| {
        let graph = graph.clone();
        let sim = &sim;
        async move { sim.graph(method, &path, &graph, body).await }
    };
    let github = json!({"name": "github-main", "issuer": "https://token.actions.githubusercontent.com", "subject": "repo:contoso/app:ref:refs/heads/main", "audiences": [EXCHANGE], "description": "deploys from main"});
    let (status, created) = call(Method::POST, credentials.clone(), Some(github.clone())).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{created}");
    for field in ["name", "issuer", "subject", "audiences", "description"] {
        assert_eq!(created[field], github[field], "{field}");
    }
    assert!(
        created["@odata.context"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!(
                "applications('{object_id}')/federatedIdentityCredentials/$entity"
            ))),
        "{created}"
    );

    // Read back by id and by name; listed, and filtered by subject.
    for key in [id.as_str(), "github-main", "GITHUB-MAIN"] {
        let (status, read) = call(Method::GET, format!("{credentials}/{key}"), None).await;
        assert_eq!((status, &read["id"]), (200, &json!(id)), "{key}: {read}");
    }
    let (status, list) = call(Method::GET, credentials.clone(), None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["value"].as_array().map(Vec::len), Some(1), "{list}");
    assert!(
        list["@odata.context"]
            .as_str()
            .is_some_and(|c| c.ends_with(&format!(
                "applications('{object_id}')/federatedIdentityCredentials"
            ))),
        "{list}"
    );

    // Changed in place (204); the name is immutable (the same name in another case is no
    // change), the description may be cleared.
    let (status, _) = call(
        Method::PATCH,
        format!("{credentials}/{id}"),
        Some(json!({"name": "GitHub-Main", "subject": "repo:contoso/app:environment:prod", "description": null})),
    )
    .await;
    assert_eq!(status, 204);
    let (_, read) = call(Method::GET, format!("{credentials}/github-main"), None).await;
    assert_eq!(read["subject"], "repo:contoso/app:environment:prod");
    assert_eq!(read["description"], Value::Null);
    assert_eq!(
        (&read["id"], &read["name"]),
        (&json!(id), &json!("github-main"))
    );
    let subject_filter = |subject: &str| {
        format!(
            "{credentials}?$filter={}",
            percent_encoding::utf8_percent_encode(
                &format!("subject eq '{subject}'"),
                percent_encoding::NON_ALPHANUMERIC
            )
        )
    };
    let (_, filtered) = call(
        Method::GET,
        subject_filter("repo:contoso/app:environment:prod"),
        None,
    )
    .await;
    assert_eq!(filtered["value"][0]["id"], json!(id), "{filtered}");
    let (_, filtered) = call(
        Method::GET,
        subject_filter("repo:contoso/app:pull_request"),
        None,
    )
    .await;
    assert_eq!(filtered["value"], json!([]), "{filtered}");

    // A second credential, named like the first one's id: the id still finds the first. A
    // PATCH that keeps a credential's own issuer and subject is no clash; taking the other's is.
    let (status, second) = call(
        Method::POST,
        credentials.clone(),
        Some(json!({"name": id, "issuer": "https://token.actions.githubusercontent.com", "subject": "repo:contoso/app:pull_request", "audiences": [EXCHANGE]})),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let (_, read) = call(Method::GET, format!("{credentials}/{id}"), None).await;
    assert_eq!(read["name"], "github-main", "{read}");
    let second_id = second["id"].as_str().expect("id").to_string();
    let (status, _) = call(
        Method::PATCH,
        format!("{credentials}/{second_id}"),
        Some(json!({"subject": "repo:contoso/app:pull_request", "description": "pull requests"})),
    )
    .await;
    assert_eq!(status, 204);

    // What Graph refuses, with its codes; nothing refused is stored.
    let long = "x".repeat(601);
    let refused: Vec<(Method, String, Value, u16, &str)> = vec![
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "github-main", "issuer": "https://other.example", "subject": "s", "audiences": [EXCHANGE]}),
            409,
            "Request_MultipleObjectsWithSameKeyValue",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "again", "issuer": "https://token.actions.githubusercontent.com", "subject": "repo:contoso/app:environment:prod", "audiences": [EXCHANGE]}),
            409,
            "Request_MultipleObjectsWithSameKeyValue",
        ),
        (
            Method::PATCH,
            format!("{credentials}/{second_id}"),
            json!({"subject": "repo:contoso/app:environment:prod"}),
            409,
            "Request_MultipleObjectsWithSameKeyValue",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "two", "issuer": "https://i.example", "subject": "s", "audiences": [EXCHANGE, "api://other"]}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "none", "issuer": "https://i.example", "subject": "s", "audiences": []}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "no-issuer", "subject": "s", "audiences": [EXCHANGE]}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "plain-http", "issuer": "http://issuer.example.com", "subject": "s", "audiences": [EXCHANGE]}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "spaced", "issuer": "https://i.example ", "subject": "s", "audiences": [EXCHANGE]}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "wildcard", "issuer": "https://i.example", "subject": "repo:contoso/*", "audiences": [EXCHANGE]}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "has space", "issuer": "https://i.example", "subject": "s", "audiences": [EXCHANGE]}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "..", "issuer": "https://i.example", "subject": "s", "audiences": [EXCHANGE]}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "ab", "issuer": "https://i.example", "subject": "s", "audiences": [EXCHANGE]}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "long", "issuer": "https://i.example", "subject": long, "audiences": [EXCHANGE]}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": 7, "issuer": "https://i.example", "subject": "s", "audiences": [EXCHANGE]}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::POST,
            credentials.clone(),
            json!({"name": "extra", "issuer": "https://i.example", "subject": "s", "audiences": [EXCHANGE], "claimsMatchingExpression": "x"}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::PATCH,
            format!("{credentials}/{id}"),
            json!({"name": "renamed"}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::PATCH,
            format!("{credentials}/{id}"),
            json!({"audiences": "api://AzureADTokenExchange"}),
            400,
            "Request_BadRequest",
        ),
        (
            Method::PATCH,
            format!("{credentials}/nope"),
            json!({"subject": "s"}),
            404,
            "Request_ResourceNotFound",
        ),
        (
            Method::POST,
            "applications/00000000-0000-0000-0000-00000000dead/federatedIdentityCredentials".into(),
            github.clone(),
            404,
            "Request_ResourceNotFound",
        ),
    ];
    for (method, path, body, status, code) in refused {
        let (got, answer) = call(method.clone(), path.clone(), Some(body.clone())).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body}: {answer}"
        );
    }
    for method in [Method::GET, Method::DELETE] {
        let (status, answer) = call(method.clone(), format!("{credentials}/nope"), None).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (404, Some("Request_ResourceNotFound")),
            "{method}: {answer}"
        );
    }
    let (_, list) = call(Method::GET, credentials.clone(), None).await;
    assert_eq!(list["value"].as_array().map(Vec::len), Some(2), "{list}");
    let (_, read) = call(Method::GET, format!("{credentials}/{second_id}"), None).await;
    assert_eq!(read["subject"], "repo:contoso/app:pull_request", "{read}");

    // Only the bootstrap admin writes: another application's Graph token reads, and is refused
    // a write in Graph's dialect.
    let (reader_object, reader_app) =
        crate::support::register_app(&sim, &graph, "fic-reader", None).await;
    let (_, secret) = call(
        Method::POST,
        format!("applications/{reader_object}/addPassword"),
        Some(json!({})),
    )
    .await;
    let (_, reader) = sim
        .secret_token(
            &reader_app,
            secret["secretText"].as_str().expect("secret"),
            "https://graph.microsoft.com/.default",
        )
        .await;
    let reader = reader["access_token"].as_str().expect("token");
    let (status, _) = sim.graph(Method::GET, &credentials, reader, None).await;
    assert_eq!(status, 200);
    let (status, answer) = sim
        .graph(Method::POST, &credentials, reader, Some(json!({"name": "sneaky", "issuer": "https://i.example", "subject": "s", "audiences": [EXCHANGE]})))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("Authorization_RequestDenied")),
        "{answer}"
    );

    // A Graph token naming a key AAD does not have: refused in Graph's dialect, in words.
    let mut parts: Vec<String> = graph.split('.').map(str::to_string).collect();
    let mut header: Value =
        serde_json::from_slice(&misim_core::jose::b64_lenient(&parts[0]).expect("header"))
            .expect("json");
    header["kid"] = json!("not-a-key-of-aad");
    parts[0] = b64url(header.to_string().as_bytes());
    let (status, answer) = sim
        .graph(Method::GET, &credentials, &parts.join("."), None)
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken")),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown key")),
        "{answer}"
    );

    // At most 20 per application; the 21st is refused and not stored.
    for n in 3..=20 {
        let (status, body) = call(Method::POST, credentials.clone(), Some(json!({"name": format!("c{n:02}"), "issuer": "https://i.example", "subject": format!("s{n}"), "audiences": [EXCHANGE]}))).await;
        assert_eq!(status, 201, "{n}: {body}");
    }
    let (status, body) = call(Method::POST, credentials.clone(), Some(json!({"name": "c21", "issuer": "https://i.example", "subject": "s21", "audiences": [EXCHANGE]}))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("Request_BadRequest")),
        "the 21st: {body}"
    );
    let (_, list) = call(Method::GET, credentials.clone(), None).await;
    assert_eq!(list["value"].as_array().map(Vec::len), Some(20), "{list}");

    // An identity's route of the internal API cannot remove an application's credential.
    let internal = format!(
        "{}/_internal/directory/managed-identities/{object_id}/federated-credentials/c03",
        sim.aad()
    );
    let (status, _) = crate::support::send_json(
        sim.http.delete(internal).header(
            misim_core::internal::INTERNAL_SECRET_HEADER,
            sim.internal_secret(),
        ),
        None,
    )
    .await;
    assert_ne!(status, 204);
    let (status, _) = call(Method::GET, format!("{credentials}/c03"), None).await;
    assert_eq!(status, 200, "still there");

    // Deleted by name (204), then gone; deleting the application deletes the rest.
    let (status, _) = call(Method::DELETE, format!("{credentials}/github-main"), None).await;
    assert_eq!(status, 204);
    let (status, _) = call(Method::GET, format!("{credentials}/github-main"), None).await;
    assert_eq!(status, 404);
    // Its id now finds only the credential named like it.
    let (_, read) = call(Method::GET, format!("{credentials}/{id}"), None).await;
    assert_eq!(read["id"], json!(second_id), "{read}");
    assert_eq!(
        sim.sim
            .aad
            .federated_credential_names(&object_id)
            .await
            .expect("names")
            .len(),
        19
    );
    let (status, _) = call(Method::DELETE, format!("applications/{object_id}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(
        sim.sim
            .aad
            .federated_credential_names(&object_id)
            .await
            .expect("names"),
        Vec::<String>::new(),
        "no credential outlives its application"
    );
    sim.stop().await;
}

/// The token exchange of spec §6.3: an application trusts a user-assigned identity. The
/// workload asks IMDS for the identity's token for AAD Token Exchange (a v2-issuer token) and
/// presents it as the application's client assertion. An external issuer's token works for
/// an application as it does for an identity (§6.2).
#[tokio::test]
async fn an_application_trusts_a_user_assigned_identity_and_external_issuers() {
    let sim = TestSim::start().await;
    let issuer = Issuer::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let graph = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let (identity_id, uami_client, uami_principal) = identity(&sim, &admin, "for-app").await;
    let vm_path = format!(
        "/subscriptions/{}/resourceGroups/wif/providers/Microsoft.Compute/virtualMachines/worker",
        sim.sim.connection.subscription_id
    );
    let (status, vm) = arm_call(
        &sim,
        &admin,
        Method::PUT,
        &vm_path,
        "2024-11-01",
        Some(json!({"location": "eastus", "identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {identity_id.clone(): {}}}})),
    )
    .await;
    assert_eq!(status, 201, "{vm}");
    let system_principal = vm["identity"]["principalId"]
        .as_str()
        .expect("principalId")
        .to_string();
    let endpoint = sim
        .sim
        .imds
        .vm_endpoint(vm["properties"]["vmId"].as_str().expect("vmId"))
        .expect("endpoint");
    // The VM's token for `resource` (escaped), of the identity `selector` picks.
    let imds_token = |resource: &str, selector: String| {
        let url = format!(
            "{endpoint}/metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource}{selector}"
        );
        let http = sim.http.clone();
        async move {
            let response = http
                .get(url)
                .header("Metadata", "true")
                .send()
                .await
                .expect("imds");
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.expect("json");
            body["access_token"].as_str().expect("token").to_string()
        }
    };
    let exchange_resource = "api%3A%2F%2FAzureADTokenExchange";
    let uami_token = imds_token(exchange_resource, format!("&client_id={uami_client}")).await;
    let system_token = imds_token(exchange_resource, String::new()).await;

    // The identity's token for AAD Token Exchange: v2 issuer, the exchange URI as audience.
    let v2_issuer = format!("{}/{}/v2.0", sim.aad(), sim.tenant());
    let jwks = sim.jwks().await;
    let claims = crate::support::verify_with(&jwks, &uami_token, EXCHANGE, &v2_issuer)
        .expect("a v2 token of AAD");
    assert_eq!(
        (claims["sub"].as_str(), claims["ver"].as_str()),
        (Some(uami_principal.as_str()), Some("2.0")),
        "{claims}"
    );

    let (object_id, app_id) =
        crate::support::register_app(&sim, &graph, "trusting-app", None).await;
    let credentials = format!("applications/{object_id}/federatedIdentityCredentials");
    let add = |name: &str, issuer: &str, subject: &str| {
        let body =
            json!({"name": name, "issuer": issuer, "subject": subject, "audiences": [EXCHANGE]});
        let (graph, credentials, sim) = (graph.clone(), credentials.clone(), &sim);
        async move {
            let (status, body) = sim
                .graph(Method::POST, &credentials, &graph, Some(body))
                .await;
            assert_eq!(status, 201, "{body}");
        }
    };

    // Before the application trusts the identity: no record matches.
    let (status, body) = exchange(&sim, &app_id, &uami_token).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (400, Some(70021)),
        "{body}"
    );
    add("worker-identity", &v2_issuer, &uami_principal).await;
    let (status, body) = exchange(&sim, &app_id, &uami_token).await;
    assert_eq!(status, 200, "{body}");
    let app_claims = sim
        .verify(
            body["access_token"].as_str().expect("token"),
            "https://management.azure.com",
        )
        .await;
    assert_eq!(app_claims["appid"], app_id.as_str(), "{app_claims}");
    assert!(
        app_claims.get("xms_mirid").is_none(),
        "an application's token: {app_claims}"
    );

    // An external issuer's token, trusted by another of the application's credentials.
    let external = issuer.token(issuer.claims(SUBJECT, EXCHANGE, 600), None);
    assert_eq!(
        exchange(&sim, &app_id, &external).await.1["error_codes"][0],
        70021
    );
    add("k8s", &issuer.url, SUBJECT).await;
    let (status, body) = exchange(&sim, &app_id, &external).await;
    assert_eq!(status, 200, "{body}");

    // AAD's own tokens stand in only for a user-assigned identity: not for a system-assigned
    // one, nor an application's, even when a credential names their subject.
    add("system-identity", &v2_issuer, &system_principal).await;
    let (admin_app, admin_secret) = (
        sim.sim.connection.admin.client_id.clone(),
        sim.sim.connection.admin.client_secret.clone(),
    );
    let (_, admin_exchange) = sim
        .secret_token(&admin_app, &admin_secret, &format!("{EXCHANGE}/.default"))
        .await;
    let admin_exchange = admin_exchange["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let admin_sub = crate::support::verify_with(&jwks, &admin_exchange, EXCHANGE, &v2_issuer)
        .expect("admin's exchange token")["sub"]
        .as_str()
        .expect("sub")
        .to_string();
    add("an-app", &v2_issuer, &admin_sub).await;
    for (token, why) in [
        (&system_token, "system-assigned"),
        (&admin_exchange, "application"),
    ] {
        let (status, body) = exchange(&sim, &app_id, token).await;
        assert_eq!(
            (status, body["error_codes"][0].as_i64()),
            (400, Some(700236)),
            "{why}: {body}"
        );
    }
    // Nor for a managed identity: an identity's federated credential cannot trust AAD itself.
    let (status, body) = arm_call(
        &sim,
        &admin,
        Method::PUT,
        &format!("{identity_id}/federatedIdentityCredentials/self"),
        "2023-01-31",
        Some(json!({"properties": {"issuer": v2_issuer, "subject": uami_principal, "audiences": [EXCHANGE]}})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = exchange(&sim, &uami_client, &uami_token).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (400, Some(700236)),
        "{body}"
    );

    // Only its token for AAD Token Exchange: the identity's token for ARM, which ARM sees
    // every day, is no credential even where one names AAD's v1 issuer and ARM as audience.
    let arm_token = imds_token(
        "https%3A%2F%2Fmanagement.azure.com%2F",
        format!("&client_id={uami_client}"),
    )
    .await;
    let body = json!({"name": "arm-token", "issuer": format!("{}/{}/", sim.aad(), sim.tenant()), "subject": uami_principal, "audiences": ["https://management.azure.com/"]});
    let (status, answer) = sim
        .graph(Method::POST, &credentials, &graph, Some(body))
        .await;
    assert_eq!(status, 201, "{answer}");
    let (status, body) = exchange(&sim, &app_id, &arm_token).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (400, Some(700236)),
        "{body}"
    );

    // A token changed after signing, one naming a key AAD does not have, and one past its
    // lifetime on the simulated clock.
    let mut parts: Vec<String> = uami_token.split('.').map(str::to_string).collect();
    parts[2] = b64url(&[7u8; 256]);
    let (status, body) = exchange(&sim, &app_id, &parts.join(".")).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (401, Some(700027)),
        "{body}"
    );
    let mut header: Value =
        serde_json::from_slice(&misim_core::jose::b64_lenient(&parts[0]).expect("header"))
            .expect("json");
    header["kid"] = json!("not-a-key-of-aad");
    parts[0] = b64url(header.to_string().as_bytes());
    let (status, body) = exchange(&sim, &app_id, &parts.join(".")).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (401, Some(700027)),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("key was not found") && d.contains("not-a-key-of-aad")),
        "{body}"
    );
    // A deleted identity's token, still within its lifetime, no longer stands in.
    let (status, _) = arm_call(&sim, &admin, Method::DELETE, &vm_path, "2024-11-01", None).await;
    assert!(status < 300, "{status}");
    let (status, _) = arm_call(&sim, &admin, Method::DELETE, &identity_id, MSI_API, None).await;
    assert_eq!(status, 200);
    let (status, body) = exchange(&sim, &app_id, &uami_token).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (400, Some(700236)),
        "{body}"
    );
    sim.sim
        .aad
        .advance_clock(2 * 24 * 3600)
        .await
        .expect("clock");
    let (status, body) = exchange(&sim, &app_id, &uami_token).await;
    assert_eq!(
        (status, body["error_codes"][0].as_i64()),
        (401, Some(700024)),
        "{body}"
    );
    sim.stop().await;
}
