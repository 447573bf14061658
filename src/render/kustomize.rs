//! Kustomize overlays: `kustomize build` on the directory, after checking that nothing the build
//! reads lies outside the checkout or on the network.
//!
//! kustomize's own load restrictor keeps the files a kustomization reads (patches, generator
//! inputs) inside that kustomization's directory, but lets it name other directories as bases
//! anywhere. So, before the tool runs, the kustomization at the path is read, and every
//! kustomization it reaches through its references, transitively: each directory or file they
//! name must exist inside the checkout, and no symlink in the directories reached may leave it.
//! Nothing else in the checkout is looked at: in a monorepo, one app's files never fail another
//! app's build. Remote bases and resources are refused there, and the tool runs with no route to
//! the network besides. Plugins stay disabled: the flags that enable exec and KRM functions are
//! never passed.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::parse::{self, Format};
use super::tool::{self, Invocation};
use super::walk::{self, Resolved};
use super::{Limits, RenderError};

/// Fields of a kustomization that name other files or directories, which may lie outside its
/// own directory.
const REFERENCE_FIELDS: &[&str] = &[
    "resources",
    "bases",
    "components",
    "generators",
    "transformers",
    "validators",
    "crds",
    "configurations",
];

pub(super) fn build(
    dir: &Resolved,
    program: &Path,
    limits: &Limits,
    timeout: Duration,
) -> Result<String, RenderError> {
    check_reachable(&dir.root, &dir.dir, limits)?;
    let home = tempfile::tempdir().map_err(|e| RenderError::Io {
        path: "temporary directory".into(),
        message: e.to_string(),
    })?;
    tool::run(Invocation {
        tool: "kustomize",
        program,
        args: vec![
            "build".into(),
            OsString::from(&dir.dir),
            "--load-restrictor".into(),
            "LoadRestrictionsRootOnly".into(),
        ],
        root: &dir.root,
        home: home.path(),
        env: Vec::new(),
        timeout,
        max_output: limits.max_total_bytes,
    })
}

/// Checks what `kustomize build start` reads: the kustomization there and, breadth first, every
/// directory its references lead to. Returns those directories.
pub(super) fn check_reachable(
    root: &Path,
    start: &Path,
    limits: &Limits,
) -> Result<BTreeSet<PathBuf>, RenderError> {
    let mut queue = VecDeque::from([start.to_path_buf()]);
    let mut seen = BTreeSet::new();
    while let Some(dir) = queue.pop_front() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        walk::check_symlinks(root, &dir)?;
        // A directory without a kustomization is kustomize's to report.
        let Some(file) = walk::kustomization_in(&dir) else {
            continue;
        };
        queue.extend(
            references(root, &file, limits)?
                .into_iter()
                .filter(|target| target.is_dir()),
        );
    }
    Ok(seen)
}

/// Where the entries of a kustomization's reference fields lead, each checked to exist inside
/// the checkout.
fn references(root: &Path, file: &Path, limits: &Limits) -> Result<Vec<PathBuf>, RenderError> {
    let rel = walk::rel_string(root, file);
    let source = walk::SourceFile {
        rel: rel.clone(),
        path: file.to_path_buf(),
        format: Format::Yaml,
    };
    let bytes = walk::read_capped(&source, limits)?;
    let base = file.parent().unwrap_or(root);
    let mut targets = Vec::new();
    for document in parse::documents(&rel, &bytes, Format::Yaml, limits, None)? {
        for field in REFERENCE_FIELDS {
            let Some(Value::Array(entries)) = document.get(*field) else {
                continue;
            };
            for entry in entries.iter().filter_map(Value::as_str) {
                let problem = |kind| RenderError::Reference {
                    file: rel.clone(),
                    entry: entry.to_string(),
                    problem: kind,
                };
                match walk::resolve_reference(root, base, entry, || problem(REF_ESCAPES))? {
                    Some(target) => targets.push(target),
                    None => return Err(problem(REF_MISSING)),
                }
            }
        }
    }
    Ok(targets)
}

const REF_ESCAPES: &str = "resolves outside the repository";
const REF_MISSING: &str = "is not in the repository; remote bases and resources are refused: vendor them into the repository";
