//! Render: the checkout at `spec.path` -> the objects to apply (pure; the external tools run
//! with a deadline), off the async runtime.

use std::path::Path;
use std::time::Duration;

use kube::ResourceExt;

use super::Context;
use super::failure::{BuildError, Failure};
use super::fetch::{Checkout, Source};
use super::plan::Plan;
use crate::api::GitRepository;
use crate::render::{self, HelmOptions, Limits, Manifest, RenderError, Tools, Variables};

/// Renders the checkout. The checkout directory is deleted by the blocking task once the render
/// is done with it, even when the reconcile stopped waiting at the deadline.
pub(super) async fn render(
    ctx: &Context,
    gr: &GitRepository,
    source: &Source,
    checkout: Checkout,
    plan: &Plan,
) -> Result<Vec<Manifest>, Failure> {
    let timeout = plan.timeout;
    let build = Build::of(
        gr,
        source.variables.clone(),
        ctx.limits,
        ctx.tools.clone(),
        timeout,
    );
    let task = tokio::task::spawn_blocking(move || {
        let rendered = build.render(checkout.work.path());
        drop(checkout);
        rendered
    });
    // The tools stop themselves at `timeout`; this bounds the rest of the work.
    let rendered = tokio::time::timeout(timeout + Duration::from_secs(5), task)
        .await
        .map_err(|_| BuildError::Timeout(timeout))?
        .map_err(|e| BuildError::Crashed(e.to_string()))?;
    Ok(rendered.map_err(|error| BuildError::Render {
        revision: source.resolved.revision.clone(),
        error,
    })?)
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
        }
    }

    /// The objects of the checkout at `root`. Blocking.
    pub fn render(&self, root: &Path) -> Result<Vec<Manifest>, RenderError> {
        render::render(
            root,
            &render::Options {
                path: self.path.as_deref(),
                ignore: self.ignore.as_deref(),
                helm: self.helm.clone(),
                variables: self.variables.as_ref(),
                limits: self.limits,
                tools: self.tools.clone(),
                timeout: self.timeout,
            },
        )
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
