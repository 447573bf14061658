//! An HTTP endpoint on loopback that records every request it receives and answers as the test
//! says: the peer that notification tests send to, in place of a chat or a git host.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// The path, with the query when there is one.
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// How the endpoint answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Status(u16),
    /// A status and a JSON body.
    Json(u16, String),
    /// Holds the request unanswered.
    Hang,
}

#[derive(Default)]
struct Inner {
    received: Vec<Recorded>,
    /// Answers for the next requests, first first; then `otherwise`.
    next: Vec<Answer>,
    otherwise: Option<Answer>,
}

pub struct Endpoint {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    /// Listening on a free loopback port, answering 200 to everything.
    pub async fn start() -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let state = inner.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { answer(&state, method, uri, headers, body).await }
            },
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Endpoint { addr, inner, task }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests get `answers`, one each; those after them `otherwise` (200 when None).
    pub fn answer(&self, answers: &[Answer], otherwise: Option<Answer>) {
        let mut inner = self.inner.lock().unwrap();
        inner.next = answers.to_vec();
        inner.otherwise = otherwise;
    }

    pub fn received(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().received.clone()
    }

    /// Waits (60 s at most) until a request satisfies `test`; returns it.
    pub async fn wait_for(&self, what: &str, test: impl Fn(&Recorded) -> bool) -> Recorded {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(r) = self.received().into_iter().find(&test) {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no request {what} in 60 s; received: {:#?}",
                self.received()
                    .iter()
                    .map(|r| format!(
                        "{} {} {}",
                        r.method,
                        r.path,
                        String::from_utf8_lossy(&r.body)
                    ))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn answer(
    state: &Mutex<Inner>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let answer = {
        let mut inner = state.lock().unwrap();
        inner.received.push(Recorded {
            method: method.to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |p| p.to_string()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body: body.to_vec(),
        });
        if inner.next.is_empty() {
            inner.otherwise.clone().unwrap_or(Answer::Status(200))
        } else {
            inner.next.remove(0)
        }
    };
    let (code, body) = match answer {
        Answer::Status(code) => (code, String::new()),
        Answer::Json(code, body) => (code, body),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            (200, String::new())
        }
    };
    let json = [("content-type", "application/json")];
    (StatusCode::from_u16(code).unwrap(), json, body)
}
