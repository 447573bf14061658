//! What the watches say of what was applied: drift (corrected, reported, or held while another
//! manager fights over an object) and, with `spec.wait`, health.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::Context;
use super::plan::{self, Plan};
use super::state::State;
use crate::api::{DriftEntry, DriftMode, GitRepository, GitRepositoryStatus};
use crate::apply::Sent;
use crate::live::health::Health;
use crate::live::{HealthExprs, Live};
use crate::object::ObjectId;
use crate::status::Reason;
use crate::status::{self, Verdict};

/// An object corrected this many times within the window is being fought over by another
/// controller: further drift is reported, not re-applied, until the window passes.
pub(super) const MAX_CORRECTIONS_IN_WINDOW: usize = 3;
pub(super) const CORRECTION_WINDOW: Duration = Duration::from_secs(60);

/// An Event to publish: its type, reason and note.
pub(super) type Note = (EventType, Reason, String);

/// Drift: fields Capstan applied that another manager owns now, or objects deleted. Corrects
/// (one apply per drifted object), reports, or ignores, as `spec.drift.mode` says. Returns the
/// events to publish and, while a correction is held, when to look again.
pub(super) async fn drift(
    gr: &GitRepository,
    ctx: &Context,
    state: &mut State,
    status: &mut GitRepositoryStatus,
    now: &Time,
) -> (Vec<Note>, Option<Duration>) {
    let mode = gr.spec.drift.as_ref().map(|d| d.mode).unwrap_or_default();
    if mode == DriftMode::Disabled {
        status.drift.clear();
        status::remove_condition(status, status::DRIFTED);
        if let Some(summary) = &mut status.summary {
            summary.drifted = 0;
        }
        return (Vec::new(), None);
    }
    let found = drifted(&ctx.cluster(state).live, &state.objects);
    let previous: HashMap<String, DriftEntry> =
        status.drift.drain(..).map(|d| (d.id.clone(), d)).collect();
    let mut look = Look {
        ctx,
        gr,
        mode,
        now,
        events: Vec::new(),
        again: None,
    };
    let mut entries: Vec<DriftEntry> = Vec::new();
    for (id, fields) in found {
        entries.push(look.judge(state, previous.get(&id), id, fields).await);
    }
    // Corrections stay on record until the next revision is applied.
    for (id, p) in previous {
        if p.corrected && !entries.iter().any(|e| e.id == id) {
            entries.push(p);
        }
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    set_drifted(gr, status, &entries, now);
    status.drift = entries;
    (look.events, look.again)
}

/// One look at drift: what it decided so far.
struct Look<'a> {
    ctx: &'a Context,
    gr: &'a GitRepository,
    mode: DriftMode,
    now: &'a Time,
    events: Vec<Note>,
    /// When a held correction's window ends.
    again: Option<Duration>,
}

impl Look<'_> {
    /// One drifted object: corrected, or reported (once per change), or held while another
    /// manager fights over it.
    async fn judge(
        &mut self,
        state: &mut State,
        previous: Option<&DriftEntry>,
        id: String,
        fields: Vec<String>,
    ) -> DriftEntry {
        let (mode, now) = (self.mode, self.now);
        let known = previous.is_some_and(|p| p.fields == fields && !p.corrected);
        // Changed again soon after corrections: another manager is fighting over it. Report it
        // instead of re-applying in a loop, and correct it when the window has passed.
        let held = held_for(state.corrected_at.get(&id));
        // Kept from the last look while it holds, so the status does not change every second.
        let held_until = held.map(|wait| {
            previous
                .and_then(|p| p.held_until.clone())
                .filter(|until| until.0 > now.0)
                .unwrap_or_else(|| wall_clock_in(now, wait))
        });
        let mut corrected = false;
        if mode == DriftMode::Correct && held.is_none() {
            corrected = self.correct(state, &id, &fields).await;
        } else if !known {
            self.report(&id, &fields, held_until.as_ref());
        }
        if let (Some(wait), DriftMode::Correct) = (held, mode) {
            self.again = Some(self.again.map_or(wait, |w| w.min(wait)));
        }
        let detected_at = previous
            .filter(|p| p.fields == fields)
            .map(|p| p.detected_at.clone())
            .unwrap_or_else(|| now.clone());
        DriftEntry {
            id,
            fields,
            detected_at,
            corrected,
            held_until: held_until.filter(|_| mode == DriftMode::Correct && !corrected),
        }
    }

    /// Re-applies what was sent last of `id`. Whether it went through.
    async fn correct(&mut self, state: &mut State, id: &str, fields: &[String]) -> bool {
        let (ctx, gr) = (self.ctx, self.gr);
        let reapplied = match ctx.client_for(gr, state) {
            Ok(client) => {
                ctx.cluster(state)
                    .applier
                    .reapply(&client, &state.objects[id].object)
                    .await
            }
            Err(message) => Err(message),
        };
        let owned = match reapplied {
            Ok(owned) => owned,
            Err(message) => {
                warn!(object = %id, error = %message, "drift correction failed");
                return false;
            }
        };
        ctx.metrics
            .drift_corrected(&gr.namespace().unwrap_or_default(), &gr.name_any());
        let times = state.corrected_at.entry(id.to_string()).or_default();
        times.retain(|t| t.elapsed() < CORRECTION_WINDOW);
        times.push(Instant::now());
        if let Some(s) = Arc::make_mut(&mut state.objects).get_mut(id) {
            s.owned = Some(owned);
        }
        let fields = fields.join(", ");
        info!(object = %id, %fields, "drift corrected");
        self.events.push((
            EventType::Normal,
            Reason::DriftCorrected,
            format!("{id}: re-applied {fields}"),
        ));
        true
    }

    /// A Warning Event for drift not corrected now.
    fn report(&mut self, id: &str, fields: &[String], held_until: Option<&Time>) {
        let fields = fields.join(", ");
        let note = match (held_until, self.mode) {
            (Some(until), DriftMode::Correct) => {
                info!(object = %id, %fields, held_until = %until.0, "drift detected; correction held");
                format!(
                    "{id}: {fields} changed again right after {MAX_CORRECTIONS_IN_WINDOW} corrections (another controller may manage it); correction held until {}",
                    until.0
                )
            }
            _ => {
                info!(object = %id, %fields, "drift detected");
                format!("{id}: {fields}")
            }
        };
        self.events
            .push((EventType::Warning, Reason::DriftDetected, note));
    }
}

/// The objects whose applied fields are no longer as Capstan left them, or that are gone, with
/// the fields that drifted. Judged only once the watch has caught up with the last apply.
pub(super) fn drifted(live: &Live, sent: &HashMap<String, Sent>) -> Vec<(String, Vec<String>)> {
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    for (id, s) in sent {
        let (Some(oid), Some(owned)) = (ObjectId::parse(id), &s.owned) else {
            continue;
        };
        if !live.watches_namespace(&oid.namespace) || !live.caught_up(&oid, owned.resource_version)
        {
            continue;
        }
        let fields = match live.observed(id) {
            None => vec!["(deleted)".to_string()],
            Some(observed) => owned.fields.missing_from(&observed.fields),
        };
        if !fields.is_empty() {
            found.push((id.clone(), fields));
        }
    }
    found.sort();
    found
}

/// How long corrections of an object are held, given when it was corrected: until the window
/// holds fewer than `MAX_CORRECTIONS_IN_WINDOW` of them. None when a correction may go ahead.
pub(super) fn held_for(corrected_at: Option<&Vec<Instant>>) -> Option<Duration> {
    let recent: Vec<Duration> = corrected_at
        .into_iter()
        .flatten()
        .map(Instant::elapsed)
        .filter(|age| *age < CORRECTION_WINDOW)
        .collect();
    if recent.len() < MAX_CORRECTIONS_IN_WINDOW {
        return None;
    }
    // The window frees up when the oldest correction that keeps the count at the limit leaves.
    let mut ages = recent;
    ages.sort_unstable();
    let age = ages[MAX_CORRECTIONS_IN_WINDOW - 1];
    Some(CORRECTION_WINDOW.saturating_sub(age))
}

/// `now` plus `wait`, on the wall clock, to the second (as conditions and Events show time).
pub(super) fn wall_clock_in(now: &Time, wait: Duration) -> Time {
    let secs = now.0.as_second() + i64::try_from(wait.as_secs()).unwrap_or(i64::MAX / 2) + 1;
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or(now.0))
}

/// The `Drifted` condition from the drift entries.
pub(super) fn set_drifted(
    gr: &GitRepository,
    status: &mut GitRepositoryStatus,
    entries: &[DriftEntry],
    now: &Time,
) {
    let open: Vec<&DriftEntry> = entries.iter().filter(|e| !e.corrected).collect();
    let generation = gr.meta().generation;
    if open.is_empty() {
        status::set_condition(
            status,
            status::DRIFTED,
            false,
            Reason::NoDrift,
            "",
            generation,
            now,
        );
    } else {
        let message = open
            .iter()
            .map(|e| match &e.held_until {
                Some(until) => format!(
                    "{} ({}; correction held until {})",
                    e.id,
                    e.fields.join(", "),
                    until.0
                ),
                None => format!("{} ({})", e.id, e.fields.join(", ")),
            })
            .collect::<Vec<_>>()
            .join("; ");
        status::set_condition(
            status,
            status::DRIFTED,
            true,
            Reason::DriftDetected,
            &message,
            generation,
            now,
        );
    }
    if let Some(summary) = &mut status.summary {
        summary.drifted = open.len() as i64;
    }
}

/// Health (`spec.wait`): the kstatus health of every managed object, from the watches. Returns
/// the verdict that replaces Ready while they are not all healthy, and how soon to look again.
pub(super) fn health(
    gr: &GitRepository,
    ctx: &Context,
    state: &State,
    status: &mut GitRepositoryStatus,
    plan: &Plan,
    now: &Time,
) -> Option<(Verdict, Duration)> {
    if !gr.spec.wait {
        status::remove_condition(status, status::HEALTHY);
        return None;
    }
    let generation = gr.meta().generation;
    // Checked before anything was applied: a bad expression never gets here.
    let exprs = HealthExprs::compile(&gr.spec.health_check_exprs).unwrap_or_default();
    let (waiting, failed) = unhealthy(ctx, state, status, &exprs);
    if waiting.is_empty() && failed.is_empty() {
        let count = status.inventory.as_ref().map_or(0, |i| i.entries.len());
        let message = format!("{count} objects are healthy");
        status::set_condition(
            status,
            status::HEALTHY,
            true,
            Reason::Healthy,
            &message,
            generation,
            now,
        );
        return None;
    }
    let timeout = plan.timeout;
    let since = state.applied_at.map(|t| t.elapsed()).unwrap_or_default();
    let (reason, message, wait) = if !failed.is_empty() {
        (Reason::HealthCheckFailed, failed.join("; "), None)
    } else if since >= timeout {
        let message = format!("not healthy after {timeout:?}: {}", waiting.join("; "));
        (Reason::HealthCheckFailed, message, None)
    } else {
        let message = format!("waiting for {}", waiting.join("; "));
        (Reason::Progressing, message, Some(timeout - since))
    };
    status::set_condition(
        status,
        status::HEALTHY,
        false,
        reason,
        &message,
        generation,
        now,
    );
    Some(match wait {
        Some(wait) => (Verdict::Progressing { reason, message }, wait),
        None => (Verdict::Stalled { reason, message }, plan::interval(gr)),
    })
}

/// The managed objects not healthy yet (or not observed since the apply), and those failed.
fn unhealthy(
    ctx: &Context,
    state: &State,
    status: &GitRepositoryStatus,
    exprs: &HealthExprs,
) -> (Vec<String>, Vec<String>) {
    let mut waiting = Vec::new();
    let mut failed = Vec::new();
    let live = &ctx.cluster(state).live;
    for entry in status.inventory.iter().flat_map(|i| &i.entries) {
        let Some(id) = ObjectId::parse(&entry.id) else {
            continue;
        };
        let name = id.display_name();
        if !live.watches_namespace(&id.namespace) {
            // Outside the namespace this controller is restricted to: not observable.
            continue;
        }
        let applied_at = state
            .objects
            .get(&entry.id)
            .and_then(|s| s.owned.as_ref()?.resource_version);
        if !live.caught_up(&id, applied_at) {
            waiting.push(format!("{name}: status not observed yet"));
            continue;
        }
        let health = live.observed(&entry.id).map(|o| match &o.custom {
            Some(object) if !exprs.is_empty() => exprs.health(object).unwrap_or(o.health),
            _ => o.health,
        });
        match health {
            None => waiting.push(format!("{name}: not found")),
            Some(Health::Current) => {}
            Some(Health::InProgress(m)) => waiting.push(format!("{name}: {m}")),
            Some(Health::Failed(m)) => failed.push(format!("{name}: {m}")),
        }
    }
    (waiting, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_are_held_until_the_window_has_room() {
        let now = Instant::now();
        let ago = |secs| now.checked_sub(Duration::from_secs(secs)).unwrap();
        let held = |times: Vec<Instant>| held_for(Some(&times)).map(|d| d.as_secs_f64());
        assert_eq!(held_for(None), None);
        assert_eq!(held(vec![ago(2), ago(1)]), None);
        // Three in the window: room when the oldest of them leaves it, 10 s from now.
        let wait = held(vec![ago(50), ago(10), ago(5)]).unwrap();
        assert!((9.0..=10.0).contains(&wait), "{wait}");
        // Four: room once only two are left, when the one corrected 40 s ago leaves.
        let wait = held(vec![ago(55), ago(40), ago(10), ago(5)]).unwrap();
        assert!((19.0..=20.0).contains(&wait), "{wait}");
        // Corrections older than the window do not count.
        assert_eq!(held(vec![ago(70), ago(10), ago(5)]), None);
    }
}
