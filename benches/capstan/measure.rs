//! Measuring: figures, the controller under test and what it costs (CPU, memory, the API
//! server's audit log, the git server's access log), and the waits the scenarios share.

use super::*;

/// Figures of one scenario, in print order: a name and its cells (one value, or the columns).
#[derive(Default)]
pub(crate) struct Figures {
    /// The cells' headings past the name, when there is more than "value".
    pub(crate) columns: Option<Vec<&'static str>>,
    pub(crate) rows: Vec<(String, Vec<String>)>,
    pub(crate) json: serde_json::Map<String, Value>,
}

impl Figures {
    pub(crate) fn add(&mut self, name: &str, value: impl Into<Value>, shown: impl Into<String>) {
        self.json.insert(name.to_string(), value.into());
        self.rows.push((name.to_string(), vec![shown.into()]));
    }

    /// A row of several cells, under [`Figures::columns`].
    pub(crate) fn add_row(&mut self, name: &str, value: impl Into<Value>, cells: Vec<String>) {
        self.json.insert(name.to_string(), value.into());
        self.rows.push((name.to_string(), cells));
    }
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

pub(crate) fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if values.is_empty() {
        return f64::NAN;
    }
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[i]
}

// ---------------------------------------------------------------- the controller under test

pub(crate) struct Controller {
    pub(crate) process: ControllerProcess,
    pub(crate) user: String,
    pub(crate) clk_tck: f64,
    kubeconfig: PathBuf,
    shard: String,
}

impl Controller {
    /// The release binary as a process with its own ServiceAccount (cluster-admin, of `ns`),
    /// cluster-wide as it is deployed, taking the GitRepositories of shard `shard`.
    pub(crate) fn start(ns: &str, shard: &str, dir: &Path) -> Controller {
        let sa = "capstan-bench";
        let kubeconfig = cluster_admin_kubeconfig(ns, sa, dir);
        let shard = format!("--shard={shard}");
        let process = Self::process(&kubeconfig, &shard);
        Controller {
            process,
            user: sa_user(ns, sa),
            clk_tck: clk_tck(),
            kubeconfig,
            shard,
        }
    }

    fn process(kubeconfig: &Path, shard: &str) -> ControllerProcess {
        ControllerProcess::start(kubeconfig, "bench", &[shard, "--leader-elect=false"])
    }

    /// Stops the process and starts another, with nothing in memory (and a cache of its own).
    pub(crate) fn restart(&mut self) {
        self.process.terminate();
        self.process = Self::process(&self.kubeconfig, &self.shard);
    }

    /// How many GitRepositories of `ns` this process has reconciled at least once, from its
    /// metrics (0 until it serves them).
    pub(crate) async fn reconciled(&self, ns: &str) -> usize {
        let addr = self.process.metrics;
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return 0;
        }
        let (_, body) = support::controller::http_get(addr, "/metrics").await;
        let namespace = format!("namespace=\"{ns}\"");
        let names: std::collections::HashSet<&str> = body
            .lines()
            .filter(|l| l.starts_with("capstan_reconcile_total{") && l.contains(&namespace))
            .filter_map(|l| l.split("name=\"").nth(1)?.split('"').next())
            .collect();
        names.len()
    }

    /// User plus system CPU seconds so far.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.process.pid(), self.clk_tck)
    }

    /// (current RSS, peak RSS) in MiB.
    pub(crate) fn rss_mib(&self) -> (f64, f64) {
        rss_mib(self.process.pid())
    }
}

/// Clock ticks per second, for /proc/PID/stat.
pub(crate) fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User plus system CPU seconds of process `pid` so far.
pub(crate) fn cpu_seconds(pid: u32, clk_tck: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / clk_tck
}

/// (current RSS, peak RSS) of process `pid` in MiB.
pub(crate) fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

// ---------------------------------------------------------------- the API server's audit log

pub(crate) fn audit_mark() -> usize {
    support::audit::mark()
}

/// Requests by `user` since `mark`, watches left out, counted by "verb resource[/subresource]"
/// (verb `dry-run patch` and the like for dry runs).
pub(crate) fn requests_by(user: &str, mark: usize) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(&control_plane().audit_log).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines().skip(mark) {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if e["stage"] != "ResponseComplete" || e["user"]["username"] != user {
            continue;
        }
        let verb = e["verb"].as_str().unwrap_or("");
        if verb == "watch" {
            continue;
        }
        // A dry run changes nothing: counted apart, neither a mutation nor a read.
        let dry_run = e["requestURI"]
            .as_str()
            .is_some_and(|u| u.contains("dryRun=All"));
        let verb = if dry_run {
            format!("dry-run {verb}")
        } else {
            verb.to_string()
        };
        let mut resource = e["objectRef"]["resource"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if let Some(sub) = e["objectRef"]["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        if resource.is_empty() {
            resource = "(non-resource)".into();
        }
        *counts.entry(format!("{verb} {resource}")).or_insert(0) += 1;
    }
    counts
}

pub(crate) fn mutating(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| {
            ["create", "update", "patch", "delete"]
                .iter()
                .any(|v| k.starts_with(&format!("{v} ")))
        })
        .map(|(_, n)| n)
        .sum()
}

pub(crate) fn reads(counts: &BTreeMap<String, u64>) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| k.starts_with("get ") || k.starts_with("list "))
        .map(|(_, n)| n)
        .sum()
}

pub(crate) fn breakdown(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- git server access log

/// (requests, bytes sent) by the git HTTP server for `repo` in the access log after line `mark`.
pub(crate) async fn git_traffic(repo: &str, mark: usize) -> (u64, u64, u64) {
    let log = git_server().access_log().await;
    let (mut requests, mut bytes, mut packs) = (0, 0, 0);
    for line in log.lines().skip(mark) {
        if !line.contains(&format!("/{repo}.git/")) {
            continue;
        }
        // ... "POST /git/x.git/git-upload-pack HTTP/1.1" 200 1329 "-" "ua"
        let Some((_, after)) = line.split_once("\" ") else {
            continue;
        };
        let sent: u64 = after
            .split_whitespace()
            .nth(1)
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        requests += 1;
        bytes += sent;
        if line.contains("POST ") && line.contains("git-upload-pack") {
            packs += sent;
        }
    }
    (requests, bytes, packs)
}

pub(crate) async fn git_log_mark() -> usize {
    git_server().access_log().await.lines().count()
}

// ---------------------------------------------------------------- helpers

/// A GitRepository in `ns`, for the controller of that namespace's shard.
pub(crate) async fn create_gr(client: &Client, ns: &str, name: &str, spec: Value) {
    let gr: GitRepository = serde_json::from_value(json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "GitRepository",
        "metadata": {"name": name, "labels": {"capstan.dev/shard": shard_of(ns)}},
        "spec": spec,
    }))
    .unwrap();
    Api::<GitRepository>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &gr)
        .await
        .unwrap();
}

/// Each benchmark namespace has its own controller, sharded by the namespace's name.
pub(crate) fn shard_of(ns: &str) -> &str {
    ns
}

pub(crate) fn applied_revision(gr: &GitRepository) -> Option<&str> {
    let st = gr.status.as_ref()?;
    let ready = capstan::status::ready(Some(st))?;
    (ready.status == "True" && st.observed_generation == gr.metadata.generation)
        .then_some(st.last_applied_revision.as_deref())
        .flatten()
}

/// Polls until the GitRepository is Ready at a revision of `sha`; returns when that was seen.
pub(crate) async fn wait_ready(
    api: &Api<GitRepository>,
    name: &str,
    sha: &str,
    limit: Duration,
) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let gr = api.get(name).await.unwrap();
        if applied_revision(&gr).is_some_and(|r| r.ends_with(sha)) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{name} not Ready at {sha} within {limit:?}: {:?}",
            gr.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Another field manager takes `key` of ConfigMap `name` with `value` (drift); returns when.
pub(crate) async fn take_over(cms: &Api<ConfigMap>, name: &str, key: &str, value: &str) -> Instant {
    let edit = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {key: value}});
    cms.patch(
        name,
        &PatchParams::apply("someone-else").force(),
        &Patch::Apply(&edit),
    )
    .await
    .unwrap();
    Instant::now()
}

/// Polls until ConfigMap `name` has `value` under `key`; returns when that was seen.
pub(crate) async fn wait_data(
    cms: &Api<ConfigMap>,
    name: &str,
    key: &str,
    value: &str,
    limit: Duration,
) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(cm) = cms.get_opt(name).await.unwrap()
            && cm
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(String::as_str)
                == Some(value)
        {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{name} never had {key}: {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A repository of `files` (path, content).
pub(crate) fn repo_of(name: &str, files: &[(String, String)]) -> Repo {
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    Repo::create(name, &borrowed)
}

pub(crate) struct Bench {
    pub(crate) client: Client,
    pub(crate) ns: String,
    pub(crate) dir: tempfile::TempDir,
}

pub(crate) fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}
