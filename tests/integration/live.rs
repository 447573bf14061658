//! Live state against the real control plane: drift corrected, reported or ignored as the mode
//! says; fields other managers own left alone; Secrets' values never shown; health with `wait`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, ready, ready_message, spec, summary};
use crate::support::env::control_plane;

fn value(obj: &kube::api::DynamicObject) -> String {
    obj.data["data"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// An out-of-band edit, the way people make one.
fn kubectl_patch(ns: &str, what: &str, patch: &str) {
    control_plane().kubectl(&["-n", ns, "patch", what, "--type=merge", "-p", patch]);
}

async fn event_reasons(fx: &Fixture) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(fx.client.clone(), &fx.ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

fn drift_of(gr: &capstan::api::GitRepository) -> Vec<capstan::api::DriftEntry> {
    gr.status
        .as_ref()
        .map(|s| s.drift.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn drift_is_corrected_and_deleted_objects_come_back() {
    let (fx, _repo, _) = Fixture::synced(
        "drift-correct",
        &[("cm.yaml", &configmap("cm", "git"))],
        json!({"interval": "1h"}),
    )
    .await;

    kubectl_patch(&fx.ns, "configmap/cm", r#"{"data":{"value":"by hand"}}"#);
    let gr = fx
        .wait("app", "the drift corrected", |gr| {
            drift_of(gr).iter().any(|d| d.corrected)
        })
        .await;
    let entry = &drift_of(&gr)[0];
    assert_eq!(entry.id, format!("{}_cm__ConfigMap", fx.ns));
    assert_eq!(entry.fields, [".data.value"]);
    assert_eq!(
        value(&fx.get("v1", "ConfigMap", "cm").await.unwrap()),
        "git"
    );
    assert!(
        event_reasons(&fx)
            .await
            .contains(&"DriftCorrected".to_string())
    );

    control_plane().kubectl(&["-n", &fx.ns, "delete", "configmap", "cm"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(cm) = fx.get("v1", "ConfigMap", "cm").await {
            assert_eq!(value(&cm), "git");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted ConfigMap was not recreated"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn drift_is_only_reported_in_warn_mode_and_ignored_when_disabled() {
    let fx = Fixture::new("drift-warn").await;
    let repo = Repo::create(
        "drift-warn",
        &[
            ("warn/cm.yaml", &configmap("warned", "git")),
            ("off/cm.yaml", &configmap("ignored", "git")),
        ],
    );
    fx.create(
        "warn",
        spec(
            repo.http_url(),
            json!({"interval": "1h", "path": "warn", "drift": {"mode": "Warn"}}),
        ),
    )
    .await;
    fx.create(
        "off",
        spec(
            repo.http_url(),
            json!({"interval": "1h", "path": "off", "drift": {"mode": "Disabled"}}),
        ),
    )
    .await;
    fx.wait_applied("warn", &repo.head()).await;
    fx.wait_applied("off", &repo.head()).await;

    kubectl_patch(
        &fx.ns,
        "configmap/warned",
        r#"{"data":{"value":"by hand"}}"#,
    );
    kubectl_patch(
        &fx.ns,
        "configmap/ignored",
        r#"{"data":{"value":"by hand"}}"#,
    );
    let gr = fx
        .wait("warn", "Drifted=True", |gr| {
            gr.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Drifted" && c.status == "True")
            })
        })
        .await;
    let drift = drift_of(&gr);
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].fields, [".data.value"]);
    assert!(!drift[0].corrected);
    assert_eq!(summary(&gr).drifted, 1);
    assert!(
        event_reasons(&fx)
            .await
            .contains(&"DriftDetected".to_string())
    );

    // Give both a moment more: nothing is reverted in either mode.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        value(&fx.get("v1", "ConfigMap", "warned").await.unwrap()),
        "by hand"
    );
    assert_eq!(
        value(&fx.get("v1", "ConfigMap", "ignored").await.unwrap()),
        "by hand"
    );
    let off = fx.api().get("off").await.unwrap();
    assert!(drift_of(&off).is_empty(), "{:?}", drift_of(&off));
}

#[tokio::test]
async fn fields_git_does_not_declare_are_not_drift() {
    let fx = Fixture::new("drift-hpa").await;
    // No replicas in git: whoever scales the Deployment (an HPA) owns that field.
    let deployment = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.example.com/web:1.0
"#;
    let repo = Repo::create("drift-hpa", &[("deploy.yaml", deployment)]);
    fx.create("app", spec(repo.http_url(), json!({"interval": "1h"})))
        .await;
    fx.wait_applied("app", &repo.head()).await;

    control_plane().kubectl(&["-n", &fx.ns, "scale", "deployment/web", "--replicas=5"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let web = fx.get("apps/v1", "Deployment", "web").await.unwrap();
    assert_eq!(web.data["spec"]["replicas"], 5, "left alone");
    let gr = fx.api().get("app").await.unwrap();
    assert!(drift_of(&gr).is_empty(), "not drift: {:?}", drift_of(&gr));

    // A declared field is drift, even next to an undeclared one.
    kubectl_patch(
        &fx.ns,
        "deployment/web",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"registry.example.com/web:evil"}]}}}}"#,
    );
    let gr = fx
        .wait("app", "the image drift corrected", |gr| {
            drift_of(gr).iter().any(|d| d.corrected)
        })
        .await;
    assert_eq!(
        drift_of(&gr)[0].fields,
        [".spec.template.spec.containers[name=web].image"]
    );
    let web = fx.get("apps/v1", "Deployment", "web").await.unwrap();
    assert_eq!(
        web.data["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/web:1.0"
    );
    assert_eq!(web.data["spec"]["replicas"], 5, "still the scaler's");
}

#[tokio::test]
async fn secret_drift_is_reported_without_its_values() {
    let fx = Fixture::new("drift-secret").await;
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: git-secret-value\n";
    let repo = Repo::create("drift-secret", &[("secret.yaml", secret)]);
    fx.create(
        "app",
        spec(
            repo.http_url(),
            json!({"interval": "1h", "drift": {"mode": "Warn"}}),
        ),
    )
    .await;
    fx.wait_applied("app", &repo.head()).await;

    // "aGFja2VkLXZhbHVl" is base64 for "hacked-value".
    kubectl_patch(
        &fx.ns,
        "secret/creds",
        r#"{"data":{"password":"aGFja2VkLXZhbHVl"}}"#,
    );
    let gr = fx
        .wait("app", "the Secret's drift", |gr| !drift_of(gr).is_empty())
        .await;
    let status = serde_json::to_string(&gr.status).unwrap();
    assert!(
        status.contains("password"),
        "the field path is shown: {status}"
    );
    for secret in [
        "hacked-value",
        "aGFja2VkLXZhbHVl",
        "git-secret-value",
        "Z2l0LXNlY3JldC12YWx1ZQ",
    ] {
        assert!(
            !status.contains(secret),
            "{secret} leaked into status: {status}"
        );
    }
}

#[tokio::test]
async fn wait_reports_healthy_only_when_the_deployment_is() {
    let fx = Fixture::new("health").await;
    let deployment = |name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: app\n        image: registry.example.com/app:1.0\n"
        )
    };
    let repo = Repo::create(
        "health",
        &[
            ("ok/deploy.yaml", &deployment("becomes-ready")),
            ("never/deploy.yaml", &deployment("never-ready")),
        ],
    );
    fx.create(
        "ok",
        spec(
            repo.http_url(),
            json!({"interval": "1h", "path": "ok", "wait": true, "timeout": "2m"}),
        ),
    )
    .await;
    fx.create(
        "never",
        spec(
            repo.http_url(),
            json!({"interval": "1h", "path": "never", "wait": true, "timeout": "3s"}),
        ),
    )
    .await;

    let gr = fx
        .wait("ok", "Progressing", |gr| {
            ready(gr) == Some(("False".into(), "Progressing".into()))
        })
        .await;
    assert!(
        ready_message(&gr).contains("becomes-ready"),
        "{}",
        ready_message(&gr)
    );

    fx.make_available("becomes-ready").await;
    let gr = fx.wait_applied("ok", &repo.head()).await;
    let healthy = gr
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Healthy")
        .unwrap();
    assert_eq!(healthy.status, "True");

    let gr = fx.wait_failed("never", "HealthCheckFailed").await;
    assert!(
        ready_message(&gr).contains("never-ready"),
        "{}",
        ready_message(&gr)
    );
}

#[tokio::test]
async fn metrics_and_probes() {
    use crate::support::controller::http_get;
    let fx = Fixture::with_http("metrics").await;
    let (probes, metrics) = (fx.probe_addr.unwrap(), fx.metrics_addr.unwrap());
    let repo = Repo::create(
        "metrics",
        &[
            ("a.yaml", &configmap("a", "1")),
            ("b.yaml", &configmap("b", "1")),
        ],
    );
    fx.create("app", spec(repo.http_url(), json!({"interval": "1h"})))
        .await;
    fx.wait_applied("app", &repo.head()).await;

    assert_eq!(http_get(probes, "/healthz").await.0, 200);
    assert_eq!(http_get(probes, "/readyz").await.0, 200);
    let (code, text) = http_get(metrics, "/metrics").await;
    assert_eq!(code, 200);
    let labels = format!(r#"name="app",namespace="{}""#, fx.ns);
    for line in [
        format!("capstan_managed_objects{{{labels}}} 2"),
        format!("capstan_ready{{{labels}}} 1"),
        format!("capstan_suspended{{{labels}}} 0"),
        format!("capstan_drifted_objects{{{labels}}} 0"),
        format!(r#"capstan_apply_objects_total{{action="created",{labels}}} 2"#),
    ] {
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    let reconciles =
        format!(r#"capstan_reconcile_total{{{labels},result="ReconciliationSucceeded"}}"#);
    assert!(
        text.contains(&reconciles),
        "missing {reconciles} in:\n{text}"
    );
    assert!(text.contains(&format!(
        "capstan_reconcile_duration_seconds_count{{{labels}}}"
    )));
    assert!(text.contains(&format!(
        r#"capstan_git_fetch_duration_seconds_count{{{labels},result="ok"}} 1"#
    )));
    // One revision applied: one commit-to-applied observation.
    assert!(text.contains(&format!(
        "capstan_commit_to_applied_seconds_count{{{labels}}} 1"
    )));
    assert!(!text.contains(&repo.http_url()), "no URLs in labels");

    // Deleting the GitRepository removes its series.
    fx.api().delete("app", &Default::default()).await.unwrap();
    fx.wait_gone(&fx.ns, "capstan.dev/v1alpha1", "GitRepository", "app")
        .await;
    let (_, text) = http_get(metrics, "/metrics").await;
    assert!(
        !text.contains(&labels),
        "series left after deletion:\n{text}"
    );
}

#[tokio::test]
async fn a_held_correction_is_made_when_its_window_ends() {
    let fx = Fixture::new("drift-held").await;
    let repo = Repo::create("drift-held", &[("cm.yaml", &configmap("cm", "git"))]);
    // An hour between polls: only the end of the window can bring the correction.
    fx.create("app", spec(repo.http_url(), json!({"interval": "1h"})))
        .await;
    fx.wait_applied("app", &repo.head()).await;

    // Three edits, each corrected; the fourth, within the minute, is held.
    for n in 1..=3 {
        kubectl_patch(
            &fx.ns,
            "configmap/cm",
            &format!(r#"{{"data":{{"value":"edit {n}"}}}}"#),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while value(&fx.get("v1", "ConfigMap", "cm").await.unwrap()) != "git" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "edit {n} not corrected"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    kubectl_patch(&fx.ns, "configmap/cm", r#"{"data":{"value":"edit 4"}}"#);
    let gr = fx
        .wait("app", "the correction held", |gr| {
            drift_of(gr).iter().any(|d| d.held_until.is_some())
        })
        .await;
    let entry = drift_of(&gr)
        .into_iter()
        .find(|d| d.held_until.is_some())
        .unwrap();
    assert!(!entry.corrected);
    let until = entry.held_until.unwrap().0;
    let drifted = gr
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Drifted")
        .unwrap()
        .clone();
    assert_eq!(drifted.status, "True");
    assert!(
        drifted
            .message
            .contains(&format!("correction held until {until}")),
        "{}",
        drifted.message
    );
    let events: Api<Event> = Api::namespaced(fx.client.clone(), &fx.ns);
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("DriftDetected"))
        .filter_map(|e| e.message)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&format!("correction held until {until}"))),
        "{notes:?}"
    );
    assert_eq!(
        value(&fx.get("v1", "ConfigMap", "cm").await.unwrap()),
        "edit 4"
    );

    // Nothing else happens (no poll, no edit): the window's end alone corrects it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while value(&fx.get("v1", "ConfigMap", "cm").await.unwrap()) != "git" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held correction was never made"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Not before the hold ends (held_until is rounded up to the second).
    let corrected_at = k8s_openapi::jiff::Timestamp::now();
    assert!(
        corrected_at.as_second() + 1 >= until.as_second(),
        "corrected at {corrected_at}, held until {until}"
    );
    let gr = fx
        .wait("app", "the hold lifted on the status", |gr| {
            drift_of(gr).iter().all(|d| d.held_until.is_none())
        })
        .await;
    assert!(drift_of(&gr).iter().any(|d| d.corrected));
}
