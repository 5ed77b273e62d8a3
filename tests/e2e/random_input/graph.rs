//! Graph calls on applications (their federated credentials too) and service principals, each
//! meeting what earlier ones made.

use super::{Rng, Statuses, escape_all, junk, odd_value, random_uuid, settings};
use crate::support::{ClientCert, TestSim};
use misim_core::jose::b64std;
use serde_json::{Map, Value, json};

/// What a random Graph sequence has made so far, for later calls to name.
#[derive(Default)]
struct Directory {
    /// (object id, appId) of applications.
    applications: Vec<(String, String)>,
    service_principals: Vec<String>,
    password_key_ids: Vec<String>,
}

fn graph_time(rng: &mut Rng, now: i64) -> Value {
    let at = |unix: i64| {
        time::OffsetDateTime::from_unix_timestamp(unix)
            .expect("time")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format")
    };
    match rng.below(10) {
        0 => json!("9999-12-31T23:59:59Z"),
        1 => json!("0000-01-01T00:00:00Z"),
        2 => json!("2026-13-01T00:00:00Z"),
        3 => json!("not a date"),
        4 => json!(5),
        5 => json!(at(now - 86_400 * 400)),
        _ => json!(at(now + 86_400 * (1 + rng.below(700) as i64))),
    }
}

fn application_body(rng: &mut Rng, cert: &ClientCert, now: i64) -> Value {
    let mut body = Map::new();
    if rng.chance(90) {
        let name = json!(format!("random-app-{}", rng.below(1000)));
        body.insert("displayName".into(), odd_value(rng, name));
    }
    if rng.chance(20) {
        let uris = rng
            .pick(&[
                json!(["api://misim-random"]),
                json!([]),
                json!([1]),
                json!("api://x"),
            ])
            .clone();
        body.insert("identifierUris".into(), uris);
    }
    if rng.chance(15) {
        let version = rng
            .pick(&[json!(1), json!(2), json!(3), Value::Null, json!("2")])
            .clone();
        body.insert(
            "api".into(),
            json!({ "requestedAccessTokenVersion": version }),
        );
    }
    if rng.chance(50) {
        let mut keys = Vec::new();
        for _ in 0..rng.below(3) {
            let mut key = Map::new();
            let pem = misim_core::crypto::pem_encode("CERTIFICATE", &cert.der);
            let encoded = match rng.below(8) {
                0 => json!(pem),
                1 => json!(b64std(pem.as_bytes())),
                2 => json!(junk(rng)),
                3 => json!(5),
                4 => json!(""),
                _ => json!(cert.b64()),
            };
            if rng.chance(95) {
                key.insert("key".into(), encoded);
            }
            let kind = rng
                .pick(&[json!("AsymmetricX509Cert"), json!("Symmetric"), json!(5)])
                .clone();
            if rng.chance(70) {
                key.insert("type".into(), kind);
            }
            key.insert("usage".into(), json!("Verify"));
            if rng.chance(30) {
                let fresh = json!(random_uuid(rng));
                let id = rng.pick(&[fresh, json!("not-a-guid"), json!(5)]).clone();
                key.insert("keyId".into(), id);
            }
            if rng.chance(40) {
                key.insert("startDateTime".into(), graph_time(rng, now - 86_400 * 800));
            }
            if rng.chance(40) {
                key.insert("endDateTime".into(), graph_time(rng, now));
            }
            keys.push(Value::Object(key));
        }
        body.insert("keyCredentials".into(), odd_value(rng, Value::Array(keys)));
    }
    Value::Object(body)
}

/// Names of federated credentials a sequence uses: valid ones that later calls meet, and not.
const CREDENTIAL_NAMES: [&str; 7] = ["cred-1", "cred-2", "x.y~z", "has space", "", "é", ".."];

fn federated_credential_body(rng: &mut Rng) -> Value {
    let mut body = Map::new();
    let name = json!(rng.pick(&CREDENTIAL_NAMES));
    let issuer = json!(rng.pick(&[
        "https://issuer.example",
        "",
        "https://token.actions.githubusercontent.com"
    ]));
    let subject = json!(format!("s{}", rng.below(3)));
    let audiences = rng
        .pick(&[
            json!(["api://AzureADTokenExchange"]),
            json!([]),
            json!(["a", "b"]),
            json!("api://AzureADTokenExchange"),
            json!([5]),
        ])
        .clone();
    let description = rng.pick(&[json!("d"), Value::Null, json!(5)]).clone();
    for (field, value) in [
        ("name", name),
        ("issuer", issuer),
        ("subject", subject),
        ("audiences", audiences),
        ("description", description),
    ] {
        if rng.chance(85) {
            body.insert(field.into(), odd_value(rng, value));
        }
    }
    if rng.chance(10) {
        body.insert(junk(rng), json!(1));
    }
    odd_value(rng, Value::Object(body))
}

/// One Graph call of a random sequence: method, path (with query), JSON body.
fn graph_call(
    rng: &mut Rng,
    directory: &Directory,
    cert: &ClientCert,
    now: i64,
) -> (reqwest::Method, String, Option<Value>) {
    use reqwest::Method;
    let application = |rng: &mut Rng| match directory.applications.is_empty() || rng.chance(15) {
        true => random_uuid(rng),
        false => rng.pick(&directory.applications).0.clone(),
    };
    let app_id = |rng: &mut Rng| match directory.applications.is_empty() || rng.chance(15) {
        true => random_uuid(rng),
        false => rng.pick(&directory.applications).1.clone(),
    };
    let principal = |rng: &mut Rng| match directory.service_principals.is_empty() || rng.chance(15)
    {
        true => random_uuid(rng),
        false => rng.pick(&directory.service_principals).clone(),
    };
    match rng.below(15) {
        0..=2 => (
            Method::POST,
            "applications".into(),
            Some(application_body(rng, cert, now)),
        ),
        3 => {
            let id = application(rng);
            (
                Method::PATCH,
                format!("applications/{id}"),
                Some(application_body(rng, cert, now)),
            )
        }
        4 if rng.chance(50) => (
            Method::DELETE,
            format!("applications/{}", application(rng)),
            None,
        ),
        5 => {
            let end = graph_time(rng, now);
            let name = odd_value(rng, json!("random secret"));
            let credential = json!({"displayName": name, "endDateTime": end});
            let body = odd_value(rng, json!({ "passwordCredential": credential }));
            (
                Method::POST,
                format!("applications/{}/addPassword", application(rng)),
                Some(body),
            )
        }
        6 => {
            let key_id = match directory.password_key_ids.is_empty() || rng.chance(30) {
                true => {
                    let fresh = json!(random_uuid(rng));
                    rng.pick(&[fresh, json!(5), json!("x")]).clone()
                }
                false => json!(rng.pick(&directory.password_key_ids)),
            };
            (
                Method::POST,
                format!("applications/{}/removePassword", application(rng)),
                Some(json!({ "keyId": key_id })),
            )
        }
        7 | 8 => {
            let id = app_id(rng);
            let body = odd_value(rng, json!({ "appId": id }));
            (Method::POST, "servicePrincipals".into(), Some(body))
        }
        9 => (
            Method::DELETE,
            format!("servicePrincipals/{}", principal(rng)),
            None,
        ),
        10 => {
            let entity = *rng.pick(&["applications", "servicePrincipals"]);
            let mut query = Vec::new();
            if rng.chance(50) {
                let id = app_id(rng);
                let filter = match rng.below(6) {
                    0 => format!("appId eq '{id}'"),
                    1 => "startswith(displayName,'random')".to_string(),
                    2 => format!("servicePrincipalNames/any(x:x eq '{id}')"),
                    3 => "displayName eq 'it''s'".to_string(),
                    4 => junk(rng),
                    _ => "appId eq ".to_string(),
                };
                query.push(format!("$filter={}", escape_all(&filter)));
            }
            if rng.chance(40) {
                let top = rng.pick(&[
                    "1",
                    "2",
                    "999",
                    "0",
                    "1000",
                    "-1",
                    "x",
                    "18446744073709551615",
                ]);
                query.push(format!("$top={top}"));
            }
            if rng.chance(40) {
                let skip = rng.pick(&[
                    "1",
                    "3",
                    "-1",
                    "x",
                    "18446744073709551615",
                    "9223372036854775807",
                ]);
                query.push(format!("$skiptoken={skip}"));
            }
            if rng.chance(20) {
                query.push("$select=id,appId".into());
            }
            (Method::GET, format!("{entity}?{}", query.join("&")), None)
        }
        11 => {
            let id = app_id(rng);
            let key = match rng.below(5) {
                0 => format!("applications(appId='{}')", escape_all(&junk(rng))),
                1 => format!("servicePrincipals(appId='{id}')"),
                2 => format!("applications(appId={id})"),
                _ => format!("applications(appId='{id}')"),
            };
            (Method::GET, key, None)
        }
        13 | 14 => {
            let credentials = format!(
                "applications/{}/federatedIdentityCredentials",
                application(rng)
            );
            let name = *rng.pick(&CREDENTIAL_NAMES);
            let named = format!("{credentials}/{}", escape_all(name));
            match rng.below(5) {
                0 | 1 => (
                    Method::POST,
                    credentials,
                    Some(federated_credential_body(rng)),
                ),
                2 => (Method::PATCH, named, Some(federated_credential_body(rng))),
                3 => (Method::GET, credentials, None),
                _ => (
                    rng.pick(&[Method::GET, Method::DELETE]).clone(),
                    named,
                    None,
                ),
            }
        }
        _ => {
            let mut ids = Vec::new();
            for _ in 0..rng.below(4) {
                ids.push(match rng.below(3) {
                    0 => json!(principal(rng)),
                    1 => json!(application(rng)),
                    _ => json!(5),
                });
            }
            let types = odd_value(rng, json!(["servicePrincipal", "application"]));
            let body = odd_value(rng, json!({"ids": ids, "types": types}));
            (Method::POST, "directoryObjects/getByIds".into(), Some(body))
        }
    }
}

#[tokio::test]
async fn random_graph_calls_get_objects_or_graph_errors() {
    let sim = TestSim::start().await;
    let token = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let cert = ClientCert::new();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (seed, cases) = settings();
    let mut directory = Directory::default();
    let mut statuses = Statuses::default();
    for case in 0..cases {
        let mut rng = Rng::new(seed, case);
        let (method, path, body) = graph_call(&mut rng, &directory, &cert, now);
        let shown = || format!("case {case} of seed {seed}: {method} {path} {body:?}");
        let url = format!("{}/v1.0/{path}", sim.sim.connection.graph);
        let mut request = sim.http.request(method.clone(), url).bearer_auth(&token);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", shown()));
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        assert!(status < 500, "{}: {status} {text}", shown());
        let answer: Value = match text.is_empty() {
            true => Value::Null,
            false => serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{}: {status}, not JSON: {text}", shown())),
        };
        if status >= 400 {
            assert!(
                answer["error"]["code"].is_string() && answer["error"]["message"].is_string(),
                "{}: {status}, not Graph's error shape: {answer}",
                shown()
            );
        }
        statuses.record(status);
        // Remember what was made, so that later calls meet it.
        if status == 201 && path == "applications" {
            let id = answer["id"].as_str().expect("id").to_string();
            let app_id = answer["appId"].as_str().expect("appId").to_string();
            directory.applications.push((id, app_id));
        } else if status == 201 && path == "servicePrincipals" {
            directory
                .service_principals
                .push(answer["id"].as_str().expect("id").to_string());
        } else if status == 200 && path.ends_with("/addPassword") {
            directory
                .password_key_ids
                .push(answer["keyId"].as_str().expect("keyId").to_string());
        }
    }
    // Whatever was sent, what Graph holds keeps its rules: at most 20 credentials per
    // application, names and issuer + subject pairs unique, every one valid.
    for (object_id, _) in &directory.applications {
        let path = format!("applications/{object_id}/federatedIdentityCredentials?$top=999");
        let (status, list) = sim.graph(reqwest::Method::GET, &path, &token, None).await;
        if status == 404 {
            continue;
        }
        let held = list["value"].as_array().expect("a list");
        assert!(held.len() <= 20, "{object_id}: {list}");
        let names: std::collections::HashSet<_> = held
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_ascii_lowercase())
            .collect();
        let pairs: std::collections::HashSet<_> = held
            .iter()
            .map(|c| (c["issuer"].to_string(), c["subject"].to_string()))
            .collect();
        assert_eq!(
            (names.len(), pairs.len()),
            (held.len(), held.len()),
            "{list}"
        );
        for credential in held {
            assert!(
                misim_core::federation::valid_name(credential["name"].as_str().expect("name"))
                    && credential["audiences"].as_array().map(Vec::len) == Some(1),
                "{credential}"
            );
        }
    }
    statuses.print("Graph's answers", cases);
    assert!(statuses.successes() >= cases / 5, "{statuses:?}");
    sim.stop().await;
}
