//! Credentials end to end, through a controller process whose log is kept (at debug level): a
//! wrong password, a wrong token, a token in the URL and a redirect to another host each fail
//! with a clear condition, and no secret appears in the log, the events or the status. Fixed
//! credentials then sync, the token on the ref check as well as on the fetch.

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
