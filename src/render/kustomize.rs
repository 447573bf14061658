//! Kustomize overlays: `kustomize build` on the directory, after checking that nothing the
//! repository's kustomizations reference lies outside the checkout or on the network.
//!
//! kustomize's own load restrictor keeps the files a kustomization reads (patches, generator
//! inputs) inside that kustomization's directory, but lets it name other directories as bases
//! anywhere. So every kustomization file in the checkout is read first, and each directory or
//! file it references must exist inside the checkout. Remote bases and resources are refused
//! there, and the tool runs with no route to the network besides. Plugins stay disabled: the
//! flags that enable exec and KRM functions are never passed.

use std::ffi::OsString;
use std::path::Path;
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
    for file in walk::check_tree(&dir.root)? {
        check_references(&dir.root, &file, limits)?;
    }
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
        timeout,
        max_output: limits.max_total_bytes,
    })
}

fn check_references(root: &Path, file: &Path, limits: &Limits) -> Result<(), RenderError> {
    let rel = walk::rel_string(root, file);
    let source = walk::SourceFile {
        rel: rel.clone(),
        path: file.to_path_buf(),
        format: Format::Yaml,
    };
    let bytes = walk::read_capped(&source, limits)?;
    let base = file.parent().unwrap_or(root);
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
                if walk::resolve_reference(root, base, entry, || problem(REF_ESCAPES))?.is_none() {
                    return Err(problem(REF_MISSING));
                }
            }
        }
    }
    Ok(())
}

const REF_ESCAPES: &str = "resolves outside the repository";
const REF_MISSING: &str = "is not in the repository; remote bases and resources are refused: vendor them into the repository";
