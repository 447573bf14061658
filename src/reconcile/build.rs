//! Render: the checkout at `spec.path` -> the objects to apply (pure; the external tools run
//! with a deadline), off the async runtime; SOPS-encrypted files decrypted first.

use std::path::Path;
use std::time::Duration;

use kube::ResourceExt;

use super::Context;
use super::failure::{BuildError, Failure};
use super::fetch::{Checkout, Source, read_secret};
use super::plan::Plan;
use super::state::State;
use crate::api::GitRepository;
use crate::render::{
    self, Decryption, HelmOptions, Limits, Manifest, RenderError, Tools, Variables,
};

/// Renders the checkout.
pub(super) async fn render(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    source: &Source,
    checkout: Checkout,
    plan: &Plan,
) -> Result<Rendered, Failure> {
    let timeout = plan.timeout;
    let mut build = Build::of(
        gr,
        source.variables.clone(),
        ctx.limits,
        ctx.tools.clone(),
        timeout,
    );
    build.decryption = decryption_keys(ctx, gr, state).await?;
    // The tools stop themselves at `timeout`; this bounds the rest of the work.
    let rendered = render_within(build, checkout, timeout + Duration::from_secs(5)).await?;
    let (manifests, reads) = rendered.map_err(|error| BuildError::Render {
        revision: source.resolved.revision.clone(),
        error,
    })?;
    Ok(Rendered { manifests, reads })
}

/// The objects of a revision, and what rendering them read (see `render::reads`).
pub(super) struct Rendered {
    pub manifests: Vec<Manifest>,
    pub reads: Option<Vec<String>>,
}

/// The keys of `spec.decryption`, read as the GitRepository's own identity, and only when a
/// revision is rendered: a steady state reads nothing.
async fn decryption_keys(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
) -> Result<Option<Decryption>, Failure> {
    let Some(spec) = &gr.spec.decryption else {
        return Ok(None);
    };
    let client = ctx.reader_for(gr, state).map_err(Failure::Identity)?;
    let name = &spec.secret_ref.name;
    let data = read_secret(&client, gr, name)
        .await
        .map_err(Failure::DecryptionSecret)?;
    Decryption::from_secret_data(&data)
        .map(Some)
        .map_err(|e| Failure::DecryptionKeys(format!("decryption secret {name}: {e}")))
}

/// Renders off the async runtime, waiting at most `wait`. The blocking task owns the checkout
/// and deletes it once the render is done with it, also when the wait ended first.
type Reads = Option<Vec<String>>;

async fn render_within(
    build: Build,
    checkout: Checkout,
    wait: Duration,
) -> Result<Result<(Vec<Manifest>, Reads), RenderError>, BuildError> {
    let timeout = build.timeout;
    let task = tokio::task::spawn_blocking(move || {
        let root = checkout.work.path();
        let rendered = build
            .render(root)
            .map(|manifests| (manifests, build.reads(root)));
        drop(checkout);
        rendered
    });
    tokio::time::timeout(wait, task)
        .await
        .map_err(|_| BuildError::Timeout(timeout))?
        .map_err(|e| BuildError::Crashed(e.to_string()))
}

/// How a GitRepository's checkout is rendered: `spec.path`, `spec.ignore`, the Helm release, the
/// variables, the tools and limits. The controller and `capstan diff` render through this.
pub struct Build {
    path: Option<String>,
    ignore: Option<String>,
    helm: HelmOptions,
    variables: Option<Variables>,
    limits: Limits,
    tools: Tools,
    timeout: Duration,
    /// The keys that decrypt SOPS-encrypted files; none decrypts nothing.
    pub decryption: Option<Decryption>,
}

impl Build {
    pub fn of(
        gr: &GitRepository,
        variables: Option<Variables>,
        limits: Limits,
        tools: Tools,
        timeout: Duration,
    ) -> Build {
        Build {
            path: gr.spec.path.clone(),
            ignore: gr.spec.ignore.clone(),
            helm: helm_options(gr),
            variables,
            limits,
            tools,
            timeout,
            decryption: None,
        }
    }

    /// The objects of the checkout at `root`. Blocking.
    pub fn render(&self, root: &Path) -> Result<Vec<Manifest>, RenderError> {
        render::render(root, &self.options())
    }

    /// What rendering the checkout at `root` reads (see `render::reads`). Blocking.
    fn reads(&self, root: &Path) -> Reads {
        render::reads(root, &self.options())
    }

    fn options(&self) -> render::Options<'_> {
        render::Options {
            path: self.path.as_deref(),
            ignore: self.ignore.as_deref(),
            helm: self.helm.clone(),
            variables: self.variables.as_ref(),
            limits: self.limits,
            tools: self.tools.clone(),
            timeout: self.timeout,
            decryption: self.decryption.as_ref(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A GitRepository rendering `app/` with kustomize.
    fn kustomized() -> GitRepository {
        crate::git_repository(serde_json::json!({
            "metadata": {"name": "app", "namespace": "shop"},
            "spec": {"url": "https://git.example/app.git", "interval": "1m", "path": "app"}
        }))
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn a_render_that_outlasts_the_wait_keeps_its_checkout_until_it_is_done() {
        let tools_dir = tempfile::tempdir().unwrap();
        let seen = tools_dir.path().join("seen");
        let go = tools_dir.path().join("go");
        // A kustomize that waits for the test's signal, then records whether its input is
        // still there.
        let kustomize = tools_dir.path().join("kustomize");
        std::fs::write(
            &kustomize,
            format!(
                "#!/bin/sh\nwhile [ ! -e {go} ]; do /bin/sleep 0.02; done\n\
                 if [ -f \"$2/kustomization.yaml\" ]; then echo present; else echo missing; fi > {seen}\n",
                go = go.display(),
                seen = seen.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&kustomize, std::fs::Permissions::from_mode(0o755)).unwrap();

        let work = tempfile::tempdir().unwrap();
        std::fs::create_dir(work.path().join("app")).unwrap();
        std::fs::write(
            work.path().join("app/kustomization.yaml"),
            "resources: []\n",
        )
        .unwrap();
        let root = work.path().to_path_buf();
        let tools = Tools {
            kustomize,
            ..Tools::default()
        };
        let build = Build::of(
            &kustomized(),
            None,
            Limits::default(),
            tools,
            Duration::from_secs(30),
        );
        let checkout = Checkout {
            work: std::sync::Arc::new(work),
            committed_at: 0,
            signatures: Default::default(),
        };

        let waited = render_within(build, checkout, Duration::from_millis(50)).await;
        assert!(matches!(waited, Err(BuildError::Timeout(_))), "{waited:?}");
        assert!(root.exists(), "the checkout outlives the wait");

        std::fs::write(&go, "").unwrap();
        wait_for("the render finishes", || seen.exists() && !root.exists());
        assert_eq!(std::fs::read_to_string(&seen).unwrap(), "present\n");
    }
}
