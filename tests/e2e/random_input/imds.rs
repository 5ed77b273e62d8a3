//! Raw HTTP at every IMDS route of the demo VM: paths, queries, headers and methods mangled.

use super::{Rng, Statuses, escape_all, four_at_a_time, junk, random_uuid, settings, upper_one};
use crate::support::TestSim;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the demo VM's identity is known by.
struct DemoVm {
    client_id: String,
    object_id: String,
    resource_id: String,
    identity_header: String,
}

const SELECTORS: &[&str] = &[
    "client_id",
    "object_id",
    "principal_id",
    "msi_res_id",
    "mi_res_id",
];

fn imds_value(rng: &mut Rng, name: &str, vm: &DemoVm) -> String {
    if rng.chance(15) {
        return junk(rng);
    }
    let id = |rng: &mut Rng, known: &str| match rng.below(6) {
        0..=2 => known.to_string(),
        3 => upper_one(rng, known),
        4 => random_uuid(rng),
        _ => rng
            .pick(&["", "not-a-guid", "00000000-0000-0000-0000-000000000000"])
            .to_string(),
    };
    match name.to_ascii_lowercase().as_str() {
        "api-version" => rng
            .pick(&[
                "2018-02-01",
                "2018-02-01",
                "2019-08-01",
                "2021-02-01",
                "2021-02-01",
                "2019-11-01",
                "2017-08-01",
                "2023-07-01",
                "2018-02-1",
                "latest",
                "1999-01-01",
                "2018-02-01%20",
                "",
            ])
            .to_string(),
        "resource" => rng
            .pick(&[
                "https%3A%2F%2Fmanagement.azure.com%2F",
                "https://management.azure.com/",
                "https%3A%2F%2Fmanagement.core.windows.net%2F",
                "https%3A%2F%2Fvault.azure.net",
                "https%3A%2F%2Fgraph.microsoft.com",
                "https%3A%2F%2Fstorage.azure.com%2F.default",
                "api%3A%2F%2Fmisim-unknown",
                "00000003-0000-0000-c000-000000000000",
                "",
            ])
            .to_string(),
        "client_id" => id(rng, &vm.client_id),
        "object_id" | "principal_id" => id(rng, &vm.object_id),
        "msi_res_id" | "mi_res_id" => match rng.below(4) {
            0 | 1 => escape_all(&vm.resource_id),
            2 => escape_all(&upper_one(rng, &vm.resource_id)),
            _ => format!(
                "%2Fsubscriptions%2F{}%2FresourceGroups%2Frg%2Fproviders%2FMicrosoft.ManagedIdentity%2FuserAssignedIdentities%2Fx",
                random_uuid(rng)
            ),
        },
        "bypass_cache" => rng
            .pick(&["true", "false", "True", "1", "yes", ""])
            .to_string(),
        "format" => rng.pick(&["json", "text", "xml", "JSON", ""]).to_string(),
        _ => junk(rng),
    }
}

/// `name=value` pairs joined by `&`, some of them broken (no `=`, no name, empty).
fn imds_query(rng: &mut Rng, vm: &DemoVm) -> String {
    const NAMES: &[&str] = &[
        "api-version",
        "api-version",
        "resource",
        "resource",
        "client_id",
        "object_id",
        "principal_id",
        "msi_res_id",
        "mi_res_id",
        "bypass_cache",
        "format",
        "API-Version",
        "Resource",
        "x",
    ];
    let mut pairs = Vec::new();
    if rng.chance(80) {
        pairs.push(format!(
            "api-version={}",
            imds_value(rng, "api-version", vm)
        ));
    }
    if rng.chance(70) {
        pairs.push(format!("resource={}", imds_value(rng, "resource", vm)));
    }
    for _ in 0..rng.below(4) {
        let name = *rng.pick(NAMES);
        let value = imds_value(rng, name, vm);
        pairs.push(match rng.below(20) {
            0 => name.to_string(),
            1 => format!("={value}"),
            2 => String::new(),
            _ => format!("{name}={value}"),
        });
    }
    rng.shuffle(&mut pairs);
    pairs.join("&")
}

const IMDS_PATHS: &[&str] = &[
    "/metadata/identity/oauth2/token",
    "/metadata/identity/oauth2/token",
    "/metadata/identity/oauth2/token",
    "/metadata/identity/oauth2/token",
    "/metadata/identity/oauth2/token",
    "//metadata/identity/oauth2/token",
    "/metadata/identity/info",
    "/metadata/identity/info",
    "/metadata/instance",
    "/metadata/instance",
    "/metadata/versions",
    "/metadata/instance/compute",
    "/metadata/instance/compute/vmId",
    "/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress",
    "/metadata/instance/compute/tagsList/0",
    "/metadata/versions",
    "/metadata/attested/document",
    "/metadata/scheduledevents",
    "/metadata/identity",
    "/metadata",
    "/",
    "/oauth2/token",
    "/msi/token",
    "/msi/token",
];

/// A route's path with what clients and proxies do to paths: trailing and doubled slashes,
/// dot segments, escaped characters, case changes, extra segments.
fn mangle_path(rng: &mut Rng, path: &str) -> String {
    let mut path = path.to_string();
    if !rng.chance(25) {
        return path;
    }
    for _ in 0..1 + rng.below(2) {
        let slashes: Vec<usize> = path.match_indices('/').map(|(i, _)| i).collect();
        // An escaped slash can leave none.
        let at = slashes.first().map_or(0, |_| *rng.pick(&slashes));
        match rng.below(7) {
            0 => path.push('/'),
            1 => path.insert(at, '/'),
            2 => path.insert_str(at, "/."),
            3 => path = upper_one(rng, &path),
            4 if path.len() > 1 => {
                // Not the leading slash: a target must start with one (hyper refuses others).
                let i = 1 + rng.below(path.len() - 1);
                let escaped = format!("%{:02X}", path.as_bytes()[i]);
                path.replace_range(i..=i, &escaped);
            }
            5 => path.push_str("/.."),
            _ => path.push_str(&format!("/{}", junk(rng).replace(['/', '?'], ""))),
        }
    }
    path
}

/// A request as sent, for failure messages and for the checks of its answer.
struct RawRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawRequest {
    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn bytes(&self, host: &str) -> Vec<u8> {
        let mut text = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\n",
            self.method, self.target
        );
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() || self.method == "POST" {
            text.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        text.push_str("Connection: close\r\n\r\n");
        text.push_str(&self.body);
        text.into_bytes()
    }

    fn shown(&self) -> String {
        let mut target = self.target.clone();
        if target.len() > 600 {
            target = format!("{}…({} bytes)", &target[..600], self.target.len());
        }
        format!(
            "{} {target} {:?} body {:?}",
            self.method, self.headers, self.body
        )
    }
}

/// A request that must get a 200: the token through IMDS or the App Service endpoint, or a
/// sibling route, well formed. Every fifth case is one, so that the checks of successful
/// answers always run, whatever the seed.
fn known_good_request(rng: &mut Rng, vm: &DemoVm) -> RawRequest {
    let arm = "resource=https%3A%2F%2Fmanagement.azure.com%2F";
    let (target, header) = match rng.below(5) {
        0 => (
            format!("/msi/token?api-version=2019-08-01&{arm}"),
            ("X-IDENTITY-HEADER", vm.identity_header.as_str()),
        ),
        1 => (
            format!(
                "/metadata/identity/oauth2/token?api-version=2018-02-01&{arm}&client_id={}&bypass_cache=true",
                vm.client_id
            ),
            ("Metadata", "true"),
        ),
        2 => (
            "/metadata/instance?api-version=2021-02-01".to_string(),
            ("Metadata", "true"),
        ),
        _ => (
            format!("/metadata/identity/oauth2/token?api-version=2018-02-01&{arm}"),
            ("Metadata", "true"),
        ),
    };
    RawRequest {
        method: "GET".into(),
        target,
        headers: vec![(header.0.to_string(), header.1.to_string())],
        body: String::new(),
    }
}

/// Whether a request target names the App Service endpoint (after the normalisation IMDS does).
fn is_app_service(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    let mut collapsed = path.replace("//", "/");
    while collapsed.contains("//") {
        collapsed = collapsed.replace("//", "/");
    }
    collapsed
        .trim_end_matches('/')
        .eq_ignore_ascii_case("/msi/token")
}

fn imds_request(rng: &mut Rng, vm: &DemoVm) -> RawRequest {
    let route = *rng.pick(IMDS_PATHS);
    let path = mangle_path(rng, route);
    let mut query = imds_query(rng, vm);
    // The App Service protocol has one version: mostly that one, or it would rarely succeed.
    if route == "/msi/token" && rng.chance(70) {
        query = query.replace("api-version=", "api-version=2019-08-01&x-was=");
    }
    let target = if query.is_empty() && rng.chance(50) {
        path
    } else {
        format!("{path}?{query}")
    };
    let method = if rng.chance(80) {
        "GET"
    } else {
        *rng.pick(&[
            "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO",
        ])
    };
    let mut headers = Vec::new();
    let metadata = if rng.chance(65) {
        Some("true")
    } else {
        *rng.pick(&[
            None,
            Some("True"),
            Some("TRUE"),
            Some("false"),
            Some(""),
            Some("true, true"),
            Some("1"),
        ])
    };
    if let Some(value) = metadata {
        headers.push(("Metadata".to_string(), value.to_string()));
        if rng.chance(5) {
            headers.push(("metadata".to_string(), "true".to_string()));
        }
    }
    let wants_identity_header = route == "/msi/token";
    if (wants_identity_header && rng.chance(80)) || rng.chance(5) {
        let value = if rng.chance(75) {
            vm.identity_header.clone()
        } else {
            rng.pick(&["", "wrong", "true"]).to_string()
        };
        headers.push(("X-IDENTITY-HEADER".to_string(), value));
        if rng.chance(5) {
            headers.push(("x-identity-header".to_string(), vm.identity_header.clone()));
        }
    }
    if rng.chance(5) {
        headers.push(("X-Forwarded-For".to_string(), "10.1.2.3".to_string()));
    }
    if rng.chance(10) {
        let (name, value) = *rng.pick(&[
            ("Accept", "application/xml"),
            ("Content-Type", "text/plain"),
            ("Metadata-Flavor", "Google"),
            ("X-aws-ec2-metadata-token", "x"),
            ("Accept-Encoding", "gzip"),
            ("Authorization", "Bearer x"),
        ]);
        headers.push((name.to_string(), value.to_string()));
    }
    rng.shuffle(&mut headers);
    let mut body = String::new();
    if method == "POST" && rng.chance(70) {
        if route == "/oauth2/token" && rng.chance(80) {
            headers.push((
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ));
        }
        body = imds_query(rng, vm);
    }
    RawRequest {
        method: method.to_string(),
        target,
        headers,
        body,
    }
}

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` on a fresh connection and reads the whole answer (the connection closes).
async fn exchange(address: &str, request: &RawRequest) -> Result<RawResponse, String> {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(&request.bytes(address))
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .map_err(|_| "no answer within 30 s".to_string())??;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end in {:?}", String::from_utf8_lossy(&answer)))?;
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = answer[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or("a malformed chunked body")?;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// The checks every IMDS answer must pass, whatever was asked.
fn check_imds_answer(
    request: &RawRequest,
    response: &RawResponse,
    vm: &DemoVm,
) -> Result<(), String> {
    let status = response.status;
    if status >= 500 {
        return Err(format!("a {status} with AAD healthy"));
    }
    // The route's own credential, sent once: the App Service endpoint's secret, else Metadata.
    let credential_ok = {
        let (name, ok): (&str, &dyn Fn(&str) -> bool) = if is_app_service(&request.target) {
            ("X-IDENTITY-HEADER", &|v| v == vm.identity_header)
        } else {
            ("Metadata", &|v| v.eq_ignore_ascii_case("true"))
        };
        let values = request.header_values(name);
        values.len() == 1 && ok(values[0])
    };
    if status == 200 {
        if !credential_ok {
            return Err("a 200 without the route's credential header, sent once".into());
        }
        if !request.header_values("X-Forwarded-For").is_empty() {
            return Err("a 200 for a request that came through a proxy".into());
        }
    }
    if request.method == "HEAD" {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&response.body);
    let is_json = response
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"));
    if status == 200 && !is_json {
        // Only leaves of the instance document are text.
        return if request.target.contains("format=text") {
            Ok(())
        } else {
            Err(format!("a 200 that is not JSON: {text}"))
        };
    }
    if !is_json {
        return Err(format!(
            "not JSON: {:?} {text}",
            response.header("content-type")
        ));
    }
    let body: Value = serde_json::from_str(&text).map_err(|_| format!("invalid JSON: {text}"))?;
    if status == 200 {
        if body.get("access_token").is_some() {
            // Only the demo VM's one identity, whatever the selector said.
            if !body["access_token"].is_string() || body["client_id"] != vm.client_id.as_str() {
                return Err(format!("a token that is not the VM's identity's: {body}"));
            }
        }
        return Ok(());
    }
    let imds = body["error"].is_string()
        && response
            .header("server")
            .is_some_and(|s| s.starts_with("IMDS/"));
    let app_service = body["statusCode"] == status && body["message"].is_string();
    if !imds && !app_service {
        return Err(format!("not IMDS's nor App Service's error shape: {body}"));
    }
    let target = request.target.to_ascii_lowercase() + &request.body.to_ascii_lowercase();
    if text.contains("Identity not found") && !SELECTORS.iter().any(|s| target.contains(s)) {
        return Err(format!("\"Identity not found\" without a selector: {body}"));
    }
    Ok(())
}

#[tokio::test]
async fn random_requests_at_imds_get_answers_in_its_dialect() {
    let sim = TestSim::start_in(tempfile::tempdir().expect("tempdir"), |c| {
        c.imds_throttle = false;
        // The VM-extension endpoint on a port of its own, as on Azure (any free port here).
        c.imds_extension_port = Some(0);
    })
    .await;
    let endpoint = sim.sim.connection.imds.clone().expect("imds");
    let mut addresses = vec![endpoint.trim_start_matches("http://").to_string()];
    if let Some(extension) = &sim.sim.connection.imds_extension {
        addresses.push(extension.trim_start_matches("http://").to_string());
    }
    let identity_header = sim.identity_header("demo-vm").await;
    let first = sim
        .http
        .get(format!(
            "{endpoint}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"
        ))
        .header("Metadata", "true")
        .send()
        .await
        .expect("token")
        .json::<Value>()
        .await
        .expect("json");
    let claims = sim
        .verify(
            first["access_token"].as_str().expect("token"),
            "https://management.azure.com/",
        )
        .await;
    let vm = DemoVm {
        client_id: claims["appid"].as_str().expect("appid").to_string(),
        object_id: claims["oid"].as_str().expect("oid").to_string(),
        resource_id: claims["xms_mirid"].as_str().expect("xms_mirid").to_string(),
        identity_header,
    };
    let (seed, cases) = settings();
    let mut statuses = Statuses::default();
    // One case: its request, where it went, and its answer checked.
    let run = |case: u64| {
        let mut rng = Rng::new(seed, case);
        let known_good = case % 5 == 4;
        let (request, address) = if known_good {
            (known_good_request(&mut rng, &vm), &addresses[0])
        } else {
            let address = &addresses[case as usize % addresses.len()];
            (imds_request(&mut rng, &vm), address)
        };
        let vm = &vm;
        async move {
            let outcome = exchange(address, &request).await.and_then(|response| {
                check_imds_answer(&request, &response, vm)?;
                match response.status {
                    200 => Ok(response.status),
                    other if known_good => Err(format!("a well-formed request got {other}")),
                    other => Ok(other),
                }
            });
            outcome.map_err(|failure| {
                format!(
                    "case {case} of seed {seed} at {address}: {failure}\nrequest: {}",
                    request.shown()
                )
            })
        }
    };
    for outcome in four_at_a_time(cases, run).await {
        match outcome {
            Ok(status) => statuses.record(status),
            Err(failure) => panic!("{failure}"),
        }
    }
    // The random cases reached refusals, or the generator went astray (the known-good fifth
    // was checked case by case).
    assert_eq!(addresses.len(), 2, "the extension endpoint took its share");
    assert!(statuses.of(400) >= cases / 10, "{statuses:?}");
    statuses.print("IMDS's answers", cases);
    sim.stop().await;
}
