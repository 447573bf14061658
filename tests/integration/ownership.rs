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
