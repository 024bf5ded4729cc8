//! The console's HTML, rendered on the server: whole pages, and the fragments that the
//! event streams send when something changes (the same functions render both, so a
//! page loaded fresh and a page kept live show the same thing).
//!
//! Every value from outside (cluster and node names, reasons, container names, file
//! names) goes through [`esc`]. No inline script or style: the Content-Security-Policy
//! allows neither.

use std::fmt::Write as _;

use crate::store::ClusterState;
use crate::view::timeline::{secs, Timeline};
use crate::view::{ClusterView, NodeView};

pub use crate::view::timeline::esc;

/// The console's version, shown in the footer and used to name the assets.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The stylesheet, the script and the icon, served from the binary.
pub const CSS: &str = include_str!("assets/console.css");
/// The script (progressive enhancement: live updates, focus, announcements).
pub const JS: &str = include_str!("assets/console.js");
/// The icon.
pub const ICON: &str = include_str!("assets/icon.svg");

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The list of clusters and a cluster's pages.
    Clusters,
    /// The create form.
    Create,
    /// Login and error pages outside a session.
    None,
}

/// What every page needs besides its content.
#[derive(Debug, Clone, Copy)]
pub struct Chrome<'a> {
    /// The page's title (before "· Shoal").
    pub title: &'a str,
    /// The session's CSRF token, for the logout form; `None` outside a session.
    pub csrf: Option<&'a str>,
    /// The current navigation entry.
    pub nav: Nav,
}

/// A whole page around `main` (the content of the `<main>` landmark).
pub fn layout(chrome: &Chrome<'_>, main: &str) -> String {
    let mut o = String::with_capacity(main.len() + 2048);
    let _ = write!(
        o,
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="same-origin">
<title>{title} · Shoal</title>
<link rel="icon" href="/console/assets/icon.svg?v={VERSION}" type="image/svg+xml">
<link rel="stylesheet" href="/console/assets/console.css?v={VERSION}">
<script src="/console/assets/console.js?v={VERSION}" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<a class="brand" href="/console/"><img src="/console/assets/icon.svg?v={VERSION}" alt="" width="28" height="28"> Shoal</a>
"##,
        title = esc(chrome.title)
    );
    if let Some(csrf) = chrome.csrf {
        let current = |n: Nav| {
            if n == chrome.nav {
                r#" aria-current="page""#
            } else {
                ""
            }
        };
        let _ = write!(
            o,
            r#"<nav aria-label="Main">
<ul>
<li><a href="/console/"{}>Clusters</a></li>
<li><a href="/console/new"{}>Create a cluster</a></li>
<li><a href="/v1/openapi.json">API (OpenAPI)</a></li>
<li><a href="/metrics">Metrics</a></li>
</ul>
</nav>
<form class="logout" method="post" action="/console/logout">
<input type="hidden" name="csrf" value="{}">
<button type="submit">Log out</button>
</form>
"#,
            current(Nav::Clusters),
            current(Nav::Create),
            esc(csrf)
        );
    }
    let _ = write!(
        o,
        r#"</header>
<main id="main" tabindex="-1">
{main}
</main>
<footer><p>Shoal {VERSION} · served by this coordinator; nothing is loaded from elsewhere.</p></footer>
<div id="announce" class="visually-hidden" role="status" aria-live="polite" aria-atomic="true"></div>
</body>
</html>
"#
    );
    o
}

/// The login page; `error` after a refused token.
pub fn login(error: Option<&str>) -> String {
    let mut main = String::from("<h1>Log in to Shoal</h1>\n");
    if let Some(e) = error {
        let _ = writeln!(
            main,
            r#"<p class="error" role="alert" id="login-error">{}</p>"#,
            esc(e)
        );
    }
    let described = if error.is_some() {
        "token-hint login-error"
    } else {
        "token-hint"
    };
    let _ = write!(
        main,
        r#"<form class="card" method="post" action="/console/login">
<div class="field">
<label for="token">Operator token</label>
<input id="token" name="token" type="password" required autocomplete="current-password" spellcheck="false" autofocus aria-describedby="{described}"{invalid}>
<p class="hint" id="token-hint">The token is in the coordinator's state directory: <code>cat /var/lib/shoal/token</code> (or <code>&lt;--state-dir&gt;/token</code>). The console keeps a session cookie instead of the token.</p>
</div>
<button type="submit">Log in</button>
</form>
"#,
        invalid = if error.is_some() {
            r#" aria-invalid="true""#
        } else {
            ""
        }
    );
    layout(
        &Chrome {
            title: "Log in",
            csrf: None,
            nav: Nav::None,
        },
        &main,
    )
}

/// An error page: what went wrong and where to go.
pub fn error(chrome: &Chrome<'_>, heading: &str, message: &str, back: (&str, &str)) -> String {
    let main = format!(
        r#"<h1>{}</h1>
<p class="error" role="alert">{}</p>
<p><a href="{}">{}</a></p>
"#,
        esc(heading),
        esc(message),
        esc(back.0),
        esc(back.1)
    );
    layout(chrome, &main)
}

fn state_badge(state: ClusterState) -> String {
    format!(
        r#"<span class="state s-{}">{}</span>"#,
        state.as_str().to_ascii_lowercase(),
        state.as_str()
    )
}

/// Whether a cluster is on its way somewhere (its page ticks while it is).
pub fn in_flight(state: ClusterState) -> bool {
    matches!(
        state,
        ClusterState::Requested
            | ClusterState::Creating
            | ClusterState::Updating
            | ClusterState::Deleting
    )
}

/// A moment, in UTC, as `2026-11-02 10:04:05 UTC`, inside a `<time>`.
fn moment(ms: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) else {
        return "-".into();
    };
    let iso = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    format!(
        r#"<time datetime="{iso}">{} UTC</time>"#,
        iso.replacen('T', " ", 1).trim_end_matches('Z')
    )
}

/// The live part of the list page: every cluster, DELETED ones apart.
pub fn clusters_fragment(clusters: &[ClusterView]) -> String {
    let (live, deleted): (Vec<&ClusterView>, Vec<&ClusterView>) = clusters
        .iter()
        .partition(|c| c.state != ClusterState::Deleted);
    let mut o = String::new();
    if live.is_empty() {
        o.push_str(
            r#"<p class="empty">No clusters yet. <a href="/console/new">Create one</a>.</p>"#,
        );
    } else {
        clusters_table(&mut o, "Clusters", &live);
    }
    if !deleted.is_empty() {
        let _ = write!(
            o,
            r#"<details id="deleted-clusters"><summary id="deleted-clusters-summary">Deleted clusters ({})</summary>"#,
            deleted.len()
        );
        clusters_table(&mut o, "Deleted clusters", &deleted);
        o.push_str("</details>");
    }
    o
}

fn clusters_table(o: &mut String, caption: &str, clusters: &[&ClusterView]) {
    let _ = write!(
        o,
        r#"<table class="clusters cards">
<caption class="visually-hidden">{caption}</caption>
<thead><tr><th scope="col">Name</th><th scope="col">State</th><th scope="col">Provider</th><th scope="col">Nodes</th><th scope="col">Blueprint</th><th scope="col">Requested</th><th scope="col">Time to AVAILABLE</th></tr></thead>
<tbody>
"#
    );
    for c in clusters {
        let name = esc(&c.name);
        let _ = write!(
            o,
            r#"<tr data-name="{name}" data-state="{}">
<th scope="row" data-label="Name"><a id="cluster-link-{name}" href="/console/clusters/{name}">{name}</a></th>
<td data-label="State">{}{}</td>
<td data-label="Provider">{}</td>
<td data-label="Nodes">{}</td>
<td data-label="Blueprint">{}</td>
<td data-label="Requested">{}</td>
<td data-label="Time to AVAILABLE">{}</td>
</tr>
"#,
            c.state.as_str(),
            state_badge(c.state),
            c.reason
                .as_deref()
                .map(|r| format!(r#"<p class="reason">{}</p>"#, esc(r)))
                .unwrap_or_default(),
            esc(&c.provider),
            c.node_count,
            esc(&c.blueprint),
            moment(c.created_ms),
            c.time_to_available_ms
                .map(secs)
                .unwrap_or_else(|| "-".into()),
        );
    }
    o.push_str("</tbody>\n</table>\n");
}

/// The list page.
pub fn clusters_page(csrf: &str, clusters: &[ClusterView]) -> String {
    let main = format!(
        r#"<div class="heading">
<h1>Clusters</h1>
<a class="button" href="/console/new">Create a cluster</a>
</div>
<p class="live-status" data-live-status>Reload the page to see changes.</p>
<div data-live-src="/console/events">
<div data-live="clusters">
{}
</div>
</div>
"#,
        clusters_fragment(clusters)
    );
    layout(
        &Chrome {
            title: "Clusters",
            csrf: Some(csrf),
            nav: Nav::Clusters,
        },
        &main,
    )
}

/// The cluster's facts: state, reason, provider, blueprint, times.
pub fn summary_fragment(c: &ClusterView) -> String {
    let ready = c
        .nodes
        .iter()
        .filter(|n| n.phase == shoal_protocol::Phase::Ready)
        .count();
    let mut o = format!(
        r#"<dl class="facts" data-name="{}" data-state="{}">
<div><dt>State</dt><dd>{}</dd></div>
"#,
        esc(&c.name),
        c.state.as_str(),
        state_badge(c.state)
    );
    if let Some(r) = &c.reason {
        let _ = writeln!(
            o,
            r#"<div class="wide"><dt>Reason</dt><dd class="reason">{}</dd></div>"#,
            esc(r)
        );
    }
    let _ = write!(
        o,
        r#"<div><dt>Nodes ready</dt><dd>{ready} of {}</dd></div>
<div><dt>Provider</dt><dd>{}</dd></div>
<div><dt>Blueprint</dt><dd>{}</dd></div>
<div><dt>Requested</dt><dd>{}</dd></div>
<div><dt>Time to AVAILABLE</dt><dd>{}</dd></div>
<div><dt>Plan generation</dt><dd>{}</dd></div>
<div><dt>Overlay</dt><dd><code>{}</code></dd></div>
<div class="wide"><dt>Metadata URL</dt><dd><code>{}</code></dd></div>
"#,
        c.node_count,
        esc(&c.provider),
        esc(&c.blueprint),
        moment(c.created_ms),
        c.time_to_available_ms
            .map(secs)
            .unwrap_or_else(|| "-".into()),
        c.generation,
        esc(&c.overlay),
        esc(&c.metadata_url),
    );
    if !c.images.is_empty() {
        let images: Vec<String> = c
            .images
            .iter()
            .map(|i| format!("<code>{}</code>", esc(i)))
            .collect();
        let _ = writeln!(
            o,
            r#"<div class="wide"><dt>Images</dt><dd>{}</dd></div>"#,
            images.join(", ")
        );
    }
    if let Some(r) = &c.resources {
        let _ = writeln!(
            o,
            r#"<div class="wide"><dt>Resources</dt><dd>{}</dd></div>"#,
            esc(r)
        );
    }
    o.push_str("</dl>\n");
    o
}

fn containers_cell(n: &NodeView) -> String {
    if n.containers.is_empty() {
        return "-".into();
    }
    let mut o = String::from(r#"<ul class="containers">"#);
    for ct in &n.containers {
        let _ = write!(
            o,
            r#"<li><code>{}</code> <span class="cstate">{}</span>{}<br><span class="muted">{}</span></li>"#,
            esc(&ct.name),
            esc(&ct.state),
            ct.address
                .map(|a| format!(" <code>{a}</code>"))
                .unwrap_or_default(),
            esc(&ct.hostname),
        );
    }
    o.push_str("</ul>");
    o
}

/// The nodes table.
pub fn nodes_fragment(c: &ClusterView) -> String {
    let mut o = String::from(
        r#"<table class="nodes cards">
<caption class="visually-hidden">Nodes</caption>
<thead><tr><th scope="col">Node</th><th scope="col">Phase</th><th scope="col">Address</th><th scope="col">Instance</th><th scope="col">Containers</th><th scope="col">Problem</th><th scope="col">Details</th></tr></thead>
<tbody>
"#,
    );
    for n in &c.nodes {
        let id = esc(&n.id);
        let problem = n
            .error
            .as_ref()
            .map(|e| {
                format!(
                    r#"<span class="reason"><code>{}</code>: {}</span>"#,
                    esc(&e.reason),
                    esc(&e.message)
                )
            })
            .unwrap_or_else(|| "-".into());
        let details = if n.details.is_empty() {
            "-".to_string()
        } else {
            let mut d = format!(
                r#"<details id="node-details-{id}"><summary id="node-details-{id}-summary">Provider details<span class="visually-hidden"> of {id}</span></summary><dl class="kv">"#
            );
            for (k, v) in &n.details {
                let _ = write!(d, "<dt>{}</dt><dd><code>{}</code></dd>", esc(k), esc(v));
            }
            d.push_str("</dl></details>");
            d
        };
        let _ = write!(
            o,
            r#"<tr data-node="{id}" data-phase="{phase}">
<th scope="row" data-label="Node">{id}</th>
<td data-label="Phase"><span class="phase p-{phase}">{phase}</span></td>
<td data-label="Address">{}</td>
<td data-label="Instance">{}</td>
<td data-label="Containers">{}</td>
<td data-label="Problem">{problem}</td>
<td data-label="Details">{details}</td>
</tr>
"#,
            n.private_ip
                .map(|a| format!("<code>{a}</code>"))
                .unwrap_or_else(|| "-".into()),
            n.instance_id
                .as_deref()
                .map(|i| format!("<code>{}</code>", esc(i)))
                .unwrap_or_else(|| "-".into()),
            containers_cell(n),
            phase = n.phase.as_str(),
        );
    }
    o.push_str("</tbody>\n</table>\n");
    o
}

/// The boot timeline: the SVG of `shoal cluster timeline --svg`, and the same numbers
/// as a table for those who do not see the picture.
pub fn timeline_fragment(t: &Timeline) -> String {
    let mut o = format!(
        r#"<figure class="timeline">
<div class="scroll" id="timeline-scroll" tabindex="0" role="group" aria-label="Boot timeline picture; scrolls sideways on narrow screens">
{}</div>
<figcaption>{}. Each bar is a node's boot, a colour per stage; point at a bar for its numbers, or open the table below.</figcaption>
</figure>
<details id="timeline-table"><summary id="timeline-table-summary">The timeline as a table</summary>
<table class="stages">
<caption class="visually-hidden">Boot stages of each node, in seconds since the cluster was requested</caption>
<thead><tr><th scope="col">Node</th><th scope="col">Stage</th><th scope="col">From</th><th scope="col">To</th><th scope="col">Took</th></tr></thead>
<tbody>
"#,
        t.render_svg(),
        esc(&t.title())
    );
    for n in &t.nodes {
        for s in &n.segments {
            let _ = writeln!(
                o,
                "<tr><th scope=\"row\">{}</th><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&n.id),
                s.stage.label(),
                if s.running { " (running)" } else { "" },
                secs(s.start_ms),
                secs(s.end_ms),
                secs(s.duration_ms())
            );
        }
        if let Some(r) = n.ready_ms {
            let _ = writeln!(
                o,
                "<tr><th scope=\"row\">{}</th><td>ready</td><td>{}</td><td></td><td></td></tr>",
                esc(&n.id),
                secs(r)
            );
        }
        if let Some(f) = n.failed_ms {
            let _ = writeln!(
                o,
                "<tr><th scope=\"row\">{}</th><td>failed</td><td>{}</td><td></td><td></td></tr>",
                esc(&n.id),
                secs(f)
            );
        }
    }
    o.push_str("</tbody>\n</table>\n</details>\n");
    o
}

/// What can be done to a cluster from its page. Each action has a confirmation page
/// (`GET /console/clusters/{name}/{action}`) whose form posts to the same path; the
/// console's `act` handler turns the form into the engine's request, and the engine
/// checks it as it checks the API's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `Engine::scale`: a host group's new size, or nodes taken out.
    Scale,
    /// `Engine::repair`: new VMs for lost or failed nodes (or the nodes chosen).
    Repair,
    /// `Engine::delete`.
    Delete,
}

impl Action {
    /// Every action, in the order shown.
    pub const ALL: [Action; 3] = [Action::Scale, Action::Repair, Action::Delete];

    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Scale => "scale",
            Action::Repair => "repair",
            Action::Delete => "delete",
        }
    }

    /// The action named by a path segment.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The button's text.
    pub fn label(self) -> &'static str {
        match self {
            Action::Scale => "Scale",
            Action::Repair => "Repair",
            Action::Delete => "Delete",
        }
    }

    /// Whether the action can be asked for in `state` (the engine has the last word:
    /// a change in flight, or a repair before any plan, is refused there).
    pub fn applies(self, state: ClusterState) -> bool {
        match self {
            Action::Scale => matches!(state, ClusterState::Available | ClusterState::Degraded),
            Action::Repair => matches!(
                state,
                ClusterState::Available | ClusterState::Degraded | ClusterState::Failed
            ),
            Action::Delete => state != ClusterState::Deleted,
        }
    }

    /// What the confirmation page says it will do.
    fn explain(self, name: &str) -> String {
        match self {
            Action::Scale => format!(
                "Scaling {} gives a host group a new number of nodes, or takes out the nodes you tick. New nodes get VMs and join the overlay; the nodes already there keep their containers running. Nodes taken out are drained first (the group's drain hook), then their VMs are deleted. The cluster is UPDATING meanwhile.",
                esc(name)
            ),
            Action::Repair => format!(
                "Repairing {} gives nodes new VMs under the same ids and addresses; the other nodes are not touched. Tick nothing to repair every node that is lost or failed.",
                esc(name)
            ),
            Action::Delete => format!(
                "Deleting {} removes every VM, network and resource it has at its provider. It stays in the list as DELETED. This cannot be undone.",
                esc(name)
            ),
        }
    }

    /// The fields of the action's form, besides the CSRF token: none for delete; a
    /// group and a node count, or nodes to take out, for scale; nodes for repair.
    fn form_fields(self, c: &ClusterView) -> String {
        let node_boxes = |field: &str, legend: &str| {
            let mut o = format!(r#"<fieldset class="choices"><legend>{legend}</legend>"#);
            for n in c.nodes.iter().filter(|n| !n.leaving) {
                let id = esc(&n.id);
                let _ = write!(
                    o,
                    r#"<label><input type="checkbox" name="{field}" value="{id}" id="{field}-{id}"> {id} <span class="muted">({}, {})</span></label>"#,
                    esc(&n.group),
                    n.phase
                );
            }
            o.push_str("</fieldset>\n");
            o
        };
        match self {
            Action::Scale => {
                let mut groups: Vec<(&str, usize)> = Vec::new();
                for n in c.nodes.iter().filter(|n| !n.leaving) {
                    match groups.iter_mut().find(|(g, _)| *g == n.group) {
                        Some((_, count)) => *count += 1,
                        None => groups.push((&n.group, 1)),
                    }
                }
                let options: String = groups
                    .iter()
                    .map(|(g, count)| {
                        format!(
                            r#"<option value="{g}">{g} ({count} now)</option>"#,
                            g = esc(g)
                        )
                    })
                    .collect();
                format!(
                    r#"<div class="field"><label for="scale-group">Host group</label>
<select id="scale-group" name="group">{options}</select></div>
<div class="field"><label for="scale-nodes">Its new number of nodes</label>
<input id="scale-nodes" name="nodes" type="number" min="0" max="{max}" inputmode="numeric"></div>
{boxes}"#,
                    max = shoal_protocol::MAX_NODES,
                    boxes =
                        node_boxes("remove", "Or take out these nodes (leave the number empty)")
                )
            }
            Action::Repair => node_boxes("node", "Nodes to give new VMs"),
            Action::Delete => String::new(),
        }
    }

    fn danger(self) -> bool {
        matches!(self, Action::Delete)
    }
}

/// The cluster's action links.
pub fn actions_fragment(c: &ClusterView) -> String {
    let name = esc(&c.name);
    let links: Vec<String> = Action::ALL
        .into_iter()
        .filter(|a| a.applies(c.state))
        .map(|a| {
            format!(
                r#"<li><a class="button{}" id="action-{}" href="/console/clusters/{name}/{}">{}<span class="visually-hidden"> {name}</span>…</a></li>"#,
                if a.danger() { " danger" } else { "" },
                a.as_str(),
                a.as_str(),
                a.label()
            )
        })
        .collect();
    if links.is_empty() {
        return r#"<p class="muted">Nothing can be done to a deleted cluster; create a new one of the same name.</p>"#.into();
    }
    format!(r#"<ul class="actions">{}</ul>"#, links.join(""))
}

/// A cluster's page.
pub fn cluster_page(csrf: &str, c: &ClusterView, t: &Timeline, notice: Option<&str>) -> String {
    let name = esc(&c.name);
    let notice = notice
        .map(|n| format!(r#"<p class="notice" role="status">{}</p>"#, esc(n)))
        .unwrap_or_default();
    let main = format!(
        r#"<nav aria-label="Breadcrumb" class="crumbs"><a href="/console/">Clusters</a> <span aria-hidden="true">/</span> <span aria-current="page">{name}</span></nav>
<h1>Cluster {name}</h1>
{notice}<p class="live-status" data-live-status>Reload the page to see changes.</p>
<div data-live-src="/console/clusters/{name}/events">
<section aria-labelledby="summary-h">
<h2 id="summary-h" class="visually-hidden">Summary</h2>
<div data-live="summary">
{}</div>
</section>
<section aria-labelledby="actions-h">
<h2 id="actions-h">Actions</h2>
<div data-live="actions">
{}</div>
</section>
<section aria-labelledby="nodes-h">
<h2 id="nodes-h">Nodes</h2>
<div data-live="nodes">
{}</div>
</section>
<section aria-labelledby="timeline-h" id="timeline">
<h2 id="timeline-h">Boot timeline</h2>
<p>The picture <code>shoal cluster timeline {name} --svg FILE</code> draws. <a href="/console/clusters/{name}/timeline.svg" id="timeline-svg-link">Open the SVG<span class="visually-hidden"> of {name}'s boot timeline</span></a></p>
<div data-live="timeline">
{}</div>
</section>
</div>
"#,
        summary_fragment(c),
        actions_fragment(c),
        nodes_fragment(c),
        timeline_fragment(t),
    );
    layout(
        &Chrome {
            title: &format!("Cluster {}", c.name),
            csrf: Some(csrf),
            nav: Nav::Clusters,
        },
        &main,
    )
}

/// An action's confirmation page.
pub fn confirm_page(csrf: &str, c: &ClusterView, action: Action) -> String {
    let name = esc(&c.name);
    let main = format!(
        r#"<nav aria-label="Breadcrumb" class="crumbs"><a href="/console/">Clusters</a> <span aria-hidden="true">/</span> <a href="/console/clusters/{name}">{name}</a> <span aria-hidden="true">/</span> <span aria-current="page">{label}</span></nav>
<h1>{label} cluster {name}?</h1>
<p>{explain}</p>
<form class="card" method="post" action="/console/clusters/{name}/{path}">
<input type="hidden" name="csrf" value="{csrf}">
{fields}<div class="buttons">
<button type="submit" id="confirm"{danger}>{label} {name}</button>
<a href="/console/clusters/{name}">Cancel</a>
</div>
</form>
"#,
        label = action.label(),
        explain = action.explain(&c.name),
        path = action.as_str(),
        csrf = esc(csrf),
        fields = action.form_fields(c),
        danger = if action.danger() {
            r#" class="danger""#
        } else {
            ""
        },
    );
    layout(
        &Chrome {
            title: &format!("{} cluster {}", action.label(), c.name),
            csrf: Some(csrf),
            nav: Nav::Clusters,
        },
        &main,
    )
}

/// What the create form was filled with, to show it again after a refusal.
#[derive(Debug, Clone, Default)]
pub struct CreateValues {
    /// Cluster name.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// Node count, as typed.
    pub nodes: String,
    /// A built-in blueprint's name, or [`UPLOAD`].
    pub blueprint: String,
    /// Region.
    pub region: String,
    /// Machine image.
    pub image: String,
    /// Instance type.
    pub instance_type: String,
    /// Stored credential.
    pub credential: String,
    /// Operator CIDR.
    pub operator_cidr: String,
    /// `key=value` lines.
    pub extra: String,
}

/// The blueprint choice meaning "the uploaded file".
pub const UPLOAD: &str = "upload";

fn text_field(o: &mut String, id: &str, label: &str, value: &str, hint: &str) {
    let _ = write!(
        o,
        r#"<div class="field">
<label for="{id}">{label}</label>
<input id="{id}" name="{id}" type="text" value="{}" autocomplete="off" spellcheck="false"{}>
{}</div>
"#,
        esc(value),
        if hint.is_empty() {
            String::new()
        } else {
            format!(r#" aria-describedby="{id}-hint""#)
        },
        if hint.is_empty() {
            String::new()
        } else {
            format!(r#"<p class="hint" id="{id}-hint">{hint}</p>"#)
        }
    );
}

/// The create form. `providers` are (name, why it cannot be used); `error` after a
/// refusal, with the values given.
pub fn create_page(
    csrf: &str,
    providers: &[(String, Option<String>)],
    built_ins: &[&str],
    v: &CreateValues,
    error: Option<&str>,
) -> String {
    let mut main = String::from("<h1>Create a cluster</h1>\n");
    if let Some(e) = error {
        let _ = writeln!(
            main,
            r#"<div class="error" role="alert" id="form-error" tabindex="-1" data-focus><p><strong>The cluster was not created.</strong> {}</p></div>"#,
            esc(e)
        );
    }
    let _ = write!(
        main,
        r#"<form class="card create" method="post" action="/console/clusters" enctype="multipart/form-data">
<input type="hidden" name="csrf" value="{}">
<div class="field">
<label for="name">Name</label>
<input id="name" name="name" type="text" required maxlength="40" pattern="[a-z0-9]([a-z0-9\-]*[a-z0-9])?" value="{}" autocomplete="off" spellcheck="false" aria-describedby="name-hint">
<p class="hint" id="name-hint">1 to 40 of a–z, 0–9 and “-”, not starting or ending with “-”.</p>
</div>
<fieldset>
<legend>Provider</legend>
"#,
        esc(csrf),
        esc(&v.name)
    );
    // The embedded default (`local`) when it can be used, else the first that can.
    let usable = |n: &str| providers.iter().any(|(p, why)| p == n && why.is_none());
    let chosen = if v.provider.is_empty() {
        if usable("local") {
            "local"
        } else {
            providers
                .iter()
                .find(|(_, why)| why.is_none())
                .map(|(n, _)| n.as_str())
                .unwrap_or("")
        }
    } else {
        v.provider.as_str()
    };
    for (name, why) in providers {
        let n = esc(name);
        let _ = writeln!(
            main,
            r#"<div class="choice"><input type="radio" id="provider-{n}" name="provider" value="{n}"{}{}{}><label for="provider-{n}">{n}</label>{}</div>"#,
            if name == chosen { " checked" } else { "" },
            if why.is_some() { " disabled" } else { "" },
            if why.is_some() {
                format!(r#" aria-describedby="provider-{n}-why""#)
            } else {
                String::new()
            },
            why.as_deref()
                .map(|w| format!(
                    r#"<p class="hint" id="provider-{n}-why">unavailable: {}</p>"#,
                    esc(w)
                ))
                .unwrap_or_default()
        );
    }
    let _ = write!(
        main,
        r#"</fieldset>
<div class="field">
<label for="nodes">Nodes</label>
<input id="nodes" name="nodes" type="number" required min="1" max="{}" value="{}" inputmode="numeric">
</div>
<fieldset>
<legend>Blueprint</legend>
"#,
        shoal_protocol::MAX_NODES,
        esc(if v.nodes.is_empty() { "3" } else { &v.nodes })
    );
    let bp = if v.blueprint.is_empty() {
        crate::blueprint::DEFAULT_BLUEPRINT
    } else {
        v.blueprint.as_str()
    };
    for b in built_ins {
        let b = esc(b);
        let _ = writeln!(
            main,
            r#"<div class="choice"><input type="radio" id="blueprint-{b}" name="blueprint" value="{b}"{}><label for="blueprint-{b}">{b} <span class="muted">(built in)</span></label></div>"#,
            if *b == *bp { " checked" } else { "" }
        );
    }
    let _ = write!(
        main,
        r#"<div class="choice"><input type="radio" id="blueprint-upload" name="blueprint" value="{UPLOAD}"{}><label for="blueprint-upload">a blueprint file (TOML)</label></div>
<div class="field indent">
<label for="blueprint_file">Blueprint file</label>
<input id="blueprint_file" name="blueprint_file" type="file" accept=".toml,text/plain,application/toml" aria-describedby="blueprint-file-hint">
<p class="hint" id="blueprint-file-hint">Used with “a blueprint file”; see <code>coordinator/blueprints/</code> for the format.{}</p>
</div>
</fieldset>
<details id="cloud-settings"{}>
<summary>Cloud settings (AWS, Azure)</summary>
"#,
        if bp == UPLOAD { " checked" } else { "" },
        if error.is_some() && bp == UPLOAD {
            " Choose the file again: browsers do not keep it."
        } else {
            ""
        },
        if [
            &v.region,
            &v.image,
            &v.instance_type,
            &v.credential,
            &v.operator_cidr,
            &v.extra
        ]
        .iter()
        .any(|s| !s.is_empty())
        {
            " open"
        } else {
            ""
        }
    );
    text_field(&mut main, "region", "Region", &v.region, "");
    text_field(
        &mut main,
        "image",
        "Machine image",
        &v.image,
        "An AMI id, or an Azure image reference.",
    );
    text_field(
        &mut main,
        "instance_type",
        "Instance type",
        &v.instance_type,
        "",
    );
    text_field(
        &mut main,
        "credential",
        "Credential",
        &v.credential,
        "A stored credential's name (Azure: <code>shoal credential list</code>).",
    );
    text_field(
        &mut main,
        "operator_cidr",
        "Operator address range",
        &v.operator_cidr,
        "Allowed on the blueprint's published ports, e.g. <code>198.51.100.7/32</code>.",
    );
    let _ = write!(
        main,
        r#"<div class="field">
<label for="extra">Other settings</label>
<textarea id="extra" name="extra" rows="3" spellcheck="false" aria-describedby="extra-hint">{}</textarea>
<p class="hint" id="extra-hint">One <code>key=value</code> a line, as <code>--set</code> takes them (<code>vpc-id=…</code>, <code>ssh-public-key=…</code>).</p>
</div>
</details>
<button type="submit">Create</button>
</form>
"#,
        esc(&v.extra)
    );
    layout(
        &Chrome {
            title: "Create a cluster",
            csrf: Some(csrf),
            nav: Nav::Create,
        },
        &main,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, state: ClusterState) -> ClusterView {
        ClusterView {
            name: name.into(),
            provider: "local".into(),
            state,
            reason: Some("<script>alert(1)</script>".into()),
            generation: 1,
            metadata_url: "https://10.0.0.1:8787".into(),
            node_count: 1,
            blueprint: "demo".into(),
            overlay: "10.240.0.0/16".into(),
            images: vec!["shoal/demo:1".into()],
            created_ms: 1_767_225_600_000,
            time_to_available_ms: None,
            resources: None,
            auto_repair_secs: None,
            nodes: vec![],
            changes: vec![],
            events: vec![],
        }
    }

    #[test]
    fn what_comes_from_outside_is_escaped() {
        let html = clusters_fragment(&[view("demo", ClusterState::Failed)]);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let html = create_page(
            "c\"srf",
            &[
                ("local".into(), None),
                ("aws".into(), Some("<b>no</b>".into())),
            ],
            &["demo"],
            &CreateValues {
                name: "\"><img src=x>".into(),
                ..CreateValues::default()
            },
            Some("<i>bad</i>"),
        );
        for raw in ["<b>no</b>", "<i>bad</i>", "\"><img src=x>", "c\"srf"] {
            assert!(!html.contains(raw), "{raw} unescaped");
        }
        assert!(html.contains(r#"id="provider-aws" name="provider" value="aws" disabled"#));
        assert!(html.contains(r#"id="provider-local" name="provider" value="local" checked"#));
    }

    #[test]
    fn deleted_clusters_are_listed_apart() {
        let html = clusters_fragment(&[
            view("a", ClusterState::Available),
            view("b", ClusterState::Deleted),
        ]);
        let (live, deleted) = html.split_once("deleted-clusters").expect("both parts");
        assert!(live.contains(r#"data-name="a""#) && !live.contains(r#"data-name="b""#));
        assert!(deleted.contains(r#"data-name="b""#));
        assert!(clusters_fragment(&[]).contains("No clusters yet"));
    }

    #[test]
    fn moments_are_utc() {
        assert_eq!(
            moment(1_767_225_600_000),
            r#"<time datetime="2026-01-01T00:00:00Z">2026-01-01 00:00:00 UTC</time>"#
        );
    }

    #[test]
    fn actions_parse_from_their_paths_and_apply_by_state() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("explode"), None);
        assert!(Action::Delete.applies(ClusterState::Failed));
        assert!(!Action::Delete.applies(ClusterState::Deleted));
        assert!(actions_fragment(&view("x", ClusterState::Deleted)).contains("Nothing can be done"));
    }
}
