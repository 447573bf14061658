//! `capstan ui`: a web UI of GitRepositories, their objects, health, drift and Events, with
//! reconcile, suspend and resume. It acts only as its caller: the kubeconfig's user, or in the
//! cluster each request's own bearer token, so it shows and does what that identity may.
//! Pages are rendered on the server from the session's watches; a server-sent event tells open
//! pages when the cluster changed, and they fetch themselves again.

mod pages;
mod session;
mod view;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::reflector::ObjectRef;
use maud::Markup;
use serde::Deserialize;
use serde_json::json;

pub use session::Auth;
use session::{Session, Sessions};

use crate::api::{GitRepository, GitRepositoryStatus};
use crate::live::HealthExprs;
use crate::live::health::{self, Health};
use crate::object::ObjectId;
use crate::runtime::RenderConfig;

/// How many managed objects the page of one GitRepository lists.
const MAX_OBJECTS: usize = 500;
const CSRF_COOKIE: &str = "capstan-csrf";

#[derive(clap::Args, Debug)]
pub struct UiArgs {
    /// Address to serve on. Keep it on loopback unless `--auth bearer` and a proxy in front.
    #[arg(long, default_value = "127.0.0.1:9080")]
    pub address: SocketAddr,
    /// Open the UI in the default browser once it serves.
    #[arg(long)]
    pub open: bool,
    /// Whose rights the UI uses: the kubeconfig's user, or each caller's bearer token.
    #[arg(long, value_enum, default_value_t)]
    pub auth: Auth,
    /// Show this namespace only (by default every namespace the user may list GitRepositories
    /// in, else the kubeconfig's namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// A tracing filter for the UI's log on stderr, e.g. `info` or `capstan=debug`.
    #[arg(long, env = "CAPSTAN_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Most bytes the diff page's fetch may transfer.
    #[arg(long, default_value_t = 512 << 20)]
    pub max_fetch_bytes: u64,
    #[command(flatten)]
    pub render: RenderConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("kubeconfig: {0}")]
    Config(String),
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Bind(#[from] crate::server::BindError),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

struct Ui {
    auth: Auth,
    sessions: Arc<Sessions>,
    render: RenderConfig,
    max_fetch_bytes: u64,
}

/// Serves the UI until the process is stopped. Prints the address it serves on first.
pub async fn run(args: UiArgs) -> Result<(), UiError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| UiError::Config(e.to_string()))?;
    let sessions = Sessions::new(args.auth, config, args.namespace.clone()).await?;
    let listener = crate::server::bind("the UI", args.address).await?;
    let url = format!("http://{}/", listener.local_addr()?);
    println!("serving the Capstan UI on {url}");
    if args.open
        && let Err(e) = open::that_detached(&url)
    {
        eprintln!("could not open a browser ({e}); open {url}");
    }
    let ui = Arc::new(Ui {
        auth: args.auth,
        sessions,
        render: args.render,
        max_fetch_bytes: args.max_fetch_bytes,
    });
    axum::serve(listener, router(ui))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn router(ui: Arc<Ui>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/repos", get(list))
        .route("/repos/{ns}/{name}", get(detail))
        .route("/repos/{ns}/{name}/diff", get(diff))
        .route("/repos/{ns}/{name}/{action}", post(act))
        .route("/live", get(live))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/assets/ui.css",
            get(|| async { asset("text/css; charset=utf-8", pages::CSS) }),
        )
        .route(
            "/assets/ui.js",
            get(|| async { asset("text/javascript; charset=utf-8", pages::JS) }),
        )
        .with_state(ui)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Why a request got no page.
#[derive(Debug)]
enum Refusal {
    /// Bearer mode, and no token came.
    NoToken,
    Forbidden(String),
    NotFound(String),
    Unavailable(String),
    /// A watch failed: the API server's status, or 502.
    Watch(StatusCode, String),
    Kube(kube::Error),
}

impl From<kube::Error> for Refusal {
    fn from(e: kube::Error) -> Self {
        Refusal::Kube(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                "This UI acts as each caller: send `Authorization: Bearer <token>`.".to_string(),
            ),
            Refusal::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Refusal::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Refusal::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            Refusal::Watch(status, m) => (status, format!("watching the cluster: {m}")),
            // The API server's own refusal (401, 403, 404, 409) is the caller's answer.
            Refusal::Kube(kube::Error::Api(s)) => (
                StatusCode::from_u16(s.code).unwrap_or(StatusCode::BAD_GATEWAY),
                format!("the API server answered: {}", s.message),
            ),
            Refusal::Kube(e) => (StatusCode::BAD_GATEWAY, format!("the API server: {e}")),
        };
        let frame = pages::Frame {
            title: "Error".into(),
            scope: None,
            watch_error: None,
            live: pages::Live::Off,
        };
        let mut response = page(status, pages::error(&frame, &message));
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// An HTML response with the headers every page carries: no inline script or style may run,
/// no framing, nothing cached.
fn page(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The caller of a request: their session (its watches synced) and their CSRF token, new when
/// the browser had none.
struct Caller {
    session: Arc<Session>,
    csrf: String,
    new_csrf: bool,
}

impl Caller {
    async fn of(ui: &Ui, headers: &HeaderMap) -> Result<Caller, Refusal> {
        if ui.auth == Auth::Kubeconfig && !addressed_directly(headers) {
            return Err(Refusal::Forbidden(
                "this UI answers only to an IP address or localhost (the Host of this request \
                 is a name, as when another site's name is pointed at this address)"
                    .into(),
            ));
        }
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let session = ui
            .sessions
            .of(authorization)
            .await?
            .ok_or(Refusal::NoToken)?;
        // Until both watches have listed, or one fails (the API server's refusal is the
        // caller's answer at once), or 15 s.
        let (repos, events) = (session.repos.clone(), session.events.clone());
        let synced = async move {
            let _ = repos.wait_until_ready().await;
            let _ = events.wait_until_ready().await;
        };
        tokio::pin!(synced);
        let mut done = false;
        for _ in 0..60 {
            if tokio::time::timeout(Duration::from_millis(250), &mut synced)
                .await
                .is_ok()
            {
                done = true;
                break;
            }
            if let Some((code, why)) = session.watch_error() {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                return Err(Refusal::Watch(status, why));
            }
        }
        if !done {
            return Err(Refusal::Unavailable(
                "the watches of GitRepositories and Events have not synced within 15 s".into(),
            ));
        }
        let (csrf, new_csrf) = match cookie(headers, CSRF_COOKIE) {
            Some(token) if token.len() == 64 => (token, false),
            _ => (random_token(), true),
        };
        Ok(Caller {
            session,
            csrf,
            new_csrf,
        })
    }

    /// The frame of a page that follows `live` changes (see [`pages::Live`]).
    fn frame(&self, title: String, live: pages::Live) -> pages::Frame<'_> {
        pages::Frame {
            title,
            scope: self.session.scope.as_deref(),
            watch_error: self.session.watch_error().map(|(_, e)| e),
            live,
        }
    }

    fn respond(&self, markup: Markup) -> Response {
        let mut response = page(StatusCode::OK, markup);
        if self.new_csrf {
            let cookie = format!(
                "{CSRF_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                self.csrf
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
        }
        response
    }
}

/// In kubeconfig mode the UI answers only to an IP address or `localhost`: a page of another
/// site whose name was pointed at this address (DNS rebinding) is refused, so it can neither
/// read a page nor post an action as the kubeconfig's user.
fn addressed_directly(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(ip, _)| ip),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source");
    hex::encode(bytes)
}

/// A POST came from one of this UI's pages: its form carries the browser's CSRF cookie, and
/// its Origin, when sent, is this host.
fn same_origin(headers: &HeaderMap, form_token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some(cookie) = cookie(headers, CSRF_COOKIE) else {
        return false;
    };
    let token_matches =
        cookie.len() == 64 && bool::from(cookie.as_bytes().ct_eq(form_token.as_bytes()));
    let origin_matches = match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            let origin_host = origin.split_once("://").map(|(_, h)| h);
            host.is_some() && origin_host == host
        }
    };
    token_matches && origin_matches
}

fn repos(session: &Session) -> Vec<GitRepository> {
    session
        .repos
        .state()
        .iter()
        .map(|gr| gr.as_ref().clone())
        .collect()
}

// ---------------------------------------------------------------- pages

async fn overview(State(ui): State<Arc<Ui>>, headers: HeaderMap) -> Result<Response, Refusal> {
    let caller = Caller::of(&ui, &headers).await?;
    let items = repos(&caller.session);
    let mut events = caller.session.events.state();
    pages::newest_first(&mut events);
    events.truncate(20);
    let page = pages::Overview {
        counts: view::counts(&items),
        attention: view::attention(&items, 10),
        events,
    };
    let frame = caller.frame("Overview".into(), pages::Live::All);
    Ok(caller.respond(pages::overview(&frame, &page, Timestamp::now())))
}

async fn list(
    State(ui): State<Arc<Ui>>,
    Query(query): Query<view::Query>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let caller = Caller::of(&ui, &headers).await?;
    let items = repos(&caller.session);
    let mut namespaces: Vec<String> = items.iter().filter_map(|gr| gr.namespace()).collect();
    namespaces.sort();
    namespaces.dedup();
    let rows = query.apply(&items);
    let frame = caller.frame("GitRepositories".into(), pages::Live::All);
    Ok(caller.respond(pages::list(
        &frame,
        &query,
        &namespaces,
        &rows,
        items.len(),
        Timestamp::now(),
    )))
}

fn find(session: &Session, ns: &str, name: &str) -> Result<GitRepository, Refusal> {
    session
        .repos
        .get(&ObjectRef::new(name).within(ns))
        .map(|gr| gr.as_ref().clone())
        .ok_or_else(|| Refusal::NotFound(format!("GitRepository {ns}/{name} not found")))
}

async fn detail(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let caller = Caller::of(&ui, &headers).await?;
    let session = &caller.session;
    let gr = find(session, &ns, &name)?;
    let full = crate::apply::record::load(&session.client, &gr)
        .await
        .map_err(|e| e.to_string());
    let (objects, more) = match &full {
        Ok(Some(status)) => objects(session, &gr, status).await,
        _ => (Vec::new(), 0),
    };
    let mut events: Vec<_> = session
        .events
        .state()
        .into_iter()
        .filter(|e| {
            e.involved_object.namespace.as_deref() == Some(&ns)
                && e.involved_object.name.as_deref() == Some(&name)
        })
        .collect();
    pages::newest_first(&mut events);
    events.truncate(50);
    let page = pages::Detail {
        gr: &gr,
        status: full,
        objects,
        more,
        events,
        may_patch: session.may("patch", &ns).await,
        csrf: &caller.csrf,
    };
    let frame = caller.frame(
        format!("{ns}/{name}"),
        pages::Live::Repo(format!("{ns}/{name}")),
    );
    Ok(caller.respond(pages::detail(&frame, &page, Timestamp::now())))
}

/// The managed objects (at most [`MAX_OBJECTS`]) with their health and drift, and how many
/// more there are. Health is read with one list per kind and namespace, of the objects
/// labelled as this GitRepository's (metadata only for kinds that report no status, so no
/// Secret's data is read).
async fn objects(
    session: &Session,
    gr: &GitRepository,
    status: &GitRepositoryStatus,
) -> (Vec<pages::ObjectRow>, usize) {
    let entries = status.inventory.iter().flat_map(|i| &i.entries);
    let total = entries.clone().count();
    let drift: HashMap<&str, &crate::api::DriftEntry> =
        status.drift.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut groups: HashMap<(GroupVersionKind, String), Vec<(String, ObjectId)>> = HashMap::new();
    let mut rows = Vec::new();
    for entry in entries.take(MAX_OBJECTS) {
        let Some(id) = ObjectId::parse(&entry.id) else {
            continue;
        };
        // `v` is the version alone; the group is the id's (as the applier reads them).
        let gvk = GroupVersionKind::gvk(&id.group, &entry.v, &id.kind);
        groups
            .entry((gvk, id.namespace.clone()))
            .or_default()
            .push((entry.id.clone(), id.clone()));
        let d = drift.get(entry.id.as_str());
        rows.push((
            entry.id.clone(),
            pages::ObjectRow {
                namespace: id.namespace.clone(),
                kind: id.kind.clone(),
                name: id.name.clone(),
                health: None,
                drift: d.map(|d| d.fields.clone()).unwrap_or_default(),
                corrected: d.is_some_and(|d| d.corrected),
            },
        ));
    }
    // Objects of a remote cluster are not in this one.
    let mut healths: HashMap<String, Health> = HashMap::new();
    if gr.spec.kube_config.is_none() {
        let exprs = HealthExprs::compile(&gr.spec.health_check_exprs).unwrap_or_default();
        let selector = crate::apply::Owner::of(gr)
            .labels()
            .iter()
            .filter(|(k, _)| k.as_str() != crate::api::SHARD_LABEL)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        for ((gvk, namespace), ids) in groups {
            match read_health(session, &gvk, &namespace, &selector, &exprs).await {
                Ok(by_name) => {
                    for (id_text, id) in ids {
                        if let Some(h) = by_name.get(&id.name) {
                            healths.insert(id_text, h.clone());
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(kind = %gvk.kind, %namespace, error = %e, "health not read")
                }
            }
        }
    }
    let rows = rows
        .into_iter()
        .map(|(id, mut row)| {
            row.health = healths.remove(&id);
            row
        })
        .collect();
    (rows, total.saturating_sub(MAX_OBJECTS))
}

async fn read_health(
    session: &Session,
    gvk: &GroupVersionKind,
    namespace: &str,
    selector: &str,
    exprs: &HealthExprs,
) -> Result<HashMap<String, Health>, kube::Error> {
    let (resource, caps) = session.kind(gvk).await?;
    let api: Api<kube::api::DynamicObject> =
        if caps.scope == kube::discovery::Scope::Namespaced && !namespace.is_empty() {
            Api::namespaced_with(session.client.clone(), namespace, &resource)
        } else {
            Api::all_with(session.client.clone(), &resource)
        };
    let params = ListParams::default().labels(selector);
    let mut out = HashMap::new();
    if !health::has_status(&gvk.group, &gvk.kind) {
        for o in api.list_metadata(&params).await?.items {
            out.insert(o.name_any(), Health::Current);
        }
        return Ok(out);
    }
    for o in api.list(&params).await?.items {
        let name = o.name_any();
        let Ok(mut value) = serde_json::to_value(&o) else {
            continue;
        };
        value["apiVersion"] = json!(gvk.api_version());
        value["kind"] = json!(gvk.kind);
        let h = exprs
            .health(&value)
            .unwrap_or_else(|| health::health(&value));
        out.insert(name, h);
    }
    Ok(out)
}

async fn diff(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let caller = Caller::of(&ui, &headers).await?;
    let gr = find(&caller.session, &ns, &name)?;
    let report = crate::cli::diff_report(
        &caller.session.client,
        gr.clone(),
        None,
        &ui.render,
        ui.max_fetch_bytes,
    )
    .await
    .map_err(|e| e.to_string());
    // Not live: every refresh would fetch, render and dry-run again.
    let frame = caller.frame(format!("diff {ns}/{name}"), pages::Live::Off);
    Ok(caller.respond(pages::diff(&frame, &gr, &report)))
}

// ---------------------------------------------------------------- actions

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    csrf: String,
}

/// Reconcile now, suspend or resume, as the caller: the API server decides whether they may.
async fn act(
    State(ui): State<Arc<Ui>>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Response, Refusal> {
    if !same_origin(&headers, &form.csrf) {
        return Err(Refusal::Forbidden(
            "refused: the request did not come from a page of this UI (its CSRF token or origin \
             does not match)"
                .into(),
        ));
    }
    let caller = Caller::of(&ui, &headers).await?;
    let gr = find(&caller.session, &ns, &name)?;
    let patch = match action.as_str() {
        "reconcile" if gr.spec.suspend => {
            return Err(Refusal::Forbidden(format!(
                "{ns}/{name} is suspended; resume it first"
            )));
        }
        "reconcile" => crate::cli::reconcile_request(json!({})).1,
        "resume" => crate::cli::reconcile_request(json!({"suspend": false})).1,
        "suspend" => json!({"spec": {"suspend": true}}),
        _ => return Err(Refusal::NotFound(format!("no action {action}"))),
    };
    let api: Api<GitRepository> = Api::namespaced(caller.session.client.clone(), &ns);
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(Redirect::to(&format!(
        "/repos/{}/{}",
        pages::encode(&ns),
        pages::encode(&name)
    ))
    .into_response())
}

// ---------------------------------------------------------------- live

#[derive(Deserialize)]
struct LiveQuery {
    /// `namespace/name`: only changes of this GitRepository (and its Events).
    repo: Option<String>,
}

/// Server-sent events: `changed` when the session's watches saw a change the page follows (at
/// most twice a second); open pages then fetch themselves again. The stream ends when the API
/// server no longer accepts the caller's credentials.
async fn live(
    State(ui): State<Arc<Ui>>,
    Query(query): Query<LiveQuery>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let caller = Caller::of(&ui, &headers).await?;
    // Subscribed now: what the page shows already includes every change before this.
    let changes = caller.session.changes.subscribe();
    let follows = move |changed: &session::Changed| match (&query.repo, changed) {
        (Some(repo), Some(key)) => **key == **repo,
        _ => true,
    };
    // The stream holds the session (and its watches) while the page is open.
    let state = (changes, caller.session.clone(), follows);
    let stream = futures::stream::unfold(state, |(mut rx, session, follows)| async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match rx.recv().await {
                Ok(changed) if !follows(&changed) => continue,
                Ok(_) | Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return None,
            }
        }
        if session.watch_error().is_some_and(|(code, _)| code == 401) {
            return None;
        }
        session.touch();
        // Changes come in bursts (a reconcile writes its status and Events): one refresh.
        tokio::time::sleep(Duration::from_millis(500)).await;
        while !rx.is_empty() {
            let _ = rx.try_recv();
        }
        // A browser dispatches no event without data.
        let event = SseEvent::default().event("changed").data("1");
        Some((Ok::<_, Infallible>(event), (rx, session, follows)))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    // Proxies in front (an Ingress) must pass events on as they come.
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_addresses_and_localhost_are_answered() {
        for host in [
            "127.0.0.1:9080",
            "localhost:9080",
            "LOCALHOST",
            "[::1]:9080",
            "10.0.0.5",
        ] {
            assert!(addressed_directly(&headers(&[("host", host)])), "{host}");
        }
        for host in ["evil.example:9080", "localhost.evil.example", "[::1", ""] {
            assert!(!addressed_directly(&headers(&[("host", host)])), "{host}");
        }
        assert!(!addressed_directly(&HeaderMap::new()));
    }

    #[test]
    fn posts_need_the_cookies_token_and_this_origin() {
        let token = "a".repeat(64);
        let cookie = format!("other=1; {CSRF_COOKIE}={token}");
        let ok = headers(&[("cookie", &cookie), ("host", "127.0.0.1:9080")]);
        assert!(same_origin(&ok, &token));
        assert!(!same_origin(&ok, &"b".repeat(64)));
        assert!(!same_origin(&ok, ""));
        assert!(!same_origin(&headers(&[("host", "x")]), &token));
        let from_here = headers(&[
            ("cookie", &cookie),
            ("host", "127.0.0.1:9080"),
            ("origin", "http://127.0.0.1:9080"),
        ]);
        assert!(same_origin(&from_here, &token));
        let from_elsewhere = headers(&[
            ("cookie", &cookie),
            ("host", "127.0.0.1:9080"),
            ("origin", "https://evil.example"),
        ]);
        assert!(!same_origin(&from_elsewhere, &token));
    }
}
