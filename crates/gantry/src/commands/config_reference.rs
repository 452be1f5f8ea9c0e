//! `gantry config-reference` (hidden): docs/configuration.md, generated from the command line's
//! clap definitions (every flag with its environment variable, default and help) and from the
//! configuration file's types (`[kubernetes]` and `[[grants]]` keys and defaults come from
//! serializing their defaults). A test fails when the committed file differs.

use std::fmt::Write as _;

use serde_json::Value;

/// The whole of docs/configuration.md.
pub fn markdown(cli: &clap::Command) -> String {
    let mut out = String::new();
    out.push_str(HEADER);
    let _ = writeln!(out, "## Flags and environment variables\n");
    out.push_str(
        "Every flag can be given as the environment variable next to it instead. Secrets \
         (tokens, webhook secrets) are best given as environment variables from Kubernetes \
         Secrets, as the Helm chart does.\n\n",
    );
    let _ = writeln!(out, "### Every command\n");
    table(&mut out, cli.get_arguments());
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let args: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_global_set() && !is_builtin(a))
            .collect();
        if args.is_empty() {
            continue;
        }
        let _ = writeln!(out, "### `gantry {}`\n", sub.get_name());
        if let Some(about) = sub.get_about() {
            let _ = writeln!(out, "{about}\n");
        }
        table(&mut out, args.into_iter());
    }
    out.push_str(FILE);
    let _ = writeln!(out, "### `[kubernetes]`\n");
    out.push_str(
        "The Kubernetes backend. Every key is optional; the defaults below are the code's.\n\n",
    );
    keys_table(
        &mut out,
        "",
        &to_value(&gantry_kube::KubeConfig::default()),
        KUBERNETES_KEYS,
    );
    out.push_str(NODE_POOLS_AND_MIRRORS);
    let _ = writeln!(out, "### `[[grants]]`\n");
    out.push_str(
        "Which Kubernetes Secrets (in the build namespace) which repositories may use. \
         Nothing is granted unless listed; pull requests from forks never get secrets.\n\n",
    );
    keys_table(
        &mut out,
        "",
        &to_value(&gantry_engine::SecretGrant::default()),
        GRANT_KEYS,
    );
    out.push_str(EXAMPLE);
    out
}

fn to_value<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("configuration types serialize")
}

fn is_builtin(arg: &clap::Arg) -> bool {
    matches!(arg.get_id().as_str(), "help" | "version")
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn table<'a>(out: &mut String, args: impl Iterator<Item = &'a clap::Arg>) {
    out.push_str("| flag | environment variable | default | meaning |\n|---|---|---|---|\n");
    for arg in args.filter(|a| !is_builtin(a)) {
        let flag = match (arg.get_long(), arg.is_positional()) {
            (_, true) => format!("`{}` (argument)", arg.get_id()),
            (Some(long), false) => {
                let values: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .filter(|v| !v.is_hide_set())
                    .map(|v| v.get_name().to_owned())
                    .collect();
                let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values())
                    && !matches!(
                        arg.get_action(),
                        clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
                    );
                match (takes_value, values.is_empty()) {
                    (false, _) => format!("`--{long}`"),
                    (true, false) => format!("`--{long} {}`", values.join("\\|")),
                    (true, true) => format!(
                        "`--{long} {}`",
                        arg.get_value_names()
                            .and_then(|n| n.first())
                            .map_or_else(|| "VALUE".into(), |n| n.to_string())
                    ),
                }
            }
            (None, false) => format!("`{}`", arg.get_id()),
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if default.is_empty() {
            String::new()
        } else {
            format!("`{}`", default.join(","))
        };
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| cell(&h.to_string()))
            .unwrap_or_default();
        let _ = writeln!(out, "| {flag} | {env} | {default} | {help} |");
    }
    out.push('\n');
}

/// A row per leaf key of `value` (tables are walked; their keys are dotted).
fn keys_table(out: &mut String, prefix: &str, value: &Value, docs: &[(&str, &str)]) {
    out.push_str("| key | default | meaning |\n|---|---|---|\n");
    let mut rows = Vec::new();
    leaves(prefix, value, &mut rows);
    for (key, default) in rows {
        let meaning = docs.iter().find(|(k, _)| *k == key).map_or("", |(_, d)| *d);
        let _ = writeln!(
            out,
            "| `{key}` | `{}` | {} |",
            cell(&default),
            cell(meaning)
        );
    }
    out.push('\n');
}

fn leaves(prefix: &str, value: &Value, rows: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) if !map.is_empty() && !prefix.ends_with("node_selector") => {
            for (key, inner) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&key, inner, rows);
            }
        }
        Value::Object(_) if prefix == "repos" => {
            rows.push((prefix.to_owned(), "{}".to_owned()));
        }
        other => {
            let text = match other {
                Value::Null => "unset".to_owned(),
                Value::Object(map) if map.is_empty() => "{}".to_owned(),
                v => v.to_string(),
            };
            rows.push((prefix.to_owned(), text));
        }
    }
}

const HEADER: &str = "# Configuration reference

<!-- Generated by `gantry config-reference` from the command line's definitions and the
configuration types. Do not edit by hand: run
`cargo run -q -p gantry -- config-reference > docs/configuration.md`.
A test (`cargo test -p gantry config_reference`) fails when this file is stale. -->

`gantry serve` takes its settings from, lowest precedence first: built-in defaults, the TOML
file named by `--config` (`GANTRY_CONFIG`), `GANTRY_*` environment variables, and flags. In the
Helm chart, the file is rendered from `values.yaml` (`config:`) into a ConfigMap, secrets come
as environment variables from existing Kubernetes Secrets, and everything else is a flag.

";

const FILE: &str = "## The configuration file (TOML)

Unknown keys are refused with their line and column. The top-level keys and the forge tables
mirror the flags above:

| key | same as | meaning |
|---|---|---|
| `listen` | `--listen` | address to listen on (`0.0.0.0:8080`) |
| `data_dir` | `--data-dir` | the data directory |
| `database_url` | `--database-url` | `postgres://…` (prefer the environment variable: it holds a password) |
| `public_url` | `--public-url` | the URL users reach Gantry at |
| `api_token` | `--api-token` | bearer token of state-changing API calls (prefer the environment variable) |
| `max_running_jobs` | `--max-running-jobs` | jobs running at once |
| `max_running_per_repo` | `--max-running-per-repo` | jobs of one repository running at once |
| `default_job_timeout` | `--default-job-timeout` | timeout of a job whose pipeline sets none (`1h`) |
| `max_job_timeout` | `--max-job-timeout` | the most a job or step may ask for (`24h`); more is refused |
| `backend` | `--backend` | `auto`, `kubernetes` or `local` |

### `[github]`, `[gitlab]`, `[gitea]`

| key | meaning |
|---|---|
| `webhook_secrets` (or `webhook_secret`, `webhook_token`) | one or several secrets (several while one is rotated) |
| `url` | GitHub's API URL, or the GitLab / Gitea / Forgejo instance |
| `token` | API token (prefer `GANTRY_*_TOKEN` from a Secret) |
| `app_id`, `app_private_key_file` | (`[github]` only) a GitHub App instead of a token |
| `read_files` | `api` or `git`: how pipeline files are read at a commit |

### `[[repositories]]`

| key | meaning |
|---|---|
| `name` | `owner/name`, or `owner` for all of an owner's repositories |
| `forge` | `github`, `gitlab` or `gitea` |
| `webhook_secrets` (or `webhook_secret`) | webhook secrets valid only for this repository or owner |
| `cancel_superseded` | cancel a branch's older runs when it is pushed again (default: on) |
| `cancel_superseded_default_branch` | …also on the default branch (default: off) |

";

const NODE_POOLS_AND_MIRRORS: &str = "#### Node pools, image mirrors, air-gapped clusters

`node_selector` and `tolerations` put every build pod on a pool of nodes of its own (tainted so
that nothing else lands there). `image_mirrors` rewrites every container image of a pod: the job's
`image`, its `services` and Gantry's own `images.*` (`gantry render` shows the result). Each
reference is first normalised the way Docker and containerd read it (`alpine:3.22` is
`docker.io/library/alpine:3.22`, `user/app` is `docker.io/user/app`, `ghcr.io/o/app` stays as it
is); the first rule whose `from` is a prefix of that wins and `to` replaces the prefix. A
reference no rule matches is left exactly as written. `from` is a plain string prefix: end it with
`/` to match whole path components (`docker.io/library/alpine` would also match
`docker.io/library/alpine-extra`).

For an air-gapped cluster whose registry `registry.internal` mirrors Docker Hub under `hub/` and
GitHub's registry under `ghcr/`:

```toml
[kubernetes]
image_pull_secrets = [\"registry-internal-pull\"]
node_selector = { \"gantry.dev/ci-pool\" = \"true\" }
# Trivy's vulnerability database, mirrored: `oras copy mirror.gcr.io/aquasec/trivy-db:2 …`
trivy_db_repository = \"registry.internal/aquasec/trivy-db:2\"

[[kubernetes.tolerations]]
key = \"gantry.dev/ci-pool\"
operator = \"Equal\"
value = \"true\"
effect = \"NoSchedule\"

[[kubernetes.image_mirrors]]
from = \"docker.io/\"          # rust:1.95 → registry.internal/hub/library/rust:1.95
to = \"registry.internal/hub/\"

[[kubernetes.image_mirrors]]
from = \"ghcr.io/\"            # Kaniko and the gitops helper
to = \"registry.internal/ghcr/\"
```

Images a step names for its own tools (a `gitops` step's `image:` value written into the config
repository, Kaniko's `destination`) are not container images of the pod and are not rewritten.

What the mirror must hold: every image the pipelines name, under its normalised name with the
prefix replaced, and Gantry's own `images.*` that your pipelines use (`images.clone` for every
job, `images.default_job` for jobs without an `image`, `images.kaniko`, `images.trivy`,
`images.gitops` for those steps). For the examples in [pipelines/](../pipelines/) with the rule
`docker.io/` → `registry.internal/hub/`:

| pipeline names | the pod pulls |
|---|---|
| `rust:1.95` (also `1.94`, `nightly`) | `registry.internal/hub/library/rust:1.95` |
| `golang:1.24` | `registry.internal/hub/library/golang:1.24` |
| `postgres:16` (a service) | `registry.internal/hub/library/postgres:16` |
| `debian:bookworm-slim` | `registry.internal/hub/library/debian:bookworm-slim` |
| (no `image`: `images.default_job`) | `registry.internal/hub/library/alpine:3.22` |
| (the clone: `images.clone`) | `registry.internal/hub/alpine/git:2.49.1` |

Fill it from a machine that reaches both, tag by tag (`skopeo copy
docker://docker.io/library/rust:1.95 docker://registry.internal/hub/library/rust:1.95`) or with
`skopeo sync`. When the mirror needs a login, give it to every pod through `image_pull_secrets`:
a `kubernetes.io/dockerconfigjson` Secret in the build namespace (`kubectl -n gantry-builds
create secret docker-registry registry-internal-pull --docker-server=registry.internal
--docker-username=… --docker-password=…`); the node's container runtime must trust the
registry's certificate. Give it to every pod even when the nodes already hold the images:
since Kubernetes 1.35 the kubelet checks the credentials of a pod that uses an image it once
pulled with a pull Secret (`imagePullCredentialsVerificationPolicy`), and a pod without them
fails with `ErrImagePull: … no basic auth credentials`. The test suite does exactly this on its real node
(`tests/it/real_node_examples.rs`): one rule, the test images copied into the node's registry
(TLS, basic auth) under the mirrored names, a pull Secret, and every example that needs no
internet run through `gantry serve`.

";

const EXAMPLE: &str = "## Example

```toml
public_url = \"https://ci.example.com\"
max_running_jobs = 20
backend = \"kubernetes\"

[github]
read_files = \"api\"          # the token and webhook secret come from GANTRY_GITHUB_* variables

[[repositories]]
name = \"acme/app\"
forge = \"github\"
cancel_superseded_default_branch = true

[[grants]]
secret = \"registry-push\"
repos = [\"acme/*\"]
branches = [\"main\"]

[kubernetes]
namespace = \"gantry-builds\"
security = \"baseline\"
image_pull_secrets = [\"registry-pull\"]
[kubernetes.images]
gitops = \"ghcr.io/gantry-ci/gitops-helper:0.1.0\"
```
";

/// The meaning of every `[kubernetes]` key (a test checks none is missing).
const KUBERNETES_KEYS: &[(&str, &str)] = &[
    (
        "namespace",
        "the build namespace: pods and per-job Secrets are created there and nowhere else",
    ),
    (
        "images.clone",
        "image of the `clone` init container (needs `git` and `/bin/sh`)",
    ),
    (
        "images.kaniko",
        "the Kaniko executor (a maintained fork; Kaniko is archived upstream)",
    ),
    ("images.trivy", "the Trivy image (with `/bin/sh`)"),
    (
        "images.gitops",
        "the gitops helper (`/bin/sh`, `git`, `yq`); `crates/gantry-kube/gitops/Dockerfile`",
    ),
    ("images.default_job", "image of jobs that name none"),
    (
        "workspace_size",
        "`sizeLimit` of the workspace `emptyDir` when a job sets no `ephemeral_storage`",
    ),
    (
        "image_pull_secrets",
        "Secrets (in the build namespace) every pod pulls images with",
    ),
    (
        "service_account",
        "service account of build pods (its token is never mounted); unset: `default`",
    ),
    (
        "node_selector",
        "node selector entries for every pod, under the job's own",
    ),
    (
        "tolerations",
        "tolerations for every pod, before the job's own (`[[kubernetes.tolerations]]`: `key`, `operator`, `value`, `effect`); for a dedicated, tainted CI node pool",
    ),
    (
        "image_mirrors",
        "image rewriting for mirrors (`[[kubernetes.image_mirrors]]`: `from`, `to`), in every container of every pod (job images, services, `images.*`); the first `from` that is a prefix of the normalised reference wins; see below",
    ),
    (
        "trivy_db_repository",
        "where `trivy` steps fetch the vulnerability database (an OCI repository such as `registry.internal/aquasec/trivy-db:2`); unset: Trivy's default on the internet. For air-gapped clusters: mirror it (`oras copy`, `skopeo copy`)",
    ),
    (
        "gitops_agents",
        "the GitOps agents that deploy from configuration repositories (`[[kubernetes.gitops_agents]]`: `repo`, `flux = { namespace, name }` of the GitRepository); after a `gitops` step pushes there, Gantry sets Flux's `reconcile.fluxcd.io/requestedAt` so the deploy starts at once instead of at the next poll (`namespace` defaults to `flux-system`; Gantry's ServiceAccount needs `patch` on that GitRepository, which the Helm chart grants for each `config.kubernetes.gitops_agents` entry); see docs/gitops.md",
    ),
    (
        "security",
        "`baseline` or `restricted` (Pod Security Standards); `restricted` refuses Kaniko steps",
    ),
    (
        "restricted_uid",
        "uid and gid of every container under `restricted`",
    ),
    (
        "repos",
        "per repository (`[kubernetes.repos.\"owner/name\"]`): `security`, `node_selector`",
    ),
    ("grants", "set from `[[grants]]` (leave it out here)"),
    (
        "run_capabilities",
        "capabilities `run` steps and services keep (all in the baseline allow-list)",
    ),
    (
        "timings.stuck_grace",
        "seconds an image pull error, config error or unschedulable pod may last before the job ends as `error`; an unschedulable pod the cluster autoscaler scales up for (`TriggeredScaleUp`) waits until the job's timeout, one it will not (`NotTriggerScaleUp`) ends at once",
    ),
    (
        "timings.cancel_grace",
        "`gracePeriodSeconds` when a cancel deletes a pod",
    ),
    (
        "timings.retention",
        "seconds finished pods are kept before the sweeper deletes them",
    ),
    ("timings.sweep_every", "seconds between sweeps"),
    (
        "timings.orphan_min_age",
        "seconds a pod the store does not know must exist before it is swept",
    ),
    (
        "timings.backoff",
        "first retry delay of a failed API request (doubles)",
    ),
    ("timings.max_backoff", "longest retry delay"),
    ("timings.max_attempts", "tries of one API request"),
    (
        "timings.request_timeout",
        "seconds one API request may take",
    ),
    (
        "timings.log_drain",
        "seconds a step's log may keep arriving after its container ended",
    ),
];

const GRANT_KEYS: &[(&str, &str)] = &[
    ("secret", "the Secret's name in the build namespace"),
    ("repos", "`owner/name` globs (`acme/*`)"),
    (
        "branches",
        "branch globs; empty: every branch and tag. A branch-scoped grant never matches a pull request",
    ),
    (
        "pull_requests",
        "also for pull requests from branches of the same repository (never from forks)",
    ),
];

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn generated() -> String {
        markdown(&crate::cli::Cli::command())
    }

    #[test]
    fn docs_configuration_md_is_up_to_date() {
        let committed = include_str!("../../../../docs/configuration.md");
        let fresh = generated();
        if committed != fresh {
            let first = committed
                .lines()
                .zip(fresh.lines())
                .position(|(a, b)| a != b)
                .map_or_else(|| "at its end".to_owned(), |n| format!("at line {}", n + 1));
            panic!(
                "docs/configuration.md is stale ({first}): run \
                 `cargo run -q -p gantry -- config-reference > docs/configuration.md`"
            );
        }
    }

    #[test]
    fn every_file_key_has_a_meaning() {
        let mut rows = Vec::new();
        leaves(
            "",
            &to_value(&gantry_kube::KubeConfig::default()),
            &mut rows,
        );
        for (key, _) in rows {
            assert!(
                KUBERNETES_KEYS.iter().any(|(k, _)| *k == key),
                "[kubernetes] {key} has no meaning in config_reference.rs"
            );
        }
        let mut rows = Vec::new();
        leaves(
            "",
            &to_value(&gantry_engine::SecretGrant::default()),
            &mut rows,
        );
        for (key, _) in rows {
            assert!(
                GRANT_KEYS.iter().any(|(k, _)| *k == key),
                "[[grants]] {key}"
            );
        }
    }

    #[test]
    fn every_serve_flag_and_variable_is_documented() {
        let text = generated();
        let cli = crate::cli::Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments().filter(|a| !is_builtin(a)) {
            let env = arg.get_env().unwrap().to_string_lossy().into_owned();
            assert!(text.contains(&format!("`{env}`")), "{env}");
        }
    }

    #[test]
    fn the_air_gapped_example_parses_into_mirrors_and_tolerations() {
        let example = NODE_POOLS_AND_MIRRORS
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        let config = super::super::serve_config::FileConfig::parse(example).unwrap();
        let kube = config.kubernetes.unwrap();
        assert_eq!(kube.image_mirrors.len(), 2);
        assert_eq!(
            kube.trivy_db_repository.as_deref(),
            Some("registry.internal/aquasec/trivy-db:2")
        );
        assert_eq!(kube.tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(
            gantry_kube::images::rewrite("rust:1.95", &kube.image_mirrors),
            "registry.internal/hub/library/rust:1.95"
        );
    }

    #[test]
    fn the_example_file_parses() {
        let example = EXAMPLE
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap();
        super::super::serve_config::FileConfig::parse(example).unwrap();
    }
}
