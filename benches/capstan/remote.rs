//! Scenario 10: a remote cluster (the tests' second control plane) in a steady state: 10
//! GitRepositories of 100 ConfigMaps each, applied there through one kubeconfig, polled every
//! 2 s. What the controller asks of each API server over ten intervals, watches counted apart.

use super::*;

use support::env::remote_control_plane;

const GITREPOSITORIES: usize = 10;
const OBJECTS: usize = 100;

pub(crate) async fn remote(b: &Bench, controller: &Controller, figures: &mut Figures) {
    let remote = remote_control_plane();
    let sa = "capstan-bench";
    let kubeconfig = remote.token_kubeconfig(&b.ns, sa, None);
    let remote_user = sa_user(&b.ns, sa);
    put_secret(
        &b.client,
        &b.ns,
        "remote",
        &[("value", kubeconfig.as_bytes())],
    )
    .await;
    let files: Vec<(String, String)> = (0..GITREPOSITORIES)
        .flat_map(|g| {
            (0..OBJECTS).map(move |i| {
                let name = format!("remote-{g}-{i}");
                (format!("app{g}/{name}.yaml"), configmap(&name, "1"))
            })
        })
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let repo = Repo::create("bench-remote", &files);
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    let started = Instant::now();
    let remote_mark = remote_audit_mark();
    for g in 0..GITREPOSITORIES {
        let spec = json!({
            "url": repo.http_url(), "interval": "2s", "prune": true, "path": format!("app{g}"),
            "kubeConfig": {"secretRef": {"name": "remote"}},
        });
        create_gr(&b.client, &b.ns, &format!("remote-{g}"), spec).await;
    }
    for g in 0..GITREPOSITORIES {
        let name = format!("remote-{g}");
        wait_ready(&api, &name, &repo.head(), Duration::from_secs(300)).await;
    }
    let cold = started.elapsed().as_secs_f64();
    figures.add(
        "cold_s",
        cold,
        format!(
            "{cold:.1} s until all {GITREPOSITORIES} Ready ({} objects on the remote)",
            GITREPOSITORIES * OBJECTS
        ),
    );
    let watches = watches_started(remote_mark, &remote_user);
    figures.add(
        "remote_watches",
        watches,
        format!("{watches} (for {GITREPOSITORIES} GitRepositories on one kubeconfig)"),
    );

    // Settled: the first polls after Ready are behind us.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let intervals = 10u32;
    let mark = audit_mark();
    let remote_mark = remote_audit_mark();
    let cpu = controller.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2) * intervals + Duration::from_secs(1)).await;
    let cpu = controller.cpu_seconds() - cpu;
    let local = requests_by(&controller.user, mark);
    // Only the GitRepositories of this scenario are polled now (the others poll hourly).
    let remote_counts = remote_requests_by(&remote_user, remote_mark);
    figures.add(
        "intervals",
        intervals,
        format!("{intervals} intervals of 2 s, {GITREPOSITORIES} GitRepositories"),
    );
    let shown = |counts: &BTreeMap<String, u64>| match counts.is_empty() {
        true => "none".to_string(),
        false => breakdown(counts),
    };
    figures.add(
        "local_requests",
        breakdown(&local),
        format!("{} (management cluster)", shown(&local)),
    );
    figures.add(
        "remote_requests",
        breakdown(&remote_counts),
        format!("{} (remote cluster)", shown(&remote_counts)),
    );
    let remote_mutating = mutating(&remote_counts);
    figures.add(
        "remote_mutating_requests",
        remote_mutating,
        remote_mutating.to_string(),
    );
    let per = cpu / f64::from(intervals);
    figures.add(
        "cpu_per_interval_ms",
        per * 1000.0,
        format!(
            "{:.1} ms CPU per interval, all {GITREPOSITORIES} together",
            per * 1000.0
        ),
    );
    for g in 0..GITREPOSITORIES {
        let name = format!("remote-{g}");
        patch_interval(&api, &name).await;
    }
}

async fn patch_interval(api: &Api<GitRepository>, name: &str) {
    let patch = json!({"spec": {"interval": "1h"}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

fn remote_audit() -> Vec<Value> {
    std::fs::read_to_string(&remote_control_plane().audit_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn remote_audit_mark() -> usize {
    remote_audit().len()
}

fn watches_started(mark: usize, user: &str) -> u64 {
    remote_audit()
        .iter()
        .skip(mark)
        .filter(|e| {
            e["verb"] == "watch" && e["stage"] == "ResponseStarted" && e["user"]["username"] == user
        })
        .count() as u64
}

/// Requests by `user` on the remote since `mark`, watches left out, by "verb resource".
fn remote_requests_by(user: &str, mark: usize) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for e in remote_audit().iter().skip(mark) {
        if e["stage"] != "ResponseComplete" || e["user"]["username"] != user || e["verb"] == "watch"
        {
            continue;
        }
        let resource = e["objectRef"]["resource"]
            .as_str()
            .unwrap_or("(non-resource)");
        let key = format!("{} {resource}", e["verb"].as_str().unwrap_or(""));
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}
