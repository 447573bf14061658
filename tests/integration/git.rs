//! The source stage against real git servers: smart HTTP with basic auth and with a bearer
//! token, a redirect to another host, HTTPS with a private CA (basic auth and a token over TLS, a
//! redirect down to http refused), SSH with known_hosts.

use std::collections::BTreeMap;

use capstan::source::{self, Auth, RemoteUrl, SourceError};

use crate::support::{Repo, git_server};

fn fetch_main(url: &str, auth: &Auth) -> Result<git2::Oid, SourceError> {
    let remote = RemoteUrl::parse(url)?;
    let cache = tempfile::tempdir().unwrap();
    let repo = source::fetch(
        cache.path(),
        &remote,
        &["+refs/heads/main:refs/heads/main"],
        1,
        auth,
        source::FetchLimits {
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(60),
            max_bytes: 64 << 20,
        },
    )?;
    let oid = repo.refname_to_id("refs/heads/main").unwrap();
    Ok(oid)
}

/// Credentials as a Secret with these keys holds them.
fn secret(keys: &[(&str, &[u8])]) -> Result<Auth, SourceError> {
    let data: BTreeMap<String, Vec<u8>> = keys
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
    Auth::from_secret_data(&data)
}

fn basic(user: &str, password: &str) -> Auth {
    secret(&[
        ("username", user.as_bytes()),
        ("password", password.as_bytes()),
    ])
    .unwrap()
}

fn token(token: &str) -> Auth {
    secret(&[("bearerToken", token.as_bytes())]).unwrap()
}

fn ssh(known_hosts: &str) -> Auth {
    let key = std::fs::read(git_server().var("GIT_SSH_KEY")).unwrap();
    secret(&[("identity", &key), ("known_hosts", known_hosts.as_bytes())]).unwrap()
}

fn ls_remote(url: &str, auth: &Auth) -> Result<Vec<(String, git2::Oid)>, SourceError> {
    source::ls_remote(&RemoteUrl::parse(url).unwrap(), auth)
}

#[test]
fn http_with_basic_auth() {
    let repo = Repo::create("http-basic", &[("a.yaml", "a: 1\n")]);
    let head = repo.commit(&[("b.yaml", "b: 2\n")], "second");
    let gs = git_server();
    let fetched = fetch_main(
        &repo.auth_url(),
        &basic("capstan", gs.var("GIT_HTTP_PASSWORD")),
    )
    .unwrap();
    assert_eq!(fetched.to_string(), head);

    let err = fetch_main(&repo.auth_url(), &basic("capstan", "wrong-password")).unwrap_err();
    assert_eq!(err.reason().as_str(), "AuthenticationFailed", "{err}");
    assert!(!err.to_string().contains("wrong-password"), "{err}");

    let err = fetch_main(&repo.auth_url(), &Auth::default()).unwrap_err();
    assert_eq!(err.reason().as_str(), "AuthenticationFailed", "{err}");
}

#[test]
fn http_with_a_bearer_token() {
    // The server refuses every request without the token, the ref advertisement included.
    let repo = Repo::create("http-token", &[("a.yaml", "a: 1\n")]);
    let auth = token(git_server().var("GIT_HTTP_TOKEN"));
    let refs = ls_remote(&repo.token_url(), &auth).unwrap();
    assert!(refs.contains(&("refs/heads/main".to_string(), repo.head().parse().unwrap())));
    assert_eq!(
        fetch_main(&repo.token_url(), &auth).unwrap().to_string(),
        repo.head()
    );

    for auth in [token("wrong-t0ken"), Auth::default()] {
        let err = ls_remote(&repo.token_url(), &auth).unwrap_err();
        assert_eq!(err.reason().as_str(), "AuthenticationFailed", "{err}");
        assert!(!err.to_string().contains("wrong-t0ken"), "{err}");
        let err = fetch_main(&repo.token_url(), &auth).unwrap_err();
        assert_eq!(err.reason().as_str(), "AuthenticationFailed", "{err}");
    }
}

#[tokio::test]
async fn a_redirect_to_another_host_is_followed_without_credentials_only() {
    let repo = Repo::create("moved", &[("a.yaml", "a: 1\n")]);
    let gs = git_server();
    // Requests for this repository that reached the other host, and what they presented.
    let at_other_host = || async {
        gs.access_log()
            .await
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|host| host.starts_with("127.0.0.2:"))
                    && l.contains(&format!("/{}.git/", repo.name))
            })
            .map(|l| l.rsplit_once("authorization=").unwrap().1.to_string())
            .collect::<Vec<_>>()
    };

    // Anonymous: the first request may be redirected, as git allows, and the other host serves.
    assert_eq!(
        ls_remote(&repo.moved_url(), &Auth::default()).unwrap()[0]
            .1
            .to_string(),
        repo.head()
    );
    assert_eq!(
        fetch_main(&repo.moved_url(), &Auth::default())
            .unwrap()
            .to_string(),
        repo.head()
    );
    let anonymous = at_other_host().await;
    assert!(anonymous.len() >= 3, "{anonymous:?}");
    assert!(anonymous.iter().all(|a| a == "\"-\""), "{anonymous:?}");

    // With credentials meant for 127.0.0.1, the redirect is refused before anything reaches the
    // other host: the token, a password, a user name in the URL.
    let password = gs.var("GIT_HTTP_PASSWORD");
    let with_userinfo = repo
        .moved_url()
        .replace("http://", &format!("http://capstan:{password}@"));
    for (url, auth) in [
        (repo.moved_url(), token(gs.var("GIT_HTTP_TOKEN"))),
        (repo.moved_url(), basic("capstan", password)),
        (with_userinfo, Auth::default()),
    ] {
        for err in [
            ls_remote(&url, &auth).unwrap_err(),
            fetch_main(&url, &auth).unwrap_err(),
        ] {
            let shown = err.to_string();
            assert!(
                shown.contains("127.0.0.2") && shown.contains("spec.url"),
                "{shown}"
            );
            assert!(!shown.contains(password), "{shown}");
        }
    }
    assert_eq!(
        at_other_host().await,
        anonymous,
        "nothing more reached 127.0.0.2"
    );
}

#[test]
fn ssh_with_known_hosts() {
    let repo = Repo::create("ssh", &[("a.yaml", "a: 1\n")]);
    let gs = git_server();
    let known_hosts = std::fs::read_to_string(gs.var("GIT_SSH_KNOWN_HOSTS")).unwrap();
    let fetched = fetch_main(&repo.ssh_url(), &ssh(&known_hosts)).unwrap();
    let ls = ls_remote(&repo.ssh_url(), &ssh(&known_hosts)).unwrap();
    assert!(
        ls.contains(&("refs/heads/main".to_string(), fetched)),
        "{ls:?}"
    );

    // Another key for the same host and port: refused, as is a host missing from known_hosts.
    let port = gs.var("GIT_SSH_PORT");
    let wrong = format!(
        "[127.0.0.1]:{port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH6h4p1g4nqp3oE3yQ0mP3oX1nXxY2r7y2m1wq0a3b9Z\n"
    );
    for known_hosts in [wrong.as_str(), ""] {
        let err = fetch_main(&repo.ssh_url(), &ssh(known_hosts)).unwrap_err();
        assert_eq!(err.reason().as_str(), "AuthenticationFailed", "{err}");
        assert!(err.to_string().contains("host key"), "{err}");
    }
}

#[test]
fn ssh_with_a_passphrase_protected_key() {
    let repo = Repo::create("ssh-passphrase", &[("a.yaml", "a: 1\n")]);
    let gs = git_server();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("id");
    let status = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "open sesame",
            "-C",
            "passphrase-test",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    // Authorize the new key on the test server, next to the harness's own.
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let authorized = std::path::Path::new(gs.var("GIT_SERVER_DIR")).join("authorized_keys");
    let mut keys = std::fs::read_to_string(&authorized).unwrap();
    keys.push_str(&public);
    std::fs::write(&authorized, keys).unwrap();

    let known_hosts = std::fs::read(gs.var("GIT_SSH_KNOWN_HOSTS")).unwrap();
    let identity = std::fs::read(&key).unwrap();
    let auth = |passphrase: &str| {
        secret(&[
            ("identity", &identity),
            ("password", passphrase.as_bytes()),
            ("known_hosts", &known_hosts),
        ])
        .unwrap()
    };
    let fetched = fetch_main(&repo.ssh_url(), &auth("open sesame")).unwrap();
    assert_eq!(fetched.to_string(), repo.head());
    let err = fetch_main(&repo.ssh_url(), &auth("wrong")).unwrap_err();
    assert_eq!(err.reason().as_str(), "AuthenticationFailed", "{err}");
}

#[test]
fn https_with_a_private_ca() {
    let repo = Repo::create("tls", &[("a.yaml", "a: 1\n")]);
    let ca = std::fs::read(git_server().var("GIT_HTTPS_CA")).unwrap();
    let auth = secret(&[("ca.crt", &ca)]).unwrap();
    assert_eq!(
        fetch_main(&repo.https_url(), &auth).unwrap().to_string(),
        repo.head()
    );
    let refs = ls_remote(&repo.https_url(), &auth).unwrap();
    assert!(refs.iter().any(|(name, _)| name == "refs/heads/main"));

    // Basic auth and a token over TLS, with ca.crt beside them.
    let gs = git_server();
    let basic_tls = secret(&[
        ("ca.crt", &ca),
        ("username", b"capstan"),
        ("password", gs.var("GIT_HTTP_PASSWORD").as_bytes()),
    ])
    .unwrap();
    let token_tls = secret(&[
        ("ca.crt", &ca),
        ("bearerToken", gs.var("GIT_HTTP_TOKEN").as_bytes()),
    ])
    .unwrap();
    for (path, auth) in [("/auth/", &basic_tls), ("/token/", &token_tls)] {
        let url = repo.https_url().replace("/git/", path);
        assert_eq!(fetch_main(&url, auth).unwrap().to_string(), repo.head());
        assert!(
            ls_remote(&url, auth)
                .unwrap()
                .iter()
                .any(|(n, _)| n == "refs/heads/main")
        );
    }

    // /moved/ redirects to plain http: refused even without credentials to protect.
    let downgrade = repo.https_url().replace("/git/", "/moved/");
    for err in [
        ls_remote(&downgrade, &auth).unwrap_err(),
        fetch_main(&downgrade, &auth).unwrap_err(),
    ] {
        assert!(err.to_string().contains("cannot redirect"), "{err}");
    }

    // Without ca.crt the system's roots decide, and they do not know this CA.
    let err = fetch_main(&repo.https_url(), &Auth::default()).unwrap_err();
    assert_eq!(err.reason().as_str(), "AuthenticationFailed", "{err}");
    assert!(err.to_string().contains("ca.crt"), "{err}");

    // Another CA is no better.
    let other = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", "/CN=another-ca", "-keyout"])
        .arg(other.path().join("key"))
        .arg("-out")
        .arg(other.path().join("ca.crt"))
        .output()
        .unwrap();
    assert!(status.status.success());
    let other = secret(&[(
        "ca.crt",
        &std::fs::read(other.path().join("ca.crt")).unwrap(),
    )])
    .unwrap();
    let err = fetch_main(&repo.https_url(), &other).unwrap_err();
    assert_eq!(err.reason().as_str(), "AuthenticationFailed", "{err}");

    // A ca.crt that is not a certificate is refused up front.
    let err = secret(&[("ca.crt", b"not a certificate")]).unwrap_err();
    assert_eq!(err.reason().as_str(), "InvalidSource", "{err}");
}
