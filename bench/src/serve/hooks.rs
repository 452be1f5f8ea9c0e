//! Signed GitHub push webhooks and the API calls that follow them up.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::procs::WEBHOOK_SECRET;

/// The real push that the HMAC benchmark uses too (a branch push from
/// `@octokit/webhooks-examples`), with its clone URL pointed at `clone_url`.
pub fn octokit_push(clone_url: &str) -> anyhow::Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/gantry-forge/tests/fixtures/github/push.4.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("no {}", path.display()))?;
    let mut value: Value = serde_json::from_str(&text)?;
    value["repository"]["clone_url"] = Value::String(clone_url.to_owned());
    Ok(value.to_string())
}

/// A push of `sha` (after `before`) to `main` of `acme/<name>`, cloned from `clone_url`.
pub fn push(name: &str, clone_url: &str, before: &str, sha: &str) -> String {
    let paths = ["src/lib.rs"];
    json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": sha,
        "created": false,
        "deleted": false,
        "forced": false,
        "commits": [{ "id": sha, "message": "change", "added": [], "removed": [], "modified": paths }],
        "head_commit": { "id": sha, "message": "change", "added": [], "removed": [], "modified": paths },
        "repository": {
            "full_name": format!("acme/{name}"),
            "name": name,
            "clone_url": clone_url,
            "html_url": format!("https://github.example/acme/{name}"),
            "default_branch": "main",
            "owner": { "login": "acme" }
        },
        "pusher": { "name": "bench" },
        "sender": { "login": "bench" }
    })
    .to_string()
}

/// `sha256=<hex>` for `body`, as GitHub sends it.
pub fn signature(body: &str) -> String {
    format!(
        "sha256={}",
        gantry_forge::hmac_sha256_hex_of(WEBHOOK_SECRET.as_bytes(), body.as_bytes())
    )
}

pub fn client() -> anyhow::Result<reqwest::Client> {
    gantry_forge::install_crypto_provider();
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()?)
}

/// Posts a signed push; the HTTP status.
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    delivery: &str,
    body: &str,
    signature: &str,
) -> anyhow::Result<u16> {
    let response = client
        .post(format!("{base}/hooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(body.to_owned())
        .send()
        .await?;
    let status = response.status().as_u16();
    // Read the answer so the connection goes back to the pool.
    let _ = response.bytes().await?;
    Ok(status)
}

/// GET a JSON document; `None` on 404.
pub async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Option<Value>> {
    let response = client.get(url).send().await?;
    match response.status().as_u16() {
        404 => Ok(None),
        200 => Ok(Some(response.json().await?)),
        status => bail!("GET {url}: {status}"),
    }
}

pub fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Milliseconds from `a` to `b`.
pub fn millis(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}
