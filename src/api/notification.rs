//! The `Provider` and `Alert` resources: where Capstan tells people and git hosts what happened
//! to GitRepositories, with Flux's notification-controller names where the idea is the same. An
//! Alert selects GitRepositories and events of its namespace and sends them to a Provider.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DURATION_PATTERN, LocalObjectReference};

/// A destination for notifications: a chat webhook, an HTTP endpoint, or a git host's commit
/// status API.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "Provider",
    namespaced,
    derive = "PartialEq",
    category = "capstan",
    doc = "Provider is where an Alert sends notifications: a webhook, a chat, or a git host's commit status.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Where to send: the endpoint (`generic`, `generic-hmac`), the incoming webhook URL
    /// (`slack`), or the repository's web URL (`github`, `gitlab`, `gitea`), e.g.
    /// `https://github.com/acme/podinfo`. The Secret's `address` key, when set, takes its place,
    /// for addresses that are themselves a credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub address: Option<String>,
    /// `slack`: the channel to post to, when the webhook allows choosing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub channel: Option<String>,
    /// `slack`: the name the message is posted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub username: Option<String>,
    /// Secret of this namespace: `token` (the API token of `github`, `gitlab` and `gitea`, the HMAC key
    /// of `generic-hmac`) and/or `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Deadline of one request (default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 16))]
    pub timeout: Option<String>,
    /// Nothing is sent while true; what would have been is dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderType {
    /// A JSON POST of the event, in Flux's event format.
    #[serde(rename = "generic")]
    Generic,
    /// As `generic`, signed: `X-Signature: sha256=<hex HMAC-SHA256 of the body>` with the
    /// Secret's `token`, as a `generic-hmac` Receiver checks it.
    #[serde(rename = "generic-hmac")]
    GenericHmac,
    /// A Slack incoming webhook.
    #[serde(rename = "slack")]
    Slack,
    /// GitHub commit status on the revision's commit.
    #[serde(rename = "github")]
    GitHub,
    /// GitLab commit status on the revision's commit.
    #[serde(rename = "gitlab")]
    GitLab,
    /// Gitea (and Forgejo) commit status on the revision's commit.
    #[serde(rename = "gitea")]
    Gitea,
}

impl ProviderType {
    /// Whether this provider reports a commit's state rather than events.
    pub fn commit_status(self) -> bool {
        matches!(
            self,
            ProviderType::GitHub | ProviderType::GitLab | ProviderType::Gitea
        )
    }
}

/// Sends the events of selected GitRepositories to a Provider.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "Alert",
    namespaced,
    status = "AlertStatus",
    derive = "PartialEq",
    category = "capstan",
    doc = "Alert sends the events of selected GitRepositories of its namespace to a Provider.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AlertSpec {
    /// The Provider of this namespace to send to.
    pub provider_ref: LocalObjectReference,
    /// `info` sends every event, `error` only failures.
    #[serde(default)]
    pub event_severity: EventSeverity,
    /// The GitRepositories of this namespace whose events are sent.
    #[schemars(length(min = 1))]
    pub event_sources: Vec<EventSource>,
    /// Only events with one of these reasons (e.g. `Applied`, `FetchFailed`, `DriftDetected`);
    /// all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_reasons: Vec<String>,
    /// Only events whose message matches one of these regular expressions; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inclusion_list: Vec<String>,
    /// No event whose message matches one of these regular expressions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclusion_list: Vec<String>,
    /// Nothing is sent while true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventSeverity {
    #[default]
    Info,
    Error,
}

/// GitRepositories by `name` (`*` for all of the namespace), or by `matchLabels`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.name) != has(self.matchLabels)").message("an event source takes exactly one of name or matchLabels"))]
#[x_kube(validation = Rule::new("!has(self.__namespace__)").message("an Alert selects GitRepositories of its own namespace; another namespace cannot be given"))]
#[serde(rename_all = "camelCase")]
pub struct EventSource {
    /// Only `GitRepository`.
    #[schemars(regex(pattern = "^GitRepository$"))]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Never allowed; declared so that admission refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl EventSource {
    /// Whether this source selects a GitRepository with `name` and `labels`.
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        super::selects(
            self.name.as_deref(),
            self.match_labels.as_ref(),
            name,
            labels,
        )
    }
}

/// Whether the Alert can send, and how its last send went.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: False with `ProviderNotFound`, `InvalidSpec` or `SendFailed` (the last send
    /// failed after its retries); True with `Valid` before the first send, `Succeeded` once
    /// the last send went through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
