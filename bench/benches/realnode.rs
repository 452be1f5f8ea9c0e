//! `gantry serve` on the test cluster's real node (kubelet + containerd + runc) against the same
//! Pods created directly with kube-rs, measured in the same run, sample by sample alternated
//! (Gantry first on even samples, the reference first on odd ones) so drift hits both:
//!
//! 1. push webhook → first step running, for a one-step job (`true`): Gantry (the release
//!    `gantry serve`, Kubernetes backend, the pipeline read through a fake GitHub's contents API
//!    at the pushed commit, a signed push webhook per sample, one new commit each) from the
//!    moment the webhook is sent, against the Pod `gantry render` makes for the same job
//!    (rendered with `gantry_kube::render`: the same clone init container with its per-job
//!    Secret, the same image) created with kube-rs from the moment the create is sent. The end
//!    is the same for both: containerd's `/tasks/start` event of the step's container, read
//!    from `ctr events` on the node's containerd (nanoseconds; a Pod status' `startedAt` has
//!    whole seconds only).
//! 2. the gaps between consecutive containers of a five-step job (five steps of `true`): from
//!    each container's exit (containerd's `/tasks/exit`, `exited_at`) to the next one's
//!    `/tasks/start`, for Gantry's pod and the directly created one; and what Gantry records
//!    between steps (the API's step `finished_at` → next `started_at`).
//!
//! Run through `scripts/bench` (part `realnode`), which builds the release `gantry` and runs
//! this inside `tests/cluster/with-cluster` (the real node on). Environment:
//! GANTRY_BENCH_GANTRY (the gantry binary), GANTRY_BENCH_CTR (containerd's `ctr`),
//! GANTRY_BENCH_REALNODE_RUNS (one-step samples per side, default 50),
//! GANTRY_BENCH_REALNODE_STEP_RUNS (five-step samples per side, default 20),
//! GANTRY_BENCH_REALNODE_LIMIT (seconds for the whole sampling, default 1500; the sampling
//! stops there and says so). Writes `target/gantry-bench/realnode.json` for `bench-report`.
//! A timing is never a pass/fail test here: the bench fails only when nothing could be measured.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::TryStreamExt;
use gantry_bench::{GapRow, Latency, RealNodeResult};
use gantry_core::{
    Checkout, JobId, JobRequest, JobSpec, RepoRef, RunId, StatusCondition, StepKind, StepSpec,
    Toleration,
};
use gantry_kube::{Images, KubeConfig, PullRequestOrigin, RenderOptions, names, render};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::Value;

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;
use support::{
    Gantry, Serve, ZERO, env_or, fake_github, get_json, ms, node_versions, now, push, repository,
    rfc3339,
};

fn var(name: &str) -> anyhow::Result<String> {
    support::var("realnode", name)
}

// ------------------------------------------------------------------ containerd's events

/// A container's task start and exit as containerd reports them (unix seconds).
#[derive(Clone, Copy, Debug, Default)]
struct Task {
    start: Option<f64>,
    exit: Option<f64>,
}

/// `ctr events` on the node's containerd, every `/tasks/start` and `/tasks/exit` by container.
struct Events {
    tasks: Arc<Mutex<HashMap<String, Task>>>,
    child: Child,
}

impl Events {
    fn start(ctr: &Path, socket: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(ctr)
            .arg("--address")
            .arg(socket)
            .args(["-n", "k8s.io", "events"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", ctr.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let tasks: Arc<Mutex<HashMap<String, Task>>> = Arc::default();
        let sink = Arc::clone(&tasks);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((id, start, exit)) = parse_event(&line) {
                    let mut tasks = sink.lock().unwrap();
                    let task = tasks.entry(id).or_default();
                    task.start = task.start.or(start);
                    task.exit = task.exit.or(exit);
                }
            }
        });
        Ok(Events { tasks, child })
    }

    fn task(&self, id: &str) -> Task {
        self.tasks
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or_default()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `2026-12-02 01:37:31.111634977 +0000 UTC k8s.io /tasks/start {"container_id":"…",…}`:
/// the container and its start (the event's time) or its exit (`exited_at`). An exit of an
/// exec'd process (`id` other than the container's) is not the container's.
fn parse_event(line: &str) -> Option<(String, Option<f64>, Option<f64>)> {
    let mut parts = line.splitn(7, ' ');
    let (date, time) = (parts.next()?, parts.next()?);
    let (_offset, _utc, _ns, topic, body) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let body: Value = serde_json::from_str(body).ok()?;
    let id = body["container_id"].as_str()?.to_owned();
    match topic {
        "/tasks/start" => {
            let at = chrono::NaiveDateTime::parse_from_str(
                &format!("{date} {time}"),
                "%Y-%m-%d %H:%M:%S%.f",
            )
            .ok()?
            .and_utc();
            let secs = at.timestamp() as f64 + f64::from(at.timestamp_subsec_nanos()) / 1e9;
            Some((id, Some(secs), None))
        }
        "/tasks/exit" if body["id"].as_str() == Some(id.as_str()) => {
            let e = &body["exited_at"];
            let secs = e["seconds"].as_f64()? + e["nanos"].as_f64().unwrap_or(0.0) / 1e9;
            Some((id, None, Some(secs)))
        }
        _ => None,
    }
}

// ------------------------------------------------------------------ the bench's pod watch

/// Every pod of the namespace: when the bench's watch first saw it, and its latest state.
#[derive(Default)]
struct Seen {
    first: HashMap<String, f64>,
    latest: HashMap<String, Pod>,
    gone: HashSet<String>,
}

fn watch(pods: Api<Pod>) -> Arc<Mutex<Seen>> {
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        let stream = watcher(pods, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        while let Ok(Some(event)) = stream.try_next().await {
            let at = now();
            let mut seen = sink.lock().unwrap();
            match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    seen.first.entry(name.clone()).or_insert(at);
                    seen.latest.insert(name, p);
                }
                watcher::Event::Delete(p) => {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    seen.latest.remove(&name);
                    seen.gone.insert(name);
                }
                _ => {}
            }
        }
    });
    seen
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Container name → (containerd id, status startedAt, status finishedAt), init containers too.
fn containers(pod: &Pod) -> HashMap<String, (String, Option<f64>, Option<f64>)> {
    let mut out = HashMap::new();
    let Some(status) = &pod.status else {
        return out;
    };
    for c in status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
    {
        let id = c
            .container_id
            .as_deref()
            .unwrap_or("")
            .trim_start_matches("containerd://")
            .to_owned();
        let t = c.state.as_ref().and_then(|s| s.terminated.as_ref());
        let secs = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
            t.as_ref().map(|t| t.0.as_second() as f64)
        };
        out.insert(
            c.name.clone(),
            (
                id,
                t.and_then(|t| secs(&t.started_at)),
                t.and_then(|t| secs(&t.finished_at)),
            ),
        );
    }
    out
}

async fn until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pipeline(image: &str, job: &str, steps: usize) -> String {
    let mut text = format!("name: bench\njobs:\n  {job}:\n    image: {image}\n    steps:\n");
    for i in 0..steps {
        text.push_str(&format!("      - name: step{i}\n        run: \"true\"\n"));
    }
    text
}

/// The realnode bench's `gantry serve`: every pod on the real node, the base image for the
/// clone and the jobs.
fn config(ns: &str, image: &str) -> String {
    format!(
        r#"backend = "kubernetes"
[kubernetes]
namespace = "{ns}"
node_selector = {{ "gantry.dev/real-node" = "true" }}
tolerations = [{{ key = "gantry.dev/real-node", operator = "Equal", value = "true", effect = "NoSchedule" }}]
[kubernetes.images]
clone = "{image}"
default_job = "{image}"
"#
    )
}

// ------------------------------------------------------------------ one sample

/// What one sample saw, all in unix seconds.
#[derive(Debug, Default)]
struct Sample {
    sent: f64,
    pod_seen: f64,
    /// By container name.
    tasks: HashMap<String, Task>,
    status: HashMap<String, (String, Option<f64>, Option<f64>)>,
    /// Gantry's records: the delivery's `received_at`, each step's `started_at`/`finished_at`.
    received: Option<f64>,
    steps: Vec<(Option<f64>, Option<f64>)>,
}

struct Bench {
    ns: String,
    image: String,
    git_url: String,
    token: String,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    seen: Arc<Mutex<Seen>>,
    events: Events,
    http: reqwest::Client,
    gantry: Gantry,
}

/// A scenario: one repository, one job of `steps` steps of `true`.
struct Scenario {
    repo: String,
    job: String,
    steps: usize,
    shas: Vec<String>,
}

impl Bench {
    fn config(&self) -> KubeConfig {
        KubeConfig {
            namespace: self.ns.clone(),
            node_selector: BTreeMap::from([("gantry.dev/real-node".into(), "true".into())]),
            tolerations: vec![Toleration {
                key: Some("gantry.dev/real-node".into()),
                operator: Some("Equal".into()),
                value: Some("true".into()),
                effect: Some("NoSchedule".into()),
            }],
            images: Images {
                clone: self.image.clone(),
                default_job: self.image.clone(),
                ..Images::default()
            },
            ..KubeConfig::default()
        }
    }

    fn existing(&self) -> HashSet<String> {
        let seen = self.seen.lock().unwrap();
        seen.first.keys().cloned().collect()
    }

    /// Waits for a pod not in `before` (or named `name`) to end; then reads its containers'
    /// events and deletes it.
    async fn follow(
        &self,
        before: &HashSet<String>,
        name: Option<&str>,
        sample: &mut Sample,
    ) -> anyhow::Result<String> {
        let pod = until(Duration::from_secs(60), || {
            let seen = self.seen.lock().unwrap();
            match name {
                Some(n) => seen.first.get(n).map(|&t| (n.to_owned(), t)),
                None => seen
                    .first
                    .iter()
                    .find(|(n, _)| !before.contains(*n))
                    .map(|(n, &t)| (n.clone(), t)),
            }
        })
        .await
        .context("no pod appeared within 60 s")?;
        sample.pod_seen = pod.1;
        let name = pod.0;
        let done = until(Duration::from_secs(120), || {
            let seen = self.seen.lock().unwrap();
            let p = seen.latest.get(&name)?;
            matches!(phase(p), "Succeeded" | "Failed").then(|| p.clone())
        })
        .await
        .with_context(|| format!("pod {name} did not finish within 120 s"))?;
        anyhow::ensure!(
            phase(&done) == "Succeeded",
            "pod {name} failed: {:?}",
            done.status
        );
        sample.status = containers(&done);
        // The exit events come a moment after the status.
        let ids: Vec<(String, String)> = sample
            .status
            .iter()
            .map(|(c, (id, _, _))| (c.clone(), id.clone()))
            .collect();
        let tasks = until(Duration::from_secs(10), || {
            let tasks: HashMap<String, Task> = ids
                .iter()
                .map(|(c, id)| (c.clone(), self.events.task(id)))
                .collect();
            tasks
                .values()
                .all(|t| t.start.is_some() && t.exit.is_some())
                .then_some(tasks)
        })
        .await
        .with_context(|| format!("containerd's events for pod {name} are missing"))?;
        sample.tasks = tasks;
        Ok(name)
    }

    async fn delete(&self, name: &str) {
        let _ = self.pods.delete(name, &DeleteParams::default()).await;
        let _ = until(Duration::from_secs(60), || {
            self.seen.lock().unwrap().gone.contains(name).then_some(())
        })
        .await;
    }

    async fn gantry_sample(&self, s: &Scenario, i: usize, tag: &str) -> anyhow::Result<Sample> {
        let before = self.existing();
        let clone_url = format!("{}/{}.git", self.git_url, s.repo);
        let previous = if i == 0 {
            ZERO.to_owned()
        } else {
            s.shas[i - 1].clone()
        };
        let body = push(&s.repo, &clone_url, &previous, &s.shas[i]);
        let delivery = format!("{tag}-{i}");
        let mut sample = Sample {
            sent: now(),
            ..Sample::default()
        };
        support::send_push(&self.http, &self.gantry, &delivery, body).await?;
        let name = self.follow(&before, None, &mut sample).await?;
        // Gantry's own records, once the run is over.
        let base = &self.gantry.url;
        let deadline = Instant::now() + Duration::from_secs(60);
        let run = loop {
            let d = get_json(
                &self.http,
                &format!("{base}/api/v1/deliveries/github/{delivery}"),
            )
            .await;
            if let Some(d) = &d
                && let Some(id) = d["runs"][0].as_str()
            {
                sample.received = rfc3339(&d["received_at"]);
                let run = get_json(&self.http, &format!("{base}/api/v1/runs/{id}")).await;
                if let Some(run) = run
                    && ["success", "failure", "error", "cancelled"]
                        .contains(&run["status"].as_str().unwrap_or(""))
                {
                    break run;
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "run of {delivery} did not finish in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        anyhow::ensure!(run["status"] == "success", "run of {delivery}: {run}");
        sample.steps = run["jobs"][0]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|st| (rfc3339(&st["started_at"]), rfc3339(&st["finished_at"])))
            .collect();
        self.delete(&name).await;
        Ok(sample)
    }

    async fn reference_sample(&self, s: &Scenario, i: usize) -> anyhow::Result<Sample> {
        let clone_url = format!("{}/{}.git", self.git_url, s.repo);
        let job = JobRequest {
            run_id: RunId::new(),
            job_id: JobId::new(),
            attempt: 1,
            checkout: Checkout {
                repo: RepoRef {
                    forge: gantry_core::ForgeKind::Github,
                    full_name: format!("acme/{}", s.repo),
                    clone_url,
                    web_url: None,
                    default_branch: Some("main".into()),
                },
                git_ref: "refs/heads/main".into(),
                sha: s.shas[i].clone(),
            },
            pull_request: None,
            spec: JobSpec {
                name: s.job.clone(),
                image: Some(self.image.clone()),
                // Gantry gives a job without a timeout the default.
                timeout: Some(gantry_engine::DEFAULT_JOB_TIMEOUT),
                steps: (0..s.steps)
                    .map(|k| StepSpec {
                        name: format!("step{k}"),
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
        };
        let pod = render(
            &job,
            &self.config(),
            &RenderOptions {
                origin: PullRequestOrigin::None,
                clone_credentials: true,
            },
        )?
        .pod;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let mut sample = Sample {
            sent: now(),
            ..Sample::default()
        };
        // As Gantry does it: the Pod, then its clone Secret owned by it.
        let created = self.pods.create(&PostParams::default(), &pod).await?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(names::clone_secret(&name)),
                namespace: Some(self.ns.clone()),
                labels: created.metadata.labels.clone(),
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Pod".into(),
                    name: name.clone(),
                    uid: created.metadata.uid.clone().unwrap_or_default(),
                    controller: Some(true),
                    block_owner_deletion: Some(false),
                }]),
                ..ObjectMeta::default()
            },
            string_data: Some(BTreeMap::from([
                ("username".to_owned(), "x-access-token".to_owned()),
                ("password".to_owned(), self.token.clone()),
            ])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        self.secrets.create(&PostParams::default(), &secret).await?;
        self.follow(&HashSet::new(), Some(&name), &mut sample)
            .await?;
        self.delete(&name).await;
        Ok(sample)
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    Latency::of(std::mem::take(&mut v)).p50_ms
}

/// webhook/create sent → step-0 task start; sent → pod seen; pod seen → step start.
fn start_figures(s: &Sample) -> Option<(f64, f64, f64)> {
    let step = s.tasks.get("step-0")?.start?;
    Some((
        ms(s.sent, step),
        ms(s.sent, s.pod_seen),
        ms(s.pod_seen, step),
    ))
}

/// The container order of a job of `steps` steps: clone, step-0 … step-(steps-1).
fn order(steps: usize) -> Vec<String> {
    std::iter::once(names::CLONE.to_owned())
        .chain((0..steps).map(names::step_container))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !support::measuring() {
        return Ok(()); // `cargo test --benches` and filters: nothing to do.
    }
    gantry_forge::install_crypto_provider();
    let runs: usize = env_or("GANTRY_BENCH_REALNODE_RUNS", 50).max(1);
    let step_runs: usize = env_or("GANTRY_BENCH_REALNODE_STEP_RUNS", 20).max(1);
    let limit_s: u64 = env_or("GANTRY_BENCH_REALNODE_LIMIT", 1500);
    let image = var("GANTRY_TEST_IMAGE")?;
    let node_name = var("GANTRY_TEST_REAL_NODE")?;
    let dir = PathBuf::from(var("GANTRY_TEST_CLUSTER_DIR")?);
    let kubeconfig = dir.join("admin.kubeconfig").display().to_string();
    let gantry_bin = PathBuf::from(var("GANTRY_BENCH_GANTRY")?);
    let ctr = PathBuf::from(var("GANTRY_BENCH_CTR")?);
    let git_root = PathBuf::from(var("GANTRY_TEST_GIT_ROOT")?);
    let git_url = var("GANTRY_TEST_GIT_URL")?;
    let token = var("GANTRY_TEST_GIT_PASSWORD")?;
    let ca = var("GANTRY_TEST_GIT_CA")?;
    let machine = gantry_bench::machine();

    let client = Client::try_default().await?;
    let node = node_versions(&client, &node_name).await;
    let ns = format!("bench-realnode-{}", std::process::id());
    support::namespace(&client, &ns).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());

    // One extra commit each for the warm-up sample of each side.
    let total = |n: usize| 2 * n + 2;
    let one = format!("bench-one-{}", std::process::id());
    let five = format!("bench-five-{}", std::process::id());
    let (one_bare, one_shas) = repository(
        &git_root,
        &one,
        &[(".gantry.yaml", pipeline(&image, "one", 1))],
        total(runs),
    )?;
    let (five_bare, five_shas) = repository(
        &git_root,
        &five,
        &[(".gantry.yaml", pipeline(&image, "five", 5))],
        total(step_runs),
    )?;
    let github = fake_github(HashMap::from([
        (format!("acme/{one}"), one_bare),
        (format!("acme/{five}"), five_bare),
    ]))
    .await?;
    let data = tempfile::tempdir()?;
    let gantry = Serve {
        bin: &gantry_bin,
        data: data.path(),
        config: &config(&ns, &image),
        github: &github,
        token: &token,
        kubeconfig: &kubeconfig,
        ca: &ca,
    }
    .start()?;
    let events = Events::start(&ctr, &dir.join("node/containerd.sock"))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let seen = watch(pods.clone());
    let bench = Bench {
        ns: ns.clone(),
        image,
        git_url,
        token,
        pods,
        secrets: Api::namespaced(client.clone(), &ns),
        seen,
        events,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        gantry,
    };
    let scenarios = [
        Scenario {
            repo: one,
            job: "one".into(),
            steps: 1,
            shas: one_shas,
        },
        Scenario {
            repo: five,
            job: "five".into(),
            steps: 5,
            shas: five_shas,
        },
    ];

    let t0 = Instant::now();
    let limit = Duration::from_secs(limit_s);
    let mut stopped_early = false;
    let mut missing = 0;
    // (gantry samples, reference samples) per scenario.
    let mut results: Vec<(Vec<Sample>, Vec<Sample>)> = Vec::new();
    for (k, s) in scenarios.iter().enumerate() {
        let n = if s.steps == 1 { runs } else { step_runs };
        let (mut g, mut r) = (Vec::new(), Vec::new());
        // A warm-up sample of each side (the first pod of an image, Gantry's first webhook).
        let _ = bench.gantry_sample(s, 0, &format!("warm{k}")).await;
        let _ = bench.reference_sample(s, 1).await;
        for i in 0..n {
            if t0.elapsed() > limit {
                stopped_early = true;
                eprintln!(
                    "realnode: the time limit ({limit_s} s) stopped the sampling at {i} of {n}"
                );
                break;
            }
            let (gi, ri) = (2 + 2 * i, 3 + 2 * i);
            for gantry_side in if i % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            } {
                let result = if gantry_side {
                    bench.gantry_sample(s, gi, &format!("s{k}")).await
                } else {
                    bench.reference_sample(s, ri).await
                };
                match result {
                    Ok(sample) => {
                        if gantry_side {
                            g.push(sample)
                        } else {
                            r.push(sample)
                        }
                    }
                    Err(e) => {
                        missing += 1;
                        eprintln!(
                            "realnode: {} sample {i} of scenario {k} lost: {e:#}",
                            if gantry_side { "gantry" } else { "reference" }
                        );
                    }
                }
            }
            if let (Some(a), Some(b)) = (
                g.last().and_then(start_figures),
                r.last().and_then(start_figures),
            ) {
                eprintln!(
                    "realnode: {} step(s), sample {i}: gantry {:.0} ms, reference {:.0} ms",
                    s.steps, a.0, b.0
                );
            }
        }
        results.push((g, r));
    }
    drop(bench);
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;

    let (g1, r1) = &results[0];
    let figures =
        |v: &[Sample]| -> Vec<(f64, f64, f64)> { v.iter().filter_map(start_figures).collect() };
    let (gf, rf) = (figures(g1), figures(r1));
    if gf.is_empty() || rf.is_empty() {
        bail!(
            "no sample measured; see the messages above and {}/gantry.log",
            data.path().display()
        );
    }
    let col = |v: &[(f64, f64, f64)], k: usize| -> Vec<f64> {
        v.iter().map(|t| [t.0, t.1, t.2][k]).collect()
    };
    let recorded: Vec<f64> = g1
        .iter()
        .filter_map(|s| Some(ms(s.received?, s.steps.first()?.0?)))
        .collect();

    let (g5, r5) = &results[1];
    let containers = order(5);
    let gap = |s: &Sample, a: &str, b: &str| -> Option<f64> {
        Some(ms(s.tasks.get(a)?.exit?, s.tasks.get(b)?.start?))
    };
    let status_gap = |s: &Sample, a: &str, b: &str| -> Option<f64> {
        Some(ms(s.status.get(a)?.2?, s.status.get(b)?.1?))
    };
    let mut gaps = Vec::new();
    let (mut gs, mut rs) = (Vec::new(), Vec::new());
    for w in containers.windows(2) {
        let gv: Vec<f64> = g5.iter().filter_map(|s| gap(s, &w[0], &w[1])).collect();
        let rv: Vec<f64> = r5.iter().filter_map(|s| gap(s, &w[0], &w[1])).collect();
        if w[0] != names::CLONE {
            gs.extend(g5.iter().filter_map(|s| status_gap(s, &w[0], &w[1])));
            rs.extend(r5.iter().filter_map(|s| status_gap(s, &w[0], &w[1])));
        }
        gaps.push(GapRow {
            from: w[0].clone(),
            to: w[1].clone(),
            gantry_mean_ms: mean(&gv),
            reference_mean_ms: mean(&rv),
            gantry: Latency::of(gv),
            reference: Latency::of(rv),
        });
    }
    let recorded_gap: Vec<f64> = g5
        .iter()
        .flat_map(|s| {
            s.steps
                .windows(2)
                .filter_map(|w| Some(ms(w[0].1?, w[1].0?)))
                .collect::<Vec<_>>()
        })
        .collect();
    let result = RealNodeResult {
        measured: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        machine,
        node,
        runs,
        step_runs,
        limit_s,
        gantry_start: Latency::of(col(&gf, 0)),
        reference_start: Latency::of(col(&rf, 0)),
        gantry_to_pod_p50_ms: median(col(&gf, 1)),
        gantry_pod_to_step_p50_ms: median(col(&gf, 2)),
        reference_to_pod_p50_ms: median(col(&rf, 1)),
        reference_pod_to_step_p50_ms: median(col(&rf, 2)),
        gantry_recorded_start: Latency::of(recorded),
        gaps,
        gantry_recorded_gap: Latency::of(recorded_gap),
        gantry_status_gap: Latency::of(gs),
        reference_status_gap: Latency::of(rs),
        missing,
        stopped_early,
    };
    let path = gantry_bench::write(&support::results_dir(), "realnode", &result)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    eprintln!("wrote {}", path.display());
    Ok(())
}
