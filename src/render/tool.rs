//! Running a render tool (kustomize, helm, sops) as a child process: no network, no inherited
//! environment, a deadline, and caps on what it may print.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

use super::RenderError;

/// Where the render tools are. Defaults to `kustomize`, `helm` and `sops` on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub kustomize: PathBuf,
    pub helm: PathBuf,
    pub sops: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            kustomize: "kustomize".into(),
            helm: "helm".into(),
            sops: "sops".into(),
        }
    }
}

/// What the tool may write to stderr that is kept for the error message.
const MAX_STDERR_BYTES: u64 = 64 * 1024;
/// The error message shown on the Ready condition.
const MAX_MESSAGE_CHARS: usize = 400;

pub(super) struct Invocation<'a> {
    /// `kustomize`, `helm` or `sops`, for messages.
    pub tool: &'static str,
    pub program: &'a Path,
    pub args: Vec<OsString>,
    /// The checkout root: the working directory, and removed from paths in messages.
    pub root: &'a Path,
    /// A private, empty directory for the tool's home, config and cache.
    pub home: &'a Path,
    /// Set on top of the emptied environment.
    pub env: Vec<(&'static str, OsString)>,
    pub timeout: Duration,
    pub max_output: u64,
}

/// Runs the tool and returns what it printed on stdout.
pub(super) fn run(inv: Invocation<'_>) -> Result<String, RenderError> {
    let failed = |message: String| RenderError::Tool {
        tool: inv.tool,
        message,
    };
    let mut child = command(&inv).spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => RenderError::ToolMissing {
            tool: inv.tool,
            path: inv.program.display().to_string(),
        },
        _ => failed(format!("starting {}: {e}", inv.program.display())),
    })?;

    let max_output = inv.max_output;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    // Reading stops one byte past the cap; the pipe is closed and the tool dies writing.
    let out_reader = std::thread::spawn(move || read_capped(stdout, max_output.saturating_add(1)));
    let err_reader = std::thread::spawn(move || read_capped(stderr, MAX_STDERR_BYTES));
    let status = child.wait_timeout(inv.timeout);
    if !matches!(status, Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let status = status
        .map_err(|e| failed(format!("waiting for it: {e}")))?
        .ok_or_else(|| failed(format!("did not finish within {:?}", inv.timeout)))?;
    let size = u64::try_from(out.len()).unwrap_or(u64::MAX);
    if size > max_output {
        return Err(RenderError::TooLarge {
            size,
            limit: max_output,
        });
    }
    if !status.success() {
        return Err(failed(message(&err, inv.root, status)));
    }
    String::from_utf8(out).map_err(|_| failed("printed output that is not UTF-8".into()))
}

/// The tool's command: its own empty home, no inherited environment, no network.
fn command(inv: &Invocation<'_>) -> Command {
    // Every proxy variable points at the discard port: a tool that tries the network (a remote
    // base, a chart repository) fails at once instead of reaching out from inside the cluster.
    const NO_NETWORK: &str = "http://127.0.0.1:9";
    let mut command = Command::new(inv.program);
    command
        .args(&inv.args)
        .current_dir(inv.root)
        .env_clear()
        .env("HOME", inv.home)
        .env("XDG_CONFIG_HOME", inv.home.join("config"))
        .env("XDG_CACHE_HOME", inv.home.join("cache"))
        .env("XDG_DATA_HOME", inv.home.join("data"))
        .env("HELM_CONFIG_HOME", inv.home.join("config"))
        .env("HELM_CACHE_HOME", inv.home.join("cache"))
        .env("HELM_DATA_HOME", inv.home.join("data"))
        // No `git` or other helper can be found.
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (var, value) in &inv.env {
        command.env(var, value);
    }
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        command.env(var, NO_NETWORK);
    }
    command
}

fn read_capped(stream: impl Read, cap: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = stream.take(cap).read_to_end(&mut bytes);
    bytes
}

/// The tool's own error, on one line: `Error: ` prefixes dropped, the checkout's temporary
/// directory left out of paths, and capped in length.
fn message(stderr: &[u8], root: &Path, status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let root = format!("{}/", root.display());
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix("Error: ").unwrap_or(l))
        .collect();
    if lines.is_empty() {
        return format!("exited with {status} and printed no error");
    }
    let joined = lines.join("; ").replace(&root, "");
    let mut out: String = joined.chars().take(MAX_MESSAGE_CHARS).collect();
    if out.len() < joined.len() {
        out.push('…');
    }
    out.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
