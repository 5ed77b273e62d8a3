//! Opening and serving each service: the one code path that `misim up` (all three in one
//! process) and split mode (`misim aad|arm|imds`) share. Services only ever meet over HTTP.

use anyhow::Context;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use misim_core::Clock;

/// Opens AAD on its database (`None`: in memory).
pub async fn open_aad(
    db: Option<&Path>,
    clock: Arc<Clock>,
    config: misim_aad::AadConfig,
) -> anyhow::Result<misim_aad::Aad> {
    let pool = misim_core::db::open(db, &misim_aad::MIGRATOR)
        .await
        .context("cannot open aad.db")?;
    misim_aad::Aad::open(misim_aad::Store::new(pool), clock, config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open AAD: {e}"))
}

/// Opens IMDS on its database; `factory` opens per-VM listeners (`None`: source-address mode only).
pub async fn open_imds(
    db: Option<&Path>,
    clock: Arc<Clock>,
    config: misim_imds::ImdsConfig,
    to_aad: misim_core::tls::FormClient,
    factory: Option<Arc<dyn misim_imds::ListenerFactory>>,
    shutdown: CancellationToken,
) -> anyhow::Result<misim_imds::Imds> {
    let pool = misim_core::db::open(db, &misim_imds::MIGRATOR)
        .await
        .context("cannot open imds.db")?;
    misim_imds::Imds::open(
        misim_imds::Store::new(pool),
        clock,
        config,
        to_aad,
        factory,
        shutdown,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot open IMDS: {e}"))
}

/// Where ARM finds its peers.
pub struct ArmPeers {
    /// Trusts the deployment's CA.
    pub http: reqwest::Client,
    /// AAD's internal directory API lives on AAD's URL.
    pub aad_url: String,
    /// IMDS's host API.
    pub host_url: String,
    pub internal_secret: String,
}

/// Opens ARM on its database and plans the reconcile pass: peers may have lost state (deleted
/// databases, split-mode restarts), so ARM re-sends what it holds once its worker runs.
pub async fn open_arm(
    db: Option<&Path>,
    clock: Arc<Clock>,
    config: misim_arm::ArmConfig,
    peers: ArmPeers,
) -> anyhow::Result<(misim_arm::Arm, misim_arm::TokenValidator)> {
    let pool = misim_core::db::open(db, &misim_arm::MIGRATOR)
        .await
        .context("cannot open arm.db")?;
    let directory = misim_arm::ports::HttpDirectory {
        http: peers.http.clone(),
        aad_url: peers.aad_url.clone(),
        secret: peers.internal_secret.clone(),
    };
    let host = misim_arm::ports::HttpHost {
        http: peers.http.clone(),
        host_url: peers.host_url.clone(),
        secret: peers.internal_secret.clone(),
    };
    let sim_peers = misim_arm::ports::SimPeers {
        http: peers.http.clone(),
        aad_url: peers.aad_url.clone(),
        host_url: peers.host_url,
        secret: peers.internal_secret,
    };
    let tenant_id = config.tenant_id.clone();
    let arm = misim_arm::Arm::open(
        misim_arm::Store::new(pool),
        clock.clone(),
        config,
        Arc::new(directory),
        Arc::new(host),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot open ARM: {e}"))?;
    arm.set_sim_peers(sim_peers);
    arm.reconcile()
        .await
        .map_err(|e| anyhow::anyhow!("cannot plan the reconcile pass: {e}"))?;
    let validator = misim_arm::TokenValidator::new(peers.http, &peers.aad_url, &tenant_id, clock);
    Ok((arm, validator))
}

/// The listeners of one process: each serves until shutdown; any that stops on its own is a
/// failure the process reports.
pub struct Supervisor {
    shutdown: CancellationToken,
    tasks: JoinSet<(&'static str, std::io::Result<()>)>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self {
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }
}

impl Supervisor {
    /// Cancelled when the process shuts down: for background tasks and per-VM listeners.
    pub fn token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    pub fn serve(
        &mut self,
        name: &'static str,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        router: axum::Router,
    ) {
        let token = self.shutdown.child_token();
        self.tasks.spawn(async move {
            (
                name,
                misim_core::serve::serve(listener, tls, router, token).await,
            )
        });
    }

    /// Resolves when any listener stops on its own (an error), with its name.
    pub async fn wait_for_failure(&mut self) -> Failure {
        self.tasks.join_next().await.and_then(Result::ok)
    }

    /// Stops every listener and lets in-flight requests finish.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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

/// A listener that stopped on its own, with its name.
pub type Failure = Option<(&'static str, std::io::Result<()>)>;

/// Waits for Ctrl-C, SIGTERM or a listener failure (returned, to report after shutdown).
pub async fn wait_for_stop(supervisor: &mut Supervisor) -> Failure {
    tokio::select! {
        () = shutdown_signal() => None,
        failed = supervisor.wait_for_failure() => failed,
    }
}

/// The process's result once it stopped.
pub fn outcome(failure: Failure) -> anyhow::Result<()> {
    match failure {
        Some((service, Err(error))) => Err(anyhow::anyhow!("{service} stopped: {error}")),
        Some((service, Ok(()))) => Err(anyhow::anyhow!("{service} stopped unexpectedly")),
        None => Ok(()),
    }
}

/// Opens per-VM IMDS listeners on the bind host; hands out the pre-claimed demo port once.
pub struct VmListeners {
    pub host: IpAddr,
    pub reserved: std::sync::Mutex<Option<TcpListener>>,
}

#[async_trait::async_trait]
impl misim_imds::ListenerFactory for VmListeners {
    async fn bind(&self, preferred: u16) -> std::io::Result<TcpListener> {
        let reserved = {
            let mut slot = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
            let matches = slot
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .is_some_and(|a| a.port() == preferred);
            if matches { slot.take() } else { None }
        };
        match reserved {
            Some(listener) => Ok(listener),
            None => TcpListener::bind(SocketAddr::new(self.host, preferred)).await,
        }
    }
}
