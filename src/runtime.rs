//! Process wiring for `capstan controller`: the flags, the HTTP servers, leader election, the
//! watches that feed the reconcile, and shutdown. What happens to one GitRepository is in
//! `reconcile`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{error, info, warn};

use crate::api::{GitRepository, SHARD_LABEL};
use crate::leader::{Election, Leadership};
use crate::live::{Live, Wakes};
use crate::metrics::Metrics;
use crate::reconcile::{Context, Dependents, error_policy, reconcile, trigger_hash, uid};
use crate::render::{self, Limits, Tools};
use crate::server::{self, Readiness};
use crate::source::Cache;
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
    /// The sops binary that decrypts SOPS-encrypted files (`spec.decryption`).
    #[arg(long, env = "CAPSTAN_SOPS_PATH", default_value = "sops")]
    pub sops_path: PathBuf,
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
            sops: self.sops_path.clone(),
        }
    }
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

/// What outlives a leadership term: the git cache (its per-URL locks and the git work of a
/// previous term still running in blocking threads) and the checkout directory.
pub(crate) struct Disk {
    pub(crate) cache: Arc<Cache>,
    pub(crate) work_dir: PathBuf,
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
    // Serving until this returns; dropping the set stops them.
    let _servers = servers(&kube_config, &config, &metrics, &readiness).await?;
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let disk = Disk::prepare(&config)?;
    if !config.leader_elect {
        return control(&kube_config, &config, &disk, metrics, readiness, shutdown).await;
    }
    let mut leadership = Leadership::start(&kube_config, election(&config))?;
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

/// The metrics, probe and webhook servers that `config` asks for, bound now (a port in use
/// fails the start) and serving in the returned set.
async fn servers(
    kube_config: &kube::Config,
    config: &Config,
    metrics: &Arc<Metrics>,
    readiness: &Readiness,
) -> Result<tokio::task::JoinSet<()>, StartError> {
    let mut servers = tokio::task::JoinSet::new();
    let mut spawn = |what: &'static str, addr, serving: server::Serving| {
        servers.spawn(async move {
            if let Err(e) = serving.await {
                error!(%addr, error = %e, "serving {what} failed");
            }
        });
    };
    if let Some(addr) = config.metrics_bind_address {
        let listener = server::bind("/metrics", addr).await?;
        spawn(
            "/metrics",
            addr,
            Box::pin(server::serve_metrics(listener, metrics.clone())),
        );
    }
    if let Some(addr) = config.health_probe_bind_address {
        let listener = server::bind("/healthz and /readyz", addr).await?;
        let serving = server::serve_probes(listener, readiness.clone());
        spawn("/healthz and /readyz", addr, Box::pin(serving));
    }
    if let Some(addr) = config.webhook_bind_address {
        // Every replica receives: the Service spreads hooks over standbys too.
        let listener = server::bind("webhooks", addr).await?;
        let serving = crate::webhook::serve(listener, Client::try_from(kube_config.clone())?);
        spawn("webhooks", addr, Box::pin(serving));
    }
    Ok(servers)
}

/// The leader Lease this process competes for, and its name in it.
fn election(config: &Config) -> Election {
    Election {
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
    }
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
    let (live, wake) = Live::new(
        client.clone(),
        config.namespace.clone(),
        config.shard.as_deref(),
    );
    let (reader, writer) = reflector::store();
    // Notifications go out while this term lasts.
    let (notifier, _notifying) =
        crate::notify::start(client.clone(), config.namespace.as_deref(), metrics.clone());
    let ctx = Context::new(
        kube_config.clone(),
        client.clone(),
        config,
        disk,
        live,
        metrics,
        notifier,
        reader.clone(),
    );
    let api: Api<GitRepository> = match &config.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let shard = match &config.shard {
        Some(shard) => format!("{SHARD_LABEL}={shard}"),
        None => format!("!{SHARD_LABEL}"),
    };
    let listed = readiness.clone();
    // A GitRepository that changed wakes those that wait on it (dependsOn).
    let mut dependents = Dependents::default();
    let waiting = Arc::new(Wakes::default());
    // Our own status writes change neither of these, so they never trigger a reconcile.
    let triggers = watcher(
        api,
        watcher::Config::default().labels(&shard).any_semantic(),
    )
    .default_backoff()
    // Nothing reads who wrote which field of a GitRepository; at scale that is most of the cache.
    .modify(|gr| gr.managed_fields_mut().clear())
    .reflect(writer)
    .inspect({
        let (ctx, store) = (ctx.clone(), reader.clone());
        let waiting = waiting.clone();
        move |event| match event {
            // What the process knows of a GitRepository goes with it, finalizer or not.
            Ok(watcher::Event::Delete(gr)) => {
                ctx.forget(gr);
                dependents.deleted(gr).iter().for_each(|d| waiting.wake(d));
            }
            Ok(watcher::Event::Apply(gr) | watcher::Event::InitApply(gr)) => {
                dependents.changed(gr).iter().for_each(|d| waiting.wake(d));
            }
            Ok(watcher::Event::InitDone) => {
                // A re-list after a gap in the watch sees no Delete of what went meanwhile.
                let exists: HashSet<String> = store.state().iter().map(|gr| uid(gr)).collect();
                ctx.retain(|u| exists.contains(u));
                // Ready once every GitRepository has been listed.
                listed.set_ready();
            }
            _ => {}
        }
    })
    .applied_objects()
    .predicate_filter(trigger_hash, Default::default());
    info!("capstan controller starting");
    Controller::for_stream(triggers, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        // A managed object changed: its GitRepository looks at drift and health at once.
        .reconcile_on(wake)
        .reconcile_on(waiting.stream())
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
