//! Two `gantry serve` replicas on one PostgreSQL database, electing a leader through a Lease
//! on the test cluster's real API server (`tests/cluster`), each with a ServiceAccount token
//! bound to exactly the Roles the Helm chart renders. One runs the engine, both serve; a
//! webhook and a cancel sent to the follower act on the leader's jobs; when the leader is killed
//! the follower takes the Lease and runs what was queued.
//!
//! Needs the test cluster and the test PostgreSQL server (`./dev test` starts both); without
//! them the test fails and says what is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::serve::{run_of, runs_of_delivery};
use crate::server::{FakeGithub, Gantry, GitDaemon, client, eventually, get_json, send_push};
use crate::support::{Repo, workspace};

const ZERO: &str = "0000000000000000000000000000000000000000";

fn var(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this test needs {what}. Run it through `./dev test`, which starts \
             the test PostgreSQL server and the test cluster (see docs/testing.md)"
        )
    })
}

/// `kubectl` of the test cluster as its admin, with `stdin`; its stdout.
fn kubectl(args: &[&str], stdin: &str) -> String {
    let bin = PathBuf::from(var("GANTRY_TEST_CLUSTER_BIN", "the test cluster")).join("kubectl");
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The chart's ServiceAccount and Roles for a release in `ns` with several replicas, applied as
/// rendered; a kubeconfig file in `dir` for that account (a TokenRequest token), in `ns`.
fn chart_account(ns: &str, dir: &Path) -> PathBuf {
    let root = workspace();
    let out = Command::new(root.join("tests/cluster/helm"))
        .args(["template", "gantry"])
        .arg(root.join("charts/gantry"))
        .args(["--namespace", ns])
        .args(["--set", "replicaCount=2"])
        .args(["--set", "database.existingSecret=gantry-database"])
        .args(["--set", "persistence.enabled=false"])
        .args(["--set", &format!("buildNamespace.name={ns}")])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args(["--show-only", "templates/rbac.yaml"])
        .output()
        .expect("run tests/cluster/helm (it installs helm on first use)");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifests = String::from_utf8(out.stdout).unwrap();
    assert!(
        manifests.contains("resources: [leases]"),
        "with 2 replicas the chart grants the Lease:\n{manifests}"
    );
    kubectl(&["apply", "-f", "-"], &manifests);
    let token = kubectl(
        &["-n", ns, "create", "token", "gantry", "--duration=1h"],
        "",
    );
    let api = var("GANTRY_TEST_KUBE_API", "the test cluster");
    let ca = var("GANTRY_TEST_KUBE_CA", "the test cluster");
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: t, cluster: {{server: \"{api}\", certificate-authority: \"{ca}\"}}}}]\n\
             users: [{{name: gantry, user: {{token: \"{}\"}}}}]\n\
             contexts: [{{name: t, context: {{cluster: t, user: gantry, namespace: {ns}}}}}]\n\
             current-context: t\n",
            token.trim()
        ),
    )
    .unwrap();
    path
}

/// Whether a replica runs the engine, from its `/metrics`.
async fn leads(gantry: &Gantry) -> bool {
    let Ok(response) = client().get(format!("{}/metrics", gantry.url)).send().await else {
        return false;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines().any(|l| l.trim() == "gantry_engine_active 1")
}

/// Who holds the Lease, as the API server says.
fn lease_holder(ns: &str) -> String {
    kubectl(
        &[
            "-n",
            ns,
            "get",
            "lease",
            "gantry",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        "",
    )
}

async fn wait_status(gantry: &Gantry, run: &str, status: &str, limit: Duration) -> Value {
    eventually(limit, &format!("run {run} to be {status}"), || async {
        let r = run_of(gantry, run).await;
        (r["status"] == status).then_some(r)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_engine_the_follower_serves_and_takes_over_when_the_leader_dies() {
    let database = gantry_store::testing::fresh_postgres_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let ns = format!("gantry-replicas-{}", std::process::id());
    kubectl(&["create", "namespace", &ns], "");
    let kubeconfig = chart_account(&ns, tmp.path());

    let daemon = GitDaemon::start();
    let slow = Repo::new();
    slow.write(
        ".gantry.yaml",
        "name: ci\njobs:\n  slow:\n    steps:\n      - run: echo started; sleep 300\n",
    );
    let slow_sha = slow.commit("slow");
    let slow_url = daemon.publish(&slow, "slow.git");
    let quick = Repo::new();
    quick.write(
        ".gantry.yaml",
        "name: ci\njobs:\n  quick:\n    steps:\n      - run: echo quick-marker\n",
    );
    let quick_sha = quick.commit("quick");
    let quick_url = daemon.publish(&quick, "quick.git");
    let github = FakeGithub::start().await;

    // One data directory for both, as the chart's ReadWriteMany claim gives them.
    let data = tmp.path().join("data");
    let replica = |name: &str| {
        let env = [
            ("GANTRY_DATABASE_URL", database.as_str()),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("GANTRY_LEADER_ELECTION", "true"),
            ("GANTRY_LEADER_ELECTION_NAMESPACE", ns.as_str()),
            ("GANTRY_LEADER_ELECTION_IDENTITY", name),
            ("GANTRY_LEADER_ELECTION_LEASE_SECONDS", "4"),
        ];
        Gantry::start(&data, &github.url, &env)
    };
    let a = replica("replica-a");
    eventually(Duration::from_secs(60), "replica-a to lead", || async {
        leads(&a).await.then_some(())
    })
    .await;
    let b = replica("replica-b");
    // b serves at once but never runs the engine while a renews the Lease.
    for _ in 0..10 {
        assert!(leads(&a).await, "the leader keeps its Lease");
        assert!(!leads(&b).await, "only one replica runs the engine");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let lease = lease_holder(&ns);
    assert_eq!(lease, "replica-a");

    // A webhook to the follower: planned there, run by the leader's engine.
    let (code, _) = send_push(
        &b,
        "d-slow",
        &crate::server::push_payload("slow", &slow_url, ZERO, &slow_sha, &[]),
    )
    .await;
    assert_eq!(code, 202);
    let slow_run = runs_of_delivery(&b, "d-slow").await.remove(0);
    let job = eventually(Duration::from_secs(60), "the slow job to run", || async {
        let run = run_of(&b, &slow_run).await;
        (run["jobs"][0]["status"] == "running").then(|| run["jobs"][0]["id"].clone())
    })
    .await;
    // The follower serves the step log the leader writes in the shared data directory: a
    // page, and the live follow (which it reads from the files).
    let step_log = format!(
        "{}/api/v1/jobs/{}/attempts/1/steps/0/log",
        b.url,
        job.as_str().unwrap()
    );
    eventually(
        Duration::from_secs(30),
        "the follower to serve the leader's log",
        || async {
            let page = get_json(&step_log).await;
            (page["lines"][0]["text"] == "started").then_some(())
        },
    )
    .await;
    let mut follow = client()
        .get(format!("{step_log}/follow"))
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), follow.chunk())
        .await
        .expect("the follower's live follow answers")
        .unwrap()
        .unwrap_or_default();
    let first = String::from_utf8_lossy(&first);
    assert!(
        first.contains("event: lines") && first.contains("\"text\":\"started\""),
        "{first}"
    );
    drop(follow);

    // A cancel sent to the follower stops the job running on the leader.
    let cancelled = client()
        .post(format!("{}/api/v1/runs/{slow_run}/cancel", b.url))
        .header("authorization", "Bearer it-api-token")
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status().as_u16(), 200);
    let body: Value = cancelled.json().await.unwrap();
    assert_eq!(body["cancelled"], true);
    let run = wait_status(&a, &slow_run, "cancelled", Duration::from_secs(30)).await;
    assert_eq!(run["jobs"][0]["status"], "cancelled", "{run:#}");
    assert_eq!(run["reason"], "cancelled by hand", "{run:#}");

    // The leader dies without a word: the follower takes the Lease once it expires and runs
    // what arrives meanwhile.
    a.kill_hard();
    let (code, _) = send_push(
        &b,
        "d-quick",
        &crate::server::push_payload("quick", &quick_url, ZERO, &quick_sha, &[]),
    )
    .await;
    assert_eq!(code, 202, "the follower keeps taking webhooks");
    let quick_run = runs_of_delivery(&b, "d-quick").await.remove(0);
    eventually(
        Duration::from_secs(60),
        "replica-b to take over",
        || async { leads(&b).await.then_some(()) },
    )
    .await;
    let run = wait_status(&b, &quick_run, "success", Duration::from_secs(60)).await;
    assert_eq!(run["jobs"][0]["status"], "success", "{run:#}");
    let lease = lease_holder(&ns);
    assert_eq!(lease, "replica-b");
    kubectl(&["delete", "namespace", &ns, "--wait=false"], "");
}
