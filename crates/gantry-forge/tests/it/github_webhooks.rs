//! GitHub deliveries: every octokit example parses as it should; octokit's signatures verify;
//! each way a signature can be wrong is told apart; form-encoded deliveries work.

use gantry_core::{Event, ForgeKind};
use gantry_forge::{
    CompareReason, Incoming, VerifyError, WebhookError, WebhookSecrets, github, receive,
};
use serde_json::Value;

use crate::support::{fixture, fixtures, headers, ignored, sign, trigger};

const SECRET: &str = "gantry-test-secret";

fn deliver(event: &str, body: &[u8]) -> Result<gantry_forge::Delivery, WebhookError> {
    let sig = format!("sha256={}", sign(SECRET, body));
    let h = headers(&[
        ("x-github-event", event),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("x-hub-signature-256", &sig),
        ("content-type", "application/json"),
    ]);
    github::receive(&h, body, &WebhookSecrets::global([SECRET]))
}

#[test]
fn every_octokit_example_parses_as_its_event_says() {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut names: Vec<_> = std::fs::read_dir(fixtures("github"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json") && n != "signatures.json")
        .collect();
    names.sort();
    for name in names {
        let event = name.split('.').next().unwrap().to_owned();
        let body = fixture("github", &name);
        let json: Value = serde_json::from_slice(&body).unwrap();
        let delivery = deliver(&event, &body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(delivery.forge, ForgeKind::Github);
        assert_eq!(delivery.event, event);
        assert_eq!(
            delivery.id.as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        match event.as_str() {
            "ping" => assert_eq!(delivery.incoming, Incoming::Ping, "{name}"),
            "create" | "delete" => {
                assert!(ignored(&delivery).contains("push event"), "{name}")
            }
            "push" => check_push(&name, &json, &delivery.incoming),
            "pull_request" => check_pull_request(&name, &json, &delivery.incoming),
            other => panic!("unexpected fixture {other}"),
        }
        *counts.entry(event).or_default() += 1;
    }
    let expected: std::collections::BTreeMap<String, usize> = [
        ("create", 5),
        ("delete", 4),
        ("ping", 4),
        ("pull_request", 29),
        ("push", 7),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counts, expected, "every octokit example is committed");
}

fn check_push(name: &str, json: &Value, incoming: &Incoming) {
    let git_ref = json["ref"].as_str().unwrap();
    let after = json["after"].as_str().unwrap();
    if json["deleted"].as_bool().unwrap() {
        let Incoming::Ignored { reason } = incoming else {
            panic!("{name}: a deletion must be ignored, got {incoming:?}");
        };
        assert!(reason.contains("deleted"), "{name}: {reason}");
        return;
    }
    let Incoming::Trigger { trigger, compare } = incoming else {
        panic!("{name}: expected a trigger, got {incoming:?}");
    };
    assert_eq!(trigger.sha, after, "{name}");
    assert_eq!(trigger.git_ref, git_ref, "{name}");
    assert_eq!(trigger.repo.full_name, json["repository"]["full_name"]);
    assert_eq!(trigger.repo.clone_url, json["repository"]["clone_url"]);
    assert_eq!(trigger.actor.as_deref(), json["sender"]["login"].as_str());
    if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        assert_eq!(trigger.event, Event::Tag, "{name}");
        assert_eq!(trigger.tag.as_deref(), Some(tag));
    } else {
        assert_eq!(trigger.event, Event::Push, "{name}");
        assert_eq!(
            trigger.branch.as_deref(),
            git_ref.strip_prefix("refs/heads/")
        );
        // Every branch push among the examples creates its branch: nothing to compare with.
        assert!(json["created"].as_bool().unwrap());
        assert_eq!(trigger.before, None, "{name}");
        assert_eq!(trigger.changed_paths, None, "{name}");
        assert_eq!(*compare, None, "{name}");
    }
}

fn check_pull_request(name: &str, json: &Value, incoming: &Incoming) {
    let action = json["action"].as_str().unwrap();
    let number = json["number"].as_u64().unwrap();
    match action {
        "opened" | "synchronize" | "reopened" => {
            let Incoming::Trigger { trigger, compare } = incoming else {
                panic!("{name}: {action} must trigger, got {incoming:?}");
            };
            let pr = trigger.pull_request.as_ref().unwrap();
            assert_eq!(trigger.event, Event::PullRequest);
            assert_eq!(trigger.sha, json["pull_request"]["head"]["sha"]);
            assert_eq!(trigger.git_ref, format!("refs/pull/{number}/head"));
            assert_eq!(pr.number, number);
            assert_eq!(pr.head_ref, json["pull_request"]["head"]["ref"]);
            assert_eq!(pr.base_ref, json["pull_request"]["base"]["ref"]);
            assert_eq!(trigger.branch.as_deref(), Some(pr.head_ref.as_str()));
            assert!(
                !pr.from_fork,
                "{name}: the examples are all same-repository"
            );
            assert_eq!(pr.title.as_deref(), json["pull_request"]["title"].as_str());
            assert_eq!(*compare, None);
        }
        _ => {
            let Incoming::Ignored { reason } = incoming else {
                panic!("{name}: {action} must be ignored, got {incoming:?}");
            };
            assert!(
                reason.contains(action) || (action == "closed" && reason.contains("closed")),
                "{name}: {reason}"
            );
        }
    }
}

#[test]
fn a_synchronize_records_the_previous_head() {
    let d = deliver("pull_request", &fixture("github", "pull_request.22.json")).unwrap();
    let t = trigger(&d);
    assert_eq!(
        t.before.as_deref(),
        Some("f95f852bd8fca8fcc58a9a2d6c842781e32a215e")
    );
}

#[test]
fn a_branch_push_lists_the_changed_paths_of_all_its_commits() {
    let d = deliver("push", &fixture("github", "hand/push-branch.json")).unwrap();
    let t = trigger(&d);
    assert_eq!(t.event, Event::Push);
    assert_eq!(t.branch.as_deref(), Some("master"));
    assert_eq!(
        t.before.as_deref(),
        Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246")
    );
    assert_eq!(t.sha, "a10867b14bb761a232cd80139fbd4c0d33264240");
    assert_eq!(t.message.as_deref(), Some("Drop the old script"));
    assert_eq!(
        t.changed_paths.as_deref().unwrap(),
        [".gantry.yaml", "README.md", "build.sh", "src/main.rs"]
    );
}

#[test]
fn a_forced_push_asks_for_a_compare_instead_of_guessing() {
    let d = deliver("push", &fixture("github", "hand/push-forced.json")).unwrap();
    let Incoming::Trigger { trigger, compare } = &d.incoming else {
        panic!("{d:?}")
    };
    assert_eq!(trigger.changed_paths, None);
    let compare = compare.as_ref().unwrap();
    assert_eq!(compare.reason, CompareReason::Forced);
    assert_eq!(compare.before, "d3b07384d113edec49eaa6238ad5ff00d3b07384");
    assert_eq!(compare.after, trigger.sha);
}

#[test]
fn a_truncated_commit_list_asks_for_a_compare() {
    let mut json: Value =
        serde_json::from_slice(&fixture("github", "hand/push-branch.json")).unwrap();
    let one = json["commits"][0].clone();
    json["commits"] = Value::Array(vec![one; 2048]);
    let body = serde_json::to_vec(&json).unwrap();
    let d = deliver("push", &body).unwrap();
    let Incoming::Trigger { trigger, compare } = &d.incoming else {
        panic!("{d:?}")
    };
    assert_eq!(trigger.changed_paths, None);
    assert_eq!(compare.as_ref().unwrap().reason, CompareReason::Truncated);
}

#[test]
fn a_pull_request_from_a_fork_is_marked() {
    let d = deliver(
        "pull_request",
        &fixture("github", "hand/pull_request-fork.json"),
    )
    .unwrap();
    let t = trigger(&d);
    assert!(t.pull_request.as_ref().unwrap().from_fork);
    assert!(!t.secrets_allowed());
    assert_eq!(
        t.repo.full_name, "Codertocat/Hello-World",
        "the base repository"
    );
}

#[test]
fn unrelated_events_are_ignored_with_a_reason() {
    let body = br#"{"action":"created","repository":{"full_name":"acme/app"}}"#;
    let d = deliver("star", body).unwrap();
    assert_eq!(ignored(&d), "star events start nothing");
}

#[derive(serde::Deserialize)]
struct Signatures {
    secret: String,
    deliveries: Vec<Signed>,
}

#[derive(serde::Deserialize)]
struct Signed {
    file: String,
    event: String,
    content_type: String,
    signature: String,
}

fn signatures() -> Signatures {
    serde_json::from_slice(&fixture("github", "signatures.json")).unwrap()
}

fn signed_headers(s: &Signed, signature: Option<&str>) -> http::HeaderMap {
    let mut pairs = vec![
        ("x-github-event", s.event.as_str()),
        ("x-github-delivery", "d1"),
        ("content-type", s.content_type.as_str()),
    ];
    if let Some(sig) = signature {
        pairs.push(("x-hub-signature-256", sig));
    }
    headers(&pairs)
}

#[test]
fn octokit_signatures_verify() {
    let sigs = signatures();
    let secrets = WebhookSecrets::global([sigs.secret.as_str()]);
    assert!(sigs.deliveries.len() >= 4);
    for s in &sigs.deliveries {
        let body = fixture("github", &s.file);
        let h = signed_headers(s, Some(&s.signature));
        let d = github::receive(&h, &body, &secrets).unwrap_or_else(|e| panic!("{}: {e}", s.file));
        assert_eq!(d.event, s.event);
        // Also through the forge-generic entry point.
        receive(ForgeKind::Github, &h, &body, &secrets).unwrap();
    }
}

#[test]
fn a_form_encoded_delivery_is_verified_over_the_form_and_parsed_from_its_payload() {
    let sigs = signatures();
    let secrets = WebhookSecrets::global([sigs.secret.as_str()]);
    let s = sigs
        .deliveries
        .iter()
        .find(|s| s.content_type == "application/x-www-form-urlencoded")
        .unwrap();
    let body = fixture("github", &s.file);
    assert!(body.starts_with(b"payload=%7B"));
    let form = github::receive(&signed_headers(s, Some(&s.signature)), &body, &secrets).unwrap();
    let json = deliver("push", &fixture("github", "push.0.json")).unwrap();
    assert_eq!(form.incoming, json.incoming);
    assert_eq!(trigger(&form).tag.as_deref(), Some("simple-tag"));

    // A form without a payload field is a bad request, after verification.
    let body = b"other=1";
    let sig = format!("sha256={}", sign(&sigs.secret, body));
    let err = github::receive(&signed_headers(s, Some(&sig)), body, &secrets).unwrap_err();
    assert_eq!(err.http_status(), 400);
}

fn refused(body: &[u8], signature: Option<&str>, secrets: &WebhookSecrets) -> VerifyError {
    let s = &signatures().deliveries[0];
    match github::receive(&signed_headers(s, signature), body, secrets) {
        Err(WebhookError::Unauthorized(e)) => e,
        other => panic!("expected 401, got {other:?}"),
    }
}

#[test]
fn bad_signatures_are_refused_each_with_its_reason() {
    let sigs = signatures();
    let good = &sigs.deliveries[0];
    let body = fixture("github", &good.file);
    let secrets = WebhookSecrets::global([sigs.secret.as_str()]);

    let mut tampered = body.clone();
    let at = tampered.iter().position(|&b| b == b'C').unwrap();
    tampered[at] = b'D';
    assert_eq!(
        refused(&tampered, Some(&good.signature), &secrets),
        VerifyError::Mismatch
    );
    assert_eq!(
        refused(
            &body,
            Some(&good.signature),
            &WebhookSecrets::global(["wrong"])
        ),
        VerifyError::Mismatch
    );
    assert_eq!(
        refused(&body, None, &secrets),
        VerifyError::MissingHeader("X-Hub-Signature-256")
    );
    let truncated = &good.signature[..good.signature.len() - 2];
    assert_eq!(
        refused(&body, Some(truncated), &secrets),
        VerifyError::MalformedSignature("truncated")
    );
    assert_eq!(
        refused(
            &body,
            Some(&good.signature.replace("sha256=", "sha1=")),
            &secrets
        ),
        VerifyError::MalformedSignature("expected sha256=<hex>")
    );
    let not_hex = format!("sha256={}", "g".repeat(64));
    assert_eq!(
        refused(&body, Some(&not_hex), &secrets),
        VerifyError::MalformedSignature("not hex")
    );
    assert_eq!(
        refused(&body, Some(&good.signature), &WebhookSecrets::default()),
        VerifyError::NoSecretConfigured
    );
    let e = refused(&tampered, Some(&good.signature), &secrets);
    assert_eq!(e.reason(), "mismatch");
    assert_eq!(WebhookError::from(e).http_status(), 401);
}

#[test]
fn an_unverified_body_is_never_parsed() {
    // Not JSON at all: with a wrong signature the answer is about the signature, not the JSON.
    assert_eq!(
        refused(
            b"not json {",
            Some(&format!("sha256={}", "0".repeat(64))),
            &WebhookSecrets::global(["k"])
        ),
        VerifyError::Mismatch
    );
}

#[test]
fn malformed_json_reports_line_and_column() {
    let err = deliver("push", b"{\n  \"ref\": \"refs/heads/main\",\n  oops\n}").unwrap_err();
    assert_eq!(err.http_status(), 400);
    let msg = err.to_string();
    assert!(msg.contains("line 3 column"), "{msg}");
    let err = deliver("push", br#"{"ref":"refs/heads/main"}"#).unwrap_err();
    assert!(err.to_string().contains("missing field"), "{err}");
}

#[test]
fn a_missing_event_header_is_a_bad_request() {
    let body = fixture("github", "ping.0.json");
    let sig = format!("sha256={}", sign(SECRET, &body));
    let h = headers(&[("x-hub-signature-256", &sig)]);
    let err = github::receive(&h, &body, &WebhookSecrets::global([SECRET])).unwrap_err();
    assert_eq!(err.http_status(), 400);
}

#[test]
fn rotated_secrets_all_verify() {
    let body = fixture("github", "ping.0.json");
    let secrets = WebhookSecrets::global(["old-secret", SECRET, "new-secret"]);
    for key in ["old-secret", "new-secret"] {
        let sig = format!("sha256={}", sign(key, &body));
        let h = headers(&[("x-github-event", "ping"), ("x-hub-signature-256", &sig)]);
        assert_eq!(
            github::receive(&h, &body, &secrets).unwrap().incoming,
            Incoming::Ping
        );
    }
}

#[test]
fn a_scoped_secret_only_authenticates_its_own_repositories() {
    // ping.0 is about Octocoders/Hello-World, ping.3 about the organisation Octocoders,
    // push.0 about Codertocat/Hello-World.
    let secrets = WebhookSecrets::default()
        .with_scoped("Octocoders", "org-secret")
        .with_scoped("codertocat/hello-world", "repo-secret");
    let send = |file: &str, event: &str, key: &str| {
        let body = fixture("github", file);
        let sig = format!("sha256={}", sign(key, &body));
        let h = headers(&[("x-github-event", event), ("x-hub-signature-256", &sig)]);
        github::receive(&h, &body, &secrets)
    };
    assert!(send("ping.0.json", "ping", "org-secret").is_ok());
    assert!(send("ping.3.json", "ping", "org-secret").is_ok());
    assert!(
        send("push.0.json", "push", "repo-secret").is_ok(),
        "case-insensitive"
    );
    for (file, event, key) in [
        ("push.0.json", "push", "org-secret"),
        ("ping.0.json", "ping", "repo-secret"),
        ("ping.3.json", "ping", "repo-secret"),
    ] {
        match send(file, event, key) {
            Err(WebhookError::Unauthorized(VerifyError::SecretNotForRepository(_))) => {}
            other => panic!("{file} with {key}: {other:?}"),
        }
    }
    assert_eq!(
        send("push.0.json", "push", "unknown")
            .unwrap_err()
            .to_string(),
        "unauthorized: signature does not match"
    );
}
