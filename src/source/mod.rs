//! The source stage: everything that talks git (git2). Resolves a GitRepository's ref against the
//! remote, fetches into a cache, and presents credentials. Blocking; callers run it off the runtime.

mod auth;
mod cache;
mod http;
pub mod resolve;
pub mod verify;

use std::path::Path;
use std::time::Instant;

use git2::{AutotagOption, FetchOptions, Oid, RemoteCallbacks, Repository};

use crate::status::Reason;

pub use auth::Auth;
pub use cache::{Cache, CheckError, CheckedOut};
pub use resolve::Resolved;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid repository URL {0:?}")]
    InvalidUrl(String),
    #[error("invalid credentials in secretRef: {0}")]
    InvalidCredentials(String),
    #[error("authentication to {url} failed: {message}")]
    Authentication { url: String, message: String },
    #[error("fetching {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("git cache at {path}: {message}")]
    Cache { path: String, message: String },
}

impl SourceError {
    /// Stable PascalCase reason for conditions, events and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            SourceError::InvalidUrl(_) | SourceError::InvalidCredentials(_) => {
                Reason::InvalidSource
            }
            SourceError::Authentication { .. } => Reason::AuthenticationFailed,
            SourceError::Fetch { .. } | SourceError::Cache { .. } => Reason::FetchFailed,
        }
    }
}

/// A repository URL, parsed enough to match SSH host keys and to print without credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    raw: String,
    host: String,
    port: Option<u16>,
    redacted: String,
}

impl RemoteUrl {
    pub fn parse(raw: &str) -> Result<Self, SourceError> {
        let invalid = || SourceError::InvalidUrl(redact(raw));
        if let Some((scheme, _)) = raw.split_once("://") {
            if !matches!(scheme, "https" | "http" | "ssh") {
                return Err(invalid());
            }
            let url = url::Url::parse(raw).map_err(|_| invalid())?;
            let host = url.host_str().ok_or_else(invalid)?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let mut shown = url.clone();
            let _ = shown.set_password(None);
            // Over HTTP a token often stands in the user name; over SSH it is just `git`.
            if scheme != "ssh" {
                let _ = shown.set_username("");
            }
            Ok(RemoteUrl {
                raw: raw.to_string(),
                host,
                port: url.port(),
                redacted: shown.to_string(),
            })
        } else {
            // scp-style: [user@]host:path
            let (userhost, path) = raw.split_once(':').ok_or_else(invalid)?;
            let host = userhost.rsplit('@').next().unwrap_or(userhost);
            if host.is_empty() || path.is_empty() || path.starts_with(':') || host.starts_with('-')
            {
                return Err(invalid());
            }
            Ok(RemoteUrl {
                raw: raw.to_string(),
                host: host.to_string(),
                port: None,
                redacted: raw.to_string(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The URL with any password removed: the only form that may reach a log, event or status.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    fn error(&self, err: git2::Error) -> SourceError {
        let url = self.redacted.clone();
        if err.code() == git2::ErrorCode::Certificate && err.class() == git2::ErrorClass::Ssh {
            // libgit2 replaces the callback's words with its own; say what is wrong and what to do.
            let host = match self.port {
                Some(port) => format!("[{}]:{port}", self.host),
                None => self.host.clone(),
            };
            let message = format!(
                "{} for {host} (add it to known_hosts in the secretRef; host keys are never trusted on first use)",
                auth::HOST_KEY_REJECTED
            );
            return SourceError::Authentication { url, message };
        }
        if err.class() == git2::ErrorClass::Ssh && err.message().contains("private key") {
            let message = format!(
                "the SSH identity in the secretRef could not be read ({}): a wrong passphrase in `password`, or a key format libssh2 does not read",
                err.message()
            );
            return SourceError::Authentication { url, message };
        }
        let message = self.scrub(err.message());
        if message.starts_with("cannot redirect from") {
            let message = format!(
                "{message}: the server redirects elsewhere, and credentials for spec.url are never presented to another host, nor anything sent over http after https; set spec.url to the repository's new address"
            );
            return SourceError::Fetch { url, message };
        }
        if err.code() == git2::ErrorCode::Certificate || err.class() == git2::ErrorClass::Ssl {
            let message = format!(
                "the server's TLS certificate is not trusted ({message}); for a private CA, put its certificate in ca.crt in the secretRef"
            );
            return SourceError::Authentication { url, message };
        }
        let auth = err.code() == git2::ErrorCode::Auth
            || message.contains("status code: 401")
            || message.contains("status code: 403");
        if auth {
            SourceError::Authentication { url, message }
        } else {
            SourceError::Fetch { url, message }
        }
    }
}

/// `https://user:token@host/x` -> `https://host/x` (`ssh://` keeps its user), for URLs that
/// failed to parse too.
pub fn redact(raw: &str) -> String {
    redact_urls(raw)
}

/// `text` with the user information of every `scheme://` URL in it removed, however the URL is
/// spelled (any scheme, any case, percent-encoded or not): found by parsing, not by matching the
/// configured URL. `ssh://` keeps its user name, which is not a secret.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let scheme = head[..i]
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .next()
            .unwrap_or_default();
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || "'\"<>()`,;".contains(c))
            .unwrap_or(tail.len());
        match tail[..end].rsplit_once('@') {
            Some((userinfo, host)) => {
                if scheme.eq_ignore_ascii_case("ssh") {
                    out.push_str(userinfo.split(':').next().unwrap_or_default());
                    out.push('@');
                }
                out.push_str(host);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

impl RemoteUrl {
    /// A message from libgit2 about this URL, with every URL's user information removed and
    /// this URL's password (or HTTP user name standing for a token) masked wherever it appears.
    fn scrub(&self, message: &str) -> String {
        let mut scrubbed = redact_urls(message);
        if let Ok(url) = url::Url::parse(&self.raw) {
            // Without a password, an HTTP user name is a token.
            let secret = match url.password() {
                Some(password) => password,
                None if url.scheme() != "ssh" => url.username(),
                None => "",
            };
            for secret in [secret].iter().filter(|s| s.len() >= 3) {
                for spelling in [secret.to_string(), percent_decoded(secret)] {
                    scrubbed = scrubbed.replace(&spelling, "***");
                }
            }
        }
        scrubbed
    }
}

fn percent_decoded(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// libgit2's socket timeouts. A server that accepts a connection and never answers would
/// otherwise hold a blocking thread forever; the GitRepository's own deadline stops transfers
/// that are still moving (see `fetch`).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
pub const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sets libgit2's process-wide socket timeouts, once.
#[allow(unsafe_code)]
pub fn set_network_timeouts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: libgit2 reads these integers when it opens a socket; `Once` makes this the only
        // write, done before the controller starts any git work.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(
                CONNECT_TIMEOUT.as_millis() as i32,
            );
            let _ = git2::opts::set_server_timeout_in_milliseconds(IO_TIMEOUT.as_millis() as i32);
        }
    });
}

/// Options for every connection: `callbacks` (SSH credentials and host keys, progress). HTTP
/// remotes go through [`http`], which decides their credentials, redirects and TLS.
fn fetch_options(callbacks: RemoteCallbacks<'_>) -> FetchOptions<'_> {
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks);
    opts
}

/// The remote's refs and the commits they point at (peeled for annotated tags), without fetching.
pub fn ls_remote(remote: &RemoteUrl, auth: &Auth) -> Result<Vec<(String, Oid)>, SourceError> {
    // A download that wants no ref, into an empty in-memory repository, connects exactly as a
    // fetch does, reads the ref advertisement and transfers no objects.
    let repo = git2::Odb::new()
        .and_then(Repository::from_odb)
        .map_err(|e| remote.error(e))?;
    let mut anonymous = repo
        .remote_anonymous(remote.as_str())
        .map_err(|e| remote.error(e))?;
    let mut opts = fetch_options(auth.callbacks(&remote.host, remote.port));
    opts.download_tags(AutotagOption::None);
    http::with(auth, || {
        anonymous.download(&["refs/capstan/none:refs/capstan/none"], Some(&mut opts))
    })
    .map_err(|e| remote.error(e))?;
    let heads = anonymous.list().map_err(|e| remote.error(e))?;
    Ok(heads
        .iter()
        .map(|h| (h.name().to_string(), h.oid()))
        .collect())
}

/// Bounds on one fetch: it is cancelled at the deadline or past the byte count.
#[derive(Clone, Copy, Debug)]
pub struct FetchLimits {
    pub deadline: Instant,
    pub max_bytes: u64,
}

/// Fetches `refspecs` from the remote into the bare repository at `git_dir`, creating it when
/// missing, to `depth` commits (`i32::MAX` also deepens a shallow repository), within `limits`.
pub fn fetch(
    git_dir: &Path,
    remote: &RemoteUrl,
    refspecs: &[&str],
    depth: i32,
    auth: &Auth,
    limits: FetchLimits,
) -> Result<Repository, SourceError> {
    let cache_err = |e: git2::Error| SourceError::Cache {
        path: git_dir.display().to_string(),
        message: e.message().to_string(),
    };
    let repo = match Repository::open_bare(git_dir) {
        Ok(repo) => repo,
        Err(_) => Repository::init_bare(git_dir).map_err(cache_err)?,
    };
    {
        let mut detached = repo.remote_anonymous(remote.as_str()).map_err(cache_err)?;
        let mut callbacks = auth.callbacks(&remote.host, remote.port);
        let received = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let seen = received.clone();
        callbacks.transfer_progress(move |progress| {
            seen.set(progress.received_bytes() as u64);
            Instant::now() < limits.deadline && seen.get() <= limits.max_bytes
        });
        callbacks.sideband_progress(move |_| Instant::now() < limits.deadline);
        let mut opts = fetch_options(callbacks);
        opts.depth(depth);
        let fetched = http::with(auth, || detached.fetch(refspecs, Some(&mut opts), None));
        if received.get() > limits.max_bytes {
            return Err(SourceError::Fetch {
                url: remote.redacted().to_string(),
                message: format!(
                    "the fetch was stopped past {} bytes (the controller's --max-fetch-bytes)",
                    limits.max_bytes
                ),
            });
        }
        fetched.map_err(|e| remote.error(e))?;
    }
    Ok(repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("https://u:p@h/x"), "https://h/x");
        assert_eq!(redact("https://ghp_token@h/x"), "https://h/x");
        assert_eq!(redact("ssh://git:p@h/x"), "ssh://git@h/x");
        assert_eq!(redact("https://h/x"), "https://h/x");
        assert_eq!(redact("git@h:x"), "git@h:x");
    }

    #[test]
    fn libgit2_messages_lose_credentials_however_the_url_is_spelled() {
        let url = RemoteUrl::parse("https://bot:s3cr%2Ft@git.example.com/a.git").unwrap();
        for message in [
            "failed to resolve address for HTTPS://bot:s3cr%2Ft@git.example.com/a.git/info/refs",
            "unexpected http status for https://bot:s3cr%2ft@git.example.com:443/a.git: 401",
            "redirect to 'http://bot:s3cr/t@other.example/a.git' refused",
            "auth with token s3cr/t failed for user bot@git.example.com",
        ] {
            let scrubbed = url.scrub(message);
            for secret in ["s3cr", "%2F", "%2f"] {
                assert!(!scrubbed.contains(secret), "{scrubbed}");
            }
        }
        // Well-formed URLs lose their user information whatever it is.
        assert_eq!(
            url.scrub("for HTTPS://bot:other@git.example.com/a.git: 401"),
            "for HTTPS://git.example.com/a.git: 401"
        );
        assert_eq!(
            url.scrub("fetch from https://git.example.com/a.git failed"),
            "fetch from https://git.example.com/a.git failed"
        );
        assert_eq!(
            redact_urls("see ssh://git:pw@h:2222/x and git@h:y"),
            "see ssh://git@h:2222/x and git@h:y"
        );
        let url = RemoteUrl::parse("https://alice:hunter2@git.example.com:8443/a.git").unwrap();
        assert_eq!(url.redacted(), "https://git.example.com:8443/a.git");
        assert_eq!(
            (url.host.as_str(), url.port),
            ("git.example.com", Some(8443))
        );
        let url = RemoteUrl::parse("ssh://git@github.com/a.git").unwrap();
        assert_eq!(url.redacted(), "ssh://git@github.com/a.git");
    }

    #[test]
    fn scp_style_and_ssh_urls() {
        let url = RemoteUrl::parse("git@github.com:acme/app.git").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("github.com", None));
        let url = RemoteUrl::parse("ssh://git@127.0.0.1:2222/srv/app.git").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", Some(2222)));
        for bad in [
            "file:///etc",
            "ext::sh",
            "/srv/app.git",
            "-oProxyCommand=x:y",
        ] {
            assert!(RemoteUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
