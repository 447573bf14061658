//! Scenario 2: the steady state: what an idle controller costs the API server, git and the machine.

use super::*;

pub(crate) async fn steady(
    b: &Bench,
    controller: &Controller,
    repo: &Repo,
    name: &str,
    figures: &mut Figures,
) {
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"interval": "2s"}})),
    )
    .await
    .unwrap();
    // The spec change is one reconcile (digests unchanged: nothing sent); then it is steady.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_ready(&api, name, &repo.head(), Duration::from_secs(60)).await;
    let intervals = 10u32;
    let mark = audit_mark();
    let git_mark = git_log_mark().await;
    let cpu = controller.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2) * intervals + Duration::from_secs(1)).await;
    let cpu = controller.cpu_seconds() - cpu;
    let counts = requests_by(&controller.user, mark);
    let (git_requests, git_bytes, pack_bytes) = git_traffic(&repo.name, git_mark).await;
    let status_writes = counts
        .iter()
        .filter(|(k, _)| k.contains("gitrepositories/status"))
        .map(|(_, n)| n)
        .sum::<u64>();
    figures.add(
        "intervals",
        intervals,
        format!("{intervals} intervals of 2 s, 1000 managed objects"),
    );
    figures.add(
        "mutating_requests",
        mutating(&counts),
        mutating(&counts).to_string(),
    );
    figures.add(
        "get_list_requests",
        reads(&counts),
        reads(&counts).to_string(),
    );
    figures.add("status_writes", status_writes, status_writes.to_string());
    figures.add(
        "requests",
        breakdown(&counts),
        if counts.is_empty() {
            "none".into()
        } else {
            breakdown(&counts)
        },
    );
    figures.add(
        "git_requests",
        git_requests,
        format!("{git_requests} (ref advertisements)"),
    );
    figures.add(
        "git_bytes",
        git_bytes,
        format!("{git_bytes} bytes in all; {pack_bytes} pack bytes"),
    );
    let per = cpu / f64::from(intervals);
    figures.add(
        "cpu_per_reconcile_ms",
        per * 1000.0,
        format!("{:.1} ms CPU per interval", per * 1000.0),
    );
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"interval": "1h"}})),
    )
    .await
    .unwrap();
}
