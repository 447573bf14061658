//! Credentials for one remote, read from the keys of a Secret (Flux's names), and the git2
//! callbacks that present them over SSH and check the server's host key against `known_hosts`
//! (HTTP remotes present them through the `http` transport).

use std::cell::Cell;
use std::collections::BTreeMap;

use git2::{CertificateCheckStatus, Cred, CredentialType, RemoteCallbacks};
use rustls_pki_types::CertificateDer;

use super::SourceError;

/// What a GitRepository's `secretRef` holds. Secret values never reach `Debug` output.
#[derive(Clone, Default)]
pub struct Auth {
    /// HTTP basic auth: `username` and `password`.
    pub basic: Option<(String, String)>,
    /// HTTP bearer token: `bearerToken`.
    pub bearer_token: Option<String>,
    /// SSH private key (`identity`), its optional `password`, and the user from the URL.
    pub identity: Option<(String, Option<String>)>,
    /// `known_hosts`: without it no SSH host is trusted.
    pub known_hosts: Option<String>,
    /// `ca.crt`, parsed once: the only certificates an HTTPS server's certificate may be signed by.
    pub ca: Option<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field(
                "basic",
                &self.basic.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field(
                "bearer_token",
                &self.bearer_token.as_ref().map(|_| "<redacted>"),
            )
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("known_hosts", &self.known_hosts.is_some())
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

impl Auth {
    /// Tells credentials apart in memory (never persisted): two GitRepositories share what a
    /// remote told one of them only when they ask with the same credentials.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.basic.hash(&mut h);
        self.bearer_token.hash(&mut h);
        self.identity.hash(&mut h);
        self.known_hosts.hash(&mut h);
        for cert in self.ca.iter().flatten() {
            cert.as_ref().hash(&mut h);
        }
        self.ca.is_some().hash(&mut h);
        h.finish()
    }

    /// Reads the keys Flux users know: `username`+`password`, `bearerToken`, `identity`
    /// (+ `password` as its passphrase), `known_hosts`, `ca.crt`.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, SourceError> {
        let text = |key: &str| -> Result<Option<String>, SourceError> {
            data.get(key)
                .map(|v| {
                    String::from_utf8(v.clone()).map_err(|_| {
                        SourceError::InvalidCredentials(format!("key {key:?} is not UTF-8"))
                    })
                })
                .transpose()
        };
        let password = text("password")?;
        let identity = text("identity")?;
        let basic = match (text("username")?, &password, &identity) {
            (Some(user), Some(pass), None) => Some((user, pass.clone())),
            (Some(_), None, _) => {
                return Err(SourceError::InvalidCredentials(
                    "key \"username\" needs \"password\"".into(),
                ));
            }
            _ => None,
        };
        Ok(Auth {
            basic,
            bearer_token: text("bearerToken")?,
            identity: identity.map(|key| (key, password)),
            known_hosts: text("known_hosts")?,
            ca: data
                .get("ca.crt")
                .map(|pem| tls::certificates(pem))
                .transpose()
                .map_err(SourceError::InvalidCredentials)?,
        })
    }

    /// Callbacks presenting these credentials once (a rejected credential is not retried: libgit2
    /// would otherwise ask again forever) and refusing SSH hosts that `known_hosts` does not list.
    pub fn callbacks<'a>(&'a self, host: &'a str, port: Option<u16>) -> RemoteCallbacks<'a> {
        let mut cb = RemoteCallbacks::new();
        let attempts = Cell::new(0u32);
        cb.credentials(move |_url, user_from_url, allowed| {
            attempts.set(attempts.get() + 1);
            if attempts.get() > 1 {
                return Err(git2::Error::new(
                    git2::ErrorCode::Auth,
                    git2::ErrorClass::Callback,
                    "the server rejected the credentials",
                ));
            }
            if let (true, Some((key, passphrase))) =
                (allowed.contains(CredentialType::SSH_MEMORY), &self.identity)
            {
                return Cred::ssh_key_from_memory(
                    user_from_url.unwrap_or("git"),
                    None,
                    key,
                    passphrase.as_deref(),
                );
            }
            if allowed.contains(CredentialType::USERNAME) {
                return Cred::username(user_from_url.unwrap_or("git"));
            }
            Err(git2::Error::new(
                git2::ErrorCode::Auth,
                git2::ErrorClass::Callback,
                "the server asks for credentials and the GitRepository has none that fit",
            ))
        });
        // HTTP remotes never get here: the `http` transport checks their certificates.
        cb.certificate_check(move |cert, _| {
            let Some(hostkey) = cert.as_hostkey() else {
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let key = hostkey.hostkey().unwrap_or_default();
            if known_host(self.known_hosts.as_deref(), host, port, key) {
                Ok(CertificateCheckStatus::CertificateOk)
            } else {
                Err(git2::Error::new(
                    git2::ErrorCode::Certificate,
                    git2::ErrorClass::Ssh,
                    HOST_KEY_REJECTED,
                ))
            }
        });
        cb
    }
}

pub(super) const HOST_KEY_REJECTED: &str = "the SSH host key is not in known_hosts";

/// Whether `known_hosts` lists `key` (the raw SSH wire encoding) for `host`. Hosts on another
/// port than 22 are written `[host]:port`, as OpenSSH writes them. Hashed entries are not read.
fn known_host(known_hosts: Option<&str>, host: &str, port: Option<u16>, key: &[u8]) -> bool {
    let Some(known_hosts) = known_hosts else {
        return false;
    };
    let name = match port {
        Some(p) if p != 22 => format!("[{host}]:{p}"),
        _ => host.to_string(),
    };
    let Ok(entries) =
        ssh_key::known_hosts::KnownHosts::new(known_hosts).collect::<Result<Vec<_>, _>>()
    else {
        return false;
    };
    entries.iter().any(|entry| {
        let names = match entry.host_patterns() {
            ssh_key::known_hosts::HostPatterns::Patterns(p) => p,
            _ => return false,
        };
        entry.marker().is_none()
            && names.iter().any(|n| n == &name)
            && entry.public_key().to_bytes().is_ok_and(|b| b == key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIH6h4p1g4nqp3oE3yQ0mP3oX1nXxY2r7y2m1wq0a3b9Z";

    fn raw(b64: &str) -> Vec<u8> {
        ssh_key::PublicKey::from_openssh(&format!("ssh-ed25519 {b64}"))
            .unwrap()
            .to_bytes()
            .unwrap()
    }

    #[test]
    fn known_hosts_match_host_port_and_key() {
        let kh = format!("[127.0.0.1]:2222 ssh-ed25519 {KEY}\ngithub.com ssh-ed25519 {KEY}\n");
        let key = raw(KEY);
        assert!(known_host(Some(&kh), "127.0.0.1", Some(2222), &key));
        assert!(known_host(Some(&kh), "github.com", None, &key));
        assert!(known_host(Some(&kh), "github.com", Some(22), &key));
        assert!(!known_host(Some(&kh), "127.0.0.1", Some(2223), &key));
        assert!(!known_host(Some(&kh), "127.0.0.1", None, &key));
        assert!(!known_host(Some(&kh), "github.com", None, b"other key"));
        assert!(!known_host(None, "github.com", None, &key));
        assert!(!known_host(Some("garbage"), "github.com", None, &key));
    }

    #[test]
    fn debug_redacts_secrets() {
        let data = BTreeMap::from([
            ("username".to_string(), b"alice".to_vec()),
            ("password".to_string(), b"s3cret-pw".to_vec()),
            ("bearerToken".to_string(), b"tok3n".to_vec()),
        ]);
        let auth = Auth::from_secret_data(&data).unwrap();
        let shown = format!("{auth:?}");
        assert!(shown.contains("alice"));
        assert!(
            !shown.contains("s3cret-pw") && !shown.contains("tok3n"),
            "{shown}"
        );
    }
}

/// The certificates of `ca.crt`, which the `http` transport trusts instead of the system's roots.
mod tls {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    /// The certificates of a PEM bundle; an error when there are none or one is malformed.
    pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("key \"ca.crt\" is not PEM certificates: {e:?}"))?;
        if certs.is_empty() {
            return Err("key \"ca.crt\" holds no certificate".into());
        }
        Ok(certs)
    }
}
