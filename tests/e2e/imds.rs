//! IMDS end to end: a VM's own endpoint gives tokens for its own identities only, signed by AAD
//! through a client assertion made with the certificate ARM installed; the token then works at
//! ARM exactly as far as role assignments allow.

use crate::support::TestSim;
use reqwest::Method;
use serde_json::{Value, json};

async fn imds_get(
    sim: &TestSim,
    endpoint: &str,
    path_and_query: &str,
    metadata: bool,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut request = sim.http.get(format!("{endpoint}{path_and_query}"));
    if metadata {
        request = request.header("Metadata", "true");
    }
    let response = request.send().await.expect("imds");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    assert!(
        status != 500 || text.contains("Active directory"),
        "{path_and_query}: {status} {text}"
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        headers,
    )
}

async fn arm(
    sim: &TestSim,
    token: &str,
    method: Method,
    path: &str,
    api: &str,
    body: Option<Value>,
) -> (u16, Value) {
    crate::support::arm_call(sim, token, method, path, api, body).await
}

const TOKEN: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";

#[tokio::test]
async fn demo_vm_token_verifies_and_rbac_decides() {
    let sim = TestSim::start().await;
    let endpoint = sim.sim.connection.imds.clone().expect("demo imds");
    let demo = sim.sim.connection.demo_vm.clone().expect("demo vm").id;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let (_, vm) = arm(&sim, &admin, Method::GET, &demo, "2024-11-01", None).await;
    let principal = vm["identity"]["principalId"]
        .as_str()
        .expect("system principal")
        .to_string();

    let (status, body, headers) = imds_get(&sim, &endpoint, TOKEN, true).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["server"]
            .to_str()
            .is_ok_and(|s| s.starts_with("IMDS/"))
    );
    for field in [
        "access_token",
        "expires_in",
        "expires_on",
        "ext_expires_in",
        "not_before",
        "resource",
        "token_type",
        "client_id",
    ] {
        assert!(body[field].is_string(), "{field} must be a string: {body}");
    }
    assert_eq!(body["resource"], "https://management.azure.com/");
    let token = body["access_token"].as_str().expect("token").to_string();
    let claims = sim.verify(&token, "https://management.azure.com/").await;
    assert_eq!(claims["oid"], principal.as_str());
    assert_eq!(claims["appid"], body["client_id"]);
    assert_eq!(
        claims["xms_mirid"],
        demo.replace("/resourceGroups/", "/resourcegroups/")
    );
    assert!(
        body["expires_in"]
            .as_str()
            .and_then(|e| e.parse::<i64>().ok())
            .is_some_and(|e| e > 86_000),
        "about a day"
    );

    // Cached: the same token again; bypass_cache gets a fresh one.
    let (_, again, _) = imds_get(&sim, &endpoint, TOKEN, true).await;
    assert_eq!(again["access_token"], token.as_str());
    let (_, fresh, _) =
        imds_get(&sim, &endpoint, &format!("{TOKEN}&bypass_cache=true"), true).await;
    assert_ne!(fresh["access_token"], token.as_str());

    // 403 before a role assignment, 200 after.
    let sub = format!("/subscriptions/{}", sim.sim.connection.subscription_id);
    let (status, body) = arm(
        &sim,
        &token,
        Method::GET,
        &format!("{sub}/resourcegroups/demo-rg"),
        "2024-11-01",
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("AuthorizationFailed"))
    );
    let assignment = format!(
        "{sub}/resourceGroups/demo-rg/providers/Microsoft.Authorization/roleAssignments/{}",
        uuid::Uuid::new_v4()
    );
    let reader = format!(
        "{sub}/providers/Microsoft.Authorization/roleDefinitions/acdd72a7-3385-48ef-bd42-f606fba81ae7"
    );
    assert_eq!(
        arm(
            &sim,
            &admin,
            Method::PUT,
            &assignment,
            "2022-04-01",
            Some(json!({"properties": {"roleDefinitionId": reader, "principalId": principal}}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        arm(
            &sim,
            &token,
            Method::GET,
            &format!("{sub}/resourcegroups/demo-rg"),
            "2024-11-01",
            None
        )
        .await
        .0,
        200
    );

    // Other documents of the same VM.
    let (status, info, _) = imds_get(
        &sim,
        &endpoint,
        "/metadata/identity/info?api-version=2018-02-01",
        true,
    )
    .await;
    assert_eq!(
        (status, info["tenantId"].as_str()),
        (200, Some(sim.tenant()))
    );
    // The identity category starts at 2018-02-01; the instance documents are older.
    let (status, old, _) = imds_get(
        &sim,
        &endpoint,
        "/metadata/identity/info?api-version=2017-12-01",
        true,
    )
    .await;
    assert_eq!(status, 400, "{old}");
    assert!(old["newest-versions"].is_array(), "{old}");
    let (status, vm_id, _) = imds_get(
        &sim,
        &endpoint,
        "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text",
        true,
    )
    .await;
    assert_eq!(
        (status, vm_id.as_str()),
        (200, vm["properties"]["vmId"].as_str())
    );
    let (status, compute, _) = imds_get(
        &sim,
        &endpoint,
        "/metadata/instance?api-version=2021-02-01",
        true,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(compute["compute"]["resourceId"], demo.as_str());
    assert_eq!(compute["compute"]["name"], "demo-vm");
    // What ARM is told of the VM's OS, image and security shows in the document at once, as
    // strings; its secrets never reach the host.
    let (status, patched) = arm(
        &sim,
        &admin,
        Method::PATCH,
        &demo,
        "2024-11-01",
        Some(json!({"properties": {
            "osProfile": {"computerName": "demo-host", "adminUsername": "azureuser", "adminPassword": "Not-4-IMDS!", "linuxConfiguration": {"disablePasswordAuthentication": false}},
            "storageProfile": {
                "imageReference": {"publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "24.04.202411030"},
                "osDisk": {"osType": "Linux", "createOption": "FromImage", "diskSizeGB": 64},
            },
            "securityProfile": {"securityType": "TrustedLaunch", "uefiSettings": {"secureBootEnabled": true}},
        }})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    for (leaf, expected) in [
        ("osProfile/computerName", "demo-host"),
        ("osProfile/disablePasswordAuthentication", "false"),
        ("sku", "server"),
        ("storageProfile/imageReference/version", "24.04.202411030"),
        ("storageProfile/osDisk/diskSizeGB", "64"),
        ("securityProfile/secureBootEnabled", "true"),
        ("securityProfile/virtualTpmEnabled", "false"),
        ("zone", ""),
    ] {
        let (status, text, _) = imds_get(
            &sim,
            &endpoint,
            &format!("/metadata/instance/compute/{leaf}?api-version=2021-02-01&format=text"),
            true,
        )
        .await;
        // (imds_get parses what parses as JSON: "64" comes back a number.)
        let text = text
            .as_str()
            .map_or_else(|| text.to_string(), str::to_string);
        assert_eq!((status, text.as_str()), (200, expected), "{leaf}");
    }
    let (_, whole, _) = imds_get(
        &sim,
        &endpoint,
        "/metadata/instance?api-version=2021-02-01",
        true,
    )
    .await;
    assert!(!whole.to_string().contains("Not-4-IMDS!"), "{whole}");
    let (status, versions, _) = imds_get(&sim, &endpoint, "/metadata/versions", true).await;
    assert!(
        status == 200
            && versions["apiVersions"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == "2019-08-01"))
    );

    // Disabling the identity takes it off the host at once.
    arm(
        &sim,
        &admin,
        Method::PATCH,
        &demo,
        "2024-11-01",
        Some(json!({"identity": {"type": "None"}})),
    )
    .await;
    let (status, body, _) = imds_get(&sim, &endpoint, TOKEN, true).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("Identity not found"))
    );
    sim.stop().await;
}

#[tokio::test]
async fn each_vm_sees_only_its_own_identities() {
    let sim = TestSim::start_in(tempfile::tempdir().expect("tempdir"), |c| c.no_demo = true).await;
    assert!(
        sim.sim.connection.imds.is_none() && sim.sim.connection.demo_vm.is_none(),
        "--no-demo: no demo VM, no imds"
    );
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let sub = format!("/subscriptions/{}", sim.sim.connection.subscription_id);
    arm(
        &sim,
        &admin,
        Method::PUT,
        &format!("{sub}/resourcegroups/rg"),
        "2024-11-01",
        Some(json!({"location": "eastus"})),
    )
    .await;
    let uami = |n: &str| {
        format!(
            "{sub}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{n}"
        )
    };
    let mut ids = Vec::new();
    for name in ["id-a1", "id-a2", "id-b1"] {
        let (status, identity) = arm(
            &sim,
            &admin,
            Method::PUT,
            &uami(name),
            "2024-11-30",
            Some(json!({"location": "eastus"})),
        )
        .await;
        assert_eq!(status, 201, "{identity}");
        ids.push((
            identity["properties"]["clientId"]
                .as_str()
                .expect("client")
                .to_string(),
            identity["properties"]["principalId"]
                .as_str()
                .expect("principal")
                .to_string(),
        ));
    }
    let vm = |n: &str| {
        format!("{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{n}")
    };
    let (status, a) = arm(&sim, &admin, Method::PUT, &vm("vm-a"), "2024-11-01", Some(json!({"location": "eastus", "identity": {"type": "UserAssigned", "userAssignedIdentities": {uami("id-a1"): {}, uami("id-a2"): {}}}}))).await;
    assert_eq!(status, 201, "{a}");
    let (_, b) = arm(&sim, &admin, Method::PUT, &vm("vm-b"), "2024-11-01", Some(json!({"location": "eastus", "identity": {"type": "SystemAssigned, UserAssigned", "userAssignedIdentities": {uami("id-b1"): {}}}}))).await;
    let endpoint_of = |vm_id: &str| sim.sim.imds.vm_endpoint(vm_id).expect("endpoint");
    let (a_endpoint, b_endpoint) = (
        endpoint_of(a["properties"]["vmId"].as_str().expect("vmId")),
        endpoint_of(b["properties"]["vmId"].as_str().expect("vmId")),
    );
    assert_ne!(a_endpoint, b_endpoint, "one listener per VM");

    // VM A: two user-assigned identities and no system one, so a selector is required.
    let (status, body, _) = imds_get(&sim, &a_endpoint, TOKEN, true).await;
    assert_eq!(status, 400);
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.starts_with("Multiple user assigned identities exist"))
    );
    let (status, by_client, _) = imds_get(
        &sim,
        &a_endpoint,
        &format!("{TOKEN}&client_id={}", ids[0].0),
        true,
    )
    .await;
    assert_eq!(
        (status, by_client["client_id"].as_str()),
        (200, Some(ids[0].0.as_str()))
    );
    let (status, by_object, _) = imds_get(
        &sim,
        &a_endpoint,
        &format!("{TOKEN}&object_id={}", ids[1].1),
        true,
    )
    .await;
    assert_eq!(
        (status, by_object["client_id"].as_str()),
        (200, Some(ids[1].0.as_str()))
    );
    // The selector the client used is echoed; the others are absent.
    assert_eq!(by_object["object_id"].as_str(), Some(ids[1].1.as_str()));
    assert!(by_object.get("msi_res_id").is_none() && by_client.get("object_id").is_none());
    let encoded =
        percent_encoding::utf8_percent_encode(&uami("id-a2"), percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let (status, by_resource, _) = imds_get(
        &sim,
        &a_endpoint,
        &format!("{TOKEN}&msi_res_id={encoded}"),
        true,
    )
    .await;
    assert_eq!(
        (status, by_resource["client_id"].as_str()),
        (200, Some(ids[1].0.as_str()))
    );
    assert_eq!(
        by_resource["msi_res_id"].as_str(),
        Some(uami("id-a2").as_str())
    );
    let claims = sim
        .verify(
            by_resource["access_token"].as_str().expect("token"),
            "https://management.azure.com/",
        )
        .await;
    assert!(claims["xms_mirid"].as_str().is_some_and(|m| {
        m.ends_with("/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-a2")
    }));

    // Isolation: no selector on A's endpoint can yield B's identities.
    for selector in [
        format!("client_id={}", ids[2].0),
        format!("object_id={}", ids[2].1),
        format!(
            "msi_res_id={}",
            percent_encoding::utf8_percent_encode(
                &uami("id-b1"),
                percent_encoding::NON_ALPHANUMERIC
            )
        ),
    ] {
        let (status, body, _) =
            imds_get(&sim, &a_endpoint, &format!("{TOKEN}&{selector}"), true).await;
        assert_eq!(
            (status, body["error_description"].as_str()),
            (400, Some("Identity not found")),
            "{selector}"
        );
    }
    // VM B defaults to its system identity.
    let (_, default_b, _) = imds_get(&sim, &b_endpoint, TOKEN, true).await;
    let claims = sim
        .verify(
            default_b["access_token"].as_str().expect("token"),
            "https://management.azure.com/",
        )
        .await;
    assert_eq!(claims["oid"], b["identity"]["principalId"]);

    // Unassigning a1 from A removes it from A's host; deleting b1 removes it from B's.
    arm(&sim, &admin, Method::PATCH, &vm("vm-a"), "2024-11-01", Some(json!({"identity": {"type": "UserAssigned", "userAssignedIdentities": {uami("id-a1"): null}}}))).await;
    let (status, _, _) = imds_get(
        &sim,
        &a_endpoint,
        &format!("{TOKEN}&client_id={}", ids[0].0),
        true,
    )
    .await;
    assert_eq!(status, 400);
    let (status, only, _) = imds_get(&sim, &a_endpoint, TOKEN, true).await;
    assert_eq!(
        (status, only["client_id"].as_str()),
        (200, Some(ids[1].0.as_str())),
        "the only user-assigned identity is the default"
    );
    arm(
        &sim,
        &admin,
        Method::DELETE,
        &uami("id-b1"),
        "2024-11-30",
        None,
    )
    .await;
    let (status, gone, _) = imds_get(
        &sim,
        &b_endpoint,
        &format!("{TOKEN}&client_id={}", ids[2].0),
        true,
    )
    .await;
    assert_eq!(
        (status, gone["error_description"].as_str()),
        (400, Some("Identity not found")),
        "the deleted identity's credential left the host"
    );

    // Deleting VM A closes its endpoint.
    arm(
        &sim,
        &admin,
        Method::DELETE,
        &vm("vm-a"),
        "2024-11-01",
        None,
    )
    .await;
    assert!(
        sim.http
            .get(format!("{a_endpoint}{TOKEN}"))
            .header("Metadata", "true")
            .send()
            .await
            .is_err(),
        "listener closed"
    );
    sim.stop().await;
}

#[tokio::test]
async fn imds_rejects_bad_requests_in_its_dialect() {
    // Many requests in a burst: lift the rate limits, which have a test of their own.
    let sim = TestSim::start_in(tempfile::tempdir().expect("tempdir"), |c| {
        c.imds_throttle = false
    })
    .await;
    let endpoint = sim.sim.connection.imds.clone().expect("imds");
    let cases: Vec<(&str, bool, u16, &str)> = vec![
        (TOKEN, false, 400, "Required metadata header not specified"),
        (
            "/metadata/identity/oauth2/token",
            false,
            400,
            "Required metadata header not specified",
        ),
        ("/metadata/identity/oauth2/token?resource=x", true, 400, ""),
        (
            "/metadata/identity/oauth2/token?api-version=2017-12-01&resource=x",
            true,
            400,
            "",
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2099-01-01&resource=x",
            true,
            400,
            "",
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01",
            true,
            400,
            "Required audience parameter not specified",
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=a&resource=b",
            true,
            400,
            "Query parameter 'resource' is repeated",
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x&client_id=a&object_id=b",
            true,
            400,
            "Only one of client_id, object_id and msi_res_id may be specified",
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x&msi_res_id=a&mi_res_id=b",
            true,
            400,
            "Only one of client_id, object_id and msi_res_id may be specified",
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x&bypass_cache=yes",
            true,
            400,
            "bypass_cache must be 'true' when specified",
        ),
        (
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Funknown.example",
            true,
            400,
            "",
        ),
        (
            "/metadata/instance/compute/vmId?api-version=2021-02-01",
            true,
            400,
            "Bad request. Leaf nodes need the format=text query parameter",
        ),
        (
            "/metadata/instance/compute/nothing?api-version=2021-02-01",
            true,
            404,
            "The requested path was not found",
        ),
        (
            "/metadata/identity/getPlatformMetadata?api-version=2018-02-01",
            true,
            404,
            "The requested path was not found",
        ),
        ("/elsewhere", true, 404, "The requested path was not found"),
    ];
    for (path, metadata, status, description) in cases {
        let (got, body, headers) = imds_get(&sim, &endpoint, path, metadata).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            headers["content-type"]
                .to_str()
                .is_ok_and(|c| c.starts_with("application/json")),
            "{path}"
        );
        if !description.is_empty() {
            assert_eq!(body["error_description"], description, "{path}");
        }
        assert!(
            !body.to_string().contains("Identity not found") || metadata,
            "probes never read 'Identity not found'"
        );
    }
    let (_, unknown_resource, _) = imds_get(&sim, &endpoint, "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Funknown.example", true).await;
    assert_eq!(unknown_resource["error"], "invalid_resource");
    // Proxied requests and other verbs.
    let proxied = sim
        .http
        .get(format!("{endpoint}{TOKEN}"))
        .header("Metadata", "true")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .expect("proxied");
    assert_eq!(proxied.status(), 400);
    let post = sim
        .http
        .post(format!("{endpoint}{TOKEN}"))
        .header("Metadata", "true")
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), 405);
    // Paths built by concatenation still work.
    let (status, _, _) = imds_get(
        &sim,
        &endpoint,
        &format!("/{TOKEN}").replace("/metadata", "/metadata"),
        true,
    )
    .await;
    assert_eq!(status, 200);
    // The host API is not on the VM's listener.
    let (status, _, _) = imds_get(&sim, &endpoint, "/_internal/host/vms/x", true).await;
    assert_eq!(status, 404);
    sim.stop().await;
}

#[tokio::test]
async fn vms_keep_their_endpoints_and_tokens_across_a_restart() {
    let first = TestSim::start().await;
    let endpoint = first.sim.connection.imds.clone().expect("imds");
    let (_, before, _) = imds_get(&first, &endpoint, TOKEN, true).await;
    // A VM made through ARM, not only the demo VM, keeps its address.
    let admin = first
        .admin_token("https://management.azure.com/.default")
        .await;
    let sub = format!("/subscriptions/{}", first.sim.connection.subscription_id);
    let (status, vm) = arm(
        &first,
        &admin,
        Method::PUT,
        &format!(
            "{sub}/resourceGroups/demo-rg/providers/Microsoft.Compute/virtualMachines/second-vm"
        ),
        "2024-07-01",
        Some(
            json!({"location": "eastus", "identity": {"type": "SystemAssigned"},
            "properties": {"storageProfile": {"osDisk": {"osType": "Windows"}}}}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{vm}");
    let second_vm = vm["properties"]["vmId"].as_str().expect("vmId").to_string();
    let second_endpoint = first
        .sim
        .imds
        .vm_endpoint(&second_vm)
        .expect("second VM's IMDS");
    assert_ne!(second_endpoint, endpoint);
    let (_, second_before, _) = imds_get(&first, &second_endpoint, TOKEN, true).await;
    // Its instance document says what ARM was told.
    let os = first
        .http
        .get(format!(
            "{second_endpoint}/metadata/instance/compute/osType?api-version=2021-02-01&format=text"
        ))
        .header("Metadata", "true")
        .send()
        .await
        .expect("osType");
    assert_eq!(os.text().await.expect("text"), "Windows");
    let dir = first.stop().await;
    let second = TestSim::start_in(dir, |_| {}).await;
    assert_eq!(
        second.sim.connection.imds.as_deref(),
        Some(endpoint.as_str()),
        "same address after a restart"
    );
    let (status, after, _) = imds_get(&second, &endpoint, TOKEN, true).await;
    assert_eq!(status, 200);
    assert_eq!(after["client_id"], before["client_id"]);
    assert_eq!(
        second.sim.imds.vm_endpoint(&second_vm).as_deref(),
        Some(second_endpoint.as_str()),
        "the second VM's address too"
    );
    let (status, second_after, _) = imds_get(&second, &second_endpoint, TOKEN, true).await;
    assert_eq!(status, 200, "{second_after}");
    assert_eq!(second_after["client_id"], second_before["client_id"]);
    assert_ne!(second_after["client_id"], after["client_id"]);
    second
        .verify(
            after["access_token"].as_str().expect("token"),
            "https://management.azure.com/",
        )
        .await;
    second.stop().await;
}

#[tokio::test]
async fn vm_env_points_clients_at_imds_or_the_app_service_endpoint() {
    let sim = TestSim::start().await;
    let dir = sim.dir.path().to_path_buf();
    let imds = misim::vm_env::vm_env(&dir, "demo-vm", false)
        .await
        .expect("vm env");
    let get = |name: &str, env: &misim::vm_env::VmEnv| {
        env.set
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        get("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds),
        sim.sim.connection.imds.clone()
    );
    assert!(
        get("IDENTITY_ENDPOINT", &imds).is_none() && imds.unset.contains(&"IDENTITY_ENDPOINT"),
        "never both modes"
    );
    assert_eq!(
        get("REQUESTS_CA_BUNDLE", &imds),
        Some(sim.sim.connection.ca_cert.display().to_string())
    );
    let by_id = misim::vm_env::vm_env(
        &dir,
        &sim.sim.connection.demo_vm.clone().expect("demo").id,
        false,
    )
    .await
    .expect("by id");
    assert_eq!(
        get("AZURE_POD_IDENTITY_AUTHORITY_HOST", &by_id),
        get("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds)
    );
    assert!(
        misim::vm_env::vm_env(&dir, "no-such-vm", false)
            .await
            .is_err()
    );

    // App Service protocol on the same VM: header checked, 2019-08-01 shape.
    let app = misim::vm_env::vm_env(&dir, "demo-vm", true)
        .await
        .expect("app service env");
    let (endpoint, header) = (
        get("IDENTITY_ENDPOINT", &app).expect("endpoint"),
        get("IDENTITY_HEADER", &app).expect("header"),
    );
    assert!(get("AZURE_POD_IDENTITY_AUTHORITY_HOST", &app).is_none());
    let url = format!("{endpoint}?api-version=2019-08-01&resource=https://vault.azure.net");
    let ok: Value = sim
        .http
        .get(&url)
        .header("X-IDENTITY-HEADER", &header)
        .send()
        .await
        .expect("app service")
        .json()
        .await
        .expect("json");
    assert!(
        ok["expires_on"]
            .as_str()
            .is_some_and(|e| e.parse::<i64>().is_ok()),
        "{ok}"
    );
    assert_eq!(ok["resource"], "https://vault.azure.net");
    sim.verify(
        ok["access_token"].as_str().expect("token"),
        "https://vault.azure.net",
    )
    .await;
    for (header_value, status) in [("wrong", 401), ("", 401)] {
        let response = sim
            .http
            .get(&url)
            .header("X-IDENTITY-HEADER", header_value)
            .send()
            .await
            .expect("refused");
        assert_eq!(response.status().as_u16(), status);
        let body: Value = response.json().await.expect("json");
        assert!(
            body["statusCode"].is_number()
                && body["message"].is_string()
                && body["correlationId"].is_string()
        );
    }
    let response = sim
        .http
        .get(format!("{endpoint}?api-version=2018-02-01&resource=x"))
        .header("X-IDENTITY-HEADER", &header)
        .send()
        .await
        .expect("old version");
    assert_eq!(response.status(), 400);

    // /_sim/ needs the bootstrap admin: another principal of the tenant is refused.
    let (_, arm_token) = crate::support::roleless_app(&sim, "curious").await;
    let response = sim
        .http
        .get(format!("{}/_sim/vms/demo-vm", sim.sim.connection.arm))
        .bearer_auth(&arm_token)
        .send()
        .await
        .expect("sim");
    assert_eq!(response.status(), 403);
    let response = sim
        .http
        .get(format!("{}/_sim/vms/demo-vm", sim.sim.connection.arm))
        .send()
        .await
        .expect("anonymous");
    assert_eq!(response.status(), 401);
    sim.stop().await;
}

#[tokio::test]
async fn identity_requests_are_throttled_per_vm_unless_lifted() {
    for throttle in [true, false] {
        let sim = TestSim::start_in(tempfile::tempdir().expect("tempdir"), |c| {
            c.imds_throttle = throttle
        })
        .await;
        let endpoint = sim.sim.connection.imds.clone().expect("imds");
        let mut statuses = Vec::new();
        for _ in 0..30 {
            let response = sim
                .http
                .get(format!("{endpoint}{TOKEN}"))
                .header("Metadata", "true")
                .send()
                .await
                .expect("imds");
            if response.status() == 429 {
                assert_eq!(response.headers()["retry-after"], "1");
                let body: Value = response.json().await.expect("json");
                assert_eq!(body["error"], "too_many_requests");
                statuses.push(429);
            } else {
                statuses.push(response.status().as_u16());
            }
        }
        let throttled = statuses.iter().filter(|s| **s == 429).count();
        if throttle {
            assert!(
                throttled >= 5,
                "30 requests in a burst exceed 20/s: {statuses:?}"
            );
            // Other endpoints are not in the identity category.
            let versions = sim
                .http
                .get(format!("{endpoint}/metadata/versions"))
                .header("Metadata", "true")
                .send()
                .await
                .expect("versions");
            assert_eq!(versions.status(), 200);
        } else {
            assert_eq!(throttled, 0, "--imds-throttle off");
        }
        sim.stop().await;
    }
}

#[tokio::test]
async fn source_address_mode_maps_callers_to_their_vm() {
    let sim = TestSim::start_in(tempfile::tempdir().expect("tempdir"), |c| {
        c.no_demo = true;
        c.imds_source_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let source = sim
        .sim
        .connection
        .imds_source
        .clone()
        .expect("source-mode listener");
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let sub = format!("/subscriptions/{}", sim.sim.connection.subscription_id);
    arm(
        &sim,
        &admin,
        Method::PUT,
        &format!("{sub}/resourcegroups/net"),
        "2024-11-01",
        Some(json!({"location": "eastus"})),
    )
    .await;
    let mut principals = Vec::new();
    for (name, ip) in [("vm-two", "127.0.0.2"), ("vm-three", "127.0.0.3")] {
        let body = json!({"location": "eastus", "tags": {"misim-ip": ip}, "identity": {"type": "SystemAssigned"}});
        let (status, vm) = arm(
            &sim,
            &admin,
            Method::PUT,
            &format!("{sub}/resourceGroups/net/providers/Microsoft.Compute/virtualMachines/{name}"),
            "2024-11-01",
            Some(body),
        )
        .await;
        assert_eq!(status, 201, "{vm}");
        principals.push(
            vm["identity"]["principalId"]
                .as_str()
                .expect("principal")
                .to_string(),
        );
    }
    for (ip, principal) in [("127.0.0.2", &principals[0]), ("127.0.0.3", &principals[1])] {
        let from = reqwest::Client::builder()
            .local_address(ip.parse::<std::net::IpAddr>().expect("ip"))
            .no_proxy()
            .build()
            .expect("client");
        let body: Value = from
            .get(format!("{source}{TOKEN}"))
            .header("Metadata", "true")
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("json");
        let claims = sim
            .verify(
                body["access_token"].as_str().expect("token"),
                "https://management.azure.com/",
            )
            .await;
        assert_eq!(
            claims["oid"],
            principal.as_str(),
            "the caller at {ip} gets its own VM's identity"
        );
    }
    // An address no VM claims gets IMDS's 404, but a probe without `Metadata` reads IMDS's 400
    // first (clients then send the real request and show the 404's reason).
    let (status, body, _) = imds_get(&sim, &source, TOKEN, true).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("127.0.0.1")),
        "{body}"
    );
    let (status, body, _) = imds_get(&sim, &source, TOKEN, false).await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains("Identity not found"));
    // An IMDSv2 probe reads 404 (no v2 here), as from a known VM.
    let v2 = sim
        .http
        .post(format!("{source}/metadata/identity/credential"))
        .send()
        .await
        .expect("v2 probe");
    assert_eq!(v2.status(), 404);
    // The instance document reports the VM's tagged address.
    let from = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().expect("ip"))
        .no_proxy()
        .build()
        .expect("client");
    let network: Value = from
        .get(format!(
            "{source}/metadata/instance/network?api-version=2021-02-01"
        ))
        .header("Metadata", "true")
        .send()
        .await
        .expect("network")
        .json()
        .await
        .expect("json");
    assert_eq!(
        network["interface"][0]["ipv4"]["ipAddress"][0]["privateIpAddress"], "127.0.0.2",
        "{network}"
    );
    sim.stop().await;
}

/// Sends `request` as raw bytes to an `http://host:port` endpoint and reads the answer until
/// the server closes (at most 10 s).
async fn raw_exchange(endpoint: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn legacy_extension_endpoint_answers_like_imds() {
    let sim = TestSim::start().await;
    let endpoint = sim.sim.connection.imds.clone().expect("imds");
    let (status, get, _) = imds_get(
        &sim,
        &endpoint,
        "/oauth2/token?resource=https%3A%2F%2Fmanagement.azure.com%2F",
        true,
    )
    .await;
    assert_eq!(status, 200, "{get}");
    assert!(get["expires_on"].is_string() && get["access_token"].is_string());
    let post: Value = sim
        .http
        .post(format!("{endpoint}/oauth2/token"))
        .header("Metadata", "true")
        .form(&[("resource", "https://vault.azure.net")])
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(post["resource"], "https://vault.azure.net");
    // Older .NET clients post an empty `client_id=` for the system-assigned identity: it counts
    // as no selector, here and on IMDS's own path, and is not echoed.
    let empty_selector: Value = sim
        .http
        .post(format!("{endpoint}/oauth2/token"))
        .header("Metadata", "true")
        .form(&[("resource", "https://vault.azure.net"), ("client_id", "")])
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(
        empty_selector["client_id"], get["client_id"],
        "{empty_selector}"
    );
    let (status, on_imds, _) = imds_get(
        &sim,
        &endpoint,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net&object_id=",
        true,
    )
    .await;
    assert_eq!(status, 200, "{on_imds}");
    assert_eq!(on_imds["client_id"], get["client_id"], "{on_imds}");
    assert!(on_imds.get("object_id").is_none(), "{on_imds}");
    let (status, _, _) = imds_get(&sim, &endpoint, "/oauth2/token?resource=x", false).await;
    assert_eq!(status, 400, "Metadata: true is required here too");
    // Bad forms: a parameter repeated in the form or across query and form, an oversized form.
    let post_form = |query: &'static str, body: String| {
        let (sim, endpoint) = (&sim, &endpoint);
        async move {
            let response = sim
                .http
                .post(format!("{endpoint}/oauth2/token{query}"))
                .header("Metadata", "true")
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .expect("post");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("IMDS's JSON"))
        }
    };
    let resource = "resource=https%3A%2F%2Fvault.azure.net";
    for (query, body) in [
        ("", format!("{resource}&{resource}")),
        ("?resource=x", resource.to_string()),
    ] {
        let (status, body) = post_form(query, body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert_eq!(
            body["error_description"],
            "Parameter 'resource' is given more than once in the query and form"
        );
    }
    let (status, body) = post_form("", format!("{resource}&pad={}", "a".repeat(70_000))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "bad_request", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("longer than 65536 bytes")),
        "{body}"
    );
    // A body that cannot be read (a malformed chunk) is a 400 of its own, not "too long".
    let answer = raw_exchange(
        &endpoint,
        "POST /oauth2/token HTTP/1.1\r\nHost: imds\r\nMetadata: true\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("could not be read"), "{answer}");
    assert!(answer.contains(r#""error":"bad_request""#), "{answer}");
    sim.stop().await;
}

#[tokio::test]
async fn a_lost_imds_database_is_rebuilt_from_arm_at_restart() {
    let first =
        TestSim::start_in(tempfile::tempdir().expect("tempdir"), |c| c.no_demo = true).await;
    let admin = first
        .admin_token("https://management.azure.com/.default")
        .await;
    let sub = format!("/subscriptions/{}", first.sim.connection.subscription_id);
    arm(
        &first,
        &admin,
        Method::PUT,
        &format!("{sub}/resourcegroups/rg"),
        "2024-11-01",
        Some(json!({"location": "eastus"})),
    )
    .await;
    let (_, vm) = arm(
        &first,
        &admin,
        Method::PUT,
        &format!("{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/keeper"),
        "2024-11-01",
        Some(json!({"location": "eastus", "identity": {"type": "SystemAssigned"}})),
    )
    .await;
    let vm_id = vm["properties"]["vmId"].as_str().expect("vmId").to_string();
    let dir = first.stop().await;
    for file in ["imds.db", "imds.db-wal", "imds.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(file));
    }
    let second = TestSim::start_in(dir, |c| c.no_demo = true).await;
    second.sim.arm.deliver().await;
    assert_eq!(
        second.sim.arm.pending_work().await.expect("outbox"),
        0,
        "the reconcile pass was delivered"
    );
    let endpoint = second
        .sim
        .imds
        .vm_endpoint(&vm_id)
        .expect("the VM is hosted again");
    let (status, body, _) = imds_get(&second, &endpoint, TOKEN, true).await;
    assert_eq!(status, 200, "{body}");
    let claims = second
        .verify(
            body["access_token"].as_str().expect("token"),
            "https://management.azure.com/",
        )
        .await;
    assert_eq!(claims["oid"], vm["identity"]["principalId"]);
    second.stop().await;
}

#[tokio::test]
async fn the_vm_extension_endpoint_can_have_its_own_port() {
    let sim = TestSim::start_in(tempfile::tempdir().expect("dir"), |c| {
        c.imds_extension_port = Some(0)
    })
    .await;
    let extension = sim
        .sim
        .connection
        .imds_extension
        .clone()
        .expect("an extension endpoint in connection.json");
    assert_ne!(Some(&extension), sim.sim.connection.imds.as_ref());
    let response = sim
        .http
        .post(format!("{extension}/oauth2/token"))
        .header("Metadata", "true")
        .form(&[("resource", "https://management.azure.com/")])
        .send()
        .await
        .expect("extension endpoint");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    let token = body["access_token"].as_str().expect("token");
    let claims = sim.verify(token, "https://management.azure.com/").await;
    let demo = sim.sim.connection.demo_vm.clone().expect("demo").id;
    assert_eq!(
        claims["xms_mirid"],
        demo.replace("/resourceGroups/", "/resourcegroups/")
    );
    // Its old protocol only: without Metadata it refuses, as on Azure.
    let response = sim
        .http
        .get(format!(
            "{extension}/oauth2/token?resource=https://management.azure.com/"
        ))
        .send()
        .await
        .expect("extension endpoint");
    assert_eq!(response.status(), 400);
}

/// One request of the bad-input sweep: verb, query added to the route's good one, headers, and
/// the status expected (0: any below 500).
type Case<'a> = (Method, String, Vec<(&'a str, String)>, u16);

/// Which error shape a route answers in.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Dialect {
    /// `{"error","error_description"}` with `Server: IMDS/...`.
    Imds,
    /// App Service's `{"statusCode","message","correlationId"}`.
    AppService,
}

#[tokio::test]
async fn every_imds_route_answers_bad_input_in_its_dialect() {
    // Many requests in a burst: lift the rate limits, which have a test of their own.
    let sim = TestSim::start_in(tempfile::tempdir().expect("tempdir"), |c| {
        c.imds_throttle = false
    })
    .await;
    let endpoint = sim.sim.connection.imds.clone().expect("imds");
    let identity_header = sim.identity_header("demo-vm").await;
    let arm = "https%3A%2F%2Fmanagement.azure.com%2F";
    let routes = [
        (
            "/metadata/identity/oauth2/token",
            format!("api-version=2018-02-01&resource={arm}"),
            Dialect::Imds,
        ),
        (
            "/metadata/identity/info",
            "api-version=2018-02-01".to_string(),
            Dialect::Imds,
        ),
        (
            "/metadata/instance",
            "api-version=2021-02-01".to_string(),
            Dialect::Imds,
        ),
        (
            "/metadata/instance/compute/vmId",
            "api-version=2021-02-01&format=text".to_string(),
            Dialect::Imds,
        ),
        ("/metadata/versions", "x=1".to_string(), Dialect::Imds),
        ("/oauth2/token", format!("resource={arm}"), Dialect::Imds),
        (
            "/msi/token",
            format!("api-version=2019-08-01&resource={arm}"),
            Dialect::AppService,
        ),
    ];
    let long = |n: usize| format!("&pad={}", "a".repeat(n));
    let mut seen = 0;
    for (path, query, dialect) in &routes {
        let credential = match dialect {
            Dialect::Imds => ("Metadata", "true".to_string()),
            Dialect::AppService => ("X-IDENTITY-HEADER", identity_header.clone()),
        };
        let refused = if *dialect == Dialect::Imds { 400 } else { 401 };
        let good = vec![credential.clone()];
        let mut cases: Vec<Case> = vec![
            (Method::GET, String::new(), good.clone(), 200),
            (Method::GET, String::new(), vec![], refused),
            (
                Method::GET,
                String::new(),
                vec![(credential.0, String::new())],
                refused,
            ),
            (
                Method::GET,
                String::new(),
                vec![(credential.0, "false".into())],
                refused,
            ),
            (
                Method::GET,
                String::new(),
                vec![credential.clone(), credential.clone()],
                refused,
            ),
            (
                Method::GET,
                String::new(),
                vec![credential.clone(), ("X-Forwarded-For", "10.1.2.3".into())],
                400,
            ),
            (Method::GET, "&x=1&x=2".into(), good.clone(), 400),
            (Method::GET, long(9_000), good.clone(), 400),
            (Method::GET, long(60_000), good.clone(), 400),
            // Malformed escapes and bytes that are not UTF-8 name unknown parameters: ignored.
            (Method::GET, "&%ZZ=%FF&%FE".into(), good.clone(), 0),
        ];
        if *dialect == Dialect::Imds {
            // IMDS documents lower case; Azure answers callers that send `True` too.
            cases.push((
                Method::GET,
                String::new(),
                vec![("Metadata", "True".into())],
                200,
            ));
        }
        for method in [Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
            cases.push((method, String::new(), good.clone(), 405));
        }
        if *path != "/oauth2/token" {
            // The VM-extension endpoint alone takes a POSTed form.
            cases.push((Method::POST, String::new(), good.clone(), 405));
        }
        for (method, extra, headers, expected) in cases {
            let url = format!("{endpoint}{path}?{query}{extra}");
            let mut request = sim.http.request(method.clone(), &url);
            for (name, value) in &headers {
                request = request.header(*name, value);
            }
            let response = request.send().await.expect("imds answers");
            let status = response.status().as_u16();
            let response_headers = response.headers().clone();
            let text = response.text().await.expect("body");
            let what = format!(
                "{method} {path} +{} bytes of query, {headers:?}",
                extra.len()
            );
            assert!(status < 500, "{what}: {status} {text}");
            if expected != 0 {
                assert_eq!(status, expected, "{what}: {text}");
            }
            if status == 200 && path.ends_with("vmId") {
                assert!(!text.is_empty(), "{what}");
                continue;
            }
            assert!(
                response_headers["content-type"]
                    .to_str()
                    .is_ok_and(|c| c.starts_with("application/json")),
                "{what}: {response_headers:?}"
            );
            let body: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: JSON, not {text}"));
            if status != 200 {
                match (dialect, status) {
                    (Dialect::Imds, _) if body.get("error").is_some() => {
                        assert!(body["error"].is_string(), "{what}: {body}");
                        assert!(
                            response_headers["server"]
                                .to_str()
                                .is_ok_and(|s| s.starts_with("IMDS/")),
                            "{what}"
                        );
                    }
                    (Dialect::AppService, _) => {
                        assert_eq!(body["statusCode"], status, "{what}: {body}");
                        assert!(body["message"].is_string(), "{what}: {body}");
                    }
                    _ => panic!("{what}: not IMDS's error shape: {body}"),
                }
                // The demo VM has an identity: nothing here is an identity lookup that fails.
                assert!(!text.contains("Identity not found"), "{what}: {text}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 7 * 15, "every case ran: {seen}");
    sim.stop().await;
}
