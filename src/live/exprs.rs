//! `healthCheckExprs`: the health of custom resources of one apiVersion and kind judged by CEL
//! expressions, as Flux's: `inProgress`, then `failed`, then `current`; none holding is still in
//! progress. Each expression sees the object's top-level fields (`metadata`, `spec`, `status`)
//! as variables. The rules for every kind (being deleted, an older generation observed) come
//! first.

use cel::{Context, Program};
use serde_json::Value;

use super::health::{Health, generic, group_of, judged_by_exprs};
use crate::api::HealthCheckExpr;

struct Rule {
    group: String,
    kind: String,
    in_progress: Option<(String, Program)>,
    failed: Option<(String, Program)>,
    current: (String, Program),
}

/// A GitRepository's compiled `healthCheckExprs`.
#[derive(Default)]
pub struct HealthExprs {
    rules: Vec<Rule>,
}

impl HealthExprs {
    /// Compiles every expression; the first that does not parse is refused with its error.
    pub fn compile(exprs: &[HealthCheckExpr]) -> Result<HealthExprs, String> {
        let mut rules = Vec::new();
        for (i, expr) in exprs.iter().enumerate() {
            let parse = |field: &str, source: &str| {
                Program::compile(source)
                    .map(|program| (source.to_string(), program))
                    .map_err(|e| {
                        let error = e.to_string().replace('\n', " ");
                        format!("healthCheckExprs[{i}].{field}: {}", error.trim())
                    })
            };
            let group = group_of(&expr.api_version);
            if !judged_by_exprs(group, &expr.kind) {
                return Err(format!(
                    "healthCheckExprs[{i}]: {} {} is not a custom resource with a status; expressions judge only those (a group with a dot, no rules of Capstan's own)",
                    expr.api_version, expr.kind
                ));
            }
            rules.push(Rule {
                group: group.to_string(),
                kind: expr.kind.clone(),
                in_progress: expr
                    .in_progress
                    .as_deref()
                    .map(|s| parse("inProgress", s))
                    .transpose()?,
                failed: expr
                    .failed
                    .as_deref()
                    .map(|s| parse("failed", s))
                    .transpose()?,
                current: parse("current", &expr.current)?,
            });
        }
        Ok(HealthExprs { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The health of `object` by the expressions of its group and kind (at any version);
    /// `None` when none are given for it.
    pub fn health(&self, object: &Value) -> Option<Health> {
        let text = |pointer| object.pointer(pointer).and_then(Value::as_str);
        let (group, kind) = (group_of(text("/apiVersion")?), text("/kind")?);
        let rule = self
            .rules
            .iter()
            .find(|r| r.group == group && r.kind == kind)?;
        if let Some(health) = generic(object) {
            return Some(health);
        }
        let mut context = Context::default();
        // What the object has not written yet is empty, so `has(status.phase)` can ask.
        for name in ["metadata", "spec", "status"] {
            context.add_variable_from_value(
                name,
                cel::Value::Map(std::collections::HashMap::<String, cel::Value>::new().into()),
            );
        }
        for (name, value) in object.as_object()? {
            match cel::to_value(value) {
                Ok(value) => context.add_variable_from_value(name.clone(), value),
                Err(e) => return Some(Health::InProgress(format!("reading {name}: {e}"))),
            }
        }
        let holds = |(source, program): &(String, Program)| match program.execute(&context) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("{source} gives {other:?}, not a bool")),
            // Typically a field the object has not written yet.
            Err(e) => Err(format!("{source}: {e}")),
        };
        let checks = [
            (rule.in_progress.as_ref(), "inProgress"),
            (rule.failed.as_ref(), "failed"),
        ];
        for (expr, which) in checks {
            let Some(expr) = expr else { continue };
            match holds(expr) {
                Ok(true) if which == "failed" => {
                    return Some(Health::Failed(format!("{} holds", expr.0)));
                }
                Ok(true) => return Some(Health::InProgress(format!("{} holds", expr.0))),
                Ok(false) => {}
                Err(e) => return Some(Health::InProgress(e)),
            }
        }
        Some(match holds(&rule.current) {
            Ok(true) => Health::Current,
            Ok(false) => Health::InProgress(format!("waiting for {}", rule.current.0)),
            Err(e) => Health::InProgress(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exprs(current: &str) -> Result<HealthExprs, String> {
        HealthExprs::compile(&[HealthCheckExpr {
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
            in_progress: Some("has(status.phase) && status.phase == 'Provisioning'".into()),
            failed: Some("has(status.phase) && status.phase == 'Failed'".into()),
            current: current.into(),
        }])
    }

    fn widget(status: Value) -> Value {
        serde_json::json!({
            "apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w", "generation": 3}, "spec": {"size": 2}, "status": status,
        })
    }

    #[test]
    fn in_progress_then_failed_then_current() {
        let rules = exprs("status.phase == 'Ready' && status.size == spec.size").unwrap();
        let health = |status| rules.health(&widget(status)).unwrap();
        assert_eq!(
            health(serde_json::json!({"phase": "Ready", "size": 2})),
            Health::Current
        );
        assert!(matches!(
            health(serde_json::json!({"phase": "Ready", "size": 1})),
            Health::InProgress(m) if m.starts_with("waiting for status.phase == 'Ready'")
        ));
        assert!(matches!(
            health(serde_json::json!({"phase": "Provisioning"})),
            Health::InProgress(m) if m.ends_with("holds")
        ));
        assert!(matches!(
            health(serde_json::json!({"phase": "Failed"})),
            Health::Failed(m) if m == "has(status.phase) && status.phase == 'Failed' holds"
        ));
        // A field not written yet: waiting, with the evaluation's error.
        assert!(matches!(
            health(serde_json::json!({})),
            Health::InProgress(m) if m.contains("status.phase == 'Ready'")
        ));
        let mut bare = widget(serde_json::json!({}));
        bare.as_object_mut().unwrap().remove("status");
        assert!(matches!(
            rules.health(&bare),
            Some(Health::InProgress(m)) if m.contains("status.phase == 'Ready'")
        ));
        // An older generation observed: the rules for every kind come first.
        let stale =
            widget(serde_json::json!({"phase": "Ready", "size": 2, "observedGeneration": 2}));
        assert!(matches!(rules.health(&stale), Some(Health::InProgress(_))));
        // Another kind: not these expressions' to judge; another version of the kind is.
        let mut other = widget(serde_json::json!({}));
        other["kind"] = "Gadget".into();
        assert_eq!(rules.health(&other), None);
        let mut served = widget(serde_json::json!({"phase": "Ready", "size": 2}));
        served["apiVersion"] = "example.com/v2".into();
        assert_eq!(rules.health(&served), Some(Health::Current));
    }

    #[test]
    fn kinds_that_are_not_custom_resources_with_a_status_are_refused() {
        for (api_version, kind) in [
            ("apps/v1", "Deployment"),
            ("v1", "ConfigMap"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            ("rbac.authorization.k8s.io/v1", "Role"),
        ] {
            let refused = HealthExprs::compile(&[HealthCheckExpr {
                api_version: api_version.into(),
                kind: kind.into(),
                in_progress: None,
                failed: None,
                current: "true".into(),
            }])
            .err()
            .expect("refused");
            assert!(
                refused.starts_with(&format!(
                    "healthCheckExprs[0]: {api_version} {kind} is not a custom resource"
                )),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_bad_expression_is_refused_with_its_parse_error() {
        let refused = exprs("status.phase ==").err().expect("refused");
        assert!(
            refused.starts_with("healthCheckExprs[0].current: "),
            "{refused}"
        );
        assert!(refused.contains("Syntax error"), "{refused}");
    }
}
