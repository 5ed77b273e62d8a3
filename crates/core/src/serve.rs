//! Serving a router on a bound listener, over HTTPS or plain HTTP, until a shutdown signal.
//!
//! Library code never binds sockets (ARCHITECTURE.md §8): the caller hands over a bound
//! listener. Every request carries `axum::extract::ConnectInfo<SocketAddr>` (IMDS identifies
//! callers by source address).

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(Duration::from_secs(30))
        .timer(hyper_util::rt::TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            collapse_slashes(&mut req);
            router.clone().oneshot(req)
        });
        let service = TowerToHyperService::new(service);
        let builder = builder.clone();
        match &acceptor {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let Ok(Ok(tls_stream)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    Ok(())
}

/// Collapses repeated `/` in the path before routing: clients build URLs by concatenation
/// (msal4j, az with a trailing-slash base URL) and real Azure front ends tolerate it.
fn collapse_slashes<B>(req: &mut http::Request<B>) {
    let path = req.uri().path();
    if !path.contains("//") {
        return;
    }
    let mut collapsed = String::with_capacity(path.len());
    for ch in path.chars() {
        if !(ch == '/' && collapsed.ends_with('/')) {
            collapsed.push(ch);
        }
    }
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{collapsed}?{q}"),
        None => collapsed,
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// Peer address of a request served by [`serve`].
pub fn peer_addr(req: &axum::extract::Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_slashes_collapse_and_query_survives() {
        let mut req = http::Request::builder()
            .uri("//metadata//identity/oauth2/token?a=b//c")
            .body(())
            .expect("request");
        collapse_slashes(&mut req);
        assert_eq!(
            req.uri().to_string(),
            "/metadata/identity/oauth2/token?a=b//c"
        );
    }
}
