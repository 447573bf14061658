//! The web UI in a real browser (Debian's Chromium, over ChromeDriver), `capstan ui` as a
//! process against the real control plane with GitRepositories a real controller reconciles.

use std::time::Duration;

use capstan::api::GitRepository;
use kube::api::ListParams;
use serde_json::json;

use crate::support::Repo;
use crate::support::browser::{Browser, UiProcess};
use crate::support::controller::{Fixture, configmap, ready, spec};
use crate::support::env::control_plane;
use crate::support::process::service_account_kubeconfig;

const LIVE: Duration = Duration::from_secs(60);

/// Cards of the overview by their `data-count`.
async fn card(browser: &Browser, name: &str) -> u64 {
    browser
        .text(&format!("[data-count={name}] .n"))
        .await
        .parse()
        .unwrap()
}

/// A Role that may read GitRepositories, their inventory parts, Events and ConfigMaps in `ns`,
/// bound to ServiceAccount `sa` of `ns` (created too); nothing may be changed.
fn grant_reading(ns: &str, sa: &str, dir: &std::path::Path) {
    let cp = control_plane();
    let yaml = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {sa}, namespace: {ns}}}\nrules:\n- apiGroups: [capstan.dev]\n  resources: [gitrepositories, inventoryparts]\n  verbs: [get, list, watch]\n- apiGroups: ['']\n  resources: [events, configmaps]\n  verbs: [get, list, watch]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {sa}, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {sa}}}\nsubjects:\n- {{kind: ServiceAccount, name: {sa}, namespace: {ns}}}\n"
    );
    let file = dir.join(format!("{sa}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    cp.kubectl(&["apply", "-f", file.to_str().unwrap()]);
}

#[tokio::test]
async fn the_pages_show_the_cluster_and_follow_it_live() {
    let fx = Fixture::new("ui").await;
    // No kubelet or controller-manager here: the Deployment stays in progress.
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: registry.example/web:1}]}\n";
    let repo = Repo::create(
        "ui",
        &[
            ("cm.yaml", &configmap("cm", "one")),
            ("deploy.yaml", deployment),
        ],
    );
    let url = repo.http_url();
    fx.create(
        "app",
        spec(&url, json!({"interval": "1h", "drift": {"mode": "Warn"}})),
    )
    .await;
    // A name from git a page shows: the branch, in the failure's message.
    let branch = "x<script>window.__xss=1</script><img/src=x/onerror=window.__xss=2>";
    fx.create("broken", spec(&url, json!({"ref": {"branch": branch}})))
        .await;
    fx.wait_applied("app", &repo.head()).await;
    let broken = fx
        .wait("broken", "Ready False", |gr| {
            ready(gr).is_some_and(|(status, _)| status == "False")
        })
        .await;
    let (reason, message) = {
        let c = capstan::status::ready(broken.status.as_ref()).unwrap();
        (c.reason.clone(), c.message.clone())
    };
    assert!(message.contains("<script>"), "{message}");

    let ui = UiProcess::start(&control_plane().kubeconfig, &["--namespace", &fx.ns]).await;
    let browser = Browser::start().await;
    let b = &browser.client;

    // The overview's counts are the cluster's.
    b.goto(&format!("{}/", ui.url)).await.unwrap();
    let items: Vec<GitRepository> = fx.api().list(&ListParams::default()).await.unwrap().items;
    let count = |status: &str| {
        items
            .iter()
            .filter(|gr| ready(gr).is_some_and(|(s, _)| s == status))
            .count() as u64
    };
    assert_eq!(card(&browser, "total").await, items.len() as u64);
    assert_eq!(card(&browser, "ready").await, count("True"));
    assert_eq!(card(&browser, "failing").await, count("False"));
    assert_eq!((count("True"), count("False")), (1, 1));

    // The failing one's page: its reason and message, the branch shown as text, run nowhere.
    b.goto(&format!("{}/repos/{}/broken", ui.url, fx.ns))
        .await
        .unwrap();
    assert_eq!(
        browser.text("tr[data-condition=Ready] td.reason").await,
        reason
    );
    let shown = browser.text("tr[data-condition=Ready] td.message").await;
    assert_eq!(shown, message);
    let xss = b
        .execute("return window.__xss || null", vec![])
        .await
        .unwrap();
    assert_eq!(xss, serde_json::Value::Null);
    b.goto(&format!("{}/repos?q=script", ui.url)).await.unwrap();
    browser.element("tr[data-name=broken]").await;
    let row = b
        .execute(
            "return document.querySelector('tr[data-name=broken] .col-message').textContent",
            vec![],
        )
        .await
        .unwrap();
    let row = row.as_str().unwrap_or_default();
    assert!(row.contains("<script>window.__xss=1</script>"), "{row}");

    // A drifted object shows its field path, and the page follows without a reload.
    b.goto(&format!("{}/repos/{}/app", ui.url, fx.ns))
        .await
        .unwrap();
    browser.element("[data-object='ConfigMap/cm']").await;
    b.execute("window.__marker = 42", vec![]).await.unwrap();
    control_plane().kubectl(&[
        "-n",
        &fx.ns,
        "patch",
        "configmap/cm",
        "--type=merge",
        "-p",
        r#"{"data":{"value":"by hand"}}"#,
    ]);
    let drift = browser
        .wait_text("[data-object='ConfigMap/cm'] .drift", LIVE, |t| {
            t.contains(".data.value")
        })
        .await;
    assert!(drift.contains("drifted"), "{drift}");
    let health = browser.text("[data-object='ConfigMap/cm'] .badge").await;
    assert_eq!(health, "Healthy");
    let health = browser.text("[data-object='Deployment/web']").await;
    assert!(health.contains("Progressing"), "{health}");

    // A new commit: the diff page shows what applying it would change, field by field.
    let sha = repo.commit(&[("cm.yaml", &configmap("cm", "two"))], "two");
    b.goto(&format!("{}/repos/{}/app/diff", ui.url, fx.ns))
        .await
        .unwrap();
    let diff = browser.text("main").await;
    assert!(diff.contains("1 of 2 objects would change"), "{diff}");
    assert!(
        diff.contains("ConfigMap") && diff.contains(".data.value by hand two"),
        "{diff}"
    );

    // Reconcile from the UI applies it; the page shows it without a reload.
    b.goto(&format!("{}/repos/{}/app", ui.url, fx.ns))
        .await
        .unwrap();
    browser.element("[data-object='ConfigMap/cm']").await;
    b.execute("window.__marker = 42", vec![]).await.unwrap();
    browser
        .element("form.action button[data-action=reconcile]")
        .await
        .click()
        .await
        .unwrap();
    let facts = browser
        .wait_text("#facts dd.applied", LIVE, |t| t.contains(&sha[..12]))
        .await;
    assert!(facts.starts_with("main@sha1:"), "{facts}");
    let marker = b.execute("return window.__marker", vec![]).await.unwrap();
    assert_eq!(marker, json!(42), "the page was reloaded");
    assert_eq!(fx.value("cm").await, "two");
    browser.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn without_patch_rights_actions_are_disabled_and_posts_refused() {
    let fx = Fixture::new("ui-rbac").await;
    let repo = Repo::create("ui-rbac", &[("cm.yaml", &configmap("cm", "one"))]);
    fx.create("app", spec(repo.http_url(), json!({"interval": "1h"})))
        .await;
    fx.wait_applied("app", &repo.head()).await;
    let cp = control_plane();
    let dir = tempfile::tempdir().unwrap();
    grant_reading(&fx.ns, "viewer", dir.path());
    let kubeconfig = service_account_kubeconfig(&fx.ns, "viewer", dir.path());
    // No namespace given: the viewer may not list all namespaces, so the UI keeps to the
    // kubeconfig's (set to the test's namespace).
    cp.kubectl(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "config",
        "set-context",
        "--current",
        &format!("--namespace={}", fx.ns),
    ]);
    let ui = UiProcess::start(&kubeconfig, &[]).await;
    let browser = Browser::start().await;
    let page = format!("{}/repos/{}/app", ui.url, fx.ns);
    browser.client.goto(&page).await.unwrap();
    assert!(browser.text("header .scope").await.contains(&fx.ns));
    for action in ["reconcile", "suspend"] {
        let button = browser
            .element(&format!("form.action button[data-action={action}]"))
            .await;
        assert_eq!(
            button.attr("disabled").await.unwrap().as_deref(),
            Some("true")
        );
        let why = button.attr("title").await.unwrap().unwrap_or_default();
        assert!(why.contains("may not patch"), "{why}");
    }
    // The viewer reads the objects' health.
    let health = browser.text("[data-object='ConfigMap/cm'] .badge").await;
    assert_eq!(health, "Healthy");
    browser.client.clone().close().await.unwrap();

    // A forged POST: no token, then the page's own token for this viewer.
    let http = reqwest::Client::new();
    // Another site's name pointed at this address (DNS rebinding) gets no page.
    let rebound = http
        .get(&page)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let action = format!("{page}/suspend");
    let forged = http
        .post(&action)
        .form(&[("csrf", "0".repeat(64))])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.text().await.unwrap().contains("CSRF"));
    let got = http.get(&page).send().await.unwrap();
    let cookie = got
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string();
    let token = cookie.split_once('=').unwrap().1.to_string();
    let as_viewer = http
        .post(&action)
        .header("cookie", &cookie)
        .form(&[("csrf", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(as_viewer.status(), 403);
    assert!(as_viewer.text().await.unwrap().contains("forbidden"));
    let gr = fx.api().get("app").await.unwrap();
    assert!(!gr.spec.suspend);
}

#[tokio::test]
async fn in_bearer_mode_each_request_acts_as_its_own_token() {
    let fx = Fixture::new_stopped("ui-bearer").await;
    fx.create("app", spec("https://git.example/app.git", json!({})))
        .await;
    let cp = control_plane();
    let dir = tempfile::tempdir().unwrap();
    let ns = &fx.ns;
    grant_reading(ns, "reader", dir.path());
    cp.kubectl(&["create", "serviceaccount", "nobody", "-n", ns]);
    let token = |sa: &str| {
        cp.kubectl(&["create", "token", sa, "-n", ns])
            .trim()
            .to_string()
    };
    // The UI's own kubeconfig is the admin's: in bearer mode it must never act with it.
    let ui = UiProcess::start(&cp.kubeconfig, &["--auth", "bearer", "--namespace", ns]).await;
    let http = reqwest::Client::new();
    let get = |token: Option<String>| {
        let mut request = http.get(format!("{}/repos", ui.url));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };
    let none = get(None).await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let bad = get(Some("not-a-token".into())).await.unwrap();
    assert_eq!(bad.status(), 401, "{}", bad.text().await.unwrap());
    let reader = get(Some(token("reader"))).await.unwrap();
    assert_eq!(reader.status(), 200);
    assert!(reader.text().await.unwrap().contains("data-name=\"app\""));
    // A token without read rights sees what the API server lets it: an error, not the admin's
    // view.
    let nobody = get(Some(token("nobody"))).await.unwrap();
    assert_ne!(nobody.status(), 200);
    assert!(!nobody.text().await.unwrap().contains("data-name=\"app\""));
}

/// `make screenshots`: the main pages at 1280x800 (and the list at a phone's width), written to
/// `$CAPSTAN_SCREENSHOTS` (docs/ui), with GitRepositories in each state.
#[tokio::test]
#[ignore = "writes docs/ui; run by make screenshots"]
async fn screenshots() {
    let dir = std::path::PathBuf::from(
        std::env::var("CAPSTAN_SCREENSHOTS").unwrap_or_else(|_| "docs/ui".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let fx = Fixture::new("shop").await;
    let deployment = |name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: {name}, image: 'registry.example/{name}:1.4.2'}}]}}\n"
        )
    };
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{selector: {{app: {name}}}, ports: [{{port: 80}}]}}\n"
        )
    };
    let repo = Repo::create(
        "shop",
        &[
            ("frontend/deploy.yaml", &deployment("frontend")),
            ("frontend/service.yaml", &service("frontend")),
            (
                "frontend/config.yaml",
                &configmap("frontend-config", "blue"),
            ),
            ("catalog/config.yaml", &configmap("catalog-config", "v2")),
            ("checkout/config.yaml", &configmap("checkout-config", "eu")),
            (
                "payments/config.yaml",
                &configmap("payments-config", "live"),
            ),
            (
                "search/config.yaml",
                "kind: ConfigMap\nmetadata: {name: search\n",
            ),
        ],
    );
    let url = repo.http_url();
    for (name, path, extra) in [
        ("frontend", "frontend", json!({"drift": {"mode": "Warn"}})),
        ("catalog", "catalog", json!({})),
        ("checkout", "checkout", json!({})),
        ("payments", "payments", json!({"suspend": false})),
        ("search", "search", json!({})),
    ] {
        let mut s = spec(&url, extra);
        s["path"] = json!(path);
        s["interval"] = json!("1h");
        fx.create(name, s).await;
    }
    for name in ["frontend", "catalog", "checkout", "payments"] {
        fx.wait_applied(name, &repo.head()).await;
    }
    fx.wait("search", "Ready False", |gr| {
        ready(gr).is_some_and(|(s, _)| s == "False")
    })
    .await;
    fx.patch("payments", json!({"spec": {"suspend": true}}))
        .await;
    control_plane().kubectl(&[
        "-n",
        &fx.ns,
        "patch",
        "configmap/frontend-config",
        "--type=merge",
        "-p",
        r#"{"data":{"value":"green"}}"#,
    ]);
    fx.wait("frontend", "drift", |gr| {
        gr.status.as_ref().is_some_and(|s| !s.drift.is_empty())
    })
    .await;

    let ui = UiProcess::start(&control_plane().kubeconfig, &["--namespace", &fx.ns]).await;
    let browser = Browser::start().await;
    let b = &browser.client;
    let shoot = |name: &'static str| {
        let path = dir.join(name);
        async move {
            // Fonts and styles settle before the picture.
            tokio::time::sleep(Duration::from_millis(500)).await;
            std::fs::write(&path, b.screenshot().await.unwrap()).unwrap();
            eprintln!("wrote {}", path.display());
        }
    };
    // The window's size, less what the window's frame takes, is the page's: make that 1280x800.
    let viewport = async |width: i64, height: i64| {
        b.set_window_size(width as u32, height as u32)
            .await
            .unwrap();
        let inner = b
            .execute("return [window.innerWidth, window.innerHeight]", vec![])
            .await
            .unwrap();
        let (w, h) = (inner[0].as_i64().unwrap(), inner[1].as_i64().unwrap());
        b.set_window_size((2 * width - w) as u32, (2 * height - h) as u32)
            .await
            .unwrap();
    };
    viewport(1280, 800).await;
    b.goto(&format!("{}/", ui.url)).await.unwrap();
    browser.element("#attention").await;
    shoot("overview.png").await;
    b.goto(&format!("{}/repos", ui.url)).await.unwrap();
    browser.element("tr[data-name=search]").await;
    shoot("gitrepositories.png").await;
    b.goto(&format!("{}/repos/{}/frontend", ui.url, fx.ns))
        .await
        .unwrap();
    browser
        .element("[data-object='ConfigMap/frontend-config'] .drift")
        .await;
    shoot("gitrepository.png").await;
    b.execute(
        "document.getElementById('objects').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    shoot("objects.png").await;
    b.goto(&format!("{}/repos/{}/search", ui.url, fx.ns))
        .await
        .unwrap();
    browser.element("tr[data-condition=Ready]").await;
    shoot("failing.png").await;
    viewport(390, 844).await;
    b.goto(&format!("{}/repos", ui.url)).await.unwrap();
    browser.element("tr[data-name=search]").await;
    shoot("phone.png").await;
    browser.client.clone().close().await.unwrap();
}
