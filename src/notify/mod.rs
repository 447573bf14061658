//! Notifications: what a reconcile tells (its Events, and the state of the commit it applies)
//! goes to the Providers that Alerts name. A reconcile only hands a `Notice` over, without
//! waiting; routing, the Secret, the HTTP request and its retries happen in tasks of their own,
//! one queue per Provider, so a slow or failing provider delays nothing but its own sends.
//!
//! Sent at most once: a notice follows a status write, and a restarted or new leader writes
//! (and so tells) nothing that the status already says. A notice identical to the one queued
//! last for the same Alert and GitRepository within `DEDUPE_WINDOW` is skipped, and a
//! GitRepository that keeps changing is held to `BURST` notices per Alert, then one per `REFILL`.

mod send;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tracing::{info, warn};

use crate::api::{Alert, EventSeverity, FIELD_MANAGER, GitRepository, Provider};
use crate::metrics::Metrics;
pub use send::{BuildError, Credentials, Request, SendError, build, wants};

/// Notices waiting to be routed; past this a reconcile's notice is dropped (and counted).
const ROUTE_QUEUE: usize = 1024;
/// Notices waiting for one Provider.
const PROVIDER_QUEUE: usize = 256;
/// Attempts of one send, and the wait before the first retry (doubled for each next one).
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Deadline of one request when the Provider sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// A notice identical to the one queued last (same Alert, GitRepository, reason, message,
/// revision and commit state) within this is skipped.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(300);
/// Notices per Alert and GitRepository sent at once, and the time in which one more is allowed.
pub const BURST: u32 = 10;
pub const REFILL: Duration = Duration::from_secs(30);

/// The state of the commit a notice is about, for commit status providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommitState {
    /// The revision is being applied.
    Pending,
    /// Applied; Ready.
    Success,
    /// Failed.
    Failure,
}

/// What happened to one GitRepository.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// A failure (`error` severity) rather than news (`info`).
    pub error: bool,
    pub reason: String,
    pub message: String,
    /// `<ref>@sha1:<sha>`, when the notice is about one.
    pub revision: Option<String>,
    /// Set for the start and the verdict of an apply.
    pub commit: Option<CommitState>,
    /// RFC 3339.
    pub at: String,
    /// Set for a pull-request preview: sent to its Provider alone, not through Alerts.
    pub preview: Option<PreviewNote>,
}

/// What a pull-request preview tells the pull request, besides its head commit's status.
#[derive(Clone, Debug, PartialEq)]
pub struct PreviewNote {
    /// The Provider of `spec.preview.providerRef`, in the GitRepository's namespace.
    pub provider: String,
    /// The pull request (merge request).
    pub number: u64,
    /// The comment (Markdown) that shows the diff; none while the preview is pending.
    pub comment: Option<String>,
}

impl Notice {
    pub fn new(gr: &GitRepository, error: bool, reason: &str, message: &str) -> Notice {
        Notice {
            namespace: gr.namespace().unwrap_or_default(),
            name: gr.name_any(),
            uid: gr.uid().unwrap_or_default(),
            labels: gr.labels().clone(),
            error,
            reason: reason.to_string(),
            message: message.to_string(),
            revision: None,
            commit: None,
            at: k8s_openapi::jiff::Timestamp::now().to_string(),
            preview: None,
        }
    }

    pub fn about(mut self, revision: Option<&str>, commit: Option<CommitState>) -> Notice {
        self.revision = revision.map(str::to_string);
        self.commit = commit;
        self
    }

    /// The commit of the revision.
    pub fn sha(&self) -> Option<&str> {
        let (_, sha) = self.revision.as_deref()?.rsplit_once(':')?;
        (sha.len() >= 7 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then_some(sha)
    }

    /// What makes two notices the same one, for an Alert.
    fn key(&self, alert: &str) -> u64 {
        let mut h = DefaultHasher::new();
        (alert, &self.uid, &self.reason, &self.message).hash(&mut h);
        (&self.revision, self.commit).hash(&mut h);
        h.finish()
    }
}

/// The handle a reconcile tells through. Cloning it is cheap.
#[derive(Clone)]
pub struct Notifier {
    queue: Option<mpsc::Sender<Notice>>,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// One that sends nothing (a Context of a unit test).
    pub fn disabled(metrics: Arc<Metrics>) -> Notifier {
        Notifier {
            queue: None,
            metrics,
        }
    }

    /// Hands `notice` over; never waits.
    pub fn notify(&self, notice: Notice) {
        let Some(queue) = &self.queue else { return };
        if let Err(mpsc::error::TrySendError::Full(notice)) = queue.try_send(notice) {
            warn!(namespace = %notice.namespace, name = %notice.name, "notification queue full: a notice was dropped");
            self.metrics.notified(&notice.namespace, "", "dropped");
        }
    }
}

/// The notification tasks of one leadership term; dropping this stops them, the sending to
/// each Provider too: a former leader sends nothing more.
pub struct Running {
    _tasks: tokio::task::JoinSet<()>,
    shared: Arc<Shared>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Under the queues' lock, so that routing still under way starts no sending after it.
        let mut queues = self.shared.queues.lock();
        self.shared.closed.store(true, Ordering::SeqCst);
        queues.clear();
        drop(queues);
        for worker in self.shared.workers.lock().drain(..) {
            worker.abort();
        }
    }
}

/// Starts routing and sending for the Alerts of `namespace` (all when None).
pub fn start(
    client: Client,
    namespace: Option<&str>,
    metrics: Arc<Metrics>,
) -> (Notifier, Running) {
    let (alerts, alert_writer) = reflector::store::<Alert>();
    let (providers, provider_writer) = reflector::store::<Provider>();
    let changed = Arc::new(Notify::new());
    let (tx, rx) = mpsc::channel(ROUTE_QUEUE);
    let shared = Arc::new(Shared {
        client: client.clone(),
        http: reqwest::Client::builder()
            // A redirect could carry a token to another host.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("capstan/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client"),
        alerts,
        providers,
        metrics: metrics.clone(),
        queues: Mutex::default(),
        closed: AtomicBool::new(false),
        workers: Mutex::default(),
        limits: Mutex::default(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let (alert_api, provider_api) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    tasks.spawn(reflect(alert_api, alert_writer, changed.clone()));
    tasks.spawn(reflect(provider_api, provider_writer, changed.clone()));
    let serving = shared.clone();
    tasks.spawn(async move {
        let shared = serving;
        // Before the Alerts are listed, routing would lose the notices of the first reconciles
        // and checking would find no Provider. (One task waits: a store wakes one waiter.)
        shared.alerts.wait_until_ready().await.ok();
        shared.providers.wait_until_ready().await.ok();
        futures::join!(route(rx, shared.clone()), check(changed, shared.clone()));
    });
    let notifier = Notifier {
        queue: Some(tx),
        metrics,
    };
    let running = Running {
        _tasks: tasks,
        shared,
    };
    (notifier, running)
}

/// Keeps `writer` in step with the cluster, waking `changed` on every change.
async fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>, changed: Arc<Notify>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static,
{
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        // Every event, deletions too: an Alert whose Provider went must say so.
        .for_each(|event| {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => warn!(error = %e, "watching Alerts or Providers failed; retrying"),
            }
            async {}
        })
        .await;
}

struct Shared {
    client: Client,
    http: reqwest::Client,
    alerts: Store<Alert>,
    providers: Store<Provider>,
    metrics: Arc<Metrics>,
    /// One queue per Provider (namespace, name), with its sending task.
    queues: Mutex<HashMap<(String, String), mpsc::Sender<Delivery>>>,
    /// Set when the term ends: nothing is queued or sent any more.
    closed: AtomicBool,
    workers: Mutex<Vec<tokio::task::AbortHandle>>,
    limits: Mutex<Limits>,
}

/// One notice for one Alert's Provider.
struct Delivery {
    /// The Alert that routed it; none for a preview.
    alert: Option<ObjectRef<Alert>>,
    notice: Arc<Notice>,
}

/// Routes each notice to the queues of the Alerts that select it.
async fn route(mut rx: mpsc::Receiver<Notice>, shared: Arc<Shared>) {
    while let Some(notice) = rx.recv().await {
        let notice = Arc::new(notice);
        if let Some(preview) = &notice.preview {
            let (ns, name) = (notice.namespace.clone(), preview.provider.clone());
            let at = ObjectRef::<Provider>::new(&name).within(&ns);
            if shared.providers.get(&at).is_some_and(|p| p.spec.suspend) {
                continue;
            }
            let delivery = Delivery {
                alert: None,
                notice: notice.clone(),
            };
            let Some(queue) = shared.queue(&ns, &name) else {
                return; // The term is over.
            };
            if queue.try_send(delivery).is_err() {
                warn!(namespace = %ns, provider = %name, "the Provider's queue is full: a preview was dropped");
                shared.metrics.notified(&ns, &name, "dropped");
            }
            continue;
        }
        for alert in shared.alerts.state() {
            if alert.namespace().as_deref() != Some(&notice.namespace) {
                continue;
            }
            match selects(&alert, &notice) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(_) => continue, // `check` shows it on the Alert.
            }
            let ns = notice.namespace.clone();
            let name = alert.spec.provider_ref.name.clone();
            let Some(provider) = shared.providers.get(&ObjectRef::new(&name).within(&ns)) else {
                continue; // `check` shows it on the Alert.
            };
            if provider.spec.suspend || !wants(provider.spec.kind, &notice) {
                continue;
            }
            let (key, alert_uid) = (notice.key(&uid(&*alert)), uid(&*alert));
            let pair = (alert_uid.as_str(), notice.uid.as_str());
            let pending = notice.commit == Some(CommitState::Pending);
            match shared.limits.lock().admit(key, pair, pending) {
                Admit::Send => {}
                Admit::Duplicate => continue,
                Admit::Limited => {
                    shared.metrics.notified(&ns, &name, "dropped");
                    continue;
                }
            }
            let delivery = Delivery {
                alert: Some(ObjectRef::from_obj(&*alert)),
                notice: notice.clone(),
            };
            let Some(queue) = shared.queue(&ns, &name) else {
                return; // The term is over.
            };
            if queue.try_send(delivery).is_err() {
                warn!(namespace = %ns, provider = %name, "the Provider's queue is full: a notice was dropped");
                shared.metrics.notified(&ns, &name, "dropped");
                continue;
            }
            shared.limits.lock().queued(key, pair, Instant::now());
        }
    }
}

fn uid<K: Resource>(o: &K) -> String {
    o.meta().uid.clone().unwrap_or_default()
}

/// Whether `alert` selects `notice`; an error names an unusable regular expression.
fn selects(alert: &Alert, notice: &Notice) -> Result<bool, String> {
    let spec = &alert.spec;
    if spec.suspend
        || (spec.event_severity == EventSeverity::Error && !notice.error)
        || !spec
            .event_sources
            .iter()
            .any(|s| s.kind == "GitRepository" && s.selects(&notice.name, &notice.labels))
        || (!spec.event_reasons.is_empty() && !spec.event_reasons.contains(&notice.reason))
    {
        return Ok(false);
    }
    let matches = |list: &[String]| -> Result<bool, String> {
        for pattern in list {
            let re = regex::Regex::new(pattern).map_err(|e| format!("{pattern:?}: {e}"))?;
            if re.is_match(&notice.message) {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let included = spec.inclusion_list.is_empty() || matches(&spec.inclusion_list)?;
    Ok(included && !matches(&spec.exclusion_list)?)
}

/// What an Alert's spec says wrong, if anything.
fn invalid(alert: &Alert) -> Option<String> {
    let lists = alert
        .spec
        .inclusion_list
        .iter()
        .chain(&alert.spec.exclusion_list);
    lists
        .filter_map(|p| {
            regex::Regex::new(p)
                .err()
                .map(|e| format!("{p:?} is not a regular expression: {e}"))
        })
        .next()
}

/// What the dedupe and the rate limit say of a notice.
#[derive(Debug, PartialEq)]
enum Admit {
    Send,
    /// Sent already within `DEDUPE_WINDOW`.
    Duplicate,
    /// Past the rate limit: dropped.
    Limited,
}

/// Dedupe and rate limit state, per (Alert uid, GitRepository uid).
#[derive(Default)]
struct Limits {
    /// The key of the notice queued last, and when.
    last: HashMap<(String, String), (u64, Instant)>,
    buckets: HashMap<(String, String), (f64, Instant)>,
}

impl Limits {
    /// Whether a notice with `key` for (Alert, GitRepository) `pair` is sent. A `pending`
    /// one needs a token to spare, so that the state that ends the apply is never held back.
    fn admit(&mut self, key: u64, pair: (&str, &str), pending: bool) -> Admit {
        self.admit_at(key, pair, pending, Instant::now())
    }

    fn admit_at(&mut self, key: u64, pair: (&str, &str), pending: bool, now: Instant) -> Admit {
        if self.last.len() > 4096 {
            self.last
                .retain(|_, (_, at)| now.duration_since(*at) < DEDUPE_WINDOW);
            self.buckets
                .retain(|_, (_, at)| now.duration_since(*at) < REFILL * BURST);
        }
        let pair = (pair.0.to_string(), pair.1.to_string());
        let repeated = self
            .last
            .get(&pair)
            .is_some_and(|(last, at)| *last == key && now.duration_since(*at) < DEDUPE_WINDOW);
        if repeated {
            return Admit::Duplicate;
        }
        let (tokens, at) = self.buckets.entry(pair).or_insert((f64::from(BURST), now));
        let refilled = now.duration_since(*at).as_secs_f64() / REFILL.as_secs_f64();
        *tokens = (*tokens + refilled).min(f64::from(BURST));
        *at = now;
        if *tokens < if pending { 2.0 } else { 1.0 } {
            return Admit::Limited;
        }
        *tokens -= 1.0;
        Admit::Send
    }

    /// Records that the notice with `key` was queued for `pair`.
    fn queued(&mut self, key: u64, pair: (&str, &str), now: Instant) {
        let pair = (pair.0.to_string(), pair.1.to_string());
        self.last.insert(pair, (key, now));
    }
}

impl Shared {
    /// The queue of a Provider, its sending task started on first use.
    fn queue(self: &Arc<Self>, ns: &str, name: &str) -> Option<mpsc::Sender<Delivery>> {
        let key = (ns.to_string(), name.to_string());
        let mut queues = self.queues.lock();
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        if let Some(queue) = queues.get(&key).filter(|q| !q.is_closed()) {
            return Some(queue.clone());
        }
        let (tx, rx) = mpsc::channel(PROVIDER_QUEUE);
        let worker = tokio::spawn(self.clone().work(key.clone(), rx));
        let mut workers = self.workers.lock();
        workers.retain(|w| !w.is_finished());
        workers.push(worker.abort_handle());
        queues.insert(key, tx.clone());
        Some(tx)
    }

    /// Sends a Provider's deliveries one by one, each with its retries. Ends when the Provider
    /// is gone (or the term ends).
    async fn work(self: Arc<Self>, key: (String, String), mut rx: mpsc::Receiver<Delivery>) {
        let (ns, name) = key;
        while let Some(delivery) = rx.recv().await {
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let at = ObjectRef::<Provider>::new(&name).within(&ns);
            let Some(provider) = self.providers.get(&at) else {
                if delivery.alert.is_none() {
                    warn!(namespace = %ns, provider = %name, "a preview's Provider does not exist: not sent");
                    self.metrics.notified(&ns, &name, "failed");
                }
                self.queues.lock().remove(&(ns.clone(), name.clone()));
                return;
            };
            let result = self.send(&provider, &delivery.notice).await;
            let Some(routed) = &delivery.alert else {
                match &result {
                    Ok(()) => self.metrics.notified(&ns, &name, "sent"),
                    Err(e) => {
                        self.metrics.notified(&ns, &name, "failed");
                        warn!(namespace = %ns, provider = %name, gitrepository = %delivery.notice.name, error = %e, "sending a preview failed");
                    }
                }
                continue;
            };
            let Some(alert) = self.alerts.get(routed) else {
                continue;
            };
            match result {
                Ok(()) => {
                    self.metrics.notified(&ns, &name, "sent");
                    self.show(&alert, true, "Succeeded", &ready_message(&provider))
                        .await;
                }
                Err(e) => {
                    self.metrics.notified(&ns, &name, "failed");
                    warn!(namespace = %ns, provider = %name, gitrepository = %delivery.notice.name, error = %e, "sending a notification failed");
                    self.show(
                        &alert,
                        false,
                        "SendFailed",
                        &format!("sending to Provider {name} failed: {e}"),
                    )
                    .await;
                }
            }
        }
    }

    /// Sends `notice` to `provider`, retrying with backoff; the Secret is read again for each
    /// attempt, so a rotated token is used at once.
    async fn send(&self, provider: &Provider, notice: &Notice) -> Result<(), String> {
        let timeout = provider
            .spec
            .timeout
            .as_deref()
            .and_then(crate::reconcile::parse_duration)
            .unwrap_or(DEFAULT_TIMEOUT);
        if notice.preview.is_some() && !provider.spec.kind.commit_status() {
            return Err(format!(
                "Provider {} is not a git host (github, gitea or gitlab): previews are not sent to it",
                provider.name_any()
            ));
        }
        let mut wait = FIRST_RETRY;
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            let credentials = match self.credentials(provider).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let request = build(&provider.spec, &credentials, notice).map_err(|e| e.to_string())?;
            let mut sent = send::deliver(&self.http, &request, timeout).await;
            if let (
                Ok(()),
                Some(PreviewNote {
                    number,
                    comment: Some(comment),
                    ..
                }),
            ) = (&sent, &notice.preview)
            {
                let api = send::comments(&provider.spec, &credentials, *number)
                    .map_err(|e| e.to_string())?;
                let marker = send::comment_marker(notice);
                let body = format!("{marker}\n{comment}");
                sent = send::upsert_comment(&self.http, &api, &marker, &body, timeout).await;
            }
            match sent {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("{last} ({ATTEMPTS} attempts)"))
    }

    async fn credentials(&self, provider: &Provider) -> Result<Credentials, String> {
        let Some(secret) = &provider.spec.secret_ref else {
            return Ok(Credentials::default());
        };
        let ns = provider.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        let secret = api
            .get(&secret.name)
            .await
            .map_err(|e| format!("reading Secret {ns}/{}: {e}", secret.name))?;
        let text = |key: &str| {
            let data = secret.data.as_ref()?.get(key)?;
            String::from_utf8(data.0.clone()).ok()
        };
        Ok(Credentials {
            token: text("token"),
            address: text("address"),
        })
    }

    /// Writes `alert`'s Ready condition, unless it says this already.
    async fn show(&self, alert: &Alert, ready: bool, reason: &str, message: &str) {
        let generation = alert.meta().generation;
        let wanted = (ready, reason.to_string(), message.to_string(), generation);
        let observed = alert.status.as_ref().and_then(|s| s.observed_generation);
        let current = alert
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| {
                (
                    c.status == "True",
                    c.reason.clone(),
                    c.message.clone(),
                    observed,
                )
            });
        // Against what the cluster shows, not what this process wrote last: another shard's
        // controller may have written since.
        if current.as_ref() == Some(&wanted) {
            return;
        }
        let status = if ready { "True" } else { "False" };
        let condition = Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        };
        let patch = serde_json::json!({
            "apiVersion": "capstan.dev/v1alpha1",
            "kind": "Alert",
            "status": {"observedGeneration": generation, "conditions": [condition]},
        });
        let api: Api<Alert> =
            Api::namespaced(self.client.clone(), &alert.namespace().unwrap_or_default());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch_status(&alert.name_any(), &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => {
                info!(namespace = ?alert.namespace(), alert = %alert.name_any(), ready, reason, "Alert status written")
            }
            Err(e) => {
                warn!(alert = %alert.name_any(), error = %e, "writing an Alert's status failed")
            }
        }
    }
}

fn ready_message(provider: &Provider) -> String {
    format!("sends to Provider {}", provider.name_any())
}

/// Shows on each Alert whether it can send: its Provider exists and its spec is usable. Runs
/// again whenever an Alert or Provider changes; writes only what differs.
async fn check(changed: Arc<Notify>, shared: Arc<Shared>) {
    loop {
        for alert in shared.alerts.state() {
            let ns = alert.namespace().unwrap_or_default();
            let name = &alert.spec.provider_ref.name;
            let provider = shared.providers.get(&ObjectRef::new(name).within(&ns));
            let current = alert
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            // What the last send said stands (for the spec as it is now) until the next.
            let sent = current.filter(|c| c.reason == "SendFailed" || c.reason == "Succeeded");
            match (invalid(&alert), provider, sent) {
                (Some(why), _, _) => shared.show(&alert, false, "InvalidSpec", &why).await,
                (None, None, _) => {
                    let why = format!("Provider {name} not found in namespace {ns}");
                    shared.show(&alert, false, "ProviderNotFound", &why).await;
                }
                (None, Some(_), Some(c)) => {
                    let ready = c.status == "True";
                    shared.show(&alert, ready, &c.reason, &c.message).await;
                }
                (None, Some(provider), None) => {
                    let message = format!("{}; nothing sent yet", ready_message(&provider));
                    shared.show(&alert, true, "Valid", &message).await;
                }
            }
        }
        changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LocalObjectReference;
    use crate::api::{AlertSpec, EventSource};

    fn notice(name: &str, error: bool, reason: &str) -> Notice {
        Notice {
            namespace: "apps".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: BTreeMap::from([("team".to_string(), "web".to_string())]),
            error,
            reason: reason.into(),
            message: format!("{reason} happened"),
            revision: None,
            commit: None,
            at: String::new(),
            preview: None,
        }
    }

    fn alert(sources: Vec<EventSource>) -> Alert {
        Alert::new(
            "a",
            AlertSpec {
                provider_ref: LocalObjectReference {
                    name: "p".into(),
                    namespace: None,
                },
                event_severity: EventSeverity::Info,
                event_sources: sources,
                event_reasons: vec![],
                inclusion_list: vec![],
                exclusion_list: vec![],
                suspend: false,
            },
        )
    }

    fn by_name(name: &str) -> EventSource {
        EventSource {
            kind: "GitRepository".into(),
            name: Some(name.into()),
            match_labels: None,
            namespace: None,
        }
    }

    #[test]
    fn alerts_select_by_source_severity_reason_and_message() {
        let mut a = alert(vec![by_name("web")]);
        assert_eq!(selects(&a, &notice("web", false, "Applied")), Ok(true));
        assert_eq!(selects(&a, &notice("api", false, "Applied")), Ok(false));
        a.spec.event_sources = vec![by_name("*")];
        assert_eq!(selects(&a, &notice("api", false, "Applied")), Ok(true));
        a.spec.event_sources = vec![EventSource {
            name: None,
            match_labels: Some(BTreeMap::from([("team".into(), "web".into())])),
            ..by_name("")
        }];
        assert_eq!(selects(&a, &notice("api", false, "Applied")), Ok(true));
        a.spec.event_severity = EventSeverity::Error;
        assert_eq!(selects(&a, &notice("api", false, "Applied")), Ok(false));
        assert_eq!(selects(&a, &notice("api", true, "BuildFailed")), Ok(true));
        a.spec.event_reasons = vec!["FetchFailed".into()];
        assert_eq!(selects(&a, &notice("api", true, "BuildFailed")), Ok(false));
        a.spec.event_reasons.clear();
        a.spec.exclusion_list = vec!["^Build".into()];
        assert_eq!(selects(&a, &notice("api", true, "BuildFailed")), Ok(false));
        a.spec.exclusion_list.clear();
        a.spec.inclusion_list = vec!["nothing like it".into()];
        assert_eq!(selects(&a, &notice("api", true, "BuildFailed")), Ok(false));
        a.spec.inclusion_list = vec!["(".into()];
        assert!(selects(&a, &notice("api", true, "BuildFailed")).is_err());
        assert!(invalid(&a).is_some_and(|m| m.contains("\"(\"")));
        a.spec.inclusion_list.clear();
        a.spec.suspend = true;
        assert_eq!(selects(&a, &notice("api", true, "BuildFailed")), Ok(false));
    }

    #[test]
    fn identical_notices_are_sent_once_and_a_flapping_one_is_held_back() {
        let now = Instant::now();
        // Admits and, when admitted, queues.
        let send = |limits: &mut Limits, n: &Notice, alert: &str, at: Instant| {
            let pair = (alert, n.uid.as_str());
            let pending = n.commit == Some(CommitState::Pending);
            let admitted = limits.admit_at(n.key(alert), pair, pending, at);
            if admitted == Admit::Send {
                limits.queued(n.key(alert), pair, at);
            }
            admitted
        };
        let mut limits = Limits::default();
        let n = notice("web", false, "Applied");
        assert_eq!(send(&mut limits, &n, "a", now), Admit::Send);
        // The same again (a requeue): once.
        assert_eq!(send(&mut limits, &n, "a", now), Admit::Duplicate);
        // For another Alert, it is news.
        assert_eq!(send(&mut limits, &n, "b", now), Admit::Send);
        // After the window, it is sent again.
        assert_eq!(send(&mut limits, &n, "a", now + DEDUPE_WINDOW), Admit::Send);
        // Success, failure, success again: each changes what the commit shows, so each goes.
        let state = |c: CommitState| n.clone().about(Some("main@sha1:0123abcd"), Some(c));
        let (ok, failed) = (state(CommitState::Success), state(CommitState::Failure));
        for n in [&ok, &failed, &ok] {
            assert_eq!(send(&mut limits, n, "c", now), Admit::Send);
        }

        // Notices that differ each time: a burst, then one per refill.
        let mut limits = Limits::default();
        let flap = |i: usize| Notice {
            message: format!("attempt {i}"),
            ..notice("flap", true, "FetchFailed")
        };
        let sent = (0..100)
            .filter(|i| send(&mut limits, &flap(*i), "a", now) == Admit::Send)
            .count();
        assert_eq!(sent, BURST as usize);
        assert_eq!(send(&mut limits, &flap(100), "a", now), Admit::Limited);
        let later = now + REFILL;
        assert_eq!(send(&mut limits, &flap(101), "a", later), Admit::Send);
        // Another GitRepository is not held back by this one.
        let calm = notice("calm", true, "FetchFailed");
        assert_eq!(send(&mut limits, &calm, "a", now), Admit::Send);
        // A pending state leaves a token for the state that ends the apply.
        let mut limits = Limits::default();
        for i in 0..BURST as usize - 1 {
            send(&mut limits, &flap(i), "a", now);
        }
        let pending = flap(0).about(Some("main@sha1:0123abcd"), Some(CommitState::Pending));
        assert_eq!(send(&mut limits, &pending, "a", now), Admit::Limited);
        let done = flap(0).about(Some("main@sha1:0123abcd"), Some(CommitState::Success));
        assert_eq!(send(&mut limits, &done, "a", now), Admit::Send);
    }

    #[test]
    fn the_commit_of_a_revision() {
        let n = notice("web", false, "Applied");
        let at = |r: &str| n.clone().about(Some(r), None).sha().map(str::to_string);
        let sha = "0123abcd".repeat(5);
        assert_eq!(at(&format!("main@sha1:{sha}")), Some(sha.clone()));
        assert_eq!(at(&format!("sha1:{sha}")), Some(sha));
        assert_eq!(at("main"), None);
        assert_eq!(at("main@sha1:zz"), None);
    }
}
