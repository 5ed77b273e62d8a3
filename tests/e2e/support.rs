//! Test harness: start a simulator, talk to it, verify its tokens independently (jsonwebtoken).

use misim::{Simulator, SimulatorConfig};
use misim_core::crypto::{JwsAlg, RsaKey, sha1};
use misim_core::jose::b64url;
use serde_json::{Value, json};
use std::time::Duration;

pub struct TestSim {
    pub sim: Simulator,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl TestSim {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, |_| {}).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut SimulatorConfig),
    ) -> Self {
        let mut config = SimulatorConfig::ephemeral(dir.path());
        tweak(&mut config);
        let sim = Simulator::start(config).await.expect("simulator starts");
        let ca = std::fs::read_to_string(&sim.connection.ca_cert).expect("ca");
        let http = misim_core::tls::http_client(&ca, Duration::from_secs(20)).expect("client");
        Self { sim, dir, http }
    }

    pub async fn stop(self) -> tempfile::TempDir {
        self.sim.shutdown().await;
        self.dir
    }

    pub fn aad(&self) -> &str {
        &self.sim.connection.aad
    }

    pub fn tenant(&self) -> &str {
        &self.sim.connection.tenant_id
    }

    pub fn v2_token_url(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.aad(), self.tenant())
    }

    /// POSTs a form to a token endpoint; returns status and JSON body.
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .http
            .post(url)
            .form(form)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json body"))
    }

    pub async fn secret_token(&self, client_id: &str, secret: &str, scope: &str) -> (u16, Value) {
        let url = self.v2_token_url();
        self.post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", scope),
            ],
        )
        .await
    }

    pub async fn admin_token(&self, scope: &str) -> String {
        let admin = &self.sim.connection.admin;
        let (status, body) = self
            .secret_token(&admin.client_id, &admin.client_secret, scope)
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().expect("token").to_string()
    }

    pub async fn jwks(&self) -> Value {
        let url = format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            self.aad(),
            self.tenant()
        );
        let config: Value = self
            .http
            .get(url)
            .send()
            .await
            .expect("discovery")
            .json()
            .await
            .expect("json");
        let jwks_uri = config["jwks_uri"].as_str().expect("jwks_uri");
        self.http
            .get(jwks_uri)
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json")
    }

    /// Verifies `token` with jsonwebtoken against the published JWKS; returns its claims.
    pub async fn verify(&self, token: &str, audience: &str) -> Value {
        let jwks = self.jwks().await;
        verify_with(
            &jwks,
            token,
            audience,
            &format!("{}/{}/", self.aad(), self.tenant()),
        )
        .expect("token verifies")
    }

    /// The `IDENTITY_HEADER` secret of a VM's App Service-style endpoint (`misim vm env
    /// --app-service`).
    pub async fn identity_header(&self, vm: &str) -> String {
        let app = misim::vm_env::vm_env(self.dir.path(), vm, true)
            .await
            .expect("app service env");
        app.set
            .into_iter()
            .find(|(name, _)| name == "IDENTITY_HEADER")
            .map(|(_, value)| value)
            .expect("IDENTITY_HEADER")
    }

    pub fn internal_secret(&self) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(misim_core::internal::INTERNAL_SECRET_FILE),
        )
        .expect("internal secret")
    }

    pub async fn graph(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}/v1.0/{path}", self.sim.connection.graph);
        send_json(self.http.request(method, url).bearer_auth(token), body).await
    }
}

pub fn verify_with(
    jwks: &Value,
    token: &str,
    audience: &str,
    issuer: &str,
) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .ok_or("kid not in JWKS")?;
    let key = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().ok_or("n")?,
        jwk["e"].as_str().ok_or("e")?,
    )
    .map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

/// A client certificate and its key, valid from yesterday for 30 days.
pub struct ClientCert {
    pub key: RsaKey,
    pub der: Vec<u8>,
}

impl ClientCert {
    pub fn new() -> Self {
        let key = RsaKey::generate().expect("keygen");
        let now = time::OffsetDateTime::now_utc();
        let der = key
            .self_signed_certificate(
                "test-client",
                now - time::Duration::days(1),
                now + time::Duration::days(30),
            )
            .expect("cert");
        Self { key, der }
    }

    pub fn b64(&self) -> String {
        misim_core::jose::b64std(&self.der)
    }

    /// An RS256 assertion with `x5t`, as azure-identity sends it.
    pub fn assertion(&self, client_id: &str, aud: &str, exp_offset: i64) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = json!({"alg": "RS256", "typ": "JWT", "x5t": b64url(&sha1(&self.der))});
        let claims = json!({"aud": aud, "iss": client_id, "sub": client_id, "jti": uuid::Uuid::new_v4().to_string(), "nbf": now - 60, "exp": now + exp_offset});
        self.key
            .sign_jws(JwsAlg::Rs256, &header, &claims)
            .expect("sign")
    }
}

/// A new application with a client secret and no role anywhere: its app id and an ARM token.
pub async fn roleless_app(sim: &TestSim, name: &str) -> (String, String) {
    let graph = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let (object_id, app_id) = register_app(sim, &graph, name, None).await;
    let (_, secret) = sim
        .graph(
            reqwest::Method::POST,
            &format!("applications/{object_id}/addPassword"),
            &graph,
            Some(json!({})),
        )
        .await;
    let (_, token) = sim
        .secret_token(
            &app_id,
            secret["secretText"].as_str().expect("secret"),
            "https://management.azure.com/.default",
        )
        .await;
    let token = token["access_token"].as_str().expect("token").to_string();
    (app_id, token)
}

/// Registers an application with `cert` and its service principal through Graph; returns
/// (object id, app id).
pub async fn register_app(
    sim: &TestSim,
    admin_graph: &str,
    name: &str,
    cert: Option<&ClientCert>,
) -> (String, String) {
    let mut body = json!({"displayName": name});
    if let Some(cert) = cert {
        body["keyCredentials"] =
            json!([{"type": "AsymmetricX509Cert", "usage": "Verify", "key": cert.b64()}]);
    }
    let (status, app) = sim
        .graph(
            reqwest::Method::POST,
            "applications",
            admin_graph,
            Some(body),
        )
        .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["appId"].as_str().expect("appId").to_string();
    let (status, sp) = sim
        .graph(
            reqwest::Method::POST,
            "servicePrincipals",
            admin_graph,
            Some(json!({"appId": app_id})),
        )
        .await;
    assert_eq!(status, 201, "{sp}");
    (app["id"].as_str().expect("id").to_string(), app_id)
}

pub fn error_code(body: &Value) -> i64 {
    body["error_codes"][0].as_i64().unwrap_or_default()
}

/// Sends `request` (with a JSON body if given); returns the status and the JSON answer (`Null`
/// when empty). A 5xx fails the test: misim never answers a client's request with one.
pub async fn send_json(request: reqwest::RequestBuilder, body: Option<Value>) -> (u16, Value) {
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let url = response.url().clone();
    let text = response.text().await.expect("body");
    assert!(status < 500, "{url}: {status} {text}");
    (
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("json")
        },
    )
}

/// An ARM call with a bearer token: `{arm}{path}?api-version={api}`.
pub async fn arm_call(
    sim: &TestSim,
    token: &str,
    method: reqwest::Method,
    path: &str,
    api: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}?api-version={api}", sim.sim.connection.arm);
    send_json(sim.http.request(method, url).bearer_auth(token), body).await
}
