//! The `capstan` command line against a real GitRepository: get, reconcile, suspend, resume, diff.

use std::process::Output;

use tokio::process::Command;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, ready_message, spec};
use crate::support::env::{control_plane, render_tools};

/// Runs the `capstan` binary with the test control plane's kubeconfig. Awaited, not blocked
/// on: the test's in-process controller runs on this same thread meanwhile.
pub(crate) async fn capstan(args: &[&str]) -> Output {
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

pub(crate) fn stdout(output: &Output) -> String {
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

/// The cells of a kubectl table, cut at the header's column starts (cells may hold spaces).
fn table_rows(table: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut at = 0;
    for name in header.split_whitespace() {
        let start = at + header[at..].find(name).unwrap();
        starts.push((start, name));
        at = start + name.len();
    }
    lines
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(i, (start, name))| {
                    let end = starts.get(i + 1).map_or(line.len(), |(s, _)| *s);
                    let cell = line.get(*start..end.min(line.len())).unwrap_or_default();
                    (name.to_string(), cell.trim().to_string())
                })
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn get_as_yaml_and_the_kubectl_printer_columns() {
    let fx = Fixture::new("cli-columns").await;
    let repo = Repo::create("cli-columns", &[("cm.yaml", &configmap("columns", "1"))]);
    fx.create("app", spec(repo.http_url(), json!({"interval": "1h"})))
        .await;
    fx.create(
        "broken",
        spec(
            repo.http_url(),
            json!({"interval": "1h", "path": "missing"}),
        ),
    )
    .await;
    let sha = repo.head();
    fx.wait_applied("app", &sha).await;
    let broken = fx.wait_failed("broken", "BuildFailed").await;

    // -o yaml: YAML that kubectl reads back, carrying what -o json carries, status included.
    let yaml = ok(capstan(&["get", "-n", &fx.ns, "-o", "yaml"]).await);
    let parsed: Value = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let json: Value =
        serde_json::from_str(&ok(capstan(&["get", "-n", &fx.ns, "-o", "json"]).await)).unwrap();
    assert_eq!(parsed, json);
    assert_eq!(parsed["items"][0]["metadata"]["name"], "app");
    assert_eq!(
        parsed["items"][0]["status"]["lastAppliedRevision"],
        format!("main@sha1:{sha}")
    );
    let conditions = parsed["items"][1]["status"]["conditions"]
        .as_array()
        .unwrap();
    assert!(
        conditions.iter().any(|c| c["type"] == "Ready"
            && c["status"] == "False"
            && c["reason"] == "BuildFailed"),
        "{yaml}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("get.yaml");
    std::fs::write(&file, &yaml).unwrap();
    // kubectl prints each object it read as its own JSON document.
    let printed = control_plane().kubectl(&[
        "create",
        "--dry-run=client",
        "-o",
        "json",
        "-f",
        file.to_str().unwrap(),
    ]);
    let read_back: Vec<Value> = serde_json::Deserializer::from_str(&printed)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(read_back.len(), 2, "{printed}");
    for (i, object) in read_back.iter().enumerate() {
        assert_eq!(object["status"], json["items"][i]["status"], "{printed}");
    }

    // The CRD's printer columns, through kubectl, by full name and by short name.
    for resource in ["gitrepositories.capstan.dev", "cgr"] {
        let table = control_plane().kubectl(&["get", resource, "-n", &fx.ns]);
        let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            ["NAME", "READY", "REVISION", "DRIFT", "STATUS", "AGE"],
            "{table}"
        );
        let rows = table_rows(&table);
        assert_eq!(rows.len(), 2, "{table}");
        let (app, failed) = (&rows[0], &rows[1]);
        assert_eq!(app["NAME"], "app", "{table}");
        assert_eq!(app["READY"], "True", "{table}");
        assert_eq!(app["REVISION"], format!("main@sha1:{sha}"), "{table}");
        assert_eq!(app["DRIFT"], "0", "{table}");
        assert!(
            app["STATUS"].starts_with(&format!("Applied revision main@sha1:{sha}")),
            "{table}"
        );
        assert_eq!(failed["NAME"], "broken", "{table}");
        assert_eq!(failed["READY"], "False", "{table}");
        assert_eq!(failed["STATUS"], ready_message(&broken), "{table}");
    }
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

    // --ref: a pull request's head, fetched and rendered as the GitRepository's own revision
    // would be, without anything applied.
    std::fs::remove_file(repo.work_dir().join("new.yaml")).unwrap();
    repo.branch(
        "proposal",
        &[("proposed.yaml", &configmap("proposed", "1"))],
    );
    repo.push_ref("refs/pull/7/head");
    repo.checkout("main");
    let pr = capstan(&["diff", "app", "-n", &fx.ns, "--ref", "refs/pull/7/head"]).await;
    assert_eq!(pr.status.code(), Some(1), "{}", stdout(&pr));
    let text = stdout(&pr);
    assert!(
        text.contains(&format!("ConfigMap {}/proposed: created", fx.ns)),
        "{text}"
    );
    assert!(fx.get("v1", "ConfigMap", "proposed").await.is_none());
    let missing = capstan(&["diff", "app", "-n", &fx.ns, "--ref", "refs/pull/8/head"]).await;
    assert_eq!(missing.status.code(), Some(2));
}

/// Runs `capstan ARGS` as a CI job would: stdout and stderr into one file, no terminal.
async fn capstan_to_a_file(args: &[&str]) -> (Option<i32>, String) {
    let tools = render_tools();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("out")).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("CAPSTAN_KUSTOMIZE_PATH", &tools.kustomize)
        .env("CAPSTAN_HELM_PATH", &tools.helm)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .await
        .unwrap();
    let out = std::fs::read_to_string(dir.path().join("out")).unwrap();
    (status.code(), out)
}

#[tokio::test]
async fn reconcile_without_a_terminal_prints_lines_and_tells_unchanged_from_configured() {
    let fx = Fixture::new("cli-lines").await;
    let files: Vec<(String, String)> = (0..5)
        .map(|n| (format!("cm{n}.yaml"), configmap(&format!("cm{n}"), "1")))
        .collect();
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let repo = Repo::create("cli-lines", &borrowed);
    fx.create("app", spec(repo.http_url(), json!({"interval": "1h"})))
        .await;
    let first = repo.head();
    fx.wait_applied("app", &first).await;

    // Nothing changed: everything is re-sent, and nothing is configured.
    let (code, out) = capstan_to_a_file(&["reconcile", "app", "-n", &fx.ns]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.ends_with('\n'), "{out:?}");
    assert!(!out.contains('\r') && !out.contains('\x1b'), "{out:?}");
    let lines: Vec<&str> = out.lines().collect();
    let (outcome, progress) = lines.split_last().unwrap();
    assert!(
        outcome.starts_with(&format!("✔ {}/app: Applied revision", fx.ns)),
        "the outcome is the last line: {out:?}"
    );
    assert!(
        outcome.contains("(5 objects: 0 created, 0 configured, 5 unchanged, 0 pruned)"),
        "{outcome}"
    );
    // Progress speaks of this request, never of the reconcile before it.
    for line in progress {
        assert!(line.starts_with("app: "), "{out:?}");
        assert!(!line.contains("Applied revision"), "a stale line: {out:?}");
    }

    // One object changed: one configured, the others unchanged.
    let second = repo.commit(&[("cm0.yaml", &configmap("cm0", "2"))], "two");
    let (code, out) = capstan_to_a_file(&["reconcile", "app", "-n", &fx.ns]).await;
    assert_eq!(code, Some(0), "{out}");
    let outcome = out.lines().last().unwrap();
    assert!(outcome.contains(&second[..8]), "{outcome}");
    assert!(
        outcome.contains("(5 objects: 0 created, 1 configured, 4 unchanged, 0 pruned)"),
        "{outcome}"
    );
}

#[tokio::test]
async fn render_outside_a_work_tree_names_root() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path();
    for (path, contents) in [
        (
            "base/kustomization.yaml",
            "resources: [cm.yaml]\n".to_string(),
        ),
        ("base/cm.yaml", configmap("from-base", "1")),
        (
            "overlays/prod/kustomization.yaml",
            "resources: [../../base]\nnamePrefix: prod-\n".to_string(),
        ),
    ] {
        let file = top.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, contents).unwrap();
    }
    let overlay = top.join("overlays/prod");
    let refused = capstan(&["render", overlay.to_str().unwrap()]).await;
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("resolves outside the repository"), "{err}");
    assert!(err.contains("is not in a git work tree"), "{err}");
    assert!(err.contains("--root"), "{err}");

    let rendered = ok(capstan(&[
        "render",
        overlay.to_str().unwrap(),
        "--root",
        top.to_str().unwrap(),
    ])
    .await);
    assert!(rendered.contains("name: prod-from-base"), "{rendered}");
}
