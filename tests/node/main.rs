//! End-to-end tests on a real node (tests/env/node.sh): the controller image built from the
//! Dockerfile, the chart installed with `helm install`, the operator running as a Pod. Only what a
//! Pod shows is tested here; the logic is tested by the process-based tests in tests/integration.
//! Each test has its own namespace and its own release, which watches only that namespace.
//!
//! Needs root (containerd, the kubelet, the pod network): `cargo test --test node`.

mod env;

use std::time::Duration;

use env::*;

const KUSTOMIZATION: &str = "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
generatorOptions:
  disableNameSuffixHash: true
configMapGenerator:
  - name: from-kustomize
    literals:
      - greeting=hello from kustomize
";

const CHART_YAML: &str = "apiVersion: v2
name: greeting
version: 0.1.0
";

const CHART_TEMPLATE: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: from-helm
data:
  greeting: {{ .Values.greeting | quote }}
";

fn plain(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

fn configmap_value(ns: &str, name: &str, key: &str) -> Option<String> {
    get_json(ns, "configmap", name)?["data"][key]
        .as_str()
        .map(str::to_string)
}

fn uid(ns: &str, kind: &str, name: &str) -> String {
    get_json(ns, kind, name).unwrap_or_else(|| panic!("{kind} {ns}/{name} is missing"))["metadata"]
        ["uid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The chart as a platform engineer installs it: the Pod turns Ready by its own probes, with the
/// chart's security context (non-root, read-only root filesystem), and syncs plain YAML, a
/// kustomize directory and a Helm chart from a git server over the Pod network. kustomize and
/// helm run inside the image with the PATH Capstan gives them (none) and the chart's TMPDIR.
#[test]
fn helm_install_runs_ready_and_syncs_plain_kustomize_and_helm() {
    let ns = namespace("node-install");
    let release = "capstan";
    helm_install(release, &ns, &[]);
    let pods = wait_ready_pods(&ns, release, 1);
    let pod = &pods[0];
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    assert_eq!(
        container["image"],
        format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}")
    );
    assert_eq!(spec["securityContext"]["runAsUser"], 65532);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);

    let repo = Repo::new(
        "node-install",
        &[
            ("plain/config.yaml", &plain("from-plain", "one")),
            ("kustomize/kustomization.yaml", KUSTOMIZATION),
            ("chart/Chart.yaml", CHART_YAML),
            ("chart/values.yaml", "greeting: hello from helm\n"),
            ("chart/templates/configmap.yaml", CHART_TEMPLATE),
        ],
    );
    for (name, path) in [
        ("plain", "./plain"),
        ("kustomize", "./kustomize"),
        ("chart", "./chart"),
    ] {
        kubectl_apply(&gitrepository(&ns, name, &repo.pod_url(), path));
    }
    let sha = repo.commit("nothing new", &[]);
    for name in ["plain", "kustomize", "chart"] {
        wait_synced(&ns, name, &sha, release);
    }
    assert_eq!(
        configmap_value(&ns, "from-plain", "value").as_deref(),
        Some("one")
    );
    assert_eq!(
        configmap_value(&ns, "from-kustomize", "greeting").as_deref(),
        Some("hello from kustomize")
    );
    assert_eq!(
        configmap_value(&ns, "from-helm", "greeting").as_deref(),
        Some("hello from helm")
    );

    // A new commit reaches the cluster through the same Pod.
    let sha = repo.commit("two", &[("plain/config.yaml", &plain("from-plain", "two"))]);
    wait_synced(&ns, "plain", &sha, release);
    assert_eq!(
        configmap_value(&ns, "from-plain", "value").as_deref(),
        Some("two")
    );
    // Still the first container: nothing above crashed it or failed its liveness probe.
    let pods = wait_ready_pods(&ns, release, 1);
    assert_eq!(pods[0]["metadata"]["uid"], pod["metadata"]["uid"]);
    assert_eq!(pods[0]["status"]["containerStatuses"][0]["restartCount"], 0);
    helm(&["uninstall", release, "--namespace", &ns]);
}

/// `helm uninstall` stops the operator and leaves the CRDs (Helm's convention for `crds/`) and
/// everything it applied; a reinstall adopts them without re-creating any.
#[test]
fn helm_uninstall_leaves_crds_and_objects_and_reinstall_adopts_them() {
    let ns = namespace("node-uninstall");
    let release = "capstan-u";
    helm_install(release, &ns, &[]);
    wait_ready_pods(&ns, release, 1);
    let repo = Repo::new("node-uninstall", &[("config.yaml", &plain("kept", "one"))]);
    kubectl_apply(&gitrepository(&ns, "kept", &repo.pod_url(), "./"));
    let sha = repo.commit("sync", &[]);
    wait_synced(&ns, "kept", &sha, release);
    let before = uid(&ns, "configmap", "kept");

    helm(&["uninstall", release, "--namespace", &ns, "--wait"]);
    wait_for(
        "the operator's Pods to be gone after helm uninstall",
        Duration::from_secs(120),
        || operator_pods(&ns, release).is_empty().then_some(()),
        || diagnose(&ns, release),
    );
    assert!(
        kubectl_try(&["get", "crd", "gitrepositories.capstan.dev"]).is_some(),
        "helm uninstall removed the GitRepository CRD"
    );
    assert_eq!(uid(&ns, "configmap", "kept"), before);
    assert!(get_json(&ns, "gitrepository", "kept").is_some());
    // With no operator, a new commit is not applied.
    let sha2 = repo.commit(
        "while uninstalled",
        &[("config.yaml", &plain("kept", "two"))],
    );
    std::thread::sleep(Duration::from_secs(8)); // two intervals: nothing may happen
    assert_eq!(
        configmap_value(&ns, "kept", "value").as_deref(),
        Some("one")
    );

    helm_install(release, &ns, &[]);
    wait_ready_pods(&ns, release, 1);
    wait_synced(&ns, "kept", &sha2, release);
    assert_eq!(
        configmap_value(&ns, "kept", "value").as_deref(),
        Some("two")
    );
    assert_eq!(
        uid(&ns, "configmap", "kept"),
        before,
        "the reinstalled operator re-created an object git still declares"
    );
    helm(&["uninstall", release, "--namespace", &ns]);
}

/// A real Prometheus (built with Kubernetes discovery) finds the Pod as a cluster's would: kubernetes_sd_configs against the API
/// server, the chart's metrics Service selected by its labels and port name, then scrapes the
/// Pod over the Pod network and answers a PromQL query on `capstan_ready`.
#[test]
fn prometheus_discovers_the_pod_through_the_api_server_and_answers_capstan_ready() {
    let ns = namespace("node-metrics");
    let release = "capstan-m";
    helm_install(release, &ns, &[]);
    let pods = wait_ready_pods(&ns, release, 1);
    let pod_name = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    let repo = Repo::new("node-metrics", &[("config.yaml", &plain("watched", "one"))]);
    kubectl_apply(&gitrepository(&ns, "watched", &repo.pod_url(), "./"));
    let sha = repo.commit("sync", &[]);
    wait_synced(&ns, "watched", &sha, release);

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("capstan-{}-prometheus", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("scrape.yml");
    std::fs::write(
        &config,
        format!(
            "global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: capstan
    kubernetes_sd_configs:
      - role: endpointslice
        kubeconfig_file: {kubeconfig}
        namespaces:
          names: [{ns}]
    relabel_configs:
      - source_labels: [__meta_kubernetes_service_label_app_kubernetes_io_name]
        regex: capstan
        action: keep
      - source_labels: [__meta_kubernetes_endpointslice_port_name]
        regex: metrics
        action: keep
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
",
            kubeconfig = node().var("KUBECONFIG"),
        ),
    )
    .unwrap();
    // Debian's Prometheus is built without Kubernetes discovery; this one is built from its Go module.
    let prometheus_bin = run(std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/env/prometheus.sh"
    ))
    .arg("build"));
    let out = run(std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/env/prometheus.sh"
    ))
    .env("PROMETHEUS_BIN", prometheus_bin.trim())
    .arg("up")
    .arg(&dir)
    .arg("--config")
    .arg(&config)
    .arg("--watch-pid")
    .arg(std::process::id().to_string()));
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("export PROMETHEUS_URL='"))
        .and_then(|l| l.strip_suffix('\''))
        .expect("prometheus.sh printed PROMETHEUS_URL")
        .to_string();
    let query = |q: &str| -> serde_json::Value {
        let out = run(std::process::Command::new("curl")
            .args(["-sf", "-G", &format!("{url}/api/v1/query")])
            .args(["--data-urlencode", &format!("query={q}")]));
        serde_json::from_str(&out).unwrap()
    };
    let result = wait_for(
        "Prometheus to answer capstan_ready for the GitRepository, scraped from the Pod",
        Duration::from_secs(120),
        || {
            let r = query(&format!(
                "capstan_ready{{job=\"capstan\",namespace=\"{ns}\",name=\"watched\"}}"
            ));
            let first = r["data"]["result"].as_array()?.first()?.clone();
            (first["value"][1] == "1").then_some(first)
        },
        || {
            let targets =
                run(std::process::Command::new("curl")
                    .args(["-s", &format!("{url}/api/v1/targets")]));
            format!("targets: {targets}\n{}", diagnose(&ns, release))
        },
    );
    assert_eq!(result["metric"]["pod"], pod_name.as_str());
    let _ = run(std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/env/prometheus.sh"
    ))
    .arg("down")
    .arg(&dir));
    helm(&["uninstall", release, "--namespace", &ns]);
}

/// Writes of one object (by resource and name, in `ns`) among audit events, dry runs excluded.
fn writes_of<'a>(
    events: &'a [serde_json::Value],
    ns: &str,
    resource: &str,
    name: &str,
) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| {
            is_write(e)
                && e["objectRef"]["resource"] == resource
                && e["objectRef"]["namespace"] == ns
                && e["objectRef"]["name"] == name
                && e["responseStatus"]["code"]
                    .as_i64()
                    .is_some_and(|c| c < 300)
        })
        .collect()
}

/// `helm upgrade` to a new image tag rolls the Pod. A commit pushed during the rollout changes the
/// object exactly once (one watch event, to the new value; the new Pod's first reconcile may send
/// it once more unchanged, which changes nothing); nothing git still declares is pruned or
/// re-created; every GitRepository keeps its status.
#[test]
fn helm_upgrade_to_a_new_tag_rolls_the_pod_without_losing_or_repeating_work() {
    let ns = namespace("node-upgrade");
    let release = "capstan-up";
    helm_install(release, &ns, &[]);
    let old = wait_ready_pods(&ns, release, 1);
    let repo = Repo::new(
        "node-upgrade",
        &[
            ("stable.yaml", &plain("stable", "same")),
            ("changing.yaml", &plain("changing", "one")),
        ],
    );
    kubectl_apply(&gitrepository(&ns, "rolled", &repo.pod_url(), "./"));
    let sha = repo.commit("sync", &[]);
    wait_synced(&ns, "rolled", &sha, release);
    let stable = uid(&ns, "configmap", "stable");
    let changing = uid(&ns, "configmap", "changing");

    let tag = tag_image("dev-upgrade");
    let mark = audit_mark();
    // Every change of `changing` from here on (a send that changes nothing makes no event).
    let changes_file = tempfile::NamedTempFile::new().unwrap();
    let mut changes = kubectl_cmd()
        .args([
            "get",
            "configmap",
            "changing",
            "--namespace",
            &ns,
            "--watch-only",
        ])
        .args([
            "-o",
            "jsonpath={.metadata.resourceVersion} {.data.value}{\"\\n\"}",
        ])
        .stdout(changes_file.reopen().unwrap())
        .spawn()
        .unwrap();
    helm(&[
        "upgrade",
        release,
        CHART,
        "--namespace",
        &ns,
        "--reuse-values",
        "--set",
        &format!("image.tag={}", tag.rsplit(':').next().unwrap()),
    ]);
    let sha2 = repo.commit(
        "during the rollout",
        &[("changing.yaml", &plain("changing", "two"))],
    );
    let new = wait_for(
        "the rollout to replace the Pod with one running the new tag",
        Duration::from_secs(180),
        || {
            let pods = operator_pods(&ns, release);
            (pods.len() == 1
                && pod_ready(&pods[0])
                && pods[0]["spec"]["containers"][0]["image"] == tag.as_str()
                && pods[0]["metadata"]["uid"] != old[0]["metadata"]["uid"])
                .then_some(pods)
        },
        || diagnose(&ns, release),
    );
    wait_synced(&ns, "rolled", &sha2, release);
    assert_eq!(
        configmap_value(&ns, "changing", "value").as_deref(),
        Some("two")
    );
    assert_eq!(
        uid(&ns, "configmap", "stable"),
        stable,
        "stable was re-created"
    );
    assert_eq!(
        uid(&ns, "configmap", "changing"),
        changing,
        "changing was re-created"
    );
    // Let the new Pod run a few more intervals: it must not apply the commit again.
    std::thread::sleep(Duration::from_secs(12));
    let _ = changes.kill();
    let _ = changes.wait();
    let events = audit_since(mark);
    // Who sent `changing`: the Pod that applied the commit, and (when the commit came before the
    // hand-over) the new Pod once more, unchanged, as a controller that starts re-sends what it
    // manages. Shown when the change count is wrong.
    let sent: Vec<_> = writes_of(&events, &ns, "configmaps", "changing")
        .into_iter()
        .map(|e| audit_pod(e).unwrap_or("?").to_string())
        .collect();
    let changed = std::fs::read_to_string(changes_file.path()).unwrap();
    let values: Vec<&str> = changed
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, v)| v))
        .collect();
    assert_eq!(
        values,
        ["two"],
        "the commit pushed during the rollout changed the object {} times (sent by {sent:?})",
        values.len()
    );
    let deletes: Vec<_> = events
        .iter()
        .filter(|e| e["verb"] == "delete" && e["objectRef"]["namespace"] == ns.as_str())
        .filter(|e| e["objectRef"]["resource"] == "configmaps")
        .collect();
    assert!(
        deletes.is_empty(),
        "configmaps deleted during the rollout: {deletes:?}"
    );
    let gr = get_json(&ns, "gitrepository", "rolled").unwrap();
    assert!(gr["status"]["conditions"].is_array(), "no status: {gr}");
    let _ = new;
    helm(&["uninstall", release, "--namespace", &ns]);
}

/// Two replicas: one holds the Lease and works, the other writes nothing. Deleting the leader's
/// Pod hands over, and the next commit is applied by the new leader.
#[test]
fn two_replicas_one_leader_and_hand_over_when_its_pod_is_deleted() {
    let ns = namespace("node-leader");
    let release = "capstan-l";
    helm_install(release, &ns, &["replicas=2"]);
    let pods = wait_ready_pods(&ns, release, 2);
    let names: Vec<String> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let repo = Repo::new("node-leader", &[("config.yaml", &plain("led", "one"))]);
    let mark = audit_mark();
    kubectl_apply(&gitrepository(&ns, "led", &repo.pod_url(), "./"));
    let sha = repo.commit("sync", &[]);
    wait_synced(&ns, "led", &sha, release);
    let holder = |ns: &str| -> Option<String> {
        let lease = get_json(ns, "lease", "capstan")?;
        let id = lease["spec"]["holderIdentity"].as_str()?;
        Some(id.split('_').next().unwrap().to_string())
    };
    let leader = wait_for(
        "a Pod of the release to hold the Lease",
        Duration::from_secs(60),
        || holder(&ns).filter(|h| names.contains(h)),
        || diagnose(&ns, release),
    );
    let standby = names.iter().find(|n| **n != leader).unwrap().clone();
    let events = audit_since(mark);
    let standby_writes: Vec<_> = events
        .iter()
        .filter(|e| is_write(e) && audit_pod(e) == Some(standby.as_str()))
        .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
        .collect();
    assert!(
        standby_writes.is_empty(),
        "the standby {standby} wrote: {standby_writes:?}"
    );
    let leader_applies = writes_of(&events, &ns, "configmaps", "led");
    assert!(
        !leader_applies.is_empty() && leader_applies.iter().all(|e| audit_pod(e) == Some(&leader)),
        "the ConfigMap was not applied by the leader {leader} alone"
    );

    kubectl(&["delete", "pod", "-n", &ns, &leader, "--wait=false"]);
    let next = wait_for(
        "another Pod to take the Lease after the leader's Pod was deleted",
        Duration::from_secs(120),
        || holder(&ns).filter(|h| *h != leader),
        || diagnose(&ns, release),
    );
    let mark = audit_mark();
    let sha2 = repo.commit(
        "after the hand-over",
        &[("config.yaml", &plain("led", "two"))],
    );
    wait_synced(&ns, "led", &sha2, release);
    assert_eq!(configmap_value(&ns, "led", "value").as_deref(), Some("two"));
    let events = audit_since(mark);
    let applies = writes_of(&events, &ns, "configmaps", "led");
    assert!(
        !applies.is_empty() && applies.iter().all(|e| audit_pod(e) == Some(next.as_str())),
        "the commit after the hand-over was not applied by the new leader {next}"
    );
    helm(&["uninstall", release, "--namespace", &ns]);
}

/// The restricted RBAC mode in the Pod: the operator's own ServiceAccount can change nothing, so
/// a GitRepository without serviceAccountName applies nothing, and one naming a ServiceAccount
/// allowed to write ConfigMaps in its namespace applies them.
#[test]
fn restricted_rbac_mode_applies_only_as_the_named_service_account() {
    let ns = namespace("node-restricted");
    let release = "capstan-r";
    helm_install(release, &ns, &["rbac.mode=restricted"]);
    wait_ready_pods(&ns, release, 1);
    kubectl_apply(&format!(
        "apiVersion: v1
kind: ServiceAccount
metadata: {{name: deployer, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: deployer-edit, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: capstan-node-test-edit}}
subjects: [{{kind: ServiceAccount, name: deployer, namespace: {ns}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: capstan-node-test-edit}}
rules:
- {{apiGroups: [''], resources: [configmaps], verbs: ['*']}}
"
    ));
    let allowed = Repo::new(
        "node-restricted-sa",
        &[("config.yaml", &plain("as-deployer", "one"))],
    );
    let denied = Repo::new(
        "node-restricted-none",
        &[("config.yaml", &plain("as-nobody", "one"))],
    );
    kubectl_apply(&format!(
        "{}  serviceAccountName: deployer\n",
        gitrepository(&ns, "with-sa", &allowed.pod_url(), "./")
    ));
    kubectl_apply(&gitrepository(&ns, "without-sa", &denied.pod_url(), "./"));
    let sha = allowed.commit("sync", &[]);
    wait_synced(&ns, "with-sa", &sha, release);
    assert_eq!(
        configmap_value(&ns, "as-deployer", "value").as_deref(),
        Some("one")
    );
    let (status, reason, message) = wait_for(
        "the GitRepository without serviceAccountName to report that it may not apply",
        Duration::from_secs(120),
        || condition(&ns, "without-sa", "Ready").filter(|c| c.0 == "False"),
        || diagnose(&ns, release),
    );
    assert!(
        get_json(&ns, "configmap", "as-nobody").is_none(),
        "applied without a ServiceAccount in restricted mode ({status} {reason}: {message})"
    );
    helm(&["uninstall", release, "--namespace", &ns]);
}

/// One node per machine: `node.sh up` of another directory while the node runs is refused, and
/// the error names the running node's directory and what to run; the running node is untouched.
#[test]
fn a_second_node_is_refused_with_the_running_ones_directory() {
    let node = node();
    let other = tempfile::tempdir().unwrap();
    let output =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/env/node.sh"))
            .arg("up")
            .arg(other.path())
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a second node started:\n{stderr}");
    let running = node.dir().to_str().unwrap();
    assert!(
        stderr.contains("one node per machine")
            && stderr.contains(&format!("node.sh down {running}")),
        "unclear error: {stderr}"
    );
    let ready = kubectl(&[
        "get",
        "node",
        node.var("CAPSTAN_NODE_NAME"),
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]);
    assert_eq!(ready, "True");
}

/// `node.sh install` with a package apt does not know (NODE_PACKAGES, as on a distribution that
/// names a package differently): it installs only what dpkg lacks, retries after `apt-get
/// update`, and ends with one line naming apt, the package and the log holding apt's output.
#[test]
fn install_of_a_package_apt_cannot_find_names_it_and_apts_log() {
    let cache = tempfile::tempdir().unwrap();
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let policy_before = policy.exists();
    let out = outcome(
        std::process::Command::new(script("node.sh"))
            .arg("install")
            .env("CAPSTAN_CACHE", cache.path())
            .env("NODE_PACKAGES", "containerd capstan-no-such-package"),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = out.last_line();
    assert!(
        line.contains("error: install: apt cannot find the package capstan-no-such-package")
            && line.contains("NODE_PACKAGES"),
        "unclear error: {out:?}"
    );
    let log = out.named_log().expect("the error names a log");
    assert_eq!(log, cache.path().join("node-install.log"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Unable to locate package capstan-no-such-package"),
        "{log:?} does not hold apt's error:\n{text}"
    );
    // containerd is installed (the node runs it), so it was not asked for again.
    assert!(
        out.stderr
            .contains("installing capstan-no-such-package with apt-get"),
        "{out:?}"
    );
    assert_eq!(policy.exists(), policy_before, "policy-rc.d left changed");
}

/// An image build that fails (a Dockerfile given with --dockerfile whose RUN step fails) ends with
/// one line naming buildah bud, the Dockerfile and the build log, writes no archive and leaves no
/// buildah container or image behind, not even the stage it built (in a storage of its own, so
/// that only this build counts).
#[test]
fn an_image_build_that_fails_names_buildah_the_dockerfile_and_the_build_log() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("storage");
    let conf = tmp.path().join("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
            store.display()
        ),
    )
    .unwrap();
    let dockerfile = tmp.path().join("Dockerfile.broken");
    std::fs::write(
        &dockerfile,
        "FROM scratch AS minimal-root\nCOPY rootfs/ /\n\
         FROM minimal-root\nCOPY bin/capstan /usr/local/bin/capstan\n\
         RUN [\"/usr/local/bin/capstan\", \"no-such-command\"]\n",
    )
    .unwrap();
    let archive = tmp.path().join("out/broken.tar");
    let image = "localhost/capstan-broken:test";
    let buildah = |args: &[&str]| {
        run(std::process::Command::new("buildah")
            .env("CONTAINERS_STORAGE_CONF", &conf)
            .args(args))
    };
    let out = outcome(
        std::process::Command::new(script("image.sh"))
            .args(["build", "--binary", env!("CARGO_BIN_EXE_capstan")])
            .arg("--dockerfile")
            .arg(&dockerfile)
            .arg("--output")
            .arg(&archive)
            .env("CAPSTAN_IMAGE", image)
            .env("CONTAINERS_STORAGE_CONF", &conf),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = out.last_line();
    assert!(
        line.contains("error: the image build failed (buildah bud of")
            && line.contains(dockerfile.to_str().unwrap()),
        "unclear error: {out:?}"
    );
    let log = out.named_log().expect("the error names a log");
    assert_eq!(log, tmp.path().join("out/build.log"));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("no-such-command") && text.contains("exit status"),
        "{log:?} does not say which step failed:\n{text}"
    );
    assert!(!archive.exists(), "an archive was written");
    assert_eq!(buildah(&["containers", "-q"]).trim(), "", "containers left");
    assert_eq!(
        buildah(&["images", "--all", "--format", "{{.ID}} {{.Name}}:{{.Tag}}"]).trim(),
        "",
        "images left (the stage that was built, or {image})"
    );
}

/// `controlplane.sh up` whose API server port (CONTROLPLANE_PORT) is already bound: it ends with
/// one line naming kube-apiserver, the address and its log, and stops etcd, which it had started.
/// A control plane of its own, beside the node: no node slot needed.
#[test]
fn a_control_plane_port_in_use_names_kube_apiserver_and_its_log_and_stops_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let out = outcome(
        std::process::Command::new(script("controlplane.sh"))
            .arg("up")
            .arg(dir.path())
            .env("CONTROLPLANE_PORT", port.to_string()),
    );
    drop(listener);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let log = dir.path().join("kube-apiserver.log");
    assert_eq!(
        out.last_line(),
        format!(
            "controlplane.sh: error: kube-apiserver could not bind 127.0.0.1:{port}: address \
             already in use (log: {})",
            log.display()
        ),
        "{out:?}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("bind: address already in use")
    );
    assert!(
        out.stderr.contains("up failed; stopping what it started"),
        "{out:?}"
    );
    let left = processes_under(dir.path());
    assert!(left.is_empty(), "left running: {left:?}");
}

/// `node.sh up` whose kubelet cannot become Ready (its port, NODE_KUBELET_PORT, is held by this
/// test): it ends with one line naming the kubelet, the address and the kubelet's log, after
/// stopping the control plane and containerd and restoring the host: no process, no bridge, no
/// address, the same netfilter rules as before, the node slot free, and `node.sh check-clean`
/// agrees. It runs before the shared node comes up (see env::failed_up).
#[test]
fn a_kubelet_that_cannot_become_ready_fails_up_naming_its_log_and_restores_the_host() {
    let failed = failed_up();
    let out = &failed.up;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let log = failed.dir.join("kubelet.log");
    let line = out.last_line();
    assert!(
        line.starts_with("node.sh: error: kubelet")
            && line.contains(&format!(
                "could not bind {NODE_IP}:{}: address already in use",
                failed.port
            ))
            && line.ends_with(&format!("(log: {})", log.display())),
        "unclear error: {out:?}"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("bind: address already in use")
    );
    // It got that far: the control plane and containerd had started.
    assert!(failed.dir.join("controlplane/kube-apiserver.log").exists());
    assert!(failed.dir.join("containerd.log").exists());
    assert!(
        failed.processes_after.is_empty(),
        "left running: {:?}",
        failed.processes_after
    );
    assert_eq!(
        failed.network_before, failed.network_after,
        "the host's network changed"
    );
    assert!(!failed.network_after.contains(BRIDGE));
    assert_eq!(failed.owner_after, None, "the node slot is still taken");
    assert!(
        failed.check_clean.status.success(),
        "check-clean found leftovers: {:?}",
        failed.check_clean
    );
}

/// GET `path` from `addr` with a bearer token or none: (status code, body).
fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, String)> = token
        .map(|t| ("Authorization", format!("Bearer {t}")))
        .into_iter()
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(capstan_testkit::controller::http_request(
        addr.parse().unwrap(),
        "GET",
        path,
        &headers,
        b"",
    ))
}

/// The chart's UI (`ui.enabled=true`) runs as a Pod with no credentials of its own and shows each
/// caller what their own token may read.
#[test]
fn the_charts_ui_runs_without_credentials_and_acts_as_each_callers_token() {
    let ns = namespace("node-ui");
    let release = "capstan-ui";
    helm_install(
        release,
        &ns,
        &["ui.enabled=true", &format!("ui.namespace={ns}")],
    );
    let selector =
        format!("app.kubernetes.io/name=capstan-ui,app.kubernetes.io/instance={release}");
    let pod = wait_for(
        "the UI's Pod Ready",
        Duration::from_secs(180),
        || {
            let pods = list_json(&ns, "pods", &selector);
            (pods.len() == 1 && pod_ready(&pods[0])).then(|| pods[0].clone())
        },
        || diagnose(&ns, release),
    );
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);
    let mounts = pod["spec"]["containers"][0]["volumeMounts"].to_string();
    assert!(!mounts.contains("kube-api-access"), "{mounts}");
    // The controller's Pods are still found by their own selector.
    wait_ready_pods(&ns, release, 1);

    let repo = Repo::new("node-ui", &[("config.yaml", &plain("shown", "one"))]);
    kubectl_apply(&gitrepository(&ns, "shown", &repo.pod_url(), "./"));
    let sha = repo.commit("sync", &[]);
    wait_synced(&ns, "shown", &sha, release);
    kubectl_apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: reader, namespace: {ns}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: reader, namespace: {ns}}}\nrules:\n- apiGroups: [capstan.dev]\n  resources: [gitrepositories]\n  verbs: [get, list, watch]\n- apiGroups: ['']\n  resources: [events]\n  verbs: [list, watch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: reader, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}}\nsubjects:\n- {{kind: ServiceAccount, name: reader, namespace: {ns}}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: nobody, namespace: {ns}}}\n"
    ));
    let addr = format!("{}:9080", pod["status"]["podIP"].as_str().unwrap());
    let (code, _) = http_get(&addr, "/repos", None);
    assert_eq!(code, 401);
    let reader = kubectl(&["create", "token", "reader", "-n", &ns]);
    let (code, body) = http_get(&addr, "/repos", Some(reader.trim()));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("data-name=\"shown\""), "{body}");
    let nobody = kubectl(&["create", "token", "nobody", "-n", &ns]);
    let (code, body) = http_get(&addr, "/repos", Some(nobody.trim()));
    assert_eq!(code, 403, "{body}");
    helm(&["uninstall", release, "--namespace", &ns]);
}
