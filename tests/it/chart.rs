//! The Helm chart speaks the binary's language: every `GANTRY_*` variable the chart sets, with
//! every value set CI checks, is one `gantry serve` reads (as the generated configuration
//! reference lists them), so a renamed flag cannot leave the chart setting a variable nobody
//! reads; and the configuration file it renders from `config` (with `gitops_agents` and
//! `trivy_db_repository`) is one `gantry serve` accepts, with exactly the RBAC those agents
//! need.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::server::Gantry;
use crate::support::workspace;

fn variables(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("GANTRY_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        found.insert(tail[..end].trim_end_matches('_').to_owned());
        rest = &tail[end..];
    }
    found
}

#[test]
fn every_variable_the_chart_sets_is_one_gantry_reads() {
    let root = workspace();
    let reference = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let known = variables(&reference);
    let mut sets = vec![None];
    for entry in std::fs::read_dir(root.join("charts/gantry/ci")).unwrap() {
        sets.push(Some(entry.unwrap().path()));
    }
    let mut checked = 0;
    for values in sets {
        let mut cmd = Command::new(root.join("tests/cluster/helm"));
        cmd.args(["template", "gantry"])
            .arg(root.join("charts/gantry"));
        if let Some(v) = &values {
            cmd.arg("-f").arg(v);
        }
        let out = cmd
            .output()
            .expect("run tests/cluster/helm (it installs helm on first use)");
        assert!(
            out.status.success(),
            "helm template with {values:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout).unwrap();
        for name in variables(&rendered) {
            // Secret values for local jobs are named by the operator.
            if name.starts_with("GANTRY_SECRET") {
                continue;
            }
            assert!(
                known.contains(&name),
                "the chart (values {values:?}) sets {name}, which is not in docs/configuration.md: \
                 no flag of gantry serve reads it"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 20,
        "only {checked} variables found: is the chart rendered?"
    );
}

/// `helm template gantry charts/gantry -n gantry` with a values file; stdout, or stderr as the
/// error.
fn template(values: Option<&Path>) -> Result<String, String> {
    let root = workspace();
    let mut cmd = Command::new(root.join("tests/cluster/helm"));
    cmd.args(["template", "gantry"])
        .arg(root.join("charts/gantry"))
        .args(["--namespace", "gantry"]);
    if let Some(v) = values {
        cmd.arg("-f").arg(v);
    }
    let out = cmd
        .output()
        .expect("run tests/cluster/helm (it installs helm on first use)");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn documents(rendered: &str) -> Vec<Value> {
    rendered
        .split("\n---")
        .filter_map(|doc| {
            let v: Value = serde_saphyr::from_str(doc).ok()?;
            v.is_object().then_some(v)
        })
        .collect()
}

/// Renders with `values` (YAML) written to a file in `dir`.
fn template_with(dir: &Path, values: &str) -> Result<String, String> {
    let file = dir.join("values.yaml");
    std::fs::write(&file, values).unwrap();
    template(Some(&file))
}

const AGENTS: &str = "\
config:
  kubernetes:
    trivy_db_repository: registry.internal/aquasec/trivy-db:2
    gitops_agents:
      - repo: https://git.example.com/acme/config.git
        flux: { name: config }
      - repo: https://git.example.com/acme/staging.git
        flux: { namespace: flux-system, name: staging }
      - repo: https://git.example.com/team/apps.git
        flux: { namespace: team-flux, name: apps }
";

/// Roles and RoleBindings outside the build namespace (`gantry-builds`), by kind and
/// namespace.
fn grants_outside_builds(docs: &[Value]) -> Vec<(String, String, Value)> {
    let mut found: Vec<(String, String, Value)> = docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "RoleBinding")
        .filter(|d| d["metadata"]["namespace"] != "gantry-builds")
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_owned(),
                d["metadata"]["namespace"].as_str().unwrap().to_owned(),
                d.clone(),
            )
        })
        .collect();
    found.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    found
}

#[test]
fn each_flux_namespace_gets_patch_on_exactly_the_named_git_repositories() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = documents(&template_with(tmp.path(), AGENTS).unwrap());
    assert!(
        docs.iter().all(|d| !d["kind"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Cluster")),
        "the chart grants nothing cluster-wide"
    );
    let grants = grants_outside_builds(&docs);
    let places: Vec<(&str, &str)> = grants
        .iter()
        .map(|(k, ns, _)| (k.as_str(), ns.as_str()))
        .collect();
    assert_eq!(
        places,
        [
            ("Role", "flux-system"),
            ("Role", "team-flux"),
            ("RoleBinding", "flux-system"),
            ("RoleBinding", "team-flux"),
        ],
        "one Role and one RoleBinding per Flux namespace (the namespace defaults to flux-system)"
    );
    let rules = |ns: &str| {
        grants
            .iter()
            .find(|(k, n, _)| k == "Role" && n == ns)
            .unwrap()
            .2["rules"]
            .clone()
    };
    assert_eq!(
        rules("flux-system"),
        json!([{
            "apiGroups": ["source.toolkit.fluxcd.io"],
            "resources": ["gitrepositories"],
            "resourceNames": ["config", "staging"],
            "verbs": ["patch"],
        }])
    );
    assert_eq!(
        rules("team-flux"),
        json!([{
            "apiGroups": ["source.toolkit.fluxcd.io"],
            "resources": ["gitrepositories"],
            "resourceNames": ["apps"],
            "verbs": ["patch"],
        }])
    );
    for (kind, ns, binding) in &grants {
        if kind != "RoleBinding" {
            continue;
        }
        let role = grants
            .iter()
            .find(|(k, n, _)| k == "Role" && n == ns)
            .unwrap();
        assert_eq!(
            binding["roleRef"],
            json!({
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": role.2["metadata"]["name"],
            })
        );
        assert_eq!(
            binding["subjects"],
            json!([{ "kind": "ServiceAccount", "name": "gantry", "namespace": "gantry" }]),
            "bound to Gantry's own ServiceAccount in the release namespace"
        );
    }
}

#[test]
fn without_gitops_agents_gantry_gets_nothing_outside_the_build_namespace() {
    let docs = documents(&template(None).unwrap());
    assert_eq!(grants_outside_builds(&docs), []);
    let config = config_toml(&docs);
    assert!(
        config.lines().any(|l| l == r#""gitops_agents" = []"#),
        "{config}"
    );
    assert!(!config.contains("trivy_db_repository"), "{config}");
}

#[test]
fn the_schema_refuses_a_gitops_agent_it_cannot_grant() {
    let tmp = tempfile::tempdir().unwrap();
    for (what, agent) in [
        ("no GitRepository name", "flux: { namespace: flux-system }"),
        ("no flux at all", ""),
        (
            "an unknown key",
            "flux: { name: config }\n        argocd: { name: app }",
        ),
        (
            "a namespace that is no DNS label",
            "flux: { namespace: Flux_System, name: config }",
        ),
    ] {
        let values = format!(
            "config:\n  kubernetes:\n    gitops_agents:\n      - repo: https://git.example.com/acme/config.git\n        {agent}\n"
        );
        let refused = template_with(tmp.path(), &values);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("values.schema.json") || e.contains("schema")),
            "{what}: the chart rendered {refused:?}"
        );
    }
}

fn config_toml(docs: &[Value]) -> String {
    docs.iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["config.toml"].is_string())
        .expect("the chart renders the configuration file")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The file the chart mounts as GANTRY_CONFIG, with agents and the Trivy DB mirror, is one
/// `gantry serve` starts with (its `[kubernetes]` table refuses unknown keys, so a chart that
/// wrote `gitops_agents` in a shape Gantry does not read would fail here).
#[test]
fn gantry_serve_reads_the_gitops_agents_and_trivy_db_the_chart_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = documents(&template_with(tmp.path(), AGENTS).unwrap());
    let config = config_toml(&docs);
    for line in [
        r#""trivy_db_repository" = "registry.internal/aquasec/trivy-db:2""#,
        r#""repo" = "https://git.example.com/acme/config.git""#,
        r#""name" = "apps""#,
        r#""namespace" = "team-flux""#,
    ] {
        assert!(config.lines().any(|l| l == line), "{line} in:\n{config}");
    }
    assert_eq!(
        config
            .matches(r#"[["kubernetes"."gitops_agents"]]"#)
            .count(),
        3,
        "{config}"
    );
    let file = tmp.path().join("config.toml");
    std::fs::write(&file, &config).unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let gantry = Gantry::start(
        &data,
        "http://127.0.0.1:9",
        &[("GANTRY_CONFIG", file.to_str().unwrap())],
    );
    drop(gantry);
}
