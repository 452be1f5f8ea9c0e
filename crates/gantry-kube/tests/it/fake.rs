//! A fake API server behind kube's documented mock (`tower_test::mock::pair` +
//! `Client::new`): pods and secrets in memory, watches that stay open and stream changes, log
//! responses scripted per container, faults injected per request, and every request counted by
//! verb — the counts the bench reports.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::channel::mpsc;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodStatus,
};
use kube::Client;
use kube::client::Body;
use serde_json::json;

type Chunk = Result<Frame<Bytes>, Infallible>;
pub type RespBody = BoxBody<Bytes, Infallible>;

/// A fault for the next request matching `verb` (`create pods`, `watch pods`, …).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status code and, when given, `retryAfterSeconds`.
    Status(u16, u32),
    /// Never answer (the client times out). The request still takes effect.
    HangAfterApplying,
    /// Refused by a ResourceQuota, as the API server's quota admission answers: `403 Forbidden`,
    /// "… is forbidden: exceeded quota: …".
    Quota,
}

/// A scripted log response.
#[derive(Clone, Debug)]
pub struct LogReply {
    pub lines: Vec<String>,
    /// Keep the stream open until the container terminates (else: end after the lines).
    pub hold: bool,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Pod>,
    rv: u64,
    watchers: Vec<mpsc::UnboundedSender<Chunk>>,
    event_watchers: Vec<mpsc::UnboundedSender<Chunk>>,
    event_queries: Vec<String>,
    logs: HashMap<String, VecDeque<LogReply>>,
    held_logs: HashMap<String, Vec<mpsc::UnboundedSender<Chunk>>>,
    /// Containers (`pod/container`) whose held log streams stay open after they terminated.
    lingering: std::collections::HashSet<String>,
    faults: HashMap<String, VecDeque<Fault>>,
    counts: BTreeMap<String, u32>,
    log_queries: Vec<String>,
    secrets: Vec<serde_json::Value>,
    deletes: Vec<String>,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

pub const NS: &str = "builds";

fn full(body: Vec<u8>) -> RespBody {
    let (tx, rx) = mpsc::unbounded();
    let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from(body))));
    drop(tx);
    StreamBody::new(rx).boxed()
}

fn open() -> (mpsc::UnboundedSender<Chunk>, RespBody) {
    let (tx, rx) = mpsc::unbounded();
    (tx, StreamBody::new(rx).boxed())
}

fn reply(code: u16, value: serde_json::Value) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(serde_json::to_vec(&value).unwrap()))
        .unwrap()
}

fn status(code: u16, reason: &str, retry_after: u32) -> Response<RespBody> {
    let mut details = json!({});
    if retry_after > 0 {
        details = json!({ "retryAfterSeconds": retry_after });
    }
    reply(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("fake: {reason}"), "reason": reason, "code": code, "details": details}),
    )
}

impl FakeApi {
    /// A client talking to this fake, and the task serving it.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<RespBody>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let fake = fake.clone();
                tokio::spawn(async move {
                    if let Some(response) = fake.serve(request).await {
                        send.send_response(response);
                    } else {
                        // Hang: keep the responder alive until the test ends.
                        std::mem::forget(send);
                    }
                });
            }
        });
        Client::new(service, NS)
    }

    /// The query strings of the Event lists.
    pub fn event_queries(&self) -> Vec<String> {
        self.state.lock().unwrap().event_queries.clone()
    }

    pub fn fault(&self, verb: &str, fault: Fault) {
        let mut s = self.state.lock().unwrap();
        s.faults.entry(verb.into()).or_default().push_back(fault);
    }

    /// The container's held log streams stay open after it terminated, as a kubelet's follow
    /// stream does until it next checks the container (about a second), and kwok's forever.
    pub fn linger(&self, pod: &str, container: &str) {
        self.state
            .lock()
            .unwrap()
            .lingering
            .insert(format!("{pod}/{container}"));
    }

    pub fn script_log(&self, pod: &str, container: &str, reply: LogReply) {
        let mut s = self.state.lock().unwrap();
        s.logs
            .entry(format!("{pod}/{container}"))
            .or_default()
            .push_back(reply);
    }

    pub fn counts(&self) -> BTreeMap<String, u32> {
        self.state.lock().unwrap().counts.clone()
    }

    pub fn count(&self, verb: &str) -> u32 {
        self.counts().get(verb).copied().unwrap_or(0)
    }

    pub fn log_queries(&self) -> Vec<String> {
        self.state.lock().unwrap().log_queries.clone()
    }

    pub fn secrets(&self) -> Vec<serde_json::Value> {
        self.state.lock().unwrap().secrets.clone()
    }

    pub fn deletes(&self) -> Vec<String> {
        self.state.lock().unwrap().deletes.clone()
    }

    pub fn pod(&self, name: &str) -> Option<Pod> {
        self.state.lock().unwrap().pods.get(name).cloned()
    }

    pub fn pod_names(&self) -> Vec<String> {
        self.state.lock().unwrap().pods.keys().cloned().collect()
    }

    fn broadcast(s: &mut State, kind: &str, pod: &Pod) {
        let line = serde_json::to_vec(&json!({"type": kind, "object": pod})).unwrap();
        let mut line = line;
        line.push(b'\n');
        s.watchers.retain(|w| {
            w.unbounded_send(Ok(Frame::data(Bytes::from(line.clone()))))
                .is_ok()
        });
    }

    fn bump(s: &mut State, pod: &mut Pod) {
        s.rv += 1;
        pod.metadata.resource_version = Some(s.rv.to_string());
    }

    /// Puts a pod in place (as if created before the test), telling watchers.
    pub fn insert(&self, mut pod: Pod) {
        let mut s = self.state.lock().unwrap();
        Self::bump(&mut s, &mut pod);
        let name = pod.metadata.name.clone().unwrap();
        pod.metadata
            .uid
            .get_or_insert_with(|| format!("uid-{name}"));
        s.pods.insert(name, pod.clone());
        Self::broadcast(&mut s, "ADDED", &pod);
    }

    /// Changes a pod's status, telling watchers.
    pub fn update(&self, name: &str, change: impl FnOnce(&mut PodStatus)) {
        let mut s = self.state.lock().unwrap();
        let Some(mut pod) = s.pods.get(name).cloned() else {
            panic!("no pod {name}")
        };
        change(pod.status.get_or_insert_with(PodStatus::default));
        Self::bump(&mut s, &mut pod);
        s.pods.insert(name.to_owned(), pod.clone());
        // A terminated container ends its held log streams.
        let status = pod.status.clone().unwrap_or_default();
        for c in status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten())
        {
            let key = format!("{name}/{}", c.name);
            if c.state.as_ref().is_some_and(|st| st.terminated.is_some())
                && !s.lingering.contains(&key)
            {
                s.held_logs.remove(&key);
            }
        }
        Self::broadcast(&mut s, "MODIFIED", &pod);
    }

    /// Ends every open watch with `410 Gone` (its resourceVersion is too old).
    pub fn expire_watches(&self) {
        let mut s = self.state.lock().unwrap();
        let line = serde_json::to_vec(&json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
            "metadata": {}, "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}}))
        .unwrap();
        for w in s.watchers.drain(..) {
            let mut l = line.clone();
            l.push(b'\n');
            let _ = w.unbounded_send(Ok(Frame::data(Bytes::from(l))));
        }
    }

    /// Deletes a pod behind Gantry's back.
    pub fn remove(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        if let Some(mut pod) = s.pods.remove(name) {
            Self::bump(&mut s, &mut pod);
            Self::broadcast(&mut s, "DELETED", &pod);
        }
    }

    async fn serve(&self, request: Request<Body>) -> Option<Response<RespBody>> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let base = format!("/api/v1/namespaces/{NS}/");
        let rest = path.strip_prefix(&base).unwrap_or(&path).to_owned();
        let parts: Vec<&str> = rest.split('/').collect();
        let watch = query.contains("watch=true");
        let verb = match (method.as_str(), parts.as_slice()) {
            ("GET", ["pods"]) if watch => "watch pods",
            ("GET", ["pods"]) => "list pods",
            ("POST", ["pods"]) => "create pods",
            ("GET", ["pods", _]) => "get pods",
            ("DELETE", ["pods", _]) => "delete pods",
            ("GET", ["pods", _, "log"]) => "log pods",
            ("POST", ["secrets"]) => "create secrets",
            ("GET", ["events"]) if watch => "watch events",
            ("GET", ["events"]) => "list events",
            _ => "other",
        };
        let fault = {
            let mut s = self.state.lock().unwrap();
            *s.counts.entry(verb.to_owned()).or_default() += 1;
            s.faults.get_mut(verb).and_then(VecDeque::pop_front)
        };
        if let Some(Fault::Status(code, after)) = fault {
            let reason = StatusCode::from_u16(code)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("Error");
            return Some(status(code, reason, after));
        }
        if let Some(Fault::Quota) = fault {
            return Some(reply(
                403,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": "pods \"p\" is forbidden: exceeded quota: builds, requested: pods=1, used: pods=1, limited: pods=1",
                       "reason": "Forbidden", "code": 403, "details": {"kind": "pods", "name": "p"}}),
            ));
        }
        let response = self.handle(verb, &parts, &query, &body);
        match fault {
            Some(Fault::HangAfterApplying) => None,
            _ => Some(response),
        }
    }

    fn handle(&self, verb: &str, parts: &[&str], query: &str, body: &[u8]) -> Response<RespBody> {
        let mut s = self.state.lock().unwrap();
        match verb {
            "list pods" => {
                let items: Vec<&Pod> = s.pods.values().collect();
                reply(
                    200,
                    json!({"kind": "PodList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
                )
            }
            "watch pods" => {
                let (tx, body) = open();
                s.watchers.push(tx);
                Response::builder().status(200).body(body).unwrap()
            }
            // No autoscaler here: no Events, and a watch that stays open.
            "list events" => {
                s.event_queries.push(query.to_owned());
                reply(
                    200,
                    json!({"kind": "EventList", "apiVersion": "v1",
                       "metadata": {"resourceVersion": s.rv.to_string()}, "items": []}),
                )
            }
            "watch events" => {
                let (tx, body) = open();
                s.event_watchers.push(tx);
                Response::builder().status(200).body(body).unwrap()
            }
            "create pods" => {
                let mut pod: Pod = serde_json::from_slice(body).unwrap();
                let name = pod.metadata.name.clone().unwrap();
                if s.pods.contains_key(&name) {
                    return status(409, "AlreadyExists", 0);
                }
                pod.metadata.uid = Some(format!("uid-{name}"));
                pod.metadata.creation_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::now(),
                    ));
                pod.status = Some(PodStatus {
                    phase: Some("Pending".into()),
                    ..PodStatus::default()
                });
                Self::bump(&mut s, &mut pod);
                s.pods.insert(name, pod.clone());
                Self::broadcast(&mut s, "ADDED", &pod);
                reply(201, serde_json::to_value(&pod).unwrap())
            }
            "get pods" => match s.pods.get(parts[1]) {
                Some(p) => reply(200, serde_json::to_value(p).unwrap()),
                None => status(404, "NotFound", 0),
            },
            "delete pods" => {
                s.deletes
                    .push(format!("{} {}", parts[1], String::from_utf8_lossy(body)));
                match s.pods.remove(parts[1]) {
                    Some(mut pod) => {
                        Self::bump(&mut s, &mut pod);
                        Self::broadcast(&mut s, "DELETED", &pod);
                        reply(200, serde_json::to_value(&pod).unwrap())
                    }
                    None => status(404, "NotFound", 0),
                }
            }
            "create secrets" => {
                let secret: serde_json::Value = serde_json::from_slice(body).unwrap();
                s.secrets.push(secret.clone());
                reply(201, secret)
            }
            "log pods" => {
                s.log_queries.push(query.to_owned());
                let container = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("container="))
                    .unwrap_or("")
                    .to_owned();
                let key = format!("{}/{container}", parts[1]);
                let script = s.logs.get_mut(&key).and_then(VecDeque::pop_front);
                let (tx, body) = open();
                if let Some(script) = script {
                    let mut text = String::new();
                    for line in &script.lines {
                        text.push_str(line);
                        text.push('\n');
                    }
                    if !text.is_empty() {
                        let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from(text))));
                    }
                    if script.hold {
                        s.held_logs.entry(key).or_default().push(tx);
                    }
                }
                Response::builder().status(200).body(body).unwrap()
            }
            _ => status(404, "NotFound", 0),
        }
    }
}

pub fn running(name: &str) -> ContainerStatus {
    ContainerStatus {
        name: name.into(),
        image: "img".into(),
        image_id: String::new(),
        ready: true,
        restart_count: 0,
        state: Some(ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }
}

pub fn terminated(
    name: &str,
    code: i32,
    reason: Option<&str>,
    message: Option<&str>,
) -> ContainerStatus {
    ContainerStatus {
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: reason.map(str::to_owned),
                message: message.map(str::to_owned),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }),
        ..running(name)
    }
}

pub fn waiting(name: &str, reason: &str, message: &str) -> ContainerStatus {
    ContainerStatus {
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(message.into()),
            }),
            ..ContainerState::default()
        }),
        ..running(name)
    }
}

/// Sets a container's status among the pod's init (or main) container statuses.
pub fn set(status: &mut PodStatus, c: ContainerStatus, main: bool) {
    let list = if main {
        status.container_statuses.get_or_insert_with(Vec::new)
    } else {
        status.init_container_statuses.get_or_insert_with(Vec::new)
    };
    list.retain(|x| x.name != c.name);
    list.push(c);
}
