//! The webhook receiver: `POST /hook/<namespace>/<name>` for a `Receiver`. A request whose
//! signature checks out with the Receiver's token reconciles, at once, the GitRepositories the
//! Receiver lists that track the pushed repository and ref, through the reconcile-now annotation.
//!
//! It keeps no state and runs on every replica (a standby too: the leader does the work): each
//! request reads its Receiver, Secret and the namespace's GitRepositories.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::api::{
    GitRef, GitRepository, PREVIEW_REQUESTED_ANNOTATION, PREVIEW_REQUESTS, PreviewRequest,
    RECONCILE_REQUESTED_ANNOTATION, Receiver, ReceiverType,
};

/// Push payloads of the big hosts stay far below this; more is refused with 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Requests handled at once; more get 503. Each costs API reads before its signature is known,
/// so a flood of unsigned requests must not turn into a flood on the API server.
const MAX_CONCURRENT: usize = 16;

#[derive(Clone)]
struct Receiving {
    client: Client,
    permits: Arc<Semaphore>,
}

/// Serves the receiver endpoint on `addr` until the runtime shuts down.
pub async fn serve(listener: tokio::net::TcpListener, client: Client) -> std::io::Result<()> {
    let state = Receiving {
        client,
        permits: Arc::new(Semaphore::new(MAX_CONCURRENT)),
    };
    let app = Router::new()
        .route("/hook/{namespace}/{name}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    axum::serve(listener, app).await
}

type Reply = (StatusCode, String);

fn reply(code: StatusCode, message: impl Into<String>) -> Reply {
    (code, message.into())
}

async fn receive(
    State(state): State<Receiving>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let Ok(_permit) = state.permits.try_acquire() else {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "busy; try again later");
    };
    // A request that carries no signature of any kind passes no Receiver: refused before it
    // costs a read of the Receiver and its Secret.
    if !SIGNATURE_HEADERS.iter().any(|h| headers.contains_key(*h)) {
        warn!(%namespace, receiver = %name, "webhook: request refused: no signature header");
        return reply(StatusCode::UNAUTHORIZED, "signature does not match");
    }
    let client = state.client;
    let receiver = match authenticate(&client, &namespace, &name, &headers, &body).await {
        Ok(receiver) => receiver,
        Err(refused) => return refused,
    };
    let event = match parse(receiver.spec.kind, &headers, &body) {
        Ok(event) => event,
        Err(why) => {
            warn!(%namespace, receiver = %name, why, "webhook: malformed payload");
            return reply(StatusCode::BAD_REQUEST, format!("malformed payload: {why}"));
        }
    };
    // A push asks for a reconcile now; a pull request for a preview of its head.
    let annotation = match &event {
        Event::Push(_) => RECONCILE_REQUESTED_ANNOTATION,
        Event::PullRequest(_) => PREVIEW_REQUESTED_ANNOTATION,
        Event::Other(kind) => return reply(StatusCode::OK, format!("ignored event {kind:?}")),
    };
    let triggered = match trigger(client, &namespace, &receiver, &event).await {
        Ok(triggered) => triggered,
        Err(refused) => return refused,
    };
    info!(%namespace, receiver = %name, ?triggered, annotation, "webhook: event received");
    reply(
        StatusCode::ACCEPTED,
        json!({"triggered": triggered}).to_string(),
    )
}

/// Asks every GitRepository the Receiver selects that `event` concerns for a reconcile now (a
/// push) or a preview (a pull request). Returns their names.
async fn trigger(
    client: Client,
    namespace: &str,
    receiver: &Receiver,
    event: &Event,
) -> Result<Vec<String>, Reply> {
    let grs: Api<GitRepository> = Api::namespaced(client, namespace);
    let list = match grs.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(e) => {
            warn!(%namespace, receiver = %receiver.name_any(), error = %e, "webhook: listing GitRepositories failed");
            return Err(reply(StatusCode::SERVICE_UNAVAILABLE, "try again later"));
        }
    };
    let mut triggered = Vec::new();
    for gr in list.items.iter().filter(|gr| {
        let labels = gr.labels();
        receiver
            .spec
            .resources
            .iter()
            .any(|r| r.selects(&gr.name_any(), labels))
            && event.concerns(gr)
    }) {
        let asked = match event {
            Event::PullRequest(pr) => request_preview(&grs, gr.clone(), pr).await,
            // Always a fresh request, even if one is pending: that one may be past its fetch
            // and miss this push. The controller runs one reconcile per GitRepository at a time
            // and merges requests that arrive meanwhile into one more, so a flood stays cheap.
            _ => {
                let now = k8s_openapi::jiff::Timestamp::now().to_string();
                let patch =
                    json!({"metadata": {"annotations": {RECONCILE_REQUESTED_ANNOTATION: now}}});
                let params = PatchParams::default();
                grs.patch(&gr.name_any(), &params, &Patch::Merge(&patch))
                    .await
                    .map(drop)
            }
        };
        match asked {
            Ok(()) => triggered.push(gr.name_any()),
            Err(e) => {
                warn!(%namespace, gitrepository = %gr.name_any(), error = %e, "webhook: requesting a reconcile or preview failed");
                return Err(reply(StatusCode::SERVICE_UNAVAILABLE, "try again later"));
            }
        }
    }
    Ok(triggered)
}

/// Adds `pr`'s head to the GitRepository's preview requests, in place of an older head of the
/// same pull request, keeping the newest [`PREVIEW_REQUESTS`]. A read, then a write that fails
/// if another request changed the GitRepository since, then again: two pull requests' events at
/// once both stay.
async fn request_preview(
    grs: &Api<GitRepository>,
    mut gr: GitRepository,
    pr: &PullRequest,
) -> Result<(), kube::Error> {
    let mut attempts = 0;
    loop {
        let mut requests: Vec<PreviewRequest> = gr
            .annotations()
            .get(PREVIEW_REQUESTED_ANNOTATION)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        requests.retain(|r| r.number != pr.number);
        requests.push(PreviewRequest {
            number: pr.number,
            git_ref: pr.head_ref.clone(),
            sha: pr.sha.clone(),
        });
        let excess = requests.len().saturating_sub(PREVIEW_REQUESTS);
        requests.drain(..excess);
        let value = serde_json::to_string(&requests).unwrap_or_default();
        let patch = json!({"metadata": {
            "resourceVersion": gr.resource_version(),
            "annotations": {PREVIEW_REQUESTED_ANNOTATION: value},
        }});
        let params = PatchParams::default();
        match grs
            .patch(&gr.name_any(), &params, &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 5 => {
                attempts += 1;
                gr = grs.get(&gr.name_any()).await?;
            }
            done => return done.map(drop),
        }
    }
}

/// The Receiver `namespace/name`, if the request carries its signature.
async fn authenticate(
    client: &Client,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Receiver, Reply> {
    let receivers: Api<Receiver> = Api::namespaced(client.clone(), namespace);
    let receiver = match receivers.get_opt(name).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(reply(StatusCode::NOT_FOUND, "no such receiver")),
        Err(e) => {
            warn!(%namespace, receiver = %name, error = %e, "webhook: reading the Receiver failed");
            return Err(reply(StatusCode::SERVICE_UNAVAILABLE, "try again later"));
        }
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let token = match secrets.get_opt(&receiver.spec.secret_ref.name).await {
        Ok(Some(secret)) => secret
            .data
            .unwrap_or_default()
            .remove("token")
            .map(|t| t.0)
            .filter(|t| !t.is_empty()),
        Ok(None) => None,
        Err(e) => {
            warn!(%namespace, receiver = %name, error = %e, "webhook: reading the Receiver's Secret failed");
            return Err(reply(StatusCode::SERVICE_UNAVAILABLE, "try again later"));
        }
    };
    let Some(token) = token else {
        warn!(%namespace, receiver = %name, secret = %receiver.spec.secret_ref.name, "webhook: the Receiver's Secret is missing or has no `token`");
        return Err(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "receiver is not configured",
        ));
    };
    if let Err(why) = verify(receiver.spec.kind, headers, body, &token) {
        warn!(%namespace, receiver = %name, why, "webhook: request refused");
        return Err(reply(StatusCode::UNAUTHORIZED, "signature does not match"));
    }
    Ok(receiver)
}

/// The headers `verify` reads a signature from, one per Receiver type.
const SIGNATURE_HEADERS: &[&str] = &["x-hub-signature-256", "x-signature", "x-gitlab-token"];

/// Checks the request's signature with `token`, in constant time.
pub fn verify(
    kind: ReceiverType,
    headers: &HeaderMap,
    body: &[u8],
    token: &[u8],
) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match kind {
        ReceiverType::GitHub => hmac_sha256(header("x-hub-signature-256"), body, token),
        ReceiverType::GenericHmac => hmac_sha256(header("x-signature"), body, token),
        ReceiverType::GitLab => {
            let given = header("x-gitlab-token").ok_or("no X-Gitlab-Token header")?;
            if bool::from(given.as_bytes().ct_eq(token)) {
                Ok(())
            } else {
                Err("X-Gitlab-Token does not match")
            }
        }
    }
}

fn hmac_sha256(header: Option<&str>, body: &[u8], token: &[u8]) -> Result<(), &'static str> {
    let hex_sig = header
        .ok_or("no signature header")?
        .strip_prefix("sha256=")
        .ok_or("the signature is not sha256=<hex>")?;
    let signature = hex::decode(hex_sig).map_err(|_| "the signature is not hex")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(token).map_err(|_| "unusable token")?;
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| "the signature does not match")
}

#[derive(Debug, PartialEq)]
pub enum Event {
    Push(Push),
    PullRequest(PullRequest),
    /// Another event (a ping, an issue comment): acknowledged, nothing reconciled.
    Other(String),
}

/// What a push concerns. Empty `urls` and no `git_ref` (the generic type): everything listed.
#[derive(Debug, Default, PartialEq)]
pub struct Push {
    pub urls: Vec<String>,
    /// `refs/heads/<branch>` or `refs/tags/<tag>`.
    pub git_ref: Option<String>,
}

/// A pull request (GitHub, Gitea) or merge request (GitLab) whose head is new: opened, reopened,
/// or pushed to.
#[derive(Debug, Clone, PartialEq)]
pub struct PullRequest {
    pub urls: Vec<String>,
    pub number: u64,
    /// The ref the host keeps the head under: `refs/pull/N/head`, `refs/merge-requests/N/head`.
    pub head_ref: String,
    /// The head commit.
    pub sha: String,
    /// The branch it merges into.
    pub base: String,
}

pub fn parse(kind: ReceiverType, headers: &HeaderMap, body: &[u8]) -> Result<Event, String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (event, url_fields, url_keys): (String, &str, &[&str]) = match kind {
        ReceiverType::GenericHmac => return Ok(Event::Push(Push::default())),
        ReceiverType::GitHub => (
            header("x-github-event"),
            "repository",
            &["clone_url", "ssh_url", "git_url", "html_url"],
        ),
        ReceiverType::GitLab => (
            header("x-gitlab-event"),
            "project",
            &["git_http_url", "git_ssh_url", "web_url"],
        ),
    };
    let pull_request = matches!(event.as_str(), "pull_request" | "Merge Request Hook");
    if !pull_request && !matches!(event.as_str(), "push" | "Push Hook" | "Tag Push Hook") {
        return Ok(Event::Other(event));
    }
    let payload: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let repository = payload
        .get(url_fields)
        .and_then(Value::as_object)
        .ok_or_else(|| format!("no {url_fields:?} object"))?;
    let urls: Vec<String> = url_keys
        .iter()
        .filter_map(|k| repository.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(format!("no repository URL in {url_fields:?}"));
    }
    if pull_request {
        return pull_request_of(kind, &payload, urls);
    }
    let git_ref = payload
        .get("ref")
        .and_then(Value::as_str)
        .ok_or("no \"ref\"")?
        .to_string();
    Ok(Event::Push(Push {
        urls,
        git_ref: Some(git_ref),
    }))
}

/// The pull request of a `pull_request` (GitHub, Gitea) or `Merge Request Hook` (GitLab)
/// payload, when its head is new; other actions (closed, labelled, edited) are `Other`, and so is
/// a pull request from another repository (a fork): its author need not have any right on this
/// one, and a preview renders with the GitRepository's keys and variables and shows values of
/// the live cluster.
fn pull_request_of(
    kind: ReceiverType,
    payload: &Value,
    urls: Vec<String>,
) -> Result<Event, String> {
    let text = |v: &Value, path: &str| -> Result<String, String> {
        v.pointer(path)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("no {path:?}"))
    };
    let (number, sha, base, head_ref) = if kind == ReceiverType::GitLab {
        let action = text(payload, "/object_attributes/action")?;
        // An update is a push only when it names the head it replaced.
        let pushed = payload.pointer("/object_attributes/oldrev").is_some();
        let new = matches!(action.as_str(), "open" | "reopen") || (action == "update" && pushed);
        if !new {
            return Ok(Event::Other(format!("merge request {action}")));
        }
        let source = payload.pointer("/object_attributes/source_project_id");
        if source.is_none() || source != payload.pointer("/object_attributes/target_project_id") {
            return Ok(Event::Other("merge request from a fork".into()));
        }
        let number = payload
            .pointer("/object_attributes/iid")
            .and_then(Value::as_u64)
            .ok_or("no \"/object_attributes/iid\"")?;
        let sha = text(payload, "/object_attributes/last_commit/id")?;
        let base = text(payload, "/object_attributes/target_branch")?;
        (
            number,
            sha,
            base,
            format!("refs/merge-requests/{number}/head"),
        )
    } else {
        let action = text(payload, "/action")?;
        // Gitea says `synchronized` where GitHub says `synchronize`.
        let new = matches!(
            action.as_str(),
            "opened" | "reopened" | "synchronize" | "synchronized"
        );
        if !new {
            return Ok(Event::Other(format!("pull_request {action}")));
        }
        let head = payload.pointer("/pull_request/head/repo/full_name");
        if head.is_none() || head != payload.pointer("/pull_request/base/repo/full_name") {
            return Ok(Event::Other("pull_request from a fork".into()));
        }
        let number = payload
            .get("number")
            .and_then(Value::as_u64)
            .ok_or("no \"number\"")?;
        let sha = text(payload, "/pull_request/head/sha")?;
        let base = text(payload, "/pull_request/base/ref")?;
        (number, sha, base, format!("refs/pull/{number}/head"))
    };
    if !(sha.len() == 40 || sha.len() == 64) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("the head commit {sha:?} is not a SHA"));
    }
    Ok(Event::PullRequest(PullRequest {
        urls,
        number,
        head_ref,
        sha: sha.to_lowercase(),
        base,
    }))
}

impl Push {
    /// Whether this push may change what `gr` syncs: the same repository, and the ref it
    /// follows (a tag push for a semver range too). A pinned commit never changes.
    pub fn concerns(&self, gr: &GitRepository) -> bool {
        let Some(pushed) = &self.git_ref else {
            return true;
        };
        let url = normalize_url(&gr.spec.url);
        if !self.urls.iter().any(|u| normalize_url(u) == url) {
            return false;
        }
        let GitRef {
            branch,
            tag,
            semver,
            name,
            commit,
        } = gr.spec.git_ref();
        if commit.is_some() {
            return false;
        }
        if let Some(branch) = branch {
            return pushed.strip_prefix("refs/heads/") == Some(branch.as_str());
        }
        if let Some(tag) = tag {
            return pushed.strip_prefix("refs/tags/") == Some(tag.as_str());
        }
        if semver.is_some() {
            return pushed.starts_with("refs/tags/");
        }
        name.as_deref() == Some(pushed.as_str())
    }
}

impl Event {
    fn concerns(&self, gr: &GitRepository) -> bool {
        match self {
            Event::Push(push) => push.concerns(gr),
            Event::PullRequest(pr) => pr.concerns(gr),
            Event::Other(_) => false,
        }
    }
}

impl PullRequest {
    /// Whether `gr` previews this pull request: it opts in, tracks the same repository, and the
    /// pull request merges into a branch it previews (`spec.preview.branches`, or the branch it
    /// follows).
    pub fn concerns(&self, gr: &GitRepository) -> bool {
        let Some(preview) = &gr.spec.preview else {
            return false;
        };
        let url = normalize_url(&gr.spec.url);
        if !self.urls.iter().any(|u| normalize_url(u) == url) {
            return false;
        }
        match preview.branches.is_empty() {
            true => gr.spec.git_ref().branch.as_deref() == Some(self.base.as_str()),
            false => preview.branches.contains(&self.base),
        }
    }
}

/// A repository URL reduced to `host/path`, so that the HTTPS, SSH and scp-style spellings of
/// one repository compare equal: no scheme, user, port or `.git`, lowercase.
pub fn normalize_url(raw: &str) -> String {
    let raw = raw.trim();
    let rest = match raw.split_once("://") {
        Some((_, rest)) => rest.to_string(),
        // scp-style `user@host:path`
        None => raw.replacen(':', "/", 1),
    };
    let rest = rest.rsplit_once('@').map_or(rest.as_str(), |(_, r)| r);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.split(':').next().unwrap_or(host);
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("{host}/{path}").to_lowercase()
}

/// `sha256=<hex HMAC-SHA256 of body>`: the signature GitHub sends and `generic-hmac` checks
/// and sends.
pub fn hmac_signature(body: &[u8], token: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn hmac_signature_is_checked() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = hmac_signature(body, b"s3cret");
        let h = headers(&[("x-hub-signature-256", &good)]);
        assert_eq!(verify(ReceiverType::GitHub, &h, body, b"s3cret"), Ok(()));
        assert!(verify(ReceiverType::GitHub, &h, body, b"other").is_err());
        assert!(verify(ReceiverType::GitHub, &h, b"tampered", b"s3cret").is_err());
        assert!(verify(ReceiverType::GitHub, &HeaderMap::new(), body, b"s3cret").is_err());
        let sha1 = headers(&[("x-hub-signature-256", "sha1=00")]);
        assert!(verify(ReceiverType::GitHub, &sha1, body, b"s3cret").is_err());
        let h = headers(&[("x-signature", &good)]);
        assert_eq!(
            verify(ReceiverType::GenericHmac, &h, body, b"s3cret"),
            Ok(())
        );
    }

    #[test]
    fn gitlab_token_is_compared() {
        let h = headers(&[("x-gitlab-token", "s3cret")]);
        assert_eq!(verify(ReceiverType::GitLab, &h, b"{}", b"s3cret"), Ok(()));
        assert!(verify(ReceiverType::GitLab, &h, b"{}", b"s3cret2").is_err());
        assert!(verify(ReceiverType::GitLab, &HeaderMap::new(), b"{}", b"s3cret").is_err());
    }

    #[test]
    fn payloads_are_parsed() {
        let gh = headers(&[("x-github-event", "push")]);
        let body = br#"{"ref":"refs/heads/main","repository":{"clone_url":"https://github.com/acme/app.git","ssh_url":"git@github.com:acme/app.git"}}"#;
        assert_eq!(
            parse(ReceiverType::GitHub, &gh, body).unwrap(),
            Event::Push(Push {
                urls: vec![
                    "https://github.com/acme/app.git".into(),
                    "git@github.com:acme/app.git".into()
                ],
                git_ref: Some("refs/heads/main".into()),
            })
        );
        let ping = headers(&[("x-github-event", "ping")]);
        assert_eq!(
            parse(ReceiverType::GitHub, &ping, b"{}").unwrap(),
            Event::Other("ping".into())
        );
        assert!(parse(ReceiverType::GitHub, &gh, b"not json").is_err());
        assert!(parse(ReceiverType::GitHub, &gh, br#"{"ref":"refs/heads/main"}"#).is_err());
        let gl = headers(&[("x-gitlab-event", "Tag Push Hook")]);
        let body = br#"{"ref":"refs/tags/v1.2.0","project":{"git_http_url":"https://gitlab.com/acme/app.git"}}"#;
        assert!(matches!(
            parse(ReceiverType::GitLab, &gl, body).unwrap(),
            Event::Push(Push { git_ref: Some(r), .. }) if r == "refs/tags/v1.2.0"
        ));
    }

    #[test]
    fn pull_requests_whose_head_is_new_are_parsed() {
        let sha = "ab".repeat(20);
        let gh = headers(&[("x-github-event", "pull_request")]);
        let github = |action: &str| {
            json!({"action": action, "number": 7,
                "pull_request": {"head": {"sha": sha, "ref": "feature", "repo": {"full_name": "acme/app"}},
                    "base": {"ref": "main", "repo": {"full_name": "acme/app"}}},
                "repository": {"clone_url": "https://github.com/acme/app.git"}})
            .to_string()
        };
        let want = PullRequest {
            urls: vec!["https://github.com/acme/app.git".into()],
            number: 7,
            head_ref: "refs/pull/7/head".into(),
            sha: sha.clone(),
            base: "main".into(),
        };
        for action in ["opened", "reopened", "synchronize", "synchronized"] {
            let got = parse(ReceiverType::GitHub, &gh, github(action).as_bytes()).unwrap();
            assert_eq!(
                got,
                Event::PullRequest(PullRequest { ..want.clone() }),
                "{action}"
            );
        }
        assert_eq!(
            parse(ReceiverType::GitHub, &gh, github("closed").as_bytes()).unwrap(),
            Event::Other("pull_request closed".into())
        );
        let no_sha = github("opened").replace(&sha, "HEAD");
        assert!(parse(ReceiverType::GitHub, &gh, no_sha.as_bytes()).is_err());
        let fork = github("opened").replacen("acme/app", "mallory/app", 1);
        assert_eq!(
            parse(ReceiverType::GitHub, &gh, fork.as_bytes()).unwrap(),
            Event::Other("pull_request from a fork".into())
        );

        let gl = headers(&[("x-gitlab-event", "Merge Request Hook")]);
        let gitlab = |action: &str, oldrev: bool| {
            let mut attributes = json!({"action": action, "iid": 3, "target_branch": "main",
                "last_commit": {"id": sha}, "source_project_id": 5, "target_project_id": 5});
            if oldrev {
                attributes["oldrev"] = json!("cd".repeat(20));
            }
            json!({"object_attributes": attributes,
                "project": {"git_http_url": "https://gitlab.com/acme/app.git"}})
            .to_string()
        };
        let got = parse(ReceiverType::GitLab, &gl, gitlab("update", true).as_bytes()).unwrap();
        assert!(
            matches!(&got, Event::PullRequest(pr) if pr.head_ref == "refs/merge-requests/3/head" && pr.number == 3 && pr.base == "main"),
            "{got:?}"
        );
        assert!(matches!(
            parse(ReceiverType::GitLab, &gl, gitlab("open", false).as_bytes()).unwrap(),
            Event::PullRequest(_)
        ));
        let fork =
            gitlab("open", false).replace("\"source_project_id\":5", "\"source_project_id\":6");
        assert_eq!(
            parse(ReceiverType::GitLab, &gl, fork.as_bytes()).unwrap(),
            Event::Other("merge request from a fork".into())
        );
        // An update without a new head (a title, a label) is not previewed again.
        assert!(matches!(
            parse(
                ReceiverType::GitLab,
                &gl,
                gitlab("update", false).as_bytes()
            )
            .unwrap(),
            Event::Other(_)
        ));
    }

    #[test]
    fn a_pull_request_concerns_the_gitrepositories_that_preview_its_base() {
        let pr = |base: &str| PullRequest {
            urls: vec!["https://github.com/acme/app.git".into()],
            number: 7,
            head_ref: "refs/pull/7/head".into(),
            sha: "ab".repeat(20),
            base: base.into(),
        };
        let previewing = |git_ref: Value, preview: Value| {
            crate::git_repository(json!({
                "metadata": {"name": "x"},
                "spec": {"url": "git@github.com:acme/app.git", "interval": "1m", "ref": git_ref, "preview": preview},
            }))
        };
        let main = previewing(json!({"branch": "main"}), json!({}));
        assert!(pr("main").concerns(&main));
        assert!(!pr("dev").concerns(&main));
        let listed = previewing(
            json!({"semver": ">=1"}),
            json!({"branches": ["main", "dev"]}),
        );
        assert!(pr("dev").concerns(&listed));
        assert!(!pr("prod").concerns(&listed));
        assert!(!pr("main").concerns(&gr(
            "git@github.com:acme/app.git",
            json!({"branch": "main"})
        )));
        let elsewhere = crate::git_repository(json!({
            "metadata": {"name": "x"},
            "spec": {"url": "https://github.com/acme/other", "interval": "1m", "ref": {"branch": "main"}, "preview": {}},
        }));
        assert!(!pr("main").concerns(&elsewhere));
    }

    #[test]
    fn url_spellings_of_one_repository_compare_equal() {
        let want = "github.com/acme/app";
        for url in [
            "https://github.com/acme/app.git",
            "https://user:token@GitHub.com/acme/app/",
            "ssh://git@github.com:22/acme/app.git",
            "git@github.com:acme/app.git",
            "http://github.com/acme/app",
        ] {
            assert_eq!(normalize_url(url), want, "{url}");
        }
        assert_ne!(normalize_url("https://github.com/acme/app2"), want);
    }

    fn gr(url: &str, git_ref: Value) -> GitRepository {
        crate::git_repository(json!({
            "metadata": {"name": "x"},
            "spec": {"url": url, "interval": "1m", "ref": git_ref},
        }))
    }

    #[test]
    fn a_push_concerns_the_ref_a_gitrepository_follows() {
        let push = |r: &str| Push {
            urls: vec!["https://github.com/acme/app.git".into()],
            git_ref: Some(r.into()),
        };
        let url = "git@github.com:acme/app.git";
        assert!(push("refs/heads/main").concerns(&gr(url, json!({"branch": "main"}))));
        assert!(!push("refs/heads/dev").concerns(&gr(url, json!({"branch": "main"}))));
        assert!(!push("refs/heads/main").concerns(&gr(
            "https://github.com/acme/other",
            json!({"branch": "main"})
        )));
        assert!(push("refs/tags/v1").concerns(&gr(url, json!({"tag": "v1"}))));
        assert!(push("refs/tags/v2.0.0").concerns(&gr(url, json!({"semver": ">=1"}))));
        assert!(!push("refs/heads/main").concerns(&gr(url, json!({"semver": ">=1"}))));
        assert!(!push("refs/heads/main").concerns(&gr(
            url,
            json!({"branch": "main", "commit": "0".repeat(40)})
        )));
        assert!(push("refs/pull/7/head").concerns(&gr(url, json!({"name": "refs/pull/7/head"}))));
        assert!(Push::default().concerns(&gr(url, json!({"branch": "main"}))));
    }
}
