//! Leader election on a `coordination.k8s.io` Lease, so that of several replicas only one
//! reconciles and writes. kube-lease-manager does the locking; this module adds the rule that
//! matters for safety: any doubt about the lease (an API error, a renewal that hangs) counts as
//! having lost it, and work stops at once.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How long a lease holds without renewal: client-go's default.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// The holder renews this long before the lease would expire.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(5);
/// Every Lease request is given up after this, so a renewal that hangs ends in an error (and a
/// step-down) well before the lease expires and a standby may take over.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after an error before trying to acquire the lease again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(2);

/// Where the lease is and who competes for it.
#[derive(Debug, Clone)]
pub struct Election {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per process: the Pod name plus a random suffix.
    pub identity: String,
}

/// A running election: tells when this process leads, and releases the lease when stopped.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Starts competing for the lease with the connection settings `config` (their timeouts
    /// shortened for the Lease requests).
    pub fn start(config: &kube::Config, election: Election) -> Result<Leadership, kube::Error> {
        let mut config = config.clone();
        config.connect_timeout = Some(REQUEST_TIMEOUT);
        config.read_timeout = Some(REQUEST_TIMEOUT);
        config.write_timeout = Some(REQUEST_TIMEOUT);
        let client = Client::try_from(config)?;
        let (tx, leading) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(compete(client, election, tx, stopped));
        Ok(Leadership {
            leading,
            stop: Some(stop),
            task,
        })
    }

    /// Resolves once this process holds the lease; never, if the election has ended.
    pub async fn acquired(&mut self) {
        if self.leading.wait_for(|leading| *leading).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once this process no longer holds the lease, or cannot tell (the election
    /// ended).
    pub async fn lost(&mut self) {
        let _ = self.leading.wait_for(|leading| !*leading).await;
    }

    /// Gives the lease up: a standby takes it at its next look (at the latest when the lease
    /// would have expired) without having to break it first.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn compete(
    client: Client,
    election: Election,
    leading: watch::Sender<bool>,
    mut stop: oneshot::Receiver<()>,
) {
    for attempt in 0u64.. {
        // A fresh manager after every error, under a fresh identity: one that failed may still
        // believe it holds the lease, and a new one with the old identity would take a lease
        // that may have expired meanwhile (and been taken) as still its own. With a new
        // identity the old lease has to expire or be released, as for anyone.
        let identity = format!("{}-{attempt}", election.identity);
        let manager = match manager(&client, &election, &identity).await {
            Ok(manager) => manager,
            Err(e) => {
                warn!(error = %e, lease = %election.lease_name, "leader election: cannot reach the lease");
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(RETRY_AFTER_ERROR) => continue,
                }
            }
        };
        loop {
            tokio::select! {
                _ = &mut stop => {
                    if let Err(e) = manager.release().await {
                        warn!(error = %e, "leader election: releasing the lease failed; it expires on its own");
                    } else {
                        info!(lease = %election.lease_name, "released the leader lease");
                    }
                    let _ = leading.send(false);
                    return;
                }
                changed = manager.changed() => match changed {
                    Ok(now_leading) => {
                        if now_leading {
                            info!(%identity, lease = %election.lease_name, "acquired the leader lease");
                        } else {
                            warn!(%identity, "lost the leader lease");
                        }
                        let _ = leading.send(now_leading);
                    }
                    Err(e) => {
                        if *leading.borrow() {
                            warn!(error = %e, "leader election: the lease could not be renewed; stepping down");
                        } else {
                            warn!(error = %e, "leader election: the lease could not be read");
                        }
                        let _ = leading.send(false);
                        // Best effort: if the API server answers again, the lease is free for
                        // whoever is quickest instead of blocked until it expires.
                        let _ = manager.release().await;
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(RETRY_AFTER_ERROR) => {}
        }
    }
}

async fn manager(
    client: &Client,
    election: &Election,
    identity: &str,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    LeaseManagerBuilder::new(client.clone(), &election.lease_name)
        .with_namespace(&election.namespace)
        .with_identity(identity)
        .with_duration(LEASE_DURATION.as_secs())
        .with_grace(RENEW_BEFORE_EXPIRY.as_secs())
        .with_field_manager(format!("capstan-leader-{identity}"))
        .build()
        .await
}
