//! Managed-fields sets: the field paths one manager owns, as server-side apply records them in
//! `metadata.managedFields[].fieldsV1`. What Capstan owned right after its apply, minus what it
//! owns now, is what another manager took over: drift.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// One step of a field path, one key of the fieldsV1 trie.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PathElement {
    /// `f:<name>`.
    Field(String),
    /// `k:<json object>`; the JSON text is kept verbatim so that comparing is exact and rendering
    /// can keep the merge keys in the order the API server wrote them.
    Key(String),
    /// `v:<json>`, an item of a set.
    Set(String),
    /// `i:<n>`, an item of a list without merge keys, by position.
    Index(u64),
}

impl PathElement {
    fn parse(key: &str) -> Option<PathElement> {
        let (prefix, rest) = key.split_once(':')?;
        match prefix {
            "f" => Some(PathElement::Field(rest.to_owned())),
            "k" => {
                serde_json::from_str::<KeyFields>(rest).ok()?;
                Some(PathElement::Key(rest.to_owned()))
            }
            "v" => {
                serde_json::from_str::<Value>(rest).ok()?;
                Some(PathElement::Set(rest.to_owned()))
            }
            "i" => rest.parse().ok().map(PathElement::Index),
            _ => None,
        }
    }
}

/// The merge keys of a `k:` element in document order: serde_json's own map sorts its keys, and
/// people expect `[containerPort=80,protocol=TCP]` the way the API server wrote it.
struct KeyFields(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for KeyFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;

        impl<'de> Visitor<'de> for Pairs {
            type Value = KeyFields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of merge keys")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyFields, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, Value>()? {
                    pairs.push(pair);
                }
                Ok(KeyFields(pairs))
            }
        }

        deserializer.deserialize_map(Pairs)
    }
}

/// Fields the API server sets on every write; no manager owns them, so their absence from a
/// live set says nothing about drift.
const UNOWNED_METADATA: [&str; 5] = [
    "managedFields",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
];

/// A set of field paths, as a manager's fieldsV1 trie.
///
/// Held as leaf paths: owning a node (`.`) and owning a field below it are separate paths, so a
/// parent's ownership never stands in for its children's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet(BTreeSet<Vec<PathElement>>);

impl FieldSet {
    /// Parses a fieldsV1 value; None if it is not an object trie.
    pub fn from_fields_v1(v: &Value) -> Option<FieldSet> {
        let mut leaves = BTreeSet::new();
        collect(v.as_object()?, &mut Vec::new(), &mut leaves)?;
        Some(FieldSet(leaves))
    }

    /// The fieldsV1 of `manager` with `operation` ("Apply"/"Update") in
    /// `object["metadata"]["managedFields"]` (object is a full JSON object); None when that
    /// manager has no entry, or an entry is not a fieldsV1 trie.
    ///
    /// Only entries for the object itself count, not those for a subresource such as `status`.
    /// Update entries are kept per API version, so several may match; their union is returned.
    /// The API server drops an entry once all its fields went to other managers, so a caller
    /// comparing against a recorded set should read None here as "owns nothing".
    pub fn of_manager(object: &Value, manager: &str, operation: &str) -> Option<FieldSet> {
        let entries = object.get("metadata")?.get("managedFields")?.as_array()?;
        let mut found: Option<FieldSet> = None;
        for entry in entries {
            let text = |key: &str| entry.get(key).and_then(Value::as_str);
            if text("manager") != Some(manager)
                || text("operation") != Some(operation)
                || !text("subresource").is_none_or(str::is_empty)
            {
                continue;
            }
            let set = FieldSet::from_fields_v1(entry.get("fieldsV1")?)?;
            found.get_or_insert_with(FieldSet::default).0.extend(set.0);
        }
        found
    }

    /// Leaf paths in self but not in other, rendered for people and sorted, e.g.
    /// `.spec.template.spec.containers[name=web].image`, `.metadata.finalizers[="x"]`,
    /// `.spec.x[3]`. Metadata the API server maintains itself (resourceVersion, uid, ...) is left
    /// out.
    pub fn missing_from(&self, other: &FieldSet) -> Vec<String> {
        let mut missing: Vec<String> = self
            .0
            .difference(&other.0)
            .filter(|path| !unowned(path))
            .map(|path| render(path))
            .collect();
        missing.sort();
        // Two raw keys can render alike (`k:{"port":80}` and `k:{"port":"80"}`).
        missing.dedup();
        missing
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many paths (leaves and the list entries and maps they sit in) it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

fn collect(
    node: &Map<String, Value>,
    path: &mut Vec<PathElement>,
    leaves: &mut BTreeSet<Vec<PathElement>>,
) -> Option<()> {
    // An empty root is an empty set, not ownership of the whole object.
    if node.is_empty() && !path.is_empty() {
        leaves.insert(path.clone());
    }
    for (key, child) in node {
        let child = child.as_object()?;
        if key == "." {
            leaves.insert(path.clone());
            continue;
        }
        path.push(PathElement::parse(key)?);
        collect(child, path, leaves)?;
        path.pop();
    }
    Some(())
}

fn unowned(path: &[PathElement]) -> bool {
    matches!(
        path,
        [PathElement::Field(top), PathElement::Field(field), ..]
            if top == "metadata" && UNOWNED_METADATA.contains(&field.as_str())
    )
}

fn render(path: &[PathElement]) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let mut out = String::new();
    for element in path {
        match element {
            PathElement::Field(name) => {
                out.push('.');
                out.push_str(name);
            }
            PathElement::Key(raw) => {
                out.push('[');
                match serde_json::from_str::<KeyFields>(raw) {
                    Ok(KeyFields(pairs)) => {
                        let pairs: Vec<String> = pairs
                            .iter()
                            .map(|(key, value)| format!("{key}={}", scalar(value)))
                            .collect();
                        out.push_str(&pairs.join(","));
                    }
                    // Checked when parsed; the raw text is still better than nothing.
                    Err(_) => out.push_str(raw),
                }
                out.push(']');
            }
            PathElement::Set(raw) => {
                out.push_str("[=");
                out.push_str(raw);
                out.push(']');
            }
            PathElement::Index(index) => {
                out.push_str(&format!("[{index}]"));
            }
        }
    }
    out
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        applied: Value,
        now: Value,
        drifted: Vec<String>,
    }

    #[test]
    fn drift_from_the_fixtures() {
        for (name, case) in crate::fixture_table::<Case>(include_str!("../fixtures/drift.yaml")) {
            let applied = FieldSet::from_fields_v1(&case.applied).expect(&name);
            let now = FieldSet::from_fields_v1(&case.now).expect(&name);
            assert_eq!(applied.missing_from(&now), case.drifted, "{}", name);
        }
    }

    /// Capstan's Apply entry for a Deployment, as the API server records it.
    fn applied() -> Value {
        json!({
            "f:metadata": {
                "f:annotations": {
                    "f:capstan.dev/source": {}
                },
                "f:labels": {
                    "f:app": {},
                    "f:app.kubernetes.io/managed-by": {}
                }
            },
            "f:spec": {
                "f:replicas": {},
                "f:selector": {},
                "f:template": {
                    "f:metadata": {
                        "f:labels": {
                            "f:app": {}
                        }
                    },
                    "f:spec": {
                        "f:containers": {
                            "k:{\"name\":\"web\"}": {
                                ".": {},
                                "f:image": {},
                                "f:name": {},
                                "f:ports": {
                                    "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                        ".": {},
                                        "f:containerPort": {},
                                        "f:protocol": {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
        })
    }

    /// The same entry after `kubectl scale` and `kubectl set image` took two fields.
    fn drifted() -> Value {
        let mut entry = applied();
        let spec = entry["f:spec"].as_object_mut().expect("f:spec");
        spec.remove("f:replicas");
        let web = &mut spec["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
        web.as_object_mut()
            .expect("the web container")
            .remove("f:image");
        entry
    }

    fn deployment(managed_fields: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "generation": 3,
                "resourceVersion": "48213",
                "managedFields": managed_fields
            },
            "spec": {"replicas": 2}
        })
    }

    fn set(v: Value) -> FieldSet {
        FieldSet::from_fields_v1(&v).expect("a fieldsV1 trie")
    }

    #[test]
    fn identical_sets_miss_nothing() {
        assert!(set(applied()).missing_from(&set(applied())).is_empty());
    }

    #[test]
    fn fields_taken_by_another_manager_are_missing_sorted() {
        assert_eq!(
            set(applied()).missing_from(&set(drifted())),
            vec![
                ".spec.replicas".to_owned(),
                ".spec.template.spec.containers[name=web].image".to_owned(),
            ]
        );
        // Direction matters: what the live set has beyond the recorded one is not drift.
        assert!(set(drifted()).missing_from(&set(applied())).is_empty());
    }

    #[test]
    fn leaf_paths_include_owned_nodes() {
        let paths = set(applied()).missing_from(&FieldSet::default());
        assert!(paths.contains(&".spec.template.spec.containers[name=web]".to_owned()));
        assert!(paths.contains(
            &".spec.template.spec.containers[name=web].ports[containerPort=80,protocol=TCP].protocol"
                .to_owned()
        ));
        assert!(paths.contains(&".metadata.labels.app.kubernetes.io/managed-by".to_owned()));
        // Intermediate nodes without "." are not paths of their own.
        assert!(!paths.contains(&".spec".to_owned()));
        assert_eq!(paths.len(), 12);
    }

    #[test]
    fn owning_a_parent_does_not_cover_its_children() {
        let recorded = set(json!({
            "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}}}}
        }));
        let live = set(json!({
            "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}}}}
        }));
        assert_eq!(
            recorded.missing_from(&live),
            vec![".spec.containers[name=web].image".to_owned()]
        );
    }

    #[test]
    fn renders_keys_in_document_order_sets_and_indexes() {
        let recorded = set(json!({
            "f:metadata": {"f:finalizers": {"v:\"capstan.dev/prune\"": {}}},
            "f:spec": {
                "f:ports": {"k:{\"protocol\":\"UDP\",\"port\":53}": {"f:port": {}}},
                "f:args": {"i:3": {}}
            },
            "f:data": {"f:password": {}}
        }));
        assert_eq!(
            recorded.missing_from(&FieldSet::default()),
            vec![
                ".data.password".to_owned(),
                ".metadata.finalizers[=\"capstan.dev/prune\"]".to_owned(),
                ".spec.args[3]".to_owned(),
                ".spec.ports[protocol=UDP,port=53].port".to_owned(),
            ]
        );
    }

    #[test]
    fn server_maintained_metadata_is_never_drift() {
        let recorded = set(json!({
            "f:metadata": {
                "f:resourceVersion": {},
                "f:generation": {},
                "f:uid": {},
                "f:creationTimestamp": {},
                "f:managedFields": {"i:0": {}},
                "f:labels": {"f:app": {}}
            }
        }));
        assert_eq!(
            recorded.missing_from(&FieldSet::default()),
            vec![".metadata.labels.app".to_owned()]
        );
    }

    #[test]
    fn of_manager_picks_the_entry_by_manager_operation_and_resource() {
        let object = deployment(json!([
            {
                "manager": "capstan",
                "operation": "Apply",
                "apiVersion": "apps/v1",
                "time": "2025-01-10T09:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": drifted()
            },
            {
                "manager": "capstan",
                "operation": "Update",
                "apiVersion": "apps/v1",
                "time": "2025-01-10T09:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:note": {}}}}
            },
            {
                "manager": "capstan",
                "operation": "Apply",
                "apiVersion": "apps/v1",
                "time": "2025-01-10T09:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:status": {"f:replicas": {}}},
                "subresource": "status"
            },
            {
                "manager": "kubectl-set",
                "operation": "Update",
                "apiVersion": "apps/v1",
                "time": "2025-01-10T09:05:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"web\"}": {"f:image": {}}
                }}}}}
            }
        ]));
        let live = FieldSet::of_manager(&object, "capstan", "Apply").expect("capstan's entry");
        assert_eq!(live, set(drifted()));
        assert_eq!(set(applied()).missing_from(&live).len(), 2);
        let update = FieldSet::of_manager(&object, "capstan", "Update").expect("update entry");
        assert_eq!(
            update.missing_from(&FieldSet::default()),
            vec![
                ".metadata.annotations".to_owned(),
                ".metadata.annotations.note".to_owned()
            ]
        );
        assert_eq!(FieldSet::of_manager(&object, "helm", "Apply"), None);
        assert_eq!(FieldSet::of_manager(&object, "kubectl-set", "Apply"), None);
    }

    #[test]
    fn of_manager_unions_update_entries_across_api_versions() {
        let object = deployment(json!([
            {"manager": "m", "operation": "Update", "apiVersion": "v1",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:a": {}}},
            {"manager": "m", "operation": "Update", "apiVersion": "v2",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:b": {}}}
        ]));
        let both = FieldSet::of_manager(&object, "m", "Update").expect("entries");
        assert_eq!(both, set(json!({"f:a": {}, "f:b": {}})));
    }

    #[test]
    fn absent_entries_are_none() {
        assert_eq!(
            FieldSet::of_manager(&deployment(json!([])), "capstan", "Apply"),
            None
        );
        let mut object = deployment(json!([]));
        if let Some(metadata) = object["metadata"].as_object_mut() {
            metadata.remove("managedFields");
        }
        assert_eq!(FieldSet::of_manager(&object, "capstan", "Apply"), None);
        assert_eq!(FieldSet::of_manager(&json!(null), "capstan", "Apply"), None);
    }

    #[test]
    fn malformed_input_is_none() {
        for bad in [
            json!(null),
            json!([{"f:spec": {}}]),
            json!("f:spec"),
            json!({"f:spec": 3}),
            json!({"f:spec": {"f:replicas": null}}),
            json!({"spec": {}}),
            json!({"x:spec": {}}),
            json!({"k:{\"name\":": {}}),
            json!({"k:[\"web\"]": {}}),
            json!({"v:not json": {}}),
            json!({"i:-1": {}}),
            json!({"i:three": {}}),
            json!({".": 1}),
        ] {
            assert_eq!(FieldSet::from_fields_v1(&bad), None, "{bad}");
        }
        assert_eq!(
            FieldSet::of_manager(
                &deployment(json!({"manager": "capstan"})),
                "capstan",
                "Apply"
            ),
            None
        );
        let broken = deployment(json!([
            {"manager": "capstan", "operation": "Apply", "fieldsV1": {"f:spec": []}}
        ]));
        assert_eq!(FieldSet::of_manager(&broken, "capstan", "Apply"), None);
        let missing = deployment(json!([{"manager": "capstan", "operation": "Apply"}]));
        assert_eq!(FieldSet::of_manager(&missing, "capstan", "Apply"), None);
    }

    #[test]
    fn empty_trie_is_an_empty_set() {
        let empty = set(json!({}));
        assert!(empty.is_empty());
        assert_eq!(empty, FieldSet::default());
        assert!(!set(applied()).is_empty());
        // Owning the object itself is a path of its own.
        assert_eq!(
            set(json!({".": {}})).missing_from(&empty),
            vec![".".to_owned()]
        );
    }
}
