//! `misim`: see `misim --help` and CONTRACT.md.

use anyhow::Context;
use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

use misim::cli::{Cli, Command, OnOff, TokenArgs, UpArgs};
use misim::connection::Connection;
use misim::{Simulator, SimulatorConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MISIM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("misim: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up(cli.data_dir, args).await,
            Command::Token(args) => token(cli.data_dir, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("misim: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(data_dir: std::path::PathBuf, args: UpArgs) -> anyhow::Result<()> {
    let config = SimulatorConfig {
        data_dir,
        in_memory: args.in_memory,
        host: args.host,
        arm_port: args.arm_port,
        aad_port: args.aad_port,
        imds_port: args.imds_port,
        no_demo: args.no_demo,
        imds_throttle: args.imds_throttle == OnOff::On,
        tls_names: args.tls_names,
        public_host: args.public_host,
        app_token_lifetime_secs: args.app_token_lifetime,
        mi_token_lifetime_secs: args.mi_token_lifetime,
    };
    let data_dir = config.data_dir.clone();
    let mut simulator = Simulator::start(config).await?;
    let c = &simulator.connection;
    println!("misim is up (data dir {})", data_dir.display());
    println!("  ARM    {}", c.arm);
    println!("  AAD    {}   (Graph: {}/v1.0)", c.aad, c.graph);
    if let Some(imds) = &c.imds {
        println!("  IMDS   {imds}");
    }
    println!(
        "  tenant {}   subscription {}",
        c.tenant_id, c.subscription_id
    );
    println!("  CA     {}", c.ca_cert.display());
    println!(
        "  connection details: {}",
        Connection::path(&data_dir).display()
    );

    let failure = tokio::select! {
        () = shutdown_signal() => None,
        failed = simulator.wait_for_failure() => failed,
    };
    simulator.shutdown().await;
    match failure {
        Some((service, Err(error))) => Err(anyhow::anyhow!("{service} stopped: {error}")),
        Some((service, Ok(()))) => Err(anyhow::anyhow!("{service} stopped unexpectedly")),
        None => Ok(()),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn token(data_dir: std::path::PathBuf, args: TokenArgs) -> anyhow::Result<()> {
    let connection = Connection::read(&data_dir)?;
    let ca = std::fs::read_to_string(&connection.ca_cert)
        .with_context(|| format!("cannot read {}", connection.ca_cert.display()))?;
    let client = misim_core::tls::http_client(&ca, Duration::from_secs(30))?;
    let url = format!("{}/{}/oauth2/token", connection.aad, connection.tenant_id);
    let response = client
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", connection.admin.client_id.as_str()),
            ("client_secret", connection.admin.client_secret.as_str()),
            ("resource", args.resource.as_str()),
        ])
        .send()
        .await
        .with_context(|| format!("cannot reach AAD at {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .context("AAD answered with something other than JSON")?;
    match body.get("access_token").and_then(|t| t.as_str()) {
        Some(token) if status.is_success() => {
            println!("{token}");
            Ok(())
        }
        _ => Err(anyhow::anyhow!(
            "AAD refused: {}",
            body.get("error_description")
                .and_then(|d| d.as_str())
                .unwrap_or("unknown error")
        )),
    }
}
