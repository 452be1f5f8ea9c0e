//! Telling the GitOps agent that a configuration repository changed, right after a `gitops`
//! step pushed, instead of leaving the deploy to the agent's next poll (Flux polls every
//! GitRepository `interval`; Argo CD every 3 minutes by default).
//!
//! Flux: the `reconcile.fluxcd.io/requestedAt` annotation on the GitRepository, which is what
//! `flux reconcile source git NAME` sets (fluxcd/pkg `meta.ReconcileRequestAnnotation`): the
//! source-controller fetches at once, and the Kustomizations on that source apply the new
//! revision as soon as it is there. Gantry's service account needs `patch` on
//! `gitrepositories.source.toolkit.fluxcd.io` in that namespace (the Helm chart grants exactly
//! that, limited to the named GitRepositories, for each `config.kubernetes.gitops_agents`
//! entry).

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde::{Deserialize, Serialize};

/// Flux's annotation asking for a reconcile now (any new value; Flux records the last handled).
pub const FLUX_REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";

/// Which agent deploys from a configuration repository, and how to tell it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitopsAgent {
    /// The configuration repository as `gitops` steps name it (`repo:`); compared without a
    /// trailing `/` or `.git`.
    pub repo: String,
    /// Flux: the GitRepository that follows this repository.
    pub flux: FluxSource,
}

/// A Flux GitRepository object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FluxSource {
    #[serde(default = "flux_namespace")]
    pub namespace: String,
    pub name: String,
}

fn flux_namespace() -> String {
    "flux-system".into()
}

fn same_repo(a: &str, b: &str) -> bool {
    let norm = |u: &str| {
        let u = u.trim().trim_end_matches('/');
        u.strip_suffix(".git").unwrap_or(u).to_owned()
    };
    norm(a) == norm(b)
}

/// The agents that deploy from `repo`.
pub fn for_repo<'a>(agents: &'a [GitopsAgent], repo: &str) -> Vec<&'a GitopsAgent> {
    agents.iter().filter(|a| same_repo(&a.repo, repo)).collect()
}

fn git_repositories(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("source.toolkit.fluxcd.io", "v1", "GitRepository");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "gitrepositories");
    Api::namespaced_with(client, namespace, &resource)
}

/// Asks the agent to reconcile now. The line to log on success, or why it failed (the deploy
/// then waits for the agent's own poll; the step stays successful).
pub(crate) async fn notify(
    client: kube::Client,
    timings: &crate::Timings,
    agent: &GitopsAgent,
) -> Result<String, String> {
    let flux = &agent.flux;
    let api = git_repositories(client, &flux.namespace);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let patch = serde_json::json!({ "metadata": { "annotations": { FLUX_REQUESTED_AT: now } } });
    let params = PatchParams::default();
    let patch = Patch::Merge(&patch);
    // A merge patch that sets one value: the same twice is harmless.
    match crate::api::retry(timings, || api.patch(&flux.name, &params, &patch)).await {
        Ok(_) => Ok(format!(
            "told Flux to reconcile GitRepository {}/{} now",
            flux.namespace, flux.name
        )),
        Err(e) => Err(format!(
            "could not tell Flux to reconcile GitRepository {}/{} ({}); it deploys the commit at its next poll",
            flux.namespace, flux.name, e
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_match_with_or_without_git_suffix() {
        let agents = vec![GitopsAgent {
            repo: "https://git.example.com/acme/config.git".into(),
            flux: FluxSource {
                namespace: flux_namespace(),
                name: "config".into(),
            },
        }];
        assert_eq!(
            for_repo(&agents, "https://git.example.com/acme/config/").len(),
            1
        );
        assert_eq!(
            for_repo(&agents, "https://git.example.com/acme/config.git").len(),
            1
        );
        assert!(for_repo(&agents, "https://git.example.com/acme/other.git").is_empty());
    }

    #[test]
    fn the_namespace_defaults_to_flux_system() {
        let agent: GitopsAgent = serde_saphyr::from_str(
            "repo: https://git.example.com/acme/config.git\nflux: { name: config }\n",
        )
        .unwrap();
        assert_eq!(agent.flux.namespace, "flux-system");
    }
}
