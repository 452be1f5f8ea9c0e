//! The test cluster's real node as the system tests use it (tests/cluster/node/up exports what
//! is here): its environment, `kubectl` as the cluster's admin, a namespace per test, private
//! repositories on its git server, and `gantry serve` on the Kubernetes backend.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::server::{FakeGithub, Gantry};

/// A variable `tests/cluster/up` exports; the test fails, saying what is missing, without it.
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test needs the test cluster's real node, which \
             tests/cluster/up starts (unless GANTRY_CLUSTER_REAL_NODE=0). Run it through \
             `./dev test` (see docs/testing.md)"
        )
    })
}

/// The cluster's admin kubeconfig.
pub fn kubeconfig() -> String {
    format!("{}/admin.kubeconfig", var("GANTRY_TEST_CLUSTER_DIR"))
}

/// `kubectl ARGS` as the cluster's admin; its stdout.
pub fn kubectl(args: &[&str]) -> String {
    let bin = PathBuf::from(var("GANTRY_TEST_CLUSTER_BIN")).join("kubectl");
    let out = Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A new namespace `gt-TAG-PID` enforcing the Pod Security `level`, once its `default`
/// ServiceAccount exists (pods cannot be created before).
pub fn namespace(tag: &str, level: &str) -> String {
    let ns = format!("gt-{tag}-{}", std::process::id());
    kubectl(&["create", "namespace", &ns]);
    kubectl(&[
        "label",
        "namespace",
        &ns,
        &format!("pod-security.kubernetes.io/enforce={level}"),
        "pod-security.kubernetes.io/enforce-version=latest",
    ]);
    for _ in 0..300 {
        if kubectl(&["-n", &ns, "get", "serviceaccounts", "-o", "name"])
            .contains("serviceaccount/default")
        {
            return ns;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no default ServiceAccount in {ns} after 60 s");
}

/// `git ARGS` in `dir` with a committer identity; its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Dev", "-c", "user.email=dev@example.com"])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An empty private repository `NAME` on the node's git server: its clone URL (as pods and
/// webhooks name it) and its bare directory.
pub fn bare_repo(name: &str) -> (String, PathBuf) {
    let bare = PathBuf::from(var("GANTRY_TEST_GIT_ROOT")).join(format!("{name}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    // Forges let a clone fetch any commit of the repository by its SHA, not only branch tips.
    git(
        &bare,
        &["config", "uploadpack.allowReachableSHA1InWant", "true"],
    );
    (format!("{}/{name}.git", var("GANTRY_TEST_GIT_URL")), bare)
}

/// `gantry serve` on the Kubernetes backend with `config` (TOML) as its configuration file, the
/// pipeline read through `github`'s contents API, `token` as the GitHub token (which the clone
/// credentials are made of), and `env` on top.
pub fn serve(
    data: &Path,
    github: &FakeGithub,
    config: &str,
    token: &str,
    env: &[(&str, &str)],
) -> Gantry {
    std::fs::create_dir_all(data).unwrap();
    let file = data.join("gantry.toml");
    std::fs::write(&file, config).unwrap();
    let file = file.to_str().unwrap().to_owned();
    let kubeconfig = kubeconfig();
    let ca = var("GANTRY_TEST_GIT_CA");
    let mut all = vec![
        ("GANTRY_BACKEND", "kubernetes"),
        ("GANTRY_CONFIG", file.as_str()),
        ("KUBECONFIG", kubeconfig.as_str()),
        ("GANTRY_GITHUB_TOKEN", token),
        ("GANTRY_GITHUB_READ_FILES", "api"),
        // Gantry's own git (ls-remote, compare) trusts the git server's CA.
        ("GIT_SSL_CAINFO", ca.as_str()),
    ];
    all.extend_from_slice(env);
    Gantry::start(data, &github.url, &all)
}
