//! A restart that costs nothing: what was applied is rebuilt from what the cluster says (each
//! object's digest annotation and the fields Capstan owns of it), so a restarted controller
//! sends nothing for unchanged objects and writes no status; what changed while it was down is
//! applied.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::support::Repo;
use crate::support::audit;
use crate::support::controller::{Fixture, configmap, http_get, spec};

fn files() -> Vec<(String, String)> {
    (0..20)
        .map(|n| (format!("cm{n}.yaml"), configmap(&format!("cm{n}"), "1")))
        .collect()
}

/// Restarts the controller and waits until its first reconcile of `app` is counted.
pub(crate) async fn restart(fx: &mut Fixture) {
    fx.stop_controller();
    // The stopped controller's servers may hold their ports a while yet: new ones.
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Held at once, so the ports differ.
    let (a, b, c) = (bind(), bind(), bind());
    (fx.metrics_addr, fx.probe_addr, fx.webhook_addr) = (
        a.local_addr().ok(),
        b.local_addr().ok(),
        c.local_addr().ok(),
    );
    drop((a, b, c));
    fx.start_controller();
    let addr = fx.metrics_addr.unwrap();
    let counted = format!(
        "capstan_reconcile_total{{name=\"app\",namespace=\"{}\"",
        fx.ns
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Until the new controller listens, nothing answers.
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (code, body) = http_get(addr, "/metrics").await;
            if code == 200 && body.contains(&counted) {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reconcile after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_restart_sends_nothing_for_what_did_not_change() {
    let mut fx = Fixture::with_http("restart").await;
    let files = files();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let repo = Repo::create("restart", &refs);
    fx.create("app", spec(repo.http_url(), json!({}))).await;
    fx.wait_applied("app", &repo.head()).await;

    // Nothing changed: no object sent, no status written, no Event.
    let mark = audit::mark();
    restart(&mut fx).await;
    let mutating = audit::mutating_since(mark, &fx.ns);
    assert!(mutating.is_empty(), "a restart changed: {mutating:?}");

    // Changed while no controller ran: an object deleted and a field taken by someone else.
    fx.stop_controller();
    let configmaps: Api<ConfigMap> = Api::namespaced(fx.client.clone(), &fx.ns);
    configmaps
        .delete("cm3", &DeleteParams::default())
        .await
        .unwrap();
    let edit = json!({"data": {"value": "edited"}});
    configmaps
        .patch("cm5", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    let mark = audit::mark();
    restart(&mut fx).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while fx.get("v1", "ConfigMap", "cm3").await.is_none() || fx.value("cm5").await != "1" {
        assert!(tokio::time::Instant::now() < deadline, "not applied again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent = audit::mutating_since(mark, &fx.ns);
    assert!(
        sent.iter().any(|r| r.contains("configmaps/cm3")),
        "{sent:?}"
    );
    assert!(
        sent.iter().any(|r| r.contains("configmaps/cm5")),
        "{sent:?}"
    );

    // A commit changing one object after a restart: only that object is sent.
    restart(&mut fx).await;
    let mark = audit::mark();
    let sha = repo.commit(&[("cm7.yaml", &configmap("cm7", "2"))], "one change");
    fx.wait_applied("app", &sha).await;
    let sent: Vec<String> = audit::mutating_since(mark, &fx.ns)
        .into_iter()
        .filter(|r| r.contains("configmaps/"))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("configmaps/cm7"), "{sent:?}");
}
