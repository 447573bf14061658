//! Apply: the rendered objects by server-side apply as the GitRepository's identity, sending
//! only what changed since the last apply; then what it leaves managed, recorded in the status
//! and the record.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kube::{Client, ResourceExt};
use tracing::info;

use super::Context;
use super::failure::Failure;
use super::fetch::Source;
use super::plan::Plan;
use super::report::progressing;
use super::state::State;
use crate::api::{GitRepository, GitRepositoryStatus, Inventory, InventoryEntry, Summary};
use crate::apply::{Action as Applied, ApplyOptions, Owned, Owner, Sent};
use crate::live::{Live, Observed};
use crate::object::ObjectId;
use crate::render::Manifest;
use crate::status::{self, Reason, Verdict};

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
    /// What was applied before came from the watches (after a restart), not from this process.
    pub restored: bool,
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
    let client = ctx.client_for(gr, state).map_err(Failure::Identity)?;
    let cluster = ctx.cluster(state);
    let restored = plan.pending.is_none()
        && restore(ctx, &client, state, status, manifests, plan.timeout).await;
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
        previous_versions: &previous_versions(&cluster.live, state, &previous),
        timeout: plan.timeout,
        force: gr.spec.force,
    };
    let revision = &source.resolved.revision;
    // Restored at the revision applied before: most likely nothing is sent, so nothing is shown.
    if !(restored && status.last_applied_revision.as_ref() == Some(revision)) {
        progressing(ctx, gr, state, status, revision).await;
    }
    let report = cluster.applier.apply(&client, manifests, &opts).await;
    for kind in &report.kinds {
        cluster.live.watch(kind);
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
        restored,
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

/// After a restart this process knows nothing of what it applied; the watches of the kinds of
/// `manifests` tell it: each object's digest annotation and the fields Capstan owns of it now,
/// taken as what was sent last when the inventory's checksum of those fields is the one the
/// status recorded (no field was taken while no controller watched). Returns whether it did;
/// otherwise everything is sent, as on a first apply.
async fn restore(
    ctx: &Context,
    client: &Client,
    state: &mut State,
    status: &GitRepositoryStatus,
    manifests: &[Manifest],
    timeout: Duration,
) -> bool {
    let Some(inventory) = status.inventory.as_ref() else {
        return false;
    };
    if !state.objects.is_empty() || inventory.checksum.is_none() {
        return false;
    }
    let cluster = ctx.cluster(state);
    let kinds = cluster.applier.kinds_of(client, manifests).await;
    let watched: HashSet<(&str, &str)> = kinds
        .iter()
        .map(|k| (k.resource.group.as_str(), k.resource.kind.as_str()))
        .collect();
    let Some(ids) = inventory
        .entries
        .iter()
        .map(|e| ObjectId::parse(&e.id))
        .collect::<Option<Vec<_>>>()
        .filter(|ids| {
            ids.iter()
                .all(|id| watched.contains(&(id.group.as_str(), id.kind.as_str())))
        })
    else {
        // Something of another kind is managed (to be pruned): applied as on a first apply.
        return false;
    };
    for kind in &kinds {
        cluster.live.watch(kind);
    }
    let deadline = Instant::now() + timeout.min(RESTORE_WAIT);
    while !ids.iter().all(|id| cluster.live.caught_up(id, None)) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let observed: Vec<(String, Option<Observed>)> = inventory
        .entries
        .iter()
        .map(|e| (e.id.clone(), cluster.live.observed(&e.id)))
        .collect();
    let counts = observed
        .iter()
        .map(|(id, o)| (id.as_str(), o.as_ref().map(|o| o.fields.len())));
    if checksum(counts) != inventory.checksum {
        info!("what Capstan owns of its objects changed while no controller watched; applying all");
        return false;
    }
    let objects = observed
        .into_iter()
        .filter_map(|(id, o)| {
            let o = o?;
            let sent = Sent {
                digest: o.applied?,
                object: serde_json::Value::Null,
                owned: Some(Owned {
                    fields: o.fields,
                    resource_version: o.resource_version,
                }),
            };
            Some((id, sent))
        })
        .collect();
    state.objects = std::sync::Arc::new(objects);
    true
}

/// How long a restore waits for the watches to list what they watch.
const RESTORE_WAIT: Duration = Duration::from_secs(30);

/// The inventory's checksum: per object, in id order, how many fields Capstan owns of it; none
/// when one is not known.
fn checksum<'a>(counts: impl Iterator<Item = (&'a str, Option<usize>)>) -> Option<String> {
    let mut text = String::new();
    for (id, count) in counts {
        text.push_str(&format!("{id}={}\n", count?));
    }
    Some(crate::digest::stable_hex(text.as_bytes()))
}

/// The latest resourceVersion known of each object: from the watch, or from the last apply. An
/// apply that leaves an object there changed nothing.
fn previous_versions(
    live: &Live,
    state: &State,
    previous: &HashSet<String>,
) -> HashMap<String, u64> {
    previous
        .iter()
        .filter_map(|id| {
            let watched = live.resource_version(id);
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
        let counts = self.entries.iter().map(|e| {
            let owned = self.sent.get(&e.id).and_then(|s| s.owned.as_ref());
            (e.id.as_str(), owned.map(|o| o.fields.len()))
        });
        let checksum = checksum(counts);
        status.inventory = Some(Inventory {
            count: Some(self.entries.len() as i64),
            entries: self.entries,
            checksum,
            record: None,
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
        ctx.metrics.applied(&owner.namespace, &owner.name, counts);
        state.objects = std::sync::Arc::new(self.sent);
    }
}

/// A new revision that changes nothing the last render read (another application's directory
/// of a monorepo, say): recorded as applied without a checkout, a render or an apply. Only when
/// nothing else asks for an apply (the spec observed, the same variables, no request pending)
/// and no signature is to be checked.
pub(super) async fn untouched(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    status: &mut GitRepositoryStatus,
    plan: &Plan,
    source: &Source,
) -> Option<Verdict> {
    let reads = state.reads.as_ref()?;
    let settled = state.applied_current(gr)
        && plan.settled
        && state.variables == source.variables_digest
        && gr.spec.verify.is_none();
    let applied = status.last_applied_revision.as_deref()?;
    if !settled
        || reads.commit == source.resolved.oid
        || !applied.ends_with(&reads.commit.to_string())
    {
        return None;
    }
    let unchanged = ctx
        .cache
        .unchanged(
            &source.url,
            &source.auth,
            &source.resolved,
            reads.commit,
            reads.paths.clone(),
            plan.timeout,
        )
        .await
        .ok()?;
    if !unchanged {
        return None;
    }
    let revision = &source.resolved.revision;
    let paths: Vec<&str> = reads
        .paths
        .iter()
        .map(|p| if p.is_empty() { "." } else { p.as_str() })
        .collect();
    let total = status.inventory.as_ref().map_or(0, |i| i.entries.len()) as i64;
    let summary = status.summary.clone().unwrap_or_default();
    status.summary = Some(Summary {
        total,
        created: 0,
        configured: 0,
        unchanged: total,
        recreated: 0,
        pruned: 0,
        ..summary
    });
    status.last_applied_revision = Some(revision.clone());
    info!(%revision, read = ?paths, "nothing the render reads changed: not rendered or applied");
    let message = format!(
        "Applied revision {revision} ({total} objects unchanged: nothing in {} changed)",
        paths.join(", ")
    );
    if let Some(reads) = state.reads.as_mut() {
        reads.commit = source.resolved.oid;
    }
    Some(Verdict::Ready {
        reason: Reason::ReconciliationSucceeded,
        message,
    })
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
    // Restored after a restart and nothing to do: the status still says what the last apply
    // did, and is not rewritten.
    let quiet = outcome.restored
        && s.created + s.configured + s.recreated + s.pruned == 0
        && status.last_applied_revision.as_ref() == Some(revision);
    let before = status::ready(Some(status))
        .filter(|c| quiet && c.status == "True")
        .map(|c| (c.message.clone(), status.summary.clone()));
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
        ctx.metrics.commit_applied(
            &owner.namespace,
            &owner.name,
            (now - committed_at as f64).max(0.0),
        );
    }
    outcome.record(ctx, state, status);
    state.variables = source.variables_digest;
    status.last_applied_revision = Some(revision.clone());
    let message = match before {
        Some((message, summary)) => {
            status.summary = summary;
            message
        }
        None => message,
    };
    Verdict::Ready {
        reason: Reason::ReconciliationSucceeded,
        message,
    }
}
