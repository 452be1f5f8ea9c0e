//! Webhook authentication per payload: `gantry_forge::receive` refusing a delivery whose
//! `X-Hub-Signature-256` is well formed but wrong (the whole verification path — headers, hex,
//! HMAC-SHA256 with every configured secret, constant-time compare — and nothing after it),
//! against a plain SHA-256 of the same bytes. A second measurement, verify+parse, is a delivery
//! that verifies and parses into a trigger. Payloads: a real octokit push (a branch push from
//! `@octokit/webhooks-examples`) and the same push grown to 1 MiB with more commits.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gantry_core::ForgeKind;
use gantry_forge::{Incoming, WebhookError, WebhookSecrets};
use http::{HeaderMap, HeaderValue};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SECRET: &str = "bench-webhook-secret";
const MIB: usize = 1024 * 1024;

fn octokit_push() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/gantry-forge/tests/fixtures/github/push.4.json");
    std::fs::read_to_string(path).expect("the octokit fixtures are committed")
}

/// The push with its commit list repeated until the body is at least 1 MiB.
fn grown_to_1_mib(push: &str) -> String {
    let mut value: Value = serde_json::from_str(push).unwrap();
    let commit = value["head_commit"].clone();
    let per_commit = commit.to_string().len() + 1;
    let needed = MIB.saturating_sub(value.to_string().len()) / per_commit + 1;
    let commits = value["commits"].as_array_mut().unwrap();
    commits.extend(std::iter::repeat_n(commit, needed));
    let body = value.to_string();
    assert!(body.len() >= MIB);
    body
}

fn headers(body: &[u8], secret: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let signature = gantry_forge::hmac_sha256_hex_of(secret.as_bytes(), body);
    h.insert("x-github-event", HeaderValue::from_static("push"));
    h.insert("x-github-delivery", HeaderValue::from_static("bench"));
    h.insert(
        "x-hub-signature-256",
        HeaderValue::from_str(&format!("sha256={signature}")).unwrap(),
    );
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h
}

fn webhook(c: &mut Criterion) {
    let secrets = WebhookSecrets::global([SECRET]);
    let push = octokit_push();
    let cases = [
        ("octokit-push", push.clone()),
        ("1MiB", grown_to_1_mib(&push)),
    ];
    for (name, body) in cases {
        let body = body.into_bytes();
        let wrong = headers(&body, "some-other-secret");
        let right = headers(&body, SECRET);
        // Both paths do what they are meant to before they are timed.
        assert!(matches!(
            gantry_forge::receive(ForgeKind::Github, &wrong, &body, &secrets),
            Err(WebhookError::Unauthorized(_))
        ));
        let parsed = gantry_forge::receive(ForgeKind::Github, &right, &body, &secrets).unwrap();
        assert!(matches!(parsed.incoming, Incoming::Trigger { .. }));

        let mut group = c.benchmark_group(format!("webhook/{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("verify", |b| {
            b.iter(|| {
                let refused = gantry_forge::receive(
                    ForgeKind::Github,
                    black_box(&wrong),
                    black_box(&body),
                    &secrets,
                );
                black_box(refused.is_err())
            })
        });
        group.bench_function("verify+parse", |b| {
            b.iter(|| {
                black_box(
                    gantry_forge::receive(
                        ForgeKind::Github,
                        black_box(&right),
                        black_box(&body),
                        &secrets,
                    )
                    .unwrap(),
                )
            })
        });
        group.bench_function("sha256-reference", |b| {
            b.iter(|| black_box(Sha256::digest(black_box(&body))))
        });
        group.finish();
    }
}

criterion_group!(benches, webhook);
criterion_main!(benches);
