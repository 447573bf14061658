//! Notifications: Alerts and Providers against the real control plane and git server, sending
//! to a local HTTP endpoint that records each request, checked against the documented request
//! formats of GitHub's and GitLab's commit status APIs, Slack's incoming webhooks and the
//! generic (Flux) event JSON.

use std::time::Duration;

use capstan::api::{Alert, Provider};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, http_get, put_secret, spec};
use crate::support::hooks::{Answer, Endpoint, Recorded};

const TOKEN: &str = "t0ken-never-shown";

async fn apply(client: &Client, ns: &str, kind: &str, name: &str, spec: Value) {
    let object = json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    });
    let params = PatchParams::apply("test").force();
    match kind {
        "Provider" => {
            let api: Api<Provider> = Api::namespaced(client.clone(), ns);
            api.patch(name, &params, &Patch::Apply(&object))
                .await
                .unwrap();
        }
        _ => {
            let api: Api<Alert> = Api::namespaced(client.clone(), ns);
            api.patch(name, &params, &Patch::Apply(&object))
                .await
                .unwrap();
        }
    }
}

/// A Provider and an Alert of every GitRepository's events to it, both named `name`.
async fn route(fx: &Fixture, name: &str, provider: Value, alert: Value) {
    apply(&fx.client, &fx.ns, "Provider", name, provider).await;
    let mut spec = json!({"providerRef": {"name": name}, "eventSources": [{"kind": "GitRepository", "name": "*"}]});
    for (k, v) in alert.as_object().unwrap() {
        spec[k] = v.clone();
    }
    apply(&fx.client, &fx.ns, "Alert", name, spec).await;
}

/// Waits until the Alert's Ready condition has `reason`; returns its message.
async fn alert_ready(fx: &Fixture, name: &str, status: &str, reason: &str) -> String {
    let api: Api<Alert> = Api::namespaced(fx.client.clone(), &fx.ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let alert = api.get(name).await.unwrap();
        let ready = alert
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        if let Some(c) = ready.filter(|c| c.status == status && c.reason == reason) {
            return c.message.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Alert {name} not Ready={status} {reason}: {ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn state_of(r: &Recorded) -> String {
    r.json()["state"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn commit_status_on_github_and_gitlab_follows_each_apply() {
    let fx = Fixture::new("notify-commit").await;
    let host = Endpoint::start().await;
    put_secret(
        &fx.client,
        &fx.ns,
        "forge-token",
        &[("token", TOKEN.as_bytes())],
    )
    .await;
    let provider = |kind: &str, path: &str| json!({"type": kind, "address": host.url(path), "secretRef": {"name": "forge-token"}});
    route(
        &fx,
        "github",
        provider("github", "/acme/app.git"),
        json!({}),
    )
    .await;
    route(
        &fx,
        "gitlab",
        provider("gitlab", "/group/sub/app"),
        json!({}),
    )
    .await;
    let why = alert_ready(&fx, "github", "True", "Valid").await;
    assert!(why.contains("nothing sent yet"), "{why}");
    let repo = Repo::create("notify-commit", &[("cm.yaml", &configmap("one", "1"))]);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    let sha = repo.head();
    fx.wait_applied("app", &sha).await;

    let github = format!("/api/v3/repos/acme/app/statuses/{sha}");
    let gitlab = format!("/api/v4/projects/group%2Fsub%2Fapp/statuses/{sha}");
    let on = |path: &str, state: &'static str| {
        let path = path.to_string();
        move |r: &Recorded| r.path == path && state_of(r) == state
    };
    let success = host
        .wait_for("github success", on(&github, "success"))
        .await;
    let gl_success = host
        .wait_for("gitlab success", on(&gitlab, "success"))
        .await;
    // Pending came first, while applying.
    let received = host.received();
    let at = |p: &dyn Fn(&Recorded) -> bool| received.iter().position(p);
    let (pending, done) = (at(&on(&github, "pending")), at(&on(&github, "success")));
    assert!(pending.is_some() && pending < done, "{received:#?}");
    let (pending, done) = (at(&on(&gitlab, "pending")), at(&on(&gitlab, "success")));
    assert!(pending.is_some() && pending < done, "{received:#?}");

    // GitHub: POST /repos/{owner}/{repo}/statuses/{sha}, a bearer token, the JSON of the docs.
    assert_eq!(success.method, "POST");
    assert_eq!(success.headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(success.headers["accept"], "application/vnd.github+json");
    assert!(success.headers["content-type"].starts_with("application/json"));
    let body = success.json();
    assert_eq!(body["context"], format!("capstan/{}/app", fx.ns));
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("Applied revision")
    );
    assert!(body["description"].as_str().unwrap().chars().count() <= 140);
    // GitLab: POST /projects/:id/statuses/:sha, the id a URL-encoded path, PRIVATE-TOKEN.
    assert_eq!(gl_success.headers["private-token"], TOKEN);
    assert_eq!(gl_success.json()["name"], format!("capstan/{}/app", fx.ns));

    alert_ready(&fx, "github", "True", "Succeeded").await;

    // A failure before any revision is resolved (a dependency that does not exist) is about
    // no commit: the applied one keeps its `success`.
    fx.patch("app", json!({"spec": {"dependsOn": [{"name": "missing"}]}}))
        .await;
    fx.wait_failed("app", "DependencyNotReady").await;
    fx.patch("app", json!({"spec": {"dependsOn": null}})).await;
    fx.wait_applied("app", &sha).await;
    let failed_first = |r: &Recorded| r.path == github && state_of(r) == "failure";
    assert!(
        !host.received().iter().any(failed_first),
        "{:#?}",
        host.received()
    );

    // A revision that fails to build: its commit gets `failure` (GitLab: `failed`).
    let bad = repo.commit(&[("cm.yaml", "kind: [unclosed")], "broken");
    fx.wait_failed("app", "BuildFailed").await;
    let github = format!("/api/v3/repos/acme/app/statuses/{bad}");
    let gitlab = format!("/api/v4/projects/group%2Fsub%2Fapp/statuses/{bad}");
    let failure = host
        .wait_for("github failure", on(&github, "failure"))
        .await;
    host.wait_for("gitlab failed", on(&gitlab, "failed")).await;
    assert!(
        failure.json()["description"]
            .as_str()
            .unwrap()
            .contains("cm.yaml"),
        "{}",
        failure.json()
    );
    // Nothing at all for the commit that was never applied other than the failure.
    assert!(
        !host
            .received()
            .iter()
            .any(|r| r.path == github && state_of(r) == "success")
    );
}

#[tokio::test]
async fn events_reach_generic_hmac_and_slack_as_their_alerts_select() {
    let fx = Fixture::new("notify-events").await;
    let hooks = Endpoint::start().await;
    put_secret(&fx.client, &fx.ns, "hmac", &[("token", TOKEN.as_bytes())]).await;
    // Slack's webhook URL is itself a credential: it comes from the Secret.
    let slack_url = hooks.url("/services/T000/B000/s3cr3t-path");
    put_secret(
        &fx.client,
        &fx.ns,
        "slack",
        &[("address", slack_url.as_bytes())],
    )
    .await;
    let generic = json!({"type": "generic-hmac", "address": hooks.url("/generic"), "secretRef": {"name": "hmac"}});
    route(&fx, "generic", generic, json!({})).await;
    let slack = json!({"type": "slack", "channel": "#deploys", "secretRef": {"name": "slack"}});
    route(&fx, "slack", slack, json!({"eventSeverity": "error"})).await;
    alert_ready(&fx, "slack", "True", "Valid").await;
    // Another GitRepository's events are not selected by a name.
    let other = json!({"type": "generic", "address": hooks.url("/other")});
    apply(&fx.client, &fx.ns, "Provider", "other", other).await;
    let only_web = json!({"providerRef": {"name": "other"}, "eventSources": [{"kind": "GitRepository", "name": "web"}]});
    apply(&fx.client, &fx.ns, "Alert", "other", only_web).await;

    let repo = Repo::create("notify-events", &[("cm.yaml", &configmap("one", "1"))]);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    let sha = repo.head();
    fx.wait_applied("app", &sha).await;
    let applied = hooks
        .wait_for("generic Applied", |r| {
            r.path == "/generic" && r.json()["reason"] == "Applied"
        })
        .await;
    // Signed as a generic-hmac Receiver checks it.
    let signature = capstan::webhook::hmac_signature(&applied.body, TOKEN.as_bytes());
    assert_eq!(applied.headers["x-signature"], signature);
    let event = applied.json();
    assert_eq!(event["involvedObject"]["kind"], "GitRepository");
    assert_eq!(event["involvedObject"]["name"], "app");
    assert_eq!(event["involvedObject"]["namespace"], fx.ns.as_str());
    assert_eq!(event["severity"], "info");
    assert!(
        event["metadata"]["revision"]
            .as_str()
            .unwrap()
            .ends_with(&sha)
    );
    assert_eq!(event["reportingController"], "capstan");

    // A failure reaches both; the `error` Alert saw nothing before it.
    repo.commit(&[("cm.yaml", "kind: [unclosed")], "broken");
    fx.wait_failed("app", "BuildFailed").await;
    let slack = hooks
        .wait_for("slack BuildFailed", |r| r.path.starts_with("/services/"))
        .await;
    let body = slack.json();
    assert_eq!(body["channel"], "#deploys");
    assert_eq!(
        body["text"],
        format!("GitRepository {}/app: BuildFailed", fx.ns)
    );
    assert_eq!(body["attachments"][0]["color"], "danger");
    assert!(
        body["attachments"][0]["text"]
            .as_str()
            .unwrap()
            .contains("cm.yaml")
    );
    hooks
        .wait_for("generic BuildFailed", |r| {
            r.path == "/generic" && r.json()["severity"] == "error"
        })
        .await;
    let received = hooks.received();
    assert_eq!(
        received
            .iter()
            .filter(|r| r.path.starts_with("/services/"))
            .count(),
        1
    );
    assert!(
        !received.iter().any(|r| r.path == "/other"),
        "{received:#?}"
    );
}

#[tokio::test]
async fn a_failing_provider_is_retried_then_shown_on_its_alert_and_syncing_goes_on() {
    let fx = Fixture::with_http("notify-faults").await;
    let hooks = Endpoint::start().await;
    let url = hooks.url("/in");
    route(
        &fx,
        "hook",
        json!({"type": "generic", "address": url, "timeout": "1s"}),
        json!({}),
    )
    .await;
    // An Alert whose Provider does not exist, and one whose filter is no regular expression.
    let missing = json!({"providerRef": {"name": "nowhere"}, "eventSources": [{"kind": "GitRepository", "name": "*"}]});
    apply(&fx.client, &fx.ns, "Alert", "missing", missing).await;
    let bad = json!({"providerRef": {"name": "hook"}, "eventSources": [{"kind": "GitRepository", "name": "*"}], "inclusionList": ["("]});
    apply(&fx.client, &fx.ns, "Alert", "bad", bad).await;
    let why = alert_ready(&fx, "missing", "False", "ProviderNotFound").await;
    assert!(why.contains("nowhere"), "{why}");
    let why = alert_ready(&fx, "bad", "False", "InvalidSpec").await;
    assert!(why.contains("regular expression"), "{why}");

    // Two 500s, then 200: delivered on the third attempt, once.
    hooks.answer(&[Answer::Status(500), Answer::Status(500)], None);
    let repo = Repo::create("notify-faults", &[("cm.yaml", &configmap("one", "1"))]);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;
    let applied = |r: &Recorded| r.json()["reason"] == "Applied";
    hooks.wait_for("Applied", applied).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while metric(&fx, "sent").await < 1 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the third attempt counted as sent");
    assert_eq!(hooks.received().iter().filter(|r| applied(r)).count(), 3);
    alert_ready(&fx, "hook", "True", "Succeeded").await;

    // A provider that hangs: every attempt times out; the Alert says so, and syncing goes on.
    hooks.answer(&[], Some(Answer::Hang));
    let second = repo.commit(&[("cm.yaml", &configmap("one", "2"))], "two");
    fx.wait_applied("app", &second).await;
    let why = alert_ready(&fx, "hook", "False", "SendFailed").await;
    assert!(
        why.contains("no answer in time") && why.contains("4 attempts"),
        "{why}"
    );
    assert!(!why.contains(&url), "the address is never shown: {why}");
    let third = repo.commit(&[("cm.yaml", &configmap("one", "3"))], "three");
    fx.wait_applied("app", &third).await;

    // A refused token is retried too, then shown with the answer.
    hooks.answer(&[], Some(Answer::Status(401)));
    let fourth = repo.commit(&[("cm.yaml", &configmap("one", "4"))], "four");
    fx.wait_applied("app", &fourth).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let why = loop {
        let why = alert_ready(&fx, "hook", "False", "SendFailed").await;
        if why.contains("401") || tokio::time::Instant::now() > deadline {
            break why;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(why.contains("HTTP 401"), "{why}");
    assert!(metric(&fx, "failed").await >= 2);

    // Back: the next notice is sent and the Alert is Ready again.
    hooks.answer(&[], None);
    let fifth = repo.commit(&[("cm.yaml", &configmap("one", "5"))], "five");
    fx.wait_applied("app", &fifth).await;
    alert_ready(&fx, "hook", "True", "Succeeded").await;

    // Its Provider deleted: the Alert says so.
    let providers: Api<Provider> = Api::namespaced(fx.client.clone(), &fx.ns);
    providers.delete("hook", &Default::default()).await.unwrap();
    alert_ready(&fx, "hook", "False", "ProviderNotFound").await;
}

/// `capstan_notifications_total` of the Provider `hook` with `result`.
async fn metric(fx: &Fixture, result: &str) -> u64 {
    let (_, text) = http_get(fx.metrics_addr.unwrap(), "/metrics").await;
    let series = format!(
        "capstan_notifications_total{{namespace=\"{}\",provider=\"hook\",result=\"{result}\"}}",
        fx.ns
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_notice_is_sent_once_across_a_restart() {
    let mut fx = Fixture::with_http("notify-restart").await;
    let hooks = Endpoint::start().await;
    route(
        &fx,
        "hook",
        json!({"type": "generic", "address": hooks.url("/in")}),
        json!({}),
    )
    .await;
    let repo = Repo::create("notify-restart", &[("cm.yaml", &configmap("one", "1"))]);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;
    hooks
        .wait_for("Applied", |r| r.json()["reason"] == "Applied")
        .await;
    let before = hooks.received().len();
    // A new controller (a restart, or a new leader) finds the status as it left it.
    crate::restart::restart(&mut fx).await;
    // A few intervals of reconciles by the new one.
    let reconciles = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("capstan_reconcile_total{") && l.contains("name=\"app\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let (_, text) = http_get(fx.metrics_addr.unwrap(), "/metrics").await;
            if reconciles(&text) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("three reconciles after the restart");
    assert_eq!(hooks.received().len(), before, "{:#?}", hooks.received());
    // A real change still tells.
    let next = repo.commit(&[("cm.yaml", &configmap("one", "2"))], "two");
    fx.wait_applied("app", &next).await;
    hooks
        .wait_for("Applied after the restart", |r| {
            r.json()["metadata"]["revision"]
                .as_str()
                .is_some_and(|v| v.ends_with(&next))
        })
        .await;
}

/// A real forge: Gitea's push webhook reaches a Receiver, the commit is applied, and its commit
/// status is posted back through a `gitea` Provider, as Gitea's own API then shows it.
#[tokio::test]
async fn a_push_to_gitea_is_applied_and_its_commit_shows_the_status() {
    let fx = Fixture::with_http("notify-gitea").await;
    let dir = tempfile::tempdir().unwrap();
    let out =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/env/gitea.sh"))
            .arg("up")
            .arg(dir.path().join("gitea"))
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = crate::support::env::parse_exports(&String::from_utf8_lossy(&out.stdout));
    let (url, user, password, token) = (
        env["GITEA_URL"].clone(),
        env["GITEA_USER"].clone(),
        env["GITEA_PASSWORD"].clone(),
        env["GITEA_TOKEN"].clone(),
    );
    let http = reqwest::Client::new();
    let api = |path: &str| format!("{url}/api/v1{path}");
    let auth = format!("token {token}");
    let created = http
        .post(api("/user/repos"))
        .header("Authorization", &auth)
        .json(&json!({"name": "app", "private": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());

    // The first commit, pushed over HTTP with the user's password.
    let work = dir.path().join("work");
    let remote = url.replace("http://", &format!("http://{user}:{password}@")) + "/capstan/app.git";
    let git = |args: &[&str]| crate::support::repo::git(&work, args);
    let commit = |value: &str| {
        std::fs::write(work.join("cm.yaml"), configmap("forged", value)).unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", value]);
        git(&["push", "-q", &remote, "HEAD:main"]);
        git(&["rev-parse", "HEAD"])
    };
    std::fs::create_dir_all(&work).unwrap();
    git(&["init", "-q", "-b", "main"]);
    let first = commit("1");

    // Capstan's side: the GitRepository (credentials, an hour between polls), a Receiver for
    // Gitea's webhook (signed as GitHub signs), and the commit status Provider.
    let ns = fx.ns.clone();
    put_secret(
        &fx.client,
        &ns,
        "gitea-git",
        &[
            ("username", user.as_bytes()),
            ("password", password.as_bytes()),
        ],
    )
    .await;
    put_secret(
        &fx.client,
        &ns,
        "gitea-hook",
        &[("token", b"gitea-hook-s3cret")],
    )
    .await;
    put_secret(&fx.client, &ns, "gitea-api", &[("token", token.as_bytes())]).await;
    let receiver = json!({"type": "github", "secretRef": {"name": "gitea-hook"}, "resources": [{"name": "app"}]});
    let object = json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Receiver", "metadata": {"name": "gitea"}, "spec": receiver});
    let receivers: Api<capstan::api::Receiver> = Api::namespaced(fx.client.clone(), &ns);
    receivers
        .patch("gitea", &PatchParams::apply("test"), &Patch::Apply(&object))
        .await
        .unwrap();
    let provider = json!({"type": "gitea", "address": format!("{url}/capstan/app"), "secretRef": {"name": "gitea-api"}});
    route(&fx, "gitea", provider, json!({})).await;
    alert_ready(&fx, "gitea", "True", "Valid").await;
    let gr = json!({"url": format!("{url}/capstan/app.git"), "interval": "1h", "secretRef": {"name": "gitea-git"}});
    fx.create("app", spec("", gr)).await;
    fx.wait_applied("app", &first).await;
    let hook = json!({
        "type": "gitea",
        "config": {"url": format!("http://{}/hook/{ns}/gitea", fx.webhook_addr.unwrap()), "content_type": "json", "secret": "gitea-hook-s3cret"},
        "events": ["push"],
        "active": true,
    });
    let added = http
        .post(api("/repos/capstan/app/hooks"))
        .header("Authorization", &auth)
        .json(&hook)
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201, "{}", added.text().await.unwrap());

    // What Gitea shows of a commit's status, once it is `success` for our context.
    let context = format!("capstan/{ns}/app");
    let status_of = async |sha: &str| -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got: Value = http
                .get(api(&format!("/repos/capstan/app/commits/{sha}/status")))
                .header("Authorization", &auth)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let ours = got["statuses"].as_array().and_then(|all| {
                all.iter()
                    .find(|s| s["context"] == context.as_str())
                    .cloned()
            });
            if let Some(s) = ours.filter(|s| s["status"] == "success") {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no success status on {sha}: {got}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let shown = status_of(&first).await;
    assert!(
        shown["description"]
            .as_str()
            .unwrap()
            .contains("Applied revision"),
        "{shown}"
    );

    // A push: Gitea's webhook reconciles at once (no poll comes within the hour), and the new
    // commit gets its status.
    let second = commit("2");
    fx.wait_applied("app", &second).await;
    assert_eq!(fx.value("forged").await, "2");
    status_of(&second).await;
}
