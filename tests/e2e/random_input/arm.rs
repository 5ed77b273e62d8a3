//! ARM calls four at a time over a few shared names, then the directory and a restart checked.

use super::{Rng, Statuses, junk, odd_value, random_uuid, settings, upper_one};
use crate::support::TestSim;
use serde_json::{Map, Value, json};
use std::time::Duration;

const RG_API: &str = "2024-11-01";
const MSI_API: &str = "2024-11-30";
const VM_API: &str = "2024-11-01";
const AUTH_API: &str = "2022-04-01";

/// One ARM call of a random sequence.
struct ArmCall {
    method: reqwest::Method,
    path: String,
    api: String,
    body: Option<String>,
}

impl ArmCall {
    fn shown(&self) -> String {
        format!(
            "{} {}?api-version={} {}",
            self.method,
            self.path,
            self.api,
            self.body.as_deref().unwrap_or("")
        )
    }
}

/// The few names a random sequence works on, so that its calls meet each other's resources.
struct Universe {
    sub: String,
    /// Principal ids seen in answers: role assignments name them.
    principals: Vec<String>,
}

impl Universe {
    fn group(&self, rng: &mut Rng) -> String {
        let name = *rng.pick(&["rg1", "rg1", "rg2", "RG1"]);
        format!("{}/resourceGroups/{name}", self.sub)
    }

    fn identity(&self, rng: &mut Rng) -> String {
        let name = *rng.pick(&["ida", "idb", "idc", "IDA"]);
        format!(
            "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}",
            self.group(rng)
        )
    }

    fn vm(&self, rng: &mut Rng) -> String {
        let name = *rng.pick(&["v1", "v2"]);
        format!(
            "{}/providers/Microsoft.Compute/virtualMachines/{name}",
            self.group(rng)
        )
    }

    fn scope(&self, rng: &mut Rng) -> String {
        match rng.below(4) {
            0 => self.sub.clone(),
            1 => self.group(rng),
            2 => self.identity(rng),
            _ => self.vm(rng),
        }
    }

    fn principal(&self, rng: &mut Rng) -> Value {
        match rng.below(8) {
            0 => json!(random_uuid(rng)),
            1 => json!("not-a-guid"),
            2 => json!(5),
            _ if !self.principals.is_empty() => json!(rng.pick(&self.principals)),
            _ => json!(random_uuid(rng)),
        }
    }
}

fn identity_block(rng: &mut Rng, universe: &Universe) -> Value {
    let kind = json!(rng.pick(&[
        "SystemAssigned",
        "UserAssigned",
        "SystemAssigned, UserAssigned",
        "SystemAssigned,UserAssigned",
        "None",
        "systemassigned",
        "Everything",
    ]));
    let kind = odd_value(rng, kind);
    let mut block = json!({ "type": kind });
    if rng.chance(60) {
        let mut users = Map::new();
        for _ in 0..rng.below(3) {
            let id = match rng.below(6) {
                0 => {
                    let id = universe.identity(rng);
                    upper_one(rng, &id)
                }
                1 => format!(
                    "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities",
                    universe.sub
                ),
                2 => junk(rng),
                _ => universe.identity(rng),
            };
            let value = rng
                .pick(&[json!({}), json!({}), Value::Null, json!(5)])
                .clone();
            users.insert(id, value);
        }
        block["userAssignedIdentities"] = odd_value(rng, Value::Object(users));
    }
    block
}

fn arm_call(rng: &mut Rng, universe: &Universe) -> ArmCall {
    let location = |rng: &mut Rng| {
        let good = json!(rng.pick(&["eastus", "westeurope"]));
        odd_value(rng, good)
    };
    let tags = |rng: &mut Rng| {
        let good = json!({"team": "misim", "n": rng.pick(&["1", ""])});
        odd_value(rng, good)
    };
    let (method, path, api, body) = match rng.below(16) {
        0 => (
            reqwest::Method::PUT,
            universe.group(rng),
            RG_API,
            Some(json!({"location": location(rng), "tags": tags(rng)})),
        ),
        // Deleting a group takes everything in it: rarely, or little else would succeed.
        1 if rng.chance(12) => (reqwest::Method::DELETE, universe.group(rng), RG_API, None),
        2 | 3 => (
            reqwest::Method::PUT,
            universe.identity(rng),
            MSI_API,
            Some(json!({"location": location(rng), "tags": tags(rng)})),
        ),
        4 => (
            reqwest::Method::DELETE,
            universe.identity(rng),
            MSI_API,
            None,
        ),
        5 | 6 => {
            let mut body =
                json!({"location": location(rng), "identity": identity_block(rng, universe)});
            if rng.chance(30) {
                let os = odd_value(rng, json!("Windows"));
                body["properties"] = json!({"storageProfile": {"osDisk": {"osType": os}}});
            }
            (reqwest::Method::PUT, universe.vm(rng), VM_API, Some(body))
        }
        7 => (
            reqwest::Method::PATCH,
            universe.vm(rng),
            VM_API,
            Some(json!({"identity": identity_block(rng, universe)})),
        ),
        8 => (reqwest::Method::DELETE, universe.vm(rng), VM_API, None),
        9 | 10 => {
            let role = match rng.below(6) {
                0 => random_uuid(rng),
                1 => "b24988ac-6180-42a0-ab88-20f7382dd24c".to_string(),
                2 => "8e3af657-a8ff-443c-a75c-2fe8c4bcb635".to_string(),
                _ => "acdd72a7-3385-48ef-bd42-f606fba81ae7".to_string(),
            };
            let role_id = odd_value(
                rng,
                json!(format!(
                    "{}/providers/Microsoft.Authorization/roleDefinitions/{role}",
                    universe.sub
                )),
            );
            let name = *rng.pick(&[
                "11111111-1111-4111-8111-111111111111",
                "22222222-2222-4222-8222-222222222222",
                "33333333-3333-4333-8333-333333333333",
                "not-a-guid",
            ]);
            let path = format!(
                "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
                universe.scope(rng)
            );
            let principal = universe.principal(rng);
            (
                reqwest::Method::PUT,
                path,
                AUTH_API,
                Some(
                    json!({"properties": {"roleDefinitionId": role_id, "principalId": principal}}),
                ),
            )
        }
        11 => {
            let name = *rng.pick(&[
                "11111111-1111-4111-8111-111111111111",
                "22222222-2222-4222-8222-222222222222",
            ]);
            let path = format!(
                "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
                universe.scope(rng)
            );
            (reqwest::Method::DELETE, path, AUTH_API, None)
        }
        12 => {
            let name = *rng.pick(&["fic1", "fic2", "bad name!"]);
            let path = format!(
                "{}/federatedIdentityCredentials/{name}",
                universe.identity(rng)
            );
            let issuer = odd_value(rng, json!("https://token.actions.githubusercontent.com"));
            let subject = json!(format!("repo:misim/app:{}", rng.below(3)));
            let subject = odd_value(rng, subject);
            let audiences = odd_value(rng, json!(["api://AzureADTokenExchange"]));
            let properties = json!({"issuer": issuer, "subject": subject, "audiences": audiences});
            let body = json!({ "properties": properties });
            (reqwest::Method::PUT, path, MSI_API, Some(body))
        }
        // The simulator's own API, in flight with the rest: the clock moves (credentials roll
        // and are delivered meanwhile), faults and explanations are asked for oddly.
        14 => {
            let by = rng.pick(&[
                "1d", "46d", "1w", "2w", "1d12h", "90m", "0s", "-1d", "1y", "10000w", "", "soon",
            ]);
            let by = odd_value(rng, json!(by));
            (
                reqwest::Method::POST,
                "/_sim/clock/advance".to_string(),
                "",
                Some(json!({ "by": by })),
            )
        }
        15 => match rng.below(4) {
            0 => {
                let token = rng.pick(&["eyJhbGciOiJub25lIn0.e30.", "not a token", ""]);
                let token = odd_value(rng, json!(token));
                (
                    reqwest::Method::POST,
                    "/_sim/explain".to_string(),
                    "",
                    Some(json!({ "token": token })),
                )
            }
            1 => {
                // Plans only at IMDS, for a VM of the sequence or none: AAD plans would delay
                // ARM's own deliveries past the end of the test.
                let kind = rng.pick(&["status", "latency", "drop", "teapot"]);
                let vm = rng.pick(&["v1", "nowhere"]);
                let status = rng
                    .pick(&[json!(503), json!(200), json!(600), json!("503")])
                    .clone();
                let count = rng
                    .pick(&[json!(1), json!(0), json!(-1), json!(1e20)])
                    .clone();
                let plan = json!({"target": "imds", "vm": vm, "kind": kind, "status": status,
                    "count": count, "latencyMs": rng.pick(&[1, 0, 500_000])});
                (
                    reqwest::Method::POST,
                    "/_sim/faults".to_string(),
                    "",
                    Some(odd_value(rng, plan)),
                )
            }
            2 => (
                reqwest::Method::DELETE,
                format!("/_sim/faults/{}", junk(rng).replace(['/', '?'], "")),
                "",
                None,
            ),
            _ => (reqwest::Method::GET, "/_sim/events".to_string(), "", None),
        },
        _ => {
            let path = match rng.below(4) {
                0 => format!(
                    "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities",
                    universe.group(rng)
                ),
                1 => format!(
                    "{}/providers/Microsoft.Authorization/roleAssignments",
                    universe.scope(rng)
                ),
                2 => universe.vm(rng),
                _ => universe.identity(rng),
            };
            let api = if path.contains("Authorization") {
                AUTH_API
            } else if path.contains("Compute") {
                VM_API
            } else {
                MSI_API
            };
            (reqwest::Method::GET, path, api, None)
        }
    };
    let mut api = if rng.chance(5) {
        match rng.below(6) {
            0 => junk(rng),
            // Byte 10 inside a character.
            1 => "%E2%82%AC%E2%82%AC%E2%82%AC%E2%82%AC".to_string(),
            _ => rng
                .pick(&["2010-01-01", "", "latest", "2024-11-30%26x%3D1"])
                .to_string(),
        }
    } else {
        api.to_string()
    };
    // Query parameters ride on the api-version (the URL is `…?api-version={api}`).
    if path == "/_sim/events" {
        let limit = rng.pick(&["1", "0", "10001", "x", "-5"]);
        let after = rng.pick(&[
            "arm:0,aad:0,imds:0",
            "junk",
            "arm:-1",
            "arm:99999999999999999999",
        ]);
        let kind = rng.pick(&["arm.", "imds.token.requested", "%FF"]);
        api.push_str(&format!("&limit={limit}&after={after}&kind={kind}"));
    }
    if method == reqwest::Method::GET && rng.chance(30) {
        let skip = rng.pick(&["1", "2", "-1", "x", "18446744073709551615"]);
        let top = rng.pick(&["1", "1000", "0", "1001", "18446744073709551615"]);
        api.push_str(&format!("&$skiptoken={skip}&$top={top}"));
    }
    let body = body.map(|body| match rng.below(25) {
        0 => "{\"location\":".to_string(),
        1 => "[]".to_string(),
        2 => "null".to_string(),
        3 => junk(rng),
        _ => body.to_string(),
    });
    ArmCall {
        method,
        path,
        api,
        body,
    }
}

/// Sends `call`; returns the status and JSON answer, or what was wrong with the answer.
async fn send_arm(sim: &TestSim, token: &str, call: &ArmCall) -> Result<(u16, Value), String> {
    let url = format!(
        "{}{}?api-version={}",
        sim.sim.connection.arm, call.path, call.api
    );
    let mut request = sim
        .http
        .request(call.method.clone(), url)
        .bearer_auth(token);
    if let Some(body) = &call.body {
        request = request
            .header("content-type", "application/json")
            .body(body.clone());
    }
    let response = request.send().await.map_err(|e| format!("send: {e}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| format!("body: {e}"))?;
    if status >= 500 {
        return Err(format!("{status} {text}"));
    }
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|_| format!("{status}, not JSON: {text}"))?
    };
    if status >= 400 && !(body["error"]["code"].is_string() && body["error"]["message"].is_string())
    {
        return Err(format!("{status}, not ARM's error envelope: {body}"));
    }
    Ok((status, body))
}

/// Every principal id an ARM answer names (identities' and VMs' identities').
fn principals_in(body: &Value, into: &mut Vec<String>) {
    match body {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "principalId"
                    && let Some(id) = value.as_str()
                    && !into.iter().any(|p| p == id)
                {
                    into.push(id.to_string());
                }
                principals_in(value, into);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| principals_in(item, into)),
        _ => {}
    }
}

#[tokio::test]
async fn random_arm_calls_in_flight_together_leave_arm_and_aad_in_step_across_a_restart() {
    let sim = TestSim::start().await;
    let mut token = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    let mut universe = Universe {
        sub: format!("/subscriptions/{}", sim.sim.connection.subscription_id),
        principals: Vec::new(),
    };
    for group in ["rg1", "rg2"] {
        let call = ArmCall {
            method: reqwest::Method::PUT,
            path: format!("{}/resourceGroups/{group}", universe.sub),
            api: RG_API.into(),
            body: Some(json!({"location": "eastus"}).to_string()),
        };
        assert_eq!(send_arm(&sim, &token, &call).await.expect("group").0, 201);
    }
    let (seed, cases) = settings();
    let mut statuses = Statuses::default();
    // Four calls at a time: interleavings that sequential calls never make.
    for batch in 0..cases.div_ceil(4) {
        // A fresh token each batch: a clock advance in the last one may have expired the old.
        token = sim
            .admin_token("https://management.azure.com/.default")
            .await;
        let calls: Vec<ArmCall> = (0..4)
            .map(|i| arm_call(&mut Rng::new(seed, batch * 4 + i), &universe))
            .collect();
        let (a, b, c, d) = tokio::join!(
            send_arm(&sim, &token, &calls[0]),
            send_arm(&sim, &token, &calls[1]),
            send_arm(&sim, &token, &calls[2]),
            send_arm(&sim, &token, &calls[3]),
        );
        for (i, outcome) in [a, b, c, d].into_iter().enumerate() {
            match outcome {
                Ok((status, body)) => {
                    statuses.record(status);
                    principals_in(&body, &mut universe.principals);
                }
                Err(failure) => panic!(
                    "case {} of seed {seed}: {failure}\ncall: {}",
                    batch * 4 + i as u64,
                    calls[i].shown()
                ),
            }
        }
    }
    statuses.print("ARM's answers", cases);
    assert!(statuses.successes() >= cases / 5, "{statuses:?}");
    // Whatever succeeded or failed, ARM and AAD agree once provisioning is delivered.
    for _ in 0..100 {
        if sim.sim.arm.pending_work().await.expect("outbox") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Delivered rows leave their resources `Updating` until the next delivery pass settles
    // them; one more pass now, so that nothing changes state across the restart by itself.
    sim.sim.arm.deliver().await;
    crate::arm::assert_directory_matches(&sim).await;
    // And a restart serves exactly what was there: whatever the sequence left, and one VM with
    // both kinds of identity made now, so that there is always something to compare.
    let kept_identity = format!(
        "{}/resourceGroups/kept/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kept-id",
        universe.sub
    );
    let kept_vm = format!(
        "{}/resourceGroups/kept/providers/Microsoft.Compute/virtualMachines/kept-vm",
        universe.sub
    );
    let token = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    for (path, api, body) in [
        (
            format!("{}/resourceGroups/kept", universe.sub),
            RG_API,
            json!({"location": "eastus"}),
        ),
        (
            kept_identity.clone(),
            MSI_API,
            json!({"location": "eastus"}),
        ),
        (
            kept_vm.clone(),
            VM_API,
            json!({"location": "eastus", "identity": {"type": "SystemAssigned, UserAssigned",
                "userAssignedIdentities": {kept_identity.clone(): {}}}}),
        ),
    ] {
        let call = ArmCall {
            method: reqwest::Method::PUT,
            path,
            api: api.into(),
            body: Some(body.to_string()),
        };
        let (status, answer) = send_arm(&sim, &token, &call).await.expect("PUT");
        assert!(status < 300, "{}: {status} {answer}", call.shown());
    }
    sim.sim.arm.deliver().await;
    let mut paths = vec![(kept_identity, MSI_API), (kept_vm, VM_API)];
    let probe = Universe {
        sub: universe.sub.clone(),
        principals: Vec::new(),
    };
    for case in 0..64 {
        let mut rng = Rng::new(seed ^ 0xA5A5, case);
        let call = match rng.below(3) {
            0 => (probe.identity(&mut rng), MSI_API),
            1 => (probe.vm(&mut rng), VM_API),
            _ => (
                format!(
                    "{}/providers/Microsoft.Authorization/roleAssignments",
                    probe.scope(&mut rng)
                ),
                AUTH_API,
            ),
        };
        if !paths.contains(&call) {
            paths.push(call);
        }
    }
    let mut before = Vec::new();
    for (path, api) in &paths {
        let call = ArmCall {
            method: reqwest::Method::GET,
            path: path.clone(),
            api: api.to_string(),
            body: None,
        };
        before.push(send_arm(&sim, &token, &call).await.expect("GET"));
    }
    // The kept identity and VM at least were there to compare, not only 404s.
    let found = before
        .iter()
        .filter(|(status, body)| *status == 200 && body["id"].is_string())
        .count();
    assert!(found >= 2, "the kept identity and VM are missing");
    let dir = sim.stop().await;
    let sim = TestSim::start_in(dir, |_| {}).await;
    let token = sim
        .admin_token("https://management.azure.com/.default")
        .await;
    for ((path, api), before) in paths.iter().zip(before) {
        let call = ArmCall {
            method: reqwest::Method::GET,
            path: path.clone(),
            api: api.to_string(),
            body: None,
        };
        let after = send_arm(&sim, &token, &call).await.expect("GET");
        assert_eq!(after, before, "{path} across a restart");
    }
    crate::arm::assert_directory_matches(&sim).await;
    sim.stop().await;
}
