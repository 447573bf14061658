//! The GitRepositories to wake because a managed object changed, each held once until the
//! controller takes it: memory stays bounded by the number of GitRepositories, however fast
//! objects change (a re-list of ten thousand objects wakes each owner once, not once per object).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::api::GitRepository;

#[derive(Default)]
pub struct Wakes {
    pending: Mutex<Pending>,
    ready: Notify,
}

#[derive(Default)]
struct Pending {
    order: VecDeque<ObjectRef<GitRepository>>,
    held: HashSet<ObjectRef<GitRepository>>,
}

impl Wakes {
    /// Wakes `<namespace>/<name>` (an ownership annotation's value); anything else is ignored.
    pub fn wake(&self, owner: &str) {
        let Some((ns, name)) = owner.split_once('/') else {
            return;
        };
        let gr = ObjectRef::new(name).within(ns);
        let mut pending = self.pending.lock();
        if pending.held.insert(gr.clone()) {
            pending.order.push_back(gr);
            drop(pending);
            self.ready.notify_one();
        }
    }

    fn take(&self) -> Option<ObjectRef<GitRepository>> {
        let mut pending = self.pending.lock();
        let gr = pending.order.pop_front()?;
        pending.held.remove(&gr);
        Some(gr)
    }

    /// The wakes in the order they came, for the controller's `reconcile_on`.
    pub fn stream(
        self: Arc<Self>,
    ) -> impl Stream<Item = ObjectRef<GitRepository>> + Send + 'static {
        futures::stream::unfold(self, |wakes| async move {
            loop {
                if let Some(gr) = wakes.take() {
                    return Some((gr, wakes));
                }
                // A wake between `take` and here leaves a permit, so none is lost.
                wakes.ready.notified().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn each_owner_is_held_once_until_taken() {
        let wakes = Arc::new(Wakes::default());
        for _ in 0..10_000 {
            wakes.wake("shop/web");
        }
        wakes.wake("shop/db");
        wakes.wake("not an owner");
        wakes.wake("shop/web");
        assert_eq!(wakes.pending.lock().order.len(), 2);

        let mut stream = Box::pin(wakes.clone().stream());
        assert_eq!(
            stream.next().await,
            Some(ObjectRef::new("web").within("shop"))
        );
        assert_eq!(
            stream.next().await,
            Some(ObjectRef::new("db").within("shop"))
        );
        // Taken, so the next change wakes it again.
        wakes.wake("shop/web");
        assert_eq!(
            stream.next().await,
            Some(ObjectRef::new("web").within("shop"))
        );
        assert!(wakes.pending.lock().held.is_empty());
    }

    #[tokio::test]
    async fn a_wake_while_the_stream_waits_is_delivered() {
        let wakes = Arc::new(Wakes::default());
        let mut stream = Box::pin(wakes.clone().stream());
        let waker = wakes.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            waker.wake("apps/api");
        });
        assert_eq!(
            stream.next().await,
            Some(ObjectRef::new("api").within("apps"))
        );
    }
}
