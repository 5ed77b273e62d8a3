//! Split mode: `misim aad`, `misim arm`, `misim imds` each run one service with its own data
//! dir, its peers' URLs and the deployment's internal secret (docs/docker.md). They open and
//! serve through the same functions as `misim up` (crate::services); no service reads another's
//! database.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use misim_core::Clock;
use misim_core::internal::{BOOTSTRAP_PATH, BootstrapInfo, INTERNAL_SECRET_HEADER};

use crate::cli::{AadArgs, ArmArgs, ImdsArgs, OnOff, SecretArgs, TlsArgs};
use crate::services::{self, Supervisor};

/// The internal secret from its file or its flag.
pub fn read_secret(args: &SecretArgs) -> anyhow::Result<String> {
    let secret = match (&args.internal_secret_file, &args.internal_secret) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the internal secret {}", path.display()))?,
        (None, Some(secret)) => secret.clone(),
        (None, None) => anyhow::bail!(
            "no internal secret: give --internal-secret-file (or MISIM_INTERNAL_SECRET_FILE), e.g. the one `misim ca init` writes"
        ),
    };
    let secret = secret.trim().to_string();
    if secret.len() < 16 {
        anyhow::bail!("the internal secret is too short (at least 16 characters)");
    }
    Ok(secret)
}

pub fn read_file(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

/// The server configuration from the given certificate, key and CA files.
fn server_tls(args: &TlsArgs) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    server_tls_files(&args.tls_cert, &args.tls_key, &args.ca_cert)
}

fn server_tls_files(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cert_pem = read_file(cert, "the server certificate")?;
    let key_pem = read_file(key, "the server key")?;
    let ca_pem = read_file(ca, "the CA certificate")?;
    misim_core::tls::server_config_from_pem(&cert_pem, &ca_pem, &key_pem)
        .context("cannot use the server certificate")
}

/// A client trusting the deployment's CA, for calls to peers.
pub fn peer_client(ca: &Path) -> anyhow::Result<reqwest::Client> {
    let ca_pem = read_file(ca, "the CA certificate")?;
    Ok(misim_core::tls::http_client(
        &ca_pem,
        Duration::from_secs(10),
    )?)
}

/// Binds HOST:PORT, resolving a name (e.g. a docker network alias) first.
pub async fn bind_named(address: &str, what: &str) -> anyhow::Result<TcpListener> {
    let resolved = tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("cannot resolve the {what} address {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))?;
    TcpListener::bind(resolved)
        .await
        .with_context(|| format!("cannot listen for {what} on {resolved} ({address})"))
}

fn default_url(listener: &TcpListener) -> anyhow::Result<String> {
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    Ok(format!("https://{host}:{}", addr.port()))
}

fn prepare_data_dir(data_dir: &Path, in_memory: bool) -> anyhow::Result<()> {
    if !in_memory {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    }
    Ok(())
}

fn db(data_dir: &Path, in_memory: bool, name: &str) -> Option<PathBuf> {
    (!in_memory).then(|| data_dir.join(name))
}

pub async fn run_aad(data_dir: PathBuf, args: AadArgs) -> anyhow::Result<()> {
    let secret = read_secret(&args.secret)?;
    let tls = server_tls(&args.tls)?;
    prepare_data_dir(&data_dir, args.in_memory)?;
    let listener = bind_named(&args.listen, "AAD").await?;
    let public_url = match args.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => default_url(&listener)?,
    };
    let mut config = misim_aad::AadConfig::new(&public_url, &secret);
    config.alias_origins = args
        .alias_urls
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    config.app_token_lifetime_secs = args.app_token_lifetime;
    config.mi_token_lifetime_secs = args.mi_token_lifetime;
    config.signing_key_roll_secs = args.signing_key.signing_key_roll_days * 86_400;
    config.trusted_ca_pem = Some(read_file(&args.tls.ca_cert, "the CA certificate")?);
    let clock = Arc::new(Clock::default());
    let aad = services::open_aad(
        db(&data_dir, args.in_memory, "aad.db").as_deref(),
        clock,
        config,
    )
    .await?;
    let mut supervisor = Supervisor::default();
    supervisor.serve("aad", listener, Some(tls), misim_aad::router(aad.clone()));
    println!(
        "misim aad is up: {public_url} (tenant {}, data dir {})",
        aad.tenant().id,
        data_dir.display()
    );
    let failure = services::wait_for_stop(&mut supervisor).await;
    supervisor.stop().await;
    services::outcome(failure)
}

/// AAD's tenant and admin, waiting up to `wait` for AAD to answer.
pub async fn fetch_bootstrap(
    http: &reqwest::Client,
    aad_url: &str,
    secret: &str,
    wait: Duration,
) -> anyhow::Result<BootstrapInfo> {
    let url = format!("{}{BOOTSTRAP_PATH}", aad_url.trim_end_matches('/'));
    let deadline = tokio::time::Instant::now() + wait;
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = http
            .get(&url)
            .header(INTERNAL_SECRET_HEADER, secret)
            .send()
            .await;
        match attempt {
            Ok(response) if response.status().is_success() => {
                return response
                    .json()
                    .await
                    .with_context(|| format!("{url} answered something other than the bootstrap"));
            }
            Ok(response)
                if response.status().as_u16() == 401 || response.status().as_u16() == 403 =>
            {
                anyhow::bail!(
                    "AAD at {aad_url} refused the internal secret: give every service the same one"
                );
            }
            Ok(response) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("AAD at {aad_url} answered {}", response.status());
            }
            Err(error) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("AAD at {aad_url} is unreachable: {error}");
            }
            _ => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

pub async fn run_arm(data_dir: PathBuf, args: ArmArgs) -> anyhow::Result<()> {
    let secret = read_secret(&args.secret)?;
    let tls = server_tls(&args.tls)?;
    let http = peer_client(&args.tls.ca_cert)?;
    prepare_data_dir(&data_dir, args.in_memory)?;
    let aad_url = args.aad_url.trim_end_matches('/').to_string();
    let bootstrap = fetch_bootstrap(
        &http,
        &aad_url,
        &secret,
        Duration::from_secs(args.peer_wait),
    )
    .await?;
    let listener = bind_named(&args.listen, "ARM").await?;
    let public_url = match args.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => default_url(&listener)?,
    };
    let clock = Arc::new(Clock::default());
    let config = misim_arm::ArmConfig {
        public_url: public_url.clone(),
        aad_url: aad_url.clone(),
        graph_url: aad_url.clone(),
        tenant_id: bootstrap.tenant_id.clone(),
        admin_object_id: bootstrap.admin_object_id.clone(),
        key_pool_size: i64::from(args.key_pool),
        subscription_id: args.subscription_id.clone(),
        identity_cert_days: args.periods.identity_cert_days,
        identity_cert_roll_days: args.periods.identity_cert_roll_days()?,
    };
    let peers = services::ArmPeers {
        http,
        aad_url,
        host_url: args.imds_url.trim_end_matches('/').to_string(),
        internal_secret: secret,
    };
    let (arm, validator) = services::open_arm(
        db(&data_dir, args.in_memory, "arm.db").as_deref(),
        clock,
        config,
        peers,
    )
    .await?;
    let mut supervisor = Supervisor::default();
    supervisor.serve(
        "arm",
        listener,
        Some(tls),
        misim_arm::router(arm.clone(), validator),
    );
    let background = arm.spawn_background(supervisor.token());
    println!(
        "misim arm is up: {public_url} (subscription {}, data dir {})",
        arm.subscription_id(),
        data_dir.display()
    );
    let failure = services::wait_for_stop(&mut supervisor).await;
    supervisor.stop().await;
    for task in background {
        let _ = task.await;
    }
    services::outcome(failure)
}

pub async fn run_imds(data_dir: PathBuf, args: ImdsArgs) -> anyhow::Result<()> {
    let secret = read_secret(&args.secret)?;
    let to_aad = misim_core::tls::FormClient::new(
        &read_file(&args.ca_cert, "the CA certificate")?,
        Duration::from_secs(10),
    )?;
    let host_api_tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server_tls_files(cert, key, &args.ca_cert)?),
        _ => None,
    };
    prepare_data_dir(&data_dir, args.in_memory)?;
    let host_api = bind_named(&args.host_api_listen, "the IMDS host API").await?;
    let source = match &args.source_listen {
        Some(address) => Some(bind_named(address, "IMDS (source-address mode)").await?),
        None => None,
    };
    if source.is_none() && args.vm_host.is_none() {
        anyhow::bail!("IMDS would serve no VM: give --source-listen, --vm-host or both");
    }
    let factory: Option<Arc<dyn misim_imds::ListenerFactory>> = args.vm_host.map(|host| {
        Arc::new(services::VmListeners {
            host,
            reserved: std::sync::Mutex::new(None),
        }) as Arc<dyn misim_imds::ListenerFactory>
    });
    let public_host = args
        .public_host
        .clone()
        .or_else(|| args.vm_host.map(|h| h.to_string()))
        .unwrap_or_else(|| "127.0.0.1".into());
    let config = misim_imds::ImdsConfig {
        aad_url: args.aad_url.trim_end_matches('/').to_string(),
        internal_secret: secret,
        public_host,
        throttle: args.imds_throttle == OnOff::On,
    };
    let mut supervisor = Supervisor::default();
    let imds = services::open_imds(
        db(&data_dir, args.in_memory, "imds.db").as_deref(),
        Arc::new(Clock::default()),
        config,
        to_aad,
        factory,
        supervisor.token(),
    )
    .await?;
    let host_api_addr = host_api.local_addr()?;
    let scheme = if host_api_tls.is_some() {
        "https"
    } else {
        "http"
    };
    supervisor.serve(
        "imds host API",
        host_api,
        host_api_tls,
        misim_imds::host_router(imds.clone()),
    );
    let source_addr = match source {
        Some(listener) => {
            let addr = listener.local_addr()?;
            supervisor.serve(
                "imds (source-address mode)",
                listener,
                None,
                misim_imds::source_router(imds.clone()),
            );
            Some(addr)
        }
        None => None,
    };
    println!(
        "misim imds is up: host API {scheme}://{host_api_addr}{} (data dir {})",
        source_addr
            .map(|a| format!(", VMs at http://{a}"))
            .unwrap_or_default(),
        data_dir.display()
    );
    let failure = services::wait_for_stop(&mut supervisor).await;
    supervisor.stop().await;
    imds.join().await;
    services::outcome(failure)
}
