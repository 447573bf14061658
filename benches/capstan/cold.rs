//! Scenario 1: a cold sync of 1000 manifests, against a plain server-side apply of the same objects.

use super::*;

/// 1000 manifests: 2 CRDs, 8 custom resources, 10 namespaces with 98 objects each.
pub(crate) fn thousand_manifests(prefix: &str) -> Vec<(String, String)> {
    let group = format!("{prefix}.bench.capstan.dev");
    let mut files = Vec::new();
    for kind in ["Widget", "Gadget"] {
        let plural = format!("{}s", kind.to_lowercase());
        files.push((
            format!("crds/{plural}.yaml"),
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {plural}.{group}\nspec:\n  group: {group}\n  names: {{kind: {kind}, plural: {plural}, singular: {}, listKind: {kind}List}}\n  scope: Namespaced\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema:\n        type: object\n        properties:\n          spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n",
                kind.to_lowercase()
            ),
        ));
    }
    for n in 0..10 {
        let ns = format!("{prefix}-{n}");
        let mut docs = vec![format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        )];
        for i in 0..20 {
            docs.push(format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{i}\n  namespace: {ns}\ndata:\n  index: \"{i}\"\n  text: \"{}\"\n", "x".repeat(200)));
            docs.push(format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: secret-{i}\n  namespace: {ns}\nstringData:\n  token: \"token-{i}\"\n"));
            docs.push(format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  namespace: {ns}\nspec:\n  selector: {{app: app-{i}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"));
        }
        for i in 0..19 {
            docs.push(format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: sa-{i}\n  namespace: {ns}\n"));
            docs.push(format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i}\n  namespace: {ns}\nspec:\n  replicas: 0\n  selector:\n    matchLabels: {{app: app-{i}}}\n  template:\n    metadata:\n      labels: {{app: app-{i}}}\n    spec:\n      serviceAccountName: sa-{i}\n      containers:\n      - name: app\n        image: registry.example.com/app:{i}\n        ports: [{{containerPort: 8080}}]\n"));
        }
        if n == 0 {
            for i in 0..4 {
                for kind in ["Widget", "Gadget"] {
                    docs.push(format!("apiVersion: {group}/v1\nkind: {kind}\nmetadata:\n  name: {}-{i}\n  namespace: {ns}\nspec:\n  size: {i}\n", kind.to_lowercase()));
                }
            }
        }
        files.push((format!("ns-{n}.yaml"), docs.join("---\n")));
    }
    files
}

pub(crate) fn objects_of(files: &[(String, String)]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|(_, text)| serde_saphyr::from_multiple::<Value>(text).unwrap())
        .collect()
}

/// The baseline: the same objects, server-side applied by a plain client with the same
/// concurrency as the controller's applies, CRDs and Namespaces first.
pub(crate) async fn plain_apply(client: &Client, objects: &[Value]) -> Duration {
    // Discovery once per kind, as any sensible client does.
    type Found = (kube::core::ApiResource, kube::discovery::ApiCapabilities);
    let kinds: std::sync::Arc<tokio::sync::Mutex<BTreeMap<String, Found>>> = Default::default();
    let started = Instant::now();
    let first = |o: &&Value| {
        matches!(
            o["kind"].as_str(),
            Some("CustomResourceDefinition" | "Namespace")
        )
    };
    let (tier0, tier1): (Vec<&Value>, Vec<&Value>) = objects.iter().partition(first);
    let apply = |object: &Value| {
        let client = client.clone();
        let mut object = object.clone();
        let kinds = kinds.clone();
        async move {
            let (group, version) = object["apiVersion"]
                .as_str()
                .unwrap()
                .split_once('/')
                .map(|(g, v)| (g.to_string(), v.to_string()))
                .unwrap_or((
                    String::new(),
                    object["apiVersion"].as_str().unwrap().to_string(),
                ));
            let kind = object["kind"].as_str().unwrap().to_string();
            let gvk = GroupVersionKind::gvk(&group, &version, &kind);
            let key = format!("{group}/{version}/{kind}");
            let found = kinds.lock().await.get(&key).cloned();
            let (ar, caps) = match found {
                Some(found) => found,
                None => {
                    let found = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
                    kinds.lock().await.insert(key, found.clone());
                    found
                }
            };
            if kind == "Secret" {
                let data: serde_json::Map<String, Value> = object["stringData"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| {
                        use base64::Engine;
                        let b =
                            base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap());
                        (k.clone(), Value::String(b))
                    })
                    .collect();
                object.as_object_mut().unwrap().remove("stringData");
                object["data"] = Value::Object(data);
            }
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
                Api::namespaced_with(
                    client,
                    object["metadata"]["namespace"].as_str().unwrap(),
                    &ar,
                )
            } else {
                Api::all_with(client, &ar)
            };
            api.patch(
                &name,
                &PatchParams::apply("bench-baseline").force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap();
            if kind == "CustomResourceDefinition" {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let crd = api.get(&name).await.unwrap();
                    let established =
                        crd.data["status"]["conditions"]
                            .as_array()
                            .is_some_and(|c| {
                                c.iter()
                                    .any(|c| c["type"] == "Established" && c["status"] == "True")
                            });
                    if established || Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    stream::iter(tier0.into_iter().map(apply))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    stream::iter(tier1.into_iter().map(apply))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    started.elapsed()
}

pub(crate) async fn cold(
    b: &Bench,
    controller: &Controller,
    figures: &mut Figures,
) -> (Repo, String) {
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    let (mut capstan_s, mut plain_s, mut mutating_n) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    let mut last_breakdown = String::new();
    for run in 0..3 {
        let files = thousand_manifests(&format!("plain{run}"));
        let objects = objects_of(&files);
        assert_eq!(objects.len(), 1000);
        plain_s.push(plain_apply(&b.client, &objects).await.as_secs_f64());

        let files = thousand_manifests(&format!("cold{run}"));
        let repo = repo_of(&format!("cold{run}"), &files);
        let name = format!("cold{run}");
        let mark = audit_mark();
        let started = Instant::now();
        create_gr(
            &b.client,
            &b.ns,
            &name,
            json!({"url": repo.http_url(), "interval": "1h", "timeout": "5m", "prune": true}),
        )
        .await;
        let done = wait_ready(&api, &name, &repo.head(), Duration::from_secs(600)).await;
        capstan_s.push((done - started).as_secs_f64());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let counts = requests_by(&controller.user, mark);
        mutating_n.push(mutating(&counts) as f64);
        last_breakdown = breakdown(&counts);
        last = Some((repo, name));
    }
    let (c, p) = (median(&mut capstan_s), median(&mut plain_s));
    figures.add(
        "capstan_create_to_ready_s",
        c,
        format!("{c:.2} s (median of 3)"),
    );
    figures.add(
        "plain_ssa_s",
        p,
        format!("{p:.2} s (median of 3; 1000 objects, concurrency 8)"),
    );
    figures.add("ratio", c / p, format!("{:.2}x", c / p));
    let m = median(&mut mutating_n);
    figures.add(
        "mutating_requests",
        m,
        format!("{m:.0} for 1000 objects (median of 3)"),
    );
    figures.add("requests_last_run", last_breakdown.clone(), last_breakdown);
    last.unwrap()
}
