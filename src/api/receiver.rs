//! The `Receiver` resource: an endpoint for push events from a git host, as Flux's
//! notification-controller has it. A Receiver names the GitRepositories of its namespace that
//! a push may reconcile and the Secret its requests are signed with.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::LocalObjectReference;

/// Accepts push events at `/hook/<namespace>/<name>` and reconciles the matching GitRepositories.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "Receiver",
    namespaced,
    derive = "PartialEq",
    category = "capstan",
    doc = "Receiver accepts push events from a git host and reconciles the GitRepositories they concern.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverSpec {
    /// How requests are signed and what their payload looks like.
    #[serde(rename = "type")]
    pub kind: ReceiverType,
    /// Secret in the same namespace whose `token` key signs the requests.
    pub secret_ref: LocalObjectReference,
    /// The GitRepositories of this namespace a request may reconcile: by name (`*` for all) or
    /// by labels. Of these, a push reconciles those whose URL and ref it concerns.
    #[schemars(length(min = 1))]
    pub resources: Vec<ReceiverResource>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverType {
    /// GitHub: `X-Hub-Signature-256` (HMAC-SHA256 of the body), push events.
    #[serde(rename = "github")]
    GitHub,
    /// GitLab: `X-Gitlab-Token` equal to the token, push and tag push events.
    #[serde(rename = "gitlab")]
    GitLab,
    /// Any sender: `X-Signature: sha256=<hex HMAC-SHA256 of the body>`; every listed
    /// GitRepository is reconciled.
    #[serde(rename = "generic-hmac")]
    GenericHmac,
}

/// One GitRepository by `name`, or those with all of `matchLabels`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.matchLabels)").message("a resource takes exactly one of name or matchLabels"))]
#[serde(rename_all = "camelCase")]
pub struct ReceiverResource {
    /// A GitRepository's name, or `*` for all of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
}

impl ReceiverResource {
    /// Whether this entry selects a GitRepository with `name` and `labels`.
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        super::selects(
            self.name.as_deref(),
            self.match_labels.as_ref(),
            name,
            labels,
        )
    }
}
