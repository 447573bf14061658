//! On delete: the objects a GitRepository applied are deleted, or released (deletionPolicy).

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::{Context, Error, uid};
use crate::api::{DeletionPolicy, GitRepository};
use crate::apply::Owner;
use crate::object::{ObjectId, apply_tier};

pub(super) async fn cleanup(gr: &GitRepository, ctx: &Context) -> Result<Action, Error> {
    // In a namespace being deleted the ServiceAccount's RoleBindings may already be gone; the
    // objects that still carry this GitRepository's ownership marker are removed as the
    // controller, or the namespace would never finish deleting.
    // A failed read is retried: it must not pass for a namespace being deleted.
    let namespace = gr.namespace().unwrap_or_default();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    let terminating = namespaces
        .get_opt(&namespace)
        .await
        .map_err(|e| Error::Cleanup(format!("reading namespace {namespace}: {e}")))?
        .is_none_or(|ns| ns.metadata.deletion_timestamp.is_some());
    let mut state = ctx.states.load(&uid(gr));
    let remote = gr.spec.kube_config.is_some();
    if let Err(failure) = super::cluster::connect(ctx, gr, &mut state, false).await {
        if !(terminating && remote) {
            return Err(Error::Cleanup(failure.to_string()));
        }
        // The namespace goes, and its kubeconfig Secret with it: what is on the remote stays.
        let note = format!("{failure}: the objects applied to the remote cluster are left there");
        warn!(error = %failure, "the remote cluster cannot be reached while the namespace is deleted");
        super::report::event(ctx, gr, EventType::Warning, failure.reason(), note).await;
        ctx.forget(gr);
        return Ok(Action::await_change());
    }
    // The RoleBindings of a namespace being deleted are here, not on a remote cluster.
    let client = if terminating && !remote {
        ctx.client.clone()
    } else {
        ctx.client_for(gr, &mut state).map_err(Error::Cleanup)?
    };
    let cluster = ctx.cluster(&state);
    let status = match state.status.clone() {
        Some(status) => Some(status),
        None => super::full_status(ctx, gr).await?,
    };
    let inventory = status.and_then(|s| s.inventory).unwrap_or_default();
    let entries = inventory.entries;
    let owner = Owner::of(gr);
    let delete = match gr.spec.deletion_policy {
        DeletionPolicy::Delete => true,
        DeletionPolicy::Orphan => false,
        DeletionPolicy::MirrorPrune => gr.spec.prune,
    };
    if delete {
        // Deleted together, the GitRepositories that depend on this one go first: a custom
        // resource before its CRD and controller.
        let now = k8s_openapi::jiff::Timestamp::now();
        let first = super::depends::deleted_first(gr, &ctx.repositories, now);
        if !first.is_empty() {
            return Err(Error::Cleanup(format!(
                "waiting for {} to be deleted first, or to stay: they depend on this GitRepository",
                first.join(", ")
            )));
        }
        let mut ordered = entries;
        ordered.sort_by_key(|e| {
            ObjectId::parse(&e.id).map(|id| (std::cmp::Reverse(apply_tier(&id)), e.id.clone()))
        });
        let report = cluster.applier.prune(&client, &ordered, &owner).await;
        // Objects already being deleted (finalizers) do not hold the GitRepository back.
        if !report.errors.is_empty() {
            let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
            return Err(Error::Cleanup(errors.join("; ")));
        }
        info!(
            deleted = report.deleted.len(),
            "deleted the objects this GitRepository applied"
        );
    } else {
        cluster
            .applier
            .release(&client, &entries, &owner)
            .await
            .map_err(Error::Cleanup)?;
        info!(
            orphaned = entries.len(),
            "released the objects this GitRepository applied"
        );
    }
    if inventory.record.is_some() {
        // Owned by the GitRepository, the parts would go with it; they go now, not later.
        crate::apply::record::delete_parts(&ctx.client, gr, None)
            .await
            .map_err(|e| Error::Cleanup(e.to_string()))?;
    }
    ctx.forget(gr);
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::mock;

    /// A GitRepository being deleted that applied one ConfigMap as its ServiceAccount.
    fn deleted() -> GitRepository {
        crate::git_repository(serde_json::json!({
            "metadata": {
                "name": "app", "namespace": "shop", "uid": "u-1",
                "deletionTimestamp": "2026-12-01T00:00:00Z",
                "finalizers": ["capstan.dev/cleanup"]
            },
            "spec": {
                "url": "https://git.example/app.git",
                "interval": "1m",
                "serviceAccountName": "deployer"
            },
            "status": {"inventory": {"entries": [{"id": "shop_settings__ConfigMap", "v": "v1"}]}}
        }))
    }

    #[tokio::test]
    async fn a_failed_namespace_read_is_retried_and_deletes_nothing_as_the_controller() {
        let dir = tempfile::tempdir().unwrap();
        let (ctx, mut api) = mock::context(dir.path());
        let server = tokio::spawn(async move {
            let (request, answer) = api.next_request().await.expect("a request");
            assert_eq!(request.method(), "GET");
            assert_eq!(request.uri().path(), "/api/v1/namespaces/shop");
            answer.send_response(mock::status(500, "InternalError", "etcd is unavailable"));
            // Anything asked after that is recorded, and answered as if the object were gone.
            let mut later = Vec::new();
            while let Some((request, answer)) = api.next_request().await {
                later.push(format!("{} {}", request.method(), request.uri().path()));
                answer.send_response(mock::status(404, "NotFound", "not found"));
            }
            later
        });

        let result = cleanup(&deleted(), &ctx).await;
        drop(ctx);
        let later = server.await.unwrap();
        assert!(
            later.is_empty(),
            "nothing is asked after the failed read: {later:?}"
        );
        let Err(Error::Cleanup(message)) = result else {
            panic!("expected a cleanup error, got {result:?}");
        };
        assert!(message.contains("reading namespace shop"), "{message}");
        assert!(message.contains("etcd is unavailable"), "{message}");
    }
}
