//! Whatever arrives, verification and parsing answer with a value, never a panic: every fixture
//! of every forge, mutated many ways and correctly signed (so the parser sees it), and
//! arbitrary bytes.

use gantry_core::ForgeKind;
use gantry_forge::{WebhookSecrets, receive};
use proptest::prelude::*;

use crate::support::{fixtures, headers, sign};

const SECRET: &str = "fuzz";

fn all_fixtures() -> Vec<(ForgeKind, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (forge, dir) in [
        (ForgeKind::Github, "github"),
        (ForgeKind::Gitlab, "gitlab"),
        (ForgeKind::Gitea, "gitea"),
    ] {
        for sub in ["", "hand"] {
            let Ok(entries) = std::fs::read_dir(fixtures(dir).join(sub)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                if path.extension().is_some_and(|x| x == "json") {
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    out.push((forge, name, std::fs::read(&path).unwrap()));
                }
            }
        }
    }
    out
}

/// The event header a fixture would come with, guessed from its name.
fn event_for(forge: ForgeKind, name: &str) -> String {
    let stem = name.split(['.', '-']).next().unwrap_or("push");
    match forge {
        ForgeKind::Gitlab => match stem {
            "merge_request" => "Merge Request Hook".into(),
            "tag_push" => "Tag Push Hook".into(),
            _ => "Push Hook".into(),
        },
        _ => stem.into(),
    }
}

fn deliver_signed(forge: ForgeKind, event: &str, body: &[u8]) {
    let sig = sign(SECRET, body);
    let gh = format!("sha256={sig}");
    let h = match forge {
        ForgeKind::Github => headers(&[("x-github-event", event), ("x-hub-signature-256", &gh)]),
        ForgeKind::Gitlab => headers(&[("x-gitlab-event", event), ("x-gitlab-token", SECRET)]),
        _ => headers(&[("x-gitea-event", event), ("x-gitea-signature", &sig)]),
    };
    let secrets = WebhookSecrets::global([SECRET]);
    let _ = receive(forge, &h, body, &secrets);
    let form = headers(&[
        ("x-github-event", event),
        ("x-hub-signature-256", &gh),
        ("content-type", "application/x-www-form-urlencoded"),
    ]);
    let _ = receive(ForgeKind::Github, &form, body, &secrets);
}

/// A small deterministic generator, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const REPLACEMENTS: [&[u8]; 12] = [
    b"null",
    b"0",
    b"-1",
    b"\"\"",
    b"[]",
    b"{}",
    b"true",
    b"1e999",
    b"\"\\ud800\"",
    b"18446744073709551616",
    b"\"0000000000000000000000000000000000000000\"",
    b"\xff",
];

#[test]
fn mutated_fixtures_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (forge, name, body) in all_fixtures() {
        let event = event_for(forge, &name);
        // Every JSON value replaced in turn by something of the wrong type or shape.
        let value_starts: Vec<usize> = body
            .iter()
            .enumerate()
            .filter(|(i, b)| **b == b':' && *i + 2 < body.len())
            .map(|(i, _)| i + 2)
            .collect();
        for _ in 0..60 {
            let mut m = body.clone();
            match rng.below(4) {
                0 if !value_starts.is_empty() => {
                    let at = value_starts[rng.below(value_starts.len())];
                    let end = m[at..]
                        .iter()
                        .position(|b| matches!(b, b',' | b'\n' | b'}'))
                        .map_or(m.len(), |p| at + p);
                    let r = REPLACEMENTS[rng.below(REPLACEMENTS.len())];
                    m.splice(at..end, r.iter().copied());
                }
                1 => m.truncate(rng.below(m.len())),
                2 => {
                    for _ in 0..1 + rng.below(8) {
                        let at = rng.below(m.len());
                        m[at] = rng.next() as u8;
                    }
                }
                _ => {
                    let at = rng.below(m.len());
                    let len = rng.below(200).min(m.len() - at);
                    m.drain(at..at + len);
                }
            }
            deliver_signed(forge, &event, &m);
        }
        // Each event kind with another's body.
        for other in [
            "push",
            "pull_request",
            "ping",
            "create",
            "Merge Request Hook",
            "Push Hook",
        ] {
            deliver_signed(forge, other, &body);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), event in "[a-z_]{0,16}") {
        for forge in [ForgeKind::Github, ForgeKind::Gitlab, ForgeKind::Gitea] {
            deliver_signed(forge, &event, &body);
        }
    }

    #[test]
    fn arbitrary_json_never_panics(json in arbitrary_json(), event in prop::sample::select(vec!["push", "pull_request", "ping", "create", "Merge Request Hook"])) {
        let body = serde_json::to_vec(&json).unwrap();
        for forge in [ForgeKind::Github, ForgeKind::Gitlab, ForgeKind::Gitea] {
            deliver_signed(forge, event, &body);
        }
    }

    #[test]
    fn arbitrary_headers_never_panic(sig in "\\PC{0,80}", event in "\\PC{0,20}") {
        let secrets = WebhookSecrets::global([SECRET]);
        for (forge, name) in [(ForgeKind::Github, "x-hub-signature-256"), (ForgeKind::Gitlab, "x-gitlab-token"), (ForgeKind::Gitea, "x-gitea-signature")] {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&sig) { h.insert(name, v); }
            if let Ok(v) = http::HeaderValue::from_str(&event) { h.insert("x-github-event", v); }
            let _ = receive(forge, &h, b"{}", &secrets);
        }
    }
}

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z0-9/]{0,12}".prop_map(Value::String),
        Just(Value::String(
            "0000000000000000000000000000000000000000".into()
        )),
        Just(Value::String("refs/heads/main".into())),
        Just(Value::String("refs/tags/v1".into())),
        Just(Value::String("opened".into())),
    ];
    let keys = prop::sample::select(vec![
        "ref",
        "before",
        "after",
        "created",
        "deleted",
        "forced",
        "commits",
        "repository",
        "full_name",
        "clone_url",
        "action",
        "number",
        "pull_request",
        "head",
        "base",
        "sha",
        "repo",
        "object_kind",
        "project",
        "path_with_namespace",
        "git_http_url",
        "object_attributes",
        "iid",
        "source_branch",
        "target_branch",
        "last_commit",
        "id",
        "oldrev",
        "total_commits_count",
        "total_commits",
        "added",
        "modified",
        "removed",
        "organization",
        "login",
    ]);
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..8).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}
