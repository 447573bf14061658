//! Shared watches of what Capstan applied: one watch per kind (not per GitRepository or object),
//! selected by Capstan's ownership label, keeping per object only what drift and health need
//! (the fields Capstan owns and the kstatus health), never the object itself. A change wakes
//! the owning GitRepository.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::warn;

use super::fields::FieldSet;
use super::health::{Health, health};
use crate::api::{FIELD_MANAGER, GitRepository, OWNER_ANNOTATION, OWNER_NAME_LABEL};
use crate::apply::{Kind, ObjectId};

/// What the cluster shows of one managed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `<namespace>/<name>` of the owning GitRepository, from the ownership annotation.
    pub owner: String,
    /// The fields Capstan's apply owns now.
    pub fields: FieldSet,
    pub health: Health,
    /// The object's resourceVersion, read as a number.
    pub resource_version: Option<u64>,
}

pub struct Live {
    client: Client,
    namespace: Option<String>,
    watched: Mutex<HashSet<String>>,
    /// Per kind (`group/kind`) whose watch has listed everything at least once: the highest
    /// resourceVersion it has delivered.
    synced: Arc<RwLock<HashMap<String, u64>>>,
    objects: Arc<RwLock<HashMap<String, Observed>>>,
    wake: mpsc::UnboundedSender<ObjectRef<GitRepository>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

impl Live {
    /// The live state, and the stream of GitRepositories to wake when an object changes.
    pub fn new(
        client: Client,
        namespace: Option<String>,
    ) -> (Arc<Live>, UnboundedReceiverStream<ObjectRef<GitRepository>>) {
        let (wake, rx) = mpsc::unbounded_channel();
        let live = Live {
            client,
            namespace,
            watched: Mutex::default(),
            synced: Arc::default(),
            objects: Arc::default(),
            wake,
            tasks: Mutex::default(),
        };
        (Arc::new(live), UnboundedReceiverStream::new(rx))
    }

    /// What the cluster shows of `id`; None when it is not there (or its kind is not synced yet:
    /// ask `synced` first).
    pub fn observed(&self, id: &str) -> Option<Observed> {
        self.objects.read().get(id).cloned()
    }

    /// The resourceVersion the watch saw last for `id`, without copying its fields.
    pub fn resource_version(&self, id: &str) -> Option<u64> {
        self.objects.read().get(id)?.resource_version
    }

    /// Whether the watch of `id`'s kind has listed everything and delivered every event up to
    /// `resource_version` (when given): only then does absence mean deleted and do the fields
    /// mean what the cluster holds now. (resourceVersions are compared as numbers: they are
    /// etcd revisions, and Capstan talks to a kube-apiserver backed by etcd.)
    pub fn caught_up(&self, id: &ObjectId, resource_version: Option<u64>) -> bool {
        self.synced
            .read()
            .get(&format!("{}/{}", id.group, id.kind))
            .is_some_and(|seen| resource_version.is_none_or(|rv| *seen >= rv))
    }

    /// Whether objects in `namespace` are watched at all (a controller restricted to one
    /// namespace does not see the others).
    pub fn watches_namespace(&self, namespace: &str) -> bool {
        namespace.is_empty() || self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }

    /// Starts the shared watch of `kind`, once.
    pub fn watch(&self, kind: &Kind) {
        let key = format!("{}/{}", kind.resource.group, kind.resource.kind);
        if !self.watched.lock().insert(key.clone()) {
            return;
        }
        fn api<
            K: kube::Resource<
                    DynamicType = kube::api::ApiResource,
                    Scope = kube::core::DynamicResourceScope,
                >,
        >(
            client: &Client,
            namespace: Option<&str>,
            resource: &kube::api::ApiResource,
        ) -> Api<K> {
            match namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
                None => Api::all_with(client.clone(), resource),
            }
        }
        let namespace = self.namespace.as_deref().filter(|_| kind.namespaced);
        let events = if has_status(&kind.resource.group, &kind.resource.kind) {
            let api: Api<DynamicObject> = api(&self.client, namespace, &kind.resource);
            watcher(api, watcher::Config::default().labels(OWNER_NAME_LABEL))
                .default_backoff()
                .boxed()
        } else {
            // Kinds without status need no more than metadata (managed fields included): a
            // Secret's data never crosses the wire to Capstan.
            let api: Api<PartialObjectMeta<DynamicObject>> =
                api(&self.client, namespace, &kind.resource);
            watcher(api, watcher::Config::default().labels(OWNER_NAME_LABEL))
                .default_backoff()
                .map(|event| event.map(|e| map_event(e, metadata_only)))
                .boxed()
        };
        let (objects, synced, wake) =
            (self.objects.clone(), self.synced.clone(), self.wake.clone());
        let (group, kind_name) = (kind.resource.group.clone(), kind.resource.kind.clone());
        let types = kube::api::TypeMeta {
            api_version: kind.resource.api_version.clone(),
            kind: kind.resource.kind.clone(),
        };
        let task = tokio::spawn(async move {
            let mut listing: Option<HashSet<String>> = None;
            let mut events = events;
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        warn!(kind = %key, error = %e, "watch failed; retrying");
                        continue;
                    }
                };
                let id_of = |obj: &DynamicObject| {
                    ObjectId {
                        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
                        name: obj.metadata.name.clone().unwrap_or_default(),
                        group: group.clone(),
                        kind: kind_name.clone(),
                    }
                    .to_string()
                };
                match event {
                    watcher::Event::Init => listing = Some(HashSet::new()),
                    watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                        let id = id_of(&obj);
                        if let Some(seen) = listing.as_mut() {
                            seen.insert(id.clone());
                        }
                        let observed = observe(obj, &types);
                        if let Some(rv) = observed.resource_version {
                            let mut synced = synced.write();
                            if let Some(seen) = synced.get_mut(&key) {
                                *seen = (*seen).max(rv);
                            }
                        }
                        let previous = objects.write().insert(id, observed.clone());
                        if previous.as_ref() != Some(&observed) {
                            wake_owner(&wake, &observed.owner);
                        }
                    }
                    watcher::Event::Delete(obj) => {
                        let rv = obj
                            .metadata
                            .resource_version
                            .as_deref()
                            .and_then(|v| v.parse::<u64>().ok());
                        if let (Some(rv), Some(seen)) = (rv, synced.write().get_mut(&key)) {
                            *seen = (*seen).max(rv);
                        }
                        let removed = objects.write().remove(&id_of(&obj));
                        if let Some(gone) = removed {
                            wake_owner(&wake, &gone.owner);
                        }
                    }
                    watcher::Event::InitDone => {
                        // After a re-list (e.g. 410 Gone), what was not listed is gone.
                        let seen = listing.take().unwrap_or_default();
                        let prefix_kind = format!("_{group}_{kind_name}");
                        let mut map = objects.write();
                        let stale: Vec<String> = map
                            .keys()
                            .filter(|id| id.ends_with(&prefix_kind) && !seen.contains(*id))
                            .cloned()
                            .collect();
                        for id in stale {
                            if let Some(gone) = map.remove(&id) {
                                wake_owner(&wake, &gone.owner);
                            }
                        }
                        let latest = map
                            .iter()
                            .filter(|(id, _)| id.ends_with(&prefix_kind))
                            .filter_map(|(_, o)| o.resource_version)
                            .max()
                            .unwrap_or(0);
                        // Now that the kind is listed, its owners can judge drift and health.
                        for id in &seen {
                            if let Some(o) = map.get(id) {
                                wake_owner(&wake, &o.owner);
                            }
                        }
                        drop(map);
                        let mut synced = synced.write();
                        let entry = synced.entry(key.clone()).or_insert(0);
                        *entry = (*entry).max(latest);
                    }
                }
            }
        });
        self.tasks.lock().push(task);
    }
}

/// Whether health rules read the kind's status; the others are watched by metadata only.
fn has_status(group: &str, kind: &str) -> bool {
    !matches!(
        (group, kind),
        (
            "",
            "ConfigMap" | "Secret" | "ServiceAccount" | "Endpoints" | "LimitRange"
        ) | ("rbac.authorization.k8s.io", _)
            | ("networking.k8s.io", "NetworkPolicy")
            | ("scheduling.k8s.io", "PriorityClass")
            | ("storage.k8s.io", "StorageClass")
    )
}

fn metadata_only(meta: PartialObjectMeta<DynamicObject>) -> DynamicObject {
    DynamicObject {
        types: None,
        metadata: meta.metadata,
        data: serde_json::Value::Null,
    }
}

fn map_event<A, B>(event: watcher::Event<A>, f: impl Fn(A) -> B) -> watcher::Event<B> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(f(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(f(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(f(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn observe(mut obj: DynamicObject, types: &kube::api::TypeMeta) -> Observed {
    // Listed items come without apiVersion and kind; health rules go by them.
    obj.types.get_or_insert_with(|| types.clone());
    let value = serde_json::to_value(&obj).unwrap_or_default();
    Observed {
        owner: obj
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OWNER_ANNOTATION))
            .cloned()
            .unwrap_or_default(),
        // The API server drops a manager's entry once others took all its fields: that is
        // an empty set, the worst drift, not "unknown".
        fields: FieldSet::of_manager(&value, FIELD_MANAGER, "Apply").unwrap_or_default(),
        health: health(&value),
        resource_version: obj
            .metadata
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok()),
    }
}

fn wake_owner(wake: &mpsc::UnboundedSender<ObjectRef<GitRepository>>, owner: &str) {
    if let Some((ns, name)) = owner.split_once('/') {
        let _ = wake.send(ObjectRef::new(name).within(ns));
    }
}
