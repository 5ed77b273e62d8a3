//! Token requests at AAD's v1 and v2 endpoints with client assertions made and broken at random.

use super::{Rng, Statuses, four_at_a_time, junk, random_uuid, settings, upper_one};
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

/// How a time claim was made: well, absent, unreadable, or a readable time at some distance.
#[derive(Clone, Copy, PartialEq)]
enum Time {
    Good,
    Absent,
    Unreadable,
    Past,
    Future,
}

/// A time claim as clients get it wrong: other types, out of range, absent. Readable odd
/// forms (a float, a string of digits, a number past i64) are read as the time they say.
fn odd_time(rng: &mut Rng, good: i64, now: i64) -> (Option<Value>, Time) {
    if rng.chance(85) {
        return (Some(json!(good)), Time::Good);
    }
    let (value, kind) = match rng.below(12) {
        0 => return (None, Time::Absent),
        1 => (Value::Null, Time::Unreadable),
        2 => (json!(true), Time::Unreadable),
        3 => (json!(now - 10_000), Time::Past),
        4 => (json!(now + 10_000_000), Time::Future),
        5 => (json!(good as f64 + 0.5), Time::Good),
        6 => (json!(good.to_string()), Time::Good),
        7 => (json!("soon"), Time::Unreadable),
        8 => (json!(1e300), Time::Future),
        9 => (json!(-1), Time::Past),
        10 => (json!(i64::MAX), Time::Future),
        _ => (json!([good]), Time::Unreadable),
    };
    (Some(value), kind)
}

/// An assertion as made: whether its signature is genuine (the app's key over these exact
/// bytes), and whether something in it is certainly refused (a wrong issuer, audience, time,
/// algorithm or thumbprint). Deviations AAD may accept (case, base64 flavour, a `jti` of any
/// type) set neither.
struct Made {
    token: String,
    genuine: bool,
    refused: bool,
}

/// A client assertion for `app`, most often well made, otherwise broken in one or more ways.
fn assertion(rng: &mut Rng, app: &App, audience: &str, now: i64) -> Made {
    if rng.chance(5) {
        return Made {
            token: junk(rng),
            genuine: false,
            refused: true,
        };
    }
    let mut refused = false;
    let mut header = Map::new();
    let sign_alg = if rng.chance(30) {
        JwsAlg::Ps256
    } else {
        JwsAlg::Rs256
    };
    let alg = if rng.chance(90) {
        json!(sign_alg.name())
    } else {
        let odd = rng
            .pick(&[
                json!("none"),
                json!("HS256"),
                json!("ES256"),
                json!("rs256"),
                json!(""),
                json!(5),
                Value::Null,
            ])
            .clone();
        // A lower-case name may be read leniently; the others name no RSA algorithm.
        refused |= odd != json!("rs256");
        odd
    };
    if rng.chance(97) {
        header.insert("alg".into(), alg);
    } else {
        refused = true;
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
            refused = true;
        }
        3 => {
            header.insert(
                "x5t".into(),
                rng.pick(&[json!(""), json!(7), Value::Null]).clone(),
            );
            refused = true;
        }
        4 => refused = true,
        _ => {
            header.insert("x5t".into(), json!(b64url(&thumbprint)));
        }
    }
    let mut claims = Map::new();
    // The client id, in any case, or something else (certainly refused).
    let client = |rng: &mut Rng| match rng.below(10) {
        0 => (json!(random_uuid(rng)), true),
        1 => (json!(upper_one(rng, &app.app_id)), false),
        2 => (json!(5), true),
        _ => (json!(app.app_id), false),
    };
    let (iss, wrong_iss) = client(rng);
    let (sub, wrong_sub) = if rng.chance(85) {
        (iss.clone(), wrong_iss)
    } else {
        client(rng)
    };
    let (aud, wrong_aud) = match rng.below(10) {
        0 => (json!([audience]), false),
        1 => (
            json!("https://login.microsoftonline.com/common/oauth2/token"),
            true,
        ),
        2 => (json!(5), true),
        _ => (json!(audience), false),
    };
    let aud = if rng.chance(97) {
        Some(aud)
    } else {
        refused = true;
        None
    };
    let (exp, exp_kind) = odd_time(rng, now + 600, now);
    let (nbf, nbf_kind) = odd_time(rng, now - 60, now);
    refused |= wrong_iss || wrong_sub || wrong_aud;
    refused |= matches!(exp_kind, Time::Absent | Time::Unreadable | Time::Past);
    refused |= matches!(nbf_kind, Time::Unreadable | Time::Future);
    let jti = match rng.below(10) {
        0 => None,
        1 => Some(json!(5)),
        _ => Some(json!(random_uuid(rng))),
    };
    let entries = [
        ("iss", Some(iss)),
        ("sub", Some(sub)),
        ("aud", aud),
        ("exp", exp),
        ("nbf", nbf),
        ("jti", jti),
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
        refused = true;
    }
    Made {
        token,
        genuine,
        refused,
    }
}

/// What the AAD case sent, for the checks of its answer.
struct TokenCase {
    path: String,
    body: String,
    content_type: Option<&'static str>,
    /// Whether AAD may issue a token: a genuinely signed assertion of the app or the admin's
    /// secret with the admin's client id, and nothing certainly refused in the request (a
    /// 200 for anything else is a hole).
    could_succeed: bool,
    /// Whose token a 200 must be: the client id it was asked for.
    client_id: String,
}

/// A request AAD must answer with a token: the app's well-made assertion at its own tenant.
fn well_made_case(rng: &mut Rng, app: &App) -> TokenCase {
    let v2 = rng.chance(50);
    let (path, target) = if v2 {
        (
            format!("/{}/oauth2/v2.0/token", app.tenant),
            ("scope", "https://management.azure.com/.default"),
        )
    } else {
        (
            format!("/{}/oauth2/token", app.tenant),
            ("resource", "https://management.azure.com/"),
        )
    };
    let audience = format!("{}{path}", app.aad);
    let fields = [
        ("grant_type", "client_credentials".to_string()),
        ("client_id", app.app_id.clone()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string(),
        ),
        (
            "client_assertion",
            app.cert.assertion(&app.app_id, &audience, 600),
        ),
        (target.0, target.1.to_string()),
    ];
    TokenCase {
        path,
        body: serde_urlencoded::to_string(fields).expect("form"),
        content_type: Some("application/x-www-form-urlencoded"),
        could_succeed: true,
        client_id: app.app_id.clone(),
    }
}

fn token_case(rng: &mut Rng, app: &App, now: i64) -> TokenCase {
    // Set by any part of the request that AAD certainly refuses.
    let mut refused = false;
    let tenant = match rng.below(12) {
        0 => "common".to_string(),
        1 => "organizations".to_string(),
        2 => {
            refused = true;
            random_uuid(rng)
        }
        3 => upper_one(rng, &app.tenant),
        4 => {
            refused = true;
            rng.pick(&["not-a-tenant", "%FF", "%C3"]).to_string()
        }
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
    refused |= grant != "client_credentials";
    if rng.chance(97) {
        fields.push(("grant_type".into(), grant));
    } else {
        refused = true;
    }
    let use_admin = rng.chance(15);
    let client_id = match rng.below(12) {
        0 => {
            refused = true;
            random_uuid(rng)
        }
        1 => upper_one(rng, &app.app_id),
        2 => {
            refused = true;
            String::new()
        }
        _ if use_admin => app.admin_id.clone(),
        _ => app.app_id.clone(),
    };
    if rng.chance(96) {
        fields.push(("client_id".into(), client_id.clone()));
    } else {
        refused = true;
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
        let made = assertion(rng, app, &audience, now);
        could_succeed = made.genuine;
        refused |= made.refused;
        let kind = if rng.chance(92) {
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        } else {
            refused = true;
            rng.pick(&[
                "",
                "jwt-bearer",
                "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            ])
        };
        fields.push(("client_assertion_type".into(), kind.to_string()));
        fields.push(("client_assertion".into(), made.token));
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
        refused = true;
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
        could_succeed: could_succeed && !refused,
        client_id,
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
    let mut statuses = Statuses::default();
    // One case, checked; its status.
    let run = |case: u64| {
        let mut rng = Rng::new(seed, case);
        // Every fifth case is well made and must succeed, whatever the seed.
        let well_made = case % 5 == 4;
        let token_case = if well_made {
            well_made_case(&mut rng, &app)
        } else {
            token_case(&mut rng, &app, now)
        };
        let mut request = sim
            .http
            .post(format!("{}{}", sim.aad(), token_case.path))
            .body(token_case.body.clone());
        if let Some(content_type) = token_case.content_type {
            request = request.header("content-type", content_type);
        }
        let app = &app;
        async move {
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
                    // The token is the asking client's, in the app's tenant.
                    let claims = body["access_token"]
                        .as_str()
                        .and_then(|token| token.split('.').nth(1))
                        .and_then(misim_core::jose::b64_lenient)
                        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
                        .unwrap_or_else(|| panic!("{}: no readable token: {body}", shown()));
                    let appid = claims["appid"].as_str().or(claims["azp"].as_str());
                    assert!(
                        appid.is_some_and(|id| id.eq_ignore_ascii_case(&token_case.client_id)),
                        "{}: a token for another client: {claims}",
                        shown()
                    );
                    assert_eq!(claims["tid"], app.tenant.as_str(), "{}", shown());
                }
                _ if well_made => panic!("{}: a well-made request got {status}: {body}", shown()),
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
            status
        }
    };
    for status in four_at_a_time(cases, run).await {
        statuses.record(status);
    }
    statuses.print("AAD's token answers", cases);
    sim.stop().await;
}
