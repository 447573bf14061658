//! What this process knows of each GitRepository between reconciles: one record per uid, owned
//! here. A reconcile works on a copy ([`States::load`]) and hands it back once
//! ([`States::commit`]), after its status write went through; the record goes when the
//! GitRepository does ([`States::forget`]). Lost on restart; the first apply after one
//! rebuilds what was sent from the watches (`deploy::restore`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use parking_lot::Mutex;

use kube::Resource;

use super::cluster::Cluster;
use crate::api::{GitRepository, GitRepositoryStatus};
use crate::apply::Sent;
use crate::source::Auth;

/// Credentials read from a Secret are used for at most this long before they are read again, so
/// a ServiceAccount that loses access to its Secret stops using it.
pub(super) const CREDENTIALS_MAX_AGE: Duration = Duration::from_secs(300);

/// One GitRepository's record.
#[derive(Clone, Default)]
pub(super) struct State {
    /// Per inventory id: what was sent last. Shared with the copies that reconciles work on, so a
    /// wake-up that only looks at drift copies nothing.
    pub objects: Arc<HashMap<String, Sent>>,
    /// When the remote was last asked for the ref.
    pub last_check: Option<Instant>,
    /// Whether the last apply went through (prune included).
    pub applied_ok: bool,
    /// The generation of the spec that apply was made for: a spec changed since is applied
    /// again, even when a failure in between had the status observe it.
    pub applied_generation: Option<i64>,
    pub applied_at: Option<Instant>,
    /// The Ready message of the last apply.
    pub message: String,
    /// The status this process wrote last: fresher than the watch's copy right after a write.
    pub status: Option<GitRepositoryStatus>,
    /// When each drifted object was corrected, within the correction window.
    pub corrected_at: HashMap<String, Vec<Instant>>,
    /// A digest of the `postBuild` variables the last apply was rendered with.
    pub variables: Option<u64>,
    /// Consecutive failures, for backoff.
    pub failures: u32,
    /// `spec.secretRef`'s credentials as read last, by this GitRepository's own identity.
    pub credentials: Option<Credentials>,
    /// The identity its changes are made as, when it impersonates a ServiceAccount: the key of
    /// its client (the cluster's and the user's).
    pub user: Option<String>,
    /// The remote cluster `spec.kubeConfig` names, as its Secret said when read last.
    pub target: Option<Target>,
    /// What the render of the revision applied last read: a revision that changes none of it
    /// is neither rendered nor applied.
    pub reads: Option<Reads>,
    /// This reconcile failed before it knew which revision it was after (the spec, a
    /// dependency, credentials, the ref, variables): its failure is about no commit.
    pub failed_unresolved: bool,
}

#[derive(Clone)]
pub(super) struct Reads {
    /// The commit rendered.
    pub commit: git2::Oid,
    /// Paths relative to the checkout root (`""` for the root).
    pub paths: Vec<String>,
}

#[derive(Clone)]
pub(super) struct Target {
    /// `<secret>/<key>` it was read from.
    pub secret: String,
    pub cluster: Arc<Cluster>,
}

#[derive(Clone)]
pub(super) struct Credentials {
    pub secret: String,
    pub auth: Auth,
    pub read_at: Instant,
}

impl State {
    /// Whether what is applied went through and was made for `gr`'s spec as it is now.
    pub fn applied_current(&self, gr: &GitRepository) -> bool {
        self.applied_ok && self.applied_generation == gr.meta().generation
    }

    /// The credentials read last from `secret`, unless they are older than `max_age`.
    pub fn credentials(&self, secret: &str, max_age: Duration) -> Option<&Auth> {
        self.credentials
            .as_ref()
            .filter(|c| c.secret == secret && c.read_at.elapsed() < max_age)
            .map(|c| &c.auth)
    }
}

/// Every record, and the impersonating clients the records use.
#[derive(Default)]
pub(super) struct States {
    records: Mutex<HashMap<String, State>>,
    /// Per cluster and `system:serviceaccount:<ns>:<name>`; dropped when no record names it any
    /// more.
    clients: Mutex<HashMap<String, Client>>,
}

impl States {
    /// A copy of the record of `uid` (empty when there is none yet).
    pub fn load(&self, uid: &str) -> State {
        self.records.lock().get(uid).cloned().unwrap_or_default()
    }

    pub fn commit(&self, uid: &str, state: State) {
        self.records.lock().insert(uid.to_string(), state);
    }

    /// One more failure of `uid` outside a reconcile's own record (the error policy); returns
    /// the count.
    pub fn failed(&self, uid: &str) -> u32 {
        let mut records = self.records.lock();
        let state = records.entry(uid.to_string()).or_default();
        state.failures = state.failures.saturating_add(1);
        state.failures
    }

    /// Drops the record of `uid`, and the clients no other record uses.
    pub fn forget(&self, uid: &str) {
        self.retain(|u| u != uid);
    }

    /// Keeps only the records whose uid `keep` accepts (after a re-list, the GitRepositories
    /// that still exist), and the clients those use.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut records = self.records.lock();
        records.retain(|uid, _| keep(uid));
        let users: Vec<&str> = records.values().filter_map(|s| s.user.as_deref()).collect();
        self.clients
            .lock()
            .retain(|user, _| users.contains(&user.as_str()));
    }

    /// The impersonating client for `user`, made once by `make` and shared by every record that
    /// impersonates the same ServiceAccount.
    pub fn client(
        &self,
        user: &str,
        make: impl FnOnce() -> Result<Client, String>,
    ) -> Result<Client, String> {
        if let Some(client) = self.clients.lock().get(user) {
            return Ok(client.clone());
        }
        let client = make()?;
        self.clients.lock().insert(user.to_string(), client.clone());
        Ok(client)
    }

    #[cfg(test)]
    fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.clients.lock().keys().cloned().collect();
        users.sort();
        users
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Result<Client, String> {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        Client::try_from(config).map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn a_record_is_a_copy_until_committed_and_goes_with_its_clients() {
        let states = States::default();
        let mut a = states.load("uid-a");
        a.message = "applied".into();
        a.user = Some("system:serviceaccount:a:deployer".into());
        states
            .client("system:serviceaccount:a:deployer", client)
            .unwrap();
        // Not committed: a failed status write leaves the record as it was.
        assert_eq!(states.load("uid-a").message, "");
        states.commit("uid-a", a);
        assert_eq!(states.load("uid-a").message, "applied");

        let mut b = states.load("uid-b");
        b.user = Some("system:serviceaccount:b:deployer".into());
        states.commit("uid-b", b);
        states
            .client("system:serviceaccount:b:deployer", client)
            .unwrap();
        assert_eq!(states.failed("uid-b"), 1);
        assert_eq!(states.failed("uid-b"), 2);

        states.forget("uid-a");
        assert_eq!(states.load("uid-a").message, "");
        assert_eq!(states.users(), ["system:serviceaccount:b:deployer"]);
        states.retain(|_| false);
        assert!(states.users().is_empty());
        assert_eq!(states.load("uid-b").failures, 0);
    }

    #[test]
    fn credentials_expire_and_belong_to_one_secret() {
        let mut state = State::default();
        let age = Duration::from_secs(300);
        assert!(state.credentials("git", age).is_none());
        state.credentials = Some(Credentials {
            secret: "git".into(),
            auth: Auth::default(),
            read_at: Instant::now(),
        });
        assert!(state.credentials("git", age).is_some());
        assert!(state.credentials("other", age).is_none());
        state.credentials.as_mut().unwrap().read_at = Instant::now()
            .checked_sub(Duration::from_secs(301))
            .unwrap();
        assert!(state.credentials("git", age).is_none());
    }
}
