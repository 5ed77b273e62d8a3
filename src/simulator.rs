//! `misim up`: AAD, ARM and IMDS in one process. They still talk over loopback HTTP like in
//! split mode (ARCHITECTURE.md §2); this module only binds, wires and supervises.

use anyhow::Context;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

use misim_core::Clock;
use misim_core::tls::CertificateAuthority;

use crate::connection::{Admin, Connection, DemoVm};
use crate::services::{self, Supervisor};

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    pub data_dir: PathBuf,
    pub in_memory: bool,
    pub host: IpAddr,
    pub arm_port: u16,
    pub aad_port: u16,
    pub imds_port: u16,
    pub no_demo: bool,
    pub imds_throttle: bool,
    /// Extra names for the HTTPS certificates (docker hostnames).
    pub tls_names: Vec<String>,
    /// Host used in public URLs; defaults to the bind host (127.0.0.1 for a wildcard bind).
    pub public_host: Option<String>,
    pub app_token_lifetime_secs: i64,
    pub mi_token_lifetime_secs: i64,
    /// RSA keys ARM keeps pre-generated for new identities.
    pub key_pool: u16,
    /// Source-address mode: one IMDS listener here, mapping callers to VMs by their
    /// `misim-ip` tag (e.g. 169.254.169.254:80 inside a network namespace or container).
    pub imds_source_listen: Option<SocketAddr>,
    /// The demo VM's VM-extension endpoint on its own port (Azure: 50342); `None`: off.
    pub imds_extension_port: Option<u16>,
    /// Identity certificates: valid this many simulated days, rolled at this age.
    pub identity_cert_days: i64,
    pub identity_cert_roll_days: i64,
    /// AAD rolls its token-signing key this often (simulated days).
    pub signing_key_roll_days: i64,
}

impl SimulatorConfig {
    /// Every port 0, the given data dir: what tests and benchmarks use.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            in_memory: false,
            host: IpAddr::from([127, 0, 0, 1]),
            arm_port: 0,
            aad_port: 0,
            imds_port: 0,
            no_demo: false,
            imds_throttle: true,
            tls_names: Vec::new(),
            public_host: None,
            app_token_lifetime_secs: 3599,
            mi_token_lifetime_secs: 86_399,
            key_pool: 4,
            imds_source_listen: None,
            imds_extension_port: None,
            identity_cert_days: misim_arm::ArmConfig::DEFAULT_CERT_DAYS,
            identity_cert_roll_days: misim_arm::ArmConfig::DEFAULT_ROLL_DAYS,
            signing_key_roll_days: misim_aad::DEFAULT_SIGNING_KEY_ROLL_SECS / 86_400,
        }
    }
}

/// A running simulator.
pub struct Simulator {
    pub connection: Connection,
    pub aad: misim_aad::Aad,
    pub arm: misim_arm::Arm,
    pub imds: misim_imds::Imds,
    pub clock: Arc<Clock>,
    data_dir: PathBuf,
    background: Vec<tokio::task::JoinHandle<()>>,
    supervisor: Supervisor,
}

fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

async fn bind(host: IpAddr, port: u16, service: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(host, port))
        .await
        .with_context(|| format!("cannot listen for {service} on {host}:{port}"))
}

/// Reads the internal secret from the data dir, creating it on first use.
fn internal_secret(data_dir: &Path, in_memory: bool) -> anyhow::Result<String> {
    if in_memory {
        return Ok(misim_core::crypto::random_secret::<32>());
    }
    let path = data_dir.join(misim_core::internal::INTERNAL_SECRET_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && !text.trim().is_empty()
    {
        return Ok(text.trim().to_string());
    }
    let secret = misim_core::crypto::random_secret::<32>();
    misim_core::tls::write_atomically(&path, secret.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret)
}

impl Simulator {
    /// Starts every service; returns once all listeners accept connections and
    /// `connection.json` is written.
    pub async fn start(config: SimulatorConfig) -> anyhow::Result<Self> {
        let data_dir = &config.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
        let connection_path = Connection::path(data_dir);
        if connection_path.exists() {
            std::fs::remove_file(&connection_path)
                .with_context(|| format!("cannot remove a stale {}", connection_path.display()))?;
        }
        let ca = CertificateAuthority::load_or_create(data_dir)
            .context("cannot set up the certificate authority")?;
        let secret = internal_secret(data_dir, config.in_memory)?;

        let arm_listener = bind(config.host, config.arm_port, "ARM").await?;
        let aad_listener = bind(config.host, config.aad_port, "AAD").await?;
        // The demo VM's IMDS port is claimed up front so a taken port fails the start.
        let demo_listener = if config.no_demo {
            None
        } else {
            Some(bind(config.host, config.imds_port, "IMDS").await?)
        };
        let demo_port = demo_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?
            .map_or(0, |a| a.port());
        let extension_listener = match (config.imds_extension_port, config.no_demo) {
            (Some(port), false) => {
                Some(bind(config.host, port, "the VM-extension endpoint").await?)
            }
            _ => None,
        };
        let source_listener = match config.imds_source_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for IMDS (source-address mode) on {addr}")
            })?),
            None => None,
        };
        // IMDS's host API: internal, on loopback, never one of the VM-facing listeners.
        let host_api_listener = bind(IpAddr::from([127, 0, 0, 1]), 0, "the IMDS host API").await?;

        let public_host = config.public_host.clone().unwrap_or_else(|| {
            if config.host.is_unspecified() {
                "127.0.0.1".into()
            } else {
                config.host.to_string()
            }
        });
        let public_host = url_host(&public_host);
        let aad_port = aad_listener.local_addr()?.port();
        let aad_url = format!("https://{public_host}:{aad_port}");
        let arm_url = format!(
            "https://{public_host}:{}",
            arm_listener.local_addr()?.port()
        );
        let host_api_url = format!(
            "http://127.0.0.1:{}",
            host_api_listener.local_addr()?.port()
        );

        let mut names: Vec<String> = vec!["127.0.0.1".into(), "localhost".into()];
        for extra in std::iter::once(public_host.trim_matches(['[', ']']).to_string())
            .chain(config.tls_names.iter().cloned())
        {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(&extra))
                && !extra.is_empty()
                && extra != "0.0.0.0"
            {
                names.push(extra);
            }
        }
        let tls = ca
            .server_config(&names)
            .context("cannot issue the HTTPS certificate")?;
        let clock = Arc::new(Clock::default());
        let db_path = |name: &str| (!config.in_memory).then(|| data_dir.join(name));
        let mut supervisor = Supervisor::default();

        let mut aad_config = misim_aad::AadConfig::new(&aad_url, &secret);
        aad_config.alias_origins = names
            .iter()
            .map(|n| format!("https://{}:{aad_port}", url_host(n)))
            .collect();
        aad_config.app_token_lifetime_secs = config.app_token_lifetime_secs;
        aad_config.mi_token_lifetime_secs = config.mi_token_lifetime_secs;
        aad_config.signing_key_roll_secs = config.signing_key_roll_days * 86_400;
        aad_config.trusted_ca_pem = Some(ca.cert_pem.clone());
        let aad =
            services::open_aad(db_path("aad.db").as_deref(), clock.clone(), aad_config).await?;

        // Every edge between services is HTTP, as in split mode (ARCHITECTURE.md §2).
        let to_peers =
            misim_core::tls::http_client(&ca.cert_pem, std::time::Duration::from_secs(10))?;

        // IMDS: per-VM listeners on the bind host; the demo VM's port is the one claimed above.
        let factory = Arc::new(services::VmListeners {
            host: config.host,
            reserved: std::sync::Mutex::new(demo_listener),
        });
        let imds_config = misim_imds::ImdsConfig {
            aad_url: aad_url.clone(),
            internal_secret: secret.clone(),
            public_host: public_host.clone(),
            throttle: config.imds_throttle,
        };
        let imds = services::open_imds(
            db_path("imds.db").as_deref(),
            clock.clone(),
            imds_config,
            misim_core::tls::FormClient::new(&ca.cert_pem, std::time::Duration::from_secs(10))?,
            Some(factory),
            supervisor.token(),
        )
        .await?;

        let arm_config = misim_arm::ArmConfig {
            public_url: arm_url.clone(),
            aad_url: aad_url.clone(),
            graph_url: aad_url.clone(),
            tenant_id: aad.tenant().id.clone(),
            admin_object_id: aad.bootstrap().object_id.clone(),
            key_pool_size: i64::from(config.key_pool),
            subscription_id: None,
            identity_cert_days: config.identity_cert_days,
            identity_cert_roll_days: config.identity_cert_roll_days,
        };
        let peers = services::ArmPeers {
            http: to_peers,
            aad_url: aad_url.clone(),
            host_url: host_api_url,
            internal_secret: secret.clone(),
        };
        let (arm, validator) = services::open_arm(
            db_path("arm.db").as_deref(),
            clock.clone(),
            arm_config,
            peers,
        )
        .await?;

        supervisor.serve(
            "aad",
            aad_listener,
            Some(tls.clone()),
            misim_aad::router(aad.clone()),
        );
        supervisor.serve(
            "arm",
            arm_listener,
            Some(tls),
            misim_arm::router(arm.clone(), validator),
        );
        supervisor.serve(
            "imds host API",
            host_api_listener,
            None,
            misim_imds::host_router(imds.clone()),
        );
        let imds_source = match source_listener {
            Some(listener) => {
                let url = format!("http://{}", listener.local_addr()?);
                supervisor.serve(
                    "imds (source-address mode)",
                    listener,
                    None,
                    misim_imds::source_router(imds.clone()),
                );
                Some(url)
            }
            None => None,
        };
        let background = arm.spawn_background(supervisor.token());

        let demo_vm = if config.no_demo {
            None
        } else {
            // One correlation id for the whole seeding chain, as for a request.
            let correlation = uuid::Uuid::new_v4().to_string();
            Some(
                misim_core::events::with_correlation(correlation, seed_demo(&arm, &aad, demo_port))
                    .await?,
            )
        };
        let imds_extension = match (extension_listener, &demo_vm) {
            (Some(listener), Some((_, vm_id))) => {
                let url = format!("http://{public_host}:{}", listener.local_addr()?.port());
                supervisor.serve(
                    "imds (VM-extension endpoint)",
                    listener,
                    None,
                    misim_imds::vm_router(imds.clone(), vm_id.clone()),
                );
                Some(url)
            }
            _ => None,
        };
        let imds_url = match &demo_vm {
            Some((_, vm_id)) => Some(
                imds.vm_endpoint(vm_id)
                    .context("the demo VM has no IMDS endpoint")?,
            ),
            None => None,
        };
        let admin = aad.bootstrap();
        let connection = Connection {
            arm: arm_url,
            aad: aad_url.clone(),
            graph: aad_url,
            imds: imds_url,
            ca_cert: ca.cert_path.clone(),
            tenant_id: admin.tenant_id.clone(),
            subscription_id: arm.subscription_id().to_string(),
            admin: Admin {
                client_id: admin.client_id.clone(),
                client_secret: admin.client_secret.clone(),
                object_id: admin.object_id.clone(),
            },
            demo_vm: demo_vm.map(|(id, _)| DemoVm { id }),
            imds_source,
            imds_extension,
        };
        connection
            .write(data_dir)
            .with_context(|| format!("cannot write {}", connection_path.display()))?;
        Ok(Self {
            connection,
            aad,
            arm,
            imds,
            background,
            clock,
            data_dir: data_dir.clone(),
            supervisor,
        })
    }

    /// Runs until Ctrl-C, SIGTERM or a listener failure, then shuts down.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let failure = services::wait_for_stop(&mut self.supervisor).await;
        self.shutdown().await;
        services::outcome(failure)
    }

    /// Stops every listener, lets in-flight requests finish, and removes `connection.json`.
    pub async fn shutdown(mut self) {
        self.supervisor.stop().await;
        for task in self.background.drain(..) {
            let _ = task.await;
        }
        self.imds.join().await;
        let _ = std::fs::remove_file(Connection::path(&self.data_dir));
    }
}

pub const DEMO_GROUP: &str = "demo-rg";
pub const DEMO_VM: &str = "demo-vm";

/// The seeded demo: resource group `demo-rg` and VM `demo-vm` with a system-assigned identity,
/// created through ARM's own use cases as the bootstrap admin. Returns (resource id, vmId).
async fn seed_demo(
    arm: &misim_arm::Arm,
    aad: &misim_aad::Aad,
    imds_port: u16,
) -> anyhow::Result<(String, String)> {
    let admin = misim_arm::auth::Caller {
        object_id: aad.bootstrap().object_id.clone(),
        app_id: aad.bootstrap().client_id.clone(),
    };
    let sub = arm.subscription_id().to_string();
    let fail = |e: misim_arm::ArmError| anyhow::anyhow!("cannot seed the demo VM: {e}");
    if !arm.group_exists(DEMO_GROUP).await.map_err(fail)? {
        arm.put_group(
            &admin,
            &sub,
            DEMO_GROUP,
            misim_arm::service::TrackedInput {
                location: "eastus".into(),
                tags: Default::default(),
            },
        )
        .await
        .map_err(fail)?;
    }
    let mut tags = serde_json::Map::new();
    tags.insert(
        misim_arm::service::IMDS_PORT_TAG.into(),
        serde_json::json!(imds_port.to_string()),
    );
    let existing = arm.vm(&admin, &sub, DEMO_GROUP, DEMO_VM).await.ok();
    let input = misim_arm::service::VmInput {
        location: Some("eastus".into()),
        tags: Some(tags),
        properties: existing.is_none().then(|| serde_json::json!({"hardwareProfile": {"vmSize": "Standard_B1s"}, "osProfile": {"computerName": DEMO_VM, "adminUsername": "azureuser"}}).as_object().cloned().unwrap_or_default()),
        identity: existing.is_none().then(|| serde_json::json!({"type": "SystemAssigned"})),
        conditions: Default::default(),
    };
    // A PATCH on restart re-sends the host its state and the current port tag.
    let (view, _) = arm
        .put_vm(&admin, &sub, DEMO_GROUP, DEMO_VM, input, existing.is_some())
        .await
        .map_err(fail)?;
    if arm.pending_work().await.map_err(fail)? > 0 {
        anyhow::bail!("cannot seed the demo VM: provisioning did not reach AAD and IMDS");
    }
    Ok((view.resource.id.clone(), view.state.vm_id.clone()))
}
