//! Scenario 5: scale: 1000 GitRepositories over 100 repositories, 10,000 objects; then a restart
//! of the controller. Scenario 12: 10,000 GitRepositories over 100 repositories of 100 paths, one
//! object each, without the restart.

use super::*;

/// How many GitRepositories, and how many paths of a repository and objects of a path.
#[derive(Clone, Copy)]
pub(crate) struct Size {
    pub(crate) grs: usize,
    pub(crate) paths: usize,
    pub(crate) objects: usize,
    pub(crate) restart: bool,
    /// What the figures are held against, for the report.
    pub(crate) target: Option<&'static str>,
}

/// Scenario 5: 10 paths of 10 ConfigMaps in each of 100 repositories.
pub(crate) const THOUSAND: Size = Size {
    grs: 1000,
    paths: 10,
    objects: 10,
    restart: true,
    target: None,
};

/// Scenario 12: 100 paths of one ConfigMap in each of 100 repositories.
pub(crate) const TEN_THOUSAND: Size = Size {
    grs: 10_000,
    paths: 100,
    objects: 1,
    restart: false,
    target: Some(
        "all Ready within 5 min; steady RSS within 256 MiB; steady CPU under 10% of one core (6 CPU s a minute) with a 1 m interval; no API request at steady state",
    ),
};

pub(crate) async fn scale(b: &Bench, figures: &mut Figures, size: Size) {
    let Size {
        grs: count,
        paths,
        objects,
        ..
    } = size;
    // A controller of its own, for a namespace of its own: its figures are these alone.
    let ns = namespace(&b.client, &format!("bench-scale-{count}")).await;
    let target = namespace(&b.client, &format!("bench-scale-{count}-objects")).await;
    let mut controller = Controller::start(&ns, shard_of(&ns), b.dir.path());
    // The process with no GitRepository yet: what the count adds is the difference.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (idle_rss, _) = controller.rss_mib();
    let repos: Vec<Repo> = (0..100)
        .map(|r| {
            let files: Vec<(String, String)> = (0..paths * objects)
                .map(|n| {
                    let d = n / objects;
                    (
                        format!("d{d}/cm{n}.yaml"),
                        configmap(&format!("cm-{r}-{n}"), "1"),
                    )
                })
                .collect();
            repo_of(&format!("scale{count}-{r}"), &files)
        })
        .collect();
    let started = Instant::now();
    let specs: Vec<(String, Value)> = (0..count)
        .map(|i| {
            let (r, d) = (i / paths, i % paths);
            (
                format!("app-{i}"),
                json!({"url": repos[r].http_url(), "path": format!("d{d}"), "interval": "1m", "targetNamespace": target, "prune": true}),
            )
        })
        .collect();
    stream::iter(
        specs
            .iter()
            .map(|(name, spec)| create_gr(&b.client, &ns, name, spec.clone())),
    )
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    let created = started.elapsed();
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(1800);
    let all_ready = loop {
        let list = api.list(&Default::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|gr| applied_revision(gr).is_some())
            .count();
        if ready == count {
            break started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "only {ready} of {count} Ready after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (_, peak_sync) = controller.rss_mib();
    let list = api.list(&Default::default()).await.unwrap();
    let mut delays: Vec<f64> = list
        .items
        .iter()
        .filter_map(|gr| {
            let created = gr.metadata.creation_timestamp.as_ref()?.0;
            let ready = capstan::status::ready(gr.status.as_ref())?
                .last_transition_time
                .0;
            Some((ready.as_millisecond() - created.as_millisecond()) as f64 / 1000.0)
        })
        .collect();
    // Steady state: a minute of polls with nothing new.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu = controller.cpu_seconds();
    let mark = audit_mark();
    let git_mark = git_log_mark().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let cpu_minute = controller.cpu_seconds() - cpu;
    let counts = requests_by(&controller.user, mark);
    let log = git_server().access_log().await;
    let in_minute = |what: &str| {
        log.lines()
            .skip(git_mark)
            .filter(|l| l.contains(&format!("/scale{count}-")) && l.contains(what))
            .count()
    };
    let (polls, fetches) = (in_minute("info/refs"), in_minute("\"POST "));
    let (rss, peak) = controller.rss_mib();
    figures.add(
        "created_s",
        created.as_secs_f64(),
        format!(
            "{:.1} s to create {count} GitRepositories",
            created.as_secs_f64()
        ),
    );
    figures.add(
        "all_ready_s",
        all_ready.as_secs_f64(),
        format!(
            "{:.1} s from the first create to all {count} Ready",
            all_ready.as_secs_f64()
        ),
    );
    figures.add(
        "rss_idle_mib",
        idle_rss,
        format!("{idle_rss:.1} MiB before the first GitRepository"),
    );
    figures.add(
        "rss_steady_mib",
        rss,
        format!(
            "{rss:.1} MiB ({:.1} KiB per GitRepository over idle)",
            (rss - idle_rss) * 1024.0 / count as f64
        ),
    );
    figures.add(
        "rss_peak_mib",
        peak.max(peak_sync),
        format!("{:.1} MiB", peak.max(peak_sync)),
    );
    figures.add(
        "cpu_per_minute_s",
        cpu_minute,
        format!("{cpu_minute:.2} CPU seconds in a minute at steady state"),
    );
    figures.add(
        "steady_ref_checks_per_minute",
        polls,
        format!("{polls} ref advertisements and {fetches} upload-pack requests in that minute"),
    );
    figures.add(
        "steady_mutating_per_minute",
        mutating(&counts),
        mutating(&counts).to_string(),
    );
    figures.add(
        "steady_get_list_per_minute",
        reads(&counts),
        reads(&counts).to_string(),
    );
    if let Some(target) = size.target {
        figures.add("target", target, target);
    }
    let (p50, p90, max) = (
        percentile(&mut delays, 0.5),
        percentile(&mut delays, 0.9),
        percentile(&mut delays, 1.0),
    );
    figures.add(
        "create_to_ready_spread_s",
        json!({"p50": p50, "p90": p90, "max": max}),
        format!("creation to Ready per GitRepository: p50 {p50:.1} s, p90 {p90:.1} s, max {max:.1} s (1 s resolution)"),
    );
    if !size.restart {
        return;
    }
    // A restart: a new process, with nothing in memory, until it has reconciled all of them.
    let mark = audit_mark();
    let started = Instant::now();
    controller.restart();
    let deadline = Instant::now() + Duration::from_secs(900);
    while controller.reconciled(&ns).await < count {
        assert!(
            Instant::now() < deadline,
            "not all reconciled after a restart"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let restarted = started.elapsed();
    let counts = requests_by(&controller.user, mark);
    let status_writes = counts
        .iter()
        .filter(|(k, _)| k.contains("gitrepositories/status"))
        .map(|(_, n)| n)
        .sum::<u64>();
    figures.add(
        "restart_all_reconciled_s",
        restarted.as_secs_f64(),
        format!(
            "{:.1} s from the restart to all {count} reconciled by the new process (each fetched and rendered again, into an empty cache)",
            restarted.as_secs_f64()
        ),
    );
    figures.add(
        "restart_mutating_requests",
        mutating(&counts),
        format!(
            "{} ({status_writes} status writes), for {} unchanged objects",
            mutating(&counts),
            count * objects
        ),
    );
    figures.add(
        "restart_get_list_requests",
        reads(&counts),
        reads(&counts).to_string(),
    );
}
