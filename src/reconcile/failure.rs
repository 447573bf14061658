//! Every way a step can fail, and the one place that maps each to its condition reason and
//! decides whether it stalls (waits for a change of the spec or in git) or is retried with
//! backoff.

use std::time::Duration;

use crate::apply::{ApplyError, PruneError};
use crate::render::RenderError;
use crate::source::verify::VerifyError;
use crate::source::{CheckError, SourceError};
use crate::status::{Reason, Verdict};

use super::fetch::VariablesError;

#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    /// A field of the spec the CRD's schema cannot check (durations, maxPrune).
    #[error("{0}")]
    Spec(String),
    /// A GitRepository of `dependsOn` is missing or not Ready at its latest revision.
    #[error("waiting for dependencies: {0}")]
    DependencyNotReady(String),
    /// `dependsOn` leads back to the GitRepository.
    #[error("dependency cycle: {0}")]
    DependencyCycle(String),
    #[error("{0}")]
    Url(SourceError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// Asking the remote which commit the ref names.
    #[error("{0}")]
    Resolve(CheckError),
    #[error("{}", .0.message)]
    Variables(VariablesError),
    #[error("creating a checkout directory: {0}")]
    WorkDir(std::io::Error),
    /// Fetching and checking out the commit.
    #[error("{0}")]
    Checkout(CheckError),
    /// Reading the Secret of `spec.decryption`.
    #[error("decryption: {0}")]
    DecryptionSecret(CredentialsError),
    /// The Secret of `spec.decryption` holds no usable key.
    #[error("{0}")]
    DecryptionKeys(String),
    /// Reading the Secret of `spec.verify`.
    #[error("verify: {0}")]
    VerifySecret(CredentialsError),
    /// The revision's signatures are missing, unknown or wrong.
    #[error("{0}")]
    Verification(VerifyError),
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Reading the Secret of `spec.kubeConfig`.
    #[error("kubeconfig: {0}")]
    KubeConfigSecret(CredentialsError),
    /// The kubeconfig in it is not one Capstan can use.
    #[error("{0}")]
    KubeConfig(String),
    /// The remote cluster does not answer, or refuses the kubeconfig's credentials.
    #[error("remote cluster unreachable: {0}")]
    ClusterUnreachable(String),
    /// The client that applies as the GitRepository's ServiceAccount could not be made.
    #[error("{0}")]
    Identity(String),
    #[error(transparent)]
    Apply(ApplyError),
    #[error("{0}")]
    PruneBlocked(String),
    #[error("{}", join(.0))]
    Prune(Vec<PruneError>),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum CredentialsError {
    #[error("reading secret {name}: {error}")]
    Read { name: String, error: kube::Error },
    #[error("secret {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    #[error(transparent)]
    Invalid(SourceError),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum BuildError {
    #[error("rendering took longer than {0:?}")]
    Timeout(Duration),
    #[error("rendering failed: {0}")]
    Crashed(String),
    #[error("revision {revision}: {error}")]
    Render {
        revision: String,
        error: RenderError,
    },
}

fn join(errors: &[PruneError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Failure {
    pub fn reason(&self) -> Reason {
        match self {
            Failure::Spec(_) => Reason::InvalidSpec,
            Failure::DependencyNotReady(_) | Failure::DependencyCycle(_) => {
                Reason::DependencyNotReady
            }
            Failure::Url(e) => e.reason(),
            Failure::Credentials(CredentialsError::Invalid(e)) => e.reason(),
            Failure::Credentials(_) => Reason::AuthenticationFailed,
            Failure::Resolve(e) | Failure::Checkout(e) => e.reason(),
            Failure::WorkDir(_) => Reason::FetchFailed,
            Failure::VerifySecret(_) | Failure::Verification(_) => Reason::VerificationFailed,
            Failure::DecryptionSecret(_) | Failure::DecryptionKeys(_) => Reason::DecryptionFailed,
            Failure::Build(BuildError::Render {
                error: RenderError::Decryption { .. },
                ..
            }) => Reason::DecryptionFailed,
            Failure::Variables(_) | Failure::Build(_) => Reason::BuildFailed,
            Failure::Apply(e) if e.only_conflicts() => Reason::OwnershipConflict,
            Failure::KubeConfigSecret(_) | Failure::KubeConfig(_) => Reason::InvalidKubeConfig,
            Failure::ClusterUnreachable(_) => Reason::ClusterUnreachable,
            Failure::Identity(_) | Failure::Apply(_) => Reason::ApplyFailed,
            Failure::PruneBlocked(_) => Reason::PruneBlocked,
            Failure::Prune(_) => Reason::PruneFailed,
        }
    }

    /// Whether only a change (of the spec, in git, of a referenced object) can fix it; otherwise
    /// it may pass, and is retried with backoff.
    pub fn stalls(&self) -> bool {
        match self {
            Failure::Spec(_)
            | Failure::DependencyCycle(_)
            | Failure::Url(_)
            | Failure::Credentials(CredentialsError::Invalid(_))
            | Failure::Build(_)
            | Failure::Verification(_)
            | Failure::DecryptionKeys(_)
            | Failure::KubeConfig(_)
            | Failure::PruneBlocked(_) => true,
            // An invalid semver range or commit is in the spec; a missing ref may yet be pushed.
            Failure::Resolve(e) => e.reason() == Reason::InvalidSpec,
            Failure::Variables(e) => !e.transient,
            Failure::DependencyNotReady(_)
            | Failure::Credentials(_)
            | Failure::WorkDir(_)
            | Failure::Checkout(_)
            | Failure::VerifySecret(_)
            | Failure::DecryptionSecret(_)
            | Failure::KubeConfigSecret(_)
            | Failure::ClusterUnreachable(_)
            | Failure::Identity(_)
            | Failure::Apply(_)
            | Failure::Prune(_) => false,
        }
    }

    /// Whether it happened after objects were sent, so that what is applied may no longer be
    /// what the last applied revision says.
    pub fn after_apply(&self) -> bool {
        matches!(
            self,
            Failure::Apply(_) | Failure::PruneBlocked(_) | Failure::Prune(_)
        )
    }

    pub fn verdict(&self) -> Verdict {
        let (reason, message) = (self.reason(), self.to_string());
        if self.stalls() {
            Verdict::Stalled { reason, message }
        } else {
            Verdict::Retrying { reason, message }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{Action, ApplyReport};
    use crate::object::ObjectId;
    use crate::source::resolve::ResolveError;

    // Long: one table with a row per failure, read top to bottom.
    #[test]
    fn each_failure_has_one_reason_and_one_decision() {
        let fetch = || SourceError::Fetch {
            url: "https://git.example/app".into(),
            message: "connection refused".into(),
        };
        let variables = |transient| VariablesError {
            message: "postBuild".into(),
            transient,
        };
        // An apply whose failed objects are these.
        let apply = |actions: Vec<Action>| {
            let report = ApplyReport {
                objects: actions
                    .into_iter()
                    .map(|a| {
                        (
                            ObjectId::parse("team_app__ConfigMap").unwrap(),
                            "v1".into(),
                            a,
                        )
                    })
                    .collect(),
                ..ApplyReport::default()
            };
            Failure::Apply(report.error().expect("a failed apply"))
        };
        let conflict = || Action::Conflict("managed by GitRepository team/other".into());
        let not_found = || CredentialsError::NotFound {
            namespace: "team".into(),
            name: "git".into(),
        };
        // (failure, reason, stalls, after apply)
        let table: Vec<(Failure, Reason, bool, bool)> = vec![
            (
                Failure::Spec("invalid interval".into()),
                Reason::InvalidSpec,
                true,
                false,
            ),
            (
                Failure::DependencyNotReady("team/crds not found".into()),
                Reason::DependencyNotReady,
                false,
                false,
            ),
            (
                Failure::DependencyCycle("team/a -> team/a".into()),
                Reason::DependencyNotReady,
                true,
                false,
            ),
            (
                Failure::Url(SourceError::InvalidUrl("x".into())),
                Reason::InvalidSource,
                true,
                false,
            ),
            (
                not_found().into(),
                Reason::AuthenticationFailed,
                false,
                false,
            ),
            (
                CredentialsError::Invalid(SourceError::InvalidCredentials("no key".into())).into(),
                Reason::InvalidSource,
                true,
                false,
            ),
            (
                Failure::Resolve(ResolveError::BranchNotFound("main".into()).into()),
                Reason::RefNotFound,
                false,
                false,
            ),
            (
                Failure::Resolve(ResolveError::InvalidCommit("xyz".into()).into()),
                Reason::InvalidSpec,
                true,
                false,
            ),
            (
                Failure::Resolve(fetch().into()),
                Reason::FetchFailed,
                false,
                false,
            ),
            (
                Failure::Checkout(fetch().into()),
                Reason::FetchFailed,
                false,
                false,
            ),
            (
                Failure::KubeConfigSecret(not_found()),
                Reason::InvalidKubeConfig,
                false,
                false,
            ),
            (
                Failure::KubeConfig("kubeconfig secret prod: not a kubeconfig".into()),
                Reason::InvalidKubeConfig,
                true,
                false,
            ),
            (
                Failure::ClusterUnreachable("https://10.0.0.1:6443/: connection refused".into()),
                Reason::ClusterUnreachable,
                false,
                false,
            ),
            (
                Failure::VerifySecret(not_found()),
                Reason::VerificationFailed,
                false,
                false,
            ),
            (
                Failure::Verification(VerifyError::Unsigned {
                    object: "commit 1234".into(),
                }),
                Reason::VerificationFailed,
                true,
                false,
            ),
            (
                Failure::DecryptionSecret(not_found()),
                Reason::DecryptionFailed,
                false,
                false,
            ),
            (
                Failure::DecryptionKeys("decryption secret sops: no keys".into()),
                Reason::DecryptionFailed,
                true,
                false,
            ),
            (
                BuildError::Render {
                    revision: "main@sha1:1".into(),
                    error: RenderError::Decryption {
                        file: "secret.yaml".into(),
                        message: "MAC mismatch".into(),
                    },
                }
                .into(),
                Reason::DecryptionFailed,
                true,
                false,
            ),
            (
                Failure::Variables(variables(true)),
                Reason::BuildFailed,
                false,
                false,
            ),
            (
                Failure::Variables(variables(false)),
                Reason::BuildFailed,
                true,
                false,
            ),
            (
                BuildError::Timeout(Duration::from_secs(60)).into(),
                Reason::BuildFailed,
                true,
                false,
            ),
            (
                Failure::Identity("impersonating".into()),
                Reason::ApplyFailed,
                false,
                false,
            ),
            (
                apply(vec![conflict(), Action::Created]),
                Reason::OwnershipConflict,
                false,
                true,
            ),
            (
                apply(vec![conflict(), Action::Failed("invalid".into())]),
                Reason::ApplyFailed,
                false,
                true,
            ),
            (
                Failure::PruneBlocked("over the limit".into()),
                Reason::PruneBlocked,
                true,
                true,
            ),
            (Failure::Prune(Vec::new()), Reason::PruneFailed, false, true),
        ];
        for (failure, reason, stalls, after_apply) in table {
            assert_eq!(failure.reason(), reason, "{failure:?}");
            assert_eq!(failure.stalls(), stalls, "{failure:?}");
            assert_eq!(failure.after_apply(), after_apply, "{failure:?}");
            match failure.verdict() {
                Verdict::Stalled { reason: r, .. } => assert!(stalls && r == reason),
                Verdict::Retrying { reason: r, .. } => assert!(!stalls && r == reason),
                other => panic!("{other:?}"),
            }
        }
    }
}
