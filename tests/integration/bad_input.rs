//! Bad input and faults (each against the real control plane and git servers): a clear
//! condition, nothing already applied is lost, nothing is pruned, and recovery on its own once
//! the cause is gone.

use serde_json::json;

use crate::support::controller::{Fixture, configmap, ready_message, spec};
use crate::support::proxy::Proxy;
use crate::support::{Repo, git_server};

/// Starts from a synced repository holding ConfigMap `keep`, breaks it with `files`, checks the
/// condition, that `keep` survived, and that a fixing commit recovers.
async fn break_and_recover(test: &str, files: &[(&str, &str)], reason: &str, message: &str) {
    let fx = Fixture::new(test).await;
    let repo = Repo::create(test, &[("keep.yaml", &configmap("keep", "1"))]);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;

    let bad = repo.commit(files, "break it");
    let gr = fx.wait_failed("app", reason).await;
    assert!(
        ready_message(&gr).contains(message),
        "{reason}: {}",
        ready_message(&gr)
    );
    let status = gr.status.unwrap();
    assert_eq!(
        status.last_attempted_revision.as_deref(),
        Some(format!("main@sha1:{bad}").as_str())
    );
    assert_ne!(
        status.last_applied_revision.as_deref(),
        Some(format!("main@sha1:{bad}").as_str())
    );
    assert!(
        fx.get("v1", "ConfigMap", "keep").await.is_some(),
        "nothing applied is lost"
    );

    let paths: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
    repo.remove(&paths, "fix it");
    fx.wait_applied("app", &repo.head()).await;
    assert!(fx.get("v1", "ConfigMap", "keep").await.is_some());
}

#[tokio::test]
async fn invalid_yaml_in_one_file() {
    break_and_recover(
        "bad-yaml",
        &[(
            "broken.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n data: [\n",
        )],
        "BuildFailed",
        "broken.yaml",
    )
    .await;
}

#[tokio::test]
async fn unknown_kind() {
    break_and_recover(
        "unknown-kind",
        &[(
            "gadget.yaml",
            "apiVersion: nowhere.example.com/v1\nkind: Gadget\nmetadata:\n  name: g\n",
        )],
        "ApplyFailed",
        "Gadget",
    )
    .await;
}

#[tokio::test]
async fn one_object_rejected_among_valid_ones() {
    let (fx, repo, _) = Fixture::synced(
        "rejected",
        &[("keep.yaml", &configmap("keep", "1"))],
        json!({}),
    )
    .await;

    // A Service with an invalid port is refused by the API server; its neighbours still apply,
    // and `keep`, which left git in the same commit, is not pruned after a partial apply.
    let service =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: 99999\n";
    repo.commit(
        &[
            ("a.yaml", &configmap("a", "1")),
            ("b-service.yaml", service),
            ("c.yaml", &configmap("c", "1")),
        ],
        "mixed",
    );
    repo.remove(&["keep.yaml"], "drop keep");
    let gr = fx.wait_failed("app", "ApplyFailed").await;
    let message = ready_message(&gr);
    assert!(
        message.contains("Service/") && message.contains("bad"),
        "{message}"
    );
    assert!(fx.get("v1", "ConfigMap", "a").await.is_some());
    assert!(fx.get("v1", "ConfigMap", "c").await.is_some());
    assert!(
        fx.get("v1", "ConfigMap", "keep").await.is_some(),
        "no prune after a partial apply"
    );
    let ids: Vec<String> = gr
        .status
        .unwrap()
        .inventory
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    for name in ["a", "c", "keep"] {
        assert!(
            ids.contains(&format!("{}_{name}__ConfigMap", fx.ns)),
            "{name} in {ids:?}"
        );
    }

    repo.remove(&["b-service.yaml"], "fix");
    fx.wait_applied("app", &repo.head()).await;
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "keep").await;
}

#[tokio::test]
async fn path_that_does_not_exist_and_emptied_directory() {
    let (fx, repo, _) = Fixture::synced(
        "paths",
        &[("deploy/keep.yaml", &configmap("keep", "1"))],
        json!({"path": "deploy"}),
    )
    .await;

    // A commit that empties the directory is an error, never "prune everything".
    repo.change(
        &[("other/x.yaml", &configmap("x", "1"))],
        &["deploy/keep.yaml"],
        "empty it",
    );
    let gr = fx.wait_failed("app", "BuildFailed").await;
    assert!(
        ready_message(&gr).contains("deploy"),
        "{}",
        ready_message(&gr)
    );
    assert!(fx.get("v1", "ConfigMap", "keep").await.is_some());

    fx.patch("app", json!({"spec": {"path": "missing/dir"}}))
        .await;
    let gr = fx.wait_failed("app", "BuildFailed").await;
    assert!(
        ready_message(&gr).contains("missing/dir"),
        "{}",
        ready_message(&gr)
    );
    assert!(fx.get("v1", "ConfigMap", "keep").await.is_some());

    // Another path replaces every managed object: the default guard holds that back until
    // maxPrune allows it.
    fx.patch("app", json!({"spec": {"path": "other"}})).await;
    fx.wait_failed("app", "PruneBlocked").await;
    assert!(
        fx.get("v1", "ConfigMap", "x").await.is_some(),
        "applied, only the prune is held"
    );
    assert!(fx.get("v1", "ConfigMap", "keep").await.is_some());
    fx.patch("app", json!({"spec": {"maxPrune": "100%"}})).await;
    fx.wait_applied("app", &repo.head()).await;
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "keep").await;
}

#[tokio::test]
async fn git_server_stopped_branch_deleted_and_force_push() {
    let fx = Fixture::new("outage").await;
    let repo = Repo::create("outage", &[("keep.yaml", &configmap("keep", "1"))]);
    let port: u16 = git_server().var("GIT_HTTP_PORT").parse().unwrap();
    let mut proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
    let url = repo
        .http_url()
        .replace(&format!(":{port}/"), &format!(":{}/", proxy.addr.port()));
    fx.create("app", spec(url, json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;

    proxy.stop();
    let gr = fx.wait_failed("app", "FetchFailed").await;
    assert!(fx.get("v1", "ConfigMap", "keep").await.is_some());
    assert!(gr.status.unwrap().last_applied_revision.is_some());
    proxy.resume().await;
    let head = repo.commit(&[("more.yaml", &configmap("more", "1"))], "while away");
    fx.wait_applied("app", &head).await;

    repo.delete_branch("main");
    let gr = fx.wait_failed("app", "RefNotFound").await;
    assert!(
        ready_message(&gr).contains("main"),
        "{}",
        ready_message(&gr)
    );
    assert!(
        fx.get("v1", "ConfigMap", "more").await.is_some(),
        "nothing pruned"
    );

    // History rewritten: the new tip is applied and what left git is pruned.
    let rewritten = repo.force_push(&[("keep.yaml", &configmap("keep", "2"))]);
    fx.wait_applied("app", &rewritten).await;
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "more").await;
}

/// A spec change whose reconcile fails before anything is applied (the git server is away) is
/// still applied once the server is back, though the failed reconcile observed its generation.
#[tokio::test]
async fn a_spec_change_that_failed_before_the_apply_is_applied_on_recovery() {
    let fx = Fixture::new("respec").await;
    let repo = Repo::create(
        "respec",
        &[
            ("a/cm.yaml", &configmap("a", "1")),
            ("b/cm.yaml", &configmap("b", "1")),
        ],
    );
    let port: u16 = git_server().var("GIT_HTTP_PORT").parse().unwrap();
    let mut proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
    let url = repo
        .http_url()
        .replace(&format!(":{port}/"), &format!(":{}/", proxy.addr.port()));
    // Moving to `b` prunes every object applied before: let the guard pass it.
    fx.create("app", spec(url, json!({"path": "a", "maxPrune": "100%"})))
        .await;
    fx.wait_applied("app", &repo.head()).await;

    proxy.stop();
    fx.patch("app", json!({"spec": {"path": "b"}})).await;
    fx.wait_failed("app", "FetchFailed").await;
    assert!(fx.get("v1", "ConfigMap", "b").await.is_none());
    proxy.resume().await;
    fx.wait_applied("app", &repo.head()).await;
    assert_eq!(fx.value("b").await, "1", "the new path is applied");
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "a").await;
}
