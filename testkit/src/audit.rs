//! Reads the API server's audit log (every request, at Metadata level) to count what was sent.

use serde_json::Value;

use super::env::control_plane;

/// A position in the audit log: requests logged after it are "since the mark".
pub fn mark() -> usize {
    std::fs::read_to_string(&control_plane().audit_log)
        .unwrap_or_default()
        .lines()
        .count()
}

/// Mutating requests (create, update, patch, delete) on objects in `namespace` since `mark`,
/// as "verb resource/name (user; user agent)".
pub fn mutating_since(mark: usize, namespace: &str) -> Vec<String> {
    since(
        mark,
        namespace,
        &["create", "update", "patch", "delete", "deletecollection"],
    )
}

/// Reads (get, list) in `namespace` since `mark`; watches are not counted.
pub fn reads_since(mark: usize, namespace: &str) -> Vec<String> {
    since(mark, namespace, &["get", "list"])
}

/// The audit events completed since line `mark` of the log.
fn completed(mark: usize) -> Vec<Value> {
    std::fs::read_to_string(&control_plane().audit_log)
        .unwrap_or_default()
        .lines()
        .skip(mark)
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .collect()
}

fn since(mark: usize, namespace: &str, verbs: &[&str]) -> Vec<String> {
    completed(mark)
        .into_iter()
        .filter(|e| e["verb"].as_str().is_some_and(|v| verbs.contains(&v)))
        .filter(|e| e["objectRef"]["namespace"] == namespace)
        .map(|e| {
            format!(
                "{} {}/{}{} ({}; {})",
                e["verb"].as_str().unwrap_or(""),
                e["objectRef"]["resource"].as_str().unwrap_or(""),
                e["objectRef"]["name"].as_str().unwrap_or(""),
                e["objectRef"]["subresource"]
                    .as_str()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default(),
                e["user"]["username"].as_str().unwrap_or(""),
                e["userAgent"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Requests for exactly `uri` (a discovery document, say) since `mark`.
pub fn requests_for(mark: usize, uri: &str) -> usize {
    std::fs::read_to_string(&control_plane().audit_log)
        .unwrap_or_default()
        .lines()
        .skip(mark)
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete" && e["requestURI"] == uri)
        .count()
}

/// A completed request, as the audit log records it.
#[derive(Debug)]
pub struct Request {
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// The path and query, label selectors included.
    pub uri: String,
    pub user: String,
    pub code: u16,
    pub received: k8s_openapi::jiff::Timestamp,
    pub completed: k8s_openapi::jiff::Timestamp,
}

/// Every request completed since `mark`, in the order the API server logged them.
pub fn completed_since(mark: usize) -> Vec<Request> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let time = |v: &Value| v.as_str().and_then(|t| t.parse().ok());
    completed(mark)
        .into_iter()
        .filter_map(|e| {
            Some(Request {
                verb: text(&e["verb"]),
                resource: text(&e["objectRef"]["resource"]),
                namespace: text(&e["objectRef"]["namespace"]),
                name: text(&e["objectRef"]["name"]),
                uri: text(&e["requestURI"]),
                user: text(&e["user"]["username"]),
                code: e["responseStatus"]["code"].as_u64()? as u16,
                received: time(&e["requestReceivedTimestamp"])?,
                completed: time(&e["stageTimestamp"])?,
            })
        })
        .collect()
}
