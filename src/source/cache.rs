//! The persistent git cache: one bare repository per URL, shared by every GitRepository that
//! points at it, behind a per-URL lock so one poll fetches once. git2 is blocking, so every call
//! runs on the blocking pool, bounded by a semaphore and by the GitRepository's timeout.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::Repository;
use tokio::sync::Semaphore;

use super::resolve::{self, ResolveError, Resolved};
use super::{Auth, RemoteUrl, SourceError, fetch, ls_remote};
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
    pub fn reason(&self) -> &'static str {
        match self {
            CheckError::Source(e) => e.reason(),
            CheckError::Resolve(e) => e.reason(),
            CheckError::Timeout { .. } => "FetchFailed",
        }
    }
}

pub struct Cache {
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    permits: Arc<Semaphore>,
}

impl Cache {
    pub fn new(root: PathBuf, concurrency: usize) -> Self {
        Cache {
            root,
            locks: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    fn repo_dir(&self, url: &RemoteUrl) -> PathBuf {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        url.as_str().hash(&mut h);
        self.root.join(format!("{:016x}.git", h.finish()))
    }

    /// Runs blocking git work off the runtime, within `timeout`. The permit (and whatever `hold`
    /// guards) moves into the work, so a git call that outlives the deadline still counts
    /// against the bound until libgit2 gives up (its own progress deadline stops transfers).
    async fn blocking<T: Send + 'static, G: Send + 'static>(
        &self,
        url: &RemoteUrl,
        timeout: Duration,
        hold: G,
        work: impl FnOnce(Instant) -> Result<T, CheckError> + Send + 'static,
    ) -> Result<T, CheckError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closes");
        let deadline = Instant::now() + timeout;
        let task = tokio::task::spawn_blocking(move || {
            let _held = (permit, hold);
            work(deadline)
        });
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(CheckError::Source(SourceError::Fetch {
                url: url.redacted().to_string(),
                message: format!("git work failed: {join}"),
            })),
            Err(_) => Err(CheckError::Timeout {
                url: url.redacted().to_string(),
                timeout,
            }),
        }
    }

    /// Asks the remote which commit `git_ref` names now: one ref advertisement, no fetch.
    pub async fn resolve(
        &self,
        url: &RemoteUrl,
        auth: &Auth,
        git_ref: &GitRef,
        timeout: Duration,
    ) -> Result<Resolved, CheckError> {
        let (url2, auth, git_ref) = (url.clone(), auth.clone(), git_ref.clone());
        self.blocking(url, timeout, (), move |_deadline| {
            let refs = ls_remote(&url2, &auth)?;
            Ok(resolve::resolve(&git_ref, &refs)?)
        })
        .await
    }

    /// Makes sure `resolved.oid` is in the cache (fetching only when it is not) and writes its
    /// tree into `dest`.
    pub async fn checkout(
        &self,
        url: &RemoteUrl,
        auth: &Auth,
        resolved: &Resolved,
        dest: &Path,
        timeout: Duration,
    ) -> Result<(), CheckError> {
        let lock = self
            .locks
            .lock()
            .expect("locks")
            .entry(url.as_str().to_string())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        let (url2, auth, resolved, git_dir, dest) = (
            url.clone(),
            auth.clone(),
            resolved.clone(),
            self.repo_dir(url),
            dest.to_path_buf(),
        );
        // The URL's lock moves into the work: a fetch that outlives its deadline still keeps
        // the next one out of the same repository.
        self.blocking(url, timeout, guard, move |deadline| {
            let repo = match Repository::open_bare(&git_dir) {
                Ok(repo) if repo.find_commit(resolved.oid).is_ok() => repo,
                _ => {
                    let refspecs: Vec<&str> =
                        resolved.refspecs.iter().map(String::as_str).collect();
                    // A pinned commit may lie beyond a shallow cache's boundary: unshallow.
                    let depth = if resolved.shallow { 1 } else { i32::MAX };
                    fetch(&git_dir, &url2, &refspecs, depth, &auth, deadline)?
                }
            };
            write_tree(&repo, &resolved, &dest)
                .map_err(|e| SourceError::Cache {
                    path: git_dir.display().to_string(),
                    message: e.message().to_string(),
                })
                .map_err(CheckError::from)
        })
        .await
    }
}

fn write_tree(repo: &Repository, resolved: &Resolved, dest: &Path) -> Result<(), git2::Error> {
    let commit = repo.find_commit(resolved.oid).map_err(|_| {
        git2::Error::from_str(&format!(
            "commit {} is not on the fetched refs of the remote",
            resolved.oid
        ))
    })?;
    let tree = commit.tree()?;
    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout.target_dir(dest).force().update_index(false);
    repo.checkout_tree(tree.as_object(), Some(&mut checkout))
}
