//! Hostile and malformed requests at every AAD route: Azure-shaped errors, never a 5xx.

use crate::support::TestSim;
use misim_core::jose::b64url;
use reqwest::Method;
use serde_json::{Value, json};

/// Sends a request and checks the answer: no 5xx, a JSON error body in the route's dialect.
async fn expect_client_error(
    sim: &TestSim,
    method: Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut request = sim
        .http
        .request(method.clone(), format!("{}{path}", sim.aad()));
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.body(body).send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    assert!(
        (400..500).contains(&status),
        "{method} {path}: status {status}: {text}"
    );
    let json: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
    let oauth = json["error"].is_string()
        && json["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("AADSTS"))
        && json["error_codes"][0].is_i64();
    let graph = json["error"]["code"].is_string() && json["error"]["message"].is_string();
    assert!(
        oauth || graph,
        "{method} {path}: not an Azure error body: {json}"
    );
    (status, json)
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

#[tokio::test]
async fn token_endpoints_reject_garbage_with_aadsts_errors() {
    let sim = TestSim::start().await;
    let tenant = sim.tenant().to_string();
    let admin = sim.sim.connection.admin.clone();
    let v2 = format!("/{tenant}/oauth2/v2.0/token");
    let v1 = format!("/{tenant}/oauth2/token");
    let huge = vec![b'a'; 2 * 1024 * 1024];
    let alg_none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(json!({"iss": admin.client_id, "sub": admin.client_id, "aud": "x", "exp": 9_999_999_999i64}).to_string().as_bytes()));
    let cases: Vec<(&str, Option<&str>, Vec<u8>, i64)> = vec![
        (&v2, FORM, b"".to_vec(), 900144),
        (&v2, Some("application/json"), br#"{"grant_type":"client_credentials"}"#.to_vec(), 900144),
        (&v2, None, b"grant_type=client_credentials".to_vec(), 900144),
        (&v2, FORM, b"grant_type=password&client_id=x".to_vec(), 70003),
        (&v2, FORM, b"grant_type=client_credentials&grant_type=client_credentials".to_vec(), 90011),
        (&v2, FORM, b"grant_type=client_credentials".to_vec(), 900144),
        (&v2, FORM, format!("grant_type=client_credentials&client_id={}", admin.client_id).into_bytes(), 900144),
        (&v2, FORM, format!("grant_type=client_credentials&client_id={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default", admin.client_id).into_bytes(), 7000218),
        (&v2, FORM, format!("grant_type=client_credentials&client_id={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={alg_none}", admin.client_id).into_bytes(), 50027),
        (&v2, FORM, format!("grant_type=client_credentials&client_id={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=not.a.jwt", admin.client_id).into_bytes(), 50027),
        (&v2, FORM, format!("grant_type=client_credentials&client_id={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=%00%01%02", admin.client_id).into_bytes(), 50027),
        (&v2, FORM, format!("grant_type=client_credentials&client_id={}&scope=x&client_assertion_type=weird&client_assertion=a.b.c", admin.client_id).into_bytes(), 70011),
        (&v2, FORM, format!("grant_type=client_credentials&client_id={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&client_assertion_type=weird&client_assertion=a.b.c", admin.client_id).into_bytes(), 7000220),
        (&v2, FORM, format!("grant_type=client_credentials&client_id={}&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&client_secret=a&client_assertion=a.b.c", admin.client_id).into_bytes(), 7000219),
        (&v2, FORM, b"grant_type=client_credentials&client_id=%ZZ&scope=%%%".to_vec(), 70011),
        (&v2, FORM, vec![0xff, 0xfe, 0x00, 0x80], 900144),
        (&v2, FORM, huge.clone(), 90000),
        (&v1, FORM, format!("grant_type=client_credentials&client_id={}&client_secret=x", admin.client_id).into_bytes(), 900144),
        ("/not-a-tenant!/oauth2/v2.0/token", FORM, b"grant_type=client_credentials".to_vec(), 900023),
        ("/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token", FORM, b"grant_type=client_credentials".to_vec(), 90002),
        ("/contoso.onmicrosoft.com/oauth2/token", FORM, b"grant_type=client_credentials".to_vec(), 90002),
        ("/consumers/oauth2/v2.0/token", FORM, b"grant_type=client_credentials".to_vec(), 50059),
        // A tenant whose escapes decode to bytes that are not UTF-8: refused as a tenant.
        ("/%FF/oauth2/v2.0/token", FORM, b"grant_type=client_credentials".to_vec(), 900023),
    ];
    for (path, content_type, body, code) in cases {
        let preview = String::from_utf8_lossy(&body[..body.len().min(80)]).to_string();
        let (_, json) =
            expect_client_error(&sim, Method::POST, path, content_type, body, None).await;
        assert_eq!(
            json["error_codes"][0].as_i64(),
            Some(code),
            "{path} {preview}: {json}"
        );
    }
    // GET on a token endpoint, unknown paths and unknown tenants on discovery.
    let (status, _) = expect_client_error(&sim, Method::GET, &v2, None, Vec::new(), None).await;
    assert_eq!(status, 405);
    expect_client_error(&sim, Method::GET, "/nowhere", None, Vec::new(), None).await;
    // A wrong verb on a document endpoint says which verb it takes.
    for (method, path) in [
        (Method::DELETE, format!("/{tenant}/discovery/v2.0/keys")),
        (
            Method::POST,
            format!("/{tenant}/v2.0/.well-known/openid-configuration"),
        ),
        (Method::POST, "/common/discovery/instance".to_string()),
    ] {
        let (status, json) =
            expect_client_error(&sim, method.clone(), &path, None, Vec::new(), None).await;
        assert_eq!(status, 405, "{method} {path}: {json}");
        assert!(
            json["error_description"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!(
                    "AADSTS900561: The endpoint only accepts GET requests. Received a {method} request."
                ))),
            "{method} {path}: {json}"
        );
    }
    // A token endpoint says POST, even under a tenant segment that reads "discovery".
    let (_, on_token) = expect_client_error(
        &sim,
        Method::PUT,
        "/discovery/oauth2/v2.0/token",
        None,
        Vec::new(),
        None,
    )
    .await;
    assert!(
        on_token["error_description"].as_str().is_some_and(
            |d| d.starts_with("AADSTS900561: The endpoint only accepts POST requests.")
        ),
        "{on_token}"
    );
    expect_client_error(
        &sim,
        Method::GET,
        "/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration",
        None,
        Vec::new(),
        None,
    )
    .await;
    expect_client_error(
        &sim,
        Method::GET,
        "/%20%00/discovery/keys",
        None,
        Vec::new(),
        None,
    )
    .await;

    // `common` and `organizations` resolve to the client's home tenant; discovery shows
    // the `{tenantid}` placeholder.
    let (status, body) = sim
        .post_form(
            &format!("{}/organizations/oauth2/v2.0/token", sim.aad()),
            &[
                ("grant_type", "client_credentials"),
                ("client_id", admin.client_id.as_str()),
                ("client_secret", admin.client_secret.as_str()),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let doc: Value = sim
        .http
        .get(format!(
            "{}/common/v2.0/.well-known/openid-configuration",
            sim.aad()
        ))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["issuer"], format!("{}/{{tenantid}}/v2.0", sim.aad()));
    sim.stop().await;
}

#[tokio::test]
async fn graph_and_internal_routes_reject_garbage_in_graph_dialect() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let json_ct = Some("application/json");
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"[]".to_vec(),
        b"null".to_vec(),
        br#"{"displayName": 5}"#.to_vec(),
        br#"{"displayName": "x", "keyCredentials": "nope"}"#.to_vec(),
        br#"{"displayName": "x", "keyCredentials": [{"key": "bm90IGEgY2VydA=="}]}"#.to_vec(),
        br#"{"displayName": "x", "keyCredentials": [{"key": "MIIB", "type": "Symmetric"}]}"#
            .to_vec(),
        br#"{"displayName": "x", "identifierUris": [1, 2]}"#.to_vec(),
        br#"{"displayName": "x", "api": {"requestedAccessTokenVersion": 7}}"#.to_vec(),
        br#"{"displayName": ""}"#.to_vec(),
        vec![b'{'; 2 * 1024 * 1024],
    ];
    for body in &bodies {
        expect_client_error(
            &sim,
            Method::POST,
            "/v1.0/applications",
            json_ct,
            body.clone(),
            Some(&admin),
        )
        .await;
    }
    let missing = "00000000-0000-0000-0000-000000000000";
    for (method, path) in [
        (Method::GET, format!("/v1.0/applications/{missing}")),
        (Method::PATCH, format!("/v1.0/applications/{missing}")),
        (Method::DELETE, format!("/v1.0/applications/{missing}")),
        (
            Method::POST,
            format!("/v1.0/applications/{missing}/addPassword"),
        ),
        (
            Method::POST,
            format!("/v1.0/applications/{missing}/removePassword"),
        ),
        (Method::GET, format!("/v1.0/servicePrincipals/{missing}")),
        (Method::DELETE, format!("/v1.0/servicePrincipals/{missing}")),
        (Method::GET, "/v1.0/servicePrincipals?$top=0".to_string()),
        (Method::GET, "/v1.0/servicePrincipals?$top=abc".to_string()),
        (
            Method::GET,
            "/v1.0/servicePrincipals?$skiptoken=-1".to_string(),
        ),
        (Method::GET, "/v1.0/users".to_string()),
        (
            Method::GET,
            "/v1.0/applications(appId='missing')".to_string(),
        ),
        (Method::PUT, "/v1.0/applications".to_string()),
        (Method::GET, "/v1.0/nothing/here".to_string()),
        // Escapes that decode to bytes that are not UTF-8, in a path part.
        (Method::GET, "/v1.0/applications/%FF".to_string()),
        (Method::DELETE, "/v1.0/servicePrincipals/%C3".to_string()),
    ] {
        expect_client_error(
            &sim,
            method,
            &path,
            json_ct,
            br#"{"displayName":"x"}"#.to_vec(),
            Some(&admin),
        )
        .await;
    }
    for body in [
        b"".to_vec(),
        br#"{"appId": 5}"#.to_vec(),
        br#"{"appId": "not-an-app"}"#.to_vec(),
    ] {
        expect_client_error(
            &sim,
            Method::POST,
            "/v1.0/servicePrincipals",
            json_ct,
            body,
            Some(&admin),
        )
        .await;
    }
    // Garbage bearer tokens.
    for token in [
        "x",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.e30.",
        &format!("{admin}x"),
    ] {
        let (status, _) = expect_client_error(
            &sim,
            Method::GET,
            "/v1.0/applications",
            None,
            Vec::new(),
            Some(token),
        )
        .await;
        assert_eq!(status, 401);
    }
    // The admin's own service principal is protected.
    let admin_oid = sim.sim.connection.admin.object_id.clone();
    expect_client_error(
        &sim,
        Method::DELETE,
        &format!("/v1.0/servicePrincipals/{admin_oid}"),
        None,
        Vec::new(),
        Some(&admin),
    )
    .await;

    // Internal API: garbage with the right secret is still a clean 4xx.
    let secret = sim.internal_secret();
    let url = |p: &str| format!("{}/_internal/directory/managed-identities/{p}", sim.aad());
    for (path, body) in [
        (
            "not-a-guid",
            json!({"appId": "x", "displayName": "d", "resourceId": "/r", "userAssigned": true}),
        ),
        (missing, json!({"appId": missing})),
        (
            missing,
            json!({"appId": missing, "displayName": "d", "resourceId": "", "userAssigned": false}),
        ),
    ] {
        let response = sim
            .http
            .put(url(path))
            .header(misim_core::internal::INTERNAL_SECRET_HEADER, &secret)
            .json(&body)
            .send()
            .await
            .expect("put");
        assert!(
            response.status().is_client_error(),
            "{path}: {}",
            response.status()
        );
    }
    let response = sim
        .http
        .put(url(&format!("{missing}/certificates/{missing}")))
        .header(misim_core::internal::INTERNAL_SECRET_HEADER, &secret)
        .json(&json!({"certificate": "x"}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 404);
    sim.stop().await;
}
