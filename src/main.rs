//! `misim`: see `misim --help` and CONTRACT.md.

use anyhow::Context;
use clap::Parser;
use std::process::ExitCode;

use misim::cli::{Cli, Command, OnOff, TokenArgs, UpArgs, VmCommand};
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
            Command::Token(args) => token(cli.data_dir, args)
                .await
                .map(|token| println!("{token}")),
            Command::Vm(VmCommand::Env(args)) => {
                let vars = misim::vm_env::vm_env(&cli.data_dir, &args.vm, args.app_service).await?;
                for (name, value) in vars.set {
                    println!("export {name}={}", misim::vm_env::shell_quote(&value));
                }
                for name in vars.unset {
                    println!("unset {name}");
                }
                Ok(())
            }
            Command::Vm(VmCommand::Exec(args)) => {
                let vars = misim::vm_env::vm_env(&cli.data_dir, &args.vm, args.app_service).await?;
                let (program, rest) = args
                    .command
                    .split_first()
                    .ok_or_else(|| anyhow::anyhow!("no command given"))?;
                let mut command = tokio::process::Command::new(program);
                command.args(rest).envs(vars.set);
                for name in vars.unset {
                    command.env_remove(name);
                }
                let status = command
                    .status()
                    .await
                    .with_context(|| format!("cannot run {program}"))?;
                std::process::exit(status.code().unwrap_or(1));
            }
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
        key_pool: args.key_pool,
        imds_source_listen: args.imds_source_listen,
    };
    let data_dir = config.data_dir.clone();
    let mut simulator = Simulator::start(config).await?;
    let c = &simulator.connection;
    println!("misim is up (data dir {})", data_dir.display());
    println!("  ARM    {}", c.arm);
    println!("  AAD    {}   (Graph: {}/v1.0)", c.aad, c.graph);
    if let Some(imds) = &c.imds {
        println!("  IMDS   {imds}   (demo-vm)");
    }
    if let Some(source) = &c.imds_source {
        println!("  IMDS   {source}   (source-address mode)");
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

async fn token(data_dir: std::path::PathBuf, args: TokenArgs) -> anyhow::Result<String> {
    misim::vm_env::admin_token(&Connection::read(&data_dir)?, &args.resource).await
}
