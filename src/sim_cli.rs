//! `misim events`, `misim clock`, `misim fault`, `misim explain`: clients of the `/_sim/` APIs
//! on ARM's URL, as the bootstrap admin of the data dir's `connection.json`.

use anyhow::Context;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

use crate::cli::{ClockCommand, EventsArgs, FaultAddArgs, FaultCommand};
use crate::connection::Connection;

/// An authenticated client for `/_sim/`.
pub struct SimClient {
    http: reqwest::Client,
    arm: String,
    token: String,
}

impl SimClient {
    pub async fn connect(data_dir: &Path) -> anyhow::Result<Self> {
        let connection = Connection::read(data_dir)?;
        let token =
            crate::vm_env::admin_token(&connection, "https://management.azure.com/").await?;
        let ca = std::fs::read_to_string(&connection.ca_cert)
            .with_context(|| format!("cannot read {}", connection.ca_cert.display()))?;
        // No overall timeout: `events --follow` streams for as long as it runs.
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(misim_core::tls::client_config(&ca)?)
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            arm: connection.arm,
            token,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.arm);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .query(query)
            .timeout(Duration::from_secs(300));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach ARM at {url}"))?;
        let status = response.status();
        if status.as_u16() == 204 {
            return Ok(Value::Null);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            anyhow::bail!(
                "{} ({})",
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("request failed"),
                body["error"]["code"].as_str().unwrap_or(status.as_str())
            )
        }
    }
}

/// One line of the readable timeline.
pub fn render_event(event: &Value) -> String {
    let time = event["time"].as_str().unwrap_or("");
    // Seconds precision reads better; the JSON keeps the full stamp.
    let short = match (time.find('.'), time.ends_with('Z')) {
        (Some(dot), true) => format!("{}Z", &time[..dot]),
        _ => time.to_string(),
    };
    let correlation = event["correlation_id"].as_str().unwrap_or("");
    format!(
        "{short}  {:<4}  {:<30}  {}  {}",
        event["service"].as_str().unwrap_or(""),
        event["kind"].as_str().unwrap_or(""),
        &correlation[..correlation.len().min(8)],
        event["summary"].as_str().unwrap_or("")
    )
}

fn print_event(event: &Value, json_lines: bool) {
    if json_lines {
        println!("{event}");
    } else {
        println!("{}", render_event(event));
    }
}

pub async fn events(data_dir: &Path, args: &EventsArgs) -> anyhow::Result<()> {
    let client = SimClient::connect(data_dir).await?;
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(vm) = &args.vm {
        query.push(("vm", vm.clone()));
    }
    if let Some(kind) = &args.kind {
        query.push(("kind", kind.clone()));
    }
    if let Some(correlation) = &args.correlation_id {
        query.push(("correlation_id", correlation.clone()));
    }
    query.push(("limit", args.limit.to_string()));
    let page = client
        .send(reqwest::Method::GET, "/_sim/events", &query, None)
        .await?;
    for event in page["value"].as_array().into_iter().flatten() {
        print_event(event, args.json);
    }
    for warning in page["warnings"].as_array().into_iter().flatten() {
        eprintln!("misim: warning: {}", warning.as_str().unwrap_or(""));
    }
    if !args.follow {
        return Ok(());
    }
    query.push(("after", page["cursor"].as_str().unwrap_or("").to_string()));
    let mut response = client
        .http
        .get(format!("{}/_sim/events/stream", client.arm))
        .bearer_auth(&client.token)
        .query(&query)
        .send()
        .await
        .context("cannot open the event stream")?;
    if !response.status().is_success() {
        anyhow::bail!("the event stream answered {}", response.status());
    }
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await.context("the event stream broke")? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(data) = line.strip_prefix("data: ")
                    && let Ok(event) = serde_json::from_str::<Value>(data)
                {
                    print_event(&event, args.json);
                }
            }
        }
    }
    Ok(())
}

pub async fn clock(data_dir: &Path, command: Option<&ClockCommand>) -> anyhow::Result<()> {
    let client = SimClient::connect(data_dir).await?;
    match command {
        None => {
            let state = client
                .send(reqwest::Method::GET, "/_sim/clock", &[], None)
                .await?;
            println!(
                "simulated {}  (wall {}, offset {})",
                state["now"].as_str().unwrap_or(""),
                state["wallNow"].as_str().unwrap_or(""),
                human_secs(state["offsetSecs"].as_i64().unwrap_or(0))
            );
        }
        Some(ClockCommand::Advance { duration }) => {
            let moved = client
                .send(
                    reqwest::Method::POST,
                    "/_sim/clock/advance",
                    &[],
                    Some(json!({ "by": duration })),
                )
                .await?;
            println!(
                "simulated {} -> {}  (offset {})",
                moved["before"].as_str().unwrap_or(""),
                moved["now"].as_str().unwrap_or(""),
                human_secs(moved["offsetSecs"].as_i64().unwrap_or(0))
            );
            for roll in moved["rolledCredentials"].as_array().into_iter().flatten() {
                println!(
                    "  rolled the certificate of {} (new thumbprint {})",
                    roll["resourceId"].as_str().unwrap_or(""),
                    roll["thumbprint"].as_str().unwrap_or("")
                );
            }
            if moved["pendingWork"].as_u64().unwrap_or(0) > 0 {
                eprintln!(
                    "misim: {} provisioning step(s) could not be delivered yet; ARM retries them",
                    moved["pendingWork"]
                );
            }
        }
    }
    Ok(())
}

fn human_secs(secs: i64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    format!(
        "{days}d {:02}h{:02}m{:02}s",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn fault_request(args: &FaultAddArgs) -> anyhow::Result<Value> {
    let mut plan = json!({ "target": args.target });
    if let Some(vm) = &args.vm {
        plan["vm"] = json!(vm);
    }
    match (args.status, args.latency_ms, args.drop) {
        (Some(status), None, false) => {
            plan["kind"] = json!("status");
            plan["status"] = json!(status);
            if let Some(retry) = args.retry_after {
                plan["retryAfter"] = json!(retry);
            }
        }
        (None, Some(ms), false) => {
            plan["kind"] = json!("latency");
            plan["latencyMs"] = json!(ms);
        }
        (None, None, true) => plan["kind"] = json!("drop"),
        _ => anyhow::bail!("give exactly one of --status N, --latency MS or --drop"),
    }
    if let Some(count) = args.count {
        plan["count"] = json!(count);
    }
    if let Some(duration) = &args.for_duration {
        let secs = misim_arm::service::parse_duration(duration).map_err(anyhow::Error::msg)?;
        plan["durationSecs"] = json!(secs);
    }
    if let Some(p) = args.probability {
        plan["probability"] = json!(p);
    }
    Ok(plan)
}

fn render_fault(fault: &Value) -> String {
    let action = match fault["kind"].as_str() {
        Some("status") => format!("status {}", fault["status"]),
        Some("latency") => format!("+{} ms", fault["latencyMs"]),
        Some("drop") => "drop".into(),
        _ => "?".into(),
    };
    let mut limits = Vec::new();
    if let Some(n) = fault["remaining"].as_u64() {
        limits.push(format!("{n} left"));
    }
    if let Some(end) = fault["expiresAt"]
        .as_i64()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
    {
        limits.push(format!(
            "until {} (wall time)",
            end.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ));
    }
    if let Some(p) = fault["probability"].as_f64() {
        limits.push(format!("p={p}"));
    }
    format!(
        "{}  {:<4}  {:<36}  {:<12}  {}  (fired {})",
        fault["id"].as_str().unwrap_or(""),
        fault["target"].as_str().unwrap_or(""),
        fault["vm"].as_str().unwrap_or(if fault["target"] == "aad" {
            "token requests"
        } else {
            "every VM"
        }),
        action,
        if limits.is_empty() {
            "until removed".to_string()
        } else {
            limits.join(", ")
        },
        fault["fired"]
    )
}

pub async fn fault(data_dir: &Path, command: &FaultCommand) -> anyhow::Result<()> {
    let client = SimClient::connect(data_dir).await?;
    match command {
        FaultCommand::Add(args) => {
            let plan = fault_request(args)?;
            let fault = client
                .send(reqwest::Method::POST, "/_sim/faults", &[], Some(plan))
                .await?;
            println!("{}", render_fault(&fault));
        }
        FaultCommand::List { json } => {
            let all = client
                .send(reqwest::Method::GET, "/_sim/faults", &[], None)
                .await?;
            for fault in all["value"].as_array().into_iter().flatten() {
                if *json {
                    println!("{fault}");
                } else {
                    println!("{}", render_fault(fault));
                }
            }
        }
        FaultCommand::Clear { id } => {
            let path = match id {
                Some(id) => format!("/_sim/faults/{id}"),
                None => "/_sim/faults".into(),
            };
            client
                .send(reqwest::Method::DELETE, &path, &[], None)
                .await?;
            println!("cleared");
        }
    }
    Ok(())
}

pub async fn explain(data_dir: &Path, token: &str, json_out: bool) -> anyhow::Result<()> {
    let client = SimClient::connect(data_dir).await?;
    let answer = client
        .send(
            reqwest::Method::POST,
            "/_sim/explain",
            &[],
            Some(json!({ "token": token })),
        )
        .await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let claims = &answer["claims"];
    let principal = &answer["principal"];
    println!(
        "token     {} (v{}), signed by key {}",
        claims["aud"],
        claims["ver"].as_str().unwrap_or("?"),
        answer["header"]["kid"]
    );
    println!("issuer    {}", claims["iss"]);
    println!(
        "subject   {} ({})",
        claims["oid"],
        principal["kind"].as_str().unwrap_or("unknown")
    );
    println!(
        "app id    {}",
        claims["appid"]
            .as_str()
            .or(claims["azp"].as_str())
            .unwrap_or("")
    );
    if let Some(exp) = claims["exp"]
        .as_i64()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
    {
        println!(
            "expires   {} (simulated time)",
            exp.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        );
    }
    if let Some(mirid) = claims["xms_mirid"].as_str() {
        println!("identity  {mirid}");
    }
    for vm in principal["vms"].as_array().into_iter().flatten() {
        println!(
            "on VM     {} (vmId {})",
            vm["id"].as_str().unwrap_or(""),
            vm["vmId"].as_str().unwrap_or("")
        );
    }
    let assignments = principal["roleAssignments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if assignments.is_empty() {
        println!("roles     none: ARM will refuse every action");
    }
    for a in &assignments {
        println!(
            "role      {} at {}",
            a["role"].as_str().unwrap_or("?"),
            a["scope"].as_str().unwrap_or("")
        );
    }
    println!(
        "ARM now   {}: {}",
        if answer["acceptedByArm"].as_bool() == Some(true) {
            "accepts it"
        } else {
            "refuses it"
        },
        answer["reason"].as_str().unwrap_or("")
    );
    Ok(())
}
