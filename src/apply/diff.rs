//! What an apply would change: per object, the fields that differ between the live object and
//! the server's dry run of the apply, and what a prune would remove. `capstan diff` and the
//! controller's pull-request previews compute it here, and show it the same way.

use std::collections::HashSet;
use std::time::Duration;

use kube::{Client, ResourceExt};
use serde_json::Value;

use super::{Applier, ApplyOptions, Owner};
use crate::api::GitRepository;
use crate::object::ObjectId;
use crate::render::Manifest;

/// What applying would do to one object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectDiff {
    /// `Kind namespace/name`.
    pub object: String,
    pub action: Action,
    pub changes: Vec<Change>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Changed,
    Unchanged,
    Pruned,
    /// The server refused the dry run (or the object could not be prepared for it).
    Failed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Changed => "changed",
            Action::Unchanged => "unchanged",
            Action::Pruned => "pruned",
            Action::Failed => "failed",
        }
    }
}

/// The server-side dry run of `manifests` as `gr` would apply them through `client`, and what
/// it would prune of `managed` (inventory ids) when `spec.prune` is set. Nothing is changed.
pub async fn dry_run(
    applier: &Applier,
    client: &Client,
    gr: &GitRepository,
    managed: &[String],
    manifests: &[Manifest],
    timeout: Duration,
) -> Vec<ObjectDiff> {
    let ns = gr.namespace().unwrap_or_default();
    let owner = Owner::of(gr);
    let default_namespace = gr.spec.target_namespace.clone().unwrap_or(ns);
    let (previous, digests, versions) = (HashSet::new(), Default::default(), Default::default());
    let opts = ApplyOptions {
        owner: &owner,
        default_namespace: &default_namespace,
        previous: &previous,
        previous_digests: &digests,
        previous_versions: &versions,
        timeout,
        force: gr.spec.force,
    };
    let dry = applier.dry_run(client, manifests, &opts).await;
    let diff = |object, action, changes, error| ObjectDiff {
        object,
        action,
        changes,
        error,
    };
    let mut report = Vec::new();
    let mut rendered = HashSet::new();
    for object in &dry {
        rendered.insert(object.id.to_string());
        let what = describe(&object.id);
        report.push(match (&object.live, &object.desired) {
            (_, Err(message)) => diff(what, Action::Failed, vec![], Some(message.clone())),
            (None, Ok(_)) => diff(what, Action::Created, vec![], None),
            (Some(live), Ok(desired)) => {
                let c = changes(live, desired);
                let action = match c.is_empty() {
                    true => Action::Unchanged,
                    false => Action::Changed,
                };
                diff(what, action, c, None)
            }
        });
    }
    if gr.spec.prune {
        for id in managed.iter().filter(|id| !rendered.contains(*id)) {
            if let Some(id) = ObjectId::parse(id) {
                report.push(diff(describe(&id), Action::Pruned, vec![], None));
            }
        }
    }
    report
}

fn describe(id: &ObjectId) -> String {
    if id.namespace.is_empty() {
        format!("{} {}", id.kind, id.name)
    } else {
        format!("{} {}/{}", id.kind, id.namespace, id.name)
    }
}

/// `1 changed, 2 created, 1 would be pruned` (and how many failed), or `no change to N
/// objects`.
pub fn summary(report: &[ObjectDiff]) -> String {
    let count = |a: Action| report.iter().filter(|d| d.action == a).count();
    let parts: Vec<String> = [
        (Action::Changed, "changed"),
        (Action::Created, "created"),
        (Action::Pruned, "would be pruned"),
        (Action::Failed, "failed the dry run"),
    ]
    .into_iter()
    .filter(|(a, _)| count(*a) > 0)
    .map(|(a, what)| format!("{} {what}", count(a)))
    .collect();
    match parts.is_empty() {
        true => format!("no change to {} objects", report.len()),
        false => parts.join(", "),
    }
}

/// The objects that would change, one line each with their changed fields under them, as
/// `capstan diff` prints them; `paint` colours an action (ANSI codes, or none).
pub fn text(report: &[ObjectDiff], paint: impl Fn(&str, &str) -> String) -> String {
    let mut out = String::new();
    for d in report {
        let code = match d.action {
            Action::Created => "32",
            Action::Changed => "33",
            Action::Pruned | Action::Failed => "31",
            Action::Unchanged => continue,
        };
        out.push_str(&format!(
            "{}: {}\n",
            d.object,
            paint(code, d.action.as_str())
        ));
        for c in &d.changes {
            let (live, desired) = (shown(&c.live), shown(&c.desired));
            out.push_str(&format!("  {}: {live} → {desired}\n", c.path));
        }
        if let Some(error) = &d.error {
            out.push_str(&format!("  {error}\n"));
        }
    }
    out
}

fn shown(value: &Option<Value>) -> String {
    match value {
        None => "(absent)".into(),
        Some(Value::String(s)) if s == REDACTED => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// One field that would change. `None` on a side: the field is absent there.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `.spec.replicas`, `.data["app.conf"]`, `.spec.containers[0].image`.
    pub path: String,
    pub live: Option<Value>,
    pub desired: Option<Value>,
}

/// Shown instead of a Secret's values.
pub const REDACTED: &str = "(redacted)";

/// Where a Secret holds values (or copies of them), and the parents of those paths.
const SECRET_FIELDS: &[&str] = &[".data", ".stringData", ".metadata.annotations"];

/// Metadata the server maintains: it differs after any write and means nothing to the user.
const SERVER_FIELDS: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "uid",
];

/// The fields of `desired` that differ from `live`. The server's own metadata and `status` are
/// left out; the values under a Secret's `data`, `stringData` and annotations (where
/// `kubectl apply` keeps a copy of the whole Secret) are replaced by [`REDACTED`].
pub fn changes(live: &Value, desired: &Value) -> Vec<Change> {
    let secret = desired["kind"] == "Secret" && desired["apiVersion"] == "v1";
    // Capstan's own record of what it sent changes with every change; it is not one.
    let (live, desired) = (without_digest(live), without_digest(desired));
    let mut out = Vec::new();
    walk(&live, &desired, String::new(), 0, &mut out);
    out.retain(|c| !ignored(&c.path));
    if secret {
        for change in &mut out {
            if SECRET_FIELDS
                .iter()
                .any(|f| change.path.starts_with(f) || f.starts_with(change.path.as_str()))
            {
                let redact = |v: &mut Option<Value>| {
                    if v.is_some() {
                        *v = Some(Value::String(REDACTED.into()));
                    }
                };
                redact(&mut change.live);
                redact(&mut change.desired);
            }
        }
    }
    out
}

fn without_digest(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(annotations) = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove(crate::api::DIGEST_ANNOTATION);
        if annotations.is_empty()
            && let Some(metadata) = object["metadata"].as_object_mut()
        {
            metadata.remove("annotations");
        }
    }
    object
}

fn ignored(path: &str) -> bool {
    path == ".status"
        || path.starts_with(".status.")
        || path.starts_with(".status[")
        || SERVER_FIELDS.iter().any(|f| {
            let field = format!(".metadata.{f}");
            path == field
                || path.starts_with(&format!("{field}."))
                || path.starts_with(&format!("{field}["))
        })
}

fn walk(live: &Value, desired: &Value, path: String, depth: usize, out: &mut Vec<Change>) {
    if live == desired {
        return;
    }
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) if depth < 64 => {
            let mut keys: Vec<&String> = l.keys().chain(d.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let p = format!("{path}{}", segment(key));
                match (l.get(key), d.get(key)) {
                    (Some(a), Some(b)) => walk(a, b, p, depth + 1, out),
                    (a, b) => out.push(Change {
                        path: p,
                        live: a.cloned(),
                        desired: b.cloned(),
                    }),
                }
            }
        }
        (Value::Array(l), Value::Array(d)) if l.len() == d.len() && depth < 64 => {
            for (i, (a, b)) in l.iter().zip(d).enumerate() {
                walk(a, b, format!("{path}[{i}]"), depth + 1, out);
            }
        }
        _ => out.push(Change {
            path: if path.is_empty() { ".".into() } else { path },
            live: Some(live.clone()),
            desired: Some(desired.clone()),
        }),
    }
}

fn segment(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        format!(".{key}")
    } else {
        format!("[{key:?}]")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn changed_added_and_removed_fields_are_listed() {
        let live = json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "a", "resourceVersion": "1", "labels": {"x": "1"}},
            "data": {"a": "1", "b": "2", "app.conf": "old"}});
        let desired = json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "a", "resourceVersion": "2", "labels": {"x": "1", "y": "2"}},
            "data": {"a": "9", "app.conf": "new"}});
        let paths: Vec<(String, Option<Value>, Option<Value>)> = changes(&live, &desired)
            .into_iter()
            .map(|c| (c.path, c.live, c.desired))
            .collect();
        assert_eq!(
            paths,
            vec![
                (".data.a".into(), Some(json!("1")), Some(json!("9"))),
                (
                    ".data[\"app.conf\"]".into(),
                    Some(json!("old")),
                    Some(json!("new"))
                ),
                (".data.b".into(), Some(json!("2")), None),
                (".metadata.labels.y".into(), None, Some(json!("2"))),
            ]
        );
    }

    #[test]
    fn arrays_are_compared_by_position() {
        let live = json!({"spec": {"containers": [{"image": "a:1"}, {"image": "b:1"}]}});
        let desired = json!({"spec": {"containers": [{"image": "a:1"}, {"image": "b:2"}]}});
        let c = changes(&live, &desired);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].path, ".spec.containers[1].image");
        let shorter = json!({"spec": {"containers": [{"image": "a:1"}]}});
        assert_eq!(changes(&live, &shorter)[0].path, ".spec.containers");
    }

    #[test]
    fn server_metadata_and_status_are_not_changes() {
        let live = json!({"metadata": {"generation": 1, "managedFields": [1], "uid": "u",
            "annotations": {"capstan.dev/digest": "1"}}, "status": {"x": 1}});
        let desired = json!({"metadata": {"generation": 2, "managedFields": [2], "uid": "u",
            "annotations": {"capstan.dev/digest": "2"}}, "status": {"x": 2}});
        assert_eq!(changes(&live, &desired), vec![]);
        let adopted = json!({"metadata": {"uid": "u"}});
        assert_eq!(changes(&adopted, &desired), vec![]);
    }

    #[test]
    fn secret_values_are_redacted() {
        let live = json!({"apiVersion": "v1", "kind": "Secret", "data": {"password": "b2xk"}});
        let desired = json!({"apiVersion": "v1", "kind": "Secret", "data": {"password": "bmV3", "user": "dQ=="}});
        let c = changes(&live, &desired);
        assert_eq!(c.len(), 2);
        for change in &c {
            for side in [&change.live, &change.desired].into_iter().flatten() {
                assert_eq!(side, &json!(REDACTED), "{change:?}");
            }
        }
        assert_eq!(c[0].path, ".data.password");
        assert_eq!(c[1].live, None, "an added key shows as added");
        // kubectl apply's copy of the whole Secret, live only.
        let last = r#"{"data":{"password":"b2xk"}}"#;
        let live = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": last}}});
        let desired = json!({"apiVersion": "v1", "kind": "Secret"});
        let c = changes(&live, &desired);
        assert!(!c.is_empty());
        assert!(!format!("{c:?}").contains("b2xk"), "{c:?}");
    }
}
