//! The `InventoryPart` resource: where the record of what a GitRepository manages goes when it
//! outgrows the GitRepository's status. The status keeps counts and the first entries for
//! people; the parts keep every inventory entry, drift entry and prune candidate, split so that
//! no object Capstan writes approaches etcd's size limit, whatever the size of the revision.
//! Capstan alone writes them; they are owned by their GitRepository and go with it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DriftEntry, InventoryEntry};

/// One part of a GitRepository's full inventory record. Parts are written once and never
/// changed: a new record gets new parts (the digest is in their names), and the status names
/// the record in force (`status.inventory.record`).
// The printer columns repeat `type_`, which clippy mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "InventoryPart",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    doc = "InventoryPart holds part of the record of what a GitRepository manages, when it outgrows the GitRepository's status.",
    printcolumn(
        name = "GitRepository",
        type_ = "string",
        json_path = ".spec.gitRepository"
    ),
    printcolumn(name = "Part", type_ = "integer", json_path = ".spec.part"),
    printcolumn(name = "Parts", type_ = "integer", json_path = ".spec.parts"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InventoryPartSpec {
    /// The GitRepository, in this namespace, whose record this is part of.
    pub git_repository: String,
    /// The digest of the whole record, as `status.inventory.record.digest` names it.
    pub digest: String,
    /// This part's place, from 0.
    pub part: i64,
    /// How many parts the record has.
    pub parts: i64,
    /// Inventory entries, in id order, continuing the previous part's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<InventoryEntry>,
    /// Drift entries, in id order, continuing the previous part's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<DriftEntry>,
    /// Prune candidates held back by the blast-radius guard, continuing the previous part's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prune_candidates: Vec<String>,
}
