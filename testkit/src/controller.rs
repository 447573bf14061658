//! A Capstan controller per test, in-process, watching only the test's namespace; and helpers
//! to create GitRepositories and wait on what the API server shows of them.

use std::time::Duration;

use capstan::api::GitRepository;
use capstan::runtime::{Config, RenderConfig};
use capstan::telemetry::LogFormat;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};

use super::Repo;
use super::env::{client, kube_config, namespace};

/// One test's world: a namespace, a client, and a controller reconciling that namespace.
pub struct Fixture {
    pub client: Client,
    pub ns: String,
    /// Where this test's controller serves `/metrics`, and `/healthz` and `/readyz`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub probe_addr: Option<std::net::SocketAddr>,
    pub webhook_addr: Option<std::net::SocketAddr>,
    controller: Option<tokio::task::JoinHandle<()>>,
    _cache: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(handle) = self.controller.take() {
            handle.abort();
        }
    }
}

impl Fixture {
    pub async fn new(test: &str) -> Fixture {
        let mut fixture = Fixture::new_stopped(test).await;
        fixture.start_controller();
        fixture
    }

    /// The prologue most tests share: a fixture, a repository named `test` holding `files`, and
    /// the GitRepository `app` on it (`spec(url, extra)`), applied at the repository's head.
    pub async fn synced(
        test: &str,
        files: &[(&str, &str)],
        extra: serde_json::Value,
    ) -> (Fixture, Repo, GitRepository) {
        let fx = Fixture::new(test).await;
        let repo = Repo::create(test, files);
        fx.create("app", spec(repo.http_url(), extra)).await;
        let gr = fx.wait_applied("app", &repo.head()).await;
        (fx, repo, gr)
    }

    /// A fixture whose controller also serves metrics, probes and webhooks, on free loopback
    /// ports.
    pub async fn with_http(test: &str) -> Fixture {
        let mut fixture = Fixture::new_stopped(test).await;
        // The listeners are held at once, so the ports differ.
        let (a, b, c) = (
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        );
        fixture.metrics_addr = Some(a.local_addr().unwrap());
        fixture.probe_addr = Some(b.local_addr().unwrap());
        fixture.webhook_addr = Some(c.local_addr().unwrap());
        drop((a, b, c));
        fixture.start_controller();
        fixture
    }

    /// A namespace and the helpers, with no controller: the test runs its own processes.
    pub async fn new_stopped(test: &str) -> Fixture {
        let client = client().await;
        let ns = namespace(&client, test).await;
        let cache = tempfile::tempdir().unwrap();
        Fixture {
            client,
            ns,
            metrics_addr: None,
            probe_addr: None,
            webhook_addr: None,
            controller: None,
            _cache: cache,
        }
    }

    pub fn stop_controller(&mut self) {
        if let Some(handle) = self.controller.take() {
            handle.abort();
        }
    }

    pub fn start_controller(&mut self) {
        let tools = super::env::render_tools();
        let config = Config {
            concurrency: 4,
            apply_concurrency: 8,
            git_concurrency: 2,
            namespace: Some(self.ns.clone()),
            shard: None,
            leader_elect: false,
            leader_election_namespace: None,
            leader_election_id: None,
            default_service_account: None,
            max_fetch_bytes: 64 << 20,
            render: RenderConfig {
                max_manifest_file_bytes: 1 << 20,
                max_manifest_bytes: 8 << 20,
                max_manifest_files: 100,
                kustomize_path: tools.kustomize,
                helm_path: tools.helm,
                sops_path: tools.sops,
            },
            metrics_bind_address: self.metrics_addr,
            health_probe_bind_address: self.probe_addr,
            webhook_bind_address: self.webhook_addr,
            cache_dir: self._cache.path().to_path_buf(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
        };
        self.controller = Some(tokio::spawn(async move {
            capstan::runtime::serve(kube_config().await, config, std::future::pending())
                .await
                .expect("controller");
        }));
    }

    pub fn api(&self) -> Api<GitRepository> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates a GitRepository named `name` with `spec` (JSON, as a user would write it).
    pub async fn create(&self, name: &str, spec: serde_json::Value) {
        self.create_labelled(name, serde_json::json!({}), spec)
            .await;
    }

    /// Creates a GitRepository with `labels` (a JSON object) from the start.
    pub async fn create_labelled(
        &self,
        name: &str,
        labels: serde_json::Value,
        spec: serde_json::Value,
    ) {
        let gr: GitRepository = serde_json::from_value(serde_json::json!({
            "apiVersion": "capstan.dev/v1alpha1",
            "kind": "GitRepository",
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
        }))
        .unwrap();
        self.api()
            .create(&PostParams::default(), &gr)
            .await
            .unwrap();
    }

    /// Merge-patches the GitRepository's spec or metadata, as `kubectl patch --type merge` does.
    pub async fn patch(&self, name: &str, patch: serde_json::Value) {
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Polls the GitRepository until `pred` holds; panics with its last status after `timeout`.
    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&GitRepository) -> bool,
    ) -> GitRepository {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let gr = self.api().get(name).await.unwrap();
            if pred(&gr) {
                return gr;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; status: {}",
                    serde_json::to_string_pretty(&gr.status).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until Ready is True for the current generation at a revision of `sha`.
    pub async fn wait_applied(&self, name: &str, sha: &str) -> GitRepository {
        self.wait(name, &format!("revision {sha} applied"), |gr| {
            ready(gr) == Some(("True".into(), "ReconciliationSucceeded".into()))
                && gr
                    .status
                    .as_ref()
                    .and_then(|s| s.last_applied_revision.as_deref())
                    .is_some_and(|r| r.ends_with(sha))
                && gr.status.as_ref().and_then(|s| s.observed_generation) == gr.metadata.generation
        })
        .await
    }

    /// Waits until Ready is False with `reason` for the current generation.
    pub async fn wait_failed(&self, name: &str, reason: &str) -> GitRepository {
        self.wait(name, &format!("Ready=False reason {reason}"), |gr| {
            ready(gr) == Some(("False".into(), reason.into()))
                && gr.status.as_ref().and_then(|s| s.observed_generation) == gr.metadata.generation
        })
        .await
    }

    /// A live object, untyped: `get("v1", "ConfigMap", "name")` in the test namespace.
    pub async fn get(&self, api_version: &str, kind: &str, name: &str) -> Option<DynamicObject> {
        self.get_in(&self.ns.clone(), api_version, kind, name).await
    }

    pub async fn get_in(
        &self,
        ns: &str,
        api_version: &str,
        kind: &str,
        name: &str,
    ) -> Option<DynamicObject> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .unwrap();
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            Api::namespaced_with(self.client.clone(), ns, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        api.get_opt(name).await.unwrap()
    }

    /// The `value` of ConfigMap `name` (what `configmap` writes); panics when there is none.
    pub async fn value(&self, name: &str) -> String {
        let cm = self.get("v1", "ConfigMap", name).await;
        let cm = cm.unwrap_or_else(|| panic!("no ConfigMap {name}"));
        cm.data["data"]["value"].as_str().unwrap_or_default().into()
    }

    /// Plays the Deployment controller (no kubelet runs here): Deployment `name` is available.
    pub async fn make_available(&self, name: &str) {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.ns);
        let live = deployments.get(name).await.unwrap();
        let status = serde_json::json!({"status": {
            "observedGeneration": live.metadata.generation,
            "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "ok"}],
        }});
        deployments
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }

    pub async fn wait_gone(&self, ns: &str, api_version: &str, kind: &str, name: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.get_in(ns, api_version, kind, name).await.is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{kind}/{name} was not deleted"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Creates Secret `name` of `ns` holding `data`, or gives it that data when it exists.
pub async fn put_secret(client: &Client, ns: &str, name: &str, data: &[(&str, &[u8])]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("capstan-tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

/// GET `path` from `addr` over plain HTTP: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], b"").await
}

/// One HTTP/1.0 request with `headers` and `body` to `addr`: (status code, body). A server that
/// answers before reading the whole body still has its answer read.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: test\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let _ = conn.write_all(body).await;
    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// A GitRepository spec for `url`: a 2 s interval and prune on, with `extra` on top.
pub fn spec(url: impl Into<String>, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = serde_json::json!({"url": url.into(), "interval": "2s", "prune": true});
    for (k, v) in extra.as_object().expect("extra is an object") {
        spec[k] = v.clone();
    }
    spec
}

/// (status, reason) of the Ready condition.
pub fn ready(gr: &GitRepository) -> Option<(String, String)> {
    let c = capstan::status::ready(gr.status.as_ref())?;
    Some((c.status.clone(), c.reason.clone()))
}

pub fn ready_message(gr: &GitRepository) -> String {
    capstan::status::ready(gr.status.as_ref())
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The summary of the last apply (default when there is none).
pub fn summary(gr: &GitRepository) -> capstan::api::Summary {
    gr.status
        .as_ref()
        .and_then(|s| s.summary.clone())
        .unwrap_or_default()
}

pub fn configmap(name: &str, data: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: {data:?}\n"
    )
}

/// A namespaced CRD of kind Widget in `group` (version v1, any fields, a status subresource).
pub fn widget_crd(group: &str) -> String {
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  \
         name: widgets.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  names:\n    \
         plural: widgets\n    singular: widget\n    kind: Widget\n  versions:\n  - name: v1\n    \
         served: true\n    storage: true\n    subresources: {{status: {{}}}}\n    schema:\n      \
         openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n"
    )
}

/// A Widget named `name` of `group`'s v1.
pub fn widget(group: &str, name: &str) -> String {
    format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: {name}\nspec:\n  size: 2\n")
}
