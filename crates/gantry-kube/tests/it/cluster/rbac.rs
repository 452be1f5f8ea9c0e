//! Gantry with a ServiceAccount token bound to exactly the Role the Helm chart renders
//! (`helm template charts/gantry`): everything the backend does is allowed, and a request
//! outside the Role is denied by the real RBAC authorizer. With Flux agents in the values
//! (`config.kubernetes.gitops_agents`), the Role the chart renders in the Flux namespace lets
//! Gantry patch exactly the named GitRepositories.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use gantry_core::{Backend, JobId, RunId};
use gantry_engine::SecretValues;
use gantry_kube::{JobRegistry, KubeBackend, KubeSecretValues, names};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{ListParams, PostParams, WatchParams};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{cluster, config, eventually, play, root, until_finished};
use crate::backend::{job, shape};

/// `helm template` of the chart for a release in `release_ns` with builds in `build_ns` (and
/// more `--set`s), as one JSON value per document.
fn helm_template(release_ns: &str, build_ns: &str, sets: &[&str]) -> Vec<Value> {
    let root = root();
    let mut cmd = Command::new(root.join("tests/cluster/helm"));
    cmd.args(["template", "gantry"])
        .arg(root.join("charts/gantry"))
        .args(["--namespace", release_ns])
        .args(["--set", &format!("buildNamespace.name={build_ns}")]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd
        .output()
        .expect("run tests/cluster/helm (it installs helm on first use)");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---")
        .filter_map(|doc| {
            let v: Value = serde_saphyr::from_str(doc).ok()?;
            v.is_object().then_some(v)
        })
        .collect()
}

/// What the chart grants Gantry in the build namespace, applied as rendered.
struct ChartAccount {
    /// A client with a token of the chart's ServiceAccount.
    gantry: kube::Client,
    build_ns: String,
    release_ns: String,
    role: Role,
    /// Everything the chart rendered, one JSON value per document.
    docs: Vec<Value>,
}

/// The chart's ServiceAccount, build-namespace Role and RoleBinding (rendered with `sets`),
/// created as the admin in fresh namespaces, and a client with a token for the account
/// (TokenRequest API).
async fn chart_account(c: &super::Cluster, name: &str, sets: &[&str]) -> ChartAccount {
    let build_ns = c.namespace(name).await;
    let release_ns = c.namespace(&format!("{name}-rel")).await;
    let docs = helm_template(&release_ns, &build_ns, sets);
    let kind = |v: &Value| v["kind"].as_str().unwrap_or_default().to_owned();
    assert!(
        docs.iter().all(|d| !kind(d).starts_with("Cluster")),
        "the chart grants nothing cluster-wide"
    );
    let in_build = |k: &str| {
        docs.iter()
            .find(|d| kind(d) == k && d["metadata"]["namespace"] == build_ns.as_str())
            .unwrap_or_else(|| panic!("no {k} for namespace {build_ns} in the chart"))
            .clone()
    };
    let role: Role = serde_json::from_value(in_build("Role")).unwrap();
    let binding: RoleBinding = serde_json::from_value(in_build("RoleBinding")).unwrap();
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    let sa_ns = subject.namespace.clone().unwrap();
    assert_eq!(sa_ns, release_ns);

    let admin = c.admin().await;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &sa_ns);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(subject.name.clone()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    Api::<Role>::namespaced(admin.clone(), &build_ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &build_ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(&subject.name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .expect("a token");
    ChartAccount {
        gantry: c.client(&token).await,
        build_ns,
        release_ns,
        role,
        docs,
    }
}

struct Nobody;

#[async_trait::async_trait]
impl JobRegistry for Nobody {
    async fn knows(&self, _: RunId, _: JobId, _: u32) -> bool {
        false
    }
}

fn forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn the_charts_role_is_enough_and_nothing_more_is_allowed() {
    let c = cluster();
    let ChartAccount {
        gantry,
        build_ns,
        release_ns,
        role,
        ..
    } = chart_account(&c, "rbac", &[]).await;

    // Everything the backend does, as that account: watch and list pods, create a pod and
    // its clone Secret, follow logs, sweep (delete).
    let mut cfg = config(
        &build_ns,
        play("", "*=200", &[("step-0", "as the service account")]),
    );
    cfg.timings.retention = Duration::ZERO;
    let creds: std::sync::Arc<dyn gantry_kube::CloneCredentials> =
        std::sync::Arc::new(super::Token);
    let backend = KubeBackend::new(gantry.clone(), cfg, Some(creds));
    assert!(backend.ready().await, "the account may list and watch pods");
    let job = job(&["build"]);
    let pod = names::pod_name(job.job_id, job.attempt);
    let (tx, mut rx) = mpsc::channel(64);
    backend.start(job.clone(), tx).await.unwrap();
    let events = shape(&until_finished(&mut rx).await);
    assert_eq!(
        events,
        [
            "started",
            "step 0 started",
            "log 0 #1 as the service account",
            "step 0 success exit 0",
            "finished success",
        ]
    );
    let swept = eventually("the sweep to delete the finished pod", || async {
        let swept = backend.sweep(&Nobody).await;
        (!swept.is_empty()).then_some(swept)
    })
    .await;
    assert_eq!(swept, std::slice::from_ref(&pod));

    // The cluster autoscaler's Events are watched (the backend's one Event watch).
    let events: Api<Event> = Api::namespaced(gantry.clone(), &build_ns);
    let params = WatchParams::default().fields("involvedObject.kind=Pod,source=cluster-autoscaler");
    assert!(
        events.watch(&params, "0").await.is_ok(),
        "the account may watch events in the build namespace"
    );
    forbidden(
        "list events in another namespace",
        Api::<Event>::namespaced(gantry.clone(), &release_ns)
            .list(&ListParams::default())
            .await,
    );

    // Outside the Role: denied.
    let secrets: Api<Secret> = Api::namespaced(gantry.clone(), &build_ns);
    forbidden("list secrets", secrets.list(&ListParams::default()).await);
    forbidden(
        "get the clone secret",
        secrets.get(&names::clone_secret(&pod)).await,
    );
    forbidden(
        "list pods in another namespace",
        Api::<Pod>::namespaced(gantry.clone(), &release_ns)
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "list pods in every namespace",
        Api::<Pod>::all(gantry.clone())
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "list nodes",
        Api::<Node>::all(gantry.clone())
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "create a namespace",
        Api::<Namespace>::all(gantry.clone())
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(format!("{build_ns}-x")),
                        labels: Some(BTreeMap::new()),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                },
            )
            .await,
    );
    forbidden(
        "create a Role (escalate)",
        Api::<Role>::namespaced(gantry, &build_ns)
            .create(&PostParams::default(), &role)
            .await,
    );
}

/// With grants in the chart's values, Gantry may read exactly the granted Secrets (by name) to
/// mask their values in job logs, and no other Secret.
#[tokio::test]
async fn granted_secrets_and_only_those_can_be_read_for_the_masker() {
    let c = cluster();
    let account = chart_account(
        &c,
        "rbac-grants",
        &[
            "config.grants[0].secret=registry-push",
            "config.grants[0].repos={acme/*}",
        ],
    )
    .await;
    let admin = c.admin().await;
    let secrets: Api<Secret> = Api::namespaced(admin, &account.build_ns);
    for (name, value) in [
        ("registry-push", "s3cr3t-push-token"),
        ("not-granted", "other-value"),
    ] {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            string_data: Some(BTreeMap::from([("value".to_owned(), value.to_owned())])),
            ..Secret::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    let values = KubeSecretValues::new(account.gantry.clone(), &account.build_ns);
    let granted = values.value("registry-push", "value").await;
    assert_eq!(
        granted.as_ref().map(|s| s.expose()),
        Some("s3cr3t-push-token"),
        "a granted Secret's value reaches the masker"
    );
    assert!(values.value("registry-push", "no-such-key").await.is_none());
    assert!(
        values.value("not-granted", "value").await.is_none(),
        "a Secret that is not granted stays unread"
    );
    forbidden(
        "get a Secret that is not granted",
        Api::<Secret>::namespaced(account.gantry.clone(), &account.build_ns)
            .get("not-granted")
            .await,
    );
    forbidden(
        "list secrets",
        Api::<Secret>::namespaced(account.gantry, &account.build_ns)
            .list(&ListParams::default())
            .await,
    );
}

/// What `kubectl auth can-i VERB RESOURCE[/NAME] -n NAMESPACE` answers for the client's own
/// account: a SelfSubjectAccessReview, decided by the API server's real RBAC authorizer.
async fn can_i(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    name: Option<&str>,
    namespace: &str,
) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                name: name.map(str::to_owned),
                namespace: Some(namespace.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("every account may review its own access (system:basic-user)")
        .status
        .expect("a review has a status")
        .allowed
}

/// With a Flux agent in the chart's values, Gantry's ServiceAccount may patch exactly that
/// GitRepository (to set `reconcile.fluxcd.io/requestedAt` after a gitops push): not read it,
/// not change it any other way, not touch another GitRepository, another Flux object or
/// anything in another namespace. The authorizer decides on names, so the Flux CRDs need not be
/// installed.
#[tokio::test]
async fn a_flux_agent_lets_gantry_patch_exactly_its_git_repository() {
    let c = cluster();
    let flux_ns = c.namespace("rbac-flux").await;
    let repo = "config.kubernetes.gitops_agents[0].repo=https://git.example.com/acme/config.git";
    let namespace = format!("config.kubernetes.gitops_agents[0].flux.namespace={flux_ns}");
    let name = "config.kubernetes.gitops_agents[0].flux.name=config";
    let account = chart_account(&c, "rbac-agents", &[repo, &namespace, name]).await;
    let kind = |v: &Value| v["kind"].as_str().unwrap_or_default().to_owned();
    let in_flux = |k: &str| {
        let found: Vec<&Value> = account
            .docs
            .iter()
            .filter(|d| kind(d) == k && d["metadata"]["namespace"] == flux_ns.as_str())
            .collect();
        assert_eq!(found.len(), 1, "one {k} in the Flux namespace: {found:?}");
        found[0].clone()
    };
    let role: Role = serde_json::from_value(in_flux("Role")).unwrap();
    let binding: RoleBinding = serde_json::from_value(in_flux("RoleBinding")).unwrap();
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(
        subject.namespace.as_deref(),
        Some(account.release_ns.as_str())
    );

    let gantry = &account.gantry;
    let (fns, bns, rns) = (
        flux_ns.as_str(),
        account.build_ns.as_str(),
        account.release_ns.as_str(),
    );
    let flux = "source.toolkit.fluxcd.io";
    let repos = "gitrepositories";
    assert!(
        !can_i(gantry, "patch", flux, repos, Some("config"), fns).await,
        "nothing is allowed before the chart's Role is applied"
    );
    let admin = c.admin().await;
    Api::<Role>::namespaced(admin.clone(), &flux_ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin, &flux_ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    eventually("the Flux Role to take effect", || async {
        can_i(gantry, "patch", flux, repos, Some("config"), fns)
            .await
            .then_some(())
    })
    .await;
    for (verb, group, resource, name, ns, what) in [
        ("get", flux, repos, Some("config"), fns, "read it"),
        ("update", flux, repos, Some("config"), fns, "replace it"),
        ("delete", flux, repos, Some("config"), fns, "delete it"),
        (
            "patch",
            flux,
            repos,
            Some("other"),
            fns,
            "patch another GitRepository",
        ),
        ("patch", flux, repos, None, fns, "patch any GitRepository"),
        ("list", flux, repos, None, fns, "list GitRepositories"),
        ("watch", flux, repos, None, fns, "watch GitRepositories"),
        ("create", flux, repos, None, fns, "create a GitRepository"),
        (
            "patch",
            "kustomize.toolkit.fluxcd.io",
            "kustomizations",
            Some("config"),
            fns,
            "patch a Kustomization of that name",
        ),
        (
            "patch",
            "",
            "secrets",
            Some("config"),
            fns,
            "patch a Secret of that name",
        ),
        (
            "get",
            "",
            "secrets",
            None,
            fns,
            "read Secrets in the Flux namespace",
        ),
        (
            "patch",
            flux,
            repos,
            Some("config"),
            bns,
            "patch a GitRepository of that name in the build namespace",
        ),
        (
            "patch",
            flux,
            repos,
            Some("config"),
            rns,
            "patch one in Gantry's own namespace",
        ),
    ] {
        assert!(
            !can_i(gantry, verb, group, resource, name, ns).await,
            "Gantry may not {what} ({verb} {resource} {name:?} in {ns})"
        );
    }
}
