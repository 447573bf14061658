//! Prune: delete what the revision no longer declares, behind the blast-radius guard
//! (`spec.maxPrune`), only after an apply that went through.

use std::collections::{BTreeSet, HashSet};

use tracing::info;

use super::Context;
use super::deploy::Outcome;
use super::failure::Failure;
use super::state::State;
use crate::api::{GitRepository, GitRepositoryStatus, InventoryEntry, PruneBlocked};
use crate::apply;

pub(super) async fn prune(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    status: &mut GitRepositoryStatus,
    revision: &str,
    mut outcome: Outcome,
) -> Result<Outcome, Failure> {
    let desired: BTreeSet<String> = outcome.entries.iter().map(|e| e.id.clone()).collect();
    let candidates = apply::prune_candidates(&outcome.previous, &desired);
    let was_blocked = status.prune_blocked.take();
    if !gr.spec.prune || candidates.is_empty() {
        return Ok(outcome);
    }
    let managed = managed_before(&outcome.previous, &candidates, was_blocked.as_ref());
    if let Ok(Some(limit)) =
        apply::prune_blocked(candidates.len(), managed, gr.spec.max_prune.as_ref())
    {
        let message = format!(
            "revision {revision} would prune {} of {managed} managed objects, over the limit ({limit}); nothing was pruned (raise spec.maxPrune to let it through)",
            candidates.len(),
        );
        status.prune_blocked = Some(PruneBlocked {
            candidates: candidates.iter().map(|e| e.id.clone()).collect(),
            count: Some(candidates.len() as i64),
            limit,
            managed: managed as i64,
        });
        outcome.entries.extend(candidates);
        outcome.record(ctx, state, status);
        return Err(Failure::PruneBlocked(message));
    }
    let pruned = ctx
        .cluster(state)
        .applier
        .prune(&outcome.client, &candidates, &outcome.owner)
        .await;
    info!(
        %revision,
        deleted = pruned.deleted.len(),
        released = pruned.released.len(),
        pending = pruned.pending.len(),
        failed = pruned.errors.len(),
        "pruned what the revision no longer declares"
    );
    outcome.summary.pruned = pruned.deleted.len() as i64;
    outcome.entries.extend(pruned.pending);
    if !pruned.errors.is_empty() {
        outcome.record(ctx, state, status);
        return Err(Failure::Prune(pruned.errors));
    }
    Ok(outcome)
}

/// What the guard measures against. While it holds, the blocked revision's new objects are in
/// the inventory too: the count is of what was managed before that revision.
fn managed_before(
    previous: &[InventoryEntry],
    candidates: &[InventoryEntry],
    was_blocked: Option<&PruneBlocked>,
) -> usize {
    let held = |blocked: &PruneBlocked| {
        let held: HashSet<&str> = blocked.candidates.iter().map(String::as_str).collect();
        candidates.iter().all(|c| held.contains(c.id.as_str()))
    };
    match was_blocked {
        Some(blocked) if held(blocked) => {
            usize::try_from(blocked.managed).unwrap_or(previous.len())
        }
        _ => previous.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Case {
        candidates: usize,
        managed: usize,
        max_prune: Option<IntOrString>,
        #[serde(default)]
        blocked: Option<String>,
        #[serde(default)]
        invalid: Option<String>,
    }

    #[test]
    fn the_guard_from_the_fixtures() {
        for (name, case) in crate::fixture_table::<Case>(include_str!("../fixtures/prune.yaml")) {
            let got = apply::prune_blocked(case.candidates, case.managed, case.max_prune.as_ref());
            match case.invalid {
                Some(message) => assert_eq!(got, Err(message), "{}", name),
                None => assert_eq!(got, Ok(case.blocked), "{}", name),
            }
        }
    }

    #[test]
    fn while_the_guard_holds_it_measures_what_was_managed_before() {
        let entries = |ids: &[&str]| -> Vec<InventoryEntry> {
            ids.iter()
                .map(|id| InventoryEntry {
                    id: id.to_string(),
                    v: "v1".into(),
                })
                .collect()
        };
        // The blocked revision's three new objects joined the inventory of ten.
        let previous = entries(&[
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "n1", "n2", "n3",
        ]);
        let blocked = PruneBlocked {
            candidates: vec!["a".into(), "b".into(), "c".into()],
            count: Some(3),
            limit: "2".into(),
            managed: 10,
        };
        let same = entries(&["a", "b"]);
        assert_eq!(managed_before(&previous, &same, Some(&blocked)), 10);
        // Another revision, other candidates: measured against the inventory as it is.
        let other = entries(&["a", "d"]);
        assert_eq!(managed_before(&previous, &other, Some(&blocked)), 13);
        assert_eq!(managed_before(&previous, &same, None), 13);
    }
}
