//! What an apply would change in an object: the fields that differ between the live object and
//! the server's dry run of the apply. Pure; used by `capstan diff`.

use serde_json::Value;

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

/// Metadata the server maintains: it differs after any write and means nothing to the user.
const SERVER_FIELDS: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "uid",
];

/// The fields of `desired` that differ from `live`. The server's own metadata and `status` are
/// left out; the values under a Secret's `data` and `stringData` are replaced by [`REDACTED`].
pub fn changes(live: &Value, desired: &Value) -> Vec<Change> {
    let secret = desired["kind"] == "Secret" && desired["apiVersion"] == "v1";
    let mut out = Vec::new();
    walk(live, desired, String::new(), 0, &mut out);
    out.retain(|c| !ignored(&c.path));
    if secret {
        for change in &mut out {
            if change.path.starts_with(".data") || change.path.starts_with(".stringData") {
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
        let live = json!({"metadata": {"generation": 1, "managedFields": [1], "uid": "u"}, "status": {"x": 1}});
        let desired = json!({"metadata": {"generation": 2, "managedFields": [2], "uid": "u"}, "status": {"x": 2}});
        assert_eq!(changes(&live, &desired), vec![]);
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
    }
}
