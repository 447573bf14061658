//! Parsing one manifest file into its non-empty documents, under a budget so that an alias bomb
//! or absurd nesting fails quickly with bounded memory.

use std::borrow::Cow;
use std::path::Path;

use serde_json::Value;
use serde_saphyr::MessageFormatter;

use super::substitute::{self, Variables};
use super::{Limits, RenderError};
use crate::api::SUBSTITUTE_ANNOTATION;

/// Alias replay cap: real manifests reuse a few small anchors, while a billion-laughs file needs
/// millions of replayed events to hurt. This bounds the work and memory one file's aliases cause.
const MAX_ALIAS_REPLAYED_EVENTS: usize = 100_000;

/// Parser messages are shown in status conditions; cap them so they stay one readable line.
const MAX_MESSAGE_CHARS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Yaml,
    Json,
}

impl Format {
    /// The format of a manifest file, or `None` for files that are not manifests.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// The file's documents in order, empty ones (null, only comments, bare `---`) left out. With
/// `variables`, each document that does not opt out is substituted before it is parsed for good.
pub(super) fn documents(
    file: &str,
    bytes: &[u8],
    format: Format,
    limits: &Limits,
    variables: Option<&Variables>,
) -> Result<Vec<Value>, RenderError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        let message = "not valid UTF-8".to_string();
        match format {
            Format::Yaml => RenderError::Yaml {
                file: file.to_string(),
                line,
                message,
            },
            Format::Json => RenderError::Json {
                file: file.to_string(),
                line,
                message,
            },
        }
    })?;
    let mut out = Vec::new();
    match format {
        Format::Yaml => {
            for (offset, document) in split_yaml(text) {
                out.extend(substituted(file, offset, document, variables, |text| {
                    yaml_documents(file, text, offset, limits)
                })?);
            }
        }
        Format::Json => out.extend(substituted(file, 0, text, variables, |text| {
            json_document(file, text)
        })?),
    }
    Ok(out)
}

/// Parses `text`, and when it names variables and no object in it opts out, substitutes them and
/// parses the result instead.
fn substituted(
    file: &str,
    offset: usize,
    text: &str,
    variables: Option<&Variables>,
    parse: impl Fn(&str) -> Result<Vec<Value>, RenderError>,
) -> Result<Vec<Value>, RenderError> {
    let values = parse(text)?;
    let Some(variables) = variables else {
        return Ok(values);
    };
    if !substitute::mentions_variables(text) || values.iter().any(opts_out) {
        return Ok(values);
    }
    let text = substitute::substitute(text, variables).map_err(|e| RenderError::Substitute {
        file: file.to_string(),
        line: offset + 1,
        message: e.to_string(),
    })?;
    parse(&text)
}

fn opts_out(object: &Value) -> bool {
    object
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(SUBSTITUTE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("disabled")
}

/// Splits a YAML stream at its `---` markers into documents, each with the number of lines before
/// it, so every document can be substituted and parsed on its own. A marker always starts a line
/// (inside a block scalar it would end the scalar too), so no YAML parse is needed to find them.
/// Directive lines (`%YAML`) stay with the document they precede.
pub(super) fn split_yaml(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let (mut start, mut start_line, mut pending_directives) = (0, 0, false);
    let mut pos = 0;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_marker && pos > start && !pending_directives {
            out.push((start_line, &text[start..pos]));
            start = pos;
            start_line = line_no;
        }
        if is_marker {
            pending_directives = false;
        } else if line.starts_with('%') {
            pending_directives = true;
        }
        pos += line.len();
    }
    if pos > start {
        out.push((start_line, &text[start..pos]));
    }
    out
}

fn yaml_options(limits: &Limits) -> serde_saphyr::Options {
    // Without aliases every node, event, document and scalar byte costs at least one input byte
    // (an event at most about one), so caps tied to the file size only bite on amplification and
    // never reject a file the byte limit allows.
    let file_cap = usize::try_from(limits.max_file_bytes).unwrap_or(usize::MAX);
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = limits.max_depth;
    // Flow collections (`[[[...`) have their own parser limit; hold them to the same depth.
    budget.flow_nesting_limit = limits.max_depth;
    budget.max_aliases = limits.max_aliases;
    budget.max_nodes = file_cap;
    budget.max_events = file_cap.saturating_mul(2);
    budget.max_documents = file_cap;
    // Replayed aliases count here too, so an anchored big string cannot be multiplied.
    budget.max_total_scalar_bytes = file_cap;

    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAYED_EVENTS;
    // Snippets would copy file contents into messages that end up in status and logs.
    options.with_snippet = false;
    // Kubernetes reads YAML 1.1: `defaultMode: 0644` is octal 420, not decimal 644.
    options.legacy_octal_numbers = true;
    options
}

/// `offset` is the number of lines before `text` in the file, so reported lines are the file's.
fn yaml_documents(
    file: &str,
    text: &str,
    offset: usize,
    limits: &Limits,
) -> Result<Vec<Value>, RenderError> {
    serde_saphyr::from_multiple_with_options::<Value>(text, yaml_options(limits)).map_err(|e| {
        let line = e
            .location()
            .and_then(|l| usize::try_from(l.line()).ok())
            .map_or(0, |l| l + offset);
        RenderError::Yaml {
            file: file.to_string(),
            line,
            message: yaml_message(&e),
        }
    })
}

/// The parser's own short message, without its location suffix (the line is reported apart).
fn yaml_message(error: &serde_saphyr::Error) -> String {
    let mut inner = error.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    one_line(serde_saphyr::UserMessageFormatter.format_message(inner))
}

fn json_document(file: &str, text: &str) -> Result<Vec<Value>, RenderError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Null) => Ok(Vec::new()),
        Ok(value) => Ok(vec![value]),
        Err(e) => {
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
            Err(RenderError::Json {
                file: file.to_string(),
                line: e.line(),
                message: one_line(Cow::Owned(message)),
            })
        }
    }
}

/// Escapes control characters (a message may quote a key) and caps the length.
fn one_line(message: Cow<'_, str>) -> String {
    let mut out = String::new();
    for (i, ch) in message.chars().enumerate() {
        if i == MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_debug());
        } else {
            out.push(ch);
        }
    }
    out
}
