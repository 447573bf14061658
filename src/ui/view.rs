//! What the pages show, decided from GitRepositories alone: each one's state, the list's
//! filters and order, the overview's counts and a commit's address on its forge. Pure, so the
//! decisions are unit-tested without a browser or a cluster.

use std::cmp::Ordering;

use kube::ResourceExt;
use serde::Deserialize;

use crate::api::GitRepository;
use crate::status;

/// One word for where a GitRepository stands, shown by colour and by text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Failing,
    Progressing,
    Ready,
    Suspended,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Failing,
        State::Progressing,
        State::Ready,
        State::Suspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Failing => "failing",
            State::Progressing => "progressing",
            State::Ready => "ready",
            State::Suspended => "suspended",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Failing => "Failing",
            State::Progressing => "Progressing",
            State::Ready => "Ready",
            State::Suspended => "Suspended",
        }
    }

    fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// Suspended first (nothing changes while it is); then Ready's condition for the current
/// generation: True is ready, False failing, anything else (none yet, Unknown, a status of an
/// older spec) progressing.
pub fn state(gr: &GitRepository) -> State {
    if gr.spec.suspend {
        return State::Suspended;
    }
    let st = gr.status.as_ref();
    let current = st.and_then(|s| s.observed_generation) == gr.metadata.generation;
    match status::ready(st).map(|c| c.status.as_str()) {
        _ if !current => State::Progressing,
        Some("True") => State::Ready,
        Some("False") => State::Failing,
        _ => State::Progressing,
    }
}

pub fn drifted(gr: &GitRepository) -> i64 {
    gr.status
        .as_ref()
        .and_then(|s| s.summary.as_ref())
        .map_or(0, |s| s.drifted)
}

/// Ready's message.
pub fn message(gr: &GitRepository) -> String {
    status::ready(gr.status.as_ref())
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

pub fn revision(gr: &GitRepository) -> Option<&str> {
    gr.status.as_ref()?.last_applied_revision.as_deref()
}

/// How many GitRepositories are in each state, and how many have drifted objects.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: usize,
    pub ready: usize,
    pub failing: usize,
    pub progressing: usize,
    pub suspended: usize,
    pub drifted: usize,
}

pub fn counts(items: &[GitRepository]) -> Counts {
    let mut c = Counts {
        total: items.len(),
        ..Counts::default()
    };
    for gr in items {
        match state(gr) {
            State::Ready => c.ready += 1,
            State::Failing => c.failing += 1,
            State::Progressing => c.progressing += 1,
            State::Suspended => c.suspended += 1,
        }
        if drifted(gr) > 0 {
            c.drifted += 1;
        }
    }
    c
}

/// What needs attention first: failing ones, then drifted ones, then those progressing for
/// their current generation; each group by namespace and name. At most `limit`.
pub fn attention(items: &[GitRepository], limit: usize) -> Vec<&GitRepository> {
    let rank = |gr: &GitRepository| match state(gr) {
        State::Failing => Some(0),
        _ if drifted(gr) > 0 => Some(1),
        State::Progressing => Some(2),
        _ => None,
    };
    let mut needing: Vec<(u8, &GitRepository)> = items
        .iter()
        .filter_map(|gr| Some((rank(gr)?, gr)))
        .collect();
    needing.sort_by(|(a, x), (b, y)| a.cmp(b).then_with(|| key(x).cmp(&key(y))));
    needing.into_iter().take(limit).map(|(_, gr)| gr).collect()
}

fn key(gr: &GitRepository) -> (String, String) {
    (gr.namespace().unwrap_or_default(), gr.name_any())
}

/// The list's query: `?namespace=&state=&q=&sort=&desc=`.
#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
pub struct Query {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub sort: String,
    #[serde(default)]
    pub desc: bool,
}

/// The columns the list sorts by.
pub const SORTS: [&str; 6] = ["namespace", "name", "state", "revision", "drift", "age"];

impl Query {
    fn keeps(&self, gr: &GitRepository) -> bool {
        if !self.namespace.is_empty() && gr.namespace().as_deref() != Some(&self.namespace) {
            return false;
        }
        if let Some(wanted) = State::parse(&self.state) {
            if state(gr) != wanted {
                return false;
            }
        } else if self.state == "drifted" && drifted(gr) == 0 {
            return false;
        }
        let text = self.q.trim().to_lowercase();
        text.is_empty()
            || [
                gr.name_any(),
                gr.namespace().unwrap_or_default(),
                crate::source::redact(&gr.spec.url),
                message(gr),
                revision(gr).unwrap_or_default().to_string(),
            ]
            .iter()
            .any(|field| field.to_lowercase().contains(&text))
    }

    fn compare(&self, a: &GitRepository, b: &GitRepository) -> Ordering {
        let by = match self.sort.as_str() {
            "name" => a.name_any().cmp(&b.name_any()),
            "state" => state(a).cmp(&state(b)),
            "revision" => revision(a).cmp(&revision(b)),
            "drift" => drifted(a).cmp(&drifted(b)),
            // Oldest first, as `age` grows.
            "age" => b.creation_timestamp().cmp(&a.creation_timestamp()),
            _ => Ordering::Equal,
        };
        let by = by.then_with(|| key(a).cmp(&key(b)));
        if self.desc { by.reverse() } else { by }
    }

    /// The GitRepositories this query keeps, in its order.
    pub fn apply<'a>(&self, items: &'a [GitRepository]) -> Vec<&'a GitRepository> {
        let mut kept: Vec<&GitRepository> = items.iter().filter(|gr| self.keeps(gr)).collect();
        kept.sort_by(|a, b| self.compare(a, b));
        kept
    }
}

/// The page of a commit on a forge Capstan knows the addresses of (GitHub, GitLab, Codeberg,
/// Bitbucket), from a clone URL over https or ssh.
pub fn commit_link(url: &str, revision: &str) -> Option<String> {
    let sha = revision.rsplit_once("sha1:")?.1;
    if sha.is_empty() || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (host, path) = if let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("ssh://"))
    {
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        rest.split_once('/')?
    } else {
        // scp-like: git@github.com:owner/repo.git
        let (user_host, path) = url.split_once(':')?;
        (user_host.rsplit_once('@')?.1, path)
    };
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    let page = match host {
        "github.com" | "codeberg.org" => "commit",
        "gitlab.com" => "-/commit",
        "bitbucket.org" => "commits",
        _ => return None,
    };
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            && !s.contains("..")
    };
    safe(path).then(|| format!("https://{host}/{path}/{page}/{sha}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Summary;
    use serde_json::json;

    fn gr(
        ns: &str,
        name: &str,
        ready: Option<&str>,
        generation: i64,
        observed: i64,
    ) -> GitRepository {
        let conditions: Vec<_> = ready
            .map(|status| {
                json!({"type": "Ready", "status": status, "reason": "R",
                       "message": format!("{name} message"), "observedGeneration": observed,
                       "lastTransitionTime": "2026-12-07T00:00:00Z"})
            })
            .into_iter()
            .collect();
        crate::git_repository(json!({
            "metadata": {"name": name, "namespace": ns, "generation": generation},
            "spec": {"url": format!("https://git.example/{name}.git"), "interval": "1m"},
            "status": {"observedGeneration": observed, "conditions": conditions},
        }))
    }

    fn drift(mut gr: GitRepository, n: i64) -> GitRepository {
        gr.status.as_mut().unwrap().summary = Some(Summary {
            drifted: n,
            ..Default::default()
        });
        gr
    }

    #[test]
    fn states_follow_ready_for_the_current_generation() {
        assert_eq!(state(&gr("a", "x", Some("True"), 1, 1)), State::Ready);
        assert_eq!(state(&gr("a", "x", Some("False"), 1, 1)), State::Failing);
        assert_eq!(
            state(&gr("a", "x", Some("Unknown"), 1, 1)),
            State::Progressing
        );
        assert_eq!(state(&gr("a", "x", None, 1, 1)), State::Progressing);
        // Ready of an older spec says nothing of this one.
        assert_eq!(state(&gr("a", "x", Some("True"), 2, 1)), State::Progressing);
        let mut suspended = gr("a", "x", Some("False"), 1, 1);
        suspended.spec.suspend = true;
        assert_eq!(state(&suspended), State::Suspended);
    }

    #[test]
    fn counts_and_attention() {
        let items = vec![
            gr("a", "ok", Some("True"), 1, 1),
            drift(gr("a", "drifted", Some("True"), 1, 1), 2),
            gr("b", "broken", Some("False"), 1, 1),
            gr("a", "new", None, 1, 1),
        ];
        let c = counts(&items);
        assert_eq!(
            c,
            Counts {
                total: 4,
                ready: 2,
                failing: 1,
                progressing: 1,
                suspended: 0,
                drifted: 1
            }
        );
        let names: Vec<String> = attention(&items, 10).iter().map(|g| g.name_any()).collect();
        assert_eq!(names, ["broken", "drifted", "new"]);
        assert_eq!(attention(&items, 1).len(), 1);
    }

    #[test]
    fn queries_filter_and_sort() {
        let items = vec![
            gr("b", "web", Some("True"), 1, 1),
            gr("a", "api", Some("False"), 1, 1),
            drift(gr("a", "db", Some("True"), 1, 1), 3),
        ];
        let names =
            |q: Query| -> Vec<String> { q.apply(&items).iter().map(|g| g.name_any()).collect() };
        assert_eq!(names(Query::default()), ["api", "db", "web"]);
        let q =
            |s: &str| serde_json::from_value::<Query>(serde_json::from_str(s).unwrap()).unwrap();
        assert_eq!(names(q(r#"{"namespace":"b"}"#)), ["web"]);
        assert_eq!(names(q(r#"{"state":"failing"}"#)), ["api"]);
        assert_eq!(names(q(r#"{"state":"drifted"}"#)), ["db"]);
        assert_eq!(names(q(r#"{"q":"WEB MESS"}"#)), ["web"]);
        assert_eq!(
            names(q(r#"{"sort":"name","desc":true}"#)),
            ["web", "db", "api"]
        );
        assert_eq!(
            names(q(r#"{"sort":"drift","desc":true}"#)),
            ["db", "web", "api"]
        );
        assert_eq!(names(q(r#"{"sort":"state"}"#)), ["api", "db", "web"]);
    }

    #[test]
    fn commit_links_on_known_forges_only() {
        let rev = "main@sha1:4f2c9e1d0a7b5c3e9f1d2a4b6c8e0f1a2b3c4d5e";
        let sha = "4f2c9e1d0a7b5c3e9f1d2a4b6c8e0f1a2b3c4d5e";
        assert_eq!(
            commit_link("https://github.com/acme/app.git", rev).unwrap(),
            format!("https://github.com/acme/app/commit/{sha}")
        );
        assert_eq!(
            commit_link("git@gitlab.com:acme/group/app.git", rev).unwrap(),
            format!("https://gitlab.com/acme/group/app/-/commit/{sha}")
        );
        assert_eq!(
            commit_link("ssh://git@bitbucket.org/acme/app", rev).unwrap(),
            format!("https://bitbucket.org/acme/app/commits/{sha}")
        );
        assert_eq!(
            commit_link("https://user:pw@codeberg.org/acme/app", rev).unwrap(),
            format!("https://codeberg.org/acme/app/commit/{sha}")
        );
        assert_eq!(commit_link("https://git.internal/acme/app", rev), None);
        assert_eq!(
            commit_link("https://github.com/acme/app", "main@sha1:zz"),
            None
        );
        assert_eq!(commit_link("https://github.com/a/b\"><x", rev), None);
    }
}
