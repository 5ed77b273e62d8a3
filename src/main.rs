//! `misim`: see `misim --help` and CONTRACT.md.

use anyhow::Context;
use clap::Parser;
use std::process::ExitCode;

use misim::cli::{CaCommand, Cli, Command, OnOff, TokenArgs, UpArgs, VmCommand};
use misim::connection::Connection;
use misim::{Simulator, SimulatorConfig};

// glibc's allocator cost the token path about 5 % of its CPU (malloc, free, consolidation).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        .worker_threads(misim::async_worker_threads())
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
            Command::Aad(args) => misim::split::run_aad(cli.data_dir, args).await,
            Command::Arm(args) => misim::split::run_arm(cli.data_dir, args).await,
            Command::Imds(args) => misim::split::run_imds(cli.data_dir, args).await,
            Command::Ca(CaCommand::Init(args)) => misim::deploy::ca_init(&args),
            Command::Connect(args) => misim::deploy::connect(&cli.data_dir, &args.peers).await,
            Command::Health(args) => misim::deploy::health(&args).await,
            Command::Events(args) => misim::sim_cli::events(&cli.data_dir, &args).await,
            Command::Clock { command } => {
                misim::sim_cli::clock(&cli.data_dir, command.as_ref()).await
            }
            Command::Fault(command) => misim::sim_cli::fault(&cli.data_dir, &command).await,
            Command::Explain { token, json } => {
                misim::sim_cli::explain(&cli.data_dir, &token, json).await
            }
            Command::Seed(args) => {
                let text = std::fs::read_to_string(&args.file)
                    .with_context(|| format!("cannot read {}", args.file.display()))?;
                let seed = misim::seed::SeedFile::parse(&text)?;
                let connection = misim::deploy::connection_for(&cli.data_dir, &args.peers).await?;
                let applied = misim::seed::apply(
                    &connection,
                    &seed,
                    std::time::Duration::from_secs(args.wait),
                )
                .await?;
                println!("{}", serde_json::to_string_pretty(&applied)?);
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
        imds_extension_port: args.imds_extension_port,
        identity_cert_days: args.periods.identity_cert_days,
        identity_cert_roll_days: args.periods.identity_cert_roll_days()?,
        signing_key_roll_days: args.signing_key.signing_key_roll_days,
    };
    let data_dir = config.data_dir.clone();
    let simulator = Simulator::start(config).await?;
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

    simulator.run().await
}

async fn token(data_dir: std::path::PathBuf, args: TokenArgs) -> anyhow::Result<String> {
    misim::vm_env::admin_token(&Connection::read(&data_dir)?, &args.resource).await
}
