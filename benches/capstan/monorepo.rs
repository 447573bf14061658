//! Scenario 7: a monorepo: 100 GitRepositories on one repository of 1,000 files, one directory
//! (one ConfigMap and nine other files) each; then a commit that touches one application.

use super::*;

pub(crate) async fn monorepo(b: &Bench, figures: &mut Figures) {
    let ns = namespace(&b.client, "bench-monorepo").await;
    let controller = Controller::start(&ns, shard_of(&ns), b.dir.path());
    let files: Vec<(String, String)> = (0..100)
        .flat_map(|app| {
            let cm = (
                format!("apps/app{app}/cm.yaml"),
                configmap(&format!("app{app}"), "1"),
            );
            let other = (1..10).map(move |n| {
                let text = format!("notes {n} of app {app}\n");
                (format!("apps/app{app}/notes/{n}.md"), text)
            });
            std::iter::once(cm).chain(other)
        })
        .collect();
    let repo = repo_of("bench-monorepo", &files);
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &ns);
    let cpu = controller.cpu_seconds();
    let started = Instant::now();
    for app in 0..100 {
        let spec = json!({"url": repo.http_url(), "path": format!("apps/app{app}"), "interval": "5s", "prune": true});
        create_gr(&b.client, &ns, &format!("app{app}"), spec).await;
    }
    let all_ready = all_at(&api, &repo.head()).await;
    let all_ready = all_ready.duration_since(started);
    let cpu = controller.cpu_seconds() - cpu;
    tokio::time::sleep(Duration::from_secs(6)).await;

    // One application changes.
    let log_mark = controller.process.log().lines().count();
    let mark = audit_mark();
    let cpu_before = controller.cpu_seconds();
    let sha = repo.commit(
        &[("apps/app7/cm.yaml", &configmap("app7", "2"))],
        "app7 only",
    );
    let seen = Instant::now();
    let all_again = all_at(&api, &sha).await.duration_since(seen);
    let cpu_commit = controller.cpu_seconds() - cpu_before;
    let log = controller.process.log();
    let since: Vec<&str> = log.lines().skip(log_mark).collect();
    // The log lines of `deploy::conclude` and `deploy::untouched` (fields follow the message).
    let rendered = since
        .iter()
        .filter(|l| l.contains(": applied revision "))
        .count();
    let untouched = since
        .iter()
        .filter(|l| l.contains(": nothing the render reads changed"))
        .count();
    let counts = requests_by(&controller.user, mark);
    let objects: u64 = counts
        .iter()
        .filter(|(k, _)| k.contains("configmaps"))
        .filter(|(k, _)| {
            ["patch", "create", "update", "delete"]
                .iter()
                .any(|v| k.starts_with(v))
        })
        .map(|(_, n)| n)
        .sum();
    figures.add(
        "all_ready_s",
        all_ready.as_secs_f64(),
        format!(
            "{:.1} s from the first create to all 100 Ready",
            all_ready.as_secs_f64()
        ),
    );
    figures.add(
        "cpu_per_gitrepository_s",
        cpu / 100.0,
        format!(
            "{:.3} CPU seconds per GitRepository to its first Ready",
            cpu / 100.0
        ),
    );
    figures.add(
        "commit_all_applied_s",
        all_again.as_secs_f64(),
        format!(
            "{:.1} s from the commit to all 100 at its revision (5 s interval)",
            all_again.as_secs_f64()
        ),
    );
    figures.add(
        "commit_renders",
        rendered as u64,
        format!("{rendered} rendered and applied, {untouched} recorded without a render"),
    );
    figures.add(
        "commit_mutating_requests",
        mutating(&counts),
        format!(
            "{} in all ({objects} on ConfigMaps; the rest status writes and Events of the new revision)",
            mutating(&counts)
        ),
    );
    figures.add(
        "commit_cpu_s",
        cpu_commit,
        format!("{cpu_commit:.2} CPU seconds from the commit to all 100 at its revision"),
    );
}

/// When every GitRepository of `api` is Ready at a revision of `sha`.
async fn all_at(api: &Api<GitRepository>, sha: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = api.list(&Default::default()).await.unwrap();
        let at = list
            .items
            .iter()
            .filter(|gr| applied_revision(gr).is_some_and(|r| r.ends_with(sha)))
            .count();
        if at == list.items.len() && at > 0 {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "only {at} at {sha} after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
