//! `spec.kubeConfig`: applying to a second, real control plane. What is applied, pruned,
//! corrected and deleted is on the remote; the status stays on the management cluster. The
//! remote goes away (a proxy in front of it stops) and comes back; its kubeconfig is missing,
//! invalid, or rotated.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, put_secret, ready, ready_message, spec};
use crate::support::env::{ControlPlane, remote_client, remote_control_plane};
use crate::support::proxy::Proxy;

/// The remote's audit events completed (or, for watches, started) since line `mark`.
fn remote_audit(mark: usize) -> Vec<Value> {
    std::fs::read_to_string(&remote_control_plane().audit_log)
        .unwrap_or_default()
        .lines()
        .skip(mark)
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Watches by `user` at `stage` (started: `ResponseStarted`, ended: `ResponseComplete`) in
/// `events`, of `resource` when given.
fn watches(events: &[Value], user: &str, stage: &str, resource: Option<&str>) -> usize {
    events
        .iter()
        .filter(|e| {
            e["verb"] == "watch"
                && e["stage"] == stage
                && e["user"]["username"] == user
                && resource.is_none_or(|r| e["objectRef"]["resource"] == r)
        })
        .count()
}

fn remote_mark() -> usize {
    remote_audit(0).len()
}

/// The value of ConfigMap `name` on the remote, if it is there.
async fn remote_value(cms: &Api<ConfigMap>, name: &str) -> Option<String> {
    let cm = cms.get_opt(name).await.unwrap()?;
    Some(
        cm.data
            .unwrap_or_default()
            .remove("value")
            .unwrap_or_default(),
    )
}

/// Polls `what` on the remote until it is `want`.
async fn wait_remote(cms: &Api<ConfigMap>, name: &str, want: Option<&str>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let value = remote_value(cms, name).await;
        if value.as_deref() == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ConfigMap {name} on the remote is {value:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kube_config(secret: &str) -> Value {
    json!({"kubeConfig": {"secretRef": {"name": secret}}})
}

/// A fixture with the kubeconfig of the remote's ServiceAccount `capstan` (of a namespace named
/// as the test's, created there) in Secret `remote`, and a client of that namespace there.
async fn remote_fixture(
    test: &str,
    server: Option<std::net::SocketAddr>,
) -> (Fixture, Api<ConfigMap>) {
    let remote: &ControlPlane = remote_control_plane();
    let fx = Fixture::new(test).await;
    let kubeconfig = remote.token_kubeconfig(&fx.ns, "capstan", server);
    put_secret(
        &fx.client,
        &fx.ns,
        "remote",
        &[("value", kubeconfig.as_bytes())],
    )
    .await;
    let cms = Api::namespaced(remote_client().await, &fx.ns);
    (fx, cms)
}

#[tokio::test]
async fn applies_corrects_and_prunes_on_the_remote_cluster() {
    let (fx, cms) = remote_fixture("remote-sync", None).await;
    let repo = Repo::create(
        "remote-sync",
        &[
            ("a.yaml", &configmap("a", "1")),
            ("b.yaml", &configmap("b", "1")),
        ],
    );
    fx.create("app", spec(repo.http_url(), kube_config("remote")))
        .await;
    let gr = fx.wait_applied("app", &repo.head()).await;
    assert!(
        ready_message(&gr).contains("2 created"),
        "{}",
        ready_message(&gr)
    );
    assert_eq!(remote_value(&cms, "a").await.as_deref(), Some("1"));
    assert!(
        fx.get("v1", "ConfigMap", "a").await.is_none(),
        "nothing is applied to the management cluster"
    );

    // `capstan diff` compares with the remote: there `a` exists (changed), here it does not.
    let proposed = tempfile::tempdir().unwrap();
    for (file, value) in [("a.yaml", "2"), ("b.yaml", "1")] {
        let name = &file[..1];
        std::fs::write(proposed.path().join(file), configmap(name, value)).unwrap();
    }
    let dir = proposed.path().to_str().unwrap();
    let out = crate::cli::capstan(&["diff", "app", "-n", &fx.ns, "--path", dir]).await;
    let text = crate::cli::stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("ConfigMap {}/a: changed", fx.ns)),
        "{text}"
    );
    assert!(text.contains(r#".data.value: "1" → "2""#), "{text}");
    assert!(text.contains("1 of 2 objects would change"), "{text}");

    // Someone takes a field on the remote: the watch of the remote sees it, and it is corrected.
    let edit = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"value": "edited"}});
    cms.patch(
        "a",
        &PatchParams::apply("someone").force(),
        &Patch::Apply(&edit),
    )
    .await
    .unwrap();
    wait_remote(&cms, "a", Some("1")).await;

    // Removed from git: pruned on the remote.
    let head = repo.remove(&["b.yaml"], "remove b");
    fx.wait_applied("app", &head).await;
    wait_remote(&cms, "b", None).await;
    assert_eq!(remote_value(&cms, "a").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn gitrepositories_share_the_watches_of_a_remote_and_delete_or_orphan_there() {
    let (fx, cms) = remote_fixture("remote-share", None).await;
    let remote = remote_control_plane();
    // `serviceAccountName` names a ServiceAccount of the remote, impersonated there.
    remote.kubectl(&["create", "serviceaccount", "deployer", "-n", &fx.ns]);
    remote.kubectl(&[
        "create",
        "role",
        "deployer",
        "-n",
        &fx.ns,
        "--verb=get,list,watch,create,update,patch,delete",
        "--resource=configmaps",
    ]);
    remote.kubectl(&[
        "create",
        "rolebinding",
        "deployer",
        "-n",
        &fx.ns,
        "--role=deployer",
        &format!("--serviceaccount={}:deployer", fx.ns),
    ]);
    let repo = Repo::create(
        "remote-share",
        &[
            ("gone/a.yaml", &configmap("deleted-with-it", "1")),
            ("kept/b.yaml", &configmap("orphaned", "1")),
        ],
    );
    let mark = remote_mark();
    let extra = |path: &str, policy: &str| {
        let mut extra = kube_config("remote");
        extra["path"] = json!(path);
        extra["deletionPolicy"] = json!(policy);
        extra["serviceAccountName"] = json!("deployer");
        extra
    };
    fx.create("gone", spec(repo.http_url(), extra("gone", "Delete")))
        .await;
    fx.create("kept", spec(repo.http_url(), extra("kept", "Orphan")))
        .await;
    fx.wait_applied("gone", &repo.head()).await;
    fx.wait_applied("kept", &repo.head()).await;

    let capstan = format!("system:serviceaccount:{}:capstan", fx.ns);
    let deployer = format!("system:serviceaccount:{}:deployer", fx.ns);
    let events = remote_audit(mark);
    assert_eq!(
        watches(&events, &capstan, "ResponseStarted", Some("configmaps")),
        1,
        "one watch of ConfigMaps on the remote for both GitRepositories"
    );
    let applied_by: Vec<&Value> = events
        .iter()
        // This test's namespace: other tests patch ConfigMaps on the remote as themselves.
        .filter(|e| {
            e["verb"] == "patch"
                && e["stage"] == "ResponseComplete"
                && e["objectRef"]["resource"] == "configmaps"
                && e["objectRef"]["namespace"] == fx.ns.as_str()
        })
        .map(|e| &e["impersonatedUser"]["username"])
        .collect();
    assert!(!applied_by.is_empty());
    assert!(
        applied_by.iter().all(|u| *u == deployer.as_str()),
        "applied as the remote's deployer: {applied_by:?}"
    );

    fx.api().delete("gone", &Default::default()).await.unwrap();
    fx.api().delete("kept", &Default::default()).await.unwrap();
    wait_remote(&cms, "deleted-with-it", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while fx.api().get_opt("kept").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "kept was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let orphaned = cms.get("orphaned").await.unwrap();
    let labels = orphaned.metadata.labels.unwrap_or_default();
    assert!(
        !labels.contains_key("capstan.dev/name"),
        "released on the remote: {labels:?}"
    );

    // No GitRepository targets the remote any more: its watches end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = remote_audit(mark);
        let ended = watches(&events, &capstan, "ResponseComplete", None);
        let started = watches(&events, &capstan, "ResponseStarted", None);
        if ended == started {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ended} of {started} watches of the remote ended"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_remote_that_goes_away_is_reported_and_caught_up_with_when_back() {
    let mut proxy = Proxy::start(remote_control_plane().server()).await;
    let (fx, cms) = remote_fixture("remote-down", Some(proxy.addr)).await;
    let repo = Repo::create("remote-down", &[("a.yaml", &configmap("a", "1"))]);
    fx.create("app", spec(repo.http_url(), kube_config("remote")))
        .await;
    fx.wait_applied("app", &repo.head()).await;

    // Gone: the watches fail, which tells, with nothing changed in git.
    proxy.stop();
    let gr = fx.wait_failed("app", "ClusterUnreachable").await;
    let message = ready_message(&gr);
    assert!(message.contains(&proxy.addr.to_string()), "{message}");
    let status = gr.status.unwrap();
    assert_eq!(
        status.inventory.unwrap().entries.len(),
        1,
        "the inventory is kept"
    );

    // A commit while it is away is applied once it is back.
    let head = repo.change(
        &[
            ("a.yaml", &configmap("a", "2")),
            ("b.yaml", &configmap("b", "1")),
        ],
        &[],
        "change while away",
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gr = fx.api().get("app").await.unwrap();
    assert_eq!(
        ready(&gr).map(|(s, _)| s).as_deref(),
        Some("False"),
        "{}",
        ready_message(&gr)
    );
    proxy.resume().await;
    fx.wait_applied("app", &head).await;
    assert_eq!(remote_value(&cms, "a").await.as_deref(), Some("2"));
    assert_eq!(remote_value(&cms, "b").await.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_missing_or_invalid_kubeconfig_is_reported_and_a_rotated_one_used() {
    let remote = remote_control_plane();
    let fx = Fixture::new("remote-kubeconfig").await;
    let cms: Api<ConfigMap> = Api::namespaced(remote_client().await, &fx.ns);
    let repo = Repo::create("remote-kubeconfig", &[("a.yaml", &configmap("a", "1"))]);
    fx.create("app", spec(repo.http_url(), kube_config("prod")))
        .await;
    let gr = fx.wait_failed("app", "InvalidKubeConfig").await;
    assert!(
        ready_message(&gr).contains(&format!("secret {}/prod not found", fx.ns)),
        "{}",
        ready_message(&gr)
    );

    let wait_message = |needle: String| {
        let fx = &fx;
        async move {
            fx.wait("app", &needle, |gr| ready_message(gr).contains(&needle))
                .await
        }
    };
    put_secret(&fx.client, &fx.ns, "prod", &[("config", b"not the key")]).await;
    wait_message("kubeconfig secret prod: no entry \"value\"".into()).await;
    put_secret(&fx.client, &fx.ns, "prod", &[("value", b"clusters: [")]).await;
    wait_message("kubeconfig secret prod: not a kubeconfig".into()).await;
    // A file on the controller's machine is not read: here, the controller's own token.
    let controller_token = remote.token_kubeconfig(&fx.ns, "first", None).replace(
        "    token: ",
        "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n    x: ",
    );
    put_secret(
        &fx.client,
        &fx.ns,
        "prod",
        &[("value", controller_token.as_bytes())],
    )
    .await;
    let gr = wait_message("tokenFile (a file path)".into()).await;
    assert_eq!(
        ready(&gr).map(|(_, r)| r).as_deref(),
        Some("InvalidKubeConfig")
    );
    assert!(cms.get_opt("a").await.unwrap().is_none());

    // A valid one: applied.
    let first = remote.token_kubeconfig(&fx.ns, "first", None);
    put_secret(&fx.client, &fx.ns, "prod", &[("value", first.as_bytes())]).await;
    fx.wait_applied("app", &repo.head()).await;
    assert_eq!(remote_value(&cms, "a").await.as_deref(), Some("1"));

    // Rotated: the Secret names another ServiceAccount and the first one is deleted, so its
    // token is refused. The next commit is applied with the new one.
    let second = remote.token_kubeconfig(&fx.ns, "second", None);
    put_secret(&fx.client, &fx.ns, "prod", &[("value", second.as_bytes())]).await;
    remote.kubectl(&["delete", "serviceaccount", "first", "-n", &fx.ns]);
    let head = repo.commit(&[("a.yaml", &configmap("a", "2"))], "after the rotation");
    fx.wait_applied("app", &head).await;
    assert_eq!(remote_value(&cms, "a").await.as_deref(), Some("2"));
}
