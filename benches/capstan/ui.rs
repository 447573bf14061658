//! Scenario 13: the web UI over 1000 GitRepositories. How long `capstan ui` takes to serve its
//! first list (its watches included), to render the list on the server and to load it in
//! Chromium, and what the UI process holds in memory. The GitRepositories' status is written
//! directly (no controller runs for them): an applied revision, a summary, one in 50 failing and
//! one in 20 drifted.

use super::*;

use support::browser::{Browser, UiProcess};

const COUNT: usize = 1000;
const SAMPLES: usize = 20;

pub(crate) async fn ui(b: &Bench, figures: &mut Figures) {
    let ns = namespace(&b.client, "bench-ui").await;
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &ns);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    stream::iter(0..COUNT)
        .map(|i| {
            let (api, ns, now) = (api.clone(), ns.clone(), now.clone());
            let client = b.client.clone();
            async move {
                let name = format!("app-{i:04}");
                let spec = json!({"url": format!("https://git.example/team-{}/app-{i}.git", i % 10), "interval": "1m", "path": "./deploy"});
                create_gr(&client, &ns, &name, spec).await;
                let failing = i % 50 == 0;
                let sha = format!("{:040x}", i as u128 * 7919);
                let ready = if failing {
                    json!({"type": "Ready", "status": "False", "reason": "BuildFailed", "observedGeneration": 1, "lastTransitionTime": now,
                           "message": format!("revision main@sha1:{sha}: deploy/app.yaml:3: invalid YAML")})
                } else {
                    json!({"type": "Ready", "status": "True", "reason": "ReconciliationSucceeded", "observedGeneration": 1, "lastTransitionTime": now,
                           "message": format!("Applied revision main@sha1:{sha} (12 objects: 0 created, 1 configured, 11 unchanged, 0 pruned)")})
                };
                let status = json!({"status": {
                    "observedGeneration": 1,
                    "conditions": [ready],
                    "lastAppliedRevision": format!("main@sha1:{sha}"),
                    "lastAttemptedRevision": format!("main@sha1:{sha}"),
                    "summary": {"total": 12, "created": 0, "configured": 1, "unchanged": 11, "pruned": 0, "drifted": i64::from(i % 20 == 0)},
                }});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;

    let started = Instant::now();
    let ui = UiProcess::start(&control_plane().kubeconfig, &["--namespace", &ns]).await;
    let http = reqwest::Client::new();
    let list = format!("{}/repos", ui.url);
    let body = http.get(&list).send().await.unwrap().text().await.unwrap();
    let first = started.elapsed().as_secs_f64();
    let rows = body.matches("<tr data-name=").count();
    figures.add(
        "first_list_s",
        first,
        format!("{first:.2} s from start to the first list of {rows} rows (its watches included)"),
    );

    let mut server = Vec::new();
    for _ in 0..SAMPLES {
        let t = Instant::now();
        let text = http.get(&list).send().await.unwrap().text().await.unwrap();
        server.push(t.elapsed().as_secs_f64());
        assert!(text.len() > 1000);
    }
    let m = median(&mut server);
    let p90 = percentile(&mut server, 0.9);
    figures.add(
        "list_server_s",
        m,
        format!(
            "{:.1} ms median, {:.1} ms p90 of {SAMPLES} ({:.0} KiB of HTML)",
            m * 1000.0,
            p90 * 1000.0,
            body.len() as f64 / 1024.0
        ),
    );
    let mut filtered = Vec::new();
    for _ in 0..SAMPLES {
        let t = Instant::now();
        http.get(format!("{list}?q=app-0999&state=ready"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        filtered.push(t.elapsed().as_secs_f64());
    }
    let m = median(&mut filtered);
    figures.add(
        "search_server_s",
        m,
        format!(
            "{:.1} ms median of {SAMPLES}, a search over the 1000",
            m * 1000.0
        ),
    );

    let browser = Browser::start().await;
    let mut loads = Vec::new();
    for _ in 0..5 {
        browser.client.goto(&list).await.unwrap();
        browser.element("tr[data-name=app-0999]").await;
        let load = browser
            .client
            .execute(
                "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd > 0 ? n.loadEventEnd - n.startTime : n.domContentLoadedEventEnd - n.startTime",
                vec![],
            )
            .await
            .unwrap()
            .as_f64()
            .unwrap_or_default();
        loads.push(load / 1000.0);
    }
    let m = median(&mut loads);
    figures.add(
        "list_browser_s",
        m,
        format!(
            "{:.0} ms median of 5, navigation to the page loaded in headless Chromium",
            m * 1000.0
        ),
    );
    browser.client.clone().close().await.unwrap();
    let (rss, peak) = rss_mib(ui.pid().unwrap());
    figures.add(
        "rss_mib",
        rss,
        format!("{rss:.1} MiB RSS after the above (peak {peak:.1} MiB)"),
    );
}
