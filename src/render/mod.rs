//! Render stage: turns a checked-out directory into the ordered list of Kubernetes objects to apply.
//! It is pure: it reads files under the checkout and nothing else, and never sees a kube Client,
//! the network or the cluster; what to do with the objects is decided downstream.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod decrypt;
mod helm;
mod kustomize;
mod objects;
mod parse;
mod substitute;
mod tool;
mod walk;

pub use decrypt::Decryption;
pub use helm::HelmOptions;
pub use substitute::{Variables, is_variable_name, substitute};
pub use tool::Tools;

#[cfg(test)]
mod tests;

/// 4 MiB per file: far above any hand-written manifest, and checked before a byte is read, so one
/// huge generated file cannot make the operator allocate without bound.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// 64 MiB for the whole render: the parsed objects are held in memory at once.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;
/// 10,000 manifest files: more than that is almost surely the wrong `spec.path`.
pub const DEFAULT_MAX_FILES: usize = 10_000;
/// YAML nesting depth 64: real manifests (CRD schemas included) stay well below; deeper input is
/// a stack-exhaustion attempt rather than configuration.
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// 1,000 YAML aliases: manifests rarely use anchors at all, and each alias can multiply memory.
pub const DEFAULT_MAX_ALIASES: usize = 1_000;

/// Bounds on what one render may read and build, so a hostile repository fails the render
/// instead of the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest manifest file, in bytes.
    pub max_file_bytes: u64,
    /// Largest sum of all manifest files, in bytes.
    pub max_total_bytes: u64,
    /// Most manifest files (`.yaml`, `.yml`, `.json`) under the path.
    pub max_files: usize,
    /// Deepest YAML nesting of sequences and mappings.
    pub max_depth: usize,
    /// Most YAML aliases (`*name`) in one file.
    pub max_aliases: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_files: DEFAULT_MAX_FILES,
            max_depth: DEFAULT_MAX_DEPTH,
            max_aliases: DEFAULT_MAX_ALIASES,
        }
    }
}

/// One rendered object, with where it came from (for error messages and `capstan render`).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The file's path relative to the checkout root, `#`, and the 1-based index of the document
    /// among the file's non-empty documents, e.g. `deploy/app.yaml#2`. Items of a `v1` `List`
    /// add `/` and their 1-based position: `deploy/list.yaml#1/3`.
    pub source: String,
    /// The object exactly as written: validated, never defaulted or rewritten.
    pub object: Value,
}

/// Why a revision could not be rendered. Every variant rejects the whole revision: applying part
/// of a repository, or treating a broken one as empty, could prune live objects.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{tool} failed: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("{tool} is not installed at {path:?}; set --{tool}-path")]
    ToolMissing { tool: &'static str, path: String },
    #[error("{file}: {entry:?} {problem}")]
    Reference {
        file: String,
        entry: String,
        problem: &'static str,
    },
    #[error("values file {path:?} does not exist in the repository")]
    ValuesFileNotFound { path: String },
    /// `line` is 1-based: the first line of the document the variable is in.
    #[error("{file}{}: {message}", at_line(*.line))]
    Substitute {
        file: String,
        line: usize,
        message: String,
    },
    #[error("path {path:?} resolves outside the repository")]
    PathEscapes { path: String },
    #[error("path {path:?} does not exist in the repository")]
    PathNotFound { path: String },
    #[error("path {path:?} is a file, not a directory")]
    NotADirectory { path: String },
    #[error("invalid ignore pattern: {message}")]
    InvalidIgnore { message: String },
    #[error("{file}: symlink points outside the repository")]
    SymlinkEscapes { file: String },
    #[error("more than {limit} manifest files")]
    TooManyFiles { limit: usize },
    #[error("{file}: {size} bytes is over the limit of {limit} bytes per file")]
    FileTooLarge { file: String, size: u64, limit: u64 },
    #[error("manifests add up to {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// `line` is 1-based; 0 only when the parser could not tell.
    #[error("{file}{}: invalid YAML: {message}", at_line(*.line))]
    Yaml {
        file: String,
        line: usize,
        message: String,
    },
    /// `line` is 1-based; 0 only when the parser could not tell.
    #[error("{file}{}: invalid JSON: {message}", at_line(*.line))]
    Json {
        file: String,
        line: usize,
        message: String,
    },
    // Not named `source`: thiserror would take a field of that name for the error's cause.
    #[error("{origin}: {message}")]
    InvalidObject { origin: String, message: String },
    #[error("{id} is defined twice: in {first} and in {second}")]
    Duplicate {
        id: String,
        first: String,
        second: String,
    },
    #[error(
        "path {path:?} renders no objects; an empty render is refused rather than pruning everything"
    )]
    Empty { path: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("decrypting {file}: {message}")]
    Decryption { file: String, message: String },
}

fn at_line(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}")
    }
}

/// What to render and how: `spec.path`, `spec.ignore`, the Helm release, the variables to
/// substitute, and the tools and limits.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    /// `spec.path`, relative to the checkout root; `None` is the root.
    pub path: Option<&'a str>,
    /// gitignore-syntax patterns matched against paths relative to `path` (plain directories).
    pub ignore: Option<&'a str>,
    /// Used when `path` holds a `Chart.yaml`.
    pub helm: HelmOptions,
    /// Substitute `${var}` with these (`spec.postBuild`); `None` substitutes nothing.
    pub variables: Option<&'a Variables>,
    pub limits: Limits,
    pub tools: Tools,
    /// Deadline for a render tool.
    pub timeout: Duration,
    /// Decrypt the files SOPS encrypted, with these keys, before rendering (`spec.decryption`).
    pub decryption: Option<&'a Decryption>,
}

/// How a directory is turned into objects, chosen by the marker file at its top.
enum Renderer {
    Plain,
    Kustomize,
    Helm,
}

fn choose_renderer(dir: &walk::Resolved) -> Renderer {
    // symlink_metadata: a dangling or escaping marker still says what the author meant, and the
    // renderer then reports it.
    let has = |name: &str| dir.dir.join(name).symlink_metadata().is_ok();
    if walk::KUSTOMIZATION_FILES.iter().any(|name| has(name)) {
        Renderer::Kustomize
    } else if has("Chart.yaml") {
        Renderer::Helm
    } else {
        Renderer::Plain
    }
}

/// Renders the manifests under `options.path` of the checkout at `root` into objects: plain
/// files ordered by path and then by position in the file; a kustomization or a chart in the
/// order the tool prints them.
pub fn render(root: &Path, options: &Options<'_>) -> Result<Vec<Manifest>, RenderError> {
    let dir = walk::resolve(root, options.path)?;
    let limits = &options.limits;
    if let Some(keys) = options.decryption {
        let paths = read_paths(&dir, options)?;
        decrypt::decrypt(
            &dir.root,
            &paths,
            keys,
            &options.tools.sops,
            limits,
            options.timeout,
        )?;
    }
    let manifests = match choose_renderer(&dir) {
        Renderer::Plain => render_plain(&dir, options)?,
        Renderer::Kustomize => {
            let output = kustomize::build(&dir, &options.tools.kustomize, limits, options.timeout)?;
            tool_objects(
                &format!("kustomize build {}", dir.display),
                &output,
                options,
            )?
        }
        Renderer::Helm => {
            let output = helm::template(
                &dir,
                &options.tools.helm,
                &options.helm,
                limits,
                options.timeout,
            )?;
            tool_objects(&format!("helm template {}", dir.display), &output, options)?
        }
    };
    if manifests.is_empty() {
        return Err(RenderError::Empty {
            path: dir.display.clone(),
        });
    }
    Ok(manifests)
}

/// What a render of `options.path` reads, as paths relative to the checkout root (`""` for the
/// root): the directory of plain files or of a chart (and the chart's values files), or every
/// directory a kustomize build reaches. A commit whose trees at these paths are the same renders
/// the same. `None` when that cannot be told: a checkout that holds a symbolic link anywhere (in
/// a read directory, above one, or on the way a reference takes) may lead elsewhere at the next
/// commit with none of these trees changed.
pub fn reads(root: &Path, options: &Options<'_>) -> Option<Vec<String>> {
    let dir = walk::resolve(root, options.path).ok()?;
    let paths = read_paths(&dir, options).ok()?;
    if has_symlink(&dir.root) {
        return None;
    }
    Some(
        paths
            .iter()
            .map(|p| walk::rel_string(&dir.root, p))
            .collect(),
    )
}

/// The directories and files a render of `dir` reads (absolute).
fn read_paths(
    dir: &walk::Resolved,
    options: &Options<'_>,
) -> Result<Vec<std::path::PathBuf>, RenderError> {
    Ok(match choose_renderer(dir) {
        Renderer::Plain => vec![dir.dir.clone()],
        Renderer::Kustomize => kustomize::check_reachable(&dir.root, &dir.dir, &options.limits)?
            .into_iter()
            .collect(),
        Renderer::Helm => {
            let mut paths = vec![dir.dir.clone()];
            paths.extend(helm::values_files(dir, &options.helm)?);
            paths
        }
    })
}

/// Whether `path` is, or holds below it, a symbolic link; git's own directory aside.
fn has_symlink(path: &Path) -> bool {
    if path.file_name().is_some_and(|name| name == ".git") {
        return false;
    }
    let Ok(meta) = path.symlink_metadata() else {
        return true;
    };
    if meta.file_type().is_symlink() {
        return true;
    }
    if !meta.is_dir() {
        return false;
    }
    std::fs::read_dir(path).map_or(true, |entries| {
        entries.flatten().any(|entry| has_symlink(&entry.path()))
    })
}

fn render_plain(dir: &walk::Resolved, options: &Options<'_>) -> Result<Vec<Manifest>, RenderError> {
    let limits = &options.limits;
    let files = walk::manifest_files(dir, options.ignore, limits)?;
    let mut objects = objects::Collector::default();
    for file in &files {
        let bytes = walk::read_capped(file, limits)?;
        let documents =
            parse::documents(&file.rel, &bytes, file.format, limits, options.variables)?;
        for (i, document) in documents.into_iter().enumerate() {
            objects.add_document(&file.rel, i + 1, document)?;
        }
    }
    Ok(objects.finish())
}

/// One manifest file's objects, as a plain render reads it: parsed under `limits`, substituted
/// with `variables`, and checked. The entry point for fuzzing the parser.
pub fn parse_file(
    file: &str,
    bytes: &[u8],
    limits: &Limits,
    variables: Option<&Variables>,
) -> Result<Vec<Manifest>, RenderError> {
    let format = parse::Format::of(Path::new(file)).unwrap_or(parse::Format::Yaml);
    let mut objects = objects::Collector::default();
    for (i, document) in parse::documents(file, bytes, format, limits, variables)?
        .into_iter()
        .enumerate()
    {
        objects.add_document(file, i + 1, document)?;
    }
    Ok(objects.finish())
}

/// The objects a tool printed, held to the same limits as files in the repository.
fn tool_objects(
    origin: &str,
    output: &str,
    options: &Options<'_>,
) -> Result<Vec<Manifest>, RenderError> {
    let limits = &options.limits;
    for (_, document) in parse::split_yaml(output) {
        let size = u64::try_from(document.len()).unwrap_or(u64::MAX);
        if size > limits.max_file_bytes {
            return Err(RenderError::FileTooLarge {
                file: origin.to_string(),
                size,
                limit: limits.max_file_bytes,
            });
        }
    }
    let documents = parse::documents(
        origin,
        output.as_bytes(),
        parse::Format::Yaml,
        limits,
        options.variables,
    )?;
    let mut objects = objects::Collector::default();
    for (i, document) in documents.into_iter().enumerate() {
        objects.add_document(origin, i + 1, document)?;
    }
    Ok(objects.finish())
}
