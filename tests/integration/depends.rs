//! `dependsOn`: a GitRepository applies only once those it depends on are Ready at their latest
//! revision (with `wait`, healthy too); a cycle stalls with the cycle printed; deleted together,
//! the dependents' objects go first.

use std::time::Duration;

use kube::api::DeleteParams;
use serde_json::json;

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, ready, ready_message, spec, widget_crd};

/// The Widgets' controller: a Deployment that only becomes healthy when the test says so.
const CONTROLLER: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: widget-controller\n\
spec:\n  replicas: 1\n  selector:\n    matchLabels: {app: widgets}\n  template:\n    metadata:\n      \
labels: {app: widgets}\n    spec:\n      containers:\n      - name: controller\n        \
image: registry.example.com/widgets:1.0\n";

async fn waiting_for(fx: &Fixture, name: &str, why: &str) -> String {
    let gr = fx
        .wait(name, &format!("DependencyNotReady: {why}"), |gr| {
            ready(gr) == Some(("False".into(), "DependencyNotReady".into()))
                && ready_message(gr).contains(why)
        })
        .await;
    ready_message(&gr)
}

// Long: one story, from a missing dependency to the ordered deletion, on the same two
// GitRepositories.
#[tokio::test]
async fn a_dependent_applies_once_its_dependency_is_ready_and_goes_first_on_delete() {
    let fx = Fixture::new("depends").await;
    let group = format!("{}.example.com", fx.ns);
    let widgets = format!("{group}/v1");
    let platform_repo = Repo::create(
        "depends-platform",
        &[
            ("crd.yaml", &widget_crd(&group)),
            ("controller.yaml", CONTROLLER),
            ("marker.yaml", &configmap("platform-marker", "1")),
        ],
    );
    let app_repo = Repo::create(
        "depends-app",
        &[
            (
                "widget.yaml",
                &format!("apiVersion: {widgets}\nkind: Widget\nmetadata:\n  name: first\n"),
            ),
            ("marker.yaml", &configmap("app-marker", "1")),
        ],
    );
    let (platform, app) = (format!("{}/platform", fx.ns), format!("{}/app", fx.ns));

    // The dependency does not exist yet: nothing of the dependent is applied.
    fx.create(
        "app",
        spec(
            app_repo.http_url(),
            json!({"interval": "1h", "dependsOn": [{"name": "platform"}]}),
        ),
    )
    .await;
    let message = waiting_for(&fx, "app", &format!("{platform} not found")).await;
    assert!(message.starts_with("waiting for dependencies"), "{message}");
    assert!(fx.get("v1", "ConfigMap", "app-marker").await.is_none());

    // Applied, but its controller is not healthy yet (wait): still waiting, naming why.
    fx.create(
        "platform",
        spec(
            platform_repo.http_url(),
            json!({"interval": "1h", "wait": true, "timeout": "5m"}),
        ),
    )
    .await;
    let message = waiting_for(&fx, "app", &format!("{platform} is not Ready (Progressing")).await;
    assert!(message.contains("widget-controller"), "{message}");
    assert!(fx.get("v1", "ConfigMap", "platform-marker").await.is_some());
    assert!(fx.get(&widgets, "Widget", "first").await.is_none());
    assert!(fx.get("v1", "ConfigMap", "app-marker").await.is_none());

    // Healthy: the dependent is woken and applies its revision, custom resource included.
    fx.make_available("widget-controller").await;
    fx.wait_applied("platform", &platform_repo.head()).await;
    fx.wait_applied("app", &app_repo.head()).await;
    assert!(fx.get(&widgets, "Widget", "first").await.is_some());

    // A cycle: stalled, with the cycle printed; broken, Ready again.
    fx.patch(
        "platform",
        json!({"spec": {"dependsOn": [{"name": "app"}]}}),
    )
    .await;
    let gr = fx.wait_failed("platform", "DependencyNotReady").await;
    assert_eq!(
        ready_message(&gr),
        format!("dependency cycle: {platform} -> {app} -> {platform}")
    );
    let stalled = gr.status.as_ref().unwrap().conditions.iter();
    let stalled = stalled.clone().find(|c| c.type_ == "Stalled");
    assert_eq!(stalled.map(|c| c.status.as_str()), Some("True"));
    fx.patch("platform", json!({"spec": {"dependsOn": null}}))
        .await;
    fx.wait_applied("platform", &platform_repo.head()).await;

    // Deleted together: the dependency's objects stay while its dependent is not gone. The test
    // holds the dependent back with a finalizer of its own, after Capstan's cleanup of it.
    fx.patch(
        "app",
        json!({"metadata": {"finalizers": ["capstan.dev/finalizer", "test.capstan.dev/hold"]}}),
    )
    .await;
    for name in ["platform", "app"] {
        fx.api()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "app-marker").await;
    fx.wait_gone(&fx.ns, &widgets, "Widget", "first").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(fx.get("v1", "ConfigMap", "platform-marker").await.is_some());
    let crd = ("apiextensions.k8s.io/v1", "CustomResourceDefinition");
    assert!(
        fx.get_in("", crd.0, crd.1, &format!("widgets.{group}"))
            .await
            .is_some()
    );
    fx.patch("app", json!({"metadata": {"finalizers": null}}))
        .await;
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "platform-marker")
        .await;
    fx.wait_gone("", crd.0, crd.1, &format!("widgets.{group}"))
        .await;
}
