//! Tools for a split deployment: `misim ca init`, `misim connect`, `misim health`.

use anyhow::Context;
use std::path::Path;
use std::time::Duration;

use misim_core::tls::{CertificateAuthority, write_atomically};

use crate::cli::{CaInitArgs, HealthArgs, PeerArgs};
use crate::connection::{Admin, Connection};
use crate::split::{fetch_bootstrap, peer_client, read_secret};

pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// Creates (or keeps) the CA and the internal secret in `dir`, and issues a fresh server
/// certificate for `names`.
pub fn ca_init(args: &CaInitArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let names: Vec<String> = args
        .names
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        anyhow::bail!("give at least one --name for the server certificate");
    }
    let ca = CertificateAuthority::load_or_create(dir).context("cannot set up the CA")?;
    let (cert_pem, key_pem) = ca
        .issue_server_certificate(&names)
        .context("cannot issue the server certificate")?;
    write_private(&dir.join(SERVER_KEY_FILE), key_pem.as_bytes())?;
    write_atomically(&dir.join(SERVER_CERT_FILE), cert_pem.as_bytes())
        .with_context(|| format!("cannot write {}", dir.join(SERVER_CERT_FILE).display()))?;
    if let Some(public) = &args.public_dir {
        std::fs::create_dir_all(public)
            .with_context(|| format!("cannot create {}", public.display()))?;
        write_atomically(
            &public.join(misim_core::tls::CA_CERT_FILE),
            ca.cert_pem.as_bytes(),
        )
        .with_context(|| format!("cannot write the CA into {}", public.display()))?;
    }
    let secret_path = dir.join(misim_core::internal::INTERNAL_SECRET_FILE);
    let existing = std::fs::read_to_string(&secret_path).unwrap_or_default();
    if existing.trim().is_empty() {
        let secret = misim_core::crypto::random_secret::<32>();
        write_private(&secret_path, secret.as_bytes())?;
    }
    println!(
        "{}: ca.pem, ca-key.pem, {SERVER_CERT_FILE}, {SERVER_KEY_FILE} (for {}), internal-secret",
        dir.display(),
        names.join(", ")
    );
    Ok(())
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_atomically(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    Ok(())
}

/// The connection details of a split deployment, asked of its services.
pub async fn discover(peers: &PeerArgs) -> anyhow::Result<Connection> {
    let (Some(aad), Some(arm), Some(ca_cert)) = (&peers.aad, &peers.arm, &peers.ca_cert) else {
        anyhow::bail!("give --aad URL, --arm URL and --ca-cert FILE (or the MISIM_* variables)");
    };
    let secret = read_secret(&peers.secret)?;
    let http = peer_client(ca_cert)?;
    let aad = aad.trim_end_matches('/').to_string();
    let bootstrap = fetch_bootstrap(&http, &aad, &secret, Duration::from_secs(30)).await?;
    let mut connection = Connection {
        arm: arm.trim_end_matches('/').to_string(),
        aad: aad.clone(),
        graph: aad,
        imds: peers.imds.clone(),
        ca_cert: std::path::absolute(ca_cert).unwrap_or_else(|_| ca_cert.clone()),
        tenant_id: bootstrap.tenant_id,
        subscription_id: String::new(),
        admin: Admin {
            client_id: bootstrap.admin_client_id,
            client_secret: bootstrap.admin_client_secret,
            object_id: bootstrap.admin_object_id,
        },
        demo_vm: None,
        imds_source: None,
        imds_extension: None,
    };
    connection.subscription_id = subscription_of(&connection).await?;
    Ok(connection)
}

/// The subscription ARM serves (the first the admin sees).
async fn subscription_of(connection: &Connection) -> anyhow::Result<String> {
    let token = crate::vm_env::admin_token(connection, "https://management.azure.com/").await?;
    let url = format!("{}/subscriptions?api-version=2022-12-01", connection.arm);
    let http = peer_client(&connection.ca_cert)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match http.get(&url).bearer_auth(&token).send().await {
            Ok(response) => {
                let status = response.status();
                let body: serde_json::Value = response
                    .json()
                    .await
                    .with_context(|| format!("ARM at {url} answered something other than JSON"))?;
                return body["value"][0]["subscriptionId"]
                    .as_str()
                    .map(str::to_string)
                    .with_context(|| {
                        format!("ARM answered {status} without a subscription: {body}")
                    });
            }
            Err(error) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("ARM at {} is unreachable: {error}", connection.arm)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// `misim connect`: writes connection.json into the data dir.
pub async fn connect(data_dir: &Path, peers: &PeerArgs) -> anyhow::Result<()> {
    let connection = discover(peers).await?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    connection
        .write(data_dir)
        .with_context(|| format!("cannot write {}", Connection::path(data_dir).display()))?;
    println!(
        "{} written: ARM {}, AAD {}, tenant {}, subscription {}",
        Connection::path(data_dir).display(),
        connection.arm,
        connection.aad,
        connection.tenant_id,
        connection.subscription_id
    );
    Ok(())
}

/// The connection to use: the peers given on the command line, else the data dir's.
pub async fn connection_for(data_dir: &Path, peers: &PeerArgs) -> anyhow::Result<Connection> {
    if peers.arm.is_some() || peers.aad.is_some() {
        discover(peers).await
    } else {
        Connection::read(data_dir)
    }
}

/// `misim health URL`: any HTTP answer is healthy (the listener only accepts once the service
/// opened its state).
pub async fn health(args: &HealthArgs) -> anyhow::Result<()> {
    let http = match &args.ca_cert {
        Some(ca) => peer_client(ca)?,
        None if args.url.starts_with("https:") => {
            anyhow::bail!("give --ca-cert (or MISIM_CA_CERT) to check an https URL")
        }
        None => reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?,
    };
    let response = tokio::time::timeout(Duration::from_secs(5), http.get(&args.url).send())
        .await
        .with_context(|| format!("{} did not answer within 5 s", args.url))?
        .with_context(|| format!("{} did not answer", args.url))?;
    if response.status().is_server_error() {
        anyhow::bail!("{} answered {}", args.url, response.status());
    }
    Ok(())
}
