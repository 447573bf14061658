//! Push-triggered sync through a Receiver, against the real control plane and git server.

use std::time::Duration;

use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::support::controller::{Fixture, configmap, http_get, http_request, put_secret, spec};
use crate::support::{Repo, audit};

const TOKEN: &[u8] = b"hook-s3cret";

/// POSTs `body` (JSON) to the fixture's webhook endpoint; returns (status code, body).
async fn post(fx: &Fixture, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let mut headers = headers.to_vec();
    headers.push(("Content-Type", "application/json".into()));
    http_request(fx.webhook_addr.unwrap(), "POST", path, &headers, body).await
}

fn push_body(repo: &Repo, git_ref: &str) -> Vec<u8> {
    json!({
        "ref": git_ref,
        "repository": {"clone_url": repo.http_url(), "html_url": "https://example.com/x"},
    })
    .to_string()
    .into_bytes()
}

fn github(body: &[u8], token: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", "push".into()),
        (
            "X-Hub-Signature-256",
            capstan::webhook::hmac_signature(body, token),
        ),
    ]
}

#[tokio::test]
async fn a_signed_push_reconciles_at_once_and_a_bad_one_changes_nothing() {
    let fx = Fixture::with_http("webhook").await;
    let repo = Repo::create("webhook", &[("cm.yaml", &configmap("hooked", "1"))]);
    // An hour between polls: only the hook can bring a new commit in during the test.
    fx.create("app", spec(repo.http_url(), json!({"interval": "1h"})))
        .await;
    fx.wait_applied("app", &repo.head()).await;
    put_secret(&fx.client, &fx.ns, "hook-token", &[("token", TOKEN)]).await;
    let receivers: Api<capstan::api::Receiver> = Api::namespaced(fx.client.clone(), &fx.ns);
    receivers
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "capstan.dev/v1alpha1",
                "kind": "Receiver",
                "metadata": {"name": "github"},
                "spec": {"type": "github", "secretRef": {"name": "hook-token"}, "resources": [{"name": "*"}]},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let path = format!("/hook/{}/github", fx.ns);

    // A wrong signature: 401, and the new commit stays out.
    let sha = repo.commit(&[("cm.yaml", &configmap("hooked", "2"))], "two");
    let body = push_body(&repo, "refs/heads/main");
    let (code, _) = post(&fx, &path, &github(&body, b"wrong-token"), &body).await;
    assert_eq!(code, 401);
    let mark = audit::mark();
    let (code, _) = post(&fx, &path, &[("X-GitHub-Event", "push".into())], &body).await;
    assert_eq!(code, 401, "no signature");
    // Refused without a read: an unsigned flood costs the API server nothing.
    let (code, _) = post(&fx, &path, &github(&body, b"wrong-token"), &body).await;
    assert_eq!(code, 401);
    let looked_up = lookups_since(mark, &fx.ns);
    assert_eq!(
        looked_up.len(),
        2,
        "only the signed request reads the Receiver and its Secret: {looked_up:?}"
    );
    // Refused before anything is parsed or looked up.
    let (code, _) = post(
        &fx,
        &format!("/hook/{}/nobody", fx.ns),
        &github(&body, TOKEN),
        &body,
    )
    .await;
    assert_eq!(code, 404);
    let big = vec![b' '; capstan::webhook::MAX_BODY_BYTES + 1];
    let (code, _) = post(&fx, &path, &github(&big, TOKEN), &big).await;
    assert_eq!(code, 413);
    let (code, _) = post(&fx, &path, &github(b"{not json", TOKEN), b"{not json").await;
    assert_eq!(code, 400);
    // A push to another branch concerns nothing here.
    let other = push_body(&repo, "refs/heads/feature");
    let (code, reply) = post(&fx, &path, &github(&other, TOKEN), &other).await;
    assert_eq!(code, 202);
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap()["triggered"],
        json!([])
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(fx.value("hooked").await, "1", "nothing was reconciled");

    // The correctly signed push: reconciled at once.
    let (code, reply) = post(&fx, &path, &github(&body, TOKEN), &body).await;
    assert_eq!(code, 202, "{reply}");
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap()["triggered"],
        json!(["app"])
    );
    fx.wait_applied("app", &sha).await;
    assert_eq!(fx.value("hooked").await, "2");

    // A flood of pushes at once: each asks, the controller folds them into a few reconciles.
    let before = reconciles(&fx).await;
    let sha = repo.commit(&[("cm.yaml", &configmap("hooked", "3"))], "three");
    let signed = github(&body, TOKEN);
    let flood: Vec<_> = (0..10).map(|_| post(&fx, &path, &signed, &body)).collect();
    for (code, reply) in futures::future::join_all(flood).await {
        assert_eq!(code, 202, "{reply}");
    }
    fx.wait_applied("app", &sha).await;
    assert_eq!(fx.value("hooked").await, "3");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flood_reconciles = reconciles(&fx).await - before;
    assert!(
        (1..10).contains(&flood_reconciles),
        "10 pushes made {flood_reconciles} reconciles"
    );
}

/// Creates Receiver `name` of `kind` (`gitlab`, `generic-hmac`, ...) with the token of Secret
/// `hook-token`, selecting `resources`.
async fn create_receiver(fx: &Fixture, name: &str, kind: &str, resources: Value) {
    let receivers: Api<capstan::api::Receiver> = Api::namespaced(fx.client.clone(), &fx.ns);
    receivers
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "capstan.dev/v1alpha1",
                "kind": "Receiver",
                "metadata": {"name": name},
                "spec": {"type": kind, "secretRef": {"name": "hook-token"}, "resources": resources},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
}

/// The GitRepositories of the fixture's namespace that carry a reconcile request.
async fn requested(fx: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = fx
        .api()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|gr| {
            gr.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("capstan.dev/reconcile-requested-at"))
        })
        .filter_map(|gr| gr.metadata.name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn gitlab_and_generic_hmac_receivers_reconcile_exactly_what_their_labels_select() {
    let fx = Fixture::with_http("webhook-labels").await;
    let apps = [("web-a", "web"), ("web-b", "web"), ("ops", "ops")];
    let files: Vec<(String, String)> = apps
        .iter()
        .map(|(name, _)| (format!("{name}/cm.yaml"), configmap(name, "1")))
        .collect();
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let repo = Repo::create("webhook-labels", &borrowed);
    for (name, team) in apps {
        fx.create_labelled(
            name,
            json!({"team": team, "app": name}),
            spec(repo.http_url(), json!({"interval": "1h", "path": name})),
        )
        .await;
    }
    let first = repo.head();
    for (name, _) in apps {
        fx.wait_applied(name, &first).await;
    }
    put_secret(&fx.client, &fx.ns, "hook-token", &[("token", TOKEN)]).await;
    create_receiver(
        &fx,
        "gitlab",
        "gitlab",
        json!([{"matchLabels": {"team": "web"}}]),
    )
    .await;
    create_receiver(
        &fx,
        "generic",
        "generic-hmac",
        json!([{"matchLabels": {"team": "ops"}}]),
    )
    .await;
    let files: Vec<(String, String)> = apps
        .iter()
        .map(|(name, _)| (format!("{name}/cm.yaml"), configmap(name, "2")))
        .collect();
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let second = repo.commit(&borrowed, "two");

    // GitLab: the token itself in X-Gitlab-Token.
    let gitlab = format!("/hook/{}/gitlab", fx.ns);
    let body = json!({
        "object_kind": "push",
        "ref": "refs/heads/main",
        "project": {"git_http_url": repo.http_url(), "web_url": "https://gitlab.example.com/x"},
    })
    .to_string()
    .into_bytes();
    let as_gitlab = |token: &[u8]| {
        vec![
            ("X-Gitlab-Event", "Push Hook".to_string()),
            ("X-Gitlab-Token", String::from_utf8(token.to_vec()).unwrap()),
        ]
    };
    let (code, _) = post(&fx, &gitlab, &as_gitlab(b"wrong-token"), &body).await;
    assert_eq!(code, 401);
    // A GitHub signature made with the right token is not GitLab's header.
    let mut signed = github(&body, TOKEN);
    signed.push(("X-Gitlab-Event", "Push Hook".into()));
    let (code, _) = post(&fx, &gitlab, &signed, &body).await;
    assert_eq!(code, 401);
    assert_eq!(
        requested(&fx).await,
        Vec::<String>::new(),
        "nothing requested"
    );

    let (code, reply) = post(&fx, &gitlab, &as_gitlab(TOKEN), &body).await;
    assert_eq!(code, 202, "{reply}");
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap()["triggered"],
        json!(["web-a", "web-b"])
    );
    fx.wait_applied("web-a", &second).await;
    fx.wait_applied("web-b", &second).await;
    assert_eq!(fx.value("web-b").await, "2");
    assert_eq!(requested(&fx).await, ["web-a", "web-b"]);
    let ops = fx.api().get("ops").await.unwrap();
    assert_eq!(
        ops.status.unwrap().last_applied_revision,
        Some(format!("main@sha1:{first}")),
        "ops is not selected by team=web"
    );
    assert_eq!(fx.value("ops").await, "1");

    // Generic HMAC: X-Signature over any body; every GitRepository it selects.
    let generic = format!("/hook/{}/generic", fx.ns);
    let body = br#"{"anything": "at all"}"#;
    let with_signature =
        |token: &[u8]| vec![("X-Signature", capstan::webhook::hmac_signature(body, token))];
    let (code, _) = post(&fx, &generic, &with_signature(b"wrong-token"), body).await;
    assert_eq!(code, 401);
    let (code, _) = post(&fx, &generic, &as_gitlab(TOKEN), body).await;
    assert_eq!(code, 401, "a GitLab token is not an HMAC signature");
    assert_eq!(requested(&fx).await, ["web-a", "web-b"]);
    let (code, reply) = post(&fx, &generic, &with_signature(TOKEN), body).await;
    assert_eq!(code, 202, "{reply}");
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap()["triggered"],
        json!(["ops"])
    );
    fx.wait_applied("ops", &second).await;
    assert_eq!(fx.value("ops").await, "2");
}

/// Reads of Receivers and Secrets in `ns` since `mark`.
fn lookups_since(mark: usize, ns: &str) -> Vec<String> {
    audit::reads_since(mark, ns)
        .into_iter()
        .filter(|r| r.contains("receivers/") || r.contains("secrets/"))
        .collect()
}

/// Reconciles of GitRepository `app` so far, from the controller's metrics.
async fn reconciles(fx: &Fixture) -> u64 {
    let (_, text) = http_get(fx.metrics_addr.unwrap(), "/metrics").await;
    let labels = format!(r#"name="app",namespace="{}""#, fx.ns);
    text.lines()
        .filter(|l| l.starts_with("capstan_reconcile_total{") && l.contains(&labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
