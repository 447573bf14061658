//! Turning parsed documents into objects: the minimum shape every object needs to be applied,
//! `v1` `List` expansion, and refusing two objects with the same identity (which one would win
//! would depend on apply order).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde_json::{Map, Value};

use super::{Manifest, RenderError};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    group: String,
    kind: String,
    namespace: String,
    name: String,
}

impl Identity {
    /// `Kind.group namespace/name`, the core group and an absent namespace left out.
    fn describe(&self) -> String {
        let mut out = self.kind.clone();
        if !self.group.is_empty() {
            out.push('.');
            out.push_str(&self.group);
        }
        out.push(' ');
        if !self.namespace.is_empty() {
            out.push_str(&self.namespace);
            out.push('/');
        }
        out.push_str(&self.name);
        out
    }
}

#[derive(Default)]
pub(super) struct Collector {
    manifests: Vec<Manifest>,
    seen: HashMap<Identity, String>,
}

impl Collector {
    /// Adds the `index`-th (1-based) non-empty document of `file`.
    pub fn add_document(
        &mut self,
        file: &str,
        index: usize,
        document: Value,
    ) -> Result<(), RenderError> {
        let source = format!("{file}#{index}");
        if !is_list(&document) {
            return self.add_object(source, document);
        }
        let items = match document {
            Value::Object(mut map) => map.remove("items"),
            _ => None,
        };
        let items = match items {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(invalid(source, "List items must be a sequence")),
        };
        for (i, item) in items.into_iter().enumerate() {
            let item_source = format!("{source}/{}", i + 1);
            if is_list(&item) {
                return Err(invalid(
                    item_source,
                    "a List inside a List is not supported",
                ));
            }
            self.add_object(item_source, item)?;
        }
        Ok(())
    }

    fn add_object(&mut self, source: String, object: Value) -> Result<(), RenderError> {
        let id = identity(&object).map_err(|message| invalid(source.clone(), message))?;
        match self.seen.entry(id) {
            Entry::Occupied(first) => Err(RenderError::Duplicate {
                id: first.key().describe(),
                first: first.get().clone(),
                second: source,
            }),
            Entry::Vacant(slot) => {
                slot.insert(source.clone());
                self.manifests.push(Manifest { source, object });
                Ok(())
            }
        }
    }

    pub fn finish(self) -> Vec<Manifest> {
        self.manifests
    }
}

fn is_list(document: &Value) -> bool {
    document.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && document.get("kind").and_then(Value::as_str) == Some("List")
}

fn invalid(origin: String, message: impl Into<String>) -> RenderError {
    RenderError::InvalidObject {
        origin,
        message: message.into(),
    }
}

/// Checks the fields apply needs and returns the object's identity. Messages name the field,
/// never its value: the value is file content.
fn identity(object: &Value) -> Result<Identity, String> {
    let Value::Object(map) = object else {
        let found = if object.is_array() {
            "a sequence"
        } else {
            "a scalar"
        };
        return Err(format!("expected a mapping, found {found}"));
    };
    let api_version = required_string(map, "apiVersion")?;
    let group = match api_version.split_once('/') {
        None => "",
        Some((group, version))
            if !group.is_empty() && !version.is_empty() && !version.contains('/') =>
        {
            group
        }
        Some(_) => return Err("apiVersion is not of the form [group/]version".to_string()),
    };
    let kind = required_string(map, "kind")?;
    let metadata = match map.get("metadata") {
        None | Some(Value::Null) => return Err("missing metadata.name".to_string()),
        Some(Value::Object(metadata)) => metadata,
        Some(_) => return Err("metadata must be a mapping".to_string()),
    };
    let name = match metadata.get("name") {
        None | Some(Value::Null) => return Err("missing metadata.name".to_string()),
        Some(Value::String(name)) if name.is_empty() => {
            return Err("metadata.name is empty".to_string());
        }
        Some(Value::String(name)) => name,
        Some(_) => return Err("metadata.name must be a string".to_string()),
    };
    let namespace = match metadata.get("namespace") {
        None | Some(Value::Null) => "",
        Some(Value::String(namespace)) => namespace,
        Some(_) => return Err("metadata.namespace must be a string".to_string()),
    };
    Ok(Identity {
        group: group.to_string(),
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

fn required_string<'a>(map: &'a Map<String, Value>, field: &str) -> Result<&'a str, String> {
    match map.get(field) {
        Some(Value::String(value)) if !value.is_empty() => Ok(value),
        Some(Value::String(_)) => Err(format!("{field} is empty")),
        None | Some(Value::Null) => Err(format!("missing {field}")),
        Some(_) => Err(format!("{field} must be a string")),
    }
}
