//! A Context whose API server is a script of the test's: for the narrow error paths of an I/O
//! step (what it asks, and what it does with an answer the real server rarely gives).

use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use http::{Request, Response};
use kube::client::Body;
use tower_test::mock::Handle;

use super::Context;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::runtime::{Config, Disk};
use crate::source::Cache;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    config: Config,
}

/// A Context with default flags and its caches under `dir`, and the handle that receives each
/// request it sends.
pub(super) fn context(dir: &Path) -> (Arc<Context>, Handle<Request<Body>, Response<Body>>) {
    let (service, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let config = Flags::parse_from(["capstan"]).config;
    let disk = Disk {
        cache: Arc::new(Cache::new(dir.join("repos"), 1, 1 << 20)),
        work_dir: dir.join("work"),
    };
    let kube_config = kube::Config::new("https://127.0.0.1:1".parse().expect("a URL"));
    let (live, _wakes) = Live::new(client.clone(), None, None);
    let metrics = Arc::new(Metrics::default());
    let ctx = Context::new(
        kube_config,
        client,
        &config,
        &disk,
        live,
        metrics.clone(),
        crate::notify::Notifier::disabled(metrics),
        kube::runtime::reflector::store().0,
    );
    (ctx, api)
}

/// An API error answer, as the API server writes it.
pub(super) fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string().into_bytes()))
        .expect("a response")
}
