//! Capstan: a pull-based GitOps operator for Kubernetes.
// One exception, commented where it is: libgit2's process-wide socket timeouts.
#![deny(unsafe_code)]

pub mod api;
pub mod apply;
pub mod cli;
pub mod digest;
pub mod leader;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod object;
pub mod reconcile;
pub mod render;
pub mod runtime;
pub mod server;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod ui;
pub mod webhook;

/// A GitRepository for a unit test, from its `metadata`, `spec` and `status`.
#[cfg(test)]
pub(crate) fn git_repository(mut object: serde_json::Value) -> api::GitRepository {
    object["apiVersion"] = "capstan.dev/v1alpha1".into();
    object["kind"] = "GitRepository".into();
    serde_json::from_value(object).expect("a valid GitRepository")
}

/// A decision table of `src/fixtures/*.yaml`, for the unit tests that read one: each case's
/// `name`, and the rest of the case as `T`.
#[cfg(test)]
pub(crate) fn fixture_table<T: serde::de::DeserializeOwned>(yaml: &str) -> Vec<(String, T)> {
    let cases: Vec<serde_json::Map<String, serde_json::Value>> =
        serde_saphyr::from_str(yaml).expect("a valid fixture table");
    assert!(!cases.is_empty(), "an empty fixture table");
    cases
        .into_iter()
        .map(|mut case| {
            let name = match case.remove("name") {
                Some(serde_json::Value::String(name)) => name,
                other => panic!("a fixture case without a name: {other:?}"),
            };
            let case =
                serde_json::from_value(case.into()).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, case)
        })
        .collect()
}
