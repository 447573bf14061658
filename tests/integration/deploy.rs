//! Production packaging against the real control plane: the Helm chart applied in both RBAC
//! modes, the controller running with the chart's ServiceAccount, leader election between two
//! processes, shards, and a real Prometheus scraping the metrics.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

use crate::support::Repo;
use crate::support::audit;
use crate::support::controller::{Fixture, configmap, http_get, ready_message, spec};
use crate::support::env::{control_plane, render_tools};
use crate::support::process::{
    ControllerProcess, cluster_admin_kubeconfig, sa_user, service_account_kubeconfig,
};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/capstan");

fn helm(args: &[&str]) -> String {
    let output = Command::new(render_tools().helm)
        .args(args)
        .output()
        .expect("running helm");
    assert!(
        output.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `helm template` of the chart as release `release` in `ns`, applied with kubectl: a
/// server-side dry run first, then for real.
fn install_chart(release: &str, ns: &str, sets: &[&str], dir: &Path) {
    let mut args = vec!["template", release, CHART, "--namespace", ns];
    for set in sets {
        args.extend(["--set", set]);
    }
    let manifests = dir.join(format!("{release}.yaml"));
    std::fs::write(&manifests, helm(&args)).unwrap();
    let file = manifests.to_str().unwrap();
    let cp = control_plane();
    cp.kubectl(&["apply", "--server-side", "--dry-run=server", "-f", file]);
    cp.kubectl(&["apply", "--server-side", "-f", file]);
}

#[tokio::test]
async fn chart_lints_and_the_api_server_accepts_it_in_both_rbac_modes() {
    helm(&["lint", "--strict", CHART]);
    let dir = tempfile::tempdir().unwrap();
    for mode in ["default", "restricted"] {
        let fx = Fixture::new_stopped(&format!("chart-{mode}")).await;
        let release = format!("capstan-{mode}");
        install_chart(
            &release,
            &fx.ns,
            &[
                &format!("rbac.mode={mode}"),
                "networkPolicy.enabled=true",
                "webhook.ingress.enabled=true",
                "replicas=2",
            ],
            dir.path(),
        );
        let deployment = fx.get("apps/v1", "Deployment", &release).await.unwrap();
        let pod = &deployment.data["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        assert_eq!(pod["volumes"][0]["emptyDir"]["sizeLimit"], "1Gi");
        for service in ["metrics", "webhook"] {
            let name = format!("{release}-{service}");
            assert!(fx.get("v1", "Service", &name).await.is_some(), "{name}");
        }
        assert!(
            fx.get(
                "networking.k8s.io/v1",
                "Ingress",
                &format!("{release}-webhook")
            )
            .await
            .is_some()
        );
        assert!(
            fx.get("networking.k8s.io/v1", "NetworkPolicy", &release)
                .await
                .is_some()
        );
        let role = fx
            .get("rbac.authorization.k8s.io/v1", "ClusterRole", &release)
            .await
            .unwrap();
        let writes_anything = role.data["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["*"]) && r["verbs"] == json!(["*"]));
        assert_eq!(
            writes_anything,
            mode == "default",
            "{mode}: {:?}",
            role.data
        );
    }
}

#[tokio::test]
async fn controller_with_the_charts_service_account_syncs() {
    let fx = Fixture::new_stopped("chart-sa").await;
    let dir = tempfile::tempdir().unwrap();
    install_chart("capstan-sa", &fx.ns, &[], dir.path());
    let kubeconfig = service_account_kubeconfig(&fx.ns, "capstan-sa", dir.path());
    let _controller = ControllerProcess::start(
        &kubeconfig,
        "capstan-sa-0",
        &[
            &format!("--namespace={}", fx.ns),
            &format!("--leader-election-namespace={}", fx.ns),
        ],
    );
    let repo = Repo::create(
        "chart-sa",
        &[
            ("cm.yaml", &configmap("from-git", "1")),
            (
                "role.yaml",
                "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: chart-sa-reader\nrules: []\n",
            ),
        ],
    );
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;
    assert!(fx.get("v1", "ConfigMap", "from-git").await.is_some());
    let leases: Api<Lease> = Api::namespaced(fx.client.clone(), &fx.ns);
    let holder = leases
        .get("capstan")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert!(
        holder
            .as_deref()
            .is_some_and(|h| h.starts_with("capstan-sa-0_")),
        "{holder:?}"
    );
}

#[tokio::test]
async fn restricted_mode_leaves_every_change_to_the_service_account() {
    let fx = Fixture::new_stopped("chart-restricted").await;
    let dir = tempfile::tempdir().unwrap();
    install_chart(
        "capstan-restricted-sa",
        &fx.ns,
        &["rbac.mode=restricted"],
        dir.path(),
    );
    let cp = control_plane();
    cp.kubectl(&["create", "serviceaccount", "deployer", "-n", &fx.ns]);
    cp.kubectl(&[
        "create",
        "role",
        "deployer",
        "-n",
        &fx.ns,
        "--verb=get,list,watch,create,update,patch,delete",
        "--resource=configmaps",
    ]);
    cp.kubectl(&[
        "create",
        "rolebinding",
        "deployer",
        "-n",
        &fx.ns,
        "--role=deployer",
        &format!("--serviceaccount={}:deployer", fx.ns),
    ]);
    let kubeconfig = service_account_kubeconfig(&fx.ns, "capstan-restricted-sa", dir.path());
    let _controller = ControllerProcess::start(
        &kubeconfig,
        "capstan-restricted-0",
        &[&format!("--namespace={}", fx.ns), "--leader-elect=false"],
    );
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {ns}-escalate\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: cluster-admin\nsubjects:\n- kind: ServiceAccount\n  name: deployer\n  namespace: {ns}\n",
        ns = fx.ns
    );
    let repo = Repo::create(
        "chart-restricted",
        &[
            ("cm.yaml", &configmap("allowed", "1")),
            ("crb.yaml", &binding),
        ],
    );

    // As the deployer: the ConfigMap is applied, the binding refused by the API server.
    fx.create(
        "tenant",
        spec(repo.http_url(), json!({"serviceAccountName": "deployer"})),
    )
    .await;
    let gr = fx.wait_failed("tenant", "ApplyFailed").await;
    let message = ready_message(&gr);
    assert!(message.contains("ClusterRoleBinding"), "{message}");
    assert!(message.contains("forbidden"), "{message}");
    assert!(fx.get("v1", "ConfigMap", "allowed").await.is_some());
    assert!(
        fx.get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            &format!("{}-escalate", fx.ns)
        )
        .await
        .is_none()
    );

    // Without a ServiceAccount the controller's own rights apply, and they write nothing.
    let plain = Repo::create(
        "chart-restricted-plain",
        &[("cm.yaml", &configmap("mine", "1"))],
    );
    fx.create("own-rights", spec(plain.http_url(), json!({})))
        .await;
    let gr = fx.wait_failed("own-rights", "ApplyFailed").await;
    assert!(
        ready_message(&gr).contains("forbidden"),
        "{}",
        ready_message(&gr)
    );
    assert!(fx.get("v1", "ConfigMap", "mine").await.is_none());
}

/// Mutating requests in `ns` since `mark` by `user`, the Lease left out.
fn writes_by(mark: usize, ns: &str, user: &str) -> Vec<String> {
    audit::mutating_since(mark, ns)
        .into_iter()
        .filter(|r| r.contains(&format!("({user};")) && !r.contains(" leases/"))
        .collect()
}

/// The `labelSelector` of a request URI, decoded.
fn label_selector(uri: &str) -> String {
    url::Url::parse(&format!("https://api{uri}"))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn lease_holder(fx: &Fixture) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(fx.client.clone(), &fx.ns);
    leases
        .get_opt("capstan")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn leader_election_one_works_and_a_standby_takes_over() {
    let fx = Fixture::new_stopped("leader").await;
    let dir = tempfile::tempdir().unwrap();
    let mut processes = Vec::new();
    for name in ["a", "b"] {
        let kubeconfig = cluster_admin_kubeconfig(&fx.ns, name, dir.path());
        processes.push(ControllerProcess::start(
            &kubeconfig,
            name,
            &[
                &format!("--namespace={}", fx.ns),
                &format!("--leader-election-namespace={}", fx.ns),
            ],
        ));
    }
    let repo = Repo::create("leader", &[("cm.yaml", &configmap("led", "1"))]);
    let mark = audit::mark();
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;

    let holder = lease_holder(&fx).await.expect("a leader");
    let (leader, standby) = if holder.starts_with("a_") {
        (0, 1)
    } else {
        (1, 0)
    };
    let names = ["a", "b"];
    let leader_user = sa_user(&fx.ns, names[leader]);
    let standby_user = sa_user(&fx.ns, names[standby]);
    assert!(!writes_by(mark, &fx.ns, &leader_user).is_empty());
    assert_eq!(writes_by(mark, &fx.ns, &standby_user), Vec::<String>::new());

    // The leader crashes: the standby takes over once the lease expires, and syncs.
    processes[leader].kill();
    let killed_at = k8s_openapi::jiff::Timestamp::now();
    let mark = audit::mark();
    let sha = repo.commit(&[("cm.yaml", &configmap("led", "2"))], "change");
    fx.wait_applied("app", &sha).await;
    let holder = lease_holder(&fx).await.expect("a leader");
    assert!(
        holder.starts_with(&format!("{}_", names[standby])),
        "{holder}"
    );
    assert!(!writes_by(mark, &fx.ns, &standby_user).is_empty());
    // A request the leader sent before it died may complete (and be logged) after the mark,
    // and a busy API server may even read it after the death (it was a watch's re-list in one
    // CI run); one received a second later the dead process could not have sent.
    let grace = k8s_openapi::jiff::SignedDuration::from_secs(1);
    let after_death: Vec<String> = audit::completed_since(mark)
        .into_iter()
        .filter(|r| r.user == leader_user && r.received > killed_at + grace)
        .map(|r| format!("{} {}/{}", r.verb, r.resource, r.name))
        .collect();
    assert_eq!(after_death, Vec::<String>::new());

    // SIGTERM: the process exits cleanly and gives the lease up.
    let status = processes[standby].terminate();
    assert!(
        status.success(),
        "{status}; log:\n{}",
        processes[standby].log()
    );
    assert_eq!(lease_holder(&fx).await, None, "the lease is released");
    assert!(
        processes[standby]
            .log()
            .contains("released the leader lease")
    );
}

#[tokio::test]
async fn shards_each_sync_only_their_own() {
    let fx = Fixture::new_stopped("shards").await;
    let dir = tempfile::tempdir().unwrap();
    let mut processes = Vec::new();
    for shard in ["one", "two"] {
        let kubeconfig = cluster_admin_kubeconfig(&fx.ns, shard, dir.path());
        processes.push(ControllerProcess::start(
            &kubeconfig,
            shard,
            &[
                &format!("--namespace={}", fx.ns),
                &format!("--shard={shard}"),
                "--leader-elect=false",
            ],
        ));
    }
    let repos: Vec<Repo> = ["one", "two", "none"]
        .iter()
        .map(|n| {
            Repo::create(
                &format!("shard-{n}"),
                &[("cm.yaml", &configmap(&format!("cm-{n}"), "1"))],
            )
        })
        .collect();
    let mark = audit::mark();
    fx.create_labelled(
        "one",
        json!({"capstan.dev/shard": "one"}),
        spec(repos[0].http_url(), json!({})),
    )
    .await;
    fx.create_labelled(
        "two",
        json!({"capstan.dev/shard": "two"}),
        spec(repos[1].http_url(), json!({})),
    )
    .await;
    fx.create("none", spec(repos[2].http_url(), json!({})))
        .await;
    fx.wait_applied("one", &repos[0].head()).await;
    fx.wait_applied("two", &repos[1].head()).await;

    for (shard, other) in [("one", "two"), ("two", "one")] {
        let mine = writes_by(mark, &fx.ns, &sa_user(&fx.ns, shard));
        assert!(
            mine.iter()
                .any(|w| w.contains(&format!("configmaps/cm-{shard}"))),
            "{mine:?}"
        );
        assert!(
            !mine
                .iter()
                .any(|w| w.contains(&format!("/{other}")) || w.contains(&format!("cm-{other}"))),
            "{mine:?}"
        );
        assert!(
            !mine
                .iter()
                .any(|w| w.contains("cm-none") || w.contains("gitrepositories/none")),
            "{mine:?}"
        );
    }
    // Each shard lists and watches only its own objects: the selector names the shard.
    for shard in ["one", "two"] {
        let user = sa_user(&fx.ns, shard);
        let object_reads = || -> Vec<String> {
            audit::completed_since(mark)
                .into_iter()
                .filter(|r| r.user == user && r.resource == "configmaps")
                .filter(|r| r.verb == "list" || r.verb == "watch")
                .map(|r| label_selector(&r.uri))
                .collect()
        };
        // The watch starts beside the apply; its first list may complete after the status.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while object_reads().is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "shard {shard} lists its ConfigMaps"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let object_reads = object_reads();
        let own = format!("capstan.dev/shard={shard}");
        assert!(
            object_reads
                .iter()
                .all(|s| s.split(',').any(|term| term == own)),
            "{object_reads:?}"
        );
    }
    // A few more intervals: the unlabelled GitRepository stays untouched by both shards.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let none = fx.api().get("none").await.unwrap();
    assert!(none.status.is_none(), "{:?}", none.status);
    assert!(fx.get("v1", "ConfigMap", "cm-none").await.is_none());
}

#[tokio::test]
async fn prometheus_scrapes_the_reconcile_metrics() {
    let fx = Fixture::with_http("prometheus").await;
    let repo = Repo::create("prometheus", &[("cm.yaml", &configmap("scraped", "1"))]);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;

    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/env/prometheus.sh"
    ))
    .arg("up")
    .arg(dir.path())
    .arg("--target")
    .arg(fx.metrics_addr.unwrap().to_string())
    .arg("--watch-pid")
    .arg(std::process::id().to_string())
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let url = stdout
        .trim()
        .strip_prefix("export PROMETHEUS_URL='")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap();
    let addr: std::net::SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    let query = format!(
        "capstan_reconcile_duration_seconds_count{{namespace=\"{}\",name=\"app\"}}",
        fx.ns
    );
    let path = format!("/api/v1/query?query={}", url_encode(&query));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http_get(addr, &path).await;
        if code == 200 {
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["status"], "success", "{body}");
            if let Some(sample) = body["data"]["result"].as_array().and_then(|r| r.first()) {
                let value: f64 = sample["value"][1].as_str().unwrap().parse().unwrap();
                assert!(value > 0.0, "{body}");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never returned {query}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/env/prometheus.sh"
    ))
    .arg("down")
    .arg(dir.path())
    .output();
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
