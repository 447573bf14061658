//! The GitRepository API as the real API server serves it: round trip and admission validation.

use capstan::api::GitRepository;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};

use crate::support::{client, namespace};

fn git_repository_json(spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "GitRepository",
        "metadata": {"name": "app"},
        "spec": spec,
    })
}

fn git_repository(spec: serde_json::Value) -> GitRepository {
    serde_json::from_value(git_repository_json(spec)).expect("a GitRepository")
}

#[tokio::test]
async fn created_and_read_back() {
    let client = client().await;
    let ns = namespace(&client, "roundtrip").await;
    let api: Api<GitRepository> = Api::namespaced(client, &ns);
    let sent = git_repository(serde_json::json!({
        "url": "ssh://git@git.example.com/acme/app.git",
        "ref": {"semver": ">=1.2.0 <2"},
        "interval": "5m",
        "path": "./deploy/prod",
        "prune": true,
        "maxPrune": "25%",
        "drift": {"mode": "Warn"},
    }));
    api.create(&PostParams::default(), &sent).await.unwrap();

    let got = api.get("app").await.unwrap();
    assert_eq!(got.spec.url, sent.spec.url);
    assert_eq!(got.spec.git_ref().semver.as_deref(), Some(">=1.2.0 <2"));
    assert_eq!(got.spec.path.as_deref(), Some("./deploy/prod"));
    assert_eq!(got.spec.drift.unwrap().mode, capstan::api::DriftMode::Warn);
    // Defaults come from the schema, applied by the API server.
    assert_eq!(
        got.spec.deletion_policy,
        capstan::api::DeletionPolicy::MirrorPrune
    );
    assert!(!got.spec.suspend);
}

#[tokio::test]
async fn invalid_objects_are_refused_at_admission() {
    let client = client().await;
    let ns = namespace(&client, "admission").await;
    // Untyped, so that values the Rust types would refuse still reach the API server.
    let api: Api<DynamicObject> =
        Api::namespaced_with(client, &ns, &ApiResource::erase::<GitRepository>(&()));
    let git_repository = |spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(serde_json::to_value(git_repository_json(spec)).unwrap()).unwrap()
    };
    let base = serde_json::json!({"url": "https://git.example.com/app.git", "interval": "1m"});
    let with = |patch: serde_json::Value| {
        let mut spec = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    };
    let cases = [
        (
            "two ref kinds",
            with(serde_json::json!({"ref": {"branch": "main", "tag": "v1"}})),
            "exactly one of",
        ),
        (
            "empty ref",
            with(serde_json::json!({"ref": {}})),
            "exactly one of",
        ),
        (
            "file URL",
            with(serde_json::json!({"url": "file:///etc"})),
            "spec.url",
        ),
        (
            "ext transport",
            with(serde_json::json!({"url": "ext::sh -c id"})),
            "spec.url",
        ),
        (
            "local path",
            with(serde_json::json!({"url": "/srv/git/app.git"})),
            "spec.url",
        ),
        (
            "a helm release name that could pass for a flag",
            with(serde_json::json!({"helm": {"releaseName": "--post-renderer=./x"}})),
            "spec.helm.releaseName",
        ),
        (
            "a secretRef to another namespace",
            with(serde_json::json!({"secretRef": {"name": "git", "namespace": "other"}})),
            "same namespace",
        ),
        (
            "bad interval",
            with(serde_json::json!({"interval": "every minute"})),
            "spec.interval",
        ),
        (
            "interval in days",
            with(serde_json::json!({"interval": "1d"})),
            "spec.interval",
        ),
        (
            "bad timeout",
            with(serde_json::json!({"timeout": "5"})),
            "spec.timeout",
        ),
        (
            "path with ..",
            with(serde_json::json!({"path": "deploy/../../etc"})),
            "must not contain '..'",
        ),
        (
            "absolute path",
            with(serde_json::json!({"path": "/etc"})),
            "must be relative",
        ),
        (
            "short commit",
            with(serde_json::json!({"ref": {"commit": "abc123"}})),
            "spec.ref.commit",
        ),
        (
            "bad drift mode",
            with(serde_json::json!({"drift": {"mode": "Sometimes"}})),
            "spec.drift.mode",
        ),
    ];
    for (what, spec, expected) in cases {
        let err = api
            .create(&PostParams::default(), &git_repository(spec))
            .await
            .expect_err(what);
        let kube::Error::Api(status) = err else {
            panic!("{what}: not an API error: {err}");
        };
        assert_eq!(status.code, 422, "{what}: {status:?}");
        assert!(
            status.message.contains(expected),
            "{what}: {}",
            status.message
        );
    }
    // commit may be combined with branch.
    let spec = with(
        serde_json::json!({"ref": {"branch": "main", "commit": "0123456789abcdef0123456789abcdef01234567"}}),
    );
    api.create(&PostParams::default(), &git_repository(spec))
        .await
        .expect("branch + commit is allowed");
}
