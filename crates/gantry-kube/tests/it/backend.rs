//! The backend against the fake API server: create, watch-driven step transitions, log resume,
//! cancel, GC, re-attach and each error path.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gantry_core::{
    Backend, BackendError, Checkout, JobEvent, JobEventKind, JobId, JobRequest, JobSpec, RepoRef,
    Resume, RunId, State, StatusCondition, StepKind, StepResume, StepSpec, StoredLog,
};
use gantry_engine::Reattach;
use gantry_kube::{
    CloneCredentials, GitCredentials, JobRegistry, KubeBackend, KubeConfig, Timings, names,
};
use tokio::sync::mpsc;

use crate::fake::{self, FakeApi, Fault, LogReply, NS};
use crate::golden::{SHA, repo};

pub fn timings() -> Timings {
    Timings {
        stuck_grace: Duration::from_millis(200),
        cancel_grace: Duration::from_secs(3),
        retention: Duration::ZERO,
        sweep_every: Duration::from_secs(3600),
        orphan_min_age: Duration::ZERO,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        max_attempts: 5,
        request_timeout: Duration::from_millis(300),
        log_drain: Duration::from_millis(300),
    }
}

pub fn config() -> KubeConfig {
    KubeConfig {
        namespace: NS.into(),
        timings: timings(),
        ..KubeConfig::default()
    }
}

fn step(name: &str) -> StepSpec {
    StepSpec {
        name: name.into(),
        kind: StepKind::Run {
            script: format!("echo {name}"),
        },
        timeout: None,
        env: BTreeMap::new(),
        run_if: StatusCondition::Success,
        allow_failure: false,
    }
}

pub fn job(steps: &[&str]) -> JobRequest {
    JobRequest {
        run_id: RunId::new(),
        job_id: JobId::new(),
        attempt: 1,
        checkout: Checkout {
            repo: repo(),
            git_ref: "refs/heads/main".into(),
            sha: SHA.into(),
        },
        pull_request: None,
        spec: JobSpec {
            name: "test".into(),
            image: Some("rust:1.95".into()),
            steps: steps.iter().map(|s| step(s)).collect(),
            ..JobSpec::default()
        },
        secret_values: BTreeMap::new(),
    }
}

struct Token;

#[async_trait]
impl CloneCredentials for Token {
    async fn for_repo(&self, _: &RepoRef) -> Result<Option<GitCredentials>, BackendError> {
        Ok(Some(GitCredentials {
            username: "x-access-token".into(),
            password: gantry_core::Secret::new("t0ken"),
        }))
    }
}

pub struct Harness {
    pub fake: FakeApi,
    pub backend: KubeBackend,
}

pub fn harness(credentials: bool) -> Harness {
    harness_with(FakeApi::default(), credentials)
}

pub fn harness_with(fake: FakeApi, credentials: bool) -> Harness {
    let creds: Option<Arc<dyn CloneCredentials>> = credentials.then(|| Arc::new(Token) as _);
    let backend = KubeBackend::new(fake.client(), config(), creds);
    Harness { fake, backend }
}

/// Receives events until `Finished`, or panics after a while.
pub async fn until_finished(rx: &mut mpsc::Receiver<JobEvent>) -> Vec<JobEventKind> {
    let mut out = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the channel stays open");
        let done = matches!(event.kind, JobEventKind::Finished { .. });
        out.push(event.kind);
        if done {
            return out;
        }
    }
}

/// Receives events until one matches.
async fn until(
    rx: &mut mpsc::Receiver<JobEvent>,
    f: impl Fn(&JobEventKind) -> bool,
) -> Vec<JobEventKind> {
    let mut out = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the channel stays open");
        let done = f(&event.kind);
        out.push(event.kind);
        if done {
            return out;
        }
    }
}

pub fn shape(events: &[JobEventKind]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            JobEventKind::Started => "started".to_owned(),
            JobEventKind::StepStarted { step } => format!("step {step} started"),
            JobEventKind::Log(l) => format!("log {} #{} {}", l.step, l.number, l.text),
            JobEventKind::StepFinished { step, outcome } => format!(
                "step {step} {}{}",
                outcome.state,
                outcome
                    .exit_code
                    .map(|c| format!(" exit {c}"))
                    .unwrap_or_default()
            ),
            JobEventKind::Finished { state, reason } => {
                format!(
                    "finished {state}{}",
                    reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )
            }
        })
        .collect()
}

pub async fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..500 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met in 5 s");
}

/// Drives a pod through clone → steps, each step printing one line, exiting with `codes`.
pub async fn drive(fake: &FakeApi, pod: &str, codes: &[i32]) {
    fake.update(pod, |s| {
        fake::set(s, fake::terminated("clone", 0, None, None), false)
    });
    let last = codes.len() - 1;
    for (i, code) in codes.iter().enumerate() {
        let c = names::step_container(i);
        fake.update(pod, |s| fake::set(s, fake::running(&c), i == last));
        // The log task opens its stream; let the container print and end.
        wait_for(|| {
            (fake
                .log_queries()
                .iter()
                .filter(|q| q.contains(&format!("container={c}")))
                .count()
                > 0)
            .then_some(())
        })
        .await;
        fake.update(pod, |s| {
            fake::set(s, fake::terminated(&c, *code, None, None), i == last)
        });
        if *code != 0 {
            break;
        }
    }
    let failed = codes.iter().any(|c| *c != 0);
    fake.update(pod, |s| {
        s.phase = Some(if failed { "Failed" } else { "Succeeded" }.into())
    });
}

#[tokio::test]
async fn a_job_becomes_one_pod_and_its_steps_follow_the_container_statuses() {
    let h = harness(true);
    let job = job(&["build", "test"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    for (i, line) in ["building", "testing"].iter().enumerate() {
        h.fake.script_log(
            &pod,
            &names::step_container(i),
            LogReply {
                lines: vec![format!("2026-01-01T00:00:0{i}.5Z {line}")],
                hold: true,
            },
        );
    }
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job.clone(), tx).await.unwrap();
    assert_eq!(h.fake.pod_names(), vec![pod.clone()]);
    // The clone credentials: a Secret owned by the pod.
    let secrets = h.fake.secrets();
    assert_eq!(secrets.len(), 1);
    assert_eq!(secrets[0]["metadata"]["name"], format!("{pod}-git"));
    assert_eq!(
        secrets[0]["metadata"]["ownerReferences"][0]["uid"],
        format!("uid-{pod}")
    );
    assert_eq!(secrets[0]["stringData"]["password"], "t0ken");

    drive(&h.fake, &pod, &[0, 3]).await;
    let events = until_finished(&mut rx).await;
    assert_eq!(
        shape(&events),
        [
            "started",
            "step 0 started",
            "log 0 #1 building",
            "step 0 success exit 0",
            "step 1 started",
            "log 1 #1 testing",
            "step 1 failure exit 3",
            "finished failure: step \"test\" failed with exit code 3",
        ]
    );
    // Logs were followed with timestamps, one stream per step.
    let queries = h.fake.log_queries();
    assert_eq!(queries.len(), 2, "{queries:?}");
    assert!(
        queries
            .iter()
            .all(|q| q.contains("follow=true") && q.contains("timestamps=true"))
    );
    assert_eq!(h.fake.count("create pods"), 1);
    assert_eq!(
        h.fake.count("list pods"),
        1,
        "one watch (one list) for all jobs"
    );
    assert_eq!(h.backend.running(), 0);
}

/// Found on the real node: a kubelet ends a follow stream only when it next checks the container,
/// about a second after it ended, so each step's end was reported that much late (on kwok, whose
/// streams never end, only after `log_drain`). Now the container's end (from the watch) stops the
/// follow, and the rest is read without `follow` from the last line's time: nothing lost or
/// repeated, and no wait for the stream. Here the stream never ends and `log_drain` is a minute:
/// the job must still finish within `until_finished`'s 10 s.
#[tokio::test]
async fn a_step_ends_when_its_container_does_not_when_its_log_stream_closes() {
    let fake = FakeApi::default();
    let mut cfg = config();
    cfg.timings.log_drain = Duration::from_secs(60);
    let backend = KubeBackend::new(fake.client(), cfg, None);
    let job = job(&["only"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let c = names::step_container(0);
    fake.linger(&pod, &c);
    fake.script_log(
        &pod,
        &c,
        LogReply {
            lines: vec!["2026-01-01T00:00:01.100Z one".into()],
            hold: true,
        },
    );
    // Read again after the end: the whole log, with a line the follow stream had not carried.
    fake.script_log(
        &pod,
        &c,
        LogReply {
            lines: vec![
                "2026-01-01T00:00:01.100Z one".into(),
                "2026-01-01T00:00:01.300Z two".into(),
            ],
            hold: false,
        },
    );
    let (tx, mut rx) = mpsc::channel(64);
    backend.start(job, tx).await.unwrap();
    fake.update(&pod, |s| {
        fake::set(s, fake::terminated("clone", 0, None, None), false)
    });
    fake.update(&pod, |s| fake::set(s, fake::running(&c), true));
    wait_for(|| (!fake.log_queries().is_empty()).then_some(())).await;
    fake.update(&pod, |s| {
        fake::set(s, fake::terminated(&c, 0, None, None), true);
        s.phase = Some("Succeeded".into());
    });
    let events = until_finished(&mut rx).await;
    assert_eq!(
        shape(&events)[2..],
        [
            "log 0 #1 one",
            "log 0 #2 two",
            "step 0 success exit 0",
            "finished success"
        ]
    );
    let queries = fake.log_queries();
    assert_eq!(queries.len(), 2, "{queries:?}");
    assert!(queries[0].contains("follow=true"), "{}", queries[0]);
    assert!(!queries[1].contains("follow=true"), "{}", queries[1]);
}

#[tokio::test]
async fn a_broken_log_stream_resumes_from_the_last_timestamp_without_duplicates() {
    let h = harness(false);
    let job = job(&["only"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let c = names::step_container(0);
    // First stream: two lines, then the connection ends though the container still runs.
    h.fake.script_log(
        &pod,
        &c,
        LogReply {
            lines: vec![
                "2026-01-01T00:00:01.100Z one".into(),
                "2026-01-01T00:00:01.200Z two".into(),
            ],
            hold: false,
        },
    );
    // The resumed stream starts at the whole second: it repeats both, then goes on.
    h.fake.script_log(
        &pod,
        &c,
        LogReply {
            lines: vec![
                "2026-01-01T00:00:01.100Z one".into(),
                "2026-01-01T00:00:01.200Z two".into(),
                "2026-01-01T00:00:01.200Z two again".into(),
                "2026-01-01T00:00:02Z three".into(),
            ],
            hold: true,
        },
    );
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job, tx).await.unwrap();
    h.fake.update(&pod, |s| {
        fake::set(s, fake::terminated("clone", 0, None, None), false)
    });
    h.fake
        .update(&pod, |s| fake::set(s, fake::running(&c), true));
    wait_for(|| (h.fake.log_queries().len() >= 2).then_some(())).await;
    h.fake.update(&pod, |s| {
        fake::set(s, fake::terminated(&c, 0, None, None), true);
        s.phase = Some("Succeeded".into());
    });
    let events = until_finished(&mut rx).await;
    let logs: Vec<String> = shape(&events)
        .into_iter()
        .filter(|l| l.starts_with("log"))
        .collect();
    assert_eq!(
        logs,
        [
            "log 0 #1 one",
            "log 0 #2 two",
            "log 0 #3 two again",
            "log 0 #4 three"
        ]
    );
    let queries = h.fake.log_queries();
    assert_eq!(queries.len(), 2);
    assert!(!queries[0].contains("sinceTime"));
    // sinceTime has one-second precision: the resumed stream starts at the last line's second.
    assert!(
        queries[1].contains("sinceTime=2026-01-01T00%3A00%3A01Z"),
        "{}",
        queries[1]
    );
}

#[tokio::test]
async fn cancel_deletes_the_pod_and_ends_the_attempt_cancelled() {
    let h = harness(false);
    let job = job(&["long"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job.clone(), tx).await.unwrap();
    h.fake.update(&pod, |s| {
        fake::set(s, fake::terminated("clone", 0, None, None), false)
    });
    h.fake
        .update(&pod, |s| fake::set(s, fake::running("step-0"), true));
    until(&mut rx, |e| matches!(e, JobEventKind::StepStarted { .. })).await;
    h.backend.cancel(job.job_id, job.attempt).await.unwrap();
    let events = until_finished(&mut rx).await;
    assert_eq!(
        shape(&events).last().unwrap(),
        "finished cancelled: cancelled"
    );
    assert!(shape(&events).contains(&"step 0 cancelled".to_owned()));
    let deletes = h.fake.deletes();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert!(
        deletes[0].starts_with(&pod) && deletes[0].contains("\"gracePeriodSeconds\":3"),
        "{deletes:?}"
    );
    // Cancelling again, or an unknown attempt, is not an error.
    h.backend.cancel(job.job_id, job.attempt).await.unwrap();
}

struct Known(Vec<JobId>);

#[async_trait]
impl JobRegistry for Known {
    async fn knows(&self, _: RunId, job: JobId, _: u32) -> bool {
        self.0.contains(&job)
    }
}

fn pod_of(job: &JobRequest, phase: &str) -> k8s_openapi::api::core::v1::Pod {
    let mut pod = gantry_kube::render(
        job,
        &config(),
        &gantry_kube::RenderOptions {
            origin: gantry_kube::PullRequestOrigin::None,
            clone_credentials: false,
        },
    )
    .unwrap()
    .pod;
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some(phase.into()),
        ..Default::default()
    });
    pod
}

#[tokio::test]
async fn the_sweeper_deletes_finished_pods_and_orphans_but_not_known_running_pods() {
    let fake = FakeApi::default();
    let finished = job(&["a"]);
    let orphan = job(&["b"]);
    let known = job(&["c"]);
    for (j, phase) in [
        (&finished, "Succeeded"),
        (&orphan, "Running"),
        (&known, "Running"),
    ] {
        fake.insert(pod_of(j, phase));
    }
    let h = harness_with(fake, false);
    assert!(h.backend.ready().await);
    let mut deleted = h.backend.sweep(&Known(vec![known.job_id])).await;
    deleted.sort();
    let mut expected = vec![
        names::pod_name(finished.job_id, 1),
        names::pod_name(orphan.job_id, 1),
    ];
    expected.sort();
    assert_eq!(deleted, expected);
    assert_eq!(h.fake.pod_names(), vec![names::pod_name(known.job_id, 1)]);
    assert_eq!(
        h.fake.count("list pods"),
        1,
        "the sweeper reads the watch cache"
    );
}

/// What the store holds of a step: its state and, when it has not ended, how many lines of its
/// output are stored, the last written at `last`.
pub fn stored(state: State, lines: u64, last: Option<&str>) -> StepResume {
    let exit_code = state.is_final().then_some(0);
    StepResume {
        state,
        exit_code,
        reason: None,
        log: StoredLog {
            output_lines: lines,
            system_lines: 0,
            last_output_at: last.map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc()),
        },
    }
}

/// A pod of `job` as a restarted Gantry finds it: the checkout done and `steps` set.
fn found(job: &JobRequest, phase: &str, steps: &[(&str, Option<i32>)]) -> FakeApi {
    let fake = FakeApi::default();
    let mut p = pod_of(job, phase);
    let status = p.status.as_mut().unwrap();
    fake::set(status, fake::terminated("clone", 0, None, None), false);
    let last = steps.len() - 1;
    for (i, (name, code)) in steps.iter().enumerate() {
        let c = match code {
            Some(code) => fake::terminated(name, *code, None, None),
            None => fake::running(name),
        };
        fake::set(status, c, i == last);
    }
    fake.insert(p);
    fake
}

#[tokio::test]
async fn after_a_restart_running_attempts_are_picked_up_and_vanished_ones_are_not() {
    let running = job(&["first", "second"]);
    let pod = names::pod_name(running.job_id, 1);
    let fake = found(
        &running,
        "Running",
        &[("step-0", Some(0)), ("step-1", None)],
    );
    fake.script_log(
        &pod,
        "step-1",
        LogReply {
            lines: vec![
                "2026-01-01T00:00:05.000001Z stored before the restart".into(),
                "2026-01-01T00:00:06Z still here".into(),
            ],
            hold: true,
        },
    );
    let h = harness_with(fake, false);

    let (tx, mut rx) = mpsc::channel(64);
    // The store has step 0's end and step 1 running with its first line.
    let resume = Resume {
        started: true,
        steps: vec![
            stored(State::Success, 0, None),
            stored(State::Running, 1, Some("2026-01-01T00:00:05.000001Z")),
        ],
    };
    assert!(
        h.backend
            .reattach(running.clone(), resume, tx.clone())
            .await
            .unwrap()
    );
    let gone = Resume::default();
    assert!(!h.backend.reattach(job(&["gone"]), gone, tx).await.unwrap());
    wait_for(|| (!h.fake.log_queries().is_empty()).then_some(())).await;
    h.fake.update(&pod, |s| {
        fake::set(s, fake::terminated("step-1", 0, None, None), true);
        s.phase = Some("Succeeded".into());
    });
    // The line stored before the restart is not sent again, and no notice is needed.
    assert_eq!(
        shape(&until_finished(&mut rx).await),
        [
            "log 1 #2 still here",
            "step 1 success exit 0",
            "finished success"
        ]
    );
    assert_eq!(h.fake.count("create pods"), 0);
}

#[tokio::test]
async fn a_step_that_ended_while_gantry_was_down_is_reported_with_its_exit_code_and_whole_log() {
    let job = job(&["build", "test"]);
    let pod = names::pod_name(job.job_id, 1);
    // While Gantry was down: step 0 printed one more line and ended, step 1 ran and failed.
    let fake = found(&job, "Failed", &[("step-0", Some(0)), ("step-1", Some(3))]);
    fake.script_log(
        &pod,
        "step-0",
        LogReply {
            lines: vec![
                "2026-01-01T00:00:01.5Z compiling".into(),
                "2026-01-01T00:00:02.5Z compiled".into(),
            ],
            hold: false,
        },
    );
    fake.script_log(
        &pod,
        "step-1",
        LogReply {
            lines: vec!["2026-01-01T00:00:03.5Z testing".into()],
            hold: false,
        },
    );
    let h = harness_with(fake, false);
    let (tx, mut rx) = mpsc::channel(64);
    // The store has the start, step 0 running and its first line.
    let resume = Resume {
        started: true,
        steps: vec![
            stored(State::Running, 1, Some("2026-01-01T00:00:01.5Z")),
            StepResume::queued(),
        ],
    };
    assert!(h.backend.reattach(job.clone(), resume, tx).await.unwrap());
    assert_eq!(
        shape(&until_finished(&mut rx).await),
        [
            "log 0 #2 compiled",
            "step 0 success exit 0",
            "step 1 started",
            "log 1 #1 testing",
            "step 1 failure exit 3",
            "finished failure: step \"test\" failed with exit code 3",
        ]
    );
}

#[tokio::test]
async fn an_attempt_that_started_while_gantry_was_down_is_reported_started() {
    let job = job(&["build"]);
    let pod = names::pod_name(job.job_id, 1);
    let fake = found(&job, "Running", &[("step-0", None)]);
    fake.script_log(
        &pod,
        "step-0",
        LogReply {
            lines: vec!["2026-01-01T00:00:01Z compiling".into()],
            hold: true,
        },
    );
    let h = harness_with(fake, false);
    let (tx, mut rx) = mpsc::channel(64);
    // The store has the attempt pending: the pod was created, nothing more was reported.
    let resume = Resume {
        started: false,
        steps: vec![StepResume::queued()],
    };
    assert!(h.backend.reattach(job.clone(), resume, tx).await.unwrap());
    wait_for(|| (!h.fake.log_queries().is_empty()).then_some(())).await;
    h.fake.update(&pod, |s| {
        fake::set(s, fake::terminated("step-0", 0, None, None), true);
        s.phase = Some("Succeeded".into());
    });
    assert_eq!(
        shape(&until_finished(&mut rx).await),
        [
            "started",
            "step 0 started",
            "log 0 #1 compiling",
            "step 0 success exit 0",
            "finished success"
        ]
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_honouring_retry_after() {
    let h = harness(false);
    h.fake.fault("create pods", Fault::Status(429, 1));
    h.fake.fault("create pods", Fault::Status(503, 0));
    let job = job(&["a"]);
    let (tx, _rx) = mpsc::channel(64);
    let started = tokio::time::Instant::now();
    h.backend.start(job, tx).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(h.fake.count("create pods"), 3);
    assert_eq!(h.fake.pod_names().len(), 1);
}

#[tokio::test]
async fn a_create_that_timed_out_is_looked_up_by_name_and_never_repeated() {
    let h = harness(false);
    h.fake.fault("create pods", Fault::HangAfterApplying);
    let job = job(&["a"]);
    let (tx, _rx) = mpsc::channel(64);
    h.backend.start(job, tx).await.unwrap();
    assert_eq!(h.fake.count("create pods"), 1);
    assert_eq!(h.fake.count("get pods"), 1);
    assert_eq!(h.fake.pod_names().len(), 1);
}

#[tokio::test]
async fn a_conflict_adopts_the_pod_of_the_same_attempt_and_refuses_another() {
    let fake = FakeApi::default();
    let job = job(&["a"]);
    fake.insert(pod_of(&job, "Pending"));
    let h = harness_with(fake, false);
    let (tx, _rx) = mpsc::channel(64);
    h.backend.start(job.clone(), tx).await.unwrap();
    assert_eq!(h.fake.count("create pods"), 1);
    assert_eq!(h.fake.count("get pods"), 1);
    // The same name with another attempt's labels is refused.
    let fake = FakeApi::default();
    let mut other = pod_of(&job, "Pending");
    other
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(names::JOB.into(), JobId::new().to_string());
    fake.insert(other);
    let h = harness_with(fake, false);
    let (tx, _rx) = mpsc::channel(64);
    let err = h.backend.start(job, tx).await.unwrap_err();
    assert!(
        err.to_string().contains("belongs to another job attempt"),
        "{err}"
    );
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let h = harness(false);
    h.fake.fault("create pods", Fault::Status(403, 0));
    let (tx, _rx) = mpsc::channel(64);
    let err = h.backend.start(job(&["a"]), tx).await.unwrap_err();
    assert!(matches!(err, BackendError::Unavailable { .. }), "{err}");
    assert_eq!(h.fake.count("create pods"), 1);
    assert_eq!(h.backend.running(), 0);
}

#[tokio::test]
async fn a_pod_refused_by_a_quota_waits_in_its_own_task_and_runs_once_admitted() {
    let h = harness(false);
    for _ in 0..3 {
        h.fake.fault("create pods", Fault::Quota);
    }
    let job = job(&["a"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    // The start returns at the first refusal: the wait holds up no other job.
    h.backend.start(job, tx).await.unwrap();
    assert_eq!(h.fake.count("create pods"), 1);
    assert!(h.fake.pod(&pod).is_none());
    assert_eq!(h.backend.running(), 1);
    let pod_name = pod.clone();
    let fake = h.fake.clone();
    let run = tokio::spawn(async move {
        wait_for(|| fake.pod(&pod_name)).await;
        drive(&fake, &pod_name, &[0]).await;
    });
    let events = until_finished(&mut rx).await;
    run.await.unwrap();
    let said: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            JobEventKind::Log(l) => Some(l.text.as_str()),
            _ => None,
        })
        .collect();
    let waiting: Vec<&&str> = said
        .iter()
        .filter(|t| t.starts_with("waiting for the namespace's resource quota"))
        .collect();
    assert_eq!(waiting.len(), 1, "said once, not at every retry: {said:?}");
    assert!(waiting[0].contains("exceeded quota: builds"), "{said:?}");
    assert!(
        said.iter()
            .any(|t| t.starts_with("the resource quota admitted the pod"))
    );
    assert_eq!(h.fake.count("create pods"), 4);
    assert_eq!(
        shape(&events).last().map(String::as_str),
        Some("finished success")
    );
}

#[tokio::test]
async fn a_job_waiting_for_a_quota_is_cancelled_cleanly_and_no_pod_is_left() {
    let h = harness(false);
    for _ in 0..1000 {
        h.fake.fault("create pods", Fault::Quota);
    }
    let job = job(&["a", "b"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job.clone(), tx).await.unwrap();
    wait_for(|| (h.fake.count("create pods") >= 2).then_some(())).await;
    h.backend.cancel(job.job_id, job.attempt).await.unwrap();
    let events = shape(&until_finished(&mut rx).await);
    assert_eq!(
        events[events.len() - 3..],
        [
            "step 0 skipped",
            "step 1 skipped",
            "finished cancelled: cancelled"
        ]
    );
    assert!(h.fake.pod(&pod).is_none());
    assert_eq!(h.backend.running(), 0);
    // And it stops trying.
    let creates = h.fake.count("create pods");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.fake.count("create pods"), creates);
}

#[tokio::test]
async fn a_job_waiting_for_a_quota_past_its_timeout_fails() {
    let h = harness(false);
    for _ in 0..1000 {
        h.fake.fault("create pods", Fault::Quota);
    }
    let mut job = job(&["a"]);
    job.spec.timeout = Some(Duration::from_millis(600));
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job, tx).await.unwrap();
    let events = until_finished(&mut rx).await;
    match events.last() {
        Some(JobEventKind::Finished { state, reason }) => {
            assert_eq!(*state, State::Failure);
            let reason = reason.as_deref().unwrap_or_default();
            assert!(
                reason.contains("waiting for the resource quota"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.backend.running(), 0);
}

async fn stuck_with(set: impl Fn(&mut k8s_openapi::api::core::v1::PodStatus)) -> Vec<String> {
    let h = harness(false);
    let job = job(&["a"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job, tx).await.unwrap();
    h.fake.update(&pod, set);
    let events = shape(&until_finished(&mut rx).await);
    assert!(h.fake.pod(&pod).is_none(), "the stuck pod was deleted");
    events
}

#[tokio::test]
async fn image_pull_and_config_errors_end_the_job_after_the_grace() {
    let events = stuck_with(|s| {
        fake::set(s, fake::terminated("clone", 0, None, None), false);
        fake::set(
            s,
            fake::waiting(
                "step-0",
                "ImagePullBackOff",
                "Back-off pulling image \"rust:9\"",
            ),
            true,
        );
    })
    .await;
    assert_eq!(
        events.last().unwrap(),
        "finished error: container step-0 (img): ImagePullBackOff: Back-off pulling image \"rust:9\""
    );
    let events = stuck_with(|s| {
        fake::set(
            s,
            fake::waiting(
                "clone",
                "CreateContainerConfigError",
                "secret \"x\" not found",
            ),
            false,
        );
    })
    .await;
    assert!(
        events
            .last()
            .unwrap()
            .contains("CreateContainerConfigError: secret \"x\" not found")
    );
    let events = stuck_with(|s| {
        s.conditions = Some(vec![k8s_openapi::api::core::v1::PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/3 nodes are available: 3 Insufficient memory.".into()),
            ..Default::default()
        }]);
    })
    .await;
    assert_eq!(
        events.last().unwrap(),
        "finished error: the pod cannot be scheduled: 0/3 nodes are available: 3 Insufficient memory."
    );
}

#[tokio::test]
async fn a_stuck_state_that_clears_within_the_grace_is_forgotten() {
    let h = harness(false);
    let job = job(&["a"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job, tx).await.unwrap();
    h.fake.update(&pod, |s| {
        fake::set(
            s,
            fake::waiting("clone", "CreateContainerConfigError", "secret not found"),
            false,
        )
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drive(&h.fake, &pod, &[0]).await;
    let events = shape(&until_finished(&mut rx).await);
    assert_eq!(events.last().unwrap(), "finished success");
}

#[tokio::test]
async fn oom_kills_and_evictions_are_reported_as_such() {
    let h = harness(false);
    let job = job(&["a"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job, tx).await.unwrap();
    h.fake.update(&pod, |s| {
        fake::set(s, fake::terminated("clone", 0, None, None), false);
        fake::set(
            s,
            fake::terminated("step-0", 137, Some("OOMKilled"), None),
            true,
        );
        s.phase = Some("Failed".into());
    });
    let events = shape(&until_finished(&mut rx).await);
    assert_eq!(
        events.last().unwrap(),
        "finished failure: step \"a\" failed: OOMKilled: the container exceeded its memory limit"
    );

    let job = crate::backend::job(&["a"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job, tx).await.unwrap();
    h.fake.update(&pod, |s| {
        fake::set(s, fake::terminated("clone", 0, None, None), false);
        fake::set(s, fake::running("step-0"), true);
    });
    h.fake.update(&pod, |s| {
        fake::set(
            s,
            fake::terminated("step-0", 137, Some("Error"), None),
            true,
        );
        s.phase = Some("Failed".into());
        s.reason = Some("Evicted".into());
        s.message = Some("The node was low on resource: ephemeral-storage.".into());
    });
    let events = shape(&until_finished(&mut rx).await);
    assert_eq!(
        events.last().unwrap(),
        "finished error: the pod was evicted: The node was low on resource: ephemeral-storage."
    );
}

#[tokio::test]
async fn a_pod_deleted_behind_our_back_ends_the_job_as_error() {
    let h = harness(false);
    let job = job(&["a"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job, tx).await.unwrap();
    h.fake.remove(&pod);
    let events = shape(&until_finished(&mut rx).await);
    assert_eq!(
        events,
        [
            "step 0 skipped",
            "finished error: the pod was deleted while the job ran"
        ]
    );
}

#[tokio::test]
async fn an_expired_watch_relists_and_keeps_following() {
    let h = harness(false);
    let job = job(&["a"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job, tx).await.unwrap();
    assert!(h.backend.ready().await);
    h.fake.expire_watches();
    wait_for(|| (h.fake.count("list pods") >= 2).then_some(())).await;
    drive(&h.fake, &pod, &[0]).await;
    let events = shape(&until_finished(&mut rx).await);
    assert_eq!(events.last().unwrap(), "finished success");
}

#[tokio::test]
async fn a_checkout_failure_ends_the_job_as_error_before_it_starts() {
    let h = harness(false);
    let job = job(&["a"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    h.backend.start(job, tx).await.unwrap();
    h.fake.update(&pod, |s| {
        fake::set(
            s,
            fake::terminated(
                "clone",
                128,
                Some("Error"),
                Some("fatal: couldn't find remote ref"),
            ),
            false,
        );
        s.phase = Some("Failed".into());
    });
    let events = shape(&until_finished(&mut rx).await);
    assert_eq!(
        events,
        [
            "log 0 #1 checkout failed: exit code 128: fatal: couldn't find remote ref",
            "finished error: checkout failed: exit code 128: fatal: couldn't find remote ref",
        ]
    );
}

/// The request budget of the issue, counted at the mock: per job at most 3 requests (create
/// the pod, create its clone Secret, delete the pod when swept) plus one log stream per step,
/// and one list + one watch for all jobs together. Prints the table the bench docs quote.
#[tokio::test]
async fn requests_per_job_stay_within_the_budget() {
    const JOBS: usize = 5;
    const STEPS: usize = 3;
    let h = harness(true);
    let mut receivers = Vec::new();
    let mut pods = Vec::new();
    for _ in 0..JOBS {
        let job = job(&["a", "b", "c"]);
        let pod = names::pod_name(job.job_id, job.attempt);
        for i in 0..STEPS {
            h.fake.script_log(
                &pod,
                &names::step_container(i),
                LogReply {
                    lines: vec![format!("2026-01-01T00:00:0{i}Z line {i}")],
                    hold: true,
                },
            );
        }
        let (tx, rx) = mpsc::channel(256);
        h.backend.start(job, tx).await.unwrap();
        receivers.push(rx);
        pods.push(pod);
    }
    for pod in &pods {
        drive(&h.fake, pod, &[0; STEPS]).await;
    }
    for rx in &mut receivers {
        assert_eq!(
            shape(&until_finished(rx).await).last().unwrap(),
            "finished success"
        );
    }
    let swept = h.backend.sweep(&Known(Vec::new())).await;
    assert_eq!(swept.len(), JOBS);
    let counts = h.fake.counts();
    println!("API requests for {JOBS} jobs of {STEPS} steps: {counts:?}");
    let per_job: u32 = ["create pods", "create secrets", "delete pods", "get pods"]
        .iter()
        .map(|v| counts.get(*v).copied().unwrap_or(0))
        .sum::<u32>();
    assert!(per_job as usize <= 3 * JOBS, "{counts:?}");
    assert_eq!(
        counts.get("log pods").copied().unwrap_or(0) as usize,
        JOBS * STEPS,
        "{counts:?}"
    );
    assert_eq!(counts.get("list pods").copied(), Some(1), "{counts:?}");
    assert_eq!(counts.get("watch pods").copied(), Some(1), "{counts:?}");
    // One Event watch for the whole backend, not a request per pod: only the autoscaler's
    // Events on pods.
    assert_eq!(counts.get("list events").copied(), Some(1), "{counts:?}");
    assert!(
        counts.get("watch events").copied().unwrap_or(0) <= 1,
        "{counts:?}"
    );
    let queries = h.fake.event_queries();
    assert!(
        queries[0]
            .contains("fieldSelector=involvedObject.kind%3DPod%2Csource%3Dcluster-autoscaler"),
        "{queries:?}"
    );
}

#[tokio::test]
async fn failing_log_opens_back_off_and_a_vanished_pod_stops_them() {
    // Opens that fail (the container not started yet, a server in trouble) back off, doubling
    // from 10 ms up to 50 ms: over one second that is about 20 requests, not 100.
    let h = harness(false);
    let job = job(&["only"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let c = names::step_container(0);
    for _ in 0..500 {
        h.fake.fault("log pods", Fault::Status(500, 0));
    }
    let (tx, mut rx) = mpsc::channel(256);
    h.backend.start(job, tx).await.unwrap();
    h.fake.update(&pod, |s| {
        fake::set(s, fake::terminated("clone", 0, None, None), false)
    });
    h.fake
        .update(&pod, |s| fake::set(s, fake::running(&c), true));
    wait_for(|| (h.fake.count("log pods") >= 1).then_some(())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let opens = h.fake.count("log pods");
    assert!(opens <= 40, "{opens} log requests in a second: no backoff");
    h.fake.update(&pod, |s| {
        fake::set(s, fake::terminated(&c, 0, None, None), true);
        s.phase = Some("Succeeded".into());
    });
    until_finished(&mut rx).await;

    // A 404 means the pod (or container) is gone: the stream is not asked for again.
    let h = harness(false);
    let second = self::job(&["only"]);
    let pod = names::pod_name(second.job_id, second.attempt);
    h.fake.fault("log pods", Fault::Status(404, 0));
    let (tx, _rx) = mpsc::channel(256);
    h.backend.start(second, tx).await.unwrap();
    h.fake.update(&pod, |s| {
        fake::set(s, fake::terminated("clone", 0, None, None), false)
    });
    h.fake
        .update(&pod, |s| fake::set(s, fake::running(&c), true));
    wait_for(|| (h.fake.count("log pods") >= 1).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.fake.count("log pods"),
        1,
        "a gone pod's log is not asked for again"
    );
}

/// A step's container running since `ago`, as its status says.
/// A container running since `ago` before now, and that start as the API gives it: in whole
/// seconds (a pod status keeps no fraction), so up to a second earlier than asked.
fn running_since(
    name: &str,
    ago: Duration,
) -> (
    k8s_openapi::api::core::v1::ContainerStatus,
    std::time::SystemTime,
) {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    let ago = SignedDuration::try_from(ago).unwrap();
    let started = Timestamp::from_second((Timestamp::now() - ago).as_second()).unwrap();
    let status = k8s_openapi::api::core::v1::ContainerStatus {
        state: Some(ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(started)),
            }),
            ..ContainerState::default()
        }),
        ..fake::running(name)
    };
    (status, std::time::SystemTime::from(started))
}

/// A re-attach to `job`'s pod, its checkout done and step 0 running for `ago` per its status,
/// the store holding the step's start (`start_stored`) or not; the events to the end, how long
/// after the re-attach the end came, and how long the step had run (per its status) at the
/// re-attach.
async fn reattach_running_since(
    job: &JobRequest,
    ago: Duration,
    start_stored: bool,
) -> (Vec<String>, Duration, Duration) {
    let pod = names::pod_name(job.job_id, 1);
    let fake = FakeApi::default();
    let mut p = pod_of(job, "Running");
    let status = p.status.as_mut().unwrap();
    fake::set(status, fake::terminated("clone", 0, None, None), false);
    let (running, started) = running_since("step-0", ago);
    fake::set(status, running, true);
    fake.insert(p);
    fake.script_log(
        &pod,
        "step-0",
        LogReply {
            lines: vec![],
            hold: true,
        },
    );
    let h = harness_with(fake, false);
    let (tx, mut rx) = mpsc::channel(64);
    let resume = Resume {
        started: start_stored,
        steps: vec![if start_stored {
            stored(State::Running, 0, None)
        } else {
            StepResume::queued()
        }],
    };
    let at = tokio::time::Instant::now();
    let ran = std::time::SystemTime::now()
        .duration_since(started)
        .unwrap();
    assert!(h.backend.reattach(job.clone(), resume, tx).await.unwrap());
    let events = shape(&until_finished(&mut rx).await);
    let took = at.elapsed();
    assert_eq!(
        h.fake.pod_names(),
        Vec::<String>::new(),
        "the pod is deleted"
    );
    (events, took, ran)
}

fn timed(steps: &[&str], timeout: Duration) -> JobRequest {
    let mut job = job(steps);
    job.spec.steps[0].timeout = Some(timeout);
    job
}

#[tokio::test]
async fn a_step_running_past_its_timeout_at_a_re_attach_times_out_at_once() {
    let job = timed(&["build"], Duration::from_secs(60));
    let (events, took, _) = reattach_running_since(&job, Duration::from_secs(3600), true).await;
    assert_eq!(
        events,
        [
            "log 0 #1 timed out after 60s; deleting the pod",
            "step 0 failure",
            "finished failure: step \"build\" failed: timed out after 60s",
        ]
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn a_step_that_started_while_gantry_was_down_times_out_counted_from_its_real_start() {
    // Started 2 s before the re-attach (up to 3 s: the status keeps whole seconds) with 4 s to
    // run: it ends what is left of the 4 s after the re-attach, not 4 s after.
    let job = timed(&["build"], Duration::from_secs(4));
    let (events, took, ran) = reattach_running_since(&job, Duration::from_secs(2), false).await;
    let left = Duration::from_secs(4) - ran;
    assert_eq!(
        events,
        [
            "started",
            "step 0 started",
            "log 0 #1 timed out after 4s; deleting the pod",
            "step 0 failure",
            "finished failure: step \"build\" failed: timed out after 4s",
        ]
    );
    assert!(
        took + Duration::from_millis(500) >= left && took < left + Duration::from_millis(1500),
        "took {took:?}, {left:?} were left"
    );
}
