//! Health of custom resources (`wait`), against a real CRD: kstatus conditions for any custom
//! resource, and `healthCheckExprs` in CEL per apiVersion and kind; a bad expression is refused
//! with its parse error before anything is applied.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

use crate::support::Repo;
use crate::support::controller::{Fixture, ready, ready_message, spec, widget, widget_crd};

/// Plays the Widgets' controller: writes `status` on Widget `name`.
async fn set_status(fx: &Fixture, group: &str, name: &str, status: Value) {
    let gvk = GroupVersionKind::gvk(group, "v1", "Widget");
    let api: Api<DynamicObject> =
        Api::namespaced_with(fx.client.clone(), &fx.ns, &ApiResource::from_gvk(&gvk));
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .unwrap();
}

/// Waits until `name`'s Ready has `reason` and a message containing `text`.
async fn until(fx: &Fixture, name: &str, reason: &str, text: &str) -> String {
    let gr = fx
        .wait(name, &format!("{reason}: {text}"), |gr| {
            ready(gr).is_some_and(|(_, r)| r == reason) && ready_message(gr).contains(text)
        })
        .await;
    ready_message(&gr)
}

fn ready_condition(status: &str, reason: &str, message: &str) -> Value {
    json!({"type": "Ready", "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

#[tokio::test]
async fn custom_resources_are_judged_by_their_conditions_and_by_cel() {
    let fx = Fixture::new("health-cr").await;
    let group = format!("{}.example.com", fx.ns);
    let repo = Repo::create(
        "health-cr",
        &[
            ("crd/widgets.yaml", &widget_crd(&group)),
            ("kstatus/a.yaml", &widget(&group, "by-conditions")),
            ("cel/b.yaml", &widget(&group, "by-cel")),
            ("bad/c.yaml", &widget(&group, "never-applied")),
        ],
    );
    let wait = |path: &str, extra: Value| {
        let mut spec = spec(
            repo.http_url(),
            json!({"path": path, "wait": true, "timeout": "10m"}),
        );
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    };
    fx.create(
        "crd",
        spec(repo.http_url(), json!({"path": "crd", "wait": true})),
    )
    .await;
    fx.wait_applied("crd", &repo.head()).await;

    // kstatus: Ready False is awaited, Stalled True failed, Ready True healthy.
    fx.create("kstatus", wait("kstatus", json!({}))).await;
    fx.wait_applied("kstatus", &repo.head()).await;
    let provisioning = ready_condition("False", "Provisioning", "allocating 2 units");
    set_status(
        &fx,
        &group,
        "by-conditions",
        json!({"conditions": [provisioning]}),
    )
    .await;
    let message = until(&fx, "kstatus", "Progressing", "Widget").await;
    assert!(
        message.contains("by-conditions: not ready: allocating 2 units"),
        "{message}"
    );
    let stalled = json!({"type": "Stalled", "status": "True", "reason": "QuotaExceeded",
                         "message": "no units left", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    set_status(
        &fx,
        &group,
        "by-conditions",
        json!({"conditions": [provisioning, stalled]}),
    )
    .await;
    until(
        &fx,
        "kstatus",
        "HealthCheckFailed",
        "stalled: no units left",
    )
    .await;
    let healthy = ready_condition("True", "Provisioned", "2 units");
    set_status(
        &fx,
        &group,
        "by-conditions",
        json!({"conditions": [healthy]}),
    )
    .await;
    fx.wait_applied("kstatus", &repo.head()).await;

    // CEL, per apiVersion and kind: until the phase is written, the expression cannot hold.
    let exprs = json!({"healthCheckExprs": [{
        "apiVersion": format!("{group}/v1"), "kind": "Widget",
        "inProgress": "has(status.phase) && status.phase == 'Provisioning'",
        "failed": "has(status.phase) && status.phase == 'Failed'",
        "current": "status.phase == 'Ready' && status.size == spec.size",
    }]});
    fx.create("cel", wait("cel", exprs)).await;
    until(&fx, "cel", "Progressing", "status.phase == 'Ready'").await;
    set_status(&fx, &group, "by-cel", json!({"phase": "Provisioning"})).await;
    until(
        &fx,
        "cel",
        "Progressing",
        "status.phase == 'Provisioning' holds",
    )
    .await;
    set_status(&fx, &group, "by-cel", json!({"phase": "Failed"})).await;
    until(
        &fx,
        "cel",
        "HealthCheckFailed",
        "status.phase == 'Failed' holds",
    )
    .await;
    set_status(&fx, &group, "by-cel", json!({"phase": "Ready", "size": 1})).await;
    until(
        &fx,
        "cel",
        "Progressing",
        "waiting for status.phase == 'Ready'",
    )
    .await;
    set_status(&fx, &group, "by-cel", json!({"phase": "Ready", "size": 2})).await;
    fx.wait_applied("cel", &repo.head()).await;

    // A bad expression: refused with its parse error, nothing applied.
    let bad = json!({"healthCheckExprs": [{
        "apiVersion": format!("{group}/v1"), "kind": "Widget", "current": "status.phase ==",
    }]});
    fx.create("bad", wait("bad", bad)).await;
    let gr = fx.wait_failed("bad", "InvalidSpec").await;
    let message = ready_message(&gr);
    assert!(
        message.starts_with("healthCheckExprs[0].current: "),
        "{message}"
    );
    assert!(message.contains("Syntax error"), "{message}");
    assert!(
        fx.get(&format!("{group}/v1"), "Widget", "never-applied")
            .await
            .is_none()
    );
}
