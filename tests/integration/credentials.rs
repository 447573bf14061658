//! Credentials end to end, through a controller process whose log is kept (at debug level): a
//! wrong password, a wrong token, a token in the URL and a redirect to another host each fail
//! with a clear condition, and no secret appears in the log, the events or the status. Fixed
//! credentials then sync, the token on the ref check as well as on the fetch. SSH keys and a
//! CA's private key, in failing and succeeding GitRepositories, stay out of the same places.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Event;
use kube::api::Api;
use serde_json::json;

use crate::support::controller::{Fixture, configmap, put_secret, ready_message, spec};
use crate::support::process::{ControllerProcess, cluster_admin_kubeconfig};
use crate::support::{Repo, git_server};

#[tokio::test]
async fn secrets_stay_out_of_logs_events_and_status_and_fixed_credentials_sync() {
    let fx = Fixture::new_stopped("creds").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster_admin_kubeconfig(&fx.ns, "capstan", dir.path());
    let controller = ControllerProcess::start(
        &kubeconfig,
        "creds",
        &[
            &format!("--namespace={}", fx.ns),
            "--leader-elect=false",
            "--log-level=debug",
        ],
    );
    let repo = Repo::create(
        "creds",
        &[
            ("basic/cm.yaml", &configmap("basic", "1")),
            ("token/cm.yaml", &configmap("token", "1")),
            ("moved/cm.yaml", &configmap("moved", "1")),
        ],
    );
    let gs = git_server();
    let (password, token) = (gs.var("GIT_HTTP_PASSWORD"), gs.var("GIT_HTTP_TOKEN"));
    let (c, ns) = (&fx.client, fx.ns.as_str());
    put_secret(
        c,
        ns,
        "basic",
        &[("username", b"capstan"), ("password", b"not-the-password")],
    )
    .await;
    put_secret(c, ns, "token", &[("bearerToken", b"wrong-t0ken")]).await;
    put_secret(
        c,
        ns,
        "right",
        &[
            ("username", b"capstan"),
            ("password", password.as_bytes()),
            ("bearerToken", token.as_bytes()),
        ],
    )
    .await;
    let with = |path: &str, secret: Option<&str>| match secret {
        Some(name) => json!({"path": path, "secretRef": {"name": name}}),
        None => json!({"path": path}),
    };
    fx.create("basic", spec(repo.auth_url(), with("basic", Some("basic"))))
        .await;
    fx.create(
        "token",
        spec(repo.token_url(), with("token", Some("token"))),
    )
    .await;
    // A token written into the URL's user name is a credential too.
    let userinfo = repo.auth_url().replace("http://", "http://s3cr3t-token@");
    fx.create("userinfo", spec(userinfo, with("basic", None)))
        .await;
    // The right credentials for 127.0.0.1, which redirects to 127.0.0.2.
    fx.create(
        "moved",
        spec(repo.moved_url(), with("moved", Some("right"))),
    )
    .await;

    let mut failed = Vec::new();
    for name in ["basic", "token", "userinfo"] {
        failed.push(fx.wait_failed(name, "AuthenticationFailed").await);
    }
    let moved = fx.wait_failed("moved", "FetchFailed").await;
    assert!(
        ready_message(&moved).contains("127.0.0.2"),
        "{}",
        ready_message(&moved)
    );
    failed.push(moved);

    // The same credentials, right this time: the token now passes the ref check and the fetch.
    put_secret(
        c,
        ns,
        "basic",
        &[("username", b"capstan"), ("password", password.as_bytes())],
    )
    .await;
    put_secret(c, ns, "token", &[("bearerToken", token.as_bytes())]).await;
    fx.wait_applied("basic", &repo.head()).await;
    fx.wait_applied("token", &repo.head()).await;
    assert!(fx.get("v1", "ConfigMap", "token").await.is_some());
    assert!(
        fx.get("v1", "ConfigMap", "moved").await.is_none(),
        "nothing fetched through the refused redirect"
    );

    let log = controller.log();
    assert!(
        log.contains("AuthenticationFailed") && log.contains("127.0.0.2"),
        "the log records the failures:\n{log}"
    );
    let events: Api<Event> = Api::namespaced(fx.client.clone(), &fx.ns);
    let events = events.list(&Default::default()).await.unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("AuthenticationFailed")),
        "failures are reported as events"
    );
    let status: Vec<_> = failed.iter().map(|gr| &gr.status).collect();
    let seen = [
        ("log", log),
        ("events", serde_json::to_string(&events.items).unwrap()),
        ("status", serde_json::to_string(&status).unwrap()),
    ];
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for secret in [
        "not-the-password",
        "wrong-t0ken",
        "s3cr3t-token",
        password,
        token,
    ] {
        for form in [
            secret.to_string(),
            b64(secret),
            b64(&format!("capstan:{secret}")),
        ] {
            for (place, text) in &seen {
                assert!(!text.contains(&form), "{form} ({secret}) is in the {place}");
            }
        }
    }
}

/// What of a PEM document must never be shown: the whole of it, its base64 (as a Secret's data
/// is written), and each line of its body.
fn pem_needles(pem: &str) -> Vec<String> {
    let mut needles = vec![
        pem.to_string(),
        base64::engine::general_purpose::STANDARD.encode(pem),
    ];
    needles.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            .map(str::to_string),
    );
    needles
}

#[tokio::test]
async fn ssh_keys_and_ca_keys_stay_out_of_logs_events_and_status() {
    let fx = Fixture::new_stopped("creds-keys").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = cluster_admin_kubeconfig(&fx.ns, "capstan", dir.path());
    let controller = ControllerProcess::start(
        &kubeconfig,
        "creds-keys",
        &[
            &format!("--namespace={}", fx.ns),
            "--leader-elect=false",
            "--log-level=debug",
        ],
    );
    let repo = Repo::create(
        "creds-keys",
        &[
            ("ssh/cm.yaml", &configmap("over-ssh", "1")),
            ("tls/cm.yaml", &configmap("over-tls", "1")),
        ],
    );
    let gs = git_server();
    let identity = std::fs::read_to_string(gs.var("GIT_SSH_KEY")).unwrap();
    let known_hosts = std::fs::read_to_string(gs.var("GIT_SSH_KNOWN_HOSTS")).unwrap();
    let tls = std::path::Path::new(gs.var("GIT_SERVER_DIR")).join("tls");
    let ca_cert = std::fs::read_to_string(tls.join("ca.crt")).unwrap();
    let ca_key = std::fs::read_to_string(tls.join("ca.key")).unwrap();
    let password = gs.var("GIT_HTTP_PASSWORD");
    let wrong_host = format!(
        "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH6h4p1g4nqp3oE3yQ0mP3oX1nXxY2r7y2m1wq0a3b9Z\n",
        gs.var("GIT_SSH_PORT")
    );
    // The key with a line of its body missing: unreadable.
    let mut lines: Vec<&str> = identity.lines().collect();
    lines.remove(2);
    let broken_identity = lines.join("\n") + "\n";
    let (c, ns) = (&fx.client, fx.ns.as_str());
    for (name, data) in [
        (
            "ssh-wrong-host",
            vec![
                ("identity", identity.as_bytes()),
                ("known_hosts", wrong_host.as_bytes()),
            ],
        ),
        (
            "ssh-broken-key",
            vec![
                ("identity", broken_identity.as_bytes()),
                ("known_hosts", known_hosts.as_bytes()),
            ],
        ),
        (
            "ssh",
            vec![
                ("identity", identity.as_bytes()),
                ("known_hosts", known_hosts.as_bytes()),
            ],
        ),
    ] {
        put_secret(c, ns, name, &data).await;
    }
    // The CA's private key where its certificate belongs, and then beside it in one bundle.
    let bundle = format!("{ca_cert}{ca_key}");
    let tls_secret = |ca: &str| {
        vec![
            ("ca.crt", ca.as_bytes().to_vec()),
            ("username", b"capstan".to_vec()),
            ("password", password.as_bytes().to_vec()),
        ]
    };
    for (name, data) in [("ca-key", tls_secret(&ca_key)), ("ca", tls_secret(&bundle))] {
        let data: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        put_secret(c, ns, name, &data).await;
    }
    let tls_url = repo.https_url().replace("/git/", "/auth/");
    for (name, url, path) in [
        ("ssh-wrong-host", repo.ssh_url(), "ssh"),
        ("ssh-broken-key", repo.ssh_url(), "ssh"),
        ("ssh", repo.ssh_url(), "ssh"),
        ("ca-key", tls_url.clone(), "tls"),
        ("ca", tls_url.clone(), "tls"),
    ] {
        fx.create(
            name,
            spec(url, json!({"path": path, "secretRef": {"name": name}})),
        )
        .await;
    }

    let mut seen = vec![
        fx.wait_failed("ssh-wrong-host", "AuthenticationFailed")
            .await,
        fx.wait_failed("ssh-broken-key", "AuthenticationFailed")
            .await,
        fx.wait_failed("ca-key", "InvalidSource").await,
    ];
    assert!(
        ready_message(&seen[0]).contains("host key"),
        "{}",
        ready_message(&seen[0])
    );
    assert!(
        ready_message(&seen[2]).contains("ca.crt"),
        "{}",
        ready_message(&seen[2])
    );
    seen.push(fx.wait_applied("ssh", &repo.head()).await);
    seen.push(fx.wait_applied("ca", &repo.head()).await);
    assert!(fx.get("v1", "ConfigMap", "over-ssh").await.is_some());
    assert!(fx.get("v1", "ConfigMap", "over-tls").await.is_some());

    let log = controller.log();
    assert!(
        log.contains("ssh-broken-key") && log.contains("InvalidSource"),
        "the log records the failures:\n{log}"
    );
    let events: Api<Event> = Api::namespaced(fx.client.clone(), &fx.ns);
    let events = events.list(&Default::default()).await.unwrap();
    for reason in ["AuthenticationFailed", "InvalidSource"] {
        assert!(
            events
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some(reason)),
            "{reason} is reported as an event"
        );
    }
    let status: Vec<_> = seen.iter().map(|gr| &gr.status).collect();
    let places = [
        ("log", log),
        ("events", serde_json::to_string(&events.items).unwrap()),
        ("status", serde_json::to_string(&status).unwrap()),
    ];
    let mut needles = pem_needles(&identity);
    needles.extend(pem_needles(&broken_identity));
    needles.extend(pem_needles(&ca_key));
    needles.push(password.to_string());
    for needle in &needles {
        for (place, text) in &places {
            assert!(
                !text.contains(needle.as_str()),
                "{needle:?} is in the {place}"
            );
        }
    }
}
