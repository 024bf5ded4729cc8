//! Liveness: a ready node's readiness probes, kept up.
//!
//! Once the node has converged and reported `ready`, [`Liveness::start`] gives every
//! container with a probe ([`shoal_protocol::ProbePlan`]) one task that tries the same
//! probe again every [`ProbePlan::live_interval`] (the probe's interval bounded to
//! 1–10 s unless the plan says otherwise; never for a probe whose `live_interval_ms`
//! is 0), each try bounded by the probe's timeout. A [`Streak`] counts the failed tries
//! in a row: at [`ProbePlan::failure_threshold`] (3 by default) the container is
//! failing and the resident loop reports the node `unhealthy` (`probe-failed`, the
//! message naming the container, the probe and what the last try said); one try that
//! passes makes it passing again and the node `ready`. Only these changes reach the
//! loop, so the coordinator hears nothing more while the verdict stands.
//!
//! What it does not do: restart the container (its restart policy is the blueprint's
//! business), or count a failed try while the container does not run (it exited, or
//! Docker does not answer): Docker's own watch reports that (`container-exited`,
//! `dockerd-down`) and converges. The loop stops the tasks ([`Liveness::stop`]) while
//! the node converges again (a new plan, the engine down, the overlay rebuilt) and
//! starts them afresh once it is converged; what was failing stays failing across
//! that, unless the convergence ran the readiness probes again and they passed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use shoal_protocol::{Plan, ProbePlan};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::{containers, probes};

/// Where one container's liveness stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The probe passes (or has not failed often enough to say otherwise).
    Passing,
    /// The probe failed its threshold of tries in a row and has not passed since.
    Failing,
    /// The probe changed with a new plan while its container kept running (a
    /// condition on the cluster, such as a DataNode count that a scale raised): it has
    /// not passed in its new form yet, and failures count only from `until` on (the
    /// probe's deadline).
    Pending {
        /// When failures start to count.
        until: Instant,
    },
}

/// A change of a container's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It just became failing.
    Failing,
    /// It passed after failing.
    Passing,
}

/// Failed tries in a row against a threshold: the verdict changes only when the
/// threshold is reached (failing) or a try passes after it (passing).
#[derive(Debug, Clone)]
pub struct Streak {
    threshold: u32,
    failed: u32,
    standing: Standing,
}

impl Streak {
    /// A streak that calls a container failing after `threshold` failed tries in a row
    /// (at least 1), starting from `standing`.
    pub fn new(threshold: u32, standing: Standing) -> Streak {
        Streak {
            threshold: threshold.max(1),
            failed: 0,
            standing,
        }
    }

    /// Counts one try made at `now`; returns the change of verdict it makes, if any.
    pub fn record(&mut self, passed: bool, now: Instant) -> Option<Change> {
        if passed {
            self.failed = 0;
            let was = std::mem::replace(&mut self.standing, Standing::Passing);
            return (was == Standing::Failing).then_some(Change::Passing);
        }
        self.failed = self.failed.saturating_add(1);
        let counts = match self.standing {
            Standing::Passing => true,
            Standing::Pending { until } => now >= until,
            Standing::Failing => false,
        };
        if counts && self.failed >= self.threshold {
            self.standing = Standing::Failing;
            return Some(Change::Failing);
        }
        None
    }

    /// Failed tries in a row so far.
    pub fn failed(&self) -> u32 {
        self.failed
    }

    /// Where it stands.
    pub fn standing(&self) -> Standing {
        self.standing
    }
}

/// A change of verdict, sent by a container's task to the resident loop.
#[derive(Debug)]
pub struct Signal {
    /// Which [`Liveness::start`] started the task (signals of stopped tasks are stale).
    epoch: u64,
    /// The Docker container name.
    container: String,
    /// The error to report when it became failing; `None` when it passes again.
    failing: Option<String>,
}

/// The liveness tasks of the node's containers, and what is failing.
#[derive(Debug)]
pub struct Liveness {
    tx: mpsc::Sender<Signal>,
    epoch: u64,
    tasks: Vec<AbortHandle>,
    /// The probe each container's task ran the last time, and how it stood then.
    known: BTreeMap<String, (ProbePlan, Standing)>,
    /// Failing containers and the error each one's task reported.
    failing: BTreeMap<String, String>,
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Liveness {
    /// No tasks yet; the loop reads their signals from the receiver.
    pub fn new() -> (Liveness, mpsc::Receiver<Signal>) {
        // A signal is sent only when a container's verdict changes, so a few suffice;
        // a task whose send would block waits (it has nothing else to do).
        let (tx, rx) = mpsc::channel(16);
        let live = Liveness {
            tx,
            epoch: 0,
            tasks: Vec::new(),
            known: BTreeMap::new(),
            failing: BTreeMap::new(),
        };
        (live, rx)
    }

    /// Stops every task (the node converges again, or the engine went away); what is
    /// failing stays so.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.epoch += 1;
    }

    /// Starts one task per probed container of node `node_id` once it has converged on
    /// `plan`. `probed`: the convergence ran every readiness probe again and they
    /// passed, so nothing is failing any more.
    pub fn start(&mut self, docker: &Docker, plan: &Plan, node_id: &str, probed: bool) {
        self.stop();
        if probed {
            self.failing.clear();
        }
        let Some(node) = plan.node(node_id) else {
            self.known.clear();
            self.failing.clear();
            return;
        };
        let shared = Arc::new(plan.clone());
        let http = probes::http_client();
        let now = Instant::now();
        let mut known = BTreeMap::new();
        for (index, c) in node.containers.iter().enumerate() {
            let Some(p) = c.ready.as_ref() else { continue };
            let Some(every) = p.live_interval() else {
                continue;
            };
            let name = c.docker_name().to_string();
            let standing = if self.failing.contains_key(&name) {
                Standing::Failing
            } else if probed {
                Standing::Passing
            } else {
                match self.known.get(&name) {
                    Some((before, standing)) if before == p => *standing,
                    // First seen without having been probed (the agent restarted on a
                    // converged node), or changed by the plan: give it its deadline.
                    _ => Standing::Pending {
                        until: now + Duration::from_millis(p.deadline_ms),
                    },
                }
            };
            let task = Task {
                docker: docker.clone(),
                http: http.clone(),
                plan: shared.clone(),
                node_ip: node.private_ip,
                node_id: node_id.to_string(),
                index,
                every,
                name: name.clone(),
                epoch: self.epoch,
                tx: self.tx.clone(),
            };
            let streak = Streak::new(p.failure_threshold(), standing);
            self.tasks
                .push(tokio::spawn(task.run(streak)).abort_handle());
            known.insert(name, (p.clone(), standing));
        }
        self.failing.retain(|name, _| known.contains_key(name));
        self.known = known;
    }

    /// Takes in a task's signal; returns whether what the node should report changed.
    pub fn accept(&mut self, s: Signal) -> bool {
        if s.epoch != self.epoch {
            return false;
        }
        let before = self.verdict().map(|(c, m)| (c.to_string(), m.to_string()));
        match s.failing {
            Some(message) => {
                self.failing.insert(s.container.clone(), message);
                if let Some((_, standing)) = self.known.get_mut(&s.container) {
                    *standing = Standing::Failing;
                }
            }
            None => {
                self.failing.remove(&s.container);
                if let Some((_, standing)) = self.known.get_mut(&s.container) {
                    *standing = Standing::Passing;
                }
            }
        }
        let after = self.verdict().map(|(c, m)| (c.to_string(), m.to_string()));
        before != after
    }

    /// The failing container the node reports (the first by name) and its error;
    /// `None` when every probe passes.
    pub fn verdict(&self) -> Option<(&str, &str)> {
        self.failing
            .iter()
            .next()
            .map(|(c, m)| (c.as_str(), m.as_str()))
    }
}

/// What one container's liveness task needs.
struct Task {
    docker: Docker,
    http: reqwest::Client,
    plan: Arc<Plan>,
    node_ip: std::net::Ipv4Addr,
    node_id: String,
    /// The container's place in the node's list.
    index: usize,
    every: Duration,
    name: String,
    epoch: u64,
    tx: mpsc::Sender<Signal>,
}

impl Task {
    async fn run(self, mut streak: Streak) {
        let Some(c) = self
            .plan
            .node(&self.node_id)
            .and_then(|n| n.containers.get(self.index))
        else {
            return;
        };
        let Some(p) = c.ready.as_ref() else { return };
        // The readiness probe has just passed: the first try is one interval later.
        let mut next = tokio::time::Instant::now() + self.every;
        loop {
            tokio::time::sleep_until(next).await;
            let begun = tokio::time::Instant::now();
            // Start to start, as readiness tries; a try longer than the interval is
            // followed by the next at once.
            next = begun + self.every;
            let outcome =
                probes::try_bounded(&self.docker, &self.http, &self.plan, self.node_ip, c, p).await;
            if let Err(last) = &outcome {
                // A container that does not run is not its service failing: Docker's
                // watch reports it (container-exited, dockerd-down) and converges.
                match containers::current(&self.docker, &self.name).await {
                    Ok(Some((_, true))) => {}
                    _ => {
                        tracing::debug!(container = %self.name, %last, "liveness try failed while the container is not running; not counted");
                        continue;
                    }
                }
            }
            let change = streak.record(outcome.is_ok(), Instant::now());
            let failing = match (change, &outcome) {
                (None, Err(last)) => {
                    tracing::debug!(container = %self.name, failed = streak.failed(), %last, "liveness try failed");
                    continue;
                }
                (None, Ok(())) => continue,
                (Some(Change::Failing), Err(last)) => {
                    let e = probes::failing(&self.name, p, streak.failed(), last);
                    tracing::warn!(container = %self.name, probe = %p, tries = streak.failed(), %last, "the probe keeps failing on a ready node");
                    Some(e.to_string())
                }
                (Some(_), _) => {
                    tracing::info!(container = %self.name, probe = %p, "the probe passes again");
                    None
                }
            };
            let signal = Signal {
                epoch: self.epoch,
                container: self.name.clone(),
                failing,
            };
            if self.tx.send(signal).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slow_answer_does_not_flap_the_node() {
        let now = Instant::now();
        let mut s = Streak::new(3, Standing::Passing);
        assert_eq!(s.record(false, now), None);
        assert_eq!(s.record(false, now), None);
        // A pass in between starts the count again.
        assert_eq!(s.record(true, now), None);
        assert_eq!(s.record(false, now), None);
        assert_eq!(s.record(false, now), None);
        assert_eq!(s.standing(), Standing::Passing);
        assert_eq!(s.record(false, now), Some(Change::Failing));
        assert_eq!(s.failed(), 3);
        // Still failing: nothing more to say.
        assert_eq!(s.record(false, now), None);
        assert_eq!(s.record(false, now), None);
        assert_eq!(s.failed(), 5);
        // One pass makes it pass again, once.
        assert_eq!(s.record(true, now), Some(Change::Passing));
        assert_eq!(s.record(true, now), None);
        assert_eq!(s.failed(), 0);
    }

    #[test]
    fn a_threshold_of_one_calls_it_at_the_first_failure() {
        let now = Instant::now();
        let mut s = Streak::new(1, Standing::Passing);
        assert_eq!(s.record(false, now), Some(Change::Failing));
        // 0 is read as 1: a container is never failing without a failed try.
        let mut z = Streak::new(0, Standing::Passing);
        assert_eq!(z.record(true, now), None);
        assert_eq!(z.record(false, now), Some(Change::Failing));
    }

    #[test]
    fn a_container_failing_before_a_convergence_stays_failing_after_it() {
        let now = Instant::now();
        let mut s = Streak::new(3, Standing::Failing);
        assert_eq!(s.record(false, now), None);
        assert_eq!(s.record(true, now), Some(Change::Passing));
    }

    #[test]
    fn a_changed_probe_counts_failures_only_after_its_deadline() {
        let now = Instant::now();
        let until = now + Duration::from_secs(300);
        let mut s = Streak::new(2, Standing::Pending { until });
        for _ in 0..10 {
            assert_eq!(s.record(false, now), None);
        }
        // Past the deadline, the failures so far count.
        assert_eq!(s.record(false, until), Some(Change::Failing));
        // Once it passed, it is an ordinary probe again.
        let mut s = Streak::new(2, Standing::Pending { until });
        assert_eq!(s.record(true, now), None);
        assert_eq!(s.standing(), Standing::Passing);
        assert_eq!(s.record(false, now), None);
        assert_eq!(s.record(false, now), Some(Change::Failing));
    }

    fn signal(epoch: u64, container: &str, failing: Option<&str>) -> Signal {
        Signal {
            epoch,
            container: container.into(),
            failing: failing.map(String::from),
        }
    }

    #[tokio::test]
    async fn only_changes_of_the_reported_verdict_count_and_stale_signals_are_dropped() {
        let (mut live, _rx) = Liveness::new();
        let e = live.epoch;
        assert!(live.accept(signal(e, "b", Some("b fails"))));
        assert_eq!(live.verdict(), Some(("b", "b fails")));
        // "a" sorts first: the message reported changes.
        assert!(live.accept(signal(e, "a", Some("a fails"))));
        assert_eq!(live.verdict(), Some(("a", "a fails")));
        // "b" passing again changes nothing the node reports.
        assert!(!live.accept(signal(e, "b", None)));
        // A task stopped before its signal was read: ignored.
        live.stop();
        assert!(!live.accept(signal(e, "a", None)));
        assert_eq!(live.verdict(), Some(("a", "a fails")));
        assert!(live.accept(signal(live.epoch, "a", None)));
        assert_eq!(live.verdict(), None);
    }
}
