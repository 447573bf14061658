//! `capstan render`: what the controller would apply for a directory, offline.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::CliError;
use crate::api::GitRepository;
use crate::reconcile;
use crate::render::{self, HelmOptions, Manifest, RenderError, Variables};
use crate::runtime::RenderConfig;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// YAML documents, each headed by a `# Source:` comment.
    #[default]
    Yaml,
    /// One `v1` `List`.
    Json,
}

/// `capstan render`: what the controller would apply for a directory, rendered offline.
#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// The directory to render, as `spec.path` would name it.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The repository root: nothing outside it may be read. Defaults to the git work tree that
    /// holds DIR; outside a work tree, DIR itself (so bases in `../` need `--root`).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// A GitRepository manifest whose `ignore`, `helm`, `targetNamespace` and
    /// `postBuild.substitute` apply, as the controller would use them.
    #[arg(short = 'f', long = "gitrepository")]
    pub gitrepository: Option<PathBuf>,
    /// A variable to substitute, as in `postBuild.substitute` (repeatable). Values of
    /// `postBuild.substituteFrom` objects are given this way, since they live in the cluster.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// Deadline for a render tool, e.g. `60s`.
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub render: RenderConfig,
}

pub fn render(args: &RenderArgs, out: &mut impl Write) -> Result<(), CliError> {
    let gr = match &args.gitrepository {
        Some(file) => Some(read_gitrepository(file)?),
        None => None,
    };
    let mut variables: Option<Variables> = None;
    if let Some(post_build) = gr.as_ref().and_then(|gr| gr.spec.post_build.as_ref()) {
        if !post_build.substitute_from.is_empty() {
            eprintln!(
                "capstan render: postBuild.substituteFrom is read from the cluster by the controller; give its variables with --var"
            );
        }
        variables = Some(post_build.substitute.clone());
    }
    for var in &args.vars {
        let (name, value) = var
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--var {var:?}: expected NAME=VALUE")))?;
        variables
            .get_or_insert_with(BTreeMap::new)
            .insert(name.to_string(), value.to_string());
    }
    let timeout = reconcile::parse_duration(&args.timeout)
        .ok_or_else(|| CliError::Usage(format!("invalid --timeout {:?}", args.timeout)))?;
    let manifests = render_tree(
        &args.dir,
        args.root.as_deref(),
        gr.as_ref(),
        variables.as_ref(),
        &args.render,
        timeout,
    )?;
    write_manifests(&manifests, args.output, out)?;
    Ok(())
}

/// Renders the directory `dir` of a local tree as the controller would for `gr` (its `ignore`,
/// `helm` and target namespace), inside `root` (default: the git work tree holding `dir`).
pub fn render_tree(
    dir: &Path,
    root: Option<&Path>,
    gr: Option<&GitRepository>,
    variables: Option<&Variables>,
    config: &RenderConfig,
    timeout: Duration,
) -> Result<Vec<Manifest>, CliError> {
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| CliError::Usage(format!("{}: {e}", dir.display())))?;
    let work_tree = || {
        git2::Repository::discover(&dir)
            .ok()
            .and_then(|repo| repo.workdir().and_then(|w| std::fs::canonicalize(w).ok()))
    };
    let (root, own_root) = match root {
        Some(root) => (
            std::fs::canonicalize(root)
                .map_err(|e| CliError::Usage(format!("{}: {e}", root.display())))?,
            false,
        ),
        None => match work_tree() {
            Some(root) => (root, false),
            None => (dir.clone(), true),
        },
    };
    let path = dir.strip_prefix(&root).map_err(|_| {
        CliError::Usage(format!(
            "{} is not inside the root {}",
            dir.display(),
            root.display()
        ))
    })?;
    let helm = match gr {
        Some(gr) => reconcile::helm_options(gr),
        None => HelmOptions {
            release_name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "release".into()),
            namespace: "default".into(),
            ..HelmOptions::default()
        },
    };
    render::render(
        &root,
        &render::Options {
            path: path.to_str().filter(|p| !p.is_empty()),
            ignore: gr.and_then(|gr| gr.spec.ignore.as_deref()),
            helm,
            variables,
            limits: config.limits(),
            tools: config.tools(),
            timeout,
            // Offline: the keys are in the cluster.
            decryption: None,
        },
    )
    .map_err(|e| match e {
        // Outside a work tree, DIR is its own root: say so, and how to give the real one.
        RenderError::Reference { .. }
        | RenderError::PathEscapes { .. }
        | RenderError::SymlinkEscapes { .. }
            if own_root =>
        {
            CliError::Usage(format!(
                "{e}\n{} is not in a git work tree, so it is the root and nothing outside it may be read: give the repository's top directory with --root",
                dir.display(),
            ))
        }
        e => e.into(),
    })
}

fn read_gitrepository(file: &Path) -> Result<GitRepository, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    serde_saphyr::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{}: not a GitRepository manifest: {e}",
            file.display()
        ))
    })
}

fn write_manifests(
    manifests: &[Manifest],
    output: Output,
    out: &mut impl Write,
) -> Result<(), CliError> {
    match output {
        Output::Json => {
            let list = serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "items": manifests.iter().map(|m| &m.object).collect::<Vec<_>>(),
            });
            serde_json::to_writer_pretty(&mut *out, &list).map_err(std::io::Error::other)?;
            writeln!(out)?;
        }
        Output::Yaml => {
            for manifest in manifests {
                let yaml = serde_saphyr::to_string(&manifest.object)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                write!(out, "---\n# Source: {}\n{yaml}", manifest.source)?;
                if !yaml.ends_with('\n') {
                    writeln!(out)?;
                }
            }
        }
    }
    Ok(())
}
