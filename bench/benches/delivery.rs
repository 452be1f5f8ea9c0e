//! Issue 18, item 8: the delivery chain on the test cluster's real node, through the release
//! `gantry serve` on the Kubernetes backend (every pod on the real node, the pipeline read
//! through a fake GitHub's contents API, a signed push webhook per sample):
//!
//! 1. Kaniko's layer cache: per sample a new commit whose pipeline builds the same Dockerfile
//!    twice, job `second` after job `first`, into an image repository and a cache repository
//!    named after the commit (so both are new in the node's registry); each build timed from
//!    its step's `started_at` to its `finished_at` (the API), ratio second ÷ first, and whether
//!    the second build's log says it used a cached layer.
//! 2. A push webhook → the new Deployment Ready, link by link: a `test` job, a Kaniko build and
//!    push, a Trivy scan (against a database the trivydb tool pushed, `trivy_db_repository`), a
//!    `gitops` bump of a kustomize overlay in a configuration repository on the node's git
//!    server, and Flux (running beside the cluster) rolling the Deployment out on the real node.
//!    Two sides in the same run, alternated: Gantry tells Flux (`[[kubernetes.gitops_agents]]`)
//!    and not (Flux finds the commit at its GitRepository's next poll); both GitRepositories
//!    poll at the same `interval`. The links come from the API (the run's `created_at`, each
//!    job's `started_at`/`finished_at`), the bench's own clock (webhook sent), the
//!    configuration repository's branch seen moving on disk (polled every 100 ms), and the
//!    Deployment seen rolled out with the new image (polled every 100 ms through kube-rs).
//!
//! Cache samples and chain samples take turns (cache sample 1, told, untold, cache sample 2,
//! untold, told, …), so drift hits all of them. The chain's builds use the cache repository of
//! the first cache sample (the same first stage), as a project's builds after its first one
//! would.
//!
//! Run through `scripts/bench` (part `delivery`), which builds the release `gantry` and runs
//! this inside `tests/cluster/with-cluster` (the real node, its registry and git server, the
//! delivery images and Flux). Environment: GANTRY_BENCH_GANTRY (the gantry binary),
//! GANTRY_BENCH_DELIVERY_CACHE_RUNS (cache samples, default 2), GANTRY_BENCH_DELIVERY_RUNS
//! (chain samples per side, default 3), GANTRY_BENCH_DELIVERY_FLUX_INTERVAL (the
//! GitRepositories' interval in seconds, default 30), GANTRY_BENCH_DELIVERY_LIMIT (seconds for
//! the whole sampling, default 720; it stops there and says so). Writes
//! `target/gantry-bench/delivery.json` for `bench-report`. A timing is never a pass/fail test:
//! the bench fails only when nothing could be measured.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use gantry_bench::{CacheSample, ChainSample, DeliveryResult};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use serde_json::{Value, json};

#[path = "support/mod.rs"]
#[allow(dead_code)]
mod support;
use support::{Gantry, Serve, ZERO, env_or, get_json, ms, now, push, repository, rfc3339};

fn var(name: &str) -> anyhow::Result<String> {
    support::var("delivery", name)
}

/// What a Kaniko log says when a layer came from the cache.
const CACHED: [&str; 2] = ["Found cached layer", "Using caching version"];

/// The links of the chain, in order: between consecutive moments of [`Moments`].
const LINKS: [&str; 10] = [
    "webhook sent → run created",
    "run created → `test` started",
    "`test` (one `run` step)",
    "`test` ended → `image` started",
    "`image` (Kaniko build and push)",
    "`image` ended → `scan` started",
    "`scan` (Trivy)",
    "`scan` ended → `deploy` started",
    "`deploy` started → config pushed",
    "config pushed → Deployment Ready",
];

/// The cache samples' Dockerfile: a first stage whose `RUN` does a few seconds of work (twelve
/// `gzip -9` passes over a million lines) and leaves about 6 MB, and a final stage that copies
/// its output. The chain's app adds `extra` (its commit's `n.txt`) at the end.
fn dockerfile(base: &str, extra: &str) -> String {
    format!(
        "FROM {base} AS build\n\
         RUN mkdir -p /out && seq 1 1000000 > /out/numbers.txt \
         && for i in $(seq 1 12); do gzip -9 -c /out/numbers.txt | sha256sum >> /out/rounds.txt; done \
         && gzip -9 /out/numbers.txt && head -c 4194304 /dev/urandom > /out/blob\n\
         FROM {base}\n\
         COPY --from=build /out /out\n\
         {extra}CMD [\"sleep\", \"3600\"]\n"
    )
}

/// Build 1, then build 2 of the same Dockerfile, into repositories named after the commit.
fn cache_pipeline(prefix: &str) -> String {
    let build = |job: &str, tag: u32, needs: &str| {
        format!(
            r#"  {job}:
{needs}    steps:
      - name: build {tag}
        kaniko:
          destination: "{prefix}/app-${{GANTRY_COMMIT_SHA}}:{tag}"
          cache: true
          cache_repo: "{prefix}/app-${{GANTRY_COMMIT_SHA}}-cache"
          registry_secret: registry
"#
        )
    };
    format!(
        "name: kaniko-cache\njobs:\n{}{}",
        build("first", 1, ""),
        build("second", 2, "    needs: [first]\n")
    )
}

fn chain_pipeline(base: &str, image: &str, cache_repo: &str, config_url: &str) -> String {
    format!(
        r#"name: delivery
on:
  push: {{ branches: [main] }}
env:
  IMAGE: {image}
jobs:
  test:
    image: {base}
    steps:
      - name: unit tests
        run: grep -q FROM Dockerfile && test -s n.txt && echo "tests pass"
  image:
    needs: [test]
    steps:
      - name: build and push
        kaniko:
          destination: "${{IMAGE}}:${{GANTRY_COMMIT_SHA}}"
          cache: true
          cache_repo: {cache_repo}
          registry_secret: registry
  scan:
    needs: [image]
    steps:
      - name: scan
        trivy:
          image: "${{IMAGE}}:${{GANTRY_COMMIT_SHA}}"
          severity: [CRITICAL, HIGH]
          ignore_unfixed: true
          registry_secret: registry
  deploy:
    needs: [scan]
    steps:
      - name: bump prod
        gitops:
          repo: {config_url}
          branch: main
          path: overlays/prod
          image: ${{IMAGE}}
          tag: ${{GANTRY_COMMIT_SHA}}
          token_secret: config-token
"#
    )
}

/// The configuration repository's overlay: Deployment `name` on the real node, at `:initial`.
fn config_files(image: &str, name: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "overlays/prod/kustomization.yaml",
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [deployment.yaml]\nimages:\n  - name: {image}\n    newTag: initial\n"
            ),
        ),
        (
            "overlays/prod/deployment.yaml",
            format!(
                r#"apiVersion: apps/v1
kind: Deployment
metadata: {{ name: {name} }}
spec:
  replicas: 1
  selector: {{ matchLabels: {{ app: {name} }} }}
  template:
    metadata: {{ labels: {{ app: {name} }} }}
    spec:
      nodeSelector: {{ gantry.dev/real-node: "true" }}
      tolerations: [{{ key: gantry.dev/real-node, operator: Equal, value: "true", effect: NoSchedule }}]
      imagePullSecrets: [{{ name: registry }}]
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: {image}:initial
          command: [sleep, "3600"]
"#
            ),
        ),
    ]
}

/// The node's registry and its login.
struct Registry {
    host: String,
    ca: PathBuf,
    user: String,
    password: String,
}

impl Registry {
    fn http(&self) -> anyhow::Result<reqwest::Client> {
        let ca = std::fs::read(&self.ca)?;
        Ok(reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
            .timeout(Duration::from_secs(120))
            .build()?)
    }

    /// `src` (an image of this registry) as `dst` (`REPO:TAG` of this registry) with a label
    /// added to its config: the same layers, but not the same image. (An identical copy has
    /// the same image ID, and a kubelet that pulled it with credentials asks for credentials
    /// for `src` too: the jobs' clone container, which has none, would no longer start.)
    async fn relabel(&self, src: &str, dst: &str) -> anyhow::Result<()> {
        let http = self.http()?;
        let host = format!("{}/", self.host);
        let split = |r: &str| -> anyhow::Result<(String, String)> {
            let r = r
                .strip_prefix(&host)
                .with_context(|| format!("{r} is not in {}", self.host))?;
            let (repo, tag) = r
                .rsplit_once(':')
                .with_context(|| format!("{r} has no tag"))?;
            Ok((repo.to_owned(), tag.to_owned()))
        };
        let ((src_repo, src_tag), (dst_repo, dst_tag)) = (split(src)?, split(dst)?);
        let v2 = format!("https://{}/v2", self.host);
        let auth = |r: reqwest::RequestBuilder| r.basic_auth(&self.user, Some(&self.password));
        let answer = auth(http.get(format!("{v2}/{src_repo}/manifests/{src_tag}")))
            .header(
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json, \
                 application/vnd.oci.image.manifest.v1+json",
            )
            .send()
            .await?
            .error_for_status()?;
        let media = answer
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/vnd.docker.distribution.manifest.v2+json")
            .to_owned();
        let mut manifest: Value = answer.json().await?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .context("the manifest has no config")?
            .to_owned();
        let mut config: Value = auth(http.get(format!("{v2}/{src_repo}/blobs/{config_digest}")))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if !config["config"]["Labels"].is_object() {
            config["config"]["Labels"] = json!({});
        }
        config["config"]["Labels"]["dev.gantry.bench"] = "initial".into();
        let config = serde_json::to_vec(&config)?;
        let digest = {
            use sha2::Digest as _;
            format!("sha256:{:x}", sha2::Sha256::digest(&config))
        };
        // The new config, uploaded in one piece.
        let started = auth(http.post(format!("{v2}/{dst_repo}/blobs/uploads/")))
            .send()
            .await?
            .error_for_status()?;
        let location = started
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .context("the registry gave no upload location")?
            .to_owned();
        let location = if location.starts_with('/') {
            format!("https://{}{location}", self.host)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        auth(http.put(format!("{location}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(config.clone())
            .send()
            .await?
            .error_for_status()?;
        // The layers, mounted from the source repository.
        for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
            let d = layer["digest"].as_str().context("a layer without digest")?;
            let mounted = auth(http.post(format!(
                "{v2}/{dst_repo}/blobs/uploads/?mount={d}&from={src_repo}"
            )))
            .send()
            .await?;
            anyhow::ensure!(
                mounted.status().as_u16() == 201,
                "the registry did not mount {d} from {src_repo}: {}",
                mounted.status()
            );
        }
        manifest["config"]["digest"] = digest.into();
        manifest["config"]["size"] = config.len().into();
        auth(http.put(format!("{v2}/{dst_repo}/manifests/{dst_tag}")))
            .header("content-type", media)
            .body(serde_json::to_vec(&manifest)?)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// A `kubernetes.io/dockerconfigjson` Secret for the registry.
    fn secret(&self, name: &str) -> Secret {
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.user, self.password));
        let config = json!({ "auths": { self.host.clone(): { "auth": auth } } });
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/dockerconfigjson".into()),
            string_data: Some(BTreeMap::from([(
                ".dockerconfigjson".into(),
                config.to_string(),
            )])),
            ..Secret::default()
        }
    }
}

/// Builds the Trivy database from the scan tests' fixture and pushes it as `reference`.
fn push_trivy_db(trivydb: &str, registry: &Registry, reference: &str) -> anyhow::Result<()> {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cluster/delivery/trivy-db.yaml");
    let out = Command::new(trivydb)
        .arg("--push")
        .arg(reference)
        .arg("--ca")
        .arg(&registry.ca)
        .args(["--user", &registry.user, "--password", &registry.password])
        .arg(&fixture)
        .output()
        .with_context(|| format!("cannot run {trivydb}"))?;
    anyhow::ensure!(
        out.status.success(),
        "trivydb: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn flux_api(
    client: &Client,
    ns: &str,
    kind: &str,
    plural: &str,
    group: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, "v1", kind);
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

/// What Flux needs to follow one configuration repository (named `name` in its namespace).
struct Flux {
    client: Client,
    ns: String,
}

impl Flux {
    fn sources(&self) -> Api<DynamicObject> {
        flux_api(
            &self.client,
            &self.ns,
            "GitRepository",
            "gitrepositories",
            "source.toolkit.fluxcd.io",
        )
    }

    fn kustomizations(&self) -> Api<DynamicObject> {
        flux_api(
            &self.client,
            &self.ns,
            "Kustomization",
            "kustomizations",
            "kustomize.toolkit.fluxcd.io",
        )
    }

    /// A GitRepository polling `url` every `interval` seconds (with the git server's login and
    /// CA in a Secret), and a Kustomization applying its `overlays/prod` into `target`.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        name: &str,
        url: &str,
        interval: u64,
        target: &str,
        user: &str,
        password: &str,
        ca: &str,
    ) -> anyhow::Result<()> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        secrets
            .create(
                &PostParams::default(),
                &Secret {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        ..ObjectMeta::default()
                    },
                    string_data: Some(BTreeMap::from([
                        ("username".into(), user.to_owned()),
                        ("password".into(), password.to_owned()),
                        ("ca.crt".into(), ca.to_owned()),
                    ])),
                    ..Secret::default()
                },
            )
            .await?;
        let source: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": { "name": name },
            "spec": {
                "url": url,
                "interval": format!("{interval}s"),
                "ref": { "branch": "main" },
                "secretRef": { "name": name },
            }
        }))?;
        self.sources()
            .create(&PostParams::default(), &source)
            .await?;
        let kustomization: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": { "name": name },
            "spec": {
                "interval": "1h",
                "retryInterval": "5s",
                "path": "./overlays/prod",
                "prune": true,
                "targetNamespace": target,
                "sourceRef": { "kind": "GitRepository", "name": name },
            }
        }))?;
        self.kustomizations()
            .create(&PostParams::default(), &kustomization)
            .await?;
        Ok(())
    }

    async fn forget(&self, name: &str) {
        let dp = DeleteParams::default();
        let _ = self.kustomizations().delete(name, &dp).await;
        let _ = self.sources().delete(name, &dp).await;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns);
        let _ = secrets.delete(name, &dp).await;
    }
}

/// Deployment `d` rolled out with `image`, as `kubectl rollout status` sees it: the controller
/// has seen the current spec, every replica is updated and available, and no old one is left.
fn rolled_out(d: &Deployment, image: &str) -> bool {
    let runs = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .is_some_and(|p| {
            p.containers
                .iter()
                .any(|c| c.image.as_deref() == Some(image))
        });
    let Some(status) = &d.status else {
        return false;
    };
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    runs && status.observed_generation >= d.metadata.generation
        && status.updated_replicas == Some(want)
        && status.replicas == Some(want)
        && status.available_replicas == Some(want)
}

/// The commit `main` of a bare repository points at (read from disk: cheap enough to poll).
fn branch_of(bare: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(bare.join("refs/heads/main")) {
        return Some(text.trim().to_owned());
    }
    let packed = std::fs::read_to_string(bare.join("packed-refs")).ok()?;
    packed.lines().find_map(|l| {
        let (sha, name) = l.split_once(' ')?;
        (name == "refs/heads/main").then(|| sha.to_owned())
    })
}

fn job<'a>(run: &'a Value, name: &str) -> Option<&'a Value> {
    run["jobs"].as_array()?.iter().rfind(|j| j["name"] == name)
}

/// A job's first step: `started_at` → `finished_at`.
fn step_times(job: &Value) -> Option<(f64, f64)> {
    let step = &job["steps"][0];
    Some((
        rfc3339(&step["started_at"])?,
        rfc3339(&step["finished_at"])?,
    ))
}

fn is_final(run: &Value) -> bool {
    ["success", "failure", "error", "cancelled"].contains(&run["status"].as_str().unwrap_or(""))
}

/// Why a run did not succeed: its reason, or its first job's that did not.
fn why(run: &Value) -> String {
    let jobs = run["jobs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let failed = jobs.iter().find(|j| j["status"] != "success");
    match failed {
        Some(j) => format!(
            "run {}: job {} {}: {}",
            run["status"].as_str().unwrap_or("?"),
            j["name"].as_str().unwrap_or("?"),
            j["status"].as_str().unwrap_or("?"),
            j["reason"].as_str().unwrap_or("no reason given")
        ),
        None => format!(
            "run {}: {}",
            run["status"].as_str().unwrap_or("?"),
            run["reason"].as_str().unwrap_or("no reason given")
        ),
    }
}

struct Bench {
    http: reqwest::Client,
    gantry: Gantry,
    git_url: String,
    deployments: Api<Deployment>,
}

/// One side of the chain: its app repository, configuration repository, image and Deployment.
struct Side {
    told: bool,
    app: String,
    shas: Vec<String>,
    config_bare: PathBuf,
    image: String,
    deployment: String,
}

impl Bench {
    async fn step_log(&self, job: &Value) -> String {
        let url = format!(
            "{}/api/v1/jobs/{}/attempts/{}/steps/0/log/raw",
            self.gantry.url,
            job["id"].as_str().unwrap_or(""),
            job["attempt"].as_u64().unwrap_or(1)
        );
        match self.http.get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Sends the push of `shas[i]` of `acme/{app}` as delivery `delivery`.
    async fn push(
        &self,
        app: &str,
        shas: &[String],
        i: usize,
        delivery: &str,
    ) -> anyhow::Result<()> {
        let clone_url = format!("{}/{app}.git", self.git_url);
        let before = if i == 0 { ZERO } else { shas[i - 1].as_str() };
        support::send_push(
            &self.http,
            &self.gantry,
            delivery,
            push(app, &clone_url, before, &shas[i]),
        )
        .await
    }

    /// The run of `delivery` once it exists.
    async fn run_id(&self, delivery: &str) -> Option<String> {
        let url = format!("{}/api/v1/deliveries/github/{delivery}", self.gantry.url);
        let d = get_json(&self.http, &url).await?;
        d["runs"][0].as_str().map(str::to_owned)
    }

    async fn run(&self, id: &str) -> Option<Value> {
        get_json(&self.http, &format!("{}/api/v1/runs/{id}", self.gantry.url)).await
    }

    /// Waits for the run of `delivery` to end, at most `limit`.
    async fn final_run(&self, delivery: &str, limit: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + limit;
        let mut id = None;
        loop {
            if id.is_none() {
                id = self.run_id(delivery).await;
            }
            if let Some(id) = &id
                && let Some(run) = self.run(id).await
                && is_final(&run)
            {
                return Ok(run);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the run of {delivery} did not end within {} s",
                limit.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Cache sample `i`: the two builds of commit `i` of the cache repository.
    async fn cache_sample(
        &self,
        app: &str,
        shas: &[String],
        i: usize,
    ) -> anyhow::Result<CacheSample> {
        let delivery = format!("cache-{i}");
        self.push(app, shas, i, &delivery).await?;
        let run = self.final_run(&delivery, Duration::from_secs(900)).await?;
        anyhow::ensure!(run["status"] == "success", "{}", why(&run));
        let (first, second) = (
            job(&run, "first").context("no job `first`")?,
            job(&run, "second").context("no job `second`")?,
        );
        let (a0, a1) = step_times(first).context("the first build has no step times")?;
        let (b0, b1) = step_times(second).context("the second build has no step times")?;
        let cached = |log: &str| CACHED.iter().any(|c| log.contains(c));
        let (first_log, second_log) = (self.step_log(first).await, self.step_log(second).await);
        if i == 0 {
            // Kept for reading: what each build did, with Kaniko's seconds since its start.
            let dir = support::results_dir();
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(dir.join("delivery-build-1.log"), &first_log);
            let _ = std::fs::write(dir.join("delivery-build-2.log"), &second_log);
        }
        Ok(CacheSample {
            first_ms: ms(a0, a1),
            second_ms: ms(b0, b1),
            first_cached: cached(&first_log),
            second_cached: cached(&second_log),
            first_phases: gantry_bench::kaniko_phases(&first_log),
            second_phases: gantry_bench::kaniko_phases(&second_log),
        })
    }

    /// Chain sample: the push of `side.shas[i]` until its Deployment runs the new image.
    async fn chain_sample(&self, side: &Side, i: usize) -> anyhow::Result<ChainSample> {
        let delivery = format!("{}-{i}", side.app);
        let image = format!("{}:{}", side.image, side.shas[i]);
        let config_before = branch_of(&side.config_bare);
        let sent = now();
        self.push(&side.app, &side.shas, i, &delivery).await?;
        let deadline = Instant::now() + Duration::from_secs(900);
        let (mut pushed, mut ready, mut id, mut run) = (None, None, None, None::<Value>);
        let mut tick = 0u32;
        loop {
            if pushed.is_none() && branch_of(&side.config_bare) != config_before {
                pushed = Some(now());
            }
            if ready.is_none()
                && let Ok(Some(d)) = self.deployments.get_opt(&side.deployment).await
                && rolled_out(&d, &image)
            {
                ready = Some(now());
            }
            if tick.is_multiple_of(10) && run.is_none() {
                if id.is_none() {
                    id = self.run_id(&delivery).await;
                }
                if let Some(id) = &id
                    && let Some(r) = self.run(id).await
                    && is_final(&r)
                {
                    anyhow::ensure!(r["status"] == "success", "{}", why(&r));
                    run = Some(r);
                }
            }
            if let (Some(_), Some(_)) = (&run, ready) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{image} was not rolled out within 900 s (run ended: {}, config pushed: {})",
                run.is_some(),
                pushed.is_some()
            );
            tick += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let run = run.expect("ended");
        let ready = ready.expect("rolled out");
        let pushed = pushed.context("the configuration repository's branch was not seen moving")?;
        let times = |name: &str| -> anyhow::Result<(f64, f64)> {
            let j = job(&run, name).with_context(|| format!("no job `{name}`"))?;
            Ok((
                rfc3339(&j["started_at"]).with_context(|| format!("job {name} has no start"))?,
                rfc3339(&j["finished_at"]).with_context(|| format!("job {name} has no end"))?,
            ))
        };
        let created = rfc3339(&run["created_at"]).context("the run has no created_at")?;
        let (test, image_job, scan, deploy) = (
            times("test")?,
            times("image")?,
            times("scan")?,
            times("deploy")?,
        );
        let moments = [
            sent,
            created,
            test.0,
            test.1,
            image_job.0,
            image_job.1,
            scan.0,
            scan.1,
            deploy.0,
            pushed,
            ready,
        ];
        let gitops_log = self.step_log(job(&run, "deploy").expect("checked")).await;
        let build_log = self.step_log(job(&run, "image").expect("checked")).await;
        Ok(ChainSample {
            links_ms: moments.windows(2).map(|w| ms(w[0], w[1])).collect(),
            told_flux: gitops_log.contains("told Flux to reconcile"),
            build_cached: CACHED.iter().any(|c| build_log.contains(c)),
        })
    }
}

fn lost(result: &mut DeliveryResult, what: String, e: anyhow::Error) {
    eprintln!("delivery: {what} lost: {e:#}");
    result.missing += 1;
    result.failure.get_or_insert(format!("{what}: {e:#}"));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !support::measuring() {
        return Ok(()); // `cargo test --benches` and filters: nothing to do.
    }
    gantry_forge::install_crypto_provider();
    let cache_runs: usize = env_or("GANTRY_BENCH_DELIVERY_CACHE_RUNS", 2).max(1);
    let chain_runs: usize = env_or("GANTRY_BENCH_DELIVERY_RUNS", 3).max(1);
    let interval: u64 = env_or("GANTRY_BENCH_DELIVERY_FLUX_INTERVAL", 30).max(1);
    let limit_s: u64 = env_or("GANTRY_BENCH_DELIVERY_LIMIT", 720);
    let base = var("GANTRY_TEST_IMAGE")?;
    let node_name = var("GANTRY_TEST_REAL_NODE")?;
    let kubeconfig = match std::env::var("KUBECONFIG") {
        Ok(k) => k,
        Err(_) => PathBuf::from(var("GANTRY_TEST_CLUSTER_DIR")?)
            .join("admin.kubeconfig")
            .display()
            .to_string(),
    };
    let gantry_bin = PathBuf::from(var("GANTRY_BENCH_GANTRY")?);
    let registry = Registry {
        host: var("GANTRY_TEST_REGISTRY")?,
        ca: var("GANTRY_TEST_REGISTRY_CA")?.into(),
        user: var("GANTRY_TEST_REGISTRY_USER")?,
        password: var("GANTRY_TEST_REGISTRY_PASSWORD")?,
    };
    let (kaniko, trivy, gitops) = (
        var("GANTRY_TEST_IMAGE_KANIKO")?,
        var("GANTRY_TEST_IMAGE_TRIVY")?,
        var("GANTRY_TEST_IMAGE_GITOPS")?,
    );
    let trivydb = var("GANTRY_TEST_TRIVYDB")?;
    let git_root = PathBuf::from(var("GANTRY_TEST_GIT_ROOT")?);
    let git_url = var("GANTRY_TEST_GIT_URL")?;
    let git_user = var("GANTRY_TEST_GIT_USER")?;
    let token = var("GANTRY_TEST_GIT_PASSWORD")?;
    let git_ca = var("GANTRY_TEST_GIT_CA")?;
    let flux_ns = var("GANTRY_TEST_FLUX_NAMESPACE")?;
    let machine = gantry_bench::machine();

    let client = Client::try_default().await?;
    let node = support::node_versions(&client, &node_name).await;
    let id = std::process::id();
    let ns = format!("bench-delivery-{id}");
    support::namespace(&client, &ns).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(&PostParams::default(), &registry.secret("registry"))
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("config-token".into()),
                    ..ObjectMeta::default()
                },
                string_data: Some(BTreeMap::from([("token".into(), token.clone())])),
                ..Secret::default()
            },
        )
        .await?;
    let prefix = format!("{}/bench-delivery-{id}", registry.host);
    let db = format!("{prefix}/trivy-db:2");
    push_trivy_db(&trivydb, &registry, &db)?;

    // The repositories: the cache samples' app, and each side's app and configuration.
    let cache_app = format!("bench-cache-{id}");
    let (cache_bare, cache_shas) = repository(
        &git_root,
        &cache_app,
        &[
            (".gantry.yaml", cache_pipeline(&prefix)),
            ("Dockerfile", dockerfile(&base, "")),
        ],
        cache_runs,
    )?;
    let chain_cache = format!("{prefix}/app-{}-cache", cache_shas[0]);
    let flux = Flux {
        client: client.clone(),
        ns: flux_ns.clone(),
    };
    let ca_text = std::fs::read_to_string(&git_ca)?;
    let mut sides = Vec::new();
    let mut repos = HashMap::from([(format!("acme/{cache_app}"), cache_bare)]);
    for told in [true, false] {
        let name = if told { "told" } else { "untold" };
        let image = format!("{prefix}/{name}");
        let deployment = format!("app-{name}");
        let config = format!("bench-config-{name}-{id}");
        let (config_bare, _) =
            repository(&git_root, &config, &config_files(&image, &deployment), 1)?;
        let config_url = format!("{git_url}/{config}.git");
        let app = format!("bench-{name}-{id}");
        let (bare, shas) = repository(
            &git_root,
            &app,
            &[
                (
                    ".gantry.yaml",
                    chain_pipeline(&base, &image, &chain_cache, &config_url),
                ),
                ("Dockerfile", dockerfile(&base, "COPY n.txt /n.txt\n")),
            ],
            chain_runs,
        )?;
        repos.insert(format!("acme/{app}"), bare);
        // The Deployment starts at the base image, relabelled as `:initial` (its layers are
        // then on the node, as an app's base layers would be after its first deploy).
        registry
            .relabel(&base, &format!("{image}:initial"))
            .await
            .context("cannot make the Deployments' first image")?;
        flux.follow(
            &config,
            &config_url,
            interval,
            &ns,
            &git_user,
            &token,
            &ca_text,
        )
        .await?;
        sides.push((
            Side {
                told,
                app,
                shas,
                config_bare,
                image,
                deployment,
            },
            config,
            config_url,
        ));
    }
    let told_config = &sides[0];
    let gantry_config = format!(
        r#"backend = "kubernetes"
[kubernetes]
namespace = "{ns}"
node_selector = {{ "gantry.dev/real-node" = "true" }}
tolerations = [{{ key = "gantry.dev/real-node", operator = "Equal", value = "true", effect = "NoSchedule" }}]
trivy_db_repository = "{db}"
[[kubernetes.gitops_agents]]
repo = "{told_url}"
flux = {{ namespace = "{flux_ns}", name = "{told_source}" }}
[kubernetes.images]
clone = "{base}"
default_job = "{base}"
kaniko = "{kaniko}"
trivy = "{trivy}"
gitops = "{gitops}"
[[grants]]
secret = "registry"
repos = ["acme/*"]
[[grants]]
secret = "config-token"
repos = ["acme/*"]
branches = ["main"]
"#,
        told_url = told_config.2,
        told_source = told_config.1,
    );
    let github = support::fake_github(repos).await?;
    let data = tempfile::tempdir()?;
    let gantry = Serve {
        bin: &gantry_bin,
        data: data.path(),
        config: &gantry_config,
        github: &github,
        token: &token,
        kubeconfig: &kubeconfig,
        ca: &git_ca,
    }
    .start()?;
    let bench = Bench {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        gantry,
        git_url: git_url.clone(),
        deployments: Api::namespaced(client.clone(), &ns),
    };

    // Both Deployments first run `:initial`.
    let deadline = Instant::now() + Duration::from_secs(300);
    for (side, _, _) in &sides {
        let image = format!("{}:initial", side.image);
        loop {
            if let Ok(Some(d)) = bench.deployments.get_opt(&side.deployment).await
                && rolled_out(&d, &image)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "Flux did not roll out {} with {image} within 300 s (see the Flux logs in \
                     the cluster directory)",
                    side.deployment
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let t0 = Instant::now();
    let limit = Duration::from_secs(limit_s);
    let mut result = DeliveryResult {
        machine,
        node,
        cache_runs,
        chain_runs,
        limit_s,
        flux_interval_s: interval,
        dockerfile: dockerfile("BASE", ""),
        links: LINKS.iter().map(|l| (*l).to_owned()).collect(),
        ..DeliveryResult::default()
    };
    'rounds: for round in 0..cache_runs.max(chain_runs) {
        let mut order: Vec<Option<&Side>> = Vec::new();
        if round < cache_runs {
            order.push(None);
        }
        if round < chain_runs {
            let (a, b) = (&sides[0].0, &sides[1].0);
            if round % 2 == 0 {
                order.extend([Some(a), Some(b)]);
            } else {
                order.extend([Some(b), Some(a)]);
            }
        }
        for what in order {
            if t0.elapsed() > limit {
                result.stopped_early = true;
                eprintln!(
                    "delivery: the time limit ({limit_s} s) stopped the sampling in round {round}"
                );
                break 'rounds;
            }
            match what {
                None => match bench.cache_sample(&cache_app, &cache_shas, round).await {
                    Ok(s) => {
                        eprintln!(
                            "delivery: cache sample {round}: first build {:.1} s, second {:.1} s ({:.2}×, cached layer: {})",
                            s.first_ms / 1000.0,
                            s.second_ms / 1000.0,
                            s.ratio(),
                            s.second_cached
                        );
                        if round == 0 {
                            result.chain_cache_warm = true;
                        }
                        result.builds.push(s);
                    }
                    Err(e) => lost(&mut result, format!("cache sample {round}"), e),
                },
                Some(side) => match bench.chain_sample(side, round).await {
                    Ok(s) => {
                        eprintln!(
                            "delivery: {} sample {round}: push → Ready {:.1} s, config pushed → Ready {:.1} s (told Flux: {})",
                            if side.told { "told" } else { "untold" },
                            s.total_ms() / 1000.0,
                            s.links_ms.last().copied().unwrap_or(0.0) / 1000.0,
                            s.told_flux
                        );
                        if side.told {
                            result.told.push(s);
                        } else {
                            result.untold.push(s);
                        }
                    }
                    Err(e) => lost(
                        &mut result,
                        format!(
                            "{} chain sample {round}",
                            if side.told { "told" } else { "untold" }
                        ),
                        e,
                    ),
                },
            }
        }
    }
    drop(bench);
    for (_, source, _) in &sides {
        flux.forget(source).await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;

    if result.builds.is_empty() && result.told.is_empty() && result.untold.is_empty() {
        bail!(
            "no sample measured ({}); see the messages above and {}/gantry.log",
            result.failure.as_deref().unwrap_or("no reason recorded"),
            data.keep().display()
        );
    }
    result.measured = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let path = gantry_bench::write(&support::results_dir(), "delivery", &result)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    eprintln!("wrote {}", path.display());
    Ok(())
}
