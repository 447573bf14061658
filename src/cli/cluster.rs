//! `capstan get`, `reconcile`, `suspend`, `resume` and `diff`: GitRepositories in the cluster of
//! the current kubeconfig, as kubectl reaches it.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::{CliError, Format};
use crate::api::{GitRepository, RECONCILE_REQUESTED_ANNOTATION};
use crate::apply::Applier;
use crate::apply::diff::{self, Action, ObjectDiff};
use crate::reconcile;
use crate::render::Manifest;
use crate::runtime::RenderConfig;
use crate::source::Cache;
use crate::status;

/// Connects as the current kubeconfig does; returns the client and the namespace to use.
async fn connect(namespace: Option<&str>) -> Result<(Client, String), CliError> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| CliError::Config(e.to_string()))?;
    let ns = namespace
        .map(str::to_string)
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, ns))
}

fn colour(enabled: bool, code: &str, text: &str) -> String {
    if enabled {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

fn colours_for(stream_is_terminal: bool) -> bool {
    crate::telemetry::colour(stream_is_terminal, std::env::var_os("NO_COLOR"))
}

// ---------------------------------------------------------------- get

#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// One GitRepository; all of the namespace without it.
    pub name: Option<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

pub async fn get(args: &GetArgs, out: &mut impl Write) -> Result<(), CliError> {
    let (client, ns) = connect(args.namespace.as_deref()).await?;
    let api: Api<GitRepository> = if args.all_namespaces {
        Api::all(client)
    } else {
        Api::namespaced(client, &ns)
    };
    let mut items = match &args.name {
        Some(name) => vec![api.get(name).await?],
        None => api.list(&ListParams::default()).await?.items,
    };
    items.sort_by_key(|gr| (gr.namespace(), gr.name_any()));
    match args.output {
        Format::Json => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
            serde_json::to_writer_pretty(&mut *out, &list).map_err(std::io::Error::other)?;
            writeln!(out)?;
        }
        Format::Yaml => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
            let yaml =
                serde_saphyr::to_string(&list).map_err(|e| std::io::Error::other(e.to_string()))?;
            write!(out, "{yaml}")?;
        }
        Format::Table if items.is_empty() => {
            eprintln!("No GitRepositories found.");
        }
        Format::Table => {
            let colours = colours_for(std::io::stdout().is_terminal());
            write_table(&items, args.all_namespaces, colours, out)?
        }
    }
    Ok(())
}

fn write_table(
    items: &[GitRepository],
    with_namespace: bool,
    colours: bool,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut rows: Vec<Vec<String>> = vec![
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "SUSPENDED",
            "REVISION",
            "DRIFT",
            "MESSAGE",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ];
    for gr in items {
        let st = gr.status.as_ref();
        let ready = status::ready(st);
        rows.push(vec![
            gr.namespace().unwrap_or_default(),
            gr.name_any(),
            ready.map_or("Unknown".into(), |c| c.status.clone()),
            gr.spec.suspend.to_string(),
            st.and_then(|s| s.last_applied_revision.clone())
                .map(|r| short_revision(&r))
                .unwrap_or_default(),
            st.and_then(|s| s.summary.as_ref())
                .map_or(0, |s| s.drifted)
                .to_string(),
            ready.map(|c| c.message.clone()).unwrap_or_default(),
        ]);
    }
    let skip = usize::from(!with_namespace);
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for (n, row) in rows.iter().enumerate() {
        let mut line = String::new();
        for i in skip..7 {
            let cell = &row[i];
            let shown = if n > 0 && i == 2 {
                let code = match cell.as_str() {
                    "True" => "32",
                    "False" => "31",
                    _ => "33",
                };
                colour(colours, code, cell)
            } else {
                cell.clone()
            };
            line.push_str(&shown);
            if i < 6 {
                let pad = widths[i] - cell.chars().count() + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `main@sha1:4f2c9e1d0a7b` from `main@sha1:4f2c9e1d0a7b…` (40 hex digits are too many to read).
pub fn short_revision(revision: &str) -> String {
    match revision.split_once("sha1:") {
        Some((name, sha)) => format!("{name}sha1:{}", sha.chars().take(12).collect::<String>()),
        None => revision.to_string(),
    }
}

// ---------------------------------------------------------------- reconcile, suspend, resume

#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    pub name: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// How long to wait for the controller to handle the request, e.g. `5m`.
    #[arg(long, default_value = "5m")]
    pub timeout: String,
}

/// Requests a reconcile and waits for the controller to handle it; fails unless Ready.
pub async fn reconcile(args: &WaitArgs, out: &mut impl Write) -> Result<(), CliError> {
    let (client, ns) = connect(args.target.namespace.as_deref()).await?;
    let api: Api<GitRepository> = Api::namespaced(client, &ns);
    let gr = api.get(&args.target.name).await?;
    if gr.spec.suspend {
        return Err(CliError::Failed(format!(
            "{ns}/{} is suspended; `capstan resume` it first",
            args.target.name
        )));
    }
    request_and_wait(&api, &ns, args, json!({}), out).await
}

pub async fn suspend(args: &TargetArgs, out: &mut impl Write) -> Result<(), CliError> {
    let (client, ns) = connect(args.namespace.as_deref()).await?;
    let api: Api<GitRepository> = Api::namespaced(client, &ns);
    let patch = json!({"spec": {"suspend": true}});
    api.patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    writeln!(out, "suspended {ns}/{}", args.name)?;
    Ok(())
}

/// Lifts the suspension and waits, as `reconcile` does, for the reconcile that follows.
pub async fn resume(args: &WaitArgs, out: &mut impl Write) -> Result<(), CliError> {
    let (client, ns) = connect(args.target.namespace.as_deref()).await?;
    let api: Api<GitRepository> = Api::namespaced(client, &ns);
    request_and_wait(&api, &ns, args, json!({"suspend": false}), out).await
}

async fn request_and_wait(
    api: &Api<GitRepository>,
    ns: &str,
    args: &WaitArgs,
    spec: Value,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let name = &args.target.name;
    let timeout = reconcile::parse_duration(&args.timeout)
        .ok_or_else(|| CliError::Usage(format!("invalid --timeout {:?}", args.timeout)))?;
    let (token, patch) = reconcile_request(spec);
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let gr = wait_handled(api, name, &token, timeout).await?;
    let ready = status::ready(gr.status.as_ref());
    let message = ready.map(|c| c.message.clone()).unwrap_or_default();
    let colours = colours_for(std::io::stdout().is_terminal());
    if ready.is_some_and(|c| c.status == "True") {
        writeln!(out, "{} {ns}/{name}: {message}", colour(colours, "32", "✔"))?;
        Ok(())
    } else {
        let reason = ready.map(|c| c.reason.clone()).unwrap_or_default();
        writeln!(
            out,
            "{} {ns}/{name}: {reason}: {message}",
            colour(colours, "31", "✘")
        )?;
        Err(CliError::Failed(format!(
            "{ns}/{name} is not Ready ({reason})"
        )))
    }
}

/// The merge patch that asks the controller for a reconcile now, with `spec` changed too, and
/// the token its status will name once it handled it.
pub fn reconcile_request(spec: Value) -> (String, Value) {
    let token = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({
        "metadata": {"annotations": {RECONCILE_REQUESTED_ANNOTATION: token}},
        "spec": spec,
    });
    (token, patch)
}

/// Polls until the controller has handled the request `token` for the current generation,
/// showing progress on stderr: a spinner on a terminal; otherwise a line per change, each ending
/// in a newline, so that the outcome, printed after, is the last line.
async fn wait_handled(
    api: &Api<GitRepository>,
    name: &str,
    token: &str,
    timeout: Duration,
) -> Result<GitRepository, CliError> {
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut last_shown = String::new();
    let spinner = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let clear = |terminal: bool| {
        if terminal {
            eprint!("\r\x1b[K");
        }
    };
    for tick in 0usize.. {
        let gr = api.get(name).await?;
        let st = gr.status.as_ref();
        let handled = st.and_then(|s| s.last_handled_reconcile_at.as_deref()) == Some(token)
            && st.and_then(|s| s.observed_generation) == gr.metadata.generation;
        if handled {
            clear(terminal);
            return Ok(gr);
        }
        if started.elapsed() > timeout {
            clear(terminal);
            return Err(CliError::Failed(format!(
                "the controller did not handle the request within {timeout:?}; is it running?"
            )));
        }
        let state = progress(st);
        if terminal {
            let line: String = format!(
                "{} {name} ({}s) {state}",
                spinner[tick % spinner.len()],
                started.elapsed().as_secs()
            )
            .chars()
            .take(120)
            .collect();
            eprint!("\r\x1b[K{line}");
        } else if state != last_shown {
            eprintln!("{name}: {state}");
            last_shown = state;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    unreachable!("the loop returns")
}

/// What a GitRepository is doing while a request waits: the revision being applied, from the
/// `Reconciling` condition the controller sets when an apply starts. Ready (and a Reconciling
/// condition of a retry) speak of the reconcile before the request until the request is
/// handled, so they are not shown.
fn progress(status: Option<&crate::api::GitRepositoryStatus>) -> String {
    status
        .into_iter()
        .flat_map(|s| &s.conditions)
        .find(|c| {
            c.type_ == status::RECONCILING
                && c.status == "True"
                && c.reason == status::Reason::Progressing.as_str()
        })
        .map_or("waiting for the controller".to_string(), |c| {
            format!("{}: {}", c.reason, c.message)
        })
}

// ---------------------------------------------------------------- diff

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Render this local directory (as `spec.path` would name it) instead of the
    /// GitRepository's revision in git: see what a change would do before pushing it.
    #[arg(long, conflicts_with = "git_ref")]
    pub path: Option<PathBuf>,
    /// Render this ref of the GitRepository's repository instead of `spec.ref`: a branch, a
    /// full ref name (`refs/pull/7/head`) or a commit SHA. See what a pull request would do
    /// before it merges.
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
    /// Most bytes the fetch may transfer.
    #[arg(long, default_value_t = 512 << 20)]
    pub max_fetch_bytes: u64,
    #[command(flatten)]
    pub render: RenderConfig,
}

/// What applying the GitRepository's manifests would change now, from a server-side dry run.
/// Returns whether anything would change.
pub async fn diff(args: &DiffArgs, out: &mut impl Write) -> Result<bool, CliError> {
    let (client, ns) = connect(args.target.namespace.as_deref()).await?;
    let api: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
    let mut gr = api.get(&args.target.name).await?;
    if let Some(r) = &args.git_ref {
        gr.spec.git_ref = Some(ref_named(r));
    }
    let report = diff_report(
        &client,
        gr,
        args.path.as_deref(),
        &args.render,
        args.max_fetch_bytes,
    )
    .await?;
    let changed = report.iter().any(|d| d.action != Action::Unchanged);
    match args.output {
        Format::Json | Format::Yaml => write_diff_structured(&report, args.output, out)?,
        Format::Table => write_diff_table(&report, out)?,
    }
    Ok(changed)
}

/// The server-side dry run of `gr`'s manifests, as `client` may run it: from the local
/// directory `path`, or else from its revision in git. Shared with the web UI's diff page.
pub async fn diff_report(
    client: &Client,
    mut gr: GitRepository,
    path: Option<&std::path::Path>,
    render: &RenderConfig,
    max_fetch_bytes: u64,
) -> Result<Vec<ObjectDiff>, CliError> {
    let ns = gr.namespace().unwrap_or_default();
    // What would be pruned is read from the whole inventory, not the status's first entries.
    gr.status = crate::apply::record::load(client, &gr)
        .await
        .map_err(|e| CliError::Failed(format!("reading the inventory record: {e}")))?;
    let timeout = reconcile::parse_duration(gr.spec.timeout.as_deref().unwrap_or("60s"))
        .unwrap_or(Duration::from_secs(60));
    let variables = reconcile::read_variables(client, &gr, &ns)
        .await
        .map_err(|e| CliError::Failed(e.message))?;
    let manifests = match path {
        Some(dir) => super::render_tree(dir, None, Some(&gr), variables.as_ref(), render, timeout)?,
        None => fetch_and_render(client, &gr, variables, render, max_fetch_bytes, timeout).await?,
    };
    // Against the cluster the GitRepository applies to: a remote one from its kubeconfig Secret.
    let target = reconcile::remote_client(client, &gr)
        .await
        .map_err(CliError::Failed)?
        .unwrap_or_else(|| client.clone());
    let managed: Vec<String> = gr
        .status
        .as_ref()
        .and_then(|s| s.inventory.as_ref())
        .map(|i| i.entries.iter().map(|e| e.id.clone()).collect())
        .unwrap_or_default();
    let report = diff::dry_run(
        &Applier::new(1),
        &target,
        &gr,
        &managed,
        &manifests,
        timeout,
    )
    .await;
    Ok(redacted(report, &secret_values(client, &gr, &ns).await?))
}

/// The values of the Secrets `postBuild.substituteFrom` names: substituted into any object,
/// they are Secret values too.
async fn secret_values(
    client: &Client,
    gr: &GitRepository,
    ns: &str,
) -> Result<Vec<String>, CliError> {
    let mut secrets_only = gr.clone();
    let Some(post_build) = secrets_only.spec.post_build.as_mut() else {
        return Ok(Vec::new());
    };
    post_build
        .substitute_from
        .retain(|from| from.kind == crate::api::SubstituteKind::Secret);
    post_build.substitute.clear();
    let variables = reconcile::read_variables(client, &secrets_only, ns)
        .await
        .map_err(|e| CliError::Failed(e.message))?;
    Ok(variables
        .into_iter()
        .flat_map(|v| v.into_values())
        .filter(|v| !v.is_empty())
        .collect())
}

/// `report` with every value that holds one of `secrets` replaced by [`diff::REDACTED`]: a
/// value that contains one (of 4 characters or more), or equals one.
fn redacted(mut report: Vec<ObjectDiff>, secrets: &[String]) -> Vec<ObjectDiff> {
    let holds = |v: &Value| {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        secrets
            .iter()
            .any(|s| text == *s || (s.len() >= 4 && text.contains(s.as_str())))
    };
    for change in report.iter_mut().flat_map(|d| &mut d.changes) {
        for side in [&mut change.live, &mut change.desired] {
            if side.as_ref().is_some_and(holds) {
                *side = Some(Value::String(diff::REDACTED.into()));
            }
        }
    }
    report
}

/// `--ref`: a full ref name, a commit SHA, or else a branch.
fn ref_named(r: &str) -> crate::api::GitRef {
    let sha = (r.len() == 40 || r.len() == 64) && r.bytes().all(|b| b.is_ascii_hexdigit());
    crate::api::GitRef {
        name: r.starts_with("refs/").then(|| r.to_string()),
        commit: sha.then(|| r.to_lowercase()),
        branch: (!sha && !r.starts_with("refs/")).then(|| r.to_string()),
        ..Default::default()
    }
}

fn write_diff_structured(
    report: &[ObjectDiff],
    format: Format,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let items: Vec<Value> = report
        .iter()
        .map(|row| {
            json!({
                "object": row.object,
                "action": row.action.as_str(),
                "changes": row.changes.iter().map(|c| json!({"path": c.path, "live": c.live, "desired": c.desired})).collect::<Vec<_>>(),
                "error": row.error,
            })
        })
        .collect();
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, &items).map_err(std::io::Error::other)?;
        writeln!(out)?;
    } else {
        let yaml =
            serde_saphyr::to_string(&items).map_err(|e| std::io::Error::other(e.to_string()))?;
        write!(out, "{yaml}")?;
    }
    Ok(())
}

fn write_diff_table(report: &[ObjectDiff], out: &mut impl Write) -> Result<(), CliError> {
    let colours = colours_for(std::io::stdout().is_terminal());
    write!(
        out,
        "{}",
        diff::text(report, |code, text| colour(colours, code, text))
    )?;
    let n = report
        .iter()
        .filter(|d| d.action != Action::Unchanged)
        .count();
    writeln!(out, "{n} of {} objects would change", report.len())?;
    Ok(())
}

/// The GitRepository's revision as the controller would fetch and render it: its source and
/// render steps, with the user's own credentials.
async fn fetch_and_render(
    client: &Client,
    gr: &GitRepository,
    variables: Option<crate::render::Variables>,
    render: &RenderConfig,
    max_fetch_bytes: u64,
    timeout: Duration,
) -> Result<Vec<Manifest>, CliError> {
    let work = tempfile::tempdir()?;
    std::fs::create_dir_all(work.path().join("repos"))?;
    let cache = Cache::new(work.path().join("repos"), 1, max_fetch_bytes);
    let tree = work.path().join("tree");
    let revision = reconcile::check_out(client, &cache, gr, &tree, timeout)
        .await
        .map_err(CliError::Failed)?;
    eprintln!("comparing {revision} with the cluster");
    let (limits, tools) = (render.limits(), render.tools());
    reconcile::Build::of(gr, variables, limits, tools, timeout)
        .render(&tree)
        .map_err(|e| CliError::Failed(format!("revision {revision}: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn refs_by_their_shape() {
        let r = super::ref_named("refs/pull/7/head");
        assert_eq!(r.name.as_deref(), Some("refs/pull/7/head"));
        assert!(r.branch.is_none() && r.commit.is_none());
        let r = super::ref_named(&"AB12".repeat(10));
        assert_eq!(r.commit, Some("ab12".repeat(10)));
        let r = super::ref_named("feature/x");
        assert_eq!(r.branch.as_deref(), Some("feature/x"));
    }

    #[test]
    fn substituted_secret_values_are_redacted() {
        use crate::apply::diff::{Action, Change, ObjectDiff, REDACTED};
        use serde_json::json;
        let change = |path: &str, live: serde_json::Value, desired: serde_json::Value| Change {
            path: path.into(),
            live: Some(live),
            desired: Some(desired),
        };
        let report = vec![ObjectDiff {
            object: "ConfigMap apps/app".into(),
            action: Action::Changed,
            changes: vec![
                change(
                    ".data.url",
                    json!("postgres://u:old@db"),
                    json!("postgres://u:hunter22@db"),
                ),
                change(".data.port", json!("5432"), json!("5433")),
                change(".spec.replicas", json!(1), json!(2)),
            ],
            error: None,
        }];
        let secrets = vec!["hunter22".to_string(), "2".to_string()];
        let out = super::redacted(report, &secrets);
        let c = &out[0].changes;
        assert_eq!(c[0].desired, Some(json!(REDACTED)));
        assert_eq!(c[0].live, Some(json!("postgres://u:old@db")));
        // A short value hides only where it is the whole value.
        assert_eq!(c[1].desired, Some(json!("5433")));
        assert_eq!(c[2].desired, Some(json!(REDACTED)));
        assert_eq!(c[2].live, Some(json!(1)));
    }

    #[test]
    fn short_revisions_cut_characters_not_bytes() {
        assert_eq!(
            super::short_revision("main@sha1:4f2c9e1d0a7b5c3e9f1d2a4b6c8e0f1a2b3c4d5e"),
            "main@sha1:4f2c9e1d0a7b"
        );
        // A status anyone may write: no panic on a multi-byte character at the cut.
        assert_eq!(
            super::short_revision("main@sha1:aéééééééééééé"),
            "main@sha1:aééééééééééé"
        );
        assert_eq!(super::short_revision("sha1:ab"), "sha1:ab");
    }
}
