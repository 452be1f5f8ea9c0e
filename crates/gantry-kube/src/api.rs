//! API calls with the retry rules of the issue: 429 and 5xx back off (honouring the server's
//! `retryAfterSeconds`), a create that timed out or whose connection broke is looked up by name
//! before it is tried again, and a 409 on create adopts the pod when it is this attempt's — so
//! nothing is ever created twice.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::config::Timings;
use crate::{Error, Result, names};

/// What to do after an error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Try again after at least this long (the server's `Retry-After`, when it gave one).
    Retry(Option<Duration>),
    /// The request may or may not have happened (timeout, broken connection).
    Unknown,
    Fail,
}

pub(crate) fn verdict(e: &kube::Error) -> Verdict {
    match e {
        kube::Error::Api(status) => {
            let after = status
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s)));
            match status.code {
                429 | 500..=599 => Verdict::Retry(after),
                _ => Verdict::Fail,
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => Verdict::Unknown,
        _ => Verdict::Fail,
    }
}

pub(crate) fn code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

pub(crate) fn delay(timings: &Timings, attempt: u32, after: Option<Duration>) -> Duration {
    let exp = timings
        .backoff
        .saturating_mul(1u32 << attempt.min(16))
        .min(timings.max_backoff);
    after.map_or(exp, |a| a.max(exp))
}

async fn timed<T>(
    timings: &Timings,
    f: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(timings.request_timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service("request timed out".into())),
    }
}

/// An idempotent request (get, delete), retried on 429/5xx/broken connections.
pub(crate) async fn retry<T, F, Fut>(timings: &Timings, mut call: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 0;
    loop {
        let err = match timed(timings, call()).await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        attempt += 1;
        let after = match verdict(&err) {
            Verdict::Retry(after) => after,
            Verdict::Unknown => None,
            Verdict::Fail => return Err(err),
        };
        if attempt >= timings.max_attempts {
            return Err(err);
        }
        tokio::time::sleep(delay(timings, attempt - 1, after)).await;
    }
}

/// Is this pod the one of this attempt (same job and attempt labels)?
fn same_attempt(found: &Pod, wanted: &Pod) -> bool {
    let labels = |p: &Pod| {
        let l = p.metadata.labels.clone().unwrap_or_default();
        (l.get(names::JOB).cloned(), l.get(names::ATTEMPT).cloned())
    };
    labels(found) == labels(wanted) && labels(found).0.is_some()
}

/// The API server's message when it refused a create because of a ResourceQuota: `403
/// Forbidden` from the quota admission plugin, "exceeded quota: …" (the namespace's quota is used
/// up) or "status unknown for quota: …" (a quota whose usage the controller-manager has not
/// computed yet). Both clear up by themselves: a pod ends, the usage is computed.
pub(crate) fn quota_refusal(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s)
            if s.code == 403
                && s.reason == "Forbidden"
                && (s.message.contains("exceeded quota")
                    || s.message.contains("status unknown for quota")) =>
        {
            Some(s.message.clone())
        }
        _ => None,
    }
}

/// Creates the pod exactly once. Returns the pod as the server has it; a refusal by a
/// ResourceQuota is [`Error::Quota`] (the caller waits and tries again).
pub(crate) async fn create_pod(api: &Api<Pod>, pod: &Pod, timings: &Timings) -> Result<Pod> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let mut attempt = 0;
    loop {
        let err = match timed(timings, api.create(&PostParams::default(), pod)).await {
            Ok(created) => return Ok(created),
            Err(e) => e,
        };
        attempt += 1;
        let after = match (code(&err), verdict(&err)) {
            (Some(409), _) => {
                let found = retry(timings, || api.get(&name))
                    .await
                    .map_err(Error::Api)?;
                return if same_attempt(&found, pod) {
                    Ok(found)
                } else {
                    Err(Error::NameTaken(name))
                };
            }
            (_, Verdict::Unknown) => {
                // It may have been created: look before trying again.
                match retry(timings, || api.get_opt(&name)).await {
                    Ok(Some(found)) if same_attempt(&found, pod) => return Ok(found),
                    Ok(Some(_)) => return Err(Error::NameTaken(name)),
                    Ok(None) => None,
                    Err(e) => return Err(Error::Api(e)),
                }
            }
            (_, Verdict::Retry(after)) => after,
            (_, Verdict::Fail) => {
                return Err(match quota_refusal(&err) {
                    Some(message) => Error::Quota(message),
                    None => Error::Api(err),
                });
            }
        };
        if attempt >= timings.max_attempts {
            return Err(Error::Api(err));
        }
        tokio::time::sleep(delay(timings, attempt - 1, after)).await;
    }
}

/// Creates a Secret; one that already exists (an earlier try went through) is fine.
pub(crate) async fn create_secret(
    api: &Api<Secret>,
    secret: &Secret,
    timings: &Timings,
) -> Result<()> {
    let result = retry(timings, || async {
        match api.create(&PostParams::default(), secret).await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await;
    result.map_err(Error::Api)
}

/// Deletes a pod; one already gone is fine.
/// Pod deletes in flight at once, in this process. Cancelling a thousand jobs at once would
/// otherwise send a thousand deletes together, and API Priority and Fairness answers most of
/// them 429 (each then retried): the cluster bench saw 856 of 1,000.
const DELETES_IN_FLIGHT: usize = 32;
static DELETES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(DELETES_IN_FLIGHT);

pub(crate) async fn delete_pod(
    api: &Api<Pod>,
    name: &str,
    grace: Duration,
    timings: &Timings,
) -> Result<()> {
    // The semaphore is never closed.
    let _slot = DELETES.acquire().await.ok();
    let params = DeleteParams {
        grace_period_seconds: Some(grace.as_secs() as u32),
        ..DeleteParams::background()
    };
    let result = retry(timings, || async {
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await;
    result.map_err(Error::Api)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let t = Timings {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..Timings::default()
        };
        assert_eq!(delay(&t, 0, None), Duration::from_millis(100));
        assert_eq!(delay(&t, 2, None), Duration::from_millis(400));
        assert_eq!(delay(&t, 9, None), Duration::from_secs(1));
        assert_eq!(
            delay(&t, 0, Some(Duration::from_secs(5))),
            Duration::from_secs(5)
        );
    }
}
