//! `dependsOn`: whether the GitRepositories one depends on are Ready at their latest revision,
//! read from the controller's cache of GitRepositories (no request to the API server), and which
//! GitRepositories to look at again when one of them changes, so that a dependent applies as soon
//! as its dependencies are ready rather than at its next retry.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::failure::Failure;
use crate::api::GitRepository;
use crate::status;

/// `<namespace>/<name>` of a GitRepository.
type Key = String;

fn key(gr: &GitRepository) -> Key {
    format!("{}/{}", gr.namespace().unwrap_or_default(), gr.name_any())
}

/// The dependencies of `gr`, as keys; a reference without a namespace is in `gr`'s.
fn dependencies(gr: &GitRepository) -> Vec<Key> {
    let namespace = gr.namespace().unwrap_or_default();
    gr.spec
        .depends_on
        .iter()
        .map(|d| format!("{}/{}", d.namespace.as_ref().unwrap_or(&namespace), d.name))
        .collect()
}

fn get(store: &Store<GitRepository>, key: &str) -> Option<std::sync::Arc<GitRepository>> {
    let (namespace, name) = key.split_once('/')?;
    store.get(&ObjectRef::new(name).within(namespace))
}

/// Refuses to go on while a dependency of `gr` is missing, not Ready at its latest revision, or
/// depends on `gr` in turn (a cycle, which only a change of a spec can break).
pub(super) fn check(gr: &GitRepository, store: &Store<GitRepository>) -> Result<(), Failure> {
    if gr.spec.depends_on.is_empty() {
        return Ok(());
    }
    if let Some(cycle) = cycle(gr, store) {
        return Err(Failure::DependencyCycle(cycle.join(" -> ")));
    }
    let waiting: Vec<String> = dependencies(gr)
        .into_iter()
        .filter_map(|dep| match get(store, &dep) {
            None => Some(format!("{dep} not found")),
            Some(found) => not_ready(&found).map(|why| format!("{dep} {why}")),
        })
        .collect();
    match waiting.is_empty() {
        true => Ok(()),
        false => Err(Failure::DependencyNotReady(waiting.join("; "))),
    }
}

/// Why `dep` is not Ready at its latest revision, or `None` when it is.
fn not_ready(dep: &GitRepository) -> Option<String> {
    if dep.metadata.deletion_timestamp.is_some() {
        return Some("is being deleted".into());
    }
    let status = dep.status.as_ref();
    let Some(ready) = status::ready(status) else {
        return Some("has not been reconciled yet".into());
    };
    if ready.status != "True" {
        return Some(format!(
            "is not Ready ({}: {})",
            ready.reason, ready.message
        ));
    }
    let status = status?;
    if status.observed_generation != dep.metadata.generation {
        return Some("has not applied its latest spec yet".into());
    }
    if status.last_applied_revision != status.last_attempted_revision {
        let latest = status.last_attempted_revision.as_deref().unwrap_or("?");
        return Some(format!("has not applied its latest revision {latest} yet"));
    }
    None
}

/// The path from `gr` back to itself through `dependsOn`, if there is one.
fn cycle(gr: &GitRepository, store: &Store<GitRepository>) -> Option<Vec<Key>> {
    let start = key(gr);
    let mut path = vec![start.clone()];
    let mut pending = vec![dependencies(gr).into_iter()];
    let mut seen = HashSet::new();
    while let Some(next) = pending.last_mut() {
        let Some(dep) = next.next() else {
            pending.pop();
            path.pop();
            continue;
        };
        if dep == start {
            path.push(dep);
            return Some(path);
        }
        if !seen.insert(dep.clone()) {
            continue;
        }
        if let Some(found) = get(store, &dep) {
            path.push(dep);
            pending.push(dependencies(&found).into_iter());
        }
    }
    None
}

/// How long after its own deletion a GitRepository waits for those depending on it to be
/// deleted too: deletions this close together (`kubectl delete -f`, a namespace deleted) are
/// one, whatever order their requests or their watch events came in.
const DELETED_TOGETHER: Duration = Duration::from_secs(5);

/// Every GitRepository `gr` depends on, directly or through others (`gr` itself when it is on a
/// cycle).
fn closure(gr: &GitRepository, store: &Store<GitRepository>) -> HashSet<Key> {
    let mut seen = HashSet::new();
    let mut pending = dependencies(gr);
    while let Some(dep) = pending.pop() {
        if seen.insert(dep.clone())
            && let Some(found) = get(store, &dep)
        {
            pending.extend(dependencies(&found));
        }
    }
    seen
}

/// GitRepositories depending on `gr` whose objects go first: those being deleted, and, while
/// `gr`'s own deletion is recent, any that may yet be. None that `gr` depends on in turn (a
/// cycle): each would wait for the other.
pub(super) fn deleted_first(
    gr: &GitRepository,
    store: &Store<GitRepository>,
    now: Timestamp,
) -> Vec<Key> {
    let me = key(gr);
    let upstream = closure(gr, store);
    let recent = gr
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| now.duration_since(t.0).try_into().ok())
        .is_none_or(|since: Duration| since < DELETED_TOGETHER);
    let mut waiting: Vec<Key> = store
        .state()
        .iter()
        .filter(|other| recent || other.metadata.deletion_timestamp.is_some())
        .filter(|other| dependencies(other).contains(&me))
        .map(|other| key(other))
        .filter(|other| *other != me && !upstream.contains(other))
        .collect();
    waiting.sort();
    waiting
}

/// Who depends on whom, kept from the watch of GitRepositories, to know whom a change wakes.
#[derive(Default)]
pub(crate) struct Dependents {
    /// Each GitRepository's dependencies, as last seen.
    dependencies: HashMap<Key, Vec<Key>>,
    /// The reverse: who depends on each.
    dependents: HashMap<Key, HashSet<Key>>,
}

impl Dependents {
    /// `gr` was created or changed: the GitRepositories to look at again. Its dependents, when it
    /// is Ready at its latest revision (they may apply now) or its own dependencies changed (a
    /// cycle through it may be broken).
    pub(crate) fn changed(&mut self, gr: &GitRepository) -> Vec<Key> {
        let me = key(gr);
        let now = dependencies(gr);
        let before = self.set(&me, now);
        let wake = not_ready(gr).is_none() || before != self.dependencies.get(&me).cloned();
        match wake {
            true => self.dependents_of(&me),
            false => Vec::new(),
        }
    }

    /// `gr` is gone: its dependencies, which may have been waiting for it to be deleted first.
    pub(crate) fn deleted(&mut self, gr: &GitRepository) -> Vec<Key> {
        self.set(&key(gr), Vec::new()).unwrap_or_default()
    }

    /// Records `deps` as `gr`'s dependencies, returning those it had before.
    fn set(&mut self, gr: &Key, deps: Vec<Key>) -> Option<Vec<Key>> {
        let before = match deps.is_empty() {
            true => self.dependencies.remove(gr),
            false => self.dependencies.insert(gr.clone(), deps.clone()),
        };
        for dep in before.iter().flatten() {
            if let Some(set) = self.dependents.get_mut(dep) {
                set.remove(gr);
                if set.is_empty() {
                    self.dependents.remove(dep);
                }
            }
        }
        for dep in deps {
            self.dependents.entry(dep).or_default().insert(gr.clone());
        }
        before
    }

    fn dependents_of(&self, gr: &Key) -> Vec<Key> {
        let mut keys: Vec<Key> = self
            .dependents
            .get(gr)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        keys.sort();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    /// A GitRepository `team/<name>` depending on `deps`, Ready at its latest revision or not.
    fn repo(name: &str, deps: &[&str], ready: bool) -> GitRepository {
        let deps: Vec<serde_json::Value> = deps
            .iter()
            .map(|d| match d.split_once('/') {
                Some((ns, n)) => serde_json::json!({"name": n, "namespace": ns}),
                None => serde_json::json!({"name": d}),
            })
            .collect();
        crate::git_repository(serde_json::json!({
            "metadata": {"name": name, "namespace": "team", "generation": 2},
            "spec": {"url": "https://git.example/app", "interval": "1m", "dependsOn": deps},
            "status": {
                "observedGeneration": 2,
                "lastAppliedRevision": "main@sha1:1",
                "lastAttemptedRevision": if ready { "main@sha1:1" } else { "main@sha1:2" },
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "ReconciliationSucceeded",
                    "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"
                }],
            },
        }))
    }

    fn cache(repos: Vec<GitRepository>) -> Store<GitRepository> {
        let (reader, mut writer) = store();
        writer.apply_watcher_event(&Event::Init);
        for gr in repos {
            writer.apply_watcher_event(&Event::InitApply(gr));
        }
        writer.apply_watcher_event(&Event::InitDone);
        reader
    }

    fn message(result: Result<(), Failure>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn waits_for_each_dependency_until_ready_at_its_latest_revision() {
        let app = repo("app", &["crds", "infra/db"], true);
        let store = cache(vec![repo("crds", &[], false), app.clone()]);
        let refused = message(check(&app, &store));
        assert!(
            refused.contains("team/crds has not applied its latest revision main@sha1:2"),
            "{refused}"
        );
        assert!(refused.contains("infra/db not found"), "{refused}");

        let mut db = repo("db", &[], true);
        db.metadata.namespace = Some("infra".into());
        let store = cache(vec![repo("crds", &[], true), db.clone(), app.clone()]);
        assert!(check(&app, &store).is_ok());

        db.metadata.generation = Some(3);
        let store = cache(vec![repo("crds", &[], true), db, app.clone()]);
        assert!(message(check(&app, &store)).contains("infra/db has not applied its latest spec"));
    }

    #[test]
    fn a_cycle_is_printed_from_the_repository_back_to_itself() {
        let a = repo("a", &["b"], true);
        let store = cache(vec![
            a.clone(),
            repo("b", &["c", "d"], true),
            repo("c", &[], true),
            repo("d", &["a"], true),
        ]);
        let refused = check(&a, &store).expect_err("a cycle");
        assert!(refused.stalls());
        assert_eq!(
            refused.to_string(),
            "dependency cycle: team/a -> team/b -> team/d -> team/a"
        );
        let own = repo("self", &["self"], true);
        assert_eq!(
            message(check(&own, &cache(vec![own.clone()]))),
            "dependency cycle: team/self -> team/self"
        );
    }

    #[test]
    fn dependents_deleted_together_go_first() {
        let deleted_at = |gr: &mut GitRepository, at: &str| {
            gr.metadata.deletion_timestamp = Some(Time(at.parse().unwrap()));
        };
        let mut crds = repo("crds", &[], true);
        deleted_at(&mut crds, "2026-01-01T00:00:00Z");
        let mut app = repo("app", &["crds"], true);
        let web = repo("web", &["crds"], true);
        let first = |app: &GitRepository, at: &str| {
            let store = cache(vec![crds.clone(), app.clone(), web.clone()]);
            deleted_first(&crds, &store, at.parse().unwrap())
        };
        // Just deleted: any dependent may be deleted with it.
        assert_eq!(
            first(&app, "2026-01-01T00:00:02Z"),
            ["team/app", "team/web"]
        );
        // Later, only those being deleted hold it back.
        assert!(first(&app, "2026-01-01T00:00:06Z").is_empty());
        deleted_at(&mut app, "2026-01-01T00:00:01Z");
        assert_eq!(first(&app, "2026-01-01T00:00:06Z"), ["team/app"]);

        // On a cycle, or depending on itself, nobody waits for anybody.
        let mut a = repo("a", &["a", "b"], true);
        let mut b = repo("b", &["c"], true);
        let mut c = repo("c", &["a"], true);
        for gr in [&mut a, &mut b, &mut c] {
            deleted_at(gr, "2026-01-01T00:00:00Z");
        }
        let store = cache(vec![a.clone(), b.clone(), c.clone()]);
        for gr in [&a, &b, &c] {
            let at = "2026-01-01T00:00:02Z".parse().unwrap();
            assert!(deleted_first(gr, &store, at).is_empty(), "{}", key(gr));
        }
    }

    #[test]
    fn a_dependency_wakes_its_dependents_once_ready_or_rewired() {
        let mut dependents = Dependents::default();
        assert!(
            dependents
                .changed(&repo("app", &["crds"], false))
                .is_empty()
        );
        assert!(
            dependents
                .changed(&repo("web", &["crds"], false))
                .is_empty()
        );
        // Not ready yet: nobody can go on.
        assert!(dependents.changed(&repo("crds", &[], false)).is_empty());
        assert_eq!(
            dependents.changed(&repo("crds", &[], true)),
            ["team/app", "team/web"]
        );
        // web no longer depends on crds; app's dependencies changed, so its dependents (none)
        // are looked at again.
        assert!(dependents.changed(&repo("web", &[], false)).is_empty());
        assert_eq!(dependents.changed(&repo("crds", &[], true)), ["team/app"]);
        assert_eq!(
            dependents.changed(&repo("base", &["app"], false)),
            [] as [&str; 0]
        );
        assert_eq!(dependents.changed(&repo("app", &[], false)), ["team/base"]);
        // Gone: what it depended on may have been waiting for it.
        assert_eq!(
            dependents.deleted(&repo("base", &["app"], false)),
            ["team/app"]
        );
        assert!(dependents.deleted(&repo("base", &[], false)).is_empty());
    }
}
