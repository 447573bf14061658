//! Capstan's benchmarks: what it costs the cluster, measured against the local control plane and
//! git server of the tests, with the controller built in release mode and run as a process of its
//! own with a ServiceAccount identity (so the audit log attributes its requests).
//!
//! `cargo bench --bench capstan [-- SCENARIO...]` (or `make bench`) runs the scenarios, prints a
//! table per scenario, and writes `target/benchmarks.json` and `docs/benchmarks.md`. Benchmarks
//! measure; nothing here asserts a target.

// The tests' harness: the same control plane, git server and controller processes.
use capstan_testkit as support;

mod cold;
mod drift;
mod fetch;
mod flux;
mod inventory;
mod latency;
mod measure;
mod monorepo;
mod notify;
mod remote;
mod report;
mod scale;
mod steady;
mod ui;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use capstan::api::GitRepository;
use support::Repo;
use support::controller::{configmap, http_request, put_secret};
use support::env::{control_plane, git_server};
use support::process::{ControllerProcess, cluster_admin_kubeconfig, sa_user};
use support::{client, namespace};

use cold::cold;
use drift::drift;
use fetch::fetch;
use flux::flux;
use inventory::inventory;
use latency::latency;
use measure::*;
use monorepo::monorepo;
use notify::notify;
use remote::remote;
use scale::scale;
use steady::steady;
use ui::ui;

const SCENARIOS: &[&str] = &[
    "cold",
    "steady",
    "latency",
    "drift",
    "scale",
    "fetch",
    "monorepo",
    "inventory",
    "notify",
    "remote",
    "flux",
    "scale10k",
    "ui",
];

/// Scenarios a plain `make bench` leaves out: they take long and are asked for by name.
const BY_NAME: &[&str] = &["scale10k"];

#[tokio::main]
async fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run =
        |s: &str| (wanted.is_empty() && !BY_NAME.contains(&s)) || wanted.iter().any(|w| w == s);
    for w in &wanted {
        assert!(
            SCENARIOS.contains(&w.as_str()),
            "unknown scenario {w}; one of {SCENARIOS:?}"
        );
    }
    let started = Instant::now();
    let client = client().await;
    let ns = namespace(&client, "bench").await;
    let dir = tempfile::tempdir().unwrap();
    let b = Bench { client, ns, dir };
    let controller = Controller::start(&b.ns, shard_of(&b.ns), b.dir.path());
    let mut results: Vec<(&str, &str, Figures)> = Vec::new();

    let mut cold_gr = None;
    if run("cold") || run("steady") {
        let mut f = Figures::default();
        cold_gr = Some(cold(&b, &controller, &mut f).await);
        if run("cold") {
            results.push(("cold", "1. Cold sync of 1000 manifests", f));
        }
    }
    if run("steady") {
        let (repo, name) = cold_gr.as_ref().unwrap();
        let mut f = Figures::default();
        steady(&b, &controller, repo, name, &mut f).await;
        results.push(("steady", "2. Steady state", f));
    }
    if run("latency") {
        let mut f = Figures::default();
        latency(&b, &controller, &mut f).await;
        results.push(("latency", "3. Change latency (commit to object changed)", f));
    }
    if run("drift") {
        let mut f = Figures::default();
        drift(&b, &controller, &mut f).await;
        results.push((
            "drift",
            "4. Drift latency (out-of-band edit to reverted)",
            f,
        ));
    }
    if run("remote") {
        let mut f = Figures::default();
        remote(&b, &controller, &mut f).await;
        results.push((
            "remote",
            "10. A remote cluster: 10 GitRepositories of 100 objects, steady",
            f,
        ));
    }
    // The shared controller's memory, before scenario 9 leaves it holding requests open.
    let (rss, peak) = controller.rss_mib();
    if run("notify") {
        let mut f = Figures::default();
        notify(&b, &controller, &mut f).await;
        results.push((
            "notify",
            "9. Notifications: a reconcile with an Alert on a provider that never answers",
            f,
        ));
    }
    drop(controller);
    if run("scale") {
        let mut f = Figures::default();
        scale(&b, &mut f, scale::THOUSAND).await;
        results.push((
            "scale",
            "5. Scale: 1000 GitRepositories over 100 repositories",
            f,
        ));
    }
    if run("fetch") {
        let mut f = Figures::default();
        fetch(&b, &mut f).await;
        results.push(("fetch", "6. Fetch: about 100 MB of history", f));
    }

    if run("monorepo") {
        let mut f = Figures::default();
        monorepo(&b, &mut f).await;
        results.push((
            "monorepo",
            "7. Monorepo: 100 GitRepositories on one repository of 1,000 files",
            f,
        ));
    }

    if run("inventory") {
        let mut f = Figures::default();
        inventory(&b, &mut f).await;
        results.push((
            "inventory",
            "8. A large inventory: one GitRepository of 50,000 objects",
            f,
        ));
    }

    if run("scale10k") {
        let mut f = Figures::default();
        scale(&b, &mut f, scale::TEN_THOUSAND).await;
        results.push((
            "scale10k",
            "12. Scale: 10,000 GitRepositories over 100 repositories",
            f,
        ));
    }
    if run("ui") {
        let mut f = Figures::default();
        ui(&b, &mut f).await;
        results.push(("ui", "13. Web UI: the list of 1000 GitRepositories", f));
    }
    if run("flux") {
        let mut f = Figures::default();
        flux(&b, &mut f).await;
        results.push((
            "flux",
            "11. Flux side by side: the same scenarios with Flux's source-controller and kustomize-controller",
            f,
        ));
    }

    report::write(&wanted, &results, (rss, peak), started.elapsed());
}
