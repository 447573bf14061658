//! Hostile and oversized repositories, and a git server that never answers: each refused with a
//! clear condition, nothing already applied lost, and other GitRepositories unaffected. The
//! fixture's controller runs with small limits (1 MiB per manifest, 100 manifest files); a
//! controller process is started with a small `--max-fetch-bytes`.

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, ready_message, spec};
use crate::support::process::{ControllerProcess, cluster_admin_kubeconfig};

/// Syncs a repository holding `keep`, then pushes `bad` and expects BuildFailed naming `what`.
async fn refused(test: &str, bad: impl FnOnce(&Repo), what: &str) {
    let fx = Fixture::new(test).await;
    let repo = Repo::create(test, &[("keep.yaml", &configmap("keep", "1"))]);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;
    bad(&repo);
    let gr = fx.wait_failed("app", "BuildFailed").await;
    assert!(
        ready_message(&gr).contains(what),
        "{test}: {}",
        ready_message(&gr)
    );
    assert!(
        fx.get("v1", "ConfigMap", "keep").await.is_some(),
        "{test}: nothing lost"
    );
}

#[tokio::test]
async fn a_symlink_out_of_the_checkout_rejects_the_revision() {
    refused(
        "symlink",
        |repo| {
            repo.symlink("leak.yaml", "/etc/passwd", "leak");
        },
        "leak.yaml: symlink points outside the repository",
    )
    .await;
}

#[tokio::test]
async fn a_path_through_a_symlinked_directory_is_refused() {
    let fx = Fixture::new("symlink-dir").await;
    let repo = Repo::create(
        "symlink-dir",
        &[("deploy/keep.yaml", &configmap("keep", "1"))],
    );
    repo.symlink("outside", "/etc", "link out");
    fx.create("app", spec(repo.http_url(), json!({"path": "outside"})))
        .await;
    let gr = fx.wait_failed("app", "BuildFailed").await;
    let message = ready_message(&gr);
    assert!(
        message.contains(r#"path "outside" resolves outside the repository"#),
        "{message}"
    );
}

#[tokio::test]
async fn a_yaml_bomb_is_a_build_error() {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i", "j"])
    {
        let refs = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    refused(
        "yaml-bomb",
        |repo| {
            repo.commit(&[("bomb.yaml", &bomb)], "bomb");
        },
        "too large or too complex",
    )
    .await;
}

#[tokio::test]
async fn a_manifest_over_the_size_limit_is_refused() {
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  blob: \"{}\"\n",
        "x".repeat(1_500_000)
    );
    refused(
        "too-big",
        |repo| {
            repo.commit(&[("big.yaml", &big)], "big");
        },
        "bytes is over the limit of 1048576 bytes per file",
    )
    .await;
}

#[tokio::test]
async fn a_checkout_over_the_file_limit_is_refused() {
    let files: Vec<(String, String)> = (0..101)
        .map(|i| {
            (
                format!("many/cm{i:03}.yaml"),
                configmap(&format!("cm{i}"), "1"),
            )
        })
        .collect();
    refused(
        "too-many",
        |repo| {
            let files: Vec<(&str, &str)> = files
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            repo.commit(&files, "many");
        },
        "more than 100 manifest files",
    )
    .await;
}

#[tokio::test]
async fn a_silent_git_server_times_out_while_others_keep_syncing() {
    let fx = Fixture::new("silent").await;
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let healthy = Repo::create("silent-ok", &[("cm.yaml", &configmap("healthy", "1"))]);
    fx.create(
        "hung",
        spec(
            format!("http://127.0.0.1:{port}/git/app.git"),
            json!({"timeout": "3s"}),
        ),
    )
    .await;
    fx.create("healthy", spec(healthy.http_url(), json!({"path": "./"})))
        .await;
    fx.wait_applied("healthy", &healthy.head()).await;

    let gr = fx.wait_failed("hung", "FetchFailed").await;
    let message = ready_message(&gr);
    // The first try times out; until libgit2 gives that call up, later tries fail at once.
    assert!(
        message.contains("did not finish within 3s") || message.contains("has not returned yet"),
        "{message}"
    );

    // While the silent server still holds a connection, the other keeps up with its commits.
    for round in 2..4 {
        let head = healthy.commit(
            &[("cm.yaml", &configmap("healthy", &round.to_string()))],
            "next",
        );
        fx.wait_applied("healthy", &head).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `n` pseudo-random bytes as base64: text that git's compression cannot shrink much.
fn incompressible(n: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn a_fetch_past_max_fetch_bytes_is_stopped_and_nothing_of_it_applied() {
    let fx = Fixture::new_stopped("fetch-limit").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster_admin_kubeconfig(&fx.ns, "capstan", dir.path());
    let _controller = ControllerProcess::start(
        &kubeconfig,
        "fetch-limit",
        &[
            &format!("--namespace={}", fx.ns),
            "--leader-elect=false",
            "--max-fetch-bytes=1048576",
        ],
    );
    let repo = Repo::create("fetch-limit", &[("keep.yaml", &configmap("keep", "1"))]);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    let first = repo.head();
    fx.wait_applied("app", &first).await;

    // 3 MiB that compress to well over 1 MiB, outside any manifest, and a new object beside them.
    let blob = incompressible(3 << 20);
    let big = repo.commit(
        &[
            ("assets/blob.txt", &blob),
            ("new.yaml", &configmap("new", "1")),
        ],
        "a large file",
    );
    let gr = fx.wait_failed("app", "FetchFailed").await;
    let message = ready_message(&gr);
    assert!(
        message.contains("stopped past 1048576 bytes") && message.contains("--max-fetch-bytes"),
        "{message}"
    );
    let status = gr.status.unwrap();
    assert_eq!(
        status.last_applied_revision,
        Some(format!("main@sha1:{first}"))
    );
    assert_eq!(
        status.last_attempted_revision,
        Some(format!("main@sha1:{big}"))
    );
    assert!(fx.get("v1", "ConfigMap", "keep").await.is_some(), "kept");
    assert!(fx.get("v1", "ConfigMap", "new").await.is_none());

    // Too large from its first commit: nothing at all is applied.
    let whole = Repo::create(
        "fetch-limit-whole",
        &[
            ("assets/blob.txt", &blob),
            ("cm.yaml", &configmap("whole", "1")),
        ],
    );
    fx.create("whole", spec(whole.http_url(), json!({}))).await;
    let gr = fx.wait_failed("whole", "FetchFailed").await;
    assert!(ready_message(&gr).contains("--max-fetch-bytes"));
    assert!(gr.status.unwrap().last_applied_revision.is_none());
    assert!(fx.get("v1", "ConfigMap", "whole").await.is_none());

    // Back under the limit, the next revision syncs.
    let small = repo.remove(&["assets/blob.txt"], "the large file removed");
    fx.patch(
        "app",
        json!({"metadata": {"annotations": {"capstan.dev/reconcile-requested-at": "smaller"}}}),
    )
    .await;
    fx.wait_applied("app", &small).await;
    assert!(fx.get("v1", "ConfigMap", "new").await.is_some());
}
