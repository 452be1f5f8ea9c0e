//! What a job's pod says, turned into job events. Sans-I/O: fed Pod snapshots from the watch,
//! it answers with the events to send and the log streams to open, so the rules are tested by
//! feeding it objects.

use std::collections::BTreeMap;
use std::time::SystemTime;

use gantry_core::{JobRequest, Resume, State, StatusCondition, StepKind, StepOutcome};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Pod};

use crate::names;
use crate::render::scripts::{MSG_EXIT, MSG_SKIPPED};

/// Container waiting reasons that do not clear up on their own quickly; after a grace they end
/// the job as `error` with Kubernetes' message.
const STUCK: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Started,
    StepStarted(usize),
    /// The step's container is running (a fresh start or one found on a re-attach), since
    /// when its status says: the step's timeout counts from then.
    StepRunning(usize, Option<SystemTime>),
    /// Open the step's log stream (timestamps; followed unless its container had `ended`).
    OpenLog {
        step: usize,
        ended: bool,
    },
    /// The step's container ended: drain its log, then send this.
    StepFinished(usize, StepOutcome),
    /// A line from Gantry itself into a step's log.
    System(usize, String),
    /// Something keeps the pod from progressing; the job ends as `error` with this reason
    /// unless it clears within the grace.
    Stuck(String),
    /// The pod cannot be scheduled, and the cluster autoscaler is adding a node for it
    /// (`TriggeredScaleUp`, with its message): the job waits beyond the grace, until its
    /// timeout; when that passes, it ends as `error` with `why`.
    ScalingUp {
        why: String,
        autoscaler: String,
    },
    /// End the job as `error` with this reason now (the pod cannot be scheduled and the
    /// cluster autoscaler said it will not add a node: `NotTriggerScaleUp`).
    GiveUp(String),
    Unstuck,
    Finished(State, Option<String>),
}

/// What the cluster autoscaler said about a pod, as an Event on it (reason `TriggeredScaleUp`
/// or `NotTriggerScaleUp`, with its message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScaleUp {
    Triggered(String),
    Declined(String),
}

impl ScaleUp {
    /// From an Event's reason and message; `None` for other reasons.
    pub fn from_event(reason: &str, message: &str) -> Option<Self> {
        match reason {
            "TriggeredScaleUp" => Some(Self::Triggered(message.to_owned())),
            "NotTriggerScaleUp" => Some(Self::Declined(message.to_owned())),
            _ => None,
        }
    }
}

/// What holds the pod up, and how the job treats it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stall {
    None,
    /// Ends the job after the grace unless it clears.
    Grace(String),
    /// Unschedulable while the autoscaler scales up: waits until the job's timeout.
    ScalingUp(String, String),
    /// Unschedulable and the autoscaler will not help: ends the job now.
    Declined(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    Running,
    Done,
}

/// Why the backend itself is ending the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    Cancelled,
    StepTimedOut(usize, String),
    Stuck(String),
}

#[derive(Debug)]
pub(crate) struct Tracker {
    names: Vec<String>,
    /// What each step is: a tool step's container reports more than its exit code.
    kinds: Vec<StepKind>,
    run_if: Vec<StatusCondition>,
    allow_failure: Vec<bool>,
    phases: Vec<Phase>,
    started: bool,
    finished: bool,
    stall: Stall,
    /// A container stuck (image pull, config), as last seen.
    container_stuck: Option<String>,
    /// The scheduler's message while the pod is unschedulable, as last seen.
    unschedulable: Option<String>,
    /// The cluster autoscaler's latest word on the pod, with the time of its Event.
    scale_up: Option<(ScaleUp, Option<SystemTime>)>,
    /// The first failure that fails the job: (state, reason).
    failed: Option<(State, String)>,
    ending: Option<Ending>,
    /// A step was ended by a cancel: the job is cancelled, however the pod itself ends.
    cancelled: bool,
    /// Steps whose start the store holds (an attempt re-attached after a restart): it is not
    /// reported again. (Steps whose end it holds start out done.)
    start_stored: Vec<bool>,
}

impl Tracker {
    pub fn new(job: &JobRequest) -> Self {
        let steps = &job.spec.steps;
        Self {
            names: steps.iter().map(|s| s.name.clone()).collect(),
            kinds: steps.iter().map(|s| s.kind.clone()).collect(),
            run_if: steps.iter().map(|s| s.run_if).collect(),
            allow_failure: steps.iter().map(|s| s.allow_failure).collect(),
            phases: vec![Phase::Waiting; steps.len()],
            started: false,
            finished: false,
            stall: Stall::None,
            container_stuck: None,
            unschedulable: None,
            scale_up: None,
            failed: None,
            ending: None,
            cancelled: false,
            start_stored: vec![false; steps.len()],
        }
    }

    /// A tracker for an attempt picked up after a restart: it reports exactly what `resume`,
    /// what the store holds, lacks. Whatever happened while Gantry was down is reported at the
    /// first look at the pod, in order.
    pub fn resumed(job: &JobRequest, resume: &Resume) -> Self {
        let mut tracker = Self::new(job);
        tracker.started = resume.started;
        for (i, step) in resume.steps.iter().enumerate().take(tracker.phases.len()) {
            if step.state.is_final() {
                tracker.phases[i] = Phase::Done;
                let outcome = StepOutcome {
                    state: step.state,
                    exit_code: step.exit_code,
                    reason: step.reason.clone(),
                    summary: None,
                };
                tracker.record(i, &outcome);
            } else if step.state == State::Running {
                tracker.start_stored[i] = true;
            }
        }
        tracker
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The backend is ending the pod (cancel, a step's timeout, stuck too long).
    pub fn end(&mut self, ending: Ending) {
        self.ending.get_or_insert(ending);
    }

    pub fn observe(&mut self, pod: &Pod) -> Vec<Action> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        let status = pod.status.clone().unwrap_or_default();
        let mut containers: BTreeMap<String, ContainerStatus> = BTreeMap::new();
        for c in status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
        {
            containers.insert(c.name.clone(), c.clone());
        }

        // Stuck: image pulls, missing config, nowhere to schedule.
        let mut stuck = None;
        for c in containers.values() {
            if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
                && let Some(reason) = w.reason.as_deref()
                && STUCK.contains(&reason)
            {
                let message = w.message.clone().unwrap_or_default();
                stuck = Some(format!(
                    "container {} ({}): {reason}: {message}",
                    c.name, c.image
                ));
                break;
            }
        }
        self.container_stuck = stuck;
        self.unschedulable = status
            .conditions
            .iter()
            .flatten()
            .find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .map(|c| c.message.clone().unwrap_or_default());
        out.extend(self.restall());

        // The checkout.
        if let Some(t) = terminated(containers.get(names::CLONE)) {
            if t.exit_code != 0 {
                let message = t.message.clone().unwrap_or_default();
                let reason = format!(
                    "checkout failed: exit code {}{}",
                    t.exit_code,
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", message.trim())
                    }
                );
                out.push(Action::System(0, reason.clone()));
                self.finished = true;
                out.push(Action::Finished(State::Error, Some(reason)));
                return out;
            }
            if !self.started {
                self.started = true;
                out.push(Action::Started);
            }
        }

        // Steps, in order: the kubelet runs them one after another.
        for i in 0..self.phases.len() {
            let status = containers.get(&names::step_container(i));
            let state = status.and_then(|c| c.state.as_ref());
            let running = state.is_some_and(|s| s.running.is_some());
            let done = terminated(status);
            if self.phases[i] == Phase::Waiting && (running || done.is_some()) {
                if !self.started {
                    self.started = true;
                    out.push(Action::Started);
                }
                let skipped =
                    !self.start_stored[i] && !self.run_if[i].admits(self.failed.is_some());
                self.phases[i] = Phase::Running;
                if !skipped {
                    if !self.start_stored[i] {
                        out.push(Action::StepStarted(i));
                    }
                    if done.is_none() {
                        let since = state
                            .and_then(|s| s.running.as_ref())
                            .and_then(|r| r.started_at.as_ref())
                            .map(|t| SystemTime::from(t.0));
                        out.push(Action::StepRunning(i, since));
                    }
                    out.push(Action::OpenLog {
                        step: i,
                        ended: done.is_some(),
                    });
                }
            }
            if self.phases[i] == Phase::Running
                && let Some(t) = done
            {
                self.phases[i] = Phase::Done;
                let mut outcome = outcome(t);
                if let Some(Ending::Cancelled) = self.ending {
                    if outcome.state != State::Success {
                        outcome = cancelled();
                        self.cancelled = true;
                    }
                } else if let Some(Ending::StepTimedOut(s, why)) = &self.ending
                    && *s == i
                {
                    outcome = StepOutcome {
                        state: State::Failure,
                        exit_code: None,
                        reason: Some(why.clone()),
                        summary: None,
                    };
                }
                if matches!(outcome.state, State::Success | State::Failure) {
                    report(&self.kinds[i], t, &mut outcome);
                    if let (StepKind::Kaniko(_), Some(summary)) = (&self.kinds[i], &outcome.summary)
                    {
                        out.push(Action::System(i, summary.clone()));
                    }
                }
                self.record(i, &outcome);
                out.push(Action::StepFinished(i, outcome));
            }
            if self.phases[i] != Phase::Done {
                break;
            }
        }

        let phase = status.phase.as_deref().unwrap_or("Pending");
        if matches!(phase, "Succeeded" | "Failed") {
            let reason = status.reason.clone().unwrap_or_default();
            let message = status.message.clone().unwrap_or_default();
            let over = match reason.as_str() {
                "DeadlineExceeded" => Some((
                    State::Failure,
                    "the job timed out (activeDeadlineSeconds)".to_owned(),
                )),
                "Evicted" => Some((State::Error, format!("the pod was evicted: {message}"))),
                _ => None,
            };
            out.extend(self.finish(over));
        }
        out
    }

    fn record(&mut self, i: usize, outcome: &StepOutcome) {
        if matches!(outcome.state, State::Failure | State::Error)
            && !self.allow_failure[i]
            && self.failed.is_none()
        {
            let reason = outcome.failure_reason(&self.names[i]);
            self.failed = Some((outcome.state, reason));
        }
    }

    /// The cluster autoscaler's word on the pod (an Event on it, at its time). The latest one
    /// counts; it matters only while the pod cannot be scheduled.
    pub fn autoscaler(&mut self, verdict: ScaleUp, at: Option<SystemTime>) -> Vec<Action> {
        if self.finished {
            return Vec::new();
        }
        let newer = match &self.scale_up {
            Some((_, Some(seen))) => at.is_none_or(|at| at >= *seen),
            _ => true,
        };
        if newer {
            self.scale_up = Some((verdict, at));
        }
        self.restall()
    }

    /// What holds the pod up now, and the action when that changed.
    fn restall(&mut self) -> Vec<Action> {
        let stall = if let Some(s) = &self.container_stuck {
            Stall::Grace(s.clone())
        } else if let Some(message) = &self.unschedulable {
            match &self.scale_up {
                Some((ScaleUp::Triggered(m), _)) => Stall::ScalingUp(message.clone(), m.clone()),
                Some((ScaleUp::Declined(m), _)) => Stall::Declined(m.clone()),
                None => Stall::Grace(format!("the pod cannot be scheduled: {message}")),
            }
        } else {
            Stall::None
        };
        let same = std::mem::discriminant(&stall) == std::mem::discriminant(&self.stall);
        let action = match &stall {
            // Still held up the same way: the timer already runs.
            _ if same => None,
            Stall::None => Some(Action::Unstuck),
            Stall::Grace(why) => Some(Action::Stuck(why.clone())),
            Stall::ScalingUp(message, autoscaler) => Some(Action::ScalingUp {
                why: format!(
                    "the pod cannot be scheduled: {message}; the cluster autoscaler's scale-up \
                     did not place it within the job's timeout ({autoscaler})"
                ),
                autoscaler: autoscaler.clone(),
            }),
            Stall::Declined(m) => Some(Action::GiveUp(format!(
                "the pod cannot be scheduled and the cluster autoscaler will not add a node: {m}"
            ))),
        };
        self.stall = stall;
        action.into_iter().collect()
    }

    /// The backend gives up on the attempt before its pod exists (a quota never admitted it):
    /// every step is skipped and the job ends so.
    pub fn abandon(&mut self, state: State, reason: String) -> Vec<Action> {
        if self.finished {
            return Vec::new();
        }
        self.finish(Some((state, reason)))
    }

    /// The pod is gone (deleted by us or by someone else).
    pub fn vanished(&mut self) -> Vec<Action> {
        if self.finished {
            return Vec::new();
        }
        let over = match &self.ending {
            Some(Ending::Cancelled) => (State::Cancelled, "cancelled".to_owned()),
            Some(Ending::Stuck(why)) => (State::Error, why.clone()),
            Some(Ending::StepTimedOut(..)) => (State::Failure, String::new()),
            None => (
                State::Error,
                "the pod was deleted while the job ran".to_owned(),
            ),
        };
        self.finish(Some(over))
    }

    /// Ends every step not over and the job.
    fn finish(&mut self, over: Option<(State, String)>) -> Vec<Action> {
        let mut out = Vec::new();
        for i in 0..self.phases.len() {
            // A step whose start the store holds has started, though not seen yet.
            let phase = match self.phases[i] {
                Phase::Waiting if self.start_stored[i] => Phase::Running,
                phase => phase,
            };
            match phase {
                Phase::Done => {}
                Phase::Running => {
                    let outcome = match &self.ending {
                        Some(Ending::Cancelled) => {
                            self.cancelled = true;
                            cancelled()
                        }
                        Some(Ending::StepTimedOut(s, why)) if *s == i => StepOutcome {
                            state: State::Failure,
                            exit_code: None,
                            reason: Some(why.clone()),
                            summary: None,
                        },
                        _ => StepOutcome {
                            state: over.as_ref().map_or(State::Error, |o| o.0),
                            exit_code: None,
                            reason: over.as_ref().map(|o| o.1.clone()),
                            summary: None,
                        },
                    };
                    self.record(i, &outcome);
                    out.push(Action::StepFinished(i, outcome));
                }
                Phase::Waiting => out.push(Action::StepFinished(
                    i,
                    StepOutcome {
                        state: State::Skipped,
                        exit_code: None,
                        reason: None,
                        summary: None,
                    },
                )),
            }
            self.phases[i] = Phase::Done;
        }
        let (state, reason) = match (over, &self.failed) {
            (Some((State::Cancelled, r)), _) => (State::Cancelled, Some(r)),
            (Some((State::Failure, r)), Some(f)) if r.is_empty() => {
                (State::Failure, Some(f.1.clone()))
            }
            (Some((state, r)), _) => (state, Some(r)),
            // A real kubelet ends a deleted pod's containers (SIGTERM, then SIGKILL) and may
            // report the pod `Failed` or `Succeeded` before it is gone.
            (None, _) if self.cancelled => (State::Cancelled, Some("cancelled".to_owned())),
            (None, Some((state, r))) => (*state, Some(r.clone())),
            (None, None) => (State::Success, None),
        };
        self.finished = true;
        out.push(Action::Finished(state, reason));
        out
    }
}

fn cancelled() -> StepOutcome {
    StepOutcome {
        state: State::Cancelled,
        exit_code: None,
        reason: Some("cancelled".into()),
        summary: None,
    }
}

fn terminated(
    status: Option<&ContainerStatus>,
) -> Option<&k8s_openapi::api::core::v1::ContainerStateTerminated> {
    status
        .and_then(|c| c.state.as_ref())
        .and_then(|s: &ContainerState| s.terminated.as_ref())
}

/// A step's outcome from its container's end: the exit code, or what a guard reported in the
/// termination message; OOM kills said as such.
fn outcome(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> StepOutcome {
    let message = t.message.as_deref().unwrap_or("").trim();
    if t.exit_code == 0 {
        if message == MSG_SKIPPED {
            return StepOutcome {
                state: State::Skipped,
                exit_code: None,
                reason: None,
                summary: None,
            };
        }
        if let Some(code) = message
            .lines()
            .last()
            .and_then(|l| l.trim().strip_prefix(MSG_EXIT))
            .and_then(|c| c.parse::<i32>().ok())
        {
            return StepOutcome {
                state: State::Failure,
                exit_code: Some(code),
                reason: None,
                summary: None,
            };
        }
        return StepOutcome {
            state: State::Success,
            exit_code: Some(0),
            reason: None,
            summary: None,
        };
    }
    let reason = match t.reason.as_deref() {
        Some("OOMKilled") => Some("OOMKilled: the container exceeded its memory limit".to_owned()),
        _ => None,
    };
    StepOutcome {
        state: State::Failure,
        exit_code: Some(t.exit_code),
        reason,
        summary: None,
    }
}

/// What a tool step's container says beyond its exit code, from its termination message: the
/// digest a `kaniko` step pushed (or, when it failed, the executor's last words: the
/// registry's refusal), a `trivy` scan's findings and whether a failure is findings or a
/// scanner error, the commit a `gitops` step pushed.
fn report(
    kind: &StepKind,
    t: &k8s_openapi::api::core::v1::ContainerStateTerminated,
    outcome: &mut StepOutcome,
) {
    let message = t.message.as_deref().unwrap_or("");
    match kind {
        StepKind::Run { .. } => {}
        StepKind::Kaniko(_) => {
            let digest = message.trim();
            if outcome.state == State::Success {
                if digest.starts_with("sha256:") {
                    outcome.summary = Some(format!("pushed digest {digest}"));
                }
            } else if outcome.reason.is_none()
                && let Some(last) = last_words(message)
            {
                outcome.reason = Some(last);
            }
        }
        StepKind::Trivy(step) => gantry_core::trivy::report(step, message, outcome),
        StepKind::Gitops(_) => {
            let said: Vec<&str> = message
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("gitops: "))
                .collect();
            if !said.is_empty() {
                outcome.summary = Some(said.join("\n"));
            }
        }
    }
}

/// The last line of a failed tool's log tail (`FallbackToLogsOnError`) that says something,
/// without the logger's decorations, cut to a sensible length.
fn last_words(message: &str) -> Option<String> {
    let line = message
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with(MSG_EXIT))?;
    let line = line
        .find("msg=")
        .map_or(line, |at| line[at + 4..].trim_matches('"'));
    let mut line = line.to_owned();
    if line.len() > 1000 {
        let mut end = 1000;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gantry_core::{
        Checkout, ForgeKind, JobId, JobSpec, RepoRef, RunId, StepKind, StepResume, StepSpec,
    };

    use super::*;

    fn job(steps: usize) -> JobRequest {
        JobRequest {
            run_id: RunId::new(),
            job_id: JobId::new(),
            attempt: 1,
            checkout: Checkout {
                repo: RepoRef {
                    forge: ForgeKind::Github,
                    full_name: "acme/app".into(),
                    clone_url: "https://example.invalid/acme/app.git".into(),
                    web_url: None,
                    default_branch: None,
                },
                git_ref: "refs/heads/main".into(),
                sha: "0".repeat(40),
            },
            pull_request: None,
            spec: JobSpec {
                steps: (0..steps)
                    .map(|i| StepSpec {
                        name: format!("s{i}"),
                        kind: StepKind::Run {
                            script: "true".into(),
                        },
                        timeout: None,
                        env: BTreeMap::new(),
                        run_if: StatusCondition::Success,
                        allow_failure: false,
                    })
                    .collect(),
                ..JobSpec::default()
            },
            secret_values: BTreeMap::new(),
        }
    }

    #[test]
    fn a_resumed_attempt_whose_pod_is_gone_ends_what_had_started_not_what_had_ended() {
        let resume = Resume {
            started: true,
            steps: vec![
                StepResume {
                    state: State::Success,
                    exit_code: Some(0),
                    ..StepResume::queued()
                },
                StepResume {
                    state: State::Running,
                    ..StepResume::queued()
                },
                StepResume::queued(),
            ],
        };
        let mut tracker = Tracker::resumed(&job(3), &resume);
        let gone = "the pod was deleted while the job ran".to_owned();
        let error = StepOutcome {
            state: State::Error,
            exit_code: None,
            reason: Some(gone.clone()),
            summary: None,
        };
        let skipped = StepOutcome {
            state: State::Skipped,
            exit_code: None,
            reason: None,
            summary: None,
        };
        assert_eq!(
            tracker.vanished(),
            [
                Action::StepFinished(1, error),
                Action::StepFinished(2, skipped),
                Action::Finished(State::Error, Some(gone)),
            ]
        );
    }

    /// Found on the real node: a cancelled job whose pod the kubelet ended (the step killed, the
    /// pod `Failed`) before it was gone was reported as a success.
    #[test]
    fn a_cancelled_job_stays_cancelled_when_the_pod_ends_before_it_is_gone() {
        use k8s_openapi::api::core::v1::{ContainerStateTerminated, PodStatus};
        let mut tracker = Tracker::new(&job(2));
        let ended = |phase: &str| Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                init_container_statuses: Some(vec![ContainerStatus {
                    name: names::step_container(0),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 137,
                            reason: Some("Error".into()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        tracker.end(Ending::Cancelled);
        let actions = tracker.observe(&ended("Failed"));
        assert_eq!(
            actions.last(),
            Some(&Action::Finished(
                State::Cancelled,
                Some("cancelled".into())
            )),
            "{actions:#?}"
        );
        assert!(actions.contains(&Action::StepFinished(0, cancelled())));
        assert!(tracker.vanished().is_empty());
    }

    #[test]
    fn a_running_step_says_since_when_whether_its_start_is_stored_or_not() {
        use k8s_openapi::api::core::v1::{ContainerStateRunning, PodStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let started = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let running = |started_at: Option<Time>| ContainerStatus {
            name: names::step_container(0),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning { started_at }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        };
        let pod = |c: ContainerStatus| Pod {
            status: Some(PodStatus {
                phase: Some("Running".into()),
                container_statuses: Some(vec![c]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let since = Some(SystemTime::from(started));
        let resume = Resume {
            started: true,
            steps: vec![StepResume {
                state: State::Running,
                ..StepResume::queued()
            }],
        };
        let mut resumed = Tracker::resumed(&job(1), &resume);
        assert_eq!(
            resumed.observe(&pod(running(Some(Time(started))))),
            [
                Action::StepRunning(0, since),
                Action::OpenLog {
                    step: 0,
                    ended: false
                },
            ]
        );
        let mut fresh = Tracker::new(&job(1));
        assert_eq!(
            fresh.observe(&pod(running(None))),
            [
                Action::Started,
                Action::StepStarted(0),
                Action::StepRunning(0, None),
                Action::OpenLog {
                    step: 0,
                    ended: false
                },
            ]
        );
    }

    fn unschedulable(message: &str) -> Pod {
        use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
        Pod {
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(message.into()),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn scheduled() -> Pod {
        use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
        Pod {
            status: Some(PodStatus {
                phase: Some("Pending".into()),
                conditions: Some(vec![PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    const NO_NODE: &str =
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.";
    const UP: &str = "pod triggered scale-up: [{ci-pool 0->1 (max: 3)}]";
    const NOT: &str =
        "pod didn't trigger scale-up: 1 node(s) didn't match Pod's node affinity/selector";

    fn at(secs: u64) -> Option<SystemTime> {
        Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }

    #[test]
    fn an_unschedulable_pod_without_the_autoscaler_gets_the_grace_with_the_schedulers_message() {
        let mut t = Tracker::new(&job(1));
        assert_eq!(
            t.observe(&unschedulable(NO_NODE)),
            [Action::Stuck(format!(
                "the pod cannot be scheduled: {NO_NODE}"
            ))]
        );
        // The same again: the timer keeps running.
        assert_eq!(t.observe(&unschedulable(NO_NODE)), []);
        assert_eq!(t.observe(&scheduled()), [Action::Unstuck]);
    }

    #[test]
    fn a_scale_up_waits_beyond_the_grace_and_said_once() {
        let mut t = Tracker::new(&job(1));
        assert!(matches!(
            t.observe(&unschedulable(NO_NODE))[..],
            [Action::Stuck(_)]
        ));
        let actions = t.autoscaler(ScaleUp::Triggered(UP.into()), at(10));
        let [Action::ScalingUp { why, autoscaler }] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(autoscaler, UP);
        assert!(why.contains(NO_NODE) && why.contains(UP), "{why}");
        // Another scale-up Event, the pod seen again: nothing new.
        assert_eq!(t.autoscaler(ScaleUp::Triggered(UP.into()), at(20)), []);
        assert_eq!(t.observe(&unschedulable(NO_NODE)), []);
        // The node came: scheduled.
        assert_eq!(t.observe(&scheduled()), [Action::Unstuck]);
        // A late Event on a scheduled pod changes nothing.
        assert_eq!(t.autoscaler(ScaleUp::Declined(NOT.into()), at(30)), []);
    }

    #[test]
    fn no_scale_up_gives_up_with_the_autoscalers_message() {
        let mut t = Tracker::new(&job(1));
        t.observe(&unschedulable(NO_NODE));
        t.autoscaler(ScaleUp::Triggered(UP.into()), at(10));
        assert_eq!(
            t.autoscaler(ScaleUp::Declined(NOT.into()), at(20)),
            [Action::GiveUp(format!(
                "the pod cannot be scheduled and the cluster autoscaler will not add a node: {NOT}"
            ))]
        );
    }

    #[test]
    fn the_latest_event_counts_and_an_event_before_the_pod_is_seen_is_kept() {
        // A declined verdict older than the scale-up does not undo it.
        let mut t = Tracker::new(&job(1));
        assert_eq!(t.autoscaler(ScaleUp::Triggered(UP.into()), at(20)), []);
        assert_eq!(t.autoscaler(ScaleUp::Declined(NOT.into()), at(10)), []);
        let actions = t.observe(&unschedulable(NO_NODE));
        assert!(
            matches!(actions[..], [Action::ScalingUp { .. }]),
            "{actions:?}"
        );
        // Nor for a pod first seen unschedulable after a NotTriggerScaleUp: it gives up at once.
        let mut t = Tracker::new(&job(1));
        t.autoscaler(ScaleUp::Declined(NOT.into()), at(10));
        let actions = t.observe(&unschedulable(NO_NODE));
        assert!(matches!(actions[..], [Action::GiveUp(_)]), "{actions:?}");
    }
}
