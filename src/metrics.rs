//! Prometheus metrics, prefixed `capstan_`. Labels are bounded: a GitRepository's namespace and
//! name, a condition reason or an apply action; never a revision, URL or message.
use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub reconcile_duration: HistogramVec,
    pub reconciles: IntCounterVec,
    pub ready: IntGaugeVec,
    pub suspended: IntGaugeVec,
    pub managed_objects: IntGaugeVec,
    pub drifted_objects: IntGaugeVec,
    pub drift_corrections: IntCounterVec,
    pub apply_objects: IntCounterVec,
    pub git_fetch_duration: HistogramVec,
    pub commit_to_applied: HistogramVec,
    pub notifications: IntCounterVec,
    /// The `result` values used per GitRepository, so that `forget` can remove them.
    results: Mutex<HashMap<(String, String), HashSet<String>>>,
}

/// The `action` label values of `capstan_apply_objects_total`.
pub const ACTIONS: [&str; 5] = ["created", "configured", "unchanged", "recreated", "pruned"];

const GR: &[&str] = &["namespace", "name"];

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(vec![
                    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                ]),
                labels,
            )
            .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), GR).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        Metrics {
            reconcile_duration: histogram(
                "capstan_reconcile_duration_seconds",
                "Time one reconcile of a GitRepository took.",
                GR,
            ),
            reconciles: counter(
                "capstan_reconcile_total",
                "Reconciles, by the Ready condition's reason afterwards.",
                &["namespace", "name", "result"],
            ),
            ready: gauge("capstan_ready", "1 when the GitRepository is Ready."),
            suspended: gauge(
                "capstan_suspended",
                "1 when the GitRepository is suspended.",
            ),
            managed_objects: gauge(
                "capstan_managed_objects",
                "Objects in the GitRepository's inventory.",
            ),
            drifted_objects: gauge(
                "capstan_drifted_objects",
                "Managed objects whose live state differs from git, uncorrected.",
            ),
            drift_corrections: counter(
                "capstan_drift_corrections_total",
                "Drifted objects re-applied.",
                GR,
            ),
            apply_objects: counter(
                "capstan_apply_objects_total",
                "Objects per apply, by what happened to them.",
                &["namespace", "name", "action"],
            ),
            git_fetch_duration: histogram(
                "capstan_git_fetch_duration_seconds",
                "Time to bring a revision into the cache and check it out.",
                &["namespace", "name", "result"],
            ),
            commit_to_applied: histogram(
                "capstan_commit_to_applied_seconds",
                "From a revision's commit (committer time) to its objects applied.",
                GR,
            ),
            notifications: counter(
                "capstan_notifications_total",
                "Notifications per Provider: sent, failed (after retries) or dropped (queue full or rate limited).",
                &["namespace", "provider", "result"],
            ),
            registry,
            results: Mutex::default(),
        }
    }
}

impl Metrics {
    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Drops every series of a GitRepository that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        let labels = [namespace, name];
        for gauge in [
            &self.ready,
            &self.suspended,
            &self.managed_objects,
            &self.drifted_objects,
        ] {
            let _ = gauge.remove_label_values(&labels);
        }
        let _ = self.reconcile_duration.remove_label_values(&labels);
        let _ = self.commit_to_applied.remove_label_values(&labels);
        let _ = self.drift_corrections.remove_label_values(&labels);
        for action in ACTIONS {
            let _ = self
                .apply_objects
                .remove_label_values(&[namespace, name, action]);
        }
        for result in ["ok", "error"] {
            let _ = self
                .git_fetch_duration
                .remove_label_values(&[namespace, name, result]);
        }
        let key = (namespace.to_string(), name.to_string());
        let results = self.results.lock().remove(&key);
        for result in results.unwrap_or_default() {
            let _ = self
                .reconciles
                .remove_label_values(&[namespace, name, &result]);
        }
    }

    /// Counts a notification for a Provider by its result: `sent`, `failed` or `dropped`.
    pub fn notified(&self, namespace: &str, provider: &str, result: &str) {
        self.notifications
            .with_label_values(&[namespace, provider, result])
            .inc();
    }

    /// Counts a reconcile by its result (a condition reason: a small, fixed set).
    pub fn reconciled(&self, namespace: &str, name: &str, result: &str) {
        self.reconciles
            .with_label_values(&[namespace, name, result])
            .inc();
        self.results
            .lock()
            .entry((namespace.to_string(), name.to_string()))
            .or_default()
            .insert(result.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_and_are_forgotten() {
        let m = Metrics::default();
        m.reconciled("apps", "web", "ReconciliationSucceeded");
        m.managed_objects.with_label_values(&["apps", "web"]).set(3);
        let text = m.render();
        assert!(text.contains(
            r#"capstan_reconcile_total{name="web",namespace="apps",result="ReconciliationSucceeded"} 1"#
        ), "{text}");
        assert!(text.contains(r#"capstan_managed_objects{name="web",namespace="apps"} 3"#));
        m.forget("apps", "web");
        assert!(!m.render().contains(r#"name="web""#));
    }

    #[test]
    fn a_panic_while_a_lock_is_held_does_not_break_later_callers() {
        let m = std::sync::Arc::new(Metrics::default());
        let holder = m.clone();
        let panicked = std::thread::spawn(move || {
            let _held = holder.results.lock();
            panic!("a bug in one reconcile");
        })
        .join();
        assert!(panicked.is_err());
        // Every later reconcile goes on recording.
        m.reconciled("apps", "web", "ReconciliationSucceeded");
        m.forget("apps", "web");
    }
}
