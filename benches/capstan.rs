//! Capstan's benchmarks: what it costs the cluster, measured against the local control plane and
//! git server of the tests, with the controller built in release mode and run as a process of its
//! own with a ServiceAccount identity (so the audit log attributes its requests).
//!
//! `cargo bench --bench capstan [-- SCENARIO...]` (or `make bench`) runs the scenarios, prints a
//! table per scenario, and writes `target/benchmarks.json` and `docs/benchmarks.md`. Benchmarks
//! measure; nothing here asserts a target.

// The tests' harness: the same control plane, git server and controller processes.
#[allow(dead_code, unused_imports)]
#[path = "../tests/integration/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use capstan::api::GitRepository;
use support::Repo;
use support::controller::{configmap, http_request, put_secret};
use support::env::{control_plane, git_server};
use support::process::{ControllerProcess, cluster_admin_kubeconfig, sa_user};
use support::{client, namespace};

const SCENARIOS: &[&str] = &["cold", "steady", "latency", "drift", "scale", "fetch"];

/// Figures of one scenario, in print order: (name, value, unit or note).
#[derive(Default)]
struct Figures {
    rows: Vec<(String, String)>,
    json: serde_json::Map<String, Value>,
}

impl Figures {
    fn add(&mut self, name: &str, value: impl Into<Value>, shown: impl Into<String>) {
        self.json.insert(name.to_string(), value.into());
        self.rows.push((name.to_string(), shown.into()));
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if values.is_empty() {
        return f64::NAN;
    }
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[i]
}

// ---------------------------------------------------------------- the controller under test

struct Controller {
    process: ControllerProcess,
    user: String,
    clk_tck: f64,
}

impl Controller {
    /// The release binary as a process with its own ServiceAccount (cluster-admin, of `ns`),
    /// cluster-wide as it is deployed, taking the GitRepositories of shard `shard`.
    fn start(ns: &str, shard: &str, dir: &Path) -> Controller {
        let sa = "capstan-bench";
        let kubeconfig = cluster_admin_kubeconfig(ns, sa, dir);
        let shard = format!("--shard={shard}");
        let process =
            ControllerProcess::start(&kubeconfig, "bench", &[&shard, "--leader-elect=false"]);
        let clk_tck = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Controller {
            process,
            user: sa_user(ns, sa),
            clk_tck,
        }
    }

    /// User plus system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid()))
            .unwrap_or_default();
        let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat(5); `after` starts at field 3.
        let ticks: f64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
            .unwrap_or(0.0);
        ticks / self.clk_tck
    }

    /// (current RSS, peak RSS) in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
    }
}

// ---------------------------------------------------------------- the API server's audit log

fn audit_mark() -> usize {
    support::audit::mark()
}

/// Requests by `user` since `mark`, watches left out, counted by "verb resource[/subresource]".
fn requests_by(user: &str, mark: usize) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(&control_plane().audit_log).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines().skip(mark) {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if e["stage"] != "ResponseComplete" || e["user"]["username"] != user {
            continue;
        }
        let verb = e["verb"].as_str().unwrap_or("");
        if verb == "watch" {
            continue;
        }
        let mut resource = e["objectRef"]["resource"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if let Some(sub) = e["objectRef"]["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        if resource.is_empty() {
            resource = "(non-resource)".into();
        }
        *counts.entry(format!("{verb} {resource}")).or_insert(0) += 1;
    }
    counts
}

fn mutating(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| {
            ["create", "update", "patch", "delete"]
                .iter()
                .any(|v| k.starts_with(&format!("{v} ")))
        })
        .map(|(_, n)| n)
        .sum()
}

fn reads(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| k.starts_with("get ") || k.starts_with("list "))
        .map(|(_, n)| n)
        .sum()
}

fn breakdown(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- git server access log

/// (requests, bytes sent) by the git HTTP server for `repo` in the access log after line `mark`.
async fn git_traffic(repo: &str, mark: usize) -> (u64, u64, u64) {
    let log = git_server().access_log().await;
    let (mut requests, mut bytes, mut packs) = (0, 0, 0);
    for line in log.lines().skip(mark) {
        if !line.contains(&format!("/{repo}.git/")) {
            continue;
        }
        // ... "POST /git/x.git/git-upload-pack HTTP/1.1" 200 1329 "-" "ua"
        let Some((_, after)) = line.split_once("\" ") else {
            continue;
        };
        let sent: u64 = after
            .split_whitespace()
            .nth(1)
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        requests += 1;
        bytes += sent;
        if line.contains("POST ") && line.contains("git-upload-pack") {
            packs += sent;
        }
    }
    (requests, bytes, packs)
}

async fn git_log_mark() -> usize {
    git_server().access_log().await.lines().count()
}

// ---------------------------------------------------------------- helpers

/// A GitRepository in `ns`, for the controller of that namespace's shard.
async fn create_gr(client: &Client, ns: &str, name: &str, spec: Value) {
    let gr: GitRepository = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "GitRepository",
        "metadata": {"name": name, "labels": {"capstan.dev/shard": shard_of(ns)}},
        "spec": spec,
    }))
    .unwrap();
    Api::<GitRepository>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &gr)
        .await
        .unwrap();
}

/// Each benchmark namespace has its own controller, sharded by the namespace's name.
fn shard_of(ns: &str) -> &str {
    ns
}

fn applied_revision(gr: &GitRepository) -> Option<&str> {
    let st = gr.status.as_ref()?;
    let ready = capstan::status::ready(Some(st))?;
    (ready.status == "True" && st.observed_generation == gr.metadata.generation)
        .then_some(st.last_applied_revision.as_deref())
        .flatten()
}

/// Polls until the GitRepository is Ready at a revision of `sha`; returns when that was seen.
async fn wait_ready(api: &Api<GitRepository>, name: &str, sha: &str, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let gr = api.get(name).await.unwrap();
        if applied_revision(&gr).is_some_and(|r| r.ends_with(sha)) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{name} not Ready at {sha} within {limit:?}: {:?}",
            gr.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_value(cms: &Api<ConfigMap>, name: &str, value: &str, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(cm) = cms.get_opt(name).await.unwrap()
            && cm
                .data
                .as_ref()
                .and_then(|d| d.get("value"))
                .map(String::as_str)
                == Some(value)
        {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{name} never became {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- scenario 1: cold sync

/// 1000 manifests: 2 CRDs, 8 custom resources, 10 namespaces with 98 objects each.
fn thousand_manifests(prefix: &str) -> Vec<(String, String)> {
    let group = format!("{prefix}.bench.capstan.dev");
    let mut files = Vec::new();
    for kind in ["Widget", "Gadget"] {
        let plural = format!("{}s", kind.to_lowercase());
        files.push((
            format!("crds/{plural}.yaml"),
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {plural}.{group}\nspec:\n  group: {group}\n  names: {{kind: {kind}, plural: {plural}, singular: {}, listKind: {kind}List}}\n  scope: Namespaced\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
                kind.to_lowercase()
            ),
        ));
    }
    for n in 0..10 {
        let ns = format!("{prefix}-{n}");
        let mut docs = vec![format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        )];
        for i in 0..20 {
            docs.push(format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{i}\n  namespace: {ns}\ndata:\n  index: \"{i}\"\n  text: \"{}\"\n", "x".repeat(200)));
            docs.push(format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: secret-{i}\n  namespace: {ns}\nstringData:\n  token: \"token-{i}\"\n"));
            docs.push(format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: {ns}\nspec:\n  selector: {{app: app-{i}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"));
        }
        for i in 0..19 {
            docs.push(format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa-{i}\n  namespace: {ns}\n"));
            docs.push(format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i}\n  namespace: {ns}\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: app-{i}}}\n  template:\n    metadata:\n      labels: {{app: app-{i}}}\n    spec:\n      serviceAccountName: sa-{i}\n      containers:\n      - name: app\n        image: registry.example.com/app:{i}\n        ports: [{{containerPort: 8080}}]\n"));
        }
        if n == 0 {
            for i in 0..4 {
                for kind in ["Widget", "Gadget"] {
                    docs.push(format!("apiVersion: {group}/v1\nkind: {kind}\nmetadata:\n  name: {}-{i}\n  namespace: {ns}\nspec:\n  size: {i}\n", kind.to_lowercase()));
                }
            }
        }
        files.push((format!("ns-{n}.yaml"), docs.join("---\n")));
    }
    files
}

fn objects_of(files: &[(String, String)]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|(_, text)| serde_saphyr::from_multiple::<Value>(text).unwrap())
        .collect()
}

/// The baseline: the same objects, server-side applied by a plain client with the same
/// concurrency as the controller's applies, CRDs and Namespaces first.
async fn plain_apply(client: &Client, objects: &[Value]) -> Duration {
    // Discovery once per kind, as any sensible client does.
    type Found = (kube::core::ApiResource, kube::discovery::ApiCapabilities);
    let kinds: std::sync::Arc<tokio::sync::Mutex<BTreeMap<String, Found>>> = Default::default();
    let started = Instant::now();
    let first = |o: &&Value| {
        matches!(
            o["kind"].as_str(),
            Some("CustomResourceDefinition" | "Namespace")
        )
    };
    let (tier0, tier1): (Vec<&Value>, Vec<&Value>) = objects.iter().partition(first);
    let apply = |object: &Value| {
        let client = client.clone();
        let mut object = object.clone();
        let kinds = kinds.clone();
        async move {
            let (group, version) = object["apiVersion"]
                .as_str()
                .unwrap()
                .split_once('/')
                .map(|(g, v)| (g.to_string(), v.to_string()))
                .unwrap_or((
                    String::new(),
                    object["apiVersion"].as_str().unwrap().to_string(),
                ));
            let kind = object["kind"].as_str().unwrap().to_string();
            let gvk = GroupVersionKind::gvk(&group, &version, &kind);
            let key = format!("{group}/{version}/{kind}");
            let found = kinds.lock().await.get(&key).cloned();
            let (ar, caps) = match found {
                Some(found) => found,
                None => {
                    let found = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
                    kinds.lock().await.insert(key, found.clone());
                    found
                }
            };
            if kind == "Secret" {
                let data: serde_json::Map<String, Value> = object["stringData"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| {
                        use base64::Engine;
                        let b =
                            base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap());
                        (k.clone(), Value::String(b))
                    })
                    .collect();
                object.as_object_mut().unwrap().remove("stringData");
                object["data"] = Value::Object(data);
            }
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
                Api::namespaced_with(
                    client,
                    object["metadata"]["namespace"].as_str().unwrap(),
                    &ar,
                )
            } else {
                Api::all_with(client, &ar)
            };
            api.patch(
                &name,
                &PatchParams::apply("bench-baseline").force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap();
            if kind == "CustomResourceDefinition" {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let crd = api.get(&name).await.unwrap();
                    let established =
                        crd.data["status"]["conditions"]
                            .as_array()
                            .is_some_and(|c| {
                                c.iter()
                                    .any(|c| c["type"] == "Established" && c["status"] == "True")
                            });
                    if established || Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    stream::iter(tier0.into_iter().map(apply))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    stream::iter(tier1.into_iter().map(apply))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    started.elapsed()
}

struct Bench {
    client: Client,
    ns: String,
    dir: tempfile::TempDir,
}

async fn cold(b: &Bench, controller: &Controller, figures: &mut Figures) -> (Repo, String) {
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    let (mut capstan_s, mut plain_s, mut mutating_n) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    let mut last_breakdown = String::new();
    for run in 0..3 {
        let files = thousand_manifests(&format!("plain{run}"));
        let objects = objects_of(&files);
        assert_eq!(objects.len(), 1000);
        plain_s.push(plain_apply(&b.client, &objects).await.as_secs_f64());

        let files = thousand_manifests(&format!("cold{run}"));
        let borrowed: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        let repo = Repo::create(&format!("cold{run}"), &borrowed);
        let name = format!("cold{run}");
        let mark = audit_mark();
        let started = Instant::now();
        create_gr(
            &b.client,
            &b.ns,
            &name,
            json!({"url": repo.http_url(), "interval": "1h", "timeout": "5m", "prune": true}),
        )
        .await;
        let done = wait_ready(&api, &name, &repo.head(), Duration::from_secs(600)).await;
        capstan_s.push((done - started).as_secs_f64());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let counts = requests_by(&controller.user, mark);
        mutating_n.push(mutating(&counts) as f64);
        last_breakdown = breakdown(&counts);
        last = Some((repo, name));
    }
    let (c, p) = (median(&mut capstan_s), median(&mut plain_s));
    figures.add(
        "capstan_create_to_ready_s",
        c,
        format!("{c:.2} s (median of 3)"),
    );
    figures.add(
        "plain_ssa_s",
        p,
        format!("{p:.2} s (median of 3; 1000 objects, concurrency 8)"),
    );
    figures.add("ratio", c / p, format!("{:.2}x", c / p));
    let m = median(&mut mutating_n);
    figures.add(
        "mutating_requests",
        m,
        format!("{m:.0} for 1000 objects (median of 3)"),
    );
    figures.add("requests_last_run", last_breakdown.clone(), last_breakdown);
    last.unwrap()
}

// ---------------------------------------------------------------- scenario 2: steady state

async fn steady(
    b: &Bench,
    controller: &Controller,
    repo: &Repo,
    name: &str,
    figures: &mut Figures,
) {
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"interval": "2s"}})),
    )
    .await
    .unwrap();
    // The spec change is one reconcile (digests unchanged: nothing sent); then it is steady.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_ready(&api, name, &repo.head(), Duration::from_secs(60)).await;
    let intervals = 10u32;
    let mark = audit_mark();
    let git_mark = git_log_mark().await;
    let cpu = controller.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2) * intervals + Duration::from_secs(1)).await;
    let cpu = controller.cpu_seconds() - cpu;
    let counts = requests_by(&controller.user, mark);
    let (git_requests, git_bytes, pack_bytes) = git_traffic(&repo.name, git_mark).await;
    let status_writes = counts
        .iter()
        .filter(|(k, _)| k.contains("gitrepositories/status"))
        .map(|(_, n)| n)
        .sum::<u64>();
    figures.add(
        "intervals",
        intervals,
        format!("{intervals} intervals of 2 s, 1000 managed objects"),
    );
    figures.add(
        "mutating_requests",
        mutating(&counts),
        mutating(&counts).to_string(),
    );
    figures.add(
        "get_list_requests",
        reads(&counts),
        reads(&counts).to_string(),
    );
    figures.add("status_writes", status_writes, status_writes.to_string());
    figures.add(
        "requests",
        breakdown(&counts),
        if counts.is_empty() {
            "none".into()
        } else {
            breakdown(&counts)
        },
    );
    figures.add(
        "git_requests",
        git_requests,
        format!("{git_requests} (ref advertisements)"),
    );
    figures.add(
        "git_bytes",
        git_bytes,
        format!("{git_bytes} bytes in all; {pack_bytes} pack bytes"),
    );
    let per = cpu / f64::from(intervals);
    figures.add(
        "cpu_per_reconcile_ms",
        per * 1000.0,
        format!("{:.1} ms CPU per interval", per * 1000.0),
    );
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"interval": "1h"}})),
    )
    .await
    .unwrap();
}

// ---------------------------------------------------------------- scenario 3: change latency

async fn latency(b: &Bench, controller: &Controller, figures: &mut Figures) {
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    let target = namespace(&b.client, "bench-latency").await;
    let cms: Api<ConfigMap> = Api::namespaced(b.client.clone(), &target);
    let repo = Repo::create("latency", &[("cm.yaml", &configmap("latency", "0"))]);
    let interval = 10u64;
    create_gr(
        &b.client,
        &b.ns,
        "latency",
        json!({"url": repo.http_url(), "interval": format!("{interval}s"), "targetNamespace": target}),
    )
    .await;
    wait_ready(&api, "latency", &repo.head(), Duration::from_secs(60)).await;

    // A Receiver for the webhook path.
    let token = b"bench-token";
    put_secret(&b.client, &b.ns, "bench-hook", &[("token", token)]).await;
    Api::<capstan::api::Receiver>::namespaced(b.client.clone(), &b.ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "capstan.dev/v1alpha1", "kind": "Receiver",
                "metadata": {"name": "bench"},
                "spec": {"type": "github", "secretRef": {"name": "bench-hook"}, "resources": [{"name": "latency"}]},
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let mut value = 0;
    for mode in ["annotation", "webhook", "polling"] {
        let mut samples = Vec::new();
        for _ in 0..5 {
            value += 1;
            let v = value.to_string();
            repo.commit(&[("cm.yaml", &configmap("latency", &v))], "bump");
            let pushed = Instant::now();
            match mode {
                "annotation" => {
                    let patch = json!({"metadata": {"annotations": {capstan::api::RECONCILE_REQUESTED_ANNOTATION: v}}});
                    api.patch("latency", &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .unwrap();
                }
                "webhook" => {
                    let body = json!({"ref": "refs/heads/main", "repository": {"clone_url": repo.http_url()}}).to_string();
                    post_hook(
                        controller.process.webhook,
                        &format!("/hook/{}/bench", b.ns),
                        &body,
                        token,
                    )
                    .await;
                }
                _ => {}
            }
            let seen = wait_value(&cms, "latency", &v, Duration::from_secs(interval * 3)).await;
            samples.push((seen - pushed).as_secs_f64());
            // Apart, so that one sample's reconcile is over before the next commit.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let m = median(&mut samples);
        let shown = if mode == "polling" {
            format!(
                "{m:.2} s median of 5 = {:.2} of the {interval} s interval",
                m / interval as f64
            )
        } else {
            format!("{:.0} ms median of 5", m * 1000.0)
        };
        figures.add(&format!("{mode}_s"), m, shown);
    }
}

async fn post_hook(addr: std::net::SocketAddr, path: &str, body: &str, token: &[u8]) {
    let headers = [
        ("Content-Type", "application/json".to_string()),
        ("X-GitHub-Event", "push".to_string()),
        (
            "X-Hub-Signature-256",
            capstan::webhook::github_signature(body.as_bytes(), token),
        ),
    ];
    let (code, reply) = http_request(addr, "POST", path, &headers, body.as_bytes()).await;
    assert_eq!(code, 202, "{reply}");
}

// ---------------------------------------------------------------- scenario 4: drift latency

async fn drift(b: &Bench, controller: &Controller, figures: &mut Figures) {
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    let target = namespace(&b.client, "bench-drift").await;
    let cms: Api<ConfigMap> = Api::namespaced(b.client.clone(), &target);
    // One object per sample: Capstan stops correcting an object it had to correct three times
    // within a minute (another controller is fighting over it), which is not what is measured.
    let files: Vec<(String, String)> = (0..5)
        .map(|i| {
            (
                format!("cm-{i}.yaml"),
                configmap(&format!("drift-{i}"), "git"),
            )
        })
        .collect();
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let repo = Repo::create("drift", &borrowed);
    create_gr(
        &b.client,
        &b.ns,
        "drift",
        json!({"url": repo.http_url(), "interval": "1h", "targetNamespace": target}),
    )
    .await;
    wait_ready(&api, "drift", &repo.head(), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut samples, mut patches) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let name = format!("drift-{i}");
        let mark = audit_mark();
        let edit = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"value": "edited"}});
        cms.patch(
            &name,
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&edit),
        )
        .await
        .unwrap();
        let edited = Instant::now();
        let seen = wait_value(&cms, &name, "git", Duration::from_secs(30)).await;
        samples.push((seen - edited).as_secs_f64());
        // Late requests of the correction count too.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let counts = requests_by(&controller.user, mark);
        patches.push(counts.get("patch configmaps").copied().unwrap_or(0) as f64);
    }
    let m = median(&mut samples);
    figures.add(
        "reverted_ms",
        m * 1000.0,
        format!(
            "{:.0} ms median of 5 (max {:.0} ms)",
            m * 1000.0,
            samples.iter().cloned().fold(0.0, f64::max) * 1000.0
        ),
    );
    let p = patches.iter().cloned().fold(0.0, f64::max);
    figures.add(
        "patches_per_correction",
        p,
        format!("{p:.0} at most (of 5 corrections)"),
    );
}

// ---------------------------------------------------------------- scenario 5: scale

async fn scale(b: &Bench, figures: &mut Figures) {
    // A controller of its own, for a namespace of its own: its figures are the 1000 alone.
    let ns = namespace(&b.client, "bench-scale").await;
    let target = namespace(&b.client, "bench-scale-objects").await;
    let controller = Controller::start(&ns, shard_of(&ns), b.dir.path());
    // The process with no GitRepository yet: what the count adds is the difference.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle_rss, _) = controller.rss_mib();
    let repos: Vec<Repo> = (0..100)
        .map(|r| {
            let files: Vec<(String, String)> = (0..10)
                .map(|d| {
                    (
                        format!("d{d}/cm.yaml"),
                        configmap(&format!("cm-{r}-{d}"), "1"),
                    )
                })
                .collect();
            let borrowed: Vec<(&str, &str)> = files
                .iter()
                .map(|(p, c)| (p.as_str(), c.as_str()))
                .collect();
            Repo::create(&format!("scale{r}"), &borrowed)
        })
        .collect();
    let started = Instant::now();
    let specs: Vec<(String, Value)> = (0..1000)
        .map(|i| {
            let (r, d) = (i / 10, i % 10);
            (
                format!("app-{i}"),
                json!({"url": repos[r].http_url(), "path": format!("d{d}"), "interval": "1m", "targetNamespace": target, "prune": true}),
            )
        })
        .collect();
    stream::iter(
        specs
            .iter()
            .map(|(name, spec)| create_gr(&b.client, &ns, name, spec.clone())),
    )
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    let created = started.elapsed();
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(900);
    let all_ready = loop {
        let list = api.list(&Default::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|gr| applied_revision(gr).is_some())
            .count();
        if ready == 1000 {
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "only {ready} of 1000 Ready after 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (_, peak_sync) = controller.rss_mib();
    let list = api.list(&Default::default()).await.unwrap();
    let mut delays: Vec<f64> = list
        .items
        .iter()
        .filter_map(|gr| {
            let created = gr.metadata.creation_timestamp.as_ref()?.0;
            let ready = capstan::status::ready(gr.status.as_ref())?
                .last_transition_time
                .0;
            Some((ready.as_millisecond() - created.as_millisecond()) as f64 / 1000.0)
        })
        .collect();
    // Steady state: a minute of polls with nothing new.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = controller.cpu_seconds();
    let mark = audit_mark();
    let git_mark = git_log_mark().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let cpu_minute = controller.cpu_seconds() - cpu;
    let counts = requests_by(&controller.user, mark);
    let log = git_server().access_log().await;
    let in_minute = |what: &str| {
        log.lines()
            .skip(git_mark)
            .filter(|l| l.contains("/scale") && l.contains(what))
            .count()
    };
    let (polls, fetches) = (in_minute("info/refs"), in_minute("\"POST "));
    let (rss, peak) = controller.rss_mib();
    figures.add(
        "created_s",
        created.as_secs_f64(),
        format!(
            "{:.1} s to create 1000 GitRepositories",
            created.as_secs_f64()
        ),
    );
    figures.add(
        "all_ready_s",
        all_ready.as_secs_f64(),
        format!(
            "{:.1} s from the first create to all 1000 Ready",
            all_ready.as_secs_f64()
        ),
    );
    figures.add(
        "rss_idle_mib",
        idle_rss,
        format!("{idle_rss:.1} MiB before the first GitRepository"),
    );
    figures.add(
        "rss_steady_mib",
        rss,
        format!(
            "{rss:.1} MiB ({:.1} KiB per GitRepository over idle)",
            (rss - idle_rss) * 1024.0 / 1000.0
        ),
    );
    figures.add(
        "rss_peak_mib",
        peak.max(peak_sync),
        format!("{:.1} MiB", peak.max(peak_sync)),
    );
    figures.add(
        "cpu_per_minute_s",
        cpu_minute,
        format!("{cpu_minute:.2} CPU seconds in a minute at steady state"),
    );
    figures.add(
        "steady_ref_checks_per_minute",
        polls,
        format!("{polls} ref advertisements and {fetches} upload-pack requests in that minute"),
    );
    figures.add(
        "steady_mutating_per_minute",
        mutating(&counts),
        mutating(&counts).to_string(),
    );
    figures.add(
        "steady_get_list_per_minute",
        reads(&counts),
        reads(&counts).to_string(),
    );
    let (p50, p90, max) = (
        percentile(&mut delays, 0.5),
        percentile(&mut delays, 0.9),
        percentile(&mut delays, 1.0),
    );
    figures.add(
        "create_to_ready_spread_s",
        json!({"p50": p50, "p90": p90, "max": max}),
        format!("creation to Ready per GitRepository: p50 {p50:.1} s, p90 {p90:.1} s, max {max:.1} s (1 s resolution)"),
    );
}

// ---------------------------------------------------------------- scenario 6: fetch

async fn fetch(b: &Bench, figures: &mut Figures) {
    // About 100 MB of history: 100 commits, each rewriting a 1 MiB file of random bytes.
    let repo = Repo::create("fetch", &[("README", "history\n")]);
    let work = repo.work_dir().to_path_buf();
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut random = |n: usize| {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out
    };
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@capstan.dev",
            ])
            .args(args)
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for i in 0..100 {
        std::fs::write(work.join("blob.bin"), random(1 << 20)).unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", &format!("blob {i}")]);
    }
    git(&["push", "-q", "origin", "main"]);
    let bare = PathBuf::from(git_server().var("GIT_REPO_ROOT")).join(format!("{}.git", repo.name));
    let history_mb = dir_size(&bare) as f64 / 1e6;

    let url = capstan::source::RemoteUrl::parse(&repo.http_url()).unwrap();
    let auth = capstan::source::Auth::default();
    let main = capstan::api::GitRef {
        branch: Some("main".into()),
        ..Default::default()
    };
    let timeout = Duration::from_secs(300);
    let run = |what: &str, args: &[&str], dir: &Path| {
        let started = Instant::now();
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed().as_secs_f64()
    };
    let (mut capstan_cold, mut git_shallow, mut git_full) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cold_bytes, mut shallow_bytes) = (0, 0);
    for i in 0..3 {
        let scratch = b.dir.path().join(format!("fetch-{i}"));
        std::fs::create_dir_all(scratch.join("repos")).unwrap();
        let cache = capstan::source::Cache::new(scratch.join("repos"), 1, 1 << 30);
        let mark = git_log_mark().await;
        let started = Instant::now();
        let resolved = cache.resolve(&url, &auth, &main, timeout).await.unwrap();
        cache
            .checkout(&url, &auth, &resolved, &scratch.join("tree"), timeout)
            .await
            .unwrap();
        capstan_cold.push(started.elapsed().as_secs_f64());
        cold_bytes = git_traffic(&repo.name, mark).await.1;

        let mark = git_log_mark().await;
        git_shallow.push(run(
            "git clone --depth 1",
            &["clone", "-q", "--depth", "1", &repo.http_url(), "shallow"],
            &scratch,
        ));
        shallow_bytes = git_traffic(&repo.name, mark).await.1;
        git_full.push(run(
            "git clone",
            &["clone", "-q", &repo.http_url(), "full"],
            &scratch,
        ));
    }
    let (c, s, f) = (
        median(&mut capstan_cold),
        median(&mut git_shallow),
        median(&mut git_full),
    );
    figures.add(
        "history_mb",
        history_mb,
        format!("{history_mb:.0} MB of packed history, 100 commits"),
    );
    figures.add(
        "capstan_cold_s",
        c,
        format!("{c:.2} s, {cold_bytes} bytes (median of 3)"),
    );
    figures.add(
        "git_clone_depth1_s",
        s,
        format!("{s:.2} s, {shallow_bytes} bytes (median of 3)"),
    );
    figures.add("git_clone_full_s", f, format!("{f:.2} s (median of 3)"));
    figures.add(
        "cold_ratio",
        c / s,
        format!("{:.2}x of git clone --depth 1", c / s),
    );

    // One new commit: Capstan's incremental fetch into its cache vs `git fetch` in the shallow clone.
    let scratch = b.dir.path().join("fetch-0");
    let cache = capstan::source::Cache::new(scratch.join("repos"), 1, 1 << 30);
    let (mut inc, mut git_inc, mut inc_bytes) = (Vec::new(), Vec::new(), 0);
    let (mut inc_resolve, mut inc_checkout) = (Vec::new(), Vec::new());
    for i in 0..3 {
        std::fs::write(work.join("small.txt"), format!("change {i}\n")).unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "small"]);
        git(&["push", "-q", "origin", "main"]);
        let mark = git_log_mark().await;
        let started = Instant::now();
        let resolved = cache.resolve(&url, &auth, &main, timeout).await.unwrap();
        inc_resolve.push(started.elapsed().as_secs_f64());
        let tree = scratch.join(format!("tree-{i}"));
        let fetching = Instant::now();
        cache
            .checkout(&url, &auth, &resolved, &tree, timeout)
            .await
            .unwrap();
        inc_checkout.push(fetching.elapsed().as_secs_f64());
        inc.push(started.elapsed().as_secs_f64());
        inc_bytes = git_traffic(&repo.name, mark).await.1;
        git_inc.push(run(
            "git fetch",
            &["fetch", "-q", "origin"],
            &scratch.join("shallow"),
        ));
    }
    let (ci, gi) = (median(&mut inc), median(&mut git_inc));
    let (cr, cc) = (median(&mut inc_resolve), median(&mut inc_checkout));
    figures.add(
        "capstan_incremental_phases",
        json!({"resolve_s": cr, "fetch_and_checkout_s": cc}),
        format!(
            "ref check {:.0} ms, then fetch and checkout {:.0} ms (medians)",
            cr * 1000.0,
            cc * 1000.0
        ),
    );
    figures.add(
        "capstan_incremental_s",
        ci,
        format!("{:.0} ms, {inc_bytes} bytes (median of 3)", ci * 1000.0),
    );
    figures.add(
        "git_fetch_s",
        gi,
        format!("{:.0} ms (median of 3)", gi * 1000.0),
    );

    // A poll with nothing new: the ref advertisement only.
    let mark = git_log_mark().await;
    let resolved = cache.resolve(&url, &auth, &main, timeout).await.unwrap();
    cache
        .checkout(&url, &auth, &resolved, &scratch.join("tree-poll"), timeout)
        .await
        .unwrap();
    let (requests, bytes, packs) = git_traffic(&repo.name, mark).await;
    figures.add(
        "no_change_poll",
        json!({"requests": requests, "bytes": bytes, "pack_bytes": packs}),
        format!("{requests} request, {bytes} bytes, {packs} pack bytes"),
    );
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

// ---------------------------------------------------------------- main

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem:.0} GiB memory")
}

#[tokio::main]
async fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w == s);
    for w in &wanted {
        assert!(
            SCENARIOS.contains(&w.as_str()),
            "unknown scenario {w}; one of {SCENARIOS:?}"
        );
    }
    let started = Instant::now();
    let client = client().await;
    let ns = namespace(&client, "bench").await;
    let dir = tempfile::tempdir().unwrap();
    let b = Bench { client, ns, dir };
    let controller = Controller::start(&b.ns, shard_of(&b.ns), b.dir.path());
    let mut results: Vec<(&str, &str, Figures)> = Vec::new();

    let mut cold_gr = None;
    if run("cold") || run("steady") {
        let mut f = Figures::default();
        cold_gr = Some(cold(&b, &controller, &mut f).await);
        if run("cold") {
            results.push(("cold", "1. Cold sync of 1000 manifests", f));
        }
    }
    if run("steady") {
        let (repo, name) = cold_gr.as_ref().unwrap();
        let mut f = Figures::default();
        steady(&b, &controller, repo, name, &mut f).await;
        results.push(("steady", "2. Steady state", f));
    }
    if run("latency") {
        let mut f = Figures::default();
        latency(&b, &controller, &mut f).await;
        results.push(("latency", "3. Change latency (commit to object changed)", f));
    }
    if run("drift") {
        let mut f = Figures::default();
        drift(&b, &controller, &mut f).await;
        results.push((
            "drift",
            "4. Drift latency (out-of-band edit to reverted)",
            f,
        ));
    }
    let (rss, peak) = controller.rss_mib();
    drop(controller);
    if run("scale") {
        let mut f = Figures::default();
        scale(&b, &mut f).await;
        results.push((
            "scale",
            "5. Scale: 1000 GitRepositories over 100 repositories",
            f,
        ));
    }
    if run("fetch") {
        let mut f = Figures::default();
        fetch(&b, &mut f).await;
        results.push(("fetch", "6. Fetch: about 100 MB of history", f));
    }
    let elapsed = started.elapsed();

    let command = if wanted.is_empty() {
        "make bench".to_string()
    } else {
        format!("make bench SCENARIOS=\"{}\"", wanted.join(" "))
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `{command}` (`cargo bench --bench capstan`) on {}; do not edit by hand.\n",
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(md, "- Machine: {}", machine());
    let _ = writeln!(
        md,
        "- Control plane: kube-apiserver and etcd from `tests/env/tools` (k8s.io/kubernetes v1.37.2, etcd v3.7.0) on loopback; git over smart HTTP (lighttpd 1.4 + git http-backend) on loopback"
    );
    let _ = writeln!(
        md,
        "- Controller: `capstan controller` built in release mode, a separate process with its own ServiceAccount (cluster-admin), default flags (concurrency 4, apply concurrency 8, git concurrency 2); requests are counted from the API server's audit log by that identity, CPU and memory from /proc"
    );
    let _ = writeln!(
        md,
        "- First controller (scenarios 1-4) at the end: RSS {rss:.1} MiB, peak {peak:.1} MiB"
    );
    let _ = writeln!(md, "- Whole run: {:.1} min\n", elapsed.as_secs_f64() / 60.0);
    println!("\n{}", md.trim_end());
    let mut json_out = serde_json::Map::new();
    for (key, title, f) in &results {
        let _ = writeln!(md, "## {title}\n\n| figure | value |\n|---|---|");
        println!("\n{title}");
        for (name, shown) in &f.rows {
            let _ = writeln!(md, "| {name} | {} |", shown.replace('|', "\\|"));
            println!("  {name:<32} {shown}");
        }
        let _ = writeln!(md);
        json_out.insert(key.to_string(), Value::Object(f.json.clone()));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(
        root.join("target/benchmarks.json"),
        serde_json::to_string_pretty(
            &json!({"command": command, "machine": machine(), "results": json_out}),
        )
        .unwrap(),
    )
    .unwrap();
    if wanted.is_empty() {
        std::fs::write(root.join("docs/benchmarks.md"), md).unwrap();
        println!("\nwrote docs/benchmarks.md and target/benchmarks.json");
    } else {
        println!("\nwrote target/benchmarks.json (docs/benchmarks.md is written by a full run)");
    }
}
