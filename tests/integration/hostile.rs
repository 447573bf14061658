//! Hostile and oversized repositories, and a git server that never answers: each refused with a
//! clear condition, nothing already applied lost, and other GitRepositories unaffected. The
//! fixture's controller runs with small limits (1 MiB per manifest, 100 manifest files).

use std::time::Duration;

use serde_json::json;

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, ready_message, spec};

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
