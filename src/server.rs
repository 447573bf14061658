//! HTTP endpoints: `/metrics` on one address, `/healthz` and `/readyz` on another (as
//! controller-runtime lays them out), so probes and scrapes can be exposed separately.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Binds `addr` for the endpoint `what`: a port in use or an address not ours is an error at
/// start, not a process that runs on without the endpoint (and reports Ready).
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { what, addr, source })
}

#[derive(Debug, thiserror::Error)]
#[error("serving {what} on {addr}: {source}")]
pub struct BindError {
    what: &'static str,
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Set once the controller's watch of GitRepositories has listed everything.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serves `/metrics` on `listener` until the runtime shuts down.
/// A server running until it fails.
pub type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>>;

pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .with_state(metrics);
    axum::serve(listener, app).await
}

/// Serves `/healthz` (the process answers) and `/readyz` (the watches have synced) on
/// `listener`.
pub async fn serve_probes(listener: TcpListener, readiness: Readiness) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(r): State<Readiness>| async move {
                if r.is_ready() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "watches not synced yet")
                }
            }),
        )
        .with_state(readiness);
    axum::serve(listener, app).await
}
