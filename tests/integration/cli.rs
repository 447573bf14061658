//! The `capstan` command line against a real GitRepository: get, reconcile, suspend, resume, diff.

use std::process::Output;

use tokio::process::Command;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, spec};
use crate::support::env::{control_plane, render_tools};

/// Runs the `capstan` binary with the test control plane's kubeconfig. Awaited, not blocked
/// on: the test's in-process controller runs on this same thread meanwhile.
async fn capstan(args: &[&str]) -> Output {
    let tools = render_tools();
    Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("CAPSTAN_KUSTOMIZE_PATH", &tools.kustomize)
        .env("CAPSTAN_HELM_PATH", &tools.helm)
        .output()
        .await
        .expect("running capstan")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "capstan failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        stdout(&output)
    );
    stdout(&output)
}

fn applied(fx_gr: &capstan::api::GitRepository) -> String {
    fx_gr
        .status
        .as_ref()
        .and_then(|s| s.last_applied_revision.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn get_reconcile_suspend_and_resume() {
    let fx = Fixture::new("cli").await;
    let repo = Repo::create("cli", &[("cm.yaml", &configmap("cli", "1"))]);
    // An hour between polls: only the commands bring new commits in.
    fx.create("app", spec(repo.http_url(), json!({"interval": "1h"})))
        .await;
    let first = repo.head();
    fx.wait_applied("app", &first).await;

    let table = ok(capstan(&["get", "-n", &fx.ns]).await);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "SUSPENDED", "REVISION", "DRIFT", "MESSAGE"]
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("app "), "{row}");
    assert!(
        row.contains(&format!("main@sha1:{}", &first[..12])),
        "{row}"
    );
    assert!(row.contains(" True "), "{row}");
    let all = ok(capstan(&["get", "-A"]).await);
    assert!(all.starts_with("NAMESPACE"), "{all}");
    assert!(
        all.lines()
            .any(|l| l.starts_with(&format!("{} ", fx.ns)) && l.contains(" app "))
    );
    let json: Value =
        serde_json::from_str(&ok(
            capstan(&["get", "app", "-n", &fx.ns, "-o", "json"]).await
        ))
        .unwrap();
    assert_eq!(json["items"][0]["metadata"]["name"], "app");

    // reconcile: the new commit is applied when the command returns.
    let second = repo.commit(&[("cm.yaml", &configmap("cli", "2"))], "two");
    let out = ok(capstan(&["reconcile", "app", "-n", &fx.ns]).await);
    assert!(
        out.contains(&format!("{}/app", fx.ns)) && out.contains(&second[..8]),
        "{out}"
    );
    assert!(applied(&fx.api().get("app").await.unwrap()).ends_with(&second));

    // suspend: a reconcile is refused while suspended.
    ok(capstan(&["suspend", "app", "-n", &fx.ns]).await);
    assert!(fx.api().get("app").await.unwrap().spec.suspend);
    let third = repo.commit(&[("cm.yaml", &configmap("cli", "3"))], "three");
    let refused = capstan(&["reconcile", "app", "-n", &fx.ns]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("suspended"));

    // resume: the suspension is lifted and the waiting commit applied.
    let out = ok(capstan(&["resume", "app", "-n", &fx.ns]).await);
    assert!(out.contains(&third[..8]), "{out}");
    let gr = fx.api().get("app").await.unwrap();
    assert!(!gr.spec.suspend);
    assert!(applied(&gr).ends_with(&third));

    // A GitRepository that does not exist: an error, not a hang.
    let missing = capstan(&["reconcile", "nope", "-n", &fx.ns]).await;
    assert_eq!(missing.status.code(), Some(1));
}

#[tokio::test]
async fn diff_shows_drift_and_hides_secret_values() {
    let fx = Fixture::new("cli-diff").await;
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: from-git-pw\n";
    let repo = Repo::create(
        "cli-diff",
        &[("cm.yaml", &configmap("web", "1")), ("secret.yaml", secret)],
    );
    // Warn: the drift stays for the diff to show.
    fx.create(
        "app",
        spec(repo.http_url(), json!({"drift": {"mode": "Warn"}})),
    )
    .await;
    fx.wait_applied("app", &repo.head()).await;
    let unchanged = capstan(&["diff", "app", "-n", &fx.ns]).await;
    assert_eq!(unchanged.status.code(), Some(0), "{}", stdout(&unchanged));
    assert!(stdout(&unchanged).contains("0 of 2 objects would change"));

    let edit = PatchParams::apply("someone-else").force();
    let cms: Api<ConfigMap> = Api::namespaced(fx.client.clone(), &fx.ns);
    cms.patch(
        "web",
        &edit,
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"value": "edited"}}),
        ),
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(fx.client.clone(), &fx.ns);
    secrets
        .patch(
            "creds",
            &edit,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "stringData": {"password": "edited-pw"}})),
        )
        .await
        .unwrap();

    let out = capstan(&["diff", "app", "-n", &fx.ns]).await;
    assert_eq!(out.status.code(), Some(1), "something would change");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("ConfigMap {}/web: changed", fx.ns)),
        "{text}"
    );
    assert!(text.contains(r#".data.value: "edited" → "1""#), "{text}");
    assert!(
        text.contains(&format!("Secret {}/creds: changed", fx.ns)),
        "{text}"
    );
    assert!(
        text.contains(".data.password: (redacted) → (redacted)"),
        "{text}"
    );
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for secret_value in ["from-git-pw", "edited-pw"] {
        assert!(!text.contains(secret_value), "{text}");
        assert!(!text.contains(&b64(secret_value)), "{text}");
    }
    let json: Value = serde_json::from_slice(
        &capstan(&["diff", "app", "-n", &fx.ns, "-o", "json"])
            .await
            .stdout,
    )
    .unwrap();
    assert!(!json.to_string().contains(&b64("edited-pw")));

    // --path: a local change, not pushed, is previewed against the same GitRepository.
    std::fs::write(repo.work_dir().join("new.yaml"), configmap("new", "x")).unwrap();
    let local = capstan(&[
        "diff",
        "app",
        "-n",
        &fx.ns,
        "--path",
        repo.work_dir().to_str().unwrap(),
    ])
    .await;
    let text = stdout(&local);
    assert!(
        text.contains(&format!("ConfigMap {}/new: created", fx.ns)),
        "{text}"
    );
    // The live object is untouched by a diff.
    assert_eq!(
        cms.get("web").await.unwrap().data.unwrap()["value"],
        "edited"
    );
}
