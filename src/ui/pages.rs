//! The UI's HTML: server-rendered with maud, which escapes every value it interpolates (names,
//! messages and paths come from git and from users). Elements marked `data-live` are the parts a
//! page swaps in place when the cluster changes (assets/ui.js).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use maud::{DOCTYPE, Markup, html};

use super::view::{self, Counts, Query, SORTS, State};
use crate::api::{GitRepository, GitRepositoryStatus, RECONCILE_REQUESTED_ANNOTATION};
use crate::apply::diff::{Action, ObjectDiff};
use crate::cli::short_revision;
use crate::live::health::Health;

pub const CSS: &str = include_str!("assets/ui.css");
pub const JS: &str = include_str!("assets/ui.js");

/// What every page carries: what the session sees, whether its watches are well, and which
/// changes it follows.
pub struct Frame<'a> {
    pub title: String,
    pub scope: Option<&'a str>,
    pub watch_error: Option<String>,
    pub live: Live,
}

/// The changes a page follows live.
pub enum Live {
    /// None: the page is computed at a cost (the diff), or an error.
    Off,
    /// Every GitRepository's.
    All,
    /// One GitRepository's (`namespace/name`) and its Events'.
    Repo(String),
}

impl Live {
    fn url(&self) -> Option<String> {
        match self {
            Live::Off => None,
            Live::All => Some("/live".into()),
            Live::Repo(repo) => Some(format!("/live?repo={}", encode(repo))),
        }
    }
}

fn layout(frame: &Frame, current: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · Capstan" }
                link rel="stylesheet" href="/assets/ui.css";
                script src="/assets/ui.js" defer {}
            }
            body data-live-url=[frame.live.url()] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Capstan" }
                    nav aria-label="Main" {
                        a href="/" aria-current=[(current == "overview").then_some("page")] { "Overview" }
                        a href="/repos" aria-current=[(current == "repos").then_some("page")] { "GitRepositories" }
                    }
                    span.scope {
                        @match frame.scope {
                            Some(ns) => { "namespace " strong { (ns) } }
                            None => { "all namespaces" }
                        }
                    }
                }
                div #banner data-live {
                    @if let Some(e) = &frame.watch_error {
                        p.banner role="alert" { "The watch of the cluster failed and is retrying: " (e) }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

fn badge(state: State) -> Markup {
    html! { span class=(format!("badge {}", state.as_str())) { (state.label()) } }
}

fn health_badge(health: Option<&Health>) -> Markup {
    match health {
        None => html! { span.badge.unknown { "Unknown" } },
        Some(Health::Current) => html! { span.badge.ready { "Healthy" } },
        Some(Health::InProgress(m)) => {
            html! { span.badge.progressing { "Progressing" } " " span.muted { (m) } }
        }
        Some(Health::Failed(m)) => html! { span.badge.failing { "Failed" } " " span.muted { (m) } },
    }
}

fn repo_link(gr: &GitRepository) -> String {
    let ns = gr.namespace().unwrap_or_default();
    format!("/repos/{}/{}", encode(&ns), encode(&gr.name_any()))
}

pub fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `5s`, `3m`, `2h`, `4d` since `then`.
fn age(then: Option<&Time>, now: Timestamp) -> String {
    let Some(then) = then else {
        return String::new();
    };
    let secs = now.as_second().saturating_sub(then.0.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn event_time(e: &Event) -> Option<&Time> {
    e.last_timestamp
        .as_ref()
        .or(e.first_timestamp.as_ref())
        .or(e.metadata.creation_timestamp.as_ref())
}

/// Events newest first.
pub fn newest_first(events: &mut [std::sync::Arc<Event>]) {
    events.sort_by(|a, b| {
        let t = |e: &Event| {
            e.event_time
                .as_ref()
                .map(|t| t.0)
                .or(event_time(e).map(|t| t.0))
        };
        t(b).cmp(&t(a))
    });
}

fn events_list(events: &[std::sync::Arc<Event>], with_source: bool, now: Timestamp) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted { "No events." }
        } @else {
            ol.timeline {
                @for e in events {
                    @let warning = e.type_.as_deref() == Some("Warning");
                    li.warning[warning] {
                        span.when title=[event_time(e).map(|t| t.0.to_string())] { (age(event_time(e), now)) " ago" }
                        " "
                        span class=(if warning { "badge failing" } else { "badge neutral" }) {
                            (e.reason.as_deref().unwrap_or_default())
                        }
                        @if with_source {
                            " "
                            @let ns = e.involved_object.namespace.clone().unwrap_or_default();
                            @let name = e.involved_object.name.clone().unwrap_or_default();
                            a href=(format!("/repos/{}/{}", encode(&ns), encode(&name))) { (ns) "/" (name) }
                        }
                        p.message { (e.message.as_deref().unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- overview

pub struct Overview<'a> {
    pub counts: Counts,
    pub attention: Vec<&'a GitRepository>,
    pub events: Vec<std::sync::Arc<Event>>,
}

pub fn overview(frame: &Frame, page: &Overview, now: Timestamp) -> Markup {
    let c = &page.counts;
    let cards = [
        ("total", "", "GitRepositories", c.total),
        ("ready", "ready", "Ready", c.ready),
        ("failing", "failing", "Failing", c.failing),
        ("progressing", "progressing", "Progressing", c.progressing),
        ("suspended", "suspended", "Suspended", c.suspended),
        ("drifted", "drifted", "Drifted", c.drifted),
    ];
    layout(
        frame,
        "overview",
        html! {
            h1 { "Overview" }
            section #counts data-live aria-label="Counts" {
                ul.cards {
                    @for (class, state, label, n) in cards {
                        li class=(format!("card {class}")) {
                            a href=(format!("/repos?state={state}")) data-count=(class) {
                                span.n { (n) }
                                span.label { (label) }
                            }
                        }
                    }
                }
            }
            div.columns {
                section #attention data-live {
                    h2 { "Needs attention" }
                    @if page.attention.is_empty() {
                        p.muted { "Nothing: every GitRepository is Ready, in sync or suspended." }
                    } @else {
                        ul.attention {
                            @for gr in &page.attention {
                                li {
                                    (badge(view::state(gr)))
                                    @if view::drifted(gr) > 0 {
                                        " " span.badge.drifted { (view::drifted(gr)) " drifted" }
                                    }
                                    " "
                                    a href=(repo_link(gr)) { (gr.namespace().unwrap_or_default()) "/" (gr.name_any()) }
                                    p.message { (view::message(gr)) }
                                }
                            }
                        }
                    }
                }
                section #activity data-live {
                    h2 { "Recent activity" }
                    (events_list(&page.events, true, now))
                }
            }
        },
    )
}

// ---------------------------------------------------------------- list

pub fn list(
    frame: &Frame,
    query: &Query,
    namespaces: &[String],
    rows: &[&GitRepository],
    total: usize,
    now: Timestamp,
) -> Markup {
    let sort_link = |column: &str| {
        let desc = query.sort == column && !query.desc;
        let q = Query {
            sort: column.to_string(),
            desc,
            ..query.clone()
        };
        format!("/repos?{}", serde_urlencoded(&q))
    };
    let states = [
        ("", "Any state"),
        ("ready", "Ready"),
        ("failing", "Failing"),
        ("progressing", "Progressing"),
        ("suspended", "Suspended"),
        ("drifted", "Drifted"),
    ];
    layout(
        frame,
        "repos",
        html! {
            h1 { "GitRepositories" }
            form.filters method="get" action="/repos" role="search" {
                label { "Namespace "
                    select name="namespace" {
                        option value="" { "All" }
                        @for ns in namespaces {
                            option value=(ns) selected[*ns == query.namespace] { (ns) }
                        }
                    }
                }
                label { "State "
                    select name="state" {
                        @for (value, label) in states {
                            option value=(value) selected[value == query.state] { (label) }
                        }
                    }
                }
                label.grow { "Search "
                    input type="search" name="q" value=(query.q) placeholder="name, URL, message";
                }
                @if !query.sort.is_empty() {
                    input type="hidden" name="sort" value=(query.sort);
                    @if query.desc { input type="hidden" name="desc" value="true"; }
                }
                button type="submit" { "Filter" }
            }
            div #rows data-live {
                p.muted { (rows.len()) " of " (total) " shown" }
                div.scroll {
                    table.repos {
                        thead {
                            tr {
                                @for column in SORTS {
                                    @let current = query.sort == column;
                                    th class=(format!("col-{column}")) aria-sort=[current.then_some(if query.desc { "descending" } else { "ascending" })] {
                                        a href=(sort_link(column)) { (column) @if current { @if query.desc { " ↓" } @else { " ↑" } } }
                                    }
                                }
                                th.col-message { "message" }
                            }
                        }
                        tbody {
                            @for gr in rows {
                                tr data-name=(gr.name_any()) {
                                    td.col-namespace { (gr.namespace().unwrap_or_default()) }
                                    td.col-name { a href=(repo_link(gr)) { (gr.name_any()) } }
                                    td.col-state { (badge(view::state(gr))) }
                                    td.col-revision { code { (view::revision(gr).map(short_revision).unwrap_or_default()) } }
                                    td.col-drift {
                                        @let n = view::drifted(gr);
                                        @if n > 0 { span.badge.drifted { (n) } } @else { span.muted { "0" } }
                                    }
                                    td.col-age { (age(gr.metadata.creation_timestamp.as_ref(), now)) }
                                    td.col-message { span.message { (view::message(gr)) } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn serde_urlencoded(q: &Query) -> String {
    let mut pairs = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("namespace", q.namespace.as_str()),
        ("state", q.state.as_str()),
        ("q", q.q.as_str()),
        ("sort", q.sort.as_str()),
    ] {
        if !v.is_empty() {
            pairs.append_pair(k, v);
        }
    }
    if q.desc {
        pairs.append_pair("desc", "true");
    }
    pairs.finish()
}

// ---------------------------------------------------------------- one GitRepository

/// One managed object as the detail page shows it.
pub struct ObjectRow {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    /// None when it could not be read (or is not found).
    pub health: Option<Health>,
    pub drift: Vec<String>,
    pub corrected: bool,
}

pub struct Detail<'a> {
    pub gr: &'a GitRepository,
    /// The full status, with the inventory record read back in (or why it could not be).
    pub status: Result<Option<GitRepositoryStatus>, String>,
    pub objects: Vec<ObjectRow>,
    /// Objects beyond those shown.
    pub more: usize,
    pub events: Vec<std::sync::Arc<Event>>,
    /// Whether the caller may act, and if not why.
    pub may_patch: Result<(), String>,
    pub csrf: &'a str,
}

pub fn detail(frame: &Frame, page: &Detail, now: Timestamp) -> Markup {
    let gr = page.gr;
    let ns = gr.namespace().unwrap_or_default();
    let name = gr.name_any();
    let base = repo_link(gr);
    let st = gr.status.as_ref();
    let requested = gr.annotations().get(RECONCILE_REQUESTED_ANNOTATION);
    let pending = requested.is_some()
        && requested.map(String::as_str) != st.and_then(|s| s.last_handled_reconcile_at.as_deref());
    let progress = st
        .into_iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == crate::status::RECONCILING && c.status == "True")
        .map(|c| c.message.clone());
    let suspended = gr.spec.suspend;
    let action = |verb: &str, label: &str, blocked: Option<String>| {
        let reason = blocked.or_else(|| page.may_patch.clone().err());
        html! {
            form.action method="post" action=(format!("{base}/{verb}")) {
                input type="hidden" name="csrf" value=(page.csrf);
                button type="submit" data-action=(verb) disabled[reason.is_some()] title=[reason.as_deref()] { (label) }
                @if let Some(r) = &reason { span.why { (r) } }
            }
        }
    };
    let applied = view::revision(gr);
    layout(
        frame,
        "repos",
        html! {
            p.crumbs { a href="/repos" { "GitRepositories" } " / " (ns) }
            div #head data-live {
                h1 { (name) " " (badge(view::state(gr))) }
                div.actions {
                    (action("reconcile", "Reconcile now", suspended.then(|| "suspended; resume it first".to_string())))
                    @if suspended {
                        (action("resume", "Resume", None))
                    } @else {
                        (action("suspend", "Suspend", None))
                    }
                }
                @if pending {
                    p.pending role="status" {
                        span.spinner aria-hidden="true" {}
                        "Reconcile requested; waiting for the controller"
                        @if let Some(p) = &progress { ": " (p) }
                    }
                }
            }
            div #facts data-live {
                dl.facts {
                    dt { "URL" } dd { code { (crate::source::redact(&gr.spec.url)) } }
                    dt { "Path" } dd { code { (gr.spec.path.as_deref().unwrap_or("./")) } }
                    dt { "Interval" } dd { (gr.spec.interval) }
                    dt { "Applied revision" }
                    dd.applied {
                        @match applied {
                            Some(rev) => {
                                @match view::commit_link(&gr.spec.url, rev) {
                                    Some(link) => { a href=(link) rel="noreferrer" { code { (rev) } } }
                                    None => { code { (rev) } }
                                }
                            }
                            None => { span.muted { "none yet" } }
                        }
                    }
                    dt { "Attempted revision" }
                    dd { code { (st.and_then(|s| s.last_attempted_revision.as_deref()).unwrap_or("none yet")) } }
                    @if let Some(summary) = st.and_then(|s| s.summary.as_ref()) {
                        dt { "Last apply" }
                        dd {
                            (summary.total) " objects: " (summary.created) " created, " (summary.configured)
                            " configured, " (summary.unchanged) " unchanged, " (summary.pruned) " pruned, "
                            (summary.drifted) " drifted"
                        }
                    }
                }
                h2 { "Conditions" }
                div.scroll {
                    table.conditions {
                        thead { tr { th { "type" } th { "status" } th { "reason" } th { "message" } th { "since" } } }
                        tbody {
                            @for c in st.into_iter().flat_map(|s| &s.conditions) {
                                tr data-condition=(c.type_) {
                                    td { (c.type_) }
                                    td { span class=(format!("badge {}", condition_class(&c.type_, &c.status))) { (c.status) } }
                                    td.reason { (c.reason) }
                                    td.message { (c.message) }
                                    td { (age(Some(&c.last_transition_time), now)) }
                                }
                            }
                        }
                    }
                }
            }
            div #objects data-live {
                @match &page.status {
                    Err(e) => { p.banner { "The inventory record could not be read: " (e) } }
                    Ok(full) => {
                        @if let Some(blocked) = full.as_ref().and_then(|s| s.prune_blocked.as_ref()) {
                            section.prune-blocked {
                                h2 { "Prune held back" }
                                p { (blocked.count.unwrap_or(blocked.candidates.len() as i64)) " of " (blocked.managed)
                                    " objects would be deleted, past the limit of " (blocked.limit) ":" }
                                ul { @for id in &blocked.candidates { li { code { (id) } } } }
                            }
                        }
                    }
                }
                h2 { "Objects" }
                @if page.objects.is_empty() {
                    p.muted { "No managed objects." }
                }
                @for (namespace, kinds) in tree(&page.objects) {
                    details.namespace open {
                        summary { @if namespace.is_empty() { "cluster-scoped" } @else { "namespace " (namespace) } }
                        @for (kind, objects) in kinds {
                            div.kind {
                                h3 { (kind) }
                                ul.objects {
                                    @for o in objects {
                                        li data-object=(format!("{kind}/{}", o.name)) {
                                            span.name { (o.name) } " " (health_badge(o.health.as_ref()))
                                            @if !o.drift.is_empty() {
                                                div.drift {
                                                    span.badge.drifted { @if o.corrected { "drift corrected" } @else { "drifted" } }
                                                    " "
                                                    @for (i, f) in o.drift.iter().enumerate() {
                                                        @if i > 0 { ", " }
                                                        code.field { (f) }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                @if page.more > 0 {
                    p.muted { "and " (page.more) " more objects" }
                }
                p { a href=(format!("{base}/diff")) { "Show what applying now would change" } }
            }
            section #events data-live {
                h2 { "Events" }
                (events_list(&page.events, false, now))
            }
        },
    )
}

/// A condition's colour by what its status means: True is good for Ready and Healthy, but
/// notable for Reconciling, Stalled and Drifted, whose False is merely quiet.
fn condition_class(type_: &str, status: &str) -> &'static str {
    use crate::status::{DRIFTED, HEALTHY, READY, RECONCILING, STALLED};
    match (type_, status) {
        (READY | HEALTHY, "True") => "ready",
        (READY | HEALTHY, "False") | (STALLED, "True") => "failing",
        (RECONCILING, "True") => "progressing",
        (DRIFTED, "True") => "drifted",
        (_, "Unknown") => "progressing",
        _ => "quiet",
    }
}

/// Objects by namespace, then kind.
fn tree(objects: &[ObjectRow]) -> BTreeMap<&str, BTreeMap<&str, Vec<&ObjectRow>>> {
    let mut tree: BTreeMap<&str, BTreeMap<&str, Vec<&ObjectRow>>> = BTreeMap::new();
    for o in objects {
        tree.entry(&o.namespace)
            .or_default()
            .entry(&o.kind)
            .or_default()
            .push(o);
    }
    tree
}

// ---------------------------------------------------------------- diff

pub fn diff(frame: &Frame, gr: &GitRepository, report: &Result<Vec<ObjectDiff>, String>) -> Markup {
    let shown = |v: &Option<serde_json::Value>| match v {
        None => "(none)".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    layout(
        frame,
        "repos",
        html! {
            p.crumbs { a href="/repos" { "GitRepositories" } " / " a href=(repo_link(gr)) { (gr.namespace().unwrap_or_default()) "/" (gr.name_any()) } }
            h1 { "What applying now would change" }
            @match report {
                Err(e) => { p.banner role="alert" { (e) } }
                Ok(report) => {
                    @let changed: Vec<&ObjectDiff> = report.iter().filter(|d| d.action != Action::Unchanged).collect();
                    p { (changed.len()) " of " (report.len()) " objects would change (a server-side dry run; Secret values are not shown)." }
                    @for d in changed {
                        section.diff {
                            h2 { span class=(format!("badge {}", d.action.as_str())) { (d.action.as_str()) } " " (d.object) }
                            @if let Some(e) = &d.error { p.banner { (e) } }
                            @if !d.changes.is_empty() {
                                div.scroll {
                                    table {
                                        thead { tr { th { "field" } th { "live" } th { "from git" } } }
                                        tbody {
                                            @for c in &d.changes {
                                                tr { td { code { (c.path) } } td.old { code { (shown(&c.live)) } } td.new { code { (shown(&c.desired)) } } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn error(frame: &Frame, message: &str) -> Markup {
    layout(
        frame,
        "",
        html! {
            h1 { "Something went wrong" }
            p.banner role="alert" { (message) }
            p { a href="/" { "Back to the overview" } }
        },
    )
}
