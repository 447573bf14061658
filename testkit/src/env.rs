//! Starts the control plane and the git servers once per test binary, through the same scripts
//! people use (tests/env/*.sh), and tears them down when the binary exits (`--watch-pid`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub struct ControlPlane {
    pub kubeconfig: PathBuf,
    pub kube_bin: PathBuf,
    pub audit_log: PathBuf,
}

pub struct GitServer {
    pub vars: HashMap<String, String>,
}

impl GitServer {
    /// Requests the HTTP server logged for `repo` with `method` whose path ends in `suffix`:
    /// `("GET", "/info/refs")` is a ref advertisement, `("POST", "/git-upload-pack")` a fetch.
    pub async fn requests(&self, repo: &super::Repo, method: &str, suffix: &str) -> usize {
        let path = format!("/{}.git{suffix}", repo.name);
        self.access_log()
            .await
            .lines()
            .filter(|l| {
                l.contains(&format!("\"{method} "))
                    && l.split_whitespace()
                        .any(|w| w.split('?').next().is_some_and(|p| p.ends_with(&path)))
            })
            .count()
    }

    /// The HTTP server's access log, complete up to now. lighttpd buffers it and flushes every
    /// few seconds, so a marker request is sent and awaited: every request before it is written.
    pub async fn access_log(&self) -> String {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let marker = format!(
            "/git/flush-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = std::net::TcpStream::connect((
            "127.0.0.1",
            self.var("GIT_HTTP_PORT").parse::<u16>().unwrap(),
        ))
        .unwrap();
        write!(conn, "GET {marker} HTTP/1.0\r\n\r\n").unwrap();
        let _ = conn.read_to_end(&mut Vec::new());
        let log = Path::new(self.var("GIT_SERVER_DIR")).join("lighttpd-access.log");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(&format!("{marker} ")) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "lighttpd did not flush its access log"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("gitserver.sh did not export {name}"))
    }
}

/// The repository's top directory (this crate lives in `testkit/`).
fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Cargo's build directory of the running test or bench binary (`target/debug`,
/// `target/release`): the binary itself is in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test binary in <target>/<profile>/deps")
        .to_path_buf()
}

/// The `capstan` binary cargo built beside the running test or bench.
pub fn capstan_binary() -> PathBuf {
    profile_dir().join("capstan")
}

/// Cargo's temporary directory for tests and benches (`CARGO_TARGET_TMPDIR`: `<target>/tmp`).
pub fn target_tmpdir() -> PathBuf {
    let dir = profile_dir()
        .parent()
        .expect("<target>/<profile>")
        .join("tmp");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A directory for this test binary's servers, under cargo's per-target temp dir. Directories
/// left by earlier binaries whose process is gone are removed.
fn run_dir(name: &str) -> PathBuf {
    let base = target_tmpdir();
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name
                .to_str()
                .and_then(|n| n.strip_prefix("capstan-"))
                .and_then(|n| n.split('-').next())
            else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    base.join(format!("capstan-{}-{name}", std::process::id()))
}

/// Runs `script up DIR --watch-pid <this process>` and parses the `export K='V'` lines it prints.
fn up(script: &str, dir: &Path) -> HashMap<String, String> {
    let output = Command::new(repo_root().join("tests/env").join(script))
        .arg("up")
        .arg(dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string())
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        output.status.success(),
        "{script} up failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse_exports(&String::from_utf8_lossy(&output.stdout))
}

/// The `export NAME='value'` lines that the scripts' `up` and `env` print, as a map.
pub fn parse_exports(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| {
            // Single-quoted, with ' written as '\''; PATH's trailing :"$PATH" is not a value we use.
            let v = v.strip_prefix('\'')?;
            let v = v.strip_suffix('\'').unwrap_or(v.split("':").next()?);
            Some((k.to_string(), v.replace("'\\''", "'")))
        })
        .collect()
}

pub fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        let vars = up("controlplane.sh", &run_dir("cp"));
        let cp = ControlPlane {
            kubeconfig: vars["KUBECONFIG"].clone().into(),
            kube_bin: vars["CAPSTAN_KUBE_BIN"].clone().into(),
            audit_log: vars["CAPSTAN_AUDIT_LOG"].clone().into(),
        };
        cp.kubectl(&["apply", "--server-side", "-f", "crds/"]);
        cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/gitrepositories.capstan.dev",
        ]);
        cp
    })
}

/// A second control plane, for what Capstan applies to a remote cluster; started by the first
/// test that asks for it. Its API server knows nothing of Capstan's CRDs.
pub fn remote_control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        let vars = up("controlplane.sh", &run_dir("remote"));
        ControlPlane {
            kubeconfig: vars["KUBECONFIG"].clone().into(),
            kube_bin: vars["CAPSTAN_KUBE_BIN"].clone().into(),
            audit_log: vars["CAPSTAN_AUDIT_LOG"].clone().into(),
        }
    })
}

impl ControlPlane {
    /// The API server's address, from the admin kubeconfig.
    pub fn server(&self) -> std::net::SocketAddr {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("reading kubeconfig");
        let server = kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone())
            .expect("a server");
        let authority = server.strip_prefix("https://").unwrap_or(&server);
        authority.parse().expect("an IP address and port")
    }

    /// A kubeconfig as a user puts it in a Secret: everything inline, ServiceAccount `sa` of
    /// `ns` (created if missing, bound to cluster-admin) with a token, the API server at
    /// `server` (a proxy in front of it, say) or where it is.
    pub fn token_kubeconfig(
        &self,
        ns: &str,
        sa: &str,
        server: Option<std::net::SocketAddr>,
    ) -> String {
        // Already there when another ServiceAccount of `ns` was made.
        let _ = self.try_kubectl(&["create", "namespace", ns]);
        if self
            .try_kubectl(&["get", "serviceaccount", sa, "-n", ns])
            .is_none()
        {
            self.kubectl(&["create", "serviceaccount", sa, "-n", ns]);
            self.kubectl(&[
                "create",
                "clusterrolebinding",
                &format!("{ns}-{sa}"),
                "--clusterrole=cluster-admin",
                &format!("--serviceaccount={ns}:{sa}"),
            ]);
        }
        let token = self.kubectl(&["create", "token", sa, "-n", ns, "--duration=2h"]);
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("reading kubeconfig");
        let ca_path = kubeconfig.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.certificate_authority.clone())
            .expect("the CA's file");
        let ca = std::fs::read(ca_path).expect("reading the CA");
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        let server = server.unwrap_or_else(|| self.server());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: remote\n  cluster:\n    server: https://{server}\n    certificate-authority-data: {ca}\nusers:\n- name: {sa}\n  user:\n    token: {}\ncontexts:\n- name: remote\n  context: {{cluster: remote, user: {sa}}}\ncurrent-context: remote\n",
            token.trim()
        )
    }

    /// Runs kubectl; its output, or None when it failed.
    pub fn try_kubectl(&self, args: &[&str]) -> Option<String> {
        let output = self.run_kubectl(args);
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn run_kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.kube_bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .current_dir(repo_root())
            .output()
            .expect("running kubectl")
    }

    /// Runs kubectl against the test control plane from the repository root; panics on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let output = self.run_kubectl(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The render tools (kustomize, helm, sops), built once by the project's script.
pub fn render_tools() -> capstan::render::Tools {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let output = Command::new(repo_root().join("tests/env/rendertools.sh"))
            .arg("build")
            .output()
            .expect("running rendertools.sh");
        assert!(
            output.status.success(),
            "rendertools.sh build failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    });
    capstan::render::Tools {
        kustomize: dir.join("kustomize"),
        helm: dir.join("helm"),
        sops: dir.join("sops"),
    }
}

pub fn git_server() -> &'static GitServer {
    static GS: OnceLock<GitServer> = OnceLock::new();
    GS.get_or_init(|| GitServer {
        vars: up("gitserver.sh", &run_dir("git")),
    })
}

/// The test control plane's admin connection settings.
pub async fn kube_config() -> Config {
    admin_config(control_plane()).await
}

async fn admin_config(cp: &ControlPlane) -> Config {
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).expect("reading kubeconfig");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig")
}

/// A client for the remote control plane, as its admin.
pub async fn remote_client() -> Client {
    Client::try_from(admin_config(remote_control_plane()).await).expect("client")
}

/// A client for the test control plane. One per test: a client is bound to the runtime that
/// made it, and every `#[tokio::test]` has its own.
pub async fn client() -> Client {
    Client::try_from(kube_config().await).expect("client")
}

/// Creates a fresh namespace named after the test.
pub async fn namespace(client: &Client, test: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{}-{}-{}",
        test.replace('_', "-"),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating namespace");
    name
}

#[cfg(test)]
mod tests {
    #[test]
    fn exports_are_parsed() {
        let vars = super::parse_exports(
            "export A='x'\nexport B='it'\\''s'\nexport PATH='/bin':\"$PATH\"\nnoise\n",
        );
        assert_eq!(vars["A"], "x");
        assert_eq!(vars["B"], "it's");
        assert_eq!(vars["PATH"], "/bin");
    }
}
