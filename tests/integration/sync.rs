//! Core sync against the real control plane and git servers: apply, update, prune, refs, CRDs,
//! deletion policies, suspend and reconcile-now, and the steady state.

use serde_json::json;

use crate::support::controller::{Fixture, configmap, ready_message, spec, widget_crd};
use crate::support::{Repo, audit, git_server};

fn value(obj: &kube::api::DynamicObject) -> String {
    obj.data["data"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn sync_update_and_prune() {
    let (fx, repo, gr) = Fixture::synced(
        "sync",
        &[
            ("deploy/a.yaml", &configmap("a", "1")),
            ("deploy/b.yaml", &configmap("b", "1")),
            ("README.md", "not a manifest"),
        ],
        json!({"path": "./deploy"}),
    )
    .await;
    let status = gr.status.unwrap();
    assert_eq!(
        status.last_applied_revision,
        Some(format!("main@sha1:{}", repo.head()))
    );
    assert_eq!(status.last_attempted_revision, status.last_applied_revision);
    let ids: Vec<String> = status
        .inventory
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        ids,
        [
            format!("{}_a__ConfigMap", fx.ns),
            format!("{}_b__ConfigMap", fx.ns)
        ]
    );
    assert_eq!(status.summary.unwrap().created, 2);
    let a = fx.get("v1", "ConfigMap", "a").await.unwrap();
    assert_eq!(value(&a), "1");
    assert_eq!(
        a.metadata.labels.as_ref().unwrap()["capstan.dev/name"],
        "app"
    );
    assert_eq!(
        a.metadata.annotations.as_ref().unwrap()["capstan.dev/owner"],
        format!("{}/app", fx.ns)
    );

    // An edit in git updates the object; a removed file is pruned.
    repo.change(
        &[("deploy/a.yaml", &configmap("a", "2"))],
        &["deploy/b.yaml"],
        "edit a, remove b",
    );
    let gr = fx.wait_applied("app", &repo.head()).await;
    assert_eq!(value(&fx.get("v1", "ConfigMap", "a").await.unwrap()), "2");
    assert!(
        fx.get("v1", "ConfigMap", "b").await.is_none(),
        "b was pruned"
    );
    let summary = gr.status.unwrap().summary.unwrap();
    assert_eq!((summary.configured, summary.pruned), (1, 1), "{summary:?}");
}

#[tokio::test]
async fn unchanged_revision_sends_no_mutating_request() {
    let fx = Fixture::new("steady").await;
    let repo = Repo::create("steady", &[("cm.yaml", &configmap("steady", "1"))]);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "git"},
        "stringData": {"username": "capstan", "password": git_server().var("GIT_HTTP_PASSWORD")},
    }))
    .unwrap();
    kube::Api::namespaced(fx.client.clone(), &fx.ns)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    let mut spec = spec(repo.http_url(), json!({"secretRef": {"name": "git"}}));
    spec["url"] = repo.auth_url().into();
    fx.create("app", spec).await;
    fx.wait_applied("app", &repo.head()).await;
    // Let the first interval's poll settle, then watch three more intervals (2 s each).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let polls_before = git_server().requests(&repo, "GET", "/info/refs").await;
    let fetches_before = git_server()
        .requests(&repo, "POST", "/git-upload-pack")
        .await;
    let mark = audit::mark();
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let polls = git_server().requests(&repo, "GET", "/info/refs").await - polls_before;
    assert!(
        polls >= 2,
        "the remote was polled each interval ({polls} polls)"
    );
    let mutating = audit::mutating_since(mark, &fx.ns);
    assert!(
        mutating.is_empty(),
        "mutating requests in steady state: {mutating:#?}"
    );
    let reads = audit::reads_since(mark, &fx.ns);
    assert!(
        reads.is_empty(),
        "reads beyond the watches in steady state: {reads:#?}"
    );
    let fetches = git_server()
        .requests(&repo, "POST", "/git-upload-pack")
        .await
        - fetches_before;
    assert_eq!(fetches, 0, "a poll with nothing new fetches nothing");
}

#[tokio::test]
async fn refs_branch_tag_and_switching() {
    let fx = Fixture::new("refs").await;
    let repo = Repo::create("refs", &[("cm.yaml", &configmap("ref", "main"))]);
    repo.branch("release", &[("cm.yaml", &configmap("ref", "release"))]);
    let release = repo.head();
    repo.checkout("main");
    repo.tag("v1.0.0");
    let tagged = repo.head();
    repo.commit(&[("cm.yaml", &configmap("ref", "main-2"))], "main moves on");

    fx.create(
        "app",
        spec(repo.http_url(), json!({"ref": {"tag": "v1.0.0"}})),
    )
    .await;
    let gr = fx.wait_applied("app", &tagged).await;
    assert_eq!(
        gr.status.unwrap().last_applied_revision.unwrap(),
        format!("v1.0.0@sha1:{tagged}")
    );
    assert_eq!(
        value(&fx.get("v1", "ConfigMap", "ref").await.unwrap()),
        "main"
    );

    fx.patch(
        "app",
        json!({"spec": {"ref": {"tag": null, "branch": "release"}}}),
    )
    .await;
    fx.wait_applied("app", &release).await;
    assert_eq!(
        value(&fx.get("v1", "ConfigMap", "ref").await.unwrap()),
        "release"
    );

    fx.patch(
        "app",
        json!({"spec": {"ref": {"branch": null, "semver": ">=1.0.0 <2"}}}),
    )
    .await;
    fx.wait_applied("app", &tagged).await;
    assert_eq!(
        value(&fx.get("v1", "ConfigMap", "ref").await.unwrap()),
        "main"
    );
}

#[tokio::test]
async fn pinned_commits_and_refs_by_name() {
    let fx = Fixture::new("pinned").await;
    let repo = Repo::create("pinned", &[("cm.yaml", &configmap("pin", "1"))]);
    let first = repo.head();
    repo.tag("v1.0.0");
    let second = repo.commit(&[("cm.yaml", &configmap("pin", "2"))], "two");
    // A pull request's head: a commit on no branch, only under refs/pull/.
    let pull = repo.branch("topic", &[("cm.yaml", &configmap("pin", "pull"))]);
    repo.push_ref("refs/pull/1/head");
    repo.delete_branch("topic");
    repo.checkout("main");
    let revision = |gr: &capstan::api::GitRepository| {
        gr.status
            .as_ref()
            .and_then(|s| s.last_applied_revision.clone())
            .unwrap_or_default()
    };

    // A commit behind the branch tip, pinned.
    fx.create(
        "app",
        spec(
            repo.http_url(),
            json!({"interval": "1h", "ref": {"commit": first}}),
        ),
    )
    .await;
    let gr = fx.wait_applied("app", &first).await;
    assert_eq!(revision(&gr), format!("sha1:{first}"));
    assert_eq!(value(&fx.get("v1", "ConfigMap", "pin").await.unwrap()), "1");

    // The branch moves on; a reconcile asked for after the push keeps the pinned commit.
    repo.commit(&[("cm.yaml", &configmap("pin", "3"))], "three");
    fx.patch(
        "app",
        json!({"metadata": {"annotations": {"capstan.dev/reconcile-requested-at": "after-push"}}}),
    )
    .await;
    let gr = fx
        .wait("app", "the reconcile after the push", |gr| {
            gr.status
                .as_ref()
                .and_then(|s| s.last_handled_reconcile_at.as_deref())
                == Some("after-push")
        })
        .await;
    assert_eq!(revision(&gr), format!("sha1:{first}"));
    assert_eq!(
        crate::support::controller::ready(&gr),
        Some(("True".into(), "ReconciliationSucceeded".into()))
    );
    assert_eq!(value(&fx.get("v1", "ConfigMap", "pin").await.unwrap()), "1");

    // A commit pinned with its branch.
    fx.patch(
        "app",
        json!({"spec": {"ref": {"branch": "main", "commit": second}}}),
    )
    .await;
    let gr = fx.wait_applied("app", &second).await;
    assert_eq!(revision(&gr), format!("main@sha1:{second}"));
    assert_eq!(value(&fx.get("v1", "ConfigMap", "pin").await.unwrap()), "2");

    // Any ref by name: a pull request's head, then an annotated tag (its commit, not the tag).
    fx.patch(
        "app",
        json!({"spec": {"ref": {"branch": null, "commit": null, "name": "refs/pull/1/head"}}}),
    )
    .await;
    let gr = fx.wait_applied("app", &pull).await;
    assert_eq!(revision(&gr), format!("refs/pull/1/head@sha1:{pull}"));
    assert_eq!(
        value(&fx.get("v1", "ConfigMap", "pin").await.unwrap()),
        "pull"
    );
    fx.patch(
        "app",
        json!({"spec": {"ref": {"name": "refs/tags/v1.0.0"}}}),
    )
    .await;
    let gr = fx.wait_applied("app", &first).await;
    assert_eq!(revision(&gr), format!("refs/tags/v1.0.0@sha1:{first}"));
    assert_eq!(value(&fx.get("v1", "ConfigMap", "pin").await.unwrap()), "1");
}

#[tokio::test]
async fn crd_and_custom_resource_in_one_commit() {
    let fx = Fixture::new("crd").await;
    let group = format!("t{}.capstan.dev", std::process::id());
    let crd = widget_crd(&group);
    let widget =
        format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n");
    // The custom resource sorts before its CRD: order in git must not matter.
    let repo = Repo::create(
        "crd",
        &[
            ("a-widget.yaml", &widget),
            ("z-crd.yaml", &crd),
            ("cm.yaml", &configmap("stays", "1")),
        ],
    );
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;
    let w = fx
        .get(&format!("{group}/v1"), "Widget", "w1")
        .await
        .unwrap();
    assert_eq!(w.data["spec"]["size"], 3);

    // Both removed in one commit: the custom resource goes first, then its CRD.
    repo.remove(&["a-widget.yaml", "z-crd.yaml"], "remove both");
    fx.wait_applied("app", &repo.head()).await;
    fx.wait_gone(
        "",
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        &format!("widgets.{group}"),
    )
    .await;
}

#[tokio::test]
async fn a_new_namespace_is_applied_before_the_objects_it_holds() {
    let fx = Fixture::new("new-ns").await;
    let new_ns = format!("{}-apps", fx.ns);
    let in_new_ns = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {new_ns}\ndata:\n  value: \"1\"\n"
        )
    };
    // The objects sort before their Namespace: order in git must not matter.
    let repo = Repo::create(
        "new-ns",
        &[
            ("a-cm.yaml", &in_new_ns("a")),
            ("b-cm.yaml", &in_new_ns("b")),
            (
                "z-namespace.yaml",
                &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {new_ns}\n"),
            ),
        ],
    );
    let mark = audit::mark();
    fx.create("app", spec(repo.http_url(), json!({"interval": "1h"})))
        .await;
    fx.wait_applied("app", &repo.head()).await;
    assert!(fx.get_in(&new_ns, "v1", "ConfigMap", "b").await.is_some());

    let requests = audit::completed_since(mark);
    let namespace: Vec<_> = requests
        .iter()
        .filter(|r| r.verb == "patch" && r.resource == "namespaces" && r.name == new_ns)
        .collect();
    let objects: Vec<_> = requests
        .iter()
        .filter(|r| r.verb == "patch" && r.resource == "configmaps" && r.namespace == new_ns)
        .collect();
    // One pass: one apply each, none refused for want of the namespace.
    assert_eq!(namespace.len(), 1, "{namespace:#?}");
    assert_eq!(objects.len(), 2, "{objects:#?}");
    for r in namespace.iter().chain(&objects) {
        assert!((200..300).contains(&r.code), "{r:#?}");
    }
    for object in &objects {
        assert!(
            namespace[0].completed <= object.received,
            "{} was sent before its namespace was applied: {namespace:#?} {object:#?}",
            object.name
        );
    }
    // The namespace is cluster-wide: it must not outlive the test.
    crate::support::env::control_plane().kubectl(&["delete", "namespace", &new_ns, "--wait=false"]);
}

#[tokio::test]
async fn deletion_policies() {
    let fx = Fixture::new("deletion").await;
    let repo = Repo::create("deletion", &[("cm.yaml", &configmap("doomed", "1"))]);
    let orphan_repo = Repo::create("orphan", &[("cm.yaml", &configmap("orphan", "1"))]);
    fx.create(
        "delete",
        spec(repo.http_url(), json!({"deletionPolicy": "Delete"})),
    )
    .await;
    fx.create(
        "orphan",
        spec(orphan_repo.http_url(), json!({"deletionPolicy": "Orphan"})),
    )
    .await;
    fx.wait_applied("delete", &repo.head()).await;
    fx.wait_applied("orphan", &orphan_repo.head()).await;

    fx.api()
        .delete("delete", &Default::default())
        .await
        .unwrap();
    fx.api()
        .delete("orphan", &Default::default())
        .await
        .unwrap();
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "doomed").await;
    fx.wait_gone(&fx.ns, "capstan.dev/v1alpha1", "GitRepository", "orphan")
        .await;
    let kept = fx
        .get("v1", "ConfigMap", "orphan")
        .await
        .expect("orphaned object stays");
    let labels = kept.metadata.labels.unwrap_or_default();
    assert!(
        !labels.contains_key("capstan.dev/name"),
        "ownership label removed: {labels:?}"
    );
    let annotations = kept.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key("capstan.dev/owner"),
        "{annotations:?}"
    );
}

#[tokio::test]
async fn suspend_and_reconcile_now() {
    let (fx, repo, _) = Fixture::synced(
        "suspend",
        &[("cm.yaml", &configmap("s", "1"))],
        json!({"interval": "1h"}),
    )
    .await;

    // With an hour's interval, only the annotation brings the new commit in.
    repo.commit(&[("cm.yaml", &configmap("s", "2"))], "two");
    fx.patch(
        "app",
        json!({"metadata": {"annotations": {"capstan.dev/reconcile-requested-at": "first"}}}),
    )
    .await;
    let gr = fx.wait_applied("app", &repo.head()).await;
    assert_eq!(
        gr.status.unwrap().last_handled_reconcile_at.as_deref(),
        Some("first")
    );
    assert_eq!(value(&fx.get("v1", "ConfigMap", "s").await.unwrap()), "2");

    // Suspended: neither a new commit nor the annotation changes anything.
    fx.patch("app", json!({"spec": {"suspend": true}})).await;
    repo.commit(&[("cm.yaml", &configmap("s", "3"))], "three");
    fx.patch(
        "app",
        json!({"metadata": {"annotations": {"capstan.dev/reconcile-requested-at": "second"}}}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(value(&fx.get("v1", "ConfigMap", "s").await.unwrap()), "2");

    fx.patch("app", json!({"spec": {"suspend": false}})).await;
    fx.wait_applied("app", &repo.head()).await;
    assert_eq!(value(&fx.get("v1", "ConfigMap", "s").await.unwrap()), "3");
}

#[tokio::test]
async fn two_gitrepositories_on_one_url_fetch_once() {
    let fx = Fixture::new("shared").await;
    let repo = Repo::create(
        "shared",
        &[
            ("one/cm.yaml", &configmap("one", "1")),
            ("two/cm.yaml", &configmap("two", "1")),
        ],
    );
    fx.create(
        "one",
        spec(repo.http_url(), json!({"path": "one", "interval": "1h"})),
    )
    .await;
    fx.wait_applied("one", &repo.head()).await;
    let first_fetch = git_server()
        .requests(&repo, "POST", "/git-upload-pack")
        .await;
    assert!(first_fetch > 0, "the first GitRepository fetched");
    fx.create(
        "two",
        spec(repo.http_url(), json!({"path": "two", "interval": "1h"})),
    )
    .await;
    fx.wait_applied("two", &repo.head()).await;
    assert_eq!(
        git_server()
            .requests(&repo, "POST", "/git-upload-pack")
            .await,
        first_fetch,
        "the second GitRepository used the cache"
    );
}

#[tokio::test]
async fn blast_radius_guard_holds_back_a_large_prune() {
    let fx = Fixture::new("blast").await;
    let files: Vec<(String, String)> = (0..4)
        .map(|i| (format!("cm{i}.yaml"), configmap(&format!("cm{i}"), "1")))
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let repo = Repo::create("blast", &files);
    fx.create("app", spec(repo.http_url(), json!({"maxPrune": "25%"})))
        .await;
    fx.wait_applied("app", &repo.head()).await;

    // Two of four objects leave git: 50% > 25%, so nothing is pruned.
    repo.remove(&["cm0.yaml", "cm1.yaml"], "remove half");
    let gr = fx.wait_failed("app", "PruneBlocked").await;
    let blocked = gr
        .status
        .as_ref()
        .unwrap()
        .prune_blocked
        .clone()
        .expect("pruneBlocked in status");
    assert_eq!(blocked.limit, "25%");
    assert_eq!(blocked.candidates.len(), 2, "{blocked:?}");
    assert!(
        ready_message(&gr).contains("would prune 2 of 4"),
        "{}",
        ready_message(&gr)
    );
    assert!(fx.get("v1", "ConfigMap", "cm0").await.is_some());
    // And it holds: later reconciles (the watches wake it too) do not let the prune through.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let gr = fx.api().get("app").await.unwrap();
    assert_eq!(
        crate::support::controller::ready(&gr),
        Some(("False".into(), "PruneBlocked".into()))
    );
    assert!(fx.get("v1", "ConfigMap", "cm0").await.is_some());

    // Raising the limit lets the prune through.
    fx.patch("app", json!({"spec": {"maxPrune": "50%"}})).await;
    let gr = fx.wait_applied("app", &repo.head()).await;
    assert!(gr.status.unwrap().prune_blocked.is_none());
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "cm0").await;
}

#[tokio::test]
async fn finalizer_survives_a_restart_and_a_namespace_deletion() {
    let mut fx = Fixture::new("finalizer").await;
    let repo = Repo::create("finalizer", &[("cm.yaml", &configmap("owned", "1"))]);
    fx.create(
        "app",
        spec(repo.http_url(), json!({"deletionPolicy": "Delete"})),
    )
    .await;
    fx.wait_applied("app", &repo.head()).await;

    // Deleted while no controller runs: the finalizer holds the GitRepository until one does.
    fx.stop_controller();
    fx.api().delete("app", &Default::default()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let held = fx.api().get("app").await.expect("held by the finalizer");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(fx.get("v1", "ConfigMap", "owned").await.is_some());
    fx.start_controller();
    fx.wait_gone(&fx.ns, "capstan.dev/v1alpha1", "GitRepository", "app")
        .await;
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "owned").await;

    // The whole namespace deleted: the GitRepository goes with it and does not wedge it.
    fx.create(
        "again",
        spec(repo.http_url(), json!({"deletionPolicy": "Delete"})),
    )
    .await;
    fx.wait_applied("again", &repo.head()).await;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(fx.client.clone());
    namespaces
        .delete(&fx.ns, &Default::default())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(90);
    while namespaces.get_opt(&fx.ns).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "namespace {} wedged",
            fx.ns
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn objects_of_a_new_kind_ask_discovery_once() {
    let fx = Fixture::new("discovery").await;
    let group = format!("d{}.capstan.dev", std::process::id());
    let mut widgets = String::new();
    for n in 0..16 {
        widgets.push_str(&format!(
            "---\napiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: w{n}\nspec:\n  size: {n}\n"
        ));
    }
    let repo = Repo::create(
        "discovery",
        &[
            ("crd.yaml", &widget_crd(&group)),
            ("widgets.yaml", &widgets),
        ],
    );
    let mark = audit::mark();
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;
    // The 16 Widgets are applied 8 at a time; the first lookup's answer serves them all.
    let asked = audit::requests_for(mark, &format!("/apis/{group}/v1"));
    assert_eq!(asked, 1, "discovery of {group}/v1 was asked {asked} times");
    for n in [0, 15] {
        let w = fx
            .get(&format!("{group}/v1"), "Widget", &format!("w{n}"))
            .await
            .unwrap();
        assert_eq!(w.data["spec"]["size"], n);
    }
    // The CRD is cluster-wide: it must not outlive the test.
    crate::support::env::control_plane().kubectl(&["delete", "crd", &format!("widgets.{group}")]);
}

#[tokio::test]
async fn a_long_apply_shows_reconciling_and_conditions_carry_the_time_they_changed() {
    use futures::StreamExt;
    use kube::runtime::watcher;

    let fx = Fixture::new("progress").await;
    let mut many = String::new();
    for n in 0..400 {
        many.push_str(&format!("---\n{}", configmap(&format!("cm{n}"), "1")));
    }
    let repo = Repo::create("progress", &[("many.yaml", &many)]);
    let revision = format!("main@sha1:{}", repo.head());
    let seen = tokio::spawn({
        let api = fx.api();
        let revision = revision.clone();
        async move {
            let config = watcher::Config::default().fields("metadata.name=app");
            let mut statuses = Vec::new();
            let mut stream = std::pin::pin!(watcher::watcher(api, config));
            while let Some(event) = stream.next().await {
                let gr = match event {
                    Ok(watcher::Event::Apply(gr) | watcher::Event::InitApply(gr)) => gr,
                    _ => continue,
                };
                let Some(status) = gr.status else { continue };
                let done = status.last_applied_revision.as_deref() == Some(revision.as_str());
                statuses.push(status);
                if done {
                    return statuses;
                }
            }
            statuses
        }
    });
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    let statuses = tokio::time::timeout(std::time::Duration::from_secs(120), seen)
        .await
        .expect("the revision was applied")
        .unwrap();
    let condition = |s: &capstan::api::GitRepositoryStatus, t: &str| {
        s.conditions.iter().find(|c| c.type_ == t).cloned()
    };
    let progressing = statuses
        .iter()
        .filter_map(|s| condition(s, "Reconciling"))
        .find(|c| c.status == "True" && c.reason == "Progressing")
        .unwrap_or_else(|| panic!("no Reconciling=True while applying: {statuses:#?}"));
    assert_eq!(progressing.message, format!("Applying revision {revision}"));
    let last = statuses.last().unwrap();
    let ready = condition(last, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "ReconciliationSucceeded")
    );
    assert!(ready.message.contains("400 objects"), "{}", ready.message);
    let reconciling = condition(last, "Reconciling").unwrap();
    assert_eq!(reconciling.status, "False");
    // Ready turned true when the apply ended, not when the reconcile began.
    assert!(
        ready.last_transition_time.0 >= progressing.last_transition_time.0,
        "Ready at {:?}, applying since {:?}",
        ready.last_transition_time,
        progressing.last_transition_time
    );
}

#[tokio::test]
async fn gitrepositories_of_one_url_share_their_ref_checks() {
    let fx = Fixture::new("shared-checks").await;
    let apps = ["a", "b", "c", "d"];
    // `<app>/cm.yaml` holding ConfigMap `cm-<app>` with `value`, for each app.
    let files = |value: &str| -> Vec<(String, String)> {
        apps.iter()
            .map(|app| {
                (
                    format!("{app}/cm.yaml"),
                    configmap(&format!("cm-{app}"), value),
                )
            })
            .collect()
    };
    let repo = Repo::create("shared-checks", &as_refs(&files("1")));
    for app in apps {
        fx.create(app, spec(repo.http_url(), json!({"path": app})))
            .await;
    }
    for app in apps {
        fx.wait_applied(app, &repo.head()).await;
    }
    // Four GitRepositories on one URL, 2 s intervals, over about four intervals: each asking
    // on its own would make some 16 ref advertisements.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let before = git_server().requests(&repo, "GET", "/info/refs").await;
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    let polls = git_server().requests(&repo, "GET", "/info/refs").await - before;
    assert!(
        (2..=8).contains(&polls),
        "one ref check per URL and interval, give or take the jitter ({polls} in 8 s)"
    );

    // A push still reaches every one of them.
    let sha = repo.commit(&as_refs(&files("2")), "change all four");
    for app in apps {
        fx.wait_applied(app, &sha).await;
    }
}

fn as_refs(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect()
}
