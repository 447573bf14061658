//! Plan: pure decisions, made from the GitRepository, its status and its record. When to ask the
//! remote, when a revision is applied already, when to send everything again, and when to come
//! back.

use std::time::Duration;

use kube::{Resource, ResourceExt};

use super::failure::Failure;
use super::parse_duration;
use crate::api::{GitRepository, GitRepositoryStatus, RECONCILE_REQUESTED_ANNOTATION};
use crate::status::Verdict;

/// The default of `spec.timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub interval: Duration,
    /// `spec.timeout`: each git operation, render and apply.
    pub timeout: Duration,
    /// The reconcile-now annotation's value, handled or not.
    pub request: Option<String>,
    /// That request when it is not handled yet: it re-sends everything, whatever digests say.
    pub pending: Option<String>,
    /// The spec was observed and no request is pending.
    pub settled: bool,
    /// Ask the remote now.
    pub git_due: bool,
    /// How long until the remote is due, when it is not yet.
    pub until_due: Duration,
}

impl Plan {
    /// `since_check`: how long ago the remote was asked, if this process asked it since its last
    /// failure. The interval is at least a second, so `0s` does not spin.
    pub fn new(
        gr: &GitRepository,
        status: &GitRepositoryStatus,
        since_check: Option<Duration>,
    ) -> Plan {
        let interval = interval(gr);
        let request = gr
            .annotations()
            .get(RECONCILE_REQUESTED_ANNOTATION)
            .cloned();
        let pending = request
            .clone()
            .filter(|r| status.last_handled_reconcile_at.as_ref() != Some(r));
        let settled = status.observed_generation == gr.meta().generation && pending.is_none();
        // Between checks a wake-up comes from a managed object changing: only drift and health
        // are looked at.
        let git_due = !settled || since_check.is_none_or(|t| t >= interval);
        Plan {
            interval,
            timeout: timeout(gr).unwrap_or(DEFAULT_TIMEOUT),
            request,
            pending,
            settled,
            git_due,
            until_due: since_check.map_or(interval, |t| interval.saturating_sub(t)),
        }
    }

    /// The fields whose syntax only the controller checks; refused before anything changes.
    pub fn check(gr: &GitRepository) -> Result<(), Failure> {
        parse_duration(&gr.spec.interval)
            .ok_or_else(|| Failure::Spec(format!("invalid interval {:?}", gr.spec.interval)))?;
        timeout(gr).map_err(Failure::Spec)?;
        crate::live::HealthExprs::compile(&gr.spec.health_check_exprs).map_err(Failure::Spec)?;
        if gr.spec.prune {
            crate::apply::prune_blocked(1, 1, gr.spec.max_prune.as_ref()).map_err(Failure::Spec)?;
        }
        Ok(())
    }

    /// Whether `revision`, resolved now, is what was applied last, with nothing else asking for
    /// an apply: the spec observed, the same variables, no request pending.
    pub fn up_to_date(
        &self,
        status: &GitRepositoryStatus,
        applied_ok: bool,
        variables_unchanged: bool,
        revision: &str,
    ) -> bool {
        applied_ok
            && variables_unchanged
            && self.settled
            && status.last_applied_revision.as_deref() == Some(revision)
    }

    /// When to reconcile again, after the pipeline's verdict (`None`: the pipeline did not run,
    /// or found nothing to do) or its failure. `backoff` gives the delay after a retryable one.
    pub fn next(
        &self,
        result: Result<&Option<Verdict>, &Failure>,
        backoff: impl FnOnce() -> Duration,
    ) -> Duration {
        match result {
            // A wake between polls must not push the next poll back.
            Ok(None) if !self.git_due => self.until_due.max(Duration::from_millis(500)),
            Ok(_) => jitter(self.interval),
            // Only a change fixes it; look again at the next interval.
            Err(failure) if failure.stalls() => jitter(self.interval),
            Err(_) => backoff(),
        }
    }
}

/// `spec.interval`, at least a second; a minute when it does not parse (refused by the check).
pub(super) fn interval(gr: &GitRepository) -> Duration {
    parse_duration(&gr.spec.interval)
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_secs(1))
}

pub(super) fn timeout(gr: &GitRepository) -> Result<Duration, String> {
    match &gr.spec.timeout {
        Some(t) => parse_duration(t).ok_or_else(|| format!("invalid timeout {t:?}")),
        None => Ok(DEFAULT_TIMEOUT),
    }
}

/// Exponential backoff after `failures` consecutive failures, with jitter: 5 s, 10 s, ... up to
/// 5 minutes.
pub(super) fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(5).saturating_mul(1 << failures.saturating_sub(1).min(6));
    jitter(base.min(Duration::from_secs(300)))
}

/// Up to +10%, so GitRepositories created together drift apart.
pub(super) fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d.saturating_add(d.mul_f64(f64::from(nanos % 1000) / 10_000.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// One case of `fixtures/plan.yaml`.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Case {
        interval: String,
        generation: i64,
        observed_generation: Option<i64>,
        request: Option<String>,
        handled: Option<String>,
        /// Seconds since the remote was asked; absent when it was not (or failed).
        since_check: Option<u64>,
        applied_ok: bool,
        #[serde(default = "yes")]
        variables_unchanged: bool,
        last_applied: Option<String>,
        resolved: String,
        git_due: bool,
        up_to_date: bool,
        resend_all: bool,
        /// Seconds until the next reconcile when nothing was due, if `git_due` is false.
        next: Option<u64>,
    }

    fn yes() -> bool {
        true
    }

    fn app() -> GitRepository {
        crate::git_repository(serde_json::json!({
            "metadata": {"name": "app", "namespace": "team"},
            "spec": {"url": "https://git.example/app.git", "interval": "1m"},
        }))
    }

    #[test]
    fn plans_from_the_fixtures() {
        for (name, case) in crate::fixture_table::<Case>(include_str!("../fixtures/plan.yaml")) {
            let mut gr = app();
            gr.spec.interval = case.interval.clone();
            gr.metadata.generation = Some(case.generation);
            if let Some(request) = &case.request {
                gr.annotations_mut()
                    .insert(RECONCILE_REQUESTED_ANNOTATION.into(), request.clone());
            }
            let status = GitRepositoryStatus {
                observed_generation: case.observed_generation,
                last_handled_reconcile_at: case.handled.clone(),
                last_applied_revision: case.last_applied.clone(),
                ..Default::default()
            };
            let plan = Plan::new(&gr, &status, case.since_check.map(Duration::from_secs));
            assert_eq!(plan.git_due, case.git_due, "{name}: git due");
            assert_eq!(
                plan.pending.is_some(),
                case.resend_all,
                "{name}: re-send all"
            );
            let up_to_date = plan.up_to_date(
                &status,
                case.applied_ok,
                case.variables_unchanged,
                &case.resolved,
            );
            assert_eq!(up_to_date, case.up_to_date, "{name}: up to date");
            if let Some(next) = case.next {
                let delay = plan.next(Ok(&None), || unreachable!());
                assert_eq!(delay.as_secs(), next, "{name}: next");
            }
        }
    }

    #[test]
    fn failures_come_back_after_backoff_or_at_the_interval() {
        let gr = app();
        let plan = Plan::new(&gr, &GitRepositoryStatus::default(), None);
        let retry = Failure::Identity("refused".into());
        let stall = Failure::Spec("invalid".into());
        let backoff_of = |delay: Duration| plan.next(Err(&retry), || delay);
        assert_eq!(backoff_of(Duration::from_secs(7)), Duration::from_secs(7));
        let stalled = plan.next(Err(&stall), || unreachable!());
        assert!(stalled >= plan.interval && stalled <= plan.interval.mul_f64(1.1));
        assert!((5.0..=5.5).contains(&backoff(1).as_secs_f64()));
        assert!((10.0..=11.0).contains(&backoff(2).as_secs_f64()));
        assert!((300.0..=330.0).contains(&backoff(30).as_secs_f64()));
    }

    #[test]
    fn the_spec_is_checked_before_anything_changes() {
        let mut gr = app();
        gr.spec.interval = "1m".into();
        assert!(Plan::check(&gr).is_ok());
        gr.spec.timeout = Some("soon".into());
        assert_eq!(
            Plan::check(&gr).unwrap_err().to_string(),
            "invalid timeout \"soon\""
        );
        gr.spec.interval = "1d".into();
        assert!(matches!(Plan::check(&gr), Err(Failure::Spec(_))));
    }

    #[test]
    fn jitter_adds_at_most_a_tenth() {
        let d = Duration::from_secs(60);
        let j = jitter(d);
        assert!(j >= d && j <= d + Duration::from_secs(6));
    }
}
