//! The apply stage: discovery, server-side apply in dependency order (CRDs and Namespaces first),
//! ownership markers, and pruning what left git. Talks to the API server; decides nothing about
//! status (see `status.rs`).

pub mod diff;
mod inventory;
pub mod record;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope};
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::Value;

pub use inventory::{prune_blocked, prune_candidates};

use crate::api::{
    DIGEST_ANNOTATION, FIELD_MANAGER, FORCE_ANNOTATION, GitRepository, HANDOVER_ANNOTATION,
    InventoryEntry, OWNER_ANNOTATION, OWNER_NAME_LABEL, OWNER_NAMESPACE_LABEL, PRUNE_ANNOTATION,
    SHARD_LABEL,
};
use crate::object::fields::FieldSet;
use crate::object::{Kind, ObjectId, apply_tier};
use crate::render::Manifest;

/// The GitRepository an object belongs to, as written onto every object Capstan applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    pub name: String,
    /// The GitRepository's `capstan.dev/shard` label: its objects carry it too, so that each
    /// shard's controller watches only its own.
    pub shard: Option<String>,
}

impl Owner {
    pub fn of(gr: &GitRepository) -> Owner {
        Owner {
            namespace: gr.namespace().unwrap_or_default(),
            name: gr.name_any(),
            shard: gr.labels().get(SHARD_LABEL).cloned(),
        }
    }

    /// `<namespace>/<name>`: the ownership annotation's value, checked before every prune.
    pub fn annotation(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Label values are at most 63 characters; longer names are replaced by a stable hash
    /// (the annotation keeps the full name).
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (OWNER_NAME_LABEL.to_string(), label_value(&self.name)),
            (OWNER_NAMESPACE_LABEL.to_string(), self.namespace.clone()),
        ]);
        if let Some(shard) = &self.shard {
            labels.insert(SHARD_LABEL.to_string(), shard.clone());
        }
        labels
    }
}

fn label_value(value: &str) -> String {
    if value.len() <= 63 {
        return value.to_string();
    }
    format!(
        "{}-{}",
        &value[..46].trim_end_matches(['-', '.']),
        crate::digest::stable_hex(value.as_bytes())
    )
}

/// Some objects of a revision could not be applied; the others were.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} objects failed to apply: {first}")]
pub struct ApplyError {
    failed: usize,
    total: usize,
    first: String,
    /// How many of the failed objects are managed by another GitRepository.
    pub conflicts: usize,
}

impl ApplyError {
    /// Every failure is an object another GitRepository manages.
    pub fn only_conflicts(&self) -> bool {
        self.conflicts == self.failed
    }
}

/// An object that could not be pruned; it stays in the inventory.
#[derive(Debug, thiserror::Error)]
#[error("{id}: {message}")]
pub struct PruneError {
    pub id: String,
    pub message: String,
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    /// Deleted and created again: a field that cannot change in place changed (force).
    Recreated,
    Failed(String),
    /// Not applied: another GitRepository manages the object (the message names both).
    Conflict(String),
}

impl Action {
    /// The object is not as the revision says: it failed or was refused.
    pub fn failed(&self) -> bool {
        matches!(self, Action::Failed(_) | Action::Conflict(_))
    }
}

/// Why one server-side apply failed.
#[derive(Debug)]
enum SendError {
    /// The API server refused to change these fields of the existing object in place: each
    /// as `<field>: <what the server said of it>`.
    Immutable(Vec<String>),
    /// Another GitRepository manages the object; nothing was sent. The message names both.
    Owned(String),
    Other(String),
}

impl SendError {
    fn message(self) -> String {
        match self {
            SendError::Immutable(fields) => fields.join("; "),
            SendError::Owned(message) | SendError::Other(message) => message,
        }
    }
}

/// Removes `owner`'s labels and annotation from the object `name`.
async fn unmark(api: &Api<DynamicObject>, name: &str, owner: &Owner) -> Result<(), String> {
    let labels: serde_json::Map<String, Value> = owner
        .labels()
        .into_keys()
        .map(|key| (key, Value::Null))
        .collect();
    let patch = serde_json::json!({"metadata": {
        "labels": labels,
        "annotations": {OWNER_ANNOTATION: null},
    }});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Refuses to send `object` (which carries its owner's annotation) when the live object is
/// managed by another GitRepository, unless that one handed it to this one. Objects without an
/// owner (created by hand, or released) are taken.
async fn owned_by_another(api: &Api<DynamicObject>, object: &Value) -> Result<(), SendError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let ours = object["metadata"]["annotations"][OWNER_ANNOTATION]
        .as_str()
        .unwrap_or_default();
    let live = match api.get_metadata_opt(name).await {
        Ok(live) => live,
        Err(kube::Error::Api(s)) => return Err(SendError::Other(s.message)),
        Err(e) => return Err(SendError::Other(e.to_string())),
    };
    let annotations = live.as_ref().map(ResourceExt::annotations);
    let owner = annotations.and_then(|a| a.get(OWNER_ANNOTATION));
    let handed_to = annotations.and_then(|a| a.get(HANDOVER_ANNOTATION));
    match owner {
        Some(other) if other != ours && handed_to.map(String::as_str) != Some(ours) => {
            Err(SendError::Owned(format!(
                "managed by GitRepository {other}, not {ours}: left as it is (to hand it over, \
                 annotate it {HANDOVER_ANNOTATION}: {ours})"
            )))
        }
        _ => Ok(()),
    }
}

/// The fields an invalid-request answer says cannot change in place (a Job's template, a
/// Service's clusterIP, a selector, a RoleBinding's roleRef), each as `<field>: <saying>`
/// without the value the server prints (a whole Pod template, for a Job); empty for any other
/// answer.
fn immutable_fields(status: &kube::core::Status) -> Vec<String> {
    const SAYINGS: [&str; 3] = ["immutable", "may not change once set", "cannot change"];
    if status.code != 422 {
        return Vec::new();
    }
    let mut fields: Vec<String> = status
        .details
        .iter()
        .flat_map(|d| &d.causes)
        .filter(|c| SAYINGS.iter().any(|s| c.message.contains(s)))
        .map(|c| {
            let saying = c.message.rsplit(": ").next().unwrap_or_default();
            format!("{}: {saying}", c.field)
        })
        .collect();
    fields.dedup();
    fields
}

/// The outcome of applying a rendered set.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Every rendered object, in apply order, with the version it was applied with.
    pub objects: Vec<(ObjectId, String, Action)>,
    /// Per inventory id, for objects now in the cluster as rendered: what was sent.
    pub sent: HashMap<String, Sent>,
    /// The kinds applied, for the live stage to watch.
    pub kinds: Vec<Kind>,
}

/// An object as Capstan applied it: its digest, the object itself (for drift correction) and
/// the fields Capstan owned right after (None when it was not sent again: unchanged).
#[derive(Clone, Debug)]
pub struct Sent {
    pub digest: u64,
    pub object: Value,
    pub owned: Option<Owned>,
}

/// What an apply left Capstan owning: its fields, as of the object's resourceVersion.
#[derive(Clone, Debug)]
pub struct Owned {
    pub fields: FieldSet,
    /// The object's resourceVersion right after the apply, read as a number (etcd revisions).
    pub resource_version: Option<u64>,
}

impl Kind {
    /// The API for `object` of this kind: namespaced in its namespace, or cluster-wide.
    fn api(&self, client: &Client, object: &Value) -> Api<DynamicObject> {
        if self.namespaced {
            let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
            Api::namespaced_with(client.clone(), ns, &self.resource)
        } else {
            Api::all_with(client.clone(), &self.resource)
        }
    }
}

impl ApplyReport {
    pub fn failures(&self) -> impl Iterator<Item = (&ObjectId, &str)> {
        self.objects.iter().filter_map(|(id, _, a)| match a {
            Action::Failed(m) | Action::Conflict(m) => Some((id, m.as_str())),
            _ => None,
        })
    }

    pub fn count(&self, want: fn(&Action) -> bool) -> i64 {
        self.objects.iter().filter(|(_, _, a)| want(a)).count() as i64
    }

    /// The error for the whole apply, when any object failed.
    pub fn error(&self) -> Option<ApplyError> {
        let mut failures = self.failures();
        let (id, message) = failures.next()?;
        Some(ApplyError {
            failed: 1 + failures.count(),
            total: self.objects.len(),
            first: format!("{}: {message}", id.display_name()),
            conflicts: self.count(|a| matches!(a, Action::Conflict(_))) as usize,
        })
    }
}

/// Options that shape one apply.
pub struct ApplyOptions<'a> {
    pub owner: &'a Owner,
    /// Namespace for namespaced objects that name none.
    pub default_namespace: &'a str,
    /// Inventory ids applied before (decides Created vs Configured).
    pub previous: &'a HashSet<String>,
    /// Digests of what was last sent; an object whose digest matches is not sent again.
    pub previous_digests: &'a HashMap<String, u64>,
    /// The resourceVersion each object was last known at: an apply that leaves it there changed
    /// nothing (`Unchanged`, though it was sent).
    pub previous_versions: &'a HashMap<String, u64>,
    pub timeout: Duration,
    /// Delete and re-create every object whose fields cannot change in place (`spec.force`);
    /// without it only objects annotated `capstan.dev/force: enabled` are.
    pub force: bool,
}

enum KindError {
    /// No such kind: nothing of it can exist in the cluster.
    NotServed(String),
    Other(String),
}

impl KindError {
    fn message(self) -> String {
        match self {
            KindError::NotServed(m) | KindError::Other(m) => m,
        }
    }
}

/// Applies and prunes. Holds the discovery cache shared by all GitRepositories.
pub struct Applier {
    kinds: Mutex<HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>>,
    /// One discovery request per group version at a time: the objects of new kinds, applied
    /// concurrently, share the first one's answer instead of each asking.
    /// Per group and version: when discovery was last asked.
    lookups: Mutex<HashMap<(String, String), Arc<Lookup>>>,
    concurrency: usize,
}

/// When discovery of a group version last answered; held while asking.
type Lookup = tokio::sync::Mutex<Option<Instant>>;

/// One object of a dry run: as it is, and as the apply would leave it (or why it would fail).
#[derive(Debug)]
pub struct DryRun {
    pub id: ObjectId,
    pub live: Option<Value>,
    pub desired: Result<Value, String>,
}

struct Prepared {
    id: ObjectId,
    kind: Kind,
    object: Value,
    digest: u64,
}

impl Applier {
    pub fn new(concurrency: usize) -> Self {
        Applier {
            kinds: Mutex::new(HashMap::new()),
            lookups: Mutex::default(),
            concurrency: concurrency.max(1),
        }
    }

    /// Resolves a kind through discovery, cached; a kind not served is looked up again next time
    /// (its CRD may have been installed since). Discovery is asked for the kind's whole group
    /// version, once at a time: the objects of new kinds, applied concurrently, share one answer.
    async fn kind(
        &self,
        client: &Client,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, ApiCapabilities), KindError> {
        let cached = || self.kinds.lock().get(gvk).cloned();
        if let Some(found) = cached() {
            return Ok(found);
        }
        let not_served = || {
            KindError::NotServed(format!(
                "the API server does not serve kind {} in {} (is its CustomResourceDefinition installed?)",
                gvk.kind,
                gvk_api_version(gvk)
            ))
        };
        let asked = Instant::now();
        let lookup = self
            .lookups
            .lock()
            .entry((gvk.group.clone(), gvk.version.clone()))
            .or_default()
            .clone();
        let mut last_lookup = lookup.lock().await;
        if let Some(found) = cached() {
            return Ok(found);
        }
        if last_lookup.is_some_and(|at| at >= asked) {
            // Asked while this call waited, and the kind was not among the answer.
            return Err(not_served());
        }
        let gv = kube::core::GroupVersion::gv(&gvk.group, &gvk.version);
        let group = kube::discovery::pinned_group(client, &gv).await;
        *last_lookup = Some(Instant::now());
        match group {
            Ok(group) => {
                let mut kinds = self.kinds.lock();
                for (resource, caps) in group.versioned_resources(&gvk.version) {
                    let key =
                        GroupVersionKind::gvk(&resource.group, &resource.version, &resource.kind);
                    kinds.insert(key, (resource, caps));
                }
                kinds.get(gvk).cloned().ok_or_else(not_served)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Err(KindError::NotServed(format!(
                "the API server does not serve {} (is its CustomResourceDefinition installed?)",
                gvk_api_version(gvk)
            ))),
            Err(other) => Err(KindError::Other(format!(
                "discovery of {}: {other}",
                gvk.kind
            ))),
        }
    }

    /// The kinds of `manifests` the API server serves (through the discovery cache).
    pub async fn kinds_of(&self, client: &Client, manifests: &[Manifest]) -> Vec<Kind> {
        let gvks: HashSet<GroupVersionKind> = manifests.iter().map(|m| gvk_of(&m.object)).collect();
        let mut kinds = Vec::new();
        for gvk in gvks {
            if let Ok((resource, caps)) = self.kind(client, &gvk).await {
                kinds.push(Kind {
                    resource,
                    namespaced: caps.scope == Scope::Namespaced,
                });
            }
        }
        kinds
    }

    /// Applies `manifests` with server-side apply: CRDs and Namespaces first, then, once new CRDs
    /// are Established, everything else. Every object is attempted; failures are reported per
    /// object. Objects whose digest matches what was last sent are not sent again.
    pub async fn apply(
        &self,
        client: &Client,
        manifests: &[Manifest],
        opts: &ApplyOptions<'_>,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        for tier in [0u8, 1] {
            let batch: Vec<&Manifest> = manifests
                .iter()
                .filter(|m| apply_tier(&manifest_id_hint(&m.object)) == tier)
                .collect();
            // Collected first: a closure over borrowed items kept inside the stream's type makes
            // the reconcile future fail the controller's higher-ranked Send bounds.
            let futures: Vec<_> = batch
                .into_iter()
                .map(|m| self.apply_one(client, m, opts))
                .collect();
            let results: Vec<Outcome> = stream::iter(futures)
                .buffered(self.concurrency)
                .collect()
                .await;
            let mut new_crds = Vec::new();
            for Outcome {
                id,
                version,
                action,
                sent,
                kind,
            } in results
            {
                if let (Some(sent), false) = (sent, action.failed()) {
                    report.sent.insert(id.to_string(), sent);
                }
                if let Some(kind) = kind.filter(|k| !report.kinds.contains(k)) {
                    report.kinds.push(kind);
                }
                if id.is_crd()
                    && matches!(
                        action,
                        Action::Created | Action::Configured | Action::Recreated
                    )
                {
                    new_crds.push(id.name.clone());
                }
                tracing::debug!(object = %id, action = ?action, "apply");
                report.objects.push((id, version, action));
            }
            for name in new_crds {
                if let Err(message) = wait_established(client, &name, opts.timeout).await {
                    let crd = report
                        .objects
                        .iter_mut()
                        .find(|(id, _, _)| id.is_crd() && id.name == name);
                    if let Some((_, _, action)) = crd {
                        *action = Action::Failed(message);
                    }
                }
            }
        }
        report
    }

    async fn apply_one(
        &self,
        client: &Client,
        manifest: &Manifest,
        opts: &ApplyOptions<'_>,
    ) -> Outcome {
        let version = gvk_of(&manifest.object).version;
        let prepared = match self.prepare(client, manifest, opts).await {
            Ok(p) => p,
            Err(message) => {
                return Outcome {
                    id: manifest_id_hint(&manifest.object),
                    version,
                    action: Action::Failed(message),
                    sent: None,
                    kind: None,
                };
            }
        };
        let id_str = prepared.id.to_string();
        let (action, owned) = if opts.previous_digests.get(&id_str) == Some(&prepared.digest) {
            (Action::Unchanged, None)
        } else {
            match self.send(client, &prepared.kind, &prepared.object).await {
                Ok(owned)
                    if owned.resource_version.is_some()
                        && owned.resource_version
                            == opts.previous_versions.get(&id_str).copied() =>
                {
                    (Action::Unchanged, Some(owned))
                }
                Ok(owned) if opts.previous.contains(&id_str) => (Action::Configured, Some(owned)),
                Ok(owned) => (Action::Created, Some(owned)),
                Err(SendError::Immutable(fields)) => {
                    self.recreate_or_refuse(client, &prepared, opts, &fields)
                        .await
                }
                Err(SendError::Owned(message)) => (Action::Conflict(message), None),
                Err(other) => (Action::Failed(other.message()), None),
            }
        };
        Outcome {
            id: prepared.id,
            version,
            action,
            sent: Some(Sent {
                digest: prepared.digest,
                object: prepared.object,
                owned,
            }),
            kind: Some(prepared.kind),
        }
    }

    /// An object whose `fields` cannot change in place: deleted and created again where force
    /// is asked for (the GitRepository's `spec.force` or the object's annotation), else refused
    /// with the fields named.
    async fn recreate_or_refuse(
        &self,
        client: &Client,
        prepared: &Prepared,
        opts: &ApplyOptions<'_>,
        fields: &[String],
    ) -> (Action, Option<Owned>) {
        let annotated = prepared.object["metadata"]["annotations"][FORCE_ANNOTATION].as_str()
            == Some("enabled");
        if !opts.force && !annotated {
            return (
                Action::Failed(format!(
                    "{}: it cannot change in place; set spec.force: true, or annotate the object \
                     {FORCE_ANNOTATION}: enabled, to delete and re-create it",
                    fields.join("; ")
                )),
                None,
            );
        }
        tracing::info!(object = %prepared.id, fields = %fields.join("; "), "re-creating");
        match self.recreate(client, prepared, opts.timeout).await {
            Ok(owned) => (Action::Recreated, Some(owned)),
            Err(message) => (Action::Failed(format!("re-creating it: {message}")), None),
        }
    }

    /// Deletes the object, waits until it is gone (within `timeout`), and applies it again.
    async fn recreate(
        &self,
        client: &Client,
        prepared: &Prepared,
        timeout: Duration,
    ) -> Result<Owned, String> {
        let api = prepared.kind.api(client, &prepared.object);
        let name = &prepared.id.name;
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.to_string()),
        }
        let deadline = Instant::now() + timeout;
        while api
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            if Instant::now() >= deadline {
                return Err(format!("still deleting after {timeout:?} (a finalizer?)"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.send(client, &prepared.kind, &prepared.object)
            .await
            .map_err(SendError::message)
    }

    /// One server-side apply, conflicts forced; returns what Capstan owns afterwards.
    async fn send(&self, client: &Client, kind: &Kind, object: &Value) -> Result<Owned, SendError> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let api = kind.api(client, object);
        owned_by_another(&api, object).await?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(name, &params, &Patch::Apply(object)).await {
            Ok(applied) => {
                let resource_version = applied
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|rv| rv.parse().ok());
                let applied = serde_json::to_value(&applied).unwrap_or_default();
                Ok(Owned {
                    fields: FieldSet::of_manager(&applied, FIELD_MANAGER, "Apply")
                        .unwrap_or_default(),
                    resource_version,
                })
            }
            Err(kube::Error::Api(s)) => {
                if s.code == 404 {
                    // The kind went away since discovery: look it up afresh next time.
                    self.kinds.lock().remove(&gvk_of(object));
                }
                let fields = immutable_fields(&s);
                Err(if fields.is_empty() {
                    SendError::Other(s.message)
                } else {
                    SendError::Immutable(fields)
                })
            }
            Err(e) => Err(SendError::Other(e.to_string())),
        }
    }

    /// What applying `manifests` would do, object by object, from a server-side dry run: the
    /// live object (if any) and the object as the apply would leave it. Nothing is changed.
    pub async fn dry_run(
        &self,
        client: &Client,
        manifests: &[Manifest],
        opts: &ApplyOptions<'_>,
    ) -> Vec<DryRun> {
        let mut out = Vec::new();
        for manifest in manifests {
            let prepared = match self.prepare(client, manifest, opts).await {
                Ok(p) => p,
                Err(message) => {
                    out.push(DryRun {
                        id: manifest_id_hint(&manifest.object),
                        live: None,
                        desired: Err(message),
                    });
                    continue;
                }
            };
            let api = prepared.kind.api(client, &prepared.object);
            let name = prepared.id.name.clone();
            let live = match api.get_opt(&name).await {
                Ok(live) => live.map(|l| serde_json::to_value(l).unwrap_or_default()),
                Err(e) => {
                    out.push(DryRun {
                        id: prepared.id,
                        live: None,
                        desired: Err(e.to_string()),
                    });
                    continue;
                }
            };
            let params = PatchParams::apply(FIELD_MANAGER).force().dry_run();
            let desired = match api
                .patch(&name, &params, &Patch::Apply(&prepared.object))
                .await
            {
                Ok(after) => Ok(serde_json::to_value(after).unwrap_or_default()),
                Err(kube::Error::Api(s)) => Err(s.message),
                Err(e) => Err(e.to_string()),
            };
            out.push(DryRun {
                id: prepared.id,
                live,
                desired,
            });
        }
        out
    }

    /// Applies an object prepared by an earlier apply again (drift correction).
    pub async fn reapply(&self, client: &Client, object: &Value) -> Result<Owned, String> {
        let (resource, caps) = self
            .kind(client, &gvk_of(object))
            .await
            .map_err(KindError::message)?;
        let kind = Kind {
            resource,
            namespaced: caps.scope == Scope::Namespaced,
        };
        self.send(client, &kind, object)
            .await
            .map_err(SendError::message)
    }

    async fn prepare(
        &self,
        client: &Client,
        manifest: &Manifest,
        opts: &ApplyOptions<'_>,
    ) -> Result<Prepared, String> {
        let mut object = manifest.object.clone();
        let gvk = gvk_of(&object);
        let (resource, caps) = self
            .kind(client, &gvk)
            .await
            .map_err(|e| format!("{} ({})", e.message(), manifest.source))?;
        let namespaced = caps.scope == Scope::Namespaced;
        if gvk.group.is_empty() && gvk.kind == "Secret" {
            string_data_to_data(&mut object);
        }
        let metadata = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| format!("{}: metadata is not a mapping", manifest.source))?;
        if namespaced {
            let ns = metadata
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            if ns.is_empty() {
                metadata.insert("namespace".into(), opts.default_namespace.into());
            }
        } else {
            metadata.remove("namespace");
        }
        for (key, value) in [
            ("labels", opts.owner.labels()),
            (
                "annotations",
                BTreeMap::from([(OWNER_ANNOTATION.to_string(), opts.owner.annotation())]),
            ),
        ] {
            let map = metadata
                .entry(key)
                .or_insert_with(|| Value::Object(Default::default()));
            if map.is_null() {
                *map = Value::Object(Default::default());
            }
            let map = map
                .as_object_mut()
                .ok_or_else(|| format!("{}: metadata.{key} is not a mapping", manifest.source))?;
            for (k, v) in value {
                map.insert(k, v.into());
            }
        }
        let id = ObjectId {
            namespace: if namespaced {
                metadata["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            } else {
                String::new()
            },
            name: metadata["name"].as_str().unwrap_or_default().to_string(),
            group: gvk.group.clone(),
            kind: gvk.kind.clone(),
        };
        let digest = digest(&object);
        object["metadata"]["annotations"][DIGEST_ANNOTATION] = format!("{digest:016x}").into();
        Ok(Prepared {
            id,
            kind: Kind {
                resource,
                namespaced,
            },
            object,
            digest,
        })
    }

    /// Deletes the inventory entries in `candidates` (already in prune order) that still carry
    /// this owner's marker and are not marked `capstan.dev/prune: disabled`. Returns the ids that
    /// are gone or released (no longer managed), and the ids still present (deleting, or failed).
    pub async fn prune(
        &self,
        client: &Client,
        candidates: &[InventoryEntry],
        owner: &Owner,
    ) -> PruneReport {
        let mut report = PruneReport::default();
        for entry in candidates {
            let result = self.prune_one(client, entry, owner).await;
            tracing::debug!(object = %entry.id, result = ?result, "prune");
            match result {
                Ok(PruneResult::Deleted) => report.deleted.push(entry.id.clone()),
                Ok(PruneResult::Released) => report.released.push(entry.id.clone()),
                Ok(PruneResult::Pending) => report.pending.push(entry.clone()),
                Err(message) => {
                    report.pending.push(entry.clone());
                    report.errors.push(PruneError {
                        id: entry.id.clone(),
                        message,
                    });
                }
            }
        }
        report
    }

    async fn prune_one(
        &self,
        client: &Client,
        entry: &InventoryEntry,
        owner: &Owner,
    ) -> Result<PruneResult, String> {
        let Some((api, id)) = self.api_for_entry(client, entry).await? else {
            // Its kind is no longer served, so the object is gone too.
            return Ok(PruneResult::Deleted);
        };
        let live = match api.get_opt(&id.name).await.map_err(|e| e.to_string())? {
            None => return Ok(PruneResult::Deleted),
            Some(live) => live,
        };
        let annotations = live.annotations();
        if annotations.get(OWNER_ANNOTATION) != Some(&owner.annotation()) {
            // Taken over by someone else: not ours to delete any more.
            return Ok(PruneResult::Released);
        }
        if annotations.get(PRUNE_ANNOTATION).map(String::as_str) == Some("disabled") {
            return Ok(PruneResult::Released);
        }
        if live.metadata.deletion_timestamp.is_some() {
            return Ok(PruneResult::Pending);
        }
        if id.group.is_empty()
            && id.kind == "Namespace"
            && let Some(held) = self.held_by_another(client, &id.name, owner).await?
        {
            // Deleting it would delete what another GitRepository manages: released instead,
            // without this owner's markers, so that the other may take it.
            tracing::warn!(namespace = %id.name, %held, "not pruning a namespace that holds another GitRepository's objects");
            unmark(&api, &id.name, owner).await?;
            return Ok(PruneResult::Released);
        }
        let params = DeleteParams {
            preconditions: live.uid().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&id.name, &params).await {
            Ok(either) => Ok(if either.is_right() {
                PruneResult::Deleted
            } else {
                // Still there with a deletionTimestamp: a finalizer holds it.
                PruneResult::Pending
            }),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(PruneResult::Deleted),
            Err(kube::Error::Api(s)) => Err(s.message),
            Err(e) => Err(e.to_string()),
        }
    }

    /// An object in `namespace` that another GitRepository manages, as `<kind> <name> (managed
    /// by <owner>)`: looked for among the namespaced kinds this process has applied.
    async fn held_by_another(
        &self,
        client: &Client,
        namespace: &str,
        owner: &Owner,
    ) -> Result<Option<String>, String> {
        let kinds: Vec<ApiResource> = self
            .kinds
            .lock()
            .values()
            .filter(|(_, caps)| {
                caps.scope == Scope::Namespaced
                    && caps.supports_operation(kube::discovery::verbs::LIST)
            })
            .map(|(resource, _)| resource.clone())
            .collect();
        let ours = owner.annotation();
        let params = kube::api::ListParams::default().labels(OWNER_NAME_LABEL);
        for resource in kinds {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), namespace, &resource);
            let listed = api
                .list_metadata(&params)
                .await
                .map_err(|e| format!("listing {} in {namespace}: {e}", resource.plural))?;
            for item in listed.items {
                match item.annotations().get(OWNER_ANNOTATION) {
                    Some(other) if *other != ours => {
                        return Ok(Some(format!(
                            "{} {} (managed by {other})",
                            resource.kind,
                            item.name_any()
                        )));
                    }
                    _ => {}
                }
            }
        }
        Ok(None)
    }

    /// Removes this owner's markers from the objects in `entries` (deletionPolicy Orphan).
    pub async fn release(
        &self,
        client: &Client,
        entries: &[InventoryEntry],
        owner: &Owner,
    ) -> Result<(), String> {
        let futures: Vec<_> = entries
            .iter()
            .map(|entry| async move {
                let Some((api, id)) = self.api_for_entry(client, entry).await? else {
                    return Ok(());
                };
                let Some(live) = api.get_opt(&id.name).await.map_err(|e| e.to_string())? else {
                    return Ok(());
                };
                if live.annotations().get(OWNER_ANNOTATION) != Some(&owner.annotation()) {
                    return Ok(());
                }
                unmark(&api, &id.name, owner)
                    .await
                    .map_err(|e| format!("{}: {e}", entry.id))
            })
            .collect();
        stream::iter(futures)
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
    }

    /// The API for an inventory entry, or None when its kind is not served (any more).
    async fn api_for_entry(
        &self,
        client: &Client,
        entry: &InventoryEntry,
    ) -> Result<Option<(Api<DynamicObject>, ObjectId)>, String> {
        let id =
            ObjectId::parse(&entry.id).ok_or_else(|| format!("bad inventory id {:?}", entry.id))?;
        let gvk = GroupVersionKind::gvk(&id.group, &entry.v, &id.kind);
        let (resource, caps) = match self.kind(client, &gvk).await {
            Ok(found) => found,
            Err(KindError::NotServed(_)) => return Ok(None),
            Err(KindError::Other(message)) => return Err(message),
        };
        let api = if caps.scope == Scope::Namespaced {
            Api::namespaced_with(client.clone(), &id.namespace, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        Ok(Some((api, id)))
    }
}

struct Outcome {
    id: ObjectId,
    version: String,
    action: Action,
    sent: Option<Sent>,
    kind: Option<Kind>,
}

#[derive(Debug)]
enum PruneResult {
    Deleted,
    Released,
    Pending,
}

#[derive(Debug, Default)]
pub struct PruneReport {
    /// Gone from the cluster.
    pub deleted: Vec<String>,
    /// Left in the cluster and no longer managed (marked prune-disabled, or owned by another).
    pub released: Vec<String>,
    /// Still in the cluster and still managed: deleting (finalizers), or the delete failed.
    pub pending: Vec<InventoryEntry>,
    pub errors: Vec<PruneError>,
}

async fn wait_established(client: &Client, name: &str, timeout: Duration) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let established = |crd: &CustomResourceDefinition| {
        crd.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if api.get(name).await.is_ok_and(|crd| established(&crd)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not Established within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Secret's `stringData` is write-only: the API server folds it into `data` and records the
/// ownership under `stringData`, where a later edit of `data` never shows as drift. Capstan sends
/// it as `data`, as the API server would store it.
fn string_data_to_data(secret: &mut Value) {
    use base64::Engine;
    let Some(map) = secret.as_object_mut() else {
        return;
    };
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let data = map
        .entry("data")
        .or_insert_with(|| Value::Object(Default::default()));
    if data.is_null() {
        *data = Value::Object(Default::default());
    }
    if let Some(data) = data.as_object_mut() {
        for (key, value) in string_data {
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            data.insert(key, Value::String(encoded));
        }
    }
}

fn api_version(object: &Value) -> &str {
    object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn gvk_of(object: &Value) -> GroupVersionKind {
    let (group, version) = match api_version(object).split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version(object)),
    };
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    GroupVersionKind::gvk(group, version, kind)
}

fn gvk_api_version(gvk: &GroupVersionKind) -> String {
    if gvk.group.is_empty() {
        gvk.version.clone()
    } else {
        format!("{}/{}", gvk.group, gvk.version)
    }
}

/// The identity as far as the manifest alone tells it (no defaulted namespace): enough to order
/// applies and to name an object whose kind could not be resolved.
fn manifest_id_hint(object: &Value) -> ObjectId {
    let gvk = gvk_of(object);
    let meta = object.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    ObjectId {
        namespace: field("namespace"),
        name: field("name"),
        group: gvk.group,
        kind: gvk.kind,
    }
}

/// A digest of exactly what would be sent (but its own annotation); serde_json maps are
/// ordered, and SHA-256 is the same for every build, so it outlives the process.
fn digest(object: &Value) -> u64 {
    crate::digest::stable_u64(object.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An invalid-request answer with these causes, as the API server writes it.
    fn invalid(causes: &[(&str, &str)]) -> kube::core::Status {
        serde_json::from_value(serde_json::json!({
            "status": "Failure",
            "code": 422,
            "reason": "Invalid",
            "message": "the object is invalid",
            "details": {"causes": causes.iter().map(|(field, message)| serde_json::json!({
                "reason": "FieldValueInvalid", "field": field, "message": message,
            })).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    #[test]
    fn immutable_fields_are_read_from_the_causes() {
        let job = invalid(&[(
            "spec.template",
            "Invalid value: core.PodTemplateSpec{...}: field is immutable",
        )]);
        assert_eq!(
            immutable_fields(&job),
            ["spec.template: field is immutable"]
        );
        let service = invalid(&[(
            "spec.clusterIPs[0]",
            "Invalid value: []string{\"10.0.0.9\"}: may not change once set",
        )]);
        assert_eq!(
            immutable_fields(&service),
            ["spec.clusterIPs[0]: may not change once set"]
        );
        let binding = invalid(&[("roleRef", "Invalid value: ...: cannot change roleRef")]);
        assert_eq!(
            immutable_fields(&binding),
            ["roleRef: cannot change roleRef"]
        );
        // Another invalid value is not a reason to re-create anything.
        let bad_port = invalid(&[(
            "spec.ports[0].port",
            "Invalid value: 0: must be between 1 and 65535, inclusive",
        )]);
        assert!(immutable_fields(&bad_port).is_empty());
        let mut conflict = job.clone();
        conflict.code = 409;
        assert!(immutable_fields(&conflict).is_empty());
    }

    #[test]
    fn long_names_are_hashed_into_label_values() {
        let owner = Owner {
            namespace: "apps".into(),
            name: "a".repeat(100),
            shard: None,
        };
        let labels = owner.labels();
        let value = &labels[OWNER_NAME_LABEL];
        // The same in every build: a label written by one version selects under the next.
        assert_eq!(value, &format!("{}-2816597888e4a0d3", "a".repeat(46)));
        assert!(value.len() <= 63, "{value}");
        let short = Owner {
            namespace: "apps".into(),
            name: "web".into(),
            shard: Some("b".into()),
        };
        assert_eq!(short.labels()[OWNER_NAME_LABEL], "web");
        assert_eq!(short.labels()[SHARD_LABEL], "b");
        assert_eq!(short.annotation(), "apps/web");
    }

    #[test]
    fn secret_string_data_is_sent_as_data() {
        let mut secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "YQ==", "b": "old"},
            "stringData": {"b": "bee", "c": "see"},
        });
        string_data_to_data(&mut secret);
        assert_eq!(
            secret["data"],
            serde_json::json!({"a": "YQ==", "b": "YmVl", "c": "c2Vl"})
        );
        assert!(secret.get("stringData").is_none());
    }

    #[test]
    fn tiers_put_crds_and_namespaces_first() {
        let crd = serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "x"}});
        let ns =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
        let cm =
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        assert_eq!(apply_tier(&manifest_id_hint(&crd)), 0);
        assert_eq!(apply_tier(&manifest_id_hint(&ns)), 0);
        assert_eq!(apply_tier(&manifest_id_hint(&cm)), 1);
    }
}
