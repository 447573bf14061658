//! Pull-request previews against a real forge: Gitea's `pull_request` webhook reaches a
//! Receiver, the controller renders the pull request's head and dry-runs it against the real
//! API server, and Gitea's own API then shows the head commit's status and the one comment,
//! updated on the next push. Nothing of the pull request is applied.

use capstan::api::GitRepository;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::notify::{forge_secrets, hook, receiver};
use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, http_request, put_secret, spec};
use crate::support::gitea::Gitea;
use crate::support::hooks::{Answer, Endpoint};

/// The GitRepository's answer to the preview request of head `sha`, once there is one.
async fn preview_of(fx: &Fixture, sha: &str) -> capstan::api::PreviewStatus {
    let api: Api<GitRepository> = fx.api();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let gr = api.get("app").await.unwrap();
        let previews = gr.status.map(|s| s.previews).unwrap_or_default();
        if let Some(p) = previews.iter().find(|p| p.sha == sha) {
            return p.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no preview of {sha}: {previews:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// The pull request's comments, once one of them has a body that `shows`: the comment is sent
/// after the head's status, so seeing the status does not mean the comment is there yet.
async fn comments(gitea: &Gitea, number: u64, shows: impl Fn(&str) -> bool) -> Vec<Value> {
    let path = format!("/repos/{}/app/issues/{number}/comments", gitea.user);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let listed = gitea.expect(200, "GET", &path, None).await;
        let listed = listed.as_array().unwrap().clone();
        if listed
            .iter()
            .any(|c| c["body"].as_str().is_some_and(&shows))
        {
            return listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such comment: {listed:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_pull_request_is_previewed_on_its_head_commit_and_nothing_of_it_is_applied() {
    let fx = Fixture::with_http("preview").await;
    let ns = fx.ns.clone();
    let gitea = Gitea::start();
    let work = gitea.repository("app").await;
    let base = work.commit(
        "main",
        &[
            ("kept.yaml", &configmap("kept", "1")),
            ("dropped.yaml", &configmap("dropped", "1")),
        ],
    );
    forge_secrets(&fx, &gitea).await;
    receiver(&fx, "gitea", "app").await;
    provider(&fx, &gitea).await;
    let gr = json!({
        "url": gitea.clone_url("app"), "interval": "1h", "secretRef": {"name": "gitea-git"},
        "prune": true, "preview": {"providerRef": {"name": "gitea"}},
    });
    fx.create("app", spec("", gr)).await;
    fx.wait_applied("app", &base).await;
    hook(&fx, &gitea, "app", &["push", "pull_request"]).await;

    // A pull request that changes one object, adds one and removes one.
    work.git(&["checkout", "-q", "-b", "feature"]);
    std::fs::remove_file(work.path().join("dropped.yaml")).unwrap();
    let head = work.commit(
        "feature",
        &[
            ("kept.yaml", &configmap("kept", "2")),
            ("added.yaml", &configmap("added", "1")),
        ],
    );
    let number = pull_request(&gitea, "Change the config").await;

    // The head commit's status, as Gitea shows it.
    let context = format!("capstan/{ns}/app/preview");
    let shown = gitea.status("app", &head, &context, "success").await;
    let summary = "1 changed, 1 created, 1 would be pruned";
    assert_eq!(shown["description"], summary, "{shown}");
    let preview = preview_of(&fx, &head).await;
    assert_eq!(preview.number, number);
    assert!(preview.succeeded, "{preview:?}");
    assert_eq!(preview.message, summary);
    assert_eq!(
        preview.revision.as_deref(),
        Some(format!("refs/pull/{number}/head@sha1:{head}").as_str())
    );

    // One comment with the readable diff.
    let listed = comments(&gitea, number, |b| b.contains(&format!("**{summary}**"))).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let body = listed[0]["body"].as_str().unwrap();
    for want in [
        format!("<!-- capstan-preview {ns}/app -->"),
        format!("ConfigMap {ns}/kept: changed"),
        r#".data.value: "1" → "2""#.to_string(),
        format!("ConfigMap {ns}/added: created"),
        format!("ConfigMap {ns}/dropped: pruned"),
        format!("**{summary}**"),
    ] {
        assert!(body.contains(&want), "{want:?} not in {body}");
    }

    // Nothing of it was applied.
    assert_eq!(fx.value("kept").await, "1");
    assert!(fx.get("v1", "ConfigMap", "added").await.is_none());
    assert!(fx.get("v1", "ConfigMap", "dropped").await.is_some());
    let applied = fx.api().get("app").await.unwrap();
    let status = applied.status.unwrap();
    assert_eq!(
        status.last_applied_revision,
        Some(format!("main@sha1:{base}"))
    );

    // A push that breaks the render: the new head fails with the render's error, and the one
    // comment says so.
    let broken = work.commit("feature", &[("broken.yaml", "kind: [\n")]);
    let shown = gitea.status("app", &broken, &context, "failure").await;
    let description = shown["description"].as_str().unwrap();
    assert!(description.contains("broken.yaml"), "{shown}");
    let preview = preview_of(&fx, &broken).await;
    assert!(!preview.succeeded);
    let listed = comments(&gitea, number, |b| b.contains("broken.yaml")).await;
    assert_eq!(
        listed.len(),
        1,
        "the comment is updated, not added: {listed:?}"
    );
    let body = listed[0]["body"].as_str().unwrap();
    assert!(body.contains("broken.yaml"), "{body}");
    assert!(!body.contains("kept: changed"), "{body}");

    // The GitRepository itself went on: still Ready at the base.
    let gr = fx.api().get("app").await.unwrap();
    let ready = crate::support::controller::ready(&gr).unwrap();
    assert_eq!(ready.0, "True", "{ready:?}");
}

/// The dry run is the GitRepository's own: as its ServiceAccount, whose rights bound what the
/// preview shows as applicable, and with no Secret value shown on the status or the pull request.
#[tokio::test]
async fn a_preview_runs_as_the_service_account_and_shows_no_secret_value() {
    let fx = Fixture::with_http("preview-identity").await;
    let ns = fx.ns.clone();
    crate::tenancy::service_account(&fx, "deployer", &["configmaps", "secrets"]).await;
    let gitea = Gitea::start();
    let work = gitea.repository("app").await;
    let secret = |value: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: {value}\n"
        )
    };
    let base = work.commit("main", &[("secret.yaml", &secret("old-pass-1"))]);
    forge_secrets(&fx, &gitea).await;
    receiver(&fx, "gitea", "app").await;
    provider(&fx, &gitea).await;
    let gr = json!({
        "url": gitea.clone_url("app"), "interval": "1h", "secretRef": {"name": "gitea-git"},
        "serviceAccountName": "deployer", "preview": {"providerRef": {"name": "gitea"}},
    });
    fx.create("app", spec("", gr)).await;
    fx.wait_applied("app", &base).await;
    hook(&fx, &gitea, "app", &["pull_request"]).await;

    work.git(&["checkout", "-q", "-b", "feature"]);
    let service =
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n";
    let head = work.commit(
        "feature",
        &[
            ("secret.yaml", &secret("new-pass-2")),
            ("service.yaml", service),
        ],
    );
    let number = pull_request(&gitea, "A Service").await;

    let context = format!("capstan/{ns}/app/preview");
    let shown = gitea.status("app", &head, &context, "failure").await;
    assert_eq!(shown["description"], "1 changed, 1 failed the dry run");
    let preview = preview_of(&fx, &head).await;
    assert!(!preview.succeeded, "{preview:?}");
    let listed = comments(&gitea, number, |b| b.contains("failed the dry run")).await;
    let body = listed[0]["body"].as_str().unwrap();
    for want in [
        format!("Secret {ns}/creds: changed"),
        ".data.password: (redacted) → (redacted)".to_string(),
        format!("Service {ns}/web: failed"),
        "forbidden".to_string(),
        "system:serviceaccount:".to_string() + &ns + ":deployer",
    ] {
        assert!(body.contains(&want), "{want:?} not in {body}");
    }
    let api: Api<GitRepository> = fx.api();
    let status = serde_json::to_string(&api.get("app").await.unwrap()).unwrap();
    for value in [
        "new-pass-2",
        "old-pass-1",
        "bmV3LXBhc3MtMg",
        "b2xkLXBhc3MtMQ",
    ] {
        assert!(!body.contains(value), "{value} in {body}");
        assert!(!status.contains(value), "{value} in {status}");
    }
    assert!(fx.get("v1", "Service", "web").await.is_none());
}

/// The `gitea` Provider for the repository `app`.
async fn provider(fx: &Fixture, gitea: &Gitea) {
    let spec = json!({"type": "gitea", "address": gitea.address("app"), "secretRef": {"name": "gitea-api"}});
    let object = json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "gitea"}, "spec": spec});
    let providers: Api<capstan::api::Provider> = Api::namespaced(fx.client.clone(), &fx.ns);
    let params = kube::api::PatchParams::apply("test");
    providers
        .patch("gitea", &params, &kube::api::Patch::Apply(&object))
        .await
        .unwrap();
}

/// Opens a pull request of `feature` into `main`; returns its number.
async fn pull_request(gitea: &Gitea, title: &str) -> u64 {
    let pull = json!({"head": "feature", "base": "main", "title": title});
    let path = format!("/repos/{}/app/pulls", gitea.user);
    let opened = gitea.expect(201, "POST", &path, Some(pull)).await;
    opened["number"].as_u64().unwrap()
}

/// GitLab, checked against its documented API by a recording endpoint: a signed `Merge Request
/// Hook` previews `refs/merge-requests/N/head`; the head commit's status goes to
/// `/projects/:id/statuses/:sha`, the note is created once and then updated in place with PUT.
#[tokio::test]
async fn a_gitlab_merge_request_gets_its_status_and_one_note() {
    let fx = Fixture::with_http("preview-gitlab").await;
    let ns = fx.ns.clone();
    let repo = Repo::create("preview-gitlab", &[("a.yaml", &configmap("a", "1"))]);
    let base = repo.head();
    let gitlab = Endpoint::start().await;
    put_secret(&fx.client, &ns, "gitlab-api", &[("token", b"glpat-secret")]).await;
    put_secret(&fx.client, &ns, "gitlab-hook", &[("token", b"hook-token")]).await;
    let provider = json!({"type": "gitlab", "address": gitlab.url("/acme/app"), "secretRef": {"name": "gitlab-api"}});
    crate::notify::apply(&fx.client, &ns, "Provider", "gitlab", provider).await;
    let receiver = json!({"type": "gitlab", "secretRef": {"name": "gitlab-hook"}, "resources": [{"name": "app"}]});
    let object = json!({"apiVersion": "capstan.dev/v1alpha1", "kind": "Receiver", "metadata": {"name": "gitlab"}, "spec": receiver});
    let receivers: Api<capstan::api::Receiver> = Api::namespaced(fx.client.clone(), &ns);
    receivers
        .patch(
            "gitlab",
            &PatchParams::apply("test"),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
    let extra = json!({"interval": "1h", "ref": {"branch": "main"}, "preview": {"providerRef": {"name": "gitlab"}}});
    fx.create("app", spec(repo.http_url(), extra)).await;
    fx.wait_applied("app", &base).await;

    let hook = |sha: &str, action: &str| {
        let mut attributes = json!({"iid": 3, "action": action, "target_branch": "main", "last_commit": {"id": sha}, "source_project_id": 12, "target_project_id": 12});
        if action == "update" {
            attributes["oldrev"] = json!(base);
        }
        json!({"object_kind": "merge_request", "project": {"git_http_url": repo.http_url()}, "object_attributes": attributes})
            .to_string()
    };
    let headers = vec![
        ("X-Gitlab-Event", "Merge Request Hook".to_string()),
        ("X-Gitlab-Token", "hook-token".to_string()),
    ];
    let path = format!("/hook/{ns}/gitlab");
    let send = async |body: String| {
        let addr = fx.webhook_addr.unwrap();
        let (code, answer) = http_request(addr, "POST", &path, &headers, body.as_bytes()).await;
        assert_eq!(code, 202, "{answer}");
        assert!(answer.contains("app"), "{answer}");
    };
    let project = "/api/v4/projects/acme%2Fapp";
    let notes = format!("{project}/merge_requests/3/notes");

    // Opened: pending, then the verdict; no note yet, so one is created.
    let head = repo.branch("feature", &[("b.yaml", &configmap("b", "1"))]);
    repo.push_ref("refs/merge-requests/3/head");
    let me = Answer::Json(200, json!({"id": 9, "username": "capstan-bot"}).to_string());
    gitlab.answer(
        &[
            Answer::Status(201),
            Answer::Status(201),
            me.clone(),
            Answer::Json(200, "[]".into()),
        ],
        Some(Answer::Status(201)),
    );
    send(hook(&head, "open")).await;
    let created = gitlab
        .wait_for("a note created", |r| r.method == "POST" && r.path == notes)
        .await;
    let marker = format!("<!-- capstan-preview {ns}/app -->");
    let note = created.json()["body"].as_str().unwrap().to_string();
    assert!(note.starts_with(&marker), "{note}");
    assert!(
        note.contains(&format!("ConfigMap {ns}/b: created")),
        "{note}"
    );
    assert_eq!(created.headers["private-token"], "glpat-secret");
    let statuses: Vec<Value> = gitlab
        .received()
        .iter()
        .filter(|r| r.path == format!("{project}/statuses/{head}"))
        .map(|r| r.json())
        .collect();
    let context = format!("capstan/{ns}/app/preview");
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    assert_eq!(statuses[0]["state"], "pending");
    assert_eq!(statuses[1]["state"], "success");
    assert_eq!(statuses[1]["name"], context.as_str());
    assert_eq!(statuses[1]["description"], "1 created");
    let listed = gitlab.received();
    assert!(
        listed
            .iter()
            .any(|r| r.method == "GET" && r.path.starts_with(&notes)),
        "the notes were looked up first"
    );

    // Pushed to: the note found by its marker is updated with PUT.
    let next = repo.commit(&[("b.yaml", &configmap("b", "2"))], "again");
    repo.push_ref("refs/merge-requests/3/head");
    // Someone else's note that copies the marker is not ours.
    let listed = json!([
        {"id": 39, "body": "looks good", "author": {"id": 5}},
        {"id": 40, "body": format!("{marker}\nforged"), "author": {"id": 5}},
        {"id": 41, "body": format!("{marker}\nold"), "author": {"id": 9}},
    ]);
    gitlab.answer(
        &[
            Answer::Status(201),
            Answer::Status(201),
            me.clone(),
            Answer::Json(200, listed.to_string()),
        ],
        Some(Answer::Status(200)),
    );
    send(hook(&next, "update")).await;
    let updated = gitlab
        .wait_for("the note updated", |r| {
            r.method == "PUT" && r.path == format!("{notes}/41")
        })
        .await;
    let note = updated.json()["body"].as_str().unwrap().to_string();
    assert!(note.contains(&next), "{note}");
    assert!(
        !gitlab.received().iter().any(|r| r.method == "POST"
            && r.path == notes
            && r.json()["body"].as_str().is_some_and(|b| b.contains(&next))),
        "no second note"
    );
    // A title edit is no new head: nothing is asked.
    let title = hook(&next, "update").replace("\"oldrev\"", "\"x\"");
    let addr = fx.webhook_addr.unwrap();
    let (code, answer) = http_request(addr, "POST", &path, &headers, title.as_bytes()).await;
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("ignored"), "{answer}");

    // Two merge requests at once: both are answered, neither request overwrites the other.
    repo.checkout("main");
    let mut heads = Vec::new();
    for iid in [5, 6] {
        repo.branch(
            &format!("mr-{iid}"),
            &[("c.yaml", &configmap("c", &iid.to_string()))],
        );
        repo.push_ref(&format!("refs/merge-requests/{iid}/head"));
        heads.push((iid, repo.head()));
        repo.checkout("main");
    }
    gitlab.answer(&[], Some(Answer::Json(200, "[]".into())));
    let sent: Vec<_> = heads
        .iter()
        .map(|(iid, sha)| hook(sha, "open").replace("\"iid\":3", &format!("\"iid\":{iid}")))
        .collect();
    futures::join!(send(sent[0].clone()), send(sent[1].clone()));
    for (_, sha) in &heads {
        let status = format!("{project}/statuses/{sha}");
        gitlab
            .wait_for("a verdict on each head", |r| {
                r.path == status && r.json()["state"] == "success"
            })
            .await;
        assert!(preview_of(&fx, sha).await.succeeded);
    }
}
