//! Post-build variable substitution, as Flux users know it: `${name}` and `${name:=default}` (or
//! `${name:-default}`) in the rendered text are replaced; `$${name}` is the escape for a literal
//! `${name}`. It works on each document's text, before parsing, so a value lands exactly where the
//! author wrote the variable (quoted or not). Unlike Flux's default, an undefined variable without
//! a default is an error naming it, never a silent empty string.

use std::collections::BTreeMap;

/// Variables by name, from `postBuild.substitute` and `substituteFrom`.
pub type Variables = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubstituteError {
    #[error(
        "variable ${{{0}}} is not defined; set it in postBuild.substitute or substituteFrom, give a default with ${{{0}:=value}}, or write $${{{0}}} for a literal"
    )]
    Undefined(String),
    #[error(
        "invalid variable reference {0:?}: names are letters, digits and '_', not starting with a digit"
    )]
    InvalidName(String),
    #[error("unterminated variable reference starting {0:?}")]
    Unterminated(String),
}

/// Whether `text` holds anything substitution would touch.
pub fn mentions_variables(text: &str) -> bool {
    text.contains("${")
}

/// Replaces every variable reference in `text`.
pub fn substitute(text: &str, vars: &Variables) -> Result<String, SubstituteError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        // `$${` is an escaped `${`: one `$` is dropped and the reference is left as written.
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let body_start = at + 2;
        let Some(len) = rest[body_start..].find('}') else {
            return Err(SubstituteError::Unterminated(excerpt(&rest[at..])));
        };
        let body = &rest[body_start..body_start + len];
        let (name, default) = match body.find(":=").or_else(|| body.find(":-")) {
            Some(i) => (&body[..i], Some(&body[i + 2..])),
            None => (body, None),
        };
        if !is_variable_name(name) {
            return Err(SubstituteError::InvalidName(format!("${{{body}}}")));
        }
        match (vars.get(name), default) {
            (Some(value), None) => out.push_str(value),
            (Some(value), Some(_)) if !value.is_empty() => out.push_str(value),
            (_, Some(default)) => out.push_str(default),
            (None, None) => return Err(SubstituteError::Undefined(name.to_string())),
        }
        rest = &rest[body_start + len + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Names are letters, digits and `_`, not starting with a digit.
pub fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The start of an offending reference, short enough for a condition message.
fn excerpt(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Variables {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn replaces_defined_variables() {
        let v = vars(&[("cluster", "prod-eu"), ("replicas", "3")]);
        assert_eq!(
            substitute("name: app-${cluster}\nreplicas: ${replicas}\n", &v).unwrap(),
            "name: app-prod-eu\nreplicas: 3\n"
        );
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let v = vars(&[("empty", ""), ("set", "x")]);
        assert_eq!(substitute("${unset:=a}", &v).unwrap(), "a");
        assert_eq!(substitute("${unset:-b}", &v).unwrap(), "b");
        assert_eq!(substitute("${empty:=c}", &v).unwrap(), "c");
        assert_eq!(substitute("${set:=d}", &v).unwrap(), "x");
        assert_eq!(substitute("${unset:=}", &v).unwrap(), "");
        // An empty value without a default stays empty: it is defined.
        assert_eq!(substitute("[${empty}]", &v).unwrap(), "[]");
    }

    #[test]
    fn undefined_variable_is_an_error_naming_it() {
        let err = substitute("a: ${missing}", &Variables::new()).unwrap_err();
        assert_eq!(err, SubstituteError::Undefined("missing".into()));
        assert!(err.to_string().contains("${missing}"), "{err}");
    }

    #[test]
    fn dollar_dollar_escapes_a_reference() {
        let v = vars(&[("x", "1")]);
        assert_eq!(
            substitute("echo $${HOME} ${x}", &v).unwrap(),
            "echo ${HOME} 1"
        );
        // A lone `$` and `$name` without braces are left alone.
        assert_eq!(substitute("cost: $5 $x", &v).unwrap(), "cost: $5 $x");
    }

    #[test]
    fn malformed_references_are_errors() {
        let v = Variables::new();
        assert!(matches!(
            substitute("${a b}", &v),
            Err(SubstituteError::InvalidName(_))
        ));
        assert!(matches!(
            substitute("${1a}", &v),
            Err(SubstituteError::InvalidName(_))
        ));
        assert!(matches!(
            substitute("${}", &v),
            Err(SubstituteError::InvalidName(_))
        ));
        assert!(matches!(
            substitute("x: ${open", &v),
            Err(SubstituteError::Unterminated(_))
        ));
    }

    #[test]
    fn values_are_not_substituted_again() {
        let v = vars(&[("a", "${b}"), ("b", "no")]);
        assert_eq!(substitute("${a}", &v).unwrap(), "${b}");
    }

    #[test]
    fn non_ascii_text_around_references_is_kept() {
        let v = vars(&[("x", "é")]);
        assert_eq!(substitute("ü${x}ß", &v).unwrap(), "üéß");
    }
}
