//! `${VAR}` and `${VAR:-default}` interpolation of environment variables in YAML scalars.
//!
//! Values of variables may be secrets: they never appear in a message. What is remembered of
//! each substitution lets the loader take them out of messages that could quote them.

use serde_yaml::Value;

use super::ConfigIssue;

/// One scalar that had variables substituted.
#[derive(Debug, Clone)]
pub(crate) struct Substitution {
    /// Dotted YAML path of the scalar.
    pub path: String,
    /// The scalar was exactly one reference (`port: ${PORT}`): its text may stand for a number
    /// or a bool where the model expects one.
    pub whole: bool,
    /// The scalar's text after substitution.
    pub text: String,
    /// The non-empty values that came from the environment (not from defaults).
    pub secrets: Vec<String>,
}

/// Replaces variable references in every string scalar of `value` (not in mapping keys).
/// Unset variables without a default and malformed references become issues.
pub(crate) fn interpolate(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<Substitution> {
    let mut subs = Vec::new();
    walk(value, String::new(), lookup, issues, &mut subs);
    subs
}

fn walk(
    value: &mut Value,
    path: String,
    lookup: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
    subs: &mut Vec<Substitution>,
) {
    match value {
        Value::String(text) => match substitute(text, lookup) {
            Ok(None) => {}
            Ok(Some(done)) => {
                *text = done.text.clone();
                subs.push(Substitution {
                    path,
                    whole: done.whole,
                    text: done.text,
                    secrets: done.secrets,
                });
            }
            Err(problems) => {
                for message in problems {
                    issues.push(ConfigIssue {
                        path: display_path(&path),
                        message,
                    });
                }
            }
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), lookup, issues, subs);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = key_text(k);
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                walk(v, child, lookup, issues, subs);
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, lookup, issues, subs),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The text of a mapping key as it appears in paths.
pub(crate) fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => "?".into(),
    }
}

/// The path as shown to users: the root is `(root)`.
pub(crate) fn display_path(path: &str) -> String {
    if path.is_empty() {
        "(root)".into()
    } else {
        path.to_owned()
    }
}

#[derive(Debug, PartialEq)]
struct Substituted {
    text: String,
    whole: bool,
    secrets: Vec<String>,
}

/// Substitutes references in `text`. `Ok(None)` when it has none. `$${` is a literal `${`.
fn substitute(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Substituted>, Vec<String>> {
    if !text.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut secrets = Vec::new();
    let mut problems = Vec::new();
    let mut references = 0;
    let mut changed = false;
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
            changed = true;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            continue;
        }
        changed = true;
        references += 1;
        let Some(close) = after.find('}') else {
            problems.push(format!(
                "unterminated variable reference `{after}`: add a closing `}}` (write `$${{` for a literal `${{`)"
            ));
            rest = "";
            break;
        };
        let inner = &after[2..close];
        rest = &after[close + 1..];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if !valid_name(name) {
            problems.push(format!(
                "invalid variable reference `${{{inner}}}`: expected `${{NAME}}` or `${{NAME:-default}}`, NAME made of letters, digits and `_`"
            ));
            continue;
        }
        match (lookup(name), default) {
            (Some(v), Some(default)) if v.is_empty() => out.push_str(default),
            (Some(v), _) => {
                out.push_str(&v);
                if !v.is_empty() && !secrets.contains(&v) {
                    secrets.push(v);
                }
            }
            (None, Some(default)) => out.push_str(default),
            (None, None) => problems.push(format!(
                "environment variable `{name}` is not set; set it, or give a default with `${{{name}:-default}}`"
            )),
        }
    }
    out.push_str(rest);
    if !problems.is_empty() {
        return Err(problems);
    }
    if !changed {
        return Ok(None);
    }
    let whole = references == 1 && text.starts_with("${") && text.ends_with('}') && {
        // Exactly one reference spanning the whole scalar.
        text.find('}') == Some(text.len() - 1)
    };
    Ok(Some(Substituted {
        text: out,
        whole,
        secrets,
    }))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.local".into()),
            "PORT" => Some("5432".into()),
            "EMPTY" => Some(String::new()),
            "SECRET" => Some("hunter2".into()),
            _ => None,
        }
    }

    fn sub(text: &str) -> Result<Option<Substituted>, Vec<String>> {
        substitute(text, &lookup)
    }

    #[test]
    fn substitutes_variables_and_defaults() {
        let done = sub("redis://${HOST}:${PORT}/0").unwrap().unwrap();
        assert_eq!(done.text, "redis://db.local:5432/0");
        assert!(!done.whole);
        assert_eq!(done.secrets, vec!["db.local", "5432"]);
        let done = sub("${PORT}").unwrap().unwrap();
        assert_eq!((done.text.as_str(), done.whole), ("5432", true));
        assert_eq!(sub("${NOPE:-7}").unwrap().unwrap().text, "7");
        assert_eq!(sub("${EMPTY:-x}").unwrap().unwrap().text, "x");
        assert_eq!(sub("${EMPTY}").unwrap().unwrap().text, "");
        assert_eq!(sub("${NOPE:-}").unwrap().unwrap().text, "");
        assert_eq!(sub("a${NOPE:-b}c").unwrap().unwrap().text, "abc");
        assert!(!sub("${HOST}${PORT}").unwrap().unwrap().whole);
    }

    #[test]
    fn leaves_other_dollars_alone() {
        assert_eq!(sub("no vars"), Ok(None));
        assert_eq!(sub("costs $5"), Ok(None));
        assert_eq!(sub("$$5"), Ok(None));
        assert_eq!(sub("$${HOST}").unwrap().unwrap().text, "${HOST}");
    }

    #[test]
    fn reports_unset_and_malformed_references_without_values() {
        let err = sub("${SECRET}-${MISSING}").unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(err[0].contains("`MISSING` is not set"), "{err:?}");
        assert!(!err[0].contains("hunter2"));
        assert!(sub("${HOST").unwrap_err()[0].contains("unterminated"));
        assert!(sub("${1X}").unwrap_err()[0].contains("invalid variable reference"));
        assert!(sub("${}").is_err());
    }

    #[test]
    fn walks_nested_values_with_paths() {
        let mut value: Value = serde_yaml::from_str(
            "sinks:\n  out:\n    password: ${MISSING}\n    hosts: [a, '${HOST}']\n",
        )
        .unwrap();
        let mut issues = Vec::new();
        let subs = interpolate(&mut value, &lookup, &mut issues);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].path, "sinks.out.password");
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].path, "sinks.out.hosts[1]");
        assert_eq!(value["sinks"]["out"]["hosts"][1], Value::from("db.local"));
    }
}
