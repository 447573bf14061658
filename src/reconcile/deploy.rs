//! Apply: the rendered objects by server-side apply as the GitRepository's identity, sending
//! only what changed since the last apply; then what it leaves managed, recorded in the status
//! and the record.

use std::collections::{HashMap, HashSet};

use kube::{Client, ResourceExt};
use tracing::info;

use super::Context;
use super::failure::Failure;
use super::fetch::Source;
use super::plan::Plan;
use super::report::progressing;
use super::state::State;
use crate::api::{GitRepository, GitRepositoryStatus, Inventory, InventoryEntry, Summary};
use crate::apply::{Action as Applied, ApplyOptions, Owner, Sent};
use crate::render::Manifest;
use crate::status::{Reason, Verdict};

/// What an apply (and prune) leaves managed.
pub(super) struct Outcome {
    pub entries: Vec<InventoryEntry>,
    pub sent: HashMap<String, Sent>,
    pub summary: Summary,
    /// The inventory before this apply.
    pub previous: Vec<InventoryEntry>,
    /// The client that applied, for the prune.
    pub client: Client,
    pub owner: Owner,
}

/// Applies `manifests`. On failure the inventory keeps everything managed before and now, and
/// nothing is pruned.
pub(super) async fn apply(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    status: &mut GitRepositoryStatus,
    plan: &Plan,
    source: &Source,
    manifests: &[Manifest],
) -> Result<Outcome, Failure> {
    let namespace = gr.namespace().unwrap_or_default();
    let owner = Owner::of(gr);
    let previous_entries = status.inventory.clone().unwrap_or_default().entries;
    let previous: HashSet<String> = previous_entries.iter().map(|e| e.id.clone()).collect();
    // A reconcile asked for by hand re-sends everything, whatever the digests say.
    let previous_digests: HashMap<String, u64> = match plan.pending {
        Some(_) => HashMap::new(),
        None => state
            .objects
            .iter()
            .map(|(id, s)| (id.clone(), s.digest))
            .collect(),
    };
    let default_namespace = gr.spec.target_namespace.clone().unwrap_or(namespace);
    let opts = ApplyOptions {
        owner: &owner,
        default_namespace: &default_namespace,
        previous: &previous,
        previous_digests: &previous_digests,
        previous_versions: &previous_versions(ctx, state, &previous),
        timeout: plan.timeout,
        force: gr.spec.force,
    };
    let client = ctx.client_for(gr, state).map_err(Failure::Identity)?;
    progressing(ctx, gr, state, status, &source.resolved.revision).await;
    let report = ctx.applier.apply(&client, manifests, &opts).await;
    for kind in &report.kinds {
        ctx.live.watch(kind);
    }
    let mut sent = report.sent.clone();
    for (id, s) in sent.iter_mut() {
        // Not sent again: Capstan still owns what it owned after the last send.
        if s.owned.is_none() {
            s.owned = state.objects.get(id).and_then(|p| p.owned.clone());
        }
    }
    let mut outcome = Outcome {
        entries: report
            .objects
            .iter()
            .filter(|(_, _, action)| !action.failed())
            .map(|(id, v, _)| InventoryEntry {
                id: id.to_string(),
                v: v.clone(),
            })
            .collect(),
        sent,
        summary: Summary {
            total: report.objects.len() as i64,
            created: report.count(|a| *a == Applied::Created),
            configured: report.count(|a| *a == Applied::Configured),
            unchanged: report.count(|a| *a == Applied::Unchanged),
            recreated: report.count(|a| *a == Applied::Recreated),
            ..Summary::default()
        },
        previous: previous_entries,
        client,
        owner,
    };
    if let Some(error) = report.error() {
        // Keep managing everything applied before and now; prune nothing.
        let previous = outcome.previous.clone();
        outcome.entries.extend(previous);
        outcome.record(ctx, state, status);
        return Err(Failure::Apply(error));
    }
    Ok(outcome)
}

/// The latest resourceVersion known of each object: from the watch, or from the last apply. An
/// apply that leaves an object there changed nothing.
fn previous_versions(
    ctx: &Context,
    state: &State,
    previous: &HashSet<String>,
) -> HashMap<String, u64> {
    previous
        .iter()
        .filter_map(|id| {
            let watched = ctx.live.resource_version(id);
            let sent = state
                .objects
                .get(id)
                .and_then(|s| s.owned.as_ref()?.resource_version);
            Some((id.clone(), watched.max(sent)?))
        })
        .collect()
}

impl Outcome {
    /// Writes the inventory and summary into `status` and remembers what was sent (only for
    /// objects still managed). A new apply starts a new drift record.
    pub fn record(mut self, ctx: &Context, state: &mut State, status: &mut GitRepositoryStatus) {
        self.entries.sort();
        self.entries.dedup_by(|a, b| a.id == b.id);
        let managed: HashSet<&str> = self.entries.iter().map(|e| e.id.as_str()).collect();
        self.sent.retain(|id, _| managed.contains(id.as_str()));
        status.inventory = Some(Inventory {
            entries: self.entries,
        });
        status.summary = Some(Summary {
            drifted: 0,
            ..self.summary
        });
        status.drift.clear();
        let counts = [
            self.summary.created,
            self.summary.configured,
            self.summary.unchanged,
            self.summary.recreated,
            self.summary.pruned,
        ];
        let owner = &self.owner;
        for (action, n) in crate::metrics::ACTIONS.iter().zip(counts) {
            ctx.metrics
                .apply_objects
                .with_label_values(&[owner.namespace.as_str(), owner.name.as_str(), action])
                .inc_by(n.max(0) as u64);
        }
        state.objects = std::sync::Arc::new(self.sent);
    }
}

/// The revision is applied (and pruned): Ready, with what changed.
pub(super) fn conclude(
    ctx: &Context,
    state: &mut State,
    status: &mut GitRepositoryStatus,
    source: &Source,
    outcome: Outcome,
    committed_at: i64,
    started: std::time::Instant,
) -> Verdict {
    let revision = &source.resolved.revision;
    let s = &outcome.summary;
    let recreated = match s.recreated {
        0 => String::new(),
        n => format!(", {n} recreated"),
    };
    let message = format!(
        "Applied revision {revision} ({} objects: {} created, {} configured, {} unchanged{recreated}, {} pruned)",
        s.total, s.created, s.configured, s.unchanged, s.pruned
    );
    info!(
        %revision,
        objects = s.total,
        created = s.created,
        configured = s.configured,
        unchanged = s.unchanged,
        recreated = s.recreated,
        pruned = s.pruned,
        duration_ms = started.elapsed().as_millis() as u64,
        "applied revision"
    );
    if status.last_applied_revision.as_ref() != Some(revision) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let owner = &outcome.owner;
        ctx.metrics
            .commit_to_applied
            .with_label_values(&[owner.namespace.as_str(), owner.name.as_str()])
            .observe((now - committed_at as f64).max(0.0));
    }
    outcome.record(ctx, state, status);
    state.variables = source.variables_digest;
    status.last_applied_revision = Some(revision.clone());
    Verdict::Ready {
        reason: Reason::ReconciliationSucceeded,
        message,
    }
}
