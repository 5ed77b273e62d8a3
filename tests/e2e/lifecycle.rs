//! `misim up` as a process-level component: persistence across restarts, `--in-memory`, the
//! placeholder dialects of ARM and IMDS, connection.json.

use crate::support::{TestSim, verify_with};

#[tokio::test]
async fn state_survives_a_restart_of_the_same_data_dir() {
    let first = TestSim::start().await;
    let before = first.sim.connection.clone();
    let jwks_before = first.jwks().await;
    let token = first
        .admin_token("https://management.azure.com/.default")
        .await;
    let ca_before = std::fs::read_to_string(&before.ca_cert).expect("ca");
    let dir = first.stop().await;
    assert!(
        !dir.path().join("connection.json").exists(),
        "connection.json goes away with the simulator"
    );

    let second = TestSim::start_in(dir, |_| {}).await;
    let after = second.sim.connection.clone();
    assert_eq!(after.tenant_id, before.tenant_id);
    assert_eq!(after.subscription_id, before.subscription_id);
    assert_eq!(after.admin, before.admin);
    assert_eq!(
        std::fs::read_to_string(&after.ca_cert).expect("ca"),
        ca_before
    );
    let kids = |jwks: &serde_json::Value| {
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| (k["kid"].clone(), k["n"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kids(&second.jwks().await),
        kids(&jwks_before),
        "signing keys persist"
    );
    // A token from before the restart still verifies against the new JWKS.
    let issuer = format!("{}/{}/", after.aad, after.tenant_id);
    verify_with(
        &second.jwks().await,
        &token,
        "https://management.azure.com",
        &issuer.replace(&after.aad, &before.aad),
    )
    .expect("old token verifies");
    second.stop().await;
}

#[tokio::test]
async fn in_memory_writes_only_connection_json_and_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = TestSim::start_in(dir, |c| c.in_memory = true).await;
    sim.admin_token("https://management.azure.com/.default")
        .await;
    let mut files: Vec<String> = std::fs::read_dir(sim.dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["ca-key.pem", "ca.pem", "connection.json"]);
    sim.stop().await;
}

#[tokio::test]
async fn arm_and_imds_listeners_answer_in_their_dialects() {
    let sim = TestSim::start().await;
    let connection = &sim.sim.connection;
    let response = sim
        .http
        .get(format!("{}/subscriptions", connection.arm))
        .send()
        .await
        .expect("arm");
    assert_eq!(response.status(), 400);
    assert!(response.headers().contains_key("x-ms-request-id"));
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "MissingApiVersionParameter");

    let imds = connection.imds.clone().expect("imds url");
    let probe = sim
        .http
        .get(format!(
            "{imds}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x"
        ))
        .send()
        .await
        .expect("imds");
    assert_eq!(probe.status(), 400);
    assert!(
        probe.headers()["server"]
            .to_str()
            .is_ok_and(|s| s.starts_with("IMDS/"))
    );
    let body = probe.text().await.expect("body");
    assert!(
        body.contains("Required metadata header not specified")
            && !body.contains("Identity not found"),
        "{body}"
    );
    sim.stop().await;
}

#[tokio::test]
async fn connection_json_has_the_contract_fields() {
    let sim = TestSim::start().await;
    let text =
        std::fs::read_to_string(sim.dir.path().join("connection.json")).expect("connection.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("json");
    for field in [
        "arm",
        "aad",
        "graph",
        "imds",
        "ca_cert",
        "tenant_id",
        "subscription_id",
    ] {
        assert!(json[field].is_string(), "{field}: {json}");
    }
    for field in ["client_id", "client_secret", "object_id"] {
        assert!(json["admin"][field].is_string(), "admin.{field}");
    }
    assert!(
        json["aad"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://127.0.0.1:"))
    );
    assert!(std::path::Path::new(json["ca_cert"].as_str().expect("ca")).is_absolute());
    sim.stop().await;
}

#[tokio::test]
async fn in_memory_mode_runs_the_whole_lifecycle() {
    // One in-memory connection per service: any read inside a write transaction would stall.
    let sim = TestSim::start_in(tempfile::tempdir().expect("tempdir"), |c| {
        c.in_memory = true
    })
    .await;
    let token = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let sub = format!("/subscriptions/{}", sim.sim.connection.subscription_id);
    let call = |method: reqwest::Method,
                path: String,
                api: &'static str,
                body: Option<serde_json::Value>| {
        let (sim, token) = (&sim, token.clone());
        async move {
            crate::support::arm_call(sim, &token, method, &path, api, body)
                .await
                .0
        }
    };
    let identity = format!(
        "{sub}/resourceGroups/mem/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mem-id"
    );
    let vm = format!("{sub}/resourceGroups/mem/providers/Microsoft.Compute/virtualMachines/mem-vm");
    assert_eq!(
        call(
            reqwest::Method::PUT,
            format!("{sub}/resourcegroups/mem"),
            "2024-11-01",
            Some(serde_json::json!({"location": "eastus"}))
        )
        .await,
        201
    );
    assert_eq!(
        call(
            reqwest::Method::PUT,
            identity.clone(),
            "2024-11-30",
            Some(serde_json::json!({"location": "eastus"}))
        )
        .await,
        201
    );
    assert_eq!(call(reqwest::Method::PUT, format!("{identity}/federatedIdentityCredentials/fic-1"), "2023-01-31", Some(serde_json::json!({"properties": {"issuer": "https://issuer", "subject": "s", "audiences": ["api://AzureADTokenExchange"]}}))).await, 201);
    let body = serde_json::json!({"location": "eastus", "identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {identity.clone(): {}}}});
    assert_eq!(
        call(reqwest::Method::PUT, vm.clone(), "2024-11-01", Some(body)).await,
        201
    );
    assert_eq!(
        call(reqwest::Method::DELETE, identity, "2024-11-30", None).await,
        200
    );
    assert_eq!(
        call(reqwest::Method::DELETE, vm, "2024-11-01", None).await,
        200
    );
    assert_eq!(
        call(
            reqwest::Method::DELETE,
            format!("{sub}/resourcegroups/mem"),
            "2024-11-01",
            None
        )
        .await,
        202
    );
    assert_eq!(sim.sim.arm.pending_work().await.expect("outbox"), 0);
    sim.stop().await;
}
