//! Scenario 8: a large inventory: one GitRepository of 50,000 small objects syncs, then a
//! commit updates one object, then one prunes 1,000; with the size of the largest object
//! Capstan writes (the GitRepository with its status, and the inventory record's parts).

use super::*;

use capstan::api::InventoryPart;
use kube::ResourceExt;

const FILES: usize = 50;
const PER_FILE: usize = 1000;

fn file(f: usize, value: &str) -> (String, String) {
    let docs: Vec<String> = (0..PER_FILE)
        .map(|n| configmap(&format!("cm-{f}-{n}"), if n == 0 { value } else { "1" }))
        .collect();
    (format!("f{f:02}.yaml"), docs.join("---\n"))
}

pub(crate) async fn inventory(b: &Bench, figures: &mut Figures) {
    let ns = namespace(&b.client, "bench-inventory").await;
    let mut controller = Controller::start(&ns, shard_of(&ns), b.dir.path());
    let files: Vec<(String, String)> = (0..FILES).map(|f| file(f, "1")).collect();
    let repo = repo_of("bench-inventory", &files);
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &ns);
    let objects = FILES * PER_FILE;

    // The cold sync.
    let mark = audit_mark();
    let started = Instant::now();
    let spec = json!({"url": repo.http_url(), "interval": "5s", "prune": true, "timeout": "10m"});
    create_gr(&b.client, &ns, "big", spec).await;
    wait_at(&api, &repo.head(), Duration::from_secs(1200)).await;
    let synced = started.elapsed();
    let counts = requests_by(&controller.user, mark);
    figures.add(
        "sync_s",
        synced.as_secs_f64(),
        format!(
            "{:.1} s from the create to Ready, {objects} objects ({} mutating requests)",
            synced.as_secs_f64(),
            mutating(&counts)
        ),
    );
    sizes(b, &ns, &api, "synced", figures).await;

    // One object changes.
    let mark = audit_mark();
    let started = Instant::now();
    let (path, text) = file(7, "2");
    let sha = repo.commit(&[(&path, &text)], "one object");
    wait_at(&api, &sha, Duration::from_secs(600)).await;
    let took = started.elapsed();
    let counts = requests_by(&controller.user, mark);
    let sent = writes_of(&counts, "configmaps");
    figures.add(
        "update_one_s",
        took.as_secs_f64(),
        format!(
            "{:.1} s from the commit to Ready at it (5 s interval); {sent} ConfigMap sent, {} mutating requests in all ({})",
            took.as_secs_f64(),
            mutating(&counts),
            breakdown(&counts)
        ),
    );

    // A thousand leave git.
    let mark = audit_mark();
    let started = Instant::now();
    let sha = repo.remove(&["f49.yaml"], "prune a thousand");
    wait_at(&api, &sha, Duration::from_secs(600)).await;
    let took = started.elapsed();
    let counts = requests_by(&controller.user, mark);
    let deleted: u64 = counts
        .iter()
        .filter(|(k, _)| k.starts_with("delete configmaps"))
        .map(|(_, n)| n)
        .sum();
    figures.add(
        "prune_thousand_s",
        took.as_secs_f64(),
        format!(
            "{:.1} s from the commit to Ready at it; {deleted} ConfigMaps deleted, {} mutating requests in all",
            took.as_secs_f64(),
            mutating(&counts)
        ),
    );
    sizes(b, &ns, &api, "pruned", figures).await;

    // A restart reads the record back and sends nothing.
    let started = Instant::now();
    controller.restart();
    // Counted from when the old process has exited: the requests that end its last reconcile
    // (deleting the replaced record's parts, its Event) are not the restart's.
    let mark = audit_mark();
    let deadline = Instant::now() + Duration::from_secs(600);
    while controller.reconciled(&ns).await == 0 {
        assert!(Instant::now() < deadline, "no reconcile after a restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let counts = requests_by(&controller.user, mark);
    figures.add(
        "restart_mutating_requests",
        mutating(&counts),
        format!(
            "{} mutating requests in the {:.0} s after a restart ({:.1} s to the first reconcile): {}",
            mutating(&counts),
            (took + Duration::from_secs(6)).as_secs_f64(),
            took.as_secs_f64(),
            breakdown(&counts)
        ),
    );
    // What the restarted controller did, for when it did more than nothing.
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-inventory-restart.log");
    let _ = std::fs::write(&log, controller.process.log());
    let (_, peak) = controller.rss_mib();
    figures.add(
        "peak_rss_mib",
        peak,
        format!("{peak:.0} MiB peak RSS of the controller (after the restart)"),
    );
}

/// The bytes of the GitRepository and of its status, and the parts' count and largest size.
async fn sizes(b: &Bench, ns: &str, api: &Api<GitRepository>, when: &str, figures: &mut Figures) {
    let gr = api.get("big").await.unwrap();
    let object = serde_json::to_vec(&gr).unwrap().len();
    let status = serde_json::to_vec(&gr.status).unwrap().len();
    // The parts of the record the status names: those of the record it replaced may still be
    // being deleted.
    let digest = gr
        .status
        .as_ref()
        .and_then(|s| s.inventory.as_ref()?.record.as_ref())
        .map(|r| r.digest.clone())
        .unwrap_or_default();
    let parts: Api<InventoryPart> = Api::namespaced(b.client.clone(), ns);
    let parts = parts.list(&Default::default()).await.unwrap().items;
    let parts: Vec<InventoryPart> = parts
        .into_iter()
        .filter(|p| p.spec.digest == digest)
        .collect();
    let largest = parts
        .iter()
        .map(|p| serde_json::to_vec(p).unwrap().len())
        .max()
        .unwrap_or(0);
    let entries: usize = parts.iter().map(|p| p.spec.entries.len()).sum();
    let names: Vec<String> = parts.iter().map(|p| p.name_any()).collect();
    figures.add(
        &format!("{when}_status_bytes"),
        status as u64,
        format!("{status} bytes of status ({object} bytes the whole GitRepository)"),
    );
    figures.add(
        &format!("{when}_largest_part_bytes"),
        largest as u64,
        format!(
            "{largest} bytes the largest of {} InventoryParts ({entries} entries in all; {})",
            parts.len(),
            names.first().map_or("none", String::as_str)
        ),
    );
}

/// Mutating requests on `resource`.
fn writes_of(counts: &BTreeMap<String, u64>, resource: &str) -> u64 {
    counts
        .iter()
        .filter(|(k, _)| k.ends_with(&format!(" {resource}")))
        .filter(|(k, _)| {
            ["patch", "create", "update", "delete"]
                .iter()
                .any(|v| k.starts_with(v))
        })
        .map(|(_, n)| n)
        .sum()
}

/// Waits until `big` is Ready at `sha`.
async fn wait_at(api: &Api<GitRepository>, sha: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let gr = api.get("big").await.unwrap();
        let ready = capstan::status::ready(gr.status.as_ref()).is_some_and(|c| c.status == "True");
        if ready && applied_revision(&gr).is_some_and(|r| r.ends_with(sha)) {
            return;
        }
        assert!(Instant::now() < deadline, "not Ready at {sha} in {limit:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
