//! The simulator APIs on ARM's URL: the event timeline (with one correlation id per request
//! chain), the clock that moves every service (identity certificates and AAD's signing key
//! roll, old tokens expire, new ones verify), fault plans at IMDS and AAD, and explain.

use crate::support::{TestSim, send_json};
use reqwest::Method;
use serde_json::{Value, json};

const TOKEN: &str = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";

async fn sim_call(
    sim: &TestSim,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("{}{path}", sim.sim.connection.arm);
    send_json(sim.http.request(method, url).bearer_auth(token), body).await
}

/// `/_sim/events?{query}` as the admin: the events listed.
async fn events(sim: &TestSim, admin: &str, query: &str) -> Vec<Value> {
    let (status, page) = sim_call(
        sim,
        admin,
        Method::GET,
        &format!("/_sim/events?{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["value"].as_array().cloned().unwrap_or_default()
}

async fn imds_token(sim: &TestSim, query: &str) -> (u16, Value) {
    let endpoint = sim.sim.connection.imds.clone().expect("demo imds");
    let response = sim
        .http
        .get(format!("{endpoint}{TOKEN}{query}"))
        .header("Metadata", "true")
        .send()
        .await
        .expect("imds");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn key_credentials(sim: &TestSim, graph_token: &str, principal: &str) -> Value {
    let (status, body) = sim
        .graph(
            Method::GET,
            &format!("servicePrincipals/{principal}"),
            graph_token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["keyCredentials"].clone()
}

fn kinds(events: &Value) -> Vec<String> {
    events["value"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_string())
        .collect()
}

fn position(kinds: &[String], kind: &str) -> usize {
    kinds
        .iter()
        .position(|k| k == kind)
        .unwrap_or_else(|| panic!("no {kind} in {kinds:?}"))
}

#[tokio::test]
async fn lifecycle_events_appear_in_order_with_one_correlation_per_chain() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let sub = format!("/subscriptions/{}", sim.sim.connection.subscription_id);

    // A user-assigned identity created through ARM: ARM mints, AAD registers.
    let correlation = uuid::Uuid::new_v4().to_string();
    let url = format!(
        "{}{sub}/resourceGroups/demo-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/watched?api-version=2023-01-31",
        sim.sim.connection.arm
    );
    let (status, identity) = send_json(
        sim.http
            .put(url)
            .bearer_auth(&admin)
            .header("x-ms-correlation-request-id", &correlation),
        Some(json!({"location": "eastus"})),
    )
    .await;
    assert_eq!(status, 201, "{identity}");
    let principal = identity["properties"]["principalId"]
        .as_str()
        .expect("principal")
        .to_string();
    let (_, chain) = sim_call(
        &sim,
        &admin,
        Method::GET,
        &format!("/_sim/events?correlation_id={correlation}"),
        None,
    )
    .await;
    let chain_kinds = kinds(&chain);
    let created = position(&chain_kinds, "arm.identity.created");
    assert!(created < position(&chain_kinds, "arm.credential.generated"));
    assert!(
        position(&chain_kinds, "arm.credential.generated")
            < position(&chain_kinds, "aad.service_principal.created")
    );
    assert!(
        position(&chain_kinds, "aad.service_principal.created")
            < position(&chain_kinds, "aad.credential.registered")
    );
    assert!(position(&chain_kinds, "arm.request.authorized") < created);

    // The demo VM asks IMDS for a token: IMDS, then AAD, under the client's correlation id.
    let endpoint = sim.sim.connection.imds.clone().expect("imds");
    let chain_id = uuid::Uuid::new_v4().to_string();
    let response = sim
        .http
        .get(format!("{endpoint}{TOKEN}"))
        .header("Metadata", "true")
        .header("x-ms-client-request-id", &chain_id)
        .send()
        .await
        .expect("imds");
    assert_eq!(response.status(), 200);
    let token = response.json::<Value>().await.expect("json")["access_token"]
        .as_str()
        .expect("token")
        .to_string();
    let (_, chain) = sim_call(
        &sim,
        &admin,
        Method::GET,
        &format!("/_sim/events?correlation_id={chain_id}"),
        None,
    )
    .await;
    assert_eq!(
        kinds(&chain),
        vec![
            "imds.token.requested",
            "aad.assertion.validated",
            "aad.token.issued"
        ],
        "{chain}"
    );
    assert!(
        chain["value"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["correlation_id"] == chain_id.as_str())
    );

    // The token used at ARM: denied (no role), with the reason.
    let (status, _) = crate::support::arm_call(
        &sim,
        &token,
        Method::GET,
        &format!("{sub}/resourcegroups/demo-rg"),
        "2021-04-01",
        None,
    )
    .await;
    assert_eq!(status, 403);
    let denied = events(&sim, &admin, "kind=arm.request.denied").await;
    let last = denied.last().cloned().expect("a denial");
    assert!(
        last["summary"]
            .as_str()
            .expect("summary")
            .contains("no role assignment")
    );

    // The demo VM's own view: only its events, from all three services.
    let (_, vm_events) = sim_call(&sim, &admin, Method::GET, "/_sim/events?vm=demo-vm", None).await;
    let services: std::collections::BTreeSet<&str> = vm_events["value"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["service"].as_str().expect("service"))
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        vec!["aad", "arm", "imds"]
    );
    assert!(
        !vm_events["value"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["principal_id"] == principal.as_str())
    );

    // The cursor pages forward: nothing new after the last page.
    let cursor = vm_events["cursor"].as_str().expect("cursor");
    let (_, rest) = sim_call(
        &sim,
        &admin,
        Method::GET,
        &format!("/_sim/events?vm=demo-vm&after={cursor}"),
        None,
    )
    .await;
    assert_eq!(rest["value"], json!([]));

    // Deleting the identity: ARM, then AAD.
    let (status, _) = crate::support::arm_call(&sim, &admin, Method::DELETE, &format!("{sub}/resourceGroups/demo-rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/watched"), "2023-01-31", None).await;
    assert_eq!(status, 200);
    let gone = events(&sim, &admin, "kind=aad.service_principal.deleted").await;
    assert!(gone.iter().any(|e| e["principal_id"] == principal.as_str()));
}

#[tokio::test]
async fn the_live_stream_shows_a_step_as_it_happens() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let (_, page) = sim_call(&sim, &admin, Method::GET, "/_sim/events?vm=demo-vm", None).await;
    let cursor = page["cursor"].as_str().expect("cursor").to_string();
    let mut stream = sim
        .http
        .get(format!(
            "{}/_sim/events/stream?vm=demo-vm&after={cursor}",
            sim.sim.connection.arm
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let (status, _) = imds_token(&sim, "&bypass_cache=true").await;
    assert_eq!(status, 200);
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.contains("aad.token.issued") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("the event arrives")
            .expect("stream")
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: misim\ndata: {"), "{seen}");
    assert!(seen.find("imds.token.requested") < seen.find("aad.token.issued"));
}

#[tokio::test]
async fn advancing_the_clock_rolls_certificates_and_keys_and_expires_tokens() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let demo = sim.sim.connection.demo_vm.clone().expect("demo").id;
    let (_, before) = imds_token(&sim, "").await;
    let old_token = before["access_token"].as_str().expect("token").to_string();
    let old_kid = sim
        .verify(&old_token, "https://management.azure.com/")
        .await;
    drop(old_kid);
    let (_, vm) =
        crate::support::arm_call(&sim, &admin, Method::GET, &demo, "2024-07-01", None).await;
    let principal = vm["identity"]["principalId"]
        .as_str()
        .expect("principal")
        .to_string();
    let graph_admin = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let keys_before = key_credentials(&sim, &graph_admin, &principal).await;
    assert_eq!(keys_before.as_array().map(Vec::len), Some(1));
    let kids_before: Vec<Value> = sim.jwks().await["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].clone())
        .collect();

    // Backwards, zero and absurd moves are refused; so is anyone but the admin.
    for bad in [
        json!({"by": "-1d"}),
        json!({"by": "0s"}),
        json!({"by": "20000d"}),
        json!({"by": "soon"}),
        json!({}),
    ] {
        let (status, body) = sim_call(
            &sim,
            &admin,
            Method::POST,
            "/_sim/clock/advance",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "InvalidParameter");
    }
    let (status, _) = sim_call(
        &sim,
        &old_token,
        Method::POST,
        "/_sim/clock/advance",
        Some(json!({"by": "1d"})),
    )
    .await;
    assert_eq!(status, 403, "a VM's identity cannot move the clock");

    let (status, moved) = sim_call(
        &sim,
        &admin,
        Method::POST,
        "/_sim/clock/advance",
        Some(json!({"by": "46d"})),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["offsetSecs"], 46 * 86_400);
    assert_eq!(moved["pendingWork"], 0);
    let rolled = moved["rolledCredentials"].as_array().expect("rolled");
    assert!(
        rolled
            .iter()
            .any(|r| r["principalId"] == principal.as_str()),
        "{moved}"
    );

    // AAD holds the new certificate beside the old one (valid until day 90), the host uses it.
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let graph_admin = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let keys_after = key_credentials(&sim, &graph_admin, &principal).await;
    assert_eq!(keys_after.as_array().map(Vec::len), Some(2), "{keys_after}");
    let hosted = events(&sim, &admin, "kind=imds.credential.installed&vm=demo-vm").await;
    assert_eq!(hosted.len(), 2, "installed at creation and at the roll");

    // The old token expired at simulated time; the cached one is not served, a new one works.
    let (status, _) =
        crate::support::arm_call(&sim, &old_token, Method::GET, &demo, "2024-07-01", None).await;
    assert_eq!(status, 401);
    let (status, after) = imds_token(&sim, "").await;
    assert_eq!(status, 200);
    let new_token = after["access_token"].as_str().expect("token").to_string();
    assert_ne!(new_token, old_token);
    let claims = sim
        .verify(&new_token, "https://management.azure.com/")
        .await;
    assert_eq!(claims["oid"], principal.as_str());
    let (status, body) =
        crate::support::arm_call(&sim, &new_token, Method::GET, &demo, "2024-07-01", None).await;
    assert_eq!(status, 403, "authenticated, not authorized: {body}");

    // AAD rolled its signing key: a new kid signs, the previous one is still published.
    let kids_after: Vec<Value> = sim.jwks().await["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].clone())
        .collect();
    let header: Value = serde_json::from_slice(
        &misim_core::jose::b64_lenient(new_token.split('.').next().expect("header")).expect("b64"),
    )
    .expect("json");
    let old_header: Value = serde_json::from_slice(
        &misim_core::jose::b64_lenient(old_token.split('.').next().expect("header")).expect("b64"),
    )
    .expect("json");
    assert_ne!(header["kid"], old_header["kid"]);
    assert!(
        kids_after.contains(&old_header["kid"]),
        "the previous key stays in JWKS"
    );
    assert!(kids_after.contains(&header["kid"]));
    assert_ne!(kids_after, kids_before);

    // The clock shows the offset in every service.
    let (_, clock) = sim_call(&sim, &admin, Method::GET, "/_sim/clock", None).await;
    for service in ["aad", "imds"] {
        assert_eq!(
            clock["services"][service]["offsetSecs"],
            46 * 86_400,
            "{clock}"
        );
    }
    let rolls = events(&sim, &admin, "kind=aad.signing_key.rolled").await;
    assert_eq!(rolls.len(), 1);

    // A second move rolls AAD's key again, to one ARM has never seen: tokens signed with it
    // are accepted at once (the advance lets ARM refetch JWKS).
    let (status, _) = sim_call(
        &sim,
        &admin,
        Method::POST,
        "/_sim/clock/advance",
        Some(json!({"by": "46d"})),
    )
    .await;
    assert_eq!(status, 200);
    let fresh_admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let (status, body) = sim_call(&sim, &fresh_admin, Method::GET, "/_sim/clock", None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn clock_moves_asked_for_at_once_all_happen_one_after_another() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let advance = || {
        sim_call(
            &sim,
            &admin,
            Method::POST,
            "/_sim/clock/advance",
            Some(json!({"by": "10m"})),
        )
    };
    // Ten minutes each: the admin's token (an hour) outlives all four, whichever order ARM
    // authenticates them in. Each reads the offset and sets offset + 10 min on every
    // service. Unserialised, moves
    // overtook each other and were refused as moving backwards (a 400, or a 500 from AAD).
    let answers = tokio::join!(advance(), advance(), advance(), advance());
    let mut offsets = Vec::new();
    for (status, body) in [answers.0, answers.1, answers.2, answers.3] {
        assert_eq!(status, 200, "{body}");
        offsets.push(body["offsetSecs"].as_i64().expect("offsetSecs"));
    }
    offsets.sort_unstable();
    assert_eq!(offsets, [600, 1200, 1800, 2400]);
    let (_, clock) = sim_call(&sim, &admin, Method::GET, "/_sim/clock", None).await;
    assert_eq!(clock["offsetSecs"], 2400, "{clock}");
    sim.stop().await;
}

#[tokio::test]
async fn fault_plans_make_imds_and_aad_fail_as_asked() {
    let sim = TestSim::start_in(tempfile::tempdir().expect("dir"), |c| {
        c.imds_throttle = false
    })
    .await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let add = |plan: Value| {
        let (sim, admin) = (&sim, admin.clone());
        async move { sim_call(sim, &admin, Method::POST, "/_sim/faults", Some(plan)).await }
    };

    // A status for the next two requests of the demo VM, with Retry-After; then normal again.
    let (status, fault) = add(json!({"target": "imds", "vm": "demo-vm", "kind": "status", "status": 410, "retryAfter": 3, "count": 2})).await;
    assert_eq!(status, 201, "{fault}");
    // IMDSv2's probes and the metadata routes pass by the plan without using it up: a planned
    // 4xx on MSAL.NET's credential probe would read as "IMDSv2 available".
    let endpoint = sim.sim.connection.imds.clone().expect("imds");
    let probe = |method: Method, path: &str, metadata: bool| {
        let request = sim
            .http
            .request(method, format!("{endpoint}{path}"))
            .body(".");
        if metadata {
            request.header("Metadata", "true").send()
        } else {
            request.send()
        }
    };
    for (method, path, metadata, expected) in [
        (
            Method::GET,
            "/metadata/identity/getPlatformMetadata?api-version=2018-02-01",
            true,
            404,
        ),
        (
            Method::POST,
            "/metadata/identity/credential?cred-api-version=1.0",
            false,
            404,
        ),
        (Method::GET, "/metadata/versions", true, 200),
        (
            Method::GET,
            "/metadata/instance/compute/name?api-version=2021-02-01&format=text",
            true,
            200,
        ),
    ] {
        let response = probe(method, path, metadata).await.expect("probe");
        assert_eq!(response.status(), expected, "{path}");
        assert!(response.headers().get("retry-after").is_none(), "{path}");
    }
    for _ in 0..2 {
        let response = sim
            .http
            .get(format!("{endpoint}{TOKEN}"))
            .header("Metadata", "true")
            .send()
            .await
            .expect("imds");
        assert_eq!(response.status(), 410);
        assert_eq!(response.headers()["retry-after"], "3");
    }
    assert_eq!(imds_token(&sim, "").await.0, 200);

    // Dropped connections.
    add(json!({"target": "imds", "kind": "drop", "count": 1})).await;
    let endpoint = sim.sim.connection.imds.clone().expect("imds");
    assert!(
        sim.http
            .get(format!("{endpoint}{TOKEN}"))
            .header("Metadata", "true")
            .send()
            .await
            .is_err()
    );

    // AAD refusing: IMDS passes a retryable 5xx on; the admin (the control plane) is never hit.
    add(json!({"target": "aad", "kind": "status", "status": 503})).await;
    let (status, body) = imds_token(&sim, "&bypass_cache=true").await;
    assert!((500..600).contains(&status), "{status} {body}");
    // The App Service endpoint says the same in its own dialect, also with Retry-After.
    let app = misim::vm_env::vm_env(sim.dir.path(), "demo-vm", true)
        .await
        .expect("app service env");
    let var = |name: &str| {
        app.set
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .expect(name)
    };
    let app_service_token = || {
        sim.http
            .get(format!(
                "{}?api-version=2019-08-01&resource=https://vault.azure.net",
                var("IDENTITY_ENDPOINT")
            ))
            .header("X-IDENTITY-HEADER", var("IDENTITY_HEADER"))
            .send()
    };
    let response = app_service_token().await.expect("app service");
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["statusCode"], 500, "{body}");
    // A fault plan on the VM answers the App Service endpoint in that endpoint's dialect too,
    // with the plan's Retry-After.
    let (status, plan) = add(json!({"target": "imds", "vm": "demo-vm", "kind": "status", "status": 429, "retryAfter": 7, "count": 1})).await;
    assert_eq!(status, 201, "{plan}");
    let response = app_service_token().await.expect("app service");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["statusCode"], 429, "{body}");
    let plan_id = plan["id"].as_str().expect("plan id");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(plan_id)),
        "{body}"
    );
    assert!(body["correlationId"].is_string(), "{body}");
    assert!(body.get("error").is_none(), "not IMDS's dialect: {body}");
    let admin_again = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let (_, listed) = sim_call(&sim, &admin_again, Method::GET, "/_sim/faults", None).await;
    assert_eq!(
        listed["value"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let id = listed["value"][0]["id"].as_str().expect("id").to_string();
    let (status, _) = sim_call(
        &sim,
        &admin,
        Method::DELETE,
        &format!("/_sim/faults/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(imds_token(&sim, "&bypass_cache=true").await.0, 200);

    // Latency.
    add(json!({"target": "imds", "kind": "latency", "latencyMs": 300, "count": 1})).await;
    let started = std::time::Instant::now();
    assert_eq!(imds_token(&sim, "").await.0, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));

    // Bad plans and unknown targets.
    for (plan, status) in [
        (
            json!({"target": "imds", "kind": "status", "status": 200}),
            400,
        ),
        (json!({"target": "imds", "kind": "explode"}), 400),
        (json!({"target": "imds", "kind": "drop", "count": 0}), 400),
        (
            json!({"target": "imds", "kind": "drop", "probability": 2}),
            400,
        ),
        (
            json!({"target": "imds", "vm": "no-such-vm", "kind": "drop"}),
            404,
        ),
        (json!("not an object"), 400),
    ] {
        let (got, body) = add(plan.clone()).await;
        assert_eq!(got, status, "{plan}: {body}");
    }
    let (status, _) = sim_call(
        &sim,
        &admin,
        Method::DELETE,
        "/_sim/faults/00000000-0000-0000-0000-000000000000",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, cleared) = sim_call(&sim, &admin, Method::DELETE, "/_sim/faults", None).await;
    assert_eq!(status, 200, "{cleared}");
    let injected = events(&sim, &admin, "kind=imds.fault.injected").await;
    assert_eq!(
        injected.len(),
        5,
        "2 statuses, 1 on the App Service endpoint, 1 drop, 1 latency"
    );

    // Nobody but the admin.
    let (_, token) = imds_token(&sim, "").await;
    let token = token["access_token"].as_str().expect("token");
    let (status, _) = sim_call(
        &sim,
        token,
        Method::POST,
        "/_sim/faults",
        Some(json!({"target": "imds", "kind": "drop"})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = sim_call(&sim, token, Method::GET, "/_sim/events", None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn explain_says_what_a_token_stands_for() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let demo = sim.sim.connection.demo_vm.clone().expect("demo").id;
    let (_, token) = imds_token(&sim, "").await;
    let token = token["access_token"].as_str().expect("token");
    let (status, explained) = sim_call(
        &sim,
        &admin,
        Method::POST,
        "/_sim/explain",
        Some(json!({"token": token})),
    )
    .await;
    assert_eq!(status, 200, "{explained}");
    assert_eq!(explained["acceptedByArm"], true);
    assert_eq!(
        explained["principal"]["kind"],
        "system-assigned managed identity"
    );
    assert_eq!(explained["principal"]["vms"][0]["id"], demo.as_str());
    assert_eq!(explained["principal"]["roleAssignments"], json!([]));
    let (_, admin_explained) = sim_call(
        &sim,
        &admin,
        Method::POST,
        "/_sim/explain",
        Some(json!({"token": admin})),
    )
    .await;
    assert_eq!(
        admin_explained["principal"]["roleAssignments"][0]["role"],
        "Owner"
    );

    let forged = format!("{}x", &token[..token.len() - 2]);
    let (_, refused) = sim_call(
        &sim,
        &admin,
        Method::POST,
        "/_sim/explain",
        Some(json!({"token": forged})),
    )
    .await;
    assert_eq!(refused["acceptedByArm"], false, "{refused}");
    for bad in [
        json!({"token": "not-a-jwt"}),
        json!({}),
        json!({"token": "a.b.c"}),
    ] {
        let (status, body) = sim_call(
            &sim,
            &admin,
            Method::POST,
            "/_sim/explain",
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    for bad in [
        "/_sim/events?vm=no-such-vm",
        "/_sim/events?limit=0x",
        "/_sim/events?after=bogus",
    ] {
        let (status, body) = sim_call(&sim, &admin, Method::GET, bad, None).await;
        assert!(status == 404 || status == 400, "{bad}: {status} {body}");
    }
    let (status, _) = sim_call(&sim, &admin, Method::GET, "/_sim/nothing-here", None).await;
    assert_eq!(status, 400);
    let (status, _) = sim_call(&sim, &admin, Method::PUT, "/_sim/clock", None).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn a_deleted_vm_keeps_its_timeline() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let demo = sim.sim.connection.demo_vm.clone().expect("demo").id;
    let (_, vm) =
        crate::support::arm_call(&sim, &admin, Method::GET, &demo, "2024-07-01", None).await;
    let vm_id = vm["properties"]["vmId"].as_str().expect("vmId").to_string();
    assert_eq!(imds_token(&sim, "").await.0, 200);
    let (status, _) =
        crate::support::arm_call(&sim, &admin, Method::DELETE, &demo, "2024-07-01", None).await;
    assert!(status == 200 || status == 202 || status == 204, "{status}");
    for vm in ["demo-vm", vm_id.as_str(), demo.as_str()] {
        let (status, events) = sim_call(
            &sim,
            &admin,
            Method::GET,
            &format!("/_sim/events?vm={vm}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{vm}: {events}");
        let kinds = kinds(&events);
        assert!(
            kinds.iter().any(|k| k == "imds.vm.removed") || vm == demo.as_str(),
            "{vm}: {kinds:?}"
        );
        assert!(
            kinds.iter().any(|k| k == "imds.credential.removed"),
            "{vm}: {kinds:?}"
        );
        // By vmId only IMDS's events carry it; by name or resource id, the principals too.
        if vm != vm_id.as_str() {
            assert!(
                kinds.iter().any(|k| k == "aad.service_principal.deleted"),
                "{vm}: {kinds:?}"
            );
        }
    }
    let (status, _) = sim_call(
        &sim,
        &admin,
        Method::GET,
        "/_sim/events?vm=never-existed",
        None,
    )
    .await;
    assert_eq!(status, 404);
    // An expired or forged token at ARM is an event too.
    let (status, _) =
        crate::support::arm_call(&sim, "not-a-token", Method::GET, &demo, "2024-07-01", None).await;
    assert_eq!(status, 401);
    let refused = events(&sim, &admin, "kind=arm.request.unauthenticated").await;
    assert_eq!(refused.len(), 1);
}

#[tokio::test]
async fn certificate_and_signing_key_periods_are_configurable() {
    let sim = TestSim::start_in(tempfile::tempdir().expect("dir"), |c| {
        c.identity_cert_days = 10;
        c.identity_cert_roll_days = 5;
        c.signing_key_roll_days = 3;
    })
    .await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let (status, moved) = sim_call(
        &sim,
        &admin,
        Method::POST,
        "/_sim/clock/advance",
        Some(json!({"by": "4d"})),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["rolledCredentials"], json!([]), "not yet at day 5");
    // The admin's one-hour token expired with those 4 days.
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let (_, moved) = sim_call(
        &sim,
        &admin,
        Method::POST,
        "/_sim/clock/advance",
        Some(json!({"by": "2d"})),
    )
    .await;
    assert_eq!(
        moved["rolledCredentials"].as_array().map(Vec::len),
        Some(1),
        "{moved}"
    );
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let rolls = events(&sim, &admin, "kind=aad.signing_key.rolled").await;
    assert_eq!(rolls.len(), 2, "days 3 and 6");
    let (status, _) = imds_token(&sim, "").await;
    assert_eq!(status, 200);
}

/// POSTs `/_sim/clock/advance` by `by` as the admin.
async fn advance(sim: &TestSim, admin: &str, by: &str) {
    let (status, body) = sim_call(
        sim,
        admin,
        Method::POST,
        "/_sim/clock/advance",
        Some(json!({"by": by})),
    )
    .await;
    assert_eq!(status, 200, "{by}: {body}");
}

#[tokio::test]
async fn cached_imds_tokens_are_renewed_as_the_clock_nears_their_expiry() {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let installed = events(&sim, &admin, "kind=imds.credential.installed")
        .await
        .len();
    let (_, first) = imds_token(&sim, "").await;
    let (_, again) = imds_token(&sim, "").await;
    assert_eq!(again["access_token"], first["access_token"], "cached");
    let seconds = |body: &Value, field: &str| -> i64 {
        body[field]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("epoch string")
    };
    let lifetime = seconds(&first, "expires_in");
    assert!(lifetime > 3600, "{first}");
    // Up to five minutes before expiry the cached token is still served, with less time left.
    let margin = misim_imds::relay::REFRESH_BEFORE_EXPIRY_SECS;
    advance(&sim, &admin, &format!("{}s", lifetime - margin - 60)).await;
    let (_, late) = imds_token(&sim, "").await;
    assert_eq!(late["access_token"], first["access_token"], "still cached");
    let left = seconds(&late, "expires_in");
    assert!(left > margin && left <= margin + 60, "{late}");
    // Then IMDS asks AAD again: a new token with a full lifetime. (The admin's own token has
    // expired by now.)
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    advance(&sim, &admin, "120s").await;
    let (status, renewed) = imds_token(&sim, "").await;
    assert_eq!(status, 200, "{renewed}");
    assert_ne!(renewed["access_token"], first["access_token"]);
    assert!(seconds(&renewed, "expires_on") > seconds(&first, "expires_on"));
    assert!(seconds(&renewed, "expires_in") > lifetime - 120);
    sim.verify(
        renewed["access_token"].as_str().expect("token"),
        "https://management.azure.com/",
    )
    .await;
    // The clock alone did it: no credential was rolled (a roll also empties the cache).
    assert_eq!(
        events(&sim, &admin, "kind=imds.credential.installed")
            .await
            .len(),
        installed
    );
}

#[tokio::test]
async fn at_most_five_identity_requests_of_a_vm_run_at_once() {
    // Rate limits on (the default); AAD slowed down so that requests overlap at IMDS.
    // Four seconds: all seven must reach IMDS before the first is answered, on a slow runner too.
    let sim = with_slow_aad(4000, 7).await;
    let endpoint = sim.sim.connection.imds.clone().expect("demo imds");
    let url = format!("{endpoint}{TOKEN}&bypass_cache=true");
    let requests: Vec<_> = (0..7)
        .map(|_| tokio::spawn(imds_answer(sim.http.clone(), url.clone())))
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.expect("request task"));
    }
    let admitted = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!((admitted, refused.len()), (5, 2), "{answers:?}");
    for (_, retry_after) in refused {
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    // The slots are free again once the slow requests are answered.
    assert_eq!(imds_token(&sim, "&bypass_cache=true").await.0, 200);
}

/// A simulator whose AAD answers its next `count` requests `latency_ms` late.
async fn with_slow_aad(latency_ms: u64, count: u32) -> TestSim {
    let sim = TestSim::start().await;
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let plan = json!({"target": "aad", "kind": "latency", "latencyMs": latency_ms, "count": count});
    let (status, added) = sim_call(&sim, &admin, Method::POST, "/_sim/faults", Some(plan)).await;
    assert_eq!(status, 201, "{added}");
    sim
}

/// A token request: its status and Retry-After.
async fn imds_answer(http: reqwest::Client, url: String) -> (u16, Option<String>) {
    let response = http
        .get(url)
        .header("Metadata", "true")
        .send()
        .await
        .expect("imds");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (response.status().as_u16(), retry_after)
}

#[tokio::test]
async fn a_stalled_aad_gets_a_retryable_imds_error_not_a_hang() {
    // AAD accepts the connection and then says nothing for longer than IMDS waits (10 s).
    let sim = with_slow_aad(15_000, 1).await;
    let started = std::time::Instant::now();
    let endpoint = sim.sim.connection.imds.clone().expect("demo imds");
    let (status, retry_after) = imds_answer(
        sim.http.clone(),
        format!("{endpoint}{TOKEN}&bypass_cache=true"),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!((status, retry_after.as_deref()), (500, Some("1")));
    assert!(
        waited < std::time::Duration::from_secs(14),
        "IMDS gave up on AAD before the stall ended: {waited:?}"
    );
    // The stall was one request: the next one is answered.
    assert_eq!(imds_token(&sim, "&bypass_cache=true").await.0, 200);
}

#[tokio::test]
async fn a_vm_whose_port_was_taken_listens_elsewhere_and_says_so() {
    let first = TestSim::start().await;
    let endpoint = first.sim.connection.imds.clone().expect("demo imds");
    let port: u16 = endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let dir = first.stop().await;
    // Another process takes the demo VM's port while misim is down. (Should a parallel test
    // have taken it first, that one is the squatter.)
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
    let sim = TestSim::start_in(dir, |_| {}).await;
    // connection.json tells the new address.
    let moved_to = sim.sim.connection.imds.clone().expect("still hosted");
    assert_ne!(moved_to, endpoint);
    // imds_token asks connection.json's address: the moved one.
    let (status, body) = imds_token(&sim, "").await;
    assert_eq!(status, 200, "{body}");
    let admin = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let moved = events(&sim, &admin, "kind=imds.listener.moved").await;
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["details"]["wantedPort"], port);
    drop(squatter);
}
