//! Applying a revision: ask the remote which commit the ref names, fetch and check it out,
//! render it, apply it and prune what it no longer declares.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use tracing::info;

use super::{Context, Failure, parse_duration, progressing, timeout_of};
use crate::api::{
    Artifact, GitRepository, GitRepositoryStatus, Inventory, InventoryEntry, PruneBlocked,
    SubstituteKind, Summary,
};
use crate::apply::{self, Action as Applied, ApplyOptions, Owner, Sent};
use crate::render::{self, HelmOptions, Variables};
use crate::source::{Auth, RemoteUrl, SourceError};
use crate::status::Reason;
use crate::status::Verdict;

/// Source, render, apply and prune of the revision the ref names now, writing what happened into
/// `status`. `Ok(None)` when that revision is applied already and nothing asks for more.
pub(super) async fn stages(
    gr: &GitRepository,
    ctx: &Context,
    status: &mut GitRepositoryStatus,
    request: Option<&str>,
    now: &Time,
) -> Result<Option<Verdict>, Failure> {
    let started = Instant::now();
    let namespace = gr.namespace().unwrap_or_default();
    parse_duration(&gr.spec.interval).ok_or_else(|| {
        Failure::stall(
            Reason::InvalidSpec,
            format!("invalid interval {:?}", gr.spec.interval),
        )
    })?;
    let timeout = timeout_of(gr).map_err(|m| Failure::stall(Reason::InvalidSpec, m))?;

    // Source: ask the remote which commit the ref names.
    let url = RemoteUrl::parse(&gr.spec.url).map_err(|e| Failure::stall(e.reason(), e))?;
    // Credentials are read afresh after a change or a failure, and when the remote refuses the
    // copy read last (a rotated Secret).
    let key = ObjectRef::from(gr);
    let applied_ok = ctx.recall(&key, |m| m.applied_ok).unwrap_or(false);
    let settled = status.observed_generation == gr.meta().generation && request.is_none();
    let mut auth = load_auth(ctx, gr, &namespace, !(settled && applied_ok)).await?;
    let mut resolved = ctx
        .cache
        .resolve(&url, &auth, &gr.spec.git_ref(), timeout)
        .await;
    if settled
        && applied_ok
        && matches!(&resolved, Err(e) if e.reason() == Reason::AuthenticationFailed)
    {
        auth = load_auth(ctx, gr, &namespace, true).await?;
        resolved = ctx
            .cache
            .resolve(&url, &auth, &gr.spec.git_ref(), timeout)
            .await;
    }
    let resolved = resolved.map_err(|e| Failure::of(e.reason(), e))?;

    // Variables are read on every check, so a changed ConfigMap or Secret is applied too.
    let variables = variables(ctx, gr, &namespace).await?;
    let variables_digest = variables.as_ref().map(digest_of);
    let up_to_date = applied_ok
        && ctx.recall(&key, |m| m.variables).flatten() == variables_digest
        && status.last_applied_revision.as_deref() == Some(resolved.revision.as_str())
        && status.observed_generation == gr.meta().generation
        && request.is_none_or(|r| status.last_handled_reconcile_at.as_deref() == Some(r));
    if up_to_date {
        return Ok(None);
    }

    status.last_attempted_revision = Some(resolved.revision.clone());
    if status.artifact.as_ref().map(|a| a.revision.as_str()) != Some(resolved.revision.as_str()) {
        status.artifact = Some(Artifact {
            revision: resolved.revision.clone(),
            fetched_at: now.clone(),
        });
    }

    // Fetch (only when the commit is not cached yet) and check out.
    let work = tempfile::tempdir_in(&ctx.work_dir).map_err(|e| {
        Failure::retry(
            Reason::FetchFailed,
            format!("creating a checkout directory: {e}"),
        )
    })?;
    let fetch_started = Instant::now();
    let fetched = ctx
        .cache
        .checkout(&url, &auth, &resolved, work.path(), timeout)
        .await;
    ctx.metrics
        .git_fetch_duration
        .with_label_values(&[
            namespace.as_str(),
            gr.name_any().as_str(),
            if fetched.is_ok() { "ok" } else { "error" },
        ])
        .observe(fetch_started.elapsed().as_secs_f64());
    let committed_at = fetched.map_err(|e| Failure::retry(e.reason(), e))?;

    // Render.
    let root = work.path().to_path_buf();
    let (path, ignore) = (gr.spec.path.clone(), gr.spec.ignore.clone());
    let helm = helm_options(gr);
    let (limits, tools) = (ctx.limits, ctx.tools.clone());
    let rendered = tokio::time::timeout(
        // The tools stop themselves at `timeout`; this bounds the rest of the work.
        timeout + Duration::from_secs(5),
        tokio::task::spawn_blocking(move || {
            render::render(
                &root,
                &render::Options {
                    path: path.as_deref(),
                    ignore: ignore.as_deref(),
                    helm,
                    variables: variables.as_ref(),
                    limits,
                    tools,
                    timeout,
                },
            )
        }),
    )
    .await
    .map_err(|_| {
        Failure::stall(
            Reason::BuildFailed,
            format!("rendering took longer than {timeout:?}"),
        )
    })?
    .map_err(|e| Failure::stall(Reason::BuildFailed, format!("rendering failed: {e}")))?;
    let manifests = rendered
        .map_err(|e| Failure::stall(e.reason(), format!("revision {}: {e}", resolved.revision)))?;
    drop(work);

    // Apply. An invalid maxPrune is refused before anything changes.
    if gr.spec.prune {
        apply::prune_blocked(1, 1, gr.spec.max_prune.as_ref())
            .map_err(|m| Failure::stall(Reason::InvalidSpec, m))?;
    }
    let owner = Owner {
        namespace: namespace.clone(),
        name: gr.name_any(),
    };
    let previous_entries = status.inventory.clone().unwrap_or_default().entries;
    let previous: HashSet<String> = previous_entries.iter().map(|e| e.id.clone()).collect();
    let key = ObjectRef::from(gr);
    // A reconcile asked for by hand re-sends everything, whatever the digests say.
    let previous_sent: HashMap<String, Sent> =
        ctx.recall(&key, |m| m.objects.clone()).unwrap_or_default();
    let previous_digests: HashMap<String, u64> = match request {
        Some(_) => HashMap::new(),
        None => previous_sent
            .iter()
            .map(|(id, s)| (id.clone(), s.digest))
            .collect(),
    };
    let default_namespace = gr
        .spec
        .target_namespace
        .clone()
        .unwrap_or_else(|| namespace.clone());
    // The latest resourceVersion known of each object: from the watch, or from the last apply.
    let previous_versions: HashMap<String, u64> = previous
        .iter()
        .filter_map(|id| {
            let watched = ctx.live.resource_version(id);
            let sent = previous_sent
                .get(id)
                .and_then(|s| s.owned.as_ref()?.resource_version);
            Some((id.clone(), watched.max(sent)?))
        })
        .collect();
    let opts = ApplyOptions {
        owner: &owner,
        default_namespace: &default_namespace,
        previous: &previous,
        previous_digests: &previous_digests,
        previous_versions: &previous_versions,
        timeout,
    };
    let client = ctx
        .client_for(gr)
        .map_err(|m| Failure::retry(Reason::ApplyFailed, m))?;
    progressing(ctx, gr, status, &resolved.revision).await;
    let report = ctx.applier.apply(&client, &manifests, &opts).await;
    for kind in &report.kinds {
        ctx.live.watch(kind);
    }
    let mut sent = report.sent.clone();
    for (id, s) in sent.iter_mut() {
        // Not sent again: Capstan still owns what it owned after the last send.
        if s.owned.is_none() {
            s.owned = previous_sent.get(id).and_then(|p| p.owned.clone());
        }
    }
    let mut outcome = Outcome {
        entries: report
            .objects
            .iter()
            .filter(|(_, _, action)| !matches!(action, Applied::Failed(_)))
            .map(|(id, v, _)| InventoryEntry {
                id: id.to_string(),
                v: v.clone(),
            })
            .collect(),
        sent,
        summary: Summary {
            total: report.objects.len() as i64,
            created: report.count(|a| *a == Applied::Created),
            configured: report.count(|a| *a == Applied::Configured),
            unchanged: report.count(|a| *a == Applied::Unchanged),
            ..Summary::default()
        },
    };

    if let Some(error) = report.error() {
        // Keep managing everything applied before and now; prune nothing.
        outcome.entries.extend(previous_entries);
        outcome.record(ctx, &key, status);
        return Err(Failure::retry(error.reason(), error));
    }

    // Prune, behind the blast-radius guard.
    let desired: BTreeSet<String> = outcome.entries.iter().map(|e| e.id.clone()).collect();
    let candidates = apply::prune_candidates(&previous_entries, &desired);
    let was_blocked = status.prune_blocked.take();
    if gr.spec.prune && !candidates.is_empty() {
        // While the guard holds, the blocked revision's new objects are in the inventory too:
        // measure against what was managed before it.
        let managed = match &was_blocked {
            Some(blocked)
                if candidates
                    .iter()
                    .all(|c| blocked.candidates.contains(&c.id)) =>
            {
                usize::try_from(blocked.managed).unwrap_or(previous_entries.len())
            }
            _ => previous_entries.len(),
        };
        if let Ok(Some(limit)) =
            apply::prune_blocked(candidates.len(), managed, gr.spec.max_prune.as_ref())
        {
            let message = format!(
                "revision {} would prune {} of {managed} managed objects, over the limit ({limit}); nothing was pruned (raise spec.maxPrune to let it through)",
                resolved.revision,
                candidates.len(),
            );
            status.prune_blocked = Some(PruneBlocked {
                candidates: candidates.iter().map(|e| e.id.clone()).collect(),
                limit,
                managed: managed as i64,
            });
            outcome.entries.extend(candidates);
            outcome.record(ctx, &key, status);
            return Err(Failure::stall(Reason::PruneBlocked, message));
        }
        let pruned = ctx.applier.prune(&client, &candidates, &owner).await;
        info!(
            revision = %resolved.revision,
            deleted = pruned.deleted.len(),
            released = pruned.released.len(),
            pending = pruned.pending.len(),
            failed = pruned.errors.len(),
            "pruned what the revision no longer declares"
        );
        outcome.summary.pruned = pruned.deleted.len() as i64;
        outcome.entries.extend(pruned.pending);
        if !pruned.errors.is_empty() {
            outcome.record(ctx, &key, status);
            return Err(Failure::retry(
                Reason::PruneFailed,
                pruned.errors.join("; "),
            ));
        }
    }
    let message = format!(
        "Applied revision {} ({} objects: {} created, {} configured, {} unchanged, {} pruned)",
        resolved.revision,
        outcome.summary.total,
        outcome.summary.created,
        outcome.summary.configured,
        outcome.summary.unchanged,
        outcome.summary.pruned
    );
    let summary = &outcome.summary;
    info!(
        revision = %resolved.revision,
        objects = summary.total,
        created = summary.created,
        configured = summary.configured,
        unchanged = summary.unchanged,
        pruned = summary.pruned,
        duration_ms = started.elapsed().as_millis() as u64,
        "applied revision"
    );
    outcome.record(ctx, &key, status);
    if let Some(memory) = ctx.memory.lock().get_mut(&key) {
        memory.variables = variables_digest;
    }
    if status.last_applied_revision.as_deref() != Some(resolved.revision.as_str()) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        ctx.metrics
            .commit_to_applied
            .with_label_values(&[namespace.as_str(), gr.name_any().as_str()])
            .observe((now - committed_at as f64).max(0.0));
    }
    status.last_applied_revision = Some(resolved.revision.clone());
    Ok(Some(Verdict::Ready {
        reason: Reason::ReconciliationSucceeded,
        message,
    }))
}

/// What an apply (and prune) leaves managed.
pub(super) struct Outcome {
    entries: Vec<InventoryEntry>,
    sent: HashMap<String, Sent>,
    summary: Summary,
}

impl Outcome {
    /// Writes the inventory and summary into `status` and remembers what was sent (only for
    /// objects still managed). A new apply starts a new drift record.
    fn record(
        mut self,
        ctx: &Context,
        key: &ObjectRef<GitRepository>,
        status: &mut GitRepositoryStatus,
    ) {
        self.entries.sort();
        self.entries.dedup_by(|a, b| a.id == b.id);
        self.sent
            .retain(|id, _| self.entries.iter().any(|e| &e.id == id));
        status.inventory = Some(Inventory {
            entries: self.entries,
        });
        status.summary = Some(Summary {
            drifted: 0,
            ..self.summary
        });
        status.drift.clear();
        let (ns, name) = (key.namespace.clone().unwrap_or_default(), key.name.clone());
        let counts = [
            self.summary.created,
            self.summary.configured,
            self.summary.unchanged,
            self.summary.pruned,
        ];
        for (action, n) in crate::metrics::ACTIONS.iter().zip(counts) {
            ctx.metrics
                .apply_objects
                .with_label_values(&[ns.as_str(), name.as_str(), action])
                .inc_by(n.max(0) as u64);
        }
        ctx.memory.lock().entry(key.clone()).or_default().objects = self.sent;
    }
}

/// `spec.postBuild`'s variables, read with the GitRepository's own identity (impersonation
/// included), so a tenant cannot read another's Secrets through Capstan.
pub(super) async fn variables(
    ctx: &Context,
    gr: &GitRepository,
    namespace: &str,
) -> Result<Option<Variables>, Failure> {
    if gr.spec.post_build.is_none() {
        return Ok(None);
    }
    let client = ctx
        .client_for(gr)
        .map_err(|m| Failure::retry(Reason::BuildFailed, m))?;
    read_variables(&client, gr, namespace)
        .await
        .map_err(|e| match e.transient {
            true => Failure::retry(Reason::BuildFailed, e.message),
            false => Failure::stall(Reason::BuildFailed, e.message),
        })
}

/// Why the `postBuild` variables could not be read.
#[derive(Debug)]
pub struct VariablesError {
    pub message: String,
    /// Worth retrying: the API server failed, or an object may yet appear.
    pub transient: bool,
}

/// `spec.postBuild`'s variables: `substituteFrom` in order, each overriding the ones before, then
/// `substitute` over all. `None` without `postBuild`.
pub async fn read_variables(
    client: &Client,
    gr: &GitRepository,
    namespace: &str,
) -> Result<Option<Variables>, VariablesError> {
    let Some(post_build) = &gr.spec.post_build else {
        return Ok(None);
    };
    let transient = |message: String| VariablesError {
        message,
        transient: true,
    };
    let lasting = |message: String| VariablesError {
        message,
        transient: false,
    };
    let mut variables = Variables::new();
    for from in &post_build.substitute_from {
        let what = format!("{:?} {namespace}/{}", from.kind, from.name);
        let failed =
            |e: kube::Error| transient(format!("postBuild.substituteFrom: reading {what}: {e}"));
        let data: Option<BTreeMap<String, String>> = match from.kind {
            SubstituteKind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt(&from.name)
                .await
                .map_err(failed)?
                .map(|cm| cm.data.unwrap_or_default()),
            SubstituteKind::Secret => {
                match Api::<Secret>::namespaced(client.clone(), namespace)
                    .get_opt(&from.name)
                    .await
                    .map_err(failed)?
                {
                    None => None,
                    Some(secret) => {
                        let mut data = BTreeMap::new();
                        for (key, value) in secret.data.unwrap_or_default() {
                            let value = String::from_utf8(value.0).map_err(|_| {
                                lasting(format!(
                                    "postBuild.substituteFrom: {what}: the value of {key:?} is not UTF-8"
                                ))
                            })?;
                            data.insert(key, value);
                        }
                        Some(data)
                    }
                }
            }
        };
        match data {
            Some(data) => variables.extend(data),
            None if from.optional => {}
            None => {
                return Err(transient(format!(
                    "postBuild.substituteFrom: {what} not found (mark it optional if it may be missing)"
                )));
            }
        }
    }
    variables.extend(post_build.substitute.clone());
    if let Some(bad) = variables.keys().find(|k| !render::is_variable_name(k)) {
        return Err(lasting(format!(
            "postBuild: {bad:?} is not a valid variable name (letters, digits and '_', not starting with a digit)"
        )));
    }
    Ok(Some(variables))
}

/// The release a chart at `spec.path` is rendered as: `spec.helm`, with the GitRepository's name
/// and its target namespace as defaults.
pub fn helm_options(gr: &GitRepository) -> HelmOptions {
    let helm = gr.spec.helm.clone().unwrap_or_default();
    HelmOptions {
        release_name: helm.release_name.unwrap_or_else(|| gr.name_any()),
        namespace: gr
            .spec
            .target_namespace
            .clone()
            .or_else(|| gr.namespace())
            .unwrap_or_else(|| "default".into()),
        values: helm.values,
        values_files: helm.values_files,
    }
}

pub(super) fn digest_of(variables: &Variables) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    variables.hash(&mut hasher);
    hasher.finish()
}

/// The credentials of `spec.secretRef`. Read from the API server when `fresh`, or when not read
/// before; otherwise the copy read last, so that a steady state reads no Secret.
pub(super) async fn load_auth(
    ctx: &Context,
    gr: &GitRepository,
    namespace: &str,
    fresh: bool,
) -> Result<Auth, Failure> {
    let Some(secret_ref) = &gr.spec.secret_ref else {
        return Ok(Auth::default());
    };
    let key = (namespace.to_string(), secret_ref.name.clone());
    let cached = ctx.auth.lock().get(&key).cloned();
    if let (false, Some(auth)) = (fresh, cached) {
        return Ok(auth);
    }
    // Read as the GitRepository's ServiceAccount, if it has one: a tenant cannot send a
    // Secret its ServiceAccount may not read to a URL of its choosing.
    let client = ctx
        .client_for(gr)
        .map_err(|m| Failure::retry(Reason::AuthenticationFailed, m))?;
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| {
            Failure::retry(
                Reason::AuthenticationFailed,
                format!("reading secret {}: {e}", secret_ref.name),
            )
        })?
        .ok_or_else(|| {
            Failure::retry(
                Reason::AuthenticationFailed,
                format!("secret {}/{} not found", namespace, secret_ref.name),
            )
        })?;
    let data = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let auth =
        Auth::from_secret_data(&data).map_err(|e: SourceError| Failure::stall(e.reason(), e))?;
    ctx.auth.lock().insert(key, auth.clone());
    Ok(auth)
}
