//! The harness of the node tests: the node (tests/env/node.sh, one per machine, shared by every
//! binary that asks for the same directory), a git server Pods can reach, the controller image
//! built from the Dockerfile (tests/env/image.sh) and imported into the node's containerd, and
//! small wrappers around kubectl, helm and git, the tools a user would run.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const IMAGE_REPOSITORY: &str = "localhost/capstan";
pub const IMAGE_TAG: &str = "dev";
pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/capstan");

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn script(name: &str) -> PathBuf {
    repo_root().join("tests/env").join(name)
}

/// How a command that may fail ended: its status and what it printed.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The last line on stderr: where the scripts put the one line that explains a failure.
    pub fn last_line(&self) -> &str {
        self.stderr.trim_end().lines().last().unwrap_or_default()
    }

    /// The log the last line names, as "(log: PATH)" or "(...; log: PATH)".
    pub fn named_log(&self) -> Option<PathBuf> {
        let line = self.last_line();
        let start = line.rfind("log: ")? + "log: ".len();
        let end = start + line[start..].find(')')?;
        Some(PathBuf::from(&line[start..end]))
    }
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n---- stdout\n{}---- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs a command whose failure is the point.
pub fn outcome(cmd: &mut Command) -> Outcome {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    Outcome {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Processes whose command line mentions `dir` (a server started there, or one of its children).
pub fn processes_under(dir: &Path) -> Vec<String> {
    let needle = format!(" {}/", dir.display());
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if format!(" {cmdline}").contains(&needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// What the host's network looks like: netfilter (nftables, which iptables-nft writes too),
/// links and addresses. Equal before and after a failed start means it undid what it did.
pub fn host_network() -> String {
    let mut out = String::new();
    for args in [
        &["nft", "list", "ruleset"][..],
        &["iptables-save"],
        &["ip", "-br", "link", "show"],
        &["ip", "-br", "addr", "show"],
    ] {
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        // Not what changes by itself: iptables-save's time stamps and its chains' packet counters.
        let text = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| match l.strip_prefix(':') {
                Some(chain) => format!(":{}\n", chain.split(" [").next().unwrap_or(chain)),
                None => format!("{l}\n"),
            })
            .collect::<String>();
        out += &format!("---- {}\n{text}", args.join(" "));
    }
    out
}

pub const NODE_IP: &str = "10.254.254.1";
pub const BRIDGE: &str = "capstan0";
const OWNER_FILE: &str = "/run/capstan-node.owner";

/// A `node.sh up` that fails after set-up began: the kubelet's port (NODE_KUBELET_PORT) is held by
/// a listener of this process, so the kubelet exits and the node never becomes Ready. It needs the
/// machine's one node slot, so it runs once, before this binary's shared node comes up (node()
/// runs it first), and records what a test then asserts.
pub struct FailedUp {
    pub dir: PathBuf,
    pub port: u16,
    pub up: Outcome,
    pub network_before: String,
    pub network_after: String,
    pub processes_after: Vec<String>,
    pub owner_after: Option<String>,
    pub check_clean: Outcome,
}

pub fn failed_up() -> &'static FailedUp {
    static FAILED: OnceLock<FailedUp> = OnceLock::new();
    FAILED.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("node-failed-up");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The kubelet binds the node IP, which only exists while a node runs: hold the port on
        // every address.
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let network_before = host_network();
        let up = outcome(
            Command::new(script("node.sh"))
                .arg("up")
                .arg(&dir)
                .env("NODE_KUBELET_PORT", port.to_string()),
        );
        drop(listener);
        FailedUp {
            port,
            up,
            network_before,
            network_after: host_network(),
            processes_after: processes_under(&dir),
            owner_after: std::fs::read_to_string(OWNER_FILE).ok(),
            check_clean: outcome(Command::new(script("node.sh")).arg("check-clean").arg(&dir)),
            dir,
        }
    })
}

/// Runs a command and returns its stdout; panics with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `script up DIR --watch-pid <this process>` (plus env), parsed into its exports.
fn up(name: &str, dir: &Path, env: &[(&str, &str)]) -> HashMap<String, String> {
    let mut cmd = Command::new(script(name));
    cmd.arg("up")
        .arg(dir)
        .arg("--watch-pid")
        .arg(std::process::id().to_string());
    for (k, v) in env {
        cmd.env(k, v);
    }
    capstan_testkit::env::parse_exports(&run(&mut cmd))
}

pub struct Node {
    pub vars: HashMap<String, String>,
}

impl Node {
    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("node.sh did not export {name}"))
    }
    pub fn dir(&self) -> &Path {
        Path::new(self.var("CAPSTAN_NODE_DIR"))
    }
}

/// The node, brought up once per machine in a fixed directory so that test binaries share it.
pub fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        // First what needs the machine without a node.
        failed_up();
        // Not "capstan-<pid>-...": tests/integration removes those directories once their pid is gone.
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("node");
        std::fs::create_dir_all(&dir).unwrap();
        let node = Node {
            vars: up("node.sh", &dir, &[]),
        };
        // Not kubectl(): that asks for node(), which is being initialised here.
        let kubectl = |args: &[&str]| {
            run(
                Command::new(Path::new(node.var("CAPSTAN_KUBE_BIN")).join("kubectl"))
                    .args(args)
                    .env("KUBECONFIG", node.var("KUBECONFIG"))
                    .current_dir(repo_root()),
            )
        };
        kubectl(&["apply", "--server-side", "-f", "crds/"]);
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/gitrepositories.capstan.dev",
        ]);
        node
    })
}

pub struct GitServer {
    pub vars: HashMap<String, String>,
}

impl GitServer {
    pub fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("gitserver.sh did not export {name}"))
    }
}

/// Git servers of this binary, also listening on the node IP (Pods have a route to it).
pub fn git_server() -> &'static GitServer {
    static GIT: OnceLock<GitServer> = OnceLock::new();
    GIT.get_or_init(|| {
        let node_ip = node().var("CAPSTAN_NODE_IP").to_string();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("capstan-{}-git", std::process::id()));
        GitServer {
            vars: up(
                "gitserver.sh",
                &dir,
                &[("GITSERVER_POD_ADDRESS", node_ip.as_str())],
            ),
        }
    })
}

/// The controller image, built from the Dockerfile and imported into the node's containerd. It
/// carries the binary this `cargo test` built (a release build, minutes more on two cores, with
/// CAPSTAN_IMAGE_PROFILE=release).
pub fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let node = node();
        // image.sh keeps the build's context and log next to the archive.
        let archive = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image/capstan-image.tar");
        let name = format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}");
        let mut cmd = Command::new(script("image.sh"));
        cmd.args(["build", "--output"])
            .arg(&archive)
            .env("CAPSTAN_IMAGE", &name);
        if std::env::var("CAPSTAN_IMAGE_PROFILE").as_deref() != Ok("release") {
            cmd.arg("--binary").arg(env!("CARGO_BIN_EXE_capstan"));
        }
        run(&mut cmd);
        run(Command::new(script("node.sh"))
            .arg("import")
            .arg(node.dir())
            .arg(&archive));
        name
    })
}

/// Gives the imported image another tag, as a new release would (same content, new name).
pub fn tag_image(tag: &str) -> String {
    let source = image();
    let target = format!("{IMAGE_REPOSITORY}:{tag}");
    let node = node();
    let _ = Command::new("ctr")
        .args(["--address", node.var("CAPSTAN_CONTAINERD_ADDRESS")])
        .args(["-n", "k8s.io", "images", "rm", &target])
        .output();
    run(Command::new("ctr")
        .args(["--address", node.var("CAPSTAN_CONTAINERD_ADDRESS")])
        .args(["-n", "k8s.io", "images", "tag", source, &target]));
    target
}

pub fn kubectl_cmd() -> Command {
    let node = node();
    let mut cmd = Command::new(Path::new(node.var("CAPSTAN_KUBE_BIN")).join("kubectl"));
    cmd.env("KUBECONFIG", node.var("KUBECONFIG"))
        .current_dir(repo_root());
    cmd
}

pub fn kubectl(args: &[&str]) -> String {
    run(kubectl_cmd().args(args))
}

/// kubectl's stdout, or None if it failed (e.g. the object does not exist).
pub fn kubectl_try(args: &[&str]) -> Option<String> {
    let output = kubectl_cmd()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn kubectl_apply(yaml: &str) {
    let mut child = kubectl_cmd()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kubectl apply failed:\n{}\n{yaml}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The object as JSON, or None if it does not exist.
pub fn get_json(ns: &str, kind: &str, name: &str) -> Option<Value> {
    kubectl_try(&["get", "-n", ns, kind, name, "-o", "json"])
        .map(|s| serde_json::from_str(&s).expect("kubectl printed JSON"))
}

pub fn list_json(ns: &str, kind: &str, selector: &str) -> Vec<Value> {
    let out = kubectl(&["get", "-n", ns, kind, "-l", selector, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

pub fn helm_bin() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let dir = run(Command::new(script("rendertools.sh")).arg("build"));
        PathBuf::from(dir.trim()).join("helm")
    })
}

pub fn helm(args: &[&str]) -> String {
    let node = node();
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    run(Command::new(helm_bin())
        .args(args)
        .env("KUBECONFIG", node.var("KUBECONFIG"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data")))
}

/// A fresh namespace for one test (deleted first if an earlier run left it).
pub fn namespace(name: &str) -> String {
    node();
    if kubectl_try(&["get", "namespace", name]).is_some() {
        kubectl(&["delete", "namespace", name, "--wait=true", "--timeout=120s"]);
    }
    kubectl(&["create", "namespace", name]);
    name.to_string()
}

/// `helm install RELEASE` of the chart into `ns`, with the local image and `--set` values.
pub fn helm_install(release: &str, ns: &str, sets: &[&str]) {
    let image = image();
    let tag = image.rsplit(':').next().unwrap();
    let mut args = vec![
        "install",
        release,
        CHART,
        "--namespace",
        ns,
        "--set",
        "image.pullPolicy=Never",
    ];
    let repo = format!("image.repository={IMAGE_REPOSITORY}");
    let tag = format!("image.tag={tag}");
    let watch = format!("watchNamespace={ns}");
    for s in [&repo, &tag, &watch] {
        args.extend(["--set", s.as_str()]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args);
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what` and `diagnose()`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    diagnose: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                diagnose()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What a user would look at when the operator misbehaves: its Pods, their logs and events.
pub fn diagnose(ns: &str, release: &str) -> String {
    let selector = format!("app.kubernetes.io/instance={release}");
    let mut out = String::new();
    for args in [
        vec!["get", "pods,gitrepositories", "-n", ns, "-o", "wide"],
        vec!["get", "gitrepositories", "-n", ns, "-o", "yaml"],
        vec!["get", "events", "-n", ns],
        vec![
            "logs",
            "-n",
            ns,
            "-l",
            &selector,
            "--tail=60",
            "--all-containers",
            "--prefix",
        ],
    ] {
        out += &format!("---- kubectl {}\n", args.join(" "));
        out += &kubectl_try(&args).unwrap_or_else(|| "(failed)\n".into());
    }
    out
}

/// The operator's Pods of `release`, Ready ones first.
pub fn operator_pods(ns: &str, release: &str) -> Vec<Value> {
    list_json(
        ns,
        "pods",
        &format!("app.kubernetes.io/name=capstan,app.kubernetes.io/instance={release}"),
    )
}

pub fn pod_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Waits until `release` has exactly `n` Ready Pods (and no others) and returns them.
pub fn wait_ready_pods(ns: &str, release: &str, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} Ready Pods of {release} in {ns}"),
        Duration::from_secs(180),
        || {
            let pods = operator_pods(ns, release);
            (pods.len() == n && pods.iter().all(pod_ready)).then_some(pods)
        },
        || diagnose(ns, release),
    )
}

/// A GitRepository's condition `type`, as (status, reason, message).
pub fn condition(ns: &str, name: &str, type_: &str) -> Option<(String, String, String)> {
    let gr = get_json(ns, "gitrepository", name)?;
    let c = gr["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// Waits until the GitRepository is Ready at `revision_sha` (a commit it reports in its status).
pub fn wait_synced(ns: &str, name: &str, sha: &str, release: &str) {
    wait_for(
        &format!("GitRepository {ns}/{name} Ready at {sha}"),
        Duration::from_secs(180),
        || {
            let gr = get_json(ns, "gitrepository", name)?;
            let ready = condition(ns, name, "Ready")?;
            let applied = gr["status"].to_string();
            (ready.0 == "True" && applied.contains(sha)).then_some(())
        },
        || diagnose(ns, release),
    );
}

pub fn gitrepository(ns: &str, name: &str, url: &str, path: &str) -> String {
    format!(
        "apiVersion: capstan.dev/v1alpha1
kind: GitRepository
metadata:
  name: {name}
  namespace: {ns}
spec:
  url: {url}
  ref:
    branch: main
  interval: 5s
  path: {path}
  prune: true
"
    )
}

/// A repository on the git server, created from `files` in one commit; `commit` adds more.
pub struct Repo {
    pub name: String,
    work: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) -> String {
    run(Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "capstan-test")
        .env("GIT_AUTHOR_EMAIL", "test@capstan.dev")
        .env("GIT_COMMITTER_NAME", "capstan-test")
        .env("GIT_COMMITTER_EMAIL", "test@capstan.dev"))
}

impl Repo {
    pub fn new(name: &str, files: &[(&str, &str)]) -> Repo {
        let server = git_server();
        let bare = Path::new(server.var("GIT_REPO_ROOT")).join(format!("{name}.git"));
        let _ = std::fs::remove_dir_all(&bare);
        run(Command::new(script("gitserver.sh")).args([
            "create-repo",
            server.var("GIT_SERVER_DIR"),
            name,
        ]));
        let work = tempfile::tempdir().unwrap();
        git(work.path(), &["init", "-q", "-b", "main"]);
        git(
            work.path(),
            &["remote", "add", "origin", bare.to_str().unwrap()],
        );
        let repo = Repo {
            name: name.to_string(),
            work,
        };
        repo.commit("initial", files);
        repo
    }

    /// The URL Pods fetch from (the git server's address on the node IP).
    pub fn pod_url(&self) -> String {
        format!("{}/{}.git", git_server().var("GIT_HTTP_POD_URL"), self.name)
    }

    /// Writes `files` (an empty content deletes the file), commits and pushes; returns the SHA.
    pub fn commit(&self, message: &str, files: &[(&str, &str)]) -> String {
        let dir = self.work.path();
        for (path, content) in files {
            let p = dir.join(path);
            if content.is_empty() {
                let _ = std::fs::remove_file(&p);
            } else {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, content).unwrap();
            }
        }
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
        git(dir, &["push", "-q", "origin", "main"]);
        git(dir, &["rev-parse", "HEAD"]).trim().to_string()
    }
}

/// The audit log's size now: pass it to `audit_since` to read only what came after.
pub fn audit_mark() -> usize {
    std::fs::metadata(node().var("CAPSTAN_AUDIT_LOG")).map_or(0, |m| m.len() as usize)
}

/// Audit events (parsed) written after `mark`.
pub fn audit_since(mark: usize) -> Vec<Value> {
    let text = std::fs::read(node().var("CAPSTAN_AUDIT_LOG")).unwrap_or_default();
    let tail = &text[mark.min(text.len())..];
    String::from_utf8_lossy(tail)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The Pod an audit event's (bound ServiceAccount token) identity belongs to.
pub fn audit_pod(event: &Value) -> Option<&str> {
    event["user"]["extra"]["authentication.kubernetes.io/pod-name"][0].as_str()
}

pub fn is_write(event: &Value) -> bool {
    matches!(
        event["verb"].as_str(),
        Some("create" | "update" | "patch" | "delete" | "deletecollection")
    ) && !event["requestURI"]
        .as_str()
        .unwrap_or_default()
        .contains("dryRun")
}
