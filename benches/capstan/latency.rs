//! Scenario 3: change latency, from a commit to the object changed (polling and webhook).

use super::*;

pub(crate) async fn latency(b: &Bench, controller: &Controller, figures: &mut Figures) {
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    let target = namespace(&b.client, "bench-latency").await;
    let cms: Api<ConfigMap> = Api::namespaced(b.client.clone(), &target);
    let repo = Repo::create("latency", &[("cm.yaml", &configmap("latency", "0"))]);
    let interval = 10u64;
    create_gr(
        &b.client,
        &b.ns,
        "latency",
        json!({"url": repo.http_url(), "interval": format!("{interval}s"), "targetNamespace": target}),
    )
    .await;
    wait_ready(&api, "latency", &repo.head(), Duration::from_secs(60)).await;

    // A Receiver for the webhook path.
    let token = b"bench-token";
    put_secret(&b.client, &b.ns, "bench-hook", &[("token", token)]).await;
    Api::<capstan::api::Receiver>::namespaced(b.client.clone(), &b.ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "capstan.dev/v1alpha1", "kind": "Receiver",
                "metadata": {"name": "bench"},
                "spec": {"type": "github", "secretRef": {"name": "bench-hook"}, "resources": [{"name": "latency"}]},
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let mut value = 0;
    for mode in ["annotation", "webhook", "polling"] {
        let mut samples = Vec::new();
        for _ in 0..5 {
            value += 1;
            let v = value.to_string();
            repo.commit(&[("cm.yaml", &configmap("latency", &v))], "bump");
            let pushed = Instant::now();
            match mode {
                "annotation" => {
                    let patch = json!({"metadata": {"annotations": {capstan::api::RECONCILE_REQUESTED_ANNOTATION: v}}});
                    api.patch("latency", &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .unwrap();
                }
                "webhook" => {
                    let body = json!({"ref": "refs/heads/main", "repository": {"clone_url": repo.http_url()}}).to_string();
                    post_hook(
                        controller.process.webhook,
                        &format!("/hook/{}/bench", b.ns),
                        &body,
                        token,
                    )
                    .await;
                }
                _ => {}
            }
            let seen = wait_data(
                &cms,
                "latency",
                "value",
                &v,
                Duration::from_secs(interval * 3),
            )
            .await;
            samples.push((seen - pushed).as_secs_f64());
            // Apart, so that one sample's reconcile is over before the next commit.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let m = median(&mut samples);
        let shown = if mode == "polling" {
            format!(
                "{m:.2} s median of 5 = {:.2} of the {interval} s interval",
                m / interval as f64
            )
        } else {
            format!("{:.0} ms median of 5", m * 1000.0)
        };
        figures.add(&format!("{mode}_s"), m, shown);
    }
}

pub(crate) async fn post_hook(addr: std::net::SocketAddr, path: &str, body: &str, token: &[u8]) {
    let headers = [
        ("Content-Type", "application/json".to_string()),
        ("X-GitHub-Event", "push".to_string()),
        (
            "X-Hub-Signature-256",
            capstan::webhook::hmac_signature(body.as_bytes(), token),
        ),
    ];
    let (code, reply) = http_request(addr, "POST", path, &headers, body.as_bytes()).await;
    assert_eq!(code, 202, "{reply}");
}
