//! Pure: what a reconcile found and did -> the GitRepository's status. Conditions follow
//! Kubernetes API conventions and kstatus (`Ready`, `Reconciling`, `Stalled`); a status that
//! differs from the last one only in timestamps is not written.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::GitRepositoryStatus;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const DRIFTED: &str = "Drifted";
pub const HEALTHY: &str = "Healthy";

/// Why a condition is as it is, and why an Event was sent: stable PascalCase words, which
/// metric labels reuse. Which failure has which reason, and whether it stalls, is decided in
/// `reconcile::failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    ReconciliationSucceeded,
    /// `Reconciling` while a revision is being applied, or Ready while objects become healthy.
    Progressing,
    ProgressingWithRetry,
    InvalidSpec,
    /// A GitRepository of `dependsOn` is not Ready at its latest revision, or they form a cycle.
    DependencyNotReady,
    InvalidSource,
    FetchFailed,
    AuthenticationFailed,
    RefNotFound,
    /// A SOPS-encrypted file could not be decrypted with the keys given.
    DecryptionFailed,
    /// The revision's signatures are missing, not by a trusted key, or do not match it.
    VerificationFailed,
    BuildFailed,
    /// `spec.kubeConfig`'s Secret is missing, or holds no kubeconfig Capstan can use.
    InvalidKubeConfig,
    /// The remote cluster of `spec.kubeConfig` does not answer or refuses its credentials.
    ClusterUnreachable,
    ApplyFailed,
    /// An object of the revision is managed by another GitRepository.
    OwnershipConflict,
    PruneFailed,
    PruneBlocked,
    HealthCheckFailed,
    Healthy,
    NoDrift,
    DriftDetected,
    DriftCorrected,
    /// The Event of an applied revision.
    Applied,
    /// The Event of an inventory record found incomplete (a part deleted by hand).
    InventoryIncomplete,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::ReconciliationSucceeded => "ReconciliationSucceeded",
            Reason::Progressing => "Progressing",
            Reason::ProgressingWithRetry => "ProgressingWithRetry",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::DependencyNotReady => "DependencyNotReady",
            Reason::InvalidSource => "InvalidSource",
            Reason::FetchFailed => "FetchFailed",
            Reason::AuthenticationFailed => "AuthenticationFailed",
            Reason::RefNotFound => "RefNotFound",
            Reason::DecryptionFailed => "DecryptionFailed",
            Reason::VerificationFailed => "VerificationFailed",
            Reason::BuildFailed => "BuildFailed",
            Reason::InvalidKubeConfig => "InvalidKubeConfig",
            Reason::ClusterUnreachable => "ClusterUnreachable",
            Reason::ApplyFailed => "ApplyFailed",
            Reason::OwnershipConflict => "OwnershipConflict",
            Reason::PruneFailed => "PruneFailed",
            Reason::PruneBlocked => "PruneBlocked",
            Reason::HealthCheckFailed => "HealthCheckFailed",
            Reason::Healthy => "Healthy",
            Reason::NoDrift => "NoDrift",
            Reason::DriftDetected => "DriftDetected",
            Reason::DriftCorrected => "DriftCorrected",
            Reason::Applied => "Applied",
            Reason::InventoryIncomplete => "InventoryIncomplete",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a reconcile ended, as far as the conditions are concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Everything in git is applied (and pruned as asked).
    Ready { reason: Reason, message: String },
    /// Failed; retried with backoff.
    Retrying { reason: Reason, message: String },
    /// Applied; waiting for the objects to become healthy.
    Progressing { reason: Reason, message: String },
    /// Failed in a way that only a change (of the spec or in git) can fix; checked again each
    /// interval.
    Stalled { reason: Reason, message: String },
}

/// Sets the three kstatus conditions from `verdict`, keeping each condition's
/// `lastTransitionTime` when its status did not change.
pub fn set_conditions(
    status: &mut GitRepositoryStatus,
    verdict: &Verdict,
    generation: Option<i64>,
    now: &Time,
) {
    let (ready, reconciling, stalled, reason, message) = match verdict {
        Verdict::Ready { reason, message } => (true, false, false, *reason, message),
        Verdict::Retrying { reason, message } => (false, true, false, *reason, message),
        Verdict::Progressing { reason, message } => (false, true, false, *reason, message),
        Verdict::Stalled { reason, message } => (false, false, true, *reason, message),
    };
    let mut set = |type_: &str, value: bool, reason: Reason, message: &str| {
        set_condition(status, type_, value, reason, message, generation, now)
    };
    set(READY, ready, reason, message);
    set(
        RECONCILING,
        reconciling,
        if reconciling {
            Reason::ProgressingWithRetry
        } else {
            reason
        },
        if reconciling { message } else { "" },
    );
    set(STALLED, stalled, reason, if stalled { message } else { "" });
}

/// Marks `revision` as being applied: `Reconciling=True` (reason `Progressing`) and
/// `Stalled=False`; Ready keeps what it said of the revision before.
pub fn set_progressing(
    status: &mut GitRepositoryStatus,
    revision: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let message = format!("Applying revision {revision}");
    set_condition(
        status,
        RECONCILING,
        true,
        Reason::Progressing,
        &message,
        generation,
        now,
    );
    set_condition(
        status,
        STALLED,
        false,
        Reason::Progressing,
        "",
        generation,
        now,
    );
}

/// Sets one condition, keeping its `lastTransitionTime` when its status did not change.
pub fn set_condition(
    status: &mut GitRepositoryStatus,
    type_: &str,
    value: bool,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) {
    let condition = Condition {
        type_: type_.to_string(),
        status: if value { "True" } else { "False" }.to_string(),
        reason: reason.as_str().to_string(),
        message: truncate(message, 1024),
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(old) => {
            let since = if old.status == condition.status {
                old.last_transition_time.clone()
            } else {
                now.clone()
            };
            *old = Condition {
                last_transition_time: since,
                ..condition
            };
        }
        None => status.conditions.push(condition),
    }
}

/// Removes a condition that no longer applies (e.g. `Healthy` once `wait` is off).
pub fn remove_condition(status: &mut GitRepositoryStatus, type_: &str) {
    status.conditions.retain(|c| c.type_ != type_);
}

/// Whether writing `new` over `old` would change anything but timestamps.
pub fn differs(old: Option<&GitRepositoryStatus>, new: &GitRepositoryStatus) -> bool {
    let strip = |s: &GitRepositoryStatus| {
        let mut s = s.clone();
        let epoch = Time(Default::default());
        for c in &mut s.conditions {
            c.last_transition_time = epoch.clone();
        }
        if let Some(a) = &mut s.artifact {
            a.fetched_at = epoch.clone();
        }
        for d in &mut s.drift {
            d.detected_at = epoch.clone();
        }
        s.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
        // Where the record is kept follows from the record: a status read back from its
        // parts names them, one just made does not yet.
        if let Some(i) = &mut s.inventory {
            i.record = None;
        }
        s
    };
    match old {
        None => true,
        Some(old) => strip(old) != strip(new),
    }
}

/// The Ready condition, if set.
pub fn ready(status: Option<&GitRepositoryStatus>) -> Option<&Condition> {
    status?.conditions.iter().find(|c| c.type_ == READY)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn ready_verdict() -> Verdict {
        Verdict::Ready {
            reason: Reason::ReconciliationSucceeded,
            message: "Applied revision main@sha1:abc".into(),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut status = GitRepositoryStatus::default();
        set_conditions(&mut status, &ready_verdict(), Some(1), &at(100));
        let before = status.clone();
        set_conditions(&mut status, &ready_verdict(), Some(1), &at(200));
        assert_eq!(status, before, "same verdict later: nothing changes");
        assert!(!differs(Some(&before), &status));

        let fail = Verdict::Retrying {
            reason: Reason::FetchFailed,
            message: "connection refused".into(),
        };
        set_conditions(&mut status, &fail, Some(1), &at(300));
        let ready = ready(Some(&status)).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "FetchFailed")
        );
        assert_eq!(ready.last_transition_time, at(300));
        let reconciling = status
            .conditions
            .iter()
            .find(|c| c.type_ == RECONCILING)
            .unwrap();
        assert_eq!(reconciling.status, "True");
        assert!(differs(Some(&before), &status));
    }

    #[test]
    fn stalled_is_exclusive_with_reconciling() {
        let mut status = GitRepositoryStatus::default();
        let verdict = Verdict::Stalled {
            reason: Reason::BuildFailed,
            message: "deploy/app.yaml:3: bad indentation".into(),
        };
        set_conditions(&mut status, &verdict, Some(2), &at(1));
        let get = |t: &str| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .status
                .clone()
        };
        assert_eq!(
            (get(READY), get(RECONCILING), get(STALLED)),
            ("False".into(), "False".into(), "True".into())
        );
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(2))
        );
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Case {
        steps: Vec<Step>,
        expect: Vec<std::collections::BTreeMap<String, serde_json::Value>>,
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Step {
        at: i64,
        verdict: Option<String>,
        reason: Option<String>,
        message: Option<String>,
        applying: Option<String>,
    }

    fn reason_named(name: &str) -> Reason {
        use Reason::*;
        [
            ReconciliationSucceeded,
            Progressing,
            FetchFailed,
            BuildFailed,
            HealthCheckFailed,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
        .unwrap_or_else(|| panic!("no reason {name} in this test's list"))
    }

    #[test]
    fn conditions_fold_as_the_fixtures_say() {
        for (name, case) in crate::fixture_table::<Case>(include_str!("fixtures/status.yaml")) {
            let mut status = GitRepositoryStatus::default();
            let mut before: Option<GitRepositoryStatus> = None;
            assert_eq!(case.steps.len(), case.expect.len(), "{}", name);
            for (i, (step, expect)) in case.steps.iter().zip(&case.expect).enumerate() {
                let now = Time(k8s_openapi::jiff::Timestamp::from_second(step.at).unwrap());
                match (&step.applying, step.verdict.as_deref()) {
                    (Some(revision), None) => set_progressing(&mut status, revision, Some(1), &now),
                    (None, Some(kind)) => {
                        let reason = reason_named(step.reason.as_deref().unwrap());
                        let message = step.message.clone().unwrap_or_default();
                        let verdict = match kind {
                            "ready" => Verdict::Ready { reason, message },
                            "retrying" => Verdict::Retrying { reason, message },
                            "progressing" => Verdict::Progressing { reason, message },
                            "stalled" => Verdict::Stalled { reason, message },
                            other => panic!("{}: no verdict {other}", name),
                        };
                        set_conditions(&mut status, &verdict, Some(1), &now);
                    }
                    _ => panic!("{}: a step is a verdict or applying", name),
                }
                let at = format!("{} step {i}", name);
                assert_eq!(
                    expect["write"].as_bool(),
                    Some(differs(before.as_ref(), &status)),
                    "{at}: write"
                );
                for type_ in [READY, RECONCILING, STALLED] {
                    let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
                    let shown = format!(
                        "{} {} since {}: {}",
                        c.status,
                        c.reason,
                        c.last_transition_time.0.as_second(),
                        c.message
                    );
                    assert_eq!(
                        expect[type_].as_str(),
                        Some(shown.as_str()),
                        "{at}: {type_}"
                    );
                }
                before = Some(status.clone());
            }
        }
    }

    #[test]
    fn reasons_keep_the_api_strings() {
        use Reason::*;
        // The API's reason is the variant's name, as written before the enum existed.
        for reason in [
            InvalidSpec,
            InvalidSource,
            BuildFailed,
            InvalidKubeConfig,
            ClusterUnreachable,
            PruneBlocked,
            HealthCheckFailed,
            FetchFailed,
            AuthenticationFailed,
            RefNotFound,
            ApplyFailed,
            OwnershipConflict,
            PruneFailed,
            ReconciliationSucceeded,
            Progressing,
            ProgressingWithRetry,
            Healthy,
            NoDrift,
            DriftDetected,
            DriftCorrected,
            Applied,
        ] {
            assert_eq!(reason.as_str(), format!("{reason:?}"));
        }
    }

    #[test]
    fn a_status_read_back_from_its_record_is_not_written_again() {
        use crate::api::{Inventory, RecordRef};
        let made = GitRepositoryStatus {
            inventory: Some(Inventory::default()),
            ..Default::default()
        };
        let mut read = made.clone();
        read.inventory.as_mut().unwrap().record = Some(RecordRef {
            name: "app".into(),
            parts: 2,
            digest: "d".into(),
        });
        assert!(!differs(Some(&read), &made));
        let mut other = made.clone();
        other.inventory.as_mut().unwrap().count = Some(3);
        assert!(differs(Some(&read), &other));
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let s = "é".repeat(1000);
        let t = truncate(&s, 1023);
        assert!(t.len() <= 1026 && t.ends_with('…'));
    }
}
