//! Scenario 4: drift latency, from an out-of-band edit to its correction.

use super::*;

pub(crate) async fn drift(b: &Bench, controller: &Controller, figures: &mut Figures) {
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    let target = namespace(&b.client, "bench-drift").await;
    let cms: Api<ConfigMap> = Api::namespaced(b.client.clone(), &target);
    // One object per sample: Capstan stops correcting an object it had to correct three times
    // within a minute (another controller is fighting over it), which is not what is measured.
    let files: Vec<(String, String)> = (0..5)
        .map(|i| {
            (
                format!("cm-{i}.yaml"),
                configmap(&format!("drift-{i}"), "git"),
            )
        })
        .collect();
    let repo = repo_of("drift", &files);
    create_gr(
        &b.client,
        &b.ns,
        "drift",
        json!({"url": repo.http_url(), "interval": "1h", "targetNamespace": target}),
    )
    .await;
    wait_ready(&api, "drift", &repo.head(), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut samples, mut patches) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let name = format!("drift-{i}");
        let mark = audit_mark();
        let edited = take_over(&cms, &name, "value", "edited").await;
        let seen = wait_data(&cms, &name, "value", "git", Duration::from_secs(30)).await;
        samples.push((seen - edited).as_secs_f64());
        // Late requests of the correction count too.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let counts = requests_by(&controller.user, mark);
        patches.push(counts.get("patch configmaps").copied().unwrap_or(0) as f64);
    }
    let m = median(&mut samples);
    figures.add(
        "reverted_ms",
        m * 1000.0,
        format!(
            "{:.0} ms median of 5 (max {:.0} ms)",
            m * 1000.0,
            samples.iter().cloned().fold(0.0, f64::max) * 1000.0
        ),
    );
    let p = patches.iter().cloned().fold(0.0, f64::max);
    figures.add(
        "patches_per_correction",
        p,
        format!("{p:.0} at most (of 5 corrections)"),
    );
}
