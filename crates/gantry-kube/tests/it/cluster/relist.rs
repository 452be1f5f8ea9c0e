//! A real `410 Gone` on the pod watch: the backend re-lists and loses no transition.
//!
//! How the 410 is provoked (docs/testing.md): the cluster's own API server serves watches from
//! its watch cache, which keeps minutes of history, so a watch resumed a few seconds late is
//! never too old there. This test starts a second kube-apiserver on the same etcd with
//! `--watch-cache=false` (`tests/cluster/extra-apiserver`), so its watches are etcd watches.
//! Gantry talks to it through a TCP relay the test can cut. While the relay is cut, the job's
//! pod moves on (kwok, through the cluster's API server), and etcd is compacted to its current
//! revision. When the relay lets Gantry through again, kube-rs resumes the watch from the last
//! resourceVersion it saw, which etcd no longer has: the API server answers `410 Expired`
//! ("The resourceVersion for the provided watch is too old"), the watcher re-lists, and the
//! backend must derive from the listed pod every step transition it did not see.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_core::{Backend, JobEventKind};
use gantry_kube::{KubeBackend, names};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::sync::mpsc;

use super::{annotate, cluster, config, containers, eventually, play, root, until};
use crate::backend::{job, shape};

/// A TCP relay to `target` that can be cut: every open connection is shut down and new ones
/// are closed at once, until it is resumed.
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, c) = (Arc::clone(&open), Arc::clone(&conns));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !o.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                {
                    let mut conns = c.lock().unwrap();
                    conns.push(client.try_clone().unwrap());
                    conns.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { port, open, conns }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    fn resume(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// The extra API server; killed (by its pid) when dropped. `tests/cluster/down` would stop it
/// too.
struct ExtraApiserver {
    url: String,
    pid_file: PathBuf,
}

impl ExtraApiserver {
    fn start(dir: &std::path::Path, name: &str, flags: &[&str]) -> Self {
        let out = Command::new(root().join("tests/cluster/extra-apiserver"))
            .arg(dir)
            .arg(name)
            .args(flags)
            .output()
            .expect("run tests/cluster/extra-apiserver");
        assert!(
            out.status.success(),
            "the extra API server did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            url: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
            pid_file: dir.join(format!("kube-apiserver-{name}.pid")),
        }
    }
}

impl Drop for ExtraApiserver {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

/// POSTs JSON to etcd's gRPC gateway (`/v3/...`) with curl.
fn etcd(base: &str, path: &str, body: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sf", "-X", "POST", &format!("{base}{path}"), "-d", body])
        .output()
        .expect("curl");
    assert!(out.status.success(), "etcd {path} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn a_410_gone_on_the_watch_relists_without_losing_a_transition() {
    let c = cluster();
    let etcd_url = c
        .etcd
        .clone()
        .expect("GANTRY_TEST_ETCD is not set: start the cluster with the current tests/cluster/up");
    let ns = c.namespace("relist").await;
    let name = format!("relist-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let extra = ExtraApiserver::start(&c.dir, &name, &["--watch-cache=false"]);
    let target = extra.url.trim_start_matches("https://").to_owned();
    let relay = Relay::start(target);
    let client = c
        .client_at(&format!("https://127.0.0.1:{}", relay.port), &c.token)
        .await;
    let annotations = play(
        "",
        "step-0=3600000,step-2=3600000,*=100",
        &[("step-0", "zero"), ("step-1", "one"), ("step-2", "two")],
    );
    let backend = KubeBackend::new(client, config(&ns, annotations), None);
    assert!(backend.ready().await);
    assert_eq!(backend.pod_lists(), 1);
    let job = job(&["a", "b", "c"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(256);
    backend.start(job.clone(), tx).await.unwrap();
    let mut events = shape(
        &until(
            &mut rx,
            "step 0's output",
            |e| matches!(e, JobEventKind::Log(l) if l.text == "zero"),
        )
        .await,
    );

    // Gantry is cut off; meanwhile step 0 ends, step 1 runs and ends, step 2 starts.
    relay.cut();
    let pods: Api<Pod> = Api::namespaced(c.admin().await, &ns);
    annotate(
        &pods,
        &pod,
        &[("gantry.dev/durations-ms", "step-2=3600000,*=100")],
    )
    .await;
    eventually("steps 0 and 1 to end and step 2 to run", || async {
        let p = pods.get(&pod).await.ok()?;
        let c = containers(&p);
        (c.get("step-0").map(String::as_str) == Some("0")
            && c.get("step-1").map(String::as_str) == Some("0")
            && c.get("step-2").map(String::as_str) == Some("running"))
        .then_some(())
    })
    .await;
    // etcd forgets every revision before now, so the resourceVersion Gantry last saw is gone.
    let revision = etcd(&etcd_url, "/v3/kv/range", r#"{"key":"AA=="}"#)["header"]["revision"]
        .as_str()
        .unwrap()
        .to_owned();
    etcd(
        &etcd_url,
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    );
    relay.resume();

    events.extend(shape(
        &until(&mut rx, "step 2 to start after the re-list", |e| {
            matches!(e, JobEventKind::StepStarted { step: 2 })
        })
        .await,
    ));
    assert_eq!(
        backend.pod_lists(),
        2,
        "the watch re-listed once (410 Gone)"
    );
    annotate(&pods, &pod, &[("gantry.dev/durations-ms", "*=100")]).await;
    events.extend(shape(
        &until(&mut rx, "Finished", |e| {
            matches!(e, JobEventKind::Finished { .. })
        })
        .await,
    ));
    assert_eq!(
        events,
        [
            "started",
            "step 0 started",
            "log 0 #1 zero",
            "step 0 success exit 0",
            "step 1 started",
            "log 1 #1 one",
            "step 1 success exit 0",
            "step 2 started",
            "log 2 #1 two",
            "step 2 success exit 0",
            "finished success",
        ]
    );
    drop(extra);
    tokio::time::sleep(Duration::ZERO).await;
}
