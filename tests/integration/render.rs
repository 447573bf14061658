//! Rendering beyond plain YAML, against the real control plane: JSON manifests and `ignore` in a
//! plain directory, kustomize overlays, a Helm chart, postBuild substitution, what is refused, and
//! `capstan render` agreeing with the cluster.

use std::process::Command;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, put_secret, ready_message, spec};

fn kustomize_tree(ns: &str, mode: &str) -> Vec<(String, String)> {
    let files = [
        (
            "base/kustomization.yaml",
            "resources: [deployment.yaml]\nconfigMapGenerator:\n- name: settings\n  literals: [mode=base]\n".to_string(),
        ),
        (
            "base/deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.0\n        envFrom:\n        - configMapRef: {name: settings}\n".to_string(),
        ),
        (
            "components/monitoring/kustomization.yaml",
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nlabels:\n- pairs: {monitoring: enabled}\n".to_string(),
        ),
        (
            "overlays/staging/kustomization.yaml",
            format!("resources: [../../base]\nnamespace: {ns}\nnamePrefix: staging-\nimages:\n- name: nginx\n  newTag: \"1.26\"\n"),
        ),
        (
            "overlays/prod/kustomization.yaml",
            format!("resources: [../../base]\ncomponents: [../../components/monitoring]\nnamespace: {ns}\nnamePrefix: prod-\nimages:\n- name: nginx\n  newTag: \"1.27\"\npatches:\n- path: replicas.yaml\nconfigMapGenerator:\n- name: settings\n  behavior: merge\n  literals: [mode={mode}]\n"),
        ),
        (
            "overlays/prod/replicas.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n".to_string(),
        ),
    ];
    files.into_iter().map(|(p, c)| (p.to_string(), c)).collect()
}

fn borrowed(files: &[(String, String)]) -> Vec<(&str, &str)> {
    files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect()
}

fn settings_name(deployment: &Value) -> String {
    deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The names of the objects in the GitRepository's inventory, sorted.
fn inventory_names(gr: &capstan::api::GitRepository) -> Vec<String> {
    let mut names: Vec<String> = gr
        .status
        .as_ref()
        .and_then(|s| s.inventory.as_ref())
        .map(|i| {
            i.entries
                .iter()
                .map(|e| e.id.split('_').nth(1).unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn json_manifests_are_applied_and_ignored_files_are_not() {
    let fx = Fixture::new("json-ignore").await;
    let json_cm = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"value": "json"}});
    let object = serde_json::to_string_pretty(&json_cm("json-object")).unwrap();
    let list = serde_json::to_string(&json!({
        "apiVersion": "v1", "kind": "List",
        "items": [json_cm("json-list-a"), json_cm("json-list-b")],
    }))
    .unwrap();
    let kept_local = json_cm("kept-local").to_string();
    let dev_local = json_cm("dev-local").to_string();
    let repo = Repo::create(
        "json-ignore",
        &[
            ("deploy/plain.yaml", &configmap("plain", "1")),
            ("deploy/object.json", &object),
            ("deploy/list.json", &list),
            ("deploy/drafts/wip.yaml", &configmap("draft", "1")),
            ("deploy/dev.local.json", &dev_local),
            ("deploy/keep.local.json", &kept_local),
            ("deploy/only-top.yaml", &configmap("top", "1")),
            ("deploy/sub/only-top.yaml", &configmap("nested", "1")),
            ("outside.yaml", &configmap("outside", "1")),
        ],
    );
    // Patterns are gitignore's, relative to `path`: a directory, a glob with an exception, and
    // one anchored at `path` itself.
    let ignore = "drafts/\n*.local.json\n!keep.local.json\n/only-top.yaml\n";
    fx.create(
        "app",
        spec(repo.http_url(), json!({"path": "deploy", "ignore": ignore})),
    )
    .await;
    let gr = fx.wait_applied("app", &repo.head()).await;
    assert_eq!(
        inventory_names(&gr),
        [
            "json-list-a",
            "json-list-b",
            "json-object",
            "kept-local",
            "nested",
            "plain"
        ]
    );
    let cm = fx.get("v1", "ConfigMap", "json-object").await.unwrap();
    assert_eq!(cm.data["data"]["value"], "json");
    assert!(fx.get("v1", "ConfigMap", "json-list-b").await.is_some());
    for ignored in ["draft", "dev-local", "top", "outside"] {
        assert!(
            fx.get("v1", "ConfigMap", ignored).await.is_none(),
            "{ignored} was applied"
        );
    }

    // Without the directory pattern, what it left out is applied.
    fx.patch(
        "app",
        json!({"spec": {"ignore": "*.local.json\n!keep.local.json\n/only-top.yaml\n"}}),
    )
    .await;
    let gr = fx.wait_applied("app", &repo.head()).await;
    assert!(inventory_names(&gr).contains(&"draft".to_string()));
    assert!(fx.get("v1", "ConfigMap", "draft").await.is_some());
    assert!(fx.get("v1", "ConfigMap", "dev-local").await.is_none());
}

#[tokio::test]
async fn kustomize_base_with_two_overlays() {
    let fx = Fixture::new("kustomize").await;
    let tree = kustomize_tree(&fx.ns, "prod");
    let repo = Repo::create("kustomize", &borrowed(&tree));
    for overlay in ["staging", "prod"] {
        fx.create(
            overlay,
            spec(
                repo.http_url(),
                json!({"path": format!("overlays/{overlay}")}),
            ),
        )
        .await;
    }
    fx.wait_applied("staging", &repo.head()).await;
    fx.wait_applied("prod", &repo.head()).await;

    let staging = fx
        .get("apps/v1", "Deployment", "staging-web")
        .await
        .unwrap()
        .data;
    assert_eq!(staging["spec"]["replicas"], 1);
    assert_eq!(
        staging["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    let prod = fx.get("apps/v1", "Deployment", "prod-web").await.unwrap();
    assert_eq!(prod.data["spec"]["replicas"], 3, "the patch applies");
    assert_eq!(
        prod.data["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.27"
    );
    assert_eq!(
        prod.metadata.labels.as_ref().unwrap()["monitoring"],
        "enabled",
        "the component applies"
    );
    let old_settings = settings_name(&prod.data);
    assert!(old_settings.starts_with("prod-settings-"), "{old_settings}");
    let cm = fx.get("v1", "ConfigMap", &old_settings).await.unwrap();
    assert_eq!(cm.data["data"]["mode"], "prod");

    // New generator content: a new hash suffix, the Deployment follows, the old one is pruned.
    let tree = kustomize_tree(&fx.ns, "prod-2");
    let sha = repo.commit(&borrowed(&tree), "new settings");
    fx.wait_applied("prod", &sha).await;
    let prod = fx.get("apps/v1", "Deployment", "prod-web").await.unwrap();
    let new_settings = settings_name(&prod.data);
    assert_ne!(new_settings, old_settings);
    let cm = fx.get("v1", "ConfigMap", &new_settings).await.unwrap();
    assert_eq!(cm.data["data"]["mode"], "prod-2");
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", &old_settings).await;
    // staging's generated ConfigMap is its own and untouched.
    let staging = fx
        .get("apps/v1", "Deployment", "staging-web")
        .await
        .unwrap()
        .data;
    assert!(
        fx.get("v1", "ConfigMap", &settings_name(&staging))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn kustomize_remote_base_is_refused_and_nothing_is_lost() {
    let (fx, repo, _) = Fixture::synced(
        "remote-base",
        &[
            ("app/kustomization.yaml", "resources: [cm.yaml]\n"),
            ("app/cm.yaml", &configmap("keep", "1")),
        ],
        json!({"path": "app"}),
    )
    .await;

    repo.commit(
        &[(
            "app/kustomization.yaml",
            "resources:\n- cm.yaml\n- https://github.com/acme/infra//base?ref=v1\n",
        )],
        "a remote base",
    );
    let gr = fx.wait_failed("app", "BuildFailed").await;
    let message = ready_message(&gr);
    assert!(message.contains("remote bases"), "{message}");
    assert!(message.contains("app/kustomization.yaml"), "{message}");
    assert!(fx.get("v1", "ConfigMap", "keep").await.is_some());
}

fn chart_files() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "chart/Chart.yaml",
            "apiVersion: v2\nname: web\nversion: 0.1.0\n",
        ),
        (
            "chart/values.yaml",
            "replicas: 1\ngreeting: hello\ncolor: red\n",
        ),
        ("chart/values-prod.yaml", "replicas: 2\ngreeting: bonjour\n"),
        (
            "chart/templates/deployment.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}-web\nspec:\n  replicas: {{ .Values.replicas }}\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.27\n",
        ),
        (
            "chart/templates/configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n  namespace: {{ .Release.Namespace }}\ndata:\n  greeting: {{ .Values.greeting | quote }}\n  color: {{ .Values.color | quote }}\n  cluster: \"${cluster}\"\n",
        ),
        (
            "chart/templates/hook.yaml",
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}-migrate\n  annotations:\n    helm.sh/hook: pre-install\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: m, image: busybox}]\n",
        ),
        // A dependency, vendored as helm requires.
        (
            "chart/charts/sub/Chart.yaml",
            "apiVersion: v2\nname: sub\nversion: 0.1.0\n",
        ),
        (
            "chart/charts/sub/templates/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-sub\ndata:\n  from: subchart\n",
        ),
    ]
}

fn chart_spec(repo: &Repo, values_files: Value) -> Value {
    spec(
        repo.http_url(),
        json!({
            "path": "chart",
            "helm": {"releaseName": "site", "values": {"color": "blue"}, "valuesFiles": values_files},
            "postBuild": {"substitute": {"cluster": "eu-1"}},
        }),
    )
}

#[tokio::test]
async fn helm_chart_with_values_and_a_values_file() {
    let fx = Fixture::new("helm").await;
    let repo = Repo::create("helm", &chart_files());
    fx.create("site", chart_spec(&repo, json!(["values-prod.yaml"])))
        .await;
    fx.wait_applied("site", &repo.head()).await;

    let deployment = fx.get("apps/v1", "Deployment", "site-web").await.unwrap();
    assert_eq!(
        deployment.data["spec"]["replicas"], 2,
        "the values file applies"
    );
    let cm = fx.get("v1", "ConfigMap", "site-greeting").await.unwrap();
    assert_eq!(
        cm.data["data"],
        json!({"greeting": "bonjour", "color": "blue", "cluster": "eu-1"}),
        "values file, then inline values, then substitution"
    );
    assert!(
        fx.get("v1", "ConfigMap", "site-sub").await.is_some(),
        "vendored subchart"
    );
    assert!(
        fx.get("batch/v1", "Job", "site-migrate").await.is_none(),
        "hooks are left out"
    );

    // A values file outside the checkout: refused, and nothing applied is lost.
    fx.patch(
        "site",
        json!({"spec": {"helm": {"valuesFiles": ["../../../../etc/hostname"]}}}),
    )
    .await;
    let gr = fx.wait_failed("site", "BuildFailed").await;
    assert!(
        ready_message(&gr).contains("resolves outside the repository"),
        "{}",
        ready_message(&gr)
    );
    assert!(fx.get("v1", "ConfigMap", "site-greeting").await.is_some());

    // A chart whose dependency is not vendored fails with helm's own message.
    fx.patch("site", json!({"spec": {"helm": {"valuesFiles": []}}}))
        .await;
    let sha = repo.commit(
        &[(
            "chart/Chart.yaml",
            "apiVersion: v2\nname: web\nversion: 0.1.0\ndependencies:\n- name: redis\n  version: 1.0.0\n  repository: https://charts.example.com\n",
        )],
        "an unvendored dependency",
    );
    let gr = fx
        .wait("site", "the unvendored dependency refused", |gr| {
            gr.status
                .as_ref()
                .and_then(|s| s.last_attempted_revision.as_deref())
                .is_some_and(|r| r.ends_with(&sha))
                && ready_message(gr).contains("helm failed")
        })
        .await;
    assert!(
        ready_message(&gr).contains("redis"),
        "{}",
        ready_message(&gr)
    );
    assert!(fx.get("apps/v1", "Deployment", "site-web").await.is_some());
}

#[tokio::test]
async fn substitution_from_a_configmap_and_a_secret() {
    let fx = Fixture::new("substitute").await;
    let vars: Api<ConfigMap> = Api::namespaced(fx.client.clone(), &fx.ns);
    vars.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "cluster-vars"},
            "data": {"cluster": "eu", "replicas": "3"},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    put_secret(
        &fx.client,
        &fx.ns,
        "cluster-secrets",
        &[("token", b"s3cr3t-t0ken")],
    )
    .await;
    let app = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-${cluster}\ndata:\n  region: ${region}\n  size: \"${size:=small}\"\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: app-token\nstringData:\n  token: ${token}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: script\n  annotations:\n    capstan.dev/substitute: disabled\ndata:\n  run.sh: echo ${HOME}\n";
    let repo = Repo::create("substitute", &[("app.yaml", app)]);
    fx.create(
        "app",
        spec(
            repo.http_url(),
            json!({"postBuild": {
                "substitute": {"region": "west"},
                "substituteFrom": [
                    {"kind": "ConfigMap", "name": "cluster-vars"},
                    {"kind": "Secret", "name": "cluster-secrets"},
                    {"kind": "ConfigMap", "name": "not-there", "optional": true},
                ],
            }}),
        ),
    )
    .await;
    fx.wait_applied("app", &repo.head()).await;
    let cm = fx.get("v1", "ConfigMap", "app-eu").await.unwrap();
    assert_eq!(cm.data["data"], json!({"region": "west", "size": "small"}));
    let secrets: Api<Secret> = Api::namespaced(fx.client.clone(), &fx.ns);
    let token = secrets.get("app-token").await.unwrap();
    assert_eq!(token.data.unwrap()["token"].0, b"s3cr3t-t0ken");
    let script = fx.get("v1", "ConfigMap", "script").await.unwrap();
    assert_eq!(script.data["data"]["run.sh"], "echo ${HOME}", "opted out");

    // A changed variable is applied at the next interval, with no new commit.
    vars.patch(
        "cluster-vars",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"cluster": "us"}})),
    )
    .await
    .unwrap();
    fx.wait("app", "app-us applied", |gr| {
        gr.status
            .as_ref()
            .and_then(|s| s.inventory.as_ref())
            .is_some_and(|i| i.entries.iter().any(|e| e.id.contains("_app-us_")))
    })
    .await;
    fx.wait_gone(&fx.ns, "v1", "ConfigMap", "app-eu").await;

    // An undefined variable is a build error naming it; nothing applied is lost, and no value
    // of a variable shows in the message.
    repo.commit(
        &[("more.yaml", &configmap("more-${undefined_var}", "1"))],
        "undefined",
    );
    let gr = fx.wait_failed("app", "BuildFailed").await;
    let message = ready_message(&gr);
    assert!(message.contains("${undefined_var}"), "{message}");
    assert!(message.contains("more.yaml"), "{message}");
    assert!(!message.contains("s3cr3t"), "{message}");
    assert!(fx.get("v1", "ConfigMap", "app-us").await.is_some());
}

#[tokio::test]
async fn capstan_render_prints_what_the_controller_applied() {
    let fx = Fixture::new("render-cli").await;
    let repo = Repo::create("render-cli", &chart_files());
    let spec = chart_spec(&repo, json!(["values-prod.yaml"]));
    fx.create("site", spec.clone()).await;
    let gr = fx.wait_applied("site", &repo.head()).await;

    let manifest = tempfile::NamedTempFile::new().unwrap();
    let gr_yaml = json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "GitRepository",
        "metadata": {"name": "site", "namespace": fx.ns},
        "spec": spec,
    });
    std::fs::write(manifest.path(), gr_yaml.to_string()).unwrap();
    let tools = crate::support::env::render_tools();
    let output = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["render", "-o", "json", "-f"])
        .arg(manifest.path())
        .arg(repo.work_dir().join("chart"))
        .env("CAPSTAN_KUSTOMIZE_PATH", &tools.kustomize)
        .env("CAPSTAN_HELM_PATH", &tools.helm)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let list: Value = serde_json::from_slice(&output.stdout).unwrap();
    let items = list["items"].as_array().unwrap();

    // The same objects as the inventory, and every field rendered is what the cluster holds.
    let inventory = gr.status.unwrap().inventory.unwrap().entries;
    assert_eq!(items.len(), inventory.len(), "{items:?} vs {inventory:?}");
    for item in items {
        let (kind, name) = (
            item["kind"].as_str().unwrap(),
            item["metadata"]["name"].as_str().unwrap(),
        );
        let live = fx
            .get(item["apiVersion"].as_str().unwrap(), kind, name)
            .await
            .unwrap_or_else(|| panic!("{kind}/{name} rendered but not applied"));
        let live = serde_json::to_value(&live).unwrap();
        assert_subset(item, &live, &format!("{kind}/{name}"));
    }
}

/// Every leaf of `want` is in `have` with the same value.
fn assert_subset(want: &Value, have: &Value, at: &str) {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, v) in w {
                let h = h
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} missing in the cluster"));
                assert_subset(v, h, &format!("{at}.{k}"));
            }
        }
        (Value::Array(w), Value::Array(h)) => {
            assert_eq!(w.len(), h.len(), "{at}: lengths differ");
            for (i, (w, h)) in w.iter().zip(h).enumerate() {
                assert_subset(w, h, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(want, have, "{at}"),
    }
}

#[tokio::test]
async fn a_monorepo_app_fails_alone() {
    let fx = Fixture::new("monorepo").await;
    let deployment = |name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - name: web\n        image: nginx:1.27\n"
        )
    };
    let files = [
        // Plain manifests.
        ("apps/plain/cm.yaml".to_string(), configmap("plain", "1")),
        // A kustomize overlay on a shared base.
        ("bases/web/kustomization.yaml".to_string(), "resources: [deployment.yaml]\n".to_string()),
        ("bases/web/deployment.yaml".to_string(), deployment("web")),
        (
            "apps/shop/kustomization.yaml".to_string(),
            "resources: [../../bases/web]\nnamePrefix: shop-\n".to_string(),
        ),
        // A Helm chart.
        ("apps/chart/Chart.yaml".to_string(), "apiVersion: v2\nname: chart\nversion: 0.1.0\n".to_string()),
        (
            "apps/chart/templates/cm.yaml".to_string(),
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  value: \"1\"\n".to_string(),
        ),
        // Broken: names a file a CI step would generate, and links out of the repository.
        (
            "apps/generated/kustomization.yaml".to_string(),
            "resources: [generated.yaml, ../../bases/web]\n".to_string(),
        ),
        // Unusual: plugin configuration this cluster has no use for, never built.
        (
            "tools/ci/kustomization.yaml".to_string(),
            "generators: [secrets-generator.yaml]\nresources: [https://example.com/remote.yaml]\n".to_string(),
        ),
    ];
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let repo = Repo::create("monorepo", &borrowed);
    let head = repo.symlink(
        "apps/generated/secrets",
        "/etc",
        "a link out of the repository",
    );
    for (name, path) in [
        ("plain", "apps/plain"),
        ("shop", "apps/shop"),
        ("chart", "apps/chart"),
        ("generated", "apps/generated"),
    ] {
        fx.create(name, spec(repo.http_url(), json!({"path": path})))
            .await;
    }
    for name in ["plain", "shop", "chart"] {
        fx.wait_applied(name, &head).await;
    }
    assert!(fx.get("v1", "ConfigMap", "plain").await.is_some());
    assert!(fx.get("apps/v1", "Deployment", "shop-web").await.is_some());
    assert!(fx.get("v1", "ConfigMap", "chart-settings").await.is_some());
    // The broken app fails on its own files only, and says which.
    let broken = fx.wait_failed("generated", "BuildFailed").await;
    let message = ready_message(&broken);
    assert!(message.contains("apps/generated/"), "{message}");
}
