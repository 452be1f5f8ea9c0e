//! Leader election with a Kubernetes Lease (`coordination.k8s.io/v1`), as client-go does it.
//!
//! With PostgreSQL, several Gantry replicas share one database: every replica serves webhooks,
//! the API and the viewer, and only the holder of the Lease runs the engine. A replica takes
//! the Lease when it is free or when its holder has not renewed it for `lease_duration` —
//! measured on this replica's own clock from when it last saw the record change, so clock skew
//! between nodes does not matter. Writes carry the `resourceVersion` they read, so of two
//! replicas racing for an expired Lease exactly one wins (the other gets `409 Conflict`).
//!
//! A leader that cannot renew within `renew_deadline` stops leading; the caller must then stop
//! its engine before another replica's `lease_duration` has passed (Gantry exits and lets the
//! kubelet restart it as a follower). `renew_deadline < lease_duration` leaves that margin.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Which Lease, who we are, and the timings (client-go's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The Lease's name (`gantry`).
    pub name: String,
    /// The namespace Gantry runs in (not the build namespace).
    pub namespace: String,
    /// This replica (its pod name).
    pub identity: String,
    /// How long a Lease that is not renewed stays with its holder.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often leaders renew and followers try.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// A Lease with client-go's timings: 15 s, 10 s, 2 s.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The same proportions as client-go's defaults for another lease duration: renew within
    /// two thirds of it, try every 2/15 of it. A follower takes over at most about `lease`
    /// after the leader stopped renewing. Whole seconds (the Lease stores seconds), at least 2.
    pub fn with_duration(mut self, lease: Duration) -> Self {
        let lease = Duration::from_secs(lease.as_secs().max(2));
        self.lease_duration = lease;
        self.renew_deadline = lease * 2 / 3;
        self.retry_period = lease * 2 / 15;
        self
    }
}

/// What this replica last saw of the Lease, and when it saw it change.
#[derive(Debug)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    at: Instant,
}

/// One replica's side of the election.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn observe(&mut self, spec: &LeaseSpec) {
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let changed = self
            .observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew_time != spec.renew_time);
        if changed {
            self.observed = Some(Observed {
                holder,
                renew_time: spec.renew_time.clone(),
                at: Instant::now(),
            });
        }
    }

    /// One round: takes the Lease when it is free or expired, renews it when this replica holds
    /// it. `Ok(true)` when this replica holds it now; `Ok(false)` when another does (or won a
    /// race for it).
    pub async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let now = MicroTime(Timestamp::now());
        let me = self.config.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(seconds(self.config.lease_duration)),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created.spec.unwrap_or_default());
                    Ok(true)
                }
                Err(err) if is_conflict(&err) => Ok(false),
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        self.observe(&spec);
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(me.as_str());
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        let expired = holder.is_none()
            || self
                .observed
                .as_ref()
                .is_none_or(|o| o.at.elapsed() >= duration);
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(me),
            lease_duration_seconds: Some(seconds(self.config.lease_duration)),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if mine { transitions } else { transitions + 1 }),
            ..spec
        });
        // `lease` keeps the resourceVersion it was read with: a concurrent write makes this 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated.spec.unwrap_or_default());
                if !mine {
                    tracing::info!(lease = %self.config.name, identity = %self.config.identity, "acquired the lease");
                }
                Ok(true)
            }
            Err(err) if is_conflict(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up when this replica holds it, so another can take it at once (on a
    /// graceful stop).
    pub async fn release(&mut self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..spec
        });
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if is_conflict(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Runs the election in a task: followers try every `retry_period`, the leader renews as
    /// often. Leadership is published on [`Leadership`].
    pub fn spawn(self) -> Leadership {
        let (tx, rx) = watch::channel(false);
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(elect(self, tx, stop.clone()));
        Leadership { rx, stop, task }
    }
}

async fn elect(mut elector: LeaderElector, tx: watch::Sender<bool>, stop: Arc<Notify>) {
    let period = elector.config.retry_period;
    let deadline = elector.config.renew_deadline;
    let mut last_renewed: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let round = tokio::select! {
            () = stop.notified() => break,
            round = tokio::time::timeout(period.max(deadline), elector.try_acquire_or_renew()) => round,
        };
        let leading = *tx.borrow();
        match round {
            Ok(Ok(true)) => {
                last_renewed = Some(started);
                if !leading {
                    tx.send_replace(true);
                }
            }
            Ok(Ok(false)) => {
                if leading {
                    tracing::warn!(lease = %elector.config.name, "another replica holds the lease now");
                    tx.send_replace(false);
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(lease = %elector.config.name, error = %err, "lease request failed")
            }
            Err(_) => tracing::warn!(lease = %elector.config.name, "lease request timed out"),
        }
        if *tx.borrow() && last_renewed.is_none_or(|at| at.elapsed() >= deadline) {
            tracing::warn!(lease = %elector.config.name, "could not renew the lease in time: not leading");
            tx.send_replace(false);
        }
        tokio::select! {
            () = stop.notified() => break,
            () = tokio::time::sleep(period) => {}
        }
    }
    if *tx.borrow() {
        tx.send_replace(false);
        if let Err(err) = elector.release().await {
            tracing::warn!(lease = %elector.config.name, error = %err, "cannot release the lease");
        }
    }
}

/// The running election of one replica.
#[derive(Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// A receiver of every change of leadership.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Waits until this replica leads. `false` when the election stopped first.
    pub async fn acquired(&mut self) -> bool {
        self.rx.wait_for(|leading| *leading).await.is_ok()
    }

    /// Waits until this replica no longer leads (or the election stopped).
    pub async fn lost(&mut self) {
        let _ = self.rx.wait_for(|leading| !*leading).await;
    }

    /// Stops the election and releases the Lease when this replica holds it.
    pub async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }

    /// Stops at once without releasing the Lease, as a crash would: the others take over after
    /// `lease_duration`. For tests of failover.
    #[doc(hidden)]
    pub fn abort(&self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    //! Against kube's mocked API server (`tower_test::mock::pair` + `Client::new`): an
    //! in-memory Lease with resourceVersions and conflicts, shared by several replicas.

    use std::sync::Mutex;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use kube::client::Body;
    use serde_json::json;

    use super::*;

    const NS: &str = "gantry";

    #[derive(Clone, Default)]
    struct FakeLeases {
        lease: Arc<Mutex<Option<serde_json::Value>>>,
        rv: Arc<Mutex<u64>>,
        /// While set, every request fails (the API server is unreachable for this client).
        down: Arc<Mutex<Vec<bool>>>,
    }

    fn reply(code: u16, value: serde_json::Value) -> Response<Full<Bytes>> {
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())))
            .unwrap()
    }

    fn status(code: u16, reason: &str) -> Response<Full<Bytes>> {
        reply(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": reason, "reason": reason, "code": code}),
        )
    }

    impl FakeLeases {
        /// A client of replica `n`.
        fn client(&self, n: usize) -> Client {
            self.down.lock().unwrap().resize(n + 1, false);
            let (service, mut handle) =
                tower_test::mock::pair::<Request<Body>, Response<Full<Bytes>>>();
            let fake = self.clone();
            tokio::spawn(async move {
                while let Some((request, send)) = handle.next_request().await {
                    let down = fake.down.lock().unwrap()[n];
                    let response = if down {
                        status(503, "Unavailable")
                    } else {
                        fake.serve(request).await
                    };
                    send.send_response(response);
                }
            });
            Client::new(service, NS)
        }

        fn holder(&self) -> Option<String> {
            let lease = self.lease.lock().unwrap();
            lease.as_ref()?["spec"]["holderIdentity"]
                .as_str()
                .map(str::to_owned)
        }

        fn transitions(&self) -> i64 {
            let lease = self.lease.lock().unwrap();
            lease.as_ref().unwrap()["spec"]["leaseTransitions"]
                .as_i64()
                .unwrap_or(0)
        }

        async fn serve(&self, request: Request<Body>) -> Response<Full<Bytes>> {
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let body = request.into_body().collect_bytes().await.unwrap();
            let base = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
            let mut lease = self.lease.lock().unwrap();
            let mut rv = self.rv.lock().unwrap();
            match (method.as_str(), path.strip_prefix(&base)) {
                ("GET", Some("/gantry")) => match lease.as_ref() {
                    Some(l) => reply(200, l.clone()),
                    None => status(404, "NotFound"),
                },
                ("POST", Some("")) => {
                    if lease.is_some() {
                        return status(409, "AlreadyExists");
                    }
                    let mut new: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    *rv += 1;
                    new["metadata"]["resourceVersion"] = json!(rv.to_string());
                    *lease = Some(new.clone());
                    reply(201, new)
                }
                ("PUT", Some("/gantry")) => {
                    let mut new: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let current = lease
                        .as_ref()
                        .map(|l| l["metadata"]["resourceVersion"].clone());
                    if current != Some(new["metadata"]["resourceVersion"].clone()) {
                        return status(409, "Conflict");
                    }
                    *rv += 1;
                    new["metadata"]["resourceVersion"] = json!(rv.to_string());
                    *lease = Some(new.clone());
                    reply(200, new)
                }
                _ => status(404, "NotFound"),
            }
        }
    }

    fn config(identity: &str) -> LeaseConfig {
        LeaseConfig {
            lease_duration: Duration::from_millis(1500),
            renew_deadline: Duration::from_millis(1000),
            retry_period: Duration::from_millis(100),
            ..LeaseConfig::new("gantry", NS, identity)
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    #[tokio::test]
    async fn of_two_replicas_one_leads_and_the_other_takes_over_when_it_stops() {
        let api = FakeLeases::default();
        let a = LeaderElector::new(api.client(0), config("gantry-a")).spawn();
        let b = LeaderElector::new(api.client(1), config("gantry-b")).spawn();
        settle().await;
        assert_ne!(a.is_leader(), b.is_leader(), "exactly one leads");
        let (leader, mut follower) = if a.is_leader() { (a, b) } else { (b, a) };
        let leader_id = api.holder().unwrap();
        // It stays leader while it renews.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert!(leader.is_leader() && !follower.is_leader());
        assert_eq!(api.holder().as_deref(), Some(leader_id.as_str()));

        // The leader crashes: nothing renews; the follower takes over after the lease duration.
        leader.abort();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), follower.acquired())
            .await
            .expect("the follower takes over");
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "not before the lease expired"
        );
        assert_ne!(api.holder().as_deref(), Some(leader_id.as_str()));
        assert_eq!(api.transitions(), 1);
        follower.stop().await;
    }

    #[tokio::test]
    async fn a_leader_that_stops_gracefully_hands_over_at_once() {
        let api = FakeLeases::default();
        let a = LeaderElector::new(api.client(0), config("gantry-a")).spawn();
        settle().await;
        assert!(a.is_leader());
        let mut b = LeaderElector::new(api.client(1), config("gantry-b")).spawn();
        settle().await;
        assert!(!b.is_leader());
        a.stop().await;
        assert_eq!(api.holder(), None, "released");
        tokio::time::timeout(Duration::from_millis(600), b.acquired())
            .await
            .expect("taken over without waiting for expiry");
        assert_eq!(api.holder().as_deref(), Some("gantry-b"));
        b.stop().await;
    }

    #[tokio::test]
    async fn a_leader_cut_off_from_the_api_stops_leading_before_another_takes_over() {
        let api = FakeLeases::default();
        let mut a = LeaderElector::new(api.client(0), config("gantry-a")).spawn();
        settle().await;
        let mut b = LeaderElector::new(api.client(1), config("gantry-b")).spawn();
        settle().await;
        assert!(a.is_leader() && !b.is_leader());
        api.down.lock().unwrap()[0] = true;
        let cut = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), a.lost())
            .await
            .expect("a stops leading");
        let stepped_down = cut.elapsed();
        tokio::time::timeout(Duration::from_secs(5), b.acquired())
            .await
            .expect("b takes over");
        let taken_over = cut.elapsed();
        assert!(
            stepped_down < taken_over,
            "never two leaders: a stepped down after {stepped_down:?}, b led after {taken_over:?}"
        );
        a.stop().await;
        b.stop().await;
    }

    #[test]
    fn a_shorter_lease_keeps_client_gos_proportions() {
        let c = LeaseConfig::new("l", "ns", "me").with_duration(Duration::from_secs(6));
        assert_eq!(c.lease_duration, Duration::from_secs(6));
        assert_eq!(c.renew_deadline, Duration::from_secs(4));
        assert_eq!(c.retry_period, Duration::from_millis(800));
        let tiny = LeaseConfig::new("l", "ns", "me").with_duration(Duration::from_millis(300));
        assert_eq!(
            tiny.lease_duration,
            Duration::from_secs(2),
            "whole seconds, at least 2"
        );
        let default = LeaseConfig::new("l", "ns", "me");
        let same = LeaseConfig::new("l", "ns", "me").with_duration(Duration::from_secs(15));
        assert_eq!(
            (default.renew_deadline, default.retry_period),
            (same.renew_deadline, same.retry_period)
        );
    }
}
