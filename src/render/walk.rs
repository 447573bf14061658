//! Finding the manifest files: resolving `spec.path` inside the checkout, walking it with the
//! ignore patterns, refusing symlinks that leave the checkout, and enforcing the size limits
//! before anything is read.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use ignore::WalkBuilder;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::parse::Format;
use super::{Limits, RenderError};

/// The directory to render, after normalisation and symlink resolution.
pub(super) struct Resolved {
    /// The checkout root, canonicalized.
    pub root: PathBuf,
    /// The directory to render, canonicalized; always inside `root`.
    pub dir: PathBuf,
    /// `spec.path` as the user should read it in messages: `deploy/prod`, or `.` for the root.
    pub display: String,
}

/// One manifest file to read.
pub(super) struct SourceFile {
    /// Path relative to the checkout root, `/`-separated: what messages and sources show.
    pub rel: String,
    pub path: PathBuf,
    pub format: Format,
}

pub(super) fn resolve(root: &Path, path: Option<&str>) -> Result<Resolved, RenderError> {
    let raw = path.unwrap_or("");
    let escapes = || RenderError::PathEscapes {
        path: raw.to_string(),
    };
    // Lexical check first: `..` that climbs above the root is refused even when the target
    // does not exist, so the answer never depends on what lies outside the checkout.
    let mut depth = 0usize;
    let mut parts: Vec<String> = Vec::new();
    let mut rel = PathBuf::new();
    for component in Path::new(raw).components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => {
                depth += 1;
                parts.push(part.to_string_lossy().into_owned());
                rel.push(part);
            }
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or_else(escapes)?;
                parts.push("..".to_string());
                rel.push("..");
            }
            Component::RootDir | Component::Prefix(_) => return Err(escapes()),
        }
    }
    let display = if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    };

    let root = fs::canonicalize(root).map_err(|e| io_error(root, &e))?;
    // `..` stays in `rel` so the OS resolves it after any symlink, as `cd` would.
    let dir = match fs::canonicalize(root.join(&rel)) {
        Ok(dir) => dir,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Err(RenderError::PathNotFound { path: display });
        }
        Err(e) => return Err(io_error(&root.join(&rel), &e)),
    };
    if !dir.starts_with(&root) {
        return Err(escapes());
    }
    let meta = fs::metadata(&dir).map_err(|e| io_error(&dir, &e))?;
    if !meta.is_dir() {
        return Err(RenderError::NotADirectory { path: display });
    }
    Ok(Resolved { root, dir, display })
}

/// Left out before the spec's own patterns, which may bring them back (`!.config/`): hidden files
/// and directories (`.github/workflows/*.yml` are not manifests).
const DEFAULT_IGNORE: &str = ".*";

fn build_ignore(dir: &Path, patterns: Option<&str>) -> Result<Gitignore, RenderError> {
    let mut builder = GitignoreBuilder::new(dir);
    builder
        .add_line(None, DEFAULT_IGNORE)
        .map_err(|e| RenderError::InvalidIgnore {
            message: e.to_string(),
        })?;
    for (i, line) in patterns.unwrap_or("").lines().enumerate() {
        builder
            .add_line(None, line)
            .map_err(|e| RenderError::InvalidIgnore {
                message: format!("line {}: {e}", i + 1),
            })?;
    }
    builder.build().map_err(|e| RenderError::InvalidIgnore {
        message: e.to_string(),
    })
}

/// Lists the manifest files under `dir.dir`, sorted by their path bytes, after checking every
/// symlink met and the file count and size limits. Nothing is read yet.
pub(super) fn manifest_files(
    dir: &Resolved,
    ignore: Option<&str>,
    limits: &Limits,
) -> Result<Vec<SourceFile>, RenderError> {
    let matcher = Arc::new(build_ignore(&dir.dir, ignore)?);
    let base = dir.dir.clone();
    let mut walker = WalkBuilder::new(&dir.dir);
    walker
        // Only the default and the spec's patterns count, never the machine's or the repo's own
        // ignore files.
        .standard_filters(false)
        .follow_links(false)
        // Sorted so that the first limit error met is the same on every run.
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(move |entry| keep_entry(entry, &base, &matcher));

    let mut files = Vec::new();
    let mut total: u64 = 0;
    for entry in walker.build() {
        let entry = entry.map_err(|e| RenderError::Io {
            path: dir.display.clone(),
            message: e.to_string(),
        })?;
        let Some((rel, format)) = manifest_entry(&dir.root, &entry)? else {
            continue;
        };
        if files.len() >= limits.max_files {
            return Err(RenderError::TooManyFiles {
                limit: limits.max_files,
            });
        }
        let path = entry.path();
        let size = file_size(path, &rel, limits)?;
        total = total.saturating_add(size);
        if total > limits.max_total_bytes {
            return Err(RenderError::TooLarge {
                size: total,
                limit: limits.max_total_bytes,
            });
        }
        files.push(SourceFile {
            rel,
            path: path.to_path_buf(),
            format,
        });
    }
    // Whole-path byte order, not the walk's per-directory order: `a.yaml` sorts before `a/b.yaml`
    // the same way everywhere the list is compared or shown.
    files.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_encoded_bytes()
            .cmp(b.path.as_os_str().as_encoded_bytes())
    });
    Ok(files)
}

/// A walked entry that is a manifest file (or a link to one inside the repository): its path
/// relative to the root and its format. Directories, links to them, and other files are not.
fn manifest_entry(
    root: &Path,
    entry: &ignore::DirEntry,
) -> Result<Option<(String, Format)>, RenderError> {
    let Some(file_type) = entry.file_type().filter(|_| entry.depth() > 0) else {
        return Ok(None);
    };
    let path = entry.path();
    let rel = rel_string(root, path);
    let format = Format::of(path);
    if file_type.is_symlink() {
        match check_symlink(root, path, &rel)? {
            LinkTarget::File => {}
            // Directory links are not followed: what they point at is rendered (or not)
            // through its own path, and following them could loop or duplicate objects.
            LinkTarget::Dir => return Ok(None),
            LinkTarget::Dangling if format.is_some() => {
                return Err(RenderError::Io {
                    path: rel,
                    message: "symlink target does not exist".to_string(),
                });
            }
            LinkTarget::Dangling => return Ok(None),
        }
    } else if file_type.is_dir() {
        return Ok(None);
    }
    Ok(format.map(|format| (rel, format)))
}

/// The size of a manifest file, refused when it is not a regular file or over the limit.
fn file_size(path: &Path, rel: &str, limits: &Limits) -> Result<u64, RenderError> {
    let meta = fs::metadata(path).map_err(|e| rel_io_error(rel, &e))?;
    if !meta.is_file() {
        // A FIFO or device would block or never end when read.
        return Err(RenderError::Io {
            path: rel.to_string(),
            message: "not a regular file".to_string(),
        });
    }
    let size = meta.len();
    if size > limits.max_file_bytes {
        return Err(RenderError::FileTooLarge {
            file: rel.to_string(),
            size,
            limit: limits.max_file_bytes,
        });
    }
    Ok(size)
}

fn keep_entry(entry: &ignore::DirEntry, base: &Path, matcher: &Gitignore) -> bool {
    if entry.depth() == 0 {
        return true;
    }
    if entry.file_name() == ".git" {
        return false;
    }
    let Ok(rel) = entry.path().strip_prefix(base) else {
        return true;
    };
    let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
    !matcher.matched(rel, is_dir).is_ignore()
}

enum LinkTarget {
    File,
    Dir,
    Dangling,
}

/// Refuses a symlink that resolves outside the checkout: following it would read (and apply)
/// files of the operator's own filesystem.
fn check_symlink(root: &Path, link: &Path, rel: &str) -> Result<LinkTarget, RenderError> {
    let escapes = || RenderError::SymlinkEscapes {
        file: rel.to_string(),
    };
    match fs::canonicalize(link) {
        Ok(target) => {
            if !target.starts_with(root) {
                return Err(escapes());
            }
            let meta = fs::metadata(&target).map_err(|e| rel_io_error(rel, &e))?;
            Ok(if meta.is_dir() {
                LinkTarget::Dir
            } else {
                LinkTarget::File
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A dangling link cannot be canonicalized; judge where it points lexically.
            let target = fs::read_link(link).map_err(|e| rel_io_error(rel, &e))?;
            let parent = link.parent().unwrap_or(root);
            if !lexical_normalize(&parent.join(target)).starts_with(root) {
                return Err(escapes());
            }
            Ok(LinkTarget::Dangling)
        }
        Err(e) => Err(rel_io_error(rel, &e)),
    }
}

fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Reads a listed file, never more than the per-file limit even if it grew since it was listed.
pub(super) fn read_capped(file: &SourceFile, limits: &Limits) -> Result<Vec<u8>, RenderError> {
    let opened = fs::File::open(&file.path).map_err(|e| rel_io_error(&file.rel, &e))?;
    let mut bytes = Vec::new();
    opened
        .take(limits.max_file_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| rel_io_error(&file.rel, &e))?;
    let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if size > limits.max_file_bytes {
        return Err(RenderError::FileTooLarge {
            file: file.rel.clone(),
            size,
            limit: limits.max_file_bytes,
        });
    }
    Ok(bytes)
}

/// A path of the checkout as messages show it: relative to the root, `/`-separated.
pub(super) fn rel_string(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<_> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

fn io_error(path: &Path, e: &io::Error) -> RenderError {
    RenderError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn rel_io_error(rel: &str, e: &io::Error) -> RenderError {
    RenderError::Io {
        path: rel.to_string(),
        message: e.to_string(),
    }
}

/// Kustomization file names, in the order kustomize looks for them.
pub(super) const KUSTOMIZATION_FILES: &[&str] =
    &["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Checks a directory a render tool will read, before it runs: every symlink under `dir`, and
/// under the directories such links lead to, must resolve inside the checkout at `root`. Only
/// what the tool may read is looked at, so an escaping link elsewhere in a monorepo never fails
/// another app.
pub(super) fn check_symlinks(root: &Path, dir: &Path) -> Result<(), RenderError> {
    let mut pending = vec![dir.to_path_buf()];
    let mut walked = std::collections::HashSet::new();
    while let Some(dir) = pending.pop() {
        if !walked.insert(dir.clone()) {
            continue;
        }
        let mut walker = WalkBuilder::new(&dir);
        walker
            .standard_filters(false)
            .follow_links(false)
            .sort_by_file_name(|a, b| a.cmp(b))
            .filter_entry(|entry| entry.file_name() != ".git");
        for entry in walker.build() {
            let entry = entry.map_err(|e| RenderError::Io {
                path: rel_string(root, &dir),
                message: e.to_string(),
            })?;
            if !entry.file_type().is_some_and(|t| t.is_symlink()) {
                continue;
            }
            let rel = rel_string(root, entry.path());
            if let LinkTarget::Dir = check_symlink(root, entry.path(), &rel)? {
                // The tool follows it: what lies there is read too.
                pending.push(fs::canonicalize(entry.path()).map_err(|e| rel_io_error(&rel, &e))?);
            }
        }
    }
    Ok(())
}

/// The kustomization file of `dir`, if it has one.
pub(super) fn kustomization_in(dir: &Path) -> Option<PathBuf> {
    KUSTOMIZATION_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|file| file.symlink_metadata().is_ok())
}

/// Where a reference written in a file of the checkout leads: `Ok(None)` when nothing is there.
/// A reference that leaves the checkout, through `..` or a symlink, is an error.
pub(super) fn resolve_reference(
    root: &Path,
    base: &Path,
    reference: &str,
    escapes: impl Fn() -> RenderError,
) -> Result<Option<PathBuf>, RenderError> {
    let target = base.join(reference);
    match fs::canonicalize(&target) {
        Ok(target) if target.starts_with(root) => Ok(Some(target)),
        Ok(_) => Err(escapes()),
        Err(_) if lexical_normalize(&target).starts_with(root) => Ok(None),
        Err(_) => Err(escapes()),
    }
}
