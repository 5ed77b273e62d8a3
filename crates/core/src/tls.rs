//! The per-deployment certificate authority and the HTTPS server configuration.
//!
//! The CA (ECDSA P-256) lives as `ca.pem` + `ca-key.pem` in the data dir so clients can trust
//! it across restarts; server certificates are cheap and issued fresh at every start for
//! `127.0.0.1`, `localhost` and any extra names (docker hostnames).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

use crate::crypto::random_bytes;

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
const CA_COMMON_NAME: &str = "misim local CA";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0} is not a PEM certificate or key")]
    BadPem(PathBuf),
}

pub struct CertificateAuthority {
    pub cert_pem: String,
    pub cert_path: PathBuf,
    key: rcgen::KeyPair,
}

fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CA_COMMON_NAME);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "misim");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Writes through a temp file and a rename so a crash never leaves half a file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            return Self::from_files(&cert_path, &key_path);
        }
        let key = rcgen::KeyPair::generate()?;
        let mut params = ca_params()?;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        // Long-lived: the simulated clock may be advanced by years.
        params.not_after = now + Duration::days(365 * 30);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_bytes::<16>()));
        let cert = params.self_signed(&key)?;
        write_atomically(&key_path, key.serialize_pem().as_bytes()).map_err(|source| {
            TlsError::Io {
                action: "write",
                path: key_path.clone(),
                source,
            }
        })?;
        restrict_permissions(&key_path);
        write_atomically(&cert_path, cert.pem().as_bytes()).map_err(|source| TlsError::Io {
            action: "write",
            path: cert_path.clone(),
            source,
        })?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_path: absolute(&cert_path),
            key,
        })
    }

    /// Uses a CA given as files (split mode: one CA for a whole deployment).
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert_path)?;
        let key = rcgen::KeyPair::from_pem(&read(key_path)?)
            .map_err(|_| TlsError::BadPem(key_path.to_owned()))?;
        if crate::crypto::pem_decode(&cert_pem).is_none() {
            return Err(TlsError::BadPem(cert_path.to_owned()));
        }
        Ok(Self {
            cert_pem,
            cert_path: absolute(cert_path),
            key,
        })
    }

    /// Issues a server certificate for `names` (IP addresses or DNS names).
    pub fn issue_server_certificate(&self, names: &[String]) -> Result<(String, String), TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("misim"),
        );
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(365 * 20);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_bytes::<16>()));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let issuer = rcgen::Issuer::new(ca_params()?, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A rustls server configuration for `names`, speaking HTTP/1.1.
    pub fn server_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let (cert_pem, key_pem) = self.issue_server_certificate(names)?;
        server_config_from_pem(&cert_pem, &self.cert_pem, &key_pem)
    }
}

/// Builds a server configuration from PEM text (leaf, chain, key).
pub fn server_config_from_pem(
    cert_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let bad = || TlsError::BadPem(PathBuf::from("<server certificate>"));
    let leaf = crate::crypto::pem_decode(cert_pem).ok_or_else(bad)?;
    let chain = crate::crypto::pem_decode(chain_pem).ok_or_else(bad)?;
    let key = crate::crypto::pem_decode(key_pem).ok_or_else(bad)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.into(), chain.into()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A rustls client configuration trusting exactly `ca_pem` (for service-to-service calls).
pub fn client_config(ca_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    let der =
        crate::crypto::pem_decode(ca_pem).ok_or_else(|| TlsError::BadPem(PathBuf::from("<ca>")))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into())?;
    config_with_roots(roots)
}

fn config_with_roots(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Best effort: a CA key readable by others is no worse than the simulator itself.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) {}

/// An HTTP client for service-to-service and CLI calls: trusts exactly `ca_pem`, never uses a
/// proxy (misim traffic stays on the addresses it was given) and never follows a redirect (no
/// misim endpoint redirects, and one would carry a credential elsewhere). reqwest still parses
/// each request's URL in its redirect layer; the one hot call uses [`FormClient`].
pub fn http_client(
    ca_pem: &str,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    client_with(client_config(ca_pem)?, timeout)
}

/// The same client trusting no CA: plain HTTP only (HTTPS fails at the handshake). Never needs
/// the platform's certificate store, which minimal images lack.
pub fn http_client_without_roots(
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    client_with(config_with_roots(rustls::RootCertStore::empty())?, timeout)
}

fn client_with(
    config: rustls::ClientConfig,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| TlsError::Io {
            action: "build an HTTP client for",
            path: PathBuf::from("<ca>"),
            source: std::io::Error::other(e),
        })
}

/// The client of one hot service-to-service call (IMDS posting a token request to AAD for every
/// uncached token): hyper's pooled HTTP/1.1 client over rustls, trusting exactly the
/// deployment's CA, no proxy, no redirects. reqwest, for the same call, parsed the URL into a
/// `url::Url` twice per request (its redirect layer and its response, even with redirects off):
/// a few percent of the token path. The connection settings are reqwest's.
#[derive(Clone)]
pub struct FormClient {
    client: hyper_util::client::legacy::Client<TimedConnector, http_body_util::Full<bytes::Bytes>>,
    timeout: std::time::Duration,
}

type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The most a connection may take, name resolution, TCP and TLS together (reqwest's limit).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The most of an answer a [`FormClient`] reads.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The HTTPS connector with one limit on the whole connection: the pool may finish a connect
/// in the background after its caller is served, and such a connect must end too.
#[derive(Clone)]
pub struct TimedConnector(HttpsConnector);

impl tower::Service<http::Uri> for TimedConnector {
    type Response = <HttpsConnector as tower::Service<http::Uri>>::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            tokio::time::timeout(CONNECT_TIMEOUT, connecting)
                .await
                .unwrap_or_else(|_| Err(format!("no connection within {CONNECT_TIMEOUT:?}").into()))
        })
    }
}

/// Why a [`FormClient`] call got no answer; each reads after the peer's name ("AAD is
/// unreachable: …").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormPostError {
    #[error("is unreachable: {0}")]
    Unreachable(String),
    #[error("gave no answer within {0:?}")]
    NoAnswer(std::time::Duration),
    #[error("answered {status} unreadably: {detail}")]
    Unreadable { status: u16, detail: String },
}

impl FormClient {
    /// A client trusting exactly `ca_pem`; every call ends within `timeout`, and every
    /// connection within 5 s.
    pub fn new(ca_pem: &str, timeout: std::time::Duration) -> Result<Self, TlsError> {
        use std::time::Duration;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        // reqwest's settings: the request goes out in one segment, never held back by Nagle,
        // and a pooled connection to a peer that vanished without a FIN is found out.
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config(ca_pem)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(TimedConnector(connector));
        Ok(Self { client, timeout })
    }

    /// POSTs `form` (`application/x-www-form-urlencoded`) with `headers`; the answer's status
    /// and body (at most 1 MiB), or why there is none.
    pub async fn post_form(
        &self,
        uri: &http::Uri,
        headers: &[(&'static str, &str)],
        form: String,
    ) -> Result<(u16, bytes::Bytes), FormPostError> {
        use http_body_util::BodyExt;
        let mut request = http::Request::post(uri.clone()).header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::from(form)))
            .map_err(|e| FormPostError::Unreachable(format!("the request is malformed: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| FormPostError::Unreachable(with_causes(&e)))?;
            let status = response.status().as_u16();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| FormPostError::Unreadable {
                    status,
                    detail: with_causes(&*e),
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| FormPostError::NoAnswer(self.timeout))?
    }
}

/// An error and its causes on one line ("client error (Connect): tcp connect error: Connection
/// refused (os error 111)").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form_client(timeout_ms: u64) -> FormClient {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(dir.path()).expect("ca");
        FormClient::new(&ca.cert_pem, std::time::Duration::from_millis(timeout_ms)).expect("client")
    }

    /// A loopback server that answers every connection with `answer` (nothing: it holds the
    /// connection and says nothing).
    async fn server(answer: Option<Vec<u8>>) -> (u16, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                if let Some(answer) = &answer {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let _ = socket.write_all(answer).await;
                }
                held.push(socket);
            }
        });
        (port, task)
    }

    /// The call's result, or a test failure if it outlives its own timeout by far.
    async fn post(client: &FormClient, url: String) -> Result<(u16, bytes::Bytes), FormPostError> {
        let uri: http::Uri = url.parse().expect("uri");
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client.post_form(&uri, &[("x-test", "1")], "a=b".into()),
        )
        .await
        .expect("the client's own timeout ends the call")
    }

    #[tokio::test]
    async fn a_form_post_answers_or_says_why_not_and_never_hangs() {
        let client = form_client(500);
        // An answer: its status and body.
        let (port, task) = server(Some(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
        ))
        .await;
        let (status, body) = post(&client, format!("http://127.0.0.1:{port}/t"))
            .await
            .expect("an answer");
        assert_eq!((status, &body[..]), (400, &b"{}"[..]));
        task.abort();
        // Nobody listens: the connection is refused, said in words down to the cause.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        match post(&client, format!("http://127.0.0.1:{port}/t")).await {
            Err(FormPostError::Unreachable(why)) => {
                assert!(why.contains("refused"), "{why}");
                assert!(!why.contains("Error {"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        // Someone listens and never answers: the call ends at its timeout.
        let (port, task) = server(None).await;
        assert_eq!(
            post(&client, format!("https://127.0.0.1:{port}/t")).await,
            Err(FormPostError::NoAnswer(std::time::Duration::from_millis(
                500
            )))
        );
        task.abort();
        // A peer that takes the TCP connection and never does TLS: the connection, not only the
        // call, ends (at 5 s), as the pool may finish a connect after its caller is gone.
        let (port, task) = server(None).await;
        match post(&form_client(60_000), format!("https://127.0.0.1:{port}/t")).await {
            Err(FormPostError::Unreachable(why)) => {
                assert!(why.contains("no connection within 5s"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        task.abort();
        // An answer over 1 MiB is not read into memory.
        let mut big = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            2 * MAX_ANSWER_BYTES
        )
        .into_bytes();
        big.extend(std::iter::repeat_n(b'x', 2 * MAX_ANSWER_BYTES));
        let (port, task) = server(Some(big)).await;
        match post(&form_client(5_000), format!("http://127.0.0.1:{port}/t")).await {
            Err(FormPostError::Unreadable {
                status: 200,
                detail,
            }) => {
                assert!(detail.contains("length limit"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        task.abort();
    }

    #[test]
    fn ca_persists_and_issues_server_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::load_or_create(dir.path()).expect("create");
        let again = CertificateAuthority::load_or_create(dir.path()).expect("load");
        assert_eq!(ca.cert_pem, again.cert_pem);
        let names = vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "aad".to_string(),
        ];
        again.server_config(&names).expect("server config");
        client_config(&ca.cert_pem).expect("client config");
    }
}
