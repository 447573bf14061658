//! git's smart HTTP protocol, for fetching, registered with git2 for `http://` and `https://`
//! and spoken over reqwest. libgit2's own HTTP client writes a request's headers and body in two
//! sends on a socket without TCP_NODELAY, so every upload-pack POST waited for a delayed ACK;
//! reqwest sends with TCP_NODELAY. It is also the one place where an HTTP remote's credentials,
//! redirects, proxies (the usual `HTTPS_PROXY`, `NO_PROXY` variables) and TLS roots are decided.
//!
//! git2 asks for a transport by URL scheme alone, so what a fetch may present travels beside it:
//! [`with`] sets the GitRepository's credentials for the calling thread, on which libgit2 builds
//! the transport. Requests run on a small runtime of their own and the blocking side waits on
//! channels, so this works from any thread, inside an async runtime or not.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, LazyLock, Mutex, Once};

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use git2::{ErrorClass, ErrorCode};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};

use super::auth::Auth;
use super::{CONNECT_TIMEOUT, IO_TIMEOUT};

const ADVERTISEMENT: &str = "application/x-git-upload-pack-advertisement";
const REFS: &str = "/info/refs?service=git-upload-pack";
/// Redirects followed for one ref advertisement, at most (where any may be).
const MAX_REDIRECTS: usize = 10;

thread_local! {
    static AUTH: RefCell<Option<Auth>> = const { RefCell::new(None) };
}

/// Runs `f`, a git2 call, with `auth` as what its HTTP requests may present. Also makes sure the
/// transport is registered, before any git2 network call of this process.
pub(super) fn with<T>(auth: &Auth, f: impl FnOnce() -> T) -> T {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        for scheme in ["http", "https"] {
            // SAFETY: every network call of git2 in this process goes through `with`, and
            // `Once` holds them all until the registration is done.
            #[allow(unsafe_code)]
            unsafe {
                git2::transport::register(scheme, |remote| {
                    let auth = AUTH.with(|a| a.borrow().clone()).unwrap_or_default();
                    Transport::smart(remote, true, Http::new(auth))
                })
                .expect("registering the HTTP transport");
            }
        }
    });
    AUTH.with(|a| *a.borrow_mut() = Some(auth.clone()));
    let result = f();
    AUTH.with(|a| *a.borrow_mut() = None);
    result
}

/// The runtime requests run on: the blocking callers may be inside another runtime, or none.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("git-http")
        .enable_all()
        .build()
        .expect("the git HTTP runtime")
});

/// One client (and connection pool) per set of trusted roots: the system's, or a `ca.crt`.
fn client(auth: &Auth) -> Result<reqwest::Client, git2::Error> {
    static CLIENTS: LazyLock<Mutex<HashMap<Option<Vec<u8>>, reqwest::Client>>> =
        LazyLock::new(Default::default);
    let key = auth
        .ca
        .as_ref()
        .map(|certs| certs.iter().flat_map(|c| c.as_ref().to_vec()).collect());
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(client) = clients.get(&key) {
        return Ok(client.clone());
    }
    let _runtime = RUNTIME.enter();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("git/2.0 (capstan/", env!("CARGO_PKG_VERSION"), ")"))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(IO_TIMEOUT)
        .tcp_nodelay(true);
    if let Some(ca) = &auth.ca {
        // With `ca.crt`, the server's certificate must chain to it, whatever the system trusts.
        builder = builder.tls_built_in_root_certs(false);
        for cert in ca {
            let cert = reqwest::Certificate::from_der(cert.as_ref())
                .map_err(|e| error(ErrorCode::Certificate, ErrorClass::Ssl, e.to_string()))?;
            builder = builder.add_root_certificate(cert);
        }
    }
    let client = builder
        .build()
        .map_err(|e| error(ErrorCode::GenericError, ErrorClass::Http, e.to_string()))?;
    // Few GitRepositories bring a CA of their own; forget them all rather than grow.
    if clients.len() >= 64 {
        clients.clear();
    }
    clients.insert(key, client.clone());
    Ok(client)
}

fn error(code: ErrorCode, class: ErrorClass, message: impl AsRef<str>) -> git2::Error {
    git2::Error::new(code, class, message.as_ref())
}

/// A request's failure to reach an answer, with its causes (refused, reset, a TLS error) and
/// without the URL, which the caller names once.
fn transport_error(e: &reqwest::Error) -> git2::Error {
    let mut message = String::from(if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    });
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        message.push_str(&format!(": {c}"));
        cause = c.source();
    }
    let (code, class) = if message.contains("certificate") {
        (ErrorCode::Certificate, ErrorClass::Ssl)
    } else {
        (ErrorCode::GenericError, ErrorClass::Net)
    };
    error(code, class, message)
}

/// An answer's body, read as it arrives.
struct Body {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match futures::executor::block_on(self.chunks.next()) {
                Some(chunk) => (self.chunk, self.at) = (chunk?, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Sends `request` and waits for the answer's status and headers; its body follows in [`Body`].
fn send(
    request: reqwest::RequestBuilder,
) -> Result<(StatusCode, reqwest::header::HeaderMap, Body), git2::Error> {
    let (head_tx, head_rx) = oneshot::channel();
    let (mut tx, chunks) = mpsc::channel(4);
    RUNTIME.spawn(async move {
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let _ = head_tx.send(Err(transport_error(&e)));
                return;
            }
        };
        let head = (response.status(), response.headers().clone());
        if head_tx.send(Ok(head)).is_err() {
            return;
        }
        loop {
            let chunk = match response.chunk().await {
                Ok(Some(chunk)) => Ok(chunk.to_vec()),
                Ok(None) => return,
                Err(e) => Err(io::Error::other(transport_error(&e).message().to_string())),
            };
            let failed = chunk.is_err();
            // Gone when git2 stopped reading (done, or stopped by a limit): the answer is dropped.
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    let (status, headers) = futures::executor::block_on(head_rx).map_err(|_| {
        error(
            ErrorCode::GenericError,
            ErrorClass::Net,
            "request cancelled",
        )
    })??;
    let body = Body {
        chunks,
        chunk: Vec::new(),
        at: 0,
    };
    Ok((status, headers, body))
}

/// One remote's transport: what it may present, and where a redirect moved it.
struct Http {
    auth: Auth,
    /// The repository's URL after the ref advertisement's redirects, for the upload-pack POSTs.
    moved: Arc<Mutex<Option<String>>>,
}

impl Http {
    fn new(auth: Auth) -> Self {
        Http {
            auth,
            moved: Default::default(),
        }
    }
}

/// A repository URL to send to: without userinfo, with the credentials that go with it.
struct Target {
    client: reqwest::Client,
    base: String,
    basic: Option<(String, String)>,
    bearer: Option<String>,
}

impl Target {
    fn parse(raw: &str, auth: &Auth) -> Result<Self, git2::Error> {
        let invalid =
            |e: url::ParseError| error(ErrorCode::Invalid, ErrorClass::Http, e.to_string());
        let mut url = url::Url::parse(raw).map_err(invalid)?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        // A user name or password in the URL comes before the Secret's, as for git.
        let userinfo = (!url.username().is_empty() || url.password().is_some()).then(|| {
            (
                decode(url.username()),
                decode(url.password().unwrap_or_default()),
            )
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(Target {
            client: client(auth)?,
            base: url.as_str().trim_end_matches('/').to_string(),
            basic: userinfo.or_else(|| auth.basic.clone()),
            bearer: auth.bearer_token.clone(),
        })
    }

    fn presents_credentials(&self) -> bool {
        self.basic.is_some() || self.bearer.is_some()
    }

    fn request(&self, method: Method, url: &str) -> reqwest::RequestBuilder {
        let mut request = self.client.request(method, url);
        if let Some(token) = &self.bearer {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        } else if let Some((user, password)) = &self.basic {
            request = request.basic_auth(user, Some(password));
        }
        request
    }

    /// What an answer other than a success means.
    fn refused(&self, status: StatusCode) -> Result<(), git2::Error> {
        if status.is_success() {
            return Ok(());
        }
        let code = status.as_u16();
        if code == 401 || code == 403 {
            let message = if self.presents_credentials() {
                format!("the server rejected the credentials (status code: {code})")
            } else {
                format!(
                    "the server asks for credentials and the GitRepository has none that fit (status code: {code})"
                )
            };
            return Err(error(ErrorCode::Auth, ErrorClass::Http, message));
        }
        Err(error(
            ErrorCode::GenericError,
            ErrorClass::Http,
            format!("unexpected HTTP status code: {code}"),
        ))
    }

    /// GETs the ref advertisement, following redirects only without credentials (they are meant
    /// for `spec.url`'s host alone) and never from https to http. Returns the repository's URL
    /// after the redirects, and the advertisement.
    fn advertisement(&self) -> Result<(String, Body), git2::Error> {
        let mut url = format!("{}{REFS}", self.base);
        for _ in 0..=MAX_REDIRECTS {
            let (status, headers, body) = send(self.request(Method::GET, &url))?;
            if status.is_redirection() {
                let location = headers
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .unwrap_or_default();
                let next = url::Url::parse(&url)
                    .and_then(|u| u.join(location))
                    .map(String::from)
                    .unwrap_or_else(|_| location.to_string());
                let cannot = |why: &str| {
                    let message = format!("cannot redirect from {url} to {next}{why}");
                    error(ErrorCode::GenericError, ErrorClass::Http, message)
                };
                if self.presents_credentials() {
                    return Err(cannot(""));
                }
                if url.starts_with("https:") && !next.starts_with("https:") {
                    return Err(cannot(": not over https"));
                }
                url = next;
                continue;
            }
            self.refused(status)?;
            let kind = headers
                .get(CONTENT_TYPE)
                .and_then(|t| t.to_str().ok())
                .unwrap_or_default();
            if kind != ADVERTISEMENT {
                return Err(error(
                    ErrorCode::GenericError,
                    ErrorClass::Http,
                    format!(
                        "the server does not speak git's smart HTTP protocol (content type {kind:?})"
                    ),
                ));
            }
            let base = url.strip_suffix(REFS).ok_or_else(|| {
                let message = format!("cannot redirect to {url}: not a git repository's address");
                error(ErrorCode::GenericError, ErrorClass::Http, message)
            })?;
            return Ok((base.to_string(), body));
        }
        Err(error(
            ErrorCode::GenericError,
            ErrorClass::Http,
            format!("more than {MAX_REDIRECTS} redirects"),
        ))
    }
}

impl SmartSubtransport for Http {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let target = Target::parse(url, &self.auth)?;
        match action {
            Service::UploadPackLs => {
                let (base, body) = target.advertisement()?;
                *self.moved.lock().unwrap_or_else(|e| e.into_inner()) = Some(base);
                Ok(Box::new(Stream::Answer(body)))
            }
            Service::UploadPack => {
                let moved = self.moved.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let url = format!("{}/git-upload-pack", moved.unwrap_or(target.base.clone()));
                Ok(Box::new(Stream::Request {
                    target,
                    url,
                    body: Vec::new(),
                }))
            }
            Service::ReceivePackLs | Service::ReceivePack => Err(error(
                ErrorCode::GenericError,
                ErrorClass::Http,
                "pushing is not supported",
            )),
        }
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// An upload-pack exchange: the request written, then sent at the first read; or an answer.
enum Stream {
    Request {
        target: Target,
        url: String,
        body: Vec<u8>,
    },
    Answer(Body),
    Done,
}

impl Write for Stream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Request { body, .. } => {
                body.extend_from_slice(data);
                Ok(data.len())
            }
            _ => Err(io::Error::other("the request was already sent")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Stream::Request { .. } = self {
            let Stream::Request { target, url, body } = std::mem::replace(self, Stream::Done)
            else {
                unreachable!()
            };
            let request = target
                .request(Method::POST, &url)
                .header(CONTENT_TYPE, "application/x-git-upload-pack-request")
                .header(ACCEPT, "application/x-git-upload-pack-result")
                .body(body);
            // git2 keeps only the words of a failed read.
            let words = |e: git2::Error| io::Error::other(e.message().to_string());
            let (status, _, answer) = send(request).map_err(words)?;
            target.refused(status).map_err(words)?;
            *self = Stream::Answer(answer);
        }
        match self {
            Stream::Answer(body) => body.read(buf),
            _ => Ok(0),
        }
    }
}
