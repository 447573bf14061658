//! A monorepo: the GitRepositories of one URL at one commit share one checkout; a commit that
//! touches nothing a GitRepository's path reads (its directory, and for kustomize every
//! directory the build reaches) is recorded as applied without a checkout, a render or an apply;
//! one that does is rendered and applied as ever.

use serde_json::json;

use crate::support::Repo;
use crate::support::audit;
use crate::support::controller::{Fixture, configmap, http_get, ready_message, spec};

const OVERLAY: &str = "resources: [../base]\nnamePrefix: prod-\n";

/// How many checkouts the controller made for the GitRepositories of the test, from its metrics.
async fn checkouts(fx: &Fixture) -> u64 {
    let (_, body) = http_get(fx.metrics_addr.unwrap(), "/metrics").await;
    let namespace = format!("namespace=\"{}\"", fx.ns);
    body.lines()
        .filter(|l| l.starts_with("capstan_git_fetch_duration_seconds_count{"))
        .filter(|l| l.contains(&namespace))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_commit_elsewhere_in_the_repository_renders_nothing() {
    let fx = Fixture::with_http("monorepo").await;
    let repo = Repo::create(
        "monorepo-paths",
        &[
            ("apps/a/cm.yaml", &configmap("a", "1")),
            ("apps/b/cm.yaml", &configmap("b", "1")),
            ("base/kustomization.yaml", "resources: [cm.yaml]\n"),
            ("base/cm.yaml", &configmap("k", "1")),
            ("overlay/kustomization.yaml", OVERLAY),
        ],
    );
    for (name, path) in [("a", "apps/a"), ("b", "apps/b"), ("k", "overlay")] {
        fx.create(name, spec(repo.http_url(), json!({"path": path})))
            .await;
    }
    for name in ["a", "b", "k"] {
        fx.wait_applied(name, &repo.head()).await;
    }
    assert_eq!(checkouts(&fx).await, 1, "one checkout for the three");

    // Only b's directory changes: a and the kustomization take the revision as it is.
    let mark = audit::mark();
    let sha = repo.commit(&[("apps/b/cm.yaml", &configmap("b", "2"))], "b only");
    let b = fx.wait_applied("b", &sha).await;
    assert!(
        ready_message(&b).contains("1 configured"),
        "{}",
        ready_message(&b)
    );
    let a = fx.wait_applied("a", &sha).await;
    assert_eq!(
        ready_message(&a),
        format!(
            "Applied revision main@sha1:{sha} (1 objects unchanged: nothing in apps/a changed)"
        )
    );
    let k = fx.wait_applied("k", &sha).await;
    let message = ready_message(&k);
    assert!(
        message.contains("nothing in base, overlay changed"),
        "{message}"
    );
    let sent: Vec<String> = audit::mutating_since(mark, &fx.ns)
        .into_iter()
        .filter(|r| r.contains("configmaps/"))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("configmaps/b "), "{sent:?}");
    assert_eq!(checkouts(&fx).await, 2, "only b's revision is checked out");

    // The base the overlay reaches changes: rendered and applied again.
    let sha = repo.commit(&[("base/cm.yaml", &configmap("k", "2"))], "base");
    let k = fx.wait_applied("k", &sha).await;
    assert!(
        ready_message(&k).contains("1 configured"),
        "{}",
        ready_message(&k)
    );
    assert_eq!(fx.value("prod-k").await, "2");
    let a = fx.wait_applied("a", &sha).await;
    assert!(ready_message(&a).contains("nothing in apps/a changed"));
}
