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

/// Runs `future`; a panic inside it comes back as `Err(message)` instead of unwinding into the
/// connection's task (which closes the connection with no answer). A panic is a bug: every
/// input has a documented answer, and the tests send random ones. This keeps what the client
/// sees of one an error in the service's own dialect.
pub async fn catch_panic<F: std::future::Future>(future: F) -> Result<F::Output, String> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::task::Poll;
    let mut running = std::pin::pin!(future);
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| running.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into()))),
        },
    )
    .await
}

/// The answer a service gives for a request whose handler panicked (the panic's message):
/// its own 500, in the dialect of the route the URI names.
pub type PanicAnswer = fn(&http::Uri, &str) -> axum::response::Response;

/// Middleware (`axum::middleware::from_fn_with_state(answer, contain_panics)`) for routers with
/// many handlers: [`catch_panic`] around the rest of the stack, a panic answered by `answer`.
pub async fn contain_panics(
    axum::extract::State(answer): axum::extract::State<PanicAnswer>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let uri = request.uri().clone();
    catch_panic(next.run(request))
        .await
        .unwrap_or_else(|message| answer(&uri, &message))
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

    #[tokio::test]
    async fn a_panicking_handler_gets_the_services_answer_and_others_are_untouched() {
        fn answer(uri: &http::Uri, message: &str) -> axum::response::Response {
            (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "contained at {}: {}",
                    uri.path(),
                    message.contains("out of bounds")
                ),
            )
                .into_response()
        }
        use axum::response::IntoResponse;
        async fn panics_after_a_wait() -> &'static str {
            tokio::task::yield_now().await;
            // Indexing past the end: a panic the compiler cannot see coming.
            let words = ["fine"];
            words[std::hint::black_box(1)]
        }
        async fn after_a_wait() -> &'static str {
            tokio::task::yield_now().await;
            "fine"
        }
        let router = Router::new()
            .route("/boom", axum::routing::get(panics_after_a_wait))
            .route("/fine", axum::routing::get(after_a_wait))
            .layer(axum::middleware::from_fn_with_state(
                answer as PanicAnswer,
                contain_panics,
            ));
        let call = |path: &'static str| {
            let router = router.clone();
            async move {
                let response = router
                    .oneshot(
                        http::Request::builder()
                            .uri(path)
                            .body(axum::body::Body::empty())
                            .expect("request"),
                    )
                    .await
                    .expect("infallible");
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1024)
                    .await
                    .expect("body");
                (status, String::from_utf8_lossy(&body).to_string())
            }
        };
        assert_eq!(
            call("/boom").await,
            (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "contained at /boom: true".to_string()
            )
        );
        assert_eq!(
            call("/fine").await,
            (http::StatusCode::OK, "fine".to_string())
        );
    }

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
