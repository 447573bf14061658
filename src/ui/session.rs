//! Who the UI acts as, and what it has seen for them. A session is one identity (the kubeconfig's
//! user, or one caller's bearer token in the cluster) with its own client and one watch per kind
//! (GitRepositories and their Events), shared by every page that identity has open: pages read
//! the watches' stores, and each change is told to the open pages it concerns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::ApiCapabilities;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, broadcast};
use tokio::task::AbortHandle;

use crate::api::{GROUP, GitRepository};

/// How long a caller's session (its watches) outlives its last request, in bearer mode.
const IDLE: Duration = Duration::from_secs(600);
/// How long an access review's answer is reused.
const RIGHTS_TTL: Duration = Duration::from_secs(30);

/// An access review's answer (and why not), and when it was given.
type Answer = (Result<(), String>, Instant);
/// The GitRepository a change concerns, as `namespace/name`; `None` for any.
pub type Changed = Option<Arc<str>>;
type WatchError = Arc<Mutex<Option<(u16, String)>>>;
/// A caller's session, once its start (by whichever request came first) succeeded.
type Starting = Arc<OnceCell<Arc<Session>>>;

pub struct Session {
    pub client: Client,
    /// The namespace the session sees, or all of them.
    pub scope: Option<String>,
    pub repos: Store<GitRepository>,
    pub events: Store<Event>,
    /// The watches' changes, by the GitRepository they concern (`namespace/name`; `None`:
    /// possibly all of them, as after a re-list or an error).
    pub changes: broadcast::Sender<Changed>,
    /// Per watch, its last error until it recovers: the API server's status code (502 when it
    /// did not answer) and the error.
    errors: [WatchError; 2],
    rights: Mutex<HashMap<(String, &'static str), Answer>>,
    kinds: Mutex<HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>>,
    last_used: Mutex<Instant>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Session {
    /// Starts the session's watches: over all namespaces when the identity may list
    /// GitRepositories in all of them, else over `namespace` (the kubeconfig's by default).
    pub async fn start(client: Client, namespace: Option<String>) -> Result<Session, kube::Error> {
        // The review also proves the credentials: a token the API server does not know is
        // refused here, with its 401.
        let scope = match namespace {
            Some(ns) => allowed(&client, "list", &ns).await.map(|_| Some(ns))?,
            None if allowed(&client, "list", "").await?.is_ok() => None,
            None => Some(client.default_namespace().to_string()),
        };
        let (repos_api, events_api): (Api<GitRepository>, Api<Event>) = match &scope {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        let (changes, _) = broadcast::channel(1024);
        let errors: [WatchError; 2] = Default::default();
        let (repos, repos_task) = mirror(
            repos_api,
            watcher::Config::default(),
            |gr: &GitRepository| {
                format!("{}/{}", gr.namespace().unwrap_or_default(), gr.name_any())
            },
            &changes,
            &errors[0],
        );
        let events_config = watcher::Config::default().fields(&format!(
            "involvedObject.kind=GitRepository,involvedObject.apiVersion={GROUP}/v1alpha1"
        ));
        let (events, events_task) = mirror(
            events_api,
            events_config,
            |e: &Event| {
                let o = &e.involved_object;
                format!(
                    "{}/{}",
                    o.namespace.as_deref().unwrap_or_default(),
                    o.name.as_deref().unwrap_or_default()
                )
            },
            &changes,
            &errors[1],
        );
        Ok(Session {
            client,
            scope,
            repos,
            events,
            changes,
            errors,
            rights: Mutex::default(),
            kinds: Mutex::default(),
            last_used: Mutex::new(Instant::now()),
            tasks: vec![repos_task, events_task],
        })
    }

    /// Whether the identity may `verb` GitRepositories in `namespace`, and if not why, as the
    /// API server answers an access review (reused for a few seconds).
    pub async fn may(&self, verb: &'static str, namespace: &str) -> Result<(), String> {
        let key = (namespace.to_string(), verb);
        if let Some((answer, at)) = self.rights.lock().get(&key)
            && at.elapsed() < RIGHTS_TTL
        {
            return answer.clone();
        }
        let answer = match allowed(&self.client, verb, namespace).await {
            Ok(answer) => answer,
            Err(e) => Err(format!("the access review failed: {e}")),
        };
        self.rights
            .lock()
            .insert(key, (answer.clone(), Instant::now()));
        answer
    }

    /// The resource of a kind, from the API server's discovery (kept for the session).
    pub async fn kind(
        &self,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, ApiCapabilities), kube::Error> {
        if let Some(found) = self.kinds.lock().get(gvk) {
            return Ok(found.clone());
        }
        let found = kube::discovery::pinned_kind(&self.client, gvk).await?;
        self.kinds.lock().insert(gvk.clone(), found.clone());
        Ok(found)
    }

    /// A watch's error, while it has one.
    pub fn watch_error(&self) -> Option<(u16, String)> {
        self.errors.iter().find_map(|e| e.lock().clone())
    }

    pub fn touch(&self) {
        *self.last_used.lock() = Instant::now();
    }
}

/// A store kept by one watch; each change is sent on `changes` with the GitRepository `key_of`
/// names, each watch error is kept in `error` until the watch recovers.
fn mirror<K>(
    api: Api<K>,
    config: watcher::Config,
    key_of: impl Fn(&K) -> String + Send + 'static,
    changes: &broadcast::Sender<Changed>,
    error: &WatchError,
) -> (Store<K>, AbortHandle)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let (changes, error) = (changes.clone(), error.clone());
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            // No receiver (no page open) is no error.
            match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    *error.lock() = None;
                    let _ = changes.send(Some(key_of(&o).into()));
                }
                Ok(watcher::Event::InitDone) => {
                    *error.lock() = None;
                    let _ = changes.send(None);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed; retrying");
                    let code = match &e {
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code,
                        watcher::Error::WatchError(s) => s.code,
                        _ => 502,
                    };
                    *error.lock() = Some((code, e.to_string()));
                    let _ = changes.send(None);
                }
            }
        }
    });
    (reader, task.abort_handle())
}

/// A SelfSubjectAccessReview of `verb` on GitRepositories in `namespace` (`""`: all).
async fn allowed(
    client: &Client,
    verb: &str,
    namespace: &str,
) -> Result<Result<(), String>, kube::Error> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                resource: Some("gitrepositories".into()),
                verb: Some(verb.into()),
                namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    let status = answer.status.unwrap_or_default();
    if status.allowed {
        return Ok(Ok(()));
    }
    let place = if namespace.is_empty() {
        "in all namespaces".to_string()
    } else {
        format!("in namespace {namespace}")
    };
    let mut why = format!("you may not {verb} GitRepositories {place}");
    if let Some(reason) = status.reason.filter(|r| !r.is_empty()) {
        why.push_str(&format!(" ({reason})"));
    }
    Ok(Err(why))
}

/// How callers are known.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Auth {
    /// As the kubeconfig's (or the Pod's) user: one session for everyone who reaches the address.
    #[default]
    Kubeconfig,
    /// As each caller: every request carries `Authorization: Bearer <token>`, which the API
    /// server checks; the UI's own credentials are never used.
    Bearer,
}

/// The sessions of the UI process: one in kubeconfig mode, one per caller's token in bearer mode.
pub struct Sessions {
    auth: Auth,
    config: Config,
    namespace: Option<String>,
    /// Per token's digest, its session once started. A cell is taken from the map under the
    /// lock and filled outside it, so one slow start holds up no other caller.
    by_token: Mutex<HashMap<[u8; 32], Starting>>,
    own: Option<Arc<Session>>,
}

impl Sessions {
    pub async fn new(
        auth: Auth,
        config: Config,
        namespace: Option<String>,
    ) -> Result<Arc<Sessions>, kube::Error> {
        let own = match auth {
            Auth::Kubeconfig => {
                let client = Client::try_from(config.clone())?;
                Some(Arc::new(Session::start(client, namespace.clone()).await?))
            }
            Auth::Bearer => None,
        };
        let sessions = Arc::new(Sessions {
            auth,
            config,
            namespace,
            by_token: Default::default(),
            own,
        });
        if auth == Auth::Bearer {
            let weak = Arc::downgrade(&sessions);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    let Some(sessions) = weak.upgrade() else {
                        return;
                    };
                    // A session a page's live stream still holds stays.
                    sessions.by_token.lock().retain(|_, cell| match cell.get() {
                        Some(s) => Arc::strong_count(s) > 1 || s.last_used.lock().elapsed() < IDLE,
                        None => Arc::strong_count(cell) > 1,
                    });
                }
            });
        }
        Ok(sessions)
    }

    /// The session of a request's caller; `None` when bearer mode finds no token.
    pub async fn of(
        &self,
        authorization: Option<&str>,
    ) -> Result<Option<Arc<Session>>, kube::Error> {
        if let Some(own) = &self.own {
            own.touch();
            return Ok(Some(own.clone()));
        }
        debug_assert_eq!(self.auth, Auth::Bearer);
        // The scheme is case-insensitive (RFC 9110).
        let Some(token) = authorization
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
        else {
            return Ok(None);
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cell = self.by_token.lock().entry(key).or_default().clone();
        let started = cell
            .get_or_try_init(|| async {
                let mut config = self.config.clone();
                config.auth_info = kube::config::AuthInfo {
                    token: Some(token.to_string().into()),
                    ..Default::default()
                };
                let client = Client::try_from(config)?;
                Ok::<_, kube::Error>(Arc::new(
                    Session::start(client, self.namespace.clone()).await?,
                ))
            })
            .await;
        match started {
            Ok(session) => {
                session.touch();
                Ok(Some(session.clone()))
            }
            Err(e) => {
                // A token refused is not kept.
                self.by_token.lock().remove(&key);
                Err(e)
            }
        }
    }
}
