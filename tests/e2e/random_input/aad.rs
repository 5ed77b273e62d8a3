//! Token requests at AAD's v1 and v2 endpoints with client assertions made and broken at random.

use super::{Rng, junk, random_uuid, settings, upper_one};
use crate::support::{ClientCert, TestSim, register_app};
use misim_core::crypto::{JwsAlg, RsaKey, sha1, sha256};
use misim_core::jose::{b64std, b64url};
use serde_json::{Map, Value, json};

/// The cases' view of the registered application AAD's answers are checked against.
struct App {
    app_id: String,
    cert: ClientCert,
    other_key: RsaKey,
    admin_id: String,
    admin_secret: String,
    tenant: String,
    /// AAD's base URL: assertions name its token endpoints as their audience.
    aad: String,
}

/// A JSON value of a claim as clients get them wrong: other types, out of range, absent.
fn odd_claim(rng: &mut Rng, good: Value, now: i64) -> Option<Value> {
    if rng.chance(85) {
        return Some(good);
    }
    Some(match rng.below(12) {
        0 => return None,
        1 => Value::Null,
        2 => json!(true),
        3 => json!(now - 10_000),
        4 => json!(now + 10_000_000),
        5 => json!((now + 600) as f64 + 0.5),
        6 => json!((now + 600).to_string()),
        7 => json!("soon"),
        8 => json!(1e300),
        9 => json!(-1),
        10 => json!(i64::MAX),
        _ => json!([good]),
    })
}

/// A client assertion for `app`, most often well made, otherwise broken in one or more ways.
/// Returns it with whether its signature is genuine (the app's key over these exact bytes).
fn assertion(rng: &mut Rng, app: &App, audience: &str, now: i64) -> (String, bool) {
    if rng.chance(5) {
        return (junk(rng), false);
    }
    let mut header = Map::new();
    let sign_alg = if rng.chance(30) {
        JwsAlg::Ps256
    } else {
        JwsAlg::Rs256
    };
    let alg = if rng.chance(90) {
        json!(sign_alg.name())
    } else {
        rng.pick(&[
            json!("none"),
            json!("HS256"),
            json!("ES256"),
            json!("rs256"),
            json!(""),
            json!(5),
            Value::Null,
        ])
        .clone()
    };
    if rng.chance(97) {
        header.insert("alg".into(), alg);
    }
    if rng.chance(80) {
        header.insert("typ".into(), json!("JWT"));
    }
    let thumbprint = sha1(&app.cert.der);
    match rng.below(10) {
        0 => {
            header.insert("x5t#S256".into(), json!(b64url(&sha256(&app.cert.der))));
        }
        1 => {
            header.insert("x5t".into(), json!(b64std(&thumbprint)));
        }
        2 => {
            let other: Vec<u8> = (0..20).map(|_| rng.next() as u8).collect();
            header.insert("x5t".into(), json!(b64url(&other)));
        }
        3 => {
            header.insert(
                "x5t".into(),
                rng.pick(&[json!(""), json!(7), Value::Null]).clone(),
            );
        }
        4 => {}
        _ => {
            header.insert("x5t".into(), json!(b64url(&thumbprint)));
        }
    }
    let mut claims = Map::new();
    let client = |rng: &mut Rng| match rng.below(10) {
        0 => json!(random_uuid(rng)),
        1 => json!(upper_one(rng, &app.app_id)),
        2 => json!(5),
        _ => json!(app.app_id),
    };
    let iss = client(rng);
    let sub = if rng.chance(85) {
        iss.clone()
    } else {
        client(rng)
    };
    let aud = match rng.below(10) {
        0 => json!([audience]),
        1 => json!("https://login.microsoftonline.com/common/oauth2/token"),
        2 => json!(5),
        _ => json!(audience),
    };
    let entries = [
        ("iss", Some(iss)),
        ("sub", Some(sub)),
        ("aud", if rng.chance(97) { Some(aud) } else { None }),
        ("exp", odd_claim(rng, json!(now + 600), now)),
        ("nbf", odd_claim(rng, json!(now - 60), now)),
        ("jti", {
            let jti = json!(random_uuid(rng));
            odd_claim(rng, jti, now)
        }),
    ];
    for (name, value) in entries {
        if let Some(value) = value {
            claims.insert(name.into(), value);
        }
    }
    let encode = |rng: &mut Rng, bytes: &[u8]| {
        if rng.chance(95) {
            b64url(bytes)
        } else {
            b64std(bytes)
        }
    };
    let signing_input = format!(
        "{}.{}",
        encode(rng, Value::Object(header).to_string().as_bytes()),
        encode(rng, Value::Object(claims).to_string().as_bytes())
    );
    let signature = |key: &RsaKey| key.sign(sign_alg, signing_input.as_bytes()).expect("sign");
    let (signature, genuine) = match rng.below(20) {
        0 => (Vec::new(), false),
        1 => ((0..256).map(|_| rng.next() as u8).collect(), false),
        2 => {
            let mut good = signature(&app.cert.key);
            good.truncate(200);
            (good, false)
        }
        3 => (signature(&app.other_key), false),
        4 => {
            let mut good = signature(&app.cert.key);
            good[17] ^= 0x40;
            (good, false)
        }
        _ => (signature(&app.cert.key), true),
    };
    let mut token = format!("{signing_input}.{}", b64url(&signature));
    if rng.chance(3) {
        token.push_str(".extra");
    }
    (token, genuine)
}

/// What the AAD case sent, for the checks of its answer.
struct TokenCase {
    path: String,
    body: String,
    content_type: Option<&'static str>,
    /// A credential AAD must accept: a genuinely signed assertion of the app, or the admin's
    /// secret with the admin's client id (a 200 for anything else is a hole).
    could_succeed: bool,
}

fn token_case(rng: &mut Rng, app: &App, now: i64) -> TokenCase {
    let tenant = match rng.below(12) {
        0 => "common".to_string(),
        1 => "organizations".to_string(),
        2 => random_uuid(rng),
        3 => upper_one(rng, &app.tenant),
        4 => rng.pick(&["not-a-tenant", "%FF", "%C3"]).to_string(),
        _ => app.tenant.clone(),
    };
    let v2 = rng.chance(50);
    let path = if v2 {
        format!("/{tenant}/oauth2/v2.0/token")
    } else {
        format!("/{tenant}/oauth2/token")
    };
    let mut fields: Vec<(String, String)> = Vec::new();
    let grant = if rng.chance(88) {
        "client_credentials".to_string()
    } else {
        rng.pick(&[
            "authorization_code",
            "password",
            "refresh_token",
            "",
            "client_credential",
        ])
        .to_string()
    };
    if rng.chance(97) {
        fields.push(("grant_type".into(), grant));
    }
    let use_admin = rng.chance(15);
    let client_id = match rng.below(12) {
        0 => random_uuid(rng),
        1 => upper_one(rng, &app.app_id),
        2 => String::new(),
        _ if use_admin => app.admin_id.clone(),
        _ => app.app_id.clone(),
    };
    if rng.chance(96) {
        fields.push(("client_id".into(), client_id.clone()));
    }
    let audience = format!(
        "{}/{tenant}/oauth2/{}token",
        app.aad,
        if v2 { "v2.0/" } else { "" }
    );
    let mut could_succeed = false;
    if use_admin {
        let secret = if rng.chance(80) {
            app.admin_secret.clone()
        } else {
            "wrong-secret".to_string()
        };
        could_succeed = secret == app.admin_secret && client_id == app.admin_id;
        fields.push(("client_secret".into(), secret));
    } else if rng.chance(95) {
        let (token, genuine) = assertion(rng, app, &audience, now);
        could_succeed = genuine;
        let kind = if rng.chance(92) {
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        } else {
            rng.pick(&[
                "",
                "jwt-bearer",
                "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            ])
        };
        fields.push(("client_assertion_type".into(), kind.to_string()));
        fields.push(("client_assertion".into(), token));
        if rng.chance(4) {
            fields.push(("client_secret".into(), "also-a-secret".into()));
        }
    }
    let target = match rng.below(10) {
        0 => "https://graph.microsoft.com",
        1 => "https://vault.azure.net",
        2 => "api://misim-unknown",
        3 => "",
        _ => "https://management.azure.com",
    };
    if v2 {
        let scope = match rng.below(10) {
            0 => format!("{target}/user_impersonation"),
            1 => format!("{target}/.default openid"),
            2 => target.to_string(),
            _ => format!("{target}/.default"),
        };
        if rng.chance(95) {
            fields.push(("scope".into(), scope));
        }
    } else if rng.chance(95) {
        fields.push(("resource".into(), format!("{target}/")));
    }
    if rng.chance(4) {
        let repeated = rng.pick(&fields.clone()).clone();
        fields.push(repeated);
    }
    if rng.chance(8) {
        fields.push((junk(rng), junk(rng)));
    }
    rng.shuffle(&mut fields);
    let mut body = serde_urlencoded::to_string(&fields).expect("form");
    if rng.chance(5) {
        body.push_str(&format!("&{}", junk(rng)));
    }
    let content_type = if rng.chance(93) {
        Some("application/x-www-form-urlencoded")
    } else {
        *rng.pick(&[
            None,
            Some("application/json"),
            Some("text/plain"),
            Some("multipart/form-data"),
        ])
    };
    TokenCase {
        path,
        body,
        content_type,
        could_succeed,
    }
}

#[tokio::test]
async fn random_token_requests_at_aad_get_tokens_or_aadsts_errors() {
    let sim = TestSim::start().await;
    let graph = sim
        .admin_token("https://graph.microsoft.com/.default")
        .await;
    let cert = ClientCert::new();
    let (_, app_id) = register_app(&sim, &graph, "random-cases", Some(&cert)).await;
    let admin = sim.sim.connection.admin.clone();
    let app = App {
        app_id,
        cert,
        other_key: RsaKey::generate().expect("keygen"),
        admin_id: admin.client_id,
        admin_secret: admin.client_secret,
        tenant: sim.tenant().to_string(),
        aad: sim.aad().to_string(),
    };
    let (seed, cases) = settings();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for case in 0..cases {
        let mut rng = Rng::new(seed, case);
        let token_case = token_case(&mut rng, &app, now);
        let mut request = sim
            .http
            .post(format!("{}{}", sim.aad(), token_case.path))
            .body(token_case.body.clone());
        if let Some(content_type) = token_case.content_type {
            request = request.header("content-type", content_type);
        }
        let shown = || {
            format!(
                "case {case} of seed {seed}: POST {} ({:?}) {}",
                token_case.path, token_case.content_type, token_case.body
            )
        };
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", shown()));
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{}: {status}, not JSON: {text}", shown()));
        match status {
            200 => {
                assert!(
                    token_case.could_succeed,
                    "{}: a token for a bad credential: {body}",
                    shown()
                );
                assert!(body["access_token"].is_string(), "{}: {body}", shown());
            }
            400..=499 => {
                let aadsts = body["error"].is_string()
                    && body["error_description"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("AADSTS"))
                    && body["error_codes"][0].is_i64();
                assert!(aadsts, "{}: {status}, not an AADSTS error: {body}", shown());
            }
            _ => panic!("{}: {status} {body}", shown()),
        }
        *statuses.entry(status).or_default() += 1;
    }
    assert!(
        statuses.get(&200).is_some_and(|&n| n as u64 >= cases / 25),
        "{statuses:?}"
    );
    eprintln!("AAD answers by status over {cases} random token requests: {statuses:?}");
    sim.stop().await;
}
