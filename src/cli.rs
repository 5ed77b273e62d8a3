//! Command-line interface (CONTRACT.md, Commands). Flags of `misim up` also read `MISIM_<FLAG>`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "misim",
    version,
    about = "Managed Identity SIMulator: Azure Resource Manager, Entra ID and IMDS for managed identities, offline"
)]
pub struct Cli {
    /// Data directory: databases, CA, keys and connection.json.
    #[arg(
        long,
        global = true,
        env = "MISIM_DATA_DIR",
        default_value = "./.misim"
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run AAD, ARM and IMDS in one process until Ctrl-C or SIGTERM.
    Up(UpArgs),
    /// Print an access token of the bootstrap admin (client credentials with its secret).
    Token(TokenArgs),
    /// Point official Azure clients at a simulated VM's identity endpoint.
    #[command(subcommand)]
    Vm(VmCommand),
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Print `export NAME=VALUE` lines for a VM: its IMDS (`AZURE_POD_IDENTITY_AUTHORITY_HOST`)
    /// or, with `--app-service`, its App Service-style endpoint (`IDENTITY_ENDPOINT`,
    /// `IDENTITY_HEADER`), plus the CA trust variables.
    Env(VmEnvArgs),
    /// Run a command with that environment: `misim vm exec VM -- CMD ARGS...`.
    Exec(VmExecArgs),
}

#[derive(Debug, Args)]
pub struct VmEnvArgs {
    /// VM name (when unique) or full resource id.
    pub vm: String,
    /// Use the App Service-style endpoint instead of IMDS (never both: those variables
    /// override IMDS in every SDK).
    #[arg(long)]
    pub app_service: bool,
}

#[derive(Debug, Args)]
pub struct VmExecArgs {
    /// VM name (when unique) or full resource id.
    pub vm: String,
    #[arg(long)]
    pub app_service: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Keep state in memory: nothing is written except connection.json and the CA files.
    #[arg(long, env = "MISIM_IN_MEMORY")]
    pub in_memory: bool,
    /// Address every listener binds.
    #[arg(long, env = "MISIM_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// ARM (HTTPS) port; 0 picks a free one.
    #[arg(long, env = "MISIM_ARM_PORT", default_value_t = 8443)]
    pub arm_port: u16,
    /// AAD (HTTPS, also Graph) port; 0 picks a free one.
    #[arg(long, env = "MISIM_AAD_PORT", default_value_t = 8444)]
    pub aad_port: u16,
    /// IMDS (HTTP) port of the demo VM; 0 picks a free one.
    #[arg(long, env = "MISIM_IMDS_PORT", default_value_t = 8445)]
    pub imds_port: u16,
    /// Skip the demo resource group and VM.
    #[arg(long, env = "MISIM_NO_DEMO")]
    pub no_demo: bool,
    /// Azure's documented IMDS rate limits.
    #[arg(long, env = "MISIM_IMDS_THROTTLE", value_enum, default_value_t = OnOff::On)]
    pub imds_throttle: OnOff,
    /// Extra DNS names or addresses for the HTTPS certificates (comma-separated), e.g. docker
    /// service names.
    #[arg(long = "tls-name", env = "MISIM_TLS_NAMES", value_delimiter = ',')]
    pub tls_names: Vec<String>,
    /// Host name used in public URLs (issuers, links) when it differs from the bind address.
    #[arg(long, env = "MISIM_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Lifetime of app tokens in seconds (Entra: 60–90 minutes).
    #[arg(long, env = "MISIM_APP_TOKEN_LIFETIME", default_value_t = 3599, value_parser = clap::value_parser!(i64).range(60..=86_400))]
    pub app_token_lifetime: i64,
    /// Lifetime of managed-identity tokens in seconds (Azure: about 24 hours).
    #[arg(long, env = "MISIM_MI_TOKEN_LIFETIME", default_value_t = 86_399, value_parser = clap::value_parser!(i64).range(60..=7 * 86_400))]
    pub mi_token_lifetime: i64,
    /// RSA-2048 keys kept generated ahead (persisted) so creating an identity never waits for
    /// key generation.
    #[arg(long, env = "MISIM_KEY_POOL", default_value_t = 48, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub key_pool: u16,
    /// Also serve IMDS in source-address mode on ADDR:PORT: callers are mapped to VMs by the
    /// `misim-ip` tag of the VM (e.g. 169.254.169.254:80 inside a test network namespace).
    #[arg(long, env = "MISIM_IMDS_SOURCE_LISTEN")]
    pub imds_source_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Resource (audience) of the token.
    #[arg(long, default_value = "https://management.azure.com/")]
    pub resource: String,
}
