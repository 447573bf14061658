//! Scenario 11: Flux side by side. Flux's source-controller and kustomize-controller, built from
//! their Go modules by `tests/env/flux.sh`, run as processes on the same control plane and git
//! server as Capstan, each with a ServiceAccount of its own (cluster-admin, as Capstan's), with
//! their default flags except the addresses, the kubeconfig and leader election (off, as
//! Capstan's here). The same scenarios are measured for both in one run: every ratio is Flux's
//! figure over Capstan's.

use std::process::{Child, Command, Stdio};

use kube::core::ApiResource;

use super::cold::thousand_manifests;
use super::*;

const GIT_GROUP: &str = "source.toolkit.fluxcd.io";
const KS_GROUP: &str = "kustomize.toolkit.fluxcd.io";
/// The flags Flux's controllers are given, and why, for the report.
const FLUX_FLAGS: &str = "`--storage-path`, `--storage-addr`, `--storage-adv-addr` (loopback), `--metrics-addr`, `--health-addr` (free loopback ports), `--events-addr=` (no event recorder), `--enable-leader-election=false`; `KUBECONFIG` for its ServiceAccount";

/// The two Flux controllers, killed when dropped.
struct Flux {
    source: Child,
    kustomize: Child,
    users: [String; 2],
    dir: PathBuf,
}

impl Flux {
    /// Installs Flux's CRDs (once) and starts both controllers, as ServiceAccounts of `ns`.
    fn start(ns: &str, dir: &Path) -> Flux {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/env/flux.sh");
        let out = |arg: &str| {
            let out = Command::new(&script).arg(arg).output().unwrap();
            assert!(
                out.status.success(),
                "flux.sh {arg}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let binaries: Vec<String> = out("build").lines().map(str::to_string).collect();
        for crd in out("crds").lines() {
            control_plane().kubectl(&["apply", "--server-side", "-f", crd]);
        }
        for crd in ["gitrepositories", "kustomizations"] {
            let group = if crd == "kustomizations" {
                KS_GROUP
            } else {
                GIT_GROUP
            };
            control_plane().kubectl(&[
                "wait",
                "--for=condition=Established",
                &format!("crd/{crd}.{group}"),
            ]);
        }
        let dir = dir.join(format!("flux-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let storage = format!("127.0.0.1:{}", port());
        let spawn = |name: &str, binary: &str, args: Vec<String>| {
            let kubeconfig = cluster_admin_kubeconfig(ns, name, &dir);
            let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
            Command::new(binary)
                .args(args)
                .env("KUBECONFIG", kubeconfig)
                .env("RUNTIME_NAMESPACE", ns)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        };
        let common = |extra: &[String]| {
            let mut args = vec![
                format!("--metrics-addr=127.0.0.1:{}", port()),
                format!("--health-addr=127.0.0.1:{}", port()),
                "--enable-leader-election=false".to_string(),
                "--events-addr=".to_string(),
            ];
            args.extend_from_slice(extra);
            args
        };
        let storage_path = dir.join("storage");
        std::fs::create_dir_all(&storage_path).unwrap();
        let source = spawn(
            "source-controller",
            &binaries[0],
            common(&[
                format!("--storage-path={}", storage_path.display()),
                format!("--storage-addr={storage}"),
                format!("--storage-adv-addr={storage}"),
            ]),
        );
        let kustomize = spawn("kustomize-controller", &binaries[1], common(&[]));
        Flux {
            source,
            kustomize,
            users: [
                sa_user(ns, "source-controller"),
                sa_user(ns, "kustomize-controller"),
            ],
            dir,
        }
    }

    fn pids(&self) -> [u32; 2] {
        [self.source.id(), self.kustomize.id()]
    }

    fn cpu_seconds(&self) -> f64 {
        let tck = clk_tck();
        self.pids().iter().map(|p| cpu_seconds(*p, tck)).sum()
    }

    /// Both controllers' RSS together, now and at their peaks (MiB).
    fn rss_mib(&self) -> (f64, f64) {
        self.pids()
            .iter()
            .map(|p| rss_mib(*p))
            .fold((0.0, 0.0), |(a, b), (c, d)| (a + c, b + d))
    }

    /// Requests by both controllers since `mark`, watches left out.
    fn requests(&self, mark: usize) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for user in &self.users {
            for (k, n) in requests_by(user, mark) {
                *all.entry(k).or_insert(0) += n;
            }
        }
        all
    }

    fn log_tail(&self) -> String {
        ["source-controller", "kustomize-controller"]
            .iter()
            .map(|n| {
                let log =
                    std::fs::read_to_string(self.dir.join(format!("{n}.log"))).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "{n}:\n{}",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Flux {
    fn drop(&mut self) {
        for child in [&mut self.source, &mut self.kustomize] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn api(client: &Client, ns: &str, group: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, "v1", kind);
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

/// A Flux GitRepository of `url`'s main branch and, with `path`, a Kustomization of it.
async fn create_flux(client: &Client, ns: &str, name: &str, url: &str, path: Option<&str>) {
    let source = json!({
        "apiVersion": format!("{GIT_GROUP}/v1"), "kind": "GitRepository",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"url": url, "interval": "1h", "ref": {"branch": "main"}},
    });
    let sources = api(client, ns, GIT_GROUP, "GitRepository", "gitrepositories");
    sources
        .create(
            &PostParams::default(),
            &serde_json::from_value(source).unwrap(),
        )
        .await
        .unwrap();
    if let Some(path) = path {
        let ks = json!({
            "apiVersion": format!("{KS_GROUP}/v1"), "kind": "Kustomization",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"interval": "1h", "path": path, "prune": true, "timeout": "5m",
                "sourceRef": {"kind": "GitRepository", "name": name}},
        });
        let kss = api(client, ns, KS_GROUP, "Kustomization", "kustomizations");
        kss.create(&PostParams::default(), &serde_json::from_value(ks).unwrap())
            .await
            .unwrap();
    }
}

/// Whether a Flux object is Ready at a revision of `sha` (`lastAppliedRevision` of a
/// Kustomization, the artifact's of a GitRepository).
fn flux_ready(object: &DynamicObject, sha: Option<&str>) -> bool {
    let status = &object.data["status"];
    let ready = status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    let revision = status["lastAppliedRevision"]
        .as_str()
        .or(status["artifact"]["revision"].as_str())
        .unwrap_or_default();
    ready && sha.is_none_or(|sha| revision.ends_with(sha))
}

async fn wait_flux(api: &Api<DynamicObject>, name: &str, sha: &str, flux: &Flux) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let object = api.get(name).await.unwrap();
        if flux_ready(&object, Some(sha)) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "Flux's {name} not Ready at {sha}: {}\n{}",
            object.data["status"],
            flux.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_interval(client: &Client, ns: &str, name: &str, interval: &str) {
    let patch = Patch::Merge(json!({"spec": {"interval": interval}}));
    for (group, kind, plural) in [
        (GIT_GROUP, "GitRepository", "gitrepositories"),
        (KS_GROUP, "Kustomization", "kustomizations"),
    ] {
        api(client, ns, group, kind, plural)
            .patch(name, &PatchParams::default(), &patch)
            .await
            .unwrap();
    }
    let capstan: Api<GitRepository> = Api::namespaced(client.clone(), ns);
    capstan
        .patch(name, &PatchParams::default(), &patch)
        .await
        .unwrap();
}

/// A row of Capstan's and Flux's figures and their ratio, with `shown` for each figure.
fn compare(f: &mut Figures, name: &str, capstan: f64, flux: f64, shown: impl Fn(f64) -> String) {
    let ratio = if capstan > 0.0 {
        format!("{:.1}x", flux / capstan)
    } else {
        "-".to_string()
    };
    f.add_row(
        name,
        json!({"capstan": capstan, "flux": flux}),
        vec![shown(capstan), shown(flux), ratio],
    );
}

pub(crate) async fn flux(b: &Bench, figures: &mut Figures) {
    figures.columns = Some(vec!["Capstan", "Flux", "Flux / Capstan"]);
    figures.add_row(
        "setup",
        json!(FLUX_FLAGS),
        vec![
            "`capstan controller`, default flags (concurrency 4)".into(),
            format!("source-controller v1.9.2 and kustomize-controller v1.9.0, default flags (`--concurrent` 2 and 4) but {FLUX_FLAGS}"),
            "-".into(),
        ],
    );
    let ns = namespace(&b.client, "bench-flux").await;
    let mut capstan = Controller::start(&ns, shard_of(&ns), b.dir.path());
    let flux = Flux::start(&ns, b.dir.path());
    let grs: Api<GitRepository> = Api::namespaced(b.client.clone(), &ns);
    let kss = api(&b.client, &ns, KS_GROUP, "Kustomization", "kustomizations");

    // Cold sync of 1000 objects: each side three times, alternating, each with repositories and
    // objects of its own.
    let (mut cold, mut requests) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for run in 0..3 {
        for side in 0..2 {
            let prefix = format!("{}{run}", ["capstan", "flux"][side]);
            let files = thousand_manifests(&prefix);
            let repo = repo_of(&prefix, &files);
            let name = format!("cold{run}");
            let mark = audit_mark();
            let started = Instant::now();
            let done = if side == 0 {
                let spec = json!({"url": repo.http_url(), "interval": "1h", "timeout": "5m", "prune": true});
                create_gr(&b.client, &ns, &name, spec).await;
                wait_ready(&grs, &name, &repo.head(), Duration::from_secs(600)).await
            } else {
                create_flux(&b.client, &ns, &name, &repo.http_url(), Some("./")).await;
                wait_flux(&kss, &name, &repo.head(), &flux).await
            };
            cold[side].push((done - started).as_secs_f64());
            tokio::time::sleep(Duration::from_secs(1)).await;
            let counts = match side {
                0 => requests_by(&capstan.user, mark),
                _ => flux.requests(mark),
            };
            requests[side].push(mutating(&counts) as f64);
        }
    }
    let s = |v: f64| format!("{v:.2} s (median of 3)");
    compare(
        figures,
        "cold_sync_s",
        median(&mut cold[0]),
        median(&mut cold[1]),
        s,
    );
    compare(
        figures,
        "cold_mutating_requests",
        median(&mut requests[0]),
        median(&mut requests[1]),
        |v| format!("{v:.0}"),
    );

    // Steady state: the last pair polled every 10 s, nothing new in git or the cluster.
    let intervals = 6u32;
    set_interval(&b.client, &ns, "cold2", "10s").await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mark = audit_mark();
    let cpu = [capstan.cpu_seconds(), flux.cpu_seconds()];
    tokio::time::sleep(Duration::from_secs(10) * intervals).await;
    let cpu = [capstan.cpu_seconds() - cpu[0], flux.cpu_seconds() - cpu[1]];
    let counts = [requests_by(&capstan.user, mark), flux.requests(mark)];
    let rss = [capstan.rss_mib().0, flux.rss_mib().0];
    let window = format!("{intervals} x 10 s");
    figures.add_row(
        "steady_window",
        json!(intervals * 10),
        vec![window.clone(), window, "-".into()],
    );
    compare(
        figures,
        "steady_mutating_requests",
        mutating(&counts[0]) as f64,
        mutating(&counts[1]) as f64,
        |v| format!("{v:.0}"),
    );
    compare(
        figures,
        "steady_get_list_requests",
        reads(&counts[0]) as f64,
        reads(&counts[1]) as f64,
        |v| format!("{v:.0}"),
    );
    let by_verb = |c: &BTreeMap<String, u64>| {
        let mut verbs: BTreeMap<&str, u64> = BTreeMap::new();
        for (k, n) in c {
            let verb = k.rsplit_once(' ').map_or(k.as_str(), |(v, _)| v);
            *verbs.entry(verb).or_insert(0) += n;
        }
        match verbs.is_empty() {
            true => "none".to_string(),
            false => verbs
                .iter()
                .map(|(v, n)| format!("{v} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    };
    figures.add_row(
        "steady_requests_by_verb",
        json!({"capstan": by_verb(&counts[0]), "flux": by_verb(&counts[1])}),
        vec![by_verb(&counts[0]), by_verb(&counts[1]), "-".into()],
    );
    let per = |cpu: f64| cpu * 1000.0 / f64::from(intervals);
    compare(
        figures,
        "steady_cpu_ms_per_interval",
        per(cpu[0]),
        per(cpu[1]),
        |v| format!("{v:.0} ms"),
    );
    compare(figures, "steady_rss_mib", rss[0], rss[1], |v| {
        format!("{v:.1} MiB")
    });

    // Drift: a field taken over by another manager, until it is back as in git (10 s interval).
    let mut reverted = [Vec::new(), Vec::new()];
    for (side, prefix) in ["capstan2", "flux2"].iter().enumerate() {
        let cms: Api<ConfigMap> = Api::namespaced(b.client.clone(), &format!("{prefix}-0"));
        for i in 0..3 {
            let name = format!("config-{i}");
            let edited = take_over(&cms, &name, "index", "edited").await;
            let back = wait_data(
                &cms,
                &name,
                "index",
                &i.to_string(),
                Duration::from_secs(60),
            )
            .await;
            reverted[side].push((back - edited).as_secs_f64());
        }
    }
    compare(
        figures,
        "drift_reverted_s",
        median(&mut reverted[0]),
        median(&mut reverted[1]),
        |v| format!("{v:.2} s (median of 3; 10 s interval)"),
    );
    let (_, flux_peak) = flux.rss_mib();
    let (_, capstan_peak) = capstan.rss_mib();
    compare(figures, "peak_rss_mib", capstan_peak, flux_peak, |v| {
        format!("{v:.1} MiB")
    });
    // Flux's next processes would take these up again: they watch every namespace.
    let suspend = Patch::Merge(json!({"spec": {"suspend": true}}));
    for run in 0..3 {
        for (group, kind, plural) in [
            (KS_GROUP, "Kustomization", "kustomizations"),
            (GIT_GROUP, "GitRepository", "gitrepositories"),
        ] {
            api(&b.client, &ns, group, kind, plural)
                .patch(&format!("cold{run}"), &PatchParams::default(), &suspend)
                .await
                .unwrap();
        }
    }
    drop(flux);
    capstan.process.terminate();

    // 1000 sources Ready, over 100 repositories, in a namespace and processes of their own:
    // Flux's GitRepositories (an artifact each), Capstan's (a path of one ConfigMap applied each).
    sources(b, figures).await;
}

async fn sources(b: &Bench, figures: &mut Figures) {
    let ns = namespace(&b.client, "bench-flux-sources").await;
    let target = namespace(&b.client, "bench-flux-sources-objects").await;
    let repos: Vec<Repo> = (0..100)
        .map(|r| {
            let files: Vec<(String, String)> = (0..10)
                .map(|d| {
                    (
                        format!("d{d}/cm.yaml"),
                        configmap(&format!("cm-{r}-{d}"), "1"),
                    )
                })
                .collect();
            repo_of(&format!("sources{r}"), &files)
        })
        .collect();
    let mut ready_s = [0.0; 2];
    let mut rss = [0.0; 2];
    let mut cpu = [0.0; 2];
    for side in 0..2 {
        // Each side alone on the machine while it works.
        let capstan = (side == 0).then(|| Controller::start(&ns, shard_of(&ns), b.dir.path()));
        let flux = (side == 1).then(|| Flux::start(&ns, b.dir.path()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cpu_before = match (&capstan, &flux) {
            (Some(c), _) => c.cpu_seconds(),
            (_, Some(f)) => f.cpu_seconds(),
            _ => unreachable!(),
        };
        let started = Instant::now();
        let create = |i: usize| {
            let (r, d) = (i / 10, i % 10);
            let (client, ns, target, url) = (&b.client, &ns, &target, repos[r].http_url());
            async move {
                let name = format!("app-{i}");
                if side == 0 {
                    let spec = json!({"url": url, "path": format!("d{d}"), "interval": "1m", "targetNamespace": target});
                    create_gr(client, ns, &name, spec).await;
                } else {
                    create_flux(client, ns, &name, &url, None).await;
                }
            }
        };
        stream::iter((0..1000).map(create))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let ready = if side == 0 {
                let list = Api::<GitRepository>::namespaced(b.client.clone(), &ns)
                    .list(&Default::default())
                    .await
                    .unwrap();
                list.items
                    .iter()
                    .filter(|gr| applied_revision(gr).is_some())
                    .count()
            } else {
                let list = api(
                    &b.client,
                    &ns,
                    GIT_GROUP,
                    "GitRepository",
                    "gitrepositories",
                )
                .list(&Default::default())
                .await
                .unwrap();
                list.items.iter().filter(|o| flux_ready(o, None)).count()
            };
            if ready == 1000 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {ready} of 1000 Ready after 15 minutes"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ready_s[side] = started.elapsed().as_secs_f64();
        (cpu[side], rss[side]) = match (&capstan, &flux) {
            (Some(c), _) => (c.cpu_seconds() - cpu_before, c.rss_mib().0),
            (_, Some(f)) => (f.cpu_seconds() - cpu_before, f.rss_mib().0),
            _ => unreachable!(),
        };
        // The next side starts on an empty namespace.
        if side == 0 {
            drop(capstan);
            let grs: Api<GitRepository> = Api::namespaced(b.client.clone(), &ns);
            for i in 0..1000 {
                // Without a controller the finalizer stays; the objects are the test's to drop.
                let patch = json!({"metadata": {"finalizers": null}});
                let _ = grs
                    .patch(
                        &format!("app-{i}"),
                        &PatchParams::default(),
                        &Patch::Merge(patch),
                    )
                    .await;
                let _ = grs.delete(&format!("app-{i}"), &Default::default()).await;
            }
        }
    }
    compare(
        figures,
        "sources_all_ready_s",
        ready_s[0],
        ready_s[1],
        |v| format!("{v:.1} s"),
    );
    compare(figures, "sources_cpu_s", cpu[0], cpu[1], |v| {
        format!("{v:.1} CPU s")
    });
    compare(figures, "sources_rss_mib", rss[0], rss[1], |v| {
        format!("{v:.1} MiB")
    });
}
