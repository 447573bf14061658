//! The pure decisions over inventories: what to prune, in which order, and whether the
//! blast-radius guard holds.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::InventoryEntry;
use crate::object::ObjectId;

/// Prune order: custom resources and ordinary objects first, then CRDs, then Namespaces (which
/// take their contents with them).
pub fn prune_tier(id: &ObjectId) -> u8 {
    if id.is_namespace() {
        2
    } else if id.is_crd() {
        1
    } else {
        0
    }
}

/// Entries of `previous` that `desired` no longer lists, in prune order.
pub fn prune_candidates(
    previous: &[InventoryEntry],
    desired: &BTreeSet<String>,
) -> Vec<InventoryEntry> {
    let mut out: Vec<InventoryEntry> = previous
        .iter()
        .filter(|e| !desired.contains(&e.id))
        .cloned()
        .collect();
    out.sort_by_key(|e| {
        (
            ObjectId::parse(&e.id).map(|id| prune_tier(&id)),
            e.id.clone(),
        )
    });
    out
}

/// The blast-radius guard. Without `max_prune`, only pruning every managed object is held back;
/// with it, more than the count or share it names. Returns the limit as written when it holds.
pub fn prune_blocked(
    candidates: usize,
    managed: usize,
    max_prune: Option<&IntOrString>,
) -> Result<Option<String>, String> {
    if candidates == 0 {
        return Ok(None);
    }
    let (limit, shown) = match max_prune {
        None => {
            return Ok((candidates >= managed).then(|| "all managed objects".to_string()));
        }
        Some(IntOrString::Int(n)) if *n >= 0 => (*n as usize, n.to_string()),
        Some(IntOrString::String(s)) => {
            let pct = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<u32>().ok())
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("maxPrune {s:?} is neither a count nor a percentage"))?;
            // A share rounds down, but never to zero objects when the share is not zero.
            let n = (managed * pct as usize / 100).max(usize::from(pct > 0));
            (n, s.clone())
        }
        Some(IntOrString::Int(n)) => return Err(format!("maxPrune {n} is negative")),
    };
    Ok((candidates > limit).then_some(shown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> InventoryEntry {
        InventoryEntry {
            id: id.into(),
            v: "v1".into(),
        }
    }

    #[test]
    fn ids_round_trip() {
        let id = ObjectId {
            namespace: "apps".into(),
            name: "web".into(),
            group: "apps".into(),
            kind: "Deployment".into(),
        };
        assert_eq!(id.to_string(), "apps_web_apps_Deployment");
        assert_eq!(ObjectId::parse("apps_web_apps_Deployment"), Some(id));
        let ns = ObjectId::parse("_apps__Namespace").unwrap();
        assert!(ns.is_namespace());
        assert_eq!(ns.display_name(), "Namespace/apps");
        assert_eq!(ObjectId::parse("garbage"), None);
        let role = ObjectId::parse("_my_odd_role_rbac.authorization.k8s.io_ClusterRole").unwrap();
        assert_eq!(
            (role.name.as_str(), role.group.as_str()),
            ("my_odd_role", "rbac.authorization.k8s.io")
        );
    }

    #[test]
    fn candidates_are_what_left_git_in_prune_order() {
        let previous = [
            entry("_apps__Namespace"),
            entry("_widgets.example.com_apiextensions.k8s.io_CustomResourceDefinition"),
            entry("apps_w1_example.com_Widget"),
            entry("apps_keep__ConfigMap"),
        ];
        let desired = BTreeSet::from(["apps_keep__ConfigMap".to_string()]);
        let ids: Vec<String> = prune_candidates(&previous, &desired)
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            ids,
            [
                "apps_w1_example.com_Widget",
                "_widgets.example.com_apiextensions.k8s.io_CustomResourceDefinition",
                "_apps__Namespace"
            ]
        );
    }

    #[test]
    fn blast_radius_guard() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(prune_blocked(0, 10, None), Ok(None));
        assert_eq!(prune_blocked(3, 10, None), Ok(None));
        assert_eq!(
            prune_blocked(10, 10, None),
            Ok(Some("all managed objects".into()))
        );
        assert_eq!(prune_blocked(3, 10, Some(&IntOrString::Int(3))), Ok(None));
        assert_eq!(
            prune_blocked(4, 10, Some(&IntOrString::Int(3))),
            Ok(Some("3".into()))
        );
        assert_eq!(prune_blocked(2, 10, Some(&pct("25%"))), Ok(None));
        assert_eq!(
            prune_blocked(3, 10, Some(&pct("25%"))),
            Ok(Some("25%".into()))
        );
        assert_eq!(
            prune_blocked(1, 2, Some(&pct("10%"))),
            Ok(None),
            "never rounds to zero"
        );
        assert_eq!(prune_blocked(10, 10, Some(&pct("100%"))), Ok(None));
        assert!(prune_blocked(1, 10, Some(&pct("lots"))).is_err());
    }
}
