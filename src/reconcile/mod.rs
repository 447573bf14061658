//! The reconcile of one GitRepository, as a pipeline:
//!
//! 1. plan (here): ask the remote at most once per interval; skip when nothing changed;
//! 2. [`stages`]: source (git2) -> render (pure) -> apply (SSA, prune, inventory);
//! 3. [`observe`]: drift (corrected, reported or held) and health, from the shared watches;
//! 4. [`report`]: status (pure, one write when something changed) and Events;
//! 5. [`cleanup`]: on delete, the objects applied are deleted or released.
//!
//! The decisions between steps live here: never prune after a failure, stall on what only a
//! change can fix, back off on what may pass.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::predicates;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use tracing::{info, instrument, warn};

use crate::api::{
    FIELD_MANAGER, FINALIZER, GitRepository, GitRepositoryStatus, RECONCILE_REQUESTED_ANNOTATION,
};
use crate::apply::{Applier, Sent};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::render::{Limits, Tools};
use crate::source::{Auth, Cache};
use crate::status::Reason;
use crate::status::{self, Verdict};

mod cleanup;
mod observe;
mod report;
mod stages;

use crate::runtime::{Config, Disk};
use cleanup::cleanup;
use observe::{drift, health};
use report::{event, progressing, publish, write_status};
use stages::stages;
pub use stages::{VariablesError, helm_options, read_variables};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cleanup: {0}")]
    Cleanup(String),
}

/// State shared by every reconcile.
pub struct Context {
    client: Client,
    cache: Arc<Cache>,
    work_dir: PathBuf,
    applier: Applier,
    recorder: Recorder,
    limits: Limits,
    tools: Tools,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    /// The controller's own connection settings, from which impersonating clients are made.
    kube_config: kube::Config,
    default_service_account: Option<String>,
    /// Clients impersonating a ServiceAccount, per `system:serviceaccount:<ns>:<name>`.
    impersonating: Mutex<HashMap<String, Client>>,
    /// Credentials per Secret (namespace, name), as read last.
    auth: Mutex<HashMap<(String, String), Auth>>,
    /// Per GitRepository: what was applied last and when the remote was last asked. Lost on
    /// restart, which costs one re-apply of everything.
    memory: Mutex<HashMap<ObjectRef<GitRepository>, Memory>>,
    /// Per GitRepository: consecutive failures, for backoff.
    failures: Mutex<HashMap<ObjectRef<GitRepository>, u32>>,
}

impl Context {
    pub(crate) fn new(
        kube_config: kube::Config,
        client: Client,
        config: &Config,
        disk: &Disk,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
    ) -> Arc<Context> {
        Arc::new(Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
            client,
            cache: disk.cache.clone(),
            work_dir: disk.work_dir.clone(),
            applier: Applier::new(config.apply_concurrency),
            limits: config.render.limits(),
            tools: config.render.tools(),
            live,
            metrics,
            kube_config,
            default_service_account: config.default_service_account.clone(),
            impersonating: Mutex::default(),
            auth: Mutex::default(),
            memory: Mutex::default(),
            failures: Mutex::default(),
        })
    }
}

impl Context {
    /// Reads what this process remembers of a GitRepository.
    fn recall<T>(
        &self,
        key: &ObjectRef<GitRepository>,
        read: impl FnOnce(&Memory) -> T,
    ) -> Option<T> {
        self.memory.lock().get(key).map(read)
    }

    /// The client that changes the cluster for `gr`: the controller's own, or one impersonating
    /// `spec.serviceAccountName` (or the lockdown default), so that the API server enforces that
    /// ServiceAccount's RBAC on every apply, prune and correction.
    fn client_for(&self, gr: &GitRepository) -> Result<Client, String> {
        let Some(sa) = gr
            .spec
            .service_account_name
            .as_ref()
            .or(self.default_service_account.as_ref())
        else {
            return Ok(self.client.clone());
        };
        let user = format!(
            "system:serviceaccount:{}:{sa}",
            gr.namespace().unwrap_or_default()
        );
        if let Some(client) = self.impersonating.lock().get(&user) {
            return Ok(client.clone());
        }
        let mut config = self.kube_config.clone();
        config.auth_info.impersonate = Some(user.clone());
        let client = Client::try_from(config).map_err(|e| format!("impersonating {user}: {e}"))?;
        self.impersonating.lock().insert(user, client.clone());
        Ok(client)
    }
}

/// What, in a GitRepository, asks for a reconcile: its spec (generation), the reconcile-now
/// annotation, and the finalizer and deletion state the finalizer helper acts on.
pub(crate) fn trigger_hash(gr: &GitRepository) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(gr).hash(&mut h);
    gr.annotations()
        .get(RECONCILE_REQUESTED_ANNOTATION)
        .hash(&mut h);
    gr.finalizers().hash(&mut h);
    gr.meta().deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

#[instrument(skip_all, fields(namespace = gr.namespace().unwrap_or_default(), name = gr.name_any()))]
pub(crate) async fn reconcile(gr: Arc<GitRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = gr.namespace().unwrap_or_default();
    let api: Api<GitRepository> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, gr, |event| async {
        match event {
            Finalizer::Apply(gr) => sync(&gr, &ctx).await,
            Finalizer::Cleanup(gr) => cleanup(&gr, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub(crate) fn error_policy(gr: Arc<GitRepository>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(namespace = gr.namespace(), name = gr.name_any(), %error, "reconcile error");
    Action::requeue(backoff(&ctx, &gr))
}

/// Exponential per-object backoff with jitter: 5 s, 10 s, ... up to 5 minutes.
fn backoff(ctx: &Context, gr: &GitRepository) -> Duration {
    let mut failures = ctx.failures.lock();
    let n = failures.entry(ObjectRef::from(gr)).or_default();
    *n = n.saturating_add(1);
    let base = Duration::from_secs(5).saturating_mul(1 << (*n - 1).min(6));
    jitter(base.min(Duration::from_secs(300)))
}

/// Up to +10%, so GitRepositories created together drift apart.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.saturating_add(d.mul_f64(f64::from(nanos % 1000) / 10_000.0))
}

/// What a failed stage means for the GitRepository.
struct Failure {
    verdict: Verdict,
}

impl Failure {
    /// Stalled or retried, as the reason says.
    fn of(reason: Reason, message: impl ToString) -> Self {
        if reason.stalls() {
            Failure::stall(reason, message)
        } else {
            Failure::retry(reason, message)
        }
    }
    fn retry(reason: Reason, message: impl ToString) -> Self {
        Failure {
            verdict: Verdict::Retrying {
                reason,
                message: message.to_string(),
            },
        }
    }
    fn stall(reason: Reason, message: impl ToString) -> Self {
        Failure {
            verdict: Verdict::Stalled {
                reason,
                message: message.to_string(),
            },
        }
    }
}

/// One reconcile of a GitRepository that exists: plan, the stages when due, then drift and
/// health, then one status write and the Events, when anything changed.
async fn sync(gr: &GitRepository, ctx: &Context) -> Result<Action, Error> {
    // At least a second: `0s` must not spin.
    let interval = parse_duration(&gr.spec.interval)
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(1));
    let (ns, name) = (gr.namespace().unwrap_or_default(), gr.name_any());
    let labels = [ns.as_str(), name.as_str()];
    ctx.metrics
        .suspended
        .with_label_values(&labels)
        .set(i64::from(gr.spec.suspend));
    if gr.spec.suspend {
        info!("suspended; nothing changes");
        ctx.metrics.reconciled(&ns, &name, "Suspended");
        return Ok(Action::requeue(interval));
    }
    let started = Instant::now();
    let key = ObjectRef::from(gr);
    // What this process wrote last is fresher than the watch's copy right after a write.
    let old_status = ctx
        .recall(&key, |m| m.status.clone())
        .flatten()
        .or_else(|| gr.status.clone());
    let mut status = old_status.clone().unwrap_or_default();
    let request = gr
        .annotations()
        .get(RECONCILE_REQUESTED_ANNOTATION)
        .cloned();
    let now = Time(k8s_openapi::jiff::Timestamp::now());

    // The remote is asked once per interval, or at once when the spec changed, a reconcile was
    // requested, or this process has not applied the GitRepository yet. Between those, a wake-up
    // comes from a managed object changing: only drift and health are looked at.
    let pending = request
        .as_deref()
        .filter(|r| status.last_handled_reconcile_at.as_deref() != Some(*r));
    let settled = status.observed_generation == gr.meta().generation && pending.is_none();
    let last_check = ctx.recall(&key, |m| m.last_check).flatten();
    let git_due = !settled || last_check.is_none_or(|t| t.elapsed() >= interval);

    let result = if git_due {
        pipeline(gr, ctx, &mut status, pending, &now).await
    } else {
        Ok(None)
    };
    let (mut verdict, mut delay) = match result {
        Ok(Some(verdict)) => (Some(verdict), jitter(interval)),
        // A wake between polls must not push the next poll back.
        Ok(None) if !git_due => {
            let until_due = last_check.map_or(interval, |t| interval.saturating_sub(t.elapsed()));
            (None, until_due.max(Duration::from_millis(500)))
        }
        Ok(None) => (None, jitter(interval)),
        Err(Failure { verdict }) => {
            let delay = match &verdict {
                // Only a change fixes it; look again at the next interval.
                Verdict::Stalled { reason, message } => {
                    warn!(%reason, %message, "stalled until the spec or git changes");
                    jitter(interval)
                }
                Verdict::Retrying { reason, message } => {
                    warn!(%reason, %message, "failed; retrying with backoff");
                    backoff(ctx, gr)
                }
                _ => backoff(ctx, gr),
            };
            (Some(verdict), delay)
        }
    };
    // Conditions are stamped with the time they changed: after the stages, not before.
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut events = Vec::new();
    let applied = ctx.recall(&key, |m| m.applied_ok).unwrap_or(false);
    let failed = matches!(
        verdict,
        Some(Verdict::Retrying { .. } | Verdict::Stalled { .. })
    );
    if !failed {
        ctx.failures.lock().remove(&key);
    }
    if applied {
        // What is applied is watched even while git is failing.
        let (found, held) = drift(gr, ctx, &mut status, &now).await;
        events = found;
        if let Some(held) = held {
            // A held correction is made when its window ends, not at the next poll.
            delay = delay.min(held.max(Duration::from_millis(500)));
        }
    }
    if applied && !failed {
        if let Some((health_verdict, wait)) = health(gr, ctx, &mut status, &now) {
            delay = delay.min(wait);
            verdict = Some(health_verdict);
        } else if verdict.is_none()
            && status::ready(Some(&status)).is_some_and(|c| c.status != "True")
        {
            // Healthy now, after waiting: Ready again with the message of the last apply.
            verdict = Some(Verdict::Ready {
                reason: Reason::ReconciliationSucceeded,
                message: ctx.recall(&key, |m| m.message.clone()).unwrap_or_default(),
            });
        }
    }
    if request.is_some() {
        status.last_handled_reconcile_at = request;
    }
    status.observed_generation = gr.meta().generation;
    if let Some(verdict) = &verdict {
        status::set_conditions(&mut status, verdict, gr.meta().generation, &now);
    }
    let ready = status::ready(Some(&status));
    ctx.metrics
        .ready
        .with_label_values(&labels)
        .set(i64::from(ready.is_some_and(|c| c.status == "True")));
    ctx.metrics
        .reconciled(&ns, &name, ready.map_or("Unknown", |c| c.reason.as_str()));
    ctx.metrics.managed_objects.with_label_values(&labels).set(
        status
            .inventory
            .as_ref()
            .map_or(0, |i| i.entries.len() as i64),
    );
    ctx.metrics
        .drifted_objects
        .with_label_values(&labels)
        .set(status.summary.as_ref().map_or(0, |s| s.drifted));
    ctx.metrics
        .reconcile_duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    // Compared with what was written last, which may be this reconcile's `Reconciling` write.
    let written = ctx
        .recall(&key, |m| m.status.clone())
        .flatten()
        .or_else(|| old_status.clone());
    if status::differs(written.as_ref(), &status) {
        write_status(ctx, gr, &status).await?;
        ctx.memory.lock().entry(key.clone()).or_default().status = Some(status.clone());
        if let Some(verdict) = &verdict {
            let new_revision = old_status
                .as_ref()
                .and_then(|s| s.last_applied_revision.as_ref())
                != status.last_applied_revision.as_ref();
            publish(ctx, gr, verdict, new_revision, &status).await;
        }
        for (type_, reason, note) in events {
            event(ctx, gr, type_, reason, note).await;
        }
    }
    Ok(Action::requeue(delay))
}

/// The stages. `Ok(None)` when the remote still names the revision applied last and nothing else
/// asks for work.
async fn pipeline(
    gr: &GitRepository,
    ctx: &Context,
    status: &mut GitRepositoryStatus,
    request: Option<&str>,
    now: &Time,
) -> Result<Option<Verdict>, Failure> {
    let result = stages(gr, ctx, status, request, now).await;
    let mut memory = ctx.memory.lock();
    let memory = memory.entry(ObjectRef::from(gr)).or_default();
    match &result {
        Ok(verdict) => {
            memory.last_check = Some(Instant::now());
            if let Some(Verdict::Ready { message, .. }) = verdict {
                memory.applied_ok = true;
                memory.applied_at = Some(Instant::now());
                memory.message = message.clone();
            }
        }
        Err(Failure { verdict }) => {
            // A failure asks the remote again at the next try (the backoff decides when).
            memory.last_check = None;
            // What is applied stays applied when only the source or the render failed:
            // drift and health go on being watched.
            if let Verdict::Retrying { reason, .. } | Verdict::Stalled { reason, .. } = verdict
                && reason.after_apply()
            {
                memory.applied_ok = false;
            }
        }
    }
    result
}

/// What this process remembers of a GitRepository between reconciles.
#[derive(Default)]
struct Memory {
    /// Per inventory id: what was sent last.
    objects: HashMap<String, Sent>,
    /// When the remote was last asked for the ref.
    last_check: Option<Instant>,
    /// Whether the last apply went through (prune included).
    applied_ok: bool,
    applied_at: Option<Instant>,
    /// The Ready message of the last apply.
    message: String,
    /// The status this process wrote last: fresher than the watch's copy right after a write.
    status: Option<GitRepositoryStatus>,
    /// When each drifted object was corrected, within the last `CORRECTION_WINDOW`.
    corrected_at: HashMap<String, Vec<Instant>>,
    /// A digest of the `postBuild` variables the last apply was rendered with.
    variables: Option<u64>,
}

fn timeout_of(gr: &GitRepository) -> Result<Duration, String> {
    match &gr.spec.timeout {
        Some(t) => parse_duration(t).ok_or_else(|| format!("invalid timeout {t:?}")),
        None => Ok(Duration::from_secs(60)),
    }
}

/// Parses a Go-style duration (`1m`, `1h30m`, `1.5s`, `500ms`), as the CRD pattern admits.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        total += value * unit;
        rest = &rest[len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("1d"), None);
    }

    #[test]
    fn jitter_adds_at_most_a_tenth() {
        let d = Duration::from_secs(60);
        let j = jitter(d);
        assert!(j >= d && j <= d + Duration::from_secs(6));
    }
}
