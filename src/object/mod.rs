//! The vocabulary the steps share: which object (its inventory id), which kind (as the API
//! server serves it), and which fields a manager owns. `apply` writes these, `live` reads them.

pub mod fields;

use std::fmt;

use kube::core::ApiResource;

/// An object's identity as the inventory writes it: `<namespace>_<name>_<group>_<kind>`, Flux's
/// form.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub namespace: String,
    pub name: String,
    pub group: String,
    pub kind: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{}_{}_{}",
            self.namespace, self.name, self.group, self.kind
        )
    }
}

impl ObjectId {
    /// Parses an inventory id. Namespaces, groups and kinds never contain `_`; some names do
    /// (RBAC roles), so the name is whatever lies between the namespace and the group.
    pub fn parse(id: &str) -> Option<ObjectId> {
        let (namespace, rest) = id.split_once('_')?;
        let mut tail = rest.rsplitn(3, '_');
        let kind = tail.next()?.to_string();
        let group = tail.next()?.to_string();
        let name = tail.next()?.to_string();
        let namespace = namespace.to_string();
        (!name.is_empty() && !kind.is_empty()).then_some(ObjectId {
            namespace,
            name,
            group,
            kind,
        })
    }

    /// `kind/name` or `kind/namespace/name`, for messages.
    pub fn display_name(&self) -> String {
        let kind = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        if self.namespace.is_empty() {
            format!("{kind}/{}", self.name)
        } else {
            format!("{kind}/{}/{}", self.namespace, self.name)
        }
    }

    pub fn is_crd(&self) -> bool {
        self.group == "apiextensions.k8s.io" && self.kind == "CustomResourceDefinition"
    }

    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.kind == "Namespace"
    }
}

/// Apply order: CRDs and Namespaces first (0), then everything else (1).
pub fn apply_tier(id: &ObjectId) -> u8 {
    if id.is_crd() || id.is_namespace() {
        0
    } else {
        1
    }
}

/// A served kind: its API resource and whether it is namespaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kind {
    pub resource: ApiResource,
    pub namespaced: bool,
}
