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
    /// Split mode: run AAD (token service, Graph subset) alone.
    Aad(AadArgs),
    /// Split mode: run ARM alone; it talks to AAD and to IMDS's host API.
    Arm(ArmArgs),
    /// Split mode: run IMDS alone (source-address mode and/or per-VM listeners).
    Imds(ImdsArgs),
    /// The certificate authority of a split deployment.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Write connection.json for a split deployment (asks AAD for the admin and ARM for the
    /// subscription), so that every other command finds it.
    Connect(ConnectArgs),
    /// Apply a seed file (resource groups, identities, VMs, role assignments) through ARM's API.
    Seed(SeedArgs),
    /// Exit 0 when URL answers HTTP at all (container health checks).
    Health(HealthArgs),
    /// The lifecycle timeline of all three services (`--follow` streams it live).
    Events(EventsArgs),
    /// Show the simulated clock, or move every service's clock forward.
    Clock {
        #[command(subcommand)]
        command: Option<ClockCommand>,
    },
    /// Fault plans for IMDS and AAD: answer errors, add latency or drop connections.
    #[command(subcommand)]
    Fault(FaultCommand),
    /// Decode and verify a token, and say what it stands for and whether ARM accepts it now.
    Explain {
        /// The access token (a `Bearer ` prefix is ignored).
        token: String,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep streaming new events (Ctrl-C stops).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only what concerns this VM (name when unique, or resource id): its host, its identities.
    #[arg(long)]
    pub vm: Option<String>,
    /// One JSON object per line (`time`, `service`, `kind`, `correlation_id`, ...).
    #[arg(long)]
    pub json: bool,
    /// Only this kind, or a prefix ending in `.` (`imds.`, `arm.request.`).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only one request chain.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// At most this many past events.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum ClockCommand {
    /// Move simulated time forward (`90s`, `2h`, `46d`, `1w`, `1d12h`); returns once the rolls
    /// and expiries that became due are done. Never backwards.
    Advance { duration: String },
}

#[derive(Debug, Subcommand)]
pub enum FaultCommand {
    /// Add a plan: exactly one of --status, --latency, --drop.
    Add(FaultAddArgs),
    /// The plans in force.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove one plan (by id) or all.
    Clear { id: Option<String> },
}

#[derive(Debug, Args)]
pub struct FaultAddArgs {
    /// Which service misbehaves.
    #[arg(long, value_parser = ["imds", "aad"], default_value = "imds")]
    pub target: String,
    /// IMDS only: one VM (name or resource id); default every VM.
    #[arg(long)]
    pub vm: Option<String>,
    /// Answer this HTTP status (400-599), e.g. 404, 410, 429, 500, 503.
    #[arg(long)]
    pub status: Option<u16>,
    /// With --status: send `Retry-After` with this many seconds.
    #[arg(long, requires = "status")]
    pub retry_after: Option<u32>,
    /// Answer normally, this many milliseconds later.
    #[arg(long = "latency")]
    pub latency_ms: Option<u64>,
    /// Close the connection without an answer.
    #[arg(long)]
    pub drop: bool,
    /// Only the next N requests.
    #[arg(long)]
    pub count: Option<u32>,
    /// Only for this long (wall time: `30s`, `5m`).
    #[arg(long = "for")]
    pub for_duration: Option<String>,
    /// Only this share of requests (0 < P <= 1).
    #[arg(long)]
    pub probability: Option<f64>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create (or keep) the CA, issue a server certificate for the given names and create (or
    /// keep) the internal secret: `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`,
    /// `internal-secret` in DIR.
    Init(CaInitArgs),
}

#[derive(Debug, Args)]
pub struct CaInitArgs {
    /// Directory for the files (created if missing).
    pub dir: PathBuf,
    /// Also copy `ca.pem` into this directory: the one to share with app containers, which must
    /// not see the keys or the internal secret.
    #[arg(long)]
    pub public_dir: Option<PathBuf>,
    /// DNS names or addresses of the server certificate (comma-separated or repeated).
    #[arg(
        long = "name",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,aad,arm,imds,imds-control"
    )]
    pub names: Vec<String>,
}

/// The internal credential shared by the services of one deployment.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// File holding the internal secret (e.g. from `misim ca init`).
    #[arg(long, env = "MISIM_INTERNAL_SECRET_FILE")]
    pub internal_secret_file: Option<PathBuf>,
    /// The internal secret itself (prefer the file form: arguments show in `ps`).
    #[arg(
        long,
        env = "MISIM_INTERNAL_SECRET",
        hide_env_values = true,
        conflicts_with = "internal_secret_file"
    )]
    pub internal_secret: Option<String>,
}

/// HTTPS of a split-mode service.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// The deployment's CA certificate (trusted for calls to peers).
    #[arg(long, env = "MISIM_CA_CERT")]
    pub ca_cert: PathBuf,
    /// Server certificate (PEM) of this service, issued by the CA.
    #[arg(long, env = "MISIM_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    #[arg(long, env = "MISIM_TLS_KEY")]
    pub tls_key: PathBuf,
}

#[derive(Debug, Args)]
pub struct AadArgs {
    /// Address to listen on (HOST:PORT; a name is resolved at start).
    #[arg(long, env = "MISIM_LISTEN", default_value = "127.0.0.1:8444")]
    pub listen: String,
    /// Authority host as clients reach it (issuers, discovery); default https://LISTEN.
    #[arg(long, env = "MISIM_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Further origins clients may use for the authority (e.g. a published port on the
    /// docker host), accepted in client-assertion audiences (comma-separated).
    #[arg(long = "alias-url", env = "MISIM_ALIAS_URLS", value_delimiter = ',')]
    pub alias_urls: Vec<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Keep state in memory.
    #[arg(long, env = "MISIM_IN_MEMORY")]
    pub in_memory: bool,
    /// Lifetime of app tokens in seconds (Entra: 60–90 minutes).
    #[arg(long, env = "MISIM_APP_TOKEN_LIFETIME", default_value_t = 3599, value_parser = clap::value_parser!(i64).range(60..=86_400))]
    pub app_token_lifetime: i64,
    /// Lifetime of managed-identity tokens in seconds (Azure: about 24 hours).
    #[arg(long, env = "MISIM_MI_TOKEN_LIFETIME", default_value_t = 86_399, value_parser = clap::value_parser!(i64).range(60..=7 * 86_400))]
    pub mi_token_lifetime: i64,
    #[command(flatten)]
    pub signing_key: SigningKeyPeriod,
}

#[derive(Debug, Args)]
pub struct ArmArgs {
    /// Address to listen on (HOST:PORT; a name is resolved at start).
    #[arg(long, env = "MISIM_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// ARM's URL as clients reach it; default https://LISTEN.
    #[arg(long, env = "MISIM_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// AAD's URL (its public URL: token issuers must match it).
    #[arg(long, env = "MISIM_AAD_URL")]
    pub aad_url: String,
    /// IMDS's host API (where ARM installs VMs and credentials).
    #[arg(long, env = "MISIM_IMDS_URL")]
    pub imds_url: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Keep state in memory.
    #[arg(long, env = "MISIM_IN_MEMORY")]
    pub in_memory: bool,
    /// RSA-2048 keys kept generated ahead for new identities.
    #[arg(long, env = "MISIM_KEY_POOL", default_value_t = 48, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub key_pool: u16,
    /// How long to wait for AAD at start, in seconds (at most a day).
    #[arg(long, env = "MISIM_PEER_WAIT", default_value_t = 120, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub peer_wait: u64,
    /// Subscription id of a new data dir (so compose files and apps can name it); random
    /// when absent. A data dir keeps the one it was created with.
    #[arg(long, env = "MISIM_SUBSCRIPTION_ID")]
    pub subscription_id: Option<String>,
    #[command(flatten)]
    pub periods: IdentityPeriods,
}

#[derive(Debug, Args)]
pub struct ImdsArgs {
    /// The VM-facing listener in source-address mode (callers are mapped to VMs by the
    /// `misim-ip` tag), e.g. 169.254.169.254:80 on a docker network.
    #[arg(long, env = "MISIM_SOURCE_LISTEN")]
    pub source_listen: Option<String>,
    /// Also give every VM its own listener on this address (as `misim up` does).
    #[arg(long, env = "MISIM_VM_HOST")]
    pub vm_host: Option<IpAddr>,
    /// Host name in the per-VM endpoints IMDS reports; default the --vm-host address.
    #[arg(long, env = "MISIM_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// The host API ARM calls (HOST:PORT; a name is resolved at start). Keep it off the VM
    /// network: bind an address only the control network reaches.
    #[arg(long, env = "MISIM_HOST_API_LISTEN", default_value = "127.0.0.1:8446")]
    pub host_api_listen: String,
    /// AAD's URL (where IMDS redeems client assertions).
    #[arg(long, env = "MISIM_AAD_URL")]
    pub aad_url: String,
    /// The deployment's CA certificate (trusted for calls to AAD).
    #[arg(long, env = "MISIM_CA_CERT")]
    pub ca_cert: PathBuf,
    /// Serve the host API over HTTPS with this certificate (PEM, issued by the CA).
    #[arg(long, env = "MISIM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "MISIM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Keep state in memory.
    #[arg(long, env = "MISIM_IN_MEMORY")]
    pub in_memory: bool,
    /// Azure's documented IMDS rate limits.
    #[arg(long, env = "MISIM_IMDS_THROTTLE", value_enum, default_value_t = OnOff::On)]
    pub imds_throttle: OnOff,
}

/// Where a deployment's services are, for commands that are not given a connection.json.
#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    /// AAD's URL.
    #[arg(long = "aad", env = "MISIM_AAD_URL")]
    pub aad: Option<String>,
    /// ARM's URL.
    #[arg(long = "arm", env = "MISIM_ARM_URL")]
    pub arm: Option<String>,
    /// The IMDS endpoint scripts should use (optional).
    #[arg(long = "imds", env = "MISIM_IMDS_ENDPOINT")]
    pub imds: Option<String>,
    /// The deployment's CA certificate.
    #[arg(long, env = "MISIM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    #[command(flatten)]
    pub secret: SecretArgs,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub peers: PeerArgs,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// The seed file (JSON; see docs/docker.md).
    pub file: PathBuf,
    /// Use these services instead of the data dir's connection.json.
    #[command(flatten)]
    pub peers: PeerArgs,
    /// How long to wait for VMs to finish provisioning, in seconds (at most a day).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait: u64,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// URL to probe.
    #[arg(env = "MISIM_HEALTH_URL")]
    pub url: String,
    /// CA certificate for an https URL.
    #[arg(long, env = "MISIM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
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
    /// Also serve the demo VM's deprecated VM-extension endpoint (`/oauth2/token`, port 50342
    /// on Azure) on this port of the bind host; 0 picks a free one. Off when absent.
    #[arg(long, env = "MISIM_IMDS_EXTENSION_PORT")]
    pub imds_extension_port: Option<u16>,
    #[command(flatten)]
    pub periods: IdentityPeriods,
    #[command(flatten)]
    pub signing_key: SigningKeyPeriod,
}

/// How often AAD rolls its token-signing key.
#[derive(Debug, Clone, Args)]
pub struct SigningKeyPeriod {
    /// AAD rolls its token-signing key this often (simulated days; Entra publishes no period).
    #[arg(long, env = "MISIM_SIGNING_KEY_ROLL_DAYS", default_value_t = 42, value_parser = clap::value_parser!(i64).range(1..=3650))]
    pub signing_key_roll_days: i64,
}

/// Certificate periods of managed identities (simulated days).
#[derive(Debug, Clone, Args)]
pub struct IdentityPeriods {
    /// Validity of an identity's certificate (Azure: 90 days).
    #[arg(long, env = "MISIM_IDENTITY_CERT_DAYS", default_value_t = 90, value_parser = clap::value_parser!(i64).range(2..=3650))]
    pub identity_cert_days: i64,
    /// Age at which it rolls (Azure: 45 days); less than the validity.
    #[arg(long, env = "MISIM_IDENTITY_CERT_ROLL_DAYS", default_value_t = 45, value_parser = clap::value_parser!(i64).range(1..=3649))]
    pub identity_cert_roll_days: i64,
}

impl IdentityPeriods {
    /// The roll age, checked against the validity.
    pub fn identity_cert_roll_days(&self) -> anyhow::Result<i64> {
        if self.identity_cert_roll_days >= self.identity_cert_days {
            anyhow::bail!(
                "--identity-cert-roll-days ({}) must be less than --identity-cert-days ({}): the new certificate must arrive before the old one expires",
                self.identity_cert_roll_days,
                self.identity_cert_days
            );
        }
        Ok(self.identity_cert_roll_days)
    }
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Resource (audience) of the token.
    #[arg(long, default_value = "https://management.azure.com/")]
    pub resource: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn up(args: &[&str]) -> Result<UpArgs, clap::Error> {
        let cli = Cli::try_parse_from(["misim", "up"].iter().chain(args))?;
        match cli.command {
            Command::Up(up) => Ok(up),
            other => panic!("not up: {other:?}"),
        }
    }

    #[test]
    fn imds_rate_limits_are_on_unless_lifted() {
        if std::env::var_os("MISIM_IMDS_THROTTLE").is_some() {
            eprintln!("skipped: MISIM_IMDS_THROTTLE overrides the default being tested");
            return;
        }
        assert_eq!(up(&[]).expect("up").imds_throttle, OnOff::On);
        assert_eq!(
            up(&["--imds-throttle", "off"]).expect("off").imds_throttle,
            OnOff::Off
        );
        assert!(up(&["--imds-throttle", "sometimes"]).is_err());
    }

    #[test]
    fn waits_longer_than_a_day_are_refused_by_the_parser() {
        // Unbounded, they overflowed `Instant + Duration` at the first poll (a panic).
        let seed = |wait: &str| {
            Cli::try_parse_from(["misim", "seed", "seed.json", "--wait", wait]).map(|_| ())
        };
        assert!(seed("86400").is_ok());
        assert!(seed("86401").is_err());
        assert!(seed("18446744073709551615").is_err());
        let arm = |wait: &str| {
            Cli::try_parse_from([
                "misim",
                "arm",
                "--aad-url",
                "https://a",
                "--imds-url",
                "http://i",
                "--ca-cert",
                "ca.pem",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "--peer-wait",
                wait,
            ])
            .map(|_| ())
        };
        assert!(arm("0").is_ok());
        assert!(arm("18446744073709551615").is_err());
    }
}
