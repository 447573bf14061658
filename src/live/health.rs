//! kstatus health of one live object (sigs.k8s.io/cli-utils/pkg/kstatus): Current when reconciled
//! and ready, InProgress while something is awaited, Failed when only a change can help. Reads the
//! object's JSON as the API server returned it; built-in workloads get their own rules, anything
//! else is judged by its standard conditions.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Reconciled and ready (or a kind without readiness rules).
    Current,
    /// Still progressing; the message says what is awaited, e.g. "1 of 2 replicas available".
    InProgress(String),
    /// Failed; will not become ready without a change, e.g. a Job that failed, a Deployment past
    /// its progress deadline.
    Failed(String),
}

/// Objects' own messages can be long (stack traces, whole webhook responses); a status line
/// should stay readable.
const MAX_MESSAGE_CHARS: usize = 200;

/// Health of a live object (full JSON as the API server returns it), following kstatus rules.
pub fn health(object: &Value) -> Health {
    if let Some(health) = generic(object) {
        return health;
    }
    own_rules(object).unwrap_or(by_ready_condition)(object)
}

/// The rules of the object's kind, when it has its own here; the others (custom resources) are
/// judged by their conditions, or by a GitRepository's `healthCheckExprs`. The core group has no
/// "group/" prefix; a kind name alone could be any CRD's.
fn own_rules(object: &Value) -> Option<fn(&Value) -> Health> {
    let api_version = text(object, "/apiVersion").unwrap_or_default();
    rules_of(
        group_of(api_version),
        text(object, "/kind").unwrap_or_default(),
    )
}

/// The group of an `apiVersion` (`""` for the core group's `v1`).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// The rules of `group`'s `kind`, when it has its own here.
fn rules_of(group: &str, kind: &str) -> Option<fn(&Value) -> Health> {
    Some(match (group, kind) {
        ("apps", "Deployment") => deployment,
        ("apps", "StatefulSet") => stateful_set,
        ("apps", "DaemonSet") => daemon_set,
        ("apps", "ReplicaSet") => replica_set,
        ("batch", "Job") => job,
        ("", "Pod") => pod,
        ("", "PersistentVolumeClaim") => persistent_volume_claim,
        ("", "Service") => service,
        ("", "Namespace") => namespace,
        ("apiextensions.k8s.io", "CustomResourceDefinition") => custom_resource_definition,
        _ => return None,
    })
}

/// Whether objects of `group`'s `kind` are custom resources with a status and no rules here:
/// those kept whole by the watches, for `healthCheckExprs` to judge. ConfigMaps, Secrets and
/// the like never take the room.
pub fn judged_by_exprs(group: &str, kind: &str) -> bool {
    // A group of its own (CRDs' have a dot).
    group.contains('.') && has_status(group, kind) && rules_of(group, kind).is_none()
}

/// Whether objects of `group`'s `kind` have a status to watch.
pub fn has_status(group: &str, kind: &str) -> bool {
    !matches!(
        (group, kind),
        (
            "",
            "ConfigMap" | "Secret" | "ServiceAccount" | "Endpoints" | "LimitRange"
        ) | ("rbac.authorization.k8s.io", _)
            | ("networking.k8s.io", "NetworkPolicy")
            | ("scheduling.k8s.io", "PriorityClass")
            | ("storage.k8s.io", "StorageClass")
    )
}

/// Rules for every kind, ahead of the kind's own: until the controller has seen the current
/// generation, the rest of the status describes an older spec.
pub fn generic(object: &Value) -> Option<Health> {
    if object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return Some(Health::InProgress("being deleted".to_owned()));
    }
    if let Some(observed) = int(object, "/status/observedGeneration")
        && let Some(generation) = int(object, "/metadata/generation")
        && observed < generation
    {
        return Some(Health::InProgress(format!(
            "status describes generation {observed}, the object is at {generation}"
        )));
    }
    // kstatus gives these standard conditions precedence over any kind's own rules; Stalled is
    // checked first so that an object both stalled and retrying reads as failed.
    if let Some(stalled) = condition(object, "Stalled")
        && stalled.status == "True"
    {
        return Some(Health::Failed(stalled.explain("stalled")));
    }
    if let Some(reconciling) = condition(object, "Reconciling")
        && reconciling.status == "True"
    {
        return Some(Health::InProgress(reconciling.explain("reconciling")));
    }
    None
}

fn deployment(object: &Value) -> Health {
    if let Some(progressing) = condition(object, "Progressing")
        && progressing.status == "False"
        && progressing.reason == "ProgressDeadlineExceeded"
    {
        return Health::Failed(progressing.explain("progress deadline exceeded"));
    }
    let wanted = spec_replicas(object);
    let updated = count(object, "/status/updatedReplicas");
    if updated < wanted {
        return Health::InProgress(format!("{updated} of {wanted} replicas updated"));
    }
    let total = count(object, "/status/replicas");
    if total > updated {
        return Health::InProgress(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    let available = count(object, "/status/availableReplicas");
    if available < wanted {
        return Health::InProgress(format!("{available} of {wanted} replicas available"));
    }
    if let Some(condition) = condition(object, "Available")
        && condition.status == "False"
    {
        return Health::InProgress(condition.explain("not available"));
    }
    Health::Current
}

fn stateful_set(object: &Value) -> Health {
    let wanted = spec_replicas(object);
    let total = count(object, "/status/replicas");
    if total < wanted {
        return Health::InProgress(format!("{total} of {wanted} replicas created"));
    }
    let ready = count(object, "/status/readyReplicas");
    if ready < wanted {
        return Health::InProgress(format!("{ready} of {wanted} replicas ready"));
    }
    // OnDelete replaces pods only when someone deletes them, so old revisions may stay forever
    // by design.
    if text(object, "/spec/updateStrategy/type").unwrap_or("RollingUpdate") != "RollingUpdate" {
        return Health::Current;
    }
    let updated = count(object, "/status/updatedReplicas");
    // Pods below the partition keep the old revision on purpose: a staged rollout is complete
    // once every pod at or above it is updated.
    let partition = count(object, "/spec/updateStrategy/rollingUpdate/partition");
    if partition > 0 {
        let above = (wanted - partition).max(0);
        if updated < above {
            return Health::InProgress(format!(
                "{updated} of {above} replicas updated (partition {partition})"
            ));
        }
        return Health::Current;
    }
    if updated < wanted {
        return Health::InProgress(format!("{updated} of {wanted} replicas updated"));
    }
    let current = count(object, "/status/currentReplicas");
    if current < wanted {
        return Health::InProgress(format!(
            "{current} of {wanted} replicas at the current revision"
        ));
    }
    let update_revision = text(object, "/status/updateRevision");
    if update_revision.is_some() && text(object, "/status/currentRevision") != update_revision {
        return Health::InProgress(format!(
            "rolling update to revision {} in progress",
            update_revision.unwrap_or_default()
        ));
    }
    Health::Current
}

fn daemon_set(object: &Value) -> Health {
    // Zero is a valid desire (no matching nodes); absent means the controller has not looked yet.
    let Some(desired) = int(object, "/status/desiredNumberScheduled") else {
        return Health::InProgress("waiting for the controller to schedule pods".to_owned());
    };
    let stages = [
        ("/status/currentNumberScheduled", "scheduled"),
        ("/status/updatedNumberScheduled", "updated"),
        ("/status/numberReady", "ready"),
        ("/status/numberAvailable", "available"),
    ];
    for (pointer, what) in stages {
        let have = count(object, pointer);
        if have < desired {
            return Health::InProgress(format!("{have} of {desired} pods {what}"));
        }
    }
    Health::Current
}

fn replica_set(object: &Value) -> Health {
    let wanted = spec_replicas(object);
    let ready = count(object, "/status/readyReplicas");
    if ready < wanted {
        return Health::InProgress(format!("{ready} of {wanted} replicas ready"));
    }
    let available = count(object, "/status/availableReplicas");
    if available < wanted {
        return Health::InProgress(format!("{available} of {wanted} replicas available"));
    }
    Health::Current
}

fn job(object: &Value) -> Health {
    // FailureTarget precedes Failed while the last pods terminate; the outcome is already fixed.
    for failure in ["Failed", "FailureTarget"] {
        if let Some(condition) = condition(object, failure)
            && condition.status == "True"
        {
            return Health::Failed(condition.explain("job failed"));
        }
    }
    // SuccessCriteriaMet likewise precedes Complete.
    for success in ["Complete", "SuccessCriteriaMet"] {
        if condition(object, success).is_some_and(|c| c.status == "True") {
            return Health::Current;
        }
    }
    if condition(object, "Suspended").is_some_and(|c| c.status == "True") {
        return Health::InProgress("job suspended".to_owned());
    }
    Health::InProgress(format!(
        "job running ({} active, {} succeeded)",
        count(object, "/status/active"),
        count(object, "/status/succeeded")
    ))
}

fn pod(object: &Value) -> Health {
    let phase = text(object, "/status/phase").unwrap_or("Pending");
    match phase {
        "Succeeded" => return Health::Current,
        "Failed" => {
            let reason = text(object, "/status/reason").unwrap_or_default();
            let message = text(object, "/status/message").unwrap_or_default();
            return Health::Failed(explain("pod failed", reason, message));
        }
        _ => {}
    }
    let ready = condition(object, "Ready");
    if phase == "Running" && ready.as_ref().is_some_and(|c| c.status == "True") {
        return Health::Current;
    }
    // A waiting container (ImagePullBackOff, CrashLoopBackOff) says most about what holds the pod.
    for statuses in ["/status/initContainerStatuses", "/status/containerStatuses"] {
        let statuses = object.pointer(statuses).and_then(Value::as_array);
        for status in statuses.into_iter().flatten() {
            if let Some(reason) = text(status, "/state/waiting/reason") {
                let name = text(status, "/name").unwrap_or_default();
                let message = text(status, "/state/waiting/message").unwrap_or_default();
                return Health::InProgress(explain(
                    &format!("container {name} waiting ({reason})"),
                    "",
                    message,
                ));
            }
        }
    }
    match ready {
        Some(ready) if phase == "Running" => Health::InProgress(ready.explain("pod not ready")),
        _ => Health::InProgress(format!("pod {phase}")),
    }
}

fn persistent_volume_claim(object: &Value) -> Health {
    match text(object, "/status/phase").unwrap_or("Pending") {
        "Bound" => Health::Current,
        phase => Health::InProgress(format!("claim {phase}, waiting to be bound")),
    }
}

fn service(object: &Value) -> Health {
    let load_balancer = text(object, "/spec/type") == Some("LoadBalancer");
    let has_ingress = object
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|ingress| !ingress.is_empty());
    if load_balancer && !has_ingress {
        return Health::InProgress("waiting for a load balancer address".to_owned());
    }
    Health::Current
}

fn namespace(object: &Value) -> Health {
    if text(object, "/status/phase") == Some("Terminating") {
        return Health::InProgress("namespace terminating".to_owned());
    }
    Health::Current
}

fn custom_resource_definition(object: &Value) -> Health {
    if condition(object, "Established").is_some_and(|c| c.status == "True") {
        return Health::Current;
    }
    if let Some(names) = condition(object, "NamesAccepted")
        && names.status == "False"
    {
        return Health::Failed(names.explain("names not accepted"));
    }
    match condition(object, "Established") {
        Some(established) => Health::InProgress(established.explain("not established")),
        None => Health::InProgress("not established".to_owned()),
    }
}

/// Kinds without rules of their own: kstatus reads Ready=False as still in progress, since most
/// controllers set it while they work; kinds without status (ConfigMap, Secret, RBAC) are Current.
fn by_ready_condition(object: &Value) -> Health {
    match condition(object, "Ready") {
        Some(ready) if ready.status == "True" => Health::Current,
        Some(ready) if ready.status == "False" => Health::InProgress(ready.explain("not ready")),
        Some(ready) => Health::InProgress(ready.explain("readiness unknown")),
        None => Health::Current,
    }
}

struct Condition<'a> {
    status: &'a str,
    reason: &'a str,
    message: &'a str,
}

impl Condition<'_> {
    fn explain(&self, what: &str) -> String {
        explain(what, self.reason, self.message)
    }
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<Condition<'a>> {
    let found = object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| text(c, "/type") == Some(kind))?;
    Some(Condition {
        status: text(found, "/status").unwrap_or("Unknown"),
        reason: text(found, "/reason").unwrap_or_default(),
        message: text(found, "/message").unwrap_or_default(),
    })
}

/// What is awaited, then the object's own words: its message, or else its reason.
fn explain(what: &str, reason: &str, message: &str) -> String {
    let own = if message.trim().is_empty() {
        reason.trim()
    } else {
        message.trim()
    };
    if own.is_empty() {
        return what.to_owned();
    }
    let own = if own.chars().count() > MAX_MESSAGE_CHARS {
        let mut cut: String = own.chars().take(MAX_MESSAGE_CHARS - 1).collect();
        cut.push('…');
        cut
    } else {
        own.to_owned()
    };
    format!("{what}: {own}")
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn int(value: &Value, pointer: &str) -> Option<i64> {
    value.pointer(pointer).and_then(Value::as_i64)
}

/// Controllers omit zero counts from status, so absent means 0.
fn count(value: &Value, pointer: &str) -> i64 {
    int(value, pointer).unwrap_or(0)
}

/// The API server defaults `spec.replicas` to 1; null also means unset.
fn spec_replicas(object: &Value) -> i64 {
    int(object, "/spec/replicas").unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(api_version: &str, kind: &str, spec: Value, status: Value) -> Value {
        json!({
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": "web", "namespace": "shop", "generation": 4},
            "spec": spec,
            "status": status,
        })
    }

    fn in_progress_with(health: Health, needle: &str) {
        match health {
            Health::InProgress(message) => assert!(message.contains(needle), "{message}"),
            other => panic!("expected InProgress with {needle:?}, got {other:?}"),
        }
    }

    fn failed_with(health: Health, needle: &str) {
        match health {
            Health::Failed(message) => assert!(message.contains(needle), "{message}"),
            other => panic!("expected Failed with {needle:?}, got {other:?}"),
        }
    }

    fn deployment(status: Value) -> Value {
        object("apps/v1", "Deployment", json!({"replicas": 2}), status)
    }

    #[test]
    fn deployment_rolling_out_then_ready() {
        let available =
            json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"});
        let progressing =
            json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"});
        let ready = deployment(json!({
            "observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
            "availableReplicas": 2, "conditions": [available, progressing]
        }));
        assert_eq!(health(&ready), Health::Current);

        let updating =
            deployment(json!({"observedGeneration": 4, "replicas": 2, "updatedReplicas": 1}));
        assert_eq!(
            health(&updating),
            Health::InProgress("1 of 2 replicas updated".to_owned())
        );
        let surplus = deployment(json!({
            "observedGeneration": 4, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2
        }));
        in_progress_with(health(&surplus), "old replicas pending termination");
        let unavailable = deployment(json!({
            "observedGeneration": 4, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1
        }));
        assert_eq!(
            health(&unavailable),
            Health::InProgress("1 of 2 replicas available".to_owned())
        );
        // Freshly created: no status at all yet.
        let fresh = object("apps/v1", "Deployment", json!({}), json!({}));
        assert_eq!(
            health(&fresh),
            Health::InProgress("0 of 1 replicas updated".to_owned())
        );
    }

    #[test]
    fn deployment_past_its_deadline_failed() {
        let stuck = deployment(json!({
            "observedGeneration": 4, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
            "conditions": [{
                "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet \"web-7d4b9c\" has timed out progressing."
            }]
        }));
        failed_with(health(&stuck), "has timed out progressing");
    }

    #[test]
    fn stale_observed_generation_is_in_progress() {
        let stale = deployment(json!({
            "observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2
        }));
        assert_eq!(
            health(&stale),
            Health::InProgress("status describes generation 3, the object is at 4".to_owned())
        );
    }

    #[test]
    fn being_deleted_is_in_progress() {
        let mut cm = object("v1", "ConfigMap", json!(null), json!(null));
        cm["metadata"]["deletionTimestamp"] = json!("2025-01-10T09:00:00Z");
        assert_eq!(health(&cm), Health::InProgress("being deleted".to_owned()));
    }

    #[test]
    fn stateful_set() {
        let sts = |status: Value| {
            object(
                "apps/v1",
                "StatefulSet",
                json!({"replicas": 3, "updateStrategy": {"type": "RollingUpdate"}}),
                status,
            )
        };
        let done = sts(json!({
            "observedGeneration": 4, "replicas": 3, "readyReplicas": 3, "currentReplicas": 3,
            "updatedReplicas": 3, "currentRevision": "web-6c8f", "updateRevision": "web-6c8f"
        }));
        assert_eq!(health(&done), Health::Current);
        let starting = sts(json!({"observedGeneration": 4, "replicas": 3, "readyReplicas": 1}));
        assert_eq!(
            health(&starting),
            Health::InProgress("1 of 3 replicas ready".to_owned())
        );
        let rolling = sts(json!({
            "observedGeneration": 4, "replicas": 3, "readyReplicas": 3, "currentReplicas": 2,
            "updatedReplicas": 1, "currentRevision": "web-6c8f", "updateRevision": "web-7a1e"
        }));
        assert_eq!(
            health(&rolling),
            Health::InProgress("1 of 3 replicas updated".to_owned())
        );
        let revision = sts(json!({
            "observedGeneration": 4, "replicas": 3, "readyReplicas": 3, "currentReplicas": 3,
            "updatedReplicas": 3, "currentRevision": "web-6c8f", "updateRevision": "web-7a1e"
        }));
        in_progress_with(health(&revision), "web-7a1e");

        let partitioned = |updated: i64| {
            object(
                "apps/v1",
                "StatefulSet",
                json!({"replicas": 3, "updateStrategy": {
                    "type": "RollingUpdate", "rollingUpdate": {"partition": 2}
                }}),
                json!({
                    "observedGeneration": 4, "replicas": 3, "readyReplicas": 3,
                    "currentReplicas": 3 - updated, "updatedReplicas": updated,
                    "currentRevision": "web-6c8f", "updateRevision": "web-7a1e"
                }),
            )
        };
        assert_eq!(health(&partitioned(1)), Health::Current);
        in_progress_with(health(&partitioned(0)), "partition 2");

        let on_delete = object(
            "apps/v1",
            "StatefulSet",
            json!({"replicas": 1, "updateStrategy": {"type": "OnDelete"}}),
            json!({"replicas": 1, "readyReplicas": 1, "currentRevision": "a", "updateRevision": "b"}),
        );
        assert_eq!(health(&on_delete), Health::Current);
    }

    #[test]
    fn daemon_set() {
        let ds = |status: Value| object("apps/v1", "DaemonSet", json!({}), status);
        let done = ds(json!({
            "observedGeneration": 4, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
            "updatedNumberScheduled": 3, "numberReady": 3, "numberAvailable": 3
        }));
        assert_eq!(health(&done), Health::Current);
        let updating = ds(json!({
            "observedGeneration": 4, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
            "updatedNumberScheduled": 2, "numberReady": 3, "numberAvailable": 3
        }));
        assert_eq!(
            health(&updating),
            Health::InProgress("2 of 3 pods updated".to_owned())
        );
        let not_ready = ds(json!({
            "observedGeneration": 4, "desiredNumberScheduled": 3, "currentNumberScheduled": 3,
            "updatedNumberScheduled": 3, "numberReady": 1
        }));
        assert_eq!(
            health(&not_ready),
            Health::InProgress("1 of 3 pods ready".to_owned())
        );
        in_progress_with(health(&ds(json!({}))), "waiting for the controller");
        let no_nodes = ds(json!({"observedGeneration": 4, "desiredNumberScheduled": 0}));
        assert_eq!(health(&no_nodes), Health::Current);
    }

    #[test]
    fn replica_set() {
        let rs = |status: Value| object("apps/v1", "ReplicaSet", json!({"replicas": 2}), status);
        assert_eq!(
            health(&rs(
                json!({"replicas": 2, "readyReplicas": 2, "availableReplicas": 2})
            )),
            Health::Current
        );
        assert_eq!(
            health(&rs(
                json!({"replicas": 2, "readyReplicas": 2, "availableReplicas": 1})
            )),
            Health::InProgress("1 of 2 replicas available".to_owned())
        );
        assert_eq!(
            health(&rs(json!({"replicas": 2}))),
            Health::InProgress("0 of 2 replicas ready".to_owned())
        );
    }

    #[test]
    fn job() {
        let job = |status: Value| object("batch/v1", "Job", json!({"backoffLimit": 2}), status);
        let complete = job(json!({
            "succeeded": 1,
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"}
            ]
        }));
        assert_eq!(health(&complete), Health::Current);
        let running = job(json!({"active": 1}));
        assert_eq!(
            health(&running),
            Health::InProgress("job running (1 active, 0 succeeded)".to_owned())
        );
        let failed = job(json!({
            "failed": 3,
            "conditions": [{
                "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit"
            }]
        }));
        assert_eq!(
            health(&failed),
            Health::Failed("job failed: Job has reached the specified backoff limit".to_owned())
        );
        let deadline = job(json!({
            "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
        }));
        assert_eq!(
            health(&deadline),
            Health::Failed("job failed: DeadlineExceeded".to_owned())
        );
    }

    #[test]
    fn pod() {
        let pod = |status: Value| object("v1", "Pod", json!({"containers": []}), status);
        let running = pod(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]
        }));
        assert_eq!(health(&running), Health::Current);
        assert_eq!(health(&pod(json!({"phase": "Succeeded"}))), Health::Current);
        let crashing = pod(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                            "message": "containers with unready status: [web]"}],
            "containerStatuses": [{"name": "web", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff",
                                      "message": "back-off 1m20s restarting failed container=web"}}}]
        }));
        in_progress_with(
            health(&crashing),
            "container web waiting (CrashLoopBackOff): back-off",
        );
        let unready = pod(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False",
                            "message": "containers with unready status: [web]"}]
        }));
        in_progress_with(health(&unready), "pod not ready: containers with unready");
        assert_eq!(
            health(&pod(json!({"phase": "Pending"}))),
            Health::InProgress("pod Pending".to_owned())
        );
        let evicted = pod(json!({
            "phase": "Failed", "reason": "Evicted",
            "message": "The node was low on resource: memory."
        }));
        failed_with(health(&evicted), "low on resource");
    }

    #[test]
    fn persistent_volume_claim() {
        let pvc = |phase: &str| {
            object(
                "v1",
                "PersistentVolumeClaim",
                json!({}),
                json!({"phase": phase}),
            )
        };
        assert_eq!(health(&pvc("Bound")), Health::Current);
        in_progress_with(health(&pvc("Pending")), "claim Pending");
    }

    #[test]
    fn service() {
        let lb = |status: Value| object("v1", "Service", json!({"type": "LoadBalancer"}), status);
        in_progress_with(health(&lb(json!({"loadBalancer": {}}))), "load balancer");
        let assigned = lb(json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}));
        assert_eq!(health(&assigned), Health::Current);
        let cluster_ip = object(
            "v1",
            "Service",
            json!({"type": "ClusterIP"}),
            json!({"loadBalancer": {}}),
        );
        assert_eq!(health(&cluster_ip), Health::Current);
    }

    #[test]
    fn namespace() {
        let ns = |phase: &str| object("v1", "Namespace", json!({}), json!({"phase": phase}));
        assert_eq!(health(&ns("Active")), Health::Current);
        in_progress_with(health(&ns("Terminating")), "terminating");
    }

    #[test]
    fn custom_resource_definition() {
        let crd = |conditions: Value| {
            object(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                json!({"group": "example.com"}),
                json!({"conditions": conditions}),
            )
        };
        let established = crd(json!([
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}
        ]));
        assert_eq!(health(&established), Health::Current);
        let pending = crd(json!([{"type": "NamesAccepted", "status": "True"}]));
        assert_eq!(
            health(&pending),
            Health::InProgress("not established".to_owned())
        );
        let conflict = crd(json!([
            {"type": "NamesAccepted", "status": "False", "reason": "ListKindConflict",
             "message": "\"WidgetList\" is already in use"},
            {"type": "Established", "status": "False", "reason": "NotAccepted"}
        ]));
        failed_with(health(&conflict), "already in use");
    }

    #[test]
    fn kinds_without_status_are_current() {
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "shop"},
            "data": {"LOG_LEVEL": "info"}
        });
        assert_eq!(health(&cm), Health::Current);
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "reader"}, "rules": []
        });
        assert_eq!(health(&role), Health::Current);
        let bare_cr = json!({
            "apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w", "generation": 1}, "spec": {"size": 3}
        });
        assert_eq!(health(&bare_cr), Health::Current);
    }

    #[test]
    fn custom_resources_by_standard_conditions() {
        let cr = |conditions: Value| {
            object(
                "cert-manager.io/v1",
                "Certificate",
                json!({"secretName": "web-tls"}),
                json!({"observedGeneration": 4, "conditions": conditions}),
            )
        };
        assert_eq!(
            health(&cr(json!([{"type": "Ready", "status": "True"}]))),
            Health::Current
        );
        let issuing = cr(json!([{
            "type": "Ready", "status": "False", "reason": "DoesNotExist",
            "message": "Issuing certificate as Secret does not exist"
        }]));
        assert_eq!(
            health(&issuing),
            Health::InProgress(
                "not ready: Issuing certificate as Secret does not exist".to_owned()
            )
        );
        in_progress_with(
            health(&cr(json!([{"type": "Ready", "status": "Unknown"}]))),
            "readiness unknown",
        );
        let stalled = cr(json!([
            {"type": "Ready", "status": "False", "reason": "Failed"},
            {"type": "Stalled", "status": "True", "message": "invalid issuer reference"}
        ]));
        failed_with(health(&stalled), "invalid issuer reference");
        let reconciling =
            cr(json!([{"type": "Reconciling", "status": "True", "reason": "Progressing"}]));
        in_progress_with(health(&reconciling), "reconciling: Progressing");
        // A CRD's kind that shares a built-in name is not judged as the built-in.
        let lookalike = object("example.com/v1", "Deployment", json!({}), json!({}));
        assert_eq!(health(&lookalike), Health::Current);
    }

    #[test]
    fn long_messages_are_truncated() {
        let long = "é".repeat(500);
        let cr = object(
            "example.com/v1",
            "Widget",
            json!({}),
            json!({"conditions": [{"type": "Ready", "status": "False", "message": long}]}),
        );
        let Health::InProgress(message) = health(&cr) else {
            panic!("expected InProgress");
        };
        let own = message.trim_start_matches("not ready: ");
        assert_eq!(own.chars().count(), MAX_MESSAGE_CHARS);
        assert!(own.ends_with('…'));
    }

    #[test]
    fn garbage_does_not_panic() {
        for value in [
            json!(null),
            json!([]),
            json!("Deployment"),
            json!({"apiVersion": 3, "kind": ["Pod"]}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "status": {"conditions": "x"}}),
            json!({"apiVersion": "v1", "kind": "Pod", "status": {"containerStatuses": {}}}),
        ] {
            let _ = health(&value);
        }
    }
}
