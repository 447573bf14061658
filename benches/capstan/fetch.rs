//! Scenario 6: fetching about 100 MB of history.

use super::*;

pub(crate) async fn fetch(b: &Bench, figures: &mut Figures) {
    // About 100 MB of history: 100 commits, each rewriting a 1 MiB file of random bytes.
    let repo = Repo::create("fetch", &[("README", "history\n")]);
    let work = repo.work_dir().to_path_buf();
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut random = |n: usize| {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out
    };
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=bench",
                "-c",
                "user.email=bench@capstan.dev",
            ])
            .args(args)
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for i in 0..100 {
        std::fs::write(work.join("blob.bin"), random(1 << 20)).unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", &format!("blob {i}")]);
    }
    git(&["push", "-q", "origin", "main"]);
    let bare = PathBuf::from(git_server().var("GIT_REPO_ROOT")).join(format!("{}.git", repo.name));
    let history_mb = dir_size(&bare) as f64 / 1e6;

    let url = capstan::source::RemoteUrl::parse(&repo.http_url()).unwrap();
    let auth = capstan::source::Auth::default();
    let main = capstan::api::GitRef {
        branch: Some("main".into()),
        ..Default::default()
    };
    let timeout = Duration::from_secs(300);
    let run = |what: &str, args: &[&str], dir: &Path| {
        let started = Instant::now();
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed().as_secs_f64()
    };
    let (mut capstan_cold, mut git_shallow, mut git_full) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cold_bytes, mut shallow_bytes) = (0, 0);
    for i in 0..3 {
        let scratch = b.dir.path().join(format!("fetch-{i}"));
        std::fs::create_dir_all(scratch.join("repos")).unwrap();
        let cache = capstan::source::Cache::new(scratch.join("repos"), 1, 1 << 30);
        let mark = git_log_mark().await;
        let started = Instant::now();
        let resolved = cache
            .resolve(&url, &auth, &main, timeout, None)
            .await
            .unwrap();
        cache
            .checkout(&url, &auth, &resolved, &scratch.join("tree"), timeout)
            .await
            .unwrap();
        capstan_cold.push(started.elapsed().as_secs_f64());
        cold_bytes = git_traffic(&repo.name, mark).await.1;

        let mark = git_log_mark().await;
        git_shallow.push(run(
            "git clone --depth 1",
            &["clone", "-q", "--depth", "1", &repo.http_url(), "shallow"],
            &scratch,
        ));
        shallow_bytes = git_traffic(&repo.name, mark).await.1;
        git_full.push(run(
            "git clone",
            &["clone", "-q", &repo.http_url(), "full"],
            &scratch,
        ));
    }
    let (c, s, f) = (
        median(&mut capstan_cold),
        median(&mut git_shallow),
        median(&mut git_full),
    );
    figures.add(
        "history_mb",
        history_mb,
        format!("{history_mb:.0} MB of packed history, 100 commits"),
    );
    figures.add(
        "capstan_cold_s",
        c,
        format!("{c:.2} s, {cold_bytes} bytes (median of 3)"),
    );
    figures.add(
        "git_clone_depth1_s",
        s,
        format!("{s:.2} s, {shallow_bytes} bytes (median of 3)"),
    );
    figures.add("git_clone_full_s", f, format!("{f:.2} s (median of 3)"));
    figures.add(
        "cold_ratio",
        c / s,
        format!("{:.2}x of git clone --depth 1", c / s),
    );

    // One new commit: Capstan's incremental fetch into its cache vs `git fetch` in the shallow clone.
    let scratch = b.dir.path().join("fetch-0");
    let cache = capstan::source::Cache::new(scratch.join("repos"), 1, 1 << 30);
    let (mut inc, mut git_inc, mut inc_bytes) = (Vec::new(), Vec::new(), 0);
    let (mut inc_resolve, mut inc_checkout) = (Vec::new(), Vec::new());
    for i in 0..3 {
        std::fs::write(work.join("small.txt"), format!("change {i}\n")).unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "small"]);
        git(&["push", "-q", "origin", "main"]);
        let mark = git_log_mark().await;
        let started = Instant::now();
        let resolved = cache
            .resolve(&url, &auth, &main, timeout, None)
            .await
            .unwrap();
        inc_resolve.push(started.elapsed().as_secs_f64());
        let tree = scratch.join(format!("tree-{i}"));
        let fetching = Instant::now();
        cache
            .checkout(&url, &auth, &resolved, &tree, timeout)
            .await
            .unwrap();
        inc_checkout.push(fetching.elapsed().as_secs_f64());
        inc.push(started.elapsed().as_secs_f64());
        inc_bytes = git_traffic(&repo.name, mark).await.1;
        git_inc.push(run(
            "git fetch",
            &["fetch", "-q", "origin"],
            &scratch.join("shallow"),
        ));
    }
    let (ci, gi) = (median(&mut inc), median(&mut git_inc));
    let (cr, cc) = (median(&mut inc_resolve), median(&mut inc_checkout));
    figures.add(
        "capstan_incremental_phases",
        json!({"resolve_s": cr, "fetch_and_checkout_s": cc}),
        format!(
            "ref check {:.0} ms, then fetch and checkout {:.0} ms (medians)",
            cr * 1000.0,
            cc * 1000.0
        ),
    );
    figures.add(
        "capstan_incremental_s",
        ci,
        format!("{:.0} ms, {inc_bytes} bytes (median of 3)", ci * 1000.0),
    );
    figures.add(
        "git_fetch_s",
        gi,
        format!("{:.0} ms (median of 3)", gi * 1000.0),
    );
    figures.add(
        "incremental_ratio",
        ci / gi,
        format!("{:.2}x of git fetch", ci / gi),
    );
    figures.add(
        "target",
        "1.1x",
        "within 1.1x of git on both, cold and incremental",
    );

    // A poll with nothing new: the ref advertisement only.
    let mark = git_log_mark().await;
    let resolved = cache
        .resolve(&url, &auth, &main, timeout, None)
        .await
        .unwrap();
    cache
        .checkout(&url, &auth, &resolved, &scratch.join("tree-poll"), timeout)
        .await
        .unwrap();
    let (requests, bytes, packs) = git_traffic(&repo.name, mark).await;
    figures.add(
        "no_change_poll",
        json!({"requests": requests, "bytes": bytes, "pack_bytes": packs}),
        format!("{requests} request, {bytes} bytes, {packs} pack bytes"),
    );
}
