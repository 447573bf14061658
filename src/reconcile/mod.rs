//! The reconcile of one GitRepository, as a pipeline of steps, one file each:
//!
//! 1. [`plan`]: pure decisions: ask the remote now or look only at drift; is the revision
//!    applied already; re-send everything; when to come back;
//! 2. [`fetch`]: the revision the ref names, the credentials and variables, the checkout, and
//!    [`verify`]: its signatures, when `spec.verify` asks;
//! 3. [`build`]: render the checkout (pure, off the runtime);
//! 4. [`deploy`]: server-side apply of what changed, and what is managed afterwards;
//! 5. [`prune`]: what left git, behind the blast-radius guard;
//! 6. [`observe`]: drift (corrected, reported or held) and health, from the shared watches;
//! 7. [`preview`]: a pull request's head, rendered and dry-run against the cluster, when one is
//!    asked for;
//! 8. [`report`]: metrics, one status write when something changed, the Events;
//! 9. [`cleanup`]: on delete, the objects applied are deleted or released.
//!
//! A step returns its output or a [`failure::Failure`], which alone decides the reason and
//! whether it stalls or is retried. What the process knows between reconciles is one
//! [`state::State`] per GitRepository, loaded at the start and committed once at the end. The
//! decisions between steps live here: never prune after a failure, watch what is applied even
//! while git fails, Ready only once healthy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::predicates;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use crate::api::{
    FIELD_MANAGER, FINALIZER, GitRepository, GitRepositoryStatus, PREVIEW_REQUESTED_ANNOTATION,
    RECONCILE_REQUESTED_ANNOTATION,
};
use crate::apply::record::RecordError;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::render::{Limits, Tools};
use crate::source::Cache;
use crate::status::{self, Reason, Verdict};

mod build;
mod cleanup;
mod cluster;
mod depends;
mod deploy;
mod failure;
mod fetch;
#[cfg(test)]
mod mock;
mod observe;
mod plan;
mod preview;
mod prune;
mod report;
mod state;
mod verify;

use crate::runtime::{Config, Disk};
use cluster::Cluster;
use failure::Failure;
use observe::Note;
use plan::Plan;
use state::{State, States};

pub use build::{Build, helm_options};
pub use cluster::remote_client;
pub(crate) use depends::Dependents;
pub use fetch::{VariablesError, check_out, read_variables};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("inventory record: {0}")]
    Record(#[source] RecordError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cleanup: {0}")]
    Cleanup(String),
}

/// State shared by every reconcile.
pub struct Context {
    client: Client,
    cache: Arc<Cache>,
    work_dir: std::path::PathBuf,
    recorder: Recorder,
    limits: Limits,
    tools: Tools,
    /// The controller's own cluster, where the GitRepositories are.
    local: Arc<Cluster>,
    /// The clusters of `spec.kubeConfig`.
    remotes: cluster::Remotes,
    apply_concurrency: usize,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    default_service_account: Option<String>,
    states: States,
    checkouts: fetch::Checkouts,
    /// The controller's cache of GitRepositories, for `dependsOn`.
    repositories: Store<GitRepository>,
}

impl Context {
    // Each is wiring that `runtime::control` (or a test) makes on its own; a struct around
    // them would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        kube_config: kube::Config,
        client: Client,
        config: &Config,
        disk: &Disk,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
        notifier: Notifier,
        repositories: Store<GitRepository>,
    ) -> Arc<Context> {
        Arc::new(Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
            local: Arc::new(Cluster::local(
                kube_config,
                client.clone(),
                live,
                config.apply_concurrency,
            )),
            remotes: cluster::Remotes::default(),
            apply_concurrency: config.apply_concurrency,
            client,
            cache: disk.cache.clone(),
            work_dir: disk.work_dir.clone(),
            limits: config.render.limits(),
            tools: config.render.tools(),
            metrics,
            notifier,
            default_service_account: config.default_service_account.clone(),
            states: States::default(),
            checkouts: fetch::Checkouts::default(),
            repositories,
        })
    }

    /// The controller's own client, on the cluster where the GitRepositories are.
    fn client(&self) -> &Client {
        &self.client
    }

    /// The cluster `gr`'s objects go to, as [`cluster::connect`] left `state`.
    fn cluster(&self, state: &State) -> Arc<Cluster> {
        match &state.target {
            Some(target) => target.cluster.clone(),
            None => self.local.clone(),
        }
    }

    /// The client that changes the cluster for `gr`: the cluster's own, or one impersonating
    /// `spec.serviceAccountName` (or the lockdown default) there, so that the API server
    /// enforces that ServiceAccount's RBAC on every apply, prune and correction.
    fn client_for(&self, gr: &GitRepository, state: &mut State) -> Result<Client, String> {
        let cluster = self.cluster(state);
        let Some(sa) = gr
            .spec
            .service_account_name
            .as_ref()
            .or(self.default_service_account.as_ref())
        else {
            state.user = None;
            return Ok(cluster.client().clone());
        };
        let user = format!(
            "system:serviceaccount:{}:{sa}",
            gr.namespace().unwrap_or_default()
        );
        let (config, key) = cluster.impersonating(&user);
        let client = self.states.client(&key, || {
            Client::try_from(config).map_err(|e| format!("impersonating {user}: {e}"))
        })?;
        state.user = Some(key);
        Ok(client)
    }

    /// The client that reads `gr`'s Secrets and ConfigMaps (credentials, keys, variables, in
    /// its own namespace): as its ServiceAccount, unless that is a remote cluster's, when the
    /// controller reads them.
    fn reader_for(&self, gr: &GitRepository, state: &mut State) -> Result<Client, String> {
        match gr.spec.kube_config {
            Some(_) => Ok(self.client.clone()),
            None => self.client_for(gr, state),
        }
    }

    /// Drops what this process knows of `gr`: its record, its clients, its metric series.
    pub(crate) fn forget(&self, gr: &GitRepository) {
        self.states.forget(&uid(gr));
        self.metrics
            .forget(&gr.namespace().unwrap_or_default(), &gr.name_any());
    }

    /// After a re-list: keeps the records of the GitRepositories that still exist.
    pub(crate) fn retain(&self, exists: impl Fn(&str) -> bool) {
        self.states.retain(exists);
    }
}

/// The key of a GitRepository's record: its uid, so a GitRepository deleted and created again
/// under the same name starts afresh.
pub(crate) fn uid(gr: &GitRepository) -> String {
    gr.uid()
        .unwrap_or_else(|| format!("{}/{}", gr.namespace().unwrap_or_default(), gr.name_any()))
}

/// What, in a GitRepository, asks for a reconcile: its spec (generation), the reconcile-now and
/// preview annotations, and the finalizer and deletion state the finalizer helper acts on.
pub(crate) fn trigger_hash(gr: &GitRepository) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(gr).hash(&mut h);
    gr.annotations()
        .get(RECONCILE_REQUESTED_ANNOTATION)
        .hash(&mut h);
    gr.annotations()
        .get(PREVIEW_REQUESTED_ANNOTATION)
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
            Finalizer::Cleanup(gr) => cleanup::cleanup(&gr, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub(crate) fn error_policy(gr: Arc<GitRepository>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(namespace = gr.namespace(), name = gr.name_any(), %error, "reconcile error");
    Action::requeue(plan::backoff(ctx.states.failed(&uid(&gr))))
}

/// One reconcile of a GitRepository that exists: plan, the steps when the remote is due, then
/// drift and health, then one status write and the Events when anything changed, and only then
/// the record.
async fn sync(gr: &GitRepository, ctx: &Context) -> Result<Action, Error> {
    if gr.spec.suspend {
        return Ok(suspended(gr, ctx));
    }
    let started = Instant::now();
    let uid = uid(gr);
    let mut state = ctx.states.load(&uid);
    // What this process wrote last is fresher than the watch's copy right after a write.
    if state.status.is_none() {
        state.status = full_status(ctx, gr).await?;
    }
    let before = state.status.clone();
    let mut status = before.clone().unwrap_or_default();
    let plan = Plan::new(gr, &status, state.last_check.map(|t| t.elapsed()));
    // Until the pipeline resolves the revision it attempts, a failure is about no commit.
    state.failed_unresolved = plan.git_due;
    // A remote's kubeconfig is read again after a change, a request or a failure.
    let steady = plan.settled && state.applied_current(gr) && state.failures == 0;
    let connected = cluster::connect(ctx, gr, &mut state, !steady).await;
    let reachable = connected.is_ok();
    let result = match connected {
        Err(failure) => {
            state.failed_unresolved = true;
            Err(failure)
        }
        Ok(()) if plan.git_due => pipeline(gr, ctx, &mut state, &mut status, &plan).await,
        Ok(()) => Ok(None),
    };
    if plan.git_due || result.is_err() {
        remember(gr, &mut state, &result);
    }
    state.failed_unresolved &= result.is_err();
    let delay = plan.next(result.as_ref(), || {
        state.failures = state.failures.saturating_add(1);
        plan::backoff(state.failures)
    });
    if result.is_ok() {
        state.failures = 0;
    }
    let verdict = result.unwrap_or_else(|failure| {
        let (reason, message) = (failure.reason(), failure.to_string());
        match failure.stalls() {
            true => warn!(%reason, error = %message, "stalled until the spec or git changes"),
            false => warn!(%reason, error = %message, "failed; retrying with backoff"),
        }
        Some(failure.verdict())
    });
    // Conditions are stamped with the time they changed: after the steps, not before.
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // Without its cluster there is nothing to observe.
    let (verdict, events, delay) = if reachable {
        observe(
            gr,
            ctx,
            &mut state,
            &mut status,
            &plan,
            verdict,
            delay,
            &now,
        )
        .await
    } else {
        (verdict, Vec::new(), delay)
    };
    // Pull requests' previews, once the cluster they are compared with is reachable; told to
    // the pull requests once the status records them.
    let mut previewed = Vec::new();
    if gr.spec.preview.is_none() {
        status.previews.clear();
    } else if reachable {
        for request in preview::pending(gr, &mut status) {
            let told = preview::preview(ctx, gr, &mut state, &mut status, &plan, request).await;
            previewed.extend(told);
        }
    }
    if plan.request.is_some() {
        status.last_handled_reconcile_at = plan.request.clone();
    }
    status.observed_generation = gr.meta().generation;
    if let Some(verdict) = &verdict {
        status::set_conditions(&mut status, verdict, gr.meta().generation, &now);
    }
    let written = report::write(
        ctx,
        gr,
        &mut state,
        before.as_ref(),
        status,
        verdict.as_ref(),
        events,
    )
    .await;
    // Counted once its status is written: a reconcile counted is one whose outcome shows.
    if let Some(shown) = &state.status {
        report::metrics(ctx, gr, shown, started);
    }
    written?;
    for notice in previewed {
        ctx.notifier.notify(notice);
    }
    ctx.states.commit(&uid, state);
    Ok(Action::requeue(delay))
}

/// `gr`'s status with its inventory record read back in. A part deleted by hand leaves what
/// the status shows: objects only the lost part listed are no longer pruned or watched.
async fn full_status(
    ctx: &Context,
    gr: &GitRepository,
) -> Result<Option<GitRepositoryStatus>, Error> {
    match crate::apply::record::load(&ctx.client, gr).await {
        Ok(status) => Ok(status),
        Err(e @ RecordError::Missing(_)) => {
            let note = format!("{e}: only the objects the status lists are still managed");
            warn!(error = %e, "the inventory record is incomplete");
            report::event(
                ctx,
                gr,
                EventType::Warning,
                Reason::InventoryIncomplete,
                note,
            )
            .await;
            Ok(gr.status.clone())
        }
        Err(e) => Err(Error::Record(e)),
    }
}

/// Suspended: nothing changes, nothing is asked.
fn suspended(gr: &GitRepository, ctx: &Context) -> Action {
    let (ns, name) = (gr.namespace().unwrap_or_default(), gr.name_any());
    ctx.metrics.suspended(&ns, &name);
    info!("suspended; nothing changes");
    Action::requeue(plan::interval(gr))
}

/// The steps, when the remote is due. `Ok(None)` when the remote still names the revision
/// applied last and nothing else asks for work.
async fn pipeline(
    gr: &GitRepository,
    ctx: &Context,
    state: &mut State,
    status: &mut GitRepositoryStatus,
    plan: &Plan,
) -> Result<Option<Verdict>, Failure> {
    let started = Instant::now();
    Plan::check(gr)?;
    depends::check(gr, &ctx.repositories)?;
    let Some(source) = fetch::resolve(ctx, gr, state, status, plan).await? else {
        return Ok(None);
    };
    let revision = source.resolved.revision.clone();
    status.last_attempted_revision = Some(revision.clone());
    state.failed_unresolved = false;
    if status.artifact.as_ref().map(|a| &a.revision) != Some(&revision) {
        status.artifact = Some(crate::api::Artifact {
            revision: revision.clone(),
            fetched_at: Time(k8s_openapi::jiff::Timestamp::now()),
        });
    }
    if let Some(verdict) = deploy::untouched(ctx, gr, state, status, plan, &source).await {
        return Ok(Some(verdict));
    }
    let checkout = fetch::checkout(ctx, gr, &source, plan).await?;
    verify::verify(ctx, gr, state, &checkout).await?;
    let committed_at = checkout.committed_at;
    let rendered = build::render(ctx, gr, state, &source, checkout, plan).await?;
    let applied = deploy::apply(ctx, gr, state, status, plan, &source, &rendered.manifests).await?;
    let outcome = prune::prune(ctx, gr, state, status, &revision, applied).await?;
    let verdict = deploy::conclude(ctx, state, status, &source, outcome, committed_at, started);
    state.reads = rendered.reads.map(|paths| state::Reads {
        commit: source.resolved.oid,
        paths,
    });
    Ok(Some(verdict))
}

/// What the record keeps of the steps' result: when the remote was asked, and whether what is
/// applied is what the last applied revision says.
fn remember(gr: &GitRepository, state: &mut State, result: &Result<Option<Verdict>, Failure>) {
    match result {
        Ok(verdict) => {
            state.last_check = Some(Instant::now());
            if let Some(Verdict::Ready { message, .. }) = verdict {
                state.applied_ok = true;
                state.applied_generation = gr.meta().generation;
                state.applied_at = Some(Instant::now());
                state.message = message.clone();
            }
        }
        Err(failure) => {
            // A failure asks the remote again at the next try (the backoff decides when).
            state.last_check = None;
            // What is applied stays applied when only the source or the render failed: drift
            // and health go on being watched.
            if failure.after_apply() {
                state.applied_ok = false;
            }
        }
    }
}

/// Drift and health of what is applied, watched even while git is failing. Health replaces the
/// verdict while objects are not healthy; Ready again with the last apply's message once they
/// are.
#[allow(clippy::too_many_arguments)] // the reconcile's whole working set; split, it would hide it
async fn observe(
    gr: &GitRepository,
    ctx: &Context,
    state: &mut State,
    status: &mut GitRepositoryStatus,
    plan: &Plan,
    mut verdict: Option<Verdict>,
    mut delay: Duration,
    now: &Time,
) -> (Option<Verdict>, Vec<Note>, Duration) {
    if !state.applied_ok {
        return (verdict, Vec::new(), delay);
    }
    let failed = matches!(
        verdict,
        Some(Verdict::Retrying { .. } | Verdict::Stalled { .. })
    );
    let (events, held) = observe::drift(gr, ctx, state, status, now).await;
    if let Some(held) = held {
        // A held correction is made when its window ends, not at the next poll.
        delay = delay.min(held.max(Duration::from_millis(500)));
    }
    if failed {
        return (verdict, events, delay);
    }
    if let Some((health, wait)) = observe::health(gr, ctx, state, status, plan, now) {
        delay = delay.min(wait);
        verdict = Some(health);
    } else if verdict.is_none() && status::ready(Some(status)).is_some_and(|c| c.status != "True") {
        // Healthy now, after waiting: Ready again with the message of the last apply.
        verdict = Some(Verdict::Ready {
            reason: Reason::ReconciliationSucceeded,
            message: state.message.clone(),
        });
    }
    (verdict, events, delay)
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
}
