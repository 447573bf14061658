//! Tenancy against the real API server's RBAC: a GitRepository with `serviceAccountName`
//! applies as that ServiceAccount, so what it may not create is refused, and reported.

use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, ready_message};

async fn create(fx: &Fixture, object: serde_json::Value) {
    let obj: DynamicObject = serde_json::from_value(object.clone()).unwrap();
    let (group, version) = object["apiVersion"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap_or(("", "v1"));
    let gvk = kube::core::GroupVersionKind::gvk(group, version, object["kind"].as_str().unwrap());
    let (ar, _) = kube::discovery::pinned_kind(&fx.client, &gvk)
        .await
        .unwrap();
    Api::<DynamicObject>::namespaced_with(fx.client.clone(), &fx.ns, &ar)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap();
}

#[tokio::test]
async fn service_account_rights_bound_what_a_gitrepository_applies() {
    let fx = Fixture::new("tenancy").await;
    // The deployer may manage ConfigMaps in its namespace, and nothing else.
    create(
        &fx,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "deployer"}}),
    )
    .await;
    create(&fx, json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "configmaps"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}],
    }))
    .await;
    create(&fx, json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "deployer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmaps"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": fx.ns}],
    }))
    .await;

    let escalation = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {}-escalate\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: cluster-admin\nsubjects:\n- kind: ServiceAccount\n  name: deployer\n  namespace: {}\n",
        fx.ns, fx.ns
    );
    let repo = Repo::create(
        "tenancy",
        &[
            ("cm.yaml", &configmap("allowed", "1")),
            ("crb.yaml", &escalation),
        ],
    );
    fx.create(
        "app",
        json!({"url": repo.http_url(), "interval": "1h", "prune": true, "serviceAccountName": "deployer"}),
    )
    .await;

    let gr = fx.wait_failed("app", "ApplyFailed").await;
    let message = ready_message(&gr);
    assert!(
        message.contains("ClusterRoleBinding") && message.contains("forbidden"),
        "{message}"
    );
    assert!(
        message.contains("system:serviceaccount"),
        "names who was refused: {message}"
    );
    assert!(
        fx.get("v1", "ConfigMap", "allowed").await.is_some(),
        "what it may do is applied"
    );
    assert!(
        fx.get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            &format!("{}-escalate", fx.ns)
        )
        .await
        .is_none(),
        "the escalation was refused"
    );
}
