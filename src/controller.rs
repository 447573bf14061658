//! Orchestrates the pipeline for each GitRepository:
//! source (git2) -> render (pure) -> apply (SSA, prune, inventory) -> status (pure, one write).
//! The decisions between stages live here: skip when nothing changed, never prune after a failure,
//! stall on what only a change can fix, back off on what may pass.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{error, info, instrument, warn};

use crate::api::{
    Artifact, DeletionPolicy, DriftEntry, DriftMode, FIELD_MANAGER, FINALIZER, GitRepository,
    GitRepositoryStatus, Inventory, InventoryEntry, PruneBlocked, RECONCILE_REQUESTED_ANNOTATION,
    SHARD_LABEL, SubstituteKind, Summary,
};
use crate::apply::{self, Action as Applied, Applier, ApplyOptions, ObjectId, Owner, Sent};
use crate::leader::{Election, Leadership};
use crate::live::Live;
use crate::live::health::Health;
use crate::metrics::Metrics;
use crate::render::{self, HelmOptions, Limits, Tools, Variables};
use crate::server::{self, Readiness};
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
    /// Where `/metrics` is served.
    #[arg(
        long,
        env = "CAPSTAN_METRICS_BIND_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_bind_address: Option<std::net::SocketAddr>,
    /// Where `/healthz` and `/readyz` are served.
    #[arg(
        long,
        env = "CAPSTAN_HEALTH_PROBE_BIND_ADDRESS",
        default_value = "0.0.0.0:8081"
    )]
    pub health_probe_bind_address: Option<std::net::SocketAddr>,
    /// Where push events are received (`POST /hook/<namespace>/<receiver>`).
    #[arg(
        long,
        env = "CAPSTAN_WEBHOOK_BIND_ADDRESS",
        default_value = "0.0.0.0:9292"
    )]
    pub webhook_bind_address: Option<std::net::SocketAddr>,
    /// Lockdown: GitRepositories that name no `serviceAccountName` apply as this ServiceAccount
    /// (of their own namespace).
    #[arg(long, env = "CAPSTAN_DEFAULT_SERVICE_ACCOUNT")]
    pub default_service_account: Option<String>,
    /// Watch GitRepositories in this namespace only (default: all namespaces).
    #[arg(long, env = "CAPSTAN_NAMESPACE")]
    pub namespace: Option<String>,
    /// Take only GitRepositories labelled `capstan.dev/shard=<SHARD>`. Without it, only those
    /// with no such label: each shard is one more controller (Helm release) beside the main one.
    #[arg(long, env = "CAPSTAN_SHARD")]
    pub shard: Option<String>,
    /// Hold a Lease while reconciling, so that of several replicas only one works.
    #[arg(long, env = "CAPSTAN_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease. Default: the Pod's namespace (POD_NAMESPACE, or the
    /// in-cluster ServiceAccount's), else `default`.
    #[arg(long, env = "CAPSTAN_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader Lease. Default: `capstan`, or `capstan-<SHARD>` with `--shard`.
    #[arg(long, env = "CAPSTAN_LEADER_ELECTION_ID")]
    pub leader_election_id: Option<String>,
    /// Most bytes one fetch may transfer.
    #[arg(long, env = "CAPSTAN_MAX_FETCH_BYTES", default_value_t = 512 << 20)]
    pub max_fetch_bytes: u64,
    #[command(flatten)]
    pub render: RenderConfig,
    /// Where repositories are cached between polls.
    #[arg(long, env = "CAPSTAN_CACHE_DIR", default_value = "/tmp/capstan")]
    pub cache_dir: PathBuf,
    #[arg(long, env = "CAPSTAN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info` or `capstan=debug,kube=info`.
    #[arg(long, env = "CAPSTAN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// How revisions are rendered: the tools and the limits. Shared with `capstan render`, so the
/// command renders exactly as the controller does.
#[derive(clap::Args, Debug, Clone)]
pub struct RenderConfig {
    /// Largest manifest file, in bytes.
    #[arg(long, env = "CAPSTAN_MAX_MANIFEST_FILE_BYTES", default_value_t = render::DEFAULT_MAX_FILE_BYTES)]
    pub max_manifest_file_bytes: u64,
    /// Largest sum of all manifest files of a revision (or of a render tool's output), in bytes.
    #[arg(long, env = "CAPSTAN_MAX_MANIFEST_BYTES", default_value_t = render::DEFAULT_MAX_TOTAL_BYTES)]
    pub max_manifest_bytes: u64,
    /// Most manifest files under a GitRepository's path.
    #[arg(long, env = "CAPSTAN_MAX_MANIFEST_FILES", default_value_t = render::DEFAULT_MAX_FILES)]
    pub max_manifest_files: usize,
    /// The kustomize binary that renders kustomizations.
    #[arg(long, env = "CAPSTAN_KUSTOMIZE_PATH", default_value = "kustomize")]
    pub kustomize_path: PathBuf,
    /// The helm binary that renders charts.
    #[arg(long, env = "CAPSTAN_HELM_PATH", default_value = "helm")]
    pub helm_path: PathBuf,
}

impl RenderConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            max_file_bytes: self.max_manifest_file_bytes,
            max_total_bytes: self.max_manifest_bytes,
            max_files: self.max_manifest_files,
            ..Limits::default()
        }
    }

    pub fn tools(&self) -> Tools {
        Tools {
            kustomize: self.kustomize_path.clone(),
            helm: self.helm_path.clone(),
        }
    }
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
    #[error("{0}")]
    Bind(#[from] server::BindError),
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

/// What outlives a leadership term: the git cache (its per-URL locks and the git work of a
/// previous term still running in blocking threads) and the checkout directory.
struct Disk {
    cache: Arc<Cache>,
    work_dir: PathBuf,
}

impl Disk {
    fn prepare(config: &Config) -> std::io::Result<Disk> {
        crate::source::set_network_timeouts();
        let work_dir = config.cache_dir.join("work");
        // Checkouts left by a previous process are never reused.
        let _ = std::fs::remove_dir_all(&work_dir);
        std::fs::create_dir_all(&work_dir)?;
        let repos = config.cache_dir.join("repos");
        std::fs::create_dir_all(&repos)?;
        Ok(Disk {
            cache: Arc::new(Cache::new(
                repos,
                config.git_concurrency,
                config.max_fetch_bytes,
            )),
            work_dir,
        })
    }
}

impl Context {
    fn new(
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

/// How long a shutdown waits for in-flight reconciles (and the Lease release) before the process
/// exits anyway: well inside the chart's 60 s termination grace period.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(20);

/// Runs the controller until SIGTERM or SIGINT, then drains for at most `DRAIN_DEADLINE`.
pub async fn run(config: Config) -> Result<(), StartError> {
    let kube_config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let signalled = futures::FutureExt::shared(Box::pin(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        info!(
            deadline_s = DRAIN_DEADLINE.as_secs(),
            "shutting down: finishing in-flight reconciles"
        );
    }));
    let serving = serve(kube_config, config, signalled.clone());
    tokio::select! {
        result = serving => {
            info!("stopped");
            result
        }
        _ = async { signalled.await; tokio::time::sleep(DRAIN_DEADLINE).await } => {
            warn!(deadline_s = DRAIN_DEADLINE.as_secs(), "stopped: in-flight work did not finish within the drain deadline and was abandoned");
            Ok(())
        }
    }
}

/// Serves metrics and probes, and runs the controller (while leading, with leader election)
/// until `shutdown` completes. In-flight reconciles finish; the lease is released.
pub async fn serve(
    kube_config: kube::Config,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let mut servers = tokio::task::JoinSet::new();
    if let Some(addr) = config.metrics_bind_address {
        let serving = server::serve_metrics(server::bind("/metrics", addr).await?, metrics.clone());
        servers.spawn(async move {
            if let Err(e) = serving.await {
                error!(%addr, error = %e, "serving /metrics failed");
            }
        });
    }
    if let Some(addr) = config.health_probe_bind_address {
        let listener = server::bind("/healthz and /readyz", addr).await?;
        let serving = server::serve_probes(listener, readiness.clone());
        servers.spawn(async move {
            if let Err(e) = serving.await {
                error!(%addr, error = %e, "serving /healthz and /readyz failed");
            }
        });
    }
    if let Some(addr) = config.webhook_bind_address {
        // Every replica receives: the Service spreads hooks over standbys too.
        let listener = server::bind("webhooks", addr).await?;
        let serving = crate::webhook::serve(listener, Client::try_from(kube_config.clone())?);
        servers.spawn(async move {
            if let Err(e) = serving.await {
                error!(%addr, error = %e, "serving webhooks failed");
            }
        });
    }
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let disk = Disk::prepare(&config)?;
    if !config.leader_elect {
        return control(&kube_config, &config, &disk, metrics, readiness, shutdown).await;
    }
    let election = Election {
        namespace: config
            .leader_election_namespace
            .clone()
            .unwrap_or_else(own_namespace),
        lease_name: config
            .leader_election_id
            .clone()
            .unwrap_or_else(|| match &config.shard {
                Some(shard) => format!("capstan-{shard}"),
                None => "capstan".into(),
            }),
        identity: format!(
            "{}_{:08x}",
            std::env::var("POD_NAME").unwrap_or_else(|_| "capstan".into()),
            rand_u32()
        ),
    };
    let mut leadership = Leadership::start(&kube_config, election)?;
    // A standby is ready: it is up and waiting for the lease.
    readiness.set_ready();
    loop {
        tokio::select! {
            _ = shutdown.clone() => break,
            _ = leadership.acquired() => {}
        }
        let run = control(
            &kube_config,
            &config,
            &disk,
            metrics.clone(),
            Readiness::default(),
            shutdown.clone(),
        );
        tokio::select! {
            result = run => {
                // Only a shutdown ends the controller: leave, releasing the lease.
                leadership.release().await;
                return result;
            }
            _ = leadership.lost() => {
                // Dropping the controller cancels every reconcile in flight at once.
                warn!("not the leader any more: all work stopped");
            }
        }
    }
    leadership.release().await;
    Ok(())
}

/// The controller proper: watches, reconciles, until `shutdown`.
async fn control(
    kube_config: &kube::Config,
    config: &Config,
    disk: &Disk,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    let client = Client::try_from(kube_config.clone())?;
    let (live, wake) = Live::new(client.clone(), config.namespace.clone());
    let ctx = Context::new(
        kube_config.clone(),
        client.clone(),
        config,
        disk,
        live,
        metrics,
    );
    let api: Api<GitRepository> = match &config.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let shard = match &config.shard {
        Some(shard) => format!("{SHARD_LABEL}={shard}"),
        None => format!("!{SHARD_LABEL}"),
    };
    let (reader, writer) = reflector::store();
    let listed = readiness.clone();
    // Our own status writes change neither of these, so they never trigger a reconcile.
    let triggers = watcher(
        api,
        watcher::Config::default().labels(&shard).any_semantic(),
    )
    .default_backoff()
    // Nothing reads who wrote which field of a GitRepository; at scale that is most of the cache.
    .modify(|gr| gr.managed_fields_mut().clear())
    .reflect(writer)
    .inspect(move |event| {
        // Ready once every GitRepository has been listed.
        if matches!(event, Ok(watcher::Event::InitDone)) {
            listed.set_ready();
        }
    })
    .applied_objects()
    .predicate_filter(trigger_hash, Default::default());
    info!("capstan controller starting");
    Controller::for_stream(triggers, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        // A managed object changed: its GitRepository looks at drift and health at once.
        .reconcile_on(wake)
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

/// The namespace this Pod runs in, for the leader Lease.
fn own_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|ns| ns.trim().to_string())
        })
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// A random suffix that keeps two processes of one Pod name apart (a restarted container).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
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
                    warn!(reason, %message, "stalled until the spec or git changes");
                    jitter(interval)
                }
                Verdict::Retrying { reason, message } => {
                    warn!(reason, %message, "failed; retrying with backoff");
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
                reason: "ReconciliationSucceeded",
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
            let reason = match verdict {
                Verdict::Retrying { reason, .. } | Verdict::Stalled { reason, .. } => *reason,
                _ => "",
            };
            // What is applied stays applied when only the source or the render failed:
            // drift and health go on being watched.
            if matches!(reason, "ApplyFailed" | "PruneFailed" | "PruneBlocked") {
                memory.applied_ok = false;
            }
        }
    }
    result
}

async fn stages(
    gr: &GitRepository,
    ctx: &Context,
    status: &mut GitRepositoryStatus,
    request: Option<&str>,
    now: &Time,
) -> Result<Option<Verdict>, Failure> {
    let started = Instant::now();
    let namespace = gr.namespace().unwrap_or_default();
    parse_duration(&gr.spec.interval).ok_or_else(|| {
        Failure::stall(
            "InvalidSpec",
            format!("invalid interval {:?}", gr.spec.interval),
        )
    })?;
    let timeout = timeout_of(gr).map_err(|m| Failure::stall("InvalidSpec", m))?;

    // Source: ask the remote which commit the ref names.
    let url = RemoteUrl::parse(&gr.spec.url).map_err(|e| Failure::stall(e.reason(), e))?;
    // Credentials are read afresh after a change or a failure, and when the remote refuses the
    // copy read last (a rotated Secret).
    let key = ObjectRef::from(gr);
    let applied_ok = ctx.recall(&key, |m| m.applied_ok).unwrap_or(false);
    let settled = status.observed_generation == gr.meta().generation && request.is_none();
    let mut auth = load_auth(ctx, gr, &namespace, !(settled && applied_ok)).await?;
    let mut resolved = ctx
        .cache
        .resolve(&url, &auth, &gr.spec.git_ref(), timeout)
        .await;
    if settled && applied_ok && matches!(&resolved, Err(e) if e.reason() == "AuthenticationFailed")
    {
        auth = load_auth(ctx, gr, &namespace, true).await?;
        resolved = ctx
            .cache
            .resolve(&url, &auth, &gr.spec.git_ref(), timeout)
            .await;
    }
    let resolved = resolved.map_err(|e| match e.reason() {
        "InvalidSpec" | "InvalidSource" => Failure::stall(e.reason(), e),
        reason => Failure::retry(reason, e),
    })?;

    // Variables are read on every check, so a changed ConfigMap or Secret is applied too.
    let variables = variables(ctx, gr, &namespace).await?;
    let variables_digest = variables.as_ref().map(digest_of);
    let up_to_date = applied_ok
        && ctx.recall(&key, |m| m.variables).flatten() == variables_digest
        && status.last_applied_revision.as_deref() == Some(resolved.revision.as_str())
        && status.observed_generation == gr.meta().generation
        && request.is_none_or(|r| status.last_handled_reconcile_at.as_deref() == Some(r));
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
    let fetch_started = Instant::now();
    let fetched = ctx
        .cache
        .checkout(&url, &auth, &resolved, work.path(), timeout)
        .await;
    ctx.metrics
        .git_fetch_duration
        .with_label_values(&[
            namespace.as_str(),
            gr.name_any().as_str(),
            if fetched.is_ok() { "ok" } else { "error" },
        ])
        .observe(fetch_started.elapsed().as_secs_f64());
    let committed_at = fetched.map_err(|e| Failure::retry(e.reason(), e))?;

    // Render.
    let root = work.path().to_path_buf();
    let (path, ignore) = (gr.spec.path.clone(), gr.spec.ignore.clone());
    let helm = helm_options(gr);
    let (limits, tools) = (ctx.limits, ctx.tools.clone());
    let rendered = tokio::time::timeout(
        // The tools stop themselves at `timeout`; this bounds the rest of the work.
        timeout + Duration::from_secs(5),
        tokio::task::spawn_blocking(move || {
            render::render(
                &root,
                &render::Options {
                    path: path.as_deref(),
                    ignore: ignore.as_deref(),
                    helm,
                    variables: variables.as_ref(),
                    limits,
                    tools,
                    timeout,
                },
            )
        }),
    )
    .await
    .map_err(|_| {
        Failure::stall(
            "BuildFailed",
            format!("rendering took longer than {timeout:?}"),
        )
    })?
    .map_err(|e| Failure::stall("BuildFailed", format!("rendering failed: {e}")))?;
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
    let previous_sent: HashMap<String, Sent> =
        ctx.recall(&key, |m| m.objects.clone()).unwrap_or_default();
    let previous_digests: HashMap<String, u64> = match request {
        Some(_) => HashMap::new(),
        None => previous_sent
            .iter()
            .map(|(id, s)| (id.clone(), s.digest))
            .collect(),
    };
    let default_namespace = gr
        .spec
        .target_namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    // The latest resourceVersion known of each object: from the watch, or from the last apply.
    let previous_versions: HashMap<String, u64> = previous
        .iter()
        .filter_map(|id| {
            let watched = ctx.live.observed(id).and_then(|o| o.resource_version);
            let sent = previous_sent
                .get(id)
                .and_then(|s| s.owned.as_ref()?.resource_version);
            Some((id.clone(), watched.max(sent)?))
        })
        .collect();
    let opts = ApplyOptions {
        owner: &owner,
        default_namespace: &default_namespace,
        previous: &previous,
        previous_digests: &previous_digests,
        previous_versions: &previous_versions,
        timeout,
    };
    let client = ctx
        .client_for(gr)
        .map_err(|m| Failure::retry("ApplyFailed", m))?;
    progressing(ctx, gr, status, &resolved.revision).await;
    let report = ctx.applier.apply(&client, &manifests, &opts).await;
    for kind in &report.kinds {
        ctx.live.watch(kind);
    }
    let mut sent = report.sent.clone();
    for (id, s) in sent.iter_mut() {
        // Not sent again: Capstan still owns what it owned after the last send.
        if s.owned.is_none() {
            s.owned = previous_sent.get(id).and_then(|p| p.owned.clone());
        }
    }
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
        sent,
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
    let was_blocked = status.prune_blocked.take();
    if gr.spec.prune && !candidates.is_empty() {
        // While the guard holds, the blocked revision's new objects are in the inventory too:
        // measure against what was managed before it.
        let managed = match &was_blocked {
            Some(blocked)
                if candidates
                    .iter()
                    .all(|c| blocked.candidates.contains(&c.id)) =>
            {
                usize::try_from(blocked.managed).unwrap_or(previous_entries.len())
            }
            _ => previous_entries.len(),
        };
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
                managed: managed as i64,
            });
            outcome.entries.extend(candidates);
            outcome.record(ctx, &key, status);
            return Err(Failure::stall("PruneBlocked", message));
        }
        let pruned = ctx.applier.prune(&client, &candidates, &owner).await;
        info!(
            revision = %resolved.revision,
            deleted = pruned.deleted.len(),
            released = pruned.released.len(),
            pending = pruned.pending.len(),
            failed = pruned.errors.len(),
            "pruned what the revision no longer declares"
        );
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
    let summary = &outcome.summary;
    info!(
        revision = %resolved.revision,
        objects = summary.total,
        created = summary.created,
        configured = summary.configured,
        unchanged = summary.unchanged,
        pruned = summary.pruned,
        duration_ms = started.elapsed().as_millis() as u64,
        "applied revision"
    );
    outcome.record(ctx, &key, status);
    if let Some(memory) = ctx.memory.lock().get_mut(&key) {
        memory.variables = variables_digest;
    }
    if status.last_applied_revision.as_deref() != Some(resolved.revision.as_str()) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        ctx.metrics
            .commit_to_applied
            .with_label_values(&[namespace.as_str(), gr.name_any().as_str()])
            .observe((now - committed_at as f64).max(0.0));
    }
    status.last_applied_revision = Some(resolved.revision.clone());
    Ok(Some(Verdict::Ready {
        reason: "ReconciliationSucceeded",
        message,
    }))
}

/// What an apply (and prune) leaves managed.
struct Outcome {
    entries: Vec<InventoryEntry>,
    sent: HashMap<String, Sent>,
    summary: Summary,
}

impl Outcome {
    /// Writes the inventory and summary into `status` and remembers what was sent (only for
    /// objects still managed). A new apply starts a new drift record.
    fn record(
        mut self,
        ctx: &Context,
        key: &ObjectRef<GitRepository>,
        status: &mut GitRepositoryStatus,
    ) {
        self.entries.sort();
        self.entries.dedup_by(|a, b| a.id == b.id);
        self.sent
            .retain(|id, _| self.entries.iter().any(|e| &e.id == id));
        status.inventory = Some(Inventory {
            entries: self.entries,
        });
        status.summary = Some(Summary {
            drifted: 0,
            ..self.summary
        });
        status.drift.clear();
        let (ns, name) = (key.namespace.clone().unwrap_or_default(), key.name.clone());
        let counts = [
            self.summary.created,
            self.summary.configured,
            self.summary.unchanged,
            self.summary.pruned,
        ];
        for (action, n) in crate::metrics::ACTIONS.iter().zip(counts) {
            ctx.metrics
                .apply_objects
                .with_label_values(&[ns.as_str(), name.as_str(), action])
                .inc_by(n.max(0) as u64);
        }
        ctx.memory.lock().entry(key.clone()).or_default().objects = self.sent;
    }
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

/// `spec.postBuild`'s variables, read with the GitRepository's own identity (impersonation
/// included), so a tenant cannot read another's Secrets through Capstan.
async fn variables(
    ctx: &Context,
    gr: &GitRepository,
    namespace: &str,
) -> Result<Option<Variables>, Failure> {
    if gr.spec.post_build.is_none() {
        return Ok(None);
    }
    let client = ctx
        .client_for(gr)
        .map_err(|m| Failure::retry("BuildFailed", m))?;
    read_variables(&client, gr, namespace)
        .await
        .map_err(|e| match e.transient {
            true => Failure::retry("BuildFailed", e.message),
            false => Failure::stall("BuildFailed", e.message),
        })
}

/// Why the `postBuild` variables could not be read.
#[derive(Debug)]
pub struct VariablesError {
    pub message: String,
    /// Worth retrying: the API server failed, or an object may yet appear.
    pub transient: bool,
}

/// `spec.postBuild`'s variables: `substituteFrom` in order, each overriding the ones before, then
/// `substitute` over all. `None` without `postBuild`.
pub async fn read_variables(
    client: &Client,
    gr: &GitRepository,
    namespace: &str,
) -> Result<Option<Variables>, VariablesError> {
    let Some(post_build) = &gr.spec.post_build else {
        return Ok(None);
    };
    let transient = |message: String| VariablesError {
        message,
        transient: true,
    };
    let lasting = |message: String| VariablesError {
        message,
        transient: false,
    };
    let mut variables = Variables::new();
    for from in &post_build.substitute_from {
        let what = format!("{:?} {namespace}/{}", from.kind, from.name);
        let failed =
            |e: kube::Error| transient(format!("postBuild.substituteFrom: reading {what}: {e}"));
        let data: Option<BTreeMap<String, String>> = match from.kind {
            SubstituteKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt(&from.name)
                .await
                .map_err(failed)?
                .map(|cm| cm.data.unwrap_or_default()),
            SubstituteKind::Secret => {
                match Api::<Secret>::namespaced(client.clone(), namespace)
                    .get_opt(&from.name)
                    .await
                    .map_err(failed)?
                {
                    None => None,
                    Some(secret) => {
                        let mut data = BTreeMap::new();
                        for (key, value) in secret.data.unwrap_or_default() {
                            let value = String::from_utf8(value.0).map_err(|_| {
                                lasting(format!(
                                    "postBuild.substituteFrom: {what}: the value of {key:?} is not UTF-8"
                                ))
                            })?;
                            data.insert(key, value);
                        }
                        Some(data)
                    }
                }
            }
        };
        match data {
            Some(data) => variables.extend(data),
            None if from.optional => {}
            None => {
                return Err(transient(format!(
                    "postBuild.substituteFrom: {what} not found (mark it optional if it may be missing)"
                )));
            }
        }
    }
    variables.extend(post_build.substitute.clone());
    if let Some(bad) = variables.keys().find(|k| !render::is_variable_name(k)) {
        return Err(lasting(format!(
            "postBuild: {bad:?} is not a valid variable name (letters, digits and '_', not starting with a digit)"
        )));
    }
    Ok(Some(variables))
}

/// The release a chart at `spec.path` is rendered as: `spec.helm`, with the GitRepository's name
/// and its target namespace as defaults.
pub fn helm_options(gr: &GitRepository) -> HelmOptions {
    let helm = gr.spec.helm.clone().unwrap_or_default();
    HelmOptions {
        release_name: helm.release_name.unwrap_or_else(|| gr.name_any()),
        namespace: gr
            .spec
            .target_namespace
            .clone()
            .or_else(|| gr.namespace())
            .unwrap_or_else(|| "default".into()),
        values: helm.values,
        values_files: helm.values_files,
    }
}

fn digest_of(variables: &Variables) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    variables.hash(&mut hasher);
    hasher.finish()
}

/// An object corrected this many times within the window is being fought over by another
/// controller: further drift is reported, not re-applied, until the window passes.
const MAX_CORRECTIONS_IN_WINDOW: usize = 3;
const CORRECTION_WINDOW: Duration = Duration::from_secs(60);

fn timeout_of(gr: &GitRepository) -> Result<Duration, String> {
    match &gr.spec.timeout {
        Some(t) => parse_duration(t).ok_or_else(|| format!("invalid timeout {t:?}")),
        None => Ok(Duration::from_secs(60)),
    }
}

/// Drift: fields Capstan applied that another manager owns now, or objects deleted. Corrects
/// (one apply per drifted object), reports, or ignores, as `spec.drift.mode` says. Returns the
/// events to publish and, while a correction is held, when to look again.
async fn drift(
    gr: &GitRepository,
    ctx: &Context,
    status: &mut GitRepositoryStatus,
    now: &Time,
) -> (Vec<(EventType, &'static str, String)>, Option<Duration>) {
    let mode = gr.spec.drift.as_ref().map(|d| d.mode).unwrap_or_default();
    let key = ObjectRef::from(gr);
    if mode == DriftMode::Disabled {
        status.drift.clear();
        status::remove_condition(status, status::DRIFTED);
        if let Some(summary) = &mut status.summary {
            summary.drifted = 0;
        }
        return (Vec::new(), None);
    }
    let sent = ctx.recall(&key, |m| m.objects.clone()).unwrap_or_default();
    let found = drifted(ctx, &sent);

    let mut events = Vec::new();
    let mut look_again: Option<Duration> = None;
    let previous: HashMap<String, DriftEntry> =
        status.drift.drain(..).map(|d| (d.id.clone(), d)).collect();
    let mut entries: Vec<DriftEntry> = Vec::new();
    for (id, fields) in found {
        let known = previous
            .get(&id)
            .is_some_and(|p| p.fields == fields && !p.corrected);
        let mut corrected = false;
        // Changed again soon after corrections: another manager is fighting over it. Report it
        // instead of re-applying in a loop, and correct it when the window has passed.
        let held = ctx
            .recall(&key, |m| held_for(m.corrected_at.get(&id)))
            .flatten();
        // Kept from the last look while it holds, so the status does not change every second.
        let held_until = held.map(|wait| {
            previous
                .get(&id)
                .and_then(|p| p.held_until.clone())
                .filter(|until| until.0 > now.0)
                .unwrap_or_else(|| wall_clock_in(now, wait))
        });
        if mode == DriftMode::Correct && held.is_none() {
            let reapplied = match ctx.client_for(gr) {
                Ok(client) => ctx.applier.reapply(&client, &sent[&id].object).await,
                Err(message) => Err(message),
            };
            match reapplied {
                Ok(owned) => {
                    corrected = true;
                    ctx.metrics
                        .drift_corrections
                        .with_label_values(&[
                            key.namespace.as_deref().unwrap_or_default(),
                            key.name.as_str(),
                        ])
                        .inc();
                    if let Some(m) = ctx.memory.lock().get_mut(&key) {
                        let times = m.corrected_at.entry(id.clone()).or_default();
                        times.retain(|t| t.elapsed() < CORRECTION_WINDOW);
                        times.push(Instant::now());
                        if let Some(s) = m.objects.get_mut(&id) {
                            s.owned = Some(owned);
                        }
                    }
                    info!(object = %id, fields = %fields.join(", "), "drift corrected");
                    events.push((
                        EventType::Normal,
                        "DriftCorrected",
                        format!("{id}: re-applied {}", fields.join(", ")),
                    ));
                }
                Err(message) => warn!(object = %id, %message, "drift correction failed"),
            }
        } else if !known {
            let note = match (&held_until, mode) {
                (Some(until), DriftMode::Correct) => {
                    info!(object = %id, fields = %fields.join(", "), held_until = %until.0, "drift detected; correction held");
                    format!(
                        "{id}: {} changed again right after {MAX_CORRECTIONS_IN_WINDOW} corrections (another controller may manage it); correction held until {}",
                        fields.join(", "),
                        until.0
                    )
                }
                _ => {
                    info!(object = %id, fields = %fields.join(", "), "drift detected");
                    format!("{id}: {}", fields.join(", "))
                }
            };
            events.push((EventType::Warning, "DriftDetected", note));
        }
        if let (Some(wait), DriftMode::Correct) = (held, mode) {
            look_again = Some(look_again.map_or(wait, |w| w.min(wait)));
        }
        let detected_at = previous
            .get(&id)
            .filter(|p| p.fields == fields)
            .map(|p| p.detected_at.clone())
            .unwrap_or_else(|| now.clone());
        entries.push(DriftEntry {
            id,
            fields,
            detected_at,
            corrected,
            held_until: held_until.filter(|_| mode == DriftMode::Correct && !corrected),
        });
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
    (events, look_again)
}

/// The objects whose applied fields are no longer as Capstan left them, or that are gone, with
/// the fields that drifted. Judged only once the watch has caught up with the last apply.
fn drifted(ctx: &Context, sent: &HashMap<String, Sent>) -> Vec<(String, Vec<String>)> {
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    for (id, s) in sent {
        let (Some(oid), Some(owned)) = (ObjectId::parse(id), &s.owned) else {
            continue;
        };
        if !ctx.live.watches_namespace(&oid.namespace)
            || !ctx.live.caught_up(&oid, owned.resource_version)
        {
            continue;
        }
        let fields = match ctx.live.observed(id) {
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
fn held_for(corrected_at: Option<&Vec<Instant>>) -> Option<Duration> {
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
fn wall_clock_in(now: &Time, wait: Duration) -> Time {
    let secs = now.0.as_second() + i64::try_from(wait.as_secs()).unwrap_or(i64::MAX / 2) + 1;
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or(now.0))
}

/// The `Drifted` condition from the drift entries.
fn set_drifted(
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
            "NoDrift",
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
            "DriftDetected",
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
fn health(
    gr: &GitRepository,
    ctx: &Context,
    status: &mut GitRepositoryStatus,
    now: &Time,
) -> Option<(Verdict, Duration)> {
    if !gr.spec.wait {
        status::remove_condition(status, status::HEALTHY);
        return None;
    }
    let generation = gr.meta().generation;
    let mut waiting = Vec::new();
    let mut failed = Vec::new();
    for entry in status.inventory.iter().flat_map(|i| &i.entries) {
        let Some(id) = ObjectId::parse(&entry.id) else {
            continue;
        };
        let name = id.display_name();
        if !ctx.live.watches_namespace(&id.namespace) {
            // Outside the namespace this controller is restricted to: not observable.
            continue;
        }
        let applied_at = ctx
            .recall(&ObjectRef::from(gr), |m| {
                m.objects
                    .get(&entry.id)
                    .and_then(|s| s.owned.as_ref()?.resource_version)
            })
            .flatten();
        if !ctx.live.caught_up(&id, applied_at) {
            waiting.push(format!("{name}: status not observed yet"));
            continue;
        }
        match ctx.live.observed(&entry.id).map(|o| o.health) {
            None => waiting.push(format!("{name}: not found")),
            Some(Health::Current) => {}
            Some(Health::InProgress(m)) => waiting.push(format!("{name}: {m}")),
            Some(Health::Failed(m)) => failed.push(format!("{name}: {m}")),
        }
    }
    if waiting.is_empty() && failed.is_empty() {
        let count = status.inventory.as_ref().map_or(0, |i| i.entries.len());
        let message = format!("{count} objects are healthy");
        status::set_condition(
            status,
            status::HEALTHY,
            true,
            "Healthy",
            &message,
            generation,
            now,
        );
        return None;
    }
    let timeout = timeout_of(gr).unwrap_or(Duration::from_secs(60));
    let since = ctx
        .recall(&ObjectRef::from(gr), |m| m.applied_at)
        .flatten()
        .map(|t| t.elapsed())
        .unwrap_or_default();
    let (reason, message, wait) = if !failed.is_empty() {
        ("HealthCheckFailed", failed.join("; "), None)
    } else if since >= timeout {
        let message = format!("not healthy after {timeout:?}: {}", waiting.join("; "));
        ("HealthCheckFailed", message, None)
    } else {
        let message = format!("waiting for {}", waiting.join("; "));
        ("Progressing", message, Some(timeout - since))
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
    let interval = parse_duration(&gr.spec.interval).unwrap_or(Duration::from_secs(60));
    Some(match wait {
        Some(wait) => (Verdict::Progressing { reason, message }, wait),
        None => (Verdict::Stalled { reason, message }, interval),
    })
}

async fn event(ctx: &Context, gr: &GitRepository, type_: EventType, reason: &str, note: String) {
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

/// The credentials of `spec.secretRef`. Read from the API server when `fresh`, or when not read
/// before; otherwise the copy read last, so that a steady state reads no Secret.
async fn load_auth(
    ctx: &Context,
    gr: &GitRepository,
    namespace: &str,
    fresh: bool,
) -> Result<Auth, Failure> {
    let Some(secret_ref) = &gr.spec.secret_ref else {
        return Ok(Auth::default());
    };
    let key = (namespace.to_string(), secret_ref.name.clone());
    let cached = ctx.auth.lock().get(&key).cloned();
    if let (false, Some(auth)) = (fresh, cached) {
        return Ok(auth);
    }
    // Read as the GitRepository's ServiceAccount, if it has one: a tenant cannot send a
    // Secret its ServiceAccount may not read to a URL of its choosing.
    let client = ctx
        .client_for(gr)
        .map_err(|m| Failure::retry("AuthenticationFailed", m))?;
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
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
    let auth =
        Auth::from_secret_data(&data).map_err(|e: SourceError| Failure::stall(e.reason(), e))?;
    ctx.auth.lock().insert(key, auth.clone());
    Ok(auth)
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

/// Says on the status, before an apply starts, which revision is being applied: a long apply
/// shows as `Reconciling` instead of nothing until it ends. Best effort: the apply goes on if
/// the write fails, and the final status follows either way.
async fn progressing(
    ctx: &Context,
    gr: &GitRepository,
    status: &GitRepositoryStatus,
    revision: &str,
) {
    let mut shown = status.clone();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    status::set_progressing(&mut shown, revision, gr.meta().generation, &now);
    let key = ObjectRef::from(gr);
    let written = ctx.recall(&key, |m| m.status.clone()).flatten();
    if !status::differs(written.as_ref().or(gr.status.as_ref()), &shown) {
        return;
    }
    match write_status(ctx, gr, &shown).await {
        Ok(()) => ctx.memory.lock().entry(key).or_default().status = Some(shown),
        Err(e) => warn!(error = %e, "writing the Reconciling condition failed"),
    }
}

/// The event for a verdict: `Applied` for a new revision or changed objects, a Warning with the
/// reason for a failure.
async fn publish(
    ctx: &Context,
    gr: &GitRepository,
    verdict: &Verdict,
    new_revision: bool,
    status: &GitRepositoryStatus,
) {
    let (type_, reason, note) = match verdict {
        Verdict::Ready { message, .. } => {
            let changed = status
                .summary
                .as_ref()
                .is_some_and(|s| s.created + s.configured + s.pruned > 0);
            if !changed && !new_revision {
                return;
            }
            (EventType::Normal, "Applied", message)
        }
        Verdict::Progressing { .. } => return,
        Verdict::Retrying { reason, message } | Verdict::Stalled { reason, message } => {
            (EventType::Warning, *reason, message)
        }
    };
    event(ctx, gr, type_, reason, note.clone()).await;
}

async fn cleanup(gr: &GitRepository, ctx: &Context) -> Result<Action, Error> {
    // In a namespace being deleted the ServiceAccount's RoleBindings may already be gone; the
    // objects that still carry this GitRepository's ownership marker are removed as the
    // controller, or the namespace would never finish deleting.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    let terminating = namespaces
        .get_opt(&gr.namespace().unwrap_or_default())
        .await
        .ok()
        .flatten()
        .is_none_or(|ns| ns.metadata.deletion_timestamp.is_some());
    let client = if terminating {
        ctx.client.clone()
    } else {
        ctx.client_for(gr).map_err(Error::Cleanup)?
    };
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
        let report = ctx.applier.prune(&client, &ordered, &owner).await;
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
            .release(&client, &entries, &owner)
            .await
            .map_err(Error::Cleanup)?;
        info!(
            orphaned = entries.len(),
            "released the objects this GitRepository applied"
        );
    }
    let key = ObjectRef::from(gr);
    ctx.memory.lock().remove(&key);
    ctx.metrics.forget(&owner.namespace, &owner.name);
    ctx.failures.lock().remove(&key);
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

    #[test]
    fn jitter_adds_at_most_a_tenth() {
        let d = Duration::from_secs(60);
        let j = jitter(d);
        assert!(j >= d && j <= d + Duration::from_secs(6));
    }
}
