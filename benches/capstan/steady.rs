//! Scenario 2: the steady state: what an idle controller costs the API server, git and the
//! machine; then the same with `dependsOn` and `verify` set on the GitRepository.

use super::*;

pub(crate) async fn steady(
    b: &Bench,
    controller: &Controller,
    repo: &Repo,
    name: &str,
    figures: &mut Figures,
) {
    let api: Api<GitRepository> = Api::namespaced(b.client.clone(), &b.ns);
    patch_spec(&api, name, json!({"interval": "2s"})).await;
    // The spec change is one reconcile (digests unchanged: nothing sent); then it is steady.
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_ready(&api, name, &repo.head(), Duration::from_secs(60)).await;
    measure(controller, repo, figures, "").await;

    // Gated: a dependency (Ready, polled as often) and signed commits, checked with an SSH key.
    let dependency = Repo::create(
        "bench-dependency",
        &[("a.yaml", &configmap("dependency", "1"))],
    );
    let spec = json!({"url": dependency.http_url(), "interval": "2s", "prune": true});
    create_gr(&b.client, &b.ns, "steady-dependency", spec).await;
    wait_ready(
        &api,
        "steady-dependency",
        &dependency.head(),
        Duration::from_secs(60),
    )
    .await;
    let key = b.dir.path().join("signing-key");
    let key = key.to_str().unwrap();
    support::tools::run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", key]);
    let public = std::fs::read_to_string(format!("{key}.pub")).unwrap();
    let signers = format!("bench@capstan.dev {public}");
    put_secret(
        &b.client,
        &b.ns,
        "signers",
        &[("allowed_signers", signers.as_bytes())],
    )
    .await;
    for (k, v) in [
        ("gpg.format", "ssh"),
        ("user.signingkey", key),
        ("commit.gpgsign", "true"),
    ] {
        repo.configure(k, v);
    }
    let signed = repo.commit(&[], "signed");
    let gates = json!({
        "dependsOn": [{"name": "steady-dependency"}],
        "verify": {"mode": "HEAD", "secretRef": {"name": "signers"}},
    });
    patch_spec(&api, name, gates).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_ready(&api, name, &signed, Duration::from_secs(60)).await;
    measure(controller, repo, figures, "gated_").await;

    // Back as it was for the next scenarios.
    repo.configure("commit.gpgsign", "false");
    let ungated = json!({"dependsOn": null, "verify": null, "interval": "1h"});
    patch_spec(&api, name, ungated).await;
    api.delete("steady-dependency", &Default::default())
        .await
        .unwrap();
}

async fn patch_spec(api: &Api<GitRepository>, name: &str, spec: Value) {
    let patch = json!({ "spec": spec });
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// Ten intervals of 2 s: the controller's requests to the API server and to git, and its CPU.
async fn measure(controller: &Controller, repo: &Repo, figures: &mut Figures, prefix: &str) {
    let intervals = 10u32;
    let mark = audit_mark();
    let git_mark = git_log_mark().await;
    let cpu = controller.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2) * intervals + Duration::from_secs(1)).await;
    let cpu = controller.cpu_seconds() - cpu;
    let counts = requests_by(&controller.user, mark);
    let (git_requests, git_bytes, pack_bytes) = git_traffic(&repo.name, git_mark).await;
    let status_writes = counts
        .iter()
        .filter(|(k, _)| k.contains("gitrepositories/status"))
        .map(|(_, n)| n)
        .sum::<u64>();
    let mut add = |name: &str, value: Value, shown: String| {
        figures.add(&format!("{prefix}{name}"), value, shown)
    };
    let what = match prefix {
        "" => "1000 managed objects",
        _ => {
            "1000 managed objects, with dependsOn (a GitRepository of 1 object, polled as often) and verify (SSH-signed HEAD)"
        }
    };
    add(
        "intervals",
        intervals.into(),
        format!("{intervals} intervals of 2 s, {what}"),
    );
    let writes = mutating(&counts);
    add("mutating_requests", writes.into(), writes.to_string());
    add(
        "get_list_requests",
        reads(&counts).into(),
        reads(&counts).to_string(),
    );
    add(
        "status_writes",
        status_writes.into(),
        status_writes.to_string(),
    );
    let shown = match counts.is_empty() {
        true => "none".into(),
        false => breakdown(&counts),
    };
    add("requests", breakdown(&counts).into(), shown);
    add(
        "git_requests",
        git_requests.into(),
        format!("{git_requests} (ref advertisements of the 1000-object repository)"),
    );
    add(
        "git_bytes",
        git_bytes.into(),
        format!("{git_bytes} bytes in all; {pack_bytes} pack bytes"),
    );
    let per = cpu / f64::from(intervals);
    add(
        "cpu_per_reconcile_ms",
        (per * 1000.0).into(),
        format!("{:.1} ms CPU per interval", per * 1000.0),
    );
}
