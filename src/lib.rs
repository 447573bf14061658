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
pub mod object;
pub mod reconcile;
pub mod render;
pub mod runtime;
pub mod server;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod webhook;

/// A decision table of `src/fixtures/*.yaml`, for the unit tests that read one.
#[cfg(test)]
pub(crate) fn fixture_table<T: serde::de::DeserializeOwned>(yaml: &str) -> Vec<T> {
    let cases: Vec<T> = serde_saphyr::from_str(yaml).expect("a valid fixture table");
    assert!(!cases.is_empty(), "an empty fixture table");
    cases
}
