//! The operator's recipes ([`NodePlan::recipes`]): shell scripts run as root on the VM
//! (for a local VM, in its network namespace, where the agent itself runs).
//!
//! A recipe runs once per plan generation: its latest outcome is kept as a marker in
//! the agent's state directory (`recipes/NAME.json`), so a restarted agent neither runs
//! it again for a generation it already ran nor forgets what it reported. One with
//! `every_boot` runs, besides, at the first convergence of every agent process (every
//! boot). Pre-containers recipes run in the convergence, before the containers, and a
//! failure fails the node; post-ready ones run in a task of their own once the node is
//! ready, so that a long one holds up neither convergence nor liveness reports.
//!
//! A recipe's whole output (stdout and stderr together) is kept in `recipes/NAME.log`
//! (mode 0600: a script may print a secret); its end goes into the report.
//!
//! [`NodePlan::recipes`]: shoal_protocol::NodePlan::recipes

use std::collections::{BTreeMap, HashSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use shoal_protocol::{Plan, RecipePlan, RecipeReport, RecipeWhen, MAX_RECIPE_OUTPUT};
use tokio::sync::mpsc;

use crate::peer_drain::tail;

/// The shell recipes run with.
const SHELL: &str = "/bin/sh";

/// What is known of this node's recipes: the latest outcome of each (loaded from the
/// markers at start), those running, and those already run by this process.
#[derive(Debug)]
pub struct Recipes {
    dir: PathBuf,
    done: BTreeMap<String, RecipeReport>,
    running: HashSet<String>,
    this_boot: HashSet<String>,
    tx: mpsc::Sender<RecipeReport>,
}

/// What a recipe is run with besides its script: the plan's names, as environment.
#[derive(Debug, Clone)]
pub struct Context {
    /// The cluster.
    pub cluster: String,
    /// This node.
    pub node: String,
    /// The plan generation it runs for.
    pub generation: u64,
}

impl Recipes {
    /// The recipes' state under `state_dir`, with the outcomes earlier processes
    /// recorded; post-ready outcomes arrive on the returned receiver, to be handed to
    /// [`Recipes::finished`].
    pub fn load(state_dir: &Path) -> (Recipes, mpsc::Receiver<RecipeReport>) {
        let dir = state_dir.join("recipes");
        let mut done = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                match std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<RecipeReport>(&b).ok())
                {
                    Some(r) => {
                        done.insert(r.name.clone(), r);
                    }
                    None => {
                        tracing::warn!(path = %path.display(), "unreadable recipe marker; the recipe runs again")
                    }
                }
            }
        }
        let (tx, rx) = mpsc::channel(16);
        (
            Recipes {
                dir,
                done,
                running: HashSet::new(),
                this_boot: HashSet::new(),
                tx,
            },
            rx,
        )
    }

    /// The outcomes to report: those of the recipes `plan` gives node `node_id` (or of
    /// every recipe known, without a plan).
    pub fn reports(&self, plan: Option<&Plan>, node_id: &str) -> Vec<RecipeReport> {
        let wanted = plan.and_then(|p| p.node(node_id)).map(|n| &n.recipes);
        self.done
            .values()
            .filter(|r| wanted.is_none_or(|w| w.iter().any(|p| p.name == r.name)))
            .cloned()
            .collect()
    }

    /// Whether recipe `r` is due for generation `g`: not yet run for it (successfully,
    /// for a pre-containers one), or an every-boot recipe this process has not run.
    fn due(&self, r: &RecipePlan, g: u64) -> bool {
        if self.running.contains(&r.name) {
            return false;
        }
        if r.every_boot && !self.this_boot.contains(&r.name) {
            return true;
        }
        match self.done.get(&r.name) {
            None => true,
            Some(d) => d.generation < g || (r.when == RecipeWhen::PreContainers && !d.ok),
        }
    }

    /// The recipes of `when` that `plan` gives node `node_id` and that are due.
    pub fn due_now(&self, plan: &Plan, node_id: &str, when: RecipeWhen) -> Vec<RecipePlan> {
        plan.node(node_id)
            .map(|n| {
                n.recipes
                    .iter()
                    .filter(|r| r.when == when && self.due(r, plan.generation))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs the due recipes of `when` in order and waits for each. A failed
    /// pre-containers recipe stops the rest and is returned; post-ready ones all run.
    pub async fn run_due(
        &mut self,
        plan: &Plan,
        node_id: &str,
        when: RecipeWhen,
    ) -> Result<(), RecipeReport> {
        let ctx = Context {
            cluster: plan.cluster.clone(),
            node: node_id.to_string(),
            generation: plan.generation,
        };
        for r in self.due_now(plan, node_id, when) {
            let report = run(&self.dir, &r, &ctx).await;
            let failed = !report.ok && when == RecipeWhen::PreContainers;
            self.finished(report.clone());
            if failed {
                return Err(report);
            }
        }
        Ok(())
    }

    /// Starts the due post-ready recipes, in one task that runs them in order; their
    /// outcomes arrive on the receiver.
    pub fn start_post_ready(&mut self, plan: &Plan, node_id: &str) {
        let due = self.due_now(plan, node_id, RecipeWhen::PostReady);
        if due.is_empty() {
            return;
        }
        let ctx = Context {
            cluster: plan.cluster.clone(),
            node: node_id.to_string(),
            generation: plan.generation,
        };
        for r in &due {
            self.running.insert(r.name.clone());
        }
        let (dir, tx) = (self.dir.clone(), self.tx.clone());
        tokio::spawn(async move {
            for r in due {
                let report = run(&dir, &r, &ctx).await;
                if tx.send(report).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Records a recipe's outcome: in memory, and as its marker.
    pub fn finished(&mut self, r: RecipeReport) {
        self.running.remove(&r.name);
        self.this_boot.insert(r.name.clone());
        if let Err(e) = write_marker(&self.dir, &r) {
            tracing::warn!(recipe = %r.name, error = %e, "cannot write the recipe's marker; it runs again after a restart");
        }
        self.done.insert(r.name.clone(), r);
    }
}

/// The marker of `r`, written atomically (temporary file, rename).
fn write_marker(dir: &Path, r: &RecipeReport) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{}.json.tmp", r.name));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(format!("{}.json", r.name)))
}

/// Runs one recipe to its end or its timeout (then its whole process group is killed).
pub async fn run(dir: &Path, r: &RecipePlan, ctx: &Context) -> RecipeReport {
    let started = Instant::now();
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tracing::info!(recipe = %r.name, when = %r.when, timeout_secs = r.timeout_secs, "running a recipe");
    let (exit_code, problem) = match spawn_and_wait(dir, r, ctx).await {
        Ok(Some(0)) => (Some(0), None),
        Ok(Some(code)) => (Some(code), Some(format!("exited with code {code}"))),
        Ok(None) => (
            None,
            Some(format!(
                "did not finish within {}s and was killed",
                r.timeout_secs
            )),
        ),
        Err(e) => (None, Some(format!("could not be run: {e}"))),
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    let output = read_tail(&dir.join(format!("{}.log", r.name)));
    let ok = problem.is_none();
    if ok {
        tracing::info!(recipe = %r.name, ms = duration_ms, "recipe succeeded");
    } else {
        tracing::warn!(recipe = %r.name, ms = duration_ms, problem = problem.as_deref().unwrap_or(""), "recipe failed");
    }
    let output = match problem {
        Some(p) if output.is_empty() => p,
        _ => output,
    };
    RecipeReport {
        name: r.name.clone(),
        when: r.when,
        generation: ctx.generation,
        exit_code,
        ok,
        started_ms,
        duration_ms,
        output,
    }
}

/// The exit code, or `None` when the recipe ran past its timeout (or was killed by a
/// signal).
async fn spawn_and_wait(dir: &Path, r: &RecipePlan, ctx: &Context) -> std::io::Result<Option<i32>> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(format!("{}.log", r.name)))?;
    let mut child = tokio::process::Command::new(SHELL)
        .arg("-c")
        .arg(&r.script)
        .current_dir(dir)
        .env("SHOAL_CLUSTER", &ctx.cluster)
        .env("SHOAL_NODE", &ctx.node)
        .env("SHOAL_GENERATION", ctx.generation.to_string())
        .env("SHOAL_RECIPE", &r.name)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, so that a timeout kills whatever it started too.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()?;
    let pid = child.id();
    match tokio::time::timeout(Duration::from_secs(r.timeout_secs), child.wait()).await {
        Ok(status) => Ok(status?.code()),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.wait().await;
            Ok(None)
        }
    }
}

/// The end of a recipe's log, at most [`MAX_RECIPE_OUTPUT`] bytes.
fn read_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    // A little more than the limit, so that a character cut at the start is dropped
    // by `tail` rather than shown broken.
    let want = (MAX_RECIPE_OUTPUT + 8) as u64;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > want && f.seek(SeekFrom::Start(len - want)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if f.take(want).read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    tail(
        String::from_utf8_lossy(&bytes).into_owned(),
        MAX_RECIPE_OUTPUT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(name: &str, script: &str, timeout_secs: u64) -> RecipePlan {
        RecipePlan {
            name: name.into(),
            when: RecipeWhen::PreContainers,
            script: script.into(),
            timeout_secs,
            every_boot: false,
        }
    }

    fn ctx() -> Context {
        Context {
            cluster: "c".into(),
            node: "node-0".into(),
            generation: 3,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-recipes-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn a_recipe_reports_its_exit_code_and_the_end_of_its_output() {
        let dir = temp_dir("exit");
        let r = run(
            &dir,
            &recipe(
                "x",
                "echo out $SHOAL_NODE $SHOAL_GENERATION; echo err >&2; exit 4",
                10,
            ),
            &ctx(),
        )
        .await;
        assert!(!r.ok);
        assert_eq!(r.exit_code, Some(4));
        assert!(
            r.output.contains("out node-0 3") && r.output.contains("err"),
            "{r:?}"
        );
        let long = run(
            &dir,
            &recipe("y", "yes line | head -c 100000; echo the-end", 10),
            &ctx(),
        )
        .await;
        assert!(long.ok, "{long:?}");
        assert!(long.output.ends_with("the-end\n") && long.output.len() <= MAX_RECIPE_OUTPUT + 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_recipe_past_its_timeout_is_killed_with_what_it_started() {
        let dir = temp_dir("timeout");
        let started = Instant::now();
        // The background sleep holds the log open: only killing the group ends it.
        let r = run(
            &dir,
            &recipe("slow", "sleep 30 & echo started; sleep 30", 1),
            &ctx(),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(!r.ok && r.exit_code.is_none(), "{r:?}");
        assert!(r.output.contains("started"), "{r:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_recipe_runs_once_per_generation_and_its_marker_survives_a_restart() {
        let dir = temp_dir("marker");
        let mut plan_recipe = recipe("once", "echo ran >> count", 10);
        let (mut rs, _rx) = Recipes::load(&dir);
        assert!(rs.due(&plan_recipe, 3));
        let report = run(&rs.dir.clone(), &plan_recipe, &ctx()).await;
        rs.finished(report);
        assert!(!rs.due(&plan_recipe, 3), "ran for generation 3");
        assert!(rs.due(&plan_recipe, 4), "a newer generation runs it again");
        // A new process (a reboot) reads the marker back.
        let (again, _rx) = Recipes::load(&dir);
        assert!(!again.due(&plan_recipe, 3));
        assert_eq!(again.reports(None, "node-0").len(), 1);
        plan_recipe.every_boot = true;
        assert!(again.due(&plan_recipe, 3), "every boot: once per process");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
