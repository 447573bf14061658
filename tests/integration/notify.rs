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
use crate::support::gitea::Gitea;
use crate::support::hooks::{Answer, Endpoint, Recorded};

const TOKEN: &str = "t0ken-never-shown";

pub async fn apply(client: &Client, ns: &str, kind: &str, name: &str, spec: Value) {
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
pub async fn route(fx: &Fixture, name: &str, provider: Value, alert: Value) {
    apply(&fx.client, &fx.ns, "Provider", name, provider).await;
    let mut spec = json!({"providerRef": {"name": name}, "eventSources": [{"kind": "GitRepository", "name": "*"}]});
    for (k, v) in alert.as_object().unwrap() {
        spec[k] = v.clone();
    }
    apply(&fx.client, &fx.ns, "Alert", name, spec).await;
}

/// Waits until the Alert's Ready condition has `reason`; returns its message.
pub async fn alert_ready(fx: &Fixture, name: &str, status: &str, reason: &str) -> String {
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
    let gitea = Gitea::start();
    let work = gitea.repository("app").await;
    let commit = |value: &str| work.commit("main", &[("cm.yaml", &configmap("forged", value))]);
    let first = commit("1");

    // Capstan's side: the GitRepository (credentials, an hour between polls), a Receiver for
    // Gitea's webhook (signed as GitHub signs), and the commit status Provider.
    forge_secrets(&fx, &gitea).await;
    receiver(&fx, "gitea", "app").await;
    let provider = json!({"type": "gitea", "address": gitea.address("app"), "secretRef": {"name": "gitea-api"}});
    route(&fx, "gitea", provider, json!({})).await;
    alert_ready(&fx, "gitea", "True", "Valid").await;
    let gr = json!({"url": gitea.clone_url("app"), "interval": "1h", "secretRef": {"name": "gitea-git"}});
    fx.create("app", spec("", gr)).await;
    fx.wait_applied("app", &first).await;
    hook(&fx, &gitea, "app", &["push"]).await;

    // What Gitea shows of a commit's status, once it is `success` for our context.
    let context = format!("capstan/{}/app", fx.ns);
    let shown = gitea.status("app", &first, &context, "success").await;
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
    gitea.status("app", &second, &context, "success").await;
}

/// The Secrets a GitRepository, a Receiver and a Provider use with `gitea`: `gitea-git` (the
/// user's password), `gitea-hook` (the webhook's token), `gitea-api` (the API token).
pub async fn forge_secrets(fx: &Fixture, gitea: &Gitea) {
    let git: &[(&str, &[u8])] = &[
        ("username", gitea.user.as_bytes()),
        ("password", gitea.password.as_bytes()),
    ];
    put_secret(&fx.client, &fx.ns, "gitea-git", git).await;
    put_secret(
        &fx.client,
        &fx.ns,
        "gitea-hook",
        &[("token", HOOK_TOKEN.as_bytes())],
    )
    .await;
    let api: &[(&str, &[u8])] = &[("token", gitea.token.as_bytes())];
    put_secret(&fx.client, &fx.ns, "gitea-api", api).await;
}

const HOOK_TOKEN: &str = "gitea-hook-s3cret";

/// A `github` Receiver `name` (Gitea signs as GitHub does) for the GitRepository `gr`.
pub async fn receiver(fx: &Fixture, name: &str, gr: &str) {
    let receiver =
        json!({"type": "github", "secretRef": {"name": "gitea-hook"}, "resources": [{"name": gr}]});
    let object = json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Receiver", "metadata": {"name": name}, "spec": receiver});
    let receivers: Api<capstan::api::Receiver> = Api::namespaced(fx.client.clone(), &fx.ns);
    receivers
        .patch(name, &PatchParams::apply("test"), &Patch::Apply(&object))
        .await
        .unwrap();
}

/// Gitea's webhook of `events` on repository `repo`, to the Receiver `gitea`.
pub async fn hook(fx: &Fixture, gitea: &Gitea, repo: &str, events: &[&str]) {
    let url = format!("http://{}/hook/{}/gitea", fx.webhook_addr.unwrap(), fx.ns);
    let hook = json!({
        "type": "gitea",
        "config": {"url": url, "content_type": "json", "secret": HOOK_TOKEN},
        "events": events,
        "active": true,
    });
    let path = format!("/repos/{}/{repo}/hooks", gitea.user);
    gitea.expect(201, "POST", &path, Some(hook)).await;
}
