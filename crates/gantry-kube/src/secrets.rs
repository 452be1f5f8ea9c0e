//! The values of granted Secrets, read for the log masker. A job's Pod references the Secrets it
//! is granted (`secretKeyRef`); Gantry reads the same values only to hide them from the job's
//! log, which needs `get` on exactly the granted Secrets (the chart's Role lists them by name).

use gantry_core::Secret;
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::{Api, Client};

/// Reads Secret values from the build namespace for the masker.
#[derive(Clone)]
pub struct KubeSecretValues {
    secrets: Api<KubeSecret>,
}

impl std::fmt::Debug for KubeSecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecretValues").finish_non_exhaustive()
    }
}

impl KubeSecretValues {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            secrets: Api::namespaced(client, namespace),
        }
    }
}

#[async_trait::async_trait]
impl gantry_engine::SecretValues for KubeSecretValues {
    /// The value, or `None` (with a warning that says why: the job still gets the Secret in
    /// its Pod, but its log cannot be masked).
    async fn value(&self, secret: &str, key: &str) -> Option<Secret> {
        let found = match self.secrets.get_opt(secret).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(
                    secret,
                    %err,
                    "cannot read a granted Secret to mask it in job logs; give Gantry's Role `get` on it (the chart does for `config.grants`)"
                );
                return None;
            }
        };
        let data = found?.data?;
        let bytes = data.get(key)?;
        match String::from_utf8(bytes.0.clone()) {
            Ok(text) => Some(Secret::new(text)),
            // Binary values: masked as the bytes' lossy text would print.
            Err(e) => Some(Secret::new(
                String::from_utf8_lossy(e.as_bytes()).into_owned(),
            )),
        }
    }
}
