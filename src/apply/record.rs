//! The inventory record past what a status holds. A reconcile works on the full status (every
//! inventory entry, drift entry and prune candidate); what is written to the GitRepository is
//! [`split`] from it: the first [`STATUS_ENTRIES`] of each for people, counts, and a reference
//! to `InventoryPart`s that hold all of it. [`join`] puts the two back together. Parts are
//! immutable and named by the record's digest: new parts are written before the status that
//! names them, and the old ones deleted after, so the status always names a complete record.

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;

use super::Owner;
use crate::api::{
    DriftEntry, FIELD_MANAGER, GitRepository, GitRepositoryStatus, Inventory, InventoryEntry,
    InventoryPart, InventoryPartSpec, RECORD_LABEL, RecordRef, STATUS_DRIFT_FIELDS, STATUS_ENTRIES,
};

/// The most a part's entries add up to, serialized: well under etcd's limit of 1.5 MiB per
/// object, whatever the names.
const PART_BYTES: usize = 512 * 1024;

/// A status as written, and the parts of the record it names (none when it holds everything).
pub struct Split {
    pub shown: GitRepositoryStatus,
    pub parts: Vec<InventoryPart>,
}

/// Splits `full` into the status to write and the parts of its record, and sets
/// `full.inventory.record` to what the written status names.
pub fn split(gr: &GitRepository, full: &mut GitRepositoryStatus) -> Split {
    let entries = full.inventory.as_ref().map_or(&[][..], |i| &i.entries[..]);
    let candidates = full
        .prune_blocked
        .as_ref()
        .map_or(&[][..], |p| &p.candidates[..]);
    let fits = entries.len() <= STATUS_ENTRIES
        && candidates.len() <= STATUS_ENTRIES
        && full.drift.len() <= STATUS_ENTRIES
        && full
            .drift
            .iter()
            .all(|d| d.fields.len() <= STATUS_DRIFT_FIELDS);
    if fits {
        if let Some(inventory) = &mut full.inventory {
            inventory.record = None;
        }
        return Split {
            shown: full.clone(),
            parts: Vec::new(),
        };
    }
    let digest = digest(entries, &full.drift, candidates);
    let name = format!("{}-{digest}", name_prefix(&gr.name_any()));
    let mut specs = chunk(entries, &full.drift, candidates);
    let count = specs.len() as i64;
    for (i, spec) in specs.iter_mut().enumerate() {
        spec.git_repository = gr.name_any();
        spec.digest = digest.clone();
        spec.part = i as i64;
        spec.parts = count;
    }
    let owner = Owner::of(gr);
    let parts = specs
        .into_iter()
        .map(|spec| {
            let mut part = InventoryPart::new(&format!("{name}-{}", spec.part), spec);
            part.metadata.namespace = gr.namespace();
            let mut labels = owner.labels();
            labels.insert(RECORD_LABEL.to_string(), digest.clone());
            part.metadata.labels = Some(labels);
            part.metadata.owner_references = gr.controller_owner_ref(&()).map(|r| vec![r]);
            part
        })
        .collect();
    full.inventory.get_or_insert_with(Inventory::default).record = Some(RecordRef {
        name,
        parts: count,
        digest,
    });
    let mut shown = full.clone();
    if let Some(inventory) = &mut shown.inventory {
        inventory.entries.truncate(STATUS_ENTRIES);
    }
    if let Some(blocked) = &mut shown.prune_blocked {
        blocked.candidates.truncate(STATUS_ENTRIES);
    }
    shown.drift.truncate(STATUS_ENTRIES);
    for d in &mut shown.drift {
        d.fields.truncate(STATUS_DRIFT_FIELDS);
    }
    Split { shown, parts }
}

/// The full status from a written one and its record's parts, in any order.
pub fn join(
    mut shown: GitRepositoryStatus,
    mut parts: Vec<InventoryPartSpec>,
) -> Result<GitRepositoryStatus, String> {
    let Some(record) = shown.inventory.as_ref().and_then(|i| i.record.clone()) else {
        return Ok(shown);
    };
    parts.sort_by_key(|p| p.part);
    let complete = parts.len() as i64 == record.parts
        && parts.iter().enumerate().all(|(i, p)| {
            p.part == i as i64 && p.parts == record.parts && p.digest == record.digest
        });
    if !complete {
        return Err(format!(
            "the InventoryParts {}-0 to {}-{} do not make one record",
            record.name,
            record.name,
            record.parts - 1
        ));
    }
    let mut entries = Vec::new();
    let mut drift = Vec::new();
    let mut candidates = Vec::new();
    for part in parts {
        entries.extend(part.entries);
        drift.extend(part.drift);
        candidates.extend(part.prune_candidates);
    }
    if let Some(inventory) = &mut shown.inventory {
        inventory.entries = entries;
    }
    if let Some(blocked) = &mut shown.prune_blocked {
        blocked.candidates = candidates;
    }
    shown.drift = drift;
    Ok(shown)
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A part the status names is gone (deleted by hand): what the status shows is all that is
    /// known.
    #[error("InventoryPart {0} is missing")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
    #[error("InventoryPart {0}: {1}")]
    Api(String, #[source] kube::Error),
}

/// `gr`'s full status: its status, with the record it names read back in.
pub async fn load(
    client: &Client,
    gr: &GitRepository,
) -> Result<Option<GitRepositoryStatus>, RecordError> {
    let Some(status) = gr.status.clone() else {
        return Ok(None);
    };
    let Some(record) = status.inventory.as_ref().and_then(|i| i.record.clone()) else {
        return Ok(Some(status));
    };
    let api: Api<InventoryPart> =
        Api::namespaced(client.clone(), &gr.namespace().unwrap_or_default());
    let mut parts = Vec::new();
    for i in 0..record.parts {
        let name = format!("{}-{i}", record.name);
        match api.get_opt(&name).await {
            Ok(Some(part)) => parts.push(part.spec),
            Ok(None) => return Err(RecordError::Missing(name)),
            Err(e) => return Err(RecordError::Api(name, e)),
        }
    }
    join(status, parts).map(Some).map_err(RecordError::Invalid)
}

/// Writes the parts of a new record (before the status that names it).
pub async fn save(client: &Client, parts: &[InventoryPart]) -> Result<(), RecordError> {
    for part in parts {
        let name = part.name_any();
        let api: Api<InventoryPart> =
            Api::namespaced(client.clone(), &part.namespace().unwrap_or_default());
        let mut body =
            serde_json::to_value(part).map_err(|e| RecordError::Invalid(e.to_string()))?;
        body["apiVersion"] = "capstan.dev/v1alpha1".into();
        body["kind"] = "InventoryPart".into();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| RecordError::Api(name, e))?;
    }
    Ok(())
}

/// Deletes `gr`'s parts except those of the record `keep` (all of them without one): those of
/// the record the status named before, and any a failed write left behind.
pub async fn delete_parts(
    client: &Client,
    gr: &GitRepository,
    keep: Option<&str>,
) -> Result<(), RecordError> {
    let api: Api<InventoryPart> =
        Api::namespaced(client.clone(), &gr.namespace().unwrap_or_default());
    let mut selector: Vec<String> = Owner::of(gr)
        .labels()
        .into_iter()
        .filter(|(k, _)| k != crate::api::SHARD_LABEL)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if let Some(keep) = keep {
        selector.push(format!("{RECORD_LABEL}!={keep}"));
    }
    api.delete_collection(
        &DeleteParams::background(),
        &ListParams::default().labels(&selector.join(",")),
    )
    .await
    .map_err(|e| RecordError::Api(format!("of {}", gr.name_any()), e))?;
    Ok(())
}

/// The record's digest: 16 hex digits, enough to tell records of one GitRepository apart.
fn digest(entries: &[InventoryEntry], drift: &[DriftEntry], candidates: &[String]) -> String {
    let bytes = serde_json::to_vec(&(entries, drift, candidates)).unwrap_or_default();
    crate::digest::stable_hex(&bytes)
}

/// Part names are `<prefix>-<digest>-<n>`: the GitRepository's name, cut so that the whole
/// stays a valid object name.
fn name_prefix(name: &str) -> &str {
    let mut end = name.len().min(200);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches(['-', '.'])
}

/// The record in parts of at most [`PART_BYTES`] (an entry larger than that gets a part of its
/// own): inventory entries first, then drift, then prune candidates.
fn chunk(
    entries: &[InventoryEntry],
    drift: &[DriftEntry],
    candidates: &[String],
) -> Vec<InventoryPartSpec> {
    let mut parts = Parts::default();
    for e in entries {
        parts.room(e).entries.push(e.clone());
    }
    for d in drift {
        parts.room(d).drift.push(d.clone());
    }
    for c in candidates {
        parts.room(c).prune_candidates.push(c.clone());
    }
    parts.done
}

#[derive(Default)]
struct Parts {
    done: Vec<InventoryPartSpec>,
    bytes: usize,
}

impl Parts {
    /// The part `item` goes into: the current one, or a new one when it would overflow.
    fn room(&mut self, item: &impl Serialize) -> &mut InventoryPartSpec {
        let size = serde_json::to_vec(item).map_or(0, |v| v.len()) + 1;
        if self.done.is_empty() || (self.bytes > 0 && self.bytes + size > PART_BYTES) {
            self.done.push(InventoryPartSpec::default());
            self.bytes = 0;
        }
        self.bytes += size;
        self.done.last_mut().expect("a part was pushed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GitRepositorySpec, PruneBlocked};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn gr() -> GitRepository {
        let spec: GitRepositorySpec =
            serde_json::from_value(serde_json::json!({"url": "https://h/r", "interval": "1m"}))
                .unwrap();
        let mut gr = GitRepository::new("shop", spec);
        gr.metadata.namespace = Some("apps".into());
        gr.metadata.uid = Some("uid-1".into());
        gr
    }

    fn full(objects: usize, drifted: usize, candidates: usize) -> GitRepositoryStatus {
        let entries: Vec<InventoryEntry> = (0..objects)
            .map(|i| InventoryEntry {
                id: format!("apps_{}_{i:06}__ConfigMap", "x".repeat(40)),
                v: "v1".into(),
            })
            .collect();
        GitRepositoryStatus {
            drift: entries[..drifted]
                .iter()
                .map(|e| DriftEntry {
                    id: e.id.clone(),
                    fields: (0..30).map(|f| format!(".data.key{f}")).collect(),
                    detected_at: Time(Default::default()),
                    corrected: false,
                    held_until: None,
                })
                .collect(),
            prune_blocked: (candidates > 0).then(|| PruneBlocked {
                candidates: entries[..candidates].iter().map(|e| e.id.clone()).collect(),
                count: Some(candidates as i64),
                limit: "10".into(),
                managed: objects as i64,
            }),
            inventory: Some(Inventory {
                count: Some(objects as i64),
                entries,
                ..Inventory::default()
            }),
            ..GitRepositoryStatus::default()
        }
    }

    #[test]
    fn a_status_that_holds_everything_has_no_record() {
        let mut status = full(STATUS_ENTRIES, 0, 0);
        status.inventory.as_mut().unwrap().record = Some(RecordRef {
            name: "old".into(),
            parts: 1,
            digest: "0".into(),
        });
        let split = split(&gr(), &mut status);
        assert!(split.parts.is_empty());
        assert_eq!(split.shown, status);
        assert_eq!(status.inventory.unwrap().record, None);
    }

    #[test]
    fn a_large_record_is_split_into_bounded_parts_and_joined_back() {
        let mut status = full(50_000, 300, 2_000);
        let split = split(&gr(), &mut status);
        let record = status.inventory.as_ref().unwrap().record.clone().unwrap();
        assert!(split.parts.len() > 1, "{} parts", split.parts.len());
        assert_eq!(record.parts, split.parts.len() as i64);
        for (i, part) in split.parts.iter().enumerate() {
            let bytes = serde_json::to_vec(part).unwrap().len();
            assert!(bytes < PART_BYTES + 4096, "part {i} is {bytes} bytes");
            assert_eq!(part.name_any(), format!("{}-{i}", record.name));
            assert_eq!(part.labels()[RECORD_LABEL], record.digest);
            assert_eq!(part.owner_references()[0].uid, "uid-1");
        }
        // The written status is bounded: the first entries, the counts, the record's name.
        let shown = &split.shown;
        let inventory = shown.inventory.as_ref().unwrap();
        assert_eq!(inventory.entries.len(), STATUS_ENTRIES);
        assert_eq!(inventory.count, Some(50_000));
        assert_eq!(shown.drift.len(), STATUS_ENTRIES);
        assert!(
            shown
                .drift
                .iter()
                .all(|d| d.fields.len() == STATUS_DRIFT_FIELDS)
        );
        let blocked = shown.prune_blocked.as_ref().unwrap();
        assert_eq!(
            (blocked.candidates.len(), blocked.count),
            (STATUS_ENTRIES, Some(2_000))
        );
        assert!(serde_json::to_vec(shown).unwrap().len() < 64 * 1024);
        // Joined back, in any order, it is the full status again.
        let mut specs: Vec<InventoryPartSpec> = split.parts.into_iter().map(|p| p.spec).collect();
        specs.reverse();
        assert_eq!(join(split.shown.clone(), specs.clone()).unwrap(), status);
        // A part missing, or of another record: refused.
        assert!(join(split.shown.clone(), specs[1..].to_vec()).is_err());
        specs[0].digest = "other".into();
        assert!(join(split.shown, specs).is_err());
    }

    #[test]
    fn another_record_gets_other_names() {
        let mut a = full(200, 0, 0);
        let mut b = full(201, 0, 0);
        let (a, b) = (split(&gr(), &mut a), split(&gr(), &mut b));
        assert_ne!(a.parts[0].name_any(), b.parts[0].name_any());
        assert!(a.parts[0].name_any().starts_with("shop-"));
        assert_eq!(name_prefix(&"a-".repeat(150)).len(), 199);
    }
}
