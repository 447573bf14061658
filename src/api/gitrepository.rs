//! The `GitRepository` resource. Field names follow Flux's GitRepository and Kustomization where
//! they mean the same thing; validation that the API server can do at admission lives here, as
//! OpenAPI patterns and CEL rules, so a malformed object never reaches the controller.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Repository URLs Capstan accepts: `http(s)://` and `ssh://` URLs, and scp-style `[user@]host:path`.
/// Everything else (`file://`, `ext::`, local paths, options starting with `-`) is refused.
pub const URL_PATTERN: &str = r"^((https?|ssh)://[A-Za-z0-9._~%!$&'()*+,;=:@\[\]-]+(/\S*)?|([A-Za-z0-9._-]+@)?[A-Za-z0-9][A-Za-z0-9.-]*:([^:/\s]|/[^/\s])\S*)$";

/// A Go-style duration as Flux writes it: `30s`, `5m`, `1h30m`, `500ms`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Syncs the manifests at a path of a Git repository into the cluster and keeps them there.
// The printer columns repeat `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "GitRepository",
    namespaced,
    status = "GitRepositoryStatus",
    derive = "PartialEq",
    shortname = "cgr",
    category = "capstan",
    doc = "GitRepository syncs the manifests at a path of a Git repository into the cluster.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.lastAppliedRevision"
    ),
    printcolumn(
        name = "Drift",
        type_ = "integer",
        json_path = ".status.summary.drifted"
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
pub struct GitRepositorySpec {
    /// Repository URL: `https://`, `http://`, `ssh://`, or scp-style `git@host:org/repo.git`.
    #[schemars(regex(pattern = URL_PATTERN), length(max = 2048))]
    pub url: String,

    /// Which revision to sync. Defaults to the branch `main`.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<GitRef>,

    /// How often to check the remote for a new revision, e.g. `1m`. Jittered.
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 16))]
    pub interval: String,

    /// Deadline for each git operation, render and health wait. Defaults to `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 16))]
    pub timeout: Option<String>,

    /// Secret in the same namespace with the credentials: `username` and `password`, or
    /// `bearerToken` (HTTPS); `identity` and `known_hosts` (SSH); `ca.crt` for a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,

    /// Directory inside the repository whose manifests are applied. Defaults to the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')").message("path must be relative and must not contain '..'"))]
    pub path: Option<String>,

    /// Files to leave out, in gitignore syntax, on top of the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore: Option<String>,

    /// Delete objects that were applied before and are no longer in the repository.
    #[serde(default)]
    pub prune: bool,

    /// Blast-radius guard: the most objects one revision may prune, as a count or a share of the
    /// managed objects (`25%`). Over it, nothing is pruned and status lists the candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prune: Option<IntOrString>,

    /// What happens to the applied objects when the GitRepository is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Namespace for namespaced objects that name none. Defaults to the GitRepository's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub target_namespace: Option<String>,

    /// ServiceAccount in the same namespace to impersonate for every apply, prune and correction
    /// (with `kubeConfig`: a ServiceAccount of that namespace on the remote cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(max = 253)
    )]
    pub service_account_name: Option<String>,

    /// Recreate objects whose immutable fields changed.
    #[serde(default)]
    pub force: bool,

    /// How drift of the applied objects from the repository is handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftSpec>,

    /// Report Ready only once the applied objects are healthy.
    #[serde(default)]
    pub wait: bool,

    /// Variable substitution in the rendered manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_build: Option<PostBuild>,

    /// Values for a Helm chart at `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmSpec>,

    /// Stop all changes to the cluster for this GitRepository.
    #[serde(default)]
    pub suspend: bool,

    /// GitRepositories that must be Ready at their latest revision before this one applies;
    /// when they are all deleted together, this one's objects are deleted first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub depends_on: Vec<DependencyReference>,

    /// Decrypt the files SOPS encrypted before they are rendered and applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption: Option<DecryptionSpec>,

    /// CEL expressions judging the health of custom resources, per apiVersion and kind (with
    /// `wait`); other custom resources are judged by their kstatus conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub health_check_exprs: Vec<HealthCheckExpr>,

    /// Signatures a revision must carry, by a trusted key, before anything of it is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,

    /// Apply to another cluster: everything applied, pruned, watched for drift and checked for
    /// health goes there; the status and Events stay here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_config: Option<KubeConfigReference>,

    /// Preview pull requests: a pull-request event through a Receiver makes the controller
    /// render the pull request's head as it would this GitRepository's ref, and report the
    /// server-side dry run's diff on the head commit through a Provider. Nothing is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewSpec>,
}

/// Which pull requests are previewed, and where the result goes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PreviewSpec {
    /// The branches whose pull requests (merge requests) are previewed, by the branch they
    /// merge into; the branch `spec.ref` follows when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<String>,
    /// A `github`, `gitea` or `gitlab` Provider of this namespace: the head commit gets a
    /// commit status with the summary, the pull request a comment with the diff, updated on
    /// every push. Without it the result shows only in `status.preview`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_ref: Option<LocalObjectReference>,
}

/// The kubeconfig of a remote cluster, in a Secret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KubeConfigReference {
    /// Secret in the same namespace holding the kubeconfig. Its credentials must be inline
    /// (a token, or client certificate data): file paths and exec plugins are refused.
    pub secret_ref: SecretKeyReference,
}

/// One entry of a Secret in the same namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The entry; `value` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// How custom resources of one apiVersion and kind tell their health, in CEL, as Flux's: the
/// object's top-level fields (`metadata`, `spec`, `status`) are variables.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckExpr {
    /// e.g. `example.com/v1`.
    #[schemars(length(min = 1, max = 317))]
    pub api_version: String,
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// True when the object is healthy.
    #[schemars(length(min = 1, max = 4096))]
    pub current: String,
    /// True while it is progressing (checked first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub in_progress: Option<String>,
    /// True when it failed (checked before `current`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub failed: Option<String>,
}

/// SOPS decryption.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DecryptionSpec {
    pub provider: DecryptionProvider,
    /// Secret in the same namespace with the private keys: age identities in entries named
    /// `*.agekey`, armored OpenPGP secret keys (without a passphrase) in entries named `*.asc`.
    pub secret_ref: LocalObjectReference,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecryptionProvider {
    #[serde(rename = "sops")]
    Sops,
}

/// Commit and tag signature verification.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerifySpec {
    /// What must be signed: the commit (`HEAD`, the default), the annotated tag the ref names
    /// (`Tag`), or both (`TagAndHEAD`).
    #[serde(default)]
    pub mode: VerifyMode,
    /// Secret in the same namespace with the trusted keys: armored OpenPGP public keys in
    /// entries named `*.asc`, SSH public keys in `allowed_signers` (git's allowed signers format).
    pub secret_ref: LocalObjectReference,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifyMode {
    #[default]
    #[serde(rename = "HEAD")]
    Head,
    Tag,
    #[serde(rename = "TagAndHEAD")]
    TagAndHead,
}

impl VerifyMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            VerifyMode::Head => "HEAD",
            VerifyMode::Tag => "Tag",
            VerifyMode::TagAndHead => "TagAndHEAD",
        }
    }
}

/// A GitRepository another one depends on.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct DependencyReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Defaults to the namespace of the GitRepository that depends on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub namespace: Option<String>,
}

/// The revision to sync: exactly one of `branch`, `tag`, `semver`, `name`, or `commit`
/// (which may be combined with `branch`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = Rule::new("(has(self.branch) || has(self.commit) ? 1 : 0) + (has(self.tag) ? 1 : 0) + (has(self.semver) ? 1 : 0) + (has(self.name) ? 1 : 0) == 1").message("ref takes exactly one of branch, tag, semver, name or commit (commit may be combined with branch)"))]
#[serde(rename_all = "camelCase")]
pub struct GitRef {
    /// A branch, e.g. `main`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^\s~^:?*\[\\]+$"), length(max = 255))]
    pub branch: Option<String>,
    /// A tag, e.g. `v1.2.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^\s~^:?*\[\\]+$"), length(max = 255))]
    pub tag: Option<String>,
    /// A semver range over the tags, e.g. `>=1.2.0 <2`; the highest match wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub semver: Option<String>,
    /// Any reference, e.g. `refs/pull/7/head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^refs/[^\s~^:?*\[\\]+$"), length(max = 255))]
    pub name: Option<String>,
    /// A full commit SHA to pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9a-f]{40}|[0-9a-f]{64})$"))]
    pub commit: Option<String>,
}

/// A reference to an object in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("!has(self.__namespace__)").message("references name an object in the same namespace; another namespace cannot be given"))]
pub struct LocalObjectReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Never allowed. Declared so that admission refuses it, rather than the schema dropping it
    /// unseen and the reference silently meaning another object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// What deleting a GitRepository does to the objects it applied.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Delete them when `prune` is true, orphan them otherwise.
    #[default]
    MirrorPrune,
    /// Delete them.
    Delete,
    /// Leave them, without Capstan's ownership markers.
    Orphan,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DriftSpec {
    /// `Correct` re-applies drifted objects at once, `Warn` only reports them, `Disabled` does neither.
    #[serde(default)]
    pub mode: DriftMode,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DriftMode {
    #[default]
    Correct,
    Warn,
    Disabled,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PostBuild {
    /// Variables replacing `${name}` in the rendered manifests.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub substitute: BTreeMap<String, String>,
    /// ConfigMaps and Secrets in the same namespace whose data are variables too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub substitute_from: Vec<SubstituteReference>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SubstituteReference {
    pub kind: SubstituteKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Carry on when the object does not exist.
    #[serde(default)]
    pub optional: bool,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubstituteKind {
    ConfigMap,
    Secret,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelmSpec {
    /// Release name, a DNS label of at most 53 characters as Helm wants. Defaults to the
    /// GitRepository's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 53))]
    pub release_name: Option<String>,
    /// Inline values, merged over the values files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub values: Option<serde_json::Value>,
    /// Values files inside the repository, relative to `path`, merged in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
}

fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// What Capstan observed and did, following Kubernetes API conventions and kstatus.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitRepositoryStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled`, and `Drifted` / `Healthy` where they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The last revision fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
    /// The last revision applied in full, as `<ref>@sha1:<sha>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    /// The last revision an apply was attempted for, successful or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    /// The value of the `capstan.dev/reconcile-requested-at` annotation last handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// Counts of the objects in the last apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    /// The objects Capstan applied and still manages: all of them, or, past
    /// [`STATUS_ENTRIES`], the first ones and the `InventoryPart`s that hold the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// Managed objects whose live state differs from the repository (the first
    /// [`STATUS_ENTRIES`]; `summary.drifted` counts them, the inventory record holds all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<DriftEntry>,
    /// Set while the blast-radius guard holds back a prune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_blocked: Option<PruneBlocked>,
    /// The last preview of each pull request still asked about (at most
    /// [`PREVIEW_REQUESTS`]), by number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["number"]))]
    pub previews: Vec<PreviewStatus>,
}

/// Pull requests a GitRepository keeps preview requests and answers of: the newest ones.
pub const PREVIEW_REQUESTS: usize = 10;

/// One request for a preview, as the `capstan.dev/preview-requested` annotation lists them.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PreviewRequest {
    /// The pull request (merge request).
    pub number: u64,
    /// Where the host keeps its head: `refs/pull/N/head`, `refs/merge-requests/N/head`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The head commit the event named.
    pub sha: String,
}

/// What the last preview of one pull request found.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PreviewStatus {
    /// The pull request's number.
    pub number: u64,
    /// The head commit of the request this answers.
    pub sha: String,
    /// The revision rendered, as `<ref>@sha1:<sha>`, once it was resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Whether the diff was computed and every object passed the server's dry run.
    pub succeeded: bool,
    /// The summary (`1 changed, 2 created, 1 would be pruned`) or the error.
    pub message: String,
    pub at: Time,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// `<ref>@sha1:<sha>`, e.g. `main@sha1:4f2c9e1d...`.
    pub revision: String,
    pub fetched_at: Time,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub total: i64,
    pub created: i64,
    pub configured: i64,
    pub unchanged: i64,
    /// Deleted and created again because a field that cannot change in place changed (force).
    #[serde(default)]
    pub recreated: i64,
    pub pruned: i64,
    pub drifted: i64,
}

/// How many inventory entries, drift entries and prune candidates the status shows, and how
/// many field paths of each drift entry: past these, the status is a summary and the full
/// record is in `InventoryPart`s.
pub const STATUS_ENTRIES: usize = 100;
pub const STATUS_DRIFT_FIELDS: usize = 20;

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// The managed objects in id order: all of them, or the first 100 when there are more.
    #[serde(default)]
    pub entries: Vec<InventoryEntry>,
    /// How many objects are managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// Where the full record is when the status shows only part of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordRef>,
    /// A checksum of how many fields Capstan owned of each object right after it applied it:
    /// a restarted controller that finds the same count on every object, and each object's
    /// digest annotation as it would apply it, sends nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// The `InventoryPart`s `<name>-0` to `<name>-<parts - 1>`, in the GitRepository's namespace,
/// which together hold every inventory entry, drift entry and prune candidate.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordRef {
    pub name: String,
    pub parts: i64,
    /// A digest of the record, written on each part.
    pub digest: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct InventoryEntry {
    /// `<namespace>_<name>_<group>_<kind>`, as Flux writes it.
    pub id: String,
    /// The API version the object was applied with.
    pub v: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftEntry {
    /// Inventory id of the drifted object.
    pub id: String,
    /// Field paths whose live value differs from the repository's.
    #[serde(default)]
    pub fields: Vec<String>,
    pub detected_at: Time,
    /// Whether Capstan re-applied the object.
    #[serde(default)]
    pub corrected: bool,
    /// While another manager keeps changing the object right after corrections, Capstan holds
    /// further corrections until this time, then corrects what is still drifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<Time>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PruneBlocked {
    /// Inventory ids that would be deleted (the first 100; the inventory record holds all).
    pub candidates: Vec<String>,
    /// How many objects would be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// The limit in force, as written in `spec.maxPrune` or the default.
    pub limit: String,
    /// How many objects were managed before the revision that would prune them: the guard's
    /// measure while it holds (the blocked revision's new objects are managed meanwhile).
    pub managed: i64,
}

impl GitRepositorySpec {
    /// The ref to sync, with the default applied.
    pub fn git_ref(&self) -> GitRef {
        self.git_ref.clone().unwrap_or_else(|| GitRef {
            branch: Some("main".into()),
            ..GitRef::default()
        })
    }
}
