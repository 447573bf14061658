//! Preview: a pull request's head, fetched, verified and rendered exactly as the GitRepository's
//! own ref would be, then compared with the cluster by a server-side dry run as the
//! GitRepository's own identity. Nothing is applied. The result goes to `status.preview` and,
//! through `spec.preview.providerRef`, onto the pull request: its head commit's status with the
//! summary, and one comment with the diff, updated on every push.
//!
//! Requests are the `capstan.dev/preview-requested` annotation: the newest head of each of the
//! last few pull requests, which the Receiver updates on every pull-request event. They are
//! answered one at a time in the GitRepository's reconcile (which never runs twice at once): a
//! head pushed over before its turn is skipped for the newer one, and a request answered once
//! (`status.previews`, by number and commit) is not answered again after a restart. The verdict
//! is told to the pull request after the status that records it is written.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tracing::{info, warn};

use super::failure::Failure;
use super::plan::Plan;
use super::state::State;
use super::{Context, build, fetch, verify};
use crate::api::{
    GitRef, GitRepository, GitRepositoryStatus, PREVIEW_REQUESTED_ANNOTATION, PreviewRequest,
    PreviewStatus,
};
use crate::apply::diff::{self, Action, ObjectDiff};
use crate::notify::{CommitState, Notice, PreviewNote};

/// Past this the comment's diff is cut (GitHub keeps 65,536 characters).
const COMMENT_DIFF_CHARS: usize = 60_000;

/// The requests not answered yet, oldest first, when `gr` previews at all. `status.previews`
/// keeps the answers of the pull requests still listed.
pub(super) fn pending(gr: &GitRepository, status: &mut GitRepositoryStatus) -> Vec<PreviewRequest> {
    let Some(raw) = gr.annotations().get(PREVIEW_REQUESTED_ANNOTATION) else {
        status.previews.clear();
        return Vec::new();
    };
    let requests: Vec<PreviewRequest> = match serde_json::from_str(raw) {
        Ok(requests) => requests,
        Err(e) => {
            // Said once on the status (number 0), not at every reconcile in the log.
            let message = format!("annotation {PREVIEW_REQUESTED_ANNOTATION}: {e}");
            if status.previews.first().map(|p| &p.message) != Some(&message) {
                warn!(%message, "preview requests do not parse");
                status.previews = vec![answer(0, String::new(), None, false, message)];
            }
            return Vec::new();
        }
    };
    status
        .previews
        .retain(|p| requests.iter().any(|r| r.number == p.number));
    requests
        .into_iter()
        .filter(|r| {
            !status
                .previews
                .iter()
                .any(|p| p.number == r.number && p.sha == r.sha)
        })
        .collect()
}

fn answer(
    number: u64,
    sha: String,
    revision: Option<String>,
    succeeded: bool,
    message: String,
) -> PreviewStatus {
    PreviewStatus {
        number,
        sha,
        revision,
        succeeded,
        message,
        at: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// Why a request cannot be acted on: a ref or commit the Receiver would not have written.
fn check(request: &PreviewRequest) -> Result<(), String> {
    let plain = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    };
    if !request.git_ref.starts_with("refs/") || !plain(&request.git_ref) {
        return Err(format!("{:?} is not a ref name", request.git_ref));
    }
    let sha = &request.sha;
    if !(sha.len() == 40 || sha.len() == 64) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{sha:?} is not a commit"));
    }
    Ok(())
}

/// Answers `request` in `status.previews`; returns what to tell the pull request once that
/// status is written. Never fails the reconcile.
pub(super) async fn preview(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    status: &mut GitRepositoryStatus,
    plan: &Plan,
    request: PreviewRequest,
) -> Option<Notice> {
    let number = request.number;
    let record = |status: &mut GitRepositoryStatus, answer: PreviewStatus| {
        status.previews.retain(|p| p.number != answer.number);
        status.previews.push(answer);
        status.previews.sort_by_key(|p| p.number);
    };
    if let Err(why) = check(&request) {
        let message = format!("preview request of #{number}: {why}");
        record(status, answer(number, request.sha, None, false, message));
        return None;
    }
    let (revision, result) = compute(ctx, gr, state, status, plan, &request).await;
    // Told about the commit rendered: the head the ref names now, which may be newer than the
    // one the event named.
    let told = revision
        .clone()
        .unwrap_or_else(|| format!("{}@sha1:{}", request.git_ref, request.sha));
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
                "{heading}`{told}` against the live cluster: **{summary}**. Nothing is applied until it merges.\n\n{}",
                fenced(&report_text(&report)),
            );
            (!failed, summary, comment)
        }
        Err(failure) => {
            let message = failure.to_string();
            let comment = format!(
                "{heading}`{told}` cannot be applied: {}\n\n{}",
                failure.reason().as_str(),
                fenced(&message)
            );
            (false, message, comment)
        }
    };
    info!(number, revision = %told, succeeded, %message, "preview");
    let verdict = match succeeded {
        true => CommitState::Success,
        false => CommitState::Failure,
    };
    let notice = notice(gr, number, &told, verdict, &message, Some(comment));
    record(
        status,
        answer(number, request.sha, revision, succeeded, message),
    );
    notice
}

/// The revision the request's ref resolved to (when it did), and the diff or why there is none.
async fn compute(
    ctx: &Context,
    gr: &GitRepository,
    state: &mut State,
    status: &GitRepositoryStatus,
    plan: &Plan,
    request: &PreviewRequest,
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
    if let Some(pending) = notice(
        gr,
        request.number,
        &source.resolved.revision,
        CommitState::Pending,
        "computing the diff",
        None,
    ) {
        ctx.notifier.notify(pending);
    }
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

/// What tells the pull request the preview's state, if there is a Provider to tell.
fn notice(
    gr: &GitRepository,
    number: u64,
    revision: &str,
    state: CommitState,
    message: &str,
    comment: Option<String>,
) -> Option<Notice> {
    let provider = gr.spec.preview.as_ref()?.provider_ref.as_ref()?;
    let mut notice = Notice::new(gr, state == CommitState::Failure, "Preview", message)
        .about(Some(revision), Some(state));
    notice.preview = Some(PreviewNote {
        provider: provider.name.clone(),
        number,
        comment,
    });
    Some(notice)
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
    use serde_json::json;

    use super::*;

    fn request(git_ref: &str, sha: &str) -> PreviewRequest {
        PreviewRequest {
            number: 7,
            git_ref: git_ref.into(),
            sha: sha.into(),
        }
    }

    #[test]
    fn requests_are_checked() {
        let sha = "ab".repeat(20);
        assert_eq!(check(&request("refs/pull/7/head", &sha)), Ok(()));
        assert!(
            check(&request("refs/pull/`x`", &sha))
                .unwrap_err()
                .contains("not a ref name")
        );
        assert!(check(&request("main", &sha)).is_err());
        assert!(
            check(&request("refs/pull/7/head", "HEAD~1"))
                .unwrap_err()
                .contains("not a commit")
        );
        assert!(check(&request("refs/pull/7/head", "abcd")).is_err());
    }

    #[test]
    fn each_pull_request_is_answered_for_its_newest_head() {
        let sha = |c: &str| c.repeat(40);
        let requests = json!([
            {"number": 7, "ref": "refs/pull/7/head", "sha": sha("a")},
            {"number": 8, "ref": "refs/pull/8/head", "sha": sha("b")},
        ]);
        let gr = crate::git_repository(json!({
            "metadata": {"name": "x", "annotations": {PREVIEW_REQUESTED_ANNOTATION: requests.to_string()}},
            "spec": {"url": "https://example.com/x", "interval": "1m", "preview": {}},
        }));
        let mut status = GitRepositoryStatus::default();
        let numbers = |v: Vec<PreviewRequest>| v.iter().map(|r| r.number).collect::<Vec<_>>();
        assert_eq!(numbers(pending(&gr, &mut status)), vec![7, 8]);
        // #7 answered for its head; #8 for an older one; #3 no longer asked about.
        status.previews = vec![
            answer(3, sha("c"), None, true, String::new()),
            answer(7, sha("a"), None, true, String::new()),
            answer(8, sha("d"), None, true, String::new()),
        ];
        assert_eq!(numbers(pending(&gr, &mut status)), vec![8]);
        let kept: Vec<u64> = status.previews.iter().map(|p| p.number).collect();
        assert_eq!(kept, vec![7, 8]);

        let mut broken = gr.clone();
        broken
            .annotations_mut()
            .insert(PREVIEW_REQUESTED_ANNOTATION.into(), "{".into());
        assert!(pending(&broken, &mut status).is_empty());
        assert_eq!(status.previews.len(), 1);
        assert!(status.previews[0].message.contains("preview-requested"));
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
