//! Source: ask the remote which commit the ref names (with the GitRepository's credentials),
//! read the `postBuild` variables, and, when that is not applied already, fetch and check out the
//! commit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::{Client, ResourceExt};
use parking_lot::Mutex;
use tempfile::TempDir;

use super::Context;
use super::failure::{CredentialsError, Failure};
use super::plan::Plan;
use super::state::{CREDENTIALS_MAX_AGE, Credentials, State};
use crate::api::{GitRepository, GitRepositoryStatus, SubstituteKind};
use crate::render::{self, Variables};
use crate::source::verify::Signatures;
use crate::source::{Auth, Cache, RemoteUrl, Resolved};
use crate::status::Reason;

/// The revision to apply and what it is rendered with.
pub(super) struct Source {
    pub url: RemoteUrl,
    pub auth: Auth,
    pub resolved: Resolved,
    pub variables: Option<Variables>,
    pub variables_digest: Option<u64>,
}

/// A checked-out commit, in a directory deleted when its last holder drops it. Read-only when
/// shared: only a checkout of its own (for decryption, which writes plaintext into it) is
/// changed.
#[derive(Clone)]
pub(super) struct Checkout {
    pub work: Arc<TempDir>,
    /// The commit's time, in seconds since the epoch.
    pub committed_at: i64,
    /// The commit's (and tag's) signatures, for `spec.verify`.
    pub signatures: Signatures,
}

/// Checkouts shared by the GitRepositories of one URL at one commit (a monorepo's
/// applications), so the tree is written once per commit and URL rather than once per
/// GitRepository. A checkout no reconcile has asked for in [`CHECKOUT_IDLE`] is let go; its tree
/// goes when the last render holding it ends.
#[derive(Default)]
pub(super) struct Checkouts {
    slots: Mutex<HashMap<String, (Arc<Slot>, Instant)>>,
}

/// How long a checkout no reconcile asks for is kept.
const CHECKOUT_IDLE: Duration = Duration::from_secs(300);

/// One URL's checkout of one revision (its commit and the annotated tag naming it, whose
/// signature the checkout carries), locked while it is made.
type Slot = tokio::sync::Mutex<Option<Checkout>>;

impl Checkouts {
    fn slot(&self, url: &RemoteUrl, resolved: &Resolved) -> Arc<Slot> {
        let tag = resolved.tag.as_ref().map(|(_, tag)| tag.to_string());
        let key = format!(
            "{} {} {}",
            url.as_str(),
            resolved.oid,
            tag.unwrap_or_default()
        );
        let now = Instant::now();
        let mut slots = self.slots.lock();
        // A slot someone holds (one being made) is kept whatever its age.
        slots.retain(|_, (slot, used)| {
            now.duration_since(*used) < CHECKOUT_IDLE || Arc::strong_count(slot) > 1
        });
        let (slot, used) = slots.entry(key).or_insert_with(|| (Arc::default(), now));
        *used = now;
        slot.clone()
    }
}

/// The revision the ref names now, or `None` when it is applied already and nothing else asks
/// for an apply.
pub(super) async fn resolve(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    status: &GitRepositoryStatus,
    plan: &Plan,
) -> Result<Option<Source>, Failure> {
    let url = RemoteUrl::parse(&gr.spec.url).map_err(Failure::Url)?;
    // Credentials are read afresh after a change or a failure, and when the remote refuses the
    // copy read last (a rotated Secret).
    let steady = plan.settled && state.applied_current(gr);
    let mut auth = credentials(ctx, gr, state, !steady).await?;
    let git_ref = gr.spec.git_ref();
    // In a steady state, what the remote told another GitRepository of the URL (with the same
    // credentials) within this one's interval is as good as asking: one ref check per URL and
    // interval. A reconcile asked for, or one after a failure, asks afresh.
    let reuse = steady.then(|| super::plan::interval(gr));
    let mut resolved = ctx
        .cache
        .resolve(&url, &auth, &git_ref, plan.timeout, reuse)
        .await;
    if steady && matches!(&resolved, Err(e) if e.reason() == Reason::AuthenticationFailed) {
        auth = credentials(ctx, gr, state, true).await?;
        resolved = ctx
            .cache
            .resolve(&url, &auth, &git_ref, plan.timeout, None)
            .await;
    }
    let resolved = resolved.map_err(Failure::Resolve)?;

    // Variables are read on every check, so a changed ConfigMap or Secret is applied too.
    let variables = variables(ctx, gr, state).await?;
    let variables_digest = variables.as_ref().map(digest_of);
    let unchanged = state.variables == variables_digest;
    if plan.up_to_date(
        status,
        state.applied_current(gr),
        unchanged,
        &resolved.revision,
    ) {
        return Ok(None);
    }
    Ok(Some(Source {
        url,
        auth,
        resolved,
        variables,
        variables_digest,
    }))
}

/// Fetches the commit (only when the cache lacks it) and checks it out, or shares the checkout
/// another GitRepository of the URL made of it; a checkout of its own when files are to be
/// decrypted in it.
pub(super) async fn checkout(
    ctx: &Context,
    gr: &GitRepository,
    source: &Source,
    plan: &Plan,
) -> Result<Checkout, Failure> {
    if gr.spec.decryption.is_some() {
        return check_out_into_new(ctx, gr, source, plan).await;
    }
    let slot = ctx.checkouts.slot(&source.url, &source.resolved);
    let mut slot = tokio::time::timeout(plan.timeout, slot.lock())
        .await
        .map_err(|_| {
            Failure::Checkout(crate::source::CheckError::Timeout {
                url: source.url.redacted().to_string(),
                timeout: plan.timeout,
            })
        })?;
    if let Some(shared) = slot.as_ref() {
        return Ok(shared.clone());
    }
    let checkout = check_out_into_new(ctx, gr, source, plan).await?;
    *slot = Some(checkout.clone());
    Ok(checkout)
}

async fn check_out_into_new(
    ctx: &Context,
    gr: &GitRepository,
    source: &Source,
    plan: &Plan,
) -> Result<Checkout, Failure> {
    let work = tempfile::tempdir_in(&ctx.work_dir).map_err(Failure::WorkDir)?;
    let started = Instant::now();
    let fetched = ctx
        .cache
        .checkout(
            &source.url,
            &source.auth,
            &source.resolved,
            work.path(),
            plan.timeout,
        )
        .await;
    ctx.metrics.fetched(
        &gr.namespace().unwrap_or_default(),
        &gr.name_any(),
        fetched.is_ok(),
        started.elapsed().as_secs_f64(),
    );
    let fetched = fetched.map_err(Failure::Checkout)?;
    Ok(Checkout {
        work: Arc::new(work),
        committed_at: fetched.committed_at,
        signatures: fetched.signatures,
    })
}

/// The credentials of `spec.secretRef`: the copy read last while it is fresh enough and `fresh`
/// is not asked for, so that a steady state reads no Secret; otherwise read as the
/// GitRepository's own identity, so a tenant cannot send a Secret its ServiceAccount may not read
/// to a URL of its choosing.
async fn credentials(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    fresh: bool,
) -> Result<Auth, Failure> {
    let Some(secret_ref) = &gr.spec.secret_ref else {
        return Ok(Auth::default());
    };
    let name = &secret_ref.name;
    if let (false, Some(auth)) = (fresh, state.credentials(name, CREDENTIALS_MAX_AGE)) {
        return Ok(auth.clone());
    }
    state.credentials = None;
    let client = ctx.reader_for(gr, state).map_err(Failure::Identity)?;
    let auth = read_credentials(&client, gr, name).await?;
    state.credentials = Some(Credentials {
        secret: name.clone(),
        auth: auth.clone(),
        read_at: Instant::now(),
    });
    Ok(auth)
}

/// The credentials in the Secret `name`, read by `client`.
async fn read_credentials(
    client: &Client,
    gr: &GitRepository,
    name: &str,
) -> Result<Auth, CredentialsError> {
    let data = read_secret(client, gr, name).await?;
    Auth::from_secret_data(&data).map_err(CredentialsError::Invalid)
}

/// The data of the Secret `name` in `gr`'s namespace, read by `client`.
pub(super) async fn read_secret(
    client: &Client,
    gr: &GitRepository,
    name: &str,
) -> Result<BTreeMap<String, Vec<u8>>, CredentialsError> {
    let namespace = gr.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
        .get_opt(name)
        .await
        .map_err(|error| CredentialsError::Read {
            name: name.to_string(),
            error,
        })?
        .ok_or_else(|| CredentialsError::NotFound {
            namespace: namespace.clone(),
            name: name.to_string(),
        })?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// The source step for `capstan diff`: the commit `gr`'s ref names now, checked out at `dest`,
/// with the credentials read by `client` (the user's own identity). Returns the revision.
pub async fn check_out(
    client: &Client,
    cache: &Cache,
    gr: &GitRepository,
    dest: &Path,
    timeout: Duration,
) -> Result<String, String> {
    let failed = |f: Failure| f.to_string();
    let url = RemoteUrl::parse(&gr.spec.url).map_err(|e| failed(Failure::Url(e)))?;
    let auth = match &gr.spec.secret_ref {
        Some(secret_ref) => read_credentials(client, gr, &secret_ref.name)
            .await
            .map_err(|e| failed(e.into()))?,
        None => Auth::default(),
    };
    let resolved = cache
        .resolve(&url, &auth, &gr.spec.git_ref(), timeout, None)
        .await
        .map_err(|e| failed(Failure::Resolve(e)))?;
    cache
        .checkout(&url, &auth, &resolved, dest, timeout)
        .await
        .map_err(|e| failed(Failure::Checkout(e)))?;
    Ok(resolved.revision)
}

/// `spec.postBuild`'s variables, read with the GitRepository's own identity (impersonation
/// included), so a tenant cannot read another's Secrets through Capstan.
async fn variables(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
) -> Result<Option<Variables>, Failure> {
    if gr.spec.post_build.is_none() {
        return Ok(None);
    }
    let client = ctx.reader_for(gr, state).map_err(Failure::Identity)?;
    read_variables(&client, gr, &gr.namespace().unwrap_or_default())
        .await
        .map_err(Failure::Variables)
}

/// Why the `postBuild` variables could not be read.
#[derive(Debug)]
pub struct VariablesError {
    pub message: String,
    /// Worth retrying: the API server failed, or an object may yet appear.
    pub transient: bool,
}

impl VariablesError {
    fn transient(message: String) -> Self {
        VariablesError {
            message,
            transient: true,
        }
    }

    fn lasting(message: String) -> Self {
        VariablesError {
            message,
            transient: false,
        }
    }
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
    let mut variables = Variables::new();
    for from in &post_build.substitute_from {
        let what = format!("{:?} {namespace}/{}", from.kind, from.name);
        match read_one(client, namespace, from.kind, &from.name, &what).await? {
            Some(data) => variables.extend(data),
            None if from.optional => {}
            None => {
                return Err(VariablesError::transient(format!(
                    "postBuild.substituteFrom: {what} not found (mark it optional if it may be missing)"
                )));
            }
        }
    }
    variables.extend(post_build.substitute.clone());
    if let Some(bad) = variables.keys().find(|k| !render::is_variable_name(k)) {
        return Err(VariablesError::lasting(format!(
            "postBuild: {bad:?} is not a valid variable name (letters, digits and '_', not starting with a digit)"
        )));
    }
    Ok(Some(variables))
}

/// The data of one ConfigMap or Secret of `substituteFrom`; `None` when it does not exist.
async fn read_one(
    client: &Client,
    namespace: &str,
    kind: SubstituteKind,
    name: &str,
    what: &str,
) -> Result<Option<BTreeMap<String, String>>, VariablesError> {
    let failed = |e: kube::Error| {
        VariablesError::transient(format!("postBuild.substituteFrom: reading {what}: {e}"))
    };
    if kind == SubstituteKind::ConfigMap {
        let found = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(failed)?;
        return Ok(found.map(|cm| cm.data.unwrap_or_default()));
    }
    let Some(secret) = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(failed)?
    else {
        return Ok(None);
    };
    let mut data = BTreeMap::new();
    for (key, value) in secret.data.unwrap_or_default() {
        let value = String::from_utf8(value.0).map_err(|_| {
            VariablesError::lasting(format!(
                "postBuild.substituteFrom: {what}: the value of {key:?} is not UTF-8"
            ))
        })?;
        data.insert(key, value);
    }
    Ok(Some(data))
}

fn digest_of(variables: &Variables) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    variables.hash(&mut hasher);
    hasher.finish()
}
