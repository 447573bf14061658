//! Scenario 9: notifications in the way of nothing. The same change applied again and again,
//! first with no Alert, then with an Alert on a Provider that never answers (every send waits
//! for its timeout, four times): the time from the request to the object changed, and the
//! reconcile's own duration from the controller's histogram.

use super::*;

use support::hooks::{Answer, Endpoint};

const SAMPLES: usize = 10;

pub(crate) async fn notify(b: &Bench, controller: &Controller, figures: &mut Figures) {
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    let target = namespace(&b.client, "bench-notify").await;
    let cms: Api<ConfigMap> = Api::namespaced(b.client.clone(), &target);
    let repo = Repo::create("notify", &[("cm.yaml", &configmap("notify", "0"))]);
    let spec = json!({"url": repo.http_url(), "interval": "1h", "targetNamespace": target});
    create_gr(&b.client, &b.ns, "notify", spec).await;
    wait_ready(&api, "notify", &repo.head(), Duration::from_secs(60)).await;

    let mut value = 0;
    let mut phase = async |label: &str| {
        let (sum, count) = reconcile_seconds(controller, &b.ns).await;
        let mut samples = Vec::new();
        for _ in 0..SAMPLES {
            value += 1;
            let v = value.to_string();
            repo.commit(&[("cm.yaml", &configmap("notify", &v))], "bump");
            let asked = Instant::now();
            let patch = json!({"metadata": {"annotations": {capstan::api::RECONCILE_REQUESTED_ANNOTATION: v}}});
            api.patch("notify", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
            let seen = wait_data(&cms, "notify", "value", &v, Duration::from_secs(60)).await;
            samples.push((seen - asked).as_secs_f64());
            // The reconcile ends (its status written) before the next request.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (sum2, count2) = reconcile_seconds(controller, &b.ns).await;
        let mean = (sum2 - sum) / (count2 - count).max(1.0);
        let m = median(&mut samples);
        figures.add(
            &format!("{label}_change_s"),
            m,
            format!(
                "{:.0} ms median of {SAMPLES}, request to object changed",
                m * 1000.0
            ),
        );
        figures.add(
            &format!("{label}_reconcile_s"),
            mean,
            format!(
                "{:.0} ms mean reconcile ({} reconciles)",
                mean * 1000.0,
                count2 - count
            ),
        );
        (m, mean)
    };
    let (quiet, quiet_reconcile) = phase("no_alert").await;

    // A provider that accepts connections and never answers.
    let silent = Endpoint::start().await;
    silent.answer(&[], Some(Answer::Hang));
    let provider = json!({"type": "generic", "address": silent.url("/in"), "timeout": "10s"});
    let alert = json!({"providerRef": {"name": "silent"}, "eventSources": [{"kind": "GitRepository", "name": "*"}]});
    for (kind, spec) in [("Provider", provider), ("Alert", alert)] {
        let object = json!({"apiVersion": "capstan.dev/v1alpha1", "kind": kind, "metadata": {"name": "silent"}, "spec": spec});
        let gvk = GroupVersionKind::gvk("capstan.dev", "v1alpha1", kind);
        let resource = kube::discovery::ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = Api::namespaced_with(b.client.clone(), &b.ns, &resource);
        api.patch(
            "silent",
            &PatchParams::apply("bench"),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
    }
    let (slow, slow_reconcile) = phase("silent_alert").await;
    figures.add(
        "added_change_ms",
        (slow - quiet) * 1000.0,
        format!(
            "{:+.0} ms change latency, {:+.0} ms reconcile, with the Alert on the silent provider",
            (slow - quiet) * 1000.0,
            (slow_reconcile - quiet_reconcile) * 1000.0
        ),
    );
    let (_, text) = support::controller::http_get(controller.process.metrics, "/metrics").await;
    let count = |result: &str| {
        let series = format!(
            "capstan_notifications_total{{namespace=\"{}\",provider=\"silent\",result=\"{result}\"}}",
            b.ns
        );
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap_or(0))
    };
    figures.add(
        "notifications",
        count("failed"),
        format!(
            "{} failed, {} sent, {} dropped by the end; {} requests reached the provider",
            count("failed"),
            count("sent"),
            count("dropped"),
            silent.received().len()
        ),
    );
}

/// The sum and count of `capstan_reconcile_duration_seconds` for `notify`.
async fn reconcile_seconds(controller: &Controller, ns: &str) -> (f64, f64) {
    let (_, text) = support::controller::http_get(controller.process.metrics, "/metrics").await;
    let labels = format!("{{name=\"notify\",namespace=\"{ns}\"}}");
    let value = |metric: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{metric}{labels}")))
            .map_or(0.0, |v| v.trim().parse().unwrap_or(0.0))
    };
    (
        value("capstan_reconcile_duration_seconds_sum"),
        value("capstan_reconcile_duration_seconds_count"),
    )
}
