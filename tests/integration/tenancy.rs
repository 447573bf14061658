//! Tenancy against the real API server's RBAC: a GitRepository with `serviceAccountName`
//! applies as that ServiceAccount, so what it may not create is refused, and reported; with
//! `--default-service-account`, so does one that names none.

use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;

use crate::support::controller::{Fixture, configmap, put_secret, ready_message, spec};
use crate::support::process::{ControllerProcess, cluster_admin_kubeconfig};
use crate::support::{Repo, git_server};

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

/// ServiceAccount `name` of the fixture's namespace, allowed every verb on `resources` there.
pub async fn service_account(fx: &Fixture, name: &str, resources: &[&str]) {
    create(
        fx,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
    )
    .await;
    create(fx, json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": resources, "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}],
    }))
    .await;
    create(fx, json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": fx.ns}],
    }))
    .await;
}

#[tokio::test]
async fn the_default_service_account_applies_what_names_none() {
    let fx = Fixture::new_stopped("lockdown").await;
    service_account(&fx, "deployer", &["configmaps"]).await;
    service_account(&fx, "wider", &["configmaps", "secrets"]).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster_admin_kubeconfig(&fx.ns, "capstan", dir.path());
    let _controller = ControllerProcess::start(
        &kubeconfig,
        "lockdown",
        &[
            &format!("--namespace={}", fx.ns),
            "--leader-elect=false",
            "--default-service-account=deployer",
        ],
    );
    let secret = |name: &str| {
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  key: v\n")
    };
    let locked = Repo::create(
        "lockdown",
        &[
            ("cm.yaml", &configmap("allowed", "1")),
            ("secret.yaml", &secret("from-git")),
        ],
    );
    let deployer = format!("system:serviceaccount:{}:deployer", fx.ns);

    // No serviceAccountName: applied as the default, which may write ConfigMaps only.
    fx.create("locked", spec(locked.http_url(), json!({})))
        .await;
    let gr = fx.wait_failed("locked", "ApplyFailed").await;
    let message = ready_message(&gr);
    assert!(
        message.contains("Secret") && message.contains("forbidden") && message.contains(&deployer),
        "{message}"
    );
    assert!(fx.get("v1", "ConfigMap", "allowed").await.is_some());
    assert!(fx.get("v1", "Secret", "from-git").await.is_none());

    // Its secretRef is read as the default too, which may not read Secrets (the path is not
    // reached: nothing of it would be applied).
    let gs = git_server();
    put_secret(
        &fx.client,
        &fx.ns,
        "git",
        &[
            ("username", b"capstan"),
            ("password", gs.var("GIT_HTTP_PASSWORD").as_bytes()),
        ],
    )
    .await;
    fx.create(
        "creds",
        spec(
            locked.auth_url(),
            json!({"secretRef": {"name": "git"}, "path": "none"}),
        ),
    )
    .await;
    let gr = fx.wait_failed("creds", "AuthenticationFailed").await;
    let message = ready_message(&gr);
    assert!(
        message.contains("forbidden") && message.contains(&deployer),
        "{message}"
    );

    // A GitRepository that names its own ServiceAccount applies as that one.
    let own = Repo::create("lockdown-own", &[("secret.yaml", &secret("own"))]);
    fx.create(
        "own",
        spec(own.http_url(), json!({"serviceAccountName": "wider"})),
    )
    .await;
    fx.wait_applied("own", &own.head()).await;
    assert!(fx.get("v1", "Secret", "own").await.is_some());
}
