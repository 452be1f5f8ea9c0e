//! Names and labels: deterministic, so that a retried create, a re-attach after a restart and
//! the sweeper all find the same pod from the job attempt alone.

use std::collections::BTreeMap;

use gantry_core::{JobId, JobRequest};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "gantry";
pub const RUN: &str = "gantry.dev/run";
pub const JOB: &str = "gantry.dev/job";
pub const ATTEMPT: &str = "gantry.dev/attempt";
/// The label selector of every pod Gantry owns.
pub const SELECTOR: &str = "app.kubernetes.io/managed-by=gantry";

pub const CLONE: &str = "clone";

/// `gantry-<job id, 32 hex>-<attempt>`: under 63 characters, so also a valid hostname.
pub fn pod_name(job: JobId, attempt: u32) -> String {
    format!("gantry-{}-{attempt}", job.0.simple())
}

/// The per-job Secret with the clone credentials; the Pod owns it.
pub fn clone_secret(pod: &str) -> String {
    format!("{pod}-git")
}

pub fn step_container(index: usize) -> String {
    format!("step-{index}")
}

/// The step index of a container name (`step-3` → 3).
pub fn step_index(container: &str) -> Option<usize> {
    container.strip_prefix("step-")?.parse().ok()
}

/// `svc-` + the service name as a DNS label.
pub fn service_container(name: &str) -> String {
    let mut label: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    label.truncate(58);
    format!("svc-{}", label.trim_matches('-'))
}

pub fn labels(job: &JobRequest) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (RUN.to_owned(), job.run_id.to_string()),
        (JOB.to_owned(), job.job_id.to_string()),
        (ATTEMPT.to_owned(), job.attempt.to_string()),
    ])
}

pub fn annotations(job: &JobRequest) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("gantry.dev/job-name".to_owned(), job.spec.name.clone()),
        (
            "gantry.dev/repo".to_owned(),
            job.checkout.repo.full_name.clone(),
        ),
        ("gantry.dev/ref".to_owned(), job.checkout.git_ref.clone()),
        ("gantry.dev/sha".to_owned(), job.checkout.sha.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_short() {
        let job = JobId::new();
        assert_eq!(pod_name(job, 2), pod_name(job, 2));
        assert_ne!(pod_name(job, 1), pod_name(job, 2));
        assert!(pod_name(job, 999).len() <= 63);
        assert_eq!(step_index(&step_container(12)), Some(12));
        assert_eq!(step_index("svc-db"), None);
        assert_eq!(service_container("My_DB"), "svc-my-db");
    }
}
