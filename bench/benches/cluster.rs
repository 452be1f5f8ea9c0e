//! Gantry's Kubernetes backend against the real control plane of `tests/cluster` (3 kwok
//! nodes), beside a minimal kube-rs program that creates, watches and deletes the same Pods,
//! measured in the same run: job starts per second, API requests per job, resident memory per
//! running job, for 100 and 1,000 concurrent jobs tracked by one process.
//!
//! Run through `scripts/bench` (part `cluster`), which starts the cluster with an audit log:
//! `tests/cluster/with-cluster` with `GANTRY_CLUSTER_APISERVER_FLAGS` set to
//! `--audit-policy-file=bench/src/cluster-audit.yaml --audit-log-path=DIR/audit.log`. Requests
//! are counted from that log, by user: each measured process runs as a ServiceAccount of its
//! own (token from the TokenRequest API), so kwok's, the scheduler's and the controllers'
//! requests are not counted.
//!
//! Each side runs in a child process of its own (this binary with `--side`), so its resident
//! memory is its own: VmRSS once the watch has listed, and again once every job's step runs;
//! the difference divided by the jobs is the memory per running job. Jobs: a `clone` init
//! container (100 ms) and one step held running until every job has started; then every job
//! is cancelled (the pod deleted) and the side waits until all pods are gone.
//! Results: `target/gantry-bench/cluster.json` (requests by verb and by answer, the machine,
//! the cluster), rendered into docs/benchmarks.md by `bench-report`.
//! Environment: GANTRY_BENCH_CLUSTER_SIZES (default "100,1000"), GANTRY_BENCH_CLUSTER_TIMEOUT
//! (seconds per side and size, default 300).
//!
//! kwok serves a followed log with one inotify instance per stream, and its 3 nodes are one
//! process: beyond `fs.inotify.max_user_instances` (often 128) concurrent follows, opening a
//! step's log is answered 400 `too many open files`. The limit is recorded with the results
//! (and a warning printed) because Gantry then retries those opens, which shows in its requests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use gantry_core::{
    Backend, Checkout, JobEventKind, JobId, JobRequest, JobSpec, RepoRef, RunId, StatusCondition,
    StepKind, StepSpec,
};
use gantry_kube::{KubeBackend, KubeConfig, PullRequestOrigin, RenderOptions, names, render};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const HOLD: &str = "3600000";
/// Creates in flight at once, for both sides.
const IN_FLIGHT: usize = 32;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run this bench through scripts/bench (part `cluster`)")
    })
}

async fn client(token: &str) -> Client {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: t, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\n\
         users: [{{name: u, user: {{token: \"{token}\"}}}}]\n\
         contexts: [{{name: t, context: {{cluster: t, user: u}}}}]\ncurrent-context: t\n",
        env("GANTRY_TEST_KUBE_API"),
        env("GANTRY_TEST_KUBE_CA"),
    );
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&yaml).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn kube_config(namespace: &str) -> KubeConfig {
    let mut config = KubeConfig {
        namespace: namespace.to_owned(),
        ..KubeConfig::default()
    };
    config.pod_annotations = BTreeMap::from([(
        "gantry.dev/durations-ms".to_owned(),
        format!("step-0={HOLD},*=100"),
    )]);
    config.timings.log_drain = Duration::from_secs(1);
    config
}

fn job() -> JobRequest {
    JobRequest {
        run_id: RunId::new(),
        job_id: JobId::new(),
        attempt: 1,
        checkout: Checkout {
            repo: RepoRef {
                forge: gantry_core::ForgeKind::Github,
                full_name: "acme/app".into(),
                clone_url: "https://github.com/acme/app.git".into(),
                web_url: None,
                default_branch: Some("main".into()),
            },
            git_ref: "refs/heads/main".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
        },
        pull_request: None,
        spec: JobSpec {
            name: "bench".into(),
            image: Some("rust:1.95".into()),
            steps: vec![StepSpec {
                name: "test".into(),
                kind: StepKind::Run {
                    script: "cargo test".into(),
                },
                timeout: None,
                env: BTreeMap::new(),
                run_if: StatusCondition::Success,
                allow_failure: false,
            }],
            ..JobSpec::default()
        },
        secret_values: BTreeMap::new(),
    }
}

fn step_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

/// One side's figures.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Side {
    jobs: usize,
    /// Jobs whose step was seen running before the time limit.
    started: usize,
    /// From the first create to the last step seen running.
    start_seconds: f64,
    starts_per_second: f64,
    rss_before_kib: u64,
    rss_running_kib: u64,
    kib_per_job: f64,
    /// Until every pod was gone.
    total_seconds: f64,
    completed: usize,
}

/// Gantry: one KubeBackend; every job started through `Backend::start`, tracked through its
/// events (the step's log followed), then cancelled.
async fn gantry_side(token: &str, namespace: &str, n: usize, timeout: Duration) -> Side {
    let backend = KubeBackend::new(client(token).await, kube_config(namespace), None);
    assert!(backend.ready().await, "the pod watch listed");
    let rss_before = rss_kib();
    let t0 = Instant::now();
    let (tx, mut rx) = mpsc::channel(16 * 1024);
    let jobs: Vec<JobRequest> = (0..n).map(|_| job()).collect();
    let starter = {
        let backend = backend.clone();
        let jobs = jobs.clone();
        tokio::spawn(async move {
            futures::stream::iter(jobs)
                .map(|j| {
                    let (b, tx) = (backend.clone(), tx.clone());
                    async move { b.start(j, tx).await.unwrap() }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<()>>()
                .await;
        })
    };
    let mut started = HashSet::new();
    let mut finished = HashSet::new();
    let deadline = t0 + timeout;
    while started.len() < n && Instant::now() < deadline {
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            match e.kind {
                JobEventKind::StepStarted { .. } => {
                    started.insert(e.job_id);
                }
                JobEventKind::Finished { .. } => {
                    finished.insert(e.job_id);
                }
                _ => {}
            }
        }
    }
    let start_seconds = t0.elapsed().as_secs_f64();
    let rss_running = rss_kib();
    starter.await.unwrap();
    for j in &jobs {
        backend.cancel(j.job_id, j.attempt).await.unwrap();
    }
    while finished.len() < n && Instant::now() < deadline + timeout {
        match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(e)) if matches!(e.kind, JobEventKind::Finished { .. }) => {
                finished.insert(e.job_id);
            }
            Ok(None) => break,
            _ => {}
        }
    }
    side(
        n,
        started.len(),
        start_seconds,
        rss_before,
        rss_running,
        t0,
        finished.len(),
    )
}

fn side(
    n: usize,
    started: usize,
    start_seconds: f64,
    rss_before: u64,
    rss_running: u64,
    t0: Instant,
    completed: usize,
) -> Side {
    Side {
        jobs: n,
        started,
        start_seconds,
        starts_per_second: started as f64 / start_seconds,
        rss_before_kib: rss_before,
        rss_running_kib: rss_running,
        kib_per_job: rss_running.saturating_sub(rss_before) as f64 / n as f64,
        total_seconds: t0.elapsed().as_secs_f64(),
        completed,
    }
}

/// The Pod Gantry creates for `job`, with the bench's annotations.
fn reference_pod(job: &JobRequest, config: &KubeConfig) -> Pod {
    let mut pod = render(
        job,
        config,
        &RenderOptions {
            origin: PullRequestOrigin::None,
            clone_credentials: false,
        },
    )
    .unwrap()
    .pod;
    pod.metadata
        .annotations
        .get_or_insert_default()
        .extend(config.pod_annotations.clone());
    pod
}

/// The reference: the same rendered Pods created with kube-rs, one watcher, deleted.
async fn reference_side(token: &str, namespace: &str, n: usize, timeout: Duration) -> Side {
    let client = client(token).await;
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let config = kube_config(namespace);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watch = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let stream =
                watcher(pods, watcher::Config::default().labels(names::SELECTOR)).default_backoff();
            futures::pin_mut!(stream);
            while let Ok(Some(event)) = stream.try_next().await {
                if tx.send(event).is_err() {
                    return;
                }
            }
        })
    };
    // Wait for the first listing.
    loop {
        if let Some(watcher::Event::InitDone) = rx.recv().await {
            break;
        }
    }
    let rss_before = rss_kib();
    let t0 = Instant::now();
    // Like Gantry's side: the jobs are made after the baseline, and each Pod is rendered when
    // it is created (rendered up front, 1,000 Pods sat in the baseline).
    let jobs: Vec<JobRequest> = (0..n).map(|_| job()).collect();
    let names: HashSet<String> = jobs
        .iter()
        .map(|j| names::pod_name(j.job_id, j.attempt))
        .collect();
    let creator = {
        let pods = pods.clone();
        tokio::spawn(async move {
            futures::stream::iter(jobs)
                .map(|j| {
                    let pods = pods.clone();
                    let pod = reference_pod(&j, &config);
                    async move { pods.create(&PostParams::default(), &pod).await.unwrap() }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<Pod>>()
                .await;
        })
    };
    let mut running = HashSet::new();
    let deadline = t0 + timeout;
    while running.len() < n && Instant::now() < deadline {
        if let Ok(Some(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) =
            tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
        {
            let name = p.metadata.name.clone().unwrap_or_default();
            if names.contains(&name) && step_running(&p) {
                running.insert(name);
            }
        }
    }
    let start_seconds = t0.elapsed().as_secs_f64();
    let rss_running = rss_kib();
    creator.await.unwrap();
    futures::stream::iter(names.iter().cloned())
        .map(|name| {
            let pods = pods.clone();
            async move {
                let _ = pods.delete(&name, &DeleteParams::default()).await;
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let mut gone = HashSet::new();
    while gone.len() < n && Instant::now() < deadline + timeout {
        if let Ok(Some(watcher::Event::Delete(p))) =
            tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
        {
            gone.insert(p.metadata.name.clone().unwrap_or_default());
        }
    }
    watch.abort();
    side(
        n,
        running.len(),
        start_seconds,
        rss_before,
        rss_running,
        t0,
        gone.len(),
    )
}

/// Sets up a ServiceAccount allowed what the chart's Role allows, and returns its token.
async fn account(admin: &Client, namespace: &str, name: &str) -> String {
    let pp = PostParams::default();
    let meta = |n: &str| ObjectMeta {
        name: Some(n.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectMeta::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let _ = accounts
        .create(
            &pp,
            &ServiceAccount {
                metadata: meta(name),
                ..ServiceAccount::default()
            },
        )
        .await;
    let rule = |resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(resources.iter().map(|s| (*s).to_owned()).collect()),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..PolicyRule::default()
    };
    let _ = Api::<Role>::namespaced(admin.clone(), namespace)
        .create(
            &pp,
            &Role {
                metadata: meta(name),
                rules: Some(vec![
                    rule(&["pods"], &["create", "get", "list", "watch", "delete"]),
                    rule(&["pods/log"], &["get"]),
                    rule(&["secrets"], &["create", "delete"]),
                    // As the chart: Gantry's one watch on the cluster autoscaler's Events
                    // (without it, a 403 retried with backoff all run long).
                    rule(&["events"], &["list", "watch"]),
                ]),
            },
        )
        .await;
    let _ = Api::<RoleBinding>::namespaced(admin.clone(), namespace)
        .create(
            &pp,
            &RoleBinding {
                metadata: meta(name),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: name.to_owned(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: name.to_owned(),
                    namespace: Some(namespace.to_owned()),
                    ..Subject::default()
                }]),
            },
        )
        .await;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(7200),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    accounts
        .create_token_request(name, &pp, &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap()
}

/// A user's requests in the audit log.
#[derive(Default)]
struct Audit {
    /// By "verb resource[/subresource]".
    requests: BTreeMap<String, u64>,
    /// By "verb resource[/subresource]", then by answer: the status code, or `cancelled` for
    /// a 500 `context canceled`, which is the client hanging up on a request still open (a
    /// log stream that had not sent anything yet when its job ended).
    responses: BTreeMap<String, BTreeMap<String, u64>>,
}

fn audit(log: &PathBuf, user: &str) -> Audit {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // A long-running request (a watch, a followed log) has an entry when its response starts
    // and one when it completes: count it once, with the last status seen.
    let mut by_id: HashMap<String, (String, String)> = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["user"]["username"] != user {
            continue;
        }
        let r = &v["objectRef"];
        let resource = match r["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or("")),
            None => r["resource"].as_str().unwrap_or("").to_owned(),
        };
        let key = format!("{} {resource}", v["verb"].as_str().unwrap_or(""));
        let status = &v["responseStatus"];
        let answer = match status["code"].as_u64() {
            Some(500)
                if status["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("context canceled")) =>
            {
                "cancelled".to_owned()
            }
            Some(code) => code.to_string(),
            None => "none".to_owned(),
        };
        by_id.insert(v["auditID"].to_string(), (key, answer));
    }
    let mut out = Audit::default();
    for (key, answer) in by_id.into_values() {
        *out.requests.entry(key.clone()).or_default() += 1;
        *out.responses
            .entry(key)
            .or_default()
            .entry(answer)
            .or_default() += 1;
    }
    out
}

/// `fs.inotify.max_user_instances`: how many log streams kwok can follow at once.
fn inotify_instances() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// "kube-apiserver v1.36.3, kwok nodes: 3".
async fn cluster(admin: &Client) -> String {
    let version = admin
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_default();
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(admin.clone())
        .list(&Default::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(0);
    let kwok = std::env::var("GANTRY_TEST_CLUSTER_BIN")
        .ok()
        .and_then(|b| {
            let dir = PathBuf::from(b);
            Some(dir.parent()?.file_name()?.to_string_lossy().into_owned())
        })
        .and_then(|d| d.split_once("-kwok-").map(|(_, v)| v.to_owned()))
        .unwrap_or_default();
    format!("kube-apiserver {version}, {nodes} kwok {kwok} nodes")
}

fn run_side(which: &str, token: &str, namespace: &str, n: usize, timeout: Duration) -> Side {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--side", which, "--jobs", &n.to_string()])
        .env("GANTRY_BENCH_TOKEN", token)
        .env("GANTRY_BENCH_NAMESPACE", namespace)
        .env("GANTRY_BENCH_TIMEOUT", timeout.as_secs().to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "the {which} side failed");
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--side") {
        let n: usize = args[args.iter().position(|a| a == "--jobs").unwrap() + 1]
            .parse()
            .unwrap();
        let token = env("GANTRY_BENCH_TOKEN");
        let namespace = env("GANTRY_BENCH_NAMESPACE");
        let timeout = Duration::from_secs(env("GANTRY_BENCH_TIMEOUT").parse().unwrap());
        let side = match args[i + 1].as_str() {
            "gantry" => gantry_side(&token, &namespace, n, timeout).await,
            _ => reference_side(&token, &namespace, n, timeout).await,
        };
        println!("{}", serde_json::to_string(&side).unwrap());
        return;
    }
    if !args.iter().any(|a| a == "--bench") && args.len() > 1 {
        return; // `cargo test --benches` and filters: nothing to do.
    }
    let audit_log: PathBuf = std::env::var("GANTRY_BENCH_AUDIT_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env("GANTRY_TEST_CLUSTER_DIR")).join("audit.log"));
    assert!(
        audit_log.exists(),
        "no audit log at {}: run this bench through scripts/bench (part `cluster`)",
        audit_log.display()
    );
    let sizes: Vec<usize> = std::env::var("GANTRY_BENCH_CLUSTER_SIZES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let timeout = Duration::from_secs(
        std::env::var("GANTRY_BENCH_CLUSTER_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let namespace = env("GANTRY_TEST_KUBE_NAMESPACE");
    let admin = client(&env("GANTRY_TEST_KUBE_TOKEN")).await;
    let machine = gantry_bench::machine();
    let cluster = cluster(&admin).await;
    let instances = inotify_instances();
    if let (Some(limit), Some(&max)) = (instances, sizes.iter().max())
        && (max as u64) > limit
    {
        eprintln!(
            "cluster bench: fs.inotify.max_user_instances is {limit}: kwok cannot follow more \
             log streams than that at once, so Gantry's log opens beyond it are refused (400) \
             and retried; raise it (sysctl -w fs.inotify.max_user_instances={}) to measure {max} \
             followed jobs",
            (max + 256).next_power_of_two()
        );
    }
    let mut results = Vec::new();
    for n in sizes {
        let mut row = serde_json::Map::new();
        row.insert("jobs".into(), json!(n));
        for which in ["gantry", "reference"] {
            let user = format!("bench-{which}-{n}");
            let token = account(&admin, &namespace, &user).await;
            eprintln!("cluster bench: {which}, {n} jobs");
            let side = run_side(which, &token, &namespace, n, timeout);
            // The audit log is written asynchronously (batched): let it settle.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let counts = audit(
                &audit_log,
                &format!("system:serviceaccount:{namespace}:{user}"),
            );
            let total: u64 = counts.requests.values().sum();
            let mut v = serde_json::to_value(&side).unwrap();
            v["requests"] = json!(counts.requests);
            v["responses"] = json!(counts.responses);
            v["requests_per_job"] = json!(total as f64 / n as f64);
            eprintln!("  {v}");
            row.insert(which.into(), v);
        }
        let ratio = |key: &str| {
            let g = row["gantry"][key].as_f64().unwrap_or(0.0);
            let r = row["reference"][key].as_f64().unwrap_or(0.0);
            if r > 0.0 { g / r } else { f64::NAN }
        };
        let ratios = json!({
            "starts_per_second": ratio("starts_per_second"),
            "requests_per_job": ratio("requests_per_job"),
            "kib_per_job": ratio("kib_per_job"),
        });
        row.insert("ratio".into(), ratios);
        results.push(Value::Object(row));
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .display()
            .to_string()
    });
    let dir = gantry_bench::results_dir(std::path::Path::new(&target));
    std::fs::create_dir_all(&dir).unwrap();
    let out = json!({
        "measured": chrono::Utc::now().to_rfc3339(),
        "machine": machine,
        "cluster": cluster,
        "inotify_max_user_instances": instances,
        "sizes": results,
    });
    std::fs::write(
        dir.join("cluster.json"),
        serde_json::to_string_pretty(&out).unwrap(),
    )
    .unwrap();
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
