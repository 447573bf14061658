//! One notice as the HTTP request each Provider type expects, following the services' documented
//! formats (GitHub's and GitLab's commit status APIs, Slack's incoming webhooks, Flux's event
//! JSON for `generic`). Pure apart from `deliver`, which sends one request.

use std::time::Duration;

use serde_json::{Value, json};

use super::{CommitState, Notice};
use crate::api::{ProviderSpec, ProviderType};

/// What the Provider's Secret holds.
#[derive(Default)]
pub struct Credentials {
    pub token: Option<String>,
    pub address: Option<String>,
}

/// A request ready to send.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    #[error("no address: set spec.address or the Secret's `address` key")]
    NoAddress,
    #[error("the address is not a {0} repository URL (https://host/owner/repository)")]
    NotRepository(&'static str),
    #[error("the Secret has no `token` key, which {0} needs")]
    NoToken(&'static str),
}

/// GitHub refuses longer descriptions (Gitea takes GitHub's API as its model); GitLab keeps 255.
const GITHUB_DESCRIPTION: usize = 140;
const GITLAB_DESCRIPTION: usize = 255;

/// Whether a provider of `kind` sends `notice`: commit status providers send the state of a
/// revision's commit, the others the Events (never the `pending` that no Event carries).
pub fn wants(kind: ProviderType, notice: &Notice) -> bool {
    if kind.commit_status() {
        notice.commit.is_some() && notice.sha().is_some()
    } else {
        notice.commit != Some(CommitState::Pending)
    }
}

/// The request that tells `notice` to a provider of `spec`.
pub fn build(
    spec: &ProviderSpec,
    credentials: &Credentials,
    notice: &Notice,
) -> Result<Request, BuildError> {
    let address = credentials
        .address
        .clone()
        .or_else(|| spec.address.clone())
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or(BuildError::NoAddress)?;
    let json = |body: &Value| serde_json::to_vec(body).unwrap_or_default();
    let content_type = ("Content-Type", "application/json".to_string());
    let mut context = format!("capstan/{}/{}", notice.namespace, notice.name);
    if notice.preview.is_some() {
        context.push_str("/preview");
    }
    let state = notice.commit.unwrap_or(CommitState::Failure);
    let sha = notice.sha().unwrap_or_default();
    match spec.kind {
        ProviderType::Generic | ProviderType::GenericHmac => {
            let body = json(&event_json(notice));
            let mut headers = vec![content_type];
            if spec.kind == ProviderType::GenericHmac {
                let token = token(credentials, "generic-hmac")?;
                let signature = crate::webhook::hmac_signature(&body, token.as_bytes());
                headers.push(("X-Signature", signature));
            }
            Ok(Request {
                url: address,
                headers,
                body,
            })
        }
        ProviderType::Slack => Ok(Request {
            url: address,
            headers: vec![content_type],
            body: json(&slack_json(spec, notice)),
        }),
        ProviderType::GitHub | ProviderType::Gitea | ProviderType::GitLab => {
            let forge = forge(spec, credentials, &address)?;
            let gitlab = spec.kind == ProviderType::GitLab;
            let state = match (state, gitlab) {
                (CommitState::Pending, _) => "pending",
                (CommitState::Success, _) => "success",
                (CommitState::Failure, false) => "failure",
                (CommitState::Failure, true) => "failed",
            };
            let body = match gitlab {
                true => json!({
                    "state": state,
                    "name": context,
                    "description": truncate(&notice.message, GITLAB_DESCRIPTION),
                }),
                false => json!({
                    "state": state,
                    "context": context,
                    "description": truncate(&notice.message, GITHUB_DESCRIPTION),
                }),
            };
            let mut headers = forge.headers;
            headers.push(content_type);
            Ok(Request {
                url: format!("{}/statuses/{sha}", forge.api),
                headers,
                body: json(&body),
            })
        }
    }
}

/// A repository's API on a forge: its base URL (`…/repos/owner/repo`, `…/projects/<id>`) and
/// the headers that authenticate to it.
struct Forge {
    /// The host's API (`https://api.github.com`, `…/api/v1`, `…/api/v4`).
    root: String,
    api: String,
    headers: Vec<(&'static str, String)>,
}

fn forge(
    spec: &ProviderSpec,
    credentials: &Credentials,
    address: &str,
) -> Result<Forge, BuildError> {
    let host = match spec.kind {
        ProviderType::Gitea => "Gitea",
        ProviderType::GitLab => "GitLab",
        _ => "GitHub",
    };
    let (base, path) = repository(address, host)?;
    if spec.kind == ProviderType::GitLab {
        let project: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
        return Ok(Forge {
            root: format!("{base}/api/v4"),
            api: format!("{base}/api/v4/projects/{project}"),
            headers: vec![("PRIVATE-TOKEN", token(credentials, "gitlab")?.to_string())],
        });
    }
    let [owner, repo] = path.split('/').collect::<Vec<_>>()[..] else {
        return Err(BuildError::NotRepository(host));
    };
    if spec.kind == ProviderType::Gitea {
        return Ok(Forge {
            root: format!("{base}/api/v1"),
            api: format!("{base}/api/v1/repos/{owner}/{repo}"),
            headers: vec![(
                "Authorization",
                format!("token {}", token(credentials, "gitea")?),
            )],
        });
    }
    let api = if base.ends_with("://github.com") {
        "https://api.github.com".to_string()
    } else {
        format!("{base}/api/v3")
    };
    Ok(Forge {
        api: format!("{api}/repos/{owner}/{repo}"),
        root: api,
        headers: vec![
            ("Accept", "application/vnd.github+json".into()),
            ("X-GitHub-Api-Version", "2022-11-28".into()),
            (
                "Authorization",
                format!("Bearer {}", token(credentials, "github")?),
            ),
        ],
    })
}

fn token<'a>(credentials: &'a Credentials, kind: &'static str) -> Result<&'a str, BuildError> {
    credentials
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(BuildError::NoToken(kind))
}

/// `https://host[:port]/group/repo(.git)` as the base `https://host[:port]` and the path
/// `group/repo`.
fn repository(address: &str, host: &'static str) -> Result<(String, String), BuildError> {
    let url = url::Url::parse(address).map_err(|_| BuildError::NotRepository(host))?;
    let (Some(domain), "http" | "https") = (url.host_str(), url.scheme()) else {
        return Err(BuildError::NotRepository(host));
    };
    let base = match url.port() {
        Some(port) => format!("{}://{domain}:{port}", url.scheme()),
        None => format!("{}://{domain}", url.scheme()),
    };
    let path = url.path().trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    if path.split('/').count() < 2 || path.split('/').any(str::is_empty) {
        return Err(BuildError::NotRepository(host));
    }
    Ok((base, path.to_string()))
}

fn truncate(s: &str, chars: usize) -> String {
    if s.chars().count() <= chars {
        return s.to_string();
    }
    let mut out: String = s.chars().take(chars - 1).collect();
    out.push('…');
    out
}

/// Flux's event format, so that what receives Flux's notifications receives Capstan's.
fn event_json(notice: &Notice) -> Value {
    let mut metadata = serde_json::Map::new();
    if let Some(revision) = &notice.revision {
        metadata.insert("revision".into(), revision.clone().into());
    }
    json!({
        "involvedObject": {
            "apiVersion": "capstan.dev/v1alpha1",
            "kind": "GitRepository",
            "namespace": notice.namespace,
            "name": notice.name,
            "uid": notice.uid,
        },
        "severity": if notice.error { "error" } else { "info" },
        "timestamp": notice.at,
        "reason": notice.reason,
        "message": notice.message,
        "metadata": metadata,
        "reportingController": crate::api::FIELD_MANAGER,
    })
}

fn slack_json(spec: &ProviderSpec, notice: &Notice) -> Value {
    let object = format!("GitRepository {}/{}", notice.namespace, notice.name);
    let mut fields = vec![json!({"title": "Reason", "value": notice.reason, "short": true})];
    if let Some(revision) = &notice.revision {
        fields.push(json!({"title": "Revision", "value": revision, "short": true}));
    }
    let mut body = json!({
        "username": spec.username.as_deref().unwrap_or("capstan"),
        "text": format!("{object}: {}", notice.reason),
        "attachments": [{
            "color": if notice.error { "danger" } else { "good" },
            "title": object,
            "text": notice.message,
            "fields": fields,
        }],
    });
    if let Some(channel) = &spec.channel {
        body["channel"] = channel.clone().into();
    }
    body
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The message never names the URL: a webhook URL is often itself a credential.
    #[error("{0}")]
    Transport(String),
    #[error("answered HTTP {0}: {1}")]
    Status(u16, String),
}

/// Sends `request` once, within `timeout`.
pub async fn deliver(
    http: &reqwest::Client,
    request: &Request,
    timeout: Duration,
) -> Result<(), SendError> {
    call(http, reqwest::Method::POST, request, timeout)
        .await
        .map(drop)
}

/// Most of an answer's body read (the comments of a pull request).
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// One request with `method`; the answer when its status is a success, its body unread.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    request: &Request,
    timeout: Duration,
) -> Result<reqwest::Response, SendError> {
    let mut builder = http.request(method, &request.url).timeout(timeout);
    if !request.body.is_empty() {
        builder = builder.body(request.body.clone());
    }
    for (k, v) in &request.headers {
        builder = builder.header(*k, v);
    }
    let response = builder.send().await.map_err(transport)?;
    let code = response.status();
    if code.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
    Err(SendError::Status(code.as_u16(), body))
}

fn transport(e: reqwest::Error) -> SendError {
    let kind = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // The causes say what went wrong (refused, reset, a TLS error); none holds the URL.
    let mut causes = String::new();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        causes.push_str(&format!(": {c}"));
        cause = c.source();
    }
    SendError::Transport(format!("{kind}: {}{causes}", e.without_url()))
}

/// GET `url` and parse the JSON answer, of at most [`MAX_ANSWER_BYTES`].
async fn get_json(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&'static str, String)],
    timeout: Duration,
) -> Result<Value, SendError> {
    let request = Request {
        url: url.to_string(),
        headers: headers.to_vec(),
        body: Vec::new(),
    };
    let mut response = call(http, reqwest::Method::GET, &request, timeout).await?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER_BYTES {
            return Err(SendError::Transport("the answer is too large".into()));
        }
    }
    serde_json::from_slice(&body)
        .map_err(|e| SendError::Transport(format!("the answer did not parse: {e}")))
}

/// The first line of the comment a preview keeps on a pull request: how the next preview of
/// the same GitRepository finds it to update it.
pub fn comment_marker(notice: &Notice) -> String {
    format!(
        "<!-- capstan-preview {}/{} -->",
        notice.namespace, notice.name
    )
}

/// Where a pull request's comments are listed, created and updated, and who the token is.
#[derive(Debug, PartialEq)]
pub struct Comments {
    /// The token's own user: only its comments are ours.
    user: String,
    list: String,
    create: String,
    /// Followed by the comment's id.
    update: String,
    /// PATCH for GitHub and Gitea, PUT for GitLab.
    update_method: reqwest::Method,
    headers: Vec<(&'static str, String)>,
}

/// The comment API of pull request (merge request) `number` on the Provider's repository.
pub fn comments(
    spec: &ProviderSpec,
    credentials: &Credentials,
    number: u64,
) -> Result<Comments, BuildError> {
    let address = credentials
        .address
        .clone()
        .or_else(|| spec.address.clone())
        .ok_or(BuildError::NoAddress)?;
    let Forge {
        root,
        api,
        mut headers,
    } = forge(spec, credentials, address.trim())?;
    let user = format!("{root}/user");
    headers.push(("Content-Type", "application/json".to_string()));
    Ok(match spec.kind {
        ProviderType::GitLab => Comments {
            user,
            list: format!("{api}/merge_requests/{number}/notes?per_page=100&sort=asc"),
            create: format!("{api}/merge_requests/{number}/notes"),
            update: format!("{api}/merge_requests/{number}/notes/"),
            update_method: reqwest::Method::PUT,
            headers,
        },
        _ => Comments {
            user,
            // `per_page` for GitHub, `limit` for Gitea.
            list: format!("{api}/issues/{number}/comments?per_page=100&limit=50"),
            create: format!("{api}/issues/{number}/comments"),
            update: format!("{api}/issues/comments/"),
            update_method: reqwest::Method::PATCH,
            headers,
        },
    })
}

/// Creates the comment that starts with `marker`, or updates it when the pull request has
/// one of the token's own already, so that each GitRepository keeps one comment, always the
/// newest. A comment someone else wrote with the marker is not ours (when the token has a user
/// to tell).
pub async fn upsert_comment(
    http: &reqwest::Client,
    api: &Comments,
    marker: &str,
    body: &str,
    timeout: Duration,
) -> Result<(), SendError> {
    // A GitHub App's token has no user: then the marker alone finds the comment.
    let me = get_json(http, &api.user, &api.headers, timeout)
        .await
        .ok()
        .and_then(|user| user["id"].as_u64());
    let listed = get_json(http, &api.list, &api.headers, timeout).await?;
    // GitHub and Gitea name a comment's writer `user`, GitLab a note's `author`.
    let ours = listed.as_array().and_then(|all| {
        all.iter()
            .filter(|c| {
                let author = c["user"]["id"].as_u64().or(c["author"]["id"].as_u64());
                me.is_none() || author == me
            })
            .find(|c| c["body"].as_str().is_some_and(|b| b.starts_with(marker)))
            .and_then(|c| c["id"].as_u64())
    });
    let body = serde_json::to_vec(&json!({"body": body})).unwrap_or_default();
    let (method, url) = match ours {
        Some(id) => (api.update_method.clone(), format!("{}{id}", api.update)),
        None => (reqwest::Method::POST, api.create.clone()),
    };
    let request = Request {
        url,
        headers: api.headers.clone(),
        body,
    };
    call(http, method, &request, timeout).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(commit: Option<CommitState>) -> Notice {
        Notice {
            namespace: "apps".into(),
            name: "web".into(),
            uid: "u-1".into(),
            labels: Default::default(),
            error: commit == Some(CommitState::Failure),
            reason: "Applied".into(),
            message: "Applied revision main@sha1:0123abcd (3 objects)".into(),
            revision: Some(format!("main@sha1:{}", "0123abcd".repeat(5))),
            commit,
            at: "2026-12-03T12:00:00Z".into(),
            preview: None,
        }
    }

    fn spec(kind: ProviderType, address: &str) -> ProviderSpec {
        ProviderSpec {
            kind,
            address: Some(address.into()),
            channel: None,
            username: None,
            secret_ref: None,
            timeout: None,
            suspend: false,
        }
    }

    fn token(t: &str) -> Credentials {
        Credentials {
            token: Some(t.into()),
            address: None,
        }
    }

    fn body(r: &Request) -> Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn github_commit_status() {
        let sha = "0123abcd".repeat(5);
        let n = notice(Some(CommitState::Success));
        let r = build(
            &spec(ProviderType::GitHub, "https://github.com/acme/web.git"),
            &token("t0k"),
            &n,
        )
        .unwrap();
        assert_eq!(
            r.url,
            format!("https://api.github.com/repos/acme/web/statuses/{sha}")
        );
        assert!(r.headers.contains(&("Authorization", "Bearer t0k".into())));
        let b = body(&r);
        assert_eq!(b["state"], "success");
        assert_eq!(b["context"], "capstan/apps/web");
        // GitHub Enterprise: the API under /api/v3 of the host.
        let r = build(
            &spec(ProviderType::GitHub, "http://127.0.0.1:8080/acme/web"),
            &token("t0k"),
            &notice(Some(CommitState::Pending)),
        )
        .unwrap();
        assert_eq!(
            r.url,
            format!("http://127.0.0.1:8080/api/v3/repos/acme/web/statuses/{sha}")
        );
        assert_eq!(body(&r)["state"], "pending");
        let long = Notice {
            message: "x".repeat(500),
            ..notice(Some(CommitState::Failure))
        };
        let r = build(
            &spec(ProviderType::GitHub, "https://github.com/acme/web"),
            &token("t"),
            &long,
        )
        .unwrap();
        let b = body(&r);
        assert_eq!(b["state"], "failure");
        assert_eq!(b["description"].as_str().unwrap().chars().count(), 140);
        for bad in [
            "https://github.com/acme",
            "https://github.com/a/b/c",
            "ssh://git@github.com/a/b",
            "github.com/a/b",
        ] {
            let got = build(&spec(ProviderType::GitHub, bad), &token("t"), &n);
            assert_eq!(got, Err(BuildError::NotRepository("GitHub")), "{bad}");
        }
        let got = build(
            &spec(ProviderType::GitHub, "https://github.com/a/b"),
            &Credentials::default(),
            &n,
        );
        assert_eq!(got, Err(BuildError::NoToken("github")));
    }

    #[test]
    fn gitea_commit_status() {
        let sha = "0123abcd".repeat(5);
        let r = build(
            &spec(ProviderType::Gitea, "http://127.0.0.1:3000/acme/web.git"),
            &token("gt"),
            &notice(Some(CommitState::Pending)),
        )
        .unwrap();
        assert_eq!(
            r.url,
            format!("http://127.0.0.1:3000/api/v1/repos/acme/web/statuses/{sha}")
        );
        assert!(r.headers.contains(&("Authorization", "token gt".into())));
        assert_eq!(body(&r)["state"], "pending");
    }

    #[test]
    fn gitlab_commit_status() {
        let sha = "0123abcd".repeat(5);
        let r = build(
            &spec(
                ProviderType::GitLab,
                "https://gitlab.example.com/group/sub/web",
            ),
            &token("glpat"),
            &notice(Some(CommitState::Failure)),
        )
        .unwrap();
        assert_eq!(
            r.url,
            format!("https://gitlab.example.com/api/v4/projects/group%2Fsub%2Fweb/statuses/{sha}")
        );
        assert!(r.headers.contains(&("PRIVATE-TOKEN", "glpat".into())));
        let b = body(&r);
        assert_eq!(b["state"], "failed");
        assert_eq!(b["name"], "capstan/apps/web");
    }

    #[test]
    fn generic_hmac_is_signed_over_the_body() {
        let r = build(
            &spec(ProviderType::GenericHmac, "https://hooks.example.com/in"),
            &token("s3cret"),
            &notice(Some(CommitState::Success)),
        )
        .unwrap();
        // As a `generic-hmac` Receiver checks it.
        let h = r.headers.iter().map(|(k, v)| (k.to_string(), v.clone()));
        let headers: axum::http::HeaderMap = h
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect();
        let checked = crate::webhook::verify(
            crate::api::ReceiverType::GenericHmac,
            &headers,
            &r.body,
            b"s3cret",
        );
        assert!(checked.is_ok());
        let b = body(&r);
        assert_eq!(b["involvedObject"]["name"], "web");
        assert_eq!(b["severity"], "info");
        assert_eq!(b["metadata"]["revision"], notice(None).revision.unwrap());
        // Unsigned `generic` sends no signature, and needs no token.
        let r = build(
            &spec(ProviderType::Generic, "https://hooks.example.com/in"),
            &Credentials::default(),
            &notice(None),
        )
        .unwrap();
        assert!(r.headers.iter().all(|(k, _)| *k != "X-Signature"));
    }

    #[test]
    fn the_secrets_address_takes_the_place_of_the_specs() {
        let credentials = Credentials {
            token: None,
            address: Some("https://hooks.slack.com/services/T/B/secret\n".into()),
        };
        let mut s = spec(ProviderType::Slack, "");
        s.address = None;
        s.channel = Some("#deploys".into());
        let n = Notice {
            error: true,
            reason: "BuildFailed".into(),
            ..notice(Some(CommitState::Failure))
        };
        let r = build(&s, &credentials, &n).unwrap();
        assert_eq!(r.url, "https://hooks.slack.com/services/T/B/secret");
        let b = body(&r);
        assert_eq!(b["channel"], "#deploys");
        assert_eq!(b["attachments"][0]["color"], "danger");
        assert_eq!(b["text"], "GitRepository apps/web: BuildFailed");
        assert_eq!(
            build(&s, &Credentials::default(), &n),
            Err(BuildError::NoAddress)
        );
    }

    #[test]
    fn who_wants_what() {
        let pending = notice(Some(CommitState::Pending));
        let event = notice(None);
        assert!(wants(ProviderType::GitHub, &pending));
        assert!(!wants(ProviderType::GitHub, &event));
        assert!(!wants(ProviderType::Slack, &pending));
        assert!(wants(ProviderType::Slack, &event));
        let no_revision = Notice {
            revision: None,
            ..notice(Some(CommitState::Failure))
        };
        assert!(!wants(ProviderType::GitLab, &no_revision));
        assert!(wants(ProviderType::Generic, &no_revision));
    }

    #[test]
    fn preview_comments_and_status() {
        let mut n = notice(Some(CommitState::Success));
        n.preview = Some(crate::notify::PreviewNote {
            provider: "gitea".into(),
            number: 7,
            comment: Some("diff".into()),
        });
        let r = build(
            &spec(ProviderType::Gitea, "https://git.example.com/acme/app"),
            &token("t"),
            &n,
        )
        .unwrap();
        assert_eq!(body(&r)["context"], "capstan/apps/web/preview");
        let c = comments(
            &spec(ProviderType::GitHub, "https://github.com/acme/app"),
            &token("t"),
            7,
        )
        .unwrap();
        assert_eq!(
            c.create,
            "https://api.github.com/repos/acme/app/issues/7/comments"
        );
        assert_eq!(
            c.update,
            "https://api.github.com/repos/acme/app/issues/comments/"
        );
        assert_eq!(c.update_method, reqwest::Method::PATCH);
        assert_eq!(c.user, "https://api.github.com/user");
        assert!(c.headers.contains(&("Authorization", "Bearer t".into())));
        let c = comments(
            &spec(ProviderType::GitLab, "https://gitlab.com/acme/team/app"),
            &token("t"),
            3,
        )
        .unwrap();
        assert_eq!(
            c.create,
            "https://gitlab.com/api/v4/projects/acme%2Fteam%2Fapp/merge_requests/3/notes"
        );
        assert_eq!(c.update_method, reqwest::Method::PUT);
        assert_eq!(c.user, "https://gitlab.com/api/v4/user");
        assert!(c.headers.contains(&("PRIVATE-TOKEN", "t".into())));
        assert_eq!(comment_marker(&n), "<!-- capstan-preview apps/web -->");
    }
}
