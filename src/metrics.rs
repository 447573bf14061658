//! Prometheus metrics, prefixed `capstan_`. Labels are bounded: a GitRepository's namespace and
//! name, a condition reason or an apply action; never a revision, URL or message.
//!
//! The series of each GitRepository live in one small record, turned into metric families only
//! when `/metrics` is scraped. The prometheus crate's labelled vectors keep every child with its
//! own label pairs, descriptor and (for histograms) two shards of buckets: 9.1 KiB for the dozen
//! series of one GitRepository, measured, or 89 MiB at 10,000 GitRepositories. A record here is
//! well under 1 KiB. The exposition (names, labels, types, buckets) is the same.
use std::collections::BTreeMap;

use parking_lot::Mutex;
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    notifications: IntCounterVec,
    /// By namespace, then name.
    repos: Mutex<BTreeMap<(String, String), Series>>,
}

/// The `action` label values of `capstan_apply_objects_total`.
pub const ACTIONS: [&str; 5] = ["created", "configured", "unchanged", "recreated", "pruned"];

/// The upper bounds (seconds) of every histogram's buckets, `+Inf` aside.
const BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Observations per bucket (not cumulative; the last counts those past every bound), their
/// count and sum.
#[derive(Default, Clone, Debug, PartialEq)]
struct Histogram {
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        let i = BUCKETS
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += value;
    }

    fn proto(&self) -> proto::Histogram {
        let mut cumulative = 0;
        let buckets = BUCKETS
            .iter()
            .zip(self.counts)
            .map(|(bound, n)| {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(self.counts.iter().sum());
        h.set_sample_sum(self.sum);
        h
    }
}

/// One GitRepository's series; a field is exposed once it was set.
#[derive(Default, Debug)]
struct Series {
    ready: Option<bool>,
    suspended: Option<bool>,
    managed: Option<i64>,
    drifted: Option<i64>,
    drift_corrections: Option<u64>,
    applied: Option<[u64; ACTIONS.len()]>,
    /// Reconciles by result: a condition reason (a small, fixed set).
    reconciles: Vec<(Box<str>, u64)>,
    reconcile_duration: Option<Box<Histogram>>,
    /// Fetches that succeeded, and those that failed.
    fetch: [Option<Box<Histogram>>; 2],
    commit_to_applied: Option<Box<Histogram>>,
}

/// What a reconcile ended with, for the GitRepository's series.
pub struct Ended<'a> {
    pub ready: bool,
    /// Ready's reason (or `Unknown`).
    pub reason: &'a str,
    pub managed: i64,
    pub drifted: i64,
    pub seconds: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let notifications = IntCounterVec::new(
            Opts::new(
                "capstan_notifications_total",
                "Notifications per Provider: sent, failed (after retries) or dropped (queue full or rate limited).",
            ),
            &["namespace", "provider", "result"],
        )
        .expect("valid counter");
        registry
            .register(Box::new(notifications.clone()))
            .expect("registered once");
        Metrics {
            registry,
            notifications,
            repos: Mutex::default(),
        }
    }
}

impl Metrics {
    fn with(&self, namespace: &str, name: &str, f: impl FnOnce(&mut Series)) {
        let mut repos = self.repos.lock();
        let key = (namespace.to_string(), name.to_string());
        f(repos.entry(key).or_default());
    }

    /// Counts a reconcile by its result (a condition reason: a small, fixed set).
    pub fn reconciled(&self, namespace: &str, name: &str, result: &str) {
        self.with(namespace, name, |s| count_result(s, result));
    }

    /// A reconcile that found the GitRepository suspended.
    pub fn suspended(&self, namespace: &str, name: &str) {
        self.with(namespace, name, |s| {
            s.suspended = Some(true);
            count_result(s, "Suspended");
        });
    }

    /// A reconcile's outcome: Ready and its reason, the objects managed and drifted, and how
    /// long it took.
    pub fn ended(&self, namespace: &str, name: &str, e: Ended) {
        self.with(namespace, name, |s| {
            s.suspended = Some(false);
            s.ready = Some(e.ready);
            count_result(s, e.reason);
            s.managed = Some(e.managed);
            s.drifted = Some(e.drifted);
            s.reconcile_duration
                .get_or_insert_default()
                .observe(e.seconds);
        });
    }

    /// The objects of an apply, by action (in [`ACTIONS`]' order).
    pub fn applied(&self, namespace: &str, name: &str, counts: [i64; ACTIONS.len()]) {
        self.with(namespace, name, |s| {
            let applied = s.applied.get_or_insert_default();
            for (total, n) in applied.iter_mut().zip(counts) {
                *total += n.max(0) as u64;
            }
        });
    }

    /// A fetch and checkout, and whether it succeeded.
    pub fn fetched(&self, namespace: &str, name: &str, ok: bool, seconds: f64) {
        self.with(namespace, name, |s| {
            s.fetch[usize::from(!ok)]
                .get_or_insert_default()
                .observe(seconds)
        });
    }

    /// From a new revision's commit to its objects applied.
    pub fn commit_applied(&self, namespace: &str, name: &str, seconds: f64) {
        self.with(namespace, name, |s| {
            s.commit_to_applied.get_or_insert_default().observe(seconds)
        });
    }

    pub fn drift_corrected(&self, namespace: &str, name: &str) {
        self.with(namespace, name, |s| {
            *s.drift_corrections.get_or_insert(0) += 1
        });
    }

    /// Counts a notification for a Provider by its result: `sent`, `failed` or `dropped`.
    pub fn notified(&self, namespace: &str, provider: &str, result: &str) {
        self.notifications
            .with_label_values(&[namespace, provider, result])
            .inc();
    }

    /// Drops every series of a GitRepository that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.repos
            .lock()
            .remove(&(namespace.to_string(), name.to_string()));
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(self.repo_families());
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn repo_families(&self) -> Vec<MetricFamily> {
        use MetricType::{COUNTER, GAUGE, HISTOGRAM};
        let families: [(&str, &str, MetricType); 10] = [
            (
                "capstan_reconcile_duration_seconds",
                "Time one reconcile of a GitRepository took.",
                HISTOGRAM,
            ),
            (
                "capstan_reconcile_total",
                "Reconciles, by the Ready condition's reason afterwards.",
                COUNTER,
            ),
            ("capstan_ready", "1 when the GitRepository is Ready.", GAUGE),
            (
                "capstan_suspended",
                "1 when the GitRepository is suspended.",
                GAUGE,
            ),
            (
                "capstan_managed_objects",
                "Objects in the GitRepository's inventory.",
                GAUGE,
            ),
            (
                "capstan_drifted_objects",
                "Managed objects whose live state differs from git, uncorrected.",
                GAUGE,
            ),
            (
                "capstan_drift_corrections_total",
                "Drifted objects re-applied.",
                COUNTER,
            ),
            (
                "capstan_apply_objects_total",
                "Objects per apply, by what happened to them.",
                COUNTER,
            ),
            (
                "capstan_git_fetch_duration_seconds",
                "Time to bring a revision into the cache and check it out.",
                HISTOGRAM,
            ),
            (
                "capstan_commit_to_applied_seconds",
                "From a revision's commit (committer time) to its objects applied.",
                HISTOGRAM,
            ),
        ];
        let mut metrics: [Vec<proto::Metric>; 10] = Default::default();
        let repos = self.repos.lock();
        for ((namespace, name), s) in repos.iter() {
            // Label pairs sorted by name, as the encoder expects them.
            let labels = |extra: Option<(&str, &str)>| {
                let mut pairs = vec![pair("name", name), pair("namespace", namespace)];
                if let Some((k, v)) = extra {
                    pairs.push(pair(k, v));
                    pairs.sort_by(|a, b| a.name().cmp(b.name()));
                }
                pairs
            };
            let gauge = |value: f64| {
                let mut m = proto::Metric::from_label(labels(None));
                let mut g = proto::Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
                m
            };
            let counter = |extra: Option<(&str, &str)>, value: u64| {
                let mut m = proto::Metric::from_label(labels(extra));
                let mut c = proto::Counter::default();
                c.set_value(value as f64);
                m.set_counter(c);
                m
            };
            let histogram = |extra: Option<(&str, &str)>, h: &Histogram| {
                let mut m = proto::Metric::from_label(labels(extra));
                m.set_histogram(h.proto());
                m
            };
            if let Some(h) = &s.reconcile_duration {
                metrics[0].push(histogram(None, h));
            }
            for (result, n) in &s.reconciles {
                metrics[1].push(counter(Some(("result", result)), *n));
            }
            let gauges = [
                (2, s.ready.map(f64::from)),
                (3, s.suspended.map(f64::from)),
                (4, s.managed.map(|n| n as f64)),
                (5, s.drifted.map(|n| n as f64)),
            ];
            for (i, value) in gauges {
                if let Some(v) = value {
                    metrics[i].push(gauge(v));
                }
            }
            if let Some(n) = s.drift_corrections {
                metrics[6].push(counter(None, n));
            }
            for (action, n) in ACTIONS.iter().zip(s.applied.iter().flatten()) {
                metrics[7].push(counter(Some(("action", action)), *n));
            }
            for (result, h) in ["ok", "error"].iter().zip(&s.fetch) {
                if let Some(h) = h {
                    metrics[8].push(histogram(Some(("result", result)), h));
                }
            }
            if let Some(h) = &s.commit_to_applied {
                metrics[9].push(histogram(None, h));
            }
        }
        families
            .into_iter()
            .zip(metrics)
            .filter(|(_, m)| !m.is_empty())
            .map(|((name, help, type_), m)| {
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(type_);
                f.set_metric(m);
                f
            })
            .collect()
    }
}

fn count_result(s: &mut Series, result: &str) {
    match s.reconciles.iter_mut().find(|(r, _)| &**r == result) {
        Some((_, n)) => *n += 1,
        None => s.reconciles.push((result.into(), 1)),
    }
}

fn pair(name: &str, value: &str) -> proto::LabelPair {
    let mut p = proto::LabelPair::default();
    p.set_name(name.to_string());
    p.set_value(value.to_string());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_and_are_forgotten() {
        let m = Metrics::default();
        m.reconciled("apps", "web", "ReconciliationSucceeded");
        m.ended(
            "apps",
            "web",
            Ended {
                ready: true,
                reason: "ReconciliationSucceeded",
                managed: 3,
                drifted: 0,
                seconds: 0.3,
            },
        );
        m.applied("apps", "web", [2, 1, 0, 0, 0]);
        m.fetched("apps", "web", true, 0.07);
        m.fetched("apps", "web", true, 200.0);
        let text = m.render();
        for line in [
            r#"capstan_reconcile_total{name="web",namespace="apps",result="ReconciliationSucceeded"} 2"#,
            r#"capstan_managed_objects{name="web",namespace="apps"} 3"#,
            r#"capstan_ready{name="web",namespace="apps"} 1"#,
            r#"capstan_suspended{name="web",namespace="apps"} 0"#,
            r#"capstan_apply_objects_total{action="created",name="web",namespace="apps"} 2"#,
            r#"capstan_apply_objects_total{action="pruned",name="web",namespace="apps"} 0"#,
            r#"capstan_reconcile_duration_seconds_bucket{name="web",namespace="apps",le="0.25"} 0"#,
            r#"capstan_reconcile_duration_seconds_bucket{name="web",namespace="apps",le="0.5"} 1"#,
            r#"capstan_reconcile_duration_seconds_bucket{name="web",namespace="apps",le="+Inf"} 1"#,
            r#"capstan_git_fetch_duration_seconds_bucket{name="web",namespace="apps",result="ok",le="0.1"} 1"#,
            r#"capstan_git_fetch_duration_seconds_bucket{name="web",namespace="apps",result="ok",le="120"} 1"#,
            r#"capstan_git_fetch_duration_seconds_count{name="web",namespace="apps",result="ok"} 2"#,
            "# TYPE capstan_git_fetch_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Nothing observed, nothing shown.
        assert!(
            !text.contains("capstan_commit_to_applied_seconds"),
            "{text}"
        );
        assert!(!text.contains(r#"result="error""#), "{text}");
        m.forget("apps", "web");
        assert!(!m.render().contains(r#"name="web""#));
    }

    #[test]
    fn a_panic_while_a_lock_is_held_does_not_break_later_callers() {
        let m = std::sync::Arc::new(Metrics::default());
        let holder = m.clone();
        let panicked = std::thread::spawn(move || {
            let _held = holder.repos.lock();
            panic!("a bug in one reconcile");
        })
        .join();
        assert!(panicked.is_err());
        // Every later reconcile goes on recording.
        m.reconciled("apps", "web", "ReconciliationSucceeded");
        m.forget("apps", "web");
    }
}
