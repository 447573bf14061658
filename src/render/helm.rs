//! Helm charts: `helm template` on the chart directory, with the values files of the repository
//! (which must lie inside the checkout) and the inline values. Dependencies must be vendored in
//! `charts/`: helm runs with no route to the network, and a chart that needs it fails with helm's
//! own message. Hooks (and so chart tests) are left out: Capstan has no install or upgrade
//! phases to run them in, and applying them as plain objects would re-run jobs meant to run once.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::tool::{self, Invocation};
use super::walk::{self, Resolved};
use super::{Limits, RenderError};

/// How a chart is rendered: the release it is rendered as, and its values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HelmOptions {
    pub release_name: String,
    pub namespace: String,
    /// Inline values, merged over the values files.
    pub values: Option<Value>,
    /// Values files relative to the chart directory, merged in order.
    pub values_files: Vec<String>,
}

/// The values files of `options`, each checked to be a file inside the checkout.
pub(super) fn values_files(
    dir: &Resolved,
    options: &HelmOptions,
) -> Result<Vec<std::path::PathBuf>, RenderError> {
    options
        .values_files
        .iter()
        .map(|file| {
            let escapes = || RenderError::PathEscapes { path: file.clone() };
            walk::resolve_reference(&dir.root, &dir.dir, file, escapes)?
                .filter(|p| p.is_file())
                .ok_or_else(|| RenderError::ValuesFileNotFound { path: file.clone() })
        })
        .collect()
}

pub(super) fn template(
    dir: &Resolved,
    program: &Path,
    options: &HelmOptions,
    limits: &Limits,
    timeout: Duration,
) -> Result<String, RenderError> {
    // The chart's own files; values files are checked one by one below.
    walk::check_symlinks(&dir.root, &dir.dir)?;
    let mut args: Vec<OsString> = vec![
        "template".into(),
        "--namespace".into(),
        options.namespace.clone().into(),
        "--include-crds".into(),
        "--no-hooks".into(),
    ];
    for path in values_files(dir, options)? {
        args.push("--values".into());
        args.push(path.into());
    }
    let home = tempfile::tempdir().map_err(|e| RenderError::Io {
        path: "temporary directory".into(),
        message: e.to_string(),
    })?;
    if let Some(values) = &options.values {
        // JSON is YAML: the inline values go in as the last values file, outside the checkout.
        let path = home.path().join("inline-values.json");
        std::fs::write(&path, values.to_string()).map_err(|e| RenderError::Io {
            path: "inline values".into(),
            message: e.to_string(),
        })?;
        args.push("--values".into());
        args.push(path.into());
    }
    // After `--`, a release name (or path) that starts with `-` cannot pass for a flag.
    args.push("--".into());
    args.push(options.release_name.clone().into());
    args.push(OsString::from(&dir.dir));
    tool::run(Invocation {
        tool: "helm",
        program,
        args,
        root: &dir.root,
        home: home.path(),
        env: Vec::new(),
        timeout,
        max_output: limits.max_total_bytes,
    })
}
