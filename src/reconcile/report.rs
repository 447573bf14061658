//! What a reconcile tells: the status write and the Events.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};
use std::time::Instant;

use kube::{Resource, ResourceExt};
use tracing::warn;

use super::observe::Note;
use super::state::State;
use super::{Context, Error};
use crate::api::{FIELD_MANAGER, GitRepository, GitRepositoryStatus};
use crate::apply::record;
use crate::notify::{CommitState, Notice};
use crate::status::{self, Reason, Verdict};

/// Publishes an Event on `gr` and tells it to the Alerts that select it.
pub(super) async fn event(
    ctx: &Context,
    gr: &GitRepository,
    type_: EventType,
    reason: Reason,
    note: String,
) {
    let revision = gr
        .status
        .as_ref()
        .and_then(|s| s.last_applied_revision.as_deref());
    event_about(ctx, gr, type_, reason, note, revision, None).await;
}

/// `event` about `revision`, with the state of its commit when the Event is an apply's verdict.
async fn event_about(
    ctx: &Context,
    gr: &GitRepository,
    type_: EventType,
    reason: Reason,
    note: String,
    revision: Option<&str>,
    commit: Option<CommitState>,
) {
    let error = type_ == EventType::Warning;
    let notice = Notice::new(gr, error, reason.as_str(), &note).about(revision, commit);
    ctx.notifier.notify(notice);
    let event = KubeEvent {
        type_,
        reason: reason.as_str().to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &gr.object_ref(&())).await {
        warn!(error = %e, "publishing event failed");
    }
}

/// Writes `status` (a full one): past what a status holds, the parts of its record first, then
/// the status as shown, then the parts of the record it replaces are deleted. Sets
/// `status.inventory.record` to what the written status names. `written` is the status
/// written last.
pub(super) async fn write_status(
    ctx: &Context,
    gr: &GitRepository,
    written: Option<&GitRepositoryStatus>,
    status: &mut GitRepositoryStatus,
) -> Result<(), Error> {
    let split = record::split(gr, status);
    let record = |s: &GitRepositoryStatus| s.inventory.as_ref()?.record.clone();
    let (was, now) = (written.and_then(record), record(status));
    if was != now {
        record::save(&ctx.client, &split.parts)
            .await
            .map_err(Error::Record)?;
    }
    let api: Api<GitRepository> =
        Api::namespaced(ctx.client.clone(), &gr.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "GitRepository",
        "status": split.shown,
    });
    api.patch_status(
        &gr.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Status)?;
    if was.is_some() && was != now {
        let keep = now.as_ref().map(|r| r.digest.as_str());
        if let Err(e) = record::delete_parts(&ctx.client, gr, keep).await {
            warn!(error = %e, "deleting the inventory record's old parts failed");
        }
    }
    Ok(())
}

/// Says on the status, before an apply starts, which revision is being applied: a long apply
/// shows as `Reconciling` instead of nothing until it ends. Best effort: the apply goes on if
/// the write fails, and the final status follows either way.
pub(super) async fn progressing(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    status: &GitRepositoryStatus,
    revision: &str,
) {
    let mut shown = status.clone();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    status::set_progressing(&mut shown, revision, gr.meta().generation, &now);
    if !status::differs(state.status.as_ref(), &shown) {
        return;
    }
    match write_status(ctx, gr, state.status.as_ref(), &mut shown).await {
        Ok(()) => state.status = Some(shown),
        Err(e) => {
            warn!(error = %e, "writing the Reconciling condition failed");
            return;
        }
    }
    // Told once written, as every notice: a new leader finds it shown and tells it no more.
    // Applying again what is applied (a spec change, a request) leaves its commit's state be:
    // such an apply may end with nothing to tell.
    if status.last_applied_revision.as_deref() == Some(revision) {
        return;
    }
    let message = format!("Applying revision {revision}");
    let notice = Notice::new(gr, false, Reason::Progressing.as_str(), &message);
    ctx.notifier
        .notify(notice.about(Some(revision), Some(CommitState::Pending)));
}

/// The gauges and the duration of one reconcile.
pub(super) fn metrics(
    ctx: &Context,
    gr: &GitRepository,
    status: &GitRepositoryStatus,
    started: Instant,
) {
    let (ns, name) = (gr.namespace().unwrap_or_default(), gr.name_any());
    let ready = status::ready(Some(status));
    ctx.metrics.ended(
        &ns,
        &name,
        crate::metrics::Ended {
            ready: ready.is_some_and(|c| c.status == "True"),
            reason: ready.map_or("Unknown", |c| c.reason.as_str()),
            managed: status.inventory.as_ref().map_or(0, |i| i.entries.len()) as i64,
            drifted: status.summary.as_ref().map_or(0, |s| s.drifted),
            seconds: started.elapsed().as_secs_f64(),
        },
    );
}

/// Writes the status when it differs from what was written last (which may be this reconcile's
/// `Reconciling` write), then publishes the verdict's Event and `events`.
pub(super) async fn write(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    before: Option<&GitRepositoryStatus>,
    mut status: GitRepositoryStatus,
    verdict: Option<&Verdict>,
    events: Vec<Note>,
) -> Result<(), Error> {
    if !status::differs(state.status.as_ref(), &status) {
        return Ok(());
    }
    // A write for a preview's answer alone is no news of the GitRepository's own.
    let own = |s: &GitRepositoryStatus| GitRepositoryStatus {
        previews: Vec::new(),
        ..s.clone()
    };
    let news = status::differs(state.status.as_ref().map(own).as_ref(), &own(&status));
    write_status(ctx, gr, state.status.as_ref(), &mut status).await?;
    if let (true, Some(verdict)) = (news, verdict) {
        // A new revision, or Ready again after a failure: news either way.
        let new_revision = before.and_then(|s| s.last_applied_revision.as_ref())
            != status.last_applied_revision.as_ref()
            || status::ready(before).is_some_and(|c| c.status != "True");
        publish(
            ctx,
            gr,
            verdict,
            new_revision,
            state.failed_unresolved,
            &status,
        )
        .await;
    }
    for (type_, reason, note) in events {
        event(ctx, gr, type_, reason, note).await;
    }
    state.status = Some(status);
    Ok(())
}

/// The event for a verdict: `Applied` for a new revision, changed objects, or Ready again after
/// a failure (all `new_revision`); a Warning with the reason for a failure.
pub(super) async fn publish(
    ctx: &Context,
    gr: &GitRepository,
    verdict: &Verdict,
    new_revision: bool,
    unresolved: bool,
    status: &GitRepositoryStatus,
) {
    let (type_, reason, note, revision, commit) = match verdict {
        Verdict::Ready { message, .. } => {
            let changed = status
                .summary
                .as_ref()
                .is_some_and(|s| s.created + s.configured + s.pruned > 0);
            if !changed && !new_revision {
                return;
            }
            let revision = status.last_applied_revision.as_deref();
            let success = Some(CommitState::Success);
            (
                EventType::Normal,
                Reason::Applied,
                message,
                revision,
                success,
            )
        }
        Verdict::Progressing { .. } => return,
        Verdict::Retrying { reason, message } | Verdict::Stalled { reason, message } => {
            let revision = status.last_attempted_revision.as_deref();
            // Failing before a revision is known says nothing of the last one's commit.
            let failure = (!unresolved).then_some(CommitState::Failure);
            (EventType::Warning, *reason, message, revision, failure)
        }
    };
    event_about(ctx, gr, type_, reason, note.clone(), revision, commit).await;
}
