//! `spec.decryption`: Secrets encrypted with the real sops (for age and OpenPGP keys) are
//! decrypted before they are applied; a wrong key, a file changed after encryption and a file
//! encrypted for someone else are each `DecryptionFailed`, naming the file, and the revision
//! applied before stays. The plaintext never reaches status or Events.

use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::support::Repo;
use crate::support::controller::{Fixture, put_secret, ready_message, spec};
use crate::support::tools::{Gpg, age_identity, sops_encrypt};

fn secret(name: &str, password: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: Opaque\nstringData:\n  password: {password}\n"
    )
}

async fn password(fx: &Fixture, name: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(fx.client.clone(), &fx.ns);
    let secret = secrets.get(name).await.expect("the Secret");
    let data = secret.data.unwrap_or_default();
    String::from_utf8(data["password"].0.clone()).unwrap()
}

/// Waits for `DecryptionFailed` naming `file` and saying `why` on `app`; returns the message.
async fn refused(fx: &Fixture, file: &str, why: &str) -> String {
    let prefix = format!("decrypting {file}: {why}");
    let gr = fx
        .wait("app", &prefix, |gr| ready_message(gr).contains(&prefix))
        .await;
    let gr2 = fx.wait_failed("app", "DecryptionFailed").await;
    assert_eq!(ready_message(&gr), ready_message(&gr2));
    ready_message(&gr)
}

/// Puts `identity` alone in the decryption Secret.
async fn keys(fx: &Fixture, identity: &str) {
    let data = [("identity.agekey", identity.as_bytes())];
    put_secret(&fx.client, &fx.ns, "sops-keys", &data).await;
}

/// Nothing of `plaintexts` in the GitRepository's status or in the namespace's Events.
async fn nowhere(fx: &Fixture, plaintexts: &[&str]) {
    let gr = fx.api().get("app").await.unwrap();
    let status = serde_json::to_string(&gr.status).unwrap();
    let events: Api<Event> = Api::namespaced(fx.client.clone(), &fx.ns);
    let events =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap()).unwrap();
    for plaintext in plaintexts {
        assert!(
            !status.contains(plaintext),
            "{plaintext} in status: {status}"
        );
        assert!(
            !events.contains(plaintext),
            "{plaintext} in Events: {events}"
        );
    }
}

// Long: one story on one repository, each refusal followed by what it must not have changed.
#[tokio::test]
async fn sops_files_are_decrypted_with_age_keys_and_refused_when_they_cannot_be() {
    let fx = Fixture::new("decrypt-age").await;
    let (identity, recipient) = age_identity();
    let (_, stranger) = age_identity();
    keys(&fx, &identity).await;
    let ours = |name: &str, password: &str| {
        sops_encrypt(&secret(name, password), &["--age", &recipient], None)
    };
    let encrypted = ours("db", "first-plaintext");
    assert!(!encrypted.contains("first-plaintext"));
    let repo = Repo::create("decrypt-age", &[("db.yaml", &encrypted)]);
    let decryption =
        json!({"decryption": {"provider": "sops", "secretRef": {"name": "sops-keys"}}});
    fx.create("app", spec(repo.http_url(), decryption)).await;
    fx.wait_applied("app", &repo.head()).await;
    assert_eq!(password(&fx, "db").await, "first-plaintext");

    // Encrypted for someone else.
    let theirs = sops_encrypt(
        &secret("db", "second-plaintext"),
        &["--age", &stranger],
        None,
    );
    repo.commit(&[("db.yaml", &theirs)], "for someone else");
    refused(&fx, "db.yaml", "none of the keys of the decryption Secret").await;
    assert_eq!(
        password(&fx, "db").await,
        "first-plaintext",
        "the last revision stays"
    );

    // Changed after it was encrypted: the name is not encrypted, but the MAC covers it.
    let tampered = ours("db", "third-plaintext").replace("name: db", "name: db-copy");
    repo.commit(&[("db.yaml", &tampered)], "tampered");
    let message = refused(
        &fx,
        "db.yaml",
        "the file was changed after it was encrypted",
    )
    .await;
    assert!(message.contains("MAC mismatch"), "{message}");
    assert_eq!(password(&fx, "db").await, "first-plaintext");

    // The right file, but the Secret holds the wrong key.
    let (wrong, _) = age_identity();
    keys(&fx, &wrong).await;
    repo.commit(
        &[("db.yaml", &ours("db", "fourth-plaintext"))],
        "good file, wrong key",
    );
    refused(&fx, "db.yaml", "none of the keys of the decryption Secret").await;
    assert_eq!(password(&fx, "db").await, "first-plaintext");

    // The right key again: applied.
    keys(&fx, &identity).await;
    let sha = repo.commit(&[("db.yaml", &ours("db", "fifth-plaintext"))], "good");
    fx.wait_applied("app", &sha).await;
    assert_eq!(password(&fx, "db").await, "fifth-plaintext");
    nowhere(
        &fx,
        &[
            "first-plaintext",
            "third-plaintext",
            "fourth-plaintext",
            "fifth-plaintext",
        ],
    )
    .await;
}

#[tokio::test]
async fn sops_files_are_decrypted_with_openpgp_keys() {
    let fx = Fixture::new("decrypt-pgp").await;
    let gpg = Gpg::new();
    let fingerprint = gpg.encryption_key("ops@capstan.dev");
    let armored = gpg.secret("ops@capstan.dev");
    put_secret(
        &fx.client,
        &fx.ns,
        "sops-keys",
        &[("sops.asc", armored.as_bytes())],
    )
    .await;
    let encrypted = sops_encrypt(
        &secret("db", "pgp-plaintext"),
        &["--pgp", &fingerprint],
        Some(&gpg),
    );
    // A kustomization reads it: decrypted before kustomize sees it.
    let repo = Repo::create(
        "decrypt-pgp",
        &[
            ("app/kustomization.yaml", "resources: [db.yaml]\n"),
            ("app/db.yaml", &encrypted),
        ],
    );
    let decryption = json!({
        "path": "app",
        "decryption": {"provider": "sops", "secretRef": {"name": "sops-keys"}},
    });
    fx.create("app", spec(repo.http_url(), decryption)).await;
    fx.wait_applied("app", &repo.head()).await;
    assert_eq!(password(&fx, "db").await, "pgp-plaintext");
    nowhere(&fx, &["pgp-plaintext"]).await;
}
