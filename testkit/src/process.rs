//! `capstan controller` as a separate process, with an identity of its own (a ServiceAccount
//! token), for what only processes can show: leader election, shards, the chart's RBAC.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo};

use super::env::{control_plane, render_tools};

/// A kubeconfig that authenticates as ServiceAccount `sa` of `ns` (created if missing), with a
/// token from the TokenRequest API, written into `dir`.
pub fn service_account_kubeconfig(ns: &str, sa: &str, dir: &Path) -> PathBuf {
    let cp = control_plane();
    let exists = Command::new(cp.kube_bin.join("kubectl"))
        .args(["--kubeconfig"])
        .arg(&cp.kubeconfig)
        .args(["get", "serviceaccount", sa, "-n", ns])
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        cp.kubectl(&["create", "serviceaccount", sa, "-n", ns]);
    }
    let token = cp.kubectl(&["create", "token", sa, "-n", ns, "--duration=2h"]);
    let mut config = Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let user = format!("{ns}-{sa}");
    config.auth_infos = vec![NamedAuthInfo {
        name: user.clone(),
        auth_info: Some(AuthInfo {
            token: Some(token.trim().to_string().into()),
            ..AuthInfo::default()
        }),
        other: Default::default(),
    }];
    for context in &mut config.contexts {
        if let Some(c) = context.context.as_mut() {
            c.user = Some(user.clone());
        }
    }
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}

/// A ServiceAccount of `ns` bound to cluster-admin (as the chart's default RBAC allows about as
/// much), and a kubeconfig for it.
pub fn cluster_admin_kubeconfig(ns: &str, sa: &str, dir: &Path) -> PathBuf {
    let kubeconfig = service_account_kubeconfig(ns, sa, dir);
    control_plane().kubectl(&[
        "create",
        "clusterrolebinding",
        &format!("{ns}-{sa}"),
        "--clusterrole=cluster-admin",
        &format!("--serviceaccount={ns}:{sa}"),
    ]);
    kubeconfig
}

/// The user name the API server sees for a ServiceAccount.
pub fn sa_user(ns: &str, sa: &str) -> String {
    format!("system:serviceaccount:{ns}:{sa}")
}

pub struct ControllerProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Where it receives push events (the benchmarks post to it).
    #[allow(dead_code)]
    pub webhook: std::net::SocketAddr,
    /// Where it serves `/metrics`.
    pub metrics: std::net::SocketAddr,
}

impl ControllerProcess {
    /// Starts `capstan controller ARGS` as `POD_NAME=pod_name`, connecting with `kubeconfig`,
    /// logging at `info` unless ARGS hold a `--log-level`.
    pub fn start(kubeconfig: &Path, pod_name: &str, args: &[&str]) -> ControllerProcess {
        let dir = tempfile::tempdir().unwrap();
        // Held at once, so the ports differ.
        let (metrics, probes, webhook) = {
            let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let c = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            (
                a.local_addr().unwrap(),
                b.local_addr().unwrap(),
                c.local_addr().unwrap(),
            )
        };
        let log = std::fs::File::create(dir.path().join("controller.log")).unwrap();
        let tools = render_tools();
        let child = Command::new(super::env::capstan_binary())
            .arg("controller")
            .arg(format!("--metrics-bind-address={metrics}"))
            .arg(format!("--health-probe-bind-address={probes}"))
            .arg(format!("--webhook-bind-address={webhook}"))
            .arg(format!(
                "--cache-dir={}",
                dir.path().join("cache").display()
            ))
            .arg("--log-format=text")
            .args(args)
            .env("CAPSTAN_LOG_LEVEL", "info")
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", pod_name)
            .env("CAPSTAN_KUSTOMIZE_PATH", &tools.kustomize)
            .env("CAPSTAN_HELM_PATH", &tools.helm)
            .env("CAPSTAN_SOPS_PATH", &tools.sops)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting capstan controller");
        ControllerProcess {
            child: Some(child),
            dir,
            webhook,
            metrics,
        }
    }

    /// For the benchmarks' CPU and memory readings.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// SIGTERM, as Kubernetes stops a Pod; waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the controller did not exit after SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: a crash, with no chance to release anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
