//! Split mode without docker: `misim aad`, `misim arm` and `misim imds` as three processes on
//! loopback with one CA (`misim ca init`), wired by `misim connect` and `misim seed`; then the
//! failure cases of docs/docker.md: AAD down → retryable IMDS errors, recovery, and restarts of
//! IMDS and ARM losing nothing.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_misim");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

struct Deployment {
    root: tempfile::TempDir,
    aad_port: u16,
    arm_port: u16,
    host_api_port: u16,
    imds_port: u16,
    http: reqwest::Client,
}

impl Deployment {
    fn path(&self, rest: &str) -> PathBuf {
        self.root.path().join(rest)
    }

    fn common(&self, service: &str) -> Command {
        let mut command = Command::new(BIN);
        command
            .env_clear()
            .env("MISIM_LOG", "warn")
            .arg("--data-dir")
            .arg(self.path(service))
            .arg(service)
            .arg("--ca-cert")
            .arg(self.path("pki/ca.pem"))
            .arg("--internal-secret-file")
            .arg(self.path("pki/internal-secret"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path(&format!("{service}.log"))).expect("log"));
        command
    }

    fn aad_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.aad_port)
    }

    fn arm_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.arm_port)
    }

    fn imds_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.imds_port)
    }

    fn tls(&self, command: &mut Command) {
        command
            .arg("--tls-cert")
            .arg(self.path("pki/server.pem"))
            .arg("--tls-key")
            .arg(self.path("pki/server-key.pem"));
    }

    fn start_aad(&self) -> Service {
        let mut command = self.common("aad");
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.aad_port));
        self.tls(&mut command);
        Service::spawn(command)
    }

    fn start_arm(&self) -> Service {
        let mut command = self.common("arm");
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.arm_port))
            .arg("--aad-url")
            .arg(self.aad_url())
            .arg("--imds-url")
            .arg(format!("https://localhost:{}", self.host_api_port))
            .arg("--key-pool")
            .arg("2");
        self.tls(&mut command);
        Service::spawn(command)
    }

    fn start_imds(&self) -> Service {
        let mut command = self.common("imds");
        command
            .arg("--source-listen")
            .arg(format!("127.0.0.1:{}", self.imds_port))
            .arg("--host-api-listen")
            .arg(format!("localhost:{}", self.host_api_port))
            .arg("--aad-url")
            .arg(self.aad_url())
            .arg("--imds-throttle")
            .arg("off");
        self.tls(&mut command);
        Service::spawn(command)
    }

    /// Runs a one-shot `misim` command; returns stdout, failing the test on a non-zero exit.
    fn run(&self, args: &[&str]) -> String {
        let output = Command::new(BIN)
            .env_clear()
            .arg("--data-dir")
            .arg(self.path("cli"))
            .args(args)
            .output()
            .expect("misim runs");
        assert!(
            output.status.success(),
            "misim {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8")
    }

    async fn wait_https(&self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.http.get(url).send().await.is_err() {
            assert!(Instant::now() < deadline, "{url} never came up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn imds_token(&self, bypass_cache: bool) -> (u16, Value) {
        self.try_imds_token(bypass_cache)
            .await
            .expect("IMDS answers")
    }

    async fn try_imds_token(&self, bypass_cache: bool) -> Result<(u16, Value), reqwest::Error> {
        let mut url = format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
            self.imds_url()
        );
        if bypass_cache {
            url.push_str("&bypass_cache=true");
        }
        let response = self.http.get(url).header("Metadata", "true").send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Retries until IMDS hands out a token (after a peer came back).
    async fn token_eventually(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // A restarted IMDS drops pooled connections: those errors are retried too.
            let answer = self.try_imds_token(true).await;
            if let Ok((200, body)) = &answer {
                return body["access_token"].as_str().expect("token").to_string();
            }
            assert!(Instant::now() < deadline, "no token: {answer:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn arm_status(&self, token: &str, path: &str) -> u16 {
        self.http
            .get(format!("{}{path}", self.arm_url()))
            .bearer_auth(token)
            .send()
            .await
            .expect("ARM answers")
            .status()
            .as_u16()
    }
}

/// A child process that is killed when dropped.
struct Service(Child);

impl Service {
    fn spawn(mut command: Command) -> Self {
        Self(command.spawn().expect("misim starts"))
    }

    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&misim_core::jose::b64_lenient(payload).expect("b64")).expect("json")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
}

#[tokio::test]
async fn three_processes_seed_serve_and_survive_restarts() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = root.path().join("pki");
    let ca_init = Command::new(BIN)
        .args(["ca", "init"])
        .arg(&pki)
        .args(["--name", "localhost,127.0.0.1"])
        .output()
        .expect("ca init");
    assert!(ca_init.status.success(), "{ca_init:?}");
    let ca = std::fs::read_to_string(pki.join("ca.pem")).expect("ca.pem");
    let secret_before = std::fs::read_to_string(pki.join("internal-secret")).expect("secret");
    // A second init keeps the CA and the secret (services already trust them).
    let again = Command::new(BIN)
        .args(["ca", "init"])
        .arg(&pki)
        .output()
        .expect("ca init again");
    assert!(again.status.success());
    assert_eq!(std::fs::read_to_string(pki.join("ca.pem")).expect("ca"), ca);
    assert_eq!(
        std::fs::read_to_string(pki.join("internal-secret")).expect("secret"),
        secret_before
    );

    let deployment = Deployment {
        root,
        aad_port: free_port(),
        arm_port: free_port(),
        host_api_port: free_port(),
        imds_port: free_port(),
        http: misim_core::tls::http_client(&ca, Duration::from_secs(20)).expect("client"),
    };
    let aad = deployment.start_aad();
    let imds = deployment.start_imds();
    let arm = deployment.start_arm();
    deployment.wait_https(&deployment.arm_url()).await;

    deployment.run(&[
        "connect",
        "--aad",
        &deployment.aad_url(),
        "--arm",
        &deployment.arm_url(),
        "--imds",
        &deployment.imds_url(),
        "--ca-cert",
        deployment.path("pki/ca.pem").to_str().expect("path"),
        "--internal-secret-file",
        deployment
            .path("pki/internal-secret")
            .to_str()
            .expect("path"),
    ]);
    let connection: Value = serde_json::from_str(
        &std::fs::read_to_string(deployment.path("cli/connection.json")).expect("connection"),
    )
    .expect("json");
    assert_eq!(connection["arm"], deployment.arm_url());
    let subscription = connection["subscription_id"]
        .as_str()
        .expect("sub")
        .to_string();

    let seed = deployment.path("seed.json");
    write(
        &seed,
        r#"{
            "resource_groups": [{"name": "apps"}, {"name": "other"}],
            "identities": [{"resource_group": "apps", "name": "spare"}],
            "vms": [{"resource_group": "apps", "name": "vm1", "ip": "127.0.0.1", "system_assigned": true}],
            "role_assignments": [{"principal": "vm:vm1", "role": "Reader", "scope": "/resourceGroups/apps"}]
        }"#,
    );
    let seed_path = seed.to_str().expect("path");
    let applied: Value = serde_json::from_str(&deployment.run(&["seed", seed_path])).expect("json");
    let principal = applied["principals"]["vm:vm1"]
        .as_str()
        .expect("vm1 principal")
        .to_string();
    // Applying the same seed again is a no-op, not an error.
    let again: Value = serde_json::from_str(&deployment.run(&["seed", seed_path])).expect("json");
    assert_eq!(again["principals"]["vm:vm1"], principal);

    // The VM at 127.0.0.1 gets its own identity's token; RBAC decides as seeded.
    let token = deployment.token_eventually().await;
    let token_claims = claims(&token);
    assert_eq!(token_claims["oid"], principal);
    let apps = format!("/subscriptions/{subscription}/resourcegroups/apps?api-version=2021-04-01");
    let other =
        format!("/subscriptions/{subscription}/resourcegroups/other?api-version=2021-04-01");
    assert_eq!(deployment.arm_status(&token, &apps).await, 200);
    assert_eq!(deployment.arm_status(&token, &other).await, 403);

    // The clock moves all three processes; the certificate rolls across them; the timeline
    // merges all three services.
    let moved = deployment.run(&["clock", "advance", "46d"]);
    assert!(moved.contains("rolled the certificate"), "{moved}");
    let token = deployment.token_eventually().await;
    assert_eq!(claims(&token)["oid"], principal);
    assert_eq!(deployment.arm_status(&token, &apps).await, 200);
    let timeline = deployment.run(&["events", "--json", "--vm", "vm1"]);
    let services: std::collections::BTreeSet<String> = timeline
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).expect("json line")["service"]
                .as_str()
                .expect("service")
                .to_string()
        })
        .collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        vec!["aad", "arm", "imds"]
    );
    assert!(timeline.contains("arm.credential.rolled"));

    // AAD down: IMDS answers at once with a retryable 5xx, and recovers when AAD is back.
    aad.stop();
    let (status, body) = deployment.imds_token(true).await;
    assert!((500..600).contains(&status), "{status} {body}");
    assert!(body["error"].is_string(), "IMDS error JSON: {body}");
    let aad = deployment.start_aad();
    let token = deployment.token_eventually().await;
    assert_eq!(claims(&token)["oid"], principal);

    // IMDS restarts from its own state: same VM, same identity.
    imds.stop();
    let imds = deployment.start_imds();
    let token = deployment.token_eventually().await;
    assert_eq!(claims(&token)["oid"], principal);

    // ARM restarts from its own state: the assignment still decides.
    arm.stop();
    let arm = deployment.start_arm();
    deployment.wait_https(&deployment.arm_url()).await;
    assert_eq!(deployment.arm_status(&token, &apps).await, 200);
    assert_eq!(deployment.arm_status(&token, &other).await, 403);
    drop((aad, imds, arm));
}

#[tokio::test]
async fn split_services_refuse_bad_configuration() {
    let root = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .env_clear()
            .arg("--data-dir")
            .arg(root.path().join("d"))
            .args(args)
            .output()
            .expect("misim runs")
    };
    let pki = root.path().join("pki");
    let pki_str = pki.to_str().expect("path");
    assert!(run(&["ca", "init", pki_str]).status.success());
    let ca = format!("{pki_str}/ca.pem");
    let cert = format!("{pki_str}/server.pem");
    let key = format!("{pki_str}/server-key.pem");
    let secret = format!("{pki_str}/internal-secret");
    let short = root.path().join("short-secret");
    write(&short, "abc");
    for (args, expected) in [
        (
            vec![
                "aad",
                "--ca-cert",
                &ca,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ],
            "no internal secret",
        ),
        (
            vec![
                "aad",
                "--ca-cert",
                &ca,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--internal-secret-file",
                short.to_str().expect("path"),
            ],
            "too short",
        ),
        (
            vec![
                "aad",
                "--ca-cert",
                &ca,
                "--tls-cert",
                &ca,
                "--tls-key",
                &ca,
                "--internal-secret-file",
                &secret,
                "--listen",
                "127.0.0.1:0",
            ],
            "cannot use the server certificate",
        ),
        (
            vec![
                "imds",
                "--ca-cert",
                &ca,
                "--aad-url",
                "https://127.0.0.1:1",
                "--internal-secret-file",
                &secret,
                "--host-api-listen",
                "127.0.0.1:0",
            ],
            "serve no VM",
        ),
        (
            vec![
                "arm",
                "--ca-cert",
                &ca,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--internal-secret-file",
                &secret,
                "--aad-url",
                "https://127.0.0.1:1",
                "--imds-url",
                "http://127.0.0.1:1",
                "--peer-wait",
                "1",
                "--listen",
                "127.0.0.1:0",
            ],
            "unreachable",
        ),
        (
            vec!["connect", "--aad", "https://127.0.0.1:1"],
            "give --aad URL, --arm URL and --ca-cert",
        ),
        (vec!["health", "https://127.0.0.1:1/"], "give --ca-cert"),
        (
            vec![
                "up",
                "--identity-cert-days",
                "10",
                "--identity-cert-roll-days",
                "10",
            ],
            "must be less than",
        ),
        (vec!["health", "http://127.0.0.1:1/"], "did not answer"),
        (
            vec!["ca", "init", pki_str, "--name", ","],
            "at least one --name",
        ),
    ] {
        let output = run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
