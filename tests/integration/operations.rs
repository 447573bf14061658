//! The controller as an operator runs it, as a process: what its log says about the work (and
//! never says), failures at `warn`, and how it stops when the API server cannot be reached.

use std::time::Duration;

use base64::Engine;
use kube::api::DeleteParams;
use kube::config::Kubeconfig;
use serde_json::json;

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, ready, ready_message, spec};
use crate::support::env::control_plane;
use crate::support::process::{ControllerProcess, cluster_admin_kubeconfig};
use crate::support::proxy::Proxy;

/// Lines of `log` holding every one of `parts`.
fn lines_with<'a>(log: &'a str, parts: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect()
}

#[tokio::test]
async fn the_log_tells_the_work_in_plain_text_without_secrets() {
    let fx = Fixture::new_stopped("oplog").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster_admin_kubeconfig(&fx.ns, "capstan", dir.path());
    let controller = ControllerProcess::start(
        &kubeconfig,
        "oplog",
        &[
            &format!("--namespace={}", fx.ns),
            "--leader-elect=false",
            "--log-level=info,capstan=debug",
        ],
    );
    let secret_value = "s3cr3t-v4lue-in-git";
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: {secret_value}\n"
    );
    let repo = Repo::create(
        "oplog",
        &[
            ("a.yaml", &configmap("a", "1")),
            ("b.yaml", &configmap("b", "1")),
            ("secret.yaml", &secret),
        ],
    );
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    let first = repo.head();
    fx.wait_applied("app", &first).await;
    let second = repo.remove(&["b.yaml"], "drop b");
    fx.wait_applied("app", &second).await;

    // Drift: corrected three times, then held.
    let edit = |n: u32| {
        control_plane().kubectl(&[
            "-n",
            &fx.ns,
            "patch",
            "configmap/a",
            "--type=merge",
            "-p",
            &format!(r#"{{"data":{{"value":"edit {n}"}}}}"#),
        ])
    };
    for n in 1..=3 {
        edit(n);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let cm = fx.get("v1", "ConfigMap", "a").await.unwrap();
            if cm.data["data"]["value"] == "1" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "edit {n} not corrected"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    edit(4);
    fx.wait("app", "the correction held", |gr| {
        gr.status
            .as_ref()
            .is_some_and(|s| s.drift.iter().any(|d| d.held_until.is_some()))
    })
    .await;
    fx.api()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    fx.wait_gone(&fx.ns, "capstan.dev/v1alpha1", "GitRepository", "app")
        .await;

    let log = controller.log();
    assert!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");
    let object = |name: &str| format!("object={}_{name}__ConfigMap", fx.ns);
    for (what, parts) in [
        (
            "the first revision",
            vec![
                " INFO ",
                "name=\"app\"",
                "applied revision",
                &format!("revision=main@sha1:{first}"),
                "objects=3",
                "created=3",
            ],
        ),
        (
            "the second revision",
            vec![
                " INFO ",
                "applied revision",
                &format!("revision=main@sha1:{second}"),
                "objects=2",
                "pruned=1",
            ],
        ),
        (
            "the prune",
            vec![
                " INFO ",
                "pruned what the revision no longer declares",
                "deleted=1",
            ],
        ),
        (
            "a correction",
            vec![
                " INFO ",
                "drift corrected",
                &object("a"),
                "fields=.data.value",
            ],
        ),
        (
            "the held correction",
            vec![" INFO ", "correction held", &object("a"), "held_until="],
        ),
        (
            "the deletion",
            vec![" INFO ", "deleted the objects this GitRepository applied"],
        ),
        (
            "an object applied (debug)",
            vec![" DEBUG ", "apply", &object("a"), "action=Created"],
        ),
        (
            "an object pruned (debug)",
            vec![" DEBUG ", "prune", &object("b"), "Deleted"],
        ),
    ] {
        let parts: Vec<&str> = parts.iter().map(|p| p.as_ref()).collect();
        assert!(
            !lines_with(&log, &parts).is_empty(),
            "no log line for {what} ({parts:?}):\n{log}"
        );
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret_value);
    assert!(
        !log.contains(secret_value) && !log.contains(&b64),
        "a Secret's value in the log"
    );
}

#[tokio::test]
async fn failures_are_logged_at_warn_with_their_reason_and_message() {
    let fx = Fixture::new_stopped("warnlog").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster_admin_kubeconfig(&fx.ns, "capstan", dir.path());
    let controller = ControllerProcess::start(
        &kubeconfig,
        "warnlog",
        &[&format!("--namespace={}", fx.ns), "--leader-elect=false"],
    );
    let repo = Repo::create("warnlog", &[("cm.yaml", &configmap("cm", "1"))]);
    // One failure that only a change fixes (stalled), one retried with backoff.
    fx.create("stalled", spec(repo.http_url(), json!({"path": "missing"})))
        .await;
    let gone = repo.http_url().replace(&repo.name, "no-such-repository");
    fx.create("retrying", spec(gone, json!({}))).await;
    let mut failures = Vec::new();
    for name in ["stalled", "retrying"] {
        let gr = fx
            .wait(name, "Ready=False", |gr| {
                ready(gr).is_some_and(|(status, _)| status == "False")
            })
            .await;
        let (_, reason) = ready(&gr).unwrap();
        failures.push((name, reason, ready_message(&gr)));
    }
    assert_eq!(failures[0].1, "BuildFailed");
    let stalled = fx.api().get("stalled").await.unwrap();
    let retrying = fx.api().get("retrying").await.unwrap();
    let condition = |gr: &capstan::api::GitRepository, t: &str| {
        gr.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .cloned()
            .unwrap()
    };
    assert_eq!(condition(&stalled, "Stalled").status, "True");
    assert_eq!(
        condition(&retrying, "Reconciling").reason,
        "ProgressingWithRetry"
    );

    let log = controller.log();
    for (name, reason, message) in &failures {
        let name = format!("name=\"{name}\"");
        let reason = format!("reason={reason}");
        let lines = lines_with(&log, &[&name, &reason, message]);
        assert!(
            !lines.is_empty(),
            "no line for {name} {reason} {message}:\n{log}"
        );
        for line in lines {
            assert!(line.contains(" WARN "), "not at warn: {line}");
        }
    }
}

#[tokio::test]
async fn sigterm_while_the_api_server_cannot_be_reached_ends_the_process() {
    let fx = Fixture::new_stopped("drain").await;
    let dir = tempfile::tempdir().unwrap();
    // The controller reaches the API server through a proxy the test can freeze.
    let direct = cluster_admin_kubeconfig(&fx.ns, "capstan", dir.path());
    let mut config = Kubeconfig::read_from(&direct).unwrap();
    let cluster = config.clusters[0].cluster.as_mut().unwrap();
    let server: url::Url = cluster.server.as_deref().unwrap().parse().unwrap();
    let upstream = format!("127.0.0.1:{}", server.port().unwrap())
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    cluster.server = Some(format!("https://127.0.0.1:{}", proxy.addr.port()));
    let kubeconfig = dir.path().join("proxied.kubeconfig");
    std::fs::write(&kubeconfig, serde_json::to_vec(&config).unwrap()).unwrap();

    let mut controller = ControllerProcess::start(
        &kubeconfig,
        "drain",
        // Without leader election: with it, a lease that cannot be renewed stops all work
        // by itself within the lease duration.
        &[&format!("--namespace={}", fx.ns), "--leader-elect=false"],
    );
    let repo = Repo::create("drain", &[("cm.yaml", &configmap("cm", "1"))]);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;

    // A new commit, and the API server gone silent before it is applied: the apply hangs.
    repo.commit(&[("cm.yaml", &configmap("cm", "2"))], "two");
    proxy.freeze();
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Within the chart's 60 s grace period (`terminate` fails the test past it).
    let status = controller.terminate();
    assert!(status.success(), "exit status {status}");
    let log = controller.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("stopped"), "the last log line: {last}\n{log}");
    assert!(
        !lines_with(&log, &["shutting down: finishing in-flight reconciles"]).is_empty(),
        "{log}"
    );
}

#[tokio::test]
async fn a_port_in_use_stops_the_start_with_the_endpoint_named() {
    let fx = Fixture::new_stopped("bind").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster_admin_kubeconfig(&fx.ns, "capstan", dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let free = |_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
            .arg("controller")
            .arg(format!("--metrics-bind-address=127.0.0.1:{port}"))
            .arg(format!("--health-probe-bind-address={}", free(())))
            .arg(format!("--webhook-bind-address={}", free(())))
            .arg(format!(
                "--cache-dir={}",
                dir.path().join("cache").display()
            ))
            .arg(format!("--namespace={}", fx.ns))
            .arg("--leader-elect=false")
            .env("KUBECONFIG", &kubeconfig)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("the controller exits instead of running on without /metrics")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("serving /metrics on 127.0.0.1:{port}"))
            && stderr.contains("in use"),
        "{stderr}"
    );
}
