//! An object another GitRepository manages is never taken over silently: the second apply is
//! refused for that object (`OwnershipConflict`, naming both) while the rest of its revision
//! applies; `capstan.dev/owner-handover` hands it over; prune and deletion leave an object
//! another GitRepository manages.

use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::json;

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, ready_message, spec};

async fn value_and_owner(fx: &Fixture, name: &str) -> (String, String) {
    let cm = fx
        .get("v1", "ConfigMap", name)
        .await
        .expect("the ConfigMap");
    let value = cm.data["data"]["value"].as_str().unwrap_or_default().into();
    let owner = cm.metadata.annotations.unwrap_or_default()["capstan.dev/owner"].clone();
    (value, owner)
}

#[tokio::test]
async fn a_second_owner_is_refused_until_the_object_is_handed_over() {
    let (fx, _first_repo, _) = Fixture::synced(
        "ownership",
        &[
            ("shared.yaml", &configmap("shared", "first")),
            ("a.yaml", &configmap("only-first", "1")),
        ],
        json!({"prune": true}),
    )
    .await;
    let first = format!("{}/app", fx.ns);
    let second = format!("{}/second", fx.ns);
    let second_repo = Repo::create(
        "ownership-second",
        &[
            ("shared.yaml", &configmap("shared", "second")),
            ("b.yaml", &configmap("only-second", "1")),
        ],
    );
    fx.create(
        "second",
        spec(second_repo.http_url(), json!({"prune": true})),
    )
    .await;

    let gr = fx.wait_failed("second", "OwnershipConflict").await;
    let message = ready_message(&gr);
    assert!(message.contains("ConfigMap"), "{message}");
    assert!(message.contains("shared"), "{message}");
    assert!(message.contains(&first), "{message}");
    assert!(message.contains(&second), "{message}");
    assert!(message.contains("capstan.dev/owner-handover"), "{message}");
    // The rest of its revision applied; the object stays as its owner left it.
    assert!(fx.get("v1", "ConfigMap", "only-second").await.is_some());
    assert_eq!(
        value_and_owner(&fx, "shared").await,
        ("first".to_string(), first.clone())
    );

    // Handed over by an annotation naming the new owner: the second takes it on its retry.
    let api: Api<DynamicObject> = Api::namespaced_with(
        fx.client.clone(),
        &fx.ns,
        &kube::core::ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap")),
    );
    let handover = json!({"metadata": {"annotations": {"capstan.dev/owner-handover": second}}});
    api.patch("shared", &PatchParams::default(), &Patch::Merge(&handover))
        .await
        .unwrap();
    fx.wait_applied("second", &second_repo.head()).await;
    assert_eq!(
        value_and_owner(&fx, "shared").await,
        ("second".to_string(), second.clone())
    );

    // The first still declares it, and does not take it back (its drift correction included).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        value_and_owner(&fx, "shared").await,
        ("second".to_string(), second.clone())
    );

    // Deleting the first (prune: true) deletes what it manages, not what it handed over.
    fx.api()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "only-first").await;
    assert_eq!(
        value_and_owner(&fx, "shared").await,
        ("second".to_string(), second)
    );
}

/// A Namespace and a ConfigMap in it, as YAML.
fn namespace_with(ns: &str, cm: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n{}",
        configmap_in(ns, cm)
    )
}

fn configmap_in(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\ndata:\n  value: \"1\"\n"
    )
}

#[tokio::test]
async fn a_namespace_holding_another_gitrepositorys_objects_is_not_pruned() {
    let fx = Fixture::new("shared-namespace").await;
    let shared = format!("{}-shared", fx.ns);
    let first = Repo::create(
        "shared-namespace-first",
        &[
            ("ns.yaml", &namespace_with(&shared, "first-cm")),
            ("keep.yaml", &configmap("keep", "1")),
        ],
    );
    fx.create("first", spec(first.http_url(), json!({"prune": true})))
        .await;
    fx.wait_applied("first", &first.head()).await;
    let second = Repo::create(
        "shared-namespace-second",
        &[("cm.yaml", &configmap_in(&shared, "second-cm"))],
    );
    fx.create("second", spec(second.http_url(), json!({})))
        .await;
    fx.wait_applied("second", &second.head()).await;

    // The first no longer declares the namespace: its own ConfigMap is pruned, the namespace
    // (which holds the second's ConfigMap) is left, without the first's markers.
    let head = first.remove(&["ns.yaml"], "leave the namespace");
    let gr = fx.wait_applied("first", &head).await;
    fx.wait_gone(&shared, "v1", "ConfigMap", "first-cm").await;
    let entries = gr.status.unwrap().inventory.unwrap().entries;
    let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [format!("{}_keep__ConfigMap", fx.ns)]);
    let namespace = fx.get_in("", "v1", "Namespace", &shared).await;
    let namespace = namespace.expect("the namespace is not deleted");
    assert!(namespace.metadata.deletion_timestamp.is_none());
    let annotations = namespace.metadata.annotations.unwrap_or_default();
    assert!(
        !annotations.contains_key("capstan.dev/owner"),
        "{annotations:?}"
    );
    assert!(
        fx.get_in(&shared, "v1", "ConfigMap", "second-cm")
            .await
            .is_some()
    );

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(fx.client.clone());
    namespaces
        .delete(&shared, &DeleteParams::default())
        .await
        .unwrap();
}
