//! Preview: a pull request's head, fetched, verified and rendered exactly as the GitRepository's
//! own ref would be, then compared with the cluster by a server-side dry run as the
//! GitRepository's own identity. Nothing is applied. The result goes to `status.preview` and,
//! through `spec.preview.providerRef`, onto the pull request: its head commit's status with the
//! summary, and one comment with the diff, updated on every push.
//!
//! A request is the `capstan.dev/preview-requested` annotation, which the Receiver overwrites on
//! every pull-request event: one preview at a time per GitRepository (a reconcile runs alone),
//! the newest push wins, and a request answered once (`status.preview.request`) is not answered
//! again after a restart.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Deserialize;
use tracing::info;

use super::failure::Failure;
use super::plan::Plan;
use super::state::State;
use super::{Context, build, fetch, verify};
use crate::api::{
    GitRef, GitRepository, GitRepositoryStatus, PREVIEW_REQUESTED_ANNOTATION, PreviewStatus,
};
use crate::apply::diff::{self, Action, ObjectDiff};
use crate::notify::{CommitState, Notice, PreviewNote};

/// Past this the comment's diff is cut (GitHub keeps 65,536 characters).
const COMMENT_DIFF_CHARS: usize = 60_000;

/// What the annotation asks for.
#[derive(Debug, Deserialize, PartialEq)]
pub(super) struct Request {
    number: u64,
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
}

/// The request not answered yet, when `gr` previews at all; an annotation that does not parse
/// is answered with the reason.
pub(super) fn pending(gr: &GitRepository, status: &GitRepositoryStatus) -> Option<String> {
    gr.spec.preview.as_ref()?;
    let raw = gr.annotations().get(PREVIEW_REQUESTED_ANNOTATION)?;
    let answered = status.preview.as_ref().map(|p| &p.request) == Some(raw);
    (!answered).then(|| raw.clone())
}

fn parse(raw: &str) -> Result<Request, String> {
    let request: Request = serde_json::from_str(raw)
        .map_err(|e| format!("annotation {PREVIEW_REQUESTED_ANNOTATION}: {e}"))?;
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    };
    if !request.git_ref.starts_with("refs/") || !plain(&request.git_ref) {
        return Err(format!(
            "annotation {PREVIEW_REQUESTED_ANNOTATION}: {:?} is not a ref name",
            request.git_ref
        ));
    }
    if !request.sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "annotation {PREVIEW_REQUESTED_ANNOTATION}: {:?} is not a commit",
            request.sha
        ));
    }
    Ok(request)
}

/// Answers the request `raw`: `status.preview` says what the preview found, and the Provider
/// tells the pull request. Never fails the reconcile.
pub(super) async fn preview(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    status: &mut GitRepositoryStatus,
    plan: &Plan,
    raw: String,
) {
    let answer = |number, revision, succeeded, message: String| PreviewStatus {
        request: raw.clone(),
        number,
        revision,
        succeeded,
        message,
        at: Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let request = match parse(&raw) {
        Ok(request) => request,
        Err(message) => {
            status.preview = Some(answer(0, None, false, message));
            return;
        }
    };
    let requested = format!("{}@sha1:{}", request.git_ref, request.sha);
    tell(
        ctx,
        gr,
        &request,
        &requested,
        CommitState::Pending,
        "computing the diff",
        None,
    );
    let (revision, result) = compute(ctx, gr, state, status, plan, &request).await;
    let revision_or_request = revision.clone().unwrap_or(requested);
    let heading = format!(
        "### Capstan preview of `{}/{}`\n\n",
        gr.namespace().unwrap_or_default(),
        gr.name_any()
    );
    let (succeeded, message, comment) = match result {
        Ok(report) => {
            let summary = diff::summary(&report);
            let failed = report.iter().any(|d| d.action == Action::Failed);
            let comment = format!(
                "{heading}`{revision_or_request}` against the live cluster: **{summary}**. Nothing is applied until it merges.\n\n{}",
                fenced(&report_text(&report)),
            );
            (!failed, summary, comment)
        }
        Err(failure) => {
            let message = failure.to_string();
            let comment = format!(
                "{heading}`{revision_or_request}` cannot be applied: {}\n\n{}",
                failure.reason().as_str(),
                fenced(&message)
            );
            (false, message, comment)
        }
    };
    info!(number = request.number, revision = %revision_or_request, succeeded, %message, "preview");
    let verdict = match succeeded {
        true => CommitState::Success,
        false => CommitState::Failure,
    };
    tell(
        ctx,
        gr,
        &request,
        &revision_or_request,
        verdict,
        &message,
        Some(comment),
    );
    status.preview = Some(answer(request.number, revision, succeeded, message));
}

/// The revision the request's ref resolved to (when it did), and the diff or why there is none.
async fn compute(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    status: &GitRepositoryStatus,
    plan: &Plan,
    request: &Request,
) -> (Option<String>, Result<Vec<ObjectDiff>, Failure>) {
    let mut head = gr.clone();
    head.spec.git_ref = Some(GitRef {
        name: Some(request.git_ref.clone()),
        ..Default::default()
    });
    // Asked afresh: the ref has just moved, and what another check saw of it is stale.
    let plan = Plan {
        settled: false,
        ..plan.clone()
    };
    let unapplied = GitRepositoryStatus::default();
    let source = match fetch::resolve(ctx, &head, state, &unapplied, &plan).await {
        Ok(Some(source)) => source,
        Ok(None) => unreachable!("a status without an applied revision is never up to date"),
        Err(failure) => return (None, Err(failure)),
    };
    let revision = Some(source.resolved.revision.clone());
    let result = async {
        let checkout = fetch::checkout(ctx, &head, &source, &plan).await?;
        verify::verify(ctx, &head, state, &checkout).await?;
        let rendered = build::render(ctx, &head, state, &source, checkout, &plan).await?;
        let client = ctx.client_for(gr, state).map_err(Failure::Identity)?;
        let managed: Vec<String> = status
            .inventory
            .as_ref()
            .map(|i| i.entries.iter().map(|e| e.id.clone()).collect())
            .unwrap_or_default();
        let cluster = ctx.cluster(state);
        let report = diff::dry_run(
            &cluster.applier,
            &client,
            gr,
            &managed,
            &rendered.manifests,
            plan.timeout,
        )
        .await;
        Ok(report)
    }
    .await;
    (revision, result)
}

/// Hands the preview's state to the Provider, if there is one.
fn tell(
    ctx: &Context,
    gr: &GitRepository,
    request: &Request,
    revision: &str,
    state: CommitState,
    message: &str,
    comment: Option<String>,
) {
    let Some(provider) = gr
        .spec
        .preview
        .as_ref()
        .and_then(|p| p.provider_ref.as_ref())
    else {
        return;
    };
    let mut notice = Notice::new(gr, state == CommitState::Failure, "Preview", message)
        .about(Some(revision), Some(state));
    notice.preview = Some(PreviewNote {
        provider: provider.name.clone(),
        number: request.number,
        comment,
    });
    ctx.notifier.notify(notice);
}

/// The diff as `capstan diff` prints it, without colours, cut to fit a comment.
fn report_text(report: &[ObjectDiff]) -> String {
    let text = diff::text(report, |_, action| action.to_string());
    if text.chars().count() <= COMMENT_DIFF_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(COMMENT_DIFF_CHARS).collect();
    if let Some(end) = cut.rfind('\n') {
        cut.truncate(end + 1);
    }
    let left = text.lines().count() - cut.lines().count();
    cut.push_str(&format!(
        "… {left} more lines: `capstan diff NAME --ref REF` shows them all\n"
    ));
    cut
}

/// `text` in a Markdown code block whose fence no line of it can close.
fn fenced(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let body = if text.is_empty() {
        "(nothing would change)\n".to_string()
    } else if text.ends_with('\n') {
        text.to_string()
    } else {
        format!("{text}\n")
    };
    format!("{fence}\n{body}{fence}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        let ok = r#"{"number": 7, "ref": "refs/pull/7/head", "sha": "0123abcd"}"#;
        assert_eq!(
            parse(ok).unwrap(),
            Request {
                number: 7,
                git_ref: "refs/pull/7/head".into(),
                sha: "0123abcd".into()
            }
        );
        assert!(parse("not json").unwrap_err().contains("preview-requested"));
        let odd = r#"{"number": 7, "ref": "refs/pull/`x`", "sha": "0123abcd"}"#;
        assert!(parse(odd).unwrap_err().contains("not a ref name"));
        let branch = r#"{"number": 7, "ref": "main", "sha": "0123abcd"}"#;
        assert!(parse(branch).is_err());
        let sha = r#"{"number": 7, "ref": "refs/pull/7/head", "sha": "HEAD~1"}"#;
        assert!(parse(sha).unwrap_err().contains("not a commit"));
    }

    #[test]
    fn a_fence_outlasts_any_backticks_inside() {
        assert_eq!(fenced("a\n"), "```\na\n```\n");
        let inside = "data: ````x````";
        let block = fenced(inside);
        assert!(block.starts_with("`````\n"), "{block}");
        assert!(block.ends_with("\n`````\n"), "{block}");
        assert_eq!(fenced(""), "```\n(nothing would change)\n```\n");
    }

    #[test]
    fn a_long_diff_is_cut_at_a_line() {
        let report: Vec<ObjectDiff> = (0..5000)
            .map(|i| ObjectDiff {
                object: format!("ConfigMap apps/config-{i:05}"),
                action: Action::Created,
                changes: vec![],
                error: None,
            })
            .collect();
        let text = report_text(&report);
        assert!(text.chars().count() <= COMMENT_DIFF_CHARS + 100);
        assert!(text.contains("more lines"), "{}", &text[text.len() - 200..]);
        let last_full = text.lines().rev().nth(1).unwrap();
        assert!(last_full.ends_with(": created"), "{last_full}");
    }
}
