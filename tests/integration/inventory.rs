//! An inventory past what a status holds: the status shows the first entries and counts, and
//! `InventoryPart`s hold the whole record, which prune, a restarted controller, `capstan diff`
//! and deletion read back.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

use crate::cli::{capstan, stdout};
use crate::restart::restart;
use crate::support::controller::{Fixture, configmap, spec};
use crate::support::{Repo, audit};
use capstan::api::{GitRepository, InventoryPart, STATUS_ENTRIES};

fn name(n: usize) -> String {
    format!("cm-{n:03}")
}

/// One file per ten ConfigMaps (a render reads at most 100 files by default): `g014.yaml` holds
/// cm-140 to cm-149.
fn files(range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range
        .step_by(10)
        .map(|start| {
            let docs: Vec<String> = (start..start + 10)
                .map(|n| configmap(&name(n), "1"))
                .collect();
            (format!("g{:03}.yaml", start / 10), docs.join("\n---\n"))
        })
        .collect()
}

fn paths(range: std::ops::Range<usize>) -> Vec<String> {
    files(range).into_iter().map(|(path, _)| path).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The ConfigMaps Capstan applied for `app`, by name.
async fn applied(fx: &Fixture) -> Vec<String> {
    let api: Api<ConfigMap> = Api::namespaced(fx.client.clone(), &fx.ns);
    let list = api
        .list(&ListParams::default().labels("capstan.dev/name=app"))
        .await
        .unwrap();
    let mut names: Vec<String> = list.items.iter().map(|c| c.name_any()).collect();
    names.sort();
    names
}

async fn parts(fx: &Fixture) -> Vec<InventoryPart> {
    let api: Api<InventoryPart> = Api::namespaced(fx.client.clone(), &fx.ns);
    api.list(&ListParams::default()).await.unwrap().items
}

/// Checks what `gr`'s status says of its `count` objects, and that its one part lists them all.
async fn check_record(fx: &Fixture, gr: &GitRepository, count: usize) {
    let status = gr.status.as_ref().unwrap();
    let inventory = status.inventory.as_ref().unwrap();
    assert_eq!(inventory.entries.len(), STATUS_ENTRIES);
    assert_eq!(inventory.count, Some(count as i64));
    let record = inventory.record.as_ref().expect("a record past the status");
    assert_eq!(record.parts, 1);
    // The status stays small whatever the inventory's size.
    let bytes = serde_json::to_vec(status).unwrap().len();
    assert!(bytes < 32 * 1024, "status of {bytes} bytes");
    // Only the record the status names is left, owned by the GitRepository (the parts of the
    // record before go right after the status is written).
    wait_until("the old record's parts deleted", async || {
        parts(fx).await.len() == 1
    })
    .await;
    let parts = parts(fx).await;
    assert_eq!(
        parts.len(),
        1,
        "{:?}",
        parts.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    let part = &parts[0];
    assert_eq!(part.name_any(), format!("{}-0", record.name));
    assert_eq!(part.spec.digest, record.digest);
    assert_eq!(part.spec.entries.len(), count);
    assert_eq!(part.owner_references()[0].uid, gr.uid().unwrap());
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn an_inventory_past_the_status_is_kept_in_parts_and_read_back() {
    let mut fx = Fixture::with_http("inventory").await;
    let initial = files(0..150);
    let refs: Vec<(&str, &str)> = initial
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let repo = Repo::create("inventory", &refs);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    let gr = fx.wait_applied("app", &repo.head()).await;
    check_record(&fx, &gr, 150).await;
    assert_eq!(applied(&fx).await.len(), 150);

    // `capstan diff` reads the whole inventory: objects the status does not list (it shows
    // cm-000 to cm-099) are shown as pruned when they leave git.
    for path in paths(140..150) {
        std::fs::remove_file(repo.work_dir().join(path)).unwrap();
    }
    let out = capstan(&[
        "diff",
        "app",
        "-n",
        &fx.ns,
        "--path",
        repo.work_dir().to_str().unwrap(),
    ])
    .await;
    let text = stdout(&out);
    for n in 140..150 {
        let row = format!("ConfigMap {}/{}: pruned", fx.ns, name(n));
        assert!(text.contains(&row), "{text}");
    }

    // Prune reads the record: the ten go, and the record of 140 replaces that of 150.
    let sha = repo.remove(&strs(&paths(140..150)), "remove ten");
    let gr = fx.wait_applied("app", &sha).await;
    check_record(&fx, &gr, 140).await;
    assert_eq!(applied(&fx).await, (0..140).map(name).collect::<Vec<_>>());

    // A restarted controller reads the record back: nothing changed, so nothing is written;
    // and what only the record lists is pruned.
    let mark = audit::mark();
    restart(&mut fx).await;
    let mutating = audit::mutating_since(mark, &fx.ns);
    assert!(mutating.is_empty(), "a restart changed: {mutating:?}");
    let sha = repo.remove(&strs(&paths(130..140)), "remove ten more");
    let gr = fx.wait_applied("app", &sha).await;
    check_record(&fx, &gr, 130).await;
    assert_eq!(applied(&fx).await, (0..130).map(name).collect::<Vec<_>>());

    // Back within what the status holds: the status lists everything, and no part is left.
    let sha = repo.remove(&strs(&paths(50..130)), "down to fifty");
    let gr = fx.wait_applied("app", &sha).await;
    let inventory = gr.status.unwrap().inventory.unwrap();
    assert_eq!((inventory.entries.len(), inventory.record), (50, None));
    wait_until("the parts were not deleted", async || {
        parts(&fx).await.is_empty()
    })
    .await;

    // Past it again, then deleted: every object goes, and the record with them.
    let more = files(200..320);
    let refs: Vec<(&str, &str)> = more.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    let sha = repo.commit(&refs, "one hundred and twenty more");
    let gr = fx.wait_applied("app", &sha).await;
    check_record(&fx, &gr, 170).await;
    fx.api()
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("objects were left behind", async || {
        applied(&fx).await.is_empty()
    })
    .await;
    wait_until("parts were left behind", async || {
        parts(&fx).await.is_empty()
    })
    .await;
}
