//! The persistent git cache: one bare repository per URL, shared by every GitRepository that
//! points at it, behind a per-URL lock so one poll fetches once. git2 is blocking, so every call
//! runs on the blocking pool, bounded by a semaphore and by the GitRepository's timeout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use git2::Repository;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::resolve::{self, ResolveError, Resolved};
use super::verify::Signatures;
use super::{Auth, FetchLimits, RemoteUrl, SourceError, fetch, ls_remote};
use crate::api::GitRef;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("git operation on {url} did not finish within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

impl CheckError {
    pub fn reason(&self) -> crate::status::Reason {
        match self {
            CheckError::Source(e) => e.reason(),
            CheckError::Resolve(e) => e.reason(),
            CheckError::Timeout { .. } => crate::status::Reason::FetchFailed,
        }
    }
}

/// A ref advertisement, and when it was asked for.
struct Advert {
    /// When the check began: the advertisement shows every push before then.
    at: Instant,
    refs: Arc<Vec<(String, git2::Oid)>>,
}

/// The last advertisement of one URL and credentials, locked while a check runs.
type AdvertSlot = tokio::sync::Mutex<Option<Advert>>;

/// How long an advertisement no one asks for is kept: longer than any sensible interval.
const ADVERT_KEPT: Duration = Duration::from_secs(2 * 3600);

/// What the per-URL maps are keyed by: a digest, so no URL (with its credentials) stays in
/// memory for longer than its work.
fn key_of(url: &RemoteUrl) -> String {
    crate::digest::stable_hex(url.as_str().as_bytes())
}

pub struct Cache {
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per URL and credentials: the refs the remote advertised last, behind a lock that one ref
    /// check at a time holds, so that the GitRepositories of one URL share one check.
    adverts: Mutex<HashMap<(String, u64), Arc<AdvertSlot>>>,
    permits: Semaphore,
    /// URLs with git work still running past its deadline, and how many such calls.
    stuck: Arc<Mutex<HashMap<String, usize>>>,
    max_fetch_bytes: u64,
}

impl Cache {
    pub fn new(root: PathBuf, concurrency: usize, max_fetch_bytes: u64) -> Self {
        Cache {
            root,
            locks: Mutex::new(HashMap::new()),
            adverts: Mutex::default(),
            permits: Semaphore::new(concurrency.max(1)),
            stuck: Arc::default(),
            max_fetch_bytes,
        }
    }

    fn repo_dir(&self, url: &RemoteUrl) -> PathBuf {
        // Kept across restarts on the cache volume: a stable name finds it again.
        self.root.join(format!("{}.git", key_of(url)))
    }

    /// Runs blocking git work off the runtime, within `timeout`. libgit2 cannot be interrupted
    /// while it waits on a silent server, so work that outlives its deadline is left to finish
    /// (libgit2's socket timeout ends it) without its permit, and marks its URL as stuck: until
    /// it ends, new work on that URL fails at once rather than pile up threads. Other remotes
    /// keep every permit.
    async fn blocking<T: Send + 'static, G: Send + 'static>(
        &self,
        url: &RemoteUrl,
        timeout: Duration,
        hold: G,
        work: impl FnOnce(Instant) -> Result<T, CheckError> + Send + 'static,
    ) -> Result<T, CheckError> {
        let key = key_of(url);
        self.check_stuck(url)?;
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("semaphore never closes");
        self.check_stuck(url)?;
        let deadline = Instant::now() + timeout;
        // (returned, timed out), both only changed under the `stuck` lock.
        let state = Arc::new(Mutex::new((false, false)));
        let (stuck, shared, stuck_key) = (self.stuck.clone(), state.clone(), key.clone());
        let task = tokio::task::spawn_blocking(move || {
            let _held = hold;
            let result = work(deadline);
            let mut stuck = stuck.lock();
            let mut state = shared.lock();
            state.0 = true;
            if state.1 {
                // It ran past its deadline and was marked: unmark now that it returned.
                if let Some(n) = stuck.get_mut(&stuck_key) {
                    *n -= 1;
                    if *n == 0 {
                        stuck.remove(&stuck_key);
                    }
                }
            }
            result
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(CheckError::Source(SourceError::Fetch {
                url: url.redacted().to_string(),
                message: format!("git work failed: {join}"),
            })),
            Err(_) => {
                let mut stuck = self.stuck.lock();
                let mut state = state.lock();
                if !state.0 {
                    state.1 = true;
                    *stuck.entry(key).or_default() += 1;
                }
                Err(CheckError::Timeout {
                    url: url.redacted().to_string(),
                    timeout,
                })
            }
        }
    }

    fn check_stuck(&self, url: &RemoteUrl) -> Result<(), CheckError> {
        if self.stuck.lock().contains_key(&key_of(url)) {
            return Err(CheckError::Source(SourceError::Fetch {
                url: url.redacted().to_string(),
                message: "an earlier git operation on this remote has not returned yet (the server does not answer)".into(),
            }));
        }
        Ok(())
    }

    /// Which commit `git_ref` names: from an advertisement of the same URL and credentials
    /// asked for less than `reuse` ago, or else from a new one (no fetch). One check per URL and
    /// credentials runs at a time; those waiting for it use its answer.
    pub async fn resolve(
        &self,
        url: &RemoteUrl,
        auth: &Auth,
        git_ref: &GitRef,
        timeout: Duration,
        reuse: Option<Duration>,
    ) -> Result<Resolved, CheckError> {
        let slot = {
            let mut adverts = self.adverts.lock();
            adverts.retain(|_, slot| {
                Arc::strong_count(slot) > 1
                    || slot.try_lock().map_or(true, |a| {
                        a.as_ref().is_some_and(|a| a.at.elapsed() < ADVERT_KEPT)
                    })
            });
            adverts
                .entry((key_of(url), auth.digest()))
                .or_default()
                .clone()
        };
        let asked = Instant::now();
        let mut advert = tokio::time::timeout(timeout, slot.lock())
            .await
            .map_err(|_| CheckError::Timeout {
                url: url.redacted().to_string(),
                timeout,
            })?;
        let fresh = advert.as_ref().filter(|a| {
            // A check begun while this call waited is as new as one it would begin.
            a.at >= asked || reuse.is_some_and(|max| a.at.elapsed() < max)
        });
        let refs = match fresh {
            Some(a) => a.refs.clone(),
            None => {
                let (url2, auth) = (url.clone(), auth.clone());
                let began = Instant::now();
                let refs = self
                    .blocking(url, timeout, (), move |_deadline| {
                        Ok(ls_remote(&url2, &auth)?)
                    })
                    .await;
                let refs = Arc::new(refs.inspect_err(|_| *advert = None)?);
                *advert = Some(Advert {
                    at: began,
                    refs: refs.clone(),
                });
                refs
            }
        };
        Ok(resolve::resolve(git_ref, &refs)?)
    }

    /// Makes sure `resolved.oid` (and the annotated tag naming it) is in the cache, fetching only
    /// when it is not, and writes its tree into `dest`.
    pub async fn checkout(
        &self,
        url: &RemoteUrl,
        auth: &Auth,
        resolved: &Resolved,
        dest: &Path,
        timeout: Duration,
    ) -> Result<CheckedOut, CheckError> {
        let dest = dest.to_path_buf();
        self.with_commit(url, auth, resolved, timeout, move |repo, resolved| {
            let committed_at = write_tree(repo, resolved, &dest)?;
            let signatures = Signatures::read(repo, resolved)?;
            Ok(CheckedOut {
                committed_at,
                signatures,
            })
        })
        .await
    }

    /// Whether the trees (or files) at `paths` are the same in `resolved`'s commit as in
    /// `since`'s, fetching the commit when the cache lacks it; nothing is checked out. A path
    /// missing from either commit, or a commit not in the cache, is a change.
    pub async fn unchanged(
        &self,
        url: &RemoteUrl,
        auth: &Auth,
        resolved: &Resolved,
        since: git2::Oid,
        paths: Vec<String>,
        timeout: Duration,
    ) -> Result<bool, CheckError> {
        self.with_commit(url, auth, resolved, timeout, move |repo, resolved| {
            let at = |commit: git2::Oid, path: &str| {
                let tree = repo.find_commit(commit).ok()?.tree().ok()?;
                match path {
                    "" => Some(tree.id()),
                    path => tree.get_path(Path::new(path)).ok().map(|e| e.id()),
                }
            };
            Ok(paths.iter().all(|path| {
                let before = at(since, path);
                before.is_some() && before == at(resolved.oid, path)
            }))
        })
        .await
    }

    /// Runs `work` on the cache's repository of `url` once it holds `resolved`'s commit (and
    /// the annotated tag naming it), fetching only when it does not; behind the URL's lock.
    async fn with_commit<T: Send + 'static>(
        &self,
        url: &RemoteUrl,
        auth: &Auth,
        resolved: &Resolved,
        timeout: Duration,
        work: impl FnOnce(&Repository, &Resolved) -> Result<T, git2::Error> + Send + 'static,
    ) -> Result<T, CheckError> {
        let lock = {
            let mut locks = self.locks.lock();
            // Locks no fetch holds or waits for go: the map is only as large as the work in
            // flight.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks.entry(key_of(url)).or_default().clone()
        };
        // A stuck remote fails at once, rather than queueing behind its own stuck call.
        self.check_stuck(url)?;
        let guard = tokio::time::timeout(timeout, lock.lock_owned())
            .await
            .map_err(|_| CheckError::Timeout {
                url: url.redacted().to_string(),
                timeout,
            })?;
        let max_bytes = self.max_fetch_bytes;
        let (url2, auth, resolved, git_dir) = (
            url.clone(),
            auth.clone(),
            resolved.clone(),
            self.repo_dir(url),
        );
        // The URL's lock moves into the work: a fetch that outlives its deadline still keeps
        // the next one out of the same repository.
        self.blocking(url, timeout, guard, move |deadline| {
            let repo = match Repository::open_bare(&git_dir) {
                Ok(repo) if has_objects(&repo, &resolved) => repo,
                _ => {
                    let refspecs: Vec<&str> =
                        resolved.refspecs.iter().map(String::as_str).collect();
                    // A pinned commit may lie beyond a shallow cache's boundary: unshallow.
                    let depth = if resolved.shallow { 1 } else { i32::MAX };
                    let limits = FetchLimits {
                        deadline,
                        max_bytes,
                    };
                    fetch(&git_dir, &url2, &refspecs, depth, &auth, limits)?
                }
            };
            work(&repo, &resolved).map_err(|e| {
                CheckError::from(SourceError::Cache {
                    path: git_dir.display().to_string(),
                    message: e.message().to_string(),
                })
            })
        })
        .await
    }
}

/// A commit written out, with what its signatures are checked against.
pub struct CheckedOut {
    /// The commit's committer time, in seconds since the epoch.
    pub committed_at: i64,
    pub signatures: Signatures,
}

/// Whether the cache holds the commit and, when the ref names an annotated tag, the tag.
fn has_objects(repo: &Repository, resolved: &Resolved) -> bool {
    repo.find_commit(resolved.oid).is_ok()
        && resolved
            .tag
            .as_ref()
            .is_none_or(|(_, tag)| repo.find_tag(*tag).is_ok())
}

fn write_tree(repo: &Repository, resolved: &Resolved, dest: &Path) -> Result<i64, git2::Error> {
    let commit = repo.find_commit(resolved.oid).map_err(|_| {
        git2::Error::from_str(&format!(
            "commit {} is not on the fetched refs of the remote",
            resolved.oid
        ))
    })?;
    let tree = commit.tree()?;
    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout.target_dir(dest).force().update_index(false);
    repo.checkout_tree(tree.as_object(), Some(&mut checkout))?;
    Ok(commit.time().seconds())
}
