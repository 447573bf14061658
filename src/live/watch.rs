//! Shared watches of what Capstan applied: one watch per kind (not per GitRepository or object),
//! selected by Capstan's ownership label, keeping per object only what drift and health need
//! (the fields Capstan owns and the kstatus health), and the object itself only for custom
//! resources, which health expressions (`healthCheckExprs`) read. A change wakes the owning
//! GitRepository.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use parking_lot::{Mutex, RwLock};
use tracing::warn;

use super::health::{Health, group_of, has_status, health, judged_by_exprs};
use super::wakes::Wakes;
use crate::api::{
    DIGEST_ANNOTATION, FIELD_MANAGER, GitRepository, OWNER_ANNOTATION, OWNER_NAME_LABEL,
    SHARD_LABEL,
};
use crate::object::fields::FieldSet;
use crate::object::{Kind, ObjectId};

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
    /// A custom resource (a kind without rules of its own), without its managed fields.
    pub custom: Option<Arc<serde_json::Value>>,
    /// The digest of what Capstan applied last, from its annotation.
    pub applied: Option<u64>,
}

pub struct Live {
    client: Client,
    namespace: Option<String>,
    /// Selects the objects of this controller's shard (or of none, without `--shard`).
    selector: String,
    watched: Mutex<HashSet<String>>,
    /// Per kind (`group/kind`) whose watch has listed everything at least once: the highest
    /// resourceVersion it has delivered.
    synced: Arc<RwLock<HashMap<String, u64>>>,
    objects: Arc<RwLock<HashMap<String, Observed>>>,
    wakes: Arc<Wakes>,
    /// Why the cluster's watches fail to reach it, since they began to (see [`unreachable`]).
    down: Arc<RwLock<Option<String>>>,
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
        shard: Option<&str>,
    ) -> (
        Arc<Live>,
        impl futures::Stream<Item = ObjectRef<GitRepository>> + Send + 'static,
    ) {
        let wakes = Arc::new(Wakes::default());
        let live = Live {
            client,
            namespace,
            selector: match shard {
                Some(shard) => format!("{OWNER_NAME_LABEL},{SHARD_LABEL}={shard}"),
                None => format!("{OWNER_NAME_LABEL},!{SHARD_LABEL}"),
            },
            watched: Mutex::default(),
            synced: Arc::default(),
            objects: Arc::default(),
            wakes: wakes.clone(),
            down: Arc::default(),
            tasks: Mutex::default(),
        };
        (Arc::new(live), wakes.stream())
    }

    /// The live state of another cluster (a remote one) as `client` reaches it: the same
    /// selection, in every namespace, waking GitRepositories through the same stream.
    pub fn sibling(&self, client: Client) -> Arc<Live> {
        Arc::new(Live {
            client,
            namespace: None,
            selector: self.selector.clone(),
            watched: Mutex::default(),
            synced: Arc::default(),
            objects: Arc::default(),
            wakes: self.wakes.clone(),
            down: Arc::default(),
            tasks: Mutex::default(),
        })
    }

    /// Why the watches cannot reach the cluster (no connection, or the credentials refused),
    /// from the last failure since [`Live::reached`]; the owners of what is watched were woken
    /// when it began.
    pub fn down(&self) -> Option<String> {
        self.down.read().clone()
    }

    /// The cluster answered (a request of the reconcile's own): the watches recover by
    /// themselves.
    pub fn reached(&self) {
        self.down.write().take();
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
        let namespace = self.namespace.as_deref().filter(|_| kind.namespaced);
        let config = || watcher::Config::default().labels(&self.selector);
        let mut events = if has_status(&kind.resource.group, &kind.resource.kind) {
            let api: Api<DynamicObject> = api(&self.client, namespace, &kind.resource);
            watcher(api, config()).default_backoff().boxed()
        } else {
            // Kinds without status need no more than metadata (managed fields included): a
            // Secret's data never crosses the wire to Capstan.
            let api: Api<PartialObjectMeta<DynamicObject>> =
                api(&self.client, namespace, &kind.resource);
            watcher(api, config())
                .default_backoff()
                .map(|event| event.map(|e| map_event(e, metadata_only)))
                .boxed()
        };
        let mut watch = KindWatch {
            key,
            group: kind.resource.group.clone(),
            kind: kind.resource.kind.clone(),
            types: kube::api::TypeMeta {
                api_version: kind.resource.api_version.clone(),
                kind: kind.resource.kind.clone(),
            },
            objects: self.objects.clone(),
            synced: self.synced.clone(),
            wakes: self.wakes.clone(),
            listing: None,
        };
        let down = self.down.clone();
        let task = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => watch.handle(event),
                    Err(e) => {
                        warn!(kind = %watch.key, error = %e, "watch failed; retrying");
                        if let Some(why) = unreachable(&e) {
                            let began = down.write().replace(why).is_none();
                            if began {
                                watch.wake_all();
                            }
                        }
                    }
                }
            }
        });
        self.tasks.lock().push(task);
    }
}

fn api<K>(client: &Client, namespace: Option<&str>, resource: &kube::api::ApiResource) -> Api<K>
where
    K: kube::Resource<
            DynamicType = kube::api::ApiResource,
            Scope = kube::core::DynamicResourceScope,
        >,
{
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

/// The watch of one kind: folds its events into the shared view and wakes the owners of what
/// changed.
struct KindWatch {
    /// `group/kind`.
    key: String,
    group: String,
    kind: String,
    types: kube::api::TypeMeta,
    objects: Arc<RwLock<HashMap<String, Observed>>>,
    synced: Arc<RwLock<HashMap<String, u64>>>,
    wakes: Arc<Wakes>,
    /// During a (re-)list: the ids listed so far.
    listing: Option<HashSet<String>>,
}

/// Why a watch's failure means the cluster cannot be reached: no connection (refused, reset,
/// timed out, TLS) or credentials refused (401). An error the API server answered with
/// otherwise (403 for one kind, 410 Gone) is about the watch, not the cluster.
fn unreachable(error: &watcher::Error) -> Option<String> {
    let e = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        watcher::Error::WatchError(_) | watcher::Error::NoResourceVersion => return None,
    };
    match e {
        kube::Error::Api(status) if status.code != 401 => None,
        e => Some(e.to_string()),
    }
}

impl KindWatch {
    /// Wakes the owner of everything watched, of every kind.
    fn wake_all(&self) {
        let owners: HashSet<String> = self
            .objects
            .read()
            .values()
            .map(|o| o.owner.clone())
            .collect();
        for owner in owners {
            self.wakes.wake(&owner);
        }
    }

    fn handle(&mut self, event: watcher::Event<DynamicObject>) {
        match event {
            watcher::Event::Init => self.listing = Some(HashSet::new()),
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => self.apply(obj),
            watcher::Event::Delete(obj) => self.delete(&obj),
            watcher::Event::InitDone => self.listed(),
        }
    }

    fn id_of(&self, obj: &DynamicObject) -> String {
        ObjectId {
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
            group: self.group.clone(),
            kind: self.kind.clone(),
        }
        .to_string()
    }

    fn seen_up_to(&self, resource_version: Option<u64>) {
        if let (Some(rv), Some(seen)) = (resource_version, self.synced.write().get_mut(&self.key)) {
            *seen = (*seen).max(rv);
        }
    }

    fn apply(&mut self, obj: DynamicObject) {
        let id = self.id_of(&obj);
        if let Some(seen) = self.listing.as_mut() {
            seen.insert(id.clone());
        }
        let observed = observe(obj, &self.types);
        self.seen_up_to(observed.resource_version);
        let previous = self.objects.write().insert(id, observed.clone());
        if previous.as_ref() != Some(&observed) {
            self.wakes.wake(&observed.owner);
        }
    }

    fn delete(&mut self, obj: &DynamicObject) {
        let rv = obj.metadata.resource_version.as_deref();
        self.seen_up_to(rv.and_then(|v| v.parse::<u64>().ok()));
        let removed = self.objects.write().remove(&self.id_of(obj));
        if let Some(gone) = removed {
            self.wakes.wake(&gone.owner);
        }
    }

    /// A (re-)list is complete: what it did not list is gone (e.g. after 410 Gone), and the
    /// kind's owners can judge drift and health now.
    fn listed(&mut self) {
        let seen = self.listing.take().unwrap_or_default();
        let suffix = format!("_{}_{}", self.group, self.kind);
        let mut map = self.objects.write();
        let stale: Vec<String> = map
            .keys()
            .filter(|id| id.ends_with(&suffix) && !seen.contains(*id))
            .cloned()
            .collect();
        for id in stale {
            if let Some(gone) = map.remove(&id) {
                self.wakes.wake(&gone.owner);
            }
        }
        let latest = map
            .iter()
            .filter(|(id, _)| id.ends_with(&suffix))
            .filter_map(|(_, o)| o.resource_version)
            .max()
            .unwrap_or(0);
        for id in &seen {
            if let Some(o) = map.get(id) {
                self.wakes.wake(&o.owner);
            }
        }
        drop(map);
        let mut synced = self.synced.write();
        let entry = synced.entry(self.key.clone()).or_insert(0);
        *entry = (*entry).max(latest);
    }
}

/// Whether health rules read the kind's status; the others are watched by metadata only.
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
    let custom = judged_by_exprs(group_of(&types.api_version), &types.kind).then(|| {
        let mut object = value.clone();
        if let Some(metadata) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            metadata.remove("managedFields");
        }
        Arc::new(object)
    });
    let annotation = |name| obj.metadata.annotations.as_ref()?.get(name);
    let applied = annotation(DIGEST_ANNOTATION).and_then(|d| u64::from_str_radix(d, 16).ok());
    let owner = annotation(OWNER_ANNOTATION).cloned().unwrap_or_default();
    Observed {
        custom,
        applied,
        owner,
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
