//! `spec.verify`: commits and tags signed with the real tools (gpg, and ssh-keygen through git's
//! `gpg.format ssh`) apply when a trusted key signed them; an unsigned commit, one signed by an
//! unknown key and one changed after signing are refused (`VerificationFailed`, naming the
//! commit and the key), and the revision applied before stays.

use std::path::Path;

use serde_json::json;

use crate::support::Repo;
use crate::support::controller::{Fixture, configmap, put_secret, ready_message, spec};
use crate::support::tools::{Gpg, run};

fn unsigned(repo: &Repo) {
    repo.configure("commit.gpgsign", "false");
    repo.configure("tag.gpgSign", "false");
}

/// Waits for `VerificationFailed` with `message` on `name`, then checks that `settings` still
/// holds `kept`.
async fn refused(fx: &Fixture, name: &str, message: &str, kept: &str) {
    fx.wait(name, &format!("VerificationFailed: {message}"), |gr| {
        ready_message(gr) == message
    })
    .await;
    fx.wait_failed(name, "VerificationFailed").await;
    assert_eq!(fx.value("settings").await, kept, "nothing of it applied");
}

// Long: one story on one repository, each refusal followed by what it must not have changed.
#[tokio::test]
async fn openpgp_signatures_are_checked_on_commits_and_tags() {
    let fx = Fixture::new("verify-pgp").await;
    let gpg = Gpg::new();
    let trusted = gpg.key("trusted@capstan.dev");
    let stranger = gpg.key("stranger@capstan.dev");
    let public = gpg.public("trusted@capstan.dev");
    put_secret(
        &fx.client,
        &fx.ns,
        "signers",
        &[("team.asc", public.as_bytes())],
    )
    .await;
    let repo = Repo::create(
        "verify-pgp",
        &[("settings.yaml", &configmap("settings", "0"))],
    );
    gpg.sign_with(&repo, &trusted);
    let signed = repo.commit(&[("settings.yaml", &configmap("settings", "1"))], "signed");
    let verify = json!({"verify": {"secretRef": {"name": "signers"}}});
    fx.create("app", spec(repo.http_url(), verify.clone()))
        .await;
    fx.wait_applied("app", &signed).await;
    assert_eq!(fx.value("settings").await, "1");

    unsigned(&repo);
    let sha = repo.commit(
        &[("settings.yaml", &configmap("settings", "2"))],
        "unsigned",
    );
    refused(&fx, "app", &format!("commit {sha} is not signed"), "1").await;

    gpg.sign_with(&repo, &stranger);
    let sha = repo.commit(
        &[("settings.yaml", &configmap("settings", "3"))],
        "by a stranger",
    );
    let message = format!(
        "commit {sha} is signed by OpenPGP key {stranger}, which is not among the trusted keys of secret signers"
    );
    refused(&fx, "app", &message, "1").await;

    gpg.sign_with(&repo, &trusted);
    let sha = repo.tamper(&[("settings.yaml", &configmap("settings", "4"))], "changed");
    let message = format!(
        "commit {sha}: the signature by OpenPGP key {trusted} does not match it (changed after signing?)"
    );
    refused(&fx, "app", &message, "1").await;

    // Signed again: applied, and a signed tag of it too (its commit signed as well).
    let signed = repo.commit(&[("settings.yaml", &configmap("settings", "5"))], "signed");
    fx.wait_applied("app", &signed).await;
    assert_eq!(fx.value("settings").await, "5");
    // The next GitRepositories apply the same ConfigMap: this one goes first.
    fx.api().delete("app", &Default::default()).await.unwrap();
    fx.wait_gone(&fx.ns, "capstan.dev/v1alpha1", "GitRepository", "app")
        .await;
    repo.tag("v1.0.0");
    let release = json!({
        "ref": {"semver": "^1"},
        "verify": {"mode": "TagAndHEAD", "secretRef": {"name": "signers"}},
    });
    fx.create("release", spec(repo.http_url(), release)).await;
    fx.wait_applied("release", &signed).await;

    // An unsigned tag on the same signed commit: refused in Tag mode, naming the tag.
    unsigned(&repo);
    repo.tag("v1.1.0");
    let tag = run(
        "git",
        &[
            "-C",
            repo.work_dir().to_str().unwrap(),
            "rev-parse",
            "v1.1.0",
        ],
    );
    let message = format!("tag v1.1.0 ({}) is not signed", tag.trim());
    fx.wait("release", &message, |gr| ready_message(gr) == message)
        .await;
    fx.wait_failed("release", "VerificationFailed").await;

    // Tag mode on a branch: nothing names a tag.
    fx.api()
        .delete("release", &Default::default())
        .await
        .unwrap();
    fx.wait_gone(&fx.ns, "capstan.dev/v1alpha1", "GitRepository", "release")
        .await;
    let branch = json!({"verify": {"mode": "Tag", "secretRef": {"name": "signers"}}});
    fx.create("branch", spec(repo.http_url(), branch)).await;
    let gr = fx.wait_failed("branch", "VerificationFailed").await;
    assert!(
        ready_message(&gr).contains("needs a ref naming an annotated tag"),
        "{}",
        ready_message(&gr)
    );
}

/// An SSH key pair made by ssh-keygen in `dir`; returns the private key's path, the public key
/// line and its SHA256 fingerprint.
fn ssh_key(dir: &Path, name: &str) -> (String, String, String) {
    let path = dir.join(name);
    let path_str = path.to_str().unwrap().to_string();
    run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", &path_str],
    );
    let public = std::fs::read_to_string(format!("{path_str}.pub")).unwrap();
    let listing = run("ssh-keygen", &["-l", "-f", &format!("{path_str}.pub")]);
    let fingerprint = listing.split_whitespace().nth(1).unwrap().to_string();
    (path_str, public.trim().to_string(), fingerprint)
}

#[tokio::test]
async fn ssh_signatures_are_checked_against_allowed_signers() {
    let fx = Fixture::new("verify-ssh").await;
    let keys = tempfile::tempdir().unwrap();
    let (trusted, public, _) = ssh_key(keys.path(), "trusted");
    let (stranger, _, stranger_fingerprint) = ssh_key(keys.path(), "stranger");
    let allowed = format!("# the team\ndev@capstan.dev namespaces=\"git\" {public}\n");
    put_secret(
        &fx.client,
        &fx.ns,
        "signers",
        &[("allowed_signers", allowed.as_bytes())],
    )
    .await;
    let repo = Repo::create(
        "verify-ssh",
        &[("settings.yaml", &configmap("settings", "0"))],
    );
    let sign_with = |key: &str| {
        repo.configure("gpg.format", "ssh");
        repo.configure("user.signingkey", key);
        repo.configure("commit.gpgsign", "true");
        repo.configure("tag.gpgSign", "true");
    };
    sign_with(&trusted);
    let signed = repo.commit(&[("settings.yaml", &configmap("settings", "1"))], "signed");
    let verify = json!({"verify": {"mode": "HEAD", "secretRef": {"name": "signers"}}});
    fx.create("app", spec(repo.http_url(), verify)).await;
    fx.wait_applied("app", &signed).await;

    sign_with(&stranger);
    let sha = repo.commit(
        &[("settings.yaml", &configmap("settings", "2"))],
        "by a stranger",
    );
    let message = format!(
        "commit {sha} is signed by SSH key {stranger_fingerprint}, which is not among the trusted keys of secret signers"
    );
    refused(&fx, "app", &message, "1").await;

    sign_with(&trusted);
    let sha = repo.tamper(&[("settings.yaml", &configmap("settings", "3"))], "changed");
    let prefix = format!("commit {sha}: the signature by SSH key SHA256:");
    let gr = fx
        .wait("app", &prefix, |gr| ready_message(gr).starts_with(&prefix))
        .await;
    let message = ready_message(&gr);
    assert!(
        message.contains("(dev@capstan.dev) does not match it"),
        "{message}"
    );
    assert_eq!(fx.value("settings").await, "1");

    // A tag signed with the SSH key, in Tag mode.
    let signed = repo.commit(&[("settings.yaml", &configmap("settings", "4"))], "signed");
    fx.wait_applied("app", &signed).await;
    fx.api().delete("app", &Default::default()).await.unwrap();
    fx.wait_gone(&fx.ns, "capstan.dev/v1alpha1", "GitRepository", "app")
        .await;
    repo.tag("v2.0.0");
    let release = json!({
        "ref": {"tag": "v2.0.0"},
        "verify": {"mode": "Tag", "secretRef": {"name": "signers"}},
    });
    fx.create("release", spec(repo.http_url(), release)).await;
    fx.wait_applied("release", &signed).await;
}
