//! Orchestrates the pipeline for each GitRepository:
//! source (git2) -> render (pure) -> apply (SSA, prune, inventory) -> status (pure, one write).
//! The decisions between stages live here: skip when nothing changed, never prune after a failure,
//! stall on what only a change can fix, back off on what may pass.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use crate::api::{
    Artifact, DeletionPolicy, FIELD_MANAGER, FINALIZER, GitRepository, GitRepositoryStatus,
    Inventory, InventoryEntry, PruneBlocked, RECONCILE_REQUESTED_ANNOTATION, Summary,
};
use crate::apply::{self, Action as Applied, Applier, ApplyOptions, Owner};
use crate::render::{self, Limits};
use crate::source::{Auth, Cache, RemoteUrl, SourceError};
use crate::status::{self, Verdict};
use crate::telemetry::LogFormat;

/// Flags of `capstan controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// GitRepositories reconciled at once.
    #[arg(long, env = "CAPSTAN_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Concurrent server-side applies within one GitRepository.
    #[arg(long, env = "CAPSTAN_APPLY_CONCURRENCY", default_value_t = 8)]
    pub apply_concurrency: usize,
    /// Concurrent git operations.
    #[arg(long, env = "CAPSTAN_GIT_CONCURRENCY", default_value_t = 2)]
    pub git_concurrency: usize,
    /// Watch GitRepositories in this namespace only (default: all namespaces).
    #[arg(long, env = "CAPSTAN_NAMESPACE")]
    pub namespace: Option<String>,
    /// Where repositories are cached between polls.
    #[arg(long, env = "CAPSTAN_CACHE_DIR", default_value = "/tmp/capstan")]
    pub cache_dir: PathBuf,
    #[arg(long, env = "CAPSTAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `capstan=debug,kube=info`.
    #[arg(long, env = "CAPSTAN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cleanup: {0}")]
    Cleanup(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("connecting to the API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("preparing the cache directory: {0}")]
    Io(#[from] std::io::Error),
}

/// State shared by every reconcile.
pub struct Context {
    client: Client,
    cache: Cache,
    work_dir: PathBuf,
    applier: Applier,
    recorder: Recorder,
    limits: Limits,
    /// Per GitRepository: digests of what was last sent, per inventory id. Lost on restart, which
    /// costs one re-apply of everything.
    digests: Mutex<HashMap<ObjectRef<GitRepository>, HashMap<String, u64>>>,
    /// Per GitRepository: consecutive failures, for backoff.
    failures: Mutex<HashMap<ObjectRef<GitRepository>, u32>>,
}

impl Context {
    pub fn new(client: Client, config: &Config) -> std::io::Result<Arc<Context>> {
        crate::source::set_network_timeouts();
        let work_dir = config.cache_dir.join("work");
        // Checkouts left by a previous process are never reused.
        let _ = std::fs::remove_dir_all(&work_dir);
        std::fs::create_dir_all(&work_dir)?;
        let repos = config.cache_dir.join("repos");
        std::fs::create_dir_all(&repos)?;
        Ok(Arc::new(Context {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
            client,
            cache: Cache::new(repos, config.git_concurrency),
            work_dir,
            applier: Applier::new(config.apply_concurrency),
            limits: Limits::default(),
            digests: Mutex::default(),
            failures: Mutex::default(),
        }))
    }
}

/// Runs the controller until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), StartError> {
    let client = Client::try_default().await?;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        info!("shutting down: finishing in-flight reconciles");
    };
    serve(client, config, shutdown).await
}

/// Runs the controller with `client` until `shutdown` completes; in-flight reconciles finish.
pub async fn serve(
    client: Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let ctx = Context::new(client.clone(), &config)?;
    let api: Api<GitRepository> = match &config.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let (reader, writer) = reflector::store();
    // Our own status writes change neither of these, so they never trigger a reconcile.
    let triggers = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(trigger_hash, Default::default());
    info!("capstan controller starting");
    Controller::for_stream(triggers, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    Ok(())
}

/// What, in a GitRepository, asks for a reconcile: its spec (generation), the reconcile-now
/// annotation, and the finalizer and deletion state the finalizer helper acts on.
fn trigger_hash(gr: &GitRepository) -> Option<u64> {
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
async fn reconcile(gr: Arc<GitRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
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

fn error_policy(gr: Arc<GitRepository>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(namespace = gr.namespace(), name = gr.name_any(), %error, "reconcile error");
    Action::requeue(backoff(&ctx, &gr))
}

/// Exponential per-object backoff with jitter: 5 s, 10 s, ... up to 5 minutes.
fn backoff(ctx: &Context, gr: &GitRepository) -> Duration {
    let mut failures = ctx.failures.lock().expect("failures lock");
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
    fn retry(reason: &'static str, message: impl ToString) -> Self {
        Failure {
            verdict: Verdict::Retrying {
                reason,
                message: message.to_string(),
            },
        }
    }
    fn stall(reason: &'static str, message: impl ToString) -> Self {
        Failure {
            verdict: Verdict::Stalled {
                reason,
                message: message.to_string(),
            },
        }
    }
}

async fn sync(gr: &GitRepository, ctx: &Context) -> Result<Action, Error> {
    // At least a second: `0s` must not spin.
    let interval = parse_duration(&gr.spec.interval)
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(1));
    if gr.spec.suspend {
        info!("suspended; nothing changes");
        return Ok(Action::requeue(interval));
    }
    let mut status = gr.status.clone().unwrap_or_default();
    let old_status = gr.status.clone();
    let request = gr
        .annotations()
        .get(RECONCILE_REQUESTED_ANNOTATION)
        .cloned();
    let now = Time(k8s_openapi::jiff::Timestamp::now());

    let result = pipeline(gr, ctx, &mut status, request.as_deref(), &now).await;
    let (verdict, action) = match result {
        Ok(Some(verdict)) => {
            ctx.failures
                .lock()
                .expect("failures lock")
                .remove(&ObjectRef::from(gr));
            (verdict, Action::requeue(jitter(interval)))
        }
        // Nothing changed: no write, no event.
        Ok(None) => return Ok(Action::requeue(jitter(interval))),
        Err(Failure { verdict }) => {
            let delay = match verdict {
                // Only a change fixes it; look again at the next interval.
                Verdict::Stalled { .. } => jitter(interval),
                _ => backoff(ctx, gr),
            };
            (verdict, Action::requeue(delay))
        }
    };
    if request.is_some() {
        status.last_handled_reconcile_at = request;
    }
    status.observed_generation = gr.meta().generation;
    status::set_conditions(&mut status, &verdict, gr.meta().generation, &now);
    if status::differs(old_status.as_ref(), &status) {
        write_status(ctx, gr, &status).await?;
        publish(ctx, gr, &verdict, &status).await;
    }
    Ok(action)
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
    let namespace = gr.namespace().unwrap_or_default();
    parse_duration(&gr.spec.interval).ok_or_else(|| {
        Failure::stall(
            "InvalidSpec",
            format!("invalid interval {:?}", gr.spec.interval),
        )
    })?;
    let timeout = match &gr.spec.timeout {
        Some(t) => parse_duration(t)
            .ok_or_else(|| Failure::stall("InvalidSpec", format!("invalid timeout {t:?}")))?,
        None => Duration::from_secs(60),
    };

    // Source: ask the remote which commit the ref names.
    let url = RemoteUrl::parse(&gr.spec.url).map_err(|e| Failure::stall(e.reason(), e))?;
    let auth = load_auth(ctx, gr, &namespace).await?;
    let resolved = ctx
        .cache
        .resolve(&url, &auth, &gr.spec.git_ref(), timeout)
        .await
        .map_err(|e| match e.reason() {
            "InvalidSpec" | "InvalidSource" => Failure::stall(e.reason(), e),
            reason => Failure::retry(reason, e),
        })?;

    let up_to_date = status.last_applied_revision.as_deref() == Some(resolved.revision.as_str())
        && status.observed_generation == gr.meta().generation
        && request.is_none_or(|r| status.last_handled_reconcile_at.as_deref() == Some(r))
        && status::ready(Some(status)).is_some_and(|c| c.status == "True");
    if up_to_date {
        return Ok(None);
    }

    status.last_attempted_revision = Some(resolved.revision.clone());
    if status.artifact.as_ref().map(|a| a.revision.as_str()) != Some(resolved.revision.as_str()) {
        status.artifact = Some(Artifact {
            revision: resolved.revision.clone(),
            fetched_at: now.clone(),
        });
    }

    // Fetch (only when the commit is not cached yet) and check out.
    let work = tempfile::tempdir_in(&ctx.work_dir).map_err(|e| {
        Failure::retry("FetchFailed", format!("creating a checkout directory: {e}"))
    })?;
    ctx.cache
        .checkout(&url, &auth, &resolved, work.path(), timeout)
        .await
        .map_err(|e| Failure::retry(e.reason(), e))?;

    // Render.
    let root = work.path().to_path_buf();
    let (path, ignore, limits) = (gr.spec.path.clone(), gr.spec.ignore.clone(), ctx.limits);
    let rendered = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || {
            render::render(&root, path.as_deref(), ignore.as_deref(), &limits)
        }),
    )
    .await
    .map_err(|_| {
        Failure::stall(
            "BuildFailed",
            format!("rendering took longer than {timeout:?}"),
        )
    })?
    .expect("render panicked");
    let manifests = rendered
        .map_err(|e| Failure::stall(e.reason(), format!("revision {}: {e}", resolved.revision)))?;
    drop(work);

    // Apply. An invalid maxPrune is refused before anything changes.
    if gr.spec.prune {
        apply::prune_blocked(1, 1, gr.spec.max_prune.as_ref())
            .map_err(|m| Failure::stall("InvalidSpec", m))?;
    }
    let owner = Owner {
        namespace: namespace.clone(),
        name: gr.name_any(),
    };
    let previous_entries = status.inventory.clone().unwrap_or_default().entries;
    let previous: HashSet<String> = previous_entries.iter().map(|e| e.id.clone()).collect();
    let key = ObjectRef::from(gr);
    // A reconcile asked for by hand re-sends everything, whatever the digests say.
    let previous_digests = match request {
        Some(_) => HashMap::new(),
        None => ctx
            .digests
            .lock()
            .expect("digests lock")
            .get(&key)
            .cloned()
            .unwrap_or_default(),
    };
    let default_namespace = gr
        .spec
        .target_namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    let opts = ApplyOptions {
        owner: &owner,
        default_namespace: &default_namespace,
        previous: &previous,
        previous_digests: &previous_digests,
        timeout,
    };
    let report = ctx.applier.apply(&ctx.client, &manifests, &opts).await;
    let mut outcome = Outcome {
        entries: report
            .objects
            .iter()
            .filter(|(_, _, action)| !matches!(action, Applied::Failed(_)))
            .map(|(id, v, _)| InventoryEntry {
                id: id.to_string(),
                v: v.clone(),
            })
            .collect(),
        digests: report.digests.clone(),
        summary: Summary {
            total: report.objects.len() as i64,
            created: report.count(|a| *a == Applied::Created),
            configured: report.count(|a| *a == Applied::Configured),
            unchanged: report.count(|a| *a == Applied::Unchanged),
            ..Summary::default()
        },
    };

    if let Some(error) = report.error() {
        // Keep managing everything applied before and now; prune nothing.
        outcome.entries.extend(previous_entries);
        outcome.record(ctx, &key, status);
        return Err(Failure::retry(error.reason(), error));
    }

    // Prune, behind the blast-radius guard.
    let desired: BTreeSet<String> = outcome.entries.iter().map(|e| e.id.clone()).collect();
    let candidates = apply::prune_candidates(&previous_entries, &desired);
    status.prune_blocked = None;
    if gr.spec.prune && !candidates.is_empty() {
        let managed = previous_entries.len();
        if let Ok(Some(limit)) =
            apply::prune_blocked(candidates.len(), managed, gr.spec.max_prune.as_ref())
        {
            let message = format!(
                "revision {} would prune {} of {managed} managed objects, over the limit ({limit}); nothing was pruned (raise spec.maxPrune to let it through)",
                resolved.revision,
                candidates.len(),
            );
            status.prune_blocked = Some(PruneBlocked {
                candidates: candidates.iter().map(|e| e.id.clone()).collect(),
                limit,
            });
            outcome.entries.extend(candidates);
            outcome.record(ctx, &key, status);
            return Err(Failure::stall("PruneBlocked", message));
        }
        let pruned = ctx.applier.prune(&ctx.client, &candidates, &owner).await;
        outcome.summary.pruned = pruned.deleted.len() as i64;
        outcome.entries.extend(pruned.pending);
        if !pruned.errors.is_empty() {
            outcome.record(ctx, &key, status);
            return Err(Failure::retry("PruneFailed", pruned.errors.join("; ")));
        }
    }
    let message = format!(
        "Applied revision {} ({} objects: {} created, {} configured, {} unchanged, {} pruned)",
        resolved.revision,
        outcome.summary.total,
        outcome.summary.created,
        outcome.summary.configured,
        outcome.summary.unchanged,
        outcome.summary.pruned
    );
    outcome.record(ctx, &key, status);
    status.last_applied_revision = Some(resolved.revision.clone());
    Ok(Some(Verdict::Ready {
        reason: "ReconciliationSucceeded",
        message,
    }))
}

/// What an apply (and prune) leaves managed.
struct Outcome {
    entries: Vec<InventoryEntry>,
    digests: HashMap<String, u64>,
    summary: Summary,
}

impl Outcome {
    /// Writes the inventory and summary into `status` and remembers the digests of what was
    /// sent (only for objects still managed).
    fn record(
        mut self,
        ctx: &Context,
        key: &ObjectRef<GitRepository>,
        status: &mut GitRepositoryStatus,
    ) {
        self.entries.sort();
        self.entries.dedup_by(|a, b| a.id == b.id);
        self.digests
            .retain(|id, _| self.entries.iter().any(|e| &e.id == id));
        status.inventory = Some(Inventory {
            entries: self.entries,
        });
        status.summary = Some(self.summary);
        ctx.digests
            .lock()
            .expect("digests lock")
            .insert(key.clone(), self.digests);
    }
}

async fn load_auth(ctx: &Context, gr: &GitRepository, namespace: &str) -> Result<Auth, Failure> {
    let Some(secret_ref) = &gr.spec.secret_ref else {
        return Ok(Auth::default());
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| {
            Failure::retry(
                "AuthenticationFailed",
                format!("reading secret {}: {e}", secret_ref.name),
            )
        })?
        .ok_or_else(|| {
            Failure::retry(
                "AuthenticationFailed",
                format!("secret {}/{} not found", namespace, secret_ref.name),
            )
        })?;
    let data = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Auth::from_secret_data(&data).map_err(|e: SourceError| Failure::stall(e.reason(), e))
}

async fn write_status(
    ctx: &Context,
    gr: &GitRepository,
    status: &GitRepositoryStatus,
) -> Result<(), Error> {
    let api: Api<GitRepository> =
        Api::namespaced(ctx.client.clone(), &gr.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "GitRepository",
        "status": status,
    });
    api.patch_status(
        &gr.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    gr: &GitRepository,
    verdict: &Verdict,
    status: &GitRepositoryStatus,
) {
    let (type_, reason, note) = match verdict {
        Verdict::Ready { message, .. } => {
            let changed = status
                .summary
                .as_ref()
                .is_some_and(|s| s.created + s.configured + s.pruned > 0);
            if !changed {
                return;
            }
            (EventType::Normal, "Applied", message)
        }
        Verdict::Retrying { reason, message } | Verdict::Stalled { reason, message } => {
            (EventType::Warning, *reason, message)
        }
    };
    let event = KubeEvent {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &gr.object_ref(&())).await {
        warn!(error = %e, "publishing event failed");
    }
}

async fn cleanup(gr: &GitRepository, ctx: &Context) -> Result<Action, Error> {
    let entries = gr
        .status
        .as_ref()
        .and_then(|s| s.inventory.as_ref())
        .map(|i| i.entries.clone())
        .unwrap_or_default();
    let owner = Owner {
        namespace: gr.namespace().unwrap_or_default(),
        name: gr.name_any(),
    };
    let delete = match gr.spec.deletion_policy {
        DeletionPolicy::Delete => true,
        DeletionPolicy::Orphan => false,
        DeletionPolicy::MirrorPrune => gr.spec.prune,
    };
    if delete {
        let mut ordered = entries;
        ordered.sort_by_key(|e| {
            apply::ObjectId::parse(&e.id)
                .map(|id| (std::cmp::Reverse(apply::apply_tier(&id)), e.id.clone()))
        });
        let report = ctx.applier.prune(&ctx.client, &ordered, &owner).await;
        // Objects already being deleted (finalizers) do not hold the GitRepository back.
        if !report.errors.is_empty() {
            return Err(Error::Cleanup(report.errors.join("; ")));
        }
        info!(
            deleted = report.deleted.len(),
            "deleted the objects this GitRepository applied"
        );
    } else {
        ctx.applier
            .release(&ctx.client, &entries, &owner)
            .await
            .map_err(Error::Cleanup)?;
        info!(
            orphaned = entries.len(),
            "released the objects this GitRepository applied"
        );
    }
    let key = ObjectRef::from(gr);
    ctx.digests.lock().expect("digests lock").remove(&key);
    ctx.failures.lock().expect("failures lock").remove(&key);
    Ok(Action::await_change())
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
