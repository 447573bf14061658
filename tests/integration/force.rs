//! Fields that cannot change in place (a Job's template, here): refused with the field named and
//! `force` suggested, while the rest of the revision applies; re-created with `spec.force` or
//! the object's `capstan.dev/force: enabled` annotation.

use serde_json::json;

use crate::support::controller::{Fixture, configmap, ready_message, summary};

/// A suspended Job (so nothing runs) whose Pod template runs `image`.
fn job(image: &str, annotations: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\n  annotations: {{{annotations}}}\n\
         spec:\n  suspend: true\n  template:\n    spec:\n      restartPolicy: Never\n      \
         containers:\n      - name: migrate\n        image: {image}\n        command: [\"true\"]\n"
    )
}

async fn job_uid_and_image(fx: &Fixture) -> (String, String) {
    let job = fx.get("batch/v1", "Job", "migrate").await.expect("the Job");
    let image = job.data["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (job.metadata.uid.unwrap_or_default(), image)
}

#[tokio::test]
async fn immutable_fields_are_refused_without_force_and_recreated_with_it() {
    let (fx, repo, _) = Fixture::synced(
        "force",
        &[
            ("job.yaml", &job("busybox:1.36", "")),
            ("settings.yaml", &configmap("settings", "1")),
        ],
        json!({}),
    )
    .await;
    let (first_uid, _) = job_uid_and_image(&fx).await;

    // A new image in the template: refused for the Job, naming it and the field; the ConfigMap
    // of the same revision applies.
    repo.commit(
        &[
            ("job.yaml", &job("busybox:1.37", "")),
            ("settings.yaml", &configmap("settings", "2")),
        ],
        "new image",
    );
    let gr = fx.wait_failed("app", "ApplyFailed").await;
    let message = ready_message(&gr);
    assert!(message.contains("Job"), "{message}");
    assert!(message.contains("migrate"), "{message}");
    assert!(message.contains("spec.template"), "{message}");
    assert!(message.contains("spec.force: true"), "{message}");
    assert!(message.contains("capstan.dev/force: enabled"), "{message}");
    let settings = fx.get("v1", "ConfigMap", "settings").await.unwrap();
    assert_eq!(settings.data["data"]["value"], "2");
    assert_eq!(
        job_uid_and_image(&fx).await,
        (first_uid.clone(), "busybox:1.36".to_string()),
        "the Job is left as it was"
    );

    // spec.force: the Job is deleted and created again, and the summary counts it.
    fx.patch("app", json!({"spec": {"force": true}})).await;
    let gr = fx.wait_applied("app", &repo.head()).await;
    let (second_uid, image) = job_uid_and_image(&fx).await;
    assert_ne!(second_uid, first_uid, "a new Job");
    assert_eq!(image, "busybox:1.37");
    assert_eq!(summary(&gr).recreated, 1);
    let message = ready_message(&gr);
    assert!(message.contains("1 recreated"), "{message}");

    // Without spec.force, the object's own annotation asks for the same.
    fx.patch("app", json!({"spec": {"force": false}})).await;
    repo.commit(
        &[(
            "job.yaml",
            &job("busybox:1.38", "capstan.dev/force: enabled"),
        )],
        "newer image, force by annotation",
    );
    let gr = fx.wait_applied("app", &repo.head()).await;
    let (third_uid, image) = job_uid_and_image(&fx).await;
    assert_ne!(third_uid, second_uid, "a new Job again");
    assert_eq!(image, "busybox:1.38");
    assert_eq!(summary(&gr).recreated, 1);
}
