//! Where a GitRepository's objects go: the cluster the controller runs in, or the remote one its
//! `spec.kubeConfig` names. A cluster has its own discovery cache (the applier) and its own
//! watches (the live state), shared by every GitRepository that targets it: a remote cluster's
//! go with the last GitRepository's record that holds it. Status, Events and the inventory
//! record stay on the controller's own cluster.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use parking_lot::Mutex;
use tracing::info;

use super::Context;
use super::failure::Failure;
use super::fetch::read_secret;
use super::state::{State, Target};
use crate::api::GitRepository;
use crate::apply::Applier;
use crate::live::Live;

/// The entry of the kubeconfig Secret read when `spec.kubeConfig.secretRef.key` names none.
pub const KUBECONFIG_KEY: &str = "value";

/// How long a probe of a remote cluster waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Cluster {
    /// The remote's API server (`None`: the controller's own cluster), for messages.
    pub server: Option<String>,
    /// The key impersonating clients of this cluster are kept under, beside the user.
    id: String,
    /// Connection settings; impersonating clients are made from them.
    config: kube::Config,
    client: Client,
    pub applier: Applier,
    pub live: Arc<Live>,
}

impl Cluster {
    pub fn local(
        config: kube::Config,
        client: Client,
        live: Arc<Live>,
        concurrency: usize,
    ) -> Self {
        Cluster {
            server: None,
            id: String::new(),
            config,
            client,
            applier: Applier::new(concurrency),
            live,
        }
    }

    /// The cluster's client as the kubeconfig (or the controller) connects, not impersonating.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Connection settings with `user` impersonated, and the key its client is shared under.
    pub fn impersonating(&self, user: &str) -> (kube::Config, String) {
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(user.to_string());
        (config, format!("{}{user}", self.id))
    }
}

/// The remote clusters in use, by the digest of their kubeconfig.
#[derive(Default)]
pub(super) struct Remotes {
    clusters: Mutex<HashMap<u64, Weak<Cluster>>>,
}

/// Points `state` at the cluster `gr` applies to: its own record's copy while that may be used
/// (`fresh` not asked), otherwise the kubeconfig Secret read again. A remote that the watches
/// found unreachable is asked (`/version`) before anything else is; so is a new one.
pub(super) async fn connect(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    fresh: bool,
) -> Result<(), Failure> {
    let Some(spec) = &gr.spec.kube_config else {
        state.target = None;
        return Ok(());
    };
    let secret = &spec.secret_ref;
    let key = secret.key.as_deref().unwrap_or(KUBECONFIG_KEY);
    let named = format!("{}/{key}", secret.name);
    // What was read before stays until a read succeeds: a failed one leaves nothing pointing
    // elsewhere.
    let held = state
        .target
        .as_ref()
        .filter(|t| !fresh && t.secret == named)
        .cloned();
    let target = match held {
        Some(target) => target,
        None => {
            let text = kubeconfig_of(ctx.client(), gr).await?;
            let described = || format!("kubeconfig secret {}", secret.name);
            let cluster = ctx.remotes.cluster(ctx, &text, described).await?;
            Target {
                secret: named,
                cluster,
            }
        }
    };
    let cluster = target.cluster.clone();
    state.target = Some(target);
    if cluster.live.down().is_some() {
        probe(&cluster).await?;
    }
    Ok(())
}

/// The kubeconfig in the Secret of `gr`'s `spec.kubeConfig`, read by `client`.
async fn kubeconfig_of(client: &Client, gr: &GitRepository) -> Result<String, Failure> {
    let Some(spec) = &gr.spec.kube_config else {
        return Err(Failure::KubeConfig("no spec.kubeConfig".into()));
    };
    let secret = &spec.secret_ref;
    let key = secret.key.as_deref().unwrap_or(KUBECONFIG_KEY);
    let data = read_secret(client, gr, &secret.name)
        .await
        .map_err(Failure::KubeConfigSecret)?;
    let described = || format!("kubeconfig secret {}", secret.name);
    let bytes = data
        .get(key)
        .ok_or_else(|| Failure::KubeConfig(format!("{}: no entry {key:?}", described())))?;
    String::from_utf8(bytes.clone())
        .map_err(|_| Failure::KubeConfig(format!("{}: entry {key:?} is not text", described())))
}

/// For `capstan diff`: a client of the cluster `gr` applies to when that is a remote one, from
/// its kubeconfig Secret as `client` (the user) reads it; `None` for the controller's own.
pub async fn remote_client(client: &Client, gr: &GitRepository) -> Result<Option<Client>, String> {
    if gr.spec.kube_config.is_none() {
        return Ok(None);
    }
    let text = kubeconfig_of(client, gr).await.map_err(|e| e.to_string())?;
    let config = config_of(&text).await?;
    Client::try_from(config)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Asks the remote for its version: whether it answers, and accepts the kubeconfig's
/// credentials.
async fn probe(cluster: &Cluster) -> Result<(), Failure> {
    let server = cluster.server.clone().unwrap_or_default();
    match tokio::time::timeout(PROBE_TIMEOUT, cluster.client.apiserver_version()).await {
        Ok(Ok(_)) => {
            cluster.live.reached();
            Ok(())
        }
        Ok(Err(e)) => Err(Failure::ClusterUnreachable(format!("{server}: {e}"))),
        Err(_) => Err(Failure::ClusterUnreachable(format!(
            "{server}: no answer within {PROBE_TIMEOUT:?}"
        ))),
    }
}

impl Remotes {
    /// The cluster of `kubeconfig`: the one in use when another GitRepository has the same,
    /// otherwise connected and asked once.
    async fn cluster(
        &self,
        ctx: &Context,
        kubeconfig: &str,
        described: impl Fn() -> String,
    ) -> Result<Arc<Cluster>, Failure> {
        let digest = crate::digest::stable_u64(kubeconfig.as_bytes());
        if let Some(cluster) = self.clusters.lock().get(&digest).and_then(Weak::upgrade) {
            return Ok(cluster);
        }
        let invalid = |e: String| Failure::KubeConfig(format!("{}: {e}", described()));
        let config = config_of(kubeconfig).await.map_err(invalid)?;
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config.clone()).map_err(|e| invalid(e.to_string()))?;
        let cluster = Arc::new(Cluster {
            server: Some(server.clone()),
            id: format!("{digest:016x}/"),
            live: ctx.local.live.sibling(client.clone()),
            applier: Applier::new(ctx.apply_concurrency),
            config,
            client,
        });
        probe(&cluster).await?;
        info!(%server, "connected to a remote cluster");
        let mut clusters = self.clusters.lock();
        clusters.retain(|_, c| c.strong_count() > 0);
        match clusters.get(&digest).and_then(Weak::upgrade) {
            // Another GitRepository connected meanwhile: one set of watches.
            Some(other) => Ok(other),
            None => {
                clusters.insert(digest, Arc::downgrade(&cluster));
                Ok(cluster)
            }
        }
    }
}

/// Connection settings from a kubeconfig taken from a Secret: its current context, with the
/// credentials inline. A file path or a command in it would be read or run on the controller's
/// machine, with the controller's rights: refused.
async fn config_of(text: &str) -> Result<kube::Config, String> {
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|e| format!("not a kubeconfig: {e}"))?;
    for named in &kubeconfig.clusters {
        if let Some(c) = &named.cluster
            && c.certificate_authority.is_some()
        {
            return Err(refused(&named.name, "certificate-authority (a file path)"));
        }
    }
    for named in &kubeconfig.auth_infos {
        let Some(a) = &named.auth_info else { continue };
        let forbidden = [
            (a.token_file.is_some(), "tokenFile (a file path)"),
            (
                a.client_certificate.is_some(),
                "client-certificate (a file path)",
            ),
            (a.client_key.is_some(), "client-key (a file path)"),
            (a.exec.is_some(), "exec (a command)"),
            (a.auth_provider.is_some(), "auth-provider"),
        ];
        if let Some((_, what)) = forbidden.iter().find(|(set, _)| *set) {
            return Err(refused(&named.name, what));
        }
    }
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())
}

fn refused(name: &str, what: &str) -> String {
    format!("{name:?} uses {what}; only inline credentials and certificates are accepted")
}

#[cfg(test)]
mod tests {
    use super::*;

    const INLINE: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: ""
users:
- name: deployer
  user:
    token: abc
contexts:
- name: prod
  context: {cluster: prod, user: deployer}
current-context: prod
"#;

    #[tokio::test]
    async fn inline_credentials_only() {
        let config = config_of(&INLINE.replace("    certificate-authority-data: \"\"\n", ""))
            .await
            .expect("an inline kubeconfig");
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");

        for (field, named) in [
            (
                "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
                "tokenFile",
            ),
            (
                "client-certificate: /etc/ssl/admin.crt",
                "client-certificate",
            ),
            ("client-key: /etc/ssl/admin.key", "client-key"),
            (
                "exec: {command: /bin/sh, apiVersion: client.authentication.k8s.io/v1}",
                "exec",
            ),
        ] {
            let text = INLINE.replace("token: abc", field);
            let error = config_of(&text).await.expect_err(field);
            assert!(error.contains(named), "{error}");
            assert!(error.contains("\"deployer\""), "{error}");
        }
        let text = INLINE.replace(
            "certificate-authority-data: \"\"",
            "certificate-authority: /etc/ssl/ca.crt",
        );
        let error = config_of(&text).await.expect_err("a CA file");
        assert!(error.contains("certificate-authority"), "{error}");
        let error = config_of("clusters: [").await.expect_err("not YAML");
        assert!(error.starts_with("not a kubeconfig"), "{error}");
    }
}
